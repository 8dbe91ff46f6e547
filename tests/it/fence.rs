//! The write fence (`fence_writes = true`) on real clusters: an application
//! writer that reconnects for every insert (as a pool does after its
//! connection is ended) writes throughout a release. While the release may
//! still end in a restore its attempts fail with PostgreSQL's read-only
//! error; every row it saw committed is in live afterwards (nothing is
//! stranded in the failed database); a transaction open before the fence
//! never commits; and after the release — applied, restored, finished
//! after SIGTERM, or recovered after `kill -9` — it writes again and live's
//! (and the kept database's) settings in `pg_db_role_setting` equal the
//! originals. Payload's CLI, given the fence's exception in `PGOPTIONS`,
//! migrates through it. A fence that cannot end a session stops the
//! release before anything ran, and is lifted. A plan that cannot end in a
//! restore (one transaction) is not fenced; without the fence, the
//! rehearsal report and the release say that writes would be stranded.

use crate::harness::cli::toml_string;
use crate::harness::migrations::*;
use crate::harness::payload::{SLUG, add, by_name, payload_rig};
use crate::harness::release::*;
use crate::harness::wait_for;
use std::collections::BTreeSet;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

const SETUP: &str = "CREATE TABLE t (id int PRIMARY KEY, email text);
    INSERT INTO t SELECT g, 'user' || g || '@example.com' FROM generate_series(1, 2000) g;
    CREATE TABLE events (id bigserial PRIMARY KEY, note text NOT NULL);
    GRANT ALL ON events, events_id_seq TO app;";

/// PostgreSQL's error for a write in a read-only transaction (SQLSTATE 25006).
const READ_ONLY: &str = "read-only transaction";

/// What the application writer saw.
#[derive(Default)]
struct Seen {
    /// Notes of the rows whose insert returned success (committed).
    committed: Vec<String>,
    /// The error of every failed attempt.
    errors: Vec<String>,
}

impl Seen {
    fn read_only_errors(&self) -> usize {
        self.errors.iter().filter(|e| e.contains(READ_ONLY)).count()
    }
}

/// Runs `during` while a writer inserts one row into `events` every 20 ms,
/// each on a new connection; returns what `during` returned and what the
/// writer saw. The writer runs on until it has committed `after` rows once
/// `during` is over (it must be able to write again).
fn with_writer<T>(rig: &Rig, after: usize, during: impl FnOnce() -> T) -> (T, Seen) {
    let seen = Mutex::new(Seen::default());
    let stop = AtomicBool::new(false);
    let out = std::thread::scope(|s| {
        s.spawn(|| {
            let mut n = 0;
            while !stop.load(Ordering::SeqCst) {
                n += 1;
                let note = format!("w{n}");
                let sql = format!("SET ROLE app; INSERT INTO events (note) VALUES ('{note}')");
                let out = rig.live.psql_output("app", &sql);
                let mut seen = seen.lock().unwrap();
                if out.status.success() {
                    seen.committed.push(note);
                } else {
                    seen.errors.push(String::from_utf8_lossy(&out.stderr).trim().to_string());
                }
                drop(seen);
                std::thread::sleep(Duration::from_millis(20));
            }
        });
        wait_for("the writer's first rows", Duration::from_secs(20), Duration::from_millis(20), || {
            (seen.lock().unwrap().committed.len() >= 5).then_some(())
        });
        let out = during();
        let base = seen.lock().unwrap().committed.len();
        wait_for(
            "the writer to write again after the release",
            Duration::from_secs(20),
            Duration::from_millis(20),
            || (seen.lock().unwrap().committed.len() >= base + after).then_some(()),
        );
        stop.store(true, Ordering::SeqCst);
        out
    });
    let seen = seen.into_inner().unwrap();
    eprintln!(
        "writer: {} rows committed, {} attempts failed read-only, {} failed otherwise",
        seen.committed.len(),
        seen.read_only_errors(),
        seen.errors.len() - seen.read_only_errors()
    );
    (out, seen)
}

/// `db`'s own settings (`pg_db_role_setting`, not per role), as one line.
fn settings(rig: &Rig, db: &str) -> String {
    rig.live.psql(
        "postgres",
        &format!(
            "SELECT coalesce((SELECT array_to_string(setconfig, ',') FROM pg_db_role_setting s \
             JOIN pg_database d ON d.oid = s.setdatabase WHERE d.datname = '{db}' AND s.setrole = 0), '')"
        ),
    )
}

