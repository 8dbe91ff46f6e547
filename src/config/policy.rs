//! The policies of a target that are more than a value: how its releases
//! run (windows, retries, lock budget), the performance watch after one, and
//! how the rehearsal compares the plans of the queries that matter. Parsed
//! and checked by `validate`; re-exported from `config`.

use std::path::PathBuf;
use std::time::Duration;

use serde::Serialize;

use super::humantime_serde_compat;

/// How the performance watch after a release compares live's
/// `pg_stat_statements` (see the `watch` operation).
#[derive(Debug, Clone, Serialize)]
pub struct WatchPolicy {
    /// How long after the release the "after" period runs.
    #[serde(with = "humantime_serde_compat")]
    pub after: Duration,
    /// A query is compared only with at least this many calls before the
    /// release and in the period after.
    pub min_calls: u64,
    /// Mean time after / before at which a query counts as slower.
    pub slower_ratio: f64,
    /// And only if its mean time grew by at least this many milliseconds
    /// (a 0.02 ms query at 0.05 ms is noise, not a regression).
    pub min_increase_ms: f64,
}

/// Release rules of a target beyond its windows and `on_failure`.
#[derive(Debug, Clone, Serialize)]
pub struct ReleasePolicy {
    /// The same migrations must have been released on this target first
    /// (dev → staging → production promotion).
    pub requires_release_on: Option<String>,
    /// A release starts only if (rehearsed apply time + measured snapshot
    /// time) × this factor fits in what remains of the open window.
    pub window_safety_factor: f64,
    /// Retries of a migration (or of the whole single-transaction plan)
    /// that failed on `lock_timeout`.
    pub lock_retries: u32,
    /// First wait before a retry; doubles each time, capped at 30 s.
    #[serde(with = "humantime_serde_compat")]
    pub lock_retry_backoff: Duration,
    /// A transaction on live older than this (or a running pg_dump) makes
    /// preflight refuse: it would block the migrations' locks.
    #[serde(with = "humantime_serde_compat")]
    pub max_transaction_age: Duration,
    /// Put live in a write fence for the part of a release that may end in
    /// a restore (see `release::fence`): other sessions' writes fail there
    /// instead of being stranded in the failed database.
    pub fence_writes: bool,
    /// The lock-queue budget: during `apply`, a session that waited longer
    /// than this behind a lock request of pgrehearse's gets the statement
    /// cancelled and retried (`release::queue_guard`); preflight refuses
    /// while a session holds a lock on the plan's tables in a transaction
    /// older than this. Zero turns both off.
    #[serde(with = "humantime_serde_compat")]
    pub max_queue_wait: Duration,
}

impl Default for ReleasePolicy {
    fn default() -> Self {
        ReleasePolicy {
            requires_release_on: None,
            window_safety_factor: 1.5,
            lock_retries: 5,
            lock_retry_backoff: Duration::from_secs(1),
            max_transaction_age: Duration::from_secs(300),
            fence_writes: false,
            max_queue_wait: Duration::from_millis(500),
        }
    }
}

/// The queries a rehearsal compares before and after the plan (`queries =
/// { … }` of a target; see `rehearsal::queries`).
#[derive(Debug, Clone, Serialize)]
pub struct QueriesConfig {
    /// The project's queries file (`[[query]] id, sql, params`); when not
    /// set, `queries.toml` beside the migrations directory if it exists.
    pub file: Option<PathBuf>,
    /// Read live's `pg_stat_statements` (top `top` by total time) when the
    /// extension is installed there.
    pub from_live: bool,
    pub top: u32,
    /// A sequential scan replacing an index scan is a finding on tables of
    /// at least this many rows.
    pub seq_scan_rows: u64,
    /// Cost (and, for queries with values, median time) growing past these
    /// ratios is a finding.
    pub cost_ratio: f64,
    pub time_ratio: f64,
    /// Timed runs of a query with values (the median is reported).
    pub runs: u32,
    /// Query ids whose findings are accepted (reported, not failing).
    pub accept: Vec<String>,
}

impl Default for QueriesConfig {
    fn default() -> Self {
        QueriesConfig {
            file: None,
            from_live: true,
            top: 20,
            seq_scan_rows: 10_000,
            cost_ratio: 2.0,
            time_ratio: 2.0,
            runs: 5,
            accept: Vec::new(),
        }
    }
}
