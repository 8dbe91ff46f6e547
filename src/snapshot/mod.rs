//! Snapshots: `pg_dump -Fc -Z0` of the live database streamed through zstd
//! (and age) into the store, with a manifest written last.
//!
//! Row counts are exact and consistent with the dump: a session opens a
//! REPEATABLE READ transaction, exports its snapshot (`pg_export_snapshot()`),
//! hands it to `pg_dump --snapshot`, and counts every table inside that same
//! transaction while the dump runs. If pg_dump fails, is killed, or the store
//! fails, the upload is aborted and nothing becomes visible.

pub mod catalog;
pub mod manifest;
pub mod pipeline;
pub mod sweep;

use std::process::Stdio;
use std::time::Instant;

use bytes::Bytes;
use chrono::Utc;
use serde::{Deserialize, Serialize};
use sqlx::postgres::PgConnection;
use sqlx::{Executor, Row};
use tokio::io::AsyncReadExt;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::config::{Config, Target};
use crate::error_class::{Class, Classify};
use crate::pg::lock::{HeavyLock, LockError};
use crate::pg::tools::{self, ToolError};
use crate::pg::{self, ConnUrl, PgError};
use crate::state::{RunResult, State, StateError};
use crate::store::{self, Store, StoreError};
use manifest::{Compression, Encryption, Manifest, MigrationState, ObjectRef, TableCount};

/// Why a snapshot was taken.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum Reason {
    Manual,
    Scheduled,
    PreRelease,
    /// Taken because a rehearsal found no snapshot to run on (or was asked for a fresh one).
    Rehearsal,
}

impl Reason {
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::Manual => "manual",
            Reason::Scheduled => "scheduled",
            Reason::PreRelease => "pre-release",
            Reason::Rehearsal => "rehearsal",
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    #[error("pg_dump failed ({status}); nothing was stored. Its last output:\n{stderr_tail}")]
    DumpFailed { status: String, stderr_tail: String },
    #[error(
        "the stored object {key} has {actual} bytes but {expected} were written; the store corrupted the upload, nothing was made visible"
    )]
    SizeMismatch { key: String, expected: u64, actual: u64 },
    #[error("interrupted; the upload was aborted and nothing was stored")]
    Cancelled,
    #[error("the compression pipeline failed: {0}")]
    Pipeline(std::io::Error),
    #[error(transparent)]
    Pg(#[from] PgError),
    #[error(transparent)]
    Tool(#[from] ToolError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Lock(#[from] LockError),
    #[error(transparent)]
    State(#[from] StateError),
}

impl Classify for SnapshotError {
    fn class(&self) -> Class {
        match self {
            SnapshotError::DumpFailed { .. }
            | SnapshotError::SizeMismatch { .. }
            | SnapshotError::Cancelled
            | SnapshotError::Pipeline(_) => Class::Failed,
            SnapshotError::Pg(e) => e.class(),
            SnapshotError::Tool(e) => e.class(),
            SnapshotError::Store(e) => e.class(),
            SnapshotError::Lock(e) => e.class(),
            SnapshotError::State(e) => e.class(),
        }
    }

    fn kind(&self) -> &'static str {
        match self {
            SnapshotError::DumpFailed { .. } => "dump_failed",
            SnapshotError::SizeMismatch { .. } => "upload_size_mismatch",
            SnapshotError::Cancelled => "cancelled",
            SnapshotError::Pipeline(_) => "pipeline_failed",
            SnapshotError::Pg(e) => e.kind(),
            SnapshotError::Tool(e) => e.kind(),
            SnapshotError::Store(e) => e.kind(),
            SnapshotError::Lock(e) => e.kind(),
            SnapshotError::State(e) => e.kind(),
        }
    }
}

/// What `pgrehearse snapshot --json` prints.
#[derive(Debug, Serialize)]
pub struct Outcome {
    pub id: String,
    pub target: String,
    pub key: String,
    pub manifest_key: String,
    pub globals_key: Option<String>,
    pub bytes_raw: u64,
    pub bytes_stored: u64,
    pub sha256: String,
    pub duration_ms: u64,
    pub tables: usize,
    pub rows: i64,
}

/// A new snapshot id: sortable UTC time plus randomness, e.g.
/// `20261124T031500Z-3fa9`.
pub fn new_id(now: chrono::DateTime<Utc>) -> String {
    format!("{}-{:04x}", now.format("%Y%m%dT%H%M%SZ"), rand::random::<u16>())
}

/// Takes a snapshot of `target` now into `store`. Records the run (and its
/// failure) in `state`. Takes the target's heavy-job lock for the duration.
/// `cancel` (SIGINT/SIGTERM, daemon shutdown) stops the dump, aborts the
/// upload and records the run as failed.
pub async fn take(
    config: &Config,
    state: &State,
    store: &dyn Store,
    target: &Target,
    reason: Reason,
    cancel: &CancellationToken,
) -> Result<Outcome, SnapshotError> {
    take_with(config, state, store, target, reason, cancel, Locking::Acquire).await
}

/// Whether a snapshot takes the target's heavy-job lock itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Locking {
    Acquire,
    /// The caller (a release) holds it already.
    HeldByCaller,
}

