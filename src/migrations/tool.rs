//! One way to run an external migration tool (Payload's CLI, a `command`
//! source's commands): stdin closed, its own process group, killed with
//! pgrehearse (`PR_SET_PDEATHSIG`), a hard timeout after which the whole
//! group is killed, its output captured line by line — and every secret it
//! was given (the database password, in every form it could be printed:
//! raw, percent-encoded, inside the whole URL) replaced by `***` in
//! everything this module returns: lines, standard output and error, the
//! exit status text. Nothing a tool prints reaches a log, a report, the
//! state store or a mail without passing through [`Secrets::redact`].
//!
//! The password goes to the tool in `PGPASSWORD` (libpq, pgx, lib/pq and
//! node-postgres all read it) and the URL in `DATABASE_URL` carries none,
//! unless the caller asks for it inside the URL ([`Password::InUrl`]) for a
//! tool that reads nothing else.

use std::ffi::OsStr;
use std::io::BufRead;
use std::path::Path;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use percent_encoding::{NON_ALPHANUMERIC, utf8_percent_encode};

use crate::conn_url::ConnUrl;

/// How long to wait for the output pipes to close once the tool has exited
/// (a grandchild that outlives it could hold them open).
const DRAIN_GRACE: Duration = Duration::from_secs(3);

/// The texts that must never leave pgrehearse, longest first so that an
/// encoded form is not half-replaced by a shorter one.
#[derive(Debug, Clone, Default)]
pub struct Secrets(Vec<String>);

impl Secrets {
    /// The password of `url` in every form a tool could print it: as
    /// given, as written in the URL, percent-encoded (upper- and
    /// lower-case hex, as the `url` crate and as `encodeURIComponent` would).
    #[cfg(test)]
    pub fn of_url(url: &ConnUrl) -> Secrets {
        let mut s = Secrets::default();
        s.add_url(url);
        s
    }

    pub fn add_url(&mut self, url: &ConnUrl) {
        let Some(pw) = url.password().filter(|p| !p.is_empty()) else { return };
        let mut forms = vec![pw.clone()];
        if let Ok(u) = url::Url::parse(url.expose())
            && let Some(written) = u.password()
        {
            forms.push(written.to_string());
        }
        let mut u = url::Url::parse("postgres://u@h/d").expect("a valid URL");
        if u.set_password(Some(&pw)).is_ok()
            && let Some(enc) = u.password()
        {
            forms.push(enc.to_string());
        }
        let all = utf8_percent_encode(&pw, NON_ALPHANUMERIC).to_string();
        forms.push(lower_hex(&all));
        forms.push(all);
        forms.push(url::form_urlencoded::byte_serialize(pw.as_bytes()).collect());
        for f in forms {
            self.add(f);
        }
    }

    pub fn add(&mut self, secret: String) {
        if secret.is_empty() || self.0.contains(&secret) {
            return;
        }
        self.0.push(secret);
        self.0.sort_by_key(|s| std::cmp::Reverse(s.len()));
    }

    /// `text` with every secret replaced by `***`.
    pub fn redact(&self, text: &str) -> String {
        let mut out = text.to_string();
        for secret in &self.0 {
            if out.contains(secret.as_str()) {
                out = out.replace(secret.as_str(), "***");
            }
        }
        out
    }
}

/// `%2F` → `%2f`: some encoders write lower-case hex.
fn lower_hex(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut rest = 0;
    for c in s.chars() {
        if c == '%' {
            rest = 2;
            out.push(c);
        } else if rest > 0 {
            rest -= 1;
            out.push(c.to_ascii_lowercase());
        } else {
            out.push(c);
        }
    }
    out
}

/// Where a tool finds the database password.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Password {
    /// In `PGPASSWORD` only; `DATABASE_URL` has none.
    Env,
    /// Also inside `DATABASE_URL`, for tools that read nothing else.
    InUrl,
}

/// Which stream a line came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stream {
    Stdout,
    Stderr,
    /// Both streams through one pipe, in the order the tool wrote them.
    Merged,
}

/// How a tool's run ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Exit {
    Exited {
        success: bool,
        status: String,
    },
    /// Killed, with its process group, after the timeout.
    TimedOut {
        after: Duration,
    },
}

/// A finished run; every text in it is redacted.
#[derive(Debug, Clone)]
pub struct ToolRun {
    pub exit: Exit,
    pub stdout: String,
    /// Standard error (empty when the streams were merged).
    pub stderr: String,
    pub duration: Duration,
}

impl ToolRun {
    pub fn success(&self) -> bool {
        matches!(self.exit, Exit::Exited { success: true, .. })
    }

