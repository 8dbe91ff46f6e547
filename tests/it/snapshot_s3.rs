//! Snapshots to S3 (moto), read back with the AWS CLI and restored with
//! `pg_restore`: the stored bytes are exactly what the manifest says and
//! restore to an identical database, with either checksum setting of the
//! SDK (one S3 server stores aws-chunked framing as data when the SDK's
//! default checksums meet a streamed body: a 200 OK proves nothing).

use crate::harness::cli::{Pgr, s3_store_toml, target_toml};
use crate::harness::pg::Cluster;
use crate::harness::s3::S3Server;
use crate::harness::{data, sha256_file, zstd_decompress};
use crate::roundtrip::verify_plain_snapshot;

const PASSWORD: &str = "s3-round-trip-pw";

fn round_trip(checksums: &str) {
    let c = Cluster::start();
    c.create_app_db("app", "app", PASSWORD);
    data::create_rich_schema(&c, "app", "app", 2000);
    // Enough incompressible data for a multipart upload of several parts.
    data::create_blob_table(&c, "app", "app", 24);
    let s3 = S3Server::start();
    s3.create_bucket("snaps");

    let pgr = Pgr::new();
    pgr.write_config(&format!(
        "{}{}",
        s3_store_toml(&pgr, &s3.endpoint(), "snaps", &format!("checksums = \"{checksums}\"")),
        target_toml("app", &c.url("app", "app", PASSWORD), "")
    ));
    let run = pgr.run_json(&["snapshot"]);
    run.ok();
    let reported = run.json();
    let id = reported["id"].as_str().expect("id").to_string();
    assert_eq!(reported["target"], "app");
    let dump_key = format!("pgrehearse/app/{id}/dump.pgdump.zst");
    let manifest_key = format!("pgrehearse/app/{id}/manifest.json");
    assert_eq!(reported["key"].as_str(), Some(dump_key.as_str()), "key in snapshot --json");

    let objects: Vec<String> = s3.list_objects("snaps", "pgrehearse/").into_iter().map(|o| o.0).collect();
    assert!(objects.contains(&dump_key) && objects.contains(&manifest_key), "objects: {objects:?}");
    assert!(s3.list_multipart_uploads("snaps").is_empty(), "a multipart upload was left open");
    // ~24 MB of incompressible data: the streamed multipart path (the one
    // where checksums and aws-chunked framing can corrupt data) was taken.
    let etag = s3.head("snaps", &dump_key)["ETag"].as_str().unwrap_or_default().to_string();
    assert!(etag.contains('-'), "the dump was not uploaded in parts (ETag {etag})");

    let dir = tempfile::tempdir().unwrap();
    let stored = dir.path().join("dump.pgdump.zst");
    s3.download("snaps", &dump_key, &stored);
    let manifest = s3.get_json("snaps", &manifest_key);
    verify_plain_snapshot(&c, "app", "restored", &stored, &reported, &manifest);

    // The listing shows it with the same checksum.
    let list = pgr.run_json(&["snapshots"]);
    list.ok();
    let list = list.json();
    let entry = list
        .as_array()
        .expect("snapshots --json is an array")
        .iter()
        .find(|s| s["id"] == id.as_str())
        .unwrap_or_else(|| panic!("snapshot {id} not listed: {list}"));
    assert_eq!(entry["sha256"], reported["sha256"]);
    assert_eq!(entry["bytes_stored"], reported["bytes_stored"]);
    assert!(entry["verified_at"].is_null(), "never verified, yet verified_at = {}", entry["verified_at"]);

    // `download latest` gives back the plain archive, byte for byte what
    // `zstd -d` makes of the stored object.
    let plain = dir.path().join("by-zstd.pgdump");
    zstd_decompress(&stored, &plain);
    let out = dir.path().join("downloaded.pgdump");
    pgr.run(&["download", "latest", "-o", out.to_str().unwrap()]).ok();
    assert_eq!(sha256_file(&out), sha256_file(&plain), "download output != zstd -d of the stored object");
}

#[test]
fn round_trip_s3_checksums_when_required() {
    round_trip("when_required");
}

#[test]
fn round_trip_s3_checksums_when_supported() {
    round_trip("when_supported");
}
