//! `pgrehearse apply` with a sqlx project on real clusters (live + shadow):
//!
//! - Happy path: rehearse → approve → apply inside an always-open window →
//!   outcome `applied`; `_sqlx_migrations` holds every file as sqlx writes
//!   it (SHA-384 computed here), so a sqlx app sees nothing pending; the
//!   pre-release snapshot exists, is pinned, and holds live as it was.
//! - Refusals exit 75 and leave live byte-for-byte as it was: not approved,
//!   approval expired, a file edited after approval, outside the window, a
//!   rehearsed duration that does not fit the window, the approval already
//!   spent, a second `apply` while the first runs.
//! - Promotion: with `requires_release_on = "staging"`, production's plan is
//!   approved only once the same migrations were released on staging.

use crate::harness::data;
use crate::harness::migrations::*;
use crate::harness::release::*;
use std::time::Duration;

const SETUP: &str = "CREATE TABLE t (id int PRIMARY KEY, note text);
    INSERT INTO t SELECT g, 'row ' || g FROM generate_series(1, 5000) g;";

#[test]
fn an_approved_plan_is_applied_in_its_window_as_sqlx_would() {
    let rig = Rig::start("sqlx", SETUP);
    configure(&rig, "");
    let up1 = rig.sqlx(
        "1",
        "add_flag",
        "ALTER TABLE t ADD COLUMN flag boolean NOT NULL DEFAULT false;\n",
        Some("ALTER TABLE t DROP COLUMN flag;\n"),
    );
    let up2 = rig.sqlx("2", "index_note", "CREATE INDEX t_note ON t (note);\n", Some("DROP INDEX t_note;\n"));
    let before = live_fingerprint(&rig);
    let plan = rehearse_and_approve(&rig);

    let r = apply(&rig);
    r.ok();
    let rel = r.json();
    assert_eq!(rel["outcome"], "applied", "{rel:#}");
    assert_eq!(rel["plan"], plan.as_str());
    assert!(rel["warnings"].as_array().unwrap().is_empty(), "post-checks found problems: {rel:#}");
    let steps = journal_steps(&rel);
    for s in ["snapshot", "snapshot_done", "apply", "migration", "applied", "postcheck", "finished"] {
        assert!(steps.iter().any(|x| x == s), "journal lacks {s}: {steps:?}");
    }
    // History exactly as sqlx writes it (checksums computed here).
    let history = rows(
        &rig.live,
        "app",
        "SELECT version || '|' || success || '|' || encode(checksum, 'hex') || '|' || (execution_time > 0) FROM _sqlx_migrations ORDER BY version",
    );
    assert_eq!(
        history,
        vec![format!("1|true|{}|true", sha384_hex(&up1)), format!("2|true|{}|true", sha384_hex(&up2))],
        "sqlx's history"
    );
    assert_eq!(rig.live.psql("app", "SELECT count(*) FROM t WHERE NOT flag"), "5000");
    assert_eq!(rig.live.psql("app", "SELECT count(*) FROM pg_indexes WHERE indexname = 't_note'"), "1");
    let st = rig.status().json();
    assert!(st["pending"].as_array().unwrap().is_empty(), "nothing pending after the release: {st:#}");

    // The pre-release snapshot: listed, pinned by this release, and it holds
    // live as it was before (restored independently with pg_restore).
    let snap = rel["pre_snapshot_id"].as_str().expect("pre_snapshot_id").to_string();
    let manifest: serde_json::Value = serde_json::from_slice(
        &std::fs::read(crate::harness::cli::local_store_path(&rig.pgr).join("app").join(&snap).join("manifest.json"))
            .unwrap(),
    )
    .unwrap();
    assert_eq!(manifest["pinned_by"], rel["release_id"], "{manifest:#}");
    assert_eq!(manifest["reason"], "pre-release");
    let stored = crate::harness::cli::local_store_path(&rig.pgr).join("app").join(&snap).join("dump.pgdump.zst");
    data::restore_stored_zst(&rig.live, &stored, "pre_copy");
    assert_eq!(
        fingerprint(&rig.live, "pre_copy").replace("pre_copy", "app"),
        before,
        "the pre-release snapshot holds live as it was before the release"
    );

    // The approval was spent: applying again has nothing to do.
    let again = apply(&rig);
    again.ok();
    assert_eq!(again.json()["outcome"], "nothing_pending");
    let listed = rig.pgr.run_json(&["releases"]);
    listed.ok();
    assert_eq!(listed.json().as_array().unwrap().len(), 2);
}

