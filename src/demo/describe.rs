//! One-line summaries of what each stage returned, for the progress lines:
//! sizes, the RTO, per-migration duration, locks and rewrites, the verdict,
//! a release's outcome.

use std::collections::BTreeMap;

use super::progress::secs;
use super::sample::Dataset;
use crate::format::human_bytes;
use crate::lint_rule::Severity;
use crate::rehearsal::observer::human_mode;
use crate::state::Outcome;

pub fn dataset(d: &Dataset) -> String {
    format!(
        "shop: {} of data ({} with indexes) in customers, products, orders (text, numeric, jsonb) and order_items: {} rows ({} customers, {} products, {} orders, {} items)",
        human_bytes(d.bytes as u64),
        human_bytes(d.total_bytes as u64),
        thousands(d.rows()),
        thousands(d.customers),
        thousands(d.products),
        thousands(d.orders),
        thousands(d.order_items),
    )
}

pub fn snapshot(s: &crate::snapshot::Outcome) -> String {
    format!(
        "{}: pg_dump of {} tables, {} rows counted in the dump's own MVCC snapshot; {} → {} stored (zstd)",
        s.id,
        s.tables,
        thousands(s.rows),
        human_bytes(s.bytes_raw),
        human_bytes(s.bytes_stored)
    )
}

pub fn drill(r: &crate::drill::Report) -> String {
    let rto = r.restore_duration_ms.map_or("-".into(), secs);
    let how = r.method.unwrap_or("restore").replace('_', " ");
    if r.ok {
        format!(
            "restore drill passed: RTO {rto} ({how} on the shadow cluster), {} tables' row counts match the manifest",
            r.tables_checked
        )
    } else {
        format!("restore drill FAILED: {} problem(s)", r.mismatches.len())
    }
}

pub fn rehearsal(r: &crate::rehearsal::Report) -> String {
    let reversible = match r.reversible {
        Some(true) => "reversible",
        Some(false) => "NOT reversible",
        None => "reversibility not checked",
    };
    format!(
        "{}: {} migration(s) ran in {} on a copy of {} ({} in {}), {reversible}, {} lint warning(s); plan {}",
        r.verdict,
        r.migrations.len(),
        secs(r.apply_ms),
        r.snapshot_id,
        r.method.replace('_', " "),
        secs(r.restore_duration_ms),
        r.lint.iter().filter(|f| f.severity != Severity::Error).count(),
        &r.plan[..12.min(r.plan.len())]
    )
}

/// Per migration: duration, the strongest lock per table with how long it
/// was held, the tables rewritten; then the problems, if any.
pub fn migrations(r: &crate::rehearsal::Report) -> Vec<String> {
    let mut out = Vec::new();
    for m in &r.migrations {
        let mut locks: BTreeMap<&str, (&str, u64)> = BTreeMap::new();
        for l in &m.locks {
            let e = locks.entry(&l.relation).or_insert((&l.mode, 0));
            if crate::rehearsal::observer::strength(&l.mode) > crate::rehearsal::observer::strength(e.0) {
                e.0 = &l.mode;
            }
            e.1 = e.1.max(l.held_ms);
        }
        let locks: Vec<String> =
            locks.iter().map(|(rel, (mode, ms))| format!("{} on {rel} {}", human_mode(mode), secs(*ms))).collect();
        let rewrites: Vec<String> = m
            .rewrites
            .iter()
            .filter(|w| w.kind == "table")
            .map(|w| {
                format!(
                    "rewrote {} ({} → {})",
                    w.relation,
                    human_bytes(w.bytes_before.max(0) as u64),
                    human_bytes(w.bytes_after.max(0) as u64)
                )
            })
            .collect();
        let mut line = format!("{} {:<28} {:>7}", m.version, m.name, secs(m.duration_ms));
        if !m.ok {
            line.push_str("  FAILED");
        }
        let what: Vec<String> = locks.into_iter().chain(rewrites).collect();
        if !what.is_empty() {
            line.push_str("  ");
            line.push_str(&what.join("; "));
        }
        out.push(line);
    }
    out.extend(r.problems.iter().map(|p| format!("problem: {p}")));
    out
}

pub fn release(rel: &crate::release::Release) -> String {
    let r = &rel.record;
    let snap = r.pre_snapshot_id.as_deref().unwrap_or("-");
    match r.outcome {
        Outcome::Applied => format!("release {} applied to live after a pre-release snapshot ({snap})", r.id),
        Outcome::Restored => {
            format!("release {} failed on live and was restored: live is back to its pre-release snapshot {snap}", r.id)
        }
        other => format!("release {} ended `{other}`: {}", r.id, r.reason.as_deref().unwrap_or("no reason recorded")),
    }
}

pub fn release_details(rel: &crate::release::Release) -> Vec<String> {
    let r = &rel.record;
    let mut out: Vec<String> = r
        .migrations
        .as_array()
        .into_iter()
        .flatten()
        .map(|m| {
            format!(
                "{} {:<28} {:>7}  {}",
                m["version"].as_str().unwrap_or(""),
                m["name"].as_str().unwrap_or(""),
                secs(m["duration_ms"].as_u64().unwrap_or(0)),
                m["status"].as_str().unwrap_or("").replace('_', " ")
            )
        })
        .collect();
    if r.outcome != Outcome::Applied
        && let Some(reason) = &r.reason
    {
        out.push(format!("why: {reason}"));
    }
    if let Some(db) = &r.failed_database {
        out.push(format!("the failed database is kept as {db} (never dropped)"));
    }
    out.extend(r.warnings.iter().map(|w| format!("warning: {w}")));
    out
}

/// `1234567` → `1,234,567`.
pub fn thousands(n: i64) -> String {
    let digits = n.unsigned_abs().to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    if n < 0 { format!("-{out}") } else { out }
}

#[cfg(test)]
mod tests {
    #[test]
    fn thousands_groups_digits() {
        assert_eq!(super::thousands(0), "0");
        assert_eq!(super::thousands(999), "999");
        assert_eq!(super::thousands(1000), "1,000");
        assert_eq!(super::thousands(1234567), "1,234,567");
    }
}
