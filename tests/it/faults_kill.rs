//! pgrehearse killed during `pgrehearse apply` (issue 7, the fault-injection
//! suite's crash half; the live server stopped mid-release is in
//! `faults_stop.rs`).
//!
//! pgrehearse killed with SIGKILL at random points of a release (a plan
//! with transactional migrations and a concurrent index build; in some
//! iterations a row the rehearsal never saw makes the last migration fail
//! on live, so recovery restores), sometimes its recovery killed again:
//! live always ends exactly pre- or post-release. Delays are drawn in
//! [0, 1.2 × the measured duration of an uncrashed release]; the seed is
//! printed (replay with `PGREHEARSE_KILL_SEED`), `PGREHEARSE_KILL_LOOP`
//! raises the iteration count (default 20), and the distribution (pre vs
//! post, the journal step each kill landed at) is printed at the end.
//!
//! Every checked case is written to the fault report
//! (`crate::harness::faults::record`).

use crate::harness::faults::record;
use crate::harness::migrations::*;
use crate::harness::proc::try_signal;
use crate::harness::random_u64;
use crate::harness::release::*;
use serde_json::Value;
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

const KILL_SETUP: &str = "CREATE TABLE t (id int PRIMARY KEY, note text NOT NULL);
    INSERT INTO t SELECT g, 'row ' || g || repeat('.', g % 50) FROM generate_series(1, 200000) g;";
/// The pristine copy of live every iteration starts from.
const PRISTINE: &str = "pristine_app";
/// A row the rehearsal never saw: migration 3's CHECK fails on live.
const BAD_ROW: &str = "INSERT INTO t VALUES (1000001, 'bad row')";

/// splitmix64: a small, seedable generator (no dependency for one loop).
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in [0, max).
    fn below(&mut self, max: f64) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64 * max
    }
}

fn env_u64(name: &str) -> Option<u64> {
    std::env::var(name).ok().and_then(|v| v.trim().parse().ok())
}

/// Live back to its pristine state: the release's databases dropped, `app`
/// cloned from [`PRISTINE`]; with `bad`, the row migration 3 rejects.
fn reset(rig: &Rig, bad: bool) {
    wait_no_sessions(&rig.live, "pg_dump");
    let mut dbs = live_dbs_like(rig, "app_failed_");
    dbs.extend(live_dbs_like(rig, "app_restoring_"));
    dbs.push("app".into());
    for db in dbs {
        rig.live.psql("postgres", &format!("DROP DATABASE IF EXISTS \"{db}\" WITH (FORCE)"));
    }
    rig.live.psql("postgres", &format!("CREATE DATABASE app TEMPLATE {PRISTINE} OWNER app"));
    if bad {
        as_app(&rig.live, "app", BAD_ROW);
    }
}

/// The newest release record of the target, if any.
fn newest_release(rig: &Rig) -> Option<Value> {
    let r = rig.pgr.run_json(&["releases"]);
    r.ok();
    r.json().as_array().and_then(|a| a.first().cloned())
}

/// The journal's last step as the report names it (`migration 2`, `restore`).
fn last_step(rel: &Value) -> String {
    let entry = rel["journal"].as_array().and_then(|j| j.last()).cloned().unwrap_or_default();
    let step = entry["step"].as_str().unwrap_or("none");
    match entry["detail"].as_str() {
        Some(d) if step.starts_with("migration") => format!("{step} {d}"),
        _ => step.to_string(),
    }
}

/// Where a kill landed, from the record it left (`prev`: the newest release
/// id before the apply).
fn landed(rig: &Rig, prev: &Option<String>, killed: bool) -> String {
    let newest = newest_release(rig).filter(|r| r["release_id"].as_str() != prev.as_deref());
    match newest {
        None if killed => "preflight (no release recorded yet)".into(),
        None => panic!("apply exited on its own without recording a release"),
        Some(r) if r["outcome"] == "running" => last_step(&r),
        Some(r) => {
            assert_ne!(r["outcome"], "refused", "the release was refused: {r:#}");
            format!("after the end (outcome {})", r["outcome"].as_str().unwrap_or("?"))
        }
    }
}

