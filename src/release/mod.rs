//! Releases: the path from a rehearsed, approved plan to live.
//!
//! `pgrehearse apply` takes the target's heavy-job lock (so two pgrehearse
//! processes can never release one target at once), finishes any release a
//! crash interrupted, runs preflight (refusals exit 75 and change nothing),
//! takes a pre-release snapshot and pins it, applies the plan as it was
//! rehearsed, and runs the post-checks. A failure is recovered as the
//! target's `on_failure` says: `restore` (default) the pinned snapshot into
//! a new database and swap it in, keeping the failed one as
//! `<db>_failed_<release>`; `down` the migrations this release applied;
//! `halt`. A plan that ran in one transaction simply rolled back. Every
//! step is journaled before it is taken (`journal`), and the release record
//! keeps what reports and metrics need: outcome, reason, timings, the
//! migrations, the recovery taken.

pub mod apply;
pub mod approval;
mod document;
pub mod fence;
pub mod journal;
mod postcheck;
pub mod preflight;
pub mod queue_guard;
mod recovery;
pub mod salvage;
mod stranding;
mod watch;

use std::time::Instant;

use chrono::Utc;
use tokio_util::sync::CancellationToken;

use crate::config::{Config, OnFailure, Target};
use crate::error_class::{Class, Classify};
use crate::migrations::executor::Mode;
use crate::migrations::{self, Migration, Plan, PlanError, Source};
use crate::pg::lock::{HeavyLock, LockError};
use crate::snapshot::{self, SnapshotError};
pub use crate::state::Outcome;
use crate::state::{ReleaseErrorKind, ReleaseRow, State, StateError};
use crate::store::{Store, StoreError};
use crate::stranded::exposure::Exposure;
use journal::{Journal, Step};

use document::release_doc;
pub use document::{Release, error_text, list, watch_view};

