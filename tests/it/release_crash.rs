//! Crash matrix of `pgrehearse apply`: the process is killed with SIGKILL
//! (as by `kill -9`) at every journaled step of a release — before the
//! pre-release snapshot, while its pg_dump streams into the store, after
//! it, at `apply`, at migration K and inside a migration's statement, after
//! the last migration committed, in the post-checks, and at each step of a
//! restore recovery (also while its pg_restore runs, and between the swap's
//! two renames while the live database's name is free, also when that
//! recovery was itself finishing a crash) — and then started again. After
//! the restart, live is exactly in its pre-release state (schema and every
//! table's rows, history included, equal to what they were just before
//! `apply`) or exactly in its post-release state (equal to a copy of live
//! to which the test applied the plan itself as sqlx would, the history
//! holding every file with sqlx's checksum), never in between. Nothing is
//! lost: a restore keeps the failed database, which holds what the release
//! had committed, and leaves no half-restored one. The release's record
//! says which: `aborted`/`rolled_back`/`restored` for the pre-release state,
//! `applied` for the post-release one, with `interrupted` then `finished`
//! in its journal.
//!
//! One rig, three plans: an all-transactional one (one transaction: a crash
//! mid-plan is rolled back, nothing restored), one with a
//! `-- no-transaction` `CREATE INDEX CONCURRENTLY` in the middle (a crash
//! mid-plan leaves live in between, so recovery must restore), and a last
//! one-file plan for the post-checks. The crash points inside a recovery
//! use a release that fails on live first: a row the rehearsal never saw
//! violates migration 5's CHECK. Each crash point is checked on its own; a
//! failing one is reported and the next still runs.

use crate::harness::cli::local_store_path;
use crate::harness::data;
use crate::harness::dump::{step_until, stopped_pg_dump};
use crate::harness::migrations::*;
use crate::harness::proc::signal;
use crate::harness::release::*;
use crate::harness::shadow::{databases, kill_and_wait, stopped_pg_restore, working_children};
use serde_json::Value;
use std::time::{Duration, Instant};

const SETUP: &str = "CREATE TABLE t (id int PRIMARY KEY, note text NOT NULL);
    INSERT INTO t SELECT g, 'row ' || g FROM generate_series(1, 3000) g;
    CREATE TABLE ctl (pause float8 NOT NULL);
    INSERT INTO ctl VALUES (0);";
/// A statement that waits as long as live's `ctl` says: 0 while rehearsed,
/// long on live when a test kills pgrehearse inside it (data, so the plan
/// hash stays the same).
const PAUSE: &str = "SELECT pg_sleep((SELECT pause FROM ctl));\n";
/// What one crash point must end in.
struct Expect<'a> {
    /// The step (`step` or `step:detail`) the killed release's journal ends with.
    last: &'a str,
    /// The command run after the crash: `apply` (reports the release it finished) or `status`.
    restart: &'a str,
    outcome: &'a str,
    /// Steps the final journal must hold, and steps it must not.
    has: &'a [&'a str],
    lacks: &'a [&'a str],
    /// Versions the kept failed database's history holds (outcome `restored`).
    kept: &'a [&'a str],
}

