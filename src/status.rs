//! `pgrehearse status`: where a target stands — applied migrations, the
//! pending plan and its hash, drift, the latest snapshot and its drill, the
//! latest rehearsal (and whether it rehearsed the current plan). Reads live's
//! history table only.

use serde::Serialize;

use crate::config::{Config, Target};
use crate::migrations::{self, Applied, Drift, PlanError, Source};
use crate::snapshot::catalog;
use crate::snapshot::open_stores;

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
    pub window_open: Option<crate::release::window::Opening>,
    pub next_window: Option<crate::release::window::Opening>,
    /// The newest release of the target (any outcome).
    pub last_release: Option<ReleaseStatus>,
}

#[derive(Debug, Serialize)]
pub struct ReleaseStatus {
    pub id: String,
    pub outcome: String,
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
    pub status: String,
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
    State(#[from] crate::state::StateError),
}

pub async fn status(config: &Config, target: &Target) -> Result<Status, StatusError> {
    let (state, store) = open_stores(config).await?;
    let source = Source::of(target).map_err(PlanError::from)?;
    let plan = migrations::plan_for(&state, &source, &target.live_url).await?;
    let listed = catalog::manifests(store.as_ref(), &target.name).await.map_err(catalog::CatalogError::from)?;
    let last_snapshot = listed.first().map(|m| SnapshotStatus {
        id: m.id.clone(),
        created_at: m.started_at.to_rfc3339(),
        verified_at: m.verified_at(),
    });
    let last_rehearsal = state.latest_rehearsal(&target.name, None).await?.map(|r| RehearsalStatus {
        current_plan: r.plan_hash.as_deref() == Some(plan.hash.as_str()),
        id: r.id,
        plan: r.plan_hash,
        status: r.status,
        started_at: r.started_at,
    });
    let approval = match state.latest_approval(&target.name, None).await? {
        // An approval a release already used no longer holds.
        Some(a) => Some(ApprovalStatus {
            valid: crate::release::approval::is_valid(&a, &plan.hash, chrono::Utc::now())
                && state.approval_spent(&a.id).await?.is_none(),
            approval: a,
        }),
        None => None,
    };
    let last_release = state.releases(Some(&target.name), 1).await?.into_iter().next().map(|r| ReleaseStatus {
        id: r.id,
        outcome: r.outcome,
        started_at: r.started_at,
        reason: r.reason,
    });
    let windows: Vec<_> = target.windows.iter().filter_map(|w| crate::release::window::Window::parse(w).ok()).collect();
    let now = chrono::Utc::now();
    Ok(Status {
        window_open: crate::release::window::open_now(&windows, now),
        next_window: crate::release::window::next_opening(&windows, now),
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
        applied: plan.applied,
        drift: plan.drift,
        plan: plan.hash,
        last_snapshot,
        last_rehearsal,
        approval,
        last_release,
    })
}
