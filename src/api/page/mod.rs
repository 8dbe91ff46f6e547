//! The status page at `GET /`: one server-rendered HTML document, no
//! front-end build. Per target: live and the pending plan, the approval,
//! the windows, the latest snapshots with their restore drills and
//! measured RTO, the pending plan's latest rehearsal (table and chart,
//! `report.rs`), recent releases; and an Approve form per plan that may be
//! approved, which `status.js` posts to `/api/v1/approvals` with the API
//! token (asked once, kept in `sessionStorage`).
//!
//! Every text from the state store, the object store or the config is
//! escaped; the Content-Security-Policy allows only this origin's script,
//! so even a missed escape could not run code.

mod report;

use std::fmt::Write;
use std::sync::Arc;

use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};

use super::overview::{Live, Overview, SnapshotView};
use crate::api::Shared;
use crate::format::human_bytes;
use crate::format::secs;
use crate::state::{Outcome, RehearsalStatus};

/// Where the page's script is served (relative in the page, so that the
/// page also works behind a reverse proxy under a path prefix).
pub const SCRIPT_PATH: &str = "/assets/status.js";
const SCRIPT: &str = include_str!("status.js");

const CSP: &str = "default-src 'none'; script-src 'self'; connect-src 'self'; style-src 'unsafe-inline'; \
                   img-src 'self' data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

