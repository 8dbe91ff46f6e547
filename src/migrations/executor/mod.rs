//! The one executor of migrations, for the rehearsal on a scratch copy and
//! for the release on live alike (modelled on sqlx's `Migrator`): it sets
//! the session up ([`Session`]: `lock_timeout`, `statement_timeout`,
//! `application_name`, the role to run as), decides how a plan runs
//! ([`Mode::of`], the only place that decides it), applies each file's
//! statements with its history row ([`crate::migrations::record`]), and
//! tells how each migration ended in one [`Status`].
//!
//! What differs between a rehearsal and a release plugs in through
//! [`Hooks`]: the rehearsal measures (its session's own `pg_locks` after
//! each statement, the sampler for statements outside a transaction, the
//! catalog and WAL after each migration); the release journals every step
//! before it is taken. The lock-timeout [`Retry`] policy is the executor's
//! own: the release retries with doubling backoff (dropping the invalid
//! index an interrupted `CREATE INDEX CONCURRENTLY` left), the rehearsal
//! runs with [`Retry::NONE`] — a scratch copy has no other writers, so a
//! lock timeout there is a finding to report, not contention to wait out.
//!
//! External tools (Payload, `command`) run through [`external`] on a
//! [`crate::migrations::tool::ToolProcess`].

pub mod external;
mod native;
mod script;

use std::time::{Duration, Instant};

use serde::Serialize;
use sqlx::PgConnection;

use crate::config::{MigrationKind, ReleasePolicy, Target};
use crate::conn_url::ConnUrl;
use crate::migrations::{Migration, split};
use crate::pg::{self, PgError};

pub use script::Direction;

/// How a migration of a plan ended. The one status type of executed
/// migrations, in rehearsal reports and release records alike.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    Applied,
    Failed,
    /// Ran, then rolled back with the plan's single transaction.
    RolledBack,
    #[default]
    NotRun,
}

/// How a plan runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Mode {
    /// pgrehearse runs every file, all in one transaction.
    SingleTransaction,
    /// pgrehearse runs file by file: a transactional file in its own
    /// transaction, another statement by statement.
    PerMigration,
    /// Payload's CLI (it commits file by file).
    Payload,
    /// The `command` source's `apply`.
    Command,
}

impl Mode {
    /// THE decision: external tools run as they run; a native plan whose
    /// every file is transactional runs in one transaction (a failure rolls
    /// all of it back); otherwise file by file.
    pub fn of(kind: MigrationKind, plan: &[Migration]) -> Mode {
        match kind {
            MigrationKind::Payload => Mode::Payload,
            MigrationKind::Command => Mode::Command,
            MigrationKind::Sqlx | MigrationKind::Diesel if plan.iter().all(|m| m.transactional) => {
                Mode::SingleTransaction
            }
            MigrationKind::Sqlx | MigrationKind::Diesel => Mode::PerMigration,
        }
    }

    /// The name reports, records and the journal use.
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::SingleTransaction => "single_transaction",
            Mode::PerMigration => "per_migration",
            Mode::Payload => "payload",
            Mode::Command => "command",
        }
    }

    pub fn is_native(self) -> bool {
        matches!(self, Mode::SingleTransaction | Mode::PerMigration)
    }
}

/// The session a plan runs on: as live will run it.
#[derive(Debug, Clone)]
pub struct Session {
    pub lock_timeout: Duration,
    pub statement_timeout: Option<Duration>,
    /// The role to run as (`SET ROLE`); `None`: the connecting role.
    pub role: Option<String>,
}

impl Session {
    /// The target's session: its timeouts, and its `migration_role` (the
    /// rehearsal runs on a target whose `migration_role` is live's role as
    /// mirrored on the shadow, see `shadow::roles`).
    pub fn of(target: &Target) -> Session {
        Session {
            lock_timeout: target.lock_timeout,
            statement_timeout: target.statement_timeout,
            role: target.migration_role.clone(),
        }
    }

    /// Connects to `url` as `application_name` and sets the session up.
    pub async fn connect(&self, url: &ConnUrl, application_name: &str) -> Result<PgConnection, PgError> {
        let mut conn = pg::connect(url, application_name).await?;
        let q = |source| PgError::Query { url: url.redacted(), source };
        let mut sql = format!("{READ_WRITE}; SET lock_timeout = {}", self.lock_timeout.as_millis());
        if let Some(st) = self.statement_timeout {
            sql.push_str(&format!("; SET statement_timeout = {}", st.as_millis()));
        }
        if let Some(role) = &self.role {
            sql.push_str(&format!("; SET ROLE {}", pg::quote_ident(role)));
        }
        sqlx::raw_sql(&sql).execute(&mut conn).await.map_err(q)?;
        Ok(conn)
    }
}

