//! The live server stopped during `pgrehearse apply` (issue 7, the
//! fault-injection suite's crash half; SIGKILL of pgrehearse itself is in
//! `faults_kill.rs`).
//!
//! The live cluster stopped with `pg_ctl stop -m immediate` mid-release:
//! while the pre-release pg_dump streams, while an all-transactional
//! plan's transaction is open, while a `-- no-transaction`
//! `CREATE INDEX CONCURRENTLY` is under way (held in its "waiting for
//! writers" phase by a test transaction, so its invalid index exists),
//! and while the recovery's pg_restore runs after a migration failed on
//! live. pgrehearse must fail cleanly (exit 1, one JSON record whose
//! outcome says what happened, never `applied`, no panic); after the
//! server is started again, the next command on the target (`status`)
//! finishes the release: live is exactly in its pre-release state, the
//! failed database is kept when live was restored, and the journal says
//! so. The cluster runs with `synchronous_commit = on` here (the harness
//! turns it off for speed, which would let a crash lose commits
//! pgrehearse already journaled).
//!
//! Every checked case is written to the fault report
//! (`crate::harness::faults::record`).

use crate::harness::cli::{Background, Run, local_store_path};
use crate::harness::dump::{step_until, stopped_pg_dump};
use crate::harness::faults::record;
use crate::harness::migrations::*;
use crate::harness::pg::Cluster;
use crate::harness::proc::try_signal;
use crate::harness::release::*;
use crate::harness::shadow::{stopped_pg_restore, working_children};
use crate::harness::{data, wait_for};
use serde_json::Value;
use std::io::{BufRead, BufReader, Write};
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

/// Makes commits durable across `pg_ctl stop -m immediate`, as in production.
fn durable_commits(c: &Cluster) {
    c.psql("postgres", "ALTER SYSTEM SET synchronous_commit = on");
    c.psql("postgres", "SELECT pg_reload_conf()");
    wait_for("synchronous_commit = on", Duration::from_secs(10), Duration::from_millis(20), || {
        (c.psql("postgres", "SHOW synchronous_commit") == "on").then_some(())
    });
}

/// The start of a text's first line (at most `n` bytes), for the report.
fn head(s: &str, n: usize) -> String {
    let line = s.lines().next().unwrap_or_default();
    if line.len() <= n {
        return line.to_string();
    }
    let mut at = n;
    while !line.is_char_boundary(at) {
        at -= 1;
    }
    format!("{}…", &line[..at])
}

/// Waits until live runs a statement of the release's session that starts like `prefix`.
fn wait_release_statement(rig: &Rig, bg: &mut Background, prefix: &str) {
    let sql = format!(
        "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'pgrehearse-release' \
         AND state = 'active' AND query LIKE '{prefix}%'"
    );
    wait_for(&format!("`{prefix}…` to run on live"), Duration::from_secs(60), Duration::from_millis(20), || {
        assert!(bg.running(), "apply exited before `{prefix}…`:\n{}", bg.stderr_so_far());
        (rig.live.psql("postgres", &sql) == "1").then_some(())
    });
}

const STOP_SETUP: &str = "CREATE TABLE t (id int PRIMARY KEY, note text NOT NULL);
    INSERT INTO t SELECT g, 'row ' || g FROM generate_series(1, 3000) g;
    CREATE TABLE ctl (pause float8 NOT NULL, cic_pause float8 NOT NULL);
    INSERT INTO ctl VALUES (0, 0);";

/// What a stopped-server case must end in.
struct Stop<'a> {
    fault: &'a str,
    /// The outcome the failed `apply` records while the server is down.
    failed_as: &'a str,
    /// The outcome once the restarted server let `status` finish the release.
    outcome: &'a str,
    /// Versions in the kept failed database's history (outcome `restored`).
    kept: &'a [&'a str],
}

