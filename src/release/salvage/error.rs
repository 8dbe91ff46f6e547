//! What can stop a salvage, each error with its class: nothing to salvage
//! (usage: the release, its kept database or its list), the output file,
//! or live, the lock and the state store.

use std::path::PathBuf;

use crate::error_class::{Class, Classify};
use crate::pg::PgError;
use crate::pg::lock::LockError;
use crate::state::{Outcome, StateError};

#[derive(Debug, thiserror::Error)]
pub enum SalvageError {
    #[error("release {id} of target `{target}` was not found; list them with `pgrehearse releases`")]
    UnknownRelease { target: String, id: String },
    #[error(
        "release {id} ended `{outcome}`, not `restored`: only a restore strands writes, so there is nothing to salvage"
    )]
    NotRestored { id: String, outcome: Outcome },
    #[error(
        "the database `{database}` that release {id} kept is gone (dropped or renamed), and the stranded rows with it; \
         if you renamed it, rename it back to `{database}` and run salvage again"
    )]
    KeptGone { id: String, database: String },
    #[error(
        "`{database}` holds no list of stranded rows (schema pgrehearse_stranded): this release was restored by an \
         earlier version of pgrehearse, which did not record them; compare `{database}` with live by primary key yourself"
    )]
    NoList { database: String },
    #[error("{path} already exists; choose another file or remove it (salvage never overwrites a file)")]
    OutputExists { path: PathBuf },
    #[error("cannot write {path}: {source}; choose a writable path")]
    Output { path: PathBuf, source: std::io::Error },
    #[error("salvage failed on live at a {op} in {table}, so nothing was applied (one transaction): {source}")]
    Apply { table: String, op: &'static str, source: PgError },
    #[error(transparent)]
    Pg(#[from] PgError),
    #[error(transparent)]
    Lock(#[from] LockError),
    #[error(transparent)]
    State(#[from] StateError),
}

impl Classify for SalvageError {
    fn class(&self) -> Class {
        match self {
            SalvageError::UnknownRelease { .. }
            | SalvageError::NotRestored { .. }
            | SalvageError::KeptGone { .. }
            | SalvageError::NoList { .. }
            | SalvageError::OutputExists { .. } => Class::Usage,
            SalvageError::Output { .. } => Class::Failed,
            SalvageError::Apply { source, .. } => source.class(),
            SalvageError::Pg(e) => e.class(),
            SalvageError::Lock(e) => e.class(),
            SalvageError::State(e) => e.class(),
        }
    }

    fn kind(&self) -> &'static str {
        match self {
            SalvageError::UnknownRelease { .. } => "release_not_found",
            SalvageError::NotRestored { .. } => "release_not_restored",
            SalvageError::KeptGone { .. } => "kept_database_gone",
            SalvageError::NoList { .. } => "no_stranded_list",
            SalvageError::OutputExists { .. } => "output_exists",
            SalvageError::Output { .. } => "output_unwritable",
            SalvageError::Apply { source, .. } => source.kind(),
            SalvageError::Pg(e) => e.kind(),
            SalvageError::Lock(e) => e.kind(),
            SalvageError::State(e) => e.kind(),
        }
    }
}
