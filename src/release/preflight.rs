//! Preflight: everything that must hold before a release touches live, each
//! refusal a fact with what to do about it (exit 75, nothing written to
//! live). Checked cheapest and most definite first: drift, the approval and
//! the evidence it rests on, promotion, the window and whether the release
//! fits in it, then the live server itself (dumps and old transactions
//! running, sessions holding locks on the plan's tables in transactions
//! older than `max_queue_wait`: the migrations would queue the application
//! behind them), staging space, client versions and the shadow's identity.

use std::time::Duration;

use chrono::{DateTime, Utc};
use sqlx::PgConnection;

use super::approval;
use crate::config::schedule::{self as window, Opening};
use crate::config::{Config, OnFailure, Target};
use crate::error_class::{Class, Classify};
use crate::migrations::Plan;
use crate::pg::{self, PgError, ServerInfo, tools};
use crate::state::{ApprovalRow, Evidence, RehearsalRow, RehearsalStatus, ReleaseErrorKind, State, StateError};

/// Why a release may not start now.
#[derive(Debug, Clone, thiserror::Error)]
pub enum Refusal {
    #[error("the live history has drift ({0}); fix it (see `pgrehearse status`) before releasing")]
    Drift(String),
    #[error("plan {plan} is not approved; rehearse it and run `pgrehearse approve --plan {plan}`")]
    NotApproved { plan: String },
    #[error(
        "the plan changed since it was approved: approval {approval} is for plan {approved}, but the plan pending on live is now {current} (a file was edited or added, or live's history moved); rehearse and approve the current plan"
    )]
    PlanChanged { approval: String, approved: String, current: String },
    #[error("approval {approval} of plan {plan} expired at {expired_at}; rehearse again if needed and approve anew")]
    Expired { approval: String, plan: String, expired_at: String },
    #[error(
        "approval {approval} was already used by release {release}; an approval releases a plan once: rehearse and approve again to retry"
    )]
    Spent { approval: String, release: String },
    #[error(
        "the latest rehearsal of plan {plan} ({rehearsal}) has status `{status}`, not passed; rehearse until it passes, then approve it"
    )]
    RehearsalNotPassed { plan: String, rehearsal: String, status: String },
    #[error(
        "target `{target}` requires these migrations to be released on `{required}` first, and {missing} of them were not; release there first"
    )]
    NotPromoted { target: String, required: String, missing: String },
    #[error(
        "target `{target}` has no release windows; add one, e.g. windows = [{{ cron = \"0 0 2 * * Sun\", duration = \"2h\", timezone = \"Europe/Berlin\" }}]"
    )]
    NoWindow { target: String },
    #[error("outside the release window; the next one opens at {next} and closes at {closes}")]
    OutsideWindow { next: String, closes: String },
    #[error("no release window will open again (check the windows' cron expressions)")]
    NoNextWindow,
    #[error(
        "the release needs about {needed} (rehearsed apply {apply} + snapshot {snapshot}, × {factor}) but only {remaining} of the window remain (it closes at {closes}); wait for the next window or widen it"
    )]
    DoesNotFit { needed: String, apply: String, snapshot: String, factor: f64, remaining: String, closes: String },
    #[error("{0}")]
    Busy(String),
    #[error("a pg_dump is running on live ({0}); wait for it to finish")]
    DumpRunning(String),
    #[error(
        "a transaction older than max_transaction_age ({max}) is open on live ({sessions}); its locks would block the migrations: wait for it or end it"
    )]
    LongTransaction { max: String, sessions: String },
    #[error(
        "sessions on live hold locks on tables the plan changes, in transactions open longer than max_queue_wait ({budget}): {sessions}; the migrations would wait behind them and the application's queries would queue behind the migrations. End them or wait for them (an idle transaction, a dump, a long report), then release again"
    )]
    LocksHeld { budget: String, sessions: String },
    #[error(
        "not enough free space in {dir} to restore the pre-release snapshot if the release fails: about {need} bytes needed, {free} free; free space or set [store] staging_reserve"
    )]
    NoStagingSpace { dir: String, need: u64, free: u64 },
    #[error("{0}")]
    Client(String),
    #[error("{0}")]
    ShadowIsLive(String),
}

