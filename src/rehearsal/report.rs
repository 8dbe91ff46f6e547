//! What a rehearsal hands back: the `Report` (printed by `--json`, kept in the
//! state and object stores) and where the object store keeps it.

use serde::Serialize;

use super::runner::MigrationResult;
use super::{lint, queries, seeds};
use crate::migrations::Drift;

/// The rehearsal report (`--json` prints it; the state and object stores keep it).
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub id: String,
    pub target: String,
    /// The plan hash: what an approval names.
    pub plan: String,
    pub ok: bool,
    /// `pass` or `problems`.
    pub verdict: &'static str,
    pub problems: Vec<String>,
    pub warnings: Vec<String>,
    pub snapshot_id: String,
    pub snapshot_taken_at: String,
    /// Why this rehearsal took a fresh snapshot of live by itself instead of
    /// using the newest one (none yet, or a Payload project's newest
    /// snapshot predates live's history); null when it used an existing one
    /// or `--snapshot fresh` asked for one.
    pub fresh_snapshot: Option<String>,
    /// `template_clone` or `restore`.
    pub method: &'static str,
    pub restore_duration_ms: u64,
    pub database: String,
    /// The shadow server's `server_version` (e.g. `16.4 (Debian 16.4-1)`):
    /// what the plan ran on.
    pub server_version: String,
    pub kept: bool,
    pub started_at: String,
    pub finished_at: String,
    pub duration_ms: u64,
    /// Wall time of the plan itself, measurement included.
    pub apply_ms: u64,
    /// How long the reversibility check took (absent when it did not run).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reverse_ms: Option<u64>,
    /// `single_transaction`, `per_migration` or the external tool's name.
    pub mode: String,
    /// The role the migrations ran as on the copy: live's role mirrored on
    /// the shadow, or the shadow's own role when it could not be mirrored
    /// (then `warnings` say what was not).
    pub role: String,
    /// The role live's migrations run as (`current_user` of `live_url`,
    /// after `SET ROLE migration_role`).
    pub live_role: String,
    pub lock_timeout_ms: u64,
    /// Migrations live applied after the snapshot, replayed (unmeasured)
    /// before the plan.
    pub catch_up: Vec<String>,
    pub drift: Vec<Drift>,
    pub migrations: Vec<MigrationResult>,
    /// True when every migration of the plan reverts cleanly (false when one
    /// has no down or its down failed; see each migration); null when not
    /// checked.
    pub reversible: Option<bool>,
    pub reversibility_ignored: &'static str,
    pub lint: Vec<lint::Finding>,
    pub seeds: Vec<seeds::SeedResult>,
    /// The queries that matter (live's `pg_stat_statements`, the queries
    /// file), their plans before and after the plan, and findings.
    pub queries: Vec<queries::QueryResult>,
    /// How long comparing the queries took (absent when there were none).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub queries_ms: Option<u64>,
    pub notes: Vec<String>,
    /// The command that approves this plan.
    pub approve: String,
    /// The copy's schema right after the plan (owners and privileges left
    /// out), for the release's post-check; kept in the state store only.
    #[serde(skip)]
    pub schema_after: Option<String>,
    /// NOT VALID constraints right after the plan (intended by it).
    #[serde(skip)]
    pub not_valid: Vec<String>,
}

/// The object-store key of a rehearsal's report (`report.json`, `report.md`).
pub fn report_key(target: &str, id: &str, file: &str) -> String {
    format!("{target}/rehearsals/{id}/{file}")
}
