//! Where a target stands, as `GET /api/v1/targets` and the status page show
//! it: the pending plan (read from live's history), the latest snapshots
//! and their restore drills, rehearsals, the approval, the windows, the
//! releases.
//!
//! Live and the object store are read with short timeouts, and a part that
//! cannot be read degrades (`live: "unreachable"`, a line in `problems`)
//! instead of failing or hanging the request: the page is what an operator
//! opens when something is wrong. Nothing here waits for a running job.

use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::Serialize;

use super::ApiError;
use crate::config::schedule::Opening;
use crate::config::{Config, MigrationKind, Target};
use crate::migrations::{self, Plan, PlanError, Source};
use crate::snapshot::Reason;
use crate::snapshot::manifest::Manifest;
use crate::state::{ApprovalRow, RehearsalRow, ReleaseRow, State};
use crate::status;
use crate::store::{self, Store};

/// How long a request waits for live's migration history.
pub const LIVE_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a request waits for the object store (open, list, read).
pub const STORE_TIMEOUT: Duration = Duration::from_secs(10);

/// Whether live's history could be read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Live {
    Ok,
    /// Refused, or no answer within [`LIVE_TIMEOUT`].
    Unreachable,
    /// It answered, but reading the plan failed (see `problems`).
    Error,
    /// The target has no migration source: there is no plan.
    NoSource,
}