impl Refusal {
    /// A bounded label for the release record (its `error_kind`) and metrics.
    pub fn error_kind(&self) -> ReleaseErrorKind {
        use ReleaseErrorKind as K;
        match self {
            Refusal::Drift(_) => K::Drift,
            Refusal::NotApproved { .. } => K::NotApproved,
            Refusal::PlanChanged { .. } => K::PlanChanged,
            Refusal::Expired { .. } => K::ApprovalExpired,
            Refusal::Spent { .. } => K::ApprovalSpent,
            Refusal::RehearsalNotPassed { .. } => K::RehearsalNotPassed,
            Refusal::NotPromoted { .. } => K::NotPromoted,
            Refusal::NoWindow { .. } | Refusal::OutsideWindow { .. } | Refusal::NoNextWindow => K::OutsideWindow,
            Refusal::DoesNotFit { .. } => K::DoesNotFit,
            Refusal::Busy(_) => K::LockHeld,
            Refusal::DumpRunning(_) => K::DumpRunning,
            Refusal::LongTransaction { .. } => K::LongTransaction,
            Refusal::LocksHeld { .. } => K::LocksHeld,
            Refusal::NoStagingSpace { .. } => K::NoStagingSpace,
            Refusal::Client(_) => K::ClientTooOld,
            Refusal::ShadowIsLive(_) => K::ShadowIsLive,
        }
    }
}

/// Refusals are what preflight found, not errors of their own: a release
/// record keeps them with `outcome = refused`, and [`Refusal::error_kind`]
/// (which this delegates to) labels them.
impl Classify for Refusal {
    fn class(&self) -> Class {
        match self {
            Refusal::Drift(_)
            | Refusal::NotApproved { .. }
            | Refusal::PlanChanged { .. }
            | Refusal::Expired { .. }
            | Refusal::Spent { .. }
            | Refusal::RehearsalNotPassed { .. }
            | Refusal::NotPromoted { .. }
            | Refusal::NoWindow { .. }
            | Refusal::OutsideWindow { .. }
            | Refusal::NoNextWindow
            | Refusal::DoesNotFit { .. }
            | Refusal::Busy(_)
            | Refusal::DumpRunning(_)
            | Refusal::LongTransaction { .. }
            | Refusal::LocksHeld { .. }
            | Refusal::NoStagingSpace { .. }
            | Refusal::Client(_)
            | Refusal::ShadowIsLive(_) => Class::Refused,
        }
    }

    fn kind(&self) -> &'static str {
        self.error_kind().as_str()
    }
}

/// What a release may proceed with.
#[derive(Debug, Clone)]
pub struct Ready {
    pub approval: ApprovalRow,
    pub rehearsal: RehearsalRow,
    pub evidence: Evidence,
    pub opening: Opening,
    pub pg_dump: tools::Tool,
    /// Live's `server_version`, for the release record.
    pub server_version: String,
}

