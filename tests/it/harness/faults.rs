//! The fault-injection report: every fault test records what it injected,
//! into which operation, and what came of it, as one JSON line in
//! `<target dir>/test-artifacts/faults.jsonl`. `scripts/test.sh` empties the
//! file before the suite and renders it as `fault-report.md` after
//! (`scripts/fault-report.py`), so CI's log lists each fault and its outcome.
//!
//! A test records only after it has checked the outcome (nothing visible
//! incomplete, nothing lost): a line in the report means the assertion held.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

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
