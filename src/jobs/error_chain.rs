//! Which domain error a job ended with: the operations return `thiserror`
//! enums that `?` turns into `anyhow`, and this is the one list of those
//! types below the edges (`main` adds the edges' own). Each enum classifies
//! the errors it wraps, so the outermost one found in a chain decides.

use super::ThreadError;
use crate::error_class::classifier;
use crate::{
    config, migrations, pg, rehearsal, release, report, restore, shadow, snapshot, state, status, store, watch,
};

classifier!(
    /// `cause` as a classified domain error, if it is one.
    pub fn classified; DOMAIN_ERRORS = [
        config::ConfigError,
        migrations::PlanError,
        migrations::SourceError,
        migrations::payload::PayloadError,
        pg::PgError,
        pg::lock::LockError,
        pg::stall::Stalled,
        pg::tools::ToolError,
        rehearsal::RehearsalError,
        release::ReleaseError,
        release::approval::ApprovalError,
        release::preflight::PreflightError,
        release::preflight::Refusal,
        release::salvage::SalvageError,
        report::email::EmailError,
        restore::RestoreError,
        shadow::ShadowError,
        shadow::load::LoadError,
        snapshot::SnapshotError,
        snapshot::catalog::CatalogError,
        state::StateError,
        status::StatusError,
        store::StoreError,
        watch::WatchError,
        ThreadError,
    ]
);

/// The bounded kind of a job's error (its first domain error's), for
/// metric labels; `internal` when the chain holds none.
pub fn error_kind(e: &anyhow::Error) -> &'static str {
    e.chain().find_map(classified).map_or("internal", |c| c.kind())
}
