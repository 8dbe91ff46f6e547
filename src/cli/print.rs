//! What commands print: one JSON document on stdout with `--json`, human text
//! otherwise. Errors always go to stderr as a sentence; with `--json` stdout
//! also gets `{"ok": false, "error": …, "exit_code": …}` so scripts can parse
//! every outcome.

use std::path::Path;

use serde::Serialize;
use serde_json::json;

use crate::config::{Config, ConfigError};
use crate::format::human_bytes;
use crate::snapshot::Outcome;
use crate::snapshot::catalog::{Downloaded, Listed, PruneOutcome};

fn print_json<T: Serialize>(value: &T) {
    println!("{}", serde_json::to_string_pretty(value).expect("serializable"));
}

/// The error and its causes as one sentence, skipping causes whose text the
/// message already contains (our errors quote their source themselves).
fn describe(err: &anyhow::Error) -> String {
    let mut text = String::new();
    for cause in err.chain() {
        let c = cause.to_string();
        if !text.contains(&c) {
            if !text.is_empty() {
                text.push_str(": ");
            }
            text.push_str(&c);
        }
    }
    text
}

pub fn error(json: bool, err: &anyhow::Error, code: u8) {
    let text = describe(err);
    eprintln!("error: {text}");
    if json {
        print_json(&json!({ "ok": false, "error": text, "exit_code": code }));
    }
}

/// `config check`: validates, prints the effective config with secrets
/// redacted; returns the exit code (78 when invalid).
pub fn config_check(path: &Path, json: bool) -> u8 {
    match Config::load(path) {
        Ok(cfg) => {
            if json {
                print_json(&json!({ "ok": true, "errors": [], "config": cfg }));
            } else {
                let text = toml::to_string_pretty(&cfg)
                    .unwrap_or_else(|_| serde_json::to_string_pretty(&cfg).expect("serializable"));
                println!("# {} is valid. Effective configuration (secrets redacted):\n", path.display());
                println!("{text}");
            }
            0
        }
        Err(e) => {
            let errors: Vec<String> = match &e {
                ConfigError::Invalid { problems } => problems.iter().map(|p| p.to_string()).collect(),
                other => vec![other.to_string()],
            };
            if json {
                let problems = match &e {
                    ConfigError::Invalid { problems } => serde_json::to_value(problems).expect("serializable"),
                    _ => json!([]),
                };
                print_json(&json!({ "ok": false, "errors": errors, "problems": problems }));
            }
            eprintln!("error: {e}");
            78
        }
    }
}

pub fn snapshot(json: bool, o: &Outcome) {
    if json {
        return print_json(o);
    }
    let ratio = if o.bytes_stored > 0 { o.bytes_raw as f64 / o.bytes_stored as f64 } else { 0.0 };
    println!("Snapshot {} of target {} stored.", o.id, o.target);
    println!("  dump:     {}", o.key);
    println!("  manifest: {}", o.manifest_key);
    if let Some(g) = &o.globals_key {
        println!("  globals:  {g}");
    }
    println!("  size:     {} raw, {} stored ({ratio:.1}x)", human_bytes(o.bytes_raw), human_bytes(o.bytes_stored));
    println!("  sha256:   {}", o.sha256);
    println!("  tables:   {} ({} rows, counted in the dump's snapshot)", o.tables, o.rows);
    println!("  took:     {:.1} s", o.duration_ms as f64 / 1000.0);
}

pub fn snapshots(json: bool, list: &[Listed]) {
    if json {
        return print_json(&list);
    }
    if list.is_empty() {
        println!("No snapshots yet. Take one with `pgrehearse snapshot`.");
        return;
    }
    println!("{:<22} {:<20} {:>10} {:>10}  {:<11} VERIFIED", "ID", "CREATED (UTC)", "RAW", "STORED", "REASON");
    for s in list {
        println!(
            "{:<22} {:<20} {:>10} {:>10}  {:<11} {}",
            s.id,
            s.created_at.format("%Y-%m-%d %H:%M:%S"),
            human_bytes(s.bytes_raw),
            human_bytes(s.bytes_stored),
            s.reason.as_str(),
            s.verified_at.as_deref().unwrap_or("never")
        );
    }
}

