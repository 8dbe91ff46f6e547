//! Releases that fail on live (the plan passed its rehearsal, but live's
//! data changed since the snapshot it was rehearsed on), and lock waits:
//!
//! - Failure at migration 3 of a plan that is not all-transactional, with
//!   `on_failure = "restore"`: exit 1, outcome `restored`; live's schema and
//!   every table's checksum equal the pre-release state; the failed
//!   database is kept as `app_failed_*` and holds what migrations 1 and 2
//!   did; no restoring database is left.
//! - The same failure in an all-transactional plan: outcome `rolled_back`,
//!   nothing restored (no `app_failed_*`), live unchanged.
//! - Another session holds a lock on the migrated table: the lock timeouts
//!   are retried and the release succeeds once the lock goes; held for
//!   longer than the retries, the release fails cleanly and live is unchanged.

use crate::harness::migrations::*;
use crate::harness::release::*;
use std::io::Write;
use std::time::Duration;

const SETUP: &str = "CREATE TABLE t (id int PRIMARY KEY, email text);
    INSERT INTO t SELECT g, 'user' || g || '@example.com' FROM generate_series(1, 20000) g;";

/// A duplicate email on live only (data changes leave the plan unchanged):
/// a unique index on `email` then fails on live but not in the rehearsal.
const DUPLICATE: &str = "INSERT INTO t VALUES (20001, 'user1@example.com');";

/// A plan that is not all-transactional and fails at migration 3 on live
/// only: (1) a column filled by an UPDATE, (2) a concurrent index outside a
/// transaction, (3) a unique index that the duplicate row added to live
/// after the rehearsal breaks. Rehearsed and approved; returns live's
/// fingerprint just before the release.
fn failing_plan(rig: &Rig) -> String {
    score_steps(rig, "ALTER TABLE t ADD COLUMN score int NOT NULL DEFAULT 7;\nUPDATE t SET score = id % 10;\n");
    unique_email_step(rig);
    rehearse_and_approve(rig);
    as_app(&rig.live, "app", DUPLICATE);
    live_fingerprint(rig)
}

#[test]
fn a_failure_mid_plan_restores_the_pre_release_snapshot_and_keeps_the_failed_database() {
    let rig = Rig::start("sqlx", SETUP);
    configure(&rig, "");
    let before = failing_plan(&rig);

    let r = apply(&rig);
    r.expect_code(1);
    let rel = r.json();
    assert_eq!(rel["outcome"], "restored", "{rel:#}");
    assert_eq!(rel["recovery"], "restore");
    assert!(rel["reason"].as_str().unwrap().contains("migration 3"), "{rel:#}");
    let statuses: Vec<&str> =
        rel["migrations"].as_array().unwrap().iter().map(|m| m["status"].as_str().unwrap()).collect();
    assert_eq!(statuses, ["applied", "applied", "failed"], "{rel:#}");
    assert_eq!(live_fingerprint(&rig), before, "live must be exactly its pre-release state");
    assert!(!table_exists(&rig.live, "app", "_sqlx_migrations"), "the restored live has no history of the plan");

    let failed = rel["failed_database"].as_str().expect("failed_database").to_string();
    assert!(failed.starts_with("app_failed_"), "{failed}");
    assert_eq!(live_dbs_like(&rig, "app_failed_"), vec![failed.clone()]);
    assert!(live_dbs_like(&rig, "app_restoring_").is_empty(), "no restoring database is left");
    // The failed database kept what the release did before it failed.
    assert_eq!(rows(&rig.live, &failed, "SELECT version FROM _sqlx_migrations ORDER BY version"), ["1", "2"]);
    assert_eq!(rig.live.psql(&failed, "SELECT count(*) FROM pg_indexes WHERE indexname = 't_score'"), "1");
    // Clients connect to the restored live as before (owner carried over).
    assert_eq!(
        rig.live.psql("postgres", "SELECT pg_get_userbyid(datdba) FROM pg_database WHERE datname = 'app'"),
        "app"
    );
    assert_eq!(as_app(&rig.live, "app", "SELECT count(*) FROM t"), "20001");
    let steps = journal_steps(&rel);
    for s in ["failed", "recovery", "restore", "restore_done", "swap", "swap_renamed", "swap_done", "finished"] {
        assert!(steps.iter().any(|x| x == s), "journal lacks {s}: {steps:?}");
    }
}

