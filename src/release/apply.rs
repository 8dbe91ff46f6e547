//! Runs an approved plan on live, exactly as it was rehearsed: sqlx and
//! diesel files by pgrehearse itself (the whole plan in one transaction when
//! every file is transactional, so a failure rolls everything back;
//! otherwise file by file, non-transactional files statement by
//! statement), Payload through its CLI and `command` sources through their
//! command. The history table is written as the tool writes it. A
//! migration that fails on `lock_timeout` is retried with doubling backoff
//! (the whole transaction in single-transaction mode); `statement_timeout`
//! stays the ceiling. Every migration is journaled before it starts.
//! (A step reverted by `on_failure = "down"` is marked `reverted` in the
//! release record by `recovery`.)

use std::time::{Duration, Instant};

use serde::Serialize;
use sqlx::PgConnection;

use super::journal::{Journal, step};
use crate::config::{MigrationKind, ReleasePolicy, Target};
use crate::migrations::payload::PayloadError;
use crate::migrations::{self, Change, Migration, Source, command as cmd, split};
use crate::pg::url::ConnUrl;
use crate::state::StateError;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum StepStatus {
    Applied,
    Failed,
    /// Ran, then rolled back with the plan's transaction.
    RolledBack,
    NotRun,
}

/// One migration of the release, as the report and the record show it.
#[derive(Debug, Clone, Serialize)]
pub struct StepResult {
    pub version: String,
    pub name: String,
    pub transactional: bool,
    pub status: StepStatus,
    pub duration_ms: u64,
    /// Runs of it (1 + retries after lock timeouts).
    pub attempts: u32,
    pub error: Option<String>,
}

impl StepResult {
    fn new(m: &Migration) -> StepResult {
        StepResult {
            version: m.version.clone(),
            name: m.name.clone(),
            transactional: m.transactional,
            status: StepStatus::NotRun,
            duration_ms: 0,
            attempts: 0,
            error: None,
        }
    }
}

/// How the plan runs on live.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Mode {
    SingleTransaction,
    PerMigration,
    Payload,
    Command,
}

impl Mode {
    pub fn of(kind: MigrationKind, all_transactional: bool) -> Mode {
        match kind {
            MigrationKind::Payload => Mode::Payload,
            MigrationKind::Command => Mode::Command,
            _ if all_transactional => Mode::SingleTransaction,
            _ => Mode::PerMigration,
        }
    }
}

/// What happened on live.
#[derive(Debug, Clone)]
pub struct Outcome {
    pub steps: Vec<StepResult>,
    /// The first failure, as a sentence.
    pub failure: Option<String>,
    /// Whether live may hold part of the plan (something committed, or a
    /// non-transactional statement ran): then recovery is needed.
    pub partial: bool,
}

/// Runs `plan` on live.
pub async fn run(
    source: &Source<'_>,
    target: &Target,
    plan: &[Migration],
    mode: Mode,
    journal: &Journal,
) -> Result<Outcome, StateError> {
    let url = &target.live_url;
    match mode {
        Mode::SingleTransaction | Mode::PerMigration => {
            let mut conn = match crate::rehearsal::runner::session(url, target, "pgrehearse-release").await {
                Ok(c) => c,
                Err(e) => {
                    let steps = plan.iter().map(StepResult::new).collect();
                    return Ok(Outcome { steps, failure: Some(e.to_string()), partial: false });
                }
            };
            let kind = source.kind();
            let table = source.table();
            if mode == Mode::SingleTransaction {
                single(&mut conn, kind, &table, plan, &target.release, journal).await
            } else {
                per_migration(&mut conn, kind, &table, plan, &target.release, journal).await
            }
        }
        Mode::Payload => payload(source, url, plan, journal).await,
        Mode::Command => command(source, url, plan, journal).await,
    }
}

/// Whether an error is a lock timeout (SQLSTATE 55P03), which is retried.
fn is_lock_timeout(e: &sqlx::Error) -> bool {
    matches!(e, sqlx::Error::Database(db) if db.code().as_deref() == Some("55P03"))
}

