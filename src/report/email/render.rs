//! The messages themselves: subject, plain text and HTML for a rehearsal,
//! a restore drill, an alert and the `email test` message (a release's is
//! in `release.rs`, a performance watch's in `watch.rs`).
//! Subjects name the target, what happened and its verdict, so that an
//! inbox reads as a log ("app: rehearsal … passed", "ALERT app: snapshot
//! failed"). The rehearsal's text part is its Markdown report; its HTML adds
//! the chart of durations and locks.

use std::fmt::Write;

use super::Mail;
use super::html::{Bar, Cell, LockBar, Page, Tone};
use crate::config::{Config, MailTransport};
use crate::format::human_bytes;
use crate::format::secs;
use crate::lint_rule::Severity;
use crate::rehearsal::observer::human_mode;
use crate::rehearsal::reversibility::Reversal;
use crate::rehearsal::runner::{MigrationResult, Status};

/// A rehearsal report: verdict, per-migration table and chart, problems and
/// warnings, and the command that approves the plan.
pub fn rehearsal(r: &crate::rehearsal::Report) -> Mail {
    let verdict = if r.ok { "passed" } else { "found problems" };
    let mut p = Page::new(
        &format!("Rehearsal {} of {}", r.id, r.target),
        if r.ok { "PASS" } else { "PROBLEMS FOUND" },
        if r.ok { Tone::Good } else { Tone::Bad },
    );
    let mut facts = vec![
        ("Plan", r.plan.clone()),
        ("Migrations", format!("{} pending, run {}", r.migrations.len(), r.mode.replace('_', " "))),
        (
            "Snapshot",
            format!(
                "{} (taken {}), {} in {}",
                r.snapshot_id,
                r.snapshot_taken_at,
                r.method.replace('_', " "),
                secs(r.restore_duration_ms)
            ),
        ),
        ("Server", format!("PostgreSQL {}", r.server_version)),
        ("Plan ran in", secs(r.apply_ms)),
        ("Rehearsal took", secs(r.duration_ms)),
        ("lock_timeout", if r.lock_timeout_ms == 0 { "none".into() } else { secs(r.lock_timeout_ms) }),
        ("Ran as role", crate::rehearsal::markdown::ran_as(r).replace('`', "")),
        (
            "Reversible",
            match r.reversible {
                Some(true) => "yes".into(),
                Some(false) => "no (see the migrations)".into(),
                None => "not checked".into(),
            },
        ),
    ];
    if !r.catch_up.is_empty() {
        facts.push(("Replayed first", r.catch_up.join(", ")));
    }
    p.facts(&facts);
    p.list(&r.notes, Tone::Plain);
    if !r.problems.is_empty() {
        p.heading("Problems");
        p.list(&r.problems, Tone::Bad);
    }
    if !r.migrations.is_empty() {
        p.heading("Duration and locks");
        p.chart(&r.migrations.iter().map(bar).collect::<Vec<_>>());
        p.heading("Migrations");
        let rows: Vec<Vec<Cell>> = r.migrations.iter().map(row).collect();
        p.table(&["version", "name", "status", "duration", "strongest lock", "held", "rewrites"], &rows);
    }
    let waits: Vec<Vec<Cell>> = r
        .migrations
        .iter()
        .flat_map(|m| m.blocking.iter().map(move |b| (m, b)))
        .map(|(m, b)| {
            let tone = |ms: u64| if ms >= 1000 { Tone::Bad } else { Tone::Plain };
            vec![
                Cell::mono(&m.version),
                Cell::mono(&b.relation),
                Cell::tone(secs(b.reads_blocked_ms), tone(b.reads_blocked_ms)),
                Cell::tone(secs(b.writes_blocked_ms), tone(b.writes_blocked_ms)),
                Cell::mono(b.statement.as_deref().unwrap_or("")),
            ]
        })
        .collect();
    if !waits.is_empty() {
        p.heading("What the application would wait for (probes, longest single wait)");
        p.table(&["version", "table", "reads wait", "writes wait", "caused by"], &waits);
    }
    let down_broken =
        |m: &&MigrationResult| matches!(m.reversible, Some(Reversal::Failed { .. } | Reversal::Differs { .. }));
    for m in r.migrations.iter().filter(|m| m.error.is_some() || down_broken(m)) {
        p.heading(&format!("{} {}", m.version, m.name));
        if let Some(e) = &m.error {
            let at = e.line.map(|l| format!(" at line {l}")).unwrap_or_default();
            p.para(&format!("Error in {}{at}: {}", e.file, e.full_message()), Tone::Bad);
            if let Some(sql) = &e.sql {
                p.code(sql);
            }
        }
        match &m.reversible {
            Some(Reversal::Failed { reason }) => p.para(&format!("Down failed: {reason}"), Tone::Bad),
            Some(Reversal::Differs { reason, diff }) => {
                p.para(&format!("Down does not revert it: {reason}"), Tone::Bad);
                p.code(diff);
            }
            _ => {}
        }
    }
    if !r.lint.is_empty() {
        p.heading("Lint");
        let rows: Vec<Vec<Cell>> = r
            .lint
            .iter()
            .map(|f| {
                let tone = if f.severity == Severity::Error { Tone::Bad } else { Tone::Warn };
                vec![
                    Cell::tone(f.severity.as_str(), tone),
                    Cell::mono(f.rule.as_str()),
                    Cell::new(&f.migration),
                    Cell::new(&f.message),
                ]
            })
            .collect();
        p.table(&["severity", "rule", "migration", "finding"], &rows);
    }
    if !r.queries.is_empty() {
        p.heading("Query plans before and after the plan");
        let rows: Vec<Vec<Cell>> = r
            .queries
            .iter()
            .map(|q| {
                let brief =
                    |s: &Option<crate::rehearsal::queries::Side>| s.as_ref().map(|s| s.brief()).unwrap_or_default();
                let tone = match &q.finding {
                    Some(f) if f.accepted => Tone::Warn,
                    Some(_) => Tone::Bad,
                    None => Tone::Plain,
                };
                vec![
                    Cell::mono(&q.id),
                    Cell::mono(&brief(&q.before)),
                    Cell::mono(&brief(&q.after)),
                    Cell::tone(q.outcome(), tone),
                ]
            })
            .collect();
        p.table(&["query", "before", "after", "verdict"], &rows);
    }
    if !r.seeds.is_empty() {
        p.heading("Seeds");
        let seeds: Vec<String> = r
            .seeds
            .iter()
            .map(|s| match (&s.error, s.idempotent) {
                (Some(e), _) => format!("{}: failed: {e}", s.file),
                (None, Some(true)) => format!("{}: idempotent", s.file),
                (None, _) => format!("{}: NOT idempotent (second run changed {})", s.file, s.changed.join(", ")),
            })
            .collect();
        p.list(&seeds, Tone::Plain);
    }
    // Lint findings are shown above; the other warnings here.
    let warnings: Vec<String> = r.warnings.iter().filter(|w| !w.starts_with('[')).cloned().collect();
    if !warnings.is_empty() {
        p.heading("Warnings");
        p.list(&warnings, Tone::Warn);
    }
    if r.ok {
        p.heading("Approve");
        p.code(&r.approve);
    } else {
        p.para("Fix the problems above and rehearse again; a plan with problems cannot be approved.", Tone::Bad);
    }
    Mail {
        subject: format!("{}: rehearsal {} {verdict}", r.target, r.id),
        text: crate::rehearsal::markdown::markdown(r),
        html: p.finish(&footer()),
    }
}

