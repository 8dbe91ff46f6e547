//! Running `pgrehearse daemon` in tests: the real binary in the background,
//! its API on a free port, and a unix datagram socket standing in for
//! systemd's `$NOTIFY_SOCKET` that records every notification.

use super::cli::{Background, Pgr};
use super::http;
use super::wait_for;
use std::os::unix::net::UnixDatagram;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// The `[api]` and `[daemon]` sections for a test daemon on `port`.
pub fn daemon_toml(port: u16, token_file: Option<&std::path::Path>) -> String {
    let token = token_file
        .map(|p| format!("token_file = {}\n", super::cli::toml_string(&p.display().to_string())))
        .unwrap_or_default();
    format!(
        "\n[api]\nlisten = \"127.0.0.1:{port}\"\n{token}\n[daemon]\npoll_interval = \"1s\"\nrefused_retry_after = \"2s\"\n"
    )
}

/// A socket that records what the daemon tells "systemd".
pub struct NotifySocket {
    pub path: PathBuf,
    messages: Arc<Mutex<Vec<String>>>,
    _dir: tempfile::TempDir,
}

impl NotifySocket {
    pub fn bind() -> NotifySocket {
        let dir = tempfile::Builder::new().prefix("pgr-notify-").tempdir_in("/tmp").unwrap();
        let path = dir.path().join("notify.sock");
        let sock = UnixDatagram::bind(&path).unwrap();
        let messages = Arc::new(Mutex::new(Vec::new()));
        let sink = messages.clone();
        std::thread::spawn(move || {
            let mut buf = vec![0u8; 4096];
            while let Ok(n) = sock.recv(&mut buf) {
                sink.lock().unwrap().push(String::from_utf8_lossy(&buf[..n]).into_owned());
            }
        });
        NotifySocket { path, messages, _dir: dir }
    }

    pub fn messages(&self) -> Vec<String> {
        self.messages.lock().unwrap().clone()
    }

    /// Waits for a message containing `needle`; returns its index.
    pub fn wait_for(&self, needle: &str, after: usize, timeout: Duration) -> usize {
        wait_for(&format!("notification `{needle}`"), timeout, Duration::from_millis(20), || {
            self.messages().iter().enumerate().skip(after).find(|(_, m)| m.contains(needle)).map(|(i, _)| i)
        })
    }
}

/// Starts `pgrehearse daemon` and waits for its API to answer.
pub fn start(pgr: &Pgr, port: u16) -> Background {
    let bg = pgr.spawn(&["daemon"]);
    let addr = format!("127.0.0.1:{port}");
    wait_for("the daemon's /healthz", Duration::from_secs(60), Duration::from_millis(50), || {
        http::get(&addr, "/healthz").filter(|r| r.status == 200).map(|_| ())
    });
    bg
}

/// The value of the first sample of the daemon's `/metrics` at `addr`
/// whose line starts with `sample` (name and labels), if any.
pub fn metric(addr: &str, sample: &str) -> Option<f64> {
    let body = http::get(addr, "/metrics")?.body;
    body.lines().find(|l| l.starts_with(sample)).and_then(|l| l.rsplit(' ').next()?.parse().ok())
}
