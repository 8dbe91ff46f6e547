//! What a rehearsal (and `status`) must flag, each on a live cluster and a
//! SECOND cluster as the shadow server, with a sqlx project:
//!
//! - (a) drift: live migrated by "sqlx" (its SQL run with psql, its history
//!   rows written as sqlx writes them, SHA-384 computed here); an applied
//!   file edited afterwards is drift `changed` (status exit 2, rehearsal
//!   exit 2 with a drift problem); a history row with `success = false` is
//!   drift `failed`.
//! - (b) a down that forgets the trigger its up created fails that
//!   migration's reversibility (`differs`) with a diff naming the trigger
//!   (exit 2); the migrations around it, whose downs are right, are judged
//!   `reversible` all the same.
//! - (c) catch-up: live applied a migration after the snapshot; the
//!   rehearsal replays it on the copy first and the plan holds only the rest.
//! - (d) lint: `DROP COLUMN` and a volatile default on a non-empty table are
//!   findings with the table's rows and the measured rewrite; warnings exit
//!   0, a rule in `lint.deny` exits 2.
//! - (e) seeds run twice: an `ON CONFLICT DO NOTHING` seed is idempotent, a
//!   plain INSERT is not and its table is named.
//! - (f) a failing migration: exit 2, the file's line and statement, later
//!   migrations not run, earlier ones rolled back with the plan's single
//!   transaction (also on the kept copy), live unchanged.

use crate::harness::migrations::*;
use crate::harness::wait_for;
use serde_json::{Value, json};
use std::time::Duration;

/// 5000 rows of `orders`: small, but not empty (lint weighs by rows).
const ORDERS_SQL: &str = "CREATE TABLE orders (id integer PRIMARY KEY, amount integer NOT NULL, note text);
     INSERT INTO orders SELECT i, i % 100, 'note ' || i FROM generate_series(1, 5000) i;";

fn orders_rig() -> Rig {
    Rig::start("sqlx", ORDERS_SQL)
}

fn drift_of(v: &Value) -> Vec<Value> {
    v["drift"].as_array().unwrap_or_else(|| panic!("no drift[] in {v:#}")).clone()
}

#[test]
fn drift_changed_file_and_failed_row() {
    let rig = orders_rig();
    let up1 =
        rig.sqlx("1", "create_things", "CREATE TABLE things (id integer PRIMARY KEY);\n", Some("DROP TABLE things;\n"));
    let up2 = rig.sqlx(
        "2",
        "add_thing_name",
        "ALTER TABLE things ADD COLUMN name text;\n",
        Some("ALTER TABLE things DROP COLUMN name;\n"),
    );
    rig.sqlx(
        "3",
        "add_thing_size",
        "ALTER TABLE things ADD COLUMN size integer;\n",
        Some("ALTER TABLE things DROP COLUMN size;\n"),
    );
    sqlx_apply(&rig.live, "app", &up1, "1", "create_things");
    sqlx_apply(&rig.live, "app", &up2, "2", "add_thing_name");

    let st = rig.status();
    st.ok();
    let v = st.json();
    let applied: Vec<&str> = v["applied"].as_array().unwrap().iter().map(|a| a["version"].as_str().unwrap()).collect();
    assert_eq!(applied, ["1", "2"], "status applied: {v:#}");
    assert_eq!(v["pending"].as_array().unwrap().len(), 1, "status pending: {v:#}");
    assert_eq!(drift_of(&v), Vec::<Value>::new(), "our sqlx rows must match pgrehearse's checksums exactly: {v:#}");
    rig.snapshot();

    // Edit an applied file.
    let recorded = sha384_hex(&up1);
    std::fs::write(&up1, "CREATE TABLE things (id integer PRIMARY KEY);\n-- edited after it was applied\n").unwrap();
    let current = sha384_hex(&up1);
    let st = rig.status();
    st.expect_code(2);
    let v = st.json();
    assert_eq!(
        drift_of(&v),
        vec![json!({ "kind": "changed", "version": "1", "recorded": recorded, "current": current })],
        "status drift after editing 1: {v:#}"
    );
    let r = rig.rehearse(&["--no-reverse"]);
    r.expect_code(2);
    let report = r.json();
    assert_eq!(report["ok"], false, "{}", r.stdout);
    assert!(
        report["problems"].as_array().unwrap().iter().any(|p| {
            let p = p.as_str().unwrap_or_default().to_lowercase();
            p.contains("drift") && p.contains("migration 1 ")
        }),
        "problems do not mention the drift of migration 1: {}",
        report["problems"]
    );
    assert_eq!(report["drift"][0]["kind"], "changed", "{}", r.stdout);
    assert_eq!(versions(&report), ["3"], "the plan: {}", r.stdout);

    // Restore the file; a failed history row instead.
    std::fs::write(&up1, "CREATE TABLE things (id integer PRIMARY KEY);\n").unwrap();
    rig.live.psql("app", "UPDATE _sqlx_migrations SET success = false WHERE version = 2");
    let st = rig.status();
    st.expect_code(2);
    let v = st.json();
    assert_eq!(drift_of(&v), vec![json!({ "kind": "failed", "version": "2" })], "status drift of a failed row: {v:#}");
}

