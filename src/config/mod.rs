//! Configuration in two stages: the TOML file is read into the raw structs of
//! `raw.rs` (unknown keys rejected), then validated in one pass into a
//! [`Config`] whose durations, windows, paths and secrets are resolved. Every
//! error names the file, the line and the key, and all errors are reported at
//! once so an operator fixes the file in one go.

mod locate;
mod policy;
mod raw;
pub mod schedule;
pub mod secret;
mod validate;

#[cfg(test)]
mod fuzz_tests;

use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Serialize;

pub use policy::{QueriesConfig, ReleasePolicy, WatchPolicy};
pub use secret::Secret;

use crate::conn_url::ConnUrl;
use crate::error_class::{Class, Classify};
use crate::lint_rule::LintRule;
use schedule::{Schedule, Window};

/// The validated configuration.
#[derive(Debug, Clone, Serialize)]
pub struct Config {
    pub state_dir: PathBuf,
    /// How long a PostgreSQL server may go without answering a fresh
    /// connection before a job that talks to it is stopped as stalled (see
    /// `pg::stall`); also the client programs' `tcp_user_timeout`.
    #[serde(with = "humantime_serde_compat")]
    pub stall_timeout: Duration,
    pub store: StoreConfig,
    pub snapshot: SnapshotConfig,
    pub email: Option<EmailConfig>,
    pub api: Option<ApiConfig>,
    pub daemon: DaemonConfig,
    pub rehearsal: RehearsalConfig,
    pub targets: Vec<Target>,
}

/// How rehearsals judge what they find (`[rehearsal]`).
#[derive(Debug, Clone, Serialize)]
pub struct RehearsalConfig {
    /// A down that restores every object but leaves re-added columns at the
    /// end of their tables fails the rehearsal (by default it is a note).
    pub strict_column_order: bool,
    /// Probe sessions measure how long the application's reads and writes
    /// would wait while each migration runs (`blocking[]`); on by default.
    pub probes: bool,
}

impl Default for RehearsalConfig {
    fn default() -> Self {
        RehearsalConfig { strict_column_order: false, probes: true }
    }
}

/// How `pgrehearse daemon` runs its jobs.
#[derive(Debug, Clone, Serialize)]
pub struct DaemonConfig {
    /// Jobs of different targets running at once (one target's heavy jobs
    /// never overlap).
    pub max_concurrent_jobs: usize,
    /// How often migration sources are checked for changes and approved
    /// plans for an open window.
    #[serde(with = "humantime_serde_compat")]
    pub poll_interval: Duration,
    /// After preflight refused an approved plan, how long before the daemon
    /// tries it again (a held lock is retried at the next poll).
    #[serde(with = "humantime_serde_compat")]
    pub refused_retry_after: Duration,
}

#[derive(Debug, Clone, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum StoreKind {
    Local { path: PathBuf },
    S3(S3Config),
}

