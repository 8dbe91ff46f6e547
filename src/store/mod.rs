//! Where snapshots live: the [`Store`] trait with a local-directory and an S3
//! implementation, the object-key layout, and the start-up sweeper.
//!
//! Keys given to a store are relative (`<target>/<snapshot id>/<file>`); the S3
//! store puts its prefix in front, the local store its directory. A snapshot
//! becomes visible only when its `manifest.json` exists, and the manifest is
//! always written last, so an interrupted upload is never mistaken for a
//! snapshot.

pub mod local;
pub mod retention;
pub mod s3;
mod s3_read;

use async_trait::async_trait;
use bytes::Bytes;
use chrono::{DateTime, Utc};
use tokio::io::AsyncRead;

use crate::config::{StoreConfig, StoreKind};
use crate::error_class::{Class, Classify};
use crate::state::State;

pub const MANIFEST: &str = "manifest.json";

/// Key of a snapshot's file: `<target>/<id>/<file>`.
pub fn snapshot_key(target: &str, id: &str, file: &str) -> String {
    format!("{target}/{id}/{file}")
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("the store is unreachable or failing: {0}; check the endpoint, network and credentials, then retry")]
    Unavailable(String),
    #[error(
        "object {key} does not exist in the store: it was deleted, or its upload never finished; list what is there with `pgrehearse snapshots`"
    )]
    NotFound { key: String },
    #[error(
        "store request failed: {0}; check [store] (bucket, prefix, region) and that its credentials may list, read, write and delete there, then retry"
    )]
    Failed(String),
    #[error(
        "local store I/O error on {path}: {source}; check that [store] path exists, that pgrehearse may write there, and that the disk has room"
    )]
    Io { path: String, source: std::io::Error },
    #[error("the dump outgrew its upload: {parts} parts of {part_size} bytes is the S3 limit; raise [store] part_size")]
    TooManyParts { parts: u32, part_size: u64 },
}

impl Classify for StoreError {
    fn class(&self) -> Class {
        match self {
            StoreError::Unavailable(_) => Class::Unavailable,
            StoreError::NotFound { .. }
            | StoreError::Failed(_)
            | StoreError::Io { .. }
            | StoreError::TooManyParts { .. } => Class::Failed,
        }
    }

    fn kind(&self) -> &'static str {
        match self {
            StoreError::Unavailable(_) => "store_unavailable",
            StoreError::NotFound { .. } => "store_object_missing",
            StoreError::Failed(_) => "store_failed",
            StoreError::Io { .. } => "store_io_failed",
            StoreError::TooManyParts { .. } => "store_too_many_parts",
        }
    }
}

/// An object in a listing.
#[derive(Debug, Clone)]
pub struct ObjectInfo {
    /// Relative key.
    pub key: String,
}

/// An upload that was started and neither completed nor aborted.
#[derive(Debug, Clone)]
pub struct Incomplete {
    pub key: String,
    pub upload_id: String,
    pub initiated: Option<DateTime<Utc>>,
}

/// A snapshot store. All methods are safe to call concurrently.
#[async_trait]
pub trait Store: Send + Sync {
    /// The full location of a key as a person or the AWS CLI names it: the
    /// bucket's object key, or the local file path.
    fn locate(&self, key: &str) -> String;

    /// Starts a streaming upload. `expected_size` sizes the parts; the upload
    /// becomes visible only after [`Upload::finish`].
    async fn begin_upload(&self, key: &str, expected_size: u64) -> Result<Box<dyn Upload>, StoreError>;

    /// Writes a small object atomically (manifests).
    async fn put(&self, key: &str, data: Bytes) -> Result<(), StoreError>;

    /// Reads a small object whole.
    async fn get(&self, key: &str) -> Result<Bytes, StoreError>;

    /// Streams an object.
    async fn open(&self, key: &str) -> Result<Box<dyn AsyncRead + Send + Unpin>, StoreError>;

    /// Size of an object, `None` if it does not exist.
    async fn size(&self, key: &str) -> Result<Option<u64>, StoreError>;

    /// Every object whose key starts with `prefix`.
    async fn list(&self, prefix: &str) -> Result<Vec<ObjectInfo>, StoreError>;

    async fn delete(&self, key: &str) -> Result<(), StoreError>;

    /// Uploads (S3 multipart uploads, local `.partial` files) never finished.
    async fn incomplete(&self) -> Result<Vec<Incomplete>, StoreError>;

    async fn abort_incomplete(&self, upload: &Incomplete) -> Result<(), StoreError>;
}

/// A streaming upload in progress. Dropping it without `finish` aborts it.
#[async_trait]
pub trait Upload: Send {
    /// Appends bytes. Applies backpressure: returns only when the data is
    /// buffered within the upload's memory bound.
    async fn write(&mut self, data: Bytes) -> Result<(), StoreError>;

    /// Completes the upload; returns the stored size.
    async fn finish(self: Box<Self>) -> Result<u64, StoreError>;

    /// Removes everything uploaded so far.
    async fn abort(self: Box<Self>);
}

