//! The job runner as every edge uses it: what is mailed and pruned around
//! an operation, on real clusters, with `.eml` files read back by Python's
//! `email` package (not lettre, which wrote them):
//!
//! - a CLI `apply` that ends `restored` mails its release report and an
//!   alert (`[email] transport = "file"`), and `--no-mail` mails nothing;
//! - the daemon applies the retention policy after each scheduled snapshot:
//!   `keep_last = 3` keeps 3 (plus a pinned one) after 6 runs, counted in
//!   the store's directory;
//! - under the default `successes = "digest"`, passing drills are mailed as
//!   one digest, not one mail each, and a failing drill (a corrupted
//!   stored object) is mailed at once.

use crate::harness::cli::{local_store_path, stored_manifests};
use crate::harness::daemon::{daemon_toml, metric, start};
use crate::harness::http;
use crate::harness::migrations::*;
use crate::harness::release::*;
use crate::harness::shadow::flip_middle_byte;
use crate::harness::smtp::{Received, eml_files};
use crate::harness::wait_for;
use serde_json::Value;
use std::path::PathBuf;
use std::time::Duration;

const SETUP: &str = "CREATE TABLE t (id int PRIMARY KEY, email text);
    INSERT INTO t SELECT g, 'user' || g || '@example.com' FROM generate_series(1, 2000) g;";

/// Mail as `.eml` files into `<state_dir>/mail`, with `extra` lines.
fn email_file_toml(extra: &str) -> String {
    format!(
        "\n[email]\ntransport = \"file\"\nfrom = \"pgrehearse <pgr@example.com>\"\nto = [\"dba@example.com\"]\n{extra}\n"
    )
}

fn maildir(rig: &Rig) -> PathBuf {
    rig.pgr.state_dir().join("mail")
}

fn mails(rig: &Rig) -> Vec<Received> {
    eml_files(&maildir(rig))
}

fn subjects(mails: &[Received]) -> Vec<String> {
    mails.iter().map(|m| m.subject.clone()).collect()
}

/// Appends `sections` (top-level tables) to the rig's config.
fn append_config(rig: &Rig, sections: &str) {
    let text = std::fs::read_to_string(rig.pgr.config_path()).unwrap();
    rig.pgr.write_config(&format!("{text}{sections}"));
}

/// A plan that passes its rehearsal and fails on live at migration 2 (a
/// duplicate added to live after the rehearsal breaks a unique index);
/// migration 1 runs outside a transaction, so the release must restore.
fn rehearsed_plan_that_fails_on_live(rig: &Rig) {
    rig.sqlx(
        "1",
        "index_email",
        "-- no-transaction\nCREATE INDEX CONCURRENTLY t_email_plain ON t (email);\n",
        Some("-- no-transaction\nDROP INDEX CONCURRENTLY t_email_plain;\n"),
    );
    rig.sqlx("2", "unique_email", "CREATE UNIQUE INDEX t_email ON t (email);\n", Some("DROP INDEX t_email;\n"));
    rehearse_and_approve(rig);
    as_app(&rig.live, "app", "INSERT INTO t VALUES (2001, 'user1@example.com');");
}

#[test]
fn a_cli_apply_that_restores_mails_its_release_report_and_an_alert() {
    let rig = Rig::start("sqlx", SETUP);
    configure(&rig, "");
    append_config(&rig, &email_file_toml(""));
    rehearsed_plan_that_fails_on_live(&rig);
    let before = mails(&rig).len();

    let r = apply(&rig);
    r.expect_code(1);
    let rel = r.json();
    assert_eq!(rel["outcome"], "restored", "{rel:#}");
    let id = rel["release_id"].as_str().expect("release_id");

    let new: Vec<Received> = mails(&rig).into_iter().skip(before).collect();
    assert_eq!(new.len(), 2, "the release report and the alert: {:?}", subjects(&new));
    let report =
        new.iter().find(|m| m.subject.contains(id)).unwrap_or_else(|| panic!("no report: {:?}", subjects(&new)));
    assert_eq!(report.subject, format!("[pgrehearse] app: release {id} restored"));
    assert!(report.text.contains(id) && report.text.contains("restore"), "{}", report.text);
    let alert =
        new.iter().find(|m| m.subject.contains("ALERT")).unwrap_or_else(|| panic!("no alert: {:?}", subjects(&new)));
    assert_eq!(alert.subject, "[pgrehearse] ALERT app: release failed");
    assert!(alert.text.contains("migration 2"), "the alert says what failed: {}", alert.text);
    assert!(alert.text.contains("pgrehearse --target app releases"), "and what to do: {}", alert.text);
}

#[test]
fn no_mail_keeps_the_cli_from_mailing() {
    let rig = Rig::start("sqlx", SETUP);
    configure(&rig, "");
    append_config(&rig, &email_file_toml("successes = \"each\""));
    let id = rig.snapshot();

    let r = rig.pgr.run_json(&["--no-mail", "verify", &id]);
    r.ok();
    assert!(mails(&rig).is_empty(), "--no-mail mailed: {:?}", subjects(&mails(&rig)));

    // The same drill without the flag mails its report (successes = "each").
    rig.pgr.run_json(&["verify", &id]).ok();
    let sent = mails(&rig);
    assert_eq!(subjects(&sent), [format!("[pgrehearse] app: restore drill of {id} passed")]);
}

