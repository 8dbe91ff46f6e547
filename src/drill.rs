//! Restore drills (`pgrehearse verify`): a backup that was never restored is
//! a hope, not a backup. Each drill re-reads the stored object and checks its
//! SHA-256 (that is what catches bit rot in the store), restores it into a
//! scratch database on the shadow server — or, when the target's template
//! already holds this snapshot, clones the template — and checks the result:
//! every table's exact row count against the manifest, every index valid.
//! The outcome and the measured restore time (the recovery time objective
//! one can actually promise) go into the state store and the manifest.

use std::path::Path;
use std::process::Stdio;
use std::time::Instant;

use bytes::Bytes;
use chrono::Utc;
use serde::Serialize;

use crate::config::{Config, Target};
use crate::pg::lock::HeavyLock;
use crate::pg::tools::{self, ToolError};
use crate::pg::{self, PgError};
use crate::shadow::Shadow;
use crate::shadow::load::{Staged, analyze, check, check_space, clean_staging, restore_into, staging_file};
use crate::snapshot::catalog::{self, CatalogError};
use crate::snapshot::manifest::Manifest;
use crate::state::{State, Verification};
use crate::store;

/// A drill fails the way loading a snapshot into a database fails (staging,
/// `pg_restore`, the shadow) or on the lock, the state or the store.
pub use crate::shadow::load::LoadError as DrillError;

/// What `pgrehearse verify --json` prints.
#[derive(Debug, Serialize)]
pub struct Report {
    pub snapshot_id: String,
    pub target: String,
    pub ok: bool,
    /// `restore` or `template_clone`; null when nothing was restored (the
    /// stored object failed its checksum).
    pub method: Option<&'static str>,
    pub restore_duration_ms: Option<u64>,
    pub tables_checked: usize,
    pub mismatches: Vec<String>,
    /// The scratch database (dropped unless `--keep`).
    pub database: Option<String>,
    pub kept: bool,
    pub verified_at: Option<String>,
}

/// Runs a restore drill of snapshot `id` (`latest` allowed) from `store`,
/// recording it in `state` and in the snapshot's manifest.
pub async fn verify(
    config: &Config,
    state: &State,
    store: &dyn store::Store,
    target: &Target,
    id: &str,
    full: bool,
    keep: bool,
) -> Result<Report, DrillError> {
    let m = catalog::resolve(store, &target.name, id).await?;
    // Refuse before anything is written if the shadow is live.
    let mut shadow = Shadow::open(target, state).await?;
    let staging = config.staging_dir();
    std::fs::create_dir_all(&staging).map_err(|source| DrillError::Staging { dir: staging.clone(), source })?;
    clean_staging(&staging, &target.name);
    check_space(&staging, &m, config.store.staging_reserve)?;
    let lock = HeavyLock::for_target(target.admin(), &target.name, "verify").await?;

    let run = crate::snapshot::new_id(Utc::now());
    state.verification_started(&run, &target.name, &m.id).await?;
    let span = tracing::info_span!("verify", run_id = %run, target = %target.name, job = "verify", snapshot = %m.id);
    let result = tracing::Instrument::instrument(
        drill(config, target, store, &m, &mut shadow, &staging, &run, full, keep),
        span,
    )
    .await;
    lock.release().await;
    let report = match result {
        Ok(r) => r,
        Err(e) => {
            state.verification_failed(&run, &e.to_string()).await?;
            return Err(e);
        }
    };
    state
        .verification_finished(
            &run,
            &Verification {
                ok: report.ok,
                method: report.method.map(str::to_string),
                restore_duration_ms: report.restore_duration_ms,
                tables_checked: report.tables_checked,
                mismatches: report.mismatches.clone(),
            },
        )
        .await?;
    record_in_manifest(store, &m, &report, &run).await?;
    Ok(report)
}

