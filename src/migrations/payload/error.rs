//! Why a Payload run could not start, failed or left the history wrong:
//! `PayloadError`, its messages (each with the next step) and its class and
//! kind.

use std::path::PathBuf;
use std::time::Instant;

use super::Migrated;
use crate::error_class::{Class, Classify};
use crate::pg::PgError;

#[derive(Debug, thiserror::Error)]
pub enum PayloadError {
    #[error(
        "{table} has {count} row(s) with batch = -1 (written by Payload's dev-mode schema push): this database's schema was changed outside migrations, so migrations cannot be rehearsed or applied on it faithfully (and `payload migrate` would stop at a yes/no prompt about data loss). Find out where the dev server pointed at this database; if its schema really matches the migrations, delete the row (DELETE FROM {table} WHERE batch = -1) and snapshot again"
    )]
    DevPushRows { table: String, count: usize },
    #[error(
        "database `{database}` does not exist on {url}; refusing to run Payload, which would silently create it empty. Check the URL, or restore the database first"
    )]
    DatabaseMissing { database: String, url: String },
    #[error(
        "Payload's CLI is not installed for {dir}: no node_modules/payload/bin.js in it or above. Run `npm ci` (or the project's install command) in the project first"
    )]
    NotInstalled { dir: PathBuf },
    #[error(
        "{dir} has no package.json in it or above; point `migrations.dir` at the Payload project (or its migrations directory)"
    )]
    NoProject { dir: PathBuf },
    #[error(
        "`payload migrate` would run [{}] but the plan is [{}]: the migration files or the database's history changed since the plan was made. Make the plan again",
        would_run.join(", "), expected.join(", ")
    )]
    PlanMismatch { would_run: Vec<String>, expected: Vec<String> },
    #[error(
        "`payload migrate:down` would roll back batch {batch} = [{}] but the expected migrations are [{}]; nothing was rolled back",
        would_remove.join(", "), expected.join(", ")
    )]
    DownMismatch { batch: i32, would_remove: Vec<String>, expected: Vec<String> },
    #[error(
        "migration `{name}` of the batch to roll back has no file in {dir}; Payload would stop there halfway through the batch. Restore the file, then retry"
    )]
    DownFileMissing { name: String, dir: PathBuf },
    #[error(
        "payload {command} did not finish within {after_secs}s and was killed{}{}; {}. Payload commits each migration on its own, so the ones before it stay applied. Raise `migrations.timeout` if it is just slow. Its output ends with:\n{output_tail}",
        migration.as_ref().map(|m| format!(" while running `{m}`")).unwrap_or_default(),
        if *waiting_on_prompt { " (it was waiting for an answer to a prompt)" } else { "" },
        match sessions_ended {
            Some(0) => "it left no session on the server".to_string(),
            Some(n) => format!("its {n} session(s) still running on the server were terminated (the server does not notice a killed client until the statement ends)"),
            None => "its sessions on the server could not be checked: look for application_name = the run's name in pg_stat_activity and end them".to_string(),
        }
    )]
    Timeout {
        command: String,
        after_secs: u64,
        migration: Option<String>,
        waiting_on_prompt: bool,
        migrated: Vec<Migrated>,
        /// When `migration` ran: its `Migrating:` line to the kill.
        ran: Option<(Instant, Instant)>,
        /// Server sessions of the killed CLI that were terminated (None: the
        /// check failed).
        sessions_ended: Option<u64>,
        output_tail: String,
    },
    #[error(
        "payload {command} failed ({status}){}; Payload rolled that file back and keeps the ones it committed before. Its output ends with:\n{output_tail}",
        migration.as_ref().map(|m| format!(" in `{m}`")).unwrap_or_else(|| " before running any migration".into())
    )]
    Failed {
        command: String,
        status: String,
        migration: Option<String>,
        migrated: Vec<Migrated>,
        /// When `migration` ran: its `Migrating:` line to its error line
        /// (or the CLI's exit).
        ran: Option<(Instant, Instant)>,
        output_tail: String,
    },
    #[error(
        "payload migrate exited 0 but {table} has no row for [{}]: those migrations did not run here. Check that the project's payload.config reads its connection from DATABASE_URI (or DATABASE_URL/POSTGRES_URL, which are set too) and that its migrationDir is the directory pgrehearse reads. Its output ends with:\n{output_tail}",
        missing.join(", ")
    )]
    NotRecorded { table: String, missing: Vec<String>, output_tail: String },
    #[error(
        "payload migrate:down exited 0 but {table} still has rows for [{}]: they were not rolled back. Its output ends with:\n{output_tail}",
        remaining.join(", ")
    )]
    StillRecorded { table: String, remaining: Vec<String>, output_tail: String },
    #[error(
        "cannot start `{program}` for Payload's CLI: {source}; install Node.js >= 20.9 and make sure `node` is on PATH"
    )]
    Spawn { program: String, source: std::io::Error },
    #[error("cannot read the migrations directory {dir}: {source}; check `migrations.dir` in the target's config")]
    Dir { dir: PathBuf, source: std::io::Error },
    #[error(
        "cannot read migration file {path}: {source}; check that it exists and that pgrehearse's user may read the whole migrations directory"
    )]
    File { path: PathBuf, source: std::io::Error },
    #[error("{path}: {problem}")]
    Layout { path: PathBuf, problem: String },
    #[error(
        "two files give the migration name `{name}` (Payload names a file up to its first dot): {first} and {second}; Payload would run both under one name. Remove or rename one"
    )]
    DuplicateName { name: String, first: PathBuf, second: PathBuf },
    #[error(transparent)]
    Pg(#[from] PgError),
    #[error(
        "reading {table} failed: {source}; check that the server is up and that the target's role may read {table} (GRANT SELECT ON {table} TO the role of live_url)"
    )]
    Sql { table: String, source: sqlx::Error },
}

