//! `pgrehearse rehearse`: the pending plan run on a restored copy of
//! production, measured migration by migration, then reverted and re-applied
//! to prove its downs, its seeds run twice, and its statements linted with
//! the measured effects. The live database is only read — its history table
//! to know the plan, and the catalog of its roles (`shadow::roles`) so that
//! the copy runs as live's role, and its `pg_stat_statements` (see
//! `queries::live`) — and never locked or written.
//!
//! Steps: plan from live → the queries that matter (see [`queries`]) → snapshot (the latest; verified on the way if it
//! never was; a fresh one when there is none or it cannot carry the plan,
//! see [`freshness`]) → scratch copy (template clone
//! when the template holds it) → bring the copy's history up to live's →
//! explain the queries → run the plan as live will (as live's role), measuring →
//! the queries again → reversibility → seeds → lint → report, kept in the state store and the object store.

mod error;
mod external;
mod freshness;

pub mod lint;
pub mod markdown;
pub mod observer;
pub mod probes;
pub mod queries;
mod report;
pub mod reversibility;
pub mod runner;
pub mod seeds;
mod verdict;

pub use error::RehearsalError;
pub use report::{Report, report_key};
use verdict::verdict;

use std::time::Instant;

use bytes::Bytes;
use chrono::Utc;
use tokio_util::sync::CancellationToken;

use crate::config::{Config, Target};
use crate::conn_url::ConnUrl;
use crate::migrations::executor::Mode;
use crate::migrations::{self, Migration, Plan, Source};
use crate::pg::PgError;
use crate::pg::lock::HeavyLock;
use crate::pg::tools;
use crate::shadow::Shadow;
use crate::snapshot;
use crate::snapshot::manifest::Manifest;
use crate::state::{RehearsalStatus, State};
use crate::store::Store;
use crate::stranded::exposure::Exposure;
use observer::Catalog;
use runner::Status;

/// Which snapshot to rehearse on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Choice {
    Latest,
    Fresh,
    Id(String),
}

impl Choice {
    pub fn parse(s: &str) -> Choice {
        match s {
            "latest" => Choice::Latest,
            "fresh" => Choice::Fresh,
            id => Choice::Id(id.to_string()),
        }
    }
}

#[derive(Debug, Clone)]
pub struct Options {
    pub snapshot: Choice,
    /// Keep the scratch database (its name is in the report).
    pub keep: bool,
    /// Run the reversibility check (downs, compare, ups again).
    pub reverse: bool,
}

/// Rehearses the target's pending plan on a snapshot from `store`, recording
/// it in `state` (its report also goes to `store`). Returns the report (whose
/// `ok` says whether problems were found); errors mean the rehearsal could
/// not run.
pub async fn rehearse(
    config: &Config,
    state: &State,
    store: &dyn Store,
    target: &Target,
    opts: &Options,
    cancel: &CancellationToken,
) -> Result<Report, RehearsalError> {
    state.reap_dead_rehearsals().await?;
    let source = Source::of(target)?;
    // Live is read three times: its history here, its statements' statistics
    // in `queries::gather`, its roles in `Shadow::open`.
    let plan = migrations::plan_for(state, &source, &target.live_url).await?;
    // A bad queries file stops the rehearsal before any copy is made.
    let trail = queries::gather(target)
        .await
        .map_err(|(path, message)| RehearsalError::QueriesFile { path: path.display().to_string(), message })?;
    let mut shadow = Shadow::open(target, state).await?;
    let shadow_url = target.shadow_url.clone().expect("Shadow::open checked the shadow URL");
    // The copy's sessions (and external tools, through `PGOPTIONS`) run as
    // live's role when the shadow mirrors it (see `shadow::roles`), as the
    // shadow role otherwise.
    let mut as_live = target.clone();
    as_live.migration_role = shadow.mirror().complete.then(|| shadow.mirror().live_role.clone());
    let target = &as_live;
    let source = Source::of(target)?;
    let lock = HeavyLock::try_acquire(&shadow_url, &format!("{}/rehearse", target.name), "rehearse").await?;
    let id = snapshot::new_id(Utc::now());
    state.rehearsal_started(&id, &target.name).await?;
    let span = tracing::info_span!("rehearse", run_id = %id, target = %target.name, job = "rehearse");
    let work = tracing::Instrument::instrument(
        run(config, state, store, target, &source, &plan, &mut shadow, &id, opts, trail, cancel),
        span,
    );
    // On SIGINT/SIGTERM the work is dropped (its sessions close, so the
    // server rolls back; external tools' process groups are killed) and its
    // scratch databases are dropped here.
    let result = tokio::select! {
        r = work => r,
        _ = cancel.cancelled() => Err(RehearsalError::Cancelled),
    };
    if matches!(result, Err(RehearsalError::Cancelled)) {
        let db = shadow.scratch_name(&id);
        for name in [judge_name(&db), reference_name(&db), db] {
            if let Err(e) = shadow.drop_db(&name).await {
                tracing::warn!(database = %name, error = %e, "Cannot drop a scratch database of the cancelled rehearsal; the next run drops it.");
            }
        }
    }
    lock.release().await;
    let report = match result {
        Ok(r) => r,
        Err(e) => {
            state.rehearsal_failed(&id, &e.to_string()).await?;
            return Err(e);
        }
    };
    let json = serde_json::to_string_pretty(&report).expect("report serializes");
    // The reports are stored before the rehearsal is recorded finished:
    // whoever sees it finished (the status page, a poller) finds them.
    let text = crate::rehearsal::markdown::markdown(&report);
    let stored = async {
        store.put(&report_key(&target.name, &id, "report.json"), Bytes::from(json.clone())).await?;
        store.put(&report_key(&target.name, &id, "report.md"), Bytes::from(text)).await
    };
    if let Err(e) = stored.await {
        state.rehearsal_failed(&id, &format!("storing the report failed: {e}")).await?;
        return Err(e.into());
    }
    let status = if report.ok { RehearsalStatus::Passed } else { RehearsalStatus::Problems };
    state.rehearsal_finished(&id, &report.plan, &report.snapshot_id, status, &json).await?;
    state.rehearsal_evidence_set(&id, report.schema_after.as_deref(), &report.not_valid).await?;
    Ok(report)
}

