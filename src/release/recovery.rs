//! Recovery: what happens when a release fails or was interrupted.
//!
//! After a failed migration, the target's `on_failure` decides: `restore`
//! the pinned pre-release snapshot into `<db>_restoring_<release>`, check it
//! against its manifest, carry over owner, settings and grants, then swap
//! names so that live holds the restored data and the failed database is
//! kept as `<db>_failed_<release>` (never dropped); `down` runs the downs of
//! what this release applied, newest first; `halt` stops and leaves live as
//! it is for a person. Every step is journaled first and each is safe to
//! repeat, so recovery itself survives a crash. When live's server itself
//! goes away during recovery (it crashed or restarted mid-release), the
//! release is not halted but left `interrupted`: the next command on the
//! target carries the recovery on once the server is back.
//!
//! After a crash, the journal and live's history decide: interrupted before
//! any migration ran → `aborted` (live untouched); all of the plan in the
//! history → `applied` (the crash came after the commit); a single
//! transaction without its rows → `rolled_back` (the server rolled it back
//! when the session died); anything in between → the configured recovery.

use std::time::Duration;

use bytes::Bytes;

use super::journal::{Journal, Step};
use super::stranding;
use super::{Ctx, Outcome, Release, ReleaseError, on_failure_name, release_doc};
use crate::config::MigrationKind;
use crate::migrations::executor::{self, Direction, Executor, Retry};
use crate::migrations::{Down, Migration};
use crate::pg::{self, PgError};
use crate::restore;
use crate::state::{JournalEntry, ReleaseErrorKind, ReleaseRow};
use crate::store::{self, Store, StoreError};

/// Sets (or clears) the snapshot's `pinned_by`: retention never deletes a
/// pinned snapshot.
pub async fn pin(store: &dyn Store, target: &str, id: &str, by: Option<&str>) -> Result<(), StoreError> {
    let key = store::snapshot_key(target, id, store::MANIFEST);
    let body = store.get(&key).await?;
    let Ok(mut m) = serde_json::from_slice::<crate::snapshot::manifest::Manifest>(&body) else { return Ok(()) };
    m.pinned_by = by.map(str::to_string);
    store.put(&key, Bytes::from(serde_json::to_vec_pretty(&m).expect("manifest serializes"))).await
}

/// After a successful release, earlier releases' snapshots are no longer
/// anyone's recovery point: their pins go (retention decides again).
pub async fn unpin_older(cx: &Ctx<'_>, keep: &str) {
    let Ok(list) = crate::snapshot::catalog::manifests(cx.store, &cx.target.name).await else { return };
    for m in list {
        if let Some(by) = &m.pinned_by
            && by != keep
            && by.starts_with("r-")
            && let Err(e) = pin(cx.store, &cx.target.name, &m.id, None).await
        {
            tracing::warn!(snapshot = %m.id, error = %e, "Cannot unpin an earlier release's snapshot.");
        }
    }
}

/// Recovers live after a failed (or interrupted) apply, per `on_failure`;
/// sets the row's outcome, recovery and, for restores, the kept database.
pub async fn recover(
    cx: &Ctx<'_>,
    journal: &Journal,
    row: &mut ReleaseRow,
    plan: &[Migration],
) -> Result<(), ReleaseError> {
    let how = previous_recovery(&cx.state.journal(&row.id).await?).unwrap_or(on_failure_name(cx.target.on_failure));
    row.recovery = Some(how.to_string());
    journal.step(Step::Recovery, Some(how)).await?;
    cx.state.release_update(row).await?;
    let failed = row.reason.clone().unwrap_or_default();
    match how {
        "restore" => match restore_live(cx, journal, row, plan).await {
            Ok((kept, found)) => {
                tracing::warn!(kept_as = %kept, snapshot = ?row.pre_snapshot_id, "Live restored to its pre-release state; the failed database is kept.");
                row.stranded_writes = stranding::after_swap(found, &row.stranded_writes, &kept);
                row.failed_database = Some(kept);
                row.outcome = Outcome::Restored;
            }
            Err(e) => {
                // Live was not restored: nothing was stranded by a restore.
                row.stranded_writes = serde_json::Value::Null;
                if !live_reachable(cx).await {
                    suspend(row, &failed, "restoring the pre-release snapshot", &e)
                } else {
                    halt(row, format!("{failed}; then restoring the pre-release snapshot failed: {e}"))
                }
            }
        },
        "down" => match down(cx, journal, plan).await {
            Ok(reverted) => {
                tracing::warn!(reverted = ?reverted, "The release's migrations were reverted with their downs.");
                mark_reverted(row, &reverted);
                row.outcome = Outcome::RolledBack;
            }
            Err(e) if !live_reachable(cx).await => suspend(row, &failed, "reverting with the downs", &e),
            Err(e) => halt(row, format!("{failed}; then reverting with the downs failed: {e}")),
        },
        _ => halt(row, format!("{failed}; on_failure = \"halt\": live was left as the failure left it")),
    }
    Ok(())
}

