//! Migration sources: the project's own migration tool, read as it is so users
//! never convert anything. Each source lists its files (version, name, the
//! SQL or script, a checksum, the transaction mode, the down) and reads its
//! history table; `plan` turns both into the pending plan and its hash.
//!
//! `sqlx` and `diesel` files are plain SQL that pgrehearse runs itself (the
//! "native" runners, measured statement by statement); `payload` and
//! `command` are external tools that pgrehearse starts and observes.

pub mod classify;
pub mod command;
mod cursor;
pub mod diesel;
pub mod executor;
pub mod payload;
pub mod plan;
pub mod split;
pub mod sqlx;
pub mod tool;

#[cfg(test)]
mod fuzz_tests;

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};

use ::sqlx::PgConnection;
use serde::Serialize;

use crate::config::{MigrationKind, MigrationsConfig, Target};
use crate::error_class::{Class, Classify};

pub use plan::{Drift, Plan};

/// One migration as the project's files define it.
#[derive(Debug, Clone, Serialize)]
pub struct Migration {
    /// The tool's version key: the number for sqlx, the normalised directory
    /// prefix for diesel, the file name for payload and command.
    pub version: String,
    pub name: String,
    /// The up script (a file, or a directory for diesel).
    pub path: PathBuf,
    /// The up SQL for native sources; empty for external tools.
    #[serde(skip)]
    pub up_sql: String,
    /// Hex digest of the up file's bytes (SHA-384 for sqlx, as sqlx stores it;
    /// SHA-256 for the others).
    pub checksum: String,
    /// False when the file must run outside a transaction.
    pub transactional: bool,
    pub down: Down,
}

/// How a migration is reverted.
#[derive(Debug, Clone, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Down {
    /// A down SQL script pgrehearse runs. One of only comments and blanks
    /// is a no-op down ([`Down::is_noop`]): diesel and sqlx run it and
    /// succeed, so it is judged like any other down.
    Sql {
        path: PathBuf,
        #[serde(skip)]
        sql: String,
        transactional: bool,
    },
    /// The tool itself reverts (Payload's `migrate:down`).
    Tool,
    /// No down file.
    Missing,
    /// A down file of zero bytes: diesel refuses to run it ("Attempted to
    /// run an empty migration"), the tools' way to say "not reversible".
    Empty { path: PathBuf },
}

impl Down {
    /// A down file that exists (`Empty` aside) or the tool's own down.
    pub fn is_reversible(&self) -> bool {
        matches!(self, Down::Sql { .. } | Down::Tool)
    }

    /// A down SQL file without a statement (only comments and blanks, as
    /// `diesel migration generate` writes it): it runs and changes nothing.
    pub fn is_noop(&self) -> bool {
        matches!(self, Down::Sql { sql, .. } if is_blank_sql(sql))
    }

    /// The down file's contents as read: `Empty` for zero bytes, a
    /// (possibly no-op) `Sql` otherwise.
    pub fn of_file(path: PathBuf, sql: String, transactional: bool) -> Down {
        if sql.is_empty() { Down::Empty { path } } else { Down::Sql { path, sql, transactional } }
    }
}

/// One row of the tool's history table.
#[derive(Debug, Clone, Serialize)]
pub struct Applied {
    pub version: String,
    pub name: String,
    /// Hex checksum the tool recorded (sqlx only).
    pub checksum: Option<String>,
    /// False for a failed or partly applied ("dirty") row.
    pub ok: bool,
    pub applied_at: Option<String>,
    pub execution_ms: Option<i64>,
}

#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    #[error("cannot read the migrations directory {dir}: {source}; check `migrations.dir` in the target's config")]
    Dir { dir: PathBuf, source: std::io::Error },
    #[error(
        "cannot read migration file {path}: {source}; check that it exists and that pgrehearse's user may read the whole migrations directory"
    )]
    File { path: PathBuf, source: std::io::Error },
    #[error("{path}: {problem}")]
    Layout { path: PathBuf, problem: String },
    #[error("two migrations have version {version}: {first} and {second}; give one of them another version")]
    DuplicateVersion { version: String, first: PathBuf, second: PathBuf },
    #[error(
        "reading the history table {table} failed: {source}; check that the server is up and that the target's role may read {table} (GRANT SELECT ON {table} TO the role of live_url)"
    )]
    History { table: String, source: ::sqlx::Error },
    #[error("the `pending` command failed ({status}): {output_tail}")]
    PendingCommand { status: String, output_tail: String },
    #[error("target `{target}` has no `migrations` configured; add `migrations = {{ kind = \"sqlx\", dir = \"…\" }}`")]
    NotConfigured { target: String },
    #[error(transparent)]
    Payload(Box<payload::PayloadError>),
}