#[derive(Debug, Serialize)]
pub struct TargetSummary {
    pub name: String,
    pub kind: Option<MigrationKind>,
    pub live: Live,
    /// The plan hash pending on live now (null when live could not be read).
    pub plan: Option<String>,
    pub pending_count: Option<usize>,
    pub pending: Vec<PendingView>,
    pub drift_count: Option<usize>,
    pub last_snapshot: Option<SnapshotView>,
    /// The newest rehearsal of any plan.
    pub last_rehearsal: Option<RehearsalView>,
    /// The newest rehearsal of the pending plan.
    pub plan_rehearsal: Option<RehearsalView>,
    pub approval: Option<ApprovalView>,
    /// True when the pending plan has a passing rehearsal and no valid
    /// approval yet (`POST /api/v1/approvals` may still refuse, e.g. when
    /// the rehearsal is older than `approval_max_age`).
    pub approvable: bool,
    pub window_open: Option<Opening>,
    pub next_window: Option<Opening>,
    pub last_release: Option<ReleaseSummary>,
    /// The job running for this target now, if any.
    pub running: Option<&'static str>,
    /// What could not be read, in words.
    pub problems: Vec<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct PendingView {
    pub version: String,
    pub name: String,
}

/// A snapshot with the result of its latest restore drill.
#[derive(Debug, Clone, Serialize)]
pub struct SnapshotView {
    pub id: String,
    pub created_at: DateTime<Utc>,
    pub finished_at: DateTime<Utc>,
    pub reason: Reason,
    pub key: String,
    pub bytes_raw: u64,
    pub bytes_stored: u64,
    pub sha256: String,
    pub encrypted: bool,
    /// When a restore drill last passed (null if never).
    pub verified_at: Option<String>,
    /// The latest drill's result (null if never drilled).
    pub verification_ok: Option<bool>,
    pub verification_checked_at: Option<String>,
    /// `restore` or `template_clone`.
    pub verification_method: Option<String>,
    /// The measured recovery time: how long the latest drill's restore took.
    pub restore_duration_ms: Option<u64>,
    pub pinned_by: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct RehearsalView {
    pub id: String,
    pub plan: Option<String>,
    /// `running`, `passed`, `problems` or `error`.
    pub status: crate::state::RehearsalStatus,
    pub started_at: String,
    pub finished_at: Option<String>,
    /// Whether it rehearsed the plan pending now (null when unknown).
    pub current_plan: Option<bool>,
}

#[derive(Debug, Clone, Serialize)]
pub struct ApprovalView {
    #[serde(flatten)]
    pub approval: ApprovalRow,
    /// Names the pending plan and has not expired (null when the pending
    /// plan is unknown).
    pub valid: Option<bool>,
    pub expired: bool,
    /// The release that used it, if one did.
    pub spent_by: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct ReleaseSummary {
    pub id: String,
    pub plan: String,
    pub outcome: crate::state::Outcome,
    pub reason: Option<String>,
    pub recovery: Option<String>,
    pub started_at: String,
    pub finished_at: Option<String>,
    pub duration_ms: Option<u64>,
    /// What a restore stranded; null when no restore happened.
    pub stranded_writes: Option<crate::stranded::StrandedWrites>,
}

/// A summary plus what the status page shows in full.
#[derive(Debug)]
pub struct Overview {
    pub summary: TargetSummary,
    /// Newest first, at most [`PAGE_SNAPSHOTS`].
    pub snapshots: Vec<SnapshotView>,
    /// The rehearsal whose report is shown: of the pending plan, else the newest.
    pub rehearsal: Option<RehearsalView>,
    pub report: Option<serde_json::Value>,
    /// Newest first, at most [`PAGE_RELEASES`].
    pub releases: Vec<ReleaseSummary>,
}

pub const PAGE_SNAPSHOTS: usize = 5;
pub const PAGE_RELEASES: u32 = 10;

/// Opens the object store, giving up after [`STORE_TIMEOUT`].
pub async fn open_store(config: &Config) -> Result<Box<dyn Store>, ApiError> {
    match tokio::time::timeout(STORE_TIMEOUT, store::open(&config.store)).await {
        Ok(r) => Ok(r?),
        Err(_) => Err(ApiError::unavailable(format!(
            "the snapshot store did not answer within {} s",
            STORE_TIMEOUT.as_secs()
        ))),
    }
}

/// Every snapshot of `target`, newest first, giving up after [`STORE_TIMEOUT`].
pub async fn snapshots(store: &dyn Store, target: &str) -> Result<Vec<SnapshotView>, ApiError> {
    match tokio::time::timeout(STORE_TIMEOUT, crate::snapshot::catalog::manifests(store, target)).await {
        Ok(r) => Ok(r?.into_iter().map(|m| snapshot_view(store, m)).collect()),
        Err(_) => Err(ApiError::unavailable(format!(
            "the snapshot store did not list {target}'s snapshots within {} s",
            STORE_TIMEOUT.as_secs()
        ))),
    }
}

/// Gathers `target`'s overview. `store` is the opened object store, or why
/// it could not be opened. `detail` adds what only the page shows.
pub async fn gather(
    state: &State,
    store: Result<&dyn Store, &str>,
    target: &Target,
    running: Option<&'static str>,
    detail: bool,
) -> Result<Overview, ApiError> {
    let mut problems = Vec::new();
    let listing = async {
        match store {
            Ok(s) => snapshots(s, &target.name).await.map_err(|e| e.message),
            Err(why) => Err(why.to_string()),
        }
    };
    let (plan, listing) = tokio::join!(read_plan(state, target), listing);
    let (live, plan) = match plan {
        Ok(p) => (Live::Ok, Some(p)),
        Err((live, why)) => {
            if let Some(why) = why {
                problems.push(why);
            }
            (live, None)
        }
    };
    let snapshots = listing.unwrap_or_else(|why| {
        problems.push(why);
        Vec::new()
    });
    let hash = plan.as_ref().map(|p| p.hash.clone());
    let now = Utc::now();

    let st = status::standing(state, target, hash.as_deref(), if detail { PAGE_RELEASES } else { 1 }, now).await?;
    let current = |r: RehearsalRow| rehearsal_view(r, hash.as_deref());
    let last_rehearsal = st.last_rehearsal.map(current);
    let plan_rehearsal = st.plan_rehearsal.map(current);
    let approval = st.approval.map(|(a, u)| ApprovalView {
        // Names the pending plan and has not expired; being spent is `spent_by`.
        valid: u.names_plan.map(|names| names && !u.expired),
        expired: u.expired,
        spent_by: u.spent_by,
        approval: a,
    });
    let pending: Vec<PendingView> = plan
        .iter()
        .flat_map(|p| &p.pending)
        .map(|m| PendingView { version: m.version.clone(), name: m.name.clone() })
        .collect();
    let approvable = !pending.is_empty()
        && plan_rehearsal.as_ref().is_some_and(|r| r.status == crate::state::RehearsalStatus::Passed)
        && approval.as_ref().is_none_or(|a| a.valid != Some(true));
    let releases: Vec<ReleaseSummary> = st.releases.iter().map(release_summary).collect();

    let shown = plan_rehearsal.clone().or_else(|| last_rehearsal.clone());
    let report = match (&shown, detail) {
        (Some(r), true) => state.rehearsal_record(&r.id).await?.and_then(|rec| rec.report),
        _ => None,
    };
    let summary = TargetSummary {
        name: target.name.clone(),
        kind: target.migrations.as_ref().map(|m| m.kind),
        live,
        pending_count: plan.as_ref().map(|p| p.pending.len()),
        drift_count: plan.as_ref().map(|p| p.drift.len()),
        plan: hash,
        pending,
        last_snapshot: snapshots.first().cloned(),
        last_rehearsal,
        plan_rehearsal,
        approval,
        approvable,
        window_open: st.window_open,
        next_window: st.next_window,
        last_release: releases.first().cloned(),
        running,
        problems,
    };
    Ok(Overview {
        summary,
        snapshots: if detail { snapshots.into_iter().take(PAGE_SNAPSHOTS).collect() } else { Vec::new() },
        rehearsal: shown,
        report,
        releases,
    })
}

/// The plan on live, or how live could not be read (and why, in words).
async fn read_plan(state: &State, target: &Target) -> Result<Plan, (Live, Option<String>)> {
    let Ok(source) = Source::of(target) else { return Err((Live::NoSource, None)) };
    match tokio::time::timeout(LIVE_TIMEOUT, migrations::plan_for(state, &source, &target.live_url)).await {
        Ok(Ok(plan)) => Ok(plan),
        Ok(Err(PlanError::Pg(e))) if e.is_unavailable() => {
            Err((Live::Unreachable, Some(format!("live unreachable: {e}"))))
        }
        Ok(Err(e)) => Err((Live::Error, Some(format!("cannot read the plan on live: {e}")))),
        Err(_) => Err((
            Live::Unreachable,
            Some(format!("live unreachable: its migration history did not answer within {} s", LIVE_TIMEOUT.as_secs())),
        )),
    }
}

fn snapshot_view(store: &dyn Store, m: Manifest) -> SnapshotView {
    let v = m.verification.as_ref();
    let field = |k: &str| v.and_then(|v| v.get(k));
    SnapshotView {
        verified_at: m.verified_at(),
        verification_ok: field("ok").and_then(|x| x.as_bool()),
        verification_checked_at: field("checked_at").and_then(|x| x.as_str()).map(str::to_string),
        verification_method: field("method").and_then(|x| x.as_str()).map(str::to_string),
        restore_duration_ms: field("restore_duration_ms").and_then(|x| x.as_u64()),
        key: store.locate(&m.dump.key),
        encrypted: m.encryption.is_some(),
        id: m.id,
        created_at: m.started_at,
        finished_at: m.finished_at,
        reason: m.reason,
        bytes_raw: m.bytes_raw,
        bytes_stored: m.bytes_stored,
        sha256: m.sha256,
        pinned_by: m.pinned_by,
    }
}

fn rehearsal_view(r: RehearsalRow, plan: Option<&str>) -> RehearsalView {
    RehearsalView {
        current_plan: plan.map(|p| r.plan_hash.as_deref() == Some(p)),
        id: r.id,
        plan: r.plan_hash,
        status: r.status,
        started_at: r.started_at,
        finished_at: r.finished_at,
    }
}

fn release_summary(r: &ReleaseRow) -> ReleaseSummary {
    ReleaseSummary {
        id: r.id.clone(),
        plan: r.plan_hash.clone(),
        outcome: r.outcome,
        reason: r.reason.clone(),
        recovery: r.recovery.clone(),
        started_at: r.started_at.clone(),
        finished_at: r.finished_at.clone(),
        duration_ms: r.timings.get("total_ms").and_then(|t| t.as_u64()),
        stranded_writes: crate::stranded::StrandedWrites::of_record(&r.stranded_writes),
    }
}