/// Whether live's server accepts a connection now (through `admin_url`).
async fn live_reachable(cx: &Ctx<'_>) -> bool {
    let url = cx.target.admin().with_database("postgres");
    pg::connect(&url, "pgrehearse-recovery").await.is_ok()
}

/// Recovery could not run because live's server went away (a crash, a
/// restart): halting would leave live half-released for a person, yet
/// every recovery step can be repeated, so the release stays unfinished
/// and the next pgrehearse command on the target carries the recovery on.
fn suspend(row: &mut ReleaseRow, failed: &str, what: &str, e: &str) {
    tracing::error!(error = %e, "Live's server became unreachable during recovery; the next pgrehearse command on this target will finish the recovery once it is back.");
    row.reason = Some(format!(
        "{failed}; then {what} failed because live's server became unreachable ({e}). Live may hold part of the plan: once the server is back, any pgrehearse command on this target (e.g. `pgrehearse status`) finishes the recovery"
    ));
    row.error_kind = Some(ReleaseErrorKind::LiveUnreachable);
    row.outcome = Outcome::Interrupted;
}

fn halt(row: &mut ReleaseRow, reason: String) {
    let snap = row.pre_snapshot_id.clone().unwrap_or_else(|| "ID".into());
    tracing::error!(reason = %reason, "Release halted: a person must act.");
    row.reason = Some(format!(
        "{reason}. Live may hold part of the plan; to go back to the pre-release state run `pgrehearse restore {snap} --replace-live --yes`"
    ));
    row.outcome = Outcome::Halted;
}

fn mark_reverted(row: &mut ReleaseRow, reverted: &[String]) {
    if let Some(list) = row.migrations.as_array_mut() {
        for m in list {
            if m["version"].as_str().is_some_and(|v| reverted.iter().any(|r| r == v)) {
                m["status"] = "reverted".into();
            }
        }
    }
}

fn previous_recovery(journal: &[JournalEntry]) -> Option<&'static str> {
    let d = journal.iter().rev().find(|e| e.step == Step::Recovery)?.detail.as_deref()?;
    ["restore", "down", "halt"].into_iter().find(|h| *h == d)
}