/// `GET /`.
pub async fn index(State(s): State<Arc<Shared>>) -> Response {
    let cfg = s.config();
    let (status, body) = match super::resources::all(s.as_ref(), &cfg, true).await {
        Ok(targets) => (StatusCode::OK, render(&targets, s.started().elapsed().as_secs())),
        Err(e) => (e.status, error_page(&e.message)),
    };
    let headers = [
        (header::CONTENT_TYPE, "text/html; charset=utf-8"),
        (header::CONTENT_SECURITY_POLICY, CSP),
        (header::CACHE_CONTROL, "no-store"),
        (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        (header::REFERRER_POLICY, "no-referrer"),
        (header::X_FRAME_OPTIONS, "DENY"),
    ];
    (status, headers, body).into_response()
}

/// `GET /assets/status.js`.
pub async fn script() -> impl IntoResponse {
    ([(header::CONTENT_TYPE, "text/javascript; charset=utf-8"), (header::CACHE_CONTROL, "no-cache")], SCRIPT)
}

/// Escapes text for HTML content and quoted attribute values (one
/// escaper for the page and the mail reports).
pub use crate::report::email::html::escape as esc;

/// An RFC 3339 time as `2026-05-01 03:00:12 UTC` (as given when unparsable).
pub fn when(t: &str) -> String {
    chrono::DateTime::parse_from_rfc3339(t)
        .map(|t| t.with_timezone(&chrono::Utc).format("%Y-%m-%d %H:%M:%S UTC").to_string())
        .unwrap_or_else(|_| t.to_string())
}

fn short(hash: &str) -> &str {
    hash.get(..12).unwrap_or(hash)
}

const STYLE: &str = "body{font:14px/1.45 system-ui,sans-serif;margin:0;color:#1d2330;background:#f4f5f7}\
header{background:#1d2330;color:#fff;padding:12px 24px}header h1{margin:0;font-size:20px}\
header p{margin:4px 0 0;color:#c9cfdb}main{padding:16px 24px;max-width:1200px}\
section.target{background:#fff;border:1px solid #d8dce3;border-radius:6px;padding:12px 20px;margin:0 0 20px}\
h2{margin:4px 0 8px}h3{margin:18px 0 6px;font-size:15px}\
table{border-collapse:collapse;margin:4px 0;width:100%}th,td{border-bottom:1px solid #e4e7ec;padding:4px 8px;text-align:left;vertical-align:top}\
th{background:#f0f2f5;font-weight:600}td code{word-break:normal;white-space:nowrap}td.num{text-align:right;white-space:nowrap}\
dl.facts{display:grid;grid-template-columns:max-content 1fr;gap:4px 16px;margin:0}dt{font-weight:600}dd{margin:0}\
code{font:12px ui-monospace,monospace;background:#f0f2f5;padding:1px 4px;border-radius:3px;word-break:break-all}\
.ok{color:#1a7f37}.bad{color:#b42318}.warn{color:#9a6700}.muted{color:#6b7280}\
.badge{display:inline-block;padding:0 8px;border-radius:10px;font-size:12px;background:#e4e7ec;vertical-align:middle}\
.problems{background:#fff4e5;border:1px solid #f0c36d;border-radius:4px;padding:6px 10px;margin:6px 0}\
form.approve{display:flex;flex-wrap:wrap;gap:8px;align-items:center;margin:10px 0 4px;padding:8px;background:#f0f6ff;border:1px solid #b6cff5;border-radius:4px}\
form.approve input{padding:4px 6px}form.approve button{padding:5px 14px;font-weight:600;cursor:pointer}\
[hidden]{display:none!important}.msg{margin:6px 0;padding:0}.msg.ok,.msg.error,.msg.pending{padding:6px 10px;border-radius:4px}\
.msg.ok{background:#e6f4ea;color:#1a7f37}.msg.error{background:#fdecea;color:#b42318}.msg.pending{background:#f0f2f5;color:#1d2330}";

fn render(targets: &[Overview], uptime: u64) -> String {
    let mut h = String::new();
    let _ = write!(
        h,
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
         <link rel=\"icon\" href=\"data:,\"><title>pgrehearse status</title><style>{STYLE}</style></head><body>\
         <header><h1>pgrehearse status</h1><p>{} target{} · version {} · daemon up {} · rendered {}</p></header><main>",
        targets.len(),
        if targets.len() == 1 { "" } else { "s" },
        esc(env!("CARGO_PKG_VERSION")),
        esc(&humantime::format_duration(std::time::Duration::from_secs(uptime)).to_string()),
        esc(&chrono::Utc::now().format("%Y-%m-%d %H:%M:%S UTC").to_string()),
    );
    if targets.is_empty() {
        h.push_str("<p>No targets are configured.</p>");
    }
    for (i, o) in targets.iter().enumerate() {
        target(&mut h, i, o);
    }
    let _ = writeln!(
        h,
        "<noscript><p>The Approve buttons need JavaScript; without it, approve with <code>pgrehearse approve --plan HASH</code>.</p></noscript>\
         </main><script src=\"{}\"></script></body></html>",
        &SCRIPT_PATH[1..]
    );
    h
}

fn target(h: &mut String, i: usize, o: &Overview) {
    let s = &o.summary;
    let _ =
        write!(h, "<section class=\"target\" id=\"target-{i}\" data-target=\"{}\"><h2>{}", esc(&s.name), esc(&s.name));
    if let Some(k) = s.kind {
        let _ = write!(h, " <span class=\"badge\">{}</span>", esc(&serde_plain(&k)));
    }
    if let Some(job) = s.running {
        let _ = write!(h, " <span class=\"badge warn\">running: {}</span>", esc(job));
    }
    h.push_str("</h2>");
    if !s.problems.is_empty() {
        h.push_str("<div class=\"problems\">");
        for p in &s.problems {
            let _ = write!(h, "<div>{}</div>", esc(p));
        }
        h.push_str("</div>");
    }
    h.push_str("<dl class=\"facts\"><dt>Live</dt><dd>");
    h.push_str(match s.live {
        Live::Ok => "<span class=\"ok\">reachable</span>",
        Live::Unreachable => "<span class=\"bad\">live unreachable</span>",
        Live::Error => "<span class=\"bad\">error reading the plan</span>",
        Live::NoSource => "<span class=\"muted\">no migration source configured</span>",
    });
    h.push_str("</dd><dt>Pending plan</dt><dd>");
    match (&s.plan, s.pending_count) {
        (Some(plan), Some(0)) => {
            let _ = write!(h, "nothing pending <span class=\"muted\">(plan <code>{}</code>)</span>", esc(short(plan)));
        }
        (Some(plan), Some(n)) => {
            let _ = write!(
                h,
                "<code class=\"plan\" title=\"plan hash\">{}</code> — {n} migration{}",
                esc(plan),
                if n == 1 { "" } else { "s" }
            );
            if let Some(d) = s.drift_count.filter(|d| *d > 0) {
                let _ = write!(h, " <span class=\"bad\">· {d} drifted</span>");
            }
        }
        _ => h.push_str("<span class=\"muted\">unknown</span>"),
    }
    h.push_str("</dd><dt>Approval</dt><dd>");
    match &s.approval {
        Some(a) => {
            let state = match (a.valid, a.expired, &a.spent_by) {
                (_, _, Some(r)) => format!("<span class=\"muted\">used by release {}</span>", esc(r)),
                (Some(true), _, _) => "<span class=\"ok\">valid</span>".into(),
                (_, true, _) => "<span class=\"muted\">expired</span>".into(),
                (Some(false), _, _) => "<span class=\"muted\">for another plan</span>".into(),
                (None, _, _) => "<span class=\"muted\">validity unknown</span>".into(),
            };
            let _ = write!(
                h,
                "{state}: plan <code>{}</code> approved by <strong class=\"approved-by\">{}</strong> at {}, expires {}",
                esc(short(&a.approval.plan_hash)),
                esc(&a.approval.approved_by),
                esc(&when(&a.approval.approved_at)),
                esc(&when(&a.approval.expires_at)),
            );
            if let Some(n) = &a.approval.note {
                let _ = write!(h, " — “{}”", esc(n));
            }
        }
        None => h.push_str("<span class=\"muted\">none</span>"),
    }
    h.push_str("</dd><dt>Window</dt><dd>");
    match (&s.window_open, &s.next_window) {
        (Some(w), _) => {
            let _ = write!(h, "<span class=\"ok\">open</span> until {}", esc(&fmt_time(w.end)));
        }
        (None, Some(w)) => {
            let _ = write!(h, "next {} – {}", esc(&fmt_time(w.start)), esc(&fmt_time(w.end)));
        }
        (None, None) => h.push_str("<span class=\"muted\">no release window configured</span>"),
    }
    h.push_str("</dd><dt>Last release</dt><dd>");
    match &s.last_release {
        Some(r) => {
            let _ = write!(h, "<code>{}</code> {} at {}", esc(&r.id), outcome(r.outcome), esc(&when(&r.started_at)));
        }
        None => h.push_str("<span class=\"muted\">none</span>"),
    }
    h.push_str("</dd></dl>");

    pending_plan(h, i, o);
    snapshots(h, &o.snapshots);
    releases(h, o);
    h.push_str("</section>");
}

/// The pending migrations, the rehearsal report and the Approve form.
fn pending_plan(h: &mut String, i: usize, o: &Overview) {
    let s = &o.summary;
    if !s.pending.is_empty() {
        h.push_str("<h3>Pending migrations</h3><ol class=\"pending\">");
        for m in &s.pending {
            let label =
                if m.version == m.name { esc(&m.name) } else { format!("{} {}", esc(&m.version), esc(&m.name)) };
            let _ = write!(h, "<li>{label}</li>");
        }
        h.push_str("</ol>");
    }
    match (&o.rehearsal, &o.report) {
        (Some(r), report_json) => {
            let of = match r.current_plan {
                Some(true) => "of the pending plan",
                Some(false) => "of an earlier plan",
                None => "",
            };
            let _ = write!(
                h,
                "<h3>Rehearsal <code class=\"rehearsal-id\">{}</code> {of}: {}</h3><p class=\"muted\">started {}{}</p>",
                esc(&r.id),
                rehearsal_status(r.status),
                esc(&when(&r.started_at)),
                r.finished_at.as_deref().map(|f| format!(", finished {}", esc(&when(f)))).unwrap_or_default(),
            );
            if let Some(json) = report_json {
                report::render(h, json);
            }
        }
        (None, _) if !s.pending.is_empty() => {
            h.push_str("<p class=\"warn\">Not rehearsed yet: run <code>pgrehearse rehearse</code>.</p>");
        }
        _ => {}
    }
    if let (true, Some(plan)) = (s.approvable, &s.plan) {
        let _ = write!(
            h,
            "<form class=\"approve\" data-target=\"{t}\" data-plan=\"{p}\" data-msg=\"msg-{i}\">\
             <label>Approved by <input name=\"by\" required maxlength=\"200\" autocomplete=\"name\" placeholder=\"your name\"></label>\
             <label>Note <input name=\"note\" maxlength=\"2000\" placeholder=\"optional, e.g. change ticket\"></label>\
             <button type=\"submit\">Approve plan {ps}</button></form>",
            t = esc(&s.name),
            p = esc(plan),
            ps = esc(short(plan)),
        );
    }
    let _ = write!(h, "<p class=\"msg\" id=\"msg-{i}\" role=\"status\" aria-live=\"polite\"></p>");
}

fn snapshots(h: &mut String, list: &[SnapshotView]) {
    h.push_str("<h3>Latest snapshots</h3>");
    if list.is_empty() {
        h.push_str("<p class=\"muted\">No snapshot yet.</p>");
        return;
    }
    h.push_str(
        "<table class=\"snapshots\"><tr><th>snapshot</th><th>taken</th><th>reason</th><th>stored</th>\
         <th>restore drill</th><th>measured RTO</th></tr>",
    );
    for sn in list {
        let drill = match (sn.verification_ok, &sn.verified_at) {
            (Some(true), Some(at)) => format!("<span class=\"ok\">verified</span> {}", esc(&when(at))),
            (Some(false), _) => format!(
                "<span class=\"bad\">drill failed</span> {}",
                esc(&sn.verification_checked_at.as_deref().map(when).unwrap_or_default())
            ),
            (_, Some(at)) => format!("<span class=\"ok\">verified</span> {}", esc(&when(at))),
            _ => "<span class=\"muted\">never verified</span>".into(),
        };
        let rto = match sn.restore_duration_ms {
            Some(ms) => format!(
                "{}{}",
                esc(&secs(ms)),
                sn.verification_method
                    .as_deref()
                    .map(|m| format!(" <span class=\"muted\">({})</span>", esc(&m.replace('_', " "))))
                    .unwrap_or_default()
            ),
            None => "<span class=\"muted\">—</span>".into(),
        };
        let _ = write!(
            h,
            "<tr><td><code>{}</code>{}</td><td>{}</td><td>{}</td><td class=\"num\">{}</td><td>{drill}</td><td class=\"num\">{rto}</td></tr>",
            esc(&sn.id),
            if sn.encrypted { " <span class=\"badge\">encrypted</span>" } else { "" },
            esc(&fmt_time(sn.created_at)),
            esc(sn.reason.as_str()),
            esc(&human_bytes(sn.bytes_stored)),
        );
    }
    h.push_str("</table>");
}

fn releases(h: &mut String, o: &Overview) {
    h.push_str("<h3>Recent releases</h3>");
    if o.releases.is_empty() {
        h.push_str("<p class=\"muted\">No release yet.</p>");
        return;
    }
    h.push_str("<table class=\"releases\"><tr><th>release</th><th>started</th><th>outcome</th><th>took</th><th>plan</th><th>reason</th></tr>");
    for r in &o.releases {
        let _ = write!(
            h,
            "<tr><td><code>{}</code></td><td>{}</td><td>{}{}</td><td class=\"num\">{}</td><td><code>{}</code></td><td>{}</td></tr>",
            esc(&r.id),
            esc(&when(&r.started_at)),
            outcome(r.outcome),
            r.recovery
                .as_deref()
                .map(|x| format!(" <span class=\"muted\">(recovery: {})</span>", esc(x)))
                .unwrap_or_default(),
            r.duration_ms.map_or_else(|| "—".to_string(), |ms| esc(&secs(ms))),
            esc(short(&r.plan)),
            esc(r.reason.as_deref().unwrap_or("")),
        );
        if let Some(s) = &r.stranded_writes {
            let class = if s.nothing() { "muted" } else { "bad" };
            let _ = write!(
                h,
                "<tr class=\"stranded\"><td></td><td colspan=\"5\"><span class=\"{class}\">{}</span>",
                esc(&s.headline())
            );
            let mut items = s.table_lines();
            items.extend(s.next_commands(&r.id));
            if !items.is_empty() {
                h.push_str("<ul>");
                for i in items {
                    let _ = write!(h, "<li><code>{}</code></li>", esc(&i));
                }
                h.push_str("</ul>");
            }
            h.push_str("</td></tr>");
        }
    }
    h.push_str("</table>");
}

fn outcome(o: Outcome) -> String {
    let class = match o {
        Outcome::Applied | Outcome::NothingPending => "ok",
        Outcome::Refused | Outcome::Aborted | Outcome::Running => "warn",
        Outcome::RolledBack | Outcome::Restored | Outcome::Halted | Outcome::Interrupted => "bad",
    };
    format!("<span class=\"{class} outcome\">{}</span>", esc(&o.as_str().replace('_', " ")))
}

fn rehearsal_status(s: RehearsalStatus) -> String {
    let class = match s {
        RehearsalStatus::Passed => "ok",
        RehearsalStatus::Running => "warn",
        RehearsalStatus::Problems | RehearsalStatus::Error => "bad",
    };
    format!("<span class=\"{class} rehearsal-status\">{}</span>", esc(s.as_str()))
}

fn fmt_time(t: chrono::DateTime<chrono::Utc>) -> String {
    t.format("%Y-%m-%d %H:%M:%S UTC").to_string()
}

/// A unit enum's serde name (`sqlx`, `payload` …).
fn serde_plain<T: serde::Serialize>(v: &T) -> String {
    serde_json::to_value(v).ok().and_then(|v| v.as_str().map(str::to_string)).unwrap_or_default()
}

fn error_page(message: &str) -> String {
    format!(
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>pgrehearse status: error</title>\
         <style>{STYLE}</style></head><body><header><h1>pgrehearse status</h1></header><main>\
         <div class=\"problems\">The status could not be gathered: {}</div></main></body></html>\n",
        esc(message)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_is_escaped_for_content_and_attributes() {
        assert_eq!(esc("<b a=\"x\">'&'</b>"), "&lt;b a=&quot;x&quot;&gt;&#39;&amp;&#39;&lt;/b&gt;");
        assert_eq!(when("2026-05-01T03:00:12.123+00:00"), "2026-05-01 03:00:12 UTC");
        assert_eq!(when("garbage"), "garbage");
    }
}