#[allow(clippy::too_many_arguments)]
async fn run(
    config: &Config,
    state: &State,
    store: &dyn Store,
    target: &Target,
    source: &Source<'_>,
    plan: &Plan,
    shadow: &mut Shadow,
    id: &str,
    opts: &Options,
    trail: queries::Trail,
    cancel: &CancellationToken,
) -> Result<Report, RehearsalError> {
    let started_at = Utc::now();
    let t0 = Instant::now();
    let (m, fresh) =
        freshness::pick_snapshot(config, state, target, source.kind(), plan, store, &opts.snapshot, cancel).await?;
    let db = shadow.scratch_name(id);
    let (method, restore_ms) = crate::shadow::load::scratch_copy(config, target, store, &m, shadow, &db).await?;
    tracing::info!(database = %db, method, restore_ms, snapshot = %m.id, "Scratch copy ready.");
    let strict = config.rehearsal.strict_column_order;
    let measured = measure(config, target, source, plan, &m, shadow, &db, opts, strict, trail).await;
    if opts.keep {
        shadow.release(&db).await?;
    } else {
        shadow.drop_db(&db).await?;
    }
    let mut report = measured?;
    report.id = id.to_string();
    report.snapshot_id = m.id.clone();
    report.snapshot_taken_at = m.started_at.to_rfc3339();
    report.method = method;
    report.restore_duration_ms = restore_ms;
    report.database = db;
    report.kept = opts.keep;
    report.started_at = started_at.to_rfc3339();
    report.finished_at = Utc::now().to_rfc3339();
    report.duration_ms = t0.elapsed().as_millis() as u64;
    if let Some(why) = fresh {
        report.notes.insert(0, format!("Rehearsed on fresh snapshot {} taken by this rehearsal: {why}.", m.id));
        report.fresh_snapshot = Some(why);
    }
    let mirror = shadow.mirror();
    report.live_role = mirror.live_role.clone();
    report.role = mirror.run_as().to_string();
    report.warnings.extend(mirror.warnings.iter().cloned());
    Ok(report)
}

