//! Runs migrations on a scratch database exactly as live will run them and
//! measures each one. Native sources (sqlx, diesel) are run statement by
//! statement on one session: in a transaction, the locks each statement took
//! are read from the session's own `pg_locks` right after it (exact, and a
//! lock is held from that statement until commit); outside a transaction
//! (`-- no-transaction`, `run_in_transaction = false`) the sampler watches
//! the session, because such statements release their locks before they
//! return. The history table is written as the tool writes it.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use serde::Serialize;
use sqlx::{Connection, PgConnection};

use super::observer::{self, Catalog, Rewrite, Sampler, SizeDelta};
use crate::config::{MigrationKind, Target};
use crate::migrations::{self, Change, Down, Migration, split};
use crate::pg::url::ConnUrl;
use crate::pg::{self, PgError};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    Applied,
    Failed,
    /// Ran, then rolled back with the plan's single transaction.
    RolledBack,
    NotRun,
}

/// What one migration did, as the report shows it.
#[derive(Debug, Clone, Serialize)]
pub struct MigrationResult {
    pub version: String,
    pub name: String,
    pub file: String,
    pub transactional: bool,
    pub status: Status,
    pub ok: bool,
    pub duration_ms: u64,
    pub statements: Vec<StatementResult>,
    pub locks: Vec<LockHeld>,
    pub rewrites: Vec<Rewrite>,
    pub size_deltas: Vec<SizeDelta>,
    pub wal_bytes: Option<u64>,
    pub error: Option<Failure>,
    /// Filled by the reversibility check.
    pub reversible: Option<super::reversibility::Reversal>,
}

#[derive(Debug, Clone, Serialize)]
pub struct StatementResult {
    pub index: usize,
    pub line: usize,
    pub sql: String,
    pub duration_ms: u64,
}

/// A lock on a relation that existed before the plan (locks on relations the
/// plan creates block nobody).
#[derive(Debug, Clone, Serialize)]
pub struct LockHeld {
    pub relation: String,
    pub mode: String,
    pub held_ms: u64,
    /// The statement (index into `statements`) that took it.
    pub statement: Option<usize>,
    /// True when seen by the sampler (resolution 20 ms), false when read
    /// exactly from the session.
    pub sampled: bool,
    /// Set when an earlier migration of the same transaction took the lock:
    /// it was held all through this one too (`held_ms` is the whole hold).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub taken_by: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Failure {
    pub file: String,
    pub statement: Option<usize>,
    pub line: Option<usize>,
    pub sql: Option<String>,
    pub sqlstate: Option<String>,
    pub message: String,
}

impl Failure {
    /// A failure known only by its file and a message (external tools).
    pub fn of_file(file: String, message: String) -> Failure {
        Failure { file, statement: None, line: None, sql: None, sqlstate: None, message }
    }
}

impl MigrationResult {
    pub fn new(m: &Migration) -> MigrationResult {
        MigrationResult {
            version: m.version.clone(),
            name: m.name.clone(),
            file: m.path.display().to_string(),
            transactional: m.transactional,
            status: Status::NotRun,
            ok: false,
            duration_ms: 0,
            statements: Vec::new(),
            locks: Vec::new(),
            rewrites: Vec::new(),
            size_deltas: Vec::new(),
            wal_bytes: None,
            error: None,
            reversible: None,
        }
    }

    /// The strongest lock per relation, strongest first.
    pub fn strongest_locks(&self) -> Vec<&LockHeld> {
        let mut best: Vec<&LockHeld> = Vec::new();
        for l in &self.locks {
            match best.iter_mut().find(|b| b.relation == l.relation) {
                Some(b) if observer::strength(&l.mode) > observer::strength(&b.mode) => *b = l,
                Some(_) => {}
                None => best.push(l),
            }
        }
        best.sort_by_key(|l| std::cmp::Reverse((observer::strength(&l.mode), l.held_ms)));
        best
    }
}

/// Session settings every run uses, as live will: `lock_timeout` and
/// `statement_timeout` from the target.
pub async fn session(url: &ConnUrl, target: &Target, app: &str) -> Result<PgConnection, PgError> {
    let mut conn = pg::connect(url, app).await?;
    let q = |source| PgError::Query { url: url.redacted(), source };
    let lock = target.lock_timeout.as_millis();
    sqlx::raw_sql(&format!("SET lock_timeout = {lock}")).execute(&mut conn).await.map_err(q)?;
    if let Some(st) = target.statement_timeout {
        sqlx::raw_sql(&format!("SET statement_timeout = {}", st.as_millis())).execute(&mut conn).await.map_err(q)?;
    }
    Ok(conn)
}

