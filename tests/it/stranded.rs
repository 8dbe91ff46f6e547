//! Stranded writes: what a release that ends `restored` tells about the
//! rows other sessions wrote on live between the pre-release snapshot and
//! the swap (they are only in the kept failed database). An application
//! session inserts into `events` (`bigserial`) and inserts and updates
//! `accounts` during the release; the plan's first migration writes rows of
//! its own into both tables (which are not stranded writes), and its third
//! fails on live. The expected sets are computed here with psql, from the
//! kept database and live read independently; `stranded_writes` must count
//! exactly them, in `apply --json`, `releases ID` (text and JSON) and the
//! release mail, and the kept database's list must hold exactly their keys.
//! Also: nothing stranded without a writer (`tables: []`), a comparison
//! killed midway is redone when the swap is finished, a comparison that
//! fails leaves the restore done and says `unknown`, and a release without
//! a restore reports `null`.

use crate::harness::migrations::*;
use crate::harness::pg::Session;
use crate::harness::release::*;
use crate::harness::smtp::eml_files;
use serde_json::{Value, json};
use std::collections::{BTreeMap, BTreeSet};

const SETUP: &str = "CREATE TABLE t (id int PRIMARY KEY, email text);
    INSERT INTO t SELECT g, 'user' || g || '@example.com' FROM generate_series(1, 2000) g;
    CREATE TABLE accounts (id int PRIMARY KEY, balance int NOT NULL);
    INSERT INTO accounts SELECT g, 100 FROM generate_series(1, 500) g;
    CREATE TABLE events (id bigserial PRIMARY KEY, note text NOT NULL);
    GRANT ALL ON accounts, events, events_id_seq TO app;";

/// The note of the row the plan itself inserts into `events`.
const SEEDED: &str = "seeded by migration 1";

/// The plan: 1 commits (and writes rows of its own: one event, accounts
/// 1–5), 2 runs outside a transaction (so the plan runs per migration), 3
/// fails on live (a duplicate the rehearsal never saw).
fn plan_that_restores(rig: &Rig) {
    score_steps(
        rig,
        &format!(
            "ALTER TABLE t ADD COLUMN score int NOT NULL DEFAULT 7;\nINSERT INTO events (note) VALUES ('{SEEDED}');\n\
             UPDATE accounts SET balance = balance + 1 WHERE id <= 5;\nSELECT pg_sleep(1.5);\n"
        ),
    );
    unique_email_step(rig);
    rehearse_and_approve(rig);
    as_app(&rig.live, "app", "INSERT INTO t VALUES (2001, 'user1@example.com');");
}

/// An application session: every 20 ms one statement (one transaction)
/// inserts an event, inserts an account and updates an existing one
/// (ids 101–400, which the plan never touches).
fn writer(rig: &Rig) -> Session {
    let script = "SET ROLE app;\n\
        WITH e AS (INSERT INTO events (note) VALUES ('app') RETURNING id), \
             a AS (INSERT INTO accounts SELECT max(id) + 1, 0 FROM accounts RETURNING id) \
        UPDATE accounts SET balance = balance + 1 WHERE id = 101 + (SELECT id FROM e) % 300;\n\\watch 0.02\n";
    rig.live.session("app", script)
}

/// `id` → the rest of the row, for a table of `db`.
fn table_rows(rig: &Rig, db: &str, sql: &str) -> BTreeMap<i64, String> {
    rows(&rig.live, db, sql)
        .into_iter()
        .map(|l| {
            let (id, rest) = l.split_once('|').unwrap_or((&l, ""));
            (id.parse().unwrap(), rest.to_string())
        })
        .collect()
}

/// Keys of `op` rows of `relation` in the kept database's list.
fn listed(rig: &Rig, kept: &str, relation: &str, op: &str) -> BTreeSet<i64> {
    let sql = format!(
        "SELECT key->>'id' FROM pgrehearse_stranded.rows WHERE relation = '{relation}' AND op = '{op}' ORDER BY 1"
    );
    rows(&rig.live, kept, &sql).into_iter().map(|s| s.parse().unwrap()).collect()
}

fn mail_dir_toml() -> &'static str {
    "\n[email]\ntransport = \"file\"\nfrom = \"pgrehearse <pgr@example.com>\"\nto = [\"dba@example.com\"]\n"
}