pub fn verified(json: bool, r: &crate::drill::Report) {
    if json {
        return print_json(r);
    }
    let how = if r.method == Some("template_clone") { "cloned from the template" } else { "restored" };
    if r.ok {
        println!(
            "Snapshot {} of target {} verified: {how} in {:.1} s, {} tables checked, all row counts equal the manifest, all indexes valid.",
            r.snapshot_id,
            r.target,
            r.restore_duration_ms.unwrap_or(0) as f64 / 1000.0,
            r.tables_checked
        );
    } else {
        println!("Snapshot {} of target {} FAILED verification:", r.snapshot_id, r.target);
        for m in &r.mismatches {
            println!("  - {m}");
        }
    }
    if let (true, Some(db)) = (r.kept, &r.database) {
        println!("  scratch database kept: {db}");
    }
}

pub fn restored(json: bool, r: &crate::restore::Restored) {
    if json {
        return print_json(r);
    }
    println!(
        "Snapshot {} restored into database `{}` in {:.1} s; {} tables checked against the manifest.",
        r.snapshot_id,
        r.database,
        r.duration_ms as f64 / 1000.0,
        r.tables_checked
    );
    if let Some(old) = &r.replaced {
        println!("The previous live database is kept as `{old}` (drop it yourself once you no longer need it).");
    }
}

pub fn downloaded(json: bool, d: &Downloaded) {
    if json {
        return print_json(d);
    }
    println!(
        "Snapshot {} written to {} ({}); SHA-256 of the stored object verified.\nRestore it with: pg_restore -d DBNAME {}",
        d.snapshot_id,
        d.path.display(),
        human_bytes(d.bytes),
        d.path.display()
    );
}

pub fn pruned(json: bool, o: &PruneOutcome) {
    if json {
        return print_json(o);
    }
    let verb = if o.dry_run { "Would delete" } else { "Deleted" };
    if o.deleted.is_empty() {
        println!("Nothing to prune for target {}; {} snapshots kept.", o.target, o.kept.len());
    } else {
        println!("{verb} {} snapshots of target {}:", o.deleted.len(), o.target);
        for id in &o.deleted {
            println!("  {id}");
        }
    }
    for id in &o.kept {
        println!("  keep {id} ({})", o.reasons.get(id).map(|r| r.join(", ")).unwrap_or_default());
    }
}

/// `status`.
pub fn status(json: bool, st: &crate::status::Status) {
    if json {
        print_json(st);
        return;
    }
    println!("Target {} ({:?} migrations)", st.target, st.kind);
    println!("Applied: {}", st.applied.len());
    if let Some(last) = st.applied.iter().rev().find(|a| a.ok) {
        println!("  latest: {} {}", last.version, last.name);
    }
    if st.pending.is_empty() {
        println!("Pending: none");
    } else {
        println!("Pending: {}", st.pending.len());
        for p in &st.pending {
            let mut notes = Vec::new();
            if !p.transactional {
                notes.push("outside a transaction");
            }
            if !p.reversible {
                notes.push("no down");
            }
            let notes = if notes.is_empty() { String::new() } else { format!(" ({})", notes.join(", ")) };
            let label = if p.version == p.name { p.name.clone() } else { format!("{} {}", p.version, p.name) };
            println!("  {label}{notes}");
        }
    }
    println!("Plan: {}", st.plan);
    if st.drift.is_empty() {
        println!("Drift: none");
    } else {
        println!("Drift:");
        for d in &st.drift {
            println!("  {d}");
        }
    }
    match &st.last_snapshot {
        Some(s) => println!(
            "Latest snapshot: {} ({})",
            s.id,
            s.verified_at.as_deref().map_or("never verified".to_string(), |v| format!("verified {v}"))
        ),
        None => println!("Latest snapshot: none"),
    }
    match &st.last_rehearsal {
        Some(r) => println!(
            "Latest rehearsal: {} {} ({})",
            r.id,
            r.status,
            if r.current_plan { "this plan" } else { "an older plan" }
        ),
        None => println!("Latest rehearsal: none"),
    }
    match &st.approval {
        Some(a) => println!(
            "Approval: {} by {} at {}, expires {} ({})",
            a.approval.id,
            a.approval.approved_by,
            a.approval.approved_at,
            a.approval.expires_at,
            if a.valid { "valid for this plan" } else { "NOT valid: expired or another plan" }
        ),
        None => println!("Approval: none"),
    }
    match (&st.window_open, &st.next_window) {
        (Some(o), _) => println!(
            "Window: open until {} ({} left)",
            o.end.to_rfc3339(),
            humantime::format_duration(std::time::Duration::from_secs(o.remaining(chrono::Utc::now()).as_secs()))
        ),
        (None, Some(n)) => println!("Window: closed; next opens {} until {}", n.start.to_rfc3339(), n.end.to_rfc3339()),
        (None, None) => println!("Window: none configured"),
    }
    if let Some(r) = &st.last_release {
        println!(
            "Last release: {} {} ({}){}",
            r.id,
            r.outcome,
            r.started_at,
            r.reason.as_deref().map(|x| format!(": {x}")).unwrap_or_default()
        );
    }
}

