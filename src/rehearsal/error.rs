//! Why a rehearsal could not run: `RehearsalError`, its variants' messages
//! and their class and kind.

use crate::drill::DrillError;
use crate::error_class::{Class, Classify};
use crate::migrations::{PlanError, SourceError};
use crate::pg::PgError;
use crate::pg::lock::LockError;
use crate::pg::tools::ToolError;
use crate::shadow::ShadowError;
use crate::snapshot::SnapshotError;
use crate::snapshot::catalog::CatalogError;
use crate::state::StateError;
use crate::store::StoreError;

#[derive(Debug, thiserror::Error)]
pub enum RehearsalError {
    #[error(
        "the rehearsal was cancelled (SIGINT/SIGTERM); its scratch databases were dropped and live was not touched"
    )]
    Cancelled,
    #[error(
        "snapshot {id} failed its restore drill ({problems}); rehearse on another snapshot (`--snapshot ID`) or take a fresh one (`--snapshot fresh`)"
    )]
    SnapshotBroken { id: String, problems: String },
    #[error(
        "the live history has migrations the project no longer has files for ({versions}); restore those files before rehearsing"
    )]
    CatchUpMissing { versions: String },
    #[error(
        "snapshot {snapshot} has migrations applied that live does not ({versions}): live was rolled back or restored since; rehearse on a fresh snapshot (`--snapshot fresh`)"
    )]
    SnapshotAhead { snapshot: String, versions: String },
    #[error(
        "bringing the copy up to live's history failed at migration {version}: {message}; rehearse on a fresh snapshot (`--snapshot fresh`), which needs no catching up"
    )]
    CatchUpFailed { version: String, message: String },
    #[error(
        "live has applied migrations since snapshot {snapshot} ({versions}); a {kind} project cannot replay them separately from the plan: rehearse on a fresh snapshot (`--snapshot fresh`)"
    )]
    CatchUpExternal { snapshot: String, versions: String, kind: String },
    #[error("the queries file {path} is not valid: {message}; fix it, or set `queries = {{ file = … }}` of the target")]
    QueriesFile { path: String, message: String },
    #[error(transparent)]
    Plan(#[from] PlanError),
    #[error(transparent)]
    Source(#[from] SourceError),
    #[error(transparent)]
    Payload(#[from] crate::migrations::payload::PayloadError),
    #[error(transparent)]
    Drill(#[from] DrillError),
    #[error(transparent)]
    Shadow(#[from] ShadowError),
    #[error(transparent)]
    Snapshot(#[from] SnapshotError),
    #[error(transparent)]
    Catalog(#[from] CatalogError),
    #[error(transparent)]
    Pg(#[from] PgError),
    #[error(transparent)]
    Tool(#[from] ToolError),
    #[error(transparent)]
    Lock(#[from] LockError),
    #[error(transparent)]
    State(#[from] StateError),
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl Classify for RehearsalError {
    fn class(&self) -> Class {
        match self {
            RehearsalError::Cancelled
            | RehearsalError::SnapshotBroken { .. }
            | RehearsalError::CatchUpMissing { .. }
            | RehearsalError::SnapshotAhead { .. }
            | RehearsalError::CatchUpFailed { .. }
            | RehearsalError::CatchUpExternal { .. } => Class::Failed,
            RehearsalError::QueriesFile { .. } => Class::Configuration,
            RehearsalError::Plan(e) => e.class(),
            RehearsalError::Source(e) => e.class(),
            RehearsalError::Payload(e) => e.class(),
            RehearsalError::Drill(e) => e.class(),
            RehearsalError::Shadow(e) => e.class(),
            RehearsalError::Snapshot(e) => e.class(),
            RehearsalError::Catalog(e) => e.class(),
            RehearsalError::Pg(e) => e.class(),
            RehearsalError::Tool(e) => e.class(),
            RehearsalError::Lock(e) => e.class(),
            RehearsalError::State(e) => e.class(),
            RehearsalError::Store(e) => e.class(),
        }
    }

    fn kind(&self) -> &'static str {
        match self {
            RehearsalError::Cancelled => "cancelled",
            RehearsalError::SnapshotBroken { .. } => "snapshot_broken",
            RehearsalError::CatchUpMissing { .. } => "catch_up_files_missing",
            RehearsalError::SnapshotAhead { .. } => "snapshot_ahead_of_live",
            RehearsalError::CatchUpFailed { .. } => "catch_up_failed",
            RehearsalError::CatchUpExternal { .. } => "catch_up_external",
            RehearsalError::QueriesFile { .. } => "queries_file_invalid",
            RehearsalError::Plan(e) => e.kind(),
            RehearsalError::Source(e) => e.kind(),
            RehearsalError::Payload(e) => e.kind(),
            RehearsalError::Drill(e) => e.kind(),
            RehearsalError::Shadow(e) => e.kind(),
            RehearsalError::Snapshot(e) => e.kind(),
            RehearsalError::Catalog(e) => e.kind(),
            RehearsalError::Pg(e) => e.kind(),
            RehearsalError::Tool(e) => e.kind(),
            RehearsalError::Lock(e) => e.kind(),
            RehearsalError::State(e) => e.kind(),
            RehearsalError::Store(e) => e.kind(),
        }
    }
}
