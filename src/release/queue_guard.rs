//! The lock-queue guard of a release. An `ALTER TABLE` waiting for its
//! lock behind a long read does no harm by itself, but every later read
//! and write of that table queues behind the `ALTER`'s request: the outage
//! is the queue, not the migration. `lock_timeout` bounds how long the
//! migration waits, not how long the application does.
//!
//! While the executor runs a plan on live, the guard watches from its own
//! session (`pgrehearse-queue-guard`, through `admin_url` like preflight)
//! every `max_queue_wait / 20` (10–50 ms): when the executor's session is
//! itself waiting for a lock and a client session queued behind it
//! (`pg_blocking_pids()` of a waiting session contains the executor's pid)
//! has waited longer than `max_queue_wait` (`pg_locks.waitstart`), it
//! reads who the executor waits for (`pg_blocking_pids()` of the executor:
//! pid, role, application, state, query start, the first line of the
//! query), then cancels the executor's statement (`pg_cancel_backend`, in
//! the same statement that checks it still waits for a lock). The
//! executor asks [`QueueGuard::take`] when a statement fails with a
//! cancel, and retries it as a lock wait (`lock_retries`, doubling
//! backoff); the release record keeps each cancel and its blockers.
//!
//! A statement that holds its locks and works (a table rewrite) is never
//! cancelled: only lock *waits* form the queues this guards against, and
//! the rehearsal measures the rest. Autovacuum and other background
//! workers queued behind pgrehearse do not count: only client sessions.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::Serialize;
use sqlx::{Connection, PgConnection};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::conn_url::ConnUrl;
use crate::pg;

/// A session pgrehearse's statement waited for: the one to end (or wait
/// for) so that the migration can take its lock.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Blocker {
    pub pid: i32,
    /// Its session role (`pg_stat_activity.usename`).
    pub role: Option<String>,
    pub application_name: Option<String>,
    /// `active`, `idle in transaction`, …
    pub state: Option<String>,
    /// When its current (or last) query started, RFC 3339 UTC.
    pub query_start: Option<String>,
    /// The first line of that query, at most 200 characters (the rest is
    /// left out: literals further down may be data).
    pub query: Option<String>,
}

impl Blocker {
    /// `pid 4242 (role app, psql, idle in transaction, query started …: SELECT …)`.
    pub fn sentence(&self) -> String {
        let mut parts = Vec::new();
        if let Some(r) = &self.role {
            parts.push(format!("role {r}"));
        }
        if let Some(a) = self.application_name.as_deref().filter(|a| !a.is_empty()) {
            parts.push(a.to_string());
        }
        if let Some(s) = &self.state {
            parts.push(s.clone());
        }
        if let Some(q) = &self.query_start {
            parts.push(format!("query started {q}"));
        }
        let query = self.query.as_deref().map(|q| format!(": {q}")).unwrap_or_default();
        format!("pid {} ({}{query})", self.pid, parts.join(", "))
    }
}

/// One cancel of a migration's lock wait by the guard.
#[derive(Debug, Clone, Serialize)]
pub struct QueueCancel {
    /// When, RFC 3339 UTC.
    pub at: String,
    /// Client sessions queued behind pgrehearse's lock request then.
    pub queued: u32,
    /// The longest of their waits, in ms (just over `max_queue_wait`).
    pub waited_ms: u64,
    /// Whom pgrehearse's statement was waiting for.
    pub blocked_by: Vec<Blocker>,
}

impl QueueCancel {
    /// The blockers as one phrase.
    pub fn blockers(&self) -> String {
        if self.blocked_by.is_empty() {
            return "a session that ended before it could be named".into();
        }
        self.blocked_by.iter().map(Blocker::sentence).collect::<Vec<_>>().join("; ")
    }
}

/// The guard of one executor session; stopped on [`QueueGuard::stop`] or
/// drop.
pub struct QueueGuard {
    stop: CancellationToken,
    task: Option<JoinHandle<()>>,
    cancelled: Arc<Mutex<Option<QueueCancel>>>,
}

impl QueueGuard {
    /// Starts guarding the session `pid` on `url` with `budget`
    /// (`max_queue_wait`). `None` when the budget is zero (the guard is
    /// off) or its session cannot be opened (logged: `lock_timeout` alone
    /// then bounds the waits).
    pub async fn start(url: &ConnUrl, pid: i32, budget: Duration) -> Option<QueueGuard> {
        if budget.is_zero() {
            return None;
        }
        let mut conn = match pg::connect(url, "pgrehearse-queue-guard").await {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(error = %e, "The lock-queue guard cannot connect to live; lock_timeout alone bounds how long the application may queue behind the migrations.");
                return None;
            }
        };
        // The guard's own queries must never wait long themselves.
        if let Err(e) = sqlx::raw_sql("SET statement_timeout = 5000; SET lock_timeout = 1000").execute(&mut conn).await
        {
            tracing::warn!(error = %e, "The lock-queue guard cannot set up its session; running without it.");
            return None;
        }
        let stop = CancellationToken::new();
        let cancelled = Arc::new(Mutex::new(None));
        let task = tokio::spawn(watch(conn, pid, budget, stop.clone(), cancelled.clone()));
        Some(QueueGuard { stop, task: Some(task), cancelled })
    }

    /// The cancel the guard made since it was last asked, if any.
    pub fn take(&self) -> Option<QueueCancel> {
        self.cancelled.lock().expect("guard slot").take()
    }

    /// Stops watching and closes the guard's session.
    pub async fn stop(mut self) {
        self.stop.cancel();
        if let Some(t) = self.task.take() {
            let _ = t.await;
        }
    }
}

