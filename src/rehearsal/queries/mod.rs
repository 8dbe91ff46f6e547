//! Query plans before and after the plan, on the scratch copy. The queries
//! that matter come from live's `pg_stat_statements` (top N by total time,
//! read-only; see [`live`]) and/or the project's queries file (see
//! [`file`]). Each one is explained on the copy before the plan runs and
//! after it (see [`explain`]): its plan's scan nodes and total cost, and
//! for a query with values its median time.
//!
//! Which migration changed a plan: when the plan has more than one
//! migration, every query is explained (EXPLAIN only, no timing) after each
//! migration, through the executor's hooks — inside the plan's transaction,
//! in a savepoint rolled back at once — and the first migration after which
//! the query is judged worse is named. Bisecting would need a copy per
//! step; an EXPLAIN costs about a millisecond.
//!
//! A finding: an index scan (or bitmap scan) of a table of at least
//! `seq_scan_rows` rows replaced by a sequential scan, or a cost (or median
//! time, from 10 ms up) growing past its ratio. Findings fail the rehearsal
//! unless `queries.accept` names the query. An index the plan creates that
//! no listed query's plan uses is a note (not a unique one: it enforces a
//! constraint, whether a query uses it or not).

pub mod explain;
pub mod file;
pub mod live;

use std::path::PathBuf;
use std::time::Instant;

use serde::Serialize;
use sqlx::PgConnection;

use super::observer::Catalog;
use crate::config::{QueriesConfig, Target};
use crate::migrations::executor::excerpt;
pub use explain::Side;

/// Median times below this are never judged by their ratio: on a cold copy
/// a sub-10 ms query can double by noise (its cost ratio still counts).
pub const MIN_JUDGED_MS: f64 = 10.0;

/// Where a query comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Origin {
    File,
    Live,
}

/// A query to compare.
#[derive(Debug, Clone)]
pub struct Query {
    /// The file's `id`, or `queryid:<n>` for a statement of live.
    pub id: String,
    pub sql: String,
    /// The highest `$n` it uses.
    pub placeholders: usize,
    /// SQL literals for `$1…`, from the file.
    pub params: Option<Vec<String>>,
    pub origin: Origin,
}

impl Query {
    /// Whether it is planned with real values: it has values, or needs none.
    pub fn valued(&self) -> bool {
        self.params.is_some() || self.placeholders == 0
    }

    /// Whether it is run (timed, rolled back) on the copy: a query of the
    /// file with its values. Live's statements are only explained.
    pub fn timed(&self) -> bool {
        self.origin == Origin::File && self.valued()
    }
}

/// What makes a query's new plan a finding.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum FindingKind {
    /// An index scan of a large table became a sequential scan.
    SeqScan,
    CostRatio,
    TimeRatio,
}

#[derive(Debug, Clone, Serialize)]
pub struct Finding {
    pub kind: FindingKind,
    /// The migration after which the plan changed (null when it cannot be
    /// told: an external runner ran several migrations at once).
    pub migration: Option<String>,
    /// After / before: of the cost, or of the median time for `time_ratio`.
    pub ratio: f64,
    pub message: String,
    /// `queries.accept` names this query: reported, not failing.
    pub accepted: bool,
}

/// One query, before and after the plan, as the report shows it.
#[derive(Debug, Clone, Serialize)]
pub struct QueryResult {
    pub id: String,
    /// The statement excerpted to one line (live's are normalized: no values).
    pub text: String,
    pub origin: Origin,
    /// `generic` (no values: the generic plan) or `values` (timed).
    pub plan: &'static str,
    pub before: Option<Side>,
    pub after: Option<Side>,
    pub finding: Option<Finding>,
    /// Why it could not be compared (it cannot be prepared on the copy…).
    pub error: Option<String>,
}