#[test]
fn writes_made_during_a_restored_release_are_counted_exactly_everywhere() {
    let rig = Rig::start("sqlx", SETUP);
    configure(&rig, "");
    let text = std::fs::read_to_string(rig.pgr.config_path()).unwrap();
    rig.pgr.write_config(&format!("{text}{}", mail_dir_toml()));
    plan_that_restores(&rig);

    let rel = restored_while_writing(&rig, writer(&rig));
    let id = rel["release_id"].as_str().unwrap().to_string();
    let kept = rel["failed_database"].as_str().expect("failed_database").to_string();

    // What is in the kept database and not in live, read here with psql.
    let (ev_kept, ev_live) = (
        table_rows(&rig, &kept, "SELECT id, note FROM events"),
        table_rows(&rig, "app", "SELECT id, note FROM events"),
    );
    let (ac_kept, ac_live) = (
        table_rows(&rig, &kept, "SELECT id, balance FROM accounts"),
        table_rows(&rig, "app", "SELECT id, balance FROM accounts"),
    );
    let ev_new: BTreeSet<i64> = ev_kept.keys().filter(|k| !ev_live.contains_key(k)).copied().collect();
    let seeded: BTreeSet<i64> = ev_new.iter().filter(|k| ev_kept[k] == SEEDED).copied().collect();
    assert_eq!(seeded.len(), 1, "the plan's own event is in the kept database: {ev_new:?}");
    let ev_inserted: BTreeSet<i64> = ev_new.difference(&seeded).copied().collect();
    let ac_inserted: BTreeSet<i64> = ac_kept.keys().filter(|k| !ac_live.contains_key(k)).copied().collect();
    let ac_changed: BTreeSet<i64> =
        ac_kept.iter().filter(|(k, v)| ac_live.get(k).is_some_and(|l| l != *v)).map(|(k, _)| *k).collect();
    let plan_updated: BTreeSet<i64> = (1..=5).collect();
    assert!(plan_updated.is_subset(&ac_changed), "the plan's own updates are in the kept database: {ac_changed:?}");
    let ac_updated: BTreeSet<i64> = ac_changed.difference(&plan_updated).copied().collect();
    assert!(
        !ev_inserted.is_empty() && !ac_inserted.is_empty() && !ac_updated.is_empty(),
        "the writer committed nothing between the snapshot and the swap: events {ev_inserted:?}, accounts {ac_inserted:?} / {ac_updated:?}"
    );
    assert!(ev_live.keys().all(|k| ev_kept.contains_key(k)), "no row was deleted");

    let expected = json!([
        {"table": "public.accounts", "inserted": ac_inserted.len(), "updated": ac_updated.len(), "deleted": 0},
        {"table": "public.events", "inserted": ev_inserted.len(), "updated": 0, "deleted": 0},
    ]);
    let s = &rel["stranded_writes"];
    assert_eq!(s["tables"], expected, "{s:#}");
    assert_eq!(s["unknown"], json!([]), "{s:#}");
    assert_eq!(s["error"], Value::Null, "{s:#}");
    assert_eq!(s["kept_in"], kept.as_str());
    assert!(s["since"].as_str().unwrap() < s["until"].as_str().unwrap(), "{s:#}");

    // The kept database lists exactly those rows' keys.
    assert_eq!(listed(&rig, &kept, "public.events", "insert"), ev_inserted);
    assert_eq!(listed(&rig, &kept, "public.accounts", "insert"), ac_inserted);
    assert_eq!(listed(&rig, &kept, "public.accounts", "update"), ac_updated);
    assert_eq!(rows(&rig.live, &kept, "SELECT count(*) FROM pgrehearse_stranded.rows WHERE op = 'delete'"), ["0"]);

    // `releases ID`: the same object, and the text says it per table.
    assert_eq!(release(&rig, &id)["stranded_writes"], *s);
    let shown = rig.pgr.run(&["releases", &id]);
    shown.ok();
    let lines = [
        format!("public.accounts: inserted {}, updated {}, deleted 0", ac_inserted.len(), ac_updated.len()),
        format!("public.events: inserted {}, updated 0, deleted 0", ev_inserted.len()),
        format!("they are kept in `{kept}`"),
        format!("pgrehearse salvage {id} -o salvage.sql"),
        format!("pgrehearse salvage {id} --apply"),
    ];
    for l in &lines {
        assert!(shown.stdout.contains(l.as_str()), "`releases {id}` lacks {l:?}:\n{}", shown.stdout);
    }
    // The release mail says the same.
    let mails = eml_files(&rig.pgr.state_dir().join("mail"));
    let report = mails.iter().find(|m| m.subject.contains(&id) && m.subject.contains("restored"));
    let report =
        report.unwrap_or_else(|| panic!("no release mail: {:?}", mails.iter().map(|m| &m.subject).collect::<Vec<_>>()));
    for l in &lines {
        assert!(report.text.contains(l.as_str()), "the mail lacks {l:?}:\n{}", report.text);
    }

    // No id written after the swap is one a stranded row holds.
    let next: i64 = as_app(&rig.live, "app", "INSERT INTO events (note) VALUES ('after the swap') RETURNING id;")
        .lines()
        .find_map(|l| l.trim().parse().ok())
        .expect("the id of the row written after the swap");
    assert!(next > *ev_inserted.last().unwrap(), "id {next} was handed out again");
    assert!(!listed(&rig, &kept, "public.events", "insert").contains(&next));
}

