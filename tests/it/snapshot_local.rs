//! Snapshots to the local store: the same exact round trip as on S3, and
//! manifest row counts taken in the dump's own MVCC snapshot while another
//! session keeps inserting.

use crate::harness::cli::{Pgr, local_store_path, local_store_toml, target_toml};
use crate::harness::data;
use crate::harness::pg::Cluster;
use crate::roundtrip::{assert_manifest_counts, verify_plain_snapshot};
use serde_json::Value;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

const PASSWORD: &str = "local-round-trip-pw";

fn read_manifest(pgr: &Pgr, target: &str, id: &str) -> Value {
    let path = local_store_path(pgr).join(target).join(id).join("manifest.json");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("read {path:?}: {e}"));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{path:?} is not JSON ({e}): {text}"))
}

#[test]
fn round_trip_local() {
    let c = Cluster::start();
    c.create_app_db("app", "app", PASSWORD);
    data::create_rich_schema(&c, "app", "app", 3000);
    let pgr = Pgr::new();
    pgr.write_config(&format!(
        "{}{}",
        local_store_toml(&pgr, ""),
        target_toml("app", &c.url("app", "app", PASSWORD), "")
    ));
    let run = pgr.run_json(&["snapshot"]);
    run.ok();
    let reported = run.json();
    let id = reported["id"].as_str().expect("id");
    let expected = local_store_path(&pgr).join("app").join(id).join("dump.pgdump.zst");
    assert_eq!(PathBuf::from(reported["key"].as_str().expect("key")), expected, "key of a local snapshot");
    let manifest = read_manifest(&pgr, "app", id);
    verify_plain_snapshot(&c, "app", "restored", &expected, &reported, &manifest);

    let list = pgr.run_json(&["snapshots"]);
    list.ok();
    let list = list.json();
    assert_eq!(list.as_array().map(|a| a.len()), Some(1), "snapshots: {list}");
    assert_eq!(list[0]["id"], id);
    assert_eq!(list[0]["sha256"], reported["sha256"]);
}

#[test]
fn manifest_row_counts_match_dump_under_concurrent_inserts() {
    let c = Cluster::start();
    c.create_app_db("app", "app", PASSWORD);
    c.psql(
        "app",
        "SET ROLE app;
         CREATE TABLE events (id bigserial PRIMARY KEY, kind text NOT NULL, payload text);
         INSERT INTO events (kind, payload)
         SELECT 'k' || (i % 10), repeat(md5(i::text), 4) FROM generate_series(1, 320000) i;
         CREATE TABLE quiet (n int); INSERT INTO quiet SELECT generate_series(1, 10);",
    );
    let pgr = Pgr::new();
    pgr.write_config(&format!(
        "{}{}",
        local_store_toml(&pgr, ""),
        target_toml("app", &c.url("app", "app", PASSWORD), "")
    ));

    let done = AtomicBool::new(false);
    let batches = AtomicU64::new(0);
    let run = std::thread::scope(|s| {
        // Another session commits small batches until the snapshot ends.
        s.spawn(|| {
            while !done.load(Ordering::SeqCst) {
                c.psql(
                    "app",
                    "INSERT INTO events (kind, payload) SELECT 'live', md5(random()::text) FROM generate_series(1, 50)",
                );
                batches.fetch_add(1, Ordering::SeqCst);
            }
        });
        crate::harness::wait_for("the inserter to commit", Duration::from_secs(30), Duration::from_millis(10), || {
            (batches.load(Ordering::SeqCst) >= 1).then_some(())
        });
        let run = pgr.run_json(&["snapshot"]);
        done.store(true, Ordering::SeqCst);
        run
    });
    run.ok();
    let before = batches.load(Ordering::SeqCst);
    assert!(before >= 3, "only {before} insert batches ran: the test did not overlap the snapshot");
    let reported = run.json();
    let id = reported["id"].as_str().expect("id");
    let manifest = read_manifest(&pgr, "app", id);

    let stored = local_store_path(&pgr).join("app").join(id).join("dump.pgdump.zst");
    data::restore_stored_zst(&c, &stored, "restored");
    assert_manifest_counts(&c, "restored", &manifest);

    let counted = |name: &str| -> u64 {
        manifest["tables"]
            .as_array()
            .unwrap()
            .iter()
            .find(|t| t["name"] == name)
            .and_then(|t| t["rows"].as_u64())
            .unwrap_or_else(|| panic!("{name} missing in manifest: {manifest}"))
    };
    // Rows committed before the snapshot are in it; rows committed while it
    // ran are not (they are in the live table): the counts really come from
    // the dump's snapshot, not from a later count.
    let in_dump = counted("events");
    let live_now = data::row_count(&c, "app", "public", "events");
    assert!(in_dump > 320000, "dump missed rows committed before it started: {in_dump}");
    assert!(live_now > in_dump, "no insert committed after the snapshot ({live_now} live, {in_dump} dumped)");
    assert_eq!(counted("quiet"), 10);
}