/// [`take`], for a caller that may already hold the heavy-job lock.
pub async fn take_with(
    config: &Config,
    state: &State,
    store: &dyn Store,
    target: &Target,
    reason: Reason,
    cancel: &CancellationToken,
    locking: Locking,
) -> Result<Outcome, SnapshotError> {
    let started_at = Utc::now();
    let id = new_id(started_at);
    // Progress is shown against the last snapshot's raw size (pg_database_size otherwise).
    let previous_raw = state.last_snapshot_bytes_raw(&target.name).await?;
    state.snapshot_started(&id, &target.name, reason.as_str(), started_at).await?;
    let span = tracing::info_span!("snapshot", run_id = %id, target = %target.name, job = "snapshot");
    let result = tracing::Instrument::instrument(
        run(config, target, reason, &id, started_at, store, cancel, locking, previous_raw),
        span,
    )
    .await;
    match &result {
        Ok(o) => {
            state
                .snapshot_succeeded(
                    &id,
                    &RunResult {
                        dump_key: o.key.clone(),
                        bytes_raw: o.bytes_raw,
                        bytes_stored: o.bytes_stored,
                        sha256: o.sha256.clone(),
                        duration_ms: o.duration_ms,
                    },
                )
                .await?;
        }
        // Refused because another heavy job runs: no attempt was made, so it
        // must not count as a failed backup (prune would stop).
        Err(SnapshotError::Lock(LockError::Held { .. })) => state.snapshot_forget(&id).await?,
        Err(e) => state.snapshot_failed(&id, &e.to_string()).await?,
    }
    result
}

