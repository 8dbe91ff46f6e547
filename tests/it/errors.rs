//! Errors classify themselves, seen from outside on real components:
//!
//! - a `pg_restore` missing from the configured `pg_bindir` exits 69 (a
//!   dependency is unavailable), with the install hint, in text and `--json`;
//! - the daemon's `pgrehearse_job_runs_total` labels a failed job with its
//!   bounded `error_kind`: a database outage (the live cluster stopped)
//!   and a store outage (moto killed) give different values, and the
//!   job's log line names the same kind.

use crate::harness::cli::{Background, Pgr, local_store_toml, s3_store_toml, target_toml};
use crate::harness::daemon::{daemon_toml, start};
use crate::harness::dump::final_error;
use crate::harness::http;
use crate::harness::migrations::tail;
use crate::harness::pg::Cluster;
use crate::harness::s3::S3Server;
use crate::harness::shadow::shadow_url;
use crate::harness::{run_ok, wait_for};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

const PASSWORD: &str = "errors-test-pw";
const BUCKET: &str = "snaps";

fn live_cluster() -> Cluster {
    let c = Cluster::start();
    c.create_app_db("app", "app", PASSWORD);
    crate::harness::data::create_rich_schema(&c, "app", "app", 100);
    c
}

/// A bindir with every program of the installed PostgreSQL but `pg_restore`.
fn bindir_without_pg_restore(dir: &Path) -> PathBuf {
    let real = PathBuf::from(run_ok(Command::new("pg_config").arg("--bindir")).trim().to_string());
    let bin = dir.join("bin-without-pg_restore");
    std::fs::create_dir_all(&bin).unwrap();
    for entry in std::fs::read_dir(&real).unwrap().flatten() {
        if entry.file_name() != "pg_restore" {
            std::os::unix::fs::symlink(entry.path(), bin.join(entry.file_name())).unwrap();
        }
    }
    assert!(bin.join("pg_dump").exists() && !bin.join("pg_restore").exists());
    bin
}

#[test]
fn a_missing_pg_restore_exits_69_with_the_install_hint() {
    let live = live_cluster();
    let pgr = Pgr::new();
    let target = |extra: &str| {
        target_toml(
            "app",
            &live.url("app", "app", PASSWORD),
            &format!("shadow_url = \"{}\"\nshadow_on_live_server = true\n{extra}", shadow_url(&live)),
        )
    };
    pgr.write_config(&format!("{}{}", local_store_toml(&pgr, ""), target("")));
    pgr.run(&["snapshot"]).ok();

    let bin = bindir_without_pg_restore(pgr.dir());
    pgr.write_config(&format!(
        "{}{}",
        local_store_toml(&pgr, ""),
        target(&format!("pg_bindir = \"{}\"", bin.display()))
    ));
    let r = pgr.run(&["verify", "latest"]);
    r.expect_code(69);
    let msg = final_error(&r.stderr);
    assert!(msg.contains("pg_restore not found"), "the error does not name pg_restore:\n{}", r.stderr);
    assert!(msg.contains(&bin.display().to_string()), "the error does not say where it looked:\n{}", r.stderr);
    assert!(
        msg.contains("apt-get install postgresql-client-") && msg.contains("pg_bindir"),
        "no install hint:\n{}",
        r.stderr
    );
    let json = pgr.run_json(&["verify", "latest"]);
    json.expect_code(69);
    assert_eq!(json.json()["exit_code"], 69, "--json error document: {}", json.stdout);
}

/// `pgrehearse_job_runs_total` of failed snapshot jobs of `app` with `kind`.
fn failed_snapshots(addr: &str, kind: &str) -> Option<f64> {
    let body = http::get(addr, "/metrics")?.body;
    let series = format!(
        "pgrehearse_job_runs_total{{error_kind=\"{kind}\",job=\"snapshot\",outcome=\"error\",target=\"app\"}} "
    );
    body.lines().find_map(|l| l.strip_prefix(series.as_str())).and_then(|v| v.parse().ok())
}

/// Waits for a failed snapshot job counted with `kind`; on a timeout says
/// what the daemon counted and logged instead.
fn wait_for_failure(addr: &str, kind: &str, bg: &Background) {
    let deadline = Instant::now() + Duration::from_secs(90);
    while failed_snapshots(addr, kind).is_none() {
        if Instant::now() > deadline {
            let body = http::get(addr, "/metrics").map(|r| r.body).unwrap_or_default();
            let runs: Vec<&str> = body.lines().filter(|l| l.starts_with("pgrehearse_job_runs_total")).collect();
            panic!(
                "no snapshot failed with error_kind {kind} in 90 s; counted:\n{}\n{}",
                runs.join("\n"),
                tail(&bg.stderr_so_far(), 4000)
            );
        }
        std::thread::sleep(Duration::from_millis(250));
    }
}

#[test]
fn the_daemon_tells_a_store_outage_from_a_database_outage() {
    let live = live_cluster();
    let s3 = S3Server::start();
    s3.create_bucket(BUCKET);
    let port = http::free_port();
    let addr = format!("127.0.0.1:{port}");
    let pgr = Pgr::new();
    pgr.write_config(&format!(
        "{}{}{}",
        s3_store_toml(&pgr, &s3.endpoint(), BUCKET, "max_attempts = 2\nconnect_timeout = \"2s\""),
        target_toml("app", &live.url("app", "app", PASSWORD), "snapshot_schedule = \"*/2 * * * * *\""),
        daemon_toml(port, None)
    ));
    let bg = start(&pgr, port);
    wait_for("a scheduled snapshot in moto", Duration::from_secs(60), Duration::from_millis(200), || {
        s3.list_objects(BUCKET, "").iter().any(|(k, _)| k.ends_with("manifest.json")).then_some(())
    });

    // PostgreSQL goes away; S3 is up.
    live.stop_immediate();
    wait_for_failure(&addr, "pg_unreachable", &bg);
    assert_eq!(failed_snapshots(&addr, "store_unavailable"), None, "S3 was up");

    // PostgreSQL is back and S3 goes away. (A job reads the store before
    // it connects to live, so with both down the store is named.)
    live.start_again();
    drop(s3);
    wait_for_failure(&addr, "store_unavailable", &bg);

    let logs = bg.stderr_so_far();
    for kind in ["store_unavailable", "pg_unreachable"] {
        assert!(
            logs.lines().any(|l| l.contains("Job finished.") && l.contains("outcome=\"error\"") && l.contains(kind)),
            "no `Job finished.` log line names {kind}:\n{logs}"
        );
    }
    crate::harness::proc::signal(bg.pid(), libc::SIGTERM);
    let r = bg.wait(Duration::from_secs(60));
    assert_eq!(r.code, 0, "the daemon's exit:\n{}", r.stderr);
}
