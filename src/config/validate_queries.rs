//! Validating a target's `queries = { … }`: the queries file's path, the
//! thresholds of a plan finding and the query ids whose findings are
//! accepted (see `rehearsal::queries`).

use super::super::locate::KeyPath;
use super::super::raw::*;
use super::super::*;
use super::Ctx;

pub(super) fn queries(cx: &mut Ctx, p: &KeyPath, raw: Option<&RawQueries>) -> QueriesConfig {
    let d = QueriesConfig::default();
    let Some(raw) = raw else { return d };
    let mut ratio = |key: &str, v: Option<f64>, default: f64| -> f64 {
        let v = v.unwrap_or(default);
        if !(v.is_finite() && v > 1.0) {
            cx.problem(&p.key(key), format!("`{v}`: use a ratio above 1.0, e.g. 2.0 (twice the cost before the plan)"));
            return default;
        }
        v
    };
    let cost_ratio = ratio("cost_ratio", raw.cost_ratio, d.cost_ratio);
    let time_ratio = ratio("time_ratio", raw.time_ratio, d.time_ratio);
    let runs = raw.runs.unwrap_or(d.runs);
    if !(1..=100).contains(&runs) {
        cx.problem(&p.key("runs"), format!("`{runs}`: use between 1 and 100 timed runs (the median is reported)"));
    }
    let top = raw.top.unwrap_or(d.top);
    if top > 500 {
        cx.problem(&p.key("top"), format!("`{top}`: at most 500 statements of pg_stat_statements are compared"));
    }
    for (i, id) in raw.accept.iter().enumerate() {
        if id.trim().is_empty() {
            cx.problem(&p.key("accept").index(i), "is empty; name a query id of the queries file (or `queryid:<n>`)");
        }
    }
    QueriesConfig {
        file: raw.file.as_deref().map(|f| cx.path(f)),
        from_live: raw.from_live.unwrap_or(d.from_live),
        top: top.min(500),
        seq_scan_rows: raw.seq_scan_rows.unwrap_or(d.seq_scan_rows),
        cost_ratio,
        time_ratio,
        runs: runs.clamp(1, 100),
        accept: raw.accept.clone(),
    }
}
