//! Releases in the state store: one row per `apply` (outcome, reason,
//! timings, the migrations run, the recovery taken) and its journal, where
//! every step is written before it is taken. Kept here, never in the live
//! database, because a release may replace that database.

use chrono::Utc;
use serde::Serialize;
use sqlx::Row;

use super::{Outcome, ReleaseErrorKind, State, StateError, Step};
use crate::host::hostname;

/// A release as recorded. JSON columns are kept as values so that readers
/// (the CLI, the daemon's API and reports) see exactly what was written.
#[derive(Debug, Clone, Serialize)]
pub struct ReleaseRow {
    #[serde(rename = "release_id")]
    pub id: String,
    pub target: String,
    #[serde(rename = "plan")]
    pub plan_hash: String,
    pub content_hash: String,
    pub approval_id: Option<String>,
    pub rehearsal_id: Option<String>,
    /// The live database's name.
    pub database: String,
    pub on_failure: String,
    pub outcome: Outcome,
    pub reason: Option<String>,
    pub error_kind: Option<ReleaseErrorKind>,
    pub pre_snapshot_id: Option<String>,
    /// Where the failed database was kept (`restore` recovery).
    pub failed_database: Option<String>,
    /// `restore`, `down`, `halt`, or null when none was needed.
    pub recovery: Option<String>,
    pub started_at: String,
    pub finished_at: Option<String>,
    pub pid: u32,
    pub host: String,
    /// Per migration: status, duration, attempts, error.
    pub migrations: serde_json::Value,
    /// Milliseconds per phase: preflight, snapshot, apply, postcheck, recovery, total.
    pub timings: serde_json::Value,
    /// Post-check findings of an applied release.
    pub warnings: Vec<String>,
    /// The plan's migrations: `[{version, name, checksum, transactional}]`.
    pub pending: serde_json::Value,
    /// Live's `server_version` (e.g. `16.4 (Debian 16.4-1)`), read by
    /// preflight; null for releases refused before that or recorded by
    /// earlier versions.
    pub server_version: Option<String>,
    /// What a restore stranded (`stranded::StrandedWrites` as JSON); null
    /// when no restore happened.
    pub stranded_writes: serde_json::Value,
    /// Live's write counters before the pre-release snapshot
    /// (`stranded::detect::Counters`); internal, not reported.
    #[serde(skip)]
    pub write_counters: serde_json::Value,
}

/// One journaled step.
#[derive(Debug, Clone, Serialize)]
pub struct JournalEntry {
    pub seq: i64,
    pub step: Step,
    pub detail: Option<String>,
    pub at: String,
}

/// What a rehearsal left for the release's post-checks.
#[derive(Debug, Clone, Default)]
pub struct Evidence {
    pub schema_after: Option<String>,
    pub not_valid: Vec<String>,
    pub report: Option<serde_json::Value>,
}

const COLUMNS: &str = "id, target, plan_hash, content_hash, approval_id, rehearsal_id, database, on_failure, outcome, \
    reason, error_kind, pre_snapshot_id, failed_database, recovery, started_at, finished_at, pid, host, migrations, \
    timings, warnings, pending, server_version, stranded_writes, write_counters";