fn status(s: Status) -> (&'static str, Tone) {
    match s {
        Status::Applied => ("applied", Tone::Good),
        Status::Failed => ("FAILED", Tone::Bad),
        Status::RolledBack => ("rolled back with the plan", Tone::Plain),
        Status::NotRun => ("not run", Tone::Warn),
    }
}

fn bar(m: &MigrationResult) -> Bar {
    let longest = m.locks.iter().max_by_key(|l| l.held_ms);
    Bar {
        label: format!("{} {}", m.version, m.name),
        duration_ms: m.duration_ms,
        lock: longest.map(|l| LockBar {
            held_ms: l.held_ms,
            label: format!("{} on {}", human_mode(&l.mode), l.relation),
            exclusive: l.mode == "AccessExclusiveLock",
        }),
        failed: m.status == Status::Failed,
    }
}

fn row(m: &MigrationResult) -> Vec<Cell> {
    let (st, tone) = status(m.status);
    let strongest = m.strongest_locks().first().copied();
    let rewrites: Vec<String> = m
        .rewrites
        .iter()
        .map(|rw| format!("{} {} ({})", rw.kind, rw.relation, human_bytes(rw.bytes_before.max(0) as u64)))
        .collect();
    vec![
        Cell::mono(&m.version),
        Cell::new(&m.name),
        Cell::tone(st, tone),
        Cell::new(secs(m.duration_ms)),
        Cell::new(strongest.map_or_else(
            || match m.locks_sampled_every_ms {
                Some(ms) => format!("none observed (sampled every {ms} ms)"),
                None => "none".into(),
            },
            |l| format!("{} on {}", human_mode(&l.mode), l.relation),
        )),
        Cell::new(strongest.map_or(String::new(), |l| secs(l.held_ms))),
        Cell::new(if rewrites.is_empty() { "none".into() } else { rewrites.join(", ") }),
    ]
}

