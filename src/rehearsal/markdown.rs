//! The rehearsal report as Markdown: verdict first, then a table per
//! migration (duration, locks with mode and held time, rewrites, WAL), the
//! lint findings with their measured effects, reversibility, seeds, and the
//! exact command that approves the plan.

use std::fmt::Write;

use crate::format::human_bytes;
use crate::format::secs;
use crate::rehearsal::Report;
use crate::rehearsal::observer::human_mode;
use crate::rehearsal::reversibility::Reversal;
use crate::rehearsal::runner::Status;

pub fn markdown(r: &Report) -> String {
    let mut s = String::new();
    let verdict = if r.ok { "PASS" } else { "PROBLEMS FOUND" };
    let _ = writeln!(s, "# Rehearsal {} of `{}`: {verdict}\n", r.id, r.target);
    let _ =
        writeln!(s, "- Plan: `{}` ({} pending migrations, {})", r.plan, r.migrations.len(), r.mode.replace('_', " "));
    let _ = writeln!(
        s,
        "- Snapshot: {} (taken {}), {} in {}",
        r.snapshot_id,
        r.snapshot_taken_at,
        r.method.replace('_', " "),
        secs(r.restore_duration_ms)
    );
    let _ = writeln!(s, "- Plan ran in {}; rehearsal took {}", secs(r.apply_ms), secs(r.duration_ms));
    let _ =
        writeln!(s, "- lock_timeout: {}", if r.lock_timeout_ms == 0 { "none".into() } else { secs(r.lock_timeout_ms) });
    if !r.catch_up.is_empty() {
        let _ = writeln!(s, "- Replayed first (applied on live after the snapshot): {}", r.catch_up.join(", "));
    }
    for n in &r.notes {
        let _ = writeln!(s, "- {n}");
    }
    if !r.problems.is_empty() {
        let _ = writeln!(s, "\n## Problems\n");
        for p in &r.problems {
            let _ = writeln!(s, "- {p}");
        }
    }
    for m in &r.migrations {
        let status = match m.status {
            Status::Applied => "applied",
            Status::Failed => "FAILED",
            Status::RolledBack => "rolled back with the plan",
            Status::NotRun => "not run",
        };
        let tx = if m.transactional { "in a transaction" } else { "outside a transaction" };
        let label = if m.version == m.name { m.name.clone() } else { format!("{} {}", m.version, m.name) };
        let _ = writeln!(s, "\n## {label} — {status}, {} ({tx})\n", secs(m.duration_ms));
        let _ = writeln!(s, "File: `{}`\n", m.file);
        if let Some(e) = &m.error {
            let at = e.line.map(|l| format!(" at line {l}")).unwrap_or_default();
            let _ = writeln!(s, "**Error{at}:** {}\n", e.message);
            if let Some(sql) = &e.sql {
                let _ = writeln!(s, "Statement: `{sql}`\n");
            }
        }
        let locks = m.strongest_locks();
        if locks.is_empty() {
            let _ = writeln!(s, "Locks on existing tables: none");
        } else {
            let _ = writeln!(s, "| table | strongest lock | held | how measured |\n|---|---|---|---|");
            for l in locks {
                let how = match (&l.taken_by, l.sampled) {
                    (Some(v), _) => format!("taken by migration {v}, held until the plan commits"),
                    (None, true) => "sampled every 20 ms".into(),
                    (None, false) => "exact".into(),
                };
                let _ = writeln!(s, "| {} | {} | {} | {how} |", l.relation, human_mode(&l.mode), secs(l.held_ms));
            }
        }
        if !m.rewrites.is_empty() {
            let list: Vec<String> = m
                .rewrites
                .iter()
                .map(|rw| format!("{} `{}` ({})", rw.kind, rw.relation, human_bytes(rw.bytes_before.max(0) as u64)))
                .collect();
            let _ = writeln!(s, "\nRewrites: {}", list.join(", "));
        }
        if let Some(w) = m.wal_bytes {
            let _ = writeln!(s, "\nWAL: {}", human_bytes(w));
        }
        if !m.statements.is_empty() && m.statements.len() > 1 {
            let _ = writeln!(s, "\n| # | line | statement | time |\n|---|---|---|---|");
            for st in &m.statements {
                let _ = writeln!(
                    s,
                    "| {} | {} | `{}` | {} |",
                    st.index + 1,
                    st.line,
                    st.sql.replace('|', "\\|"),
                    secs(st.duration_ms)
                );
            }
        }
        match &m.reversible {
            Some(Reversal::Reversible) => {
                let _ = writeln!(s, "\nReversible: yes (down restores the schema; up applies again)");
            }
            Some(Reversal::NotReversible { reason }) => {
                let _ = writeln!(s, "\nReversible: no — {reason}");
            }
            Some(Reversal::Failed { reason, diff }) => {
                let _ = writeln!(s, "\n**Reversible: FAILED** — {reason}");
                if let Some(d) = diff {
                    let _ = writeln!(s, "\n```diff\n{d}\n```");
                }
            }
            Some(Reversal::NotChecked { reason }) => {
                let _ = writeln!(s, "\nReversible: not checked — {reason}");
            }
            None => {}
        }
    }
    if !r.lint.is_empty() {
        let _ = writeln!(s, "\n## Lint\n");
        for f in &r.lint {
            let _ = writeln!(s, "- **{}** `{}` (migration {}): {}", f.severity, f.rule, f.migration, f.message);
        }
    }
    if r.reversible.is_some() {
        let _ = writeln!(s, "\nSchema comparisons ignored {}.", r.reversibility_ignored);
    }
    if !r.seeds.is_empty() {
        let _ = writeln!(s, "\n## Seeds\n");
        for sd in &r.seeds {
            let verdict = match (&sd.error, sd.idempotent) {
                (Some(e), _) => format!("failed: {e}"),
                (None, Some(true)) => "idempotent (second run changed nothing)".into(),
                (None, _) => format!("NOT idempotent: the second run changed {}", sd.changed.join(", ")),
            };
            let _ = writeln!(s, "- `{}`: {verdict}", sd.file);
        }
    }
    // Lint findings are listed above; the other warnings here.
    let other: Vec<&String> = r.warnings.iter().filter(|w| !w.starts_with('[')).collect();
    if !other.is_empty() {
        let _ = writeln!(s, "\n## Warnings\n");
        for w in other {
            let _ = writeln!(s, "- {w}");
        }
    }
    if r.ok {
        let _ = writeln!(s, "\n## Approve\n\n```\n{}\n```", r.approve);
    } else {
        let _ = writeln!(s, "\nFix the problems above and rehearse again; a plan with problems cannot be approved.");
    }
    s
}
