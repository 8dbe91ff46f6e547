//! What the application would feel while the plan runs on the scratch
//! copy: probe sessions do, again and again, what the application does to
//! every table a migration names — a read and a write — and each wait is
//! measured. Per migration and table, `blocking[]` reports the longest
//! single wait of each and the statement that caused it.
//!
//! A probe asks for exactly the locks the application's statement takes,
//! without running it or changing data: `EXPLAIN SELECT FROM t` (ACCESS
//! SHARE on the table *and its indexes*, which the planner opens — so a
//! `REINDEX` or a `DROP INDEX` blocks it as it blocks the application) and
//! `EXPLAIN DELETE FROM t WHERE false` (ROW EXCLUSIVE on the table and its
//! indexes, as an `UPDATE`/`INSERT`/`DELETE`), each in a transaction that is
//! rolled back at once. `EXPLAIN` fires no trigger. A probe asks with a
//! short `lock_timeout` and asks again when it runs out: consecutive
//! attempts are one wait, so a wait of minutes is measured whole while a
//! stop never waits for long.
//!
//! Which tables: those a migration's SQL names (tables, or indexes by
//! their table), known before it runs — a probe must be running when the
//! lock is taken. Tables reached only through a trigger or a function are
//! not probed. Probes run only for plans pgrehearse runs itself (sqlx,
//! diesel), through the executor's hooks (see `runner`).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::Serialize;
use sqlx::{Connection, PgConnection, Row};
use tokio_util::sync::CancellationToken;

use super::observer::strength;
use crate::conn_url::ConnUrl;
use crate::migrations::{Migration, classify};
use crate::pg::{self, PgError};

/// How long one attempt waits for its lock before it asks again.
const ATTEMPT_TIMEOUT: Duration = Duration::from_millis(200);

/// The pause between two attempts that were not blocked: how late a probe
/// may notice the start of a wait (a wait is under-measured by at most
/// this), and what keeps probes light (`bench/probes.py`).
pub const PAUSE: Duration = Duration::from_millis(50);

/// Waits shorter than this are a probe's own round trip, not a wait.
pub const MIN_WAIT: Duration = Duration::from_millis(5);

/// Tables probed at most (two sessions each); the largest first.
pub const MAX_TABLES: usize = 10;

/// What a probe does to its table.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Access {
    /// The locks of a `SELECT`.
    Read,
    /// The locks of an `UPDATE`, `INSERT` or `DELETE`.
    Write,
}

impl Access {
    fn statement(self, table: &str) -> String {
        let probe = match self {
            Access::Read => format!("EXPLAIN SELECT FROM {table}"),
            Access::Write => format!("EXPLAIN DELETE FROM {table} WHERE false"),
        };
        format!("BEGIN; {probe}; ROLLBACK")
    }

    /// Whether a lock of `mode` (as `pg_locks` names it) held by another
    /// session on the table makes this access wait.
    pub fn blocked_by(self, mode: &str) -> bool {
        match self {
            Access::Read => mode == "AccessExclusiveLock",
            Access::Write => strength(mode) >= strength("ShareLock"),
        }
    }
}

/// A table a migration names, as it stood before the plan.
#[derive(Debug, Clone, PartialEq)]
pub struct Probed {
    pub oid: i64,
    /// As reports name relations (`orders`, `app.orders`).
    pub relation: String,
    /// `schema.name`, quoted for SQL.
    quoted: String,
    bytes: i64,
}

/// The tables each migration of `plan` names (directly, or through one of
/// their indexes), resolved on `conn` before the plan runs.
pub async fn tables(conn: &mut PgConnection, plan: &[Migration]) -> Result<Vec<Vec<Probed>>, sqlx::Error> {
    let mut out = Vec::with_capacity(plan.len());
    for m in plan {
        let names = classify::names(&m.up_sql);
        let rows = sqlx::query(
            "SELECT DISTINCT t.oid::int8 AS oid, tn.nspname::text AS schema, t.relname::text AS name,
                    pg_total_relation_size(t.oid) AS bytes
               FROM pg_class c
               JOIN pg_namespace cn ON cn.oid = c.relnamespace
               LEFT JOIN pg_index i ON i.indexrelid = c.oid
               JOIN pg_class t ON t.oid = COALESCE(i.indrelid, c.oid)
               JOIN pg_namespace tn ON tn.oid = t.relnamespace
              WHERE c.relkind IN ('r', 'p', 'i', 'I') AND t.relkind IN ('r', 'p')
                AND cn.nspname NOT IN ('pg_catalog', 'information_schema')
                AND cn.nspname NOT LIKE 'pg\\_%'
                AND (c.relname = ANY($1) OR cn.nspname || '.' || c.relname = ANY($1))",
        )
        .bind(&names)
        .fetch_all(&mut *conn)
        .await?;
        let mut list = Vec::with_capacity(rows.len());
        for r in rows {
            let (schema, name): (String, String) = (r.try_get("schema")?, r.try_get("name")?);
            list.push(Probed {
                oid: r.try_get("oid")?,
                relation: if schema == "public" { name.clone() } else { format!("{schema}.{name}") },
                quoted: format!("{}.{}", pg::quote_ident(&schema), pg::quote_ident(&name)),
                bytes: r.try_get("bytes")?,
            });
        }
        list.sort_by_key(|p| std::cmp::Reverse(p.bytes));
        out.push(list);
    }
    Ok(out)
}

