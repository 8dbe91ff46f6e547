//! The performance watch after a release: compares live's
//! `pg_stat_statements` before the release with the period after it, per
//! query id, and names the queries that got slower.
//!
//! "Before" is what `pg_stat_statements` had accumulated for a query when
//! the release started (its sample at the release's start: the mean over
//! everything since the view was last reset — pgrehearse never resets it).
//! "After" is the deltas of the cumulative counters from the release's end
//! to `watch_after` later: the mean time and shared buffers of the calls
//! made in that period only. A query is compared when it has at least
//! `watch_min_calls` calls on both sides; it is slower when its mean time
//! after is `watch_slower_ratio` × the mean before or more, and grew by at
//! least `watch_min_increase_ms`. The daemon runs this when the period
//! ends (a restart finds the due watches in the state store); `pgrehearse
//! watch RELEASE_ID` runs it by hand, waiting for the period's end.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::config::{Target, WatchPolicy};
use crate::error_class::{Class, Classify};
use crate::pg::PgError;
use crate::pg::stat_statements::{self, Sample};
use crate::state::{State, StateError, WatchStatus};

/// Compared queries listed in a result, slowest change first.
const MAX_LISTED: usize = 50;

#[derive(Debug, thiserror::Error)]
pub enum WatchError {
    #[error(
        "release {id} of target `{target}` has no performance watch (it did not apply, or it ran without \
         `watch_after` in the target's configuration); see `pgrehearse releases {id}`"
    )]
    NotWatched { target: String, id: String },
    #[error(transparent)]
    State(#[from] StateError),
    #[error(transparent)]
    Pg(#[from] PgError),
}

impl Classify for WatchError {
    fn class(&self) -> Class {
        match self {
            WatchError::NotWatched { .. } => Class::Usage,
            WatchError::State(e) => e.class(),
            WatchError::Pg(e) => e.class(),
        }
    }

    fn kind(&self) -> &'static str {
        match self {
            WatchError::NotWatched { .. } => "release_not_watched",
            WatchError::State(e) => e.kind(),
            WatchError::Pg(e) => e.kind(),
        }
    }
}

/// One query's numbers before and after.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Change {
    pub queryid: String,
    /// The normalized statement's first line (`$n` for values).
    pub query: String,
    pub calls_before: i64,
    pub calls_after: i64,
    pub mean_ms_before: f64,
    pub mean_ms_after: f64,
    /// `mean_ms_after / mean_ms_before`.
    pub ratio: f64,
    pub shared_blks_per_call_before: f64,
    pub shared_blks_per_call_after: f64,
}

/// What a watch found (kept in the release record once compared).
#[derive(Debug, Clone, Serialize)]
pub struct Watched {
    pub release_id: String,
    pub target: String,
    pub status: WatchStatus,
    pub until: Option<DateTime<Utc>>,
    /// Why there was nothing to compare (no `pg_stat_statements`).
    pub note: Option<String>,
    /// The period after: from the release's end to the last sample.
    pub after_from: Option<DateTime<Utc>>,
    pub after_to: Option<DateTime<Utc>>,
    pub slower_ratio: f64,
    pub min_calls: u64,
    /// Compared queries (enough calls on both sides), largest ratio first.
    pub queries: Vec<Change>,
    /// The compared queries that got slower: each raised an alert.
    pub slower: Vec<Change>,
}

