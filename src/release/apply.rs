//! Runs an approved plan on live, exactly as it was rehearsed: sqlx and
//! diesel files by pgrehearse itself (the whole plan in one transaction when
//! every file is transactional, so a failure rolls everything back;
//! otherwise file by file, non-transactional files statement by
//! statement), Payload through its CLI and `command` sources through their
//! command — all through the one executor (`migrations::executor`), with
//! the release's hooks: every migration is journaled before it starts, and
//! a migration that fails on `lock_timeout` is retried with doubling
//! backoff (the whole transaction in single-transaction mode);
//! `statement_timeout` stays the ceiling.
//! (A step reverted by `on_failure = "down"` is marked `reverted` in the
//! release record by `recovery`.)

use std::time::Duration;

use serde::Serialize;
use sqlx::PgConnection;

use super::journal::{Journal, Step as JournalStep};
use crate::config::Target;
use crate::migrations::executor::{self, Executor, Failure, Hooks, Mode, Retry, Status, Step, external};
use crate::migrations::{Migration, Source};
use crate::state::StateError;

/// One migration of the release, as the report and the record show it.
#[derive(Debug, Clone, Serialize)]
pub struct StepResult {
    pub version: String,
    pub name: String,
    pub transactional: bool,
    pub status: Status,
    pub duration_ms: u64,
    /// Runs of it (1 + retries after lock timeouts).
    pub attempts: u32,
    /// The same error object as a rehearsal report's (PostgreSQL's message,
    /// DETAIL, HINT, position and SQLSTATE; the file, statement and line).
    pub error: Option<Failure>,
}

impl StepResult {
    fn of(m: &Migration, step: Step) -> StepResult {
        StepResult {
            version: m.version.clone(),
            name: m.name.clone(),
            transactional: m.transactional,
            status: step.status,
            duration_ms: step.duration_ms,
            attempts: step.attempts,
            error: step.failure.or_else(|| step.error.map(|e| Failure::of_file(m.path.display().to_string(), e))),
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

impl Outcome {
    fn of(plan: &[Migration], run: executor::Run) -> Outcome {
        let steps = plan.iter().zip(run.steps).map(|(m, s)| StepResult::of(m, s)).collect();
        Outcome { steps, failure: run.failure, partial: run.partial }
    }
}

/// The release's hooks: every migration is journaled before it runs (once
/// per attempt of the whole plan in one transaction), every retry too, and
/// so is every transaction id the plan's statements got on live, before the
/// transaction commits (a restore leaves rows with those ids out of the
/// stranded writes, even after a kill -9). A statement that ran outside a
/// transaction and may write rows is journaled as `unattributed`.
struct Journaling<'a> {
    journal: &'a Journal,
    plan: &'a [Migration],
    mode: Mode,
    last: Option<usize>,
    last_xid: Option<String>,
}

/// Whether a statement run outside a transaction may write rows (by its
/// first word: DDL writes none the application could also write; a
/// `SELECT` of a function that writes is not seen, as the README says).
fn may_write_rows(sql: &str) -> bool {
    let first = crate::migrations::split::tokens(sql)
        .find(|t| t.kind == crate::migrations::split::TokenKind::Word)
        .map(|t| t.text.to_ascii_lowercase());
    matches!(
        first.as_deref(),
        Some("insert" | "update" | "delete" | "merge" | "copy" | "call" | "do" | "with" | "truncate")
    )
}

impl Hooks for Journaling<'_> {
    type Error = StateError;

    async fn plan_started(&mut self, _conn: &mut PgConnection, mode: Mode) -> Result<(), StateError> {
        self.mode = mode;
        Ok(())
    }

    async fn migration_started(
        &mut self,
        _conn: &mut PgConnection,
        i: usize,
        m: &Migration,
        _in_tx: bool,
    ) -> Result<(), StateError> {
        if self.last != Some(i) {
            self.last = Some(i);
            self.journal.step(JournalStep::Migration, Some(&m.version)).await?;
        }
        Ok(())
    }

    async fn statement_done(
        &mut self,
        conn: &mut PgConnection,
        i: usize,
        s: usize,
        in_tx: bool,
        _at: std::time::Instant,
        _took: Duration,
    ) -> Result<(), StateError> {
        if !in_tx {
            let m = &self.plan[i];
            let writes = crate::migrations::split::split(&m.up_sql).get(s).is_none_or(|st| may_write_rows(&st.sql));
            if writes {
                let detail = format!("migration {} statement {} ran outside a transaction", m.version, s + 1);
                self.journal.step(JournalStep::Unattributed, Some(&detail)).await?;
            }
            return Ok(());
        }
        let xid: Option<String> =
            match sqlx::query_scalar("SELECT pg_current_xact_id_if_assigned()::text").fetch_one(&mut *conn).await {
                Ok(x) => x,
                Err(e) => {
                    // The statement after it fails the same way; only the
                    // attribution is lost, and said so.
                    let detail = format!("migration {}: cannot read its transaction id: {e}", self.plan[i].version);
                    self.journal.step(JournalStep::Unattributed, Some(&detail)).await?;
                    return Ok(());
                }
            };
        if xid.is_some() && xid != self.last_xid {
            self.journal.step(JournalStep::Xid, xid.as_deref()).await?;
            self.last_xid = xid;
        }
        Ok(())
    }

    async fn migration_done(
        &mut self,
        _conn: &mut PgConnection,
        _i: usize,
        m: &Migration,
        committed: bool,
    ) -> Result<(), StateError> {
        if committed {
            self.journal.step(JournalStep::MigrationDone, Some(&m.version)).await?;
        }
        Ok(())
    }

    async fn retrying(&mut self, m: &Migration, attempt: u32, wait: Duration) -> Result<(), StateError> {
        tracing::warn!(migration = %m.version, attempt = attempt + 1, wait_ms = wait.as_millis() as u64, "Lock timeout; retrying after a pause.");
        self.journal.step(JournalStep::LockRetry, Some(&m.version)).await?;
        if self.mode == Mode::SingleTransaction {
            // The whole plan runs again: journal each migration again.
            self.last = None;
        }
        Ok(())
    }
}

/// Runs `plan` on live in `mode` (decided by [`Mode::of`]).
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
            let mut conn = match executor::session(url, target, "pgrehearse-release").await {
                Ok(c) => c,
                Err(e) => {
                    let steps = plan.iter().map(|m| StepResult::of(m, Step::default())).collect();
                    return Ok(Outcome { steps, failure: Some(e.to_string()), partial: false });
                }
            };
            let table = source.table();
            let executor =
                Executor { kind: source.kind(), table: &table, retry: Retry::of(&target.release), place: "live" };
            let mut hooks = Journaling { journal, plan, mode, last: None, last_xid: None };
            let run = executor.run(&mut conn, plan, &mut hooks).await?;
            Ok(Outcome::of(plan, run))
        }
        Mode::Payload => {
            let names: Vec<String> = plan.iter().map(|m| m.name.clone()).collect();
            journal.step(JournalStep::Migration, Some(&names.join(","))).await?;
            let (run, _) = external::payload(source, url, "pgrehearse-release-payload", plan).await;
            Ok(Outcome::of(plan, run))
        }
        Mode::Command => {
            journal.step(JournalStep::Migration, Some("apply")).await?;
            let why = "the `command` migration tool writes in transactions pgrehearse cannot see";
            journal.step(JournalStep::Unattributed, Some(why)).await?;
            let run = external::command(source, url, "pgrehearse-release-command", plan).await;
            Ok(Outcome::of(plan, run))
        }
    }
}