/// A restore drill's report: RTO, tables checked, mismatches.
pub fn drill(r: &crate::drill::Report) -> Mail {
    let verdict = if r.ok { "passed" } else { "FAILED" };
    let method =
        r.method.map_or("nothing restored (the stored object failed its checksum)".into(), |m| m.replace('_', " "));
    let rto = r.restore_duration_ms.map_or("not measured".into(), secs);
    let mismatches = if r.mismatches.is_empty() { "none".into() } else { r.mismatches.len().to_string() };
    let mut facts = vec![
        ("Snapshot", r.snapshot_id.clone()),
        ("Restored by", method),
        ("Restore time (RTO)", rto),
        ("Tables checked", r.tables_checked.to_string()),
        ("Mismatches", mismatches),
    ];
    if let Some(at) = &r.verified_at {
        facts.push(("Verified at", at.clone()));
    }
    if let (true, Some(db)) = (r.kept, &r.database) {
        facts.push(("Scratch database kept", db.clone()));
    }
    let advice = (!r.ok).then(|| {
        format!(
            "This snapshot cannot be trusted for recovery. Take a new one (pgrehearse --target {t} snapshot) and \
             verify it (pgrehearse --target {t} verify latest).",
            t = r.target
        )
    });
    let title = format!("Restore drill of {} ({})", r.snapshot_id, r.target);
    let mut text = format!("{title}: {}\n\n", if r.ok { "PASSED" } else { "FAILED" });
    push_facts(&mut text, &facts);
    let mut p = Page::new(&title, if r.ok { "PASSED" } else { "FAILED" }, if r.ok { Tone::Good } else { Tone::Bad });
    p.facts(&facts);
    if !r.mismatches.is_empty() {
        p.heading("Mismatches");
        p.list(&r.mismatches, Tone::Bad);
        push_list(&mut text, "Mismatches", &r.mismatches);
    }
    if let Some(a) = &advice {
        p.para(a, Tone::Bad);
        let _ = writeln!(text, "\n{a}");
    }
    Mail {
        subject: format!("{}: restore drill of {} {verdict}", r.target, r.snapshot_id),
        text,
        html: p.finish(&footer()),
    }
}

