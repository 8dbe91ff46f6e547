//! Retention on a synthetic history: one real snapshot in a local store is
//! cloned into many snapshots with chosen times, and `prune` must keep and
//! delete exactly the expected ones; a failing snapshot run makes `prune`
//! refuse (exit 75) and delete nothing.
//!
//! Policy under test: keep_last = 2, keep_daily = 3, keep_weekly = 2,
//! keep_monthly = 2; buckets are UTC days, ISO weeks and calendar months;
//! each rule keeps the newest snapshot of each of its N most recent buckets.

use crate::harness::cli::{Pgr, local_store_path, local_store_toml, target_toml};
use crate::harness::data;
use crate::harness::pg::Cluster;
use serde_json::Value;
use std::path::Path;

const PASSWORD: &str = "prune-test-pw";
const RETENTION: &str = "retention = { keep_last = 2, keep_daily = 3, keep_weekly = 2, keep_monthly = 2 }";

/// (name, started_at), newest first. Comments say which rule keeps it.
/// 2024-06-17 is a Monday: ISO week 25 is 06-17..06-23, week 24 06-10..06-16.
const HISTORY: &[(&str, &str, bool)] = &[
    ("s01", "2024-06-20T15:00:00Z", true), // last, daily 06-20, weekly W25, monthly June
    ("s02", "2024-06-20T09:00:00Z", true), // last
    ("s03", "2024-06-20T03:00:00Z", false), // older on 06-20
    ("s04", "2024-06-19T22:00:00Z", true), // daily 06-19 (still the 19th in UTC)
    ("s05", "2024-06-19T03:00:00Z", false),
    ("s06", "2024-06-17T03:00:00Z", true), // daily 06-17 (third day with snapshots)
    ("s07", "2024-06-16T23:30:00Z", true), // weekly W24 (Sunday night in UTC)
    ("s08", "2024-06-10T03:00:00Z", false), // older in W24
    ("s09", "2024-06-09T03:00:00Z", false), // W23: beyond keep_weekly
    ("s10", "2024-05-31T03:00:00Z", true), // monthly May
    ("s11", "2024-05-02T03:00:00Z", false),
    ("s12", "2024-04-30T03:00:00Z", false), // April: beyond keep_monthly
    ("s13", "2024-03-15T03:00:00Z", false),
];

/// A snapshot id in pgrehearse's format (`20240620T150000Z-xxxx`) for a time.
fn id_for(started_at: &str, n: usize) -> String {
    let compact: String = started_at.chars().filter(|c| c.is_ascii_alphanumeric()).collect();
    format!("{compact}-{:04x}", 0xa000 + n)
}

/// Plus one minute, same day (all HISTORY times are before 23:59).
fn finished(started_at: &str) -> String {
    let (head, rest) = started_at.split_at(14); // "2024-06-20T15:"
    let minute: u32 = rest[..2].parse().unwrap();
    format!("{head}{:02}{}", minute + 1, &rest[2..])
}

/// Copies the real snapshot's directory to `id` with the manifest's id and
/// times replaced.
fn clone_snapshot(target_dir: &Path, real_id: &str, id: &str, started_at: &str) {
    let (src, dst) = (target_dir.join(real_id), target_dir.join(id));
    std::fs::create_dir_all(&dst).unwrap();
    for e in std::fs::read_dir(&src).unwrap().flatten() {
        std::fs::copy(e.path(), dst.join(e.file_name())).unwrap();
    }
    let path = dst.join("manifest.json");
    let mut m: Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    m["id"] = id.into();
    m["started_at"] = started_at.into();
    m["finished_at"] = finished(started_at).into();
    std::fs::write(&path, serde_json::to_vec_pretty(&m).unwrap()).unwrap();
}

fn ids(v: &Value, field: &str) -> Vec<String> {
    let mut out: Vec<String> = v[field]
        .as_array()
        .unwrap_or_else(|| panic!("prune --json has no {field}[]: {v}"))
        .iter()
        .map(|x| x.as_str().expect("ids are strings").to_string())
        .collect();
    out.sort();
    out
}