/// Everything that happens on the scratch copy.
#[allow(clippy::too_many_arguments)]
async fn measure(
    config: &Config,
    target: &Target,
    source: &Source<'_>,
    plan: &Plan,
    m: &Manifest,
    shadow: &mut Shadow,
    db: &str,
    opts: &Options,
    strict_column_order: bool,
    trail: queries::Trail,
) -> Result<Report, RehearsalError> {
    let url = &shadow.url_for(db);
    let q = |source| PgError::Query { url: url.redacted(), source };
    let table = source.table();
    let mut conn = runner::session(url, target, "pgrehearse-rehearse").await?;
    let catch_up = freshness::catch_up(source, plan, &mut conn, m).await?;
    if !catch_up.is_empty() {
        tracing::info!(count = catch_up.len(), "Replaying migrations live applied after the snapshot.");
        let (results, ok) = runner::run_native(
            &mut conn,
            url,
            source.kind(),
            &table,
            &catch_up,
            &Catalog::default(),
            false,
            false,
            None,
        )
        .await?;
        if !ok {
            let failed = results.iter().find(|r| r.status == Status::Failed);
            return Err(RehearsalError::CatchUpFailed {
                version: failed.map(|r| r.version.clone()).unwrap_or_default(),
                message: failed.and_then(|r| r.error.as_ref()).map(|e| e.full_message()).unwrap_or_default(),
            });
        }
    }
    let pre = Catalog::capture(&mut conn).await.map_err(q)?;
    let bindir = target.pg_bindir.as_deref().or(config.snapshot.pg_bindir.as_deref());
    let pg_dump = tools::find("pg_dump", bindir, m.server_version_num / 10000).await?;
    let s0 = if opts.reverse && !plan.pending.is_empty() {
        Some(
            reversibility::schema(&pg_dump, url, &table)
                .await
                .map_err(|e| RehearsalError::CatchUpFailed { version: "-".into(), message: e })?,
        )
    } else {
        None
    };

    // A file copy of the copy as it is now, for the reversibility check to
    // judge each down at its level (taken with no session open on it).
    let wants_reference = s0.is_some() && source.is_native() && plan.pending.iter().any(|p| p.down.is_reversible());
    let reference = if wants_reference {
        use sqlx::Connection;
        let _ = conn.close().await;
        let name = reference_name(db);
        let made = shadow.clone_db(&name, db, &m.id).await;
        conn = runner::session(url, target, "pgrehearse-rehearse").await?;
        match made {
            Ok(()) => Some(name),
            Err(e) => {
                tracing::warn!(error = %e, "Cannot make a reference copy; reversibility will not be checked.");
                None
            }
        }
    } else {
        None
    };
    let result = plan_and_checks(
        target,
        source,
        plan,
        m,
        &mut conn,
        url,
        shadow,
        reference.as_deref(),
        &judge_name(db),
        pre,
        s0,
        &pg_dump,
        catch_up,
        strict_column_order,
        config.rehearsal.probes,
        trail,
    )
    .await;
    if let Some(name) = reference {
        shadow.drop_db(&name).await?;
    }
    result
}