impl Classify for SourceError {
    fn class(&self) -> Class {
        match self {
            SourceError::Dir { .. } | SourceError::NotConfigured { .. } => Class::Configuration,
            SourceError::History { source: ::sqlx::Error::Io(_), .. } => Class::Unavailable,
            SourceError::History { .. }
            | SourceError::File { .. }
            | SourceError::Layout { .. }
            | SourceError::DuplicateVersion { .. }
            | SourceError::PendingCommand { .. } => Class::Failed,
            SourceError::Payload(e) => e.class(),
        }
    }

    fn kind(&self) -> &'static str {
        match self {
            SourceError::Dir { .. } => "migrations_dir_unreadable",
            SourceError::File { .. } => "migration_file_unreadable",
            SourceError::Layout { .. } => "migration_layout",
            SourceError::DuplicateVersion { .. } => "duplicate_migration_version",
            SourceError::History { source: ::sqlx::Error::Io(_), .. } => "pg_unreachable",
            SourceError::History { .. } => "history_unreadable",
            SourceError::PendingCommand { .. } => "pending_command_failed",
            SourceError::NotConfigured { .. } => "migrations_not_configured",
            SourceError::Payload(e) => e.kind(),
        }
    }
}

impl From<payload::PayloadError> for SourceError {
    fn from(e: payload::PayloadError) -> Self {
        SourceError::Payload(Box::new(e))
    }
}

/// A target's migration source.
pub struct Source<'a> {
    pub target: &'a Target,
    pub config: &'a MigrationsConfig,
}