/// Runs the watch of release `id`: waits for the end of its period if it
/// has not come (`pgrehearse watch`; the daemon runs it when due), samples
/// live, compares and keeps the result. A watch already compared (or
/// without `pg_stat_statements`) is returned as it is, nothing sampled.
pub async fn run(state: &State, target: &Target, id: &str) -> Result<Watched, WatchError> {
    let not_watched = || WatchError::NotWatched { target: target.name.clone(), id: id.into() };
    let row = state.watch(id).await?.filter(|w| w.target == target.name).ok_or_else(not_watched)?;
    let policy = target.watch.clone().unwrap_or(WatchPolicy {
        after: std::time::Duration::ZERO,
        min_calls: 20,
        slower_ratio: 2.0,
        min_increase_ms: 1.0,
    });
    let mut out = Watched {
        release_id: row.release_id.clone(),
        target: row.target.clone(),
        status: row.status,
        until: row.until,
        note: row.note.clone(),
        after_from: None,
        after_to: None,
        slower_ratio: policy.slower_ratio,
        min_calls: policy.min_calls,
        queries: Vec::new(),
        slower: Vec::new(),
    };
    match row.status {
        WatchStatus::Pending => {}
        WatchStatus::Done => {
            if let Some(r) = &row.result {
                fill(&mut out, r);
            }
            return Ok(out);
        }
        WatchStatus::Unavailable => return Ok(out),
        WatchStatus::Started | WatchStatus::Unknown => return Err(not_watched()),
    }
    let parse = |v: &Option<serde_json::Value>| v.clone().and_then(|v| serde_json::from_value::<Sample>(v).ok());
    let (Some(start), Some(end), Some(until)) = (parse(&row.start_sample), parse(&row.end_sample), row.until) else {
        return Err(not_watched());
    };
    let wait = (until - Utc::now()).to_std().unwrap_or_default();
    if !wait.is_zero() {
        tracing::info!(release = %id, until = %until, "Waiting for the end of the watch period.");
        tokio::time::sleep(wait).await;
    }
    let after = match stat_statements::sample(&target.live_url).await? {
        Ok(s) => s,
        Err(why) => {
            state.watch_finished(id, WatchStatus::Unavailable, None, Some(&why)).await?;
            out.status = WatchStatus::Unavailable;
            out.note = Some(why);
            return Ok(out);
        }
    };
    let (queries, slower) = compare(&start, &end, &after, &policy);
    out.status = WatchStatus::Done;
    out.after_from = Some(end.taken_at);
    out.after_to = Some(after.taken_at);
    out.queries = queries;
    out.slower = slower;
    let result = serde_json::json!({
        "after_from": out.after_from,
        "after_to": out.after_to,
        "slower_ratio": out.slower_ratio,
        "min_calls": out.min_calls,
        "queries": out.queries,
        "slower": out.slower,
    });
    state.watch_finished(id, WatchStatus::Done, Some(&result), None).await?;
    if out.slower.is_empty() {
        tracing::info!(release = %id, compared = out.queries.len(), "Performance watch: no query got slower.");
    } else {
        tracing::warn!(release = %id, compared = out.queries.len(), slower = out.slower.len(), "Performance watch: queries got slower after the release.");
    }
    Ok(out)
}

/// A stored result back into `out`.
fn fill(out: &mut Watched, r: &serde_json::Value) {
    let changes = |k: &str| serde_json::from_value::<Vec<Change>>(r[k].clone()).unwrap_or_default();
    let time = |k: &str| serde_json::from_value::<Option<DateTime<Utc>>>(r[k].clone()).ok().flatten();
    out.queries = changes("queries");
    out.slower = changes("slower");
    out.after_from = time("after_from");
    out.after_to = time("after_to");
    out.slower_ratio = r["slower_ratio"].as_f64().unwrap_or(out.slower_ratio);
    out.min_calls = r["min_calls"].as_u64().unwrap_or(out.min_calls);
}