fn backoff(policy: &ReleasePolicy, attempt: u32) -> Duration {
    let d = policy.lock_retry_backoff.saturating_mul(1u32 << attempt.min(16));
    d.min(Duration::from_secs(30))
}

/// A statement's error as a sentence naming the file and line.
fn describe(m: &Migration, stmt: &split::Statement, e: &sqlx::Error) -> String {
    let msg = match e {
        sqlx::Error::Database(db) => format!("{} (SQLSTATE {})", db.message(), db.code().unwrap_or_default()),
        other => other.to_string(),
    };
    format!(
        "migration {} ({}) failed at line {} ({}): {msg}",
        m.version,
        m.path.display(),
        stmt.line,
        crate::rehearsal::runner::excerpt(&stmt.sql)
    )
}

async fn exec(conn: &mut PgConnection, sql: &str) -> Result<(), sqlx::Error> {
    sqlx::raw_sql(sql).execute(&mut *conn).await.map(|_| ())
}

/// The statements of `m` and its history row, on `conn` as it is (in the
/// caller's transaction, if any). Returns the failing statement's error.
async fn run_file(
    conn: &mut PgConnection,
    kind: MigrationKind,
    table: &str,
    m: &Migration,
    started: Instant,
) -> Result<(), (String, sqlx::Error)> {
    for stmt in split::split(&m.up_sql) {
        if let Err(e) = exec(conn, &stmt.sql).await {
            return Err((describe(m, &stmt, &e), e));
        }
    }
    migrations::record(conn, kind, table, m, Change::Applied(started.elapsed()))
        .await
        .map_err(|e| (format!("recording migration {} in {table} failed: {e}", m.version), e))
}

/// The whole plan in one transaction; a lock timeout retries all of it.
async fn single(
    conn: &mut PgConnection,
    kind: MigrationKind,
    table: &str,
    plan: &[Migration],
    policy: &ReleasePolicy,
    journal: &Journal,
) -> Result<Outcome, StateError> {
    let mut steps: Vec<StepResult> = plan.iter().map(StepResult::new).collect();
    let mut attempt = 0;
    'attempt: loop {
        for s in steps.iter_mut() {
            s.attempts = attempt + 1;
        }
        if let Err(e) = exec(conn, "BEGIN").await {
            return Ok(Outcome { steps, failure: Some(format!("BEGIN on live failed: {e}")), partial: false });
        }
        for (i, m) in plan.iter().enumerate() {
            journal.step(step::MIGRATION, Some(&m.version)).await?;
            let t = Instant::now();
            let ran = run_file(conn, kind, table, m, t).await;
            steps[i].duration_ms = t.elapsed().as_millis() as u64;
            if let Err((text, e)) = ran {
                let _ = exec(conn, "ROLLBACK").await;
                if is_lock_timeout(&e) && attempt < policy.lock_retries {
                    retry_wait(policy, attempt, m, journal).await?;
                    attempt += 1;
                    continue 'attempt;
                }
                steps[i].status = StepStatus::Failed;
                steps[i].error = Some(text.clone());
                for s in steps.iter_mut().take(i) {
                    s.status = StepStatus::RolledBack;
                }
                let text = if is_lock_timeout(&e) {
                    format!("{text}; still locked after {} retries", policy.lock_retries)
                } else {
                    text
                };
                return Ok(Outcome { steps, failure: Some(text), partial: false });
            }
            steps[i].status = StepStatus::Applied;
        }
        if let Err(e) = exec(conn, "COMMIT").await {
            // A failed COMMIT is a rollback, unless the connection broke
            // while the server committed: the history decides (recovery).
            for s in steps.iter_mut() {
                s.status = StepStatus::RolledBack;
            }
            let partial = matches!(e, sqlx::Error::Io(_));
            return Ok(Outcome { steps, failure: Some(format!("COMMIT on live failed: {e}")), partial });
        }
        return Ok(Outcome { steps, failure: None, partial: false });
    }
}

