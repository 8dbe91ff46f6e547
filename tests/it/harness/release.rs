//! Helpers for release tests (`pgrehearse apply`): a [`Rig`] configured
//! with an always-open window and the live cluster's superuser as
//! `admin_url` (restores create and rename databases), the steps a
//! release needs before it may run (rehearse, approve), and the checks of
//! the crash and fault tests: live's pre-release fingerprint against the
//! post-release state the test makes itself on a copy ([`post_state`]).

use super::cli::{Background, Run, toml_string};
use super::migrations::{Rig, fingerprint, rows, sha384_hex, sqlx_apply, sqlx_record, table_exists, tail};
use super::{run_ok, wait_for};
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// A window that is always open: every second, for a day.
pub const ALWAYS_OPEN: &str = "windows = [{ cron = \"* * * * * *\", duration = \"24h\", timezone = \"UTC\" }]";

/// Migration 1 of most plans that end in a restore ([`score_steps`]): a
/// column added with a default, then 1.5 s during which the application
/// writes.
pub const SLOW_SCORE: &str = "ALTER TABLE t ADD COLUMN score int NOT NULL DEFAULT 7;\nSELECT pg_sleep(1.5);\n";

/// Migrations 1 and 2 of the plans that can end in a restore, on `t (id,
/// email)`: 1 (`first_up`, which adds `t.score`; its down drops it)
/// commits, 2 builds an index on `score` outside a transaction, so the plan
/// runs file by file and a later failure restores.
pub fn score_steps(rig: &Rig, first_up: &str) {
    rig.sqlx("1", "add_score", first_up, Some("ALTER TABLE t DROP COLUMN score;\n"));
    rig.sqlx(
        "2",
        "index_score",
        "-- no-transaction\nCREATE INDEX CONCURRENTLY t_score ON t (score);\n",
        Some("-- no-transaction\nDROP INDEX CONCURRENTLY t_score;\n"),
    );
}

/// Migration 3: a unique index on `t.email`. The rehearsal passes; live
/// fails it once the application has written a duplicate email since.
pub fn unique_email_step(rig: &Rig) {
    rig.sqlx("3", "unique_email", "CREATE UNIQUE INDEX t_email ON t (email);\n", Some("DROP INDEX t_email;\n"));
}

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

/// Starts `--json apply` and returns once live runs one of its
/// migrations' `SELECT pg_sleep(…)` statements (preflight and the
/// pre-release snapshot are behind it), waiting up to `within`.
pub fn apply_until_sleeping(rig: &Rig, within: Duration) -> Background {
    let mut bg = rig.pgr.spawn(&["--json", "apply"]);
    let sql = "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'pgrehearse-release' \
               AND state = 'active' AND query LIKE 'SELECT pg_sleep%'";
    wait_for("a migration's pg_sleep to run on live", within, Duration::from_millis(20), || {
        assert!(bg.running(), "apply exited before its migration's pause ran:\n{}", bg.stderr_so_far());
        (rig.live.psql("postgres", sql) == "1").then_some(())
    });
    bg
}

/// Invalid indexes in `db` (an interrupted concurrent build leaves one).
pub fn invalid_indexes(c: &super::pg::Cluster, db: &str) -> String {
    c.psql(db, "SELECT count(*) FROM pg_index WHERE NOT indisvalid")
}