/// Every session that applies migrations writes, whatever the database's
/// default: a release's write fence (`release::fence`) sets live's
/// `default_transaction_read_only`, for every session but pgrehearse's own.
pub const READ_WRITE: &str = "SET default_transaction_read_only = off";

/// Session settings every run uses, as live will (see [`Session`]).
pub async fn session(url: &ConnUrl, target: &Target, application_name: &str) -> Result<PgConnection, PgError> {
    Session::of(target).connect(url, application_name).await
}

/// Retries of a migration (or of the whole plan in one transaction) that
/// failed on `lock_timeout` (SQLSTATE 55P03), with doubling backoff capped
/// at 30 s; `statement_timeout` stays the ceiling.
#[derive(Debug, Clone, Copy)]
pub struct Retry {
    pub retries: u32,
    pub backoff: Duration,
}

impl Retry {
    /// No retry: the first lock timeout fails the migration.
    pub const NONE: Retry = Retry { retries: 0, backoff: Duration::ZERO };

    pub fn of(policy: &ReleasePolicy) -> Retry {
        Retry { retries: policy.lock_retries, backoff: policy.lock_retry_backoff }
    }

    /// The pause before retry number `attempt + 1`.
    pub fn wait(&self, attempt: u32) -> Duration {
        self.backoff.saturating_mul(1u32 << attempt.min(16)).min(Duration::from_secs(30))
    }
}

/// One statement as it ran.
#[derive(Debug, Clone, Serialize)]
pub struct StatementResult {
    pub index: usize,
    pub line: usize,
    pub sql: String,
    pub duration_ms: u64,
}

/// Where and why a migration failed: the one error object of rehearsal
/// reports and release records alike (README, "JSON documents"). The
/// server's own fields (`message`, `detail`, `hint`, `position`, `sqlstate`)
/// come first; where it failed (`file`, `statement`, `line`, `sql`) follows.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Failure {
    /// PostgreSQL's primary message, or the tool's or client's error text.
    pub message: String,
    /// PostgreSQL's DETAIL (`Key (homepage)=(…) is duplicated.`).
    pub detail: Option<String>,
    /// PostgreSQL's HINT.
    pub hint: Option<String>,
    /// The 1-based character offset into `statement` the server points at.
    pub position: Option<usize>,
    pub sqlstate: Option<String>,
    pub file: String,
    /// The failing statement's index in the file (0-based).
    pub statement: Option<usize>,
    /// The line in the file.
    pub line: Option<usize>,
    /// The failing statement, shortened.
    pub sql: Option<String>,
}

impl Failure {
    /// A failure known only by its file and a message (external tools).
    pub fn of_file(file: String, message: String) -> Failure {
        Failure {
            message,
            detail: None,
            hint: None,
            position: None,
            sqlstate: None,
            file,
            statement: None,
            line: None,
            sql: None,
        }
    }

    /// A failure of `file` outside its statements (BEGIN, COMMIT, the
    /// history row): `text` with what the server said.
    pub fn of_error(file: String, text: String, e: &sqlx::Error) -> Failure {
        let d = pg::Diagnostic::of(e);
        Failure { detail: d.detail, hint: d.hint, sqlstate: d.sqlstate, ..Failure::of_file(file, text) }
    }

    /// The message with DETAIL and HINT, for sentences.
    pub fn full_message(&self) -> String {
        let d = pg::Diagnostic {
            message: String::new(),
            sqlstate: None,
            detail: self.detail.clone(),
            hint: self.hint.clone(),
            position: None,
        };
        format!("{}{}", self.message, d.suffix())
    }
}

/// How one migration of the plan ran.
#[derive(Debug, Clone, Default)]
pub struct Step {
    pub status: Status,
    pub duration_ms: u64,
    /// Runs of it (1 + retries after lock timeouts); 0 when not run.
    pub attempts: u32,
    /// Native sources: each statement of the last attempt.
    pub statements: Vec<StatementResult>,
    pub failure: Option<Failure>,
    /// The failure as one sentence naming the migration, file and line.
    pub error: Option<String>,
    /// External tools: when the tool ran this migration, as far as it said.
    pub ran: Option<(Instant, Instant)>,
}