#[test]
fn down_that_forgets_a_trigger_fails_reversibility() {
    let rig = Rig::start(
        "sqlx",
        &format!(
            "{ORDERS_SQL}
             CREATE FUNCTION stamp_note() RETURNS trigger LANGUAGE plpgsql AS $$
             BEGIN NEW.note := coalesce(NEW.note, '') || '*'; RETURN NEW; END $$;"
        ),
    );
    rig.sqlx(
        "1",
        "add_flag",
        "ALTER TABLE orders ADD COLUMN flagged boolean NOT NULL DEFAULT false;\n",
        Some("ALTER TABLE orders DROP COLUMN flagged;\n"),
    );
    rig.sqlx(
        "2",
        "stamp_trigger",
        "CREATE TRIGGER orders_stamp BEFORE UPDATE ON orders FOR EACH ROW EXECUTE FUNCTION stamp_note();\n\
         CREATE INDEX orders_flagged_idx ON orders (flagged);\n",
        // Forgets the trigger.
        Some("DROP INDEX orders_flagged_idx;\n"),
    );
    rig.sqlx("3", "create_tags", "CREATE TABLE tags (id integer PRIMARY KEY);\n", Some("DROP TABLE tags;\n"));
    let r = rig.rehearse(&["--snapshot", "fresh"]);
    r.expect_code(2);
    let report = r.json();
    let out = &r.stdout;
    assert_eq!(report["ok"], false, "{out}");
    assert_eq!(report["reversible"], false, "{out}");
    for m in report["migrations"].as_array().unwrap() {
        assert_eq!(m["status"], "applied", "the ups all apply: {out}");
    }
    let m2 = migration(&report, "2");
    assert_eq!(m2["reversible"]["result"], "differs", "the down of 2 leaves its trigger: {m2:#}");
    let diff = m2["reversible"]["diff"].as_str().unwrap_or_else(|| panic!("no diff for migration 2: {m2:#}"));
    assert!(diff.contains("orders_stamp"), "the diff does not name the trigger:\n{diff}");
    // The other downs are right: each is judged on its own and passes.
    for v in ["1", "3"] {
        let verdict = &migration(&report, v)["reversible"];
        assert_eq!(verdict["result"], "reversible", "migration {v}'s down is right, it must not be blamed: {verdict}");
    }
    assert!(
        report["problems"].as_array().unwrap().iter().any(|p| p.as_str().unwrap_or_default().contains("migration 2")),
        "problems do not name migration 2: {}",
        report["problems"]
    );
}

