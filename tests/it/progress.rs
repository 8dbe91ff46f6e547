//! Progress output of long work, read from the real binary's stderr:
//!
//! - Not on a terminal (stderr piped): `snapshot` into S3 and `download`
//!   log `Progress.` lines with increasing bytes, never past the total,
//!   and a last line whose bytes are exactly what the snapshot reports
//!   (`bytes_raw`) and what the store holds (`aws s3api head-object`);
//!   no ANSI escapes anywhere, and `--json` stdout stays one document.
//! - A restore drill (`verify`) logs the download to staging and the
//!   `pg_restore` growing the scratch database on the shadow server (its
//!   last line matches the restored copy's size, read back with `psql`);
//!   the next drill, a template clone, logs reading the object back.
//! - Under a pseudo-terminal (`script` from util-linux) the same commands
//!   draw an indicatif line with bytes, rate and ETA (`~` on a snapshot's
//!   estimated total) and leave a summary line.
//!
//! `PGREHEARSE_PROGRESS_INTERVAL_MS` shortens the log interval so that a
//! small database gives several lines.

use crate::harness::cli::{Pgr, Run, local_store_toml, s3_store_toml, target_toml, toml_string};
use crate::harness::data;
use crate::harness::pg::Cluster;
use crate::harness::run_ok;
use crate::harness::s3::S3Server;
use crate::harness::shadow::shadow_url;
use std::process::Command;

const PASSWORD: &str = "progress-test-pw";
const BUCKET: &str = "snaps";

/// A live cluster whose app database dumps to about 80 MiB (40 MiB of
/// incompressible bytea, hex-encoded by COPY).
fn live() -> Cluster {
    let c = Cluster::start();
    c.create_app_db("app", "app", PASSWORD);
    data::create_blob_table(&c, "app", "app", 40);
    c
}

/// One `Progress.` (or `Progress: done.`) log line's fields.
#[derive(Debug)]
struct Line {
    phase: String,
    bytes: u64,
    total: Option<u64>,
    percent: Option<f64>,
    done: bool,
}

fn field<'a>(line: &'a str, name: &str) -> Option<&'a str> {
    let start = line.find(&format!(" {name}="))? + name.len() + 2;
    let rest = &line[start..];
    Some(rest.split(' ').next().unwrap_or(rest).trim_matches('"'))
}

/// The progress lines of `phase` in a run's stderr, in order.
fn progress_lines(run: &Run, phase: &str) -> Vec<Line> {
    run.stderr
        .lines()
        .filter(|l| l.contains("Progress"))
        .filter_map(|l| {
            Some(Line {
                phase: field(l, "phase")?.to_string(),
                bytes: field(l, "bytes")?.parse().ok()?,
                total: field(l, "total").and_then(|t| t.parse().ok()),
                percent: field(l, "percent").and_then(|p| p.parse().ok()),
                done: l.contains("Progress: done."),
            })
        })
        .filter(|l| l.phase == phase)
        .collect()
}

/// At least two lines before the last, bytes strictly increasing, the last
/// a `done` line with `final_bytes`; with an exact `total`, every line names
/// it and stays within it.
fn assert_sane(run: &Run, phase: &str, final_bytes: u64, total: Option<u64>) {
    let lines = progress_lines(run, phase);
    assert!(lines.len() >= 3, "expected ≥ 2 progress lines and a last one for {phase}, got {lines:?}\n{}", run.stderr);
    let (last, before) = lines.split_last().expect("lines");
    for w in before.windows(2) {
        assert!(w[1].bytes > w[0].bytes, "{phase}: bytes must increase: {lines:?}");
    }
    assert!(last.done, "{phase}: the last line says done: {lines:?}");
    assert_eq!(last.bytes, final_bytes, "{phase}: the last line's bytes: {lines:?}");
    assert!(before.iter().all(|l| l.bytes <= last.bytes), "{phase}: nothing past the end: {lines:?}");
    assert!(before.iter().all(|l| !l.done), "{phase}: one done line: {lines:?}");
    for l in before {
        if let Some(p) = l.percent {
            assert!((0.0..=100.0).contains(&p), "{phase}: percent within 0..100: {l:?}");
        }
        if let Some(t) = total {
            assert_eq!(l.total, Some(t), "{phase}: the exact total on every line: {l:?}");
            assert!(l.bytes <= t, "{phase}: never past the total: {l:?}");
        }
    }
}

fn assert_no_escapes(run: &Run) {
    assert!(!run.stderr.contains('\x1b'), "no ANSI escapes on a pipe:\n{:?}", run.stderr);
    assert!(!run.stderr.contains('\r'), "no carriage returns on a pipe:\n{:?}", run.stderr);
    assert!(!run.stdout.contains('\x1b'), "no ANSI escapes on stdout:\n{:?}", run.stdout);
}

