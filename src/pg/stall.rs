//! Servers that stop answering without closing the connection: a proxy or
//! a NAT box that keeps ACKing while forwarding nothing, a server frozen by
//! its storage. TCP keepalives and `tcp_user_timeout` never fire then (the
//! peer acknowledges), so pgrehearse adds its own watchdog.
//!
//! The watchdog tells a stall from a slow statement by asking the server
//! on a second, independent connection: every half `stall_timeout` it opens
//! a fresh session and runs `SELECT 1`. A 20-minute `CREATE INDEX` or a big
//! `pg_restore` does not stop a new session from answering, so they are
//! never stopped for being long; a server that cannot be reached within
//! `stall_timeout` either is stalled, and the job that talks to it is
//! stopped with [`Stalled`]. A refused or failed probe is not a stall (the
//! operation sees the refusal itself).
//!
//! Also here: the one `stall_timeout` the process runs with (set by the job
//! runner from the configuration, as the progress mode is), which bounds
//! every `pg::connect`, and the libpq keepalive parameters given to the
//! client programs. sqlx 0.8 sets no socket options on its connections (no
//! keepalive, no `tcp_user_timeout`), so its sessions rely on the
//! connect deadline and the watchdog.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use sqlx::Connection;

use super::{ConnUrl, PgError};
use crate::error_class::{Class, Classify};

/// The default until the job runner sets the configured one.
static STALL_TIMEOUT_MS: AtomicU64 = AtomicU64::new(60_000);

/// Sets the `stall_timeout` of this process (the job runner does, from the
/// configuration, before each job).
pub fn set_timeout(d: Duration) {
    STALL_TIMEOUT_MS.store(d.as_millis().max(1) as u64, Ordering::Relaxed);
}

/// The `stall_timeout` in force.
pub fn timeout() -> Duration {
    Duration::from_millis(STALL_TIMEOUT_MS.load(Ordering::Relaxed))
}

/// A server stopped answering while a job talked to it.
#[derive(Debug, thiserror::Error)]
#[error(
    "PostgreSQL at {server} stalled: it accepted the connection but answered nothing for {}s (stall_timeout), so the job `{job}` was stopped; check the server and the network between (a proxy, a firewall, a load balancer that holds connections open), then run it again",
    .after.as_secs()
)]
pub struct Stalled {
    /// The server's URL, password redacted.
    pub server: String,
    pub after: Duration,
    /// The job it stopped (`snapshot`, `release`, …).
    pub job: &'static str,
}

impl Classify for Stalled {
    fn class(&self) -> Class {
        Class::Unavailable
    }

    fn kind(&self) -> &'static str {
        "pg_stalled"
    }
}

/// Watches `servers` until one of them stalls (never returns otherwise;
/// race it against the job). A probe every half `limit`, each given `limit`.
pub async fn watch(servers: &[ConnUrl], limit: Duration, job: &'static str) -> Stalled {
    let every = (limit / 2).max(Duration::from_millis(500));
    loop {
        tokio::time::sleep(every).await;
        for url in servers {
            let t0 = Instant::now();
            let stalled = match tokio::time::timeout(limit, probe(url)).await {
                Err(_) => true,
                Ok(r) => matches!(r, Err(PgError::Stalled { .. })),
            };
            if stalled {
                tracing::error!(server = %url.redacted(), waited_ms = t0.elapsed().as_millis() as u64, "PostgreSQL stopped answering: a fresh session got no answer within stall_timeout.");
                return Stalled { server: url.redacted(), after: limit, job };
            }
        }
    }
}

/// A fresh session and `SELECT 1`: does the server answer at all?
async fn probe(url: &ConnUrl) -> Result<(), PgError> {
    let mut conn = super::connect(url, "pgrehearse-watchdog").await?;
    sqlx::query("SELECT 1")
        .execute(&mut conn)
        .await
        .map_err(|source| PgError::Query { url: url.redacted(), source })?;
    let _ = conn.close().await;
    Ok(())
}

/// libpq connection parameters for the client programs: TCP keepalives and
/// `tcp_user_timeout` from `stall_timeout`, so that a peer gone dead (no
/// ACK) fails the program within about `stall_timeout`, plus a
/// `connect_timeout`. Ignored by libpq on unix sockets; `tcp_user_timeout`
/// needs libpq 12 or later, so older clients get the keepalives only.
pub fn libpq_params(limit: Duration, client_major: u32) -> Vec<(&'static str, String)> {
    let secs = limit.as_secs().max(1);
    let mut p = vec![
        ("keepalives", "1".to_string()),
        ("keepalives_idle", (secs / 2).max(1).to_string()),
        ("keepalives_interval", (secs / 6).max(1).to_string()),
        ("keepalives_count", "3".to_string()),
        ("connect_timeout", secs.max(2).to_string()),
    ];
    if client_major >= 12 {
        p.push(("tcp_user_timeout", limit.as_millis().to_string()));
    }
    p
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn client_parameters_follow_the_stall_timeout() {
        let p = libpq_params(Duration::from_secs(30), 15);
        let get = |k: &str| p.iter().find(|(n, _)| *n == k).map(|(_, v)| v.as_str());
        assert_eq!(get("keepalives"), Some("1"));
        assert_eq!(get("keepalives_idle"), Some("15"));
        assert_eq!(get("keepalives_interval"), Some("5"));
        assert_eq!(get("tcp_user_timeout"), Some("30000"));
        assert_eq!(get("connect_timeout"), Some("30"));
        // libpq 11 does not know tcp_user_timeout and would refuse the URL.
        assert!(libpq_params(Duration::from_secs(30), 11).iter().all(|(k, _)| *k != "tcp_user_timeout"));
    }

    #[tokio::test]
    async fn a_server_that_accepts_and_never_answers_is_a_stall() {
        // A listener that accepts and says nothing: the probe's connection
        // never gets the server's first message.
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let held = tokio::spawn(async move {
            let mut conns = Vec::new();
            while let Ok((c, _)) = listener.accept().await {
                conns.push(c);
            }
        });
        let url = ConnUrl::parse(&format!("postgres://u:secret@127.0.0.1:{port}/db?sslmode=disable")).unwrap();
        let t0 = Instant::now();
        let s = tokio::time::timeout(Duration::from_secs(10), watch(&[url], Duration::from_secs(1), "snapshot"))
            .await
            .expect("the watchdog saw no stall within 10 s");
        assert!(t0.elapsed() >= Duration::from_secs(1), "stopped before the stall timeout: {:?}", t0.elapsed());
        assert!(!s.server.contains("secret"), "{}", s.server);
        assert!(s.to_string().contains("stall_timeout"), "{s}");
        held.abort();
    }
}