/// One wait of one probe: from the attempt that found the lock taken to the
/// one that got it.
#[derive(Debug, Clone)]
pub struct Wait {
    pub oid: i64,
    pub access: Access,
    pub from: Instant,
    pub to: Instant,
}

impl Wait {
    fn ms(&self) -> u64 {
        (self.to - self.from).as_millis() as u64
    }
}

/// The probe sessions of a plan, running until [`Probes::stop`].
pub struct Probes {
    /// The tables probed (OIDs): at most [`MAX_TABLES`] of those asked for.
    pub probed: Vec<i64>,
    waits: Arc<Mutex<Vec<Wait>>>,
    stop: CancellationToken,
    /// Attempts made by every session (for the log).
    attempts: Arc<AtomicU64>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Probes {
    /// Opens a read and a write session on `url` for each of `tables` (the
    /// [`MAX_TABLES`] largest; the sessions connect at once, so the plan
    /// waits for one connection, not for all) and starts probing.
    pub async fn start(url: &ConnUrl, tables: &[Probed]) -> Result<Probes, PgError> {
        let mut largest: Vec<&Probed> = Vec::new();
        for t in tables {
            if !largest.iter().any(|l| l.oid == t.oid) {
                largest.push(t);
            }
        }
        largest.sort_by_key(|p| std::cmp::Reverse(p.bytes));
        if largest.len() > MAX_TABLES {
            let skipped: Vec<&str> = largest[MAX_TABLES..].iter().map(|p| p.relation.as_str()).collect();
            tracing::warn!(skipped = %skipped.join(", "), "Probing only the {MAX_TABLES} largest tables the plan names.");
            largest.truncate(MAX_TABLES);
        }
        let sessions = largest.iter().flat_map(|t| [Access::Read, Access::Write].map(|a| (*t, a)));
        let connected = futures::future::try_join_all(sessions.map(|(t, access)| async move {
            let mut conn = pg::connect(url, "pgrehearse-probe").await?;
            let timeout = format!("SET lock_timeout = {}", ATTEMPT_TIMEOUT.as_millis());
            exec(&mut conn, &timeout).await.map_err(|source| PgError::Query { url: url.redacted(), source })?;
            Ok::<_, PgError>((conn, t, access))
        }))
        .await?;
        let waits = Arc::new(Mutex::new(Vec::new()));
        let stop = CancellationToken::new();
        let attempts = Arc::new(AtomicU64::new(0));
        let mut tasks = Vec::new();
        for (conn, t, access) in connected {
            let (w, s, n, sql) = (waits.clone(), stop.clone(), attempts.clone(), access.statement(&t.quoted));
            tasks.push(tokio::spawn(probe(conn, t.oid, access, sql, w, s, n)));
        }
        Ok(Probes { probed: largest.iter().map(|p| p.oid).collect(), waits, stop, attempts, tasks })
    }

    /// Stops the probes and hands back every wait they measured.
    pub async fn stop(mut self) -> Vec<Wait> {
        self.stop.cancel();
        for t in std::mem::take(&mut self.tasks) {
            let _ = t.await;
        }
        let waits = std::mem::take(&mut *self.waits.lock().expect("probe mutex"));
        let attempts = self.attempts.load(Ordering::Relaxed);
        tracing::info!(tables = self.probed.len(), attempts, waits = waits.len(), "Probes stopped.");
        waits
    }
}

/// A rehearsal dropped mid-plan (SIGTERM) ends its probes' sessions too, so
/// that its scratch database can be dropped.
impl Drop for Probes {
    fn drop(&mut self) {
        self.stop.cancel();
        for t in &self.tasks {
            t.abort();
        }
    }
}

/// One probe session's loop.
async fn probe(
    mut conn: PgConnection,
    oid: i64,
    access: Access,
    sql: String,
    waits: Arc<Mutex<Vec<Wait>>>,
    stop: CancellationToken,
    attempts: Arc<AtomicU64>,
) {
    let mut waiting_since: Option<Instant> = None;
    let record = |from: Instant, to: Instant| {
        if to - from >= MIN_WAIT {
            waits.lock().expect("probe mutex").push(Wait { oid, access, from, to });
        }
    };
    while !stop.is_cancelled() {
        let t = Instant::now();
        attempts.fetch_add(1, Ordering::Relaxed);
        let res = exec(&mut conn, &sql).await;
        let now = Instant::now();
        match res {
            Ok(_) => record(waiting_since.take().unwrap_or(t), now),
            Err(e) => {
                let _ = exec(&mut conn, "ROLLBACK").await;
                if matches!(&e, sqlx::Error::Database(db) if db.code().as_deref() == Some("55P03")) {
                    waiting_since.get_or_insert(t);
                    continue;
                }
                // The table is gone or renamed: the wait (if any) ended here.
                record(waiting_since.take().unwrap_or(t), now);
                break;
            }
        }
        tokio::select! {
            _ = stop.cancelled() => {}
            _ = tokio::time::sleep(PAUSE) => {}
        }
    }
    if let Some(from) = waiting_since {
        record(from, Instant::now());
    }
    let _ = conn.close().await;
}

/// `sql` (several statements) on `conn`, through `Executor::execute`, whose
/// boxed future is `Send`: the compiler cannot prove `RawSql::execute`'s
/// `async fn` future `Send` for `tokio::spawn` (rust-lang/rust#102211).
fn exec<'a>(
    conn: &'a mut PgConnection,
    sql: &'a str,
) -> futures::future::BoxFuture<'a, Result<sqlx::postgres::PgQueryResult, sqlx::Error>> {
    sqlx::Executor::execute(conn, sqlx::raw_sql(sql))
}

