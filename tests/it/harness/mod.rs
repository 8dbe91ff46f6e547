//! Test harnesses: real PostgreSQL clusters, a real S3 server (moto), a real
//! SMTP server (aiosmtpd), a TCP fault proxy, and a runner for the real
//! `pgrehearse` binary, plus small helpers shared by the tests (commands,
//! hashes, `/proc` inspection, data).
//!
//! Nothing here mocks PostgreSQL, S3 or SMTP: every helper starts or talks to the
//! real thing, and results are read back with independent tools.

#![allow(dead_code)] // Not every test module uses every helper.

pub mod cli;
pub mod daemon;
pub mod data;
pub mod dump;
pub mod faults;
pub mod http;
pub mod migrations;
pub mod payload;
pub mod pg;
pub mod proc;
pub mod proxy;
pub mod readme;
pub mod release;
pub mod s3;
pub mod shadow;
pub mod smtp;

use std::collections::hash_map::RandomState;
use std::hash::{BuildHasher, Hasher};
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

/// A random number from the OS-seeded hasher; enough for ports and names
/// without pulling a dependency into the test binary.
pub fn random_u64() -> u64 {
    let mut h = RandomState::new().build_hasher();
    h.write_u128(Instant::now().elapsed().as_nanos());
    h.finish()
}

/// The Python virtualenv made by `scripts/test.sh` (moto, aiosmtpd, awscli).
pub fn venv() -> PathBuf {
    match std::env::var_os("PGREHEARSE_VENV") {
        Some(v) if !v.is_empty() => PathBuf::from(v),
        _ => PathBuf::from(std::env::var("HOME").expect("HOME")).join(".cache/pgrehearse-venv"),
    }
}

/// Runs a command to completion, panicking with its stderr if it fails.
/// Returns stdout as text.
pub fn run_ok(cmd: &mut Command) -> String {
    let out = output(cmd);
    assert!(
        out.status.success(),
        "command failed ({}): {:?}\nstdout:\n{}\nstderr:\n{}",
        out.status,
        cmd,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("utf-8 stdout")
}

/// Runs a command to completion and returns its raw output, panicking only if
/// it could not be started at all.
pub fn output(cmd: &mut Command) -> Output {
    cmd.output().unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"))
}

/// Hex SHA-256 of a file's bytes, computed by the test (independent of the
/// code under test).
pub fn sha256_file(path: &Path) -> String {
    use sha2::{Digest, Sha256};
    let mut f = std::fs::File::open(path).unwrap_or_else(|e| panic!("open {path:?}: {e}"));
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 16];
    loop {
        let n = f.read(&mut buf).expect("read");
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    hex::encode(hasher.finalize())
}

/// The first `n` bytes of a file (fewer if it is shorter).
pub fn file_head(path: &Path, n: usize) -> Vec<u8> {
    let mut f = std::fs::File::open(path).unwrap_or_else(|e| panic!("open {path:?}: {e}"));
    let mut buf = vec![0u8; n];
    let mut got = 0;
    while got < n {
        let k = f.read(&mut buf[got..]).expect("read");
        if k == 0 {
            break;
        }
        got += k;
    }
    buf.truncate(got);
    buf
}

/// Polls `check` every `every` until it returns `Some`, or panics with `what`
/// after `timeout`.
pub fn wait_for<T>(what: &str, timeout: Duration, every: Duration, mut check: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = check() {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out after {timeout:?} waiting for {what}");
        std::thread::sleep(every);
    }
}

/// Decompresses a zstd file with the `zstd` CLI (independent of the zstd
/// crate the binary uses).
pub fn zstd_decompress(src: &Path, dst: &Path) {
    run_ok(Command::new("zstd").arg("-q").arg("-d").arg("-f").arg(src).arg("-o").arg(dst));
}

/// All regular files below `dir`, recursively (empty if `dir` is missing).
pub fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in entries.flatten() {
            let ft = e.file_type().expect("file type");
            if ft.is_dir() {
                stack.push(e.path());
            } else {
                out.push(e.path());
            }
        }
    }
    out.sort();
    out
}