#[test]
fn progress_is_logged_when_stderr_is_not_a_terminal() {
    let c = live();
    let s3 = S3Server::start();
    s3.create_bucket(BUCKET);
    let mut pgr = Pgr::new();
    pgr.write_config(&format!(
        "{}{}",
        s3_store_toml(&pgr, &s3.endpoint(), BUCKET, ""),
        target_toml("app", &c.url("app", "app", PASSWORD), "")
    ));
    pgr.env("PGREHEARSE_PROGRESS_INTERVAL_MS", "50");

    let snap = pgr.run_json(&["snapshot"]);
    snap.ok();
    let out = snap.json();
    let bytes_raw = out["bytes_raw"].as_u64().expect("bytes_raw");
    let bytes_stored = out["bytes_stored"].as_u64().expect("bytes_stored");
    assert!(bytes_raw > 60 << 20, "the dataset dumps to tens of MiB: {out}");
    assert_no_escapes(&snap);
    // The snapshot's total is an estimate (pg_database_size): only sanity.
    assert_sane(&snap, "snapshot", bytes_raw, None);
    // What the store holds, read back by another client.
    let head = s3.head(BUCKET, out["key"].as_str().expect("key"));
    assert_eq!(head["ContentLength"].as_u64(), Some(bytes_stored), "stored size: {head}");

    let file = pgr.dir().join("app.pgdump");
    let dl = pgr.run(&["download", "latest", "-o", file.to_str().expect("utf-8 path")]);
    dl.ok();
    assert_no_escapes(&dl);
    assert_sane(&dl, "download", bytes_stored, Some(bytes_stored));
    assert_eq!(std::fs::metadata(&file).expect("downloaded file").len(), bytes_raw, "the plain archive's size");
    // pg_restore itself reads the archive.
    let list = run_ok(c.client("pg_restore").arg("--list").arg(&file));
    assert!(list.contains("TABLE DATA public blobs"), "pg_restore --list:\n{list}");

    // A second snapshot is estimated from the first one's raw size: its
    // lines carry that total (the same data dumps to the same size).
    let again = pgr.run_json(&["snapshot"]);
    again.ok();
    let lines = progress_lines(&again, "snapshot");
    assert!(lines.iter().any(|l| l.total == Some(bytes_raw)), "estimate from the last snapshot: {lines:?}");
    assert_sane(&again, "snapshot", again.json()["bytes_raw"].as_u64().expect("bytes_raw"), None);
}

#[test]
fn restore_drill_logs_download_and_restore_progress() {
    let c = live();
    let shadow = Cluster::start();
    let mut pgr = Pgr::new();
    pgr.write_config(&format!(
        "{}{}",
        local_store_toml(&pgr, ""),
        target_toml(
            "app",
            &c.url("app", "app", PASSWORD),
            &format!("shadow_url = {}\nrestore_jobs = 2", toml_string(&shadow_url(&shadow)))
        )
    ));
    pgr.env("PGREHEARSE_PROGRESS_INTERVAL_MS", "50");
    let snap = pgr.run_json(&["snapshot"]);
    snap.ok();
    let bytes_stored = snap.json()["bytes_stored"].as_u64().expect("bytes_stored");

    let v = pgr.run_json(&["verify", "latest", "--keep"]);
    v.ok();
    let report = v.json();
    assert_eq!(report["ok"], true, "{report}");
    assert_no_escapes(&v);
    assert_sane(&v, "download", bytes_stored, Some(bytes_stored));
    // The restore's bytes are the scratch database's growth over an empty
    // one: check the last line against the kept copy's size, read back.
    let db = report["database"].as_str().expect("database");
    let size: u64 = shadow
        .psql("postgres", &format!("SELECT pg_database_size('{db}') - pg_database_size('template1')"))
        .trim()
        .parse()
        .expect("size");
    let lines = progress_lines(&v, "restore");
    assert!(lines.len() >= 2, "restore progress lines: {lines:?}\n{}", v.stderr);
    for w in lines.windows(2) {
        assert!(w[1].bytes >= w[0].bytes, "restore bytes never go back: {lines:?}");
    }
    let last = lines.last().expect("lines");
    assert!(last.done, "restore ends with a done line: {lines:?}");
    assert!(last.bytes > 30 << 20, "the restore wrote the 40 MiB table: {lines:?}");
    // ANALYZE (after the last poll) adds statistics; the kept copy is at
    // least as big and not much bigger.
    assert!(size >= last.bytes && size < last.bytes + (8 << 20), "kept copy {size} vs logged {lines:?}");

    // A second drill clones the template; reading the stored object back
    // for its SHA-256 is the long part, and it is shown too.
    let again = pgr.run_json(&["verify", "latest"]);
    again.ok();
    assert_eq!(again.json()["method"], "template_clone", "{}", again.stdout);
    assert_no_escapes(&again);
    assert_sane(&again, "checksum", bytes_stored, Some(bytes_stored));
    assert!(progress_lines(&again, "restore").is_empty(), "a clone runs no pg_restore: {}", again.stderr);
}