/// A lock the plan's session held on a table, and which statement took it.
#[derive(Debug, Clone)]
pub struct Held {
    pub oid: i64,
    pub mode: String,
    pub from: Instant,
    pub to: Instant,
    pub migration: usize,
    pub statement: usize,
}

/// When statement `statement` of migration `migration` ran.
#[derive(Debug, Clone)]
pub struct Ran {
    pub migration: usize,
    pub statement: usize,
    pub from: Instant,
    pub to: Instant,
}

/// The statement behind a wait: the first of the plan's locks on that table
/// that blocks this access and was held during the wait; else the statement
/// running when the wait began (a lock on an index, or one the sampler
/// missed); None when the wait began before any statement ran.
fn cause(w: &Wait, held: &[Held], ran: &[Ran]) -> Option<(usize, usize)> {
    let by_lock = held
        .iter()
        .filter(|h| h.oid == w.oid && w.access.blocked_by(&h.mode) && h.from <= w.to && h.to >= w.from)
        .min_by_key(|h| h.from);
    if let Some(h) = by_lock {
        return Some((h.migration, h.statement));
    }
    let during = ran.iter().find(|r| r.from <= w.from && w.from <= r.to);
    let running = during.or_else(|| ran.iter().filter(|r| r.from <= w.from).max_by_key(|r| r.from));
    let running = running.or_else(|| ran.iter().filter(|r| r.from <= w.to).min_by_key(|r| r.from));
    running.map(|r| (r.migration, r.statement))
}

/// What one migration made the application wait for, per table.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Blocking {
    pub relation: String,
    /// The longest single wait of a read (0: none measured, under 5 ms).
    pub reads_blocked_ms: u64,
    /// The longest single wait of a write.
    pub writes_blocked_ms: u64,
    /// The statement behind the longer of the two (shortened), null when
    /// nothing waited.
    pub statement: Option<String>,
}