fn notes(rig: &Rig, db: &str) -> BTreeSet<String> {
    rows(&rig.live, db, "SELECT note FROM events").into_iter().collect()
}

/// A migration that commits and takes a while, then one outside a
/// transaction: the plan runs file by file, so a failure restores.
fn two_step_plan(rig: &Rig) {
    score_steps(rig, SLOW_SCORE);
}

/// The release was fenced and the fence came down.
fn assert_fence_used_and_lifted(rel: &serde_json::Value) {
    assert_eq!(rel["fence"]["used"], true, "{rel:#}");
    assert!(rel["fence"]["from"].is_string() && rel["fence"]["until"].is_string(), "{:#}", rel["fence"]);
    let steps = journal_steps(rel);
    assert!(steps.iter().any(|s| s == "fence_on"), "no fence_on: {steps:?}");
    assert!(steps.iter().any(|s| s == "fence_off"), "the fence was not lifted: {steps:?}");
}

/// The release was fenced from before its pre-release snapshot, and the
/// fence came down.
fn assert_fence_used(rel: &serde_json::Value) {
    assert_fence_used_and_lifted(rel);
    let steps = journal_steps(rel);
    let on = steps.iter().position(|s| s == "fence_on").unwrap_or_else(|| panic!("no fence_on: {steps:?}"));
    let snap = steps.iter().position(|s| s == "snapshot").unwrap_or_else(|| panic!("no snapshot: {steps:?}"));
    assert!(on < snap, "the fence goes up before the pre-release snapshot: {steps:?}");
}

#[test]
fn a_fenced_release_that_restores_strands_no_write() {
    let rig = Rig::start("sqlx", SETUP);
    configure(&rig, "fence_writes = true");
    rig.live.psql("postgres", "ALTER DATABASE app SET work_mem = '7MB'");
    let original = settings(&rig, "app");
    two_step_plan(&rig);
    unique_email_step(&rig);
    rehearse_and_approve(&rig);
    // A duplicate on live only: migration 3 fails there, after 1 committed.
    as_app(&rig.live, "app", "INSERT INTO t VALUES (2001, 'user1@example.com');");

    let (r, seen) = with_writer(&rig, 3, || {
        // A transaction open before the fence: without the fence it would
        // commit after the pre-release snapshot.
        let open = "SET ROLE app;\nBEGIN;\nINSERT INTO events (note) VALUES ('open before the fence');\nSELECT pg_sleep(8);\nCOMMIT;\n";
        let mut holder = rig.live.psql_session("app", open);
        wait_for("the open transaction", Duration::from_secs(20), Duration::from_millis(20), || {
            let sql =
                "SELECT count(*) FROM pg_stat_activity WHERE query LIKE '%pg_sleep(8)%' AND pid <> pg_backend_pid()";
            (rig.live.psql("postgres", sql) == "1").then_some(())
        });
        let r = apply(&rig);
        let _ = holder.kill();
        let _ = holder.wait();
        r
    });
    r.expect_code(1);
    let rel = r.json();
    assert_eq!(rel["outcome"], "restored", "{rel:#}");
    assert_fence_used(&rel);
    let failed = rel["failed_database"].as_str().expect("failed_database").to_string();

    assert!(seen.read_only_errors() > 0, "no write failed with `{READ_ONLY}`; errors: {:#?}", seen.errors);
    let live = notes(&rig, "app");
    let missing: Vec<&String> = seen.committed.iter().filter(|n| !live.contains(*n)).collect();
    assert!(missing.is_empty(), "rows the writer saw committed are missing from live: {missing:?}");
    let stranded: Vec<String> = notes(&rig, &failed).difference(&live).cloned().collect();
    assert!(stranded.is_empty(), "rows only in the failed database (stranded): {stranded:?}");
    assert!(!live.contains("open before the fence"), "the transaction open before the fence committed");
    // pgrehearse's own finding agrees: nothing stranded, nothing unknown.
    let sw = &rel["stranded_writes"];
    assert_eq!(sw["tables"], serde_json::json!([]), "{sw:#}");
    assert_eq!(sw["unknown"], serde_json::json!([]), "{sw:#}");
    assert_eq!(sw["error"], serde_json::Value::Null, "{sw:#}");
    assert_eq!(sw["kept_in"], failed.as_str(), "{sw:#}");

    assert_eq!(settings(&rig, "app"), original, "the restored live's settings");
    assert_eq!(settings(&rig, &failed), original, "the kept failed database's settings");
}