impl Drop for QueueGuard {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// How often the guard looks: a twentieth of the budget, 10–50 ms, so a
/// queued session waits at most about the budget plus one period.
fn period(budget: Duration) -> Duration {
    (budget / 20).clamp(Duration::from_millis(10), Duration::from_millis(50))
}

async fn watch(
    mut conn: PgConnection,
    pid: i32,
    budget: Duration,
    stop: CancellationToken,
    slot: Arc<Mutex<Option<QueueCancel>>>,
) {
    let every = period(budget);
    let mut failures = 0u32;
    loop {
        tokio::select! {
            _ = stop.cancelled() => break,
            _ = tokio::time::sleep(every) => {}
        }
        match look(&mut conn, pid, budget, &slot).await {
            Ok(()) => failures = 0,
            Err(e) => {
                failures += 1;
                if failures == 1 {
                    tracing::warn!(error = %e, "The lock-queue guard's query failed; retrying.");
                }
                if failures >= 20 {
                    tracing::warn!(error = %e, "The lock-queue guard gave up; lock_timeout alone bounds how long the application may queue behind the migrations.");
                    break;
                }
            }
        }
    }
    let _ = conn.close().await;
}

/// One look: cancels the executor's lock wait when a client session has
/// queued behind it past the budget.
async fn look(
    conn: &mut PgConnection,
    pid: i32,
    budget: Duration,
    slot: &Mutex<Option<QueueCancel>>,
) -> Result<(), sqlx::Error> {
    // pg_blocking_pids() takes the lock manager's locks: only for sessions
    // that wait, and only while the executor itself waits for a lock.
    let (queued, waited_ms): (i32, f64) = sqlx::query_as(
        "WITH waiting AS MATERIALIZED ( \
             SELECT l.pid, l.waitstart FROM pg_locks l \
              WHERE NOT l.granted AND l.pid <> $1 \
                AND EXISTS (SELECT 1 FROM pg_stat_activity s WHERE s.pid = $1 AND s.wait_event_type = 'Lock')) \
         SELECT count(DISTINCT w.pid)::int4, \
                coalesce(max(extract(epoch FROM clock_timestamp() - w.waitstart) * 1000), 0)::float8 \
           FROM waiting w JOIN pg_stat_activity a ON a.pid = w.pid \
          WHERE a.backend_type = 'client backend' AND $1 = ANY(pg_blocking_pids(w.pid))",
    )
    .bind(pid)
    .fetch_one(&mut *conn)
    .await?;
    if queued == 0 || waited_ms <= budget.as_millis() as f64 {
        return Ok(());
    }
    let rows: Vec<(i32, Option<String>, Option<String>, Option<String>, Option<String>, Option<String>)> =
        sqlx::query_as(
            "SELECT a.pid, a.usename::text, a.application_name, a.state, \
                    to_char(a.query_start AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.MS\"Z\"'), a.query \
               FROM pg_stat_activity a WHERE a.pid = ANY(pg_blocking_pids($1)) ORDER BY a.pid",
        )
        .bind(pid)
        .fetch_all(&mut *conn)
        .await?;
    let blocked_by = rows
        .into_iter()
        .map(|(pid, role, application_name, state, query_start, query)| Blocker {
            pid,
            role,
            application_name,
            state,
            query_start,
            query: query.as_deref().map(first_line),
        })
        .collect();
    let event = QueueCancel {
        at: chrono::Utc::now().to_rfc3339(),
        queued: queued as u32,
        waited_ms: waited_ms as u64,
        blocked_by,
    };
    // Told before the cancel: the executor asks as soon as its statement fails.
    *slot.lock().expect("guard slot") = Some(event);
    let cancelled: Option<bool> = sqlx::query_scalar(
        "SELECT pg_cancel_backend(pid) FROM pg_stat_activity WHERE pid = $1 AND wait_event_type = 'Lock'",
    )
    .bind(pid)
    .fetch_optional(&mut *conn)
    .await
    .map_err(|e| {
        slot.lock().expect("guard slot").take();
        e
    })?;
    if cancelled != Some(true) {
        // It got its lock (or ended) in between: nothing was cancelled.
        slot.lock().expect("guard slot").take();
    }
    Ok(())
}

/// A query as the record keeps it: its first non-empty line, at most 200
/// characters.
fn first_line(query: &str) -> String {
    let line = query.lines().map(str::trim).find(|l| !l.is_empty()).unwrap_or_default();
    if line.chars().count() > 200 { format!("{}…", line.chars().take(199).collect::<String>()) } else { line.into() }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_query_is_kept_to_its_first_line() {
        assert_eq!(first_line("\n  SELECT 'x'\n, secret_column FROM t"), "SELECT 'x'");
        assert_eq!(first_line(&"a".repeat(300)).chars().count(), 200);
    }

    #[test]
    fn the_guard_looks_often_enough_for_its_budget() {
        assert_eq!(period(Duration::from_millis(500)), Duration::from_millis(25));
        assert_eq!(period(Duration::from_millis(100)), Duration::from_millis(10));
        assert_eq!(period(Duration::from_secs(60)), Duration::from_millis(50));
    }

    #[test]
    fn a_blocker_reads_as_one_phrase() {
        let b = Blocker {
            pid: 42,
            role: Some("app".into()),
            application_name: Some("psql".into()),
            state: Some("idle in transaction".into()),
            query_start: Some("2026-01-01T00:00:00.000Z".into()),
            query: Some("SELECT 1".into()),
        };
        assert_eq!(
            b.sentence(),
            "pid 42 (role app, psql, idle in transaction, query started 2026-01-01T00:00:00.000Z: SELECT 1)"
        );
    }
}
