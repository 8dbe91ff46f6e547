//! What rehearsal and release reports say about a failure, checked against
//! what PostgreSQL itself said (issue 14, "Report accuracy"):
//!
//! - A rehearsal that fails: the error object carries PostgreSQL's HINT,
//!   position and SQLSTATE; the report names the server version; a
//!   non-transactional migration whose sampled locks showed nothing says
//!   "none observed (sampled every 20 ms)"; a type change after an earlier
//!   statement of the same migration took ACCESS EXCLUSIVE is linted under
//!   ACCESS EXCLUSIVE, not the SHARE lock that was new to the statement.
//! - A release that fails: the migration's error is the same object (with
//!   PostgreSQL's DETAIL `Key (email)=(…) is duplicated.`) in `apply --json`
//!   and `releases ID --json`, the reason and the text output carry the
//!   DETAIL, the record names live's server version, `finished_by_recovery`
//!   replaces `recovered`, and a record written by an earlier version (its
//!   error a sentence) still reads as the object.

use crate::harness::cli::local_store_path;
use crate::harness::migrations::*;
use crate::harness::release::*;
use serde_json::Value;

/// The keys of the one error object of both JSON documents (README, "JSON
/// documents").
const ERROR_KEYS: [&str; 9] = ["detail", "file", "hint", "line", "message", "position", "sql", "sqlstate", "statement"];

const SETUP: &str = "CREATE TABLE t (id int PRIMARY KEY, email text);
    INSERT INTO t SELECT g, 'user' || g || '@example.com' FROM generate_series(1, 20000) g;";

fn keys(error: &Value) -> Vec<String> {
    let mut k: Vec<String> =
        error.as_object().unwrap_or_else(|| panic!("error is not an object: {error}")).keys().cloned().collect();
    k.sort();
    k
}

#[test]
fn a_failed_rehearsal_reports_the_hint_position_server_version_sampling_and_the_lock_held() {
    let rig = Rig::start("sqlx", SETUP);
    rig.sqlx("1", "other", "-- no-transaction\nCREATE TABLE other (id int);\n", None);
    rig.sqlx(
        "2",
        "widen",
        "ALTER TABLE t ADD COLUMN note text;\nALTER TABLE t ALTER COLUMN id TYPE bigint;\n",
        Some("ALTER TABLE t ALTER COLUMN id TYPE int;\nALTER TABLE t DROP COLUMN note;\n"),
    );
    rig.sqlx("3", "typo", "UPDATE t SET note = 'x' WHERE id = 1;\nSELECT emial FROM t;\n", None);
    let r = rig.rehearse(&[]);
    r.expect_code(2);
    let report = r.json();
    let version = rig.shadow.psql("postgres", "SHOW server_version");
    assert_eq!(report["server_version"], version.as_str(), "{report:#}");

    // PostgreSQL's own words: message, HINT, position, SQLSTATE.
    let e = &migration(&report, "3")["error"];
    assert_eq!(keys(e), ERROR_KEYS, "{e:#}");
    assert_eq!(e["sqlstate"], "42703", "{e:#}");
    assert_eq!(e["message"], "column \"emial\" does not exist", "{e:#}");
    assert!(e["hint"].as_str().is_some_and(|h| h.contains("\"t.email\"")), "PostgreSQL's HINT: {e:#}");
    assert_eq!(e["position"], 8, "`emial` starts at character 8 of the statement: {e:#}");
    assert_eq!((e["statement"].as_u64(), e["line"].as_u64()), (Some(1), Some(2)), "{e:#}");
    assert!(report["problems"].to_string().contains("HINT: Perhaps you meant"), "{report:#}");

    // Sampled, nothing seen: said as such.
    let m1 = migration(&report, "1");
    assert_eq!(m1["locks"], serde_json::json!([]), "{m1:#}");
    assert_eq!(m1["locks_sampled_every_ms"], 20, "{m1:#}");
    assert!(migration(&report, "2")["locks_sampled_every_ms"].is_null(), "read exactly, not sampled");

    // The type change ran while the ADD COLUMN's ACCESS EXCLUSIVE was held.
    let lint = report["lint"].as_array().unwrap();
    let f = lint
        .iter()
        .find(|f| f["rule"] == "type_change_rewrite" && f["migration"] == "2")
        .unwrap_or_else(|| panic!("no type_change_rewrite finding: {report:#}"));
    let msg = f["message"].as_str().unwrap();
    assert!(msg.contains("rewrites `t`") && msg.contains("under ACCESS EXCLUSIVE"), "{msg}");
    assert!(!msg.contains("under SHARE"), "{msg}");

    // The Markdown report says the same.
    let md_path =
        local_store_path(&rig.pgr).join(format!("app/rehearsals/{}/report.md", report["id"].as_str().unwrap()));
    let md = std::fs::read_to_string(&md_path).unwrap_or_else(|e| panic!("{}: {e}", md_path.display()));
    for needle in [
        format!("- Server: PostgreSQL {version}"),
        "**Error at line 2:** column \"emial\" does not exist (SQLSTATE 42703)".to_string(),
        "Hint: Perhaps you meant to reference the column \"t.email\".".to_string(),
        "Locks on existing tables: none observed (sampled every 20 ms)".to_string(),
    ] {
        assert!(md.contains(&needle), "missing {needle:?} in\n{md}");
    }
}