#[derive(Debug, Clone, Serialize)]
pub struct StoreConfig {
    #[serde(flatten)]
    pub kind: StoreKind,
    /// age recipients (`age1…`); empty = no client-side encryption.
    pub encrypt_to: Vec<String>,
    /// age identity file used to decrypt (resolved when needed, not at load:
    /// the identity often lives only on the host that restores).
    pub identity_file: Option<PathBuf>,
    /// Uploads and partial files of dead runs are removed at start-up; ones
    /// we cannot attribute (another host) once older than this.
    #[serde(with = "humantime_serde_compat")]
    pub abort_incomplete_after: Duration,
    /// Free space required in the staging directory beyond a snapshot's
    /// raw size before anything is downloaded.
    pub staging_reserve: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct S3Config {
    pub bucket: String,
    pub prefix: String,
    pub endpoint: Option<String>,
    pub region: String,
    pub force_path_style: bool,
    pub checksums: Checksums,
    pub access_key_id: Option<String>,
    pub secret_access_key: Option<Secret>,
    pub upload_concurrency: usize,
    /// Smallest part size; parts grow with the expected total.
    pub min_part_size: u64,
    pub max_attempts: u32,
    /// Longest wait for a TCP connection to the store.
    pub connect_timeout: Duration,
    /// Longest the store may stay silent: for a reply once a request is
    /// sent, and between two reads of a download (see `store::s3`).
    pub io_timeout: Duration,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Checksums {
    WhenRequired,
    WhenSupported,
}

#[derive(Debug, Clone, Serialize)]
pub struct SnapshotConfig {
    pub zstd_level: i32,
    /// Where pg_dump/pg_restore live; detected when unset.
    pub pg_bindir: Option<PathBuf>,
}

/// Where reports and alerts are mailed (`[email]`).
#[derive(Debug, Clone, Serialize)]
pub struct EmailConfig {
    pub transport: MailTransport,
    /// `smtp://host:port` (plain, or STARTTLS with `?tls=required`) or
    /// `smtps://host:port` (TLS); a user name in it authenticates with
    /// `smtp_password`. Never holds a password (validation refuses one).
    pub smtp_url: Option<String>,
    pub smtp_password: Option<Secret>,
    /// Where `transport = "file"` writes `.eml` files.
    pub dir: PathBuf,
    /// Validated mailboxes (`addr@host` or `Name <addr@host>`).
    pub from: String,
    pub to: Vec<String>,
    /// Put in front of every subject, e.g. `[pgrehearse]`.
    pub subject_prefix: String,
    /// Bound on connecting to the SMTP server and on each of its replies.
    #[serde(with = "humantime_serde_compat")]
    pub timeout: Duration,
    /// What is mailed of the jobs that went well (failures and alerts are
    /// always mailed at once).
    pub successes: SuccessMail,
    /// How often the daemon mails the digest of successes
    /// (`successes = "digest"`).
    #[serde(with = "humantime_serde_compat")]
    pub digest_every: Duration,
}

/// `[email] successes`: what is mailed of a drill or rehearsal that passed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum SuccessMail {
    /// A report per success, at once.
    Each,
    /// One mail every `digest_every` listing the successes since the last
    /// one (the daemon; the CLI mails nothing for a success).
    Digest,
    /// Nothing.
    Never,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum MailTransport {
    Smtp,
    /// `.eml` files in a directory (the default: works with no mail server).
    File,
}

#[derive(Debug, Clone, Serialize)]
pub struct ApiConfig {
    pub listen: std::net::SocketAddr,
    pub token: Option<Secret>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Target {
    pub name: String,
    pub live_url: ConnUrl,
    pub shadow_url: Option<ConnUrl>,
    /// A role on the live server allowed to create and rename databases
    /// (restore, recovery); `live_url` when unset.
    pub admin_url: Option<ConnUrl>,
    pub shadow_on_live_server: bool,
    pub migrations: Option<MigrationsConfig>,
    pub snapshot_schedule: Option<Schedule>,
    pub verify_schedule: Option<Schedule>,
    /// Scheduled rehearsals (besides the one after every change of the
    /// migration source).
    pub rehearse_schedule: Option<Schedule>,
    /// Release windows, parsed (see [`schedule::Window`]).
    pub windows: Vec<Window>,
    #[serde(with = "humantime_serde_compat")]
    pub lock_timeout: Duration,
    #[serde(with = "humantime_serde_compat::option")]
    pub statement_timeout: Option<Duration>,
    pub on_failure: OnFailure,
    pub retention: Retention,
    pub dump_globals: bool,
    pub pg_bindir: Option<PathBuf>,
    /// `pg_restore -j`.
    pub restore_jobs: usize,
    /// Run `pg_amcheck` on restored copies.
    pub amcheck: bool,
    /// User-defined queries run on every restored copy.
    pub checks: Vec<Check>,
    /// `pg_restore --no-owner --no-acl`: `Some(true)` always; unset, only
    /// when live's roles cannot be mirrored on the shadow (see
    /// `shadow::roles`).
    pub restore_no_owner: Option<bool>,
    /// The role the migrations run as (`SET ROLE` on the session, on live
    /// and on the rehearsal's copy alike); unset: `live_url`'s role.
    pub migration_role: Option<String>,
    /// SQL scripts run after the plan (twice in a rehearsal: the second run
    /// must change nothing).
    pub seeds: Vec<PathBuf>,
    pub lint: LintConfig,
    /// The queries whose plans a rehearsal compares before and after the plan.
    pub queries: QueriesConfig,
    /// Only a plan whose passing rehearsal is younger than this can be approved.
    #[serde(with = "humantime_serde_compat")]
    pub approval_max_age: Duration,
    /// How long an approval stays valid.
    #[serde(with = "humantime_serde_compat")]
    pub approval_expires_after: Duration,
    /// How releases of this target run (windows, retries, promotion).
    pub release: ReleasePolicy,
    /// The performance watch after an applied release (`watch_after` set).
    pub watch: Option<WatchPolicy>,
}

/// Lint rules by id (see `pgrehearse rehearse`): `deny` turns a finding into
/// a problem that fails the rehearsal, `allow` silences a rule.
#[derive(Debug, Clone, Default, Serialize)]
pub struct LintConfig {
    pub deny: Vec<LintRule>,
    pub allow: Vec<LintRule>,
}

#[derive(Debug, Clone, Serialize)]
pub struct MigrationsConfig {
    pub kind: MigrationKind,
    pub dir: Option<PathBuf>,
    pub table: Option<String>,
    pub apply: Option<String>,
    pub pending: Option<String>,
    /// `command` kind: reverts what `apply` applied (optional).
    pub down: Option<String>,
    #[serde(with = "humantime_serde_compat")]
    pub timeout: Duration,
    /// `command` kind: put the password inside `DATABASE_URL` too, for a
    /// tool that reads no `PGPASSWORD` (default false: the URL has none).
    pub password_in_url: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MigrationKind {
    Sqlx,
    Diesel,
    Payload,
    Command,
}

impl MigrationKind {
    /// The history table the tool keeps, used to record in each manifest
    /// which migrations were applied at dump time.
    pub fn history_table(self) -> Option<&'static str> {
        match self {
            MigrationKind::Sqlx => Some("_sqlx_migrations"),
            MigrationKind::Diesel => Some("__diesel_schema_migrations"),
            MigrationKind::Payload => Some("payload_migrations"),
            MigrationKind::Command => None,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum OnFailure {
    Restore,
    Down,
    Halt,
}

/// A query whose first column of the first row must equal `expect` (as
/// text) on every restored copy, e.g. "SELECT count(*) > 0 FROM users" →
/// "true".
#[derive(Debug, Clone, Serialize)]
pub struct Check {
    pub name: String,
    pub sql: String,
    pub expect: String,
}

/// How many snapshots to keep; see `store::retention`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Retention {
    pub keep_last: u32,
    pub keep_daily: u32,
    pub keep_weekly: u32,
    pub keep_monthly: u32,
    /// Never prune below this many snapshots that passed a restore drill.
    pub keep_verified_min: u32,
}

impl Default for Retention {
    fn default() -> Self {
        Retention { keep_last: 7, keep_daily: 14, keep_weekly: 8, keep_monthly: 6, keep_verified_min: 1 }
    }
}

/// One configuration problem, located.
#[derive(Debug, Clone, Serialize)]
pub struct Problem {
    pub file: PathBuf,
    pub line: Option<usize>,
    pub column: Option<usize>,
    pub key: String,
    pub message: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.file.display())?;
        if let Some(line) = self.line {
            write!(f, ":{line}")?;
            if let Some(col) = self.column {
                write!(f, ":{col}")?;
            }
        }
        if self.key.is_empty() {
            write!(f, ": {}", self.message)
        } else {
            write!(f, ": key `{}`: {}", self.key, self.message)
        }
    }
}

/// The configuration could not be used. Exit code 78.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read configuration file {path}: {source}; pass another with -c or PGREHEARSE_CONFIG")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("configuration is invalid:\n{}", problems.iter().map(|p| format!("  {p}")).collect::<Vec<_>>().join("\n"))]
    Invalid { problems: Vec<Problem> },
    #[error("no target named `{name}`; the config has: {known}")]
    UnknownTarget { name: String, known: String },
    #[error("the config has {count} targets ({known}); choose one with --target NAME")]
    AmbiguousTarget { count: usize, known: String },
}

impl Classify for ConfigError {
    fn class(&self) -> Class {
        match self {
            ConfigError::Read { .. }
            | ConfigError::Invalid { .. }
            | ConfigError::UnknownTarget { .. }
            | ConfigError::AmbiguousTarget { .. } => Class::Configuration,
        }
    }

    fn kind(&self) -> &'static str {
        match self {
            ConfigError::Read { .. } => "config_unreadable",
            ConfigError::Invalid { .. } => "config_invalid",
            ConfigError::UnknownTarget { .. } => "unknown_target",
            ConfigError::AmbiguousTarget { .. } => "ambiguous_target",
        }
    }
}

impl Target {
    /// The connection used to create and rename databases on the live server.
    pub fn admin(&self) -> &ConnUrl {
        self.admin_url.as_ref().unwrap_or(&self.live_url)
    }
}

impl Config {
    /// Staging for downloads and restores.
    pub fn staging_dir(&self) -> PathBuf {
        self.state_dir.join("staging")
    }