/// Approves, records live, crashes the release with `crash`, restarts and
/// checks the state live ended in; returns the finished release.
fn crash_point(rig: &Rig, e: &Expect, post: Option<&Post>, crash: impl FnOnce(&Rig)) -> Value {
    assert_eq!(post.is_some(), e.outcome == "applied", "post-release state iff applied");
    approve_current(rig);
    let before = live_fingerprint(rig);
    let failed_before = live_dbs_like(rig, "app_failed_");
    crash(rig);
    let id = interrupted_release(rig, e.last);
    // The killed process's lock session ends as soon as its backend sees
    // the socket close; a restart a moment later finds the lock free.
    wait_no_sessions(&rig.live, "pgrehearse-lock-%");
    let r = rig.pgr.run_json(&[e.restart]);
    eprintln!("restart `{}`: exit {}\n{}\n{}", e.restart, r.code, r.stdout, tail(&r.stderr, 3000));
    if e.restart == "apply" {
        r.expect_code(if e.outcome == "applied" { 0 } else { 1 });
        let done = r.json();
        assert_eq!(done["release_id"], id.as_str(), "apply should report the release it finished: {done:#}");
        assert_eq!(done["finished_by_recovery"], true, "{done:#}");
        assert!(done.get("recovered").is_none(), "the ambiguous name is gone: {done:#}");
    } else {
        r.ok();
    }

    let rel = release(rig, &id);
    assert_eq!(rel["outcome"], e.outcome, "{rel:#}");
    let steps = journal_steps(&rel);
    let at = steps.iter().position(|s| s == "interrupted").unwrap_or_else(|| panic!("no `interrupted`: {steps:?}"));
    assert_eq!(steps.last().map(String::as_str), Some("finished"), "{steps:?}");
    assert_eq!(rel["journal"].as_array().unwrap().last().unwrap()["detail"], e.outcome, "{rel:#}");
    for s in e.has {
        assert!(steps.iter().any(|x| x == s), "the journal lacks `{s}`: {steps:?}");
    }
    for s in e.lacks {
        assert!(!steps.iter().any(|x| x == s), "the journal has `{s}`: {steps:?}");
    }
    assert_eq!(live_dbs_like(rig, "app_restoring_"), Vec::<String>::new(), "a half-restored database was left");
    let owner = rig.live.psql("postgres", "SELECT pg_get_userbyid(datdba) FROM pg_database WHERE datname = 'app'");
    assert_eq!(owner, "app", "live `app` (owner) after recovery");

    let kept: Vec<String> =
        live_dbs_like(rig, "app_failed_").into_iter().filter(|d| !failed_before.contains(d)).collect();
    if e.outcome == "restored" {
        assert_eq!(kept, vec![rel["failed_database"].as_str().unwrap_or("-").to_string()], "{rel:#}");
        assert!(steps[at..].iter().any(|s| s == "swap_done"), "no swap after the restart: {steps:?}");
        assert_eq!(versions_in(rig, &kept[0]), e.kept, "history of the kept failed database {}", kept[0]);
        let count = "SELECT count(*) FROM t";
        assert_eq!(rig.live.psql(&kept[0], count), rig.live.psql("app", count), "rows of t in {}", kept[0]);
    } else {
        assert_eq!(kept, Vec::<String>::new(), "a database was kept although live was not restored");
    }
    match post {
        None => same(&live_fingerprint(rig), &before, "live is not exactly as it was before the release"),
        Some(p) => {
            assert_eq!(history_rows(rig, "app"), p.history, "live's history after the release");
            same(&without_history(&live_fingerprint(rig)), &p.fingerprint, "live is not exactly the plan applied");
            let invalid = invalid_indexes(&rig.live, "app");
            assert_eq!(invalid, "0", "invalid indexes on live");
        }
    }
    rel
}

/// Kills `apply` while its pre-release pg_dump streams into the store
/// (pg_dump frozen, released in 10 ms steps until stored bytes appear).
fn kill_during_dump(rig: &Rig) {
    let store = local_store_path(&rig.pgr);
    let mut bg = rig.pgr.spawn(&["--json", "apply"]);
    let dump = stopped_pg_dump(&mut bg);
    step_until(&bg, dump, Duration::from_millis(10), "the pre-release dump's first stored bytes", || {
        partial_bytes(&store) > 0
    });
    signal(bg.pid(), libc::SIGKILL);
    assert_ne!(bg.wait(Duration::from_secs(10)).code, 0);
    // Its orphaned pg_dump would otherwise stay frozen with a session on live.
    kill_and_wait(dump);
    wait_no_sessions(&rig.live, "pg_dump");
}

/// Kills `apply` while live runs a migration's `pg_sleep` statement.
fn kill_in_statement(rig: &Rig) {
    let bg = apply_until_sleeping(rig, Duration::from_secs(60));
    signal(bg.pid(), libc::SIGKILL);
    assert_ne!(bg.wait(Duration::from_secs(10)).code, 0);
}

/// Kills `apply` while its recovery's pg_restore fills the new database.
fn kill_during_restore(rig: &Rig) {
    let mut bg = rig.pgr.spawn(&["--json", "apply"]);
    let (restore, argv) = stopped_pg_restore(&mut bg);
    eprintln!("frozen pg_restore {restore}: {argv}");
    assert_eq!(live_dbs_like(rig, "app_restoring_").len(), 1, "no database being restored");
    let children = working_children(&bg, "pg_restore");
    signal(bg.pid(), libc::SIGKILL);
    assert_ne!(bg.wait(Duration::from_secs(10)).code, 0);
    for pid in children.into_iter().chain([restore]) {
        kill_and_wait(pid);
    }
}

/// The crash between the swap's two renames: live's name is free.
fn crash_between_renames(rig: &Rig) {
    crash_apply(rig, "swap_renamed");
    let dbs = databases(&rig.live);
    assert!(!dbs.iter().any(|d| d == "app"), "between the renames `app` should not exist: {dbs:?}");
    assert_eq!(live_dbs_like(rig, "app_restoring_").len(), 1, "the restored database waits to be renamed: {dbs:?}");
}

/// A crash at migration 4, then the restart's recovery killed between the
/// swap's renames.
fn crash_twice(rig: &Rig) {
    crash_apply(rig, "migration:4");
    wait_no_sessions(&rig.live, "pgrehearse-lock-%");
    crash_between_renames(rig);
}