#[test]
fn a_failed_release_reports_the_detail_in_the_same_error_object_and_its_server_version() {
    let rig = Rig::start("sqlx", SETUP);
    configure(&rig, "");
    rig.sqlx("1", "unique_email", "CREATE UNIQUE INDEX t_email ON t (email);\n", Some("DROP INDEX t_email;\n"));
    rehearse_and_approve(&rig);
    as_app(&rig.live, "app", "INSERT INTO t VALUES (20001, 'user1@example.com');");

    let r = apply(&rig);
    r.expect_code(1);
    let rel = r.json();
    assert_eq!(rel["outcome"], "rolled_back", "{rel:#}");
    let detail = "Key (email)=(user1@example.com) is duplicated.";
    let e = &rel["migrations"][0]["error"];
    assert_eq!(keys(e), ERROR_KEYS, "the rehearsal's error object: {e:#}");
    assert_eq!(e["detail"], detail, "{e:#}");
    assert_eq!(e["sqlstate"], "23505", "{e:#}");
    assert_eq!(e["message"], "could not create unique index \"t_email\"", "{e:#}");
    assert!(e["file"].as_str().unwrap().ends_with("1_unique_email.up.sql"), "{e:#}");
    assert!(rel["reason"].as_str().unwrap().contains(&format!("DETAIL: {detail}")), "{rel:#}");
    let version = rig.live.psql("postgres", "SHOW server_version");
    assert_eq!(rel["server_version"], version.as_str(), "{rel:#}");
    assert_eq!(rel["finished_by_recovery"], false, "{rel:#}");
    assert!(rel.get("recovered").is_none(), "{rel:#}");

    // `releases ID --json` reads the record back with the same object.
    let id = rel["release_id"].as_str().unwrap().to_string();
    let again = release(&rig, &id);
    assert_eq!(again["migrations"], rel["migrations"]);
    assert_eq!(again["server_version"], version.as_str());
    let text = rig.pgr.run(&["releases", &id]);
    text.ok();
    assert!(text.stdout.contains(&format!("DETAIL: {detail}")), "{}", text.stdout);
    assert!(text.stdout.contains(&format!("Live's server: PostgreSQL {version}")), "{}", text.stdout);

    // A record an earlier version wrote (the error as a sentence, no
    // server version) reads as the same object.
    let db = rig.pgr.state_dir().join("state.sqlite");
    let old = r#"[{"version":"1","name":"unique_email","transactional":true,"status":"failed","duration_ms":5,"attempts":1,"error":"migration 1 failed: duplicate key"}]"#;
    let sql = format!("UPDATE releases SET migrations = '{old}', server_version = NULL WHERE id = '{id}';");
    let out = std::process::Command::new("sqlite3").arg(&db).arg(&sql).output().expect("sqlite3");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let read = release(&rig, &id);
    let e = &read["migrations"][0]["error"];
    assert_eq!(keys(e), ERROR_KEYS, "{read:#}");
    assert_eq!(e["message"], "migration 1 failed: duplicate key", "{read:#}");
    assert!(read["server_version"].is_null(), "{read:#}");
}