#[test]
fn refusals_exit_75_and_leave_live_untouched() {
    let rig = Rig::start("sqlx", SETUP);
    configure(&rig, "approval_expires_after = \"2s\"");
    rig.sqlx("1", "add_a", "ALTER TABLE t ADD COLUMN a int;\n", Some("ALTER TABLE t DROP COLUMN a;\n"));
    let before = live_fingerprint(&rig);
    let refused = |why: &str| {
        let r = apply(&rig);
        r.expect_code(75);
        let rel = r.json();
        assert_eq!(rel["outcome"], "refused", "{rel:#}");
        let reason = rel["reason"].as_str().unwrap_or_default().to_string();
        assert!(reason.contains(why), "reason `{reason}` should mention `{why}`");
        assert_eq!(live_fingerprint(&rig), before, "a refusal ({why}) changed live");
        assert!(!table_exists(&rig.live, "app", "_sqlx_migrations"), "a refusal wrote history");
        rel
    };

    // Not approved (never rehearsed).
    assert_eq!(refused("not approved")["error_kind"], "not_approved");

    // Approved, then expired.
    rehearse_and_approve(&rig);
    std::thread::sleep(Duration::from_millis(2500));
    assert_eq!(refused("expired")["error_kind"], "approval_expired");

    // Approved, then the file edited: the plan changed.
    configure(&rig, "");
    rehearse_and_approve(&rig);
    rig.sqlx("1", "add_a", "ALTER TABLE t ADD COLUMN a bigint;\n", Some("ALTER TABLE t DROP COLUMN a;\n"));
    assert_eq!(refused("plan changed")["error_kind"], "plan_changed");

    // Outside the window (a one-second window on 1 January only).
    rehearse_and_approve(&rig);
    rig.configure(&format!(
        "admin_url = {}\nwindows = [{{ cron = \"0 0 0 1 1 *\", duration = \"1s\", timezone = \"Europe/Berlin\" }}]\n",
        crate::harness::cli::toml_string(&rig.live.url("postgres", "postgres", ""))
    ));
    assert_eq!(refused("outside the release window")["error_kind"], "outside_window");

    // The rehearsed duration does not fit what remains of the window: a
    // migration that takes 3 s, a window of 2 s opening every second.
    rig.sqlx("2", "slow", "SELECT pg_sleep(3);\n", Some("SELECT 1;\n"));
    configure(&rig, "");
    rehearse_and_approve(&rig);
    rig.configure(&format!(
        "admin_url = {}\nwindows = [{{ cron = \"* * * * * *\", duration = \"2s\", timezone = \"UTC\" }}]\n",
        crate::harness::cli::toml_string(&rig.live.url("postgres", "postgres", ""))
    ));
    assert_eq!(refused("only")["error_kind"], "does_not_fit");

    // A second apply while the first runs (its slow migration holds the
    // target's lock) is refused; the first completes.
    configure(&rig, "");
    let first = rig.pgr.spawn(&["--json", "apply"]);
    crate::harness::wait_for(
        "the first release to run its slow migration",
        Duration::from_secs(60),
        Duration::from_millis(50),
        || {
            (rig.live.psql(
                "postgres",
                "SELECT count(*) FROM pg_stat_activity WHERE query LIKE '%pg_sleep(3)%' AND pid <> pg_backend_pid()",
            ) == "1")
                .then_some(())
        },
    );
    let second = apply(&rig);
    second.expect_code(75);
    assert_eq!(second.json()["error_kind"], "lock_held", "{}", second.stdout);
    let done = first.wait(Duration::from_secs(120));
    assert_eq!(done.code, 0, "{}\n{}", done.stdout, tail(&done.stderr, 3000));
    assert_eq!(serde_json::from_str::<serde_json::Value>(&done.stdout).unwrap()["outcome"], "applied");
}

