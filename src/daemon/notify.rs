//! The systemd notification protocol (`sd_notify(3)`): datagrams such as
//! `READY=1` or `STATUS=…` sent to the unix socket named by `$NOTIFY_SOCKET`
//! (a path, or `@name` in the abstract namespace), and the watchdog interval
//! from `$WATCHDOG_USEC`. Written by hand: it is one `sendto` per message
//! on a std `UnixDatagram`, and without `$NOTIFY_SOCKET` (not under
//! systemd) every call is a no-op.

use std::os::unix::net::UnixDatagram;
use std::time::Duration;

/// Where notifications go; `None` when not started by systemd.
#[derive(Debug, Clone, Default)]
pub struct Notifier {
    socket: Option<String>,
}

impl Notifier {
    /// Reads `$NOTIFY_SOCKET`.
    pub fn from_env() -> Notifier {
        Notifier { socket: std::env::var("NOTIFY_SOCKET").ok().filter(|s| !s.is_empty()) }
    }

    /// Sends one notification (`KEY=value` lines). Failures are logged once
    /// per call and otherwise ignored: systemd going away must not stop work.
    pub fn send(&self, message: &str) {
        let Some(path) = &self.socket else { return };
        if let Err(e) = send_to(path, message) {
            tracing::warn!(socket = %path, error = %e, "Cannot notify systemd.");
        }
    }

    pub fn ready(&self, status: &str) {
        self.send(&format!("READY=1\nSTATUS={status}"));
    }

    pub fn status(&self, status: &str) {
        self.send(&format!("STATUS={status}"));
    }

    pub fn reloading(&self) {
        self.send(&format!("RELOADING=1\nMONOTONIC_USEC={}", monotonic_usec()));
    }

    pub fn stopping(&self, status: &str) {
        self.send(&format!("STOPPING=1\nSTATUS={status}"));
    }

    pub fn watchdog(&self) {
        self.send("WATCHDOG=1");
    }

    /// Asks systemd for `by` more time before it kills a stopping service.
    pub fn extend_timeout(&self, by: Duration) {
        self.send(&format!("EXTEND_TIMEOUT_USEC={}", by.as_micros()));
    }
}

/// How often to ping the watchdog: half of `$WATCHDOG_USEC`, when it is set
/// for this process (`$WATCHDOG_PID` absent or ours).
pub fn watchdog_interval() -> Option<Duration> {
    let usec: u64 = std::env::var("WATCHDOG_USEC").ok()?.parse().ok()?;
    if let Ok(pid) = std::env::var("WATCHDOG_PID")
        && pid.parse::<u32>().ok() != Some(std::process::id())
    {
        return None;
    }
    (usec > 0).then(|| Duration::from_micros(usec / 2))
}

fn send_to(path: &str, message: &str) -> std::io::Result<()> {
    let sock = UnixDatagram::unbound()?;
    if let Some(name) = path.strip_prefix('@') {
        use std::os::linux::net::SocketAddrExt;
        let addr = std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes())?;
        sock.send_to_addr(message.as_bytes(), &addr)?;
    } else {
        sock.send_to(message.as_bytes(), path)?;
    }
    Ok(())
}

fn monotonic_usec() -> u64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: clock_gettime writes into the timespec we own.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000 + ts.tv_nsec as u64 / 1000
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sends_datagrams_to_a_path_socket() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notify");
        let rx = UnixDatagram::bind(&path).unwrap();
        let n = Notifier { socket: Some(path.display().to_string()) };
        n.ready("idle");
        let mut buf = [0u8; 256];
        let len = rx.recv(&mut buf).unwrap();
        assert_eq!(&buf[..len], b"READY=1\nSTATUS=idle");
        Notifier::default().ready("nothing happens without a socket");
    }
}
