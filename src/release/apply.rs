//! Runs an approved plan on live, exactly as it was rehearsed: sqlx and
//! diesel files by pgrehearse itself (the whole plan in one transaction when
//! every file is transactional, so a failure rolls everything back;
//! otherwise file by file, non-transactional files statement by
//! statement), Payload through its CLI and `command` sources through their
//! command — all through the one executor (`migrations::executor`), with
//! the release's hooks: every migration is journaled before it starts, and
//! a migration that fails on `lock_timeout` is retried with doubling
//! backoff (the whole transaction in single-transaction mode);
//! `statement_timeout` stays the ceiling. While a native plan runs, the
//! lock-queue guard (`queue_guard`) cancels a lock wait the application
//! queued behind for longer than `max_queue_wait`; the executor retries it
//! like a lock timeout, and the step keeps who blocked it (`lock_queue`).
//! External tools (Payload, `command`) are not guarded: a cancel would fail
//! the tool, which cannot retry one migration; `lock_timeout` bounds them.
//! (A step reverted by `on_failure = "down"` is marked `reverted` in the
//! release record by `recovery`.)

use std::time::Duration;

use serde::Serialize;
use sqlx::PgConnection;

use super::journal::{Journal, Step as JournalStep};
use super::queue_guard::{QueueCancel, QueueGuard};
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
    /// Each time the lock-queue guard cancelled its lock wait: when, how
    /// many sessions queued how long, and whom it waited for.
    pub lock_queue: Vec<QueueCancel>,
}

impl StepResult {
    fn of(m: &Migration, step: Step, lock_queue: Vec<QueueCancel>) -> StepResult {
        StepResult {
            version: m.version.clone(),
            name: m.name.clone(),
            transactional: m.transactional,
            status: step.status,
            duration_ms: step.duration_ms,
            attempts: step.attempts,
            error: step.failure.or_else(|| step.error.map(|e| Failure::of_file(m.path.display().to_string(), e))),
            lock_queue,
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
    /// The plan failed because the lock-queue guard cancelled a lock wait
    /// once more than `lock_retries` allow: that last cancel.
    pub queue_blocked: Option<QueueCancel>,
}

impl Outcome {
    fn of(plan: &[Migration], run: executor::Run) -> Outcome {
        let steps = plan.iter().zip(run.steps).map(|(m, s)| StepResult::of(m, s, Vec::new())).collect();
        Outcome { steps, failure: run.failure, partial: run.partial, queue_blocked: None }
    }

    /// A native run with what the guard saw (`queue`, per migration).
    fn guarded(plan: &[Migration], run: executor::Run, hooks: Journaling<'_>, budget: Duration) -> Outcome {
        let Journaling { mut queue, unretried, .. } = hooks;
        let steps: Vec<StepResult> = plan
            .iter()
            .zip(run.steps)
            .enumerate()
            .map(|(i, (m, s))| StepResult::of(m, s, std::mem::take(&mut queue[i])))
            .collect();
        let mut failure = run.failure;
        let mut queue_blocked = None;
        if let Some((i, cancel)) = unretried
            && failure.is_some()
            && steps[i].status == Status::Failed
        {
            let m = &plan[i];
            failure = Some(format!(
                "migration {} ({}) could not take its lock on live without queueing the application: it waited for {}, \
                 and each time client sessions queued behind its lock request for longer than max_queue_wait ({}), so its \
                 lock wait was cancelled and retried ({} attempts) until lock_retries ran out; this migration changed \
                 nothing. End that session or wait for it to finish, then release again",
                m.version,
                m.name,
                cancel.blockers(),
                humantime::format_duration(budget),
                steps[i].attempts,
            ));
            queue_blocked = Some(cancel);
        }
        Outcome { steps, failure, partial: run.partial, queue_blocked }
    }
}

/// The release's hooks: every migration is journaled before it runs (once
/// per attempt of the whole plan in one transaction), every retry too, and
/// so is every transaction id the plan's statements got on live, before the
/// transaction commits (a restore leaves rows with those ids out of the
/// stranded writes, even after a kill -9). A statement that ran outside a
/// transaction and may write rows is journaled as `unattributed`. The
/// lock-queue guard's cancels are told apart from other cancels and kept.
struct Journaling<'a> {
    journal: &'a Journal,
    plan: &'a [Migration],
    mode: Mode,
    last: Option<usize>,
    last_xid: Option<String>,
    guard: Option<&'a QueueGuard>,
    /// The guard's cancels, per migration.
    queue: Vec<Vec<QueueCancel>>,
    /// The latest guard cancel (and its migration) not yet followed by a
    /// retry: when the run ends with it, the retries ran out on it.
    unretried: Option<(usize, QueueCancel)>,
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

    fn queue_cancelled(&mut self, i: usize) -> bool {
        let Some(cancel) = self.guard.and_then(QueueGuard::take) else { return false };
        tracing::warn!(
            queued = cancel.queued,
            waited_ms = cancel.waited_ms,
            blocked_by = %cancel.blockers(),
            "Lock queue: sessions waited behind the migration's lock request past max_queue_wait; its lock wait was cancelled."
        );
        self.queue[i].push(cancel.clone());
        self.unretried = Some((i, cancel));
        true
    }

    async fn retrying(&mut self, m: &Migration, attempt: u32, wait: Duration) -> Result<(), StateError> {
        let wait_ms = wait.as_millis() as u64;
        if self.unretried.take().is_some() {
            tracing::warn!(migration = %m.version, attempt = attempt + 1, wait_ms, "Lock queue cancelled the lock wait; retrying after a pause.");
        } else {
            tracing::warn!(migration = %m.version, attempt = attempt + 1, wait_ms, "Lock timeout; retrying after a pause.");
        }
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
                    let steps = plan.iter().map(|m| StepResult::of(m, Step::default(), Vec::new())).collect();
                    return Ok(Outcome { steps, failure: Some(e.to_string()), partial: false, queue_blocked: None });
                }
            };
            let table = source.table();
            let executor =
                Executor { kind: source.kind(), table: &table, retry: Retry::of(&target.release), place: "live" };
            let budget = target.release.max_queue_wait;
            let guard = guard(target, &mut conn, budget).await;
            let queue = plan.iter().map(|_| Vec::new()).collect();
            let mut hooks = Journaling {
                journal,
                plan,
                mode,
                last: None,
                last_xid: None,
                guard: guard.as_ref(),
                queue,
                unretried: None,
            };
            let run = executor.run(&mut conn, plan, &mut hooks).await;
            let outcome = run.map(|run| Outcome::guarded(plan, run, hooks, budget));
            if let Some(g) = guard {
                g.stop().await;
            }
            Ok(outcome?)
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

/// The lock-queue guard of the executor's session `conn` (through
/// `admin_url`, which sees every role's sessions and may cancel ours).
async fn guard(target: &Target, conn: &mut PgConnection, budget: Duration) -> Option<QueueGuard> {
    if budget.is_zero() {
        return None;
    }
    let pid: i32 = match sqlx::query_scalar("SELECT pg_backend_pid()").fetch_one(&mut *conn).await {
        Ok(p) => p,
        Err(e) => {
            tracing::warn!(error = %e, "Cannot read the release session's pid; running without the lock-queue guard.");
            return None;
        }
    };
    let url = target.admin().with_database(&target.live_url.database());
    QueueGuard::start(&url, pid, budget).await
}