    /// `exit status: 1`, or `killed after the 30s timeout`.
    pub fn status(&self) -> String {
        match &self.exit {
            Exit::Exited { status, .. } => status.clone(),
            Exit::TimedOut { after } => format!("killed after the {}s timeout", after.as_secs()),
        }
    }

    /// Standard output then standard error, for messages.
    pub fn output(&self) -> String {
        format!("{}{}", self.stdout, self.stderr)
    }
}

#[derive(Debug, thiserror::Error)]
#[error("cannot start `{program}`: {message}; check that it is installed and on PATH")]
pub struct SpawnError {
    pub program: String,
    /// Redacted.
    pub message: String,
}

/// An external tool about to run.
pub struct ToolProcess {
    cmd: tokio::process::Command,
    program: String,
    secrets: Secrets,
    timeout: Duration,
    merge: bool,
}

impl ToolProcess {
    /// `program` with stdin closed, in its own process group, dying with
    /// pgrehearse, and no `PGPASSWORD`/`PGPASSFILE` inherited from ours.
    pub fn new(program: impl AsRef<OsStr>, timeout: Duration) -> ToolProcess {
        let program_name = program.as_ref().to_string_lossy().into_owned();
        let mut cmd = tokio::process::Command::new(program);
        cmd.env_remove("PGPASSWORD").env_remove("PGPASSFILE").stdin(Stdio::null()).process_group(0).kill_on_drop(true);
        crate::pg::tools::die_with_parent(&mut cmd);
        ToolProcess { cmd, program: program_name, secrets: Secrets::default(), timeout, merge: false }
    }

    /// `sh -c command`.
    pub fn shell(command: &str, timeout: Duration) -> ToolProcess {
        let mut t = ToolProcess::new("sh", timeout);
        t.cmd.arg("-c").arg(command);
        t.program = command.to_string();
        t
    }

    pub fn arg(&mut self, a: impl AsRef<OsStr>) -> &mut Self {
        self.cmd.arg(a);
        self
    }

    pub fn current_dir(&mut self, dir: &Path) -> &mut Self {
        self.cmd.current_dir(dir);
        self
    }

    pub fn env(&mut self, key: &str, value: impl AsRef<OsStr>) -> &mut Self {
        self.cmd.env(key, value);
        self
    }

    /// The database at `url`: `DATABASE_URL` (password only with
    /// [`Password::InUrl`]), `PGDATABASE`, `PGAPPNAME`, `PGPASSWORD`; every
    /// form of the password is redacted from the output.
    pub fn database(&mut self, url: &ConnUrl, app_name: &str, password: Password) -> &mut Self {
        self.secrets.add_url(url);
        let shown = match password {
            Password::Env => url.without_password(),
            Password::InUrl => url.expose().to_string(),
        };
        self.cmd.env("DATABASE_URL", shown).env("PGDATABASE", url.database()).env("PGAPPNAME", app_name);
        if let Some(pw) = url.password() {
            self.cmd.env("PGPASSWORD", pw);
        }
        self
    }

    /// Standard output and error through one pipe, so lines keep the order
    /// the tool wrote them in (all of it arrives as [`Stream::Merged`]).
    pub fn merge_output(&mut self) -> &mut Self {
        self.merge = true;
        self
    }

    pub fn secrets(&self) -> &Secrets {
        &self.secrets
    }