/// The measured plan and everything after it.
#[allow(clippy::too_many_arguments)]
async fn plan_and_checks(
    target: &Target,
    source: &Source<'_>,
    plan: &Plan,
    m: &Manifest,
    conn: &mut sqlx::PgConnection,
    url: &ConnUrl,
    shadow: &mut Shadow,
    reference: Option<&str>,
    judge: &str,
    pre: Catalog,
    s0: Option<String>,
    pg_dump: &tools::Tool,
    catch_up: Vec<Migration>,
    strict_column_order: bool,
    probe: bool,
    mut trail: queries::Trail,
) -> Result<Report, RehearsalError> {
    let s0_missing = s0.is_none() && !plan.pending.is_empty();
    let table = source.table();
    if !trail.queries.is_empty() {
        trail.before_plan(conn, target.queries.runs, plan.pending.len()).await;
        tracing::info!(queries = trail.queries.len(), "Queries explained before the plan.");
    }
    tracing::info!(pending = plan.pending.len(), "Running the plan.");
    let t_apply = Instant::now();
    let explained_before = trail.spent;
    let mode = Mode::of(source.kind(), &plan.pending);
    let (mut results, ok) = match mode {
        Mode::SingleTransaction | Mode::PerMigration => {
            runner::run_native(conn, url, source.kind(), &table, &plan.pending, &pre, true, probe, Some(&mut trail))
                .await?
        }
        Mode::Payload => external::payload(source, url, &plan.pending, &pre).await?,
        Mode::Command => external::command(source, url, &plan.pending, &pre).await?,
    };
    runner::mark_sampled(&mut results, mode);
    let mode = mode.as_str().to_string();
    // The queries' plans explained after each migration are not the plan's time.
    let apply_ms = t_apply.elapsed().saturating_sub(trail.spent - explained_before).as_millis() as u64;
    let server_version = server_version(conn).await;
    let (query_results, query_notes) =
        trail.compare(conn, &target.queries, &pre, &plan_versions(&plan.pending), ok).await;
    // What the release's post-checks compare live with.
    let (schema_after, not_valid) = if ok {
        let schema = reversibility::portable_schema(pg_dump, url, &table).await;
        if let Err(e) = &schema {
            tracing::warn!(error = %e, "Cannot dump the schema after the plan; the release cannot compare live with it.");
        }
        let nv = crate::pg::not_valid_constraints(conn).await.unwrap_or_default();
        (schema.ok(), nv)
    } else {
        (None, Vec::new())
    };

    let mut notes = vec![format!(
        "Timings are from a cold copy restored from snapshot {} (taken {}); production's caches are warm, its load is not.",
        m.id,
        m.started_at.format("%Y-%m-%d %H:%M UTC")
    )];
    let exposure = Exposure::of(target, mode == Mode::SingleTransaction.as_str());
    match exposure {
        Exposure::Unfenced => notes.push(format!("Writes during the release: {}.", exposure.note().unwrap_or_default())),
        Exposure::Fenced => notes.push(
            "Writes during the release: live will be in a write fence (fence_writes = true) from before the pre-release snapshot until the outcome is settled; the application's writes fail meanwhile instead of being stranded by a restore.".into(),
        ),
        Exposure::OneTransaction | Exposure::NoRestore => {}
    }
    let mut reversible = None;
    let mut reverse_ms = None;
    if ok && let Some(s0) = s0 {
        let t_reverse = Instant::now();
        let copies = reference.map(|pristine| reversibility::Copies {
            shadow: &mut *shadow,
            pristine,
            judge,
            snapshot_id: &m.id,
        });
        reversibility::check(source, target, url, copies, pg_dump, &plan.pending, &mut results, &s0).await;
        reverse_ms = Some(t_reverse.elapsed().as_millis() as u64);
        reversible = Some(reversibility::plan_reverts(&results, strict_column_order));
        notes.extend(reversibility::notes(&results, strict_column_order));
    } else if s0_missing {
        notes.push("Reversibility was not checked (--no-reverse).".into());
    }
    let seeds = if ok && !target.seeds.is_empty() { seeds::run(conn, &target.seeds).await } else { Vec::new() };
    let lint = lint::lint(&plan.pending, &results, &pre, target.lock_timeout.as_millis(), &target.lint);
    let (mut problems, mut warnings) = verdict(plan, &results, &lint, &seeds, strict_column_order);
    queries::verdict(&query_results, &mut problems, &mut warnings);
    warnings.append(&mut trail.warnings);
    notes.extend(query_notes);
    let ok = problems.is_empty();
    Ok(Report {
        id: String::new(),
        target: target.name.clone(),
        plan: plan.hash.clone(),
        ok,
        verdict: if ok { "pass" } else { "problems" },
        problems,
        warnings,
        snapshot_id: String::new(),
        snapshot_taken_at: String::new(),
        method: "restore",
        restore_duration_ms: 0,
        database: String::new(),
        server_version,
        kept: false,
        started_at: String::new(),
        finished_at: String::new(),
        duration_ms: 0,
        apply_ms,
        reverse_ms,
        mode,
        role: String::new(),
        live_role: String::new(),
        lock_timeout_ms: target.lock_timeout.as_millis() as u64,
        catch_up: plan_versions(&catch_up),
        drift: plan.drift.clone(),
        migrations: results,
        reversible,
        reversibility_ignored: reversibility::IGNORED,
        lint,
        seeds,
        queries: query_results,
        queries_ms: (!trail.queries.is_empty()).then(|| trail.spent.as_millis() as u64),
        notes,
        approve: format!("pgrehearse approve --target {} --plan {}", target.name, plan.hash),
        fresh_snapshot: None,
        schema_after,
        not_valid,
    })
}

/// The server's `server_version`, for the report ("unknown" if the session
/// broke: the report still tells what happened).
async fn server_version(conn: &mut sqlx::PgConnection) -> String {
    let v = sqlx::query_scalar::<_, String>("SELECT current_setting('server_version')").fetch_one(&mut *conn).await;
    v.unwrap_or_else(|_| "unknown".into())
}

/// The reference copy of scratch database `db`: a file copy taken before
/// the plan ran (see `reversibility::check`).
fn reference_name(db: &str) -> String {
    format!("{}_ref", &db[..db.len().min(59)])
}

/// The judge copy of scratch database `db`, cloned from its reference copy
/// (see `reversibility::walk`).
fn judge_name(db: &str) -> String {
    format!("{}_rev", &db[..db.len().min(59)])
}

fn plan_versions(list: &[Migration]) -> Vec<String> {
    list.iter().map(|m| m.version.clone()).collect()
}