    /// Reads and validates the file; all problems at once.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let bytes = std::fs::read(path).map_err(|source| ConfigError::Read { path: path.to_path_buf(), source })?;
        let src = String::from_utf8(bytes).map_err(|e| ConfigError::Invalid { problems: vec![not_utf8(path, &e)] })?;
        validate::from_source(path, &src).map_err(|problems| ConfigError::Invalid { problems })
    }

    /// The target named by `--target`, or the only one.
    pub fn target(&self, name: Option<&str>) -> Result<&Target, ConfigError> {
        let known = self.targets.iter().map(|t| t.name.as_str()).collect::<Vec<_>>().join(", ");
        match name {
            Some(n) => self
                .targets
                .iter()
                .find(|t| t.name == n)
                .ok_or_else(|| ConfigError::UnknownTarget { name: n.to_string(), known }),
            None if self.targets.len() == 1 => Ok(&self.targets[0]),
            None => Err(ConfigError::AmbiguousTarget { count: self.targets.len(), known }),
        }
    }
}

/// The problem of a config file that is not UTF-8, located at the first bad byte.
fn not_utf8(path: &Path, e: &std::string::FromUtf8Error) -> Problem {
    let bytes = e.as_bytes();
    let at = e.utf8_error().valid_up_to();
    let before = &bytes[..at];
    let line = before.iter().filter(|&&b| b == b'\n').count() + 1;
    let column = at - before.iter().rposition(|&b| b == b'\n').map_or(0, |nl| nl + 1) + 1;
    Problem {
        file: path.to_path_buf(),
        line: Some(line),
        column: Some(column),
        key: String::new(),
        message: format!(
            "byte 0x{:02X} is not UTF-8 (Latin-1 or Windows-1252 text?); TOML files are UTF-8: save it as UTF-8",
            bytes.get(at).copied().unwrap_or_default()
        ),
    }
}

/// Serde helpers printing durations the way they are written (`3s`, `2h`).
mod humantime_serde_compat {
    use std::time::Duration;

    use serde::Serializer;

    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&humantime::format_duration(*d).to_string())
    }

    pub mod option {
        use super::*;
        pub fn serialize<S: Serializer>(d: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
            match d {
                Some(d) => super::serialize(d, s),
                None => s.serialize_none(),
            }
        }
    }
}