#[allow(clippy::too_many_arguments)]
async fn run(
    config: &Config,
    target: &Target,
    reason: Reason,
    id: &str,
    started_at: chrono::DateTime<Utc>,
    store: &dyn Store,
    cancel: &CancellationToken,
    locking: Locking,
    previous_raw: Option<u64>,
) -> Result<Outcome, SnapshotError> {
    let t0 = Instant::now();
    let live = &target.live_url;
    let lock = match locking {
        Locking::Acquire => Some(HeavyLock::for_target(target.admin(), &target.name, "snapshot").await?),
        Locking::HeldByCaller => None,
    };
    let mut conn = pg::connect(live, "pgrehearse-snapshot").await?;
    let q = |source| PgError::Query { url: live.redacted(), source };
    let info = pg::server_info(&mut conn, live).await?;
    let bindir = target.pg_bindir.as_deref().or(config.snapshot.pg_bindir.as_deref());
    let pg_dump = tools::find("pg_dump", bindir, info.major()).await?;

    // The transaction whose snapshot pg_dump imports and the counts read.
    conn.execute("BEGIN ISOLATION LEVEL REPEATABLE READ, READ ONLY").await.map_err(q)?;
    let mvcc: String = sqlx::query_scalar("SELECT pg_export_snapshot()").fetch_one(&mut conn).await.map_err(q)?;
    let tables = list_tables(&mut conn).await.map_err(q)?;
    let migrations = migration_state(&mut conn, target).await.map_err(q)?;

    let dump_file = if config.store.encrypt_to.is_empty() { "dump.pgdump.zst" } else { "dump.pgdump.zst.age" };
    let dump_key = store::snapshot_key(&target.name, id, dump_file);
    let recipients = pipeline::recipients(&config.store.encrypt_to).map_err(SnapshotError::Pipeline)?;

    let mut cmd = tools::command(&pg_dump, live, "pgrehearse-snapshot");
    cmd.args(["--format=custom", "--compress=0", "--no-sync"]).arg(format!("--snapshot={mvcc}"));
    cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
    let mut child =
        cmd.spawn().map_err(|source| ToolError::Spawn { path: pg_dump.path.display().to_string(), source })?;
    tracing::info!(pid = child.id(), mvcc_snapshot = %mvcc, tables = tables.len(), "pg_dump started.");
    let stdout = child.stdout.take().expect("piped");
    let mut stderr = child.stderr.take().expect("piped");
    let stderr_task = tokio::spawn(async move {
        let mut all = Vec::new();
        let _ = stderr.read_to_end(&mut all).await;
        tools::tail(&String::from_utf8_lossy(&all), 2000)
    });

    let (tx, mut rx) = mpsc::channel::<Bytes>(4);
    let level = config.snapshot.zstd_level;
    let progress = crate::progress::Progress::start("snapshot", previous_raw.or(Some(info.database_size)), true);
    let raw = progress.reader(pipeline::read_ahead(stdout).map_err(SnapshotError::Pipeline)?);
    let encoder = tokio::task::spawn_blocking(move || pipeline::encode(raw, level, &recipients, tx));
    let mut upload = store.begin_upload(&dump_key, info.database_size).await?;

    let dump = async {
        let res = encoder.await.unwrap_or_else(|e| Err(std::io::Error::other(e)));
        if res.is_err() {
            // The pipeline stopped reading: pg_dump would block on a full pipe.
            let _ = child.start_kill();
        }
        (res, child.wait().await)
    };
    // `rx` moves into the future so that it is dropped when the upload
    // fails, which unblocks the encoder.
    let feed = {
        let upload = &mut upload;
        async move {
            while let Some(chunk) = rx.recv().await {
                upload.write(chunk).await?;
            }
            Ok::<(), StoreError>(())
        }
    };
    let counts = count_rows(&mut conn, &tables);
    let joined = tokio::select! {
        r = async { tokio::join!(dump, feed, counts) } => Some(r),
        _ = cancel.cancelled() => None,
    };
    let Some(((encoded, status), fed, counted)) = joined else {
        let _ = child.start_kill();
        let _ = child.wait().await;
        upload.abort().await;
        tracing::warn!("Snapshot interrupted; the upload was aborted and nothing is visible.");
        return Err(SnapshotError::Cancelled);
    };

    let stderr_tail = stderr_task.await.unwrap_or_default();
    let status = status.map_err(|source| ToolError::Spawn { path: pg_dump.path.display().to_string(), source })?;
    // The first cause wins: when the upload fails, the encoder stops and
    // pg_dump is killed, so their errors are consequences, not causes.
    let failure = if let Err(e) = fed {
        Some(SnapshotError::from(e))
    } else if !status.success() {
        Some(SnapshotError::DumpFailed { status: describe(status), stderr_tail })
    } else if let Err(e) = &encoded {
        Some(SnapshotError::Pipeline(std::io::Error::new(e.kind(), e.to_string())))
    } else if let Err(e) = &counted {
        Some(PgError::Query { url: live.redacted(), source: sqlx::Error::Protocol(e.to_string()) }.into())
    } else {
        None
    };
    if let Some(err) = failure {
        upload.abort().await;
        tracing::error!(error = %err, "Snapshot failed; no manifest was written, so nothing is visible.");
        return Err(err);
    }
    let totals = encoded.map_err(SnapshotError::Pipeline)?;
    let counts = counted.map_err(q)?;
    let written = upload.finish().await?;
    progress.finish();
    // A 200 OK proves nothing: read the size back.
    let stored = store.size(&dump_key).await?.unwrap_or(0);
    if stored != totals.bytes_stored || written != totals.bytes_stored {
        let _ = store.delete(&dump_key).await;
        return Err(SnapshotError::SizeMismatch {
            key: store.locate(&dump_key),
            expected: totals.bytes_stored,
            actual: stored,
        });
    }
    conn.execute("COMMIT").await.map_err(q)?;

    let globals =
        if target.dump_globals { Some(dump_globals(config, target, id, info.major(), store).await?) } else { None };

    let finished_at = Utc::now();
    let duration_ms = t0.elapsed().as_millis() as u64;
    let rows = counts.iter().map(|t| t.rows).sum();
    let manifest = Manifest {
        format_version: manifest::FORMAT_VERSION,
        id: id.to_string(),
        target: target.name.clone(),
        database: info.database.clone(),
        server_version: info.version.clone(),
        server_version_num: info.version_num,
        pg_dump_version: pg_dump.version.clone(),
        started_at,
        finished_at,
        duration_ms,
        bytes_raw: totals.bytes_raw,
        bytes_stored: totals.bytes_stored,
        sha256: totals.sha256.clone(),
        compression: Compression { algorithm: "zstd".into(), level },
        encryption: (!config.store.encrypt_to.is_empty())
            .then(|| Encryption { scheme: "age".into(), recipients: config.store.encrypt_to.clone() }),
        dump: ObjectRef { key: dump_key.clone(), bytes: totals.bytes_stored, sha256: totals.sha256.clone() },
        globals: globals.clone(),
        reason,
        migrations,
        tables: counts.clone(),
        database_size: info.database_size,
        system_identifier: info.system_identifier.clone(),
        mvcc_snapshot: mvcc,
        verification: None,
        pinned_by: None,
    };
    let manifest_key = store::snapshot_key(&target.name, id, store::MANIFEST);
    let body = serde_json::to_vec_pretty(&manifest).expect("manifest serializes");
    store.put(&manifest_key, Bytes::from(body)).await?;
    if let Some(lock) = lock {
        lock.release().await;
    }
    tracing::info!(
        snapshot = %id, bytes_raw = totals.bytes_raw, bytes_stored = totals.bytes_stored,
        elapsed_ms = duration_ms, "Snapshot stored."
    );
    Ok(Outcome {
        id: id.to_string(),
        target: target.name.clone(),
        key: store.locate(&dump_key),
        manifest_key: store.locate(&manifest_key),
        globals_key: globals.map(|g| store.locate(&g.key)),
        bytes_raw: totals.bytes_raw,
        bytes_stored: totals.bytes_stored,
        sha256: totals.sha256,
        duration_ms,
        tables: counts.len(),
        rows,
    })
}

