//! `pgrehearse demo`, the README's first command, run as a user would run
//! it (with a small dataset: `--size-mb 4`; the default is 128 MiB):
//!
//! - exit 0, and stdout shows every stage, ok, in order, the second
//!   release ending restored;
//! - the `.eml` files exist, are well-formed MIME mail (parsed by Python's
//!   `email` package, not by our code) with the expected subjects;
//! - the store holds the snapshots (with manifests) and both rehearsal
//!   reports;
//! - after exit no PostgreSQL process of the sandbox runs;
//! - a second run in the same directory (with `--json`) starts clean and
//!   passes again.
//!
//! And a non-empty directory that is not a demo sandbox is refused (64)
//! and left alone.

use crate::harness::cli::bin;
use crate::harness::output;
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::Command;

const STAGES: [&str; 16] = [
    "clusters",
    "sample data",
    "config",
    "snapshot",
    "verify",
    "rehearse",
    "approve",
    "apply",
    "next release",
    "rehearse 2",
    "approve 2",
    "live changes",
    "apply 2",
    "check live",
    "emails",
    "stop",
];

fn demo(cwd: &Path, sandbox: &Path, extra: &[&str]) -> (i32, String, String) {
    let t0 = std::time::Instant::now();
    let out = output(
        Command::new(bin())
            .args(["demo", "--size-mb", "4", "--dir"])
            .arg(sandbox)
            .args(extra)
            .current_dir(cwd)
            .env_remove("RUST_LOG"),
    );
    let (stdout, stderr) =
        (String::from_utf8_lossy(&out.stdout).into_owned(), String::from_utf8_lossy(&out.stderr).into_owned());
    eprintln!("demo {extra:?}: {:?} in {:?}\n{stdout}\n--- stderr:\n{stderr}", out.status, t0.elapsed());
    (out.status.code().unwrap_or(-1), stdout, stderr)
}

#[test]
fn the_demo_runs_the_whole_cycle_stops_its_clusters_and_runs_again() {
    let tmp = tempfile::tempdir().unwrap();
    // The clusters run as the `postgres` user, which must reach the
    // sandbox (a TempDir is 0700; the demo would fall back to /tmp).
    std::fs::set_permissions(tmp.path(), std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let sandbox = tmp.path().join("sandbox");

    let (code, stdout, _) = demo(tmp.path(), &sandbox, &[]);
    assert_eq!(code, 0, "the demo failed");
    let mut at = 0;
    for stage in STAGES {
        let prefix = format!("ok   {stage:<12} ");
        let line = stdout[at..]
            .lines()
            .find(|l| l.starts_with('[') && l.contains(&prefix))
            .unwrap_or_else(|| panic!("no ok line for stage `{stage}` (in order) in:\n{stdout}"));
        at += stdout[at..].find(line).unwrap() + line.len();
        match stage {
            "verify" => assert!(line.contains("RTO"), "{line}"),
            "rehearse" | "rehearse 2" => assert!(line.contains("pass"), "{line}"),
            "apply" => assert!(line.contains("applied"), "{line}"),
            "apply 2" => assert!(line.contains("failed on live and was restored"), "{line}"),
            _ => {}
        }
    }
    assert!(stdout.contains("Every stage did what it should"), "{stdout}");
    assert!(stdout.contains("widen order item quantity") && stdout.contains("ACCESS EXCLUSIVE on order_items"));
    assert!(stdout.contains("rewrote order_items"), "the rewrite is reported: {stdout}");
    check_sandbox(&sandbox);
    assert!(stdout.contains(&sandbox.join("mail").display().to_string()), "the report says where the mail is");

    // Again, in the same directory: a clean start (the same numbers of
    // mails, snapshots and reports, not twice as many).
    let (code, stdout, _) = demo(tmp.path(), &sandbox, &["--json"]);
    assert_eq!(code, 0, "the second run failed");
    let doc: Value = serde_json::from_str(&stdout).unwrap_or_else(|e| panic!("--json prints one document ({e})"));
    assert_eq!(doc["ok"], true, "{doc:#}");
    let stages: Vec<&str> = doc["stages"].as_array().unwrap().iter().map(|s| s["stage"].as_str().unwrap()).collect();
    assert_eq!(stages, STAGES);
    assert!(doc["stages"].as_array().unwrap().iter().all(|s| s["ok"] == true), "{doc:#}");
    let outcomes: Vec<&str> =
        doc["releases"].as_array().unwrap().iter().map(|r| r["outcome"].as_str().unwrap()).collect();
    assert_eq!(outcomes, ["applied", "restored"]);
    assert_eq!(doc["emails"].as_array().unwrap().len(), 6);
    check_sandbox(&sandbox);
}

/// Mail, store and processes after a run.
fn check_sandbox(sandbox: &Path) {
    let mails = files(&sandbox.join("mail"), ".eml");
    let mut kinds: Vec<String> = mails.iter().map(|m| mail_kind(m)).collect();
    kinds.sort();
    assert_eq!(
        kinds,
        [
            "alert: release failed",
            "drill passed",
            "rehearsal passed",
            "rehearsal passed",
            "release applied",
            "release restored"
        ],
        "{mails:?}"
    );

    let store = sandbox.join("store/shop");
    let snapshots: Vec<PathBuf> = std::fs::read_dir(&store)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.join("manifest.json").is_file())
        .collect();
    // The manual one, the fresh one of the second rehearsal, and each
    // release's pre-release snapshot.
    assert_eq!(snapshots.len(), 4, "{snapshots:?}");
    for s in &snapshots {
        let m: Value = serde_json::from_slice(&std::fs::read(s.join("manifest.json")).unwrap()).unwrap();
        let dump = s.join("dump.pgdump.zst");
        assert_eq!(std::fs::metadata(&dump).unwrap().len(), m["bytes_stored"].as_u64().unwrap(), "{m:#}");
    }
    let reports: Vec<PathBuf> =
        std::fs::read_dir(store.join("rehearsals")).unwrap().map(|e| e.unwrap().path()).collect();
    assert_eq!(reports.len(), 2, "{reports:?}");
    for r in &reports {
        let md = std::fs::read_to_string(r.join("report.md")).unwrap();
        assert!(md.contains(": PASS"), "{md}");
        let json: Value = serde_json::from_slice(&std::fs::read(r.join("report.json")).unwrap()).unwrap();
        assert_eq!(json["ok"], true);
    }
    assert!(sandbox.join("state/state.sqlite").is_file());
    assert!(sandbox.join("report.txt").is_file());

    // Nothing of the sandbox runs any more (pgrep never matches itself).
    let pgrep = output(Command::new("pgrep").arg("-af").arg(sandbox));
    assert_eq!(pgrep.status.code(), Some(1), "still running:\n{}", String::from_utf8_lossy(&pgrep.stdout));
    for c in ["live", "shadow"] {
        let data = sandbox.join("clusters").join(c).join("data");
        assert!(data.join("PG_VERSION").is_file(), "the {c} cluster's data is kept");
        assert!(!data.join("postmaster.pid").exists(), "the {c} cluster was not stopped");
    }
}

