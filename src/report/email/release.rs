//! A release's message: outcome, reason, timings, per-migration status, the
//! recovery taken, the failed database kept and the writes stranded in it,
//! the pre-release snapshot, and the journal's location.

use std::fmt::Write;

use super::Mail;
use super::html::{Bar, Cell, Page, Tone};
use super::render::{footer, push_facts, push_list};
use crate::format::secs;

/// A release's report: outcome, reason, timings, per-migration status, the
/// recovery taken, the failed database kept, the pre-release snapshot.
pub fn release(rel: &crate::release::Release) -> Mail {
    let r = &rel.record;
    let (word, badge, tone, meaning) = match r.outcome.as_str() {
        "applied" => ("applied", "APPLIED", Tone::Good, "The plan was applied to live."),
        "rolled_back" => (
            "rolled back",
            "ROLLED BACK",
            Tone::Warn,
            "The release failed and was rolled back: live is as it was before.",
        ),
        "restored" => {
            ("restored", "RESTORED", Tone::Warn, "The release failed: live was restored from the pre-release snapshot.")
        }
        "halted" => (
            "HALTED, action needed",
            "HALTED",
            Tone::Bad,
            "The release failed and HALTED: live is as the failure left it, and a person must act.",
        ),
        "interrupted" => (
            "INTERRUPTED, recovery pending",
            "INTERRUPTED",
            Tone::Bad,
            "Live's server went away while live had to be recovered: once it is back, the next pgrehearse command on this target finishes the recovery.",
        ),
        "aborted" => ("aborted", "ABORTED", Tone::Plain, "Stopped before any migration ran: live is untouched."),
        "refused" => ("refused", "REFUSED", Tone::Plain, "Preflight refused the release: nothing was done."),
        "nothing_pending" => ("had nothing to do", "NOTHING PENDING", Tone::Plain, "No migration was pending."),
        other => (other, other, Tone::Plain, ""),
    };
    let mut facts = vec![("Database", r.database.clone()), ("Plan", r.plan_hash.clone())];
    if let Some(reason) = &r.reason {
        facts.push(("Reason", reason.clone()));
    }
    facts.push(("Recovery taken", r.recovery.clone().unwrap_or_else(|| "none needed".into())));
    if let Some(db) = &r.failed_database {
        facts.push(("Failed database kept as", db.clone()));
    }
    facts.push(("Pre-release snapshot", r.pre_snapshot_id.clone().unwrap_or_else(|| "none".into())));
    if let Some(f) = &rel.fence {
        facts.push(("Write fence", f.sentence()));
    }
    facts.push(("Timings", timings(&r.timings)));
    facts.push(("Started", r.started_at.clone()));
    if let Some(f) = &r.finished_at {
        facts.push(("Finished", f.clone()));
    }
    facts.push(("Ran on", format!("{} (pid {})", r.host, r.pid)));
    if r.outcome != crate::release::Outcome::Applied
        && let Some(v) = &r.server_version
    {
        facts.push(("Live's server", format!("PostgreSQL {v}")));
    }
    if rel.finished_by_recovery {
        facts.push(("Note", "finished by crash recovery after an interruption".into()));
    }
    let title = format!("Release {} of {}", r.id, r.target);
    let mut text = format!("{title}: {badge}\n\n{meaning}\n\n");
    push_facts(&mut text, &facts);
    let mut p = Page::new(&title, badge, tone);
    p.para(meaning, tone);
    p.facts(&facts);
    if let Some(s) = crate::stranded::StrandedWrites::of_record(&r.stranded_writes) {
        let tone = if s.nothing() { Tone::Good } else { Tone::Bad };
        p.heading("Stranded writes");
        p.para(&s.headline(), tone);
        let mut items = s.table_lines();
        items.extend(s.next_commands(&r.id));
        if !items.is_empty() {
            p.list(&items, Tone::Plain);
        }
        let _ = writeln!(text, "\n{}", s.lines(&r.id).join("\n"));
    }
    let steps: Vec<&serde_json::Value> = r.migrations.as_array().into_iter().flatten().collect();
    if !steps.is_empty() {
        let field = |m: &serde_json::Value, k: &str| m[k].as_str().unwrap_or_default().to_string();
        let ms = |m: &serde_json::Value| m["duration_ms"].as_u64().unwrap_or(0);
        p.heading("Duration");
        let bars: Vec<Bar> = steps
            .iter()
            .map(|m| Bar {
                label: format!("{} {}", field(m, "version"), field(m, "name")),
                duration_ms: ms(m),
                lock: None,
                failed: m["status"] == "failed",
            })
            .collect();
        p.chart(&bars);
        p.heading("Migrations");
        let _ = writeln!(text, "\nMigrations:");
        let mut rows = Vec::new();
        for m in &steps {
            let st = field(m, "status");
            let tone = match st.as_str() {
                "applied" => Tone::Good,
                "failed" => Tone::Bad,
                _ => Tone::Plain,
            };
            let attempts = m["attempts"].as_u64().map_or(String::new(), |a| a.to_string());
            let error = crate::release::error_text(&m["error"]);
            let _ = writeln!(
                text,
                "  {:<12} {} {} — {}{}{}",
                st.replace('_', " "),
                field(m, "version"),
                field(m, "name"),
                secs(ms(m)),
                if attempts.is_empty() || attempts == "1" { String::new() } else { format!(", {attempts} attempts") },
                if error.is_empty() { String::new() } else { format!(": {error}") }
            );
            rows.push(vec![
                Cell::mono(field(m, "version")),
                Cell::new(field(m, "name")),
                Cell::tone(st.replace('_', " "), tone),
                Cell::new(secs(ms(m))),
                Cell::new(attempts),
                Cell::tone(error, Tone::Bad),
            ]);
        }
        p.table(&["version", "name", "status", "duration", "attempts", "error"], &rows);
    }
    if !r.warnings.is_empty() {
        p.heading("Post-check warnings");
        p.list(&r.warnings, Tone::Warn);
        push_list(&mut text, "Post-check warnings", &r.warnings);
    }
    let details = format!("pgrehearse --target {} releases {}", r.target, r.id);
    let _ = writeln!(text, "\nThe journal of every step: {details}");
    p.para("The journal of every step:", Tone::Plain);
    p.code(&details);
    Mail { subject: format!("{}: release {} {word}", r.target, r.id), text, html: p.finish(&footer()) }
}

/// `preflight 0.2 s, snapshot 4.1 s, …` in the order a release runs.
fn timings(t: &serde_json::Value) -> String {
    let names = [
        ("preflight_ms", "preflight"),
        ("snapshot_ms", "pre-release snapshot"),
        ("apply_ms", "apply"),
        ("postcheck_ms", "post-checks"),
        ("recovery_ms", "recovery"),
        ("total_ms", "total"),
    ];
    let parts: Vec<String> = names
        .iter()
        .filter_map(|(k, n)| t.get(*k).and_then(|v| v.as_u64()).map(|ms| format!("{n} {}", secs(ms))))
        .collect();
    if parts.is_empty() { "none recorded".into() } else { parts.join(", ") }
}