/// The queries of a rehearsal, the plans before the plan, and (when the
/// plan has several migrations) after each migration.
#[derive(Debug, Default)]
pub struct Trail {
    pub queries: Vec<Query>,
    pub before: Vec<Result<Side, String>>,
    /// `[migration][query]`; empty when not evaluated per migration.
    pub steps: Vec<Vec<Option<Side>>>,
    pub per_migration: bool,
    /// Time spent explaining and timing, for the report (`queries_ms`).
    pub spent: std::time::Duration,
    /// What could not be read (live's statistics), for the report.
    pub warnings: Vec<String>,
}

/// The queries to compare for `target` (reading live's statistics: one
/// `SELECT`), with a warning for what could not be read. A bad queries file
/// is an error naming it.
pub async fn gather(target: &Target) -> Result<Trail, (PathBuf, String)> {
    let cfg = &target.queries;
    let mut out = Vec::new();
    let mut warnings = Vec::new();
    if let Some(path) = file_of(target, cfg) {
        out.extend(file::read(&path).map_err(|e| (path.clone(), e))?);
    }
    if cfg.from_live && cfg.top > 0 {
        match live::top(&target.live_url, cfg.top).await {
            Ok(Some(list)) => out.extend(list),
            Ok(None) => {}
            Err(e) => warnings.push(format!(
                "live's pg_stat_statements could not be read ({}); only the queries file was compared",
                excerpt(&e)
            )),
        }
    }
    Ok(Trail { queries: out, warnings, ..Trail::default() })
}

/// The configured queries file, or `queries.toml` beside the migrations directory.
fn file_of(target: &Target, cfg: &QueriesConfig) -> Option<PathBuf> {
    if let Some(f) = &cfg.file {
        return Some(f.clone());
    }
    let dir = target.migrations.as_ref()?.dir.as_ref()?;
    let beside = dir.parent()?.join("queries.toml");
    beside.is_file().then_some(beside)
}

impl Trail {
    /// Explains (and times) every query before the plan. `migrations`: how
    /// many the plan has; with more than one, each is evaluated after it.
    pub async fn before_plan(&mut self, conn: &mut PgConnection, runs: u32, migrations: usize) {
        let t = Instant::now();
        for q in &self.queries {
            self.before.push(explain::explain(conn, q, runs, false).await);
        }
        self.per_migration = migrations > 1 && !self.queries.is_empty();
        self.steps = vec![Vec::new(); if self.per_migration { migrations } else { 0 }];
        self.spent += t.elapsed();
    }

    /// After migration `i` (EXPLAIN only; `in_tx`: inside the plan's transaction).
    pub async fn after_migration(&mut self, conn: &mut PgConnection, i: usize, in_tx: bool) {
        if !self.per_migration || i >= self.steps.len() {
            return;
        }
        let t = Instant::now();
        let mut sides = Vec::with_capacity(self.queries.len());
        for (q, before) in self.queries.iter().zip(&self.before) {
            sides.push(match before {
                Ok(_) => explain::explain(conn, q, 0, in_tx).await.ok(),
                Err(_) => None,
            });
        }
        self.steps[i] = sides;
        self.spent += t.elapsed();
    }

    /// After the plan: every query explained, timed and judged (see
    /// [`Trail::after_plan`]), with notes on the indexes the plan created
    /// that none of them uses; nothing when the plan failed (the copy is
    /// not what live would run on).
    pub async fn compare(
        &mut self,
        conn: &mut PgConnection,
        cfg: &QueriesConfig,
        pre: &Catalog,
        versions: &[String],
        ok: bool,
    ) -> (Vec<QueryResult>, Vec<String>) {
        if self.queries.is_empty() {
            return (Vec::new(), Vec::new());
        }
        if !ok {
            return (Vec::new(), vec!["The queries were not compared: the plan failed.".into()]);
        }
        let results = self.after_plan(conn, cfg, pre, versions).await;
        let notes = match plain_indexes(conn).await {
            Ok(after) => unused_indexes(pre, &after, &results),
            Err(e) => {
                tracing::warn!(error = %e, "Cannot read the catalog after the plan; unused new indexes are not reported.");
                Vec::new()
            }
        };
        let found = results.iter().filter(|r| r.finding.is_some()).count();
        let ms = self.spent.as_millis() as u64;
        tracing::info!(queries = results.len(), findings = found, queries_ms = ms, "Queries compared.");
        (results, notes)
    }