/// File by file: each transactional file in its own transaction (retried
/// whole on a lock timeout), each non-transactional one statement by
/// statement (a statement retried on a lock timeout, after dropping an
/// invalid index its interrupted concurrent build left).
async fn per_migration(
    conn: &mut PgConnection,
    kind: MigrationKind,
    table: &str,
    plan: &[Migration],
    policy: &ReleasePolicy,
    journal: &Journal,
) -> Result<Outcome, StateError> {
    let mut steps: Vec<StepResult> = plan.iter().map(StepResult::new).collect();
    for (i, m) in plan.iter().enumerate() {
        journal.step(step::MIGRATION, Some(&m.version)).await?;
        let t = Instant::now();
        let result = if m.transactional {
            transactional_file(conn, kind, table, m, policy, journal, &mut steps[i].attempts).await?
        } else {
            statement_by_statement(conn, kind, table, m, policy, journal, &mut steps[i].attempts).await?
        };
        steps[i].duration_ms = t.elapsed().as_millis() as u64;
        if let Err(text) = result {
            steps[i].status = StepStatus::Failed;
            steps[i].error = Some(text.clone());
            // What committed before, or a non-transactional statement, is on live.
            let partial = i > 0 || !m.transactional;
            return Ok(Outcome { steps, failure: Some(text), partial });
        }
        steps[i].status = StepStatus::Applied;
        journal.step(step::MIGRATION_DONE, Some(&m.version)).await?;
    }
    Ok(Outcome { steps, failure: None, partial: false })
}

async fn transactional_file(
    conn: &mut PgConnection,
    kind: MigrationKind,
    table: &str,
    m: &Migration,
    policy: &ReleasePolicy,
    journal: &Journal,
    attempts: &mut u32,
) -> Result<Result<(), String>, StateError> {
    loop {
        *attempts += 1;
        if let Err(e) = exec(conn, "BEGIN").await {
            return Ok(Err(format!("BEGIN on live failed: {e}")));
        }
        let t = Instant::now();
        match run_file(conn, kind, table, m, t).await {
            Ok(()) => {
                return Ok(exec(conn, "COMMIT")
                    .await
                    .map_err(|e| format!("COMMIT of migration {} failed: {e}", m.version)));
            }
            Err((text, e)) => {
                let _ = exec(conn, "ROLLBACK").await;
                if is_lock_timeout(&e) && *attempts <= policy.lock_retries {
                    retry_wait(policy, *attempts - 1, m, journal).await?;
                    continue;
                }
                return Ok(Err(text));
            }
        }
    }
}

async fn statement_by_statement(
    conn: &mut PgConnection,
    kind: MigrationKind,
    table: &str,
    m: &Migration,
    policy: &ReleasePolicy,
    journal: &Journal,
    attempts: &mut u32,
) -> Result<Result<(), String>, StateError> {
    let started = Instant::now();
    *attempts = 1;
    for stmt in split::split(&m.up_sql) {
        let mut tries = 0;
        loop {
            let invalid_before = crate::pg::invalid_indexes(conn).await.unwrap_or_default();
            match exec(conn, &stmt.sql).await {
                Ok(()) => break,
                Err(e) if is_lock_timeout(&e) && tries < policy.lock_retries => {
                    // An interrupted CREATE INDEX CONCURRENTLY leaves an invalid index behind.
                    for idx in crate::pg::invalid_indexes(conn).await.unwrap_or_default() {
                        if !invalid_before.contains(&idx) {
                            let (schema, name) = idx.split_once('.').unwrap_or(("public", &idx));
                            let sql = format!(
                                "DROP INDEX CONCURRENTLY IF EXISTS {}.{}",
                                crate::pg::quote_ident(schema),
                                crate::pg::quote_ident(name)
                            );
                            if let Err(e) = exec(conn, &sql).await {
                                return Ok(Err(format!(
                                    "cannot drop the invalid index {idx} left by a lock timeout: {e}"
                                )));
                            }
                        }
                    }
                    retry_wait(policy, tries, m, journal).await?;
                    tries += 1;
                    *attempts += 1;
                }
                Err(e) => return Ok(Err(describe(m, &stmt, &e))),
            }
        }
    }
    Ok(migrations::record(conn, kind, table, m, Change::Applied(started.elapsed()))
        .await
        .map_err(|e| format!("recording migration {} in {table} failed: {e}", m.version)))
}