#[test]
fn promotion_requires_the_same_migrations_released_on_staging_first() {
    use crate::harness::cli::{local_store_toml, target_toml, toml_string};
    let rig = Rig::start("sqlx", SETUP);
    rig.live.psql("postgres", "CREATE DATABASE staging TEMPLATE app OWNER app");
    let common = format!(
        "shadow_url = {}\nrestore_jobs = 2\nmigrations = {{ kind = \"sqlx\", dir = {} }}\n{}\n",
        toml_string(&crate::harness::shadow::shadow_url(&rig.shadow)),
        toml_string(&rig.dir.display().to_string()),
        release_config(&rig, "")
    );
    rig.pgr.write_config(&format!(
        "{}{}{}",
        local_store_toml(&rig.pgr, ""),
        target_toml("staging", &rig.live.url("staging", "app", PASSWORD), &common),
        target_toml(
            "app",
            &rig.live.url("app", "app", PASSWORD),
            &format!("{common}requires_release_on = \"staging\"\n")
        )
    ));
    rig.sqlx("1", "add_a", "ALTER TABLE t ADD COLUMN a int;\n", Some("ALTER TABLE t DROP COLUMN a;\n"));
    let on = |target: &str, args: &[&str]| {
        let mut all = vec!["--target", target];
        all.extend_from_slice(args);
        let r = rig.pgr.run_json(&all);
        eprintln!("{target} {args:?}: exit {}\n{}\n{}", r.code, r.stdout, tail(&r.stderr, 2000));
        r
    };
    let plan = |target: &str| on(target, &["status"]).json()["plan"].as_str().unwrap().to_string();

    // Production first: rehearsed fine, but not released on staging yet.
    on("app", &["rehearse"]).ok();
    let r = on("app", &["approve", "--plan", &plan("app")]);
    r.expect_code(75);
    assert!(r.stderr.contains("released on `staging` first"), "{}", r.stderr);
    let before = live_fingerprint(&rig);

    // Staging: rehearse, approve, apply.
    on("staging", &["rehearse"]).ok();
    on("staging", &["approve", "--plan", &plan("staging")]).ok();
    assert_eq!(on("staging", &["apply"]).json()["outcome"], "applied");
    assert_eq!(live_fingerprint(&rig), before, "staging's release did not touch production");

    // Now production may follow.
    on("app", &["approve", "--plan", &plan("app")]).ok();
    let r = on("app", &["apply"]);
    r.ok();
    assert_eq!(r.json()["outcome"], "applied");
    assert_eq!(rows(&rig.live, "app", "SELECT version FROM _sqlx_migrations"), ["1"]);

    // A new migration not yet on staging: production's approval is refused again.
    rig.sqlx("2", "add_b", "ALTER TABLE t ADD COLUMN b int;\n", Some("ALTER TABLE t DROP COLUMN b;\n"));
    on("app", &["rehearse"]).ok();
    on("app", &["approve", "--plan", &plan("app")]).expect_code(75);
}

#[test]
fn post_checks_warn_about_a_schema_that_differs_from_the_rehearsal_and_invalid_indexes() {
    let rig = Rig::start("sqlx", SETUP);
    configure(&rig, "");
    // A NOT VALID check the plan intends: the rehearsal leaves it so too.
    rig.sqlx(
        "1",
        "note_check",
        "ALTER TABLE t ADD CONSTRAINT note_short CHECK (length(note) < 100) NOT VALID;\n",
        Some("ALTER TABLE t DROP CONSTRAINT note_short;\n"),
    );
    rehearse_and_approve(&rig);
    // Live drifts from the snapshot the plan was rehearsed on: a table made
    // by hand, and an invalid index from a failed concurrent build.
    as_app(&rig.live, "app", "CREATE TABLE made_by_hand (id int)");
    as_app(&rig.live, "app", "INSERT INTO t VALUES (5001, 'row 1')");
    let failed = rig.live.psql_output("app", "CREATE UNIQUE INDEX CONCURRENTLY t_note_unique ON t (note)");
    let err = String::from_utf8_lossy(&failed.stderr);
    assert!(err.contains("could not create unique index"), "the concurrent build must fail on the duplicate: {err}");

    let r = apply(&rig);
    r.ok();
    let rel = r.json();
    assert_eq!(rel["outcome"], "applied", "still applied: the migrations committed");
    let warnings = rel["warnings"].to_string();
    assert!(warnings.contains("made_by_hand") && warnings.contains("differs"), "schema mismatch reported: {warnings}");
    assert!(warnings.contains("t_note_unique") && warnings.contains("invalid"), "invalid index reported: {warnings}");
    assert!(!warnings.contains("note_short"), "an intended NOT VALID constraint is no finding: {warnings}");
}