#[test]
fn catch_up_replays_what_live_applied_after_the_snapshot() {
    let rig = orders_rig();
    let up1 =
        rig.sqlx("1", "create_things", "CREATE TABLE things (id integer PRIMARY KEY);\n", Some("DROP TABLE things;\n"));
    // 2 needs 1's table: it only applies if 1 was replayed on the copy.
    rig.sqlx(
        "2",
        "add_thing_name",
        "ALTER TABLE things ADD COLUMN name text;\n",
        Some("ALTER TABLE things DROP COLUMN name;\n"),
    );
    rig.sqlx(
        "3",
        "add_thing_size",
        "ALTER TABLE things ADD COLUMN size integer;\n",
        Some("ALTER TABLE things DROP COLUMN size;\n"),
    );
    let snap = rig.snapshot();
    sqlx_apply(&rig.live, "app", &up1, "1", "create_things");
    let r = rig.rehearse(&["--snapshot", &snap]);
    r.ok();
    let report = r.json();
    assert_eq!(report["snapshot_id"], snap.as_str(), "{}", r.stdout);
    assert_eq!(report["catch_up"], json!(["1"]), "catch_up: {}", r.stdout);
    assert_eq!(versions(&report), ["2", "3"], "the plan: {}", r.stdout);
    for m in report["migrations"].as_array().unwrap() {
        assert_eq!(m["status"], "applied", "{}", r.stdout);
    }
    assert_eq!(report["reversible"], true, "{}", r.stdout);
    assert_eq!(
        rows(&rig.live, "app", "SELECT version FROM _sqlx_migrations ORDER BY version"),
        ["1"],
        "live's history changed"
    );
    assert_eq!(
        rig.live.psql(
            "app",
            "SELECT count(*) FROM information_schema.columns WHERE table_name = 'things' AND column_name = 'name'"
        ),
        "0",
        "the rehearsal changed live"
    );
}

#[test]
fn lint_warns_with_measurements_and_deny_fails() {
    let rig = orders_rig();
    rig.sqlx(
        "1",
        "drop_note",
        "ALTER TABLE orders DROP COLUMN note;\n",
        Some("ALTER TABLE orders ADD COLUMN note text;\n"),
    );
    rig.sqlx(
        "2",
        "add_token",
        "ALTER TABLE orders ADD COLUMN token uuid DEFAULT gen_random_uuid();\n",
        Some("ALTER TABLE orders DROP COLUMN token;\n"),
    );
    let r = rig.rehearse(&["--snapshot", "fresh"]);
    r.ok();
    let report = r.json();
    let out = &r.stdout;
    assert_eq!(report["ok"], true, "warnings only: {out}");

    let drop = findings(&report, "drop_column");
    assert_eq!(drop.len(), 1, "drop_column findings: {:#}", report["lint"]);
    let drop = drop[0];
    assert_eq!(drop["migration"], "1", "{drop:#}");
    assert_eq!(drop["severity"], "warning", "{drop:#}");
    assert_eq!(drop["relation"], "orders", "{drop:#}");
    assert!(drop["table_rows"].as_i64().is_some_and(|n| n > 0), "drop_column without the table's rows: {drop:#}");

    let vol = findings(&report, "volatile_default");
    assert_eq!(vol.len(), 1, "volatile_default findings: {:#}", report["lint"]);
    let vol = vol[0];
    assert_eq!(vol["migration"], "2", "{vol:#}");
    assert_eq!(vol["severity"], "warning", "{vol:#}");
    assert!(vol["table_rows"].as_i64().is_some_and(|n| n > 0), "volatile_default without the table's rows: {vol:#}");
    let effect =
        vol["effect"].as_str().unwrap_or_else(|| panic!("volatile_default without a measured effect: {vol:#}"));
    assert!(effect.contains("rewrite"), "the effect does not mention the rewrite: {effect}");
    assert!(
        rewritten_tables(migration(&report, "2")).contains(&"orders".to_string()),
        "a volatile default rewrites the table: {out}"
    );
    assert!(report["warnings"].to_string().contains("[drop_column]"), "{out}");

    // The same plan with drop_column denied: a problem, exit 2.
    rig.configure("lint = { deny = [\"drop_column\"] }\n");
    let r = rig.rehearse(&["--no-reverse"]);
    r.expect_code(2);
    let report = r.json();
    assert_eq!(report["ok"], false, "{}", r.stdout);
    assert_eq!(findings(&report, "drop_column")[0]["severity"], "error", "{}", r.stdout);
    assert_eq!(findings(&report, "volatile_default")[0]["severity"], "warning", "{}", r.stdout);
    assert!(problems_text(&report).contains("drop_column"), "problems: {}", report["problems"]);
}