async fn retry_wait(policy: &ReleasePolicy, attempt: u32, m: &Migration, journal: &Journal) -> Result<(), StateError> {
    let wait = backoff(policy, attempt);
    tracing::warn!(migration = %m.version, attempt = attempt + 1, wait_ms = wait.as_millis() as u64, "Lock timeout; retrying after a pause.");
    journal.step(step::RETRY, Some(&m.version)).await?;
    tokio::time::sleep(wait).await;
    Ok(())
}

/// The Payload project's `migrate` on live (Payload commits file by file).
async fn payload(
    source: &Source<'_>,
    url: &ConnUrl,
    plan: &[Migration],
    journal: &Journal,
) -> Result<Outcome, StateError> {
    let mut steps: Vec<StepResult> = plan.iter().map(StepResult::new).collect();
    let names: Vec<String> = plan.iter().map(|m| m.name.clone()).collect();
    journal.step(step::MIGRATION, Some(&names.join(","))).await?;
    let run = crate::rehearsal::payload_project(source).migrate(url, "pgrehearse-release-payload", &names).await;
    let (migrated, failure, failing, unknown) = match run {
        Ok(r) => (r.migrated, None, None, false),
        Err(e) => {
            let text = e.to_string();
            match e {
                PayloadError::Failed { migration, migrated, .. }
                | PayloadError::Timeout { migration, migrated, .. } => (migrated, Some(text), migration, false),
                // Exit 0 without the rows: what ran is unknown.
                PayloadError::NotRecorded { .. } => (Vec::new(), Some(text), None, true),
                _ => (Vec::new(), Some(text), None, false),
            }
        }
    };
    for s in steps.iter_mut() {
        s.attempts = 1;
        if let Some(d) = migrated.iter().find(|d| d.name == s.name) {
            s.status = StepStatus::Applied;
            s.duration_ms = d.duration_ms;
        } else if failing.as_deref() == Some(s.name.as_str()) {
            s.status = StepStatus::Failed;
            s.error = failure.clone();
        }
    }
    let partial = failure.is_some() && (!migrated.is_empty() || unknown);
    Ok(Outcome { steps, failure, partial })
}

/// The `command` source's `apply` on live, as one step.
async fn command(
    source: &Source<'_>,
    url: &ConnUrl,
    plan: &[Migration],
    journal: &Journal,
) -> Result<Outcome, StateError> {
    let apply = source.config.apply.clone().unwrap_or_default();
    journal.step(step::MIGRATION, Some("apply")).await?;
    let options = crate::rehearsal::external_pg_options(source.target);
    let t = Instant::now();
    let run =
        cmd::run(&apply, source.config, url, "pgrehearse-release-command", source.config.timeout, Some(&options)).await;
    let duration_ms = t.elapsed().as_millis() as u64;
    let failure = match run {
        Ok(r) if r.success => None,
        Ok(r) => Some(format!("`{apply}` failed ({}): {}", r.status, crate::pg::tools::tail(&r.output, 2000))),
        Err(e) => Some(format!("cannot start `{apply}`: {e}")),
    };
    let status = if failure.is_some() { StepStatus::Failed } else { StepStatus::Applied };
    let steps = plan
        .iter()
        .map(|m| StepResult { status, duration_ms, attempts: 1, error: failure.clone(), ..StepResult::new(m) })
        .collect();
    // The tool commits as it goes: a failure may leave part of it on live.
    let partial = failure.is_some();
    Ok(Outcome { steps, failure, partial })
}
