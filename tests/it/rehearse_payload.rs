//! Rehearsals of a real Payload CMS 3 project (tests/fixtures/payload,
//! installed from npm by scripts/test.sh) driven through its own CLI.
//!
//! - Live has the first migration applied by Payload itself; `status` sees
//!   the others pending. `rehearse` runs them on the copy with per-migration
//!   timings from Payload's log lines and locks sampled by the observer (the
//!   slow migration's ACCESS EXCLUSIVE on `posts`), reverts them with
//!   `migrate:down` and applies them again; live receives no writes.
//! - A planted migration that throws fails the rehearsal (exit 2) naming it;
//!   the migrations before it applied on the copy with Payload's timings and
//!   their sampled locks, the failing one timed from its log lines with the
//!   lock it held; live unchanged.
//! - A dev-push row (`batch = -1`) on live is drift for `status` (exit 2),
//!   not the latest applied migration, and the rehearsal refuses with a
//!   message saying what the row is.

use crate::harness::migrations::*;
use crate::harness::payload::*;
#[test]
fn payload_plan_is_rehearsed_through_its_cli_and_live_is_only_read() {
    let rig = payload_rig();
    add(&rig, "migrations", SLUG);
    add(&rig, "migrations-extra", SLOW);
    let before = history(&rig);
    assert_eq!(before, [format!("{INITIAL}:1")], "Payload applied the first migration to live");

    let st = rig.status();
    st.ok();
    let pending: Vec<String> =
        st.json()["pending"].as_array().unwrap().iter().map(|p| p["name"].as_str().unwrap().to_string()).collect();
    assert_eq!(pending, [SLUG, SLOW], "status sees the pending files in Payload's order");

    rig.snapshot();
    let counters = write_counters(&rig.live, "app");
    let poller = LockPoller::start(&rig.live, "app");
    let r = rig.rehearse(&["--keep"]);
    let (ticks, seen) = poller.stop();
    r.ok();
    let report = r.json();
    assert_eq!(report["mode"], "payload");
    assert_eq!(report["ok"], true, "{}", r.stdout);
    for name in [SLUG, SLOW] {
        let m = by_name(&report, name);
        assert_eq!(m["status"], "applied", "{name}: {m:#}");
    }
    let slow = by_name(&report, SLOW);
    let ms = slow["duration_ms"].as_u64().unwrap();
    assert!(ms >= 300, "Payload's own timing of the slow migration (pg_sleep 0.3 s): {ms} ms");
    let locks = locks_on(slow, "posts");
    let exclusive = locks
        .iter()
        .find(|l| l["mode"] == "AccessExclusiveLock")
        .unwrap_or_else(|| panic!("the sampler saw no ACCESS EXCLUSIVE on posts during the slow migration: {slow:#}"));
    assert_eq!(exclusive["sampled"], true);
    let held = exclusive["held_ms"].as_u64().unwrap();
    assert!((250..=2000).contains(&held), "ACCESS EXCLUSIVE held ~300 ms, reported {held} ms");
    assert!(
        locks_on(by_name(&report, SLUG), "posts")
            .iter()
            .all(|l| l["mode"] != "AccessExclusiveLock" || l["held_ms"].as_u64() < Some(250)),
        "the slug migration is not blamed for the slow one's lock: {report:#}"
    );
    assert_eq!(report["reversible"], true, "migrate:down and migrate again restore the schemas: {}", r.stdout);

    // The copy's history as Payload keeps it: one batch for the plan.
    let kept = kept_db(&rig, &report);
    let copy = rows(&rig.shadow, &kept, "SELECT name || ':' || batch FROM payload_migrations ORDER BY id");
    assert_eq!(copy.first(), Some(&format!("{INITIAL}:1")), "{copy:?}");
    assert!(copy.contains(&format!("{SLOW}:2")), "the plan ran as batch 2 on the copy: {copy:?}");

    // Live: nothing written, nothing locked, history unchanged.
    assert_eq!(write_counters(&rig.live, "app"), counters, "rows written on live during the rehearsal");
    assert!(ticks > 10, "the poller ran ({ticks} polls)");
    // Reading live's history (the plan) takes ACCESS SHARE on it for a moment,
    // which the 10 ms poller may catch; any other lock on a user relation is
    // more than a read.
    let user_locks: Vec<_> = seen
        .iter()
        .filter(|l| l.on_user_relation())
        .filter(|l| !(l.mode == "AccessShareLock" && l.relation == "payload_migrations"))
        .collect();
    assert!(user_locks.is_empty(), "relation locks on live during the rehearsal: {user_locks:?}");
    assert_eq!(history(&rig), before);
    assert!(
        !rows(&rig.live, "app", "SELECT column_name FROM information_schema.columns WHERE table_name = 'posts'")
            .contains(&"word_count".to_string()),
        "the slow migration's column must not exist on live"
    );
}