/// Starts `args`, SIGKILLs it after `delay` if it still runs; returns
/// whether it was killed.
fn run_and_kill(rig: &Rig, args: &[&str], delay: Duration) -> bool {
    let mut bg = rig.pgr.spawn(args);
    let until = Instant::now() + delay;
    while Instant::now() < until && bg.running() {
        std::thread::sleep(Duration::from_millis(5).min(until.saturating_duration_since(Instant::now())));
    }
    let pid = bg.pid();
    // Not yet reaped, the pid cannot be reused: signalling a just-exited child is harmless.
    let running = bg.running();
    if running {
        try_signal(pid, libc::SIGKILL);
    }
    let r = bg.wait(Duration::from_secs(30));
    assert!(!r.stderr.contains("panicked"), "pgrehearse panicked:\n{}", r.stderr);
    // The killed process's lock session ends once its backend sees the socket close.
    wait_no_sessions(&rig.live, "pgrehearse-lock-%");
    running && r.code == -1
}

/// `--json apply` to the end; returns its record and wall time.
fn timed_apply(rig: &Rig, code: i32) -> (Value, f64) {
    approve_current(rig);
    let t = Instant::now();
    let r = apply(rig);
    let secs = t.elapsed().as_secs_f64();
    r.expect_code(code);
    (r.json(), secs)
}

