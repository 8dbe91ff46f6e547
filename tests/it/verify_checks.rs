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