#[allow(clippy::too_many_arguments)]
async fn drill(
    config: &Config,
    target: &Target,
    store: &dyn store::Store,
    m: &Manifest,
    shadow: &mut Shadow,
    staging: &Path,
    run: &str,
    full: bool,
    keep: bool,
) -> Result<Report, DrillError> {
    // Always re-read the stored object: the SHA-256 check is the point. When
    // the template holds this very snapshot, hashing is all that is needed
    // (no decoding, no staging file): the clone comes from the template.
    let template = shadow.template_snapshot().await?;
    let template_holds_it = template.as_deref() == Some(m.id.as_str());
    let use_template = !full && template_holds_it;
    let file = staging_file(staging, target, m);
    let _staged = Staged(file.clone());
    let fetched = if use_template {
        catalog::check_stored(store, m).await
    } else {
        catalog::fetch(config, store, m, None, &file, false).await.map(|d| d.bytes)
    };
    let fetched = match fetched {
        Ok(bytes) => bytes,
        Err(e @ CatalogError::ChecksumMismatch { .. }) => {
            let _ = std::fs::remove_file(&file);
            // Reported as a finding (exit 2), not as "could not run".
            tracing::error!(error = %e, "Restore drill failed: the stored object is corrupt.");
            return Ok(Report {
                snapshot_id: m.id.clone(),
                target: target.name.clone(),
                ok: false,
                method: None,
                restore_duration_ms: None,
                tables_checked: 0,
                mismatches: vec![e.to_string()],
                database: None,
                kept: false,
                verified_at: None,
            });
        }
        Err(e) => return Err(e.into()),
    };
    tracing::info!(bytes = fetched, "Snapshot read back and its SHA-256 verified.");

    let db = shadow.scratch_name(run);
    let t0 = Instant::now();
    let restored = if use_template {
        shadow.clone_template(&db, &m.id).await.map_err(DrillError::from)
    } else {
        restore_into(config, target, shadow, &db, m, &file).await
    };
    let _ = std::fs::remove_file(&file);
    if let Err(e) = restored {
        let _ = shadow.drop_db(&db).await;
        return Err(e);
    }
    let restore_duration_ms = t0.elapsed().as_millis() as u64;
    let method = if use_template { "template_clone" } else { "restore" };
    tracing::info!(database = %db, method, restore_duration_ms, "Snapshot restored into a scratch database.");

    // ANALYZE and the checks read the same tables: run them side by side.
    // A template clone already carries the statistics of its template.
    let url = shadow.url_for(&db);
    let (analyzed, checked) =
        tokio::join!(async { if use_template { Ok(0) } else { analyze(&url).await } }, check(&url, m));
    let restore_duration_ms = match analyzed {
        Ok(ms) => restore_duration_ms + ms,
        Err(e) => {
            let _ = shadow.drop_db(&db).await;
            return Err(e.into());
        }
    };
    let checked = checked.map_err(DrillError::from);
    let checked = match checked {
        Ok((n, mut problems)) => {
            problems.extend(user_checks(&shadow.url_for(&db), target).await?);
            if target.amcheck {
                problems.extend(amcheck(config, target, m, &shadow.url_for(&db)).await?);
            }
            Ok((n, problems))
        }
        Err(e) => Err(e),
    };
    let (tables_checked, mismatches) = match checked {
        Ok(c) => c,
        Err(e) => {
            let _ = shadow.drop_db(&db).await;
            return Err(e);
        }
    };
    let ok = mismatches.is_empty();
    if ok && !template_holds_it && is_newest_template_candidate(template.as_deref(), store, target, m).await? {
        // A failed promotion leaves neither the drill's copy nor a half-made template.
        if let Err(e) = shadow.promote_to_template(&db, &m.id).await {
            let _ = shadow.drop_db(&db).await;
            return Err(e.into());
        }
    }
    if keep {
        // Kept for a person: no longer ours to drop as a leftover.
        shadow.release(&db).await?;
    } else {
        shadow.drop_db(&db).await?;
    }
    if ok {
        tracing::info!(tables_checked, restore_duration_ms, "Restore drill passed.");
    } else {
        tracing::error!(?mismatches, "Restore drill found problems.");
    }
    Ok(Report {
        snapshot_id: m.id.clone(),
        target: target.name.clone(),
        ok,
        method: Some(method),
        restore_duration_ms: Some(restore_duration_ms),
        tables_checked,
        mismatches,
        database: Some(db),
        kept: keep,
        verified_at: ok.then(|| Utc::now().to_rfc3339()),
    })
}

