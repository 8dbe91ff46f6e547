//! `pgrehearse daemon` end to end, with second-granularity schedules, on
//! real clusters:
//!
//! - it takes scheduled snapshots and verifies them, rehearses a migration
//!   file dropped into the source directory, and applies the plan once it
//!   is approved, in an always-open window — observed through the API
//!   (`/healthz`, `/metrics`), the state store (`status`, `releases`) and
//!   the store (the manifests on disk);
//! - sd_notify: `READY=1`, `STATUS=`, `WATCHDOG=1` at half of
//!   `$WATCHDOG_USEC`, `RELOADING=1` on SIGHUP, `STOPPING=1` on SIGTERM;
//! - SIGHUP with an invalid file keeps the old configuration (and says
//!   why); with a valid one applies it;
//! - SIGTERM during a release: the daemon exits only after the release
//!   finished, asking for more time meanwhile; live is post-release.

use crate::harness::cli::stored_manifests;
use crate::harness::daemon::{NotifySocket, daemon_toml, metric, start};
use crate::harness::http;
use crate::harness::migrations::*;
use crate::harness::release::*;
use crate::harness::wait_for;
use serde_json::Value;
use std::time::Duration;

const SETUP: &str = "CREATE TABLE t (id int PRIMARY KEY, note text);
    INSERT INTO t SELECT g, 'row ' || g FROM generate_series(1, 2000) g;";

fn write_daemon_config(rig: &Rig, port: u16, target_extra: &str) {
    configure(rig, target_extra);
    let text = std::fs::read_to_string(rig.pgr.config_path()).unwrap();
    rig.pgr.write_config(&format!("{text}{}", daemon_toml(port, None)));
}

fn status(rig: &Rig) -> Value {
    rig.pgr.run_json(&["status"]).json()
}

#[test]
fn the_daemon_snapshots_verifies_rehearses_and_releases_on_its_own() {
    let rig = Rig::start("sqlx", SETUP);
    let port = http::free_port();
    let addr = format!("127.0.0.1:{port}");
    write_daemon_config(&rig, port, "snapshot_schedule = \"*/4 * * * * *\"\nverify_schedule = \"*/6 * * * * *\"");
    let bg = start(&rig.pgr, port);

    // Scheduled snapshots land in the store, and a drill verifies one.
    wait_for("a verified snapshot in the store", Duration::from_secs(90), Duration::from_millis(200), || {
        stored_manifests(&rig.pgr, "app")
            .iter()
            .any(|m| m["verification"]["ok"] == true && m["reason"] == "scheduled")
            .then_some(())
    });
    let h = http::get(&addr, "/healthz").unwrap();
    assert_eq!(h.json()["ok"], true);

    // A migration dropped into the source directory is rehearsed.
    rig.sqlx(
        "1",
        "add_flag",
        "ALTER TABLE t ADD COLUMN flag boolean NOT NULL DEFAULT false;\n",
        Some("ALTER TABLE t DROP COLUMN flag;\n"),
    );
    let plan =
        wait_for("a passing rehearsal of the new plan", Duration::from_secs(120), Duration::from_millis(300), || {
            let st = status(&rig);
            let r = &st["last_rehearsal"];
            (r["current_plan"] == true && r["status"] == "passed").then(|| st["plan"].as_str().unwrap().to_string())
        });

    // Approved, it is released in the (always open) window.
    rig.pgr.run_json(&["approve", "--plan", &plan, "--by", "daemon-test"]).ok();
    let release_id = wait_for("the daemon's release", Duration::from_secs(120), Duration::from_millis(300), || {
        let st = status(&rig);
        (st["last_release"]["outcome"] == "applied").then(|| st["last_release"]["id"].as_str().unwrap().to_string())
    });
    assert!(status(&rig)["pending"].as_array().unwrap().is_empty());
    assert_eq!(rows(&rig.live, "app", "SELECT version FROM _sqlx_migrations"), ["1"]);
    let rel = release(&rig, &release_id);
    let pre = rel["pre_snapshot_id"].as_str().unwrap();
    assert!(
        stored_manifests(&rig.pgr, "app")
            .iter()
            .any(|m| m["id"] == pre && m["reason"] == "pre-release" && m["pinned_by"] == release_id.as_str())
    );

    // The metrics say the same.
    for job in ["snapshot", "verify", "rehearse", "release"] {
        let ok = metric(
            &addr,
            &format!("pgrehearse_job_runs_total{{error_kind=\"none\",job=\"{job}\",outcome=\"ok\",target=\"app\"}}"),
        );
        assert!(ok.is_some_and(|n| n >= 1.0), "{job} ran ok: {:?}", http::get(&addr, "/metrics").map(|r| r.body));
        assert!(
            metric(&addr, &format!("pgrehearse_last_success_timestamp_seconds{{job=\"{job}\",target=\"app\"}}"))
                .is_some()
        );
    }
    assert!(
        metric(&addr, "pgrehearse_release_outcomes_total{outcome=\"applied\",target=\"app\"}")
            .is_some_and(|n| n == 1.0)
    );

    crate::harness::proc::signal(bg.pid(), libc::SIGTERM);
    let r = bg.wait(Duration::from_secs(60));
    assert_eq!(r.code, 0, "{}", tail(&r.stderr, 3000));
}

