//! The rehearsal report as Markdown: verdict first, then a table per
//! migration (duration, locks with mode and held time, rewrites, what the
//! application would wait for, WAL), the
//! lint findings with their measured effects, reversibility, seeds, the
//! queries' plans before and after, and the
//! exact command that approves the plan. Text from outside — statements,
//! file and relation names, PostgreSQL's messages — is escaped ([`code`],
//! [`cell`], [`text`]) so that a backtick or a pipe in it cannot break a
//! code span or a table.

use std::fmt::Write;

use crate::format::human_bytes;
use crate::format::secs;
use crate::rehearsal::Report;
use crate::rehearsal::observer::human_mode;
use crate::rehearsal::reversibility::Reversal;
use crate::rehearsal::runner::Status;

/// The role the migrations ran as, and whether it is live's.
pub fn ran_as(r: &Report) -> String {
    if r.role == r.live_role {
        format!("`{}` (live's migration role)", r.role)
    } else {
        format!("`{}`, the shadow's role: live's `{}` could not be mirrored (see the warnings)", r.role, r.live_role)
    }
}

pub fn markdown(r: &Report) -> String {
    let mut s = String::new();
    let verdict = if r.ok { "PASS" } else { "PROBLEMS FOUND" };
    let _ = writeln!(s, "# Rehearsal {} of {}: {verdict}\n", r.id, code(&r.target));
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
    let _ = writeln!(s, "- Server: PostgreSQL {}", text(&r.server_version));
    let _ = writeln!(s, "- Plan ran in {}; rehearsal took {}", secs(r.apply_ms), secs(r.duration_ms));
    let _ =
        writeln!(s, "- lock_timeout: {}", if r.lock_timeout_ms == 0 { "none".into() } else { secs(r.lock_timeout_ms) });
    let _ = writeln!(s, "- Ran as role: {}", ran_as(r));
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
        let _ = writeln!(s, "\n## {} — {status}, {} ({tx})\n", text(&label), secs(m.duration_ms));
        let _ = writeln!(s, "File: {}\n", code(&m.file));
        if let Some(e) = &m.error {
            error(&mut s, e);
        }
        let locks = m.strongest_locks();
        if locks.is_empty() {
            let _ = match m.locks_sampled_every_ms {
                Some(ms) => writeln!(s, "Locks on existing tables: none observed (sampled every {ms} ms)"),
                None => writeln!(s, "Locks on existing tables: none"),
            };
        } else {
            let _ = writeln!(s, "| table | strongest lock | held | how measured |\n|---|---|---|---|");
            for l in locks {
                let how = match (&l.taken_by, l.sampled) {
                    (Some(v), _) => format!("taken by migration {v}, held until the plan commits"),
                    (None, true) => match m.locks_sampled_every_ms {
                        Some(ms) => format!("sampled every {ms} ms"),
                        None => "sampled".into(),
                    },
                    (None, false) => "exact".into(),
                };
                let _ =
                    writeln!(s, "| {} | {} | {} | {how} |", cell(&l.relation), human_mode(&l.mode), secs(l.held_ms));
            }
        }
        if !m.rewrites.is_empty() {
            let list: Vec<String> = m
                .rewrites
                .iter()
                .map(|rw| {
                    format!("{} {} ({})", rw.kind, code(&rw.relation), human_bytes(rw.bytes_before.max(0) as u64))
                })
                .collect();
            let _ = writeln!(s, "\nRewrites: {}", list.join(", "));
        }
        if !m.blocking.is_empty() {
            let _ = writeln!(
                s,
                "\nWhat the application would wait for (probes; longest single wait):\n\n| table | reads wait | writes wait | caused by |\n|---|---|---|---|"
            );
            for b in &m.blocking {
                let by = b.statement.as_deref().map(cell).unwrap_or_default();
                let (r, w) = (secs(b.reads_blocked_ms), secs(b.writes_blocked_ms));
                let _ = writeln!(s, "| {} | {r} | {w} | {by} |", cell(&b.relation));
            }
        }
        if let Some(w) = m.wal_bytes {
            let _ = writeln!(s, "\nWAL: {}", human_bytes(w));
        }
        if !m.statements.is_empty() && m.statements.len() > 1 {
            let _ = writeln!(s, "\n| # | line | statement | time |\n|---|---|---|---|");
            for st in &m.statements {
                let _ =
                    writeln!(s, "| {} | {} | {} | {} |", st.index + 1, st.line, cell(&st.sql), secs(st.duration_ms));
            }
        }
        match &m.reversible {
            Some(Reversal::Reversible) => {
                let _ = writeln!(s, "\nReversible: yes (down restores the schema; up applies again)");
            }
            Some(Reversal::NotReversible { reason }) => {
                let _ = writeln!(s, "\nReversible: no — {reason}");
            }
            Some(Reversal::ColumnOrderOnly { diff }) => {
                let _ = writeln!(
                    s,
                    "\nReversible: yes, column order only (`column_order_only`) — its down brings every object back but re-adds columns at the end of their tables"
                );
                let _ = writeln!(s, "\n{}", block("diff", diff));
            }
            Some(Reversal::Failed { reason }) => {
                let _ = writeln!(s, "\n**Reversible: FAILED** — {reason}");
            }
            Some(Reversal::Differs { reason, diff }) => {
                let _ = writeln!(s, "\n**Reversible: NO, the schema differs** — {reason}");
                let _ = writeln!(s, "\n{}", block("diff", diff));
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
    if !r.queries.is_empty() {
        let ms = r.queries_ms.map(|ms| format!(", in {}", secs(ms))).unwrap_or_default();
        let _ = writeln!(
            s,
            "\n## Query plans\n\n{} queries compared before and after the plan on the copy{ms}.\n\n| query | before | after | verdict |\n|---|---|---|---|",
            r.queries.len()
        );
        let brief = |side: &Option<crate::rehearsal::queries::Side>| {
            side.as_ref().map(|x| cell(&x.brief())).unwrap_or_default()
        };
        for q in &r.queries {
            let _ = writeln!(
                s,
                "| {} | {} | {} | {} |",
                cell(&q.id),
                brief(&q.before),
                brief(&q.after),
                text(&q.outcome())
            );
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
            let _ = writeln!(s, "- {}: {verdict}", code(&sd.file));
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
        let _ = writeln!(s, "\n## Approve\n\n{}", block("", &r.approve));
    } else {
        let _ = writeln!(s, "\nFix the problems above and rehearse again; a plan with problems cannot be approved.");
    }
    s
}

/// A failed migration's error: where, PostgreSQL's message, DETAIL and
/// HINT, and the statement.
fn error(s: &mut String, e: &crate::rehearsal::runner::Failure) {
    let at = e.line.map(|l| format!(" at line {l}")).unwrap_or_default();
    let state = e.sqlstate.as_ref().map(|c| format!(" (SQLSTATE {c})")).unwrap_or_default();
    let _ = writeln!(s, "**Error{at}:** {}{state}\n", text(&e.message));
    if let Some(d) = &e.detail {
        let _ = writeln!(s, "Detail: {}\n", text(d));
    }
    if let Some(h) = &e.hint {
        let _ = writeln!(s, "Hint: {}\n", text(h));
    }
    if let Some(sql) = &e.sql {
        let pos = e.position.map(|p| format!(" (the server points at character {p})")).unwrap_or_default();
        let _ = writeln!(s, "Statement{pos}: {}\n", code(sql));
    }
}

/// `s` as a CommonMark code span: fenced by more backticks than the longest
/// run in it, padded when it starts or ends with a backtick, on one line.
pub fn code(s: &str) -> String {
    let one = s.replace(['\r', '\n'], " ");
    let mut longest = 0;
    let mut run = 0;
    for c in one.chars() {
        run = if c == '`' { run + 1 } else { 0 };
        longest = longest.max(run);
    }
    let fence = "`".repeat(longest + 1);
    let pad =
        if one.starts_with('`') || one.ends_with('`') || one.starts_with(' ') && one.ends_with(' ') { " " } else { "" };
    format!("{fence}{pad}{one}{pad}{fence}")
}

/// `body` as a fenced code block: fenced by more backticks than the longest
/// run at the start of any of its lines (at least three), so a diff of a
/// function holding a fence cannot end the block early.
pub fn block(lang: &str, body: &str) -> String {
    let longest = body.lines().map(|l| l.trim_start().chars().take_while(|&c| c == '`').count()).max().unwrap_or(0);
    let fence = "`".repeat((longest + 1).max(3));
    format!("{fence}{lang}\n{body}\n{fence}")
}

/// `s` as a code span in a table cell: a pipe ends a cell even inside a
/// code span (GFM), so it is escaped there too.
pub fn cell(s: &str) -> String {
    code(s).replace('|', "\\|")
}

/// `s` as plain text: characters that would start Markdown markup are
/// escaped, and lines joined, so a message cannot change the layout. An
/// underscore inside a word (`sites_homepage_key`) starts nothing and stays.
pub fn text(s: &str) -> String {
    let chars: Vec<char> = s.replace(['\r', '\n'], " ").chars().collect();
    let mut out = String::with_capacity(chars.len());
    for (i, &c) in chars.iter().enumerate() {
        let intraword = |c: char| {
            c == '_' && i > 0 && chars[i - 1].is_alphanumeric() && chars.get(i + 1).is_some_and(|n| n.is_alphanumeric())
        };
        if matches!(c, '\\' | '`' | '*' | '_' | '[' | ']' | '<' | '>' | '|' | '#') && !intraword(c) {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

#[cfg(test)]
#[path = "markdown_tests.rs"]
mod tests;
