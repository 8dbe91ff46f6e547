//! The fault-injection report: every fault test records what it injected,
//! into which operation, and what came of it, as one JSON line in
//! `<target dir>/test-artifacts/faults.jsonl`. `scripts/test.sh` empties the
//! file before the suite and renders it as `fault-report.md` after
//! (`scripts/fault-report.py`), so CI's log lists each fault and its outcome.
//!
//! A test records only after it has checked the outcome (nothing visible
//! incomplete, nothing lost): a line in the report means the assertion held.
//!
//! Also the fault matrices' case runner: [`case`] runs one fault × operation
//! case, records it when its checks held, and keeps a failure for
//! [`finish`]; [`finish_run`] checks a run under a fault ended within
//! [`BOUND`] and, if it failed, failed cleanly.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde_json::Value;

use super::cli::{Background, Run};
use super::dump::final_error;
use super::migrations::tail;

/// `<target dir>/test-artifacts/` (next to Cargo's `tmp/` for tests).
pub fn artifacts_dir() -> PathBuf {
    let tmp = Path::new(env!("CARGO_TARGET_TMPDIR"));
    let dir = tmp.parent().unwrap_or(tmp).join("test-artifacts");
    std::fs::create_dir_all(&dir).expect("create the test-artifacts directory");
    dir
}

/// Tests run in parallel threads; lines must not interleave.
static WRITE: Mutex<()> = Mutex::new(());

/// One checked fault: `operation` is the pgrehearse command it hit
/// (`snapshot`, `verify`, `rehearse`, `apply`, …), `fault` what was done
/// (`S3 connection reset after 2 MiB`), `outcome` what pgrehearse did and what
/// the test verified (`exit 1, no manifest, multipart aborted; retry ok`).
pub fn record(operation: &str, fault: &str, outcome: &str) {
    let line = serde_json::json!({
        "test": std::thread::current().name().unwrap_or("?"),
        "operation": operation,
        "fault": fault,
        "outcome": outcome,
    });
    let _guard = WRITE.lock().unwrap_or_else(|p| p.into_inner());
    let path = artifacts_dir().join("faults.jsonl");
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&path)
        .unwrap_or_else(|e| panic!("open {path:?}: {e}"));
    writeln!(f, "{line}").expect("append to the fault report");
}

/// No run may take longer than this under any fault (else it hangs).
pub const BOUND: Duration = Duration::from_secs(100);

/// What a case must end in.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Expect {
    Survive,
    Fail,
    Either,
}

/// Runs one case; a panic is recorded as a failure, not propagated.
pub fn case(failures: &mut Vec<String>, operation: &str, fault: &str, f: impl FnOnce() -> String) {
    eprintln!("\n===== {operation} under {fault}");
    let t0 = Instant::now();
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)) {
        Ok(outcome) => {
            eprintln!("===== {operation} under {fault}: {outcome} ({:?})", t0.elapsed());
            record(operation, fault, &outcome);
        }
        Err(e) => {
            let msg = e.downcast_ref::<String>().cloned().or_else(|| e.downcast_ref::<&str>().map(|s| s.to_string()));
            eprintln!("===== {operation} under {fault}: FAILED ({:?})", t0.elapsed());
            failures.push(format!("{operation} under {fault}: {}", tail(&msg.unwrap_or_default(), 3000)));
        }
    }
}

/// Panics listing every failed case.
pub fn finish(failures: Vec<String>) {
    assert!(failures.is_empty(), "{} case(s) failed:\n\n{}", failures.len(), failures.join("\n\n"));
}

/// Waits for a background run within [`BOUND`] and checks a failure is
/// clean: exit 1 or 69, no panic, an `error:` line. Returns the run and
/// how long it took.
pub fn finish_run(bg: Background, expect: Expect, what: &str) -> (Run, Duration) {
    let t0 = Instant::now();
    let r = bg.wait(BOUND);
    let took = t0.elapsed();
    eprintln!(
        "{what}: exit {} in {took:?}\n--- stdout:\n{}\n--- stderr (tail):\n{}",
        r.code,
        r.stdout,
        tail(&r.stderr, 2500)
    );
    assert!(!r.stderr.contains("panicked"), "{what} panicked:\n{}", r.stderr);
    match expect {
        Expect::Survive => assert_eq!(r.code, 0, "{what} should have survived the fault:\n{}", r.stderr),
        Expect::Fail => assert_ne!(r.code, 0, "{what} should have failed under the fault:\n{}", r.stdout),
        Expect::Either => {}
    }
    if r.code != 0 {
        assert!([1, 69].contains(&r.code), "{what}: exit {} is neither 1 (failed) nor 69 (unavailable)", r.code);
        let json = serde_json::from_str::<Value>(&r.stdout).unwrap_or(Value::Null);
        let said = r.stderr.contains("error:") || json["reason"].is_string() || json["error"].is_string();
        assert!(said, "{what} failed without an error message:\n{}\n{}", r.stdout, r.stderr);
    }
    (r, took)
}

/// "exit 1 in 7.2s: <last error line>"
/// (The message is the JSON's `reason` or `error`, else the `error:` line.)
pub fn failed_how(r: &Run, took: Duration) -> String {
    let json = serde_json::from_str::<Value>(&r.stdout).unwrap_or(Value::Null);
    let msg = match json["reason"].as_str().or(json["error"].as_str()) {
        Some(m) => m.to_string(),
        None => final_error(&r.stderr).lines().next().unwrap_or_default().trim_start_matches("error: ").to_string(),
    };
    let msg = msg.split_whitespace().collect::<Vec<_>>().join(" ");
    let short: String = msg.chars().take(240).collect();
    let more = if short.len() < msg.len() { "…" } else { "" };
    format!("exit {} in {:.1}s ({short}{more})", r.code, took.as_secs_f64())
}