#[test]
fn a_failure_in_an_all_transactional_plan_rolls_back_and_restores_nothing() {
    let rig = Rig::start("sqlx", SETUP);
    configure(&rig, "");
    rig.sqlx(
        "1",
        "add_score",
        "ALTER TABLE t ADD COLUMN score int NOT NULL DEFAULT 7;\n",
        Some("ALTER TABLE t DROP COLUMN score;\n"),
    );
    rig.sqlx("2", "unique_email", "CREATE UNIQUE INDEX t_email ON t (email);\n", Some("DROP INDEX t_email;\n"));
    rehearse_and_approve(&rig);
    as_app(&rig.live, "app", DUPLICATE);
    let before = live_fingerprint(&rig);

    let r = apply(&rig);
    r.expect_code(1);
    let rel = r.json();
    assert_eq!(rel["outcome"], "rolled_back", "{rel:#}");
    assert!(rel["recovery"].is_null(), "nothing to recover: {rel:#}");
    let statuses: Vec<&str> =
        rel["migrations"].as_array().unwrap().iter().map(|m| m["status"].as_str().unwrap()).collect();
    assert_eq!(statuses, ["rolled_back", "failed"]);
    assert_eq!(live_fingerprint(&rig), before);
    assert!(live_dbs_like(&rig, "app_failed_").is_empty() && live_dbs_like(&rig, "app_restoring_").is_empty());
    assert!(!journal_steps(&rel).iter().any(|s| s == "restore"));
}

/// A `psql` session (as `app`) holding ACCESS SHARE on `t` in an open
/// transaction until it is dropped or `release` is called.
struct Holder(std::process::Child);

impl Holder {
    fn start(rig: &Rig) -> Holder {
        let child = rig
            .live
            .psql_session("app", "SET ROLE app;\nBEGIN;\nLOCK TABLE t IN ACCESS SHARE MODE;\nSELECT 'locked';\n");
        crate::harness::wait_for("the holder's lock", Duration::from_secs(20), Duration::from_millis(20), || {
            let n = rig.live.psql("app", "SELECT count(*) FROM pg_locks l JOIN pg_class c ON c.oid = l.relation WHERE c.relname = 't' AND l.mode = 'AccessShareLock' AND l.pid <> pg_backend_pid() AND l.granted");
            (n != "0").then_some(())
        });
        Holder(child)
    }

    fn release(mut self) {
        let _ = self.0.stdin.as_mut().unwrap().write_all(b"ROLLBACK;\n\\q\n");
        let _ = self.0.wait();
    }
}

impl Drop for Holder {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn lock_timeouts_are_retried_until_the_lock_goes_or_the_retries_run_out() {
    let rig = Rig::start("sqlx", SETUP);
    // The holder is there before preflight: a long max_queue_wait keeps
    // preflight's held-locks check (release_queue) out of this test.
    let policy = "lock_timeout = \"200ms\"\nlock_retries = 4\nlock_retry_backoff = \"300ms\"\nmax_queue_wait = \"1h\"";
    configure(&rig, policy);
    rig.sqlx("1", "add_score", "ALTER TABLE t ADD COLUMN score int;\n", Some("ALTER TABLE t DROP COLUMN score;\n"));
    rehearse_and_approve(&rig);

    // Held for about a second: a few retries, then success.
    let holder = Holder::start(&rig);
    let bg = rig.pgr.spawn(&["--json", "apply"]);
    crate::harness::wait_for(
        "a lock timeout to be retried",
        Duration::from_secs(60),
        Duration::from_millis(50),
        || bg.stderr_so_far().contains("Lock timeout").then_some(()),
    );
    holder.release();
    let r = bg.wait(Duration::from_secs(120));
    let rel: serde_json::Value =
        serde_json::from_str(&r.stdout).unwrap_or_else(|e| panic!("{e}: {}\n{}", r.stdout, r.stderr));
    assert_eq!((r.code, rel["outcome"].as_str()), (0, Some("applied")), "{rel:#}");
    let attempts = rel["migrations"][0]["attempts"].as_u64().unwrap();
    assert!(attempts >= 2, "the migration was retried: {rel:#}");
    assert!(journal_steps(&rel).iter().any(|s| s == "lock_retry"));
    assert_eq!(rows(&rig.live, "app", "SELECT version FROM _sqlx_migrations"), ["1"]);

