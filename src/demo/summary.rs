//! The demo's final report: the verdict, what each stage did, and where
//! everything it wrote is (config, state file, snapshots, rehearsal
//! reports, `.eml` files, server logs), then how to look around. With
//! `--json`, the same as one JSON document.

use std::path::{Path, PathBuf};

use super::cluster::{Postgres, RunAs};
use super::cycle::Found;
use super::progress::{Progress, secs};
use super::sandbox::Sandbox;

#[allow(clippy::too_many_arguments)]
pub fn report(
    p: &mut Progress,
    sandbox: &Sandbox,
    pg: &Postgres,
    run_as: Option<RunAs>,
    logs: &[PathBuf],
    data_dirs: &[PathBuf],
    found: &Found,
    ok: bool,
) {
    let total: u64 = p.stages.iter().map(|s| s.duration_ms).sum();
    p.say("");
    p.say("Report");
    if ok {
        p.say(&format!(
            "  Every stage did what it should, in {}: the snapshot was proven by a restore, both releases were \
             rehearsed on real data and approved, the first was applied, and the second, which failed on live, \
             was restored from its pre-release snapshot.",
            secs(total)
        ));
    } else {
        let bad: Vec<&str> = p.stages.iter().filter(|s| !s.ok).map(|s| s.stage).collect();
        let why =
            if bad.is_empty() { "the demo stopped early".to_string() } else { format!("FAILED: {}", bad.join(", ")) };
        p.say(&format!("  The demo did not complete as it should ({why}); see the stages above."));
    }
    let stages: Vec<String> = p
        .stages
        .iter()
        .map(|s| format!("  {:<12} {:<4} {:>7}", s.stage, if s.ok { "ok" } else { "FAIL" }, secs(s.duration_ms)))
        .collect();
    for line in stages {
        p.say(&line);
    }
    let cfg = rel(&sandbox.config());
    let exe = std::env::current_exe().map_or("pgrehearse".into(), |e| rel(&e));
    p.say("");
    p.say("Where everything is");
    let target = found.target.as_deref().unwrap_or("shop");
    let store = sandbox.store().join(target);
    let rows = [
        ("config", sandbox.config().display().to_string()),
        (
            "state",
            format!(
                "{} (runs, rehearsals, approvals, releases and their journals)",
                sandbox.state().join("state.sqlite").display()
            ),
        ),
        ("snapshots", format!("{}/<id>/ (manifest.json, dump.pgdump.zst)", store.display())),
        (
            "migrations",
            format!("{} (the failing release: {})", sandbox.migrations().display(), sandbox.failing().display()),
        ),
        ("this report", sandbox.path("report.txt").display().to_string()),
    ];
    for (k, v) in rows {
        p.say(&format!("  {k:<12} {v}"));
    }
    for (id, reason, verified) in &found.snapshots {
        let v = if *verified { ", verified" } else { "" };
        p.say(&format!("  {:<12} {id} ({reason}{v})", "snapshot"));
    }
    for id in &found.rehearsals {
        let dir = store.join("rehearsals").join(id);
        p.say(&format!("  {:<12} {} (and report.json)", "rehearsal", dir.join("report.md").display()));
    }
    for (id, outcome) in &found.releases {
        p.say(&format!("  {:<12} {id}: {outcome} (`{exe} -c {cfg} releases {id}`)", "release"));
    }
    for m in &found.mails {
        p.say(&format!("  {:<12} {}  \"{}\"", "email", m.destination, m.subject));
    }
    for l in logs {
        p.say(&format!("  {:<12} {}", "server log", l.display()));
    }
    p.say("");
    p.say("Look around");
    p.say(&format!("  {exe} -c {cfg} snapshots       # or: releases, releases <id>"));
    let as_pg = if run_as.is_some() { "runuser -u postgres -- " } else { "" };
    if let Some(live) = data_dirs.first() {
        p.say(&format!(
            "  {as_pg}{} -D {} -l {} start   # then: {exe} -c {cfg} status",
            pg.bindir.join("pg_ctl").display(),
            live.display(),
            live.with_file_name("server.log").display()
        ));
    }
    p.say(&format!("  {exe} demo --dir {}   # starts over in a clean sandbox", rel(&sandbox.dir)));
}

/// `--json`: the stages and the files.
pub fn print_json(p: &Progress, sandbox: &Sandbox, found: &Found, ok: bool) {
    let target = found.target.as_deref().unwrap_or("shop");
    let store = sandbox.store().join(target);
    let doc = serde_json::json!({
        "ok": ok,
        "sandbox": sandbox.dir,
        "dataset": found.dataset,
        "stages": p.stages,
        "config": sandbox.config(),
        "state": sandbox.state().join("state.sqlite"),
        "snapshots": found.snapshots.iter().map(|(id, reason, verified)| serde_json::json!({
            "id": id, "reason": reason, "verified": verified, "dir": store.join(id),
        })).collect::<Vec<_>>(),
        "rehearsal_reports": found.rehearsals.iter().map(|id| store.join("rehearsals").join(id).join("report.md")).collect::<Vec<_>>(),
        "releases": found.releases.iter().map(|(id, outcome)| serde_json::json!({"id": id, "outcome": outcome})).collect::<Vec<_>>(),
        "emails": found.mails.iter().map(|m| serde_json::json!({"file": m.destination, "subject": m.subject})).collect::<Vec<_>>(),
    });
    println!("{}", serde_json::to_string_pretty(&doc).expect("the report serializes"));
}

/// `path` relative to the working directory when it is under it (shorter
/// commands to copy), else as it is.
fn rel(path: &Path) -> String {
    std::env::current_dir()
        .ok()
        .and_then(|cwd| path.strip_prefix(cwd).ok().map(|r| r.display().to_string()))
        .unwrap_or_else(|| path.display().to_string())
}