#[test]
fn sigkill_at_random_points_of_a_release_leaves_live_exactly_before_or_after_it() {
    let t0 = Instant::now();
    let seed = env_u64("PGREHEARSE_KILL_SEED").unwrap_or_else(random_u64);
    let iterations = env_u64("PGREHEARSE_KILL_LOOP").unwrap_or(20).max(20);
    eprintln!("SIGKILL loop: PGREHEARSE_KILL_SEED={seed} PGREHEARSE_KILL_LOOP={iterations}");
    let mut rng = Rng(seed);
    let rig = Rig::start("sqlx", KILL_SETUP);
    configure(&rig, "");
    rig.live.psql("postgres", &format!("CREATE DATABASE {PRISTINE} TEMPLATE app"));
    let files = [
        rig.sqlx(
            "1",
            "add_flag",
            "ALTER TABLE t ADD COLUMN flag boolean NOT NULL DEFAULT false;\nUPDATE t SET flag = true WHERE id % 3 = 0;\n",
            None,
        ),
        rig.sqlx("2", "index_flag", "-- no-transaction\nCREATE INDEX CONCURRENTLY t_flag ON t (flag, id);\n", None),
        rig.sqlx("3", "check_note", "ALTER TABLE t ADD CONSTRAINT t_note_ok CHECK (note NOT LIKE 'bad%');\n", None),
    ];
    rig.rehearse(&["--snapshot", "fresh"]).ok();
    let post = post_state(&rig, &files);

    // Uncrashed releases of each kind, to learn how long they take (the
    // faster of two: the first run on a cold cluster is slower).
    let (mut d_ok, mut d_fail) = (f64::MAX, f64::MAX);
    for _ in 0..2 {
        reset(&rig, false);
        let (rel, d) = timed_apply(&rig, 0);
        assert_eq!(rel["outcome"], "applied", "{rel:#}");
        same(&without_history(&live_fingerprint(&rig)), &post.fingerprint, "the uncrashed release");
        d_ok = d_ok.min(d);
        reset(&rig, true);
        let before = live_fingerprint(&rig);
        let (rel, d) = timed_apply(&rig, 1);
        assert_eq!(rel["outcome"], "restored", "{rel:#}");
        same(&live_fingerprint(&rig), &before, "the uncrashed failing release");
        d_fail = d_fail.min(d);
    }
    eprintln!("uncrashed releases: applied in {d_ok:.2} s, failed and restored in {d_fail:.2} s");

    let mut landings: BTreeMap<String, u32> = BTreeMap::new();
    let (mut pre, mut postn, mut recoveries_killed) = (0, 0, 0);
    for i in 0..iterations {
        let bad = rng.below(1.0) < 0.35;
        reset(&rig, bad);
        approve_current(&rig);
        let before = live_fingerprint(&rig);
        let prev = newest_release(&rig).and_then(|r| r["release_id"].as_str().map(str::to_string));
        let delay = rng.below(1.2 * if bad { d_fail } else { d_ok });
        let killed = run_and_kill(&rig, &["--json", "apply"], Duration::from_secs_f64(delay));
        let at = landed(&rig, &prev, killed);
        let mut fault = format!("SIGKILL at {delay:.2} s (journal step: {at})");
        if !bad {
            fault.push_str(", plan passes on live");
        } else {
            fault.push_str(", migration 3 fails on live");
        }
        // Sometimes the recovery itself is killed too.
        if killed && at != "preflight (no release recorded yet)" && !at.starts_with("after") && rng.below(1.0) < 0.6 {
            let d2 = rng.below(d_fail);
            if run_and_kill(&rig, &["--json", "status"], Duration::from_secs_f64(d2)) {
                recoveries_killed += 1;
                let r = newest_release(&rig).unwrap_or_default();
                let step = if r["outcome"] == "running" { last_step(&r) } else { "after the end".into() };
                fault.push_str(&format!("; its recovery SIGKILLed at {d2:.2} s (journal step: {step})"));
            }
        }
        *landings.entry(at.clone()).or_default() += 1;
        eprintln!("\n===== iteration {i}: {fault}");
        let st = rig.pgr.run_json(&["status"]);
        assert!(!st.stderr.contains("panicked"), "status panicked:\n{}", st.stderr);
        st.expect_code(0);

        let rel = newest_release(&rig).filter(|r| r["release_id"].as_str() != prev.as_deref());
        let outcome = rel.as_ref().map(|r| r["outcome"].as_str().unwrap_or("?").to_string());
        let outcome = outcome.unwrap_or_else(|| "no release".into());
        if let Some(r) = &rel {
            let steps = journal_steps(r);
            eprintln!("release {outcome}: {steps:?}\nreason: {}", r["reason"].as_str().unwrap_or("-"));
            assert_eq!(steps.last().map(String::as_str), Some("finished"), "iteration {i}: {r:#}");
            if killed && !at.starts_with("after") {
                assert!(steps.iter().any(|s| s == "interrupted"), "iteration {i}: not taken over: {steps:?}");
            }
        }
        let fp = live_fingerprint(&rig);
        let state = if fp == before {
            assert!(
                ["no release", "aborted", "rolled_back", "restored"].contains(&outcome.as_str()),
                "iteration {i} ({fault}): live is pre-release but the release says {outcome}: {rel:#?}"
            );
            pre += 1;
            "pre-release"
        } else {
            if bad || without_history(&fp) != post.fingerprint {
                eprintln!("release: {rel:#?}\nstatus stderr:\n{}", tail(&st.stderr, 4000));
            }
            if bad {
                same(&fp, &before, &format!("iteration {i} ({fault}): the failing plan must end pre-release"));
            }
            same(
                &without_history(&fp),
                &post.fingerprint,
                &format!("iteration {i} ({fault}): live is neither pre- nor post-release"),
            );
            assert_eq!(history_rows(&rig, "app"), post.history, "iteration {i}: live's history");
            assert_eq!(outcome, "applied", "iteration {i} ({fault}): live is post-release: {rel:#?}");
            postn += 1;
            "post-release"
        };
        assert_eq!(invalid_indexes(&rig.live, "app"), "0", "iteration {i}: invalid indexes on live");
        assert_eq!(
            live_dbs_like(&rig, "app_restoring_"),
            Vec::<String>::new(),
            "iteration {i}: half-restored database"
        );
        let failed = live_dbs_like(&rig, "app_failed_");
        if outcome == "restored" {
            let r = rel.as_ref().unwrap();
            assert_eq!(failed, vec![r["failed_database"].as_str().unwrap_or("-").to_string()], "iteration {i}: {r:#}");
            assert!(table_exists(&rig.live, &failed[0], "t"), "iteration {i}: the kept database lost its data");
        } else {
            assert_eq!(failed, Vec::<String>::new(), "iteration {i}: a database kept though live was not restored");
        }
        let kept = if outcome == "restored" { format!(", failed db kept as {}", failed[0]) } else { String::new() };
        eprintln!("===== iteration {i}: {state} (outcome {outcome})");
        record("apply", &fault, &format!("{state} (release: {outcome}{kept})"));
    }
    eprintln!(
        "SIGKILL loop (seed {seed}): {iterations} iterations in {:?}: {pre} pre-release, {postn} post-release, \
         {recoveries_killed} recoveries killed too; kills landed at: {landings:#?}",
        t0.elapsed()
    );
    assert_eq!(pre + postn, iterations, "every iteration ends pre- or post-release");
}