/// Runs `pgrehearse <args>` under a pseudo-terminal and returns what the
/// terminal showed (stdout and stderr together, as on a screen).
fn on_terminal(pgr: &Pgr, args: &[&str]) -> String {
    let inner = pgr.command(args);
    let mut line = vec![shell_quote(inner.get_program().to_str().expect("utf-8"))];
    line.extend(inner.get_args().map(|a| shell_quote(a.to_str().expect("utf-8 argument"))));
    let mut cmd = Command::new("script");
    cmd.arg("-qfec").arg(line.join(" ")).arg("/dev/null");
    for (k, v) in inner.get_envs() {
        match v {
            Some(v) => cmd.env(k, v),
            None => cmd.env_remove(k),
        };
    }
    cmd.env("TERM", "xterm-256color").env_remove("PGREHEARSE_PROGRESS_INTERVAL_MS");
    if let Some(dir) = inner.get_current_dir() {
        cmd.current_dir(dir);
    }
    let out = cmd.output().expect("run script(1)");
    let screen = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.status.success(), "pgrehearse {args:?} under a terminal failed ({}):\n{screen}", out.status);
    screen
}

fn shell_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

#[test]
fn a_terminal_shows_a_progress_bar_with_bytes_rate_and_eta() {
    let c = live();
    let pgr = Pgr::new();
    pgr.write_config(&format!(
        "{}{}",
        local_store_toml(&pgr, ""),
        target_toml("app", &c.url("app", "app", PASSWORD), "")
    ));
    let screen = on_terminal(&pgr, &["snapshot"]);
    assert!(screen.contains("Snapshot"), "the command's own output: {screen:?}");
    // The drawn line: phase, bytes of an estimated total, rate, ETA; then
    // the summary left on screen.
    // (How many frames are drawn depends on the machine's speed: at
    // least the first one, at most 10 a second.)
    assert!(screen.contains("snapshot ["), "a bar: {screen:?}");
    assert!(screen.contains(" of ~"), "an estimated total: {screen:?}");
    assert!(screen.contains("iB/s"), "a rate: {screen:?}");
    assert!(screen.contains("ETA"), "an ETA: {screen:?}");
    assert!(screen.contains('\x1b') || screen.contains('\r'), "redrawn in place: {screen:?}");
    assert!(!progress_log_lines(&screen), "no progress log lines on a terminal: {screen:?}");
    let plain = strip_ansi(&screen);
    let summary = plain.split(['\r', '\n']).find(|l| l.trim_start().starts_with("snapshot ") && l.contains(" in "));
    let summary = summary.unwrap_or_else(|| panic!("a summary line: {screen:?}"));
    assert!(summary.contains("MiB in ") && summary.contains("MiB/s)"), "summary with bytes and rate: {summary:?}");
    assert!(!screen.contains("░"), "nothing drawn in indicatif's default style: {screen:?}");

    let file = pgr.dir().join("tty.pgdump");
    let screen = on_terminal(&pgr, &["download", "latest", "-o", file.to_str().expect("utf-8 path")]);
    assert!(screen.contains("download ["), "a download bar: {screen:?}");
    assert!(screen.contains(" of ") && !screen.contains(" of ~"), "an exact total: {screen:?}");
    assert!(screen.contains("B/s  ETA "), "a rate and an ETA: {screen:?}");
    let plain = strip_ansi(&screen);
    let summary = plain.split(['\r', '\n']).find(|l| l.trim_start().starts_with("download ") && l.contains(" in "));
    let summary = summary.unwrap_or_else(|| panic!("a download summary line: {screen:?}"));
    assert!(summary.contains("MiB in ") && summary.contains("MiB/s)"), "summary with bytes and rate: {summary:?}");
    // The summary counts the stored bytes; the file holds the raw archive.
    let listed = pgr.run_json(&["snapshots"]);
    listed.ok();
    let listed = listed.json();
    let stored = listed[0]["bytes_stored"].as_u64().expect("bytes_stored");
    let stored_mib = format!("{:.2} MiB in ", stored as f64 / (1u64 << 20) as f64);
    assert!(summary.contains(&stored_mib), "summary {summary:?} names the stored size {stored_mib:?}");
    let raw = listed[0]["bytes_raw"].as_u64().expect("bytes_raw");
    assert_eq!(std::fs::metadata(&file).expect("downloaded under a terminal too").len(), raw, "the archive's size");
}

fn progress_log_lines(screen: &str) -> bool {
    screen.lines().any(|l| l.contains("Progress.") && l.contains("phase="))
}

/// `s` without CSI escape sequences (`ESC [ … final byte`).
fn strip_ansi(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '\x1b' && chars.peek() == Some(&'[') {
            chars.next();
            for c in chars.by_ref() {
                if ('@'..='~').contains(&c) {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}