/// `rehearse`: the Markdown report, or the JSON report.
pub fn rehearsed(json: bool, r: &crate::rehearsal::Report) {
    if json {
        print_json(r);
    } else {
        print!("{}", crate::rehearsal::markdown::markdown(r));
    }
}

/// `approve`.
pub fn approved(json: bool, a: &crate::release::approval::Approved) {
    if json {
        print_json(a);
    } else {
        println!("Plan {} of target {} approved by {}.", a.plan, a.target, a.approved_by);
        println!("Approval {} rests on rehearsal {}; it expires {}.", a.approval_id, a.rehearsal_id, a.expires_at);
    }
}

/// `apply`: the outcome first, then what ran, the warnings and what to do.
pub fn released(json: bool, rel: &crate::release::Release) {
    if json {
        return print_json(rel);
    }
    let r = &rel.record;
    let verb = match r.outcome.as_str() {
        "applied" => "applied",
        "rolled_back" => "failed and was rolled back: live is as it was before",
        "restored" => "failed: live was restored from the pre-release snapshot",
        "halted" => "failed and HALTED: a person must act",
        "interrupted" => {
            "is unfinished: live's server went away during recovery; the next command on this target finishes it"
        }
        "refused" => "refused",
        "aborted" => "stopped before any migration ran: live untouched",
        "nothing_pending" => "has nothing to do: no pending migration",
        other => other,
    };
    let again = if rel.finished_by_recovery { " (finished by crash recovery after an interruption)" } else { "" };
    println!("Release {} of target {} {verb}{again}.", r.id, r.target);
    if let Some(reason) = &r.reason {
        println!("Reason: {reason}");
    }
    if let Some(v) = r.server_version.as_deref().filter(|_| r.outcome != crate::release::Outcome::Applied) {
        println!("Live's server: PostgreSQL {v}");
    }
    if let Some(snap) = &r.pre_snapshot_id {
        println!("Pre-release snapshot: {snap} (pinned)");
    }
    if let Some(db) = &r.failed_database {
        println!("The failed database is kept as `{db}`.");
    }
    if let Some(s) = crate::stranded::StrandedWrites::of_record(&r.stranded_writes) {
        for line in s.lines(&r.id) {
            println!("{line}");
        }
    }
    for s in &rel.salvaged {
        println!(
            "Salvaged at {}: {} inserted, {} updated, {} deleted, {} skipped.",
            s.at, s.inserted, s.updated, s.deleted, s.skipped
        );
    }
    if let Some(f) = &rel.fence {
        println!("Write fence: {}.", f.sentence());
    }
    if let Some(w) = &rel.watch {
        let slower = w["slower"].as_array().map_or(0, |s| s.len());
        match w["status"].as_str().unwrap_or_default() {
            "done" => println!("Performance watch: {slower} queries slower (pgrehearse watch {} for details).", r.id),
            "pending" => println!("Performance watch: running until {}.", w["until"].as_str().unwrap_or("?")),
            other => println!("Performance watch: {other} ({}).", w["note"].as_str().unwrap_or("")),
        }
    }
    for m in r.migrations.as_array().into_iter().flatten() {
        println!(
            "  {:<12} {:<40} {:>8} ms  {}",
            m["status"].as_str().unwrap_or(""),
            format!("{} {}", m["version"].as_str().unwrap_or(""), m["name"].as_str().unwrap_or("")),
            m["duration_ms"].as_u64().unwrap_or(0),
            crate::release::error_text(&m["error"])
        );
    }
    for w in &r.warnings {
        println!("warning: {w}");
    }
}