/// Runs a native plan on `conn`. When every migration is transactional the
/// whole plan runs in one transaction (as the release will), so a lock is
/// held until the plan commits. Returns one result per migration and
/// whether the whole plan applied.
pub async fn run_native(
    conn: &mut PgConnection,
    url: &ConnUrl,
    kind: MigrationKind,
    table: &str,
    plan: &[Migration],
    pre: &Catalog,
    measure: bool,
) -> Result<(Vec<MigrationResult>, bool), PgError> {
    let q = |source| PgError::Query { url: url.redacted(), source };
    let single = plan.iter().all(|m| m.transactional);
    let needs_sampler = measure && !single;
    let sampler = if needs_sampler { Some(Sampler::start(url).await?) } else { None };
    let pid: i32 = sqlx::query_scalar("SELECT pg_backend_pid()").fetch_one(&mut *conn).await.map_err(q)?;
    let mut results: Vec<MigrationResult> = plan.iter().map(MigrationResult::new).collect();
    // Locks taken in the open transaction: (oid, mode) → (taken at, migration, statement).
    let mut open: Vec<(i64, String, Instant, usize, usize)> = Vec::new();
    let mut seen: HashSet<(i64, String)> = HashSet::new();
    let mut ok = true;
    if single {
        sqlx::raw_sql("BEGIN").execute(&mut *conn).await.map_err(q)?;
    }
    let mut before = if measure { Catalog::capture(conn).await.map_err(q)? } else { Catalog::default() };
    for (i, m) in plan.iter().enumerate() {
        let in_tx = m.transactional;
        if in_tx && !single {
            sqlx::raw_sql("BEGIN").execute(&mut *conn).await.map_err(q)?;
        }
        if measure && in_tx {
            // What the session holds already (measurement reads) is not the migration's.
            seen.extend(observer::own_locks(conn).await.map_err(q)?);
        }
        let wal0 = if measure { Some(observer::wal_position(conn).await.map_err(q)?) } else { None };
        let started = Instant::now();
        let mut failed = None;
        for (s, stmt) in split::split(&m.up_sql).iter().enumerate() {
            let t = Instant::now();
            let res = sqlx::raw_sql(&stmt.sql).execute(&mut *conn).await;
            let took = t.elapsed();
            results[i].statements.push(StatementResult {
                index: s,
                line: stmt.line,
                sql: excerpt(&stmt.sql),
                duration_ms: took.as_millis() as u64,
            });
            if let Err(e) = res {
                failed = Some(failure(m, s, stmt, &e));
                break;
            }
            if !measure {
                continue;
            }
            if in_tx {
                for lock in observer::own_locks(conn).await.map_err(q)? {
                    if seen.insert(lock.clone()) {
                        open.push((lock.0, lock.1, t, i, s));
                    }
                }
            } else if let Some(sampler) = &sampler {
                for l in sampler.held(t, Instant::now() + observer::SAMPLE_INTERVAL, Some(pid)) {
                    if let Some(rel) = pre.get(l.oid).filter(|r| r.is_table()) {
                        results[i].locks.push(LockHeld {
                            relation: rel.qualified(),
                            held_ms: l.held_ms().min(took.as_millis() as u64 + 1),
                            mode: l.mode,
                            statement: Some(s),
                            sampled: true,
                            taken_by: None,
                        });
                    }
                }
            }
        }
        if failed.is_none() {
            let rec = migrations::record(conn, kind, table, m, Change::Applied(started.elapsed())).await;
            if let Err(e) = rec {
                failed = Some(Failure {
                    file: m.path.display().to_string(),
                    statement: None,
                    line: None,
                    sql: None,
                    sqlstate: sqlstate(&e),
                    message: format!("recording the migration in {table} failed: {e}"),
                });
            }
        }
        if let Some(f) = failed {
            ok = false;
            results[i].duration_ms = started.elapsed().as_millis() as u64;
            results[i].status = Status::Failed;
            results[i].error = Some(f);
            if in_tx || single {
                let _ = sqlx::raw_sql("ROLLBACK").execute(&mut *conn).await;
            }
            if single {
                for r in results.iter_mut().take(i) {
                    r.status = Status::RolledBack;
                }
            }
            close_locks(&mut results, &mut open, pre, Instant::now());
            break;
        }
        if in_tx && !single {
            sqlx::raw_sql("COMMIT").execute(&mut *conn).await.map_err(q)?;
            close_locks(&mut results, &mut open, pre, Instant::now());
            seen.clear();
        }
        results[i].duration_ms = started.elapsed().as_millis() as u64;
        results[i].status = Status::Applied;
        results[i].ok = true;
        if measure {
            if let Some(w0) = wal0 {
                results[i].wal_bytes = Some(observer::wal_position(conn).await.map_err(q)?.saturating_sub(w0));
            }
            let after = Catalog::capture(conn).await.map_err(q)?;
            let (rewrites, deltas) = observer::compare(&before, &after);
            results[i].rewrites = rewrites;
            results[i].size_deltas = deltas;
            before = after;
        }
    }
    if single && ok {
        sqlx::raw_sql("COMMIT").execute(&mut *conn).await.map_err(q)?;
        close_locks(&mut results, &mut open, pre, Instant::now());
    }
    if let Some(s) = sampler {
        s.stop().await;
    }
    Ok((results, ok))
}