#[test]
fn payload_migration_that_throws_fails_the_rehearsal_naming_it() {
    let rig = payload_rig();
    add(&rig, "migrations", SLUG);
    add(&rig, "migrations-extra", SLOW);
    add(&rig, "migrations-extra", FAILING);
    rig.snapshot();
    let r = rig.rehearse(&["--keep"]);
    r.expect_code(2);
    let report = r.json();
    assert_eq!(by_name(&report, SLUG)["status"], "applied", "{}", r.stdout);
    // What ran before the failure keeps Payload's own timing and its sampled locks.
    let slow = by_name(&report, SLOW);
    assert_eq!(slow["status"], "applied", "{slow:#}");
    assert!(slow["duration_ms"].as_u64().unwrap() >= 300, "Payload logged the slow migration's time: {slow:#}");
    assert!(
        locks_on(slow, "posts").iter().any(|l| l["mode"] == "AccessExclusiveLock"),
        "the slow migration's lock in a failed run: {slow:#}"
    );
    let failed = by_name(&report, FAILING);
    assert_eq!(failed["status"], "failed", "{failed:#}");
    // The failing file: from its `Migrating:` line to its error line, with its lock.
    let ms = failed["duration_ms"].as_u64().unwrap();
    assert!((300..5000).contains(&ms), "the failing migration ran ~300 ms before it threw: {failed:#}");
    assert!(
        locks_on(failed, "authors").iter().any(|l| l["mode"] == "AccessExclusiveLock" && l["sampled"] == true),
        "the sampler saw the failing migration's lock on authors: {failed:#}"
    );
    let problems = problems_text(&report);
    assert!(problems.contains(FAILING), "the problems name the failing migration: {problems}");
    assert!(
        failed["error"]["message"].as_str().unwrap_or_default().contains("planted failure"),
        "Payload's error message is in the report: {failed:#}"
    );
    let kept = kept_db(&rig, &report);
    assert!(
        !rows(&rig.shadow, &kept, "SELECT column_name FROM information_schema.columns WHERE table_name = 'authors'")
            .contains(&"bio".to_string()),
        "Payload rolled the failing file back on the copy"
    );
    assert_eq!(history(&rig), [format!("{INITIAL}:1")], "live's history unchanged");
}

#[test]
fn payload_dev_push_row_is_drift_and_refused() {
    let rig = payload_rig();
    add(&rig, "migrations", SLUG);
    rig.snapshot();
    as_app(&rig.live, "app", "INSERT INTO payload_migrations (name, batch) VALUES ('dev', -1)");
    let st = rig.status();
    st.expect_code(2);
    let drift = st.json()["drift"].clone();
    assert!(
        drift.as_array().unwrap().iter().any(|d| d["kind"] == "dev_push" && d["name"] == "dev"),
        "status reports the dev-push row as drift: {drift:#}"
    );
    // The row is no migration: the latest applied one is still the initial.
    let applied: Vec<String> =
        st.json()["applied"].as_array().unwrap().iter().map(|a| a["name"].as_str().unwrap().to_string()).collect();
    assert_eq!(applied, [INITIAL], "status lists only migrations as applied");
    let text = rig.pgr.run(&["status"]).stdout;
    assert!(text.contains(&format!("latest: {INITIAL}")) && !text.contains("latest: dev"), "{text}");
    // The snapshot predates the row: a fresh one carries it to the copy.
    let r = rig.rehearse(&["--snapshot", "fresh"]);
    assert_ne!(r.code, 0, "a rehearsal with a dev-push row must not pass");
    let text = format!("{}{}", r.stdout, r.stderr);
    assert!(text.contains("batch = -1"), "the refusal says what the row is:\n{text}");
    assert_eq!(history(&rig), [format!("{INITIAL}:1"), "dev:-1".to_string()], "live's history unchanged");
}