/// The compared queries (largest ratio first, at most [`MAX_LISTED`]) and
/// the slower ones among them. `start` is the before (cumulative), `after
/// - end` the period after. A query whose counters went down between `end`
/// and `after` (the view was reset, or the entry evicted) is not compared.
pub fn compare(start: &Sample, end: &Sample, after: &Sample, policy: &WatchPolicy) -> (Vec<Change>, Vec<Change>) {
    let min = policy.min_calls as i64;
    let mut changes: Vec<Change> = Vec::new();
    for a in &after.queries {
        let Some(b) = start.get(a.queryid).filter(|b| b.calls >= min) else { continue };
        let (e_calls, e_ms, e_blks) = end.get(a.queryid).map_or((0, 0.0, 0), |e| (e.calls, e.total_ms, e.shared_blks));
        let calls = a.calls - e_calls;
        if calls < min || a.total_ms < e_ms || a.shared_blks < e_blks {
            continue;
        }
        let before_ms = b.total_ms / b.calls as f64;
        let after_ms = (a.total_ms - e_ms) / calls as f64;
        changes.push(Change {
            queryid: a.queryid.to_string(),
            query: a.first_line.clone(),
            calls_before: b.calls,
            calls_after: calls,
            mean_ms_before: round3(before_ms),
            mean_ms_after: round3(after_ms),
            ratio: round3(after_ms / before_ms.max(0.001)),
            shared_blks_per_call_before: round3(b.shared_blks as f64 / b.calls as f64),
            shared_blks_per_call_after: round3((a.shared_blks - e_blks) as f64 / calls as f64),
        });
    }
    changes.sort_by(|x, y| y.ratio.total_cmp(&x.ratio).then_with(|| x.queryid.cmp(&y.queryid)));
    let slower: Vec<Change> = changes
        .iter()
        .filter(|c| c.ratio >= policy.slower_ratio && c.mean_ms_after - c.mean_ms_before >= policy.min_increase_ms)
        .cloned()
        .collect();
    changes.truncate(MAX_LISTED);
    (changes, slower)
}

fn round3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pg::stat_statements::QueryStat;

    fn sample(qs: &[(i64, i64, f64, i64)]) -> Sample {
        Sample {
            taken_at: Utc::now(),
            queries: qs
                .iter()
                .map(|&(queryid, calls, total_ms, shared_blks)| QueryStat {
                    queryid,
                    calls,
                    total_ms,
                    shared_blks,
                    first_line: format!("SELECT {queryid}"),
                })
                .collect(),
        }
    }

    fn policy() -> WatchPolicy {
        WatchPolicy {
            after: std::time::Duration::from_secs(60),
            min_calls: 10,
            slower_ratio: 2.0,
            min_increase_ms: 1.0,
        }
    }

    #[test]
    fn a_query_slower_by_the_ratio_in_the_period_after_is_named() {
        // Query 1: 0.05 ms before; 100 calls after at 30 ms each. Query 2
        // unchanged. Query 3 twice as slow but by 0.01 ms: noise.
        let start = sample(&[(1, 1000, 50.0, 4000), (2, 100, 200.0, 100), (3, 100, 1.0, 100)]);
        let end = sample(&[(1, 1010, 50.5, 4040), (2, 110, 220.0, 110), (3, 110, 1.1, 110)]);
        let after = sample(&[(1, 1110, 3050.5, 1_004_040), (2, 210, 420.0, 210), (3, 210, 3.1, 210)]);
        let (queries, slower) = compare(&start, &end, &after, &policy());
        assert_eq!(queries.len(), 3);
        assert_eq!(slower.len(), 1, "{slower:?}");
        let s = &slower[0];
        assert_eq!((s.queryid.as_str(), s.calls_before, s.calls_after), ("1", 1000, 100));
        assert_eq!((s.mean_ms_before, s.mean_ms_after, s.ratio), (0.05, 30.0, 600.0));
        assert_eq!((s.shared_blks_per_call_before, s.shared_blks_per_call_after), (4.0, 10000.0));
    }

    #[test]
    fn too_few_calls_new_queries_and_reset_counters_are_not_compared() {
        let start = sample(&[(1, 5, 5.0, 5), (2, 100, 100.0, 100)]);
        let end = sample(&[(1, 5, 5.0, 5), (2, 100, 100.0, 100)]);
        // 1: too few calls before; 2: counters reset (went down); 4: new.
        let after = sample(&[(1, 500, 5000.0, 5), (2, 50, 5000.0, 50), (4, 500, 5000.0, 5)]);
        let (queries, slower) = compare(&start, &end, &after, &policy());
        assert!(queries.is_empty() && slower.is_empty(), "{queries:?}");
    }
}