#[test]
fn a_fenced_release_that_applies_lifts_the_fence_and_puts_the_original_setting_back() {
    let rig = Rig::start("sqlx", SETUP);
    configure(&rig, "fence_writes = true");
    // The database's own value of the fence's setting is put back as it was.
    rig.live.psql("postgres", "ALTER DATABASE app SET default_transaction_read_only = off");
    let original = settings(&rig, "app");
    two_step_plan(&rig);
    rehearse_and_approve(&rig);

    let (r, seen) = with_writer(&rig, 3, || apply(&rig));
    r.expect_code(0);
    let rel = r.json();
    assert_eq!(rel["outcome"], "applied", "{rel:#}");
    assert_fence_used(&rel);
    assert!(seen.read_only_errors() > 0, "no write failed with `{READ_ONLY}`; errors: {:#?}", seen.errors);
    let live = notes(&rig, "app");
    assert!(seen.committed.iter().all(|n| live.contains(n)), "a committed row is missing from live");
    assert_eq!(settings(&rig, "app"), original);
    assert_eq!(applied_versions(&rig.live), ["1", "2"]);
}

#[test]
fn sigterm_during_a_fenced_release_finishes_it_and_lifts_the_fence() {
    let rig = Rig::start("sqlx", SETUP);
    configure(&rig, "fence_writes = true");
    let original = settings(&rig, "app");
    two_step_plan(&rig);
    rehearse_and_approve(&rig);
    let bg = rig.pgr.spawn(&["--json", "apply"]);
    wait_for("the fence on live", Duration::from_secs(60), Duration::from_millis(20), || {
        settings(&rig, "app").contains("default_transaction_read_only=on").then_some(())
    });
    crate::harness::proc::signal(bg.pid(), libc::SIGTERM);
    let r = bg.wait(Duration::from_secs(120));
    assert_eq!(r.code, 0, "{}\n{}", r.stdout, tail(&r.stderr, 3000));
    let rel: serde_json::Value = serde_json::from_str(&r.stdout).unwrap();
    assert_eq!(rel["outcome"], "applied", "{rel:#}");
    assert_fence_used(&rel);
    assert_eq!(settings(&rig, "app"), original);
    as_app(&rig.live, "app", "INSERT INTO events (note) VALUES ('after the release');");
}

#[test]
fn recovery_after_kill_9_inside_the_fence_restores_and_lifts_it() {
    let rig = Rig::start("sqlx", SETUP);
    configure(&rig, "fence_writes = true");
    rig.live.psql("postgres", "ALTER DATABASE app SET work_mem = '7MB'");
    let original = settings(&rig, "app");
    two_step_plan(&rig);
    rehearse_and_approve(&rig);

    crash_apply(&rig, "migration:2");
    let id = interrupted_release(&rig, "migration:2");
    // The killed release left live fenced: the application cannot write.
    let write = "SET ROLE app; INSERT INTO events (note) VALUES ('while fenced')";
    let out = rig.live.psql_output("app", write);
    assert!(!out.status.success(), "a write succeeded on a fenced live");
    assert!(String::from_utf8_lossy(&out.stderr).contains(READ_ONLY), "{}", String::from_utf8_lossy(&out.stderr));

    wait_no_sessions(&rig.live, "pgrehearse-lock-%");
    rig.pgr.run_json(&["status"]).ok();
    let rel = release(&rig, &id);
    assert_eq!(rel["outcome"], "restored", "{rel:#}");
    assert_fence_used(&rel);
    let failed = rel["failed_database"].as_str().expect("failed_database").to_string();
    assert_eq!(settings(&rig, "app"), original, "the restored live's settings");
    assert_eq!(settings(&rig, &failed), original, "the kept failed database's settings");
    as_app(&rig.live, "app", "INSERT INTO events (note) VALUES ('after recovery');");
}

#[test]
fn payload_s_cli_migrates_through_the_fence() {
    let rig = payload_rig();
    add(&rig, "migrations", SLUG);
    configure(&rig, "fence_writes = true");
    let original = settings(&rig, "app");
    rehearse_and_approve(&rig);
    let r = apply(&rig);
    r.ok();
    let rel = r.json();
    assert_eq!(rel["outcome"], "applied", "{rel:#}");
    assert_fence_used(&rel);
    assert_eq!(by_name(&rel, SLUG)["status"], "applied", "{rel:#}");
    assert_eq!(settings(&rig, "app"), original);
}

