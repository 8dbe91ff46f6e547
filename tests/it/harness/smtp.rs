//! A real SMTP server per test — `aiosmtpd` from the test virtualenv with
//! its `Mailbox` handler, which stores every message it accepts in a
//! Maildir — and an independent reader: Python's `mailbox` and `email`
//! modules parse what arrived (headers decoded, the MIME tree walked), not
//! lettre, which wrote it.

use super::{venv, wait_for};
use serde_json::Value;
use std::io::{BufRead, BufReader};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// A running aiosmtpd, killed on drop.
pub struct SmtpServer {
    child: Option<Child>,
    port: u16,
    maildir: PathBuf,
    dir: tempfile::TempDir,
}

/// One delivered message, as Python's `email` package reads it.
#[derive(Debug, Clone)]
pub struct Received {
    pub subject: String,
    /// The `From` header's address.
    pub from: String,
    /// The `To` header's addresses.
    pub to: Vec<String>,
    /// The envelope recipients (`RCPT TO`), from aiosmtpd's `X-RcptTo`.
    pub rcpt_to: Vec<String>,
    /// The top-level `Content-Type` (without parameters).
    pub content_type: String,
    pub text: String,
    pub html: String,
    pub headers: Vec<(String, String)>,
}

impl Received {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }
}

/// Reads every message of a Maildir as JSON, oldest first.
const READER: &str = r#"
import email, email.policy, json, mailbox, os, sys
path = sys.argv[1]
out = []
if os.path.isdir(os.path.join(path, "cur")) or os.path.isdir(os.path.join(path, "new")):
    box = mailbox.Maildir(path, factory=None, create=False)
    raw = [box.get_bytes(key) for key in sorted(box.keys())]
elif os.path.isdir(path):
    # lettre's file transport: one <id>.eml per message, oldest first.
    files = [os.path.join(path, f) for f in os.listdir(path) if f.endswith(".eml")]
    raw = [open(f, "rb").read() for f in sorted(files, key=os.path.getmtime)]
else:
    raw = []
for data in raw:
        msg = email.message_from_bytes(data, policy=email.policy.default)
        def body(kind):
            part = msg.get_body(preferencelist=(kind,))
            return part.get_content() if part is not None else ""
        def addrs(h):
            v = msg[h]
            return [a.addr_spec for a in v.addresses] if v is not None else []
        out.append({
            "subject": str(msg["Subject"] or ""),
            "from": (addrs("From") or [""])[0],
            "to": addrs("To"),
            "rcpt_to": [a.strip() for a in str(msg["X-RcptTo"] or "").split(",") if a.strip()],
            "content_type": msg.get_content_type(),
            "text": body("plain"),
            "html": body("html"),
            "headers": [[k, str(v)] for k, v in msg.items()],
        })
print(json.dumps(out))
"#;

impl SmtpServer {
    /// Starts aiosmtpd on a free loopback port and waits for its greeting.
    pub fn start() -> SmtpServer {
        let dir = tempfile::Builder::new().prefix("pgr-smtp-").tempdir().expect("temp dir");
        // aiosmtpd's Mailbox handler creates the Maildir itself.
        let maildir = dir.path().join("Maildir");
        let python = venv().join("bin/python");
        assert!(python.exists(), "{python:?} missing: run scripts/test.sh (it installs aiosmtpd)");
        for attempt in 0..5 {
            let port = free_port();
            let log = std::fs::File::create(dir.path().join(format!("aiosmtpd-{attempt}.log"))).expect("log file");
            // -n: do not drop privileges (it would try to setuid to nobody as root).
            let mut child = Command::new(&python)
                .args(["-m", "aiosmtpd", "-n", "-l", &format!("127.0.0.1:{port}"), "-c", "aiosmtpd.handlers.Mailbox"])
                .arg(&maildir)
                .stdin(Stdio::null())
                .stdout(log.try_clone().unwrap())
                .stderr(log)
                .spawn()
                .unwrap_or_else(|e| panic!("spawn {python:?} -m aiosmtpd: {e}"));
            let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
            let up = wait_for("aiosmtpd to greet", Duration::from_secs(30), Duration::from_millis(50), || {
                if let Ok(Some(_)) = child.try_wait() {
                    return Some(false);
                }
                greets(addr).then_some(true)
            });
            if up {
                return SmtpServer { child: Some(child), port, maildir, dir };
            }
            let _ = child.kill();
            let _ = child.wait();
        }
        panic!("aiosmtpd did not start; logs in {:?}", dir.keep());
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// `smtp://127.0.0.1:PORT`
    pub fn url(&self) -> String {
        format!("smtp://127.0.0.1:{}", self.port)
    }

    /// Stops the server (its port then refuses connections).
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Every message delivered so far, oldest first.
    pub fn messages(&self) -> Vec<Received> {
        let out = super::run_ok(Command::new(venv().join("bin/python")).arg("-c").arg(READER).arg(&self.maildir));
        let v: Value = serde_json::from_str(&out).unwrap_or_else(|e| panic!("reader printed non-JSON ({e}): {out}"));
        v.as_array().expect("array").iter().map(received).collect()
    }

    /// Waits for a message whose subject contains `needle`.
    pub fn wait_for_subject(&self, needle: &str, timeout: Duration) -> Received {
        wait_for(&format!("a mail with `{needle}` in its subject"), timeout, Duration::from_millis(250), || {
            self.messages().into_iter().find(|m| m.subject.contains(needle))
        })
    }

    /// aiosmtpd's own log (for failure messages).
    pub fn log(&self) -> String {
        super::files_under(self.dir.path())
            .iter()
            .filter(|p| p.extension().is_some_and(|e| e == "log"))
            .map(|p| std::fs::read_to_string(p).unwrap_or_default())
            .collect()
    }
}

impl Drop for SmtpServer {
    fn drop(&mut self) {
        self.stop();
    }
}

fn received(v: &Value) -> Received {
    let s = |k: &str| v[k].as_str().unwrap_or_default().to_string();
    let list = |k: &str| v[k].as_array().map(|a| a.iter().filter_map(|x| x.as_str().map(String::from)).collect());
    Received {
        subject: s("subject"),
        from: s("from"),
        to: list("to").unwrap_or_default(),
        rcpt_to: list("rcpt_to").unwrap_or_default(),
        content_type: s("content_type"),
        text: s("text"),
        html: s("html"),
        headers: v["headers"]
            .as_array()
            .map(|a| {
                a.iter()
                    .map(|h| (h[0].as_str().unwrap_or("").to_string(), h[1].as_str().unwrap_or("").to_string()))
                    .collect()
            })
            .unwrap_or_default(),
    }
}

/// Every `.eml` file in `dir` (the file transport's), oldest first, read
/// by the same independent reader as the server's Maildir.
pub fn eml_files(dir: &std::path::Path) -> Vec<Received> {
    let out = super::run_ok(Command::new(venv().join("bin/python")).arg("-c").arg(READER).arg(dir));
    let v: Value = serde_json::from_str(&out).unwrap_or_else(|e| panic!("reader printed non-JSON ({e}): {out}"));
    v.as_array().expect("array").iter().map(received).collect()
}

/// A loopback port nothing listens on (bound, then released).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).expect("free port").port()
}

/// Whether an SMTP server on `addr` sends its `220` greeting.
fn greets(addr: SocketAddr) -> bool {
    let Ok(s) = TcpStream::connect_timeout(&addr, Duration::from_millis(200)) else { return false };
    let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
    let mut line = String::new();
    BufReader::new(s).read_line(&mut line).is_ok() && line.starts_with("220")
}
