//! The lock-queue guard on live (`max_queue_wait`): a session holds ACCESS
//! SHARE on `t` in an open transaction while `apply` runs an `ALTER TABLE`
//! on it, and an application reader reads `t` every 20 ms throughout. The
//! `ALTER`'s lock request would make every read queue behind it; the guard
//! cancels the lock wait once a reader waited past the budget, and the
//! executor retries it. Each read's wait is measured by the server itself
//! (`clock_timestamp() - statement_timestamp()`: the lock is taken before
//! the statement executes), on the reader's own `psql` session. Preflight
//! refuses while such a holder is there before the release starts.

use crate::harness::migrations::*;
use crate::harness::release::*;
use crate::harness::wait_for;
use std::io::{BufRead, BufReader, Write};
use std::process::{Child, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// `max_queue_wait` is left at its default.
const BUDGET_MS: f64 = 500.0;

fn setup(rows: u32) -> String {
    format!(
        "CREATE TABLE t (id int PRIMARY KEY, note text NOT NULL);
         INSERT INTO t SELECT g, 'row ' || g FROM generate_series(1, {rows}) g;"
    )
}

/// The migration: a pause (so that the test can start the holder after
/// preflight, while the release runs), then the `ALTER` that queues.
const UP: &str = "SELECT pg_sleep(1);\nALTER TABLE t ADD COLUMN score int;\n";

/// A `psql` session holding ACCESS SHARE on `t` in an open transaction,
/// its last query two lines long (the record keeps only the first).
struct Holder {
    child: Child,
    pid: String,
}

impl Holder {
    fn start(rig: &Rig) -> Holder {
        let child = rig.live.psql_session(
            "app",
            "SET application_name = 'queue_holder';\nBEGIN;\nSELECT count(*) FROM t WHERE id < 10;\nSELECT 'held by the test'\n, 2;\n",
        );
        let sql = "SELECT a.pid FROM pg_stat_activity a JOIN pg_locks l ON l.pid = a.pid \
                   WHERE a.application_name = 'queue_holder' AND a.state = 'idle in transaction' \
                     AND l.relation = 't'::regclass AND l.granted AND l.mode = 'AccessShareLock'";
        let pid = wait_for("the holder's lock", Duration::from_secs(20), Duration::from_millis(10), || {
            Some(rig.live.psql("app", sql)).filter(|p| !p.is_empty())
        });
        Holder { child, pid }
    }

    fn release(mut self) {
        let _ = self.child.stdin.as_mut().unwrap().write_all(b"ROLLBACK;\n\\q\n");
        let _ = self.child.wait();
    }
}

impl Drop for Holder {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The application: reads one row of `t` every 20 ms on one session; each
/// read reports how long it took on the server, lock wait included (ms).
struct Reader {
    child: Child,
    waits: Arc<Mutex<Vec<f64>>>,
    thread: std::thread::JoinHandle<()>,
}

impl Reader {
    fn start(rig: &Rig) -> Reader {
        let mut child = rig
            .live
            .client("psql")
            .args(["-XAtq", "-d", "app"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn the reader");
        let script = "SET application_name = 'queue_reader';\n\
             SELECT round(extract(epoch FROM clock_timestamp() - statement_timestamp()) * 1000, 1) FROM t WHERE id = 1\n\
             \\watch 0.02\n";
        child.stdin.take().unwrap().write_all(script.as_bytes()).unwrap();
        let out = BufReader::new(child.stdout.take().unwrap());
        let waits = Arc::new(Mutex::new(Vec::new()));
        let w = waits.clone();
        let thread = std::thread::spawn(move || {
            for line in out.lines().map_while(Result::ok) {
                if let Ok(ms) = line.trim().parse::<f64>() {
                    w.lock().unwrap().push(ms);
                }
            }
        });
        let r = Reader { child, waits, thread };
        wait_for("the reader's first reads", Duration::from_secs(20), Duration::from_millis(20), || {
            (r.waits.lock().unwrap().len() >= 3).then_some(())
        });
        r
    }

    /// Stops reading; every read's wait in ms.
    fn stop(mut self) -> Vec<f64> {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = self.thread.join();
        self.waits.lock().unwrap().clone()
    }
}

fn longest(waits: &[f64]) -> f64 {
    waits.iter().cloned().fold(0.0, f64::max)
}

/// Starts `apply` and, once its migration runs on live (after preflight),
/// the holder.
fn apply_then_hold(rig: &Rig) -> (crate::harness::cli::Background, Holder) {
    let bg = apply_until_sleeping(rig, Duration::from_secs(120));
    (bg, Holder::start(rig))
}

fn has_score(rig: &Rig) -> bool {
    rig.live.psql("app", "SELECT count(*) FROM pg_attribute WHERE attrelid = 't'::regclass AND attname = 'score'")
        == "1"
}

/// The blocker the release names must be the holder, first line only.
fn assert_names_the_holder(cancel: &serde_json::Value, holder: &str) {
    let b = &cancel["blocked_by"][0];
    assert_eq!(b["pid"].to_string(), holder, "{cancel:#}");
    assert_eq!(b["role"], "postgres", "{cancel:#}");
    assert_eq!(b["application_name"], "queue_holder", "{cancel:#}");
    assert_eq!(b["state"], "idle in transaction", "{cancel:#}");
    assert_eq!(b["query"], "SELECT 'held by the test'", "only the first line: {cancel:#}");
    assert!(b["query_start"].as_str().is_some_and(|s| s.ends_with('Z')), "{cancel:#}");
    assert!(cancel["waited_ms"].as_f64().unwrap() > BUDGET_MS, "{cancel:#}");
}

#[test]
fn readers_never_queue_past_the_budget_behind_a_waiting_alter_which_applies_once_the_holder_leaves() {
    let rig = Rig::start("sqlx", &setup(1_000_000));
    configure(&rig, "lock_timeout = \"60s\"\nlock_retries = 10\nlock_retry_backoff = \"200ms\"");
    rig.sqlx("1", "add_score", UP, Some("ALTER TABLE t DROP COLUMN score;\n"));
    rehearse_and_approve(&rig);

    let reader = Reader::start(&rig);
    let (bg, holder) = apply_then_hold(&rig);
    let held_at = Instant::now();
    let pid = holder.pid.clone();
    std::thread::sleep(Duration::from_secs(10).saturating_sub(held_at.elapsed()));
    holder.release();
    let r = bg.wait(Duration::from_secs(180));
    let waits = reader.stop();
    eprintln!("apply stderr (tail):\n{}", tail(&r.stderr, 4000));
    let rel: serde_json::Value =
        serde_json::from_str(&r.stdout).unwrap_or_else(|e| panic!("{e}: {}\n{}", r.stdout, r.stderr));
    assert_eq!((r.code, rel["outcome"].as_str()), (0, Some("applied")), "{rel:#}");

    let m = &rel["migrations"][0];
    let cancels = m["lock_queue"].as_array().expect("lock_queue");
    assert!(!cancels.is_empty() && m["attempts"].as_u64().unwrap() as usize > cancels.len(), "{m:#}");
    assert_names_the_holder(&cancels[0], &pid);
    assert!(journal_steps(&rel).iter().any(|s| s == "lock_retry"), "{rel:#}");
    assert!(has_score(&rig), "the ALTER applied on live");

    let worst = longest(&waits);
    eprintln!(
        "reader: {} reads during the release, longest wait {worst:.1} ms; {} guard cancels over a 10 s hold",
        waits.len(),
        cancels.len()
    );
    assert!(waits.len() > 100, "the reader read throughout: {} reads", waits.len());
    assert!(worst <= BUDGET_MS + 100.0, "a read waited {worst:.1} ms, past max_queue_wait + 100 ms");
}

#[test]
fn when_the_retries_run_out_the_release_rolls_back_and_names_the_blocker() {
    let rig = Rig::start("sqlx", &setup(10_000));
    configure(&rig, "lock_timeout = \"60s\"\nlock_retries = 2\nlock_retry_backoff = \"100ms\"");
    rig.sqlx("1", "add_score", UP, Some("ALTER TABLE t DROP COLUMN score;\n"));
    rehearse_and_approve(&rig);

    let before = live_fingerprint(&rig);
    let reader = Reader::start(&rig);
    let (bg, holder) = apply_then_hold(&rig);
    let r = bg.wait(Duration::from_secs(180));
    let waits = reader.stop();
    let pid = holder.pid.clone();
    drop(holder);
    eprintln!("apply stderr (tail):\n{}", tail(&r.stderr, 4000));
    let rel: serde_json::Value =
        serde_json::from_str(&r.stdout).unwrap_or_else(|e| panic!("{e}: {}\n{}", r.stdout, r.stderr));
    assert_eq!((r.code, rel["outcome"].as_str()), (1, Some("rolled_back")), "{rel:#}");
    assert_eq!(rel["error_kind"], "lock_queue", "{rel:#}");
    let reason = rel["reason"].as_str().unwrap();
    assert!(reason.contains(&format!("pid {pid} (role postgres, queue_holder, idle in transaction")), "{reason}");
    assert!(reason.contains(": SELECT 'held by the test')") && !reason.contains(", 2"), "{reason}");
    assert!(reason.contains("max_queue_wait (500ms)"), "{reason}");

    let m = &rel["migrations"][0];
    assert_eq!(m["attempts"], 3, "1 try + 2 retries: {m:#}");
    let cancels = m["lock_queue"].as_array().expect("lock_queue");
    assert_eq!(cancels.len(), 3, "every attempt's wait was cancelled: {m:#}");
    assert_names_the_holder(&cancels[2], &pid);
    assert!(!has_score(&rig));
    assert_eq!(live_fingerprint(&rig), before, "live unchanged");

    let worst = longest(&waits);
    eprintln!("reader: {} reads, longest wait {worst:.1} ms", waits.len());
    assert!(worst <= BUDGET_MS + 100.0, "a read waited {worst:.1} ms, past max_queue_wait + 100 ms");
}

#[test]
fn preflight_refuses_while_a_session_holds_a_lock_on_the_plans_tables() {
    let rig = Rig::start("sqlx", &setup(10_000));
    configure(&rig, "");
    rig.sqlx("1", "add_score", "ALTER TABLE t ADD COLUMN score int;\n", Some("ALTER TABLE t DROP COLUMN score;\n"));
    rehearse_and_approve(&rig);

    let holder = Holder::start(&rig);
    std::thread::sleep(Duration::from_millis(700));
    let r = apply(&rig);
    r.expect_code(75);
    let rel = r.json();
    assert_eq!((rel["outcome"].as_str(), rel["error_kind"].as_str()), (Some("refused"), Some("locks_held")), "{rel:#}");
    let reason = rel["reason"].as_str().unwrap();
    assert!(
        reason.contains(&format!("pid {} (role postgres, queue_holder, idle in transaction", holder.pid)),
        "{reason}"
    );
    assert!(reason.contains("AccessShareLock on t: SELECT 'held by the test')"), "{reason}");
    assert!(!has_score(&rig));

    // Once it is gone, the same approval releases.
    holder.release();
    let r = apply(&rig);
    r.expect_code(0);
    assert!(has_score(&rig));
}