impl Outcome {
    /// The exit code of `apply` for this outcome (see README).
    pub fn exit_code(self) -> u8 {
        match self {
            Outcome::Applied | Outcome::NothingPending => 0,
            Outcome::Refused => 75,
            _ => 1,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ReleaseError {
    #[error("release {id} of target `{target}` was not found; list them with `pgrehearse releases`")]
    NotFound { target: String, id: String },
    #[error(transparent)]
    Plan(#[from] PlanError),
    #[error(transparent)]
    Snapshot(#[from] SnapshotError),
    #[error(transparent)]
    Lock(#[from] LockError),
    #[error(transparent)]
    State(#[from] StateError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Preflight(#[from] preflight::PreflightError),
}

impl Classify for ReleaseError {
    fn class(&self) -> Class {
        match self {
            ReleaseError::NotFound { .. } => Class::Usage,
            ReleaseError::Plan(e) => e.class(),
            ReleaseError::Snapshot(e) => e.class(),
            ReleaseError::Lock(e) => e.class(),
            ReleaseError::State(e) => e.class(),
            ReleaseError::Store(e) => e.class(),
            ReleaseError::Preflight(e) => e.class(),
        }
    }

    fn kind(&self) -> &'static str {
        match self {
            ReleaseError::NotFound { .. } => "release_not_found",
            ReleaseError::Plan(e) => e.kind(),
            ReleaseError::Snapshot(e) => e.kind(),
            ReleaseError::Lock(e) => e.kind(),
            ReleaseError::State(e) => e.kind(),
            ReleaseError::Store(e) => e.kind(),
            ReleaseError::Preflight(e) => e.kind(),
        }
    }
}

/// Everything a release step needs.
pub(crate) struct Ctx<'a> {
    pub config: &'a Config,
    pub target: &'a Target,
    pub state: &'a State,
    pub store: &'a dyn Store,
    pub source: Source<'a>,
    /// The write fence this process put up and has not lifted.
    pub fence: fence::Held,
}

/// `pgrehearse apply`: releases the approved plan now, if preflight allows,
/// recording it in `state` (the pre-release snapshot goes to `store`).
/// Signals do not interrupt it (a release is never abandoned mid-way); a
/// crash is finished by the next run.
pub async fn apply(
    config: &Config,
    state: &State,
    store: &dyn Store,
    target: &Target,
) -> Result<Release, ReleaseError> {
    let source = Source::of(target).map_err(PlanError::from)?;
    let cx = Ctx { config, target, state, store, source, fence: fence::Held::default() };
    let t0 = Instant::now();
    let lock = match HeavyLock::for_target(target.admin(), &target.name, "release").await {
        Ok(l) => l,
        Err(LockError::Held { target: t, holder }) => {
            let plan = migrations::plan_for(&cx.state, &cx.source, &target.live_url).await?;
            let reason = LockError::Held { target: t, holder }.to_string();
            return refuse(&cx, &plan, preflight::Refusal::Busy(reason), t0).await;
        }
        Err(e) => return Err(e.into()),
    };
    if let Some(r) = recovery::finish_interrupted(&cx).await? {
        lock.release().await;
        return Ok(r);
    }
    let plan = migrations::plan_for(&cx.state, &cx.source, &target.live_url).await?;
    if plan.pending.is_empty() && plan.drift.is_empty() {
        lock.release().await;
        tracing::info!(target = %target.name, "Nothing pending: live has every migration.");
        let mut row = new_row(&cx, &plan, Outcome::NothingPending);
        row.finished_at = Some(Utc::now().to_rfc3339());
        cx.state.release_insert(&row).await?;
        return release_doc(&cx.state, row, false).await;
    }
    let ready = match preflight::check(config, target, cx.state, cx.store, &plan, Utc::now()).await? {
        Ok(r) => r,
        Err(refusal) => {
            lock.release().await;
            return refuse(&cx, &plan, refusal, t0).await;
        }
    };
    let preflight_ms = t0.elapsed().as_millis() as u64;
    let mut row = new_row(&cx, &plan, Outcome::Running);
    row.approval_id = Some(ready.approval.id.clone());
    row.rehearsal_id = Some(ready.rehearsal.id.clone());
    row.server_version = Some(ready.server_version.clone());
    row.timings = serde_json::json!({ "preflight_ms": preflight_ms });
    cx.state.release_insert(&row).await?;
    watch::started(&cx, &row.id).await;
    let span = tracing::info_span!("release", run_id = %row.id, target = %target.name, job = "release");
    let result = tracing::Instrument::instrument(run(&cx, &plan, &ready, row.clone(), t0), span).await;
    if result.is_err() {
        // The release stops here unfinished (the next run finishes it): live
        // must not stay fenced until then.
        fence::lift(&cx, &Journal::new(cx.state, &row.id)).await;
    }
    lock.release().await;
    let row = match result {
        Ok(r) => r,
        Err(e) => {
            // The state store itself failed mid-release: say so loudly; the
            // journal (as far as it got) lets the next run finish it.
            tracing::error!(release = %row.id, error = %e, "The release could not be recorded; the next pgrehearse run will finish it from its journal.");
            return Err(e);
        }
    };
    watch::ended(&cx, &row).await;
    release_doc(&cx.state, row, false).await
}

async fn refuse(cx: &Ctx<'_>, plan: &Plan, refusal: preflight::Refusal, t0: Instant) -> Result<Release, ReleaseError> {
    tracing::warn!(target = %cx.target.name, reason = %refusal, "Release refused.");
    let mut row = new_row(cx, plan, Outcome::Refused);
    row.reason = Some(refusal.to_string());
    row.error_kind = Some(refusal.error_kind());
    row.finished_at = Some(Utc::now().to_rfc3339());
    row.timings = serde_json::json!({ "preflight_ms": t0.elapsed().as_millis() as u64 });
    cx.state.release_insert(&row).await?;
    release_doc(&cx.state, row, false).await
}

fn new_row(cx: &Ctx<'_>, plan: &Plan, outcome: Outcome) -> ReleaseRow {
    let now = Utc::now();
    ReleaseRow {
        id: format!("r-{}", snapshot::new_id(now)),
        target: cx.target.name.clone(),
        plan_hash: plan.hash.clone(),
        content_hash: content_hash(&plan.pending),
        approval_id: None,
        rehearsal_id: None,
        database: cx.target.live_url.database(),
        on_failure: format!("{:?}", cx.target.on_failure).to_lowercase(),
        outcome,
        reason: None,
        error_kind: None,
        pre_snapshot_id: None,
        failed_database: None,
        recovery: None,
        started_at: now.to_rfc3339(),
        finished_at: None,
        pid: std::process::id(),
        host: crate::host::hostname(),
        migrations: serde_json::Value::Array(Vec::new()),
        timings: serde_json::json!({}),
        warnings: Vec::new(),
        server_version: None,
        stranded_writes: serde_json::Value::Null,
        write_counters: serde_json::Value::Null,
        pending: serde_json::Value::Array(
            plan.pending
                .iter()
                .map(|m| {
                    serde_json::json!({
                        "version": m.version, "name": m.name, "checksum": m.checksum, "transactional": m.transactional,
                    })
                })
                .collect(),
        ),
    }
}

/// SHA-256 over the pending migrations' versions and checksums: the same
/// plan content on every target (the plan hash also covers target and history).
fn content_hash(pending: &[Migration]) -> String {
    use sha2::{Digest, Sha256};
    let mut h = Sha256::new();
    for m in pending {
        h.update(format!("{} {}\n", m.version, m.checksum));
    }
    hex::encode(h.finalize())
}

/// Snapshot → pin → apply → post-checks, or failure → recovery.
async fn run(
    cx: &Ctx<'_>,
    plan: &Plan,
    ready: &preflight::Ready,
    mut row: ReleaseRow,
    t0: Instant,
) -> Result<ReleaseRow, ReleaseError> {
    let journal = Journal::new(&cx.state, &row.id);
    let mode = Mode::of(cx.source.kind(), &plan.pending);
    let exposure = Exposure::of(cx.target, mode == Mode::SingleTransaction);
    if exposure == Exposure::Fenced
        && let Err(e) = fence::raise(cx, &journal).await?
    {
        row.outcome = Outcome::Aborted;
        row.reason = Some(format!(
            "the write fence (fence_writes = true) could not be put up on live, so nothing was applied: {e}"
        ));
        row.error_kind = Some(ReleaseErrorKind::FenceFailed);
        return finish(cx, &journal, row, t0).await;
    }
    if exposure == Exposure::Unfenced {
        tracing::warn!(note = exposure.note().unwrap_or_default(), "No write fence.");
    }
    tracing::info!(plan = %plan.hash, pending = plan.pending.len(), window_closes = %ready.opening.end, "Release started: taking the pre-release snapshot.");
    row.write_counters = stranding::counters(cx.target).await;
    journal.step(Step::Snapshot, None).await?;
    let t = Instant::now();
    let snap = snapshot::take_with(
        cx.config,
        cx.state,
        cx.store,
        cx.target,
        snapshot::Reason::PreRelease,
        &CancellationToken::new(),
        snapshot::Locking::HeldByCaller,
    )
    .await;
    let snapshot_ms = t.elapsed().as_millis() as u64;
    timing(&mut row, "snapshot_ms", snapshot_ms);
    let snap = match snap {
        Ok(s) => s,
        Err(e) => {
            // Nothing ran on live: the release stops here.
            row.outcome = Outcome::Aborted;
            row.reason = Some(format!("the pre-release snapshot failed, so nothing was applied: {e}"));
            row.error_kind = Some(ReleaseErrorKind::SnapshotFailed);
            return finish(cx, &journal, row, t0).await;
        }
    };
    journal.step(Step::SnapshotDone, Some(&snap.id)).await?;
    row.pre_snapshot_id = Some(snap.id.clone());
    cx.state.release_update(&row).await?;
    recovery::pin(cx.store, &cx.target.name, &snap.id, Some(&row.id)).await?;

    let before_not_valid = not_valid_on_live(cx.target).await;
    journal.step(Step::Apply, Some(mode.as_str())).await?;
    tracing::info!(mode = mode.as_str(), snapshot = %snap.id, "Applying the plan to live.");
    let t = Instant::now();
    let outcome = apply::run(&cx.source, cx.target, &plan.pending, mode, &journal).await?;
    timing(&mut row, "apply_ms", t.elapsed().as_millis() as u64);
    row.migrations = serde_json::to_value(&outcome.steps).expect("steps serialize");
    match &outcome.failure {
        None => {
            journal.step(Step::Applied, None).await?;
            // Applied: no restore can follow, the application may write again.
            let unlifted = fence::lift(cx, &journal).await;
            cx.state.release_update(&row).await?;
            journal.step(Step::Postcheck, None).await?;
            let t = Instant::now();
            row.warnings = postcheck::run(
                &cx.target.live_url,
                &ready.pg_dump,
                &cx.source.table(),
                &ready.evidence,
                &before_not_valid,
            )
            .await;
            row.warnings.extend(unlifted);
            timing(&mut row, "postcheck_ms", t.elapsed().as_millis() as u64);
            row.outcome = Outcome::Applied;
            recovery::unpin_older(cx, &row.id).await;
            tracing::info!(warnings = row.warnings.len(), "Release applied.");
        }
        Some(failure) => {
            tracing::error!(error = %failure, "A migration failed on live.");
            journal.step(Step::Failed, Some(failure)).await?;
            row.reason = Some(failure.clone());
            row.error_kind = Some(match outcome.queue_blocked {
                Some(_) => ReleaseErrorKind::LockQueue,
                None => ReleaseErrorKind::MigrationFailed,
            });
            if outcome.partial {
                let t = Instant::now();
                recovery::recover(cx, &journal, &mut row, &plan.pending).await?;
                timing(&mut row, "recovery_ms", t.elapsed().as_millis() as u64);
            } else {
                row.outcome = Outcome::RolledBack;
                tracing::warn!("The failed migration's transaction rolled back: live is as it was before the release.");
            }
        }
    }
    finish(cx, &journal, row, t0).await
}

async fn finish(cx: &Ctx<'_>, journal: &Journal, mut row: ReleaseRow, t0: Instant) -> Result<ReleaseRow, ReleaseError> {
    timing(&mut row, "total_ms", t0.elapsed().as_millis() as u64);
    close(cx, journal, &mut row).await?;
    Ok(row)
}

/// Journals the end of this run of a release and saves its record:
/// `finished` with the outcome, or `suspended` when live's server went away
/// during recovery (the release stays unfinished for the next run).
pub(crate) async fn close(cx: &Ctx<'_>, journal: &Journal, row: &mut ReleaseRow) -> Result<(), ReleaseError> {
    if row.outcome == Outcome::Interrupted {
        // Live's server is away: a fence stays up until the next run
        // finishes the release.
        journal.step(Step::Suspended, Some("live unreachable")).await?;
    } else {
        // Every settled outcome: applied, rolled back, restored, halted, aborted.
        row.warnings.extend(fence::lift(cx, journal).await);
        row.finished_at = Some(Utc::now().to_rfc3339());
        journal.step(Step::Finished, Some(row.outcome.as_str())).await?;
    }
    cx.state.release_update(row).await?;
    Ok(())
}

fn timing(row: &mut ReleaseRow, key: &str, ms: u64) {
    if let Some(o) = row.timings.as_object_mut() {
        o.insert(key.into(), serde_json::json!(ms));
    }
}

async fn not_valid_on_live(target: &Target) -> Vec<String> {
    match crate::pg::connect(&target.live_url, "pgrehearse-postcheck").await {
        Ok(mut c) => crate::pg::not_valid_constraints(&mut c).await.unwrap_or_default(),
        Err(_) => Vec::new(),
    }
}

/// Records the releases of `target` this process was running as
/// `interrupted` (journal: `suspended`), after the stall watchdog stopped
/// the release because live's server stopped answering (see `jobs`).
/// Nothing is done on live, which does not answer: as after a crash, the
/// next command on the target finishes the release from its journal once
/// it answers again. A failure to record is logged; the journal stands.
pub async fn suspend_stalled(state: &State, target: &Target, why: &str) {
    let rows = match state.unfinished_releases(&target.name).await {
        Ok(rows) => rows,
        Err(e) => {
            tracing::error!(error = %e, "Cannot read the release records to mark the stalled release interrupted; the next run finishes it from its journal.");
            return;
        }
    };
    let mine = |r: &ReleaseRow| r.outcome == Outcome::Running && r.pid == std::process::id();
    for mut row in rows.into_iter().filter(mine) {
        row.outcome = Outcome::Interrupted;
        row.error_kind = Some(ReleaseErrorKind::LiveStalled);
        row.reason = Some(format!(
            "{why}. Live may hold part of the plan: once its server answers again, any pgrehearse command on this target (e.g. `pgrehearse status`) finishes the release from its journal"
        ));
        let recorded = async {
            Journal::new(state, &row.id).step(Step::Suspended, Some("live stalled")).await?;
            state.release_update(&row).await
        };
        match recorded.await {
            Ok(()) => {
                tracing::error!(release = %row.id, "Release stopped: live's server stalled; recorded interrupted.")
            }
            Err(e) => {
                tracing::error!(release = %row.id, error = %e, "Cannot record the stalled release; the next run finishes it from its journal.")
            }
        }
    }
}

/// Finishes a release of `target` that a crash interrupted, if there is one
/// and no other process holds the target's lock (then it is not
/// interrupted, just running). Every command that acts on a target calls
/// this first. `store` opens the object store, called only when there is
/// a release to finish.
pub async fn recover_interrupted<'s>(
    config: &Config,
    state: &State,
    store: impl AsyncFnOnce() -> Result<&'s dyn Store, StoreError>,
    target: &Target,
) -> Result<Option<Release>, ReleaseError> {
    if state.unfinished_releases(&target.name).await?.is_empty() || target.migrations.is_none() {
        return Ok(None);
    }
    let lock = match HeavyLock::for_target(target.admin(), &target.name, "release-recovery").await {
        Ok(l) => l,
        Err(LockError::Held { .. }) => return Ok(None),
        Err(e) => return Err(e.into()),
    };
    let store = store().await?;
    let source = Source::of(target).map_err(PlanError::from)?;
    let cx = Ctx { config, target, state, store, source, fence: fence::Held::default() };
    let r = recovery::finish_interrupted(&cx).await;
    lock.release().await;
    r
}

/// Keeps `OnFailure` readable in logs and records.
pub(crate) fn on_failure_name(f: OnFailure) -> &'static str {
    match f {
        OnFailure::Restore => "restore",
        OnFailure::Down => "down",
        OnFailure::Halt => "halt",
    }
}
