//! The status page in a real browser: Debian's headless Chromium, driven by
//! playwright-core from `tests/fixtures/browser` (`approve.mjs`), loads `/`
//! from the real daemon, finds the pending plan and its rehearsal, fills in
//! who approves and clicks Approve. The first token prompt gets a wrong
//! token (the page shows the daemon's 403 and forgets it), the second the
//! right one; the approval must then be in the state store, as the
//! independent `pgrehearse --json status` reads it. The full-page
//! screenshot is kept as an artifact in `<target dir>/test-artifacts/`.

use crate::api::{TOKEN, approvals_in_state_file, ready_daemon};
use crate::harness::run_ok;
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::Command;

fn fixture() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/browser")
}

/// `<target dir>/test-artifacts/` (next to Cargo's `tmp/` for tests).
fn artifacts() -> PathBuf {
    let tmp = Path::new(env!("CARGO_TARGET_TMPDIR"));
    let dir = tmp.parent().unwrap_or(tmp).join("test-artifacts");
    std::fs::create_dir_all(&dir).expect("create the test-artifacts directory");
    dir
}

#[test]
fn the_status_page_approves_the_rehearsed_plan_in_headless_chromium() {
    assert!(
        Path::new("/usr/bin/chromium").exists(),
        "Debian's chromium is missing; run scripts/test.sh, which installs it"
    );
    assert!(
        fixture().join("node_modules/playwright-core/package.json").exists(),
        "playwright-core is not installed in {}; run scripts/test.sh (npm ci there)",
        fixture().display()
    );
    let t = ready_daemon();
    let shot = artifacts().join("status-page.png");
    let _ = std::fs::remove_file(&shot);
    let by = "Page Tester <ops@example.com>";

    let out = run_ok(
        Command::new("node")
            .arg(fixture().join("approve.mjs"))
            .arg(format!("http://{}/", t.addr))
            .arg(&t.plan)
            .arg(&t.rehearsal)
            .arg(by)
            .arg(&shot)
            .env("PGR_TOKEN", TOKEN)
            .current_dir(fixture()),
    );
    eprintln!("browser: {out}");
    let seen: Value =
        serde_json::from_str(out.lines().last().unwrap_or_default()).expect("one JSON line from approve.mjs");

    assert_eq!(seen["plan_shown"], t.plan.as_str());
    assert_eq!(seen["rehearsal_shown"], t.rehearsal.as_str());
    assert_eq!(seen["migration_rows"], 1, "one migration in the report table: {seen:#}");
    assert_eq!(seen["chart_rows"], 1, "one migration in the chart: {seen:#}");
    let dialogs = seen["dialogs"].as_array().expect("dialogs");
    assert_eq!(dialogs.len(), 2, "the token is asked once, and again after the daemon refused it: {seen:#}");
    assert!(dialogs.iter().all(|d| d["type"] == "prompt"), "{seen:#}");
    let error = seen["error_text"].as_str().unwrap_or_default();
    assert!(error.contains("HTTP 403") && error.contains("token is wrong"), "{seen:#}");
    assert!(seen["token_after_error"].is_null(), "a refused token is forgotten: {seen:#}");
    let success = seen["success_text"].as_str().unwrap_or_default();
    assert!(
        success.starts_with("Approved: plan ") && success.contains(&t.plan[..12]) && success.contains(by),
        "{seen:#}"
    );
    assert_eq!(seen["token_kept"], true, "the good token stays for the session: {seen:#}");
    // Nothing failed in the page but the refused POST (its 403).
    let errors: Vec<&Value> = seen["console"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| {
            c.as_str().is_some_and(|c| c.starts_with("pageerror") || (c.starts_with("error") && !c.contains("403")))
        })
        .collect();
    assert!(errors.is_empty(), "the page logged errors: {seen:#}");

    // Recorded in the state store, as the independent reader sees it.
    let st = t.rig.status().json();
    assert_eq!(st["approval"]["valid"], true, "{st:#}");
    assert_eq!(st["approval"]["approved_by"], by);
    assert_eq!(st["approval"]["plan_hash"], t.plan.as_str());
    assert_eq!(st["approval"]["note"], "approved from the status page test");
    let rows = approvals_in_state_file(&t.rig.pgr.state_dir());
    assert_eq!(rows.len(), 1, "exactly one approval (the wrong token wrote none): {rows:#?}");

    let png = std::fs::read(&shot).unwrap_or_else(|e| panic!("screenshot {}: {e}", shot.display()));
    assert!(png.starts_with(b"\x89PNG\r\n\x1a\n") && png.len() > 10_000, "not a PNG screenshot: {} bytes", png.len());
    eprintln!("status page screenshot kept at {}", shot.display());
    println!("status page screenshot: {}", shot.display());
}
