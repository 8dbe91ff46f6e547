//! Where snapshots live: the [`Store`] trait with a local-directory and an S3
//! implementation and the object-key layout.
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
mod s3_upload;

use async_trait::async_trait;
use bytes::Bytes;
use chrono::{DateTime, Utc};
use tokio::io::AsyncRead;

use crate::config::{StoreConfig, StoreKind};
use crate::error_class::{Class, Classify};

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