/// Parses one `.eml` with Python's `email` package (strict policy, no
/// defects, a text and an HTML part) and names it by its subject.
fn mail_kind(path: &Path) -> String {
    let script = r#"
import email, email.policy, sys
m = email.message_from_binary_file(open(sys.argv[1], 'rb'), policy=email.policy.strict)
assert not m.defects, m.defects
types = [p.get_content_type() for p in m.walk()]
assert 'text/plain' in types and 'text/html' in types, types
assert m['To'] and m['From'] and m['Date'], dict(m)
print(m['Subject'])
"#;
    let out = output(Command::new("python3").arg("-c").arg(script).arg(path));
    assert!(out.status.success(), "{path:?} is not a well-formed mail: {}", String::from_utf8_lossy(&out.stderr));
    let subject = String::from_utf8_lossy(&out.stdout).trim().to_string();
    let rest = subject.strip_prefix("[pgrehearse] ").unwrap_or_else(|| panic!("no subject prefix: {subject}"));
    let kind = if rest == "ALERT shop: release failed" {
        "alert: release failed"
    } else if rest.starts_with("shop: restore drill of ") && rest.ends_with(" passed") {
        "drill passed"
    } else if rest.starts_with("shop: rehearsal ") && rest.ends_with(" passed") {
        "rehearsal passed"
    } else if rest.starts_with("shop: release r-") && rest.ends_with(" applied") {
        "release applied"
    } else if rest.starts_with("shop: release r-") && rest.ends_with(" restored") {
        "release restored"
    } else {
        panic!("unexpected subject: {subject}")
    };
    kind.to_string()
}

fn files(dir: &Path, suffix: &str) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("{dir:?}: {e}"))
        .map(|e| e.unwrap().path())
        .filter(|p| p.to_string_lossy().ends_with(suffix))
        .collect();
    v.sort();
    v
}

#[test]
fn a_directory_that_is_not_a_sandbox_is_refused_and_left_alone() {
    let tmp = tempfile::tempdir().unwrap();
    std::fs::write(tmp.path().join("notes.txt"), "mine").unwrap();
    let (code, _, stderr) = demo(tmp.path(), tmp.path(), &[]);
    assert_eq!(code, 64, "{stderr}");
    assert!(stderr.contains("not a pgrehearse demo sandbox"), "{stderr}");
    assert_eq!(std::fs::read_to_string(tmp.path().join("notes.txt")).unwrap(), "mine");
    assert_eq!(std::fs::read_dir(tmp.path()).unwrap().count(), 1, "nothing was added");
}
