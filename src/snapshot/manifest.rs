//! The snapshot manifest: `manifest.json`, written last. A snapshot without a
//! manifest does not exist. Readers accept unknown fields and default missing
//! optional ones, so older pgrehearse versions can list newer snapshots.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

pub const FORMAT_VERSION: u32 = 1;

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Manifest {
    pub format_version: u32,
    pub id: String,
    pub target: String,
    pub database: String,
    pub server_version: String,
    #[serde(default)]
    pub server_version_num: u32,
    pub pg_dump_version: String,
    pub started_at: DateTime<Utc>,
    pub finished_at: DateTime<Utc>,
    #[serde(default)]
    pub duration_ms: u64,
    /// Bytes pg_dump wrote (the `-Fc -Z0` archive).
    pub bytes_raw: u64,
    /// Bytes stored (compressed, and encrypted when configured).
    pub bytes_stored: u64,
    /// SHA-256 of the stored bytes, hex.
    pub sha256: String,
    pub compression: Compression,
    #[serde(default)]
    pub encryption: Option<Encryption>,
    /// The dump object, relative to the store.
    pub dump: ObjectRef,
    #[serde(default)]
    pub globals: Option<ObjectRef>,
    pub reason: super::Reason,
    /// The migration history at dump time, read in the dump's MVCC snapshot.
    #[serde(default)]
    pub migrations: Option<MigrationState>,
    /// Exact row counts, read in the dump's MVCC snapshot.
    #[serde(default)]
    pub tables: Vec<TableCount>,
    /// `pg_database_size` when the dump started (restore staging estimate).
    #[serde(default)]
    pub database_size: u64,
    /// `pg_control_system().system_identifier` of the dumped cluster.
    #[serde(default)]
    pub system_identifier: String,
    /// The exported snapshot id pg_dump used.
    #[serde(default)]
    pub mvcc_snapshot: String,
    /// Set while a release may need this snapshot for recovery; retention
    /// never deletes a pinned snapshot.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pinned_by: Option<String>,
    /// Filled in by restore drills.
    #[serde(default)]
    pub verification: Option<serde_json::Value>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Compression {
    pub algorithm: String,
    pub level: i32,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Encryption {
    pub scheme: String,
    pub recipients: Vec<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ObjectRef {
    pub key: String,
    pub bytes: u64,
    pub sha256: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct MigrationState {
    pub kind: crate::config::MigrationKind,
    pub table: String,
    /// Versions (sqlx, diesel) or names (payload), in applied order.
    pub applied: Vec<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct TableCount {
    pub schema: String,
    pub name: String,
    pub rows: i64,
}

impl Manifest {
    pub fn verified_at(&self) -> Option<String> {
        self.verification.as_ref()?.get("verified_at")?.as_str().map(str::to_string)
    }
}