    /// Explains and times every query after the plan, and judges each
    /// against its plan before. `versions`: the plan's migrations, in order.
    pub async fn after_plan(
        &mut self,
        conn: &mut PgConnection,
        cfg: &QueriesConfig,
        pre: &Catalog,
        versions: &[String],
    ) -> Vec<QueryResult> {
        let t = Instant::now();
        let mut out = Vec::with_capacity(self.queries.len());
        for (k, (q, before)) in self.queries.iter().zip(&self.before).enumerate() {
            let after = explain::explain(conn, q, cfg.runs, false).await;
            let mut r = QueryResult {
                id: q.id.clone(),
                text: excerpt(q.sql.lines().next().unwrap_or_default()),
                origin: q.origin,
                plan: if q.valued() { "values" } else { "generic" },
                before: before.as_ref().ok().cloned(),
                after: after.as_ref().ok().cloned(),
                finding: None,
                error: before.as_ref().err().or(after.as_ref().err()).map(|e| excerpt(e)),
            };
            if let (Ok(b), Ok(a)) = (before, &after)
                && let Some((kind, ratio, why)) = judge(b, a, pre, cfg)
            {
                let migration = self.culprit(k, b, pre, cfg, versions);
                let by = match &migration {
                    Some(v) => format!("after migration {v}"),
                    None => "after the plan".to_string(),
                };
                r.finding = Some(Finding {
                    kind,
                    ratio,
                    message: format!("query `{}` {by}: {why}", q.id),
                    migration,
                    accepted: cfg.accept.contains(&q.id),
                });
            }
            out.push(r);
        }
        self.spent += t.elapsed();
        out
    }

    /// The first migration after which query `k` is judged worse (or, failing
    /// that, changed); the only one of a one-migration plan.
    fn culprit(
        &self,
        k: usize,
        before: &Side,
        pre: &Catalog,
        cfg: &QueriesConfig,
        versions: &[String],
    ) -> Option<String> {
        let at = |i: usize| self.steps.get(i).and_then(|s| s.get(k)).and_then(Option::as_ref);
        let worse = (0..self.steps.len()).find(|&i| at(i).is_some_and(|s| judge(before, s, pre, cfg).is_some()));
        let changed = || (0..self.steps.len()).find(|&i| at(i).is_some_and(|s| s.scan != before.scan));
        match worse.or_else(changed) {
            Some(i) => versions.get(i).cloned(),
            None if versions.len() == 1 => versions.first().cloned(),
            None => None,
        }
    }
}

/// Whether `after` is worse than `before`: a sequential scan of a large
/// table that was read by index, or a cost or time past its ratio.
pub fn judge(before: &Side, after: &Side, pre: &Catalog, cfg: &QueriesConfig) -> Option<(FindingKind, f64, String)> {
    let cost_ratio = after.cost / before.cost.max(0.01);
    let cost = format!("cost {:.1} → {:.1} ({:.1}×)", before.cost, after.cost, cost_ratio);
    for node in after.nodes.iter().filter(|n| n.node == "Seq Scan") {
        let Some(rel) = &node.relation else { continue };
        let was = before.nodes.iter().find(|b| b.by_index() && b.relation.as_ref() == Some(rel));
        let rows = pre.by_name(rel).map_or(0.0, |r| r.rows);
        if let Some(was) = was
            && rows >= cfg.seq_scan_rows as f64
        {
            let was = match before.nodes.iter().find(|b| b.node == "Bitmap Index Scan") {
                Some(bitmap) if was.index.is_none() => format!("{} ({})", was.describe(), bitmap.describe()),
                _ => was.describe(),
            };
            let time = match (before.ms, after.ms) {
                (Some(b), Some(a)) => format!("; median time {b:.2} ms → {a:.2} ms"),
                _ => String::new(),
            };
            return Some((
                FindingKind::SeqScan,
                cost_ratio,
                format!("{was} became a Seq Scan on `{rel}` ({rows:.0} rows); {cost}{time}"),
            ));
        }
    }
    if cost_ratio > cfg.cost_ratio {
        return Some((
            FindingKind::CostRatio,
            cost_ratio,
            format!("{cost}, past {}×; before: {}; after: {}", cfg.cost_ratio, before.scan, after.scan),
        ));
    }
    if let (Some(b), Some(a)) = (before.ms, after.ms) {
        let ratio = a / b.max(0.001);
        if a >= MIN_JUDGED_MS && ratio > cfg.time_ratio {
            return Some((
                FindingKind::TimeRatio,
                ratio,
                format!(
                    "median time {b:.1} ms → {a:.1} ms ({ratio:.1}×, past {}×); before: {}; after: {}",
                    cfg.time_ratio, before.scan, after.scan
                ),
            ));
        }
    }
    None
}