    /// Runs the tool to its end or its timeout. `on_line` sees each line
    /// (redacted, with its newline) as it arrives, stamped with its arrival.
    pub async fn run(
        mut self,
        on_line: impl FnMut(Stream, &str, Instant) + Send + 'static,
    ) -> Result<ToolRun, SpawnError> {
        let secrets = self.secrets.clone();
        let spawn_err = |e: std::io::Error| SpawnError {
            program: secrets.redact(&self.program),
            message: secrets.redact(&e.to_string()),
        };
        let on_line = Arc::new(Mutex::new(on_line));
        let mut readers = Vec::new();
        let mut collected = Vec::new();
        if self.merge {
            let (reader, writer) = std::io::pipe().map_err(spawn_err)?;
            self.cmd.stdout(Stdio::from(writer.try_clone().map_err(spawn_err)?)).stderr(Stdio::from(writer));
            readers.push((Stream::Merged, reader));
        } else {
            let (out_r, out_w) = std::io::pipe().map_err(spawn_err)?;
            let (err_r, err_w) = std::io::pipe().map_err(spawn_err)?;
            self.cmd.stdout(Stdio::from(out_w)).stderr(Stdio::from(err_w));
            readers.push((Stream::Stdout, out_r));
            readers.push((Stream::Stderr, err_r));
        }
        let start = Instant::now();
        let mut child = self.cmd.spawn().map_err(spawn_err)?;
        // The command keeps its copies of the pipes' write ends: drop them so
        // the readers see end-of-file when the tool's processes are gone.
        drop(self.cmd);
        let group = GroupGuard(child.id().map(|p| p as libc::pid_t));
        for (stream, reader) in readers {
            let (tx, rx) = tokio::sync::oneshot::channel::<String>();
            let secrets = self.secrets.clone();
            let on_line = Arc::clone(&on_line);
            std::thread::spawn(move || {
                let mut lines = std::io::BufReader::new(reader);
                let mut buf = Vec::new();
                let mut all = String::new();
                loop {
                    buf.clear();
                    match lines.read_until(b'\n', &mut buf) {
                        Ok(0) | Err(_) => break,
                        Ok(_) => {
                            let line = secrets.redact(&String::from_utf8_lossy(&buf));
                            let mut f = on_line.lock().unwrap_or_else(|e| e.into_inner());
                            (*f)(stream, &line, Instant::now());
                            all.push_str(&line);
                        }
                    }
                }
                let _ = tx.send(all);
            });
            collected.push((stream, rx));
        }
        let exit = match tokio::time::timeout(self.timeout, child.wait()).await {
            Ok(status) => {
                group.disarm();
                let status = status.map_err(spawn_err)?;
                Exit::Exited { success: status.success(), status: self.secrets.redact(&status.to_string()) }
            }
            Err(_) => {
                drop(group); // SIGKILL to the whole group
                let _ = child.wait().await;
                Exit::TimedOut { after: self.timeout }
            }
        };
        let (mut stdout, mut stderr) = (String::new(), String::new());
        for (stream, rx) in collected {
            let text = tokio::time::timeout(DRAIN_GRACE, rx).await.ok().and_then(Result::ok).unwrap_or_default();
            match stream {
                Stream::Stderr => stderr = text,
                _ => stdout = text,
            }
        }
        Ok(ToolRun { exit, stdout, stderr, duration: start.elapsed() })
    }
}

/// Kills the tool's whole process group when dropped armed (timeout, or
/// the future dropped mid-run): the tool and anything it started.
struct GroupGuard(Option<libc::pid_t>);

impl GroupGuard {
    fn disarm(mut self) {
        self.0 = None;
    }
}

impl Drop for GroupGuard {
    fn drop(&mut self) {
        if let Some(pgid) = self.0.take() {
            // SAFETY: signals the process group we created with process_group(0).
            unsafe { libc::kill(-pgid, libc::SIGKILL) };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn url() -> ConnUrl {
        ConnUrl::parse("postgres://app:p%40ss%2Fw%C3%B6rd%20x@localhost/app").unwrap()
    }

    #[test]
    fn every_form_of_the_password_is_redacted() {
        let s = Secrets::of_url(&url());
        for form in ["p@ss/wörd x", "p%40ss%2Fw%C3%B6rd%20x", "p%40ss%2fw%c3%b6rd%20x", "p%40ss%2Fw%C3%B6rd+x"] {
            let text = format!("url=postgres://app:{form}@localhost/app end");
            let out = s.redact(&text);
            assert!(!out.contains("ss"), "{form} → {out}");
            assert!(out.contains("***"), "{out}");
        }
    }

    #[tokio::test]
    async fn output_env_and_errors_are_redacted_and_the_url_has_no_password() {
        let mut t = ToolProcess::shell("env; echo \"$0 $DATABASE_URL\" >&2; exit 3", Duration::from_secs(10));
        t.database(&url(), "pgrehearse-test", Password::Env);
        let lines = Arc::new(Mutex::new(Vec::new()));
        let seen = Arc::clone(&lines);
        let run = t.run(move |_, l, _| seen.lock().unwrap().push(l.to_string())).await.unwrap();
        assert!(!run.success());
        assert_eq!(run.status(), "exit status: 3");
        assert!(run.stdout.contains("PGPASSWORD=***"), "{}", run.stdout);
        assert!(run.stderr.contains("postgres://app@localhost/app"), "{}", run.stderr);
        let all = format!("{}{:?}", run.output(), lines.lock().unwrap());
        assert!(!all.contains("p@ss") && !all.contains("p%40ss"), "{all}");
    }

    #[tokio::test]
    async fn a_tool_past_its_timeout_is_killed_with_its_group() {
        let t = ToolProcess::shell("sleep 30 & sleep 30", Duration::from_millis(300));
        let started = Instant::now();
        let run = t.run(|_, _, _| {}).await.unwrap();
        assert_eq!(run.exit, Exit::TimedOut { after: Duration::from_millis(300) });
        assert!(started.elapsed() < Duration::from_secs(10), "the grandchild's pipe did not hold the run");
        assert!(run.status().starts_with("killed after"));
    }
}