fn detail(rel: &Value, step: &str) -> String {
    let entry = rel["journal"].as_array().unwrap().iter().find(|e| e["step"] == step);
    entry.and_then(|e| e["detail"].as_str()).unwrap_or_default().to_string()
}

/// Runs one crash point; a panic is recorded, not propagated.
fn point(failures: &mut Vec<String>, name: &str, f: impl FnOnce()) {
    eprintln!("\n===== crash point: {name}");
    let t0 = Instant::now();
    if let Err(e) = std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)) {
        let msg = e.downcast_ref::<String>().cloned().or_else(|| e.downcast_ref::<&str>().map(|s| s.to_string()));
        failures.push(format!("{name}: {}", tail(&msg.unwrap_or_default(), 3000)));
    }
    eprintln!("===== {name}: {:?}", t0.elapsed());
}

#[test]
fn a_release_killed_at_any_step_ends_exactly_before_or_after_it() {
    let t0 = Instant::now();
    let rig = Rig::start("sqlx", SETUP);
    configure(&rig, "");
    let mut failures = Vec::new();
    let ex = |last, outcome, has, lacks| Expect { last, restart: "apply", outcome, has, lacks, kept: &[] };

    // Plan A, all transactional: one transaction.
    let plan_a = [
        rig.sqlx(
            "1",
            "add_flag",
            "ALTER TABLE t ADD COLUMN flag boolean NOT NULL DEFAULT false;\nUPDATE t SET flag = true WHERE id % 3 = 0;\n",
            Some("ALTER TABLE t DROP COLUMN flag;\n"),
        ),
        rig.sqlx(
            "2",
            "pause_then_check",
            &format!("{PAUSE}ALTER TABLE t ADD CONSTRAINT t_note_set CHECK (note <> '');\n"),
            Some("ALTER TABLE t DROP CONSTRAINT t_note_set;\n"),
        ),
    ];
    rig.rehearse(&["--snapshot", "fresh"]).ok();
    let single = &["apply", "migration"][..];
    point(&mut failures, "A: journaled migration:2 (single transaction)", || {
        let rel = crash_point(&rig, &ex("migration:2", "rolled_back", single, &["recovery"]), None, |r| {
            crash_apply(r, "migration:2")
        });
        assert_eq!(detail(&rel, "apply"), "single_transaction");
    });
    point(&mut failures, "A: killed inside migration 2's statement", || {
        as_app(&rig.live, "app", "UPDATE ctl SET pause = 60");
        crash_point(&rig, &ex("migration:2", "rolled_back", single, &["recovery"]), None, kill_in_statement);
        as_app(&rig.live, "app", "UPDATE ctl SET pause = 0");
    });
    point(&mut failures, "A: journaled applied (after COMMIT)", || {
        let post = post_state(&rig, &plan_a);
        let e = Expect { restart: "status", ..ex("applied", "applied", &["applied"], &["recovery"]) };
        crash_point(&rig, &e, Some(&post), |r| crash_apply(r, "applied"));
    });
    assert_eq!(versions_in(&rig, "app"), ["1", "2"], "plan A must be on live for plan B; failures: {failures:#?}");

    // Plan B: a non-transactional migration in the middle, per migration.
    let plan_b = [
        rig.sqlx(
            "3",
            "add_score",
            "ALTER TABLE t ADD COLUMN score int NOT NULL DEFAULT 0;\nUPDATE t SET score = id % 100, note = note || '.' WHERE id % 7 = 0;\n",
            Some("ALTER TABLE t DROP COLUMN score;\n"),
        ),
        rig.sqlx(
            "4",
            "index_score",
            &format!("-- no-transaction\n{PAUSE}CREATE INDEX CONCURRENTLY t_score ON t (score);\n"),
            Some("DROP INDEX t_score;\n"),
        ),
        rig.sqlx(
            "5",
            "check_note",
            "ALTER TABLE t ADD CONSTRAINT t_note_ok CHECK (note NOT LIKE 'bad%');\n",
            Some("ALTER TABLE t DROP CONSTRAINT t_note_ok;\n"),
        ),
    ];
    rig.rehearse(&["--snapshot", "fresh"]).ok();
    let untouched = &["snapshot_done", "apply"][..];
    point(&mut failures, "B: journaled snapshot (before the snapshot)", || {
        crash_point(&rig, &ex("snapshot", "aborted", &[], untouched), None, |r| crash_apply(r, "snapshot"));
    });
    point(&mut failures, "B: killed while the pre-release pg_dump streams", || {
        data::create_blob_table(&rig.live, "app", "app", 16);
        crash_point(&rig, &ex("snapshot", "aborted", &[], untouched), None, kill_during_dump);
        as_app(&rig.live, "app", "DROP TABLE blobs");
    });
    point(&mut failures, "B: journaled snapshot_done", || {
        let e = ex("snapshot_done", "aborted", &["snapshot_done"], &["apply"]);
        crash_point(&rig, &e, None, |r| crash_apply(r, "snapshot_done"));
    });
    point(&mut failures, "B: journaled migration:3 (nothing committed)", || {
        let e = ex("migration:3", "rolled_back", &["apply"], &["recovery", "migration_done"]);
        let rel = crash_point(&rig, &e, None, |r| crash_apply(r, "migration:3"));
        assert_eq!(detail(&rel, "apply"), "per_migration");
    });
    point(&mut failures, "B: journaled apply (snapshot pinned, no migration yet)", || {
        crash_point(&rig, &ex("apply", "rolled_back", &["apply"], &["migration", "recovery"]), None, |r| {
            crash_apply(r, "apply")
        });
    });
    let restored =
        |last, kept| Expect { kept, ..ex(last, "restored", &["recovery", "restore_done", "swap_done"], &[]) };
    point(&mut failures, "B: journaled migration:4 (3 committed)", || {
        crash_point(&rig, &restored("migration:4", &["1", "2", "3"]), None, |r| crash_apply(r, "migration:4"));
    });
    point(&mut failures, "B: killed inside migration 4's statement", || {
        as_app(&rig.live, "app", "UPDATE ctl SET pause = 60");
        crash_point(&rig, &restored("migration:4", &["1", "2", "3"]), None, kill_in_statement);
        as_app(&rig.live, "app", "UPDATE ctl SET pause = 0");
    });
    point(&mut failures, "B: journaled migration:5 (3 and 4 committed)", || {
        crash_point(&rig, &restored("migration:5", &["1", "2", "3", "4"]), None, |r| crash_apply(r, "migration:5"));
    });
    point(&mut failures, "B: journaled migration:4, then the recovery killed between its renames", || {
        crash_point(&rig, &restored("swap_renamed", &["1", "2", "3"]), None, crash_twice);
    });

    // Recovery itself interrupted: migration 5 fails on live only.
    as_app(&rig.live, "app", "INSERT INTO t VALUES (100001, 'bad row')");
    let failed = |last| Expect {
        has: &["failed", "recovery", "restore_done", "swap_done"],
        ..restored(last, &["1", "2", "3", "4"])
    };
    for at in ["failed", "recovery"] {
        point(&mut failures, &format!("B: migration 5 failed, journaled {at}"), || {
            crash_point(&rig, &failed(at), None, |r| crash_apply(r, at));
        });
    }
    point(&mut failures, "B: migration 5 failed, journaled restore", || {
        crash_point(&rig, &failed("restore"), None, |r| crash_apply(r, "restore"));
    });
    point(&mut failures, "B: migration 5 failed, killed while pg_restore runs", || {
        crash_point(&rig, &failed("restore"), None, kill_during_restore);
    });
    point(&mut failures, "B: migration 5 failed, journaled swap", || {
        crash_point(&rig, &failed("swap"), None, |r| crash_apply(r, "swap"));
    });
    point(&mut failures, "B: migration 5 failed, journaled restore_done", || {
        crash_point(&rig, &failed("restore_done"), None, |r| crash_apply(r, "restore_done"));
    });
    point(&mut failures, "B: migration 5 failed, journaled swap_renamed (live name free)", || {
        crash_point(&rig, &Expect { restart: "status", ..failed("swap_renamed") }, None, crash_between_renames);
    });
    for at in ["swap_done", "finished"] {
        point(&mut failures, &format!("B: migration 5 failed, journaled {at}"), || {
            crash_point(&rig, &failed(at), None, |r| crash_apply(r, at));
        });
    }
    as_app(&rig.live, "app", "DELETE FROM t WHERE id = 100001");

    point(&mut failures, "B: journaled migration_done:5 (all committed)", || {
        let post = post_state(&rig, &plan_b);
        let e = ex("migration_done:5", "applied", &["migration_done"], &["recovery", "applied"]);
        crash_point(&rig, &e, Some(&post), |r| crash_apply(r, "migration_done:5"));
    });
    // Plan C, one migration: killed during the post-checks.
    let plan_c = [rig.sqlx("6", "index_note", "CREATE INDEX t_note ON t (note);\n", Some("DROP INDEX t_note;\n"))];
    rig.rehearse(&["--snapshot", "fresh"]).ok();
    point(&mut failures, "C: journaled postcheck", || {
        let post = post_state(&rig, &plan_c);
        let e = ex("postcheck", "applied", &["applied", "postcheck"], &["recovery"]);
        crash_point(&rig, &e, Some(&post), |r| crash_apply(r, "postcheck"));
    });
    eprintln!("crash matrix done in {:?}", t0.elapsed());
    assert!(failures.is_empty(), "{} crash point(s) failed:\n\n{}", failures.len(), failures.join("\n\n"));
}