/// What a plan did.
#[derive(Debug, Clone)]
pub struct Run {
    /// One per migration of the plan, in its order.
    pub steps: Vec<Step>,
    /// The first failure, as a sentence.
    pub failure: Option<String>,
    /// Whether the database may hold part of the plan (something committed,
    /// or a non-transactional statement ran).
    pub partial: bool,
}

impl Run {
    pub fn ok(&self) -> bool {
        self.failure.is_none()
    }
}

/// What a rehearsal or a release adds to the executor's run. Every method
/// has a default that does nothing.
#[allow(async_fn_in_trait)] // every caller names its hooks' concrete type, so Send is known where it matters
pub trait Hooks {
    type Error;

    /// The plan is about to run in `mode` on `conn`.
    async fn plan_started(&mut self, _conn: &mut PgConnection, _mode: Mode) -> Result<(), Self::Error> {
        Ok(())
    }

    /// Migration `i` is about to run (again, after a retry); `in_tx` when a
    /// transaction is open around it.
    async fn migration_started(
        &mut self,
        _conn: &mut PgConnection,
        _i: usize,
        _m: &Migration,
        _in_tx: bool,
    ) -> Result<(), Self::Error> {
        Ok(())
    }

    /// Statement `s` of migration `i` succeeded: it started at `at` and
    /// took `took`.
    async fn statement_done(
        &mut self,
        _conn: &mut PgConnection,
        _i: usize,
        _s: usize,
        _in_tx: bool,
        _at: Instant,
        _took: Duration,
    ) -> Result<(), Self::Error> {
        Ok(())
    }

    /// The open transaction just ended (committed or rolled back) at `at`.
    fn transaction_ended(&mut self, _at: Instant) {}

    /// Migration `i` applied with its history row; `committed` when that is
    /// already durable (its own transaction committed, or none was open).
    async fn migration_done(
        &mut self,
        _conn: &mut PgConnection,
        _i: usize,
        _m: &Migration,
        _committed: bool,
    ) -> Result<(), Self::Error> {
        Ok(())
    }

    /// A statement of migration `i` was cancelled on request (SQLSTATE
    /// 57014, not a `statement_timeout`): whether the release's lock-queue
    /// guard did it — then it was a lock wait, retried like a lock
    /// timeout, not a failure of the migration. Asked once per such error.
    fn queue_cancelled(&mut self, _i: usize) -> bool {
        false
    }

    /// Migration `m` hit a lock timeout (or the lock-queue guard cancelled
    /// its lock wait) and runs again after `wait`.
    async fn retrying(&mut self, _m: &Migration, _attempt: u32, _wait: Duration) -> Result<(), Self::Error> {
        Ok(())
    }
}

/// Runs plans of one native source on a session.
pub struct Executor<'a> {
    pub kind: MigrationKind,
    /// The history table.
    pub table: &'a str,
    pub retry: Retry,
    /// Where it runs, for messages: "live", "the scratch copy".
    pub place: &'static str,
}

impl Executor<'_> {
    /// Runs a native `plan` on `conn` (set up by [`Session`]) in the mode
    /// [`Mode::of`] decides. Only a hook's error ends it early; a failing
    /// migration is told in the returned [`Run`].
    pub async fn run<H: Hooks>(
        &self,
        conn: &mut PgConnection,
        plan: &[Migration],
        hooks: &mut H,
    ) -> Result<Run, H::Error> {
        let mode = Mode::of(self.kind, plan);
        debug_assert!(mode.is_native(), "external tools run through executor::external");
        hooks.plan_started(conn, mode).await?;
        if mode == Mode::SingleTransaction {
            self.single(conn, plan, hooks).await
        } else {
            self.per_migration(conn, plan, hooks).await
        }
    }
}

/// Whether an error is a lock timeout (SQLSTATE 55P03), which is retried.
fn is_lock_timeout(e: &sqlx::Error) -> bool {
    matches!(e, sqlx::Error::Database(db) if db.code().as_deref() == Some("55P03"))
}

/// Whether a statement was cancelled on request (`pg_cancel_backend`):
/// SQLSTATE 57014 as `statement_timeout` also raises it, told apart by the
/// server's message ("canceling statement due to user request").
fn is_cancel_request(e: &sqlx::Error) -> bool {
    matches!(e, sqlx::Error::Database(db)
        if db.code().as_deref() == Some("57014") && db.message().contains("user request"))
}