impl Classify for PayloadError {
    fn class(&self) -> Class {
        match self {
            // The project's tools are missing on this host: install, retry.
            PayloadError::NotInstalled { .. } | PayloadError::Spawn { .. } => Class::Unavailable,
            PayloadError::NoProject { .. } | PayloadError::Dir { .. } => Class::Configuration,
            PayloadError::Sql { source: sqlx::Error::Io(_), .. } => Class::Unavailable,
            PayloadError::DevPushRows { .. }
            | PayloadError::DatabaseMissing { .. }
            | PayloadError::PlanMismatch { .. }
            | PayloadError::DownMismatch { .. }
            | PayloadError::DownFileMissing { .. }
            | PayloadError::Timeout { .. }
            | PayloadError::Failed { .. }
            | PayloadError::NotRecorded { .. }
            | PayloadError::StillRecorded { .. }
            | PayloadError::File { .. }
            | PayloadError::Layout { .. }
            | PayloadError::DuplicateName { .. }
            | PayloadError::Sql { .. } => Class::Failed,
            PayloadError::Pg(e) => e.class(),
        }
    }

    fn kind(&self) -> &'static str {
        match self {
            PayloadError::DevPushRows { .. } => "payload_dev_push",
            PayloadError::DatabaseMissing { .. } => "database_missing",
            PayloadError::NotInstalled { .. } => "payload_not_installed",
            PayloadError::NoProject { .. } => "payload_no_project",
            PayloadError::PlanMismatch { .. } => "payload_plan_mismatch",
            PayloadError::DownMismatch { .. } => "payload_down_mismatch",
            PayloadError::DownFileMissing { .. } => "payload_down_file_missing",
            PayloadError::Timeout { .. } => "payload_timeout",
            PayloadError::Failed { .. } => "payload_failed",
            PayloadError::NotRecorded { .. } => "payload_not_recorded",
            PayloadError::StillRecorded { .. } => "payload_still_recorded",
            PayloadError::Spawn { .. } => "payload_spawn_failed",
            PayloadError::Dir { .. } => "migrations_dir_unreadable",
            PayloadError::File { .. } => "migration_file_unreadable",
            PayloadError::Layout { .. } => "migration_layout",
            PayloadError::DuplicateName { .. } => "duplicate_migration_name",
            PayloadError::Pg(e) => e.kind(),
            PayloadError::Sql { source: sqlx::Error::Io(_), .. } => "pg_unreachable",
            PayloadError::Sql { .. } => "history_unreadable",
        }
    }
}