#[test]
fn seeds_run_twice_and_non_idempotent_ones_are_named() {
    let rig = orders_rig();
    rig.sqlx(
        "1",
        "settings_and_events",
        "CREATE TABLE settings (key text PRIMARY KEY, value text NOT NULL);\n\
         CREATE TABLE events (kind text NOT NULL, note text);\n",
        Some("DROP TABLE events;\nDROP TABLE settings;\n"),
    );
    rig.pgr.write_file(
        "seed.sql",
        "INSERT INTO settings (key, value) VALUES ('theme', 'dark'), ('lang', 'en') ON CONFLICT DO NOTHING;\n",
    );
    rig.pgr.write_file("seed_events.sql", "INSERT INTO events (kind, note) VALUES ('seeded', 'once?');\n");
    rig.configure("seeds = [\"seed.sql\", \"seed_events.sql\"]\n");
    let r = rig.rehearse(&["--snapshot", "fresh", "--keep"]);
    r.ok();
    let report = r.json();
    let seeds = report["seeds"].as_array().unwrap_or_else(|| panic!("no seeds[]: {}", r.stdout));
    assert_eq!(seeds.len(), 2, "{}", r.stdout);
    let ok = &seeds[0];
    assert!(ok["file"].as_str().unwrap().ends_with("seed.sql"), "{ok:#}");
    assert_eq!(ok["ok"], true, "{ok:#}");
    assert_eq!(ok["idempotent"], true, "ON CONFLICT DO NOTHING is idempotent: {ok:#}");
    assert_eq!(ok["changed"], json!([]), "{ok:#}");
    let dup = &seeds[1];
    assert!(dup["file"].as_str().unwrap().ends_with("seed_events.sql"), "{dup:#}");
    assert_eq!(dup["idempotent"], false, "a plain INSERT twice is not idempotent: {dup:#}");
    let changed = dup["changed"].to_string();
    assert!(changed.contains("events") && !changed.contains("settings"), "changed tables: {changed}");
    assert!(report["warnings"].to_string().contains("seed_events.sql"), "warnings: {}", report["warnings"]);
    // Both ran twice on the copy.
    let kept = kept_db(&rig, &report);
    assert_eq!(rig.shadow.psql(&kept, "SELECT count(*) FROM events"), "2", "the second run did not happen");
    assert_eq!(rig.shadow.psql(&kept, "SELECT count(*) FROM settings"), "2");
    assert!(!table_exists(&rig.live, "app", "settings"), "seeds ran on live");
}

