//! The checks every round-trip test makes on a snapshot it read back with an
//! independent client: stored bytes match the reported and manifested
//! SHA-256 and size, the object decompresses with `zstd -d` into a pg_dump
//! archive, and `pg_restore` of it equals the source database exactly.

use crate::harness::data;
use crate::harness::pg::Cluster;
use crate::harness::sha256_file;
use serde_json::Value;
use std::path::Path;

/// `stored`: the object as stored (downloaded or read from disk).
/// `reported`: `snapshot --json` output; `manifest`: its manifest.json.
/// Restores into a new database `restored` on `c` and compares with `source`.
pub fn verify_plain_snapshot(
    c: &Cluster,
    source: &str,
    restored: &str,
    stored: &Path,
    reported: &Value,
    manifest: &Value,
) {
    let sha = sha256_file(stored);
    let size = std::fs::metadata(stored).unwrap().len();
    assert_eq!(reported["sha256"].as_str(), Some(sha.as_str()), "snapshot --json sha256 != stored bytes");
    assert_eq!(manifest["sha256"].as_str(), Some(sha.as_str()), "manifest sha256 != stored bytes");
    assert_eq!(reported["bytes_stored"].as_u64(), Some(size), "snapshot --json bytes_stored");
    assert_eq!(manifest["bytes_stored"].as_u64(), Some(size), "manifest bytes_stored");
    assert_eq!(manifest["id"], reported["id"], "manifest id");
    assert_eq!(manifest["target"], reported["target"], "manifest target");
    assert_eq!(manifest["database"].as_str(), Some(source), "manifest database");
    assert_eq!(crate::harness::file_head(stored, 4), [0x28, 0xB5, 0x2F, 0xFD], "stored object is not zstd");

    let raw = data::restore_stored_zst(c, stored, restored);
    assert_eq!(reported["bytes_raw"].as_u64(), Some(raw), "snapshot --json bytes_raw != decompressed size");
    assert_eq!(manifest["bytes_raw"].as_u64(), Some(raw), "manifest bytes_raw != decompressed size");

    data::assert_same_database(c, source, restored);
    assert_manifest_counts(c, restored, manifest);
}

/// The manifest's `tables[]` lists exactly the restored database's tables,
/// each with the row count the restored dump really holds.
pub fn assert_manifest_counts(c: &Cluster, restored: &str, manifest: &Value) {
    let entries = manifest["tables"].as_array().unwrap_or_else(|| panic!("manifest has no tables[]: {manifest}"));
    let mut listed: Vec<(String, String)> = entries
        .iter()
        .map(|t| (t["schema"].as_str().unwrap().to_string(), t["name"].as_str().unwrap().to_string()))
        .collect();
    listed.sort();
    assert_eq!(listed, data::tables(c, restored), "manifest tables[] != tables in the dump");
    for t in entries {
        let (s, n) = (t["schema"].as_str().unwrap(), t["name"].as_str().unwrap());
        assert_eq!(
            t["rows"].as_u64(),
            Some(data::row_count(c, restored, s, n)),
            "manifest rows of {s}.{n} != rows in the restored dump"
        );
    }
}