/// The manifests in the local store's directory for target `app`.
/// Object files under the store's `app/` directory (manifests included).
fn stored_objects(rig: &Rig) -> Vec<PathBuf> {
    crate::harness::files_under(&local_store_path(&rig.pgr).join("app"))
}

fn stop(bg: crate::harness::cli::Background) {
    crate::harness::proc::signal(bg.pid(), libc::SIGTERM);
    let r = bg.wait(Duration::from_secs(60));
    assert_eq!(r.code, 0, "the daemon stops cleanly: {}", tail(&r.stderr, 3000));
}

#[test]
fn the_daemon_applies_retention_after_each_scheduled_snapshot() {
    let rig = Rig::start("sqlx", SETUP);
    // A manual snapshot pinned as a release pins its pre-release snapshot.
    let pinned = rig.snapshot();
    let manifest = local_store_path(&rig.pgr).join("app").join(&pinned).join("manifest.json");
    let mut m: Value = serde_json::from_slice(&std::fs::read(&manifest).unwrap()).unwrap();
    m["pinned_by"] = Value::from("r-test");
    std::fs::write(&manifest, serde_json::to_vec_pretty(&m).unwrap()).unwrap();

    let port = http::free_port();
    let addr = format!("127.0.0.1:{port}");
    rig.configure("snapshot_schedule = \"*/2 * * * * *\"\nretention = { keep_last = 3 }");
    append_config(&rig, &daemon_toml(port, None));
    let bg = start(&rig.pgr, port);
    wait_for("6 scheduled snapshots", Duration::from_secs(120), Duration::from_millis(200), || {
        metric(&addr, "pgrehearse_job_runs_total{error_kind=\"none\",job=\"snapshot\",outcome=\"ok\",target=\"app\"}")
            .filter(|n| *n >= 6.0)
    });
    stop(bg);

    let kept = stored_manifests(&rig.pgr, "app");
    let scheduled: Vec<&Value> = kept.iter().filter(|m| m["reason"] == "scheduled").collect();
    assert_eq!(scheduled.len(), 3, "keep_last = 3: {kept:#?}");
    assert!(kept.iter().any(|m| m["id"] == pinned.as_str()), "the pinned snapshot is kept: {kept:#?}");
    assert_eq!(kept.len(), 4, "3 scheduled + the pinned one: {kept:#?}");
    // Every object left belongs to a kept snapshot: nothing half-deleted.
    let ids: Vec<&str> = kept.iter().map(|m| m["id"].as_str().unwrap()).collect();
    for obj in stored_objects(&rig) {
        let owner = obj.parent().and_then(|p| p.file_name()).and_then(|n| n.to_str()).unwrap_or_default().to_string();
        assert!(ids.contains(&owner.as_str()), "{obj:?} belongs to a deleted snapshot");
    }
}

#[test]
fn passing_drills_are_mailed_as_one_digest_and_a_failing_drill_at_once() {
    let rig = Rig::start("sqlx", SETUP);
    let id = rig.snapshot();
    let port = http::free_port();
    rig.configure("verify_schedule = \"*/2 * * * * *\"");
    append_config(&rig, &format!("{}{}", email_file_toml("digest_every = \"12s\""), daemon_toml(port, None)));
    let bg = start(&rig.pgr, port);

    let digest = wait_for("the first digest", Duration::from_secs(90), Duration::from_millis(250), || {
        mails(&rig).into_iter().find(|m| m.subject.contains("digest:"))
    });
    let drills = digest.text.matches(&format!("restore drill of {id} passed")).count();
    assert!(drills >= 2, "the digest lists every passing drill since the start: {}", digest.text);
    assert!(
        digest.subject.starts_with(&format!("[pgrehearse] digest: {drills} jobs succeeded since ")),
        "{}",
        digest.subject
    );
    assert!(digest.html.contains("restore drill of"), "{}", digest.html);
    let per_drill: Vec<String> =
        subjects(&mails(&rig)).into_iter().filter(|s| s.contains("restore drill of")).collect();
    assert!(per_drill.is_empty(), "no mail per passing drill: {per_drill:?}");

    // Bit rot in the stored dump: the next drill fails and is mailed at once.
    let manifest = stored_manifests(&rig.pgr, "app").into_iter().find(|m| m["id"] == id.as_str()).expect("manifest");
    let dump = local_store_path(&rig.pgr).join(manifest["dump"]["key"].as_str().expect("dump key"));
    flip_middle_byte(&dump);
    let failed = wait_for("the failed drill's mail", Duration::from_secs(60), Duration::from_millis(250), || {
        mails(&rig).into_iter().find(|m| m.subject.contains("FAILED"))
    });
    assert_eq!(failed.subject, format!("[pgrehearse] app: restore drill of {id} FAILED"));
    assert!(failed.text.contains("cannot be trusted for recovery"), "{}", failed.text);
    let digests = subjects(&mails(&rig)).into_iter().filter(|s| s.contains("digest:")).count();
    assert!(digests <= 2, "digests come once per period: {:?}", subjects(&mails(&rig)));
    stop(bg);
}