#[test]
fn failed_migration_rolls_back_the_plan_and_names_its_line() {
    let rig = orders_rig();
    let live_before = fingerprint(&rig.live, "app");
    rig.sqlx(
        "1",
        "add_flag",
        "ALTER TABLE orders ADD COLUMN flagged boolean NOT NULL DEFAULT false;\n",
        Some("ALTER TABLE orders DROP COLUMN flagged;\n"),
    );
    rig.sqlx(
        "2",
        "create_audit",
        "CREATE TABLE audit_log (id integer PRIMARY KEY, note text);\n",
        Some("DROP TABLE audit_log;\n"),
    );
    rig.sqlx(
        "3",
        "broken",
        "CREATE TABLE broken_side_effect (id integer);\n\
         -- the next statement fails at run time, on line 3\n\
         INSERT INTO audit_log SELECT 1, (1 / 0)::text;\n",
        Some("DROP TABLE broken_side_effect;\n"),
    );
    rig.sqlx("4", "later", "CREATE TABLE later (id integer);\n", Some("DROP TABLE later;\n"));
    let r = rig.rehearse(&["--snapshot", "fresh", "--keep"]);
    r.expect_code(2);
    let report = r.json();
    let out = &r.stdout;
    assert_eq!(report["ok"], false, "{out}");
    assert_eq!(report["mode"], "single_transaction", "every migration is transactional: {out}");
    let statuses: Vec<&str> =
        report["migrations"].as_array().unwrap().iter().map(|m| m["status"].as_str().unwrap()).collect();
    assert_eq!(statuses, ["rolled_back", "rolled_back", "failed", "not_run"], "statuses: {out}");
    let m3 = migration(&report, "3");
    assert_eq!(m3["ok"], false, "{m3:#}");
    let err = &m3["error"];
    assert_eq!(err["line"], 3, "error line: {err:#}");
    assert_eq!(err["statement"], 1, "error statement index: {err:#}");
    let sql = err["sql"].as_str().unwrap_or_else(|| panic!("no error.sql: {err:#}"));
    assert!(sql.contains("INSERT INTO audit_log") && sql.contains("1 / 0"), "error.sql: {sql}");
    assert_eq!(err["sqlstate"], "22012", "division_by_zero: {err:#}");
    assert!(err["message"].as_str().unwrap_or_default().contains("division by zero"), "{err:#}");
    assert!(err["file"].as_str().unwrap_or_default().ends_with("3_broken.up.sql"), "{err:#}");
    assert!(
        problems_text(&report).contains("migration 3") && problems_text(&report).contains("line 3"),
        "problems: {}",
        report["problems"]
    );
    assert!(report["reversible"].is_null(), "no reversibility after a failed apply: {out}");

    // The copy: nothing of the plan was committed.
    let kept = kept_db(&rig, &report);
    let sh = &rig.shadow;
    for t in ["audit_log", "broken_side_effect", "later"] {
        assert!(!table_exists(sh, &kept, t), "{t} exists on the copy: the plan was not rolled back");
    }
    assert_eq!(
        sh.psql(&kept, "SELECT count(*) FROM pg_attribute WHERE attrelid = 'orders'::regclass AND attname = 'flagged'"),
        "0"
    );
    assert!(
        !table_exists(sh, &kept, "_sqlx_migrations") || sh.psql(&kept, "SELECT count(*) FROM _sqlx_migrations") == "0",
        "history rows committed on the copy"
    );
    // Live: unchanged.
    assert!(!table_exists(&rig.live, "app", "_sqlx_migrations"), "history table on live");
    assert_eq!(fingerprint(&rig.live, "app"), live_before, "live changed");
}

/// SIGTERM in the middle of a migration: the rehearsal stops at once, its
/// scratch database and reference copy are dropped (the template stays), the
/// migration's session is gone, exit 1 with a sentence saying so; live is
/// untouched. A later rehearsal runs normally.
#[test]
fn sigterm_mid_migration_drops_the_scratch_databases() {
    use crate::harness::proc::signal;
    use crate::harness::shadow::scratch_dbs;
    let rig = orders_rig();
    rig.sqlx("1", "slow", "SELECT pg_sleep(60);\nCREATE TABLE slow_done (id int);\n", Some("DROP TABLE slow_done;\n"));
    rig.snapshot();
    let bg = rig.pgr.spawn(&["rehearse"]);
    wait_for("the migration's pg_sleep on the shadow", Duration::from_secs(60), Duration::from_millis(50), || {
        let n = rig
            .shadow
            .psql("postgres", "SELECT count(*) FROM pg_stat_activity WHERE query LIKE 'SELECT pg_sleep(60)%'");
        (n.trim() == "1").then_some(())
    });
    let during = scratch_dbs(&rig.shadow);
    assert!(during.iter().any(|d| d.ends_with("_ref")), "a reference copy exists while the plan runs: {during:?}");
    signal(bg.pid(), libc::SIGTERM);
    let r = bg.wait(Duration::from_secs(30));
    assert_eq!(r.code, 1, "exit code; stderr:\n{}", tail(&r.stderr, 3000));
    assert!(r.stderr.contains("cancelled"), "stderr says it was cancelled:\n{}", tail(&r.stderr, 3000));
    let left = scratch_dbs(&rig.shadow);
    assert_eq!(left, vec!["pgrehearse_app_template".to_string()], "only the template is left on the shadow");
    let sessions =
        rig.shadow.psql("postgres", "SELECT count(*) FROM pg_stat_activity WHERE query LIKE 'SELECT pg_sleep(60)%'");
    assert_eq!(sessions.trim(), "0", "the migration's session is gone");
    assert!(!table_exists(&rig.live, "app", "slow_done"), "live untouched");
    // The next rehearsal of a quick plan runs.
    std::fs::write(rig.dir.join("1_slow.up.sql"), "CREATE TABLE slow_done (id int);\n").unwrap();
    rig.rehearse(&[]).ok();
}