/// Restores the pinned snapshot next to live and swaps it in (resuming
/// where an interrupted run of this stopped), finding the stranded writes
/// while live is offline. Returns the kept database and, when this run
/// compared, what it found.
async fn restore_live(
    cx: &Ctx<'_>,
    journal: &Journal,
    row: &ReleaseRow,
    plan: &[Migration],
) -> Result<(String, Option<serde_json::Value>), String> {
    let snap = row.pre_snapshot_id.clone().ok_or("the release has no pre-release snapshot to restore")?;
    let live = cx.target.live_url.database();
    let tag = row.id.to_ascii_lowercase().replace('-', "_");
    let new = restore::truncate(&format!("{live}_restoring_{tag}"));
    let kept = restore::truncate(&format!("{live}_failed_{tag}"));
    let admin_url = cx.target.admin().with_database("postgres");
    let mut admin = pg::connect(&admin_url, "pgrehearse-recovery").await.map_err(|e| e.to_string())?;
    let steps = cx.state.journal(&row.id).await.map_err(|e| e.to_string())?;
    settle(&mut admin, &[&new, &kept]).await.map_err(|e| e.to_string())?;
    if !steps.iter().any(|e| e.step == Step::Swap) {
        if restore::database_exists(&mut admin, &admin_url, &new).await.map_err(|e| e.to_string())? {
            tracing::warn!(database = %new, "Dropping the partial restore of an interrupted recovery.");
            let sql = format!("DROP DATABASE {} WITH (FORCE)", pg::quote_ident(&new));
            restore::exec(&mut admin, &admin_url, &sql).await.map_err(|e| e.to_string())?;
        }
        journal.step(Step::Restore, Some(&new)).await.map_err(|e| e.to_string())?;
        tracing::info!(snapshot = %snap, database = %new, "Restoring the pre-release snapshot.");
        restore::restore_as(cx.config, cx.store, cx.target, &snap, &new).await.map_err(|e| e.to_string())?;
        journal.step(Step::RestoreDone, Some(&new)).await.map_err(|e| e.to_string())?;
        // A fenced live's fence stays behind: the restored database takes
        // writes once it is live (the fence is lifted on both afterwards).
        let keep_out: &[&str] = if super::fence::is_up(&steps) { &[super::fence::SETTING] } else { &[] };
        restore::carry_over(&mut admin, &admin_url, &live, &new, keep_out).await.map_err(|e| e.to_string())?;
    }
    journal.step(Step::Swap, Some(&kept)).await.map_err(|e| e.to_string())?;
    let renamed = async |old: &str| {
        if let Err(e) = journal.step(Step::SwapRenamed, Some(old)).await {
            tracing::warn!(error = %e, "Cannot journal the swap's first rename; finishing the swap.");
        }
    };
    let found = std::sync::Mutex::new(None);
    let offline = async |old: &str, restored: &str| {
        let v = stranding::find(cx, journal, row, plan, old, restored).await;
        *found.lock().expect("not poisoned") = Some(v);
    };
    restore::swap(&mut admin, &admin_url, &live, &new, &kept, renamed, offline).await.map_err(|e| e.to_string())?;
    journal.step(Step::SwapDone, Some(&kept)).await.map_err(|e| e.to_string())?;
    Ok((kept, found.into_inner().expect("not poisoned")))
}

