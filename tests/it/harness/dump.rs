//! Holding a snapshot at a chosen point: find the `pg_dump` that a running
//! `pgrehearse` spawned, freeze it with SIGSTOP, and let it run in short
//! steps until the wanted state is visible (a part uploaded, a `.partial`
//! file written). Only then does a test inject its fault.
//!
//! (The same technique as the private helpers of `snapshot_failures.rs`,
//! shared here for the tests that came after it.)

use super::cli::Background;
use super::proc::{bytes_written, cmdline, state, try_signal};
use super::wait_for;
use std::time::{Duration, Instant};

/// Waits for the dumping `pg_dump` that `bg` spawned (not a short
/// `pg_dump --version` probe), freezes it and returns its pid.
pub fn stopped_pg_dump(bg: &mut Background) -> u32 {
    wait_for("pgrehearse to start pg_dump", Duration::from_secs(60), Duration::from_millis(2), || {
        assert!(bg.running(), "pgrehearse exited before starting pg_dump:\n{}", bg.stderr_so_far());
        super::proc::descendants_named(bg.pid(), "pg_dump").into_iter().find(|&pid| {
            // A finished probe lingers as a zombie with an empty
            // argv, and a zombie accepts signals: skip those too.
            let argv = cmdline(pid).unwrap_or_default();
            let probe = argv.split(' ').any(|a| a == "--version" || a == "-V");
            let zombie = matches!(state(pid), None | Some('Z' | 'X'));
            // It may exit between the scan and the signal: then look again.
            !argv.trim().is_empty() && !probe && !zombie && try_signal(pid, libc::SIGSTOP) && state(pid) != Some('Z')
        })
    })
}

/// Lets the stopped `pid` run in slices of `slice` until `reached()` holds,
/// and leaves it stopped. Panics if it exits first (the data was too small
/// for the slice) or after two minutes.
pub fn step_until(bg: &Background, pid: u32, slice: Duration, what: &str, mut reached: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(120);
    let gone = |bg: &Background| -> ! {
        panic!(
            "pg_dump {pid} exited before {what} (wrote {:?} bytes so far?); pgrehearse stderr:\n{}",
            bytes_written(pid),
            bg.stderr_so_far()
        )
    };
    while !reached() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        if !try_signal(pid, libc::SIGCONT) {
            gone(bg);
        }
        std::thread::sleep(slice);
        if !try_signal(pid, libc::SIGSTOP) {
            gone(bg);
        }
    }
}

/// The operator-facing error: from the last line that starts with `error:`.
pub fn final_error(stderr: &str) -> &str {
    stderr
        .rfind("\nerror:")
        .map(|i| &stderr[i + 1..])
        .or_else(|| stderr.starts_with("error:").then_some(stderr))
        .unwrap_or(stderr)
}