#[test]
fn sd_notify_reload_and_a_graceful_stop_during_a_release() {
    let mut rig = Rig::start("sqlx", SETUP);
    let port = http::free_port();
    write_daemon_config(&rig, port, "");
    let notify = NotifySocket::bind();
    rig.pgr.env("NOTIFY_SOCKET", &notify.path.display().to_string());
    rig.pgr.env("WATCHDOG_USEC", "600000");
    let bg = start(&rig.pgr, port);
    let ready = notify.wait_for("READY=1", 0, Duration::from_secs(30));
    assert!(notify.messages()[ready].contains("STATUS="), "{:?}", notify.messages());
    // The watchdog: pinged at half of 600 ms.
    std::thread::sleep(Duration::from_millis(1600));
    let pings = notify.messages().iter().filter(|m| *m == "WATCHDOG=1").count();
    assert!(pings >= 3, "watchdog pings in 1.6 s: {pings}: {:?}", notify.messages());

    // SIGHUP with an invalid file: the old configuration stays.
    let good = std::fs::read_to_string(rig.pgr.config_path()).unwrap();
    rig.pgr.write_config(&good.replace("[daemon]", "[daemon]\nno_such_key = 1"));
    let before = notify.messages().len();
    crate::harness::proc::signal(bg.pid(), libc::SIGHUP);
    let reloading = notify.wait_for("RELOADING=1", before, Duration::from_secs(10));
    notify.wait_for("READY=1", reloading, Duration::from_secs(10));
    wait_for("the reload's verdict in the log", Duration::from_secs(10), Duration::from_millis(50), || {
        bg.stderr_so_far().contains("keeping the old one").then_some(())
    });
    assert!(bg.stderr_so_far().contains("no_such_key"), "the log says why: {}", tail(&bg.stderr_so_far(), 2000));

    // SIGHUP with a valid file that adds a snapshot schedule: applied.
    rig.pgr.write_config(&good.replace(
        "[[targets]]\nname = \"app\"\n",
        "[[targets]]\nname = \"app\"\nsnapshot_schedule = \"*/2 * * * * *\"\n",
    ));
    crate::harness::proc::signal(bg.pid(), libc::SIGHUP);
    wait_for("a snapshot under the reloaded schedule", Duration::from_secs(60), Duration::from_millis(200), || {
        stored_manifests(&rig.pgr, "app").iter().any(|m| m["reason"] == "scheduled").then_some(())
    });
    assert!(bg.stderr_so_far().contains("Configuration reloaded."));

    // SIGTERM while a release runs: the release finishes first.
    rig.pgr.write_config(&good);
    crate::harness::proc::signal(bg.pid(), libc::SIGHUP);
    rig.sqlx(
        "1",
        "slow",
        "ALTER TABLE t ADD COLUMN b int;\nSELECT pg_sleep(7);\n",
        Some("ALTER TABLE t DROP COLUMN b;\n"),
    );
    let plan = wait_for("the slow plan rehearsed", Duration::from_secs(120), Duration::from_millis(300), || {
        let st = status(&rig);
        let r = &st["last_rehearsal"];
        (r["current_plan"] == true && r["status"] == "passed").then(|| st["plan"].as_str().unwrap().to_string())
    });
    rig.pgr.run_json(&["approve", "--plan", &plan]).ok();
    wait_for("the release's slow migration on live", Duration::from_secs(60), Duration::from_millis(50), || {
        let n = rig.live.psql("app", "SELECT count(*) FROM pg_stat_activity WHERE query LIKE '%pg_sleep(7)%' AND pid <> pg_backend_pid() AND application_name = 'pgrehearse-release'");
        (n == "1").then_some(())
    });
    let before = notify.messages().len();
    crate::harness::proc::signal(bg.pid(), libc::SIGTERM);
    notify.wait_for("STOPPING=1", before, Duration::from_secs(10));
    let r = bg.wait(Duration::from_secs(60));
    assert_eq!(r.code, 0, "{}", tail(&r.stderr, 3000));
    assert!(
        notify.messages()[before..].iter().any(|m| m.starts_with("EXTEND_TIMEOUT_USEC=")),
        "asked systemd for time: {:?}",
        &notify.messages()[before..]
    );
    assert_eq!(status(&rig)["last_release"]["outcome"], "applied", "the release finished before the daemon exited");
    assert_eq!(rows(&rig.live, "app", "SELECT version FROM _sqlx_migrations"), ["1"]);
}