/// Ends the sessions a killed earlier run of this recovery left on the
/// databases it restores or keeps, or still running statements that name
/// them (its `CREATE DATABASE`, `DROP DATABASE` or rename, which the server
/// finishes after the client died), and waits until they are gone:
/// otherwise this run could find the restored database missing and then
/// see it appear, or race the dead run's pg_restore. The names carry the
/// release id, so nothing else is touched.
async fn settle(admin: &mut sqlx::PgConnection, names: &[&str]) -> Result<(), sqlx::Error> {
    let names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
    for _ in 0..100 {
        let n: i64 = sqlx::query_scalar(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity WHERE pid <> pg_backend_pid() \
             AND (datname = ANY($1) OR EXISTS (SELECT 1 FROM unnest($1::text[]) n WHERE strpos(query, n) > 0))",
        )
        .bind(&names)
        .fetch_one(&mut *admin)
        .await?;
        if n == 0 {
            return Ok(());
        }
        tracing::warn!(sessions = n, "Ended sessions an interrupted recovery left; waiting for them to exit.");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Ok(())
}

/// Runs the downs of the plan's migrations that live's history holds,
/// newest first. Returns the reverted versions.
async fn down(cx: &Ctx<'_>, journal: &Journal, plan: &[Migration]) -> Result<Vec<String>, String> {
    let url = &cx.target.live_url;
    match cx.source.kind() {
        MigrationKind::Sqlx | MigrationKind::Diesel => {
            let mut conn =
                executor::session(url, cx.target, "pgrehearse-release-down").await.map_err(|e| e.to_string())?;
            let table = cx.source.table();
            let executor = Executor { kind: cx.source.kind(), table: &table, retry: Retry::NONE, place: "live" };
            let history = cx.source.history(&mut conn).await.map_err(|e| e.to_string())?;
            let applied: Vec<&Migration> =
                plan.iter().filter(|m| history.iter().any(|a| a.ok && a.version == m.version)).collect();
            let mut reverted = Vec::new();
            for m in applied.into_iter().rev() {
                if !matches!(m.down, Down::Sql { .. }) {
                    return Err(format!("migration {} has no down script", m.version));
                }
                journal.step(Step::Down, Some(&m.version)).await.map_err(|e| e.to_string())?;
                executor
                    .script(&mut conn, m, Direction::Down)
                    .await
                    .map_err(|e| format!("the down of migration {} failed: {e}", m.version))?;
                reverted.push(m.version.clone());
            }
            Ok(reverted)
        }
        MigrationKind::Payload => {
            let mut conn = pg::connect(url, "pgrehearse-release-down").await.map_err(|e| e.to_string())?;
            let history = cx.source.history(&mut conn).await.map_err(|e| e.to_string())?;
            drop(conn);
            let names: Vec<String> = plan
                .iter()
                .filter(|m| history.iter().any(|a| a.ok && a.name == m.name))
                .map(|m| m.name.clone())
                .collect();
            if names.is_empty() {
                return Ok(Vec::new());
            }
            journal.step(Step::Down, Some(&names.join(","))).await.map_err(|e| e.to_string())?;
            executor::external::project(&cx.source)
                .migrate_down(url, "pgrehearse-release-down", &names)
                .await
                .map_err(|e| e.to_string())?;
            Ok(names)
        }
        MigrationKind::Command => {
            let down = cx.source.config.down.clone().ok_or("no `down` command is configured")?;
            journal.step(Step::Down, Some("down")).await.map_err(|e| e.to_string())?;
            executor::external::command_step(&cx.source, &down, url, "pgrehearse-release-down").await?;
            Ok(plan.iter().map(|m| m.version.clone()).collect())
        }
    }
}

/// Finishes the target's interrupted releases (the caller holds the
/// target's lock, so any release still `running` lost its process).
/// Returns the last one finished.
pub async fn finish_interrupted(cx: &Ctx<'_>) -> Result<Option<Release>, ReleaseError> {
    let mut last = None;
    for mut row in cx.state.unfinished_releases(&cx.target.name).await? {
        tracing::warn!(release = %row.id, pid = row.pid, host = %row.host, "Found a release whose process died; finishing it.");
        cx.state.release_adopt(&row.id).await?;
        row.pid = std::process::id();
        row.host = crate::host::hostname();
        let journal = Journal::new(&cx.state, &row.id);
        let steps = cx.state.journal(&row.id).await?;
        let at = steps.last().map(|e| match &e.detail {
            Some(d) => format!("{} ({d})", e.step),
            None => e.step.to_string(),
        });
        journal.step(Step::Interrupted, at.as_deref()).await?;
        let interrupted = format!("interrupted at step {}", at.as_deref().unwrap_or("start"));
        decide(cx, &journal, &mut row, &steps, &interrupted).await?;
        super::close(cx, &journal, &mut row).await?;
        if row.outcome == Outcome::Interrupted {
            tracing::error!(release = %row.id, "Interrupted release still unfinished: live's server is unreachable.");
        } else {
            tracing::warn!(release = %row.id, outcome = %row.outcome, "Interrupted release finished.");
        }
        last = Some(release_doc(&cx.state, row, true).await?);
    }
    Ok(last)
}

async fn decide(
    cx: &Ctx<'_>,
    journal: &Journal,
    row: &mut ReleaseRow,
    steps: &[JournalEntry],
    interrupted: &str,
) -> Result<(), ReleaseError> {
    let has = |s: Step| steps.iter().any(|e| e.step == s);
    let plan = plan_of(cx, row).await?;
    if has(Step::Recovery) {
        // The recovery itself was interrupted: carry it on.
        if row.reason.is_none() {
            row.reason = Some(interrupted.to_string());
        }
        return recover(cx, journal, row, &plan).await;
    }
    if !has(Step::Apply) {
        row.outcome = Outcome::Aborted;
        row.reason = Some(format!("{interrupted}, before any migration ran; live was not touched"));
        row.error_kind = Some(ReleaseErrorKind::Interrupted);
        if let Some(snap) = &row.pre_snapshot_id.clone().or_else(|| detail_of(steps, Step::SnapshotDone)) {
            let _ = pin(cx.store, &cx.target.name, snap, None).await;
        }
        return Ok(());
    }
    row.pre_snapshot_id = row.pre_snapshot_id.clone().or_else(|| detail_of(steps, Step::SnapshotDone));
    end_orphans(cx).await;
    let applied = applied_on_live(cx, &plan).await.map_err(|e| ReleaseError::Preflight(e.into()))?;
    row.error_kind = Some(ReleaseErrorKind::Interrupted);
    if applied.len() == plan.len() && !has(Step::Failed) {
        row.outcome = Outcome::Applied;
        row.reason = Some(format!("{interrupted}; live's history holds the whole plan: it had committed"));
        set_statuses(row, &plan, &applied, "applied");
        super::recovery::unpin_older(cx, &row.id).await;
        return Ok(());
    }
    let single = detail_of(steps, Step::Apply).as_deref() == Some(executor::Mode::SingleTransaction.as_str());
    let current = detail_of(steps, Step::Migration);
    let current_transactional =
        plan.iter().find(|m| Some(&m.version) == current.as_ref()).is_none_or(|m| m.transactional);
    if applied.is_empty() && (single || current_transactional) && cx.source.kind() != MigrationKind::Command {
        row.outcome = Outcome::RolledBack;
        row.reason = Some(format!(
            "{interrupted}; no migration of the plan committed (the server rolled back the open transaction): live is as before the release"
        ));
        set_statuses(row, &plan, &applied, "rolled_back");
        return Ok(());
    }
    row.reason = Some(format!("{interrupted} with {} of {} migrations committed on live", applied.len(), plan.len()));
    set_statuses(row, &plan, &applied, "not_run");
    recover(cx, journal, row, &plan).await
}

fn detail_of(steps: &[JournalEntry], s: Step) -> Option<String> {
    steps.iter().rev().find(|e| e.step == s).and_then(|e| e.detail.clone())
}

fn set_statuses(row: &mut ReleaseRow, plan: &[Migration], applied: &[String], otherwise: &str) {
    row.migrations = serde_json::Value::Array(
        plan.iter()
            .map(|m| {
                let status = if applied.contains(&m.version) { "applied" } else { otherwise };
                serde_json::json!({ "version": m.version, "name": m.name, "transactional": m.transactional, "status": status })
            })
            .collect(),
    );
}

/// The release's migrations, read from the project's files by the versions
/// the release recorded.
async fn plan_of(cx: &Ctx<'_>, row: &ReleaseRow) -> Result<Vec<Migration>, ReleaseError> {
    let files = cx.source.files().await.map_err(crate::migrations::PlanError::from)?;
    let versions: Vec<String> = row
        .pending
        .as_array()
        .map(|a| a.iter().filter_map(|m| m["version"].as_str().map(str::to_string)).collect())
        .unwrap_or_default();
    Ok(versions
        .iter()
        .map(|v| {
            files.iter().find(|f| &f.version == v).cloned().unwrap_or_else(|| Migration {
                version: v.clone(),
                name: v.clone(),
                path: Default::default(),
                up_sql: String::new(),
                checksum: String::new(),
                transactional: false,
                down: Down::Missing,
            })
        })
        .collect())
}

/// Versions (or Payload names) of the plan that live's history holds. For
/// a `command` source, those its `pending` command no longer lists.
async fn applied_on_live(cx: &Ctx<'_>, plan: &[Migration]) -> Result<Vec<String>, PgError> {
    let url = &cx.target.live_url;
    if cx.source.kind() == MigrationKind::Command {
        if cx.source.config.pending.is_none() {
            return Ok(Vec::new());
        }
        let pending = crate::migrations::command::pending(cx.source.config, url)
            .await
            .map_err(|e| PgError::Query { url: url.redacted(), source: sqlx::Error::Protocol(e.to_string()) })?;
        return Ok(plan
            .iter()
            .filter(|m| !pending.iter().any(|p| p.version == m.version))
            .map(|m| m.version.clone())
            .collect());
    }
    let mut conn = pg::connect(url, "pgrehearse-recovery").await?;
    let history = cx
        .source
        .history(&mut conn)
        .await
        .map_err(|e| PgError::Query { url: url.redacted(), source: sqlx::Error::Protocol(e.to_string()) })?;
    Ok(plan
        .iter()
        .filter(|m| history.iter().any(|a| a.ok && a.version == m.version))
        .map(|m| m.version.clone())
        .collect())
}

/// Ends live sessions a dead release left (its own or its tools'), so that
/// nothing keeps applying while recovery decides.
async fn end_orphans(cx: &Ctx<'_>) {
    let url = cx.target.admin().with_database("postgres");
    let Ok(mut conn) = pg::connect(&url, "pgrehearse-recovery").await else { return };
    for _ in 0..50 {
        let n: i64 = sqlx::query_scalar(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity \
             WHERE application_name LIKE 'pgrehearse-release%' AND pid <> pg_backend_pid()",
        )
        .fetch_one(&mut conn)
        .await
        .unwrap_or(0);
        if n == 0 {
            return;
        }
        tracing::warn!(sessions = n, "Ended live sessions left by the interrupted release.");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