/// Opens the configured store.
pub async fn open(cfg: &StoreConfig) -> Result<Box<dyn Store>, StoreError> {
    match &cfg.kind {
        StoreKind::Local { path } => Ok(Box::new(local::LocalStore::new(path.clone()))),
        StoreKind::S3(s3cfg) => Ok(Box::new(s3::S3Store::connect(s3cfg).await?)),
    }
}

/// Whether the run that wrote snapshot `id` can never finish: this host
/// recorded it as failed or its process died; a run we know nothing of
/// (another host's) once it started longer than `grace` ago. The id starts
/// with its UTC start time, which dates even objects without metadata.
async fn run_is_dead(
    state: &State,
    id: &str,
    fallback_start: Option<DateTime<Utc>>,
    grace: std::time::Duration,
) -> bool {
    match state.snapshot_run(id).await.ok().flatten() {
        Some(r) => {
            r.status != crate::state::RunStatus::Running
                || (r.host == crate::host::hostname() && !crate::host::process_alive(r.pid))
        }
        None => {
            id_started_at(id).or(fallback_start).is_some_and(|t| (Utc::now() - t).to_std().unwrap_or_default() >= grace)
        }
    }
}

/// `20261124T031500Z-3fa9` → 2026-11-24 03:15:00 UTC.
fn id_started_at(id: &str) -> Option<DateTime<Utc>> {
    let stamp = id.get(..16)?;
    chrono::NaiveDateTime::parse_from_str(stamp, "%Y%m%dT%H%M%SZ").ok().map(|t| t.and_utc())
}

/// Cleans up after runs that can never finish: aborts their incomplete
/// uploads, and deletes objects of snapshots that never got a manifest (a
/// crash between the upload and the manifest, or an interrupted prune that
/// had already deleted the manifest). Returns how many were removed.
pub async fn sweep(store: &dyn Store, state: &State, grace: std::time::Duration) -> Result<usize, StoreError> {
    let mut removed = 0;
    for up in store.incomplete().await? {
        // `<target>/<id>/<file>`
        let id = up.key.split('/').nth(1).unwrap_or_default();
        if run_is_dead(state, id, up.initiated, grace).await {
            store.abort_incomplete(&up).await?;
            tracing::info!(key = %up.key, upload_id = %up.upload_id, "Aborted an incomplete upload left by a failed run.");
            removed += 1;
        }
    }
    let objects = store.list("").await?;
    let mut dirs: std::collections::BTreeMap<&str, Vec<&str>> = Default::default();
    for o in &objects {
        if let Some((dir, _)) = o.key.rsplit_once('/') {
            dirs.entry(dir).or_default().push(&o.key);
        }
    }
    for (dir, keys) in dirs {
        // Only `<target>/<id>` directories are ours to judge.
        let Some((_, id)) = dir.split_once('/').filter(|(_, id)| !id.contains('/')) else { continue };
        let has_manifest = keys.iter().any(|k| k.ends_with(&format!("/{MANIFEST}")));
        if has_manifest || !run_is_dead(state, id, None, grace).await {
            continue;
        }
        for key in keys {
            store.delete(key).await?;
            tracing::info!(key = %store.locate(key), "Deleted an object of a snapshot that never completed.");
            removed += 1;
        }
    }
    Ok(removed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_carry_their_start_time() {
        let t = id_started_at("20261124T031500Z-3fa9").unwrap();
        assert_eq!(t.to_rfc3339(), "2026-11-24T03:15:00+00:00");
        assert!(id_started_at("notes").is_none());
    }

    #[tokio::test]
    async fn sweep_removes_only_dead_unfinished_snapshots() {
        let dir = tempfile::tempdir().unwrap();
        let state = State::open(&dir.path().join("state")).await.unwrap();
        let store = local::LocalStore::new(dir.path().join("store"));
        let put = |k: &'static str| {
            let p = dir.path().join("store").join(k);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(p, b"x").unwrap();
        };
        put("app/20200101T000000Z-0001/dump.pgdump.zst"); // old, no manifest: orphan
        put("app/20200101T000000Z-0002/dump.pgdump.zst"); // old, complete
        put("app/20200101T000000Z-0002/manifest.json");
        let young = format!("app/{}/dump.pgdump.zst", crate::snapshot::new_id(Utc::now()));
        let p = dir.path().join("store").join(&young);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(&p, b"x").unwrap(); // unknown but young: may be another host's
        put("notes/readme.txt"); // not ours

        let removed = sweep(&store, &state, std::time::Duration::from_secs(3600)).await.unwrap();
        assert_eq!(removed, 1);
        let left: Vec<String> = store.list("").await.unwrap().into_iter().map(|o| o.key).collect();
        assert!(!left.iter().any(|k| k.contains("-0001")), "{left:?}");
        assert!(left.contains(&"app/20200101T000000Z-0002/manifest.json".to_string()));
        assert!(left.contains(&young));
        assert!(left.contains(&"notes/readme.txt".to_string()));
    }
}
