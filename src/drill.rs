//! Restore drills (`pgrehearse verify`): a backup that was never restored is
//! a hope, not a backup. Each drill re-reads the stored object and checks its
//! SHA-256 (that is what catches bit rot in the store), restores it into a
//! scratch database on the shadow server — or, when the target's template
//! already holds this snapshot, clones the template — and checks the result:
//! every table's exact row count against the manifest, every index valid.
//! The outcome and the measured restore time (the recovery time objective
//! one can actually promise) go into the state store and the manifest.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Instant;

use bytes::Bytes;
use chrono::Utc;
use serde::Serialize;
use sqlx::{Executor, Row};

use crate::config::{Config, Target};
use crate::error_class::{Class, Classify};
use crate::pg::lock::{HeavyLock, LockError};
use crate::pg::tools::{self, ToolError};
use crate::pg::{self, PgError, quote_ident};
use crate::shadow::{Shadow, ShadowError};
use crate::snapshot::catalog::{self, CatalogError};
use crate::snapshot::manifest::Manifest;
use crate::snapshot::{SnapshotError, open_stores};
use crate::state::{StateError, Verification};
use crate::store::{self, StoreError};

#[derive(Debug, thiserror::Error)]
pub enum DrillError {
    #[error(
        "not enough free space in {dir} to stage snapshot {id}: {need} bytes needed (dump {raw} + reserve {reserve}), {free} free; free some space or set [store] staging_reserve"
    )]
    NoSpace { dir: PathBuf, id: String, need: u64, raw: u64, reserve: u64, free: u64 },
    #[error("pg_restore failed ({status}) restoring snapshot {id}; its last output:\n{stderr_tail}")]
    RestoreFailed { id: String, status: String, stderr_tail: String },
    #[error(
        "cannot use the staging directory {dir}: {source}; it is <state_dir>/staging: check that pgrehearse may write there and that the disk has room"
    )]
    Staging { dir: PathBuf, source: std::io::Error },
    #[error(transparent)]
    Catalog(#[from] CatalogError),
    #[error(transparent)]
    Shadow(#[from] ShadowError),
    #[error(transparent)]
    Pg(#[from] PgError),
    #[error(transparent)]
    Tool(#[from] ToolError),
    #[error(transparent)]
    Lock(#[from] LockError),
    #[error(transparent)]
    State(#[from] StateError),
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl Classify for DrillError {
    fn class(&self) -> Class {
        match self {
            DrillError::NoSpace { .. } => Class::Refused,
            DrillError::RestoreFailed { .. } | DrillError::Staging { .. } => Class::Failed,
            DrillError::Catalog(e) => e.class(),
            DrillError::Shadow(e) => e.class(),
            DrillError::Pg(e) => e.class(),
            DrillError::Tool(e) => e.class(),
            DrillError::Lock(e) => e.class(),
            DrillError::State(e) => e.class(),
            DrillError::Store(e) => e.class(),
        }
    }

    fn kind(&self) -> &'static str {
        match self {
            DrillError::NoSpace { .. } => "no_staging_space",
            DrillError::RestoreFailed { .. } => "restore_failed",
            DrillError::Staging { .. } => "staging_unusable",
            DrillError::Catalog(e) => e.kind(),
            DrillError::Shadow(e) => e.kind(),
            DrillError::Pg(e) => e.kind(),
            DrillError::Tool(e) => e.kind(),
            DrillError::Lock(e) => e.kind(),
            DrillError::State(e) => e.kind(),
            DrillError::Store(e) => e.kind(),
        }
    }
}

impl From<SnapshotError> for DrillError {
    fn from(e: SnapshotError) -> Self {
        DrillError::Catalog(CatalogError::Snapshot(e))
    }
}

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

/// Runs a restore drill of snapshot `id` (`latest` allowed).
pub async fn verify(config: &Config, target: &Target, id: &str, full: bool, keep: bool) -> Result<Report, DrillError> {
    let (state, store) = open_stores(config).await?;
    let m = catalog::resolve(store.as_ref(), &target.name, id).await?;
    // Refuse before anything is written if the shadow is live.
    let mut shadow = Shadow::open(target, &state).await?;
    let staging = config.staging_dir();
    std::fs::create_dir_all(&staging).map_err(|source| DrillError::Staging { dir: staging.clone(), source })?;
    clean_staging(&staging, &target.name);
    check_space(&staging, &m, config.store.staging_reserve)?;
    let lock = HeavyLock::for_target(target, "verify").await?;

    let run = crate::snapshot::new_id(Utc::now());
    state.verification_started(&run, &target.name, &m.id).await?;
    let span = tracing::info_span!("verify", run_id = %run, target = %target.name, job = "verify", snapshot = %m.id);
    let result = tracing::Instrument::instrument(
        drill(config, target, store.as_ref(), &m, &mut shadow, &staging, &run, full, keep),
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
    record_in_manifest(store.as_ref(), &m, &report, &run).await?;
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
        restore(config, target, shadow, &db, m, &file).await
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
        shadow.promote_to_template(&db, &m.id).await?;
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

/// Materialises snapshot `m` as the new scratch database `db` for a
/// rehearsal: a file copy of the template when it holds this snapshot,
/// otherwise a download (SHA-256 checked), `pg_restore` and `ANALYZE`.
/// Returns the method and how long it took. The caller owns `db` (dropped
/// when the run dies, like any scratch database).
pub async fn scratch_copy(
    config: &Config,
    target: &Target,
    store: &dyn store::Store,
    m: &Manifest,
    shadow: &mut Shadow,
    db: &str,
) -> Result<(&'static str, u64), DrillError> {
    let t0 = Instant::now();
    if shadow.template_snapshot().await?.as_deref() == Some(m.id.as_str()) {
        shadow.clone_template(db, &m.id).await?;
        return Ok(("template_clone", t0.elapsed().as_millis() as u64));
    }
    let staging = config.staging_dir();
    std::fs::create_dir_all(&staging).map_err(|source| DrillError::Staging { dir: staging.clone(), source })?;
    clean_staging(&staging, &target.name);
    check_space(&staging, m, config.store.staging_reserve)?;
    let file = staging_file(&staging, target, m);
    let fetched = catalog::fetch(config, store, m, None, &file, false).await;
    let restored = match fetched {
        Ok(_) => restore(config, target, shadow, db, m, &file).await,
        Err(e) => Err(e.into()),
    };
    let _ = std::fs::remove_file(&file);
    let analyzed = match restored {
        Ok(()) => analyze(&shadow.url_for(db)).await.map_err(DrillError::from),
        Err(e) => Err(e),
    };
    if let Err(e) = analyzed {
        let _ = shadow.drop_db(db).await;
        return Err(e);
    }
    Ok(("restore", t0.elapsed().as_millis() as u64))
}

/// `pg_restore -j N --exit-on-error` into a new scratch database. The caller
/// runs `ANALYZE` (a restored database has no statistics; rehearsal timings
/// on it would be misleading) alongside the checks.
async fn restore(
    config: &Config,
    target: &Target,
    shadow: &mut Shadow,
    db: &str,
    m: &Manifest,
    file: &Path,
) -> Result<(), DrillError> {
    shadow.create(db, &m.id).await?;
    let mut extra = vec!["--no-acl"];
    if target.restore_no_owner {
        extra.push("--no-owner");
    }
    pg_restore(config, target, m, &shadow.url_for(db), file, &extra).await
}

/// `pg_restore -j N --exit-on-error [extra] FILE` into the existing database
/// at `url`, with the client matching the snapshot's server version.
pub async fn pg_restore(
    config: &Config,
    target: &Target,
    m: &Manifest,
    url: &pg::ConnUrl,
    file: &Path,
    extra: &[&str],
) -> Result<(), DrillError> {
    let bindir = target.pg_bindir.as_deref().or(config.snapshot.pg_bindir.as_deref());
    let tool = tools::find("pg_restore", bindir, m.server_version_num / 10000).await?;
    let mut cmd = tools::command(&tool, url, "pgrehearse-restore");
    cmd.arg(format!("--jobs={}", target.restore_jobs)).arg("--exit-on-error").args(extra);
    cmd.arg(file).stdout(Stdio::null()).stderr(Stdio::piped());
    let (stop, stopped) = tokio::sync::oneshot::channel();
    let watch = tokio::spawn(watch_restore(url.clone(), m.database_size, stopped));
    let out = cmd.output().await;
    // The watcher's session is closed when this returns (see `watch_restore`).
    let _ = stop.send(out.as_ref().is_ok_and(|o| o.status.success()));
    let _ = watch.await;
    let out = out.map_err(|source| ToolError::Spawn { path: tool.path.display().to_string(), source })?;
    if !out.status.success() {
        return Err(DrillError::RestoreFailed {
            id: m.id.clone(),
            status: out.status.to_string(),
            stderr_tail: tools::tail(&String::from_utf8_lossy(&out.stderr), 2000),
        });
    }
    Ok(())
}

/// Progress of a `pg_restore` into `url`: the database's growth, polled
/// every second (see [`crate::progress::poll_interval`]), against the live
/// database's size at dump time (an estimate: indexes and bloat differ). Its session is closed before this
/// returns (`true` sent on `stop`: the restore succeeded), so that renames
/// and template copies of the database find no other session.
async fn watch_restore(url: pg::ConnUrl, live_size: u64, mut stop: tokio::sync::oneshot::Receiver<bool>) {
    use crate::progress::Progress;
    if !crate::progress::enabled() {
        let _ = stop.await;
        return;
    }
    let Ok(mut conn) = pg::connect(&url, "pgrehearse-progress").await else {
        let _ = stop.await;
        return;
    };
    let size = "SELECT pg_database_size(current_database())";
    // The empty database's own size (its template's) is not restore work.
    let base = sqlx::query_scalar::<_, i64>(size).fetch_one(&mut conn).await.map_or(0, |b| b.max(0) as u64);
    let progress = Progress::start("restore", Some(live_size.saturating_sub(base)), true);
    let every = crate::progress::poll_interval();
    loop {
        let ok = tokio::select! {
            ok = &mut stop => Some(ok.unwrap_or(false)),
            _ = tokio::time::sleep(every) => None,
        };
        // One last measurement when pg_restore is done: the final size.
        if ok != Some(false)
            && let Ok(now) = sqlx::query_scalar::<_, i64>(size).fetch_one(&mut conn).await
        {
            progress.set((now.max(0) as u64).saturating_sub(base));
        }
        if let Some(ok) = ok {
            let _ = sqlx::Connection::close(conn).await;
            if ok {
                progress.finish();
            }
            return;
        }
    }
}

/// The staging file for `m`, named `<target>-<pid>-<snapshot id>.pgdump` so
/// that `clean_staging` can tell files of dead runs.
pub fn staging_file(staging: &Path, target: &Target, m: &Manifest) -> PathBuf {
    staging.join(format!("{}-{}-{}.pgdump", target.name, std::process::id(), m.id))
}

/// `ANALYZE` of a freshly restored database; returns how long it took.
pub async fn analyze(url: &pg::ConnUrl) -> Result<u64, PgError> {
    let t0 = Instant::now();
    let mut conn = pg::connect(url, "pgrehearse-analyze").await?;
    conn.execute("ANALYZE").await.map_err(|source| PgError::Query { url: url.redacted(), source })?;
    Ok(t0.elapsed().as_millis() as u64)
}

/// Exact row counts against the manifest, and index validity.
pub async fn check(url: &pg::ConnUrl, m: &Manifest) -> Result<(usize, Vec<String>), PgError> {
    let q = |source| PgError::Query { url: url.redacted(), source };
    let mut conn = pg::connect(url, "pgrehearse-verify").await?;
    let mut mismatches = Vec::new();
    for t in &m.tables {
        let name = format!("{}.{}", quote_ident(&t.schema), quote_ident(&t.name));
        let exists: Option<String> =
            sqlx::query_scalar("SELECT to_regclass($1)::text").bind(&name).fetch_one(&mut conn).await.map_err(q)?;
        if exists.is_none() {
            mismatches.push(format!("table {}.{} is missing from the restored database", t.schema, t.name));
            continue;
        }
        let rows: i64 =
            sqlx::query_scalar(&format!("SELECT count(*) FROM ONLY {name}")).fetch_one(&mut conn).await.map_err(q)?;
        if rows != t.rows {
            mismatches
                .push(format!("table {}.{} has {rows} rows restored but {} in the manifest", t.schema, t.name, t.rows));
        }
    }
    let invalid = sqlx::query("SELECT indexrelid::regclass::text AS idx FROM pg_index WHERE NOT indisvalid")
        .fetch_all(&mut conn)
        .await
        .map_err(q)?;
    for row in invalid {
        mismatches.push(format!("index {} is invalid after restore", row.get::<String, _>("idx")));
    }
    Ok((m.tables.len(), mismatches))
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

/// Removes staging files of this target left by processes that died.
fn clean_staging(dir: &Path, target: &str) {
    let Ok(entries) = std::fs::read_dir(dir) else { return };
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        // `<target>-<pid>-<snapshot id>.pgdump[.partial]`
        let Some(rest) = name.strip_prefix(&format!("{target}-")) else { continue };
        let pid = rest.split('-').next().and_then(|p| p.parse::<u32>().ok());
        if let Some(pid) = pid
            && pid != std::process::id()
            && !crate::host::process_alive(pid)
        {
            tracing::warn!(file = %e.path().display(), "Removing a staging file left by a run that died.");
            let _ = std::fs::remove_file(e.path());
        }
    }
}

/// Refuses before downloading when the staging filesystem cannot hold the
/// decompressed dump plus the configured reserve.
pub fn check_space(dir: &Path, m: &Manifest, reserve: u64) -> Result<(), DrillError> {
    let free = crate::host::free_bytes(dir).map_err(|source| DrillError::Staging { dir: dir.into(), source })?;
    let need = m.bytes_raw.saturating_add(reserve);
    if free < need {
        return Err(DrillError::NoSpace { dir: dir.into(), id: m.id.clone(), need, raw: m.bytes_raw, reserve, free });
    }
    Ok(())
}
