//! Helpers for release tests (`pgrehearse apply`): a [`Rig`] configured
//! with an always-open window and the live cluster's superuser as
//! `admin_url` (restores create and rename databases), and the steps a
//! release needs before it may run (rehearse, approve).

use super::cli::{Run, toml_string};
use super::migrations::{Rig, fingerprint, tail};
use serde_json::Value;
use std::time::Instant;

/// A window that is always open: every second, for a day.
pub const ALWAYS_OPEN: &str = "windows = [{ cron = \"* * * * * *\", duration = \"24h\", timezone = \"UTC\" }]";

/// The target lines every release test needs, then `extra`.
pub fn release_config(rig: &Rig, extra: &str) -> String {
    format!("admin_url = {}\n{ALWAYS_OPEN}\n{extra}", toml_string(&rig.live.url("postgres", "postgres", "")))
}

/// Writes the config with [`release_config`].
pub fn configure(rig: &Rig, extra: &str) {
    rig.configure(&release_config(rig, extra));
}

/// The plan pending on live now (`status --json`).
pub fn plan_of(rig: &Rig) -> String {
    rig.pgr.run_json(&["status"]).json()["plan"].as_str().expect("plan hash").to_string()
}

/// Rehearses (must pass) and approves the current plan; returns its hash.
pub fn rehearse_and_approve(rig: &Rig) -> String {
    rig.rehearse(&[]).ok();
    let plan = plan_of(rig);
    rig.pgr.run_json(&["approve", "--plan", &plan, "--by", "test"]).ok();
    plan
}

/// `--json apply`, logged.
pub fn apply(rig: &Rig) -> Run {
    let t0 = Instant::now();
    let r = rig.pgr.run_json(&["apply"]);
    eprintln!(
        "apply: exit {} in {:?}\n--- stdout:\n{}\n--- stderr (tail):\n{}",
        r.code,
        t0.elapsed(),
        r.stdout,
        tail(&r.stderr, 4000)
    );
    r
}

/// `--json releases ID`.
pub fn release(rig: &Rig, id: &str) -> Value {
    let r = rig.pgr.run_json(&["releases", id]);
    r.ok();
    r.json()
}

/// The live `app` database's schema and the digest of every table.
pub fn live_fingerprint(rig: &Rig) -> String {
    fingerprint(&rig.live, "app")
}

/// Databases on the live cluster whose name starts with `prefix`.
pub fn live_dbs_like(rig: &Rig, prefix: &str) -> Vec<String> {
    super::shadow::databases(&rig.live).into_iter().filter(|d| d.starts_with(prefix)).collect()
}

/// The steps of a release's journal, in order.
pub fn journal_steps(release: &Value) -> Vec<String> {
    release["journal"]
        .as_array()
        .unwrap_or_else(|| panic!("no journal in {release:#}"))
        .iter()
        .map(|e| e["step"].as_str().unwrap_or_default().to_string())
        .collect()
}

/// `--json apply` with `PGREHEARSE_CRASH_AT=at`: the process must SIGKILL
/// itself right after journaling that step.
pub fn crash_apply(rig: &Rig, at: &str) {
    use std::os::unix::process::ExitStatusExt;
    let out = rig.pgr.command(&["--json", "apply"]).env("PGREHEARSE_CRASH_AT", at).output().expect("run pgrehearse");
    assert_eq!(
        out.status.signal(),
        Some(libc::SIGKILL),
        "pgrehearse did not kill itself at step {at} ({:?})\nstdout:\n{}\nstderr (tail):\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        tail(&String::from_utf8_lossy(&out.stderr), 3000)
    );
}

/// Approves the current plan again (on its latest passing rehearsal): a
/// release that got past preflight spent the previous approval.
pub fn approve_current(rig: &Rig) {
    rig.pgr.run_json(&["approve", "--plan", &plan_of(rig), "--by", "test"]).ok();
}

/// The one release a killed pgrehearse left `running` (`releases` does not
/// recover it), whose journal must end with `last` (`step`, or
/// `step:detail`); returns its id.
pub fn interrupted_release(rig: &Rig, last: &str) -> String {
    let r = rig.pgr.run_json(&["releases"]);
    r.ok();
    let list = r.json();
    let running: Vec<&Value> =
        list.as_array().expect("releases is an array").iter().filter(|x| x["outcome"] == "running").collect();
    assert_eq!(running.len(), 1, "exactly one release should be left running: {list:#}");
    let entry = running[0]["journal"].as_array().and_then(|j| j.last()).cloned().unwrap_or_default();
    let step = entry["step"].as_str().unwrap_or_default();
    let got = match entry["detail"].as_str() {
        Some(d) if last.contains(':') => format!("{step}:{d}"),
        _ => step.to_string(),
    };
    assert_eq!(got, last, "the crashed release's journal should end at the crash: {:#}", running[0]);
    running[0]["release_id"].as_str().expect("release_id").to_string()
}

/// Waits until no session on `c` has an `application_name` LIKE `pattern`
/// (a killed client's backends exit once they see the socket close).
pub fn wait_no_sessions(c: &super::pg::Cluster, pattern: &str) {
    let sql = format!("SELECT count(*) FROM pg_stat_activity WHERE application_name LIKE '{pattern}'");
    super::wait_for(
        &format!("sessions {pattern} to end"),
        std::time::Duration::from_secs(20),
        std::time::Duration::from_millis(20),
        || (c.psql("postgres", &sql) == "0").then_some(()),
    );
}