/// `blocking[]` of each migration: every table it names, and every table
/// whose waits its statements caused. `sql(migration, statement)` gives a
/// statement's text.
pub fn blocking(
    named: &[Vec<Probed>],
    waits: &[Wait],
    held: &[Held],
    ran: &[Ran],
    sql: impl Fn(usize, usize) -> Option<String>,
) -> Vec<Vec<Blocking>> {
    let names: HashMap<i64, &str> = named.iter().flatten().map(|p| (p.oid, p.relation.as_str())).collect();
    // (migration, oid) → (longest read, longest write, statement of the longest).
    let mut worst: HashMap<(usize, i64), (u64, u64, Option<(u64, usize)>)> = HashMap::new();
    for (i, list) in named.iter().enumerate() {
        for p in list {
            worst.entry((i, p.oid)).or_default();
        }
    }
    for w in waits {
        let Some((mig, stmt)) = cause(w, held, ran) else { continue };
        let e = worst.entry((mig, w.oid)).or_default();
        let ms = w.ms();
        match w.access {
            Access::Read => e.0 = e.0.max(ms),
            Access::Write => e.1 = e.1.max(ms),
        }
        if e.2.is_none_or(|(longest, _)| ms > longest) {
            e.2 = Some((ms, stmt));
        }
    }
    let mut out = vec![Vec::new(); named.len()];
    for ((mig, oid), (reads, writes, stmt)) in worst {
        let Some(list) = out.get_mut(mig) else { continue };
        list.push(Blocking {
            relation: names.get(&oid).map_or_else(|| oid.to_string(), |n| n.to_string()),
            reads_blocked_ms: reads,
            writes_blocked_ms: writes,
            statement: stmt.and_then(|(_, s)| sql(mig, s)),
        });
    }
    for list in &mut out {
        list.sort_by(|a, b| {
            b.reads_blocked_ms
                .max(b.writes_blocked_ms)
                .cmp(&a.reads_blocked_ms.max(a.writes_blocked_ms))
                .then_with(|| a.relation.cmp(&b.relation))
        });
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn probed(oid: i64, name: &str) -> Probed {
        Probed { oid, relation: name.into(), quoted: format!("public.{name}"), bytes: 0 }
    }

    #[test]
    fn which_locks_block_which_access() {
        assert!(Access::Read.blocked_by("AccessExclusiveLock"));
        assert!(!Access::Read.blocked_by("ShareLock"));
        assert!(Access::Write.blocked_by("ShareLock"));
        assert!(Access::Write.blocked_by("ShareRowExclusiveLock"));
        assert!(!Access::Write.blocked_by("ShareUpdateExclusiveLock"), "CREATE INDEX CONCURRENTLY lets writes through");
        assert!(!Access::Write.blocked_by("RowExclusiveLock"));
    }

    #[test]
    fn a_wait_is_blamed_on_the_statement_that_took_the_lock() {
        let t0 = Instant::now();
        let at = |ms: u64| t0 + Duration::from_millis(ms);
        // Migration 0: LOCK TABLE (0–1 ms) then pg_sleep (1–2000 ms), lock held to commit at 2010 ms.
        let ran = [
            Ran { migration: 0, statement: 0, from: at(0), to: at(1) },
            Ran { migration: 0, statement: 1, from: at(1), to: at(2000) },
            Ran { migration: 1, statement: 0, from: at(2020), to: at(2030) },
        ];
        let held = [Held {
            oid: 1,
            mode: "AccessExclusiveLock".into(),
            from: at(0),
            to: at(2010),
            migration: 0,
            statement: 0,
        }];
        let waits = [
            Wait { oid: 1, access: Access::Read, from: at(15), to: at(2010) },
            Wait { oid: 1, access: Access::Write, from: at(5), to: at(2011) },
            // A slow round trip during migration 1, no lock of its own: blamed on what ran.
            Wait { oid: 1, access: Access::Read, from: at(2021), to: at(2028) },
        ];
        let named = vec![vec![probed(1, "orders")], vec![probed(1, "orders"), probed(2, "customers")]];
        let b = blocking(&named, &waits, &held, &ran, |m, s| Some(format!("{m}/{s}")));
        assert_eq!(
            b[0],
            [Blocking {
                relation: "orders".into(),
                reads_blocked_ms: 1995,
                writes_blocked_ms: 2006,
                statement: Some("0/0".into())
            }]
        );
        assert_eq!(b[1].len(), 2, "every named table is listed, waits or not: {:?}", b[1]);
        assert_eq!((b[1][0].relation.as_str(), b[1][0].reads_blocked_ms), ("orders", 7));
        assert_eq!(
            (b[1][1].relation.as_str(), b[1][1].writes_blocked_ms, b[1][1].statement.as_deref()),
            ("customers", 0, None)
        );
    }
}