    // Held all along: every retry times out; the plan's transaction rolled
    // back, live unchanged.
    rig.sqlx("2", "add_rank", "ALTER TABLE t ADD COLUMN rank int;\n", Some("ALTER TABLE t DROP COLUMN rank;\n"));
    configure(
        &rig,
        "lock_timeout = \"100ms\"\nlock_retries = 2\nlock_retry_backoff = \"100ms\"\nmax_queue_wait = \"1h\"",
    );
    rehearse_and_approve(&rig);
    let holder = Holder::start(&rig);
    let before = live_fingerprint(&rig);
    let r = apply(&rig);
    r.expect_code(1);
    let rel = r.json();
    assert_eq!(rel["outcome"], "rolled_back", "{rel:#}");
    assert_eq!(rel["migrations"][0]["attempts"], 3, "1 try + 2 retries: {rel:#}");
    assert!(rel["reason"].as_str().unwrap().contains("lock"), "{rel:#}");
    drop(holder);
    assert_eq!(live_fingerprint(&rig), before);
}

#[test]
fn on_failure_down_reverts_what_the_release_applied_and_halt_leaves_live_for_a_person() {
    let rig = Rig::start("sqlx", SETUP);
    configure(&rig, "on_failure = \"down\"");
    let before = failing_plan(&rig);

    let r = apply(&rig);
    r.expect_code(1);
    let rel = r.json();
    assert_eq!((rel["outcome"].as_str(), rel["recovery"].as_str()), (Some("rolled_back"), Some("down")), "{rel:#}");
    let statuses: Vec<&str> =
        rel["migrations"].as_array().unwrap().iter().map(|m| m["status"].as_str().unwrap()).collect();
    assert_eq!(statuses, ["reverted", "reverted", "failed"], "{rel:#}");
    let downs: Vec<&str> = rel["journal"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["step"] == "down")
        .map(|e| e["detail"].as_str().unwrap())
        .collect();
    assert_eq!(downs, ["2", "1"], "downs run newest first");
    assert_eq!(rows(&rig.live, "app", "SELECT count(*) FROM _sqlx_migrations"), ["0"], "sqlx's history is empty again");
    // The downs give back the schema and data as they were (the history
    // table, which the downs leave empty, aside).
    as_app(&rig.live, "app", "DROP TABLE _sqlx_migrations");
    assert_eq!(live_fingerprint(&rig), before);
    assert!(live_dbs_like(&rig, "app_failed_").is_empty(), "down restores nothing");

    // halt: live is left as the failure left it, and the reason says how to go back.
    // (Rehearsed on the first snapshot, from before the duplicate row.)
    configure(&rig, "on_failure = \"halt\"");
    let snaps = rig.pgr.run_json(&["snapshots"]).json();
    let oldest = snaps.as_array().unwrap().last().unwrap()["id"].as_str().unwrap().to_string();
    rig.rehearse(&["--snapshot", &oldest]).ok();
    rig.pgr.run_json(&["approve", "--plan", &plan_of(&rig)]).ok();
    let r = apply(&rig);
    r.expect_code(1);
    let rel = r.json();
    assert_eq!(rel["outcome"], "halted", "{rel:#}");
    let reason = rel["reason"].as_str().unwrap();
    let snap = rel["pre_snapshot_id"].as_str().unwrap();
    assert!(reason.contains(&format!("pgrehearse restore {snap} --replace-live --yes")), "{reason}");
    assert_eq!(rows(&rig.live, "app", "SELECT version FROM _sqlx_migrations ORDER BY version"), ["1", "2"]);
    assert!(live_dbs_like(&rig, "app_failed_").is_empty());
}
