//! `pgrehearse status`: where a target stands — applied migrations, the
//! pending plan and its hash, drift, the latest snapshot and its drill, the
//! latest rehearsal (and whether it rehearsed the current plan). Reads live's
//! history table only.
//!
//! [`standing`] is the one computation of what the state store says of a
//! target (rehearsals, the approval and whether it is usable, releases,
//! windows); `pgrehearse status` and the API's overview both build on it,
//! each reading live and the object store their own way (the CLI fails on
//! an error, the API degrades).

use chrono::{DateTime, Utc};
use serde::Serialize;

use crate::config::schedule::{self as window, Opening};
use crate::config::{MigrationKind, Target};
use crate::error_class::{Class, Classify};
use crate::migrations::{self, Applied, Drift, PlanError, Source};
use crate::release::approval::{self, Usability};
use crate::snapshot::catalog;
use crate::state::{ApprovalRow, RehearsalRow, ReleaseRow, State, StateError};
use crate::store::Store;

#[derive(Debug, Serialize)]
pub struct Status {
    pub target: String,
    pub kind: crate::config::MigrationKind,
    pub applied: Vec<Applied>,
    pub pending: Vec<Pending>,
    pub drift: Vec<Drift>,
    /// The plan hash of the pending migrations on top of live's history.
    pub plan: String,
    pub last_snapshot: Option<SnapshotStatus>,
    pub last_rehearsal: Option<RehearsalStatus>,
    /// The newest approval; `valid` when it names the pending plan, has not
    /// expired and no release used it yet.
    pub approval: Option<ApprovalStatus>,
    /// The release window open now (with its end), and the next one.
    pub window_open: Option<Opening>,
    pub next_window: Option<Opening>,
    /// The newest release of the target (any outcome).
    pub last_release: Option<ReleaseStatus>,
}

#[derive(Debug, Serialize)]
pub struct ReleaseStatus {
    pub id: String,
    pub outcome: crate::state::Outcome,
    pub started_at: String,
    pub reason: Option<String>,
}

#[derive(Debug, Serialize)]
pub struct ApprovalStatus {
    #[serde(flatten)]
    pub approval: crate::state::ApprovalRow,
    pub valid: bool,
}

#[derive(Debug, Serialize)]
pub struct Pending {
    pub version: String,
    pub name: String,
    pub file: String,
    pub transactional: bool,
    pub reversible: bool,
}

#[derive(Debug, Serialize)]
pub struct SnapshotStatus {
    pub id: String,
    pub created_at: String,
    pub verified_at: Option<String>,
}

#[derive(Debug, Serialize)]
pub struct RehearsalStatus {
    pub id: String,
    pub plan: Option<String>,
    /// `running`, `passed`, `problems` or `error`.
    pub status: crate::state::RehearsalStatus,
    pub started_at: String,
    /// Whether it rehearsed the plan that is pending now.
    pub current_plan: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum StatusError {
    #[error(transparent)]
    Plan(#[from] PlanError),
    #[error(transparent)]
    Snapshot(#[from] crate::snapshot::SnapshotError),
    #[error(transparent)]
    Catalog(#[from] catalog::CatalogError),
    #[error(transparent)]
    State(#[from] StateError),
}

impl Classify for StatusError {
    fn class(&self) -> Class {
        match self {
            StatusError::Plan(e) => e.class(),
            StatusError::Snapshot(e) => e.class(),
            StatusError::Catalog(e) => e.class(),
            StatusError::State(e) => e.class(),
        }
    }

    fn kind(&self) -> &'static str {
        match self {
            StatusError::Plan(e) => e.kind(),
            StatusError::Snapshot(e) => e.kind(),
            StatusError::Catalog(e) => e.kind(),
            StatusError::State(e) => e.kind(),
        }
    }
}

/// What the state store and the windows say of a target, given the plan
/// pending on live (when it could be read).
#[derive(Debug)]
pub struct Standing {
    /// The newest rehearsal of any plan.
    pub last_rehearsal: Option<RehearsalRow>,
    /// The newest rehearsal of the pending plan.
    pub plan_rehearsal: Option<RehearsalRow>,
    /// The newest approval, and whether it is usable for the pending plan.
    pub approval: Option<(ApprovalRow, Usability)>,
    /// Newest first, at most the number asked for.
    pub releases: Vec<ReleaseRow>,
    pub window_open: Option<Opening>,
    pub next_window: Option<Opening>,
}

/// Where `target` stands apart from live and the store: `plan` is the hash
/// pending on live (`None` when live could not be read), `releases` how
/// many of the newest releases to read.
pub async fn standing(
    state: &State,
    target: &Target,
    plan: Option<&str>,
    releases: u32,
    now: DateTime<Utc>,
) -> Result<Standing, StateError> {
    let last_rehearsal = state.latest_rehearsal(&target.name, None).await?;
    let plan_rehearsal = match plan {
        Some(h) => state.latest_rehearsal(&target.name, Some(h)).await?,
        None => None,
    };
    let approval = match state.latest_approval(&target.name, None).await? {
        Some(a) => {
            let u = approval::usability(state, &a, plan, now).await?;
            Some((a, u))
        }
        None => None,
    };
    let releases = state.releases(Some(&target.name), releases).await?;
    Ok(Standing {
        last_rehearsal,
        plan_rehearsal,
        approval,
        releases,
        window_open: window::open_now(&target.windows, now),
        next_window: window::next_opening(&target.windows, now),
    })
}

/// `pgrehearse status`: where `target` stands, read from live, `state` and
/// `store`.
pub async fn status(state: &State, store: &dyn Store, target: &Target) -> Result<Status, StatusError> {
    let source = Source::of(target).map_err(PlanError::from)?;
    let plan = migrations::plan_for(state, &source, &target.live_url).await?;
    let listed = catalog::manifests(store, &target.name).await.map_err(catalog::CatalogError::from)?;
    let last_snapshot = listed.first().map(|m| SnapshotStatus {
        id: m.id.clone(),
        created_at: m.started_at.to_rfc3339(),
        verified_at: m.verified_at(),
    });
    let st = standing(state, target, Some(&plan.hash), 1, Utc::now()).await?;
    let last_rehearsal = st.last_rehearsal.map(|r| RehearsalStatus {
        current_plan: r.plan_hash.as_deref() == Some(plan.hash.as_str()),
        id: r.id,
        plan: r.plan_hash,
        status: r.status,
        started_at: r.started_at,
    });
    // An approval a release already used no longer holds.
    let approval = st.approval.map(|(a, u)| ApprovalStatus { valid: u.usable(), approval: a });
    let last_release = st.releases.into_iter().next().map(|r| ReleaseStatus {
        id: r.id,
        outcome: r.outcome,
        started_at: r.started_at,
        reason: r.reason,
    });
    Ok(Status {
        window_open: st.window_open,
        next_window: st.next_window,
        target: target.name.clone(),
        kind: plan.kind,
        pending: plan
            .pending
            .iter()
            .map(|m| Pending {
                version: m.version.clone(),
                name: m.name.clone(),
                file: m.path.display().to_string(),
                transactional: m.transactional,
                reversible: m.down.is_reversible(),
            })
            .collect(),
        // A dev-push row (Payload's `batch = -1`) is no migration: it is drift.
        applied: plan.applied.into_iter().filter(|a| !(plan.kind == MigrationKind::Payload && !a.ok)).collect(),
        drift: plan.drift,
        plan: plan.hash,
        last_snapshot,
        last_rehearsal,
        approval,
        last_release,
    })
}