/// `apply` while `writer`, an application session inserting into
/// `events`, writes: waits for its first 5 rows, applies, ends the writer.
/// The release must fail on live and be restored; returns its record.
pub fn restored_while_writing(rig: &Rig, writer: super::pg::Session) -> Value {
    wait_for("the writer's first rows", Duration::from_secs(20), Duration::from_millis(20), || {
        (rig.live.psql("app", "SELECT count(*) FROM events").parse::<i64>().unwrap() >= 5).then_some(())
    });
    let r = apply(rig);
    drop(writer);
    r.expect_code(1);
    let rel = r.json();
    assert_eq!(rel["outcome"], "restored", "{rel:#}");
    rel
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
        "pgrehearse did not kill itself at step {at} ({:?}); the crash tests need the test-only `crash-hooks` \
         feature (scripts/test.sh enables it; or `cargo test --features crash-hooks`)\nstdout:\n{}\nstderr (tail):\n{}",
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

/// The copy of live a test applies a plan to itself ([`post_state`]).
pub const REFERENCE: &str = "crash_reference";

/// Live after the plan, as the test made it on a copy.
pub struct Post {
    /// [`live_fingerprint`] of the copy, without the history's digest.
    pub fingerprint: String,
    /// [`history_rows`] of the copy.
    pub history: Vec<String>,
}

/// Panics with the lines that differ unless `got == want`.
pub fn same(got: &str, want: &str, what: &str) {
    if got != want {
        let (g, w): (Vec<&str>, Vec<&str>) = (got.lines().collect(), want.lines().collect());
        let only =
            |a: &[&str], b: &[&str]| a.iter().filter(|l| !b.contains(l)).map(|l| l.to_string()).collect::<Vec<_>>();
        panic!("{what}:\nonly now: {:#?}\nonly expected: {:#?}", only(&g, &w), only(&w, &g));
    }
}

/// Versions that succeeded in `db`'s sqlx history (none without the table).
pub fn versions_in(rig: &Rig, db: &str) -> Vec<String> {
    if !table_exists(&rig.live, db, "_sqlx_migrations") {
        return Vec::new();
    }
    rows(&rig.live, db, "SELECT version FROM _sqlx_migrations WHERE success ORDER BY version")
}

/// `version|description|success|checksum` of every row of `db`'s sqlx history.
pub fn history_rows(rig: &Rig, db: &str) -> Vec<String> {
    rows(
        &rig.live,
        db,
        "SELECT version || '|' || description || '|' || success || '|' || encode(checksum, 'hex') \
         FROM _sqlx_migrations ORDER BY version",
    )
}

/// A fingerprint without the history's digest (timestamps differ per run).
pub fn without_history(fp: &str) -> String {
    fp.lines().filter(|l| !l.starts_with("public._sqlx_migrations: ")).collect::<Vec<_>>().join("\n")
}

/// Copies live now and applies `files` to the copy as sqlx would (a
/// `-- no-transaction` file outside a transaction): what live must be
/// after the plan.
pub fn post_state(rig: &Rig, files: &[PathBuf]) -> Post {
    let create = format!("CREATE DATABASE {REFERENCE} TEMPLATE app OWNER app");
    wait_for("a copy of live", Duration::from_secs(20), Duration::from_millis(100), || {
        rig.live.psql_output("postgres", &create).status.success().then_some(())
    });
    for path in files {
        let file = path.file_name().unwrap().to_str().unwrap();
        let (version, name) = file.trim_end_matches(".up.sql").split_once('_').unwrap();
        if std::fs::read_to_string(path).unwrap().starts_with("-- no-transaction") {
            let psql = ["-XAtq", "-v", "ON_ERROR_STOP=1", "-d", REFERENCE, "-c", "SET ROLE app", "-f"];
            run_ok(rig.live.client("psql").args(psql).arg(path));
            sqlx_record(&rig.live, REFERENCE, version, name, &sha384_hex(path), 1, true);
        } else {
            sqlx_apply(&rig.live, REFERENCE, path, version, name);
        }
    }
    let fingerprint = without_history(&fingerprint(&rig.live, REFERENCE).replace(REFERENCE, "app"));
    let post = Post { fingerprint, history: history_rows(rig, REFERENCE) };
    rig.live.psql("postgres", &format!("DROP DATABASE {REFERENCE}"));
    post
}

/// Bytes in `*.partial` files of a local store (a dump being written).
pub fn partial_bytes(store: &Path) -> u64 {
    super::files_under(store)
        .iter()
        .filter(|p| p.to_string_lossy().ends_with(".partial"))
        .map(|p| std::fs::metadata(p).map(|m| m.len()).unwrap_or(0))
        .sum()
}

/// Versions in live's sqlx history (none before the first release).
pub fn applied_versions(live: &super::pg::Cluster) -> Vec<String> {
    if !table_exists(live, "app", "_sqlx_migrations") {
        return Vec::new();
    }
    rows(live, "app", "SELECT version FROM _sqlx_migrations WHERE success ORDER BY version")
}

/// The release ids `releases --json` lists.
pub fn release_ids(rig: &Rig) -> Vec<String> {
    let r = rig.pgr.run_json(&["releases"]);
    r.ok();
    r.json()
        .as_array()
        .expect("releases is an array")
        .iter()
        .filter_map(|x| x["release_id"].as_str())
        .map(str::to_string)
        .collect()
}