/// Approves, records live, runs `fault` (which stops the live server and
/// returns the finished `apply`), checks the clean failure, starts the
/// server again, runs `status` and checks live is exactly pre-release.
/// Returns the final release record.
fn stop_case(rig: &Rig, s: &Stop, fault: impl FnOnce(&Rig) -> Run) -> Value {
    eprintln!("\n===== live stopped: {}", s.fault);
    approve_current(rig);
    let before = live_fingerprint(rig);
    let failed_before = live_dbs_like(rig, "app_failed_");
    let r = fault(rig);
    eprintln!("apply: exit {}\n{}\n{}", r.code, r.stdout, tail(&r.stderr, 3000));
    assert!(!r.stderr.contains("panicked"), "pgrehearse panicked:\n{}", r.stderr);
    r.expect_code(1);
    let doc = r.json();
    let id = doc["release_id"].as_str().unwrap_or_else(|| panic!("no release_id: {doc:#}")).to_string();
    let reason = doc["reason"].as_str().unwrap_or_default().to_string();
    assert_eq!(doc["outcome"], s.failed_as, "{doc:#}");
    assert!(!reason.is_empty(), "the failed release gives no reason: {doc:#}");
    // `releases` reads only pgrehearse's own state: it works with live down.
    assert_eq!(release(rig, &id)["outcome"], s.failed_as, "the record while live is down");

    rig.live.start_again();
    let st = rig.pgr.run_json(&["status"]);
    eprintln!("status after the restart: exit {}\n{}", st.code, tail(&st.stderr, 3000));
    st.expect_code(0);
    let rel = release(rig, &id);
    assert_eq!(rel["outcome"], s.outcome, "{rel:#}");
    let steps = journal_steps(&rel);
    assert_eq!(steps.last().map(String::as_str), Some("finished"), "{steps:?}");
    assert_eq!(rel["journal"].as_array().unwrap().last().unwrap()["detail"], s.outcome, "{rel:#}");
    if s.failed_as == "interrupted" {
        let at = steps.iter().position(|x| x == "suspended").unwrap_or_else(|| panic!("no `suspended`: {steps:?}"));
        assert!(steps[at..].iter().any(|x| x == "interrupted"), "the restart did not take it over: {steps:?}");
    }
    assert_eq!(live_dbs_like(rig, "app_restoring_"), Vec::<String>::new(), "a half-restored database was left");
    let kept: Vec<String> =
        live_dbs_like(rig, "app_failed_").into_iter().filter(|d| !failed_before.contains(d)).collect();
    if s.outcome == "restored" {
        assert_eq!(kept, vec![rel["failed_database"].as_str().unwrap_or("-").to_string()], "{rel:#}");
        assert_eq!(versions_in(rig, &kept[0]), s.kept, "history of the kept failed database {}", kept[0]);
    } else {
        assert_eq!(kept, Vec::<String>::new(), "a database was kept although live was not restored");
    }
    same(&live_fingerprint(rig), &before, "live is not exactly as it was before the release");
    assert_eq!(invalid_indexes(&rig.live, "app"), "0", "invalid indexes on live");
    let kept_note = if kept.is_empty() { String::new() } else { format!(", failed database kept as {}", kept[0]) };
    record(
        "apply",
        &format!("live cluster stopped (immediate) {}", s.fault),
        &format!(
            "exit 1, release {} (\"{}\"); after restart `status`: {}, live exactly pre-release{kept_note}",
            s.failed_as,
            head(&reason, 140),
            s.outcome
        ),
    );
    rel
}

/// Stops live while the pre-release pg_dump streams into the store.
fn stop_during_dump(rig: &Rig) -> Run {
    let store = local_store_path(&rig.pgr);
    let mut bg = rig.pgr.spawn(&["--json", "apply"]);
    let dump = stopped_pg_dump(&mut bg);
    step_until(&bg, dump, Duration::from_millis(10), "the pre-release dump's first stored bytes", || {
        partial_bytes(&store) > 0
    });
    rig.live.stop_immediate();
    try_signal(dump, libc::SIGCONT);
    bg.wait(Duration::from_secs(60))
}

/// Stops live while the release's session runs a statement starting like `prefix`.
fn stop_in_statement(rig: &Rig, prefix: &str) -> Run {
    let mut bg = rig.pgr.spawn(&["--json", "apply"]);
    wait_release_statement(rig, &mut bg, prefix);
    rig.live.stop_immediate();
    bg.wait(Duration::from_secs(60))
}

/// A psql session holding a transaction open on live until dropped.
struct Blocker(Child);

impl Blocker {
    /// Runs `BEGIN; <sql>` in `db` and waits until it has.
    fn start(c: &Cluster, db: &str, sql: &str) -> Blocker {
        let mut child = c
            .client("psql")
            .args(["-XAtq", "-v", "ON_ERROR_STOP=1", "-d", db])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("start psql");
        let mut stdin = child.stdin.take().expect("psql stdin");
        writeln!(stdin, "BEGIN;\n{sql};\nSELECT 'holding';").expect("write to psql");
        let mut line = String::new();
        BufReader::new(child.stdout.take().expect("psql stdout")).read_line(&mut line).expect("read psql");
        assert_eq!(line.trim(), "holding", "the blocking transaction did not start");
        std::mem::forget(stdin); // keeps the session open until the kill
        Blocker(child)
    }
}

