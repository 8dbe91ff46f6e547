//! The optional checks of a restore drill: the target's own queries
//! (`[[targets.checks]]`) and `pg_amcheck` on the restored copy. A failing
//! check fails the drill (exit 2) and names itself; passing ones pass.

use crate::harness::cli::{Pgr, local_store_toml, target_toml, toml_string};
use crate::harness::data;
use crate::harness::pg::Cluster;
use crate::harness::shadow::{assert_staging_empty, scratch_dbs, shadow_url, template_name};

const PASSWORD: &str = "checks-test-pw";

fn pgr_with(live: &Cluster, shadow: &Cluster, extra: &str) -> Pgr {
    let pgr = Pgr::new();
    let target = target_toml(
        "app",
        &live.url("app", "app", PASSWORD),
        &format!("shadow_url = {}\nrestore_jobs = 2\namcheck = true\n{extra}", toml_string(&shadow_url(shadow))),
    );
    pgr.write_config(&format!("{}{}", local_store_toml(&pgr, ""), target));
    pgr
}

#[test]
fn user_checks_and_amcheck_decide_the_drill() {
    let live = Cluster::start();
    live.create_app_db("app", "app", PASSWORD);
    data::create_rich_schema(&live, "app", "app", 50);
    let shadow = Cluster::start();

    let passing = "checks = [{ name = \"has tables\", sql = \"SELECT count(*) > 0 FROM pg_class WHERE relkind = 'r' AND relnamespace = 'public'::regnamespace\", expect = \"true\" }]\n";
    let pgr = pgr_with(&live, &shadow, passing);
    pgr.run_json(&["snapshot"]).ok();
    let ok = pgr.run_json(&["verify", "latest"]);
    ok.ok();
    assert_eq!(ok.json()["ok"], true, "{}", ok.stdout);
    assert_eq!(ok.json()["mismatches"], serde_json::json!([]), "{}", ok.stdout);

    // Same store and state, a check that cannot hold: the drill fails and
    // says which check, with what it got.
    let failing = "checks = [{ name = \"answer\", sql = \"SELECT 41\", expect = \"42\" }]\n";
    let text = std::fs::read_to_string(pgr.config_path()).unwrap();
    let start = text.find("checks = [").expect("checks line");
    let end = start + text[start..].find('\n').unwrap() + 1;
    pgr.write_config(&format!("{}{failing}{}", &text[..start], &text[end..]));
    let bad = pgr.run_json(&["verify", "latest", "--full"]);
    assert_eq!(bad.code, 2, "a failing check must exit 2:\n{}\n{}", bad.stdout, bad.stderr);
    let mismatches = bad.json()["mismatches"].to_string();
    assert!(mismatches.contains("answer") && mismatches.contains("41") && mismatches.contains("42"), "{mismatches}");
    assert!(bad.stderr.contains("check `answer`"), "{}", bad.stderr);
    assert_eq!(scratch_dbs(&shadow), vec![template_name("app")], "scratch databases left on the shadow");
    assert_staging_empty(&pgr, "after a failed check");
}

/// Retention never prunes below `keep_verified_min` snapshots that passed a
/// drill, even when every other rule would delete them.
#[test]
fn prune_keeps_the_newest_verified_snapshot() {
    let live = Cluster::start();
    live.create_app_db("app", "app", PASSWORD);
    data::create_rich_schema(&live, "app", "app", 20);
    let shadow = Cluster::start();
    let retention =
        "retention = { keep_last = 1, keep_daily = 0, keep_weekly = 0, keep_monthly = 0, keep_verified_min = 1 }\n";
    let pgr = pgr_with(&live, &shadow, retention);
    let mut ids = Vec::new();
    for _ in 0..3 {
        let r = pgr.run_json(&["snapshot"]);
        r.ok();
        ids.push(r.json()["id"].as_str().unwrap().to_string());
    }
    // Verify the oldest: it becomes the only verified snapshot.
    pgr.run_json(&["verify", &ids[0]]).ok();
    let r = pgr.run_json(&["prune"]);
    r.ok();
    let v = r.json();
    assert_eq!(v["kept"], serde_json::json!([ids[2], ids[0]]), "{v}");
    assert_eq!(v["deleted"], serde_json::json!([ids[1]]), "{v}");
    let listed: Vec<String> = pgr
        .run_json(&["snapshots"])
        .json()
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["id"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(listed, vec![ids[2].clone(), ids[0].clone()]);
}

/// The template follows the newest verified snapshot: verifying a newer
/// snapshot replaces it, and re-verifying an older one restores for real
/// without taking the template back.
#[test]
fn template_follows_the_newest_verified_snapshot() {
    let live = Cluster::start();
    live.create_app_db("app", "app", PASSWORD);
    data::create_rich_schema(&live, "app", "app", 20);
    let shadow = Cluster::start();
    let pgr = pgr_with(&live, &shadow, "");
    let snap = |pgr: &Pgr| {
        let r = pgr.run_json(&["snapshot"]);
        r.ok();
        r.json()["id"].as_str().unwrap().to_string()
    };
    let method = |pgr: &Pgr, id: &str| {
        let r = pgr.run_json(&["verify", id]);
        r.ok();
        r.json()["method"].as_str().unwrap().to_string()
    };
    let old = snap(&pgr);
    assert_eq!(method(&pgr, &old), "restore");
    assert_eq!(method(&pgr, &old), "template_clone");
    let new = snap(&pgr);
    assert_eq!(method(&pgr, &new), "restore", "a new snapshot cannot come from the old template");
    assert_eq!(method(&pgr, &new), "template_clone", "the newer verified snapshot did not become the template");
    assert_eq!(method(&pgr, &old), "restore", "the template should hold the newer snapshot");
    assert_eq!(method(&pgr, &new), "template_clone", "re-verifying an older snapshot took the template back");
    assert_eq!(scratch_dbs(&shadow), vec![template_name("app")]);
}