#[test]
fn a_restored_release_without_other_writers_strands_nothing() {
    let rig = Rig::start("sqlx", SETUP);
    configure(&rig, "");
    plan_that_restores(&rig);
    let r = apply(&rig);
    r.expect_code(1);
    let rel = r.json();
    assert_eq!(rel["outcome"], "restored", "{rel:#}");
    let s = &rel["stranded_writes"];
    // The plan's own event and account updates are not stranded writes.
    assert_eq!(s["tables"], json!([]), "{s:#}");
    assert_eq!(s["unknown"], json!([]), "{s:#}");
    assert_eq!(s["error"], Value::Null, "{s:#}");
    let kept = rel["failed_database"].as_str().unwrap();
    assert_eq!(rows(&rig.live, kept, &format!("SELECT count(*) FROM events WHERE note = '{SEEDED}'")), ["1"]);
    assert_eq!(rows(&rig.live, kept, "SELECT count(*) FROM pgrehearse_stranded.rows"), ["0"]);
    let steps = journal_steps(&rel);
    assert!(steps.iter().any(|x| x == "xid"), "the plan's transaction ids are journaled: {steps:?}");
    let done = rel["journal"].as_array().unwrap().iter().find(|e| e["step"] == "stranded_done").cloned();
    eprintln!("comparison: {done:?}");
    assert!(done.is_some_and(|d| d["detail"].as_str().unwrap().starts_with("0 row(s)")), "{rel:#}");
}

#[test]
fn a_comparison_killed_midway_is_redone_when_the_swap_is_finished() {
    let rig = Rig::start("sqlx", SETUP);
    configure(&rig, "");
    plan_that_restores(&rig);
    crash_apply(&rig, "stranded");
    let id = interrupted_release(&rig, "stranded");
    wait_no_sessions(&rig.live, "pgrehearse-lock-%");
    let r = rig.pgr.run_json(&["apply"]);
    r.expect_code(1);
    let rel = release(&rig, &id);
    assert_eq!(rel["outcome"], "restored", "{rel:#}");
    let steps = journal_steps(&rel);
    assert_eq!(steps.iter().filter(|x| *x == "stranded").count(), 2, "{steps:?}");
    assert!(steps.iter().any(|x| x == "stranded_done"), "{steps:?}");
    assert_eq!(rel["stranded_writes"]["tables"], json!([]), "{rel:#}");
    assert_eq!(rel["stranded_writes"]["error"], Value::Null, "{rel:#}");
}

#[test]
fn a_failed_comparison_still_restores_and_says_unknown() {
    let rig = Rig::start("sqlx", SETUP);
    configure(&rig, "");
    plan_that_restores(&rig);
    let out =
        rig.pgr.command(&["--json", "apply"]).env("PGREHEARSE_FAIL_AT", "stranded").output().expect("run pgrehearse");
    assert_eq!(out.status.code(), Some(1), "{}", String::from_utf8_lossy(&out.stderr));
    let rel: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(rel["outcome"], "restored", "{rel:#}");
    let s = &rel["stranded_writes"];
    assert!(s["error"].as_str().is_some_and(|e| e.contains("injected failure")), "{s:#}");
    assert_eq!(s["tables"], json!([]), "{s:#}");
    assert_eq!(s["kept_in"], rel["failed_database"], "{s:#}");
    // Live is the restored database, open to the application.
    let n = as_app(&rig.live, "app", "SELECT count(*) FROM t");
    assert_eq!(n.lines().find(|l| !l.trim().is_empty()).map(str::trim), Some("2001"), "{n}");
    let shown = rig.pgr.run(&["releases", rel["release_id"].as_str().unwrap()]);
    assert!(shown.stdout.contains("Stranded writes UNKNOWN"), "{}", shown.stdout);
}

#[test]
fn a_release_without_a_restore_reports_no_stranded_writes() {
    let rig = Rig::start("sqlx", SETUP);
    configure(&rig, "");
    // One transaction that fails on live: rolled back, nothing restored.
    rig.sqlx("1", "unique_email", "CREATE UNIQUE INDEX t_email ON t (email);\n", Some("DROP INDEX t_email;\n"));
    rehearse_and_approve(&rig);
    as_app(&rig.live, "app", "INSERT INTO t VALUES (2001, 'user1@example.com');");
    let r = apply(&rig);
    r.expect_code(1);
    let rel = r.json();
    assert_eq!(rel["outcome"], "rolled_back", "{rel:#}");
    assert_eq!(rel["stranded_writes"], Value::Null, "{rel:#}");
    assert_eq!(rel.get("write_counters"), None, "internal counters are not reported");

    as_app(&rig.live, "app", "DELETE FROM t WHERE id = 2001;");
    approve_current(&rig);
    let r = apply(&rig);
    r.ok();
    let rel = r.json();
    assert_eq!(rel["outcome"], "applied", "{rel:#}");
    assert_eq!(rel["stranded_writes"], Value::Null, "{rel:#}");
    let id = rel["release_id"].as_str().unwrap();
    assert_eq!(release(&rig, id)["stranded_writes"], Value::Null);
}
