//! Releases of a `command` migration source (a shell-and-psql "tool" with
//! its own history table, as in `rehearse_command`): the configured `apply`
//! runs against live with the target's timeouts, its success is recorded,
//! and a failure after the tool committed part of its work is restored to
//! the pre-release state (the tool commits as it goes, so only a restore
//! can take live back).

use crate::harness::cli::toml_string;
use crate::harness::migrations::*;
use crate::harness::release::*;
use crate::rehearse_command::{APPLY, PENDING};

#[test]
fn a_command_source_is_released_and_a_failing_run_restored() {
    let rig = Rig::start(
        "command",
        "CREATE TABLE orders (id int PRIMARY KEY, ref text); INSERT INTO orders SELECT g, 'o' || g FROM generate_series(1, 10000) g;",
    );
    let extra = format!(
        "migrations = {{ kind = \"command\", dir = {}, pending = {}, apply = {} }}\n{}",
        toml_string(&rig.dir.display().to_string()),
        toml_string(PENDING),
        toml_string(APPLY),
        release_config(&rig, "")
    );
    rig.pgr.write_config(&rig.pgr_config_with(&extra));
    std::fs::write(rig.dir.join("001_add_note.sql"), "ALTER TABLE orders ADD COLUMN note text;\n").unwrap();
    // The tool's NOTICEs on standard error are not pending migrations.
    let listed = |rig: &Rig| rig.pgr.run_json(&["status"]).json()["pending"].as_array().unwrap().len();
    assert_eq!((listed(&rig), listed(&rig)), (1, 1));
    rehearse_and_approve(&rig);
    let r = apply(&rig);
    r.ok();
    assert_eq!(r.json()["outcome"], "applied");
    assert_eq!(rows(&rig.live, "app", "SELECT name FROM tool_log"), ["001_add_note.sql"]);
    assert_eq!(rig.live.psql("app", "SELECT count(*) FROM information_schema.columns WHERE column_name = 'note'"), "1");

    // 002 commits, 003 fails on live only (a duplicate added after the rehearsal).
    std::fs::write(rig.dir.join("002_add_flag.sql"), "ALTER TABLE orders ADD COLUMN flag int;\n").unwrap();
    std::fs::write(rig.dir.join("003_unique_ref.sql"), "CREATE UNIQUE INDEX orders_ref ON orders (ref);\n").unwrap();
    rehearse_and_approve(&rig);
    as_app(&rig.live, "app", "INSERT INTO orders VALUES (10001, 'o1')");
    let before = live_fingerprint(&rig);
    let r = apply(&rig);
    r.expect_code(1);
    let rel = r.json();
    assert_eq!(rel["outcome"], "restored", "{rel:#}");
    assert!(rel["reason"].as_str().unwrap().contains("could not create unique index"), "{rel:#}");
    assert_eq!(live_fingerprint(&rig), before, "live is back in its pre-release state");
    let failed = rel["failed_database"].as_str().unwrap();
    assert_eq!(
        rows(&rig.live, failed, "SELECT name FROM tool_log ORDER BY name"),
        ["001_add_note.sql", "002_add_flag.sql"]
    );
}