/// Whether a failed statement of migration `i` was a lock wait, retried
/// under the [`Retry`] policy: a lock timeout, or a cancel by the hooks'
/// lock-queue guard (asked once per error).
fn lock_wait<H: Hooks>(e: &sqlx::Error, hooks: &mut H, i: usize) -> bool {
    is_lock_timeout(e) || (is_cancel_request(e) && hooks.queue_cancelled(i))
}

/// A failing statement as a report shows it: what the server said, and the
/// line it points at.
fn failure(m: &Migration, index: usize, stmt: &split::Statement, e: &sqlx::Error) -> Failure {
    let d = pg::Diagnostic::of(e);
    let line = line_of(stmt, d.position);
    Failure {
        message: d.message,
        detail: d.detail,
        hint: d.hint,
        position: d.position,
        sqlstate: d.sqlstate,
        file: m.path.display().to_string(),
        statement: Some(index),
        line: Some(line),
        sql: Some(excerpt(&stmt.sql)),
    }
}

/// The line of the file the server points at: its position is a character
/// offset into the statement; without one, the statement's first line.
fn line_of(stmt: &split::Statement, position: Option<usize>) -> usize {
    position
        .map_or(stmt.line, |n| stmt.line + stmt.sql.chars().take(n.saturating_sub(1)).filter(|c| *c == '\n').count())
}

/// A statement's error as a sentence naming the file and line (where the
/// server points), with the server's DETAIL and HINT.
fn describe(m: &Migration, stmt: &split::Statement, e: &sqlx::Error) -> String {
    let d = pg::Diagnostic::of(e);
    let msg = match &d.sqlstate {
        Some(code) => format!("{} (SQLSTATE {code}){}", d.message, d.suffix()),
        None => format!("{}{}", d.message, d.suffix()),
    };
    format!(
        "migration {} ({}) failed at line {} ({}): {msg}",
        m.version,
        m.path.display(),
        line_of(stmt, d.position),
        excerpt(&stmt.sql)
    )
}

/// A statement shortened for reports: one line, at most 200 characters.
pub fn excerpt(sql: &str) -> String {
    let one: String = sql.split_whitespace().collect::<Vec<_>>().join(" ");
    if one.chars().count() > 200 { format!("{}…", one.chars().take(199).collect::<String>()) } else { one }
}

async fn exec(conn: &mut PgConnection, sql: &str) -> Result<(), sqlx::Error> {
    sqlx::raw_sql(sql).execute(&mut *conn).await.map(|_| ())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::migrations::Down;

    fn m(transactional: bool) -> Migration {
        Migration {
            version: "1".into(),
            name: "a".into(),
            path: "1_a.up.sql".into(),
            up_sql: String::new(),
            checksum: String::new(),
            transactional,
            down: Down::Missing,
        }
    }

    #[test]
    fn one_decision_of_the_mode() {
        assert_eq!(Mode::of(MigrationKind::Sqlx, &[m(true), m(true)]), Mode::SingleTransaction);
        assert_eq!(Mode::of(MigrationKind::Diesel, &[m(true), m(false)]), Mode::PerMigration);
        assert_eq!(Mode::of(MigrationKind::Payload, &[m(true)]), Mode::Payload);
        assert_eq!(Mode::of(MigrationKind::Command, &[m(false)]), Mode::Command);
        assert_eq!(Mode::PerMigration.as_str(), "per_migration");
    }

    #[test]
    fn the_line_is_where_the_server_points() {
        let stmt = split::Statement { sql: "UPDATE t\n   SET a = emial".into(), line: 4, start: 0, end: 0 };
        assert_eq!(line_of(&stmt, None), 4);
        assert_eq!(line_of(&stmt, Some(8)), 4);
        assert_eq!(line_of(&stmt, Some(20)), 5, "`emial` is on the statement's second line");
    }

    #[test]
    fn backoff_doubles_up_to_a_cap() {
        let r = Retry { retries: 5, backoff: Duration::from_millis(100) };
        assert_eq!(r.wait(0), Duration::from_millis(100));
        assert_eq!(r.wait(2), Duration::from_millis(400));
        assert_eq!(r.wait(20), Duration::from_secs(30));
    }
}