impl Drop for Blocker {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Stops live while the plan's `CREATE INDEX CONCURRENTLY` is under way:
/// during the file's pause, a test transaction takes a writer's lock on `t`,
/// so the build waits for it after creating its (invalid) index.
fn stop_during_cic(rig: &Rig) -> Run {
    let mut bg = rig.pgr.spawn(&["--json", "apply"]);
    wait_release_statement(rig, &mut bg, "SELECT pg_sleep((SELECT cic_pause");
    let _blocker = Blocker::start(&rig.live, "app", "LOCK TABLE t IN ROW EXCLUSIVE MODE");
    let sql = "SELECT p.phase FROM pg_stat_progress_create_index p JOIN pg_stat_activity a USING (pid) \
               WHERE a.application_name = 'pgrehearse-release' AND p.command = 'CREATE INDEX CONCURRENTLY'";
    let phase = wait_for(
        "the concurrent build to wait for writers",
        Duration::from_secs(30),
        Duration::from_millis(20),
        || {
            assert!(bg.running(), "apply exited before the index build:\n{}", bg.stderr_so_far());
            let p = rig.live.psql("postgres", sql);
            p.starts_with("waiting for writers").then_some(p)
        },
    );
    eprintln!("CREATE INDEX CONCURRENTLY is in phase `{phase}`; stopping live");
    assert_eq!(invalid_indexes(&rig.live, "app"), "1", "the build's invalid index should exist now");
    rig.live.stop_immediate();
    bg.wait(Duration::from_secs(60))
}

/// Stops live while the recovery's pg_restore fills the new database.
fn stop_during_restore(rig: &Rig) -> Run {
    let mut bg = rig.pgr.spawn(&["--json", "apply"]);
    let (restore, argv) = stopped_pg_restore(&mut bg);
    eprintln!("frozen pg_restore {restore}: {argv}");
    assert_eq!(live_dbs_like(rig, "app_restoring_").len(), 1, "no database being restored");
    let workers = working_children(&bg, "pg_restore");
    rig.live.stop_immediate();
    for pid in workers.into_iter().chain([restore]) {
        try_signal(pid, libc::SIGCONT);
    }
    bg.wait(Duration::from_secs(60))
}

#[test]
fn a_live_server_stopped_mid_release_is_recovered_after_its_restart() {
    let t0 = Instant::now();
    let rig = Rig::start("sqlx", STOP_SETUP);
    durable_commits(&rig.live);
    configure(&rig, "");
    // Plan A, all transactional: one transaction.
    rig.sqlx("1", "add_flag", "ALTER TABLE t ADD COLUMN flag boolean NOT NULL DEFAULT false;\n", None);
    let pause = "SELECT pg_sleep((SELECT pause FROM ctl));\n";
    rig.sqlx(
        "2",
        "pause_then_check",
        &format!("{pause}ALTER TABLE t ADD CONSTRAINT t_note_set CHECK (note <> '');\n"),
        None,
    );
    rig.rehearse(&["--snapshot", "fresh"]).ok();

    data::create_blob_table(&rig.live, "app", "app", 16);
    let s =
        Stop { fault: "while the pre-release pg_dump streams", failed_as: "aborted", outcome: "aborted", kept: &[] };
    let rel = stop_case(&rig, &s, stop_during_dump);
    assert!(!journal_steps(&rel).iter().any(|x| x == "apply"), "no migration may run without its snapshot");
    as_app(&rig.live, "app", "DROP TABLE blobs");

    as_app(&rig.live, "app", "UPDATE ctl SET pause = 60");
    let s = Stop {
        fault: "while the all-transactional plan's transaction is open (migration 2 of 2)",
        failed_as: "rolled_back",
        outcome: "rolled_back",
        kept: &[],
    };
    stop_case(&rig, &s, |r| stop_in_statement(r, "SELECT pg_sleep((SELECT pause"));
    as_app(&rig.live, "app", "UPDATE ctl SET pause = 0");

    // Plan B: a non-transactional concurrent index build in the middle.
    rig.sqlx(
        "3",
        "add_score",
        "ALTER TABLE t ADD COLUMN score int NOT NULL DEFAULT 0;\nUPDATE t SET score = id % 100;\n",
        None,
    );
    let cic = "-- no-transaction\nSELECT pg_sleep((SELECT cic_pause FROM ctl));\nCREATE INDEX CONCURRENTLY t_score ON t (score);\n";
    rig.sqlx("4", "index_score", cic, None);
    rig.sqlx("5", "check_note", "ALTER TABLE t ADD CONSTRAINT t_note_ok CHECK (note NOT LIKE 'bad%');\n", None);
    rig.rehearse(&["--snapshot", "fresh"]).ok();

    as_app(&rig.live, "app", "UPDATE ctl SET cic_pause = 2");
    let s = Stop {
        fault: "during CREATE INDEX CONCURRENTLY (migration 4 of 5, 1-3 committed)",
        failed_as: "interrupted",
        outcome: "restored",
        kept: &["1", "2", "3"],
    };
    let rel = stop_case(&rig, &s, stop_during_cic);
    let kept = rel["failed_database"].as_str().unwrap().to_string();
    assert_eq!(invalid_indexes(&rig.live, &kept), "1", "the kept database holds the interrupted build's index");
    as_app(&rig.live, "app", "UPDATE ctl SET cic_pause = 0");

    // Migration 5 fails on live only (a row the rehearsal never saw): recovery restores.
    as_app(&rig.live, "app", "INSERT INTO t VALUES (100001, 'bad row')");
    let s = Stop {
        fault: "during the recovery's pg_restore after migration 5 failed",
        failed_as: "interrupted",
        outcome: "restored",
        kept: &["1", "2", "3", "4"],
    };
    let rel = stop_case(&rig, &s, stop_during_restore);
    let steps = journal_steps(&rel);
    let restores = steps.iter().filter(|x| *x == "restore").count();
    assert_eq!(restores, 2, "the restore should run again after the restart: {steps:?}");
    as_app(&rig.live, "app", "DELETE FROM t WHERE id = 100001");
    eprintln!("stopped-server cases done in {:?}", t0.elapsed());
}