/// The target's own check queries: each must return `expect` as text.
async fn user_checks(url: &pg::ConnUrl, target: &Target) -> Result<Vec<String>, PgError> {
    if target.checks.is_empty() {
        return Ok(Vec::new());
    }
    let mut conn = pg::connect(url, "pgrehearse-verify").await?;
    let mut problems = Vec::new();
    for c in &target.checks {
        let sql = format!("SELECT x::text FROM ({}) AS q(x) LIMIT 1", c.sql.trim().trim_end_matches(';'));
        match sqlx::query_scalar::<_, Option<String>>(&sql).fetch_optional(&mut conn).await {
            Ok(Some(Some(v))) if v == c.expect => {}
            Ok(got) => problems.push(format!(
                "check `{}` returned {} instead of `{}`",
                c.name,
                got.flatten().map_or("no value".to_string(), |v| format!("`{v}`")),
                c.expect
            )),
            Err(e) => problems.push(format!("check `{}` failed to run: {e}", c.name)),
        }
    }
    Ok(problems)
}

/// `pg_amcheck` over the restored copy (installs the amcheck extension
/// there if missing; the copy is scratch).
async fn amcheck(config: &Config, target: &Target, m: &Manifest, url: &pg::ConnUrl) -> Result<Vec<String>, DrillError> {
    let bindir = target.pg_bindir.as_deref().or(config.snapshot.pg_bindir.as_deref());
    let tool = tools::find("pg_amcheck", bindir, m.server_version_num / 10000).await?;
    let mut cmd = tools::command_with_flag(&tool, url, "pgrehearse-amcheck", "--database");
    cmd.arg("--install-missing").stdout(Stdio::piped()).stderr(Stdio::piped());
    let out =
        cmd.output().await.map_err(|source| ToolError::Spawn { path: tool.path.display().to_string(), source })?;
    if out.status.success() {
        return Ok(Vec::new());
    }
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    let tail: Vec<&str> = text.lines().take(10).collect();
    Ok(vec![format!("pg_amcheck reported problems: {}", tail.join(" | "))])
}

/// The template holds the newest verified snapshot: replace it only with a
/// snapshot at least as new as the one it holds.
async fn is_newest_template_candidate(
    current: Option<&str>,
    store: &dyn store::Store,
    target: &Target,
    m: &Manifest,
) -> Result<bool, DrillError> {
    let Some(current) = current else { return Ok(true) };
    match catalog::resolve(store, &target.name, current).await {
        Ok(cur) => Ok(m.started_at >= cur.started_at),
        // The template's snapshot was pruned: anything verified replaces it.
        Err(_) => Ok(true),
    }
}

/// Rewrites the manifest with the drill's outcome (a PUT of the whole object
/// is atomic in S3 and a rename in the local store).
async fn record_in_manifest(
    store: &dyn store::Store,
    m: &Manifest,
    report: &Report,
    run: &str,
) -> Result<(), DrillError> {
    let mut m = m.clone();
    let previous = m.verification.as_ref().and_then(|v| v.get("verified_at").cloned());
    m.verification = Some(serde_json::json!({
        "verification_id": run,
        "checked_at": Utc::now().to_rfc3339(),
        "ok": report.ok,
        // A failed drill does not erase when the snapshot last passed one.
        "verified_at": report.verified_at.clone().map(serde_json::Value::String).or(previous).unwrap_or(serde_json::Value::Null),
        "method": report.method,
        "restore_duration_ms": report.restore_duration_ms,
        "tables_checked": report.tables_checked,
        "mismatches": report.mismatches,
    }));
    let key = store::snapshot_key(&m.target, &m.id, store::MANIFEST);
    store.put(&key, Bytes::from(serde_json::to_vec_pretty(&m).expect("manifest serializes"))).await?;
    Ok(())
}