fn on_disk(target_dir: &Path) -> Vec<String> {
    let mut out: Vec<String> = std::fs::read_dir(target_dir)
        .unwrap()
        .flatten()
        .filter(|e| e.path().join("manifest.json").exists())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    out.sort();
    out
}

#[test]
fn prune_keeps_exactly_the_policy_and_refuses_after_failure() {
    let c = Cluster::start();
    c.create_app_db("app", "app", PASSWORD);
    data::create_rich_schema(&c, "app", "app", 50);
    let pgr = Pgr::new();
    let config = |live_url: &str| format!("{}{}", local_store_toml(&pgr, ""), target_toml("app", live_url, RETENTION));
    pgr.write_config(&config(&c.url("app", "app", PASSWORD)));
    let run = pgr.run_json(&["snapshot"]);
    run.ok();
    let real_id = run.json()["id"].as_str().expect("id").to_string();

    // Replace the real snapshot by a synthetic history of clones.
    let target_dir = local_store_path(&pgr).join("app");
    let history: Vec<(String, &str, bool)> =
        HISTORY.iter().enumerate().map(|(n, (_, at, keep))| (id_for(at, n), *at, *keep)).collect();
    for (id, at, _) in &history {
        clone_snapshot(&target_dir, &real_id, id, at);
    }
    std::fs::remove_dir_all(target_dir.join(&real_id)).unwrap();
    let all: Vec<String> = {
        let mut v: Vec<String> = history.iter().map(|h| h.0.clone()).collect();
        v.sort();
        v
    };
    let expect_kept: Vec<String> =
        all.iter().filter(|id| history.iter().any(|h| &h.0 == *id && h.2)).cloned().collect();
    let expect_deleted: Vec<String> = all.iter().filter(|id| !expect_kept.contains(id)).cloned().collect();

    let listed = pgr.run_json(&["snapshots"]);
    listed.ok();
    let listed: Vec<String> =
        listed.json().as_array().unwrap().iter().map(|s| s["id"].as_str().unwrap().to_string()).collect();
    let newest_first: Vec<String> = history.iter().map(|h| h.0.clone()).collect();
    assert_eq!(listed, newest_first, "snapshots --json does not list the history newest first");

    let dry = pgr.run_json(&["prune", "--dry-run"]);
    dry.ok();
    let dry = dry.json();
    assert_eq!(ids(&dry, "kept"), expect_kept, "dry-run kept");
    assert_eq!(ids(&dry, "deleted"), expect_deleted, "dry-run deleted");
    assert_eq!(on_disk(&target_dir), all, "--dry-run deleted something");

    let real = pgr.run_json(&["prune"]);
    real.ok();
    let real = real.json();
    assert_eq!(ids(&real, "kept"), expect_kept, "prune kept");
    assert_eq!(ids(&real, "deleted"), expect_deleted, "prune deleted");
    assert_eq!(on_disk(&target_dir), expect_kept, "store content after prune");
    for id in &expect_deleted {
        assert!(!target_dir.join(id).exists(), "{id} still has a directory after prune");
    }

    // Older snapshots that the policy would delete, then a failing run:
    // prune must refuse and leave everything in place.
    for (n, at) in ["2023-01-10T03:00:00Z", "2023-02-10T03:00:00Z"].iter().enumerate() {
        clone_snapshot(&target_dir, &expect_kept[0], &id_for(at, 100 + n), at);
    }
    let before = on_disk(&target_dir);
    pgr.write_config(&config(&c.url("no_such_db", "app", PASSWORD)));
    let failed = pgr.run(&["snapshot"]);
    assert_ne!(failed.code, 0, "a snapshot of a missing database succeeded:\n{}", failed.stderr);
    let refused = pgr.run_json(&["prune"]);
    refused.expect_code(75);
    assert_eq!(on_disk(&target_dir), before, "prune deleted snapshots after a failed run");
}