fn describe(status: std::process::ExitStatus) -> String {
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (Some(c), _) => format!("exit code {c}"),
        (None, Some(s)) => format!("killed by signal {s}"),
        _ => status.to_string(),
    }
}

/// Tables whose data pg_dump writes: ordinary tables outside the system
/// schemas, not members of extensions.
async fn list_tables(conn: &mut PgConnection) -> Result<Vec<(String, String)>, sqlx::Error> {
    let rows = sqlx::query(
        "SELECT n.nspname, c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
         WHERE c.relkind = 'r' AND n.nspname NOT IN ('pg_catalog', 'information_schema') \
           AND n.nspname NOT LIKE 'pg\\_toast%' AND n.nspname NOT LIKE 'pg\\_temp%' \
           AND NOT EXISTS (SELECT 1 FROM pg_depend d WHERE d.classid = 'pg_class'::regclass AND d.objid = c.oid AND d.deptype = 'e') \
         ORDER BY 1, 2",
    )
    .fetch_all(&mut *conn)
    .await?;
    Ok(rows.into_iter().map(|r| (r.get(0), r.get(1))).collect())
}

async fn count_rows(conn: &mut PgConnection, tables: &[(String, String)]) -> Result<Vec<TableCount>, sqlx::Error> {
    let mut out = Vec::with_capacity(tables.len());
    for (schema, name) in tables {
        let sql = format!("SELECT count(*) FROM ONLY {}.{}", pg::quote_ident(schema), pg::quote_ident(name));
        let rows: i64 = sqlx::query_scalar(&sql).fetch_one(&mut *conn).await?;
        out.push(TableCount { schema: schema.clone(), name: name.clone(), rows });
    }
    Ok(out)
}

