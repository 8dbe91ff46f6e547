//! Rehearsals and approvals in the state store: a rehearsal's row from start
//! to its stored report, the approvals of a plan hash, and reaping the
//! rehearsals whose process died.

use chrono::Utc;
use sqlx::Row;

use super::{RehearsalStatus, State, StateError};
use crate::host::{hostname, process_alive};

/// A finished or running rehearsal, as `status` and approvals read it.
#[derive(Debug, Clone)]
pub struct RehearsalRow {
    pub id: String,
    pub plan_hash: Option<String>,
    pub started_at: String,
    pub finished_at: Option<String>,
    pub status: RehearsalStatus,
}

/// A rehearsal as stored, with its report (null while it runs, or when it
/// could not run: then `error` says why).
#[derive(Debug, Clone, serde::Serialize)]
pub struct RehearsalRecord {
    pub id: String,
    pub target: String,
    pub plan_hash: Option<String>,
    pub snapshot_id: Option<String>,
    pub started_at: String,
    pub finished_at: Option<String>,
    pub status: RehearsalStatus,
    pub error: Option<String>,
    pub report: Option<serde_json::Value>,
}

/// An approval of a plan hash (times RFC 3339, UTC).
#[derive(Debug, Clone, serde::Serialize)]
pub struct ApprovalRow {
    pub id: String,
    pub target: String,
    pub plan_hash: String,
    pub rehearsal_id: String,
    pub approved_by: String,
    pub note: Option<String>,
    pub approved_at: String,
    pub expires_at: String,
}

impl State {
    pub async fn rehearsal_started(&self, id: &str, target: &str) -> Result<(), StateError> {
        sqlx::query(
            "INSERT INTO rehearsals (id, target, started_at, pid, host, status) VALUES (?, ?, ?, ?, ?, 'running')",
        )
        .bind(id)
        .bind(target)
        .bind(Utc::now().to_rfc3339())
        .bind(std::process::id() as i64)
        .bind(hostname())
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// `status` is `passed` or `problems`; `report` the JSON report.
    pub async fn rehearsal_finished(
        &self,
        id: &str,
        plan_hash: &str,
        snapshot_id: &str,
        status: RehearsalStatus,
        report: &str,
    ) -> Result<(), StateError> {
        sqlx::query(
            "UPDATE rehearsals SET finished_at = ?, plan_hash = ?, snapshot_id = ?, status = ?, report = ? WHERE id = ?",
        )
        .bind(Utc::now().to_rfc3339())
        .bind(plan_hash)
        .bind(snapshot_id)
        .bind(status.as_str())
        .bind(report)
        .bind(id)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    pub async fn rehearsal_failed(&self, id: &str, error: &str) -> Result<(), StateError> {
        sqlx::query("UPDATE rehearsals SET finished_at = ?, status = 'error', error = ? WHERE id = ?")
            .bind(Utc::now().to_rfc3339())
            .bind(error)
            .bind(id)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// The newest rehearsal of a target (of one plan, when given).
    pub async fn latest_rehearsal(&self, target: &str, plan: Option<&str>) -> Result<Option<RehearsalRow>, StateError> {
        let row = sqlx::query(
            "SELECT id, plan_hash, started_at, finished_at, status FROM rehearsals
              WHERE target = ? AND (? IS NULL OR plan_hash = ?) ORDER BY started_at DESC, id DESC LIMIT 1",
        )
        .bind(target)
        .bind(plan)
        .bind(plan)
        .fetch_optional(&self.pool)
        .await?;
        Ok(row.map(|r| RehearsalRow {
            id: r.get("id"),
            plan_hash: r.get("plan_hash"),
            started_at: r.get("started_at"),
            finished_at: r.get("finished_at"),
            status: RehearsalStatus::from_stored(&r.get::<String, _>("status")),
        }))
    }

    /// One rehearsal with its stored JSON report (`None` when unknown).
    pub async fn rehearsal_record(&self, id: &str) -> Result<Option<RehearsalRecord>, StateError> {
        let row = sqlx::query(
            "SELECT id, target, plan_hash, snapshot_id, started_at, finished_at, status, error, report
               FROM rehearsals WHERE id = ?",
        )
        .bind(id)
        .fetch_optional(&self.pool)
        .await?;
        Ok(row.map(|r| {
            let report: Option<String> = r.get("report");
            RehearsalRecord {
                id: r.get("id"),
                target: r.get("target"),
                plan_hash: r.get("plan_hash"),
                snapshot_id: r.get("snapshot_id"),
                started_at: r.get("started_at"),
                finished_at: r.get("finished_at"),
                status: RehearsalStatus::from_stored(&r.get::<String, _>("status")),
                error: r.get("error"),
                report: report.and_then(|s| serde_json::from_str(&s).ok()),
            }
        }))
    }

    pub async fn approval_insert(&self, a: &ApprovalRow) -> Result<(), StateError> {
        sqlx::query(
            "INSERT INTO approvals (id, target, plan_hash, rehearsal_id, approved_by, note, approved_at, expires_at)
             VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
        )
        .bind(&a.id)
        .bind(&a.target)
        .bind(&a.plan_hash)
        .bind(&a.rehearsal_id)
        .bind(&a.approved_by)
        .bind(&a.note)
        .bind(&a.approved_at)
        .bind(&a.expires_at)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// The newest approval of a target (of one plan, when given).
    pub async fn latest_approval(&self, target: &str, plan: Option<&str>) -> Result<Option<ApprovalRow>, StateError> {
        let row = sqlx::query(
            "SELECT id, target, plan_hash, rehearsal_id, approved_by, note, approved_at, expires_at FROM approvals
              WHERE target = ? AND (? IS NULL OR plan_hash = ?) ORDER BY approved_at DESC, id DESC LIMIT 1",
        )
        .bind(target)
        .bind(plan)
        .bind(plan)
        .fetch_optional(&self.pool)
        .await?;
        Ok(row.map(|r| ApprovalRow {
            id: r.get("id"),
            target: r.get("target"),
            plan_hash: r.get("plan_hash"),
            rehearsal_id: r.get("rehearsal_id"),
            approved_by: r.get("approved_by"),
            note: r.get("note"),
            approved_at: r.get("approved_at"),
            expires_at: r.get("expires_at"),
        }))
    }

    /// Marks rehearsals of this host whose process died as `error`.
    pub async fn reap_dead_rehearsals(&self) -> Result<(), StateError> {
        let me = hostname();
        let rows = sqlx::query("SELECT id, pid FROM rehearsals WHERE status = 'running' AND host = ?")
            .bind(&me)
            .fetch_all(&self.pool)
            .await?;
        for r in rows {
            let pid = r.get::<i64, _>("pid") as u32;
            if pid != std::process::id() && !process_alive(pid) {
                self.rehearsal_failed(r.get::<String, _>("id").as_str(), "the process running it died").await?;
            }
        }
        Ok(())
    }
}