/// The indexes that enforce nothing (not unique, not a primary key), as
/// (schema, name): those a query may use or not.
async fn plain_indexes(conn: &mut PgConnection) -> Result<Vec<(String, String)>, sqlx::Error> {
    sqlx::query_as(
        "SELECT n.nspname::text, c.relname::text
           FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid JOIN pg_namespace n ON n.oid = c.relnamespace
          WHERE NOT i.indisunique AND NOT i.indisprimary
            AND n.nspname NOT IN ('pg_catalog', 'information_schema') AND n.nspname NOT LIKE 'pg\\_toast%'",
    )
    .fetch_all(&mut *conn)
    .await
}

/// Notes on the indexes the plan created (`after`: the plain indexes after
/// it) that no compared query's plan uses.
pub fn unused_indexes(pre: &Catalog, after: &[(String, String)], results: &[QueryResult]) -> Vec<String> {
    if results.is_empty() {
        return Vec::new();
    }
    let used: Vec<&str> = results
        .iter()
        .filter_map(|r| r.after.as_ref())
        .flat_map(|s| s.nodes.iter().filter_map(|n| n.index.as_deref()))
        .collect();
    let existed = |s: &str, n: &str| pre.0.values().any(|r| r.kind == 'i' && r.schema == s && r.name == n);
    let mut notes: Vec<String> = after
        .iter()
        .filter(|(schema, name)| !existed(schema, name) && !used.contains(&name.as_str()))
        .map(|(schema, name)| {
            let index = if schema == "public" { name.clone() } else { format!("{schema}.{name}") };
            format!(
                "index `{index}` created by the plan is used by none of the {} compared queries' plans",
                results.len()
            )
        })
        .collect();
    notes.sort();
    notes
}

impl QueryResult {
    /// The verdict on this query, in a few words.
    pub fn outcome(&self) -> String {
        match (&self.finding, &self.error) {
            (Some(f), _) if f.accepted => format!("accepted: {}", f.message),
            (Some(f), _) => format!("FINDING: {}", f.message),
            (None, Some(e)) => format!("not compared: {e}"),
            (None, None) if self.before.as_ref().map(|s| &s.scan) != self.after.as_ref().map(|s| &s.scan) => {
                "plan changed, within the thresholds".into()
            }
            (None, None) => "same plan".into(),
        }
    }
}

/// The verdict's lines: unaccepted findings are problems, accepted ones warnings.
pub fn verdict(results: &[QueryResult], problems: &mut Vec<String>, warnings: &mut Vec<String>) {
    for f in results.iter().filter_map(|r| r.finding.as_ref()) {
        if f.accepted {
            warnings.push(format!("[query_plan] {} (accepted by queries.accept)", f.message));
        } else {
            problems.push(format!("[query_plan] {} (accept it with queries.accept if intended)", f.message));
        }
    }
}

#[cfg(test)]
#[path = "tests.rs"]
mod tests;