/// The migration tool's history as of the dump, if its table exists.
async fn migration_state(conn: &mut PgConnection, target: &Target) -> Result<Option<MigrationState>, sqlx::Error> {
    let Some(m) = &target.migrations else { return Ok(None) };
    let Some(default_table) = m.kind.history_table() else { return Ok(None) };
    let table = m.table.clone().unwrap_or_else(|| default_table.to_string());
    let exists: Option<String> =
        sqlx::query_scalar("SELECT to_regclass($1)::text").bind(&table).fetch_one(&mut *conn).await?;
    let Some(regclass) = exists else { return Ok(None) };
    let sql = match m.kind {
        crate::config::MigrationKind::Sqlx => {
            format!("SELECT version::text FROM {regclass} WHERE success ORDER BY version")
        }
        crate::config::MigrationKind::Diesel => format!("SELECT version::text FROM {regclass} ORDER BY version"),
        crate::config::MigrationKind::Payload => {
            format!("SELECT name::text FROM {regclass} WHERE batch <> -1 ORDER BY id")
        }
        crate::config::MigrationKind::Command => return Ok(None),
    };
    let applied: Vec<String> = sqlx::query_scalar(&sql).fetch_all(&mut *conn).await?;
    Ok(Some(MigrationState { kind: m.kind, table, applied }))
}

/// `pg_dumpall --globals-only --no-role-passwords` as a second object.
async fn dump_globals(
    config: &Config,
    target: &Target,
    id: &str,
    server_major: u32,
    store: &dyn Store,
) -> Result<ObjectRef, SnapshotError> {
    let bindir = target.pg_bindir.as_deref().or(config.snapshot.pg_bindir.as_deref());
    let tool = tools::find("pg_dumpall", bindir, server_major).await?;
    let live: &ConnUrl = &target.live_url;
    let mut cmd = tools::command(&tool, live, "pgrehearse-globals");
    cmd.args(["--globals-only", "--no-role-passwords"]);
    let out =
        cmd.output().await.map_err(|source| ToolError::Spawn { path: tool.path.display().to_string(), source })?;
    if !out.status.success() {
        return Err(SnapshotError::DumpFailed {
            status: format!("pg_dumpall {}", describe(out.status)),
            stderr_tail: tools::tail(&String::from_utf8_lossy(&out.stderr), 2000),
        });
    }
    let file = if config.store.encrypt_to.is_empty() { "globals.sql.zst" } else { "globals.sql.zst.age" };
    let key = store::snapshot_key(&target.name, id, file);
    let recipients = pipeline::recipients(&config.store.encrypt_to).map_err(SnapshotError::Pipeline)?;
    let (tx, mut rx) = mpsc::channel::<Bytes>(64);
    let level = config.snapshot.zstd_level;
    let encoder = tokio::task::spawn_blocking(move || pipeline::encode(&out.stdout[..], level, &recipients, tx));
    let mut body = Vec::new();
    while let Some(chunk) = rx.recv().await {
        body.extend_from_slice(&chunk);
    }
    let totals = encoder
        .await
        .map_err(|e| SnapshotError::Pipeline(std::io::Error::other(e)))?
        .map_err(SnapshotError::Pipeline)?;
    store.put(&key, Bytes::from(body)).await?;
    Ok(ObjectRef { key, bytes: totals.bytes_stored, sha256: totals.sha256 })
}
