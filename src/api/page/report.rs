//! A rehearsal report as the status page shows it: the verdict and its
//! problems, a table per migration (status, duration, strongest lock and
//! how long it was held, rewrites, how long the application would wait) and a chart of duration and lock time
//! per migration drawn with inline-styled divs (no script, no image), and
//! the queries whose plans got worse.
//!
//! It reads the report as stored (JSON) through lenient views: a report
//! written by an older or newer pgrehearse still renders, missing fields
//! showing as blanks.

use std::fmt::Write;

use serde::Deserialize;

use super::esc;
use crate::format::human_bytes;
use crate::format::secs;
use crate::rehearsal::observer::{human_mode, strength};

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct ReportView {
    ok: bool,
    problems: Vec<String>,
    warnings: Vec<String>,
    snapshot_id: String,
    method: String,
    restore_duration_ms: u64,
    apply_ms: u64,
    mode: String,
    migrations: Vec<MigrationView>,
    reversible: Option<bool>,
    lint: Vec<LintView>,
    queries: Vec<QueryView>,
    approve: String,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct QueryView {
    id: String,
    finding: Option<QueryFindingView>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct QueryFindingView {
    message: String,
    accepted: bool,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct MigrationView {
    version: String,
    name: String,
    status: String,
    duration_ms: u64,
    locks: Vec<LockView>,
    rewrites: Vec<RewriteView>,
    blocking: Vec<BlockingView>,
    error: Option<FailureView>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct BlockingView {
    relation: String,
    reads_blocked_ms: u64,
    writes_blocked_ms: u64,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct LockView {
    relation: String,
    mode: String,
    held_ms: u64,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct RewriteView {
    relation: String,
    kind: String,
    bytes_before: i64,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct FailureView {
    message: String,
    detail: Option<String>,
    hint: Option<String>,
}

impl FailureView {
    /// The message with PostgreSQL's DETAIL and HINT.
    fn text(&self) -> String {
        let mut out = self.message.clone();
        if let Some(d) = &self.detail {
            out.push_str(&format!(" DETAIL: {d}"));
        }
        if let Some(h) = &self.hint {
            out.push_str(&format!(" HINT: {h}"));
        }
        out
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct LintView {
    severity: String,
    migration: String,
    message: String,
}

impl MigrationView {
    /// The strongest lock taken on an existing relation (the longest held
    /// among equals): what other sessions would wait for on live.
    fn strongest(&self) -> Option<&LockView> {
        self.locks.iter().max_by_key(|l| (strength(&l.mode), l.held_ms))
    }

    fn label(&self) -> String {
        if self.version == self.name { self.name.clone() } else { format!("{} {}", self.version, self.name) }
    }
}

/// Appends the report's HTML; a report that cannot be read says so.
pub fn render(h: &mut String, json: &serde_json::Value) {
    let r: ReportView = match serde_json::from_value(json.clone()) {
        Ok(r) => r,
        Err(e) => {
            let _ = write!(h, "<p class=\"bad\">The stored report cannot be read: {}</p>", esc(&e.to_string()));
            return;
        }
    };
    let verdict = if r.ok { "<span class=\"ok\">PASS</span>" } else { "<span class=\"bad\">PROBLEMS FOUND</span>" };
    let _ = write!(
        h,
        "<p class=\"verdict\">Verdict: <strong>{verdict}</strong> · plan ran in {} ({}) · on snapshot <code>{}</code>, \
         {} in {} · reversible: {}</p>",
        esc(&secs(r.apply_ms)),
        esc(&r.mode.replace('_', " ")),
        esc(&r.snapshot_id),
        esc(&r.method.replace('_', " ")),
        esc(&secs(r.restore_duration_ms)),
        match r.reversible {
            Some(true) => "yes",
            Some(false) => "no",
            None => "not checked",
        },
    );
    for (class, list) in [("bad", &r.problems), ("warn", &r.warnings)] {
        if !list.is_empty() {
            let _ = write!(h, "<ul class=\"{class}\">");
            for p in list {
                let _ = write!(h, "<li>{}</li>", esc(p));
            }
            h.push_str("</ul>");
        }
    }
    table(h, &r.migrations);
    chart(h, &r.migrations);
    if !r.lint.is_empty() {
        h.push_str("<h3>Lint</h3><ul class=\"lint\">");
        for f in &r.lint {
            let class = if f.severity == "error" { "bad" } else { "warn" };
            let _ = write!(
                h,
                "<li><span class=\"{class}\">{}</span> {}: {}</li>",
                esc(&f.severity),
                esc(&f.migration),
                esc(&f.message)
            );
        }
        h.push_str("</ul>");
    }
    if !r.queries.is_empty() {
        let worse: Vec<(&QueryView, &QueryFindingView)> =
            r.queries.iter().filter_map(|q| q.finding.as_ref().map(|f| (q, f))).collect();
        let _ = write!(
            h,
            "<h3>Query plans</h3><p class=\"muted\">{} queries compared before and after the plan; {} got worse.</p>",
            r.queries.len(),
            worse.len()
        );
        if !worse.is_empty() {
            h.push_str("<ul class=\"lint\">");
            for (q, f) in worse {
                let (class, label) = if f.accepted { ("warn", "accepted") } else { ("bad", "finding") };
                let _ = write!(
                    h,
                    "<li><span class=\"{class}\">{label}</span> <code>{}</code>: {}</li>",
                    esc(&q.id),
                    esc(&f.message)
                );
            }
            h.push_str("</ul>");
        }
    }
    if !r.approve.is_empty() {
        let _ = write!(h, "<p class=\"muted\">From a shell: <code>{}</code></p>", esc(&r.approve));
    }
}

fn table(h: &mut String, migrations: &[MigrationView]) {
    h.push_str(
        "<table class=\"migrations\"><tr><th>version</th><th>name</th><th>status</th><th>duration</th>\
         <th>strongest lock</th><th>held</th><th>rewrites</th><th>application would wait</th></tr>",
    );
    for m in migrations {
        let status = match m.status.as_str() {
            "applied" => "<span class=\"ok\">applied</span>".to_string(),
            "rolled_back" => "<span class=\"muted\">rolled back with the plan</span>".to_string(),
            "not_run" => "<span class=\"muted\">not run</span>".to_string(),
            other => format!("<span class=\"bad\">{}</span>", esc(other)),
        };
        let error =
            m.error.as_ref().map(|e| format!("<br><span class=\"bad\">{}</span>", esc(&e.text()))).unwrap_or_default();
        let (lock, held) = match m.strongest() {
            Some(l) => {
                (format!("{} on <code>{}</code>", esc(&human_mode(&l.mode)), esc(&l.relation)), esc(&secs(l.held_ms)))
            }
            None => ("<span class=\"muted\">none on existing tables</span>".to_string(), String::new()),
        };
        let rewrites = if m.rewrites.is_empty() {
            "<span class=\"muted\">none</span>".to_string()
        } else {
            m.rewrites
                .iter()
                .map(|rw| {
                    format!(
                        "{} <code>{}</code> ({})",
                        esc(&rw.kind),
                        esc(&rw.relation),
                        esc(&human_bytes(rw.bytes_before.max(0) as u64))
                    )
                })
                .collect::<Vec<_>>()
                .join(", ")
        };
        let waited: Vec<String> = m
            .blocking
            .iter()
            .filter(|b| b.reads_blocked_ms > 0 || b.writes_blocked_ms > 0)
            .map(|b| {
                format!(
                    "<code>{}</code>: reads {}, writes {}",
                    esc(&b.relation),
                    esc(&secs(b.reads_blocked_ms)),
                    esc(&secs(b.writes_blocked_ms))
                )
            })
            .collect();
        let waits = match (m.blocking.is_empty(), waited.is_empty()) {
            (true, _) => "<span class=\"muted\">not probed</span>".to_string(),
            (false, true) => "<span class=\"muted\">none</span>".to_string(),
            (false, false) => waited.join("<br>"),
        };
        let _ = write!(
            h,
            "<tr><td>{}</td><td>{}</td><td>{status}{error}</td><td class=\"num\">{}</td><td>{lock}</td>\
             <td class=\"num\">{held}</td><td>{rewrites}</td><td>{waits}</td></tr>",
            esc(&m.version),
            esc(&m.name),
            esc(&secs(m.duration_ms)),
        );
    }
    h.push_str("</table>");
}

/// Two bars per migration on one scale: its duration, and how long its
/// strongest lock was held (red when it blocks reads: ACCESS EXCLUSIVE).
fn chart(h: &mut String, migrations: &[MigrationView]) {
    let max =
        migrations.iter().map(|m| m.duration_ms.max(m.strongest().map_or(0, |l| l.held_ms))).max().unwrap_or(0).max(1);
    let pct = |ms: u64| if ms == 0 { 0.0 } else { (ms as f64 * 100.0 / max as f64).max(0.5) };
    h.push_str(
        "<div class=\"chart\" style=\"margin:10px 0;max-width:760px\">\
         <div style=\"font-size:12px;color:#6b7280;margin-bottom:4px\">\
         <span style=\"display:inline-block;width:10px;height:10px;background:#3b6fc4\"></span> duration \
         <span style=\"display:inline-block;width:10px;height:10px;background:#d97706;margin-left:10px\"></span> lock held \
         <span style=\"display:inline-block;width:10px;height:10px;background:#c0392b;margin-left:10px\"></span> ACCESS EXCLUSIVE held</div>",
    );
    for m in migrations {
        let lock = m.strongest();
        let held = lock.map_or(0, |l| l.held_ms);
        let color = if lock.is_some_and(|l| l.mode == "AccessExclusiveLock") { "#c0392b" } else { "#d97706" };
        let lock_text =
            lock.map(|l| format!("{} {}", human_mode(&l.mode), secs(l.held_ms))).unwrap_or_else(|| "no lock".into());
        let _ = write!(
            h,
            "<div class=\"chart-row\" style=\"display:flex;align-items:center;gap:8px;margin:3px 0\">\
             <div style=\"width:180px;font-size:12px;overflow:hidden;text-overflow:ellipsis;white-space:nowrap\" title=\"{label}\">{label}</div>\
             <div style=\"flex:1\">\
             <div style=\"height:9px;background:#3b6fc4;width:{d:.1}%\" title=\"duration {dt}\"></div>\
             <div style=\"height:9px;background:{color};width:{l:.1}%;margin-top:2px\" title=\"{lt}\"></div></div>\
             <div style=\"width:230px;font-size:12px;color:#374151;white-space:nowrap\">{dt} · {lt}</div></div>",
            label = esc(&m.label()),
            d = pct(m.duration_ms),
            l = pct(held),
            dt = esc(&secs(m.duration_ms)),
            lt = esc(&lock_text),
        );
    }
    h.push_str("</div>");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_the_table_and_chart_with_escaped_text() {
        let json = serde_json::json!({
            "ok": true, "mode": "single_transaction", "snapshot_id": "s1", "method": "restore",
            "migrations": [
                {"version": "1", "name": "add_<b>", "status": "applied", "duration_ms": 400,
                 "locks": [{"relation": "t", "mode": "RowExclusiveLock", "held_ms": 100},
                           {"relation": "t", "mode": "AccessExclusiveLock", "held_ms": 800}],
                 "rewrites": [{"relation": "t", "kind": "table", "bytes_before": 2048}],
                 "blocking": [{"relation": "t<i>", "reads_blocked_ms": 2000, "writes_blocked_ms": 2010, "statement": "LOCK"}]},
                {"version": "2", "name": "seed", "status": "applied", "duration_ms": 0, "locks": []}
            ],
            "future_field": {"ignored": true}
        });
        let mut h = String::new();
        render(&mut h, &json);
        assert!(h.contains("add_&lt;b&gt;") && !h.contains("add_<b>"), "{h}");
        assert!(h.contains("ACCESS EXCLUSIVE on <code>t</code>"), "{h}");
        assert!(h.contains("table <code>t</code> (2.0 KiB)"), "{h}");
        assert!(h.contains("<code>t&lt;i&gt;</code>: reads 2.0 s, writes 2.0 s"), "{h}");
        assert!(h.contains("not probed"), "a report without blocking says so: {h}");
        // The longest bar (800 ms of ACCESS EXCLUSIVE) is the full width; the
        // 400 ms duration half of it.
        assert!(h.contains("background:#c0392b;width:100.0%"), "{h}");
        assert!(h.contains("background:#3b6fc4;width:50.0%"), "{h}");
        assert!(h.contains("no lock"), "{h}");
    }
}