impl State {
    pub async fn release_insert(&self, r: &ReleaseRow) -> Result<(), StateError> {
        sqlx::query(&format!(
            "INSERT INTO releases ({COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
        ))
        .bind(&r.id)
        .bind(&r.target)
        .bind(&r.plan_hash)
        .bind(&r.content_hash)
        .bind(&r.approval_id)
        .bind(&r.rehearsal_id)
        .bind(&r.database)
        .bind(&r.on_failure)
        .bind(r.outcome.as_str())
        .bind(&r.reason)
        .bind(r.error_kind.map(ReleaseErrorKind::as_str))
        .bind(&r.pre_snapshot_id)
        .bind(&r.failed_database)
        .bind(&r.recovery)
        .bind(&r.started_at)
        .bind(&r.finished_at)
        .bind(r.pid as i64)
        .bind(&r.host)
        .bind(r.migrations.to_string())
        .bind(r.timings.to_string())
        .bind(serde_json::to_string(&r.warnings).expect("strings serialize"))
        .bind(r.pending.to_string())
        .bind(&r.server_version)
        .bind(opt_json(&r.stranded_writes))
        .bind(opt_json(&r.write_counters))
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Writes every mutable field of `r` (outcome, reason, snapshot, …).
    pub async fn release_update(&self, r: &ReleaseRow) -> Result<(), StateError> {
        sqlx::query(
            "UPDATE releases SET outcome = ?, reason = ?, error_kind = ?, pre_snapshot_id = ?, failed_database = ?, \
             recovery = ?, finished_at = ?, migrations = ?, timings = ?, warnings = ?, pid = ?, host = ?, \
             server_version = ?, stranded_writes = ?, write_counters = ? WHERE id = ?",
        )
        .bind(r.outcome.as_str())
        .bind(&r.reason)
        .bind(r.error_kind.map(ReleaseErrorKind::as_str))
        .bind(&r.pre_snapshot_id)
        .bind(&r.failed_database)
        .bind(&r.recovery)
        .bind(&r.finished_at)
        .bind(r.migrations.to_string())
        .bind(r.timings.to_string())
        .bind(serde_json::to_string(&r.warnings).expect("strings serialize"))
        .bind(r.pid as i64)
        .bind(&r.host)
        .bind(&r.server_version)
        .bind(opt_json(&r.stranded_writes))
        .bind(opt_json(&r.write_counters))
        .bind(&r.id)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    pub async fn release(&self, id: &str) -> Result<Option<ReleaseRow>, StateError> {
        let row = sqlx::query(&format!("SELECT {COLUMNS} FROM releases WHERE id = ?"))
            .bind(id)
            .fetch_optional(&self.pool)
            .await?;
        Ok(row.map(|r| release_from_row(&r)))
    }

    /// The newest releases of a target first (all targets when `None`).
    pub async fn releases(&self, target: Option<&str>, limit: u32) -> Result<Vec<ReleaseRow>, StateError> {
        let rows = sqlx::query(&format!(
            "SELECT {COLUMNS} FROM releases WHERE (? IS NULL OR target = ?) ORDER BY started_at DESC, id DESC LIMIT ?"
        ))
        .bind(target)
        .bind(target)
        .bind(limit as i64)
        .fetch_all(&self.pool)
        .await?;
        Ok(rows.iter().map(release_from_row).collect())
    }

    /// Releases of a target whose outcome is still `running`, or
    /// `interrupted` (live's server went away during recovery).
    pub async fn unfinished_releases(&self, target: &str) -> Result<Vec<ReleaseRow>, StateError> {
        let rows = sqlx::query(&format!(
            "SELECT {COLUMNS} FROM releases WHERE target = ? AND outcome IN ('running', 'interrupted') ORDER BY started_at"
        ))
        .bind(target)
        .fetch_all(&self.pool)
        .await?;
        Ok(rows.iter().map(release_from_row).collect())
    }

    /// Whether an approval was already spent by a release that got past
    /// preflight (an approval releases a plan once). A release that stopped
    /// before any migration ran (`aborted`) spends nothing.
    pub async fn approval_spent(&self, approval_id: &str) -> Result<Option<String>, StateError> {
        let id: Option<String> = sqlx::query_scalar(
            "SELECT id FROM releases WHERE approval_id = ? AND outcome NOT IN ('refused', 'aborted', 'nothing_pending') ORDER BY started_at LIMIT 1",
        )
        .bind(approval_id)
        .fetch_optional(&self.pool)
        .await?;
        Ok(id)
    }

    /// The `pending` lists of a target's applied releases.
    pub async fn applied_release_contents(&self, target: &str) -> Result<Vec<serde_json::Value>, StateError> {
        let rows: Vec<String> =
            sqlx::query_scalar("SELECT pending FROM releases WHERE target = ? AND outcome = 'applied'")
                .bind(target)
                .fetch_all(&self.pool)
                .await?;
        Ok(rows.iter().filter_map(|s| serde_json::from_str(s).ok()).collect())
    }

    /// Appends a step to a release's journal; returns its sequence number.
    pub async fn journal_append(&self, release: &str, step: Step, detail: Option<&str>) -> Result<i64, StateError> {
        let seq: i64 = sqlx::query_scalar(
            "INSERT INTO release_journal (release_id, seq, step, detail, at) \
             VALUES (?, (SELECT coalesce(max(seq), 0) + 1 FROM release_journal WHERE release_id = ?), ?, ?, ?) \
             RETURNING seq",
        )
        .bind(release)
        .bind(release)
        .bind(step.as_str())
        .bind(detail)
        .bind(Utc::now().to_rfc3339())
        .fetch_one(&self.pool)
        .await?;
        Ok(seq)
    }

    pub async fn journal(&self, release: &str) -> Result<Vec<JournalEntry>, StateError> {
        let rows = sqlx::query("SELECT seq, step, detail, at FROM release_journal WHERE release_id = ? ORDER BY seq")
            .bind(release)
            .fetch_all(&self.pool)
            .await?;
        Ok(rows
            .iter()
            .map(|r| JournalEntry {
                seq: r.get("seq"),
                step: Step::from_stored(r.get::<&str, _>("step")),
                detail: r.get("detail"),
                at: r.get("at"),
            })
            .collect())
    }

    /// Takes over a release for recovery: this process is now its owner.
    pub async fn release_adopt(&self, id: &str) -> Result<(), StateError> {
        sqlx::query("UPDATE releases SET pid = ?, host = ? WHERE id = ?")
            .bind(std::process::id() as i64)
            .bind(hostname())
            .bind(id)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// Keeps what the rehearsal's plan left on its copy (schema, NOT VALID
    /// constraints) for the release's post-checks.
    pub async fn rehearsal_evidence_set(
        &self,
        id: &str,
        schema_after: Option<&str>,
        not_valid: &[String],
    ) -> Result<(), StateError> {
        sqlx::query("UPDATE rehearsals SET schema_after = ?, not_valid = ? WHERE id = ?")
            .bind(schema_after)
            .bind(serde_json::to_string(not_valid).expect("strings serialize"))
            .bind(id)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    pub async fn rehearsal_evidence(&self, id: &str) -> Result<Evidence, StateError> {
        let row = sqlx::query("SELECT schema_after, not_valid, report FROM rehearsals WHERE id = ?")
            .bind(id)
            .fetch_optional(&self.pool)
            .await?;
        let Some(r) = row else { return Ok(Evidence::default()) };
        let not_valid: Option<String> = r.get("not_valid");
        let report: Option<String> = r.get("report");
        Ok(Evidence {
            schema_after: r.get("schema_after"),
            not_valid: not_valid.and_then(|s| serde_json::from_str(&s).ok()).unwrap_or_default(),
            report: report.and_then(|s| serde_json::from_str(&s).ok()),
        })
    }
}

fn release_from_row(r: &sqlx::sqlite::SqliteRow) -> ReleaseRow {
    let json = |col: &str| -> serde_json::Value {
        serde_json::from_str(&r.get::<String, _>(col)).unwrap_or(serde_json::Value::Null)
    };
    let opt_col = |col: &str| -> serde_json::Value {
        r.get::<Option<String>, _>(col).and_then(|s| serde_json::from_str(&s).ok()).unwrap_or(serde_json::Value::Null)
    };
    ReleaseRow {
        id: r.get("id"),
        target: r.get("target"),
        plan_hash: r.get("plan_hash"),
        content_hash: r.get("content_hash"),
        approval_id: r.get("approval_id"),
        rehearsal_id: r.get("rehearsal_id"),
        database: r.get("database"),
        on_failure: r.get("on_failure"),
        outcome: Outcome::from_stored(&r.get::<String, _>("outcome")),
        reason: r.get("reason"),
        error_kind: r.get::<Option<String>, _>("error_kind").as_deref().map(ReleaseErrorKind::from_stored),
        pre_snapshot_id: r.get("pre_snapshot_id"),
        failed_database: r.get("failed_database"),
        recovery: r.get("recovery"),
        started_at: r.get("started_at"),
        finished_at: r.get("finished_at"),
        pid: r.get::<i64, _>("pid") as u32,
        host: r.get("host"),
        migrations: super::releases_compat::upgrade_migrations(json("migrations")),
        timings: json("timings"),
        warnings: serde_json::from_str(&r.get::<String, _>("warnings")).unwrap_or_default(),
        pending: json("pending"),
        server_version: r.get("server_version"),
        stranded_writes: opt_col("stranded_writes"),
        write_counters: opt_col("write_counters"),
    }
}

/// A JSON column that may be NULL: null is stored as NULL.
fn opt_json(v: &serde_json::Value) -> Option<String> {
    (!v.is_null()).then(|| v.to_string())
}