impl<'a> Source<'a> {
    pub fn of(target: &'a Target) -> Result<Source<'a>, SourceError> {
        let config =
            target.migrations.as_ref().ok_or_else(|| SourceError::NotConfigured { target: target.name.clone() })?;
        Ok(Source { target, config })
    }

    pub fn kind(&self) -> MigrationKind {
        self.config.kind
    }

    /// True when pgrehearse runs the SQL itself (and can measure per statement).
    pub fn is_native(&self) -> bool {
        matches!(self.config.kind, MigrationKind::Sqlx | MigrationKind::Diesel)
    }

    pub fn table(&self) -> String {
        self.config.table.clone().or_else(|| self.config.kind.history_table().map(str::to_string)).unwrap_or_default()
    }

    fn dir(&self) -> &Path {
        self.config.dir.as_deref().unwrap_or(Path::new("."))
    }

    /// The project's migrations, in the order the tool applies them.
    pub async fn files(&self) -> Result<Vec<Migration>, SourceError> {
        match self.config.kind {
            MigrationKind::Sqlx => sqlx::files(self.dir()),
            MigrationKind::Diesel => diesel::files(self.dir()),
            MigrationKind::Payload => payload_files(self.dir()),
            MigrationKind::Command => Ok(Vec::new()),
        }
    }

    /// The history table's rows (empty when the table does not exist yet).
    pub async fn history(&self, conn: &mut PgConnection) -> Result<Vec<Applied>, SourceError> {
        let table = self.table();
        let e = |source| SourceError::History { table: table.clone(), source };
        match self.config.kind {
            MigrationKind::Sqlx => sqlx::history(conn, &table).await.map_err(e),
            MigrationKind::Diesel => diesel::history(conn, &table).await.map_err(e),
            MigrationKind::Payload => {
                let rows = payload::history(conn, &table).await?;
                Ok(rows
                    .into_iter()
                    .map(|r| Applied {
                        version: r.name.clone(),
                        name: r.name,
                        checksum: None,
                        ok: r.batch != -1,
                        applied_at: None,
                        execution_ms: None,
                    })
                    .collect())
            }
            MigrationKind::Command => Ok(Vec::new()),
        }
    }
}

fn payload_files(dir: &Path) -> Result<Vec<Migration>, SourceError> {
    Ok(payload::files(dir)?
        .into_iter()
        .map(|f| Migration {
            version: f.name.clone(),
            name: f.name,
            path: f.path,
            up_sql: String::new(),
            checksum: f.checksum,
            // Payload runs each file in its own transaction with its row.
            transactional: true,
            down: Down::Tool,
        })
        .collect())
}

/// A change of a native source's history table.
#[derive(Debug, Clone, Copy)]
pub enum Change {
    /// Applied, taking this long.
    Applied(std::time::Duration),
    Reverted,
}

/// Records `m` in a native source's history table exactly as the tool would
/// (sqlx or diesel; in the caller's transaction, if any).
pub async fn record(
    conn: &mut PgConnection,
    kind: MigrationKind,
    table: &str,
    m: &Migration,
    change: Change,
) -> Result<(), ::sqlx::Error> {
    match (kind, change) {
        (MigrationKind::Sqlx, Change::Applied(took)) => sqlx::record_applied(conn, table, m, took).await,
        (MigrationKind::Sqlx, Change::Reverted) => sqlx::record_reverted(conn, table, m).await,
        (_, Change::Applied(_)) => diesel::record_applied(conn, table, m).await,
        (_, Change::Reverted) => diesel::record_reverted(conn, table, m).await,
    }
}

/// Reads a file as UTF-8 text.
pub(crate) fn read_text(path: &Path) -> Result<String, SourceError> {
    let bytes = std::fs::read(path).map_err(|source| SourceError::File { path: path.to_path_buf(), source })?;
    String::from_utf8(bytes).map_err(|e| {
        let bytes = e.as_bytes();
        let at = e.utf8_error().valid_up_to();
        let line = bytes[..at].iter().filter(|&&b| b == b'\n').count() + 1;
        SourceError::Layout {
            path: path.to_path_buf(),
            problem: format!(
                "not valid UTF-8 (byte 0x{:02X} on line {line}; Latin-1 or Windows-1252 text?); \
                 save the file as UTF-8, e.g. `iconv -f latin1 -t utf-8`",
                bytes.get(at).copied().unwrap_or_default()
            ),
        }
    })
}

/// True when a SQL script has no statement at all (only blanks and comments).
pub fn is_blank_sql(sql: &str) -> bool {
    split::split(sql).is_empty()
}

/// Errors of reading a plan from a live database.
#[derive(Debug, thiserror::Error)]
pub enum PlanError {
    #[error(transparent)]
    Source(#[from] SourceError),
    #[error(transparent)]
    Pg(#[from] crate::pg::PgError),
    #[error(transparent)]
    State(#[from] crate::state::StateError),
}

impl Classify for PlanError {
    fn class(&self) -> Class {
        match self {
            PlanError::Source(e) => e.class(),
            PlanError::Pg(e) => e.class(),
            PlanError::State(e) => e.class(),
        }
    }

    fn kind(&self) -> &'static str {
        match self {
            PlanError::Source(e) => e.kind(),
            PlanError::Pg(e) => e.kind(),
            PlanError::State(e) => e.kind(),
        }
    }
}

/// The plan on top of the database at `url` (read only: one SELECT of the
/// history table). For tools whose table keeps no checksums, applied files
/// are checksummed on first sight in the state store, so later edits show
/// as drift.
pub async fn plan_for(
    state: &crate::state::State,
    source: &Source<'_>,
    url: &crate::conn_url::ConnUrl,
) -> Result<Plan, PlanError> {
    let mut conn = crate::pg::connect(url, "pgrehearse-plan").await?;
    let history = source.history(&mut conn).await?;
    drop(conn);
    let files = match source.kind() {
        MigrationKind::Command => command::pending(source.config, url).await?,
        _ => source.files().await?,
    };
    let known = if matches!(source.kind(), MigrationKind::Diesel | MigrationKind::Payload) {
        let applied: HashSet<&str> = history.iter().filter(|a| a.ok).map(|a| a.version.as_str()).collect();
        let current: Vec<(String, String)> = files
            .iter()
            .filter(|f| applied.contains(f.version.as_str()))
            .map(|f| (f.version.clone(), f.checksum.clone()))
            .collect();
        state.applied_checksums(&source.target.name, &current).await?
    } else {
        HashMap::new()
    };
    Ok(plan::build(&source.target.name, source.kind(), files, history, &known))
}