/// Locks of a transaction end at its commit (or rollback): their held time
/// runs from the statement that took them until `end`. In a plan run as one
/// transaction, a lock taken by one migration is also listed on every later
/// migration that ran while it was held (PostgreSQL does not show a lock
/// taken again, so this is the only way to see it there).
fn close_locks(
    results: &mut [MigrationResult],
    open: &mut Vec<(i64, String, Instant, usize, usize)>,
    pre: &Catalog,
    end: Instant,
) {
    for (oid, mode, at, mig, stmt) in open.drain(..) {
        let Some(rel) = pre.get(oid).filter(|r| r.is_table()) else { continue };
        let lock = LockHeld {
            relation: rel.qualified(),
            mode,
            held_ms: (end - at).as_millis() as u64,
            statement: Some(stmt),
            sampled: false,
            taken_by: None,
        };
        let taker = results[mig].version.clone();
        for later in results.iter_mut().skip(mig + 1).filter(|r| r.status != Status::NotRun) {
            later.locks.push(LockHeld { statement: None, taken_by: Some(taker.clone()), ..lock.clone() });
        }
        results[mig].locks.push(lock);
    }
}

/// Runs `m`'s up (again, unmeasured) or its down SQL on `conn`, in a
/// transaction when the script is transactional, then fixes the history as
/// the tool would. Errors name the line and statement.
pub async fn run_script(
    conn: &mut PgConnection,
    kind: MigrationKind,
    table: &str,
    m: &Migration,
    revert: bool,
) -> Result<Duration, String> {
    let (sql, transactional) = match (&m.down, revert) {
        (_, false) => (m.up_sql.as_str(), m.transactional),
        (Down::Sql { sql, transactional, .. }, true) => (sql.as_str(), *transactional),
        (_, true) => return Err(format!("migration {} has no down script", m.version)),
    };
    let started = Instant::now();
    let change = |took| if revert { Change::Reverted } else { Change::Applied(took) };
    if transactional {
        let mut tx = conn.begin().await.map_err(|e| e.to_string())?;
        execute_all(&mut tx, sql).await?;
        migrations::record(&mut tx, kind, table, m, change(started.elapsed())).await.map_err(|e| e.to_string())?;
        tx.commit().await.map_err(|e| e.to_string())?;
    } else {
        execute_all(conn, sql).await?;
        migrations::record(conn, kind, table, m, change(started.elapsed())).await.map_err(|e| e.to_string())?;
    }
    Ok(started.elapsed())
}

async fn execute_all(conn: &mut PgConnection, sql: &str) -> Result<(), String> {
    for stmt in split::split(sql) {
        sqlx::raw_sql(&stmt.sql)
            .execute(&mut *conn)
            .await
            .map_err(|e| format!("line {}: {}: {e}", stmt.line, excerpt(&stmt.sql)))?;
    }
    Ok(())
}

fn failure(m: &Migration, index: usize, stmt: &split::Statement, e: &sqlx::Error) -> Failure {
    let (message, line) = match e {
        sqlx::Error::Database(db) => {
            let pos = db.try_downcast_ref::<sqlx::postgres::PgDatabaseError>().and_then(|p| match p.position() {
                Some(sqlx::postgres::PgErrorPosition::Original(n)) => Some(n),
                _ => None,
            });
            // The server's position is a character offset into the statement.
            let line =
                pos.map(|n| stmt.line + stmt.sql.chars().take(n.saturating_sub(1)).filter(|c| *c == '\n').count());
            (db.message().to_string(), line.or(Some(stmt.line)))
        }
        other => (other.to_string(), Some(stmt.line)),
    };
    Failure {
        file: m.path.display().to_string(),
        statement: Some(index),
        line,
        sql: Some(excerpt(&stmt.sql)),
        sqlstate: sqlstate(e),
        message,
    }
}

fn sqlstate(e: &sqlx::Error) -> Option<String> {
    match e {
        sqlx::Error::Database(db) => db.code().map(|c| c.to_string()),
        _ => None,
    }
}

/// A statement shortened for reports: one line, at most 200 characters.
pub fn excerpt(sql: &str) -> String {
    let one: String = sql.split_whitespace().collect::<Vec<_>>().join(" ");
    if one.chars().count() > 200 { format!("{}…", one.chars().take(199).collect::<String>()) } else { one }
}