/// An alert: `job` of `target` failed with `error`.
pub fn alert(target: &str, job: &str, error: &str) -> Mail {
    let host = crate::host::hostname();
    let when = chrono::Utc::now().format("%Y-%m-%d %H:%M:%S UTC");
    let next = match job {
        "snapshot" => format!(
            "Check that live and the store are reachable, then take one by hand: pgrehearse --target {target} snapshot"
        ),
        "verify" => format!("Run the drill by hand to see every detail: pgrehearse --target {target} verify latest"),
        "rehearse" => format!("Run the rehearsal by hand to see every detail: pgrehearse --target {target} rehearse"),
        "release" | "recovery" => format!(
            "Check live now, and read the release's journal: pgrehearse --target {target} releases (then releases ID)"
        ),
        _ => format!("See the daemon's log on {host}."),
    };
    let mut title = format!("{job} of {target} failed");
    if let Some(first) = title.get_mut(..1) {
        first.make_ascii_uppercase();
    }
    let lead = format!("The {job} job of target {target} failed on {host} at {when}.");
    let text = format!("{lead}\n\nError: {error}\n\nNext: {next}\n");
    let mut p = Page::new(&title, "ALERT", Tone::Bad);
    p.para(&lead, Tone::Plain);
    p.code(error);
    p.para(&format!("Next: {next}"), Tone::Plain);
    Mail { subject: format!("ALERT {target}: {job} failed"), text, html: p.finish(&footer()) }
}

/// The `pgrehearse email test` message: where reports go and a sample chart,
/// to check that the mail client shows it.
pub fn test_message(config: &Config) -> Mail {
    let host = crate::host::hostname();
    let Some(e) = &config.email else {
        return Mail { subject: String::new(), text: String::new(), html: String::new() };
    };
    let via = match e.transport {
        MailTransport::Smtp => format!("SMTP, {}", e.smtp_url.as_deref().map(super::server_of).unwrap_or_default()),
        MailTransport::File => format!(".eml files in {}", e.dir.display()),
    };
    let targets: Vec<&str> = config.targets.iter().map(|t| t.name.as_str()).collect();
    let facts = vec![
        ("Sent from", host.clone()),
        ("Transport", via),
        ("From", e.from.clone()),
        ("To", e.to.join(", ")),
        ("Targets", targets.join(", ")),
    ];
    let lead = "This is a test message from pgrehearse (pgrehearse email test). If you read it, \
                rehearsal, drill and release reports and failure alerts reach you.";
    let mut text = format!("{lead}\n\n");
    push_facts(&mut text, &facts);
    let mut p = Page::new("pgrehearse test message", "TEST", Tone::Good);
    p.para(lead, Tone::Plain);
    p.facts(&facts);
    p.heading("Sample chart");
    p.para("Rehearsal reports draw each migration's duration and longest lock like this:", Tone::Plain);
    p.chart(&[
        Bar { label: "1 example_create".into(), duration_ms: 800, lock: None, failed: false },
        Bar {
            label: "2 example_alter".into(),
            duration_ms: 2400,
            lock: Some(LockBar { held_ms: 1900, label: "ACCESS EXCLUSIVE on example".into(), exclusive: true }),
            failed: false,
        },
    ]);
    Mail { subject: format!("test message from {host}"), text, html: p.finish(&footer()) }
}

pub(super) fn footer() -> String {
    format!("Sent by pgrehearse {} on {}.", env!("CARGO_PKG_VERSION"), crate::host::hostname())
}

pub(super) fn push_facts(text: &mut String, facts: &[(&str, String)]) {
    for (k, v) in facts {
        let _ = writeln!(text, "- {k}: {v}");
    }
}

pub(super) fn push_list(text: &mut String, title: &str, items: &[String]) {
    let _ = writeln!(text, "\n{title}:");
    for i in items {
        let _ = writeln!(text, "  - {i}");
    }
}

#[cfg(test)]
#[path = "render_tests.rs"]
mod tests;