#[test]
fn preflight_refuses_old_transactions_small_staging_and_an_old_pg_dump() {
    use std::io::Write;
    let rig = Rig::start("sqlx", SETUP);
    configure(&rig, "max_transaction_age = \"1s\"");
    rig.sqlx("1", "add_a", "ALTER TABLE t ADD COLUMN a int;\n", Some("ALTER TABLE t DROP COLUMN a;\n"));
    rehearse_and_approve(&rig);
    let before = live_fingerprint(&rig);
    let refused = |kind: &str, says: &str| {
        let r = apply(&rig);
        r.expect_code(75);
        let rel = r.json();
        assert_eq!(rel["error_kind"], kind, "{rel:#}");
        assert!(rel["reason"].as_str().unwrap().contains(says), "{rel:#}");
        assert_eq!(live_fingerprint(&rig), before);
    };

    // An open transaction older than max_transaction_age (idle in it).
    let mut holder = rig
        .live
        .client("psql")
        .args(["-XAtq", "-d", "app"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    holder.stdin.as_mut().unwrap().write_all(b"BEGIN;\nSELECT txid_current();\n").unwrap();
    holder.stdin.as_mut().unwrap().flush().unwrap();
    crate::harness::wait_for(
        "the open transaction",
        std::time::Duration::from_secs(20),
        std::time::Duration::from_millis(50),
        || {
            let n = rig.live.psql("app", "SELECT count(*) FROM pg_stat_activity WHERE state = 'idle in transaction' AND xact_start < now() - interval '1.2 s'");
            (n == "1").then_some(())
        },
    );
    refused("long_transaction", "idle in transaction");
    let _ = holder.kill();
    let _ = holder.wait();

    // Not enough staging space to restore if the release failed.
    rig.pgr.write_config(
        &std::fs::read_to_string(rig.pgr.config_path())
            .unwrap()
            .replace("[store]\n", "[store]\nstaging_reserve = \"900000GiB\"\n"),
    );
    refused("no_staging_space", "free space");

    // A pg_dump older than the server.
    configure(&rig, "");
    let bindir = rig.pgr.dir().join("old-bin");
    std::fs::create_dir_all(&bindir).unwrap();
    let fake = bindir.join("pg_dump");
    std::fs::write(&fake, "#!/bin/sh\necho 'pg_dump (PostgreSQL) 11.22'\n").unwrap();
    std::fs::set_permissions(&fake, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    configure(&rig, &format!("pg_bindir = {}", crate::harness::cli::toml_string(&bindir.display().to_string())));
    refused("client_too_old", "older than the server");
}

#[test]
fn sigterm_and_sigint_do_not_abandon_a_running_release() {
    let rig = Rig::start("sqlx", SETUP);
    configure(&rig, "");
    rig.sqlx(
        "1",
        "slow",
        "ALTER TABLE t ADD COLUMN b int;\nSELECT pg_sleep(2);\n",
        Some("ALTER TABLE t DROP COLUMN b;\n"),
    );
    rehearse_and_approve(&rig);
    let bg = rig.pgr.spawn(&["--json", "apply"]);
    crate::harness::wait_for("the slow migration on live", Duration::from_secs(60), Duration::from_millis(20), || {
        let n = rig.live.psql(
            "postgres",
            "SELECT count(*) FROM pg_stat_activity WHERE query LIKE '%pg_sleep(2)%' AND pid <> pg_backend_pid()",
        );
        (n == "1").then_some(())
    });
    crate::harness::proc::signal(bg.pid(), libc::SIGTERM);
    crate::harness::proc::signal(bg.pid(), libc::SIGINT);
    let r = bg.wait(Duration::from_secs(60));
    assert_eq!(r.code, 0, "{}\n{}", r.stdout, r.stderr);
    assert_eq!(serde_json::from_str::<serde_json::Value>(&r.stdout).unwrap()["outcome"], "applied");
    assert!(r.stderr.contains("A release is running"), "the signal was noted: {}", tail(&r.stderr, 2000));
    assert_eq!(rows(&rig.live, "app", "SELECT version FROM _sqlx_migrations"), ["1"]);
}