/// `releases [ID]`: a table, or one release with its journal.
pub fn releases(json: bool, list: &[crate::release::Release], one: bool) {
    if json {
        return if one { print_json(&list[0]) } else { print_json(&list) };
    }
    if one {
        released(false, &list[0]);
        println!("Journal:");
        for e in &list[0].journal {
            println!("  {:>3} {} {} {}", e.seq, e.at, e.step, e.detail.as_deref().unwrap_or(""));
        }
        return;
    }
    if list.is_empty() {
        println!("No releases yet.");
    }
    for r in list {
        let r = &r.record;
        println!("{:<28} {:<16} {} {}", r.id, r.outcome, r.started_at, r.reason.as_deref().unwrap_or(""));
    }
}

/// `salvage`: the SQL itself when it goes to stdout; otherwise what was
/// (or would be) put into live and what was skipped.
pub fn salvaged(json: bool, s: &crate::release::salvage::Salvage) {
    if json {
        return print_json(s);
    }
    if let Some(sql) = &s.sql {
        print!("{sql}");
        return;
    }
    let verb = if s.applied { "put into" } else { "to put into" };
    println!("Stranded writes of release {} (kept in `{}`), {verb} live `{}`:", s.release_id, s.kept_in, s.database);
    if s.tables.is_empty() {
        println!("  no table with stranded rows by key");
    }
    for t in &s.tables {
        println!(
            "  {:<32} {} inserted, {} updated, {} deleted ({} already present)",
            t.table, t.inserted, t.updated, t.deleted, t.already_present
        );
    }
    if let Some(path) = &s.output {
        println!("SQL written to {}.", path.display());
    }
    if !s.skipped.is_empty() {
        println!("Skipped ({}), never overwritten:", s.skipped.len());
        for k in &s.skipped {
            println!("  {} {} {}: {} ({})", k.table, k.op.as_str(), k.key, k.reason.as_str(), k.detail);
        }
    }
    for u in &s.unknown {
        let diff = match (u.rows_only_in_kept, u.rows_only_in_live) {
            (Some(k), Some(l)) => format!("; {k} row(s) only in the kept database, {l} only in live"),
            _ => String::new(),
        };
        println!(
            "Not salvaged by key: {} ({}{diff}); `salvage -o FILE` exports its rows for a person.",
            u.table, u.reason
        );
    }
}

/// `watch ID`.
pub fn watched(json: bool, w: &crate::watch::Watched) {
    if json {
        return print_json(w);
    }
    match w.status {
        crate::state::WatchStatus::Done => {
            println!(
                "Performance watch of release {}: {} queries compared, {} slower by {}x or more.",
                w.release_id,
                w.queries.len(),
                w.slower.len(),
                w.slower_ratio
            );
            for c in &w.slower {
                println!(
                    "  {:>20}  {:.3} ms -> {:.3} ms ({:.1}x)  {}",
                    c.queryid, c.mean_ms_before, c.mean_ms_after, c.ratio, c.query
                );
            }
        }
        _ => println!(
            "Performance watch of release {}: {}{}.",
            w.release_id,
            w.status.as_str(),
            w.note.as_deref().map_or(String::new(), |n| format!(" ({n})"))
        ),
    }
}

/// `email test`.
pub fn email_sent(json: bool, d: &crate::report::email::Delivered) {
    if json {
        let mut v = serde_json::to_value(d).expect("serializable");
        v["ok"] = json!(true);
        return print_json(&v);
    }
    let how = if d.transport == "file" { "written to" } else { "sent through" };
    println!("Test message \"{}\" {how} {} for {}.", d.subject, d.destination, d.to.join(", "));
    if d.attempts > 1 {
        println!("(It took {} attempts.)", d.attempts);
    }
}