#[test]
fn a_plan_in_one_transaction_is_not_fenced() {
    let rig = Rig::start("sqlx", SETUP);
    configure(&rig, "fence_writes = true");
    let original = settings(&rig, "app");
    rig.sqlx("1", "add_score", "ALTER TABLE t ADD COLUMN score int;\n", Some("ALTER TABLE t DROP COLUMN score;\n"));
    rehearse_and_approve(&rig);
    let r = apply(&rig);
    r.ok();
    let rel = r.json();
    assert_eq!(rel["outcome"], "applied", "{rel:#}");
    assert_eq!(rel["fence"]["used"], false, "{rel:#}");
    assert!(rel["fence"]["note"].as_str().unwrap_or_default().contains("one transaction"), "{:#}", rel["fence"]);
    assert!(!journal_steps(&rel).iter().any(|s| s.starts_with("fence")), "{rel:#}");
    assert_eq!(settings(&rig, "app"), original);
}

#[test]
fn without_the_fence_the_rehearsal_and_the_release_say_writes_would_be_stranded() {
    let rig = Rig::start("sqlx", SETUP);
    configure(&rig, "");
    two_step_plan(&rig);
    let report = rig.rehearse(&[]);
    report.ok();
    let notes = report.json()["notes"].to_string();
    assert!(notes.contains("stranded") && notes.contains("fence_writes = true"), "rehearsal notes: {notes}");
    let plan = plan_of(&rig);
    rig.pgr.run_json(&["approve", "--plan", &plan, "--by", "test"]).ok();
    let r = apply(&rig);
    r.ok();
    let rel = r.json();
    assert_eq!(rel["fence"]["used"], false, "{rel:#}");
    let note = rel["fence"]["note"].as_str().unwrap_or_default();
    assert!(note.contains("stranded") && note.contains("fence_writes = true"), "{:#}", rel["fence"]);
    let id = rel["release_id"].as_str().expect("release_id");
    let text = rig.pgr.run(&["releases", id]);
    text.ok();
    assert!(text.stdout.contains("Write fence: not used; if this plan fails"), "{}", text.stdout);
}

#[test]
fn a_fence_that_cannot_end_a_session_stops_the_release_before_anything_ran_and_is_lifted() {
    let rig = Rig::start("sqlx", SETUP);
    // admin_url's role may set app's settings (it is a member of app, the
    // owner) and see and end other roles' sessions, but not a superuser's.
    rig.live.psql("postgres", &format!("CREATE ROLE fencer LOGIN PASSWORD '{PASSWORD}'"));
    rig.live.psql("postgres", "GRANT app, pg_monitor, pg_signal_backend TO fencer");
    let admin = toml_string(&rig.live.url("postgres", "fencer", PASSWORD));
    rig.configure(&format!("admin_url = {admin}\n{ALWAYS_OPEN}\nfence_writes = true"));
    let original = settings(&rig, "app");
    two_step_plan(&rig);
    rehearse_and_approve(&rig);
    let mut superuser = rig.live.psql_session("app", "SELECT pg_sleep(120);\n");
    wait_for("the superuser's session", Duration::from_secs(20), Duration::from_millis(20), || {
        let sql =
            "SELECT count(*) FROM pg_stat_activity WHERE query LIKE '%pg_sleep(120)%' AND pid <> pg_backend_pid()";
        (rig.live.psql("postgres", sql) == "1").then_some(())
    });
    let r = apply(&rig);
    let _ = superuser.kill();
    let _ = superuser.wait();
    r.expect_code(1);
    let rel = r.json();
    assert_eq!(rel["outcome"], "aborted", "{rel:#}");
    assert_eq!(rel["error_kind"], "fence_failed", "{rel:#}");
    assert!(rel["reason"].as_str().unwrap_or_default().contains("pg_signal_backend"), "{rel:#}");
    assert_fence_used_and_lifted(&rel);
    assert!(!journal_steps(&rel).iter().any(|s| s == "snapshot"), "{rel:#}");
    assert_eq!(applied_versions(&rig.live), Vec::<String>::new(), "nothing ran on live");
    assert_eq!(settings(&rig, "app"), original);
    as_app(&rig.live, "app", "INSERT INTO events (note) VALUES ('after the aborted release');");
}
