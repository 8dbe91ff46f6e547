//! A real Payload CMS 3 project (tests/fixtures/payload) after a release:
//! rehearse → approve → apply, then a developer adds a migration.
//!
//! - CLI: `rehearse` with no flag passes. The newest snapshot is the
//!   pre-release one, which lacks what the release applied, and Payload's
//!   CLI cannot replay that apart from the plan, so the rehearsal takes a
//!   fresh snapshot by itself and says so (`fresh_snapshot` and a note in
//!   the report, a log line on stderr). The rehearsal after it uses that
//!   snapshot as it is.
//! - Daemon: the rehearsal the daemon starts when the migration file
//!   appears passes the same way, with no snapshot schedule to help it.

use crate::harness::cli::local_store_path;
use crate::harness::daemon::{daemon_toml, start};
use crate::harness::http;
use crate::harness::migrations::*;
use crate::harness::payload::*;
use crate::harness::release::*;
use crate::harness::wait_for;
use serde_json::Value;
use std::time::Duration;

const EXCERPT: &str = "20261124_100300_posts_excerpt";

/// A payload rig whose slug migration was rehearsed, approved and released
/// to live; returns the release's pre-release snapshot id.
fn released_rig(extra_config: impl Fn(&Rig)) -> (Rig, String) {
    let rig = payload_rig();
    as_app(
        &rig.live,
        "app",
        "INSERT INTO posts (title, body) SELECT 'post ' || g, 'text' FROM generate_series(1, 50) g",
    );
    add(&rig, "migrations", SLUG);
    extra_config(&rig);
    rehearse_and_approve(&rig);
    let r = apply(&rig);
    r.ok();
    let rel = r.json();
    assert_eq!(rel["outcome"], "applied", "{rel:#}");
    assert_eq!(history(&rig), [format!("{INITIAL}:1"), format!("{SLUG}:2")], "live's history after the release");
    let pre = rel["pre_snapshot_id"].as_str().expect("pre_snapshot_id").to_string();
    (rig, pre)
}

/// The fresh snapshot's reason names the pre-release snapshot and what live applied since.
fn assert_fresh_because_of(report: &Value, pre: &str) {
    let why = report["fresh_snapshot"].as_str().unwrap_or_else(|| panic!("no fresh_snapshot: {report:#}"));
    assert!(why.contains(pre) && why.contains(SLUG), "the reason names the pre-release snapshot and {SLUG}: {why}");
    assert_ne!(report["snapshot_id"], pre, "rehearsed on the pre-release snapshot: {report:#}");
    assert_eq!(report["catch_up"], serde_json::json!([]), "a fresh snapshot needs no catching up: {report:#}");
    let note = report["notes"][0].as_str().unwrap_or_default();
    assert!(
        note.contains("fresh snapshot") && note.contains(report["snapshot_id"].as_str().unwrap()),
        "the first note says what the rehearsal did: {report:#}"
    );
}

#[test]
fn after_a_payload_release_the_next_rehearsal_takes_its_own_snapshot_and_passes() {
    let (rig, pre) = released_rig(|rig| configure(rig, ""));
    add(&rig, "migrations-extra", EXCERPT);

    let r = rig.rehearse(&[]);
    r.ok();
    let report = r.json();
    assert_eq!(report["ok"], true, "{}", r.stdout);
    assert_eq!(by_name(&report, EXCERPT)["status"], "applied", "{report:#}");
    assert_eq!(report["reversible"], true, "{report:#}");
    assert_fresh_because_of(&report, &pre);
    assert!(r.stderr.contains("Taking a fresh snapshot"), "the CLI says it takes a snapshot:\n{}", r.stderr);
    let fresh = report["snapshot_id"].as_str().unwrap().to_string();
    assert_eq!(history(&rig), [format!("{INITIAL}:1"), format!("{SLUG}:2")], "live's history unchanged");

    // That snapshot holds live's history: the next rehearsal uses it as it is.
    let again = rig.rehearse(&[]);
    again.ok();
    let again = again.json();
    assert_eq!(again["snapshot_id"], fresh.as_str(), "{again:#}");
    assert!(again["fresh_snapshot"].is_null(), "no second snapshot: {again:#}");
    assert_eq!(again["ok"], true, "{again:#}");
}

#[test]
fn after_a_payload_release_the_daemons_file_change_rehearsal_passes() {
    let port = http::free_port();
    let (rig, pre) = released_rig(|rig| {
        configure(rig, "");
        let text = std::fs::read_to_string(rig.pgr.config_path()).unwrap();
        rig.pgr.write_config(&format!("{text}{}", daemon_toml(port, None)));
    });
    let _daemon = start(&rig.pgr, port);
    add(&rig, "migrations-extra", EXCERPT);

    let id = wait_for(
        "the daemon's rehearsal of the new plan",
        Duration::from_secs(240),
        Duration::from_millis(500),
        || {
            let st = rig.pgr.run_json(&["status"]).json();
            let r = &st["last_rehearsal"];
            if r["current_plan"] != true || r["status"] == "running" {
                return None;
            }
            assert_eq!(r["status"], "passed", "the daemon's rehearsal after the release: {st:#}");
            Some(r["id"].as_str().unwrap().to_string())
        },
    );
    let path = local_store_path(&rig.pgr).join("app/rehearsals").join(&id).join("report.json");
    let report: Value =
        serde_json::from_slice(&std::fs::read(&path).unwrap_or_else(|e| panic!("{path:?}: {e}"))).unwrap();
    assert_eq!(by_name(&report, EXCERPT)["status"], "applied", "{report:#}");
    assert_fresh_because_of(&report, &pre);
}
