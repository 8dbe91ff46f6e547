//! Loading a snapshot into a database: staging the stored dump (download,
//! SHA-256 check, free-space check), `pg_restore` with progress, `ANALYZE`,
//! and the row-count and index check against the manifest; or, when the
//! target's template holds the snapshot, a template clone. The restore drill,
//! the rehearsal and `pgrehearse restore` all load snapshots through here.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Instant;

use sqlx::{Executor, Row};

use super::{Shadow, ShadowError};
use crate::config::{Config, Target};
use crate::error_class::{Class, Classify};
use crate::pg::lock::LockError;
use crate::pg::tools::{self, ToolError};
use crate::pg::{self, PgError, quote_ident};
use crate::snapshot::SnapshotError;
use crate::snapshot::catalog::{self, CatalogError};
use crate::snapshot::manifest::Manifest;
use crate::state::StateError;
use crate::store::{self, StoreError};

#[derive(Debug, thiserror::Error)]
pub enum LoadError {
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

impl Classify for LoadError {
    fn class(&self) -> Class {
        match self {
            LoadError::NoSpace { .. } => Class::Refused,
            LoadError::RestoreFailed { .. } | LoadError::Staging { .. } => Class::Failed,
            LoadError::Catalog(e) => e.class(),
            LoadError::Shadow(e) => e.class(),
            LoadError::Pg(e) => e.class(),
            LoadError::Tool(e) => e.class(),
            LoadError::Lock(e) => e.class(),
            LoadError::State(e) => e.class(),
            LoadError::Store(e) => e.class(),
        }
    }

    fn kind(&self) -> &'static str {
        match self {
            LoadError::NoSpace { .. } => "no_staging_space",
            LoadError::RestoreFailed { .. } => "restore_failed",
            LoadError::Staging { .. } => "staging_unusable",
            LoadError::Catalog(e) => e.kind(),
            LoadError::Shadow(e) => e.kind(),
            LoadError::Pg(e) => e.kind(),
            LoadError::Tool(e) => e.kind(),
            LoadError::Lock(e) => e.kind(),
            LoadError::State(e) => e.kind(),
            LoadError::Store(e) => e.kind(),
        }
    }
}

impl From<SnapshotError> for LoadError {
    fn from(e: SnapshotError) -> Self {
        LoadError::Catalog(CatalogError::Snapshot(e))
    }
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
) -> Result<(&'static str, u64), LoadError> {
    let t0 = Instant::now();
    if shadow.template_snapshot().await?.as_deref() == Some(m.id.as_str()) {
        shadow.clone_template(db, &m.id).await?;
        return Ok(("template_clone", t0.elapsed().as_millis() as u64));
    }
    let staging = config.staging_dir();
    std::fs::create_dir_all(&staging).map_err(|source| LoadError::Staging { dir: staging.clone(), source })?;
    clean_staging(&staging, &target.name);
    check_space(&staging, m, config.store.staging_reserve)?;
    let file = staging_file(&staging, target, m);
    let _staged = Staged(file.clone());
    let fetched = catalog::fetch(config, store, m, None, &file, false).await;
    let restored = match fetched {
        Ok(_) => restore_into(config, target, shadow, db, m, &file).await,
        Err(e) => Err(e.into()),
    };
    let _ = std::fs::remove_file(&file);
    let analyzed = match restored {
        Ok(()) => analyze(&shadow.url_for(db)).await.map_err(LoadError::from),
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
pub async fn restore_into(
    config: &Config,
    target: &Target,
    shadow: &mut Shadow,
    db: &str,
    m: &Manifest,
    file: &Path,
) -> Result<(), LoadError> {
    shadow.create(db, &m.id).await?;
    // Live's owners and grants when its roles are mirrored (see
    // `shadow::roles`), otherwise everything owned by the shadow role.
    let extra: &[&str] = if shadow.restores_owners() { &[] } else { &["--no-acl", "--no-owner"] };
    pg_restore(config, target, m, &shadow.url_for(db), file, extra).await
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
) -> Result<(), LoadError> {
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
        return Err(LoadError::RestoreFailed {
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

/// Removes a staging file when dropped: also when a stopped job (a stalled
/// server, a signal) drops the load mid-restore.
pub struct Staged(pub PathBuf);

impl Drop for Staged {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// `ANALYZE` of a freshly restored database's own tables (not the shared
/// catalogs, which only a superuser may analyze, nor tables this role has
/// no owner's rights on); returns how long it took.
pub async fn analyze(url: &pg::ConnUrl) -> Result<u64, PgError> {
    let t0 = Instant::now();
    let q = |source| PgError::Query { url: url.redacted(), source };
    let mut conn = pg::connect(url, "pgrehearse-analyze").await?;
    // Partitions are analyzed with their parent.
    let tables: Vec<String> = sqlx::query_scalar(
        "SELECT format('%I.%I', n.nspname, c.relname) FROM pg_class c \
         JOIN pg_namespace n ON n.oid = c.relnamespace, pg_database d \
         WHERE d.datname = current_database() AND c.relkind IN ('r', 'm', 'p') AND NOT c.relispartition \
           AND NOT c.relisshared AND n.nspname NOT IN ('pg_catalog', 'information_schema') \
           AND n.nspname NOT LIKE 'pg\\_toast%' \
           AND (pg_has_role(c.relowner, 'USAGE') OR pg_has_role(d.datdba, 'USAGE')) ORDER BY 1",
    )
    .fetch_all(&mut conn)
    .await
    .map_err(q)?;
    if !tables.is_empty() {
        conn.execute(format!("ANALYZE {}", tables.join(", ")).as_str()).await.map_err(q)?;
    }
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

/// Removes staging files of this target left by processes that died.
pub fn clean_staging(dir: &Path, target: &str) {
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
pub fn check_space(dir: &Path, m: &Manifest, reserve: u64) -> Result<(), LoadError> {
    let free = crate::host::free_bytes(dir).map_err(|source| LoadError::Staging { dir: dir.into(), source })?;
    let need = m.bytes_raw.saturating_add(reserve);
    if free < need {
        return Err(LoadError::NoSpace { dir: dir.into(), id: m.id.clone(), need, raw: m.bytes_raw, reserve, free });
    }
    Ok(())
}