/// Errors that stop preflight from deciding at all.
#[derive(Debug, thiserror::Error)]
pub enum PreflightError {
    #[error(transparent)]
    State(#[from] StateError),
    #[error(transparent)]
    Pg(#[from] PgError),
    #[error(transparent)]
    Store(#[from] crate::store::StoreError),
}

impl Classify for PreflightError {
    fn class(&self) -> Class {
        match self {
            PreflightError::State(e) => e.class(),
            PreflightError::Pg(e) => e.class(),
            PreflightError::Store(e) => e.class(),
        }
    }

    fn kind(&self) -> &'static str {
        match self {
            PreflightError::State(e) => e.kind(),
            PreflightError::Pg(e) => e.kind(),
            PreflightError::Store(e) => e.kind(),
        }
    }
}

/// Runs every check; the first that fails refuses the release.
pub async fn check(
    config: &Config,
    target: &Target,
    state: &State,
    store: &dyn crate::store::Store,
    plan: &Plan,
    now: DateTime<Utc>,
) -> Result<Result<Ready, Refusal>, PreflightError> {
    if !plan.drift.is_empty() {
        let text = plan.drift.iter().map(|d| d.to_string()).collect::<Vec<_>>().join("; ");
        return Ok(Err(Refusal::Drift(text)));
    }
    let (approval, rehearsal) = match approved(state, target, plan, now).await? {
        Ok(v) => v,
        Err(r) => return Ok(Err(r)),
    };
    if let Some(r) = promotion(state, target, plan).await? {
        return Ok(Err(r));
    }
    let evidence = state.rehearsal_evidence(&rehearsal.id).await?;
    let manifests = crate::snapshot::catalog::manifests(store, &target.name).await?;
    let opening = match fits(target, &evidence, manifests.first(), now) {
        Ok(o) => o,
        Err(r) => return Ok(Err(r)),
    };
    // Through admin_url when set: pg_stat_activity hides other roles'
    // transactions from a role without pg_read_all_stats.
    let live = &target.admin().with_database(&target.live_url.database());
    let mut conn = pg::connect(live, "pgrehearse-preflight").await?;
    let server = pg::server_info(&mut conn, live).await?;
    let activity = live_activity(&mut conn, target).await;
    if let Some(r) = activity.map_err(|source| PgError::Query { url: live.redacted(), source })? {
        return Ok(Err(r));
    }
    let held = locks_held(&mut conn, target, &plan_tables(&evidence)).await;
    if let Some(r) = held.map_err(|source| PgError::Query { url: live.redacted(), source })? {
        return Ok(Err(r));
    }
    if target.on_failure == OnFailure::Restore {
        let staging = config.staging_dir();
        let _ = std::fs::create_dir_all(&staging);
        let raw = manifests.first().map_or(server.database_size, |m| m.bytes_raw.max(server.database_size / 2));
        let need = raw.saturating_add(config.store.staging_reserve);
        if let Ok(free) = crate::host::free_bytes(&staging)
            && free < need
        {
            return Ok(Err(Refusal::NoStagingSpace { dir: staging.display().to_string(), need, free }));
        }
    }
    let bindir = target.pg_bindir.as_deref().or(config.snapshot.pg_bindir.as_deref());
    let pg_dump = match tools::find("pg_dump", bindir, server.major()).await {
        Ok(t) => t,
        Err(e) => return Ok(Err(Refusal::Client(e.to_string()))),
    };
    if let Some(r) = shadow_is_live(target, &server).await {
        return Ok(Err(r));
    }
    Ok(Ok(Ready { approval, rehearsal, evidence, opening, pg_dump, server_version: server.version }))
}

/// The newest approval must name this plan, hold, be unspent, and rest on
/// a rehearsal of this plan that is still its latest and passed.
async fn approved(
    state: &State,
    target: &Target,
    plan: &Plan,
    now: DateTime<Utc>,
) -> Result<Result<(ApprovalRow, RehearsalRow), Refusal>, StateError> {
    let Some(a) = state.latest_approval(&target.name, None).await? else {
        return Ok(Err(Refusal::NotApproved { plan: plan.hash.clone() }));
    };
    match approval::usability(state, &a, Some(&plan.hash), now).await?.verdict() {
        Ok(()) => {}
        Err(approval::Unusable::PlanChanged) => {
            return Ok(Err(Refusal::PlanChanged { approval: a.id, approved: a.plan_hash, current: plan.hash.clone() }));
        }
        Err(approval::Unusable::Expired) => {
            return Ok(Err(Refusal::Expired { approval: a.id, plan: a.plan_hash, expired_at: a.expires_at }));
        }
        Err(approval::Unusable::Spent { release }) => return Ok(Err(Refusal::Spent { approval: a.id, release })),
    }
    let Some(r) = state.latest_rehearsal(&target.name, Some(&plan.hash)).await? else {
        return Ok(Err(Refusal::NotApproved { plan: plan.hash.clone() }));
    };
    if r.status != RehearsalStatus::Passed {
        return Ok(Err(Refusal::RehearsalNotPassed {
            plan: plan.hash.clone(),
            rehearsal: r.id,
            status: r.status.to_string(),
        }));
    }
    Ok(Ok((a, r)))
}

/// With `requires_release_on`, every pending migration (version and
/// checksum) must be in an applied release of that target.
pub async fn promotion(state: &State, target: &Target, plan: &Plan) -> Result<Option<Refusal>, StateError> {
    let Some(required) = &target.release.requires_release_on else { return Ok(None) };
    let released: Vec<(String, String)> = state
        .applied_release_contents(required)
        .await?
        .iter()
        .filter_map(|v| v.as_array().cloned())
        .flatten()
        .filter_map(|m| Some((m.get("version")?.as_str()?.to_string(), m.get("checksum")?.as_str()?.to_string())))
        .collect();
    let missing: Vec<&str> = plan
        .pending
        .iter()
        .filter(|m| !released.iter().any(|(v, c)| *v == m.version && *c == m.checksum))
        .map(|m| m.version.as_str())
        .collect();
    if missing.is_empty() {
        return Ok(None);
    }
    Ok(Some(Refusal::NotPromoted {
        target: target.name.clone(),
        required: required.clone(),
        missing: format!("{} ({})", missing.len(), missing.join(", ")),
    }))
}

/// The open window, if the rehearsed time fits in what remains of it.
#[allow(clippy::result_large_err)] // a refusal is built once per release
fn fits(
    target: &Target,
    evidence: &Evidence,
    latest: Option<&crate::snapshot::manifest::Manifest>,
    now: DateTime<Utc>,
) -> Result<Opening, Refusal> {
    let windows = &target.windows;
    if windows.is_empty() {
        return Err(Refusal::NoWindow { target: target.name.clone() });
    }
    let Some(opening) = window::open_now(windows, now) else {
        return Err(match window::next_opening(windows, now) {
            Some(n) => Refusal::OutsideWindow { next: n.start.to_rfc3339(), closes: n.end.to_rfc3339() },
            None => Refusal::NoNextWindow,
        });
    };
    let apply_ms = evidence.report.as_ref().and_then(|r| r["apply_ms"].as_u64()).unwrap_or(0);
    // Without a snapshot yet, assume 50 MB/s of database.
    let snapshot_ms = latest.map_or(0, |m| m.duration_ms.max(m.database_size / 50_000));
    let factor = target.release.window_safety_factor;
    let needed = Duration::from_millis(((apply_ms + snapshot_ms) as f64 * factor) as u64);
    let remaining = opening.remaining(now);
    if needed > remaining {
        let fmt = |d: Duration| humantime::format_duration(Duration::from_secs(d.as_secs().max(1))).to_string();
        return Err(Refusal::DoesNotFit {
            needed: fmt(needed),
            apply: fmt(Duration::from_millis(apply_ms)),
            snapshot: fmt(Duration::from_millis(snapshot_ms)),
            factor,
            remaining: fmt(remaining),
            closes: opening.end.to_rfc3339(),
        });
    }
    Ok(opening)
}

/// A pg_dump, or a transaction older than `max_transaction_age`, on live.
async fn live_activity(conn: &mut PgConnection, target: &Target) -> Result<Option<Refusal>, sqlx::Error> {
    let dumps: Vec<String> = sqlx::query_scalar(
        "SELECT format('pid %s since %s', pid, backend_start) FROM pg_stat_activity \
         WHERE datname = current_database() AND pid <> pg_backend_pid() AND application_name = 'pg_dump'",
    )
    .fetch_all(&mut *conn)
    .await?;
    if !dumps.is_empty() {
        return Ok(Some(Refusal::DumpRunning(dumps.join(", "))));
    }
    let max = target.release.max_transaction_age;
    let old: Vec<String> = sqlx::query_scalar(
        "SELECT format('pid %s, %s, %s, open for %s s', pid, coalesce(nullif(application_name, ''), 'no application_name'), \
                state, round(extract(epoch FROM now() - xact_start))) \
         FROM pg_stat_activity WHERE datname = current_database() AND pid <> pg_backend_pid() \
           AND backend_type = 'client backend' AND xact_start < now() - make_interval(secs => $1) \
         ORDER BY xact_start LIMIT 5",
    )
    .bind(max.as_secs_f64())
    .fetch_all(&mut *conn)
    .await?;
    let hidden: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() \
           AND backend_type = 'client backend' AND state IS NULL",
    )
    .fetch_one(&mut *conn)
    .await?;
    if hidden > 0 {
        tracing::warn!(
            sessions = hidden,
            "Cannot see the transactions of some sessions of other roles on live; grant pg_monitor to the role (or set admin_url) so that preflight can check them."
        );
    }
    if !old.is_empty() {
        return Ok(Some(Refusal::LongTransaction {
            max: humantime::format_duration(max).to_string(),
            sessions: old.join("; "),
        }));
    }
    Ok(None)
}

/// The relations the rehearsal saw the plan lock (`migrations[].locks[]`
/// of its report), as it names them (`orders`, `sales.orders`).
fn plan_tables(evidence: &Evidence) -> Vec<String> {
    let mut out: Vec<String> = evidence
        .report
        .iter()
        .flat_map(|r| r["migrations"].as_array().cloned().unwrap_or_default())
        .flat_map(|m| m["locks"].as_array().cloned().unwrap_or_default())
        .filter_map(|l| l["relation"].as_str().map(str::to_string))
        .collect();
    out.sort();
    out.dedup();
    out
}

/// Client sessions holding a lock on one of `tables` in a transaction
/// open longer than `max_queue_wait` (when a lock was taken is not
/// recorded; it is held since the transaction began at the latest).
async fn locks_held(
    conn: &mut PgConnection,
    target: &Target,
    tables: &[String],
) -> Result<Option<Refusal>, sqlx::Error> {
    let budget = target.release.max_queue_wait;
    if budget.is_zero() || tables.is_empty() {
        return Ok(None);
    }
    let sessions: Vec<String> = sqlx::query_scalar(
        "SELECT format('pid %s (role %s, %s, %s, open for %s s, holding %s on %s: %s)', a.pid, a.usename,                 coalesce(nullif(a.application_name, ''), 'no application_name'), a.state,                 round(extract(epoch FROM clock_timestamp() - a.xact_start)::numeric, 1),                 string_agg(DISTINCT l.mode, ', '), string_agg(DISTINCT r.name, ', '),                 left(split_part(ltrim(a.query, E' \n\r\t'), E'\n', 1), 200))            FROM pg_locks l            JOIN LATERAL (SELECT CASE WHEN n.nspname = 'public' THEN c.relname::text                                      ELSE n.nspname || '.' || c.relname END AS name                            FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace                           WHERE c.oid = l.relation) r ON true            JOIN pg_stat_activity a ON a.pid = l.pid           WHERE l.locktype = 'relation' AND l.granted             AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())             AND a.pid <> pg_backend_pid() AND a.backend_type = 'client backend'             AND a.xact_start < clock_timestamp() - make_interval(secs => $1)             AND r.name = ANY($2)           GROUP BY a.pid, a.usename, a.application_name, a.state, a.xact_start, a.query           ORDER BY a.xact_start LIMIT 5",
    )
    .bind(budget.as_secs_f64())
    .bind(tables)
    .fetch_all(&mut *conn)
    .await?;
    if sessions.is_empty() {
        return Ok(None);
    }
    Ok(Some(Refusal::LocksHeld {
        budget: humantime::format_duration(budget).to_string(),
        sessions: sessions.join("; "),
    }))
}

/// The shadow must not be live (when it is reachable: the release itself
/// does not need it, so an unreachable shadow only warns).
async fn shadow_is_live(target: &Target, live: &ServerInfo) -> Option<Refusal> {
    let url = target.shadow_url.as_ref()?;
    let mut conn = match pg::connect(url, "pgrehearse-preflight").await {
        Ok(c) => c,
        Err(e) => {
            tracing::warn!(error = %e, "Cannot reach the shadow server to check it is not live; continuing.");
            return None;
        }
    };
    let info = pg::server_info(&mut conn, url).await.ok()?;
    if info.system_identifier != live.system_identifier {
        return None;
    }
    if info.database == live.database {
        return Some(Refusal::ShadowIsLive(format!(
            "shadow_url of target `{}` names the live database itself; point it at a maintenance database of another server",
            target.name
        )));
    }
    (!target.shadow_on_live_server).then(|| {
        Refusal::ShadowIsLive(format!(
            "shadow_url of target `{}` reaches the live server (system identifier {}); use another server or set shadow_on_live_server = true",
            target.name, info.system_identifier
        ))
    })
}
