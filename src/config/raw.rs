//! The configuration file exactly as written: serde structs with
//! `deny_unknown_fields` and no interpretation. `config::validate` turns these
//! into a `Config` whose values cannot be wrong.

use std::path::PathBuf;

use serde::Deserialize;

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawConfig {
    pub state_dir: Option<PathBuf>,
    pub stall_timeout: Option<String>,
    #[serde(default)]
    pub store: RawStore,
    #[serde(default)]
    pub snapshot: RawSnapshot,
    pub email: Option<RawEmail>,
    pub api: Option<RawApi>,
    #[serde(default)]
    pub daemon: RawDaemon,
    #[serde(default)]
    pub rehearsal: RawRehearsal,
    #[serde(default)]
    pub targets: Vec<RawTarget>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRehearsal {
    pub strict_column_order: Option<bool>,
    pub probes: Option<bool>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawDaemon {
    pub max_concurrent_jobs: Option<usize>,
    pub poll_interval: Option<String>,
    pub refused_retry_after: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawStore {
    pub kind: Option<String>,
    pub path: Option<PathBuf>,
    pub bucket: Option<String>,
    pub prefix: Option<String>,
    pub endpoint: Option<String>,
    pub region: Option<String>,
    pub force_path_style: Option<bool>,
    pub checksums: Option<String>,
    #[serde(default)]
    pub encrypt_to: Vec<String>,
    pub identity_file: Option<PathBuf>,
    pub access_key_id: Option<String>,
    pub secret_access_key_file: Option<PathBuf>,
    pub upload_concurrency: Option<usize>,
    pub part_size: Option<String>,
    pub max_attempts: Option<u32>,
    pub connect_timeout: Option<String>,
    pub io_timeout: Option<String>,
    pub abort_incomplete_after: Option<String>,
    pub staging_reserve: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawSnapshot {
    pub zstd_level: Option<i32>,
    pub pg_bindir: Option<PathBuf>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawEmail {
    pub transport: Option<String>,
    pub smtp_url: Option<String>,
    pub smtp_password_file: Option<PathBuf>,
    pub dir: Option<PathBuf>,
    pub from: Option<String>,
    #[serde(default)]
    pub to: Vec<String>,
    pub subject_prefix: Option<String>,
    pub timeout: Option<String>,
    pub successes: Option<String>,
    pub digest_every: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawApi {
    pub listen: Option<String>,
    pub token_file: Option<PathBuf>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawTarget {
    pub name: Option<String>,
    pub live_url: Option<String>,
    pub live_url_file: Option<PathBuf>,
    pub shadow_url: Option<String>,
    pub admin_url: Option<String>,
    pub admin_url_file: Option<PathBuf>,
    pub shadow_url_file: Option<PathBuf>,
    pub shadow_on_live_server: Option<bool>,
    pub migrations: Option<RawMigrations>,
    pub snapshot_schedule: Option<String>,
    pub verify_schedule: Option<String>,
    pub rehearse_schedule: Option<String>,
    #[serde(default)]
    pub windows: Vec<RawWindow>,
    pub lock_timeout: Option<String>,
    pub statement_timeout: Option<String>,
    pub on_failure: Option<String>,
    pub retention: Option<RawRetention>,
    pub dump_globals: Option<bool>,
    pub pg_bindir: Option<PathBuf>,
    pub restore_jobs: Option<usize>,
    pub amcheck: Option<bool>,
    #[serde(default)]
    pub checks: Vec<RawCheck>,
    pub restore_no_owner: Option<bool>,
    pub migration_role: Option<String>,
    #[serde(default)]
    pub seeds: Vec<PathBuf>,
    pub approval_max_age: Option<String>,
    pub approval_expires_after: Option<String>,
    pub lint: Option<RawLint>,
    pub queries: Option<RawQueries>,
    pub requires_release_on: Option<String>,
    pub window_safety_factor: Option<f64>,
    pub lock_retries: Option<u32>,
    pub lock_retry_backoff: Option<String>,
    pub max_transaction_age: Option<String>,
    pub fence_writes: Option<bool>,
    pub watch_after: Option<String>,
    pub watch_min_calls: Option<u64>,
    pub watch_slower_ratio: Option<f64>,
    pub watch_min_increase_ms: Option<f64>,
    pub max_queue_wait: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawLint {
    #[serde(default)]
    pub deny: Vec<String>,
    #[serde(default)]
    pub allow: Vec<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawQueries {
    pub file: Option<PathBuf>,
    pub from_live: Option<bool>,
    pub top: Option<u32>,
    pub seq_scan_rows: Option<u64>,
    pub cost_ratio: Option<f64>,
    pub time_ratio: Option<f64>,
    pub runs: Option<u32>,
    #[serde(default)]
    pub accept: Vec<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawMigrations {
    pub kind: Option<String>,
    pub dir: Option<PathBuf>,
    pub table: Option<String>,
    pub apply: Option<String>,
    pub pending: Option<String>,
    pub down: Option<String>,
    pub timeout: Option<String>,
    pub password_in_url: Option<bool>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawCheck {
    pub name: Option<String>,
    pub sql: Option<String>,
    pub expect: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawWindow {
    pub cron: Option<String>,
    pub duration: Option<String>,
    pub timezone: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRetention {
    pub keep_last: Option<u32>,
    pub keep_daily: Option<u32>,
    pub keep_weekly: Option<u32>,
    pub keep_monthly: Option<u32>,
    pub keep_verified_min: Option<u32>,
}
