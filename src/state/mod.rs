//! The daemon's own state: a SQLite file under `state_dir`, schema from
//! `migrations/` (applied on open). It lives outside the live database on
//! purpose: pgrehearse may restore that database, and must still remember
//! what it did: snapshot runs, shadow databases, drills, rehearsals,
//! approvals, and releases with their journal (`releases.rs`).

mod journal_step;
mod rehearsals;
mod release_outcome;
mod releases;
mod releases_compat;
mod status;
mod watches;

pub use journal_step::Step;
pub use rehearsals::{ApprovalRow, RehearsalRow};
pub use release_outcome::{Outcome, ReleaseErrorKind};
pub use releases::{Evidence, JournalEntry, ReleaseRow};
pub use status::{RehearsalStatus, RunStatus};
pub use watches::{WatchRow, WatchStatus};

use std::path::Path;
use std::str::FromStr;
use std::time::Duration;

use crate::error_class::{Class, Classify};
use crate::host::{hostname, process_alive};
use chrono::{DateTime, Utc};
use sqlx::Row;
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous};

#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("cannot create the state directory {path}: {source}; check state_dir and its permissions")]
    Dir { path: String, source: std::io::Error },
    #[error(
        "cannot open the state store {path}: {source}; check that state_dir is on a local disk pgrehearse may write to, with free space"
    )]
    Open { path: String, source: sqlx::Error },
    #[error("cannot migrate the state store {path}: {source}; was it written by a newer pgrehearse?")]
    Migrate { path: String, source: sqlx::migrate::MigrateError },
    #[error(
        "state store query failed: {0}; check that state_dir has free space and that its SQLite file is intact (sqlite3 FILE 'PRAGMA integrity_check')"
    )]
    Query(#[from] sqlx::Error),
}

impl Classify for StateError {
    fn class(&self) -> Class {
        match self {
            StateError::Dir { .. } | StateError::Open { .. } | StateError::Migrate { .. } | StateError::Query(_) => {
                Class::Failed
            }
        }
    }

    fn kind(&self) -> &'static str {
        match self {
            StateError::Dir { .. } => "state_dir_unusable",
            StateError::Open { .. } => "state_open_failed",
            StateError::Migrate { .. } => "state_migrate_failed",
            StateError::Query(_) => "state_query_failed",
        }
    }
}

/// One recorded snapshot run.
#[derive(Debug, Clone)]
pub struct SnapshotRun {
    pub id: String,
    pub target: String,
    pub status: RunStatus,
    pub started_at: DateTime<Utc>,
    pub pid: u32,
    pub host: String,
    pub error: Option<String>,
}

/// The figures of a successful run.
#[derive(Debug, Clone)]
pub struct RunResult {
    pub dump_key: String,
    pub bytes_raw: u64,
    pub bytes_stored: u64,
    pub sha256: String,
    pub duration_ms: u64,
}

/// Handle on the state file. Cheap to clone.
#[derive(Clone)]
pub struct State {
    pool: SqlitePool,
}

impl State {
    /// Opens (creating if needed) the state file and applies pending schema
    /// migrations.
    pub async fn open(state_dir: &Path) -> Result<State, StateError> {
        std::fs::create_dir_all(state_dir)
            .map_err(|source| StateError::Dir { path: state_dir.display().to_string(), source })?;
        let file = state_dir.join("state.sqlite");
        let path = file.display().to_string();
        let opts = SqliteConnectOptions::from_str(&format!("sqlite://{path}"))
            .map_err(|source| StateError::Open { path: path.clone(), source })?
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Normal)
            .busy_timeout(Duration::from_secs(30));
        let pool = SqlitePoolOptions::new()
            .max_connections(4)
            .connect_with(opts)
            .await
            .map_err(|source| StateError::Open { path: path.clone(), source })?;
        sqlx::migrate!("./migrations").run(&pool).await.map_err(|source| StateError::Migrate { path, source })?;
        Ok(State { pool })
    }

    /// Records a run as started by this process.
    pub async fn snapshot_started(
        &self,
        id: &str,
        target: &str,
        reason: &str,
        started_at: DateTime<Utc>,
    ) -> Result<(), StateError> {
        sqlx::query(
            "INSERT INTO snapshot_runs (id, target, reason, status, started_at, pid, host) VALUES (?, ?, ?, 'running', ?, ?, ?)",
        )
        .bind(id)
        .bind(target)
        .bind(reason)
        .bind(started_at.to_rfc3339())
        .bind(std::process::id() as i64)
        .bind(hostname())
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    pub async fn snapshot_succeeded(&self, id: &str, r: &RunResult) -> Result<(), StateError> {
        sqlx::query(
            "UPDATE snapshot_runs SET status = 'ok', finished_at = ?, dump_key = ?, bytes_raw = ?, bytes_stored = ?, sha256 = ?, duration_ms = ? WHERE id = ?",
        )
        .bind(Utc::now().to_rfc3339())
        .bind(&r.dump_key)
        .bind(r.bytes_raw as i64)
        .bind(r.bytes_stored as i64)
        .bind(&r.sha256)
        .bind(r.duration_ms as i64)
        .bind(id)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    pub async fn snapshot_failed(&self, id: &str, error: &str) -> Result<(), StateError> {
        sqlx::query("UPDATE snapshot_runs SET status = 'failed', finished_at = ?, error = ? WHERE id = ?")
            .bind(Utc::now().to_rfc3339())
            .bind(error)
            .bind(id)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// Removes the record of a run that never started its work (refused
    /// because another heavy job of the target held the lock).
    pub async fn snapshot_forget(&self, id: &str) -> Result<(), StateError> {
        sqlx::query("DELETE FROM snapshot_runs WHERE id = ? AND status = 'running'")
            .bind(id)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// Marks runs of this host that say `running` but whose process is gone
    /// (killed, crashed, host rebooted) as failed, and returns their ids.
    pub async fn reap_dead_runs(&self) -> Result<Vec<String>, StateError> {
        let host = hostname();
        let rows = sqlx::query("SELECT id, pid FROM snapshot_runs WHERE status = 'running' AND host = ?")
            .bind(&host)
            .fetch_all(&self.pool)
            .await?;
        let mut dead = Vec::new();
        for row in rows {
            let id: String = row.get("id");
            let pid: i64 = row.get("pid");
            if pid as u32 != std::process::id() && !process_alive(pid as u32) {
                self.snapshot_failed(&id, "the process taking this snapshot died before it finished").await?;
                dead.push(id);
            }
        }
        Ok(dead)
    }

    pub async fn snapshot_run(&self, id: &str) -> Result<Option<SnapshotRun>, StateError> {
        let row = sqlx::query("SELECT * FROM snapshot_runs WHERE id = ?").bind(id).fetch_optional(&self.pool).await?;
        Ok(row.map(|r| run_from_row(&r)))
    }

    /// The most recently started run of a target.
    pub async fn latest_snapshot_run(&self, target: &str) -> Result<Option<SnapshotRun>, StateError> {
        let row =
            sqlx::query("SELECT * FROM snapshot_runs WHERE target = ? ORDER BY started_at DESC, rowid DESC LIMIT 1")
                .bind(target)
                .fetch_optional(&self.pool)
                .await?;
        Ok(row.map(|r| run_from_row(&r)))
    }

    /// The raw dump size of the target's newest successful snapshot (the
    /// estimate a new snapshot's progress is shown against).
    pub async fn last_snapshot_bytes_raw(&self, target: &str) -> Result<Option<u64>, StateError> {
        let raw: Option<Option<i64>> = sqlx::query_scalar(
            "SELECT bytes_raw FROM snapshot_runs WHERE target = ? AND status = 'ok' ORDER BY started_at DESC, rowid DESC LIMIT 1",
        )
        .bind(target)
        .fetch_optional(&self.pool)
        .await?;
        Ok(raw.flatten().map(|b| b.max(0) as u64))
    }
}

/// A database pgrehearse created on a shadow server.
#[derive(Debug, Clone)]
pub struct ShadowDb {
    pub name: String,
    pub kind: String,
    pub snapshot_id: Option<String>,
    pub pid: u32,
    pub host: String,
}

/// The outcome of a restore drill.
#[derive(Debug, Clone)]
pub struct Verification {
    pub ok: bool,
    pub method: Option<String>,
    pub restore_duration_ms: Option<u64>,
    pub tables_checked: usize,
    pub mismatches: Vec<String>,
}

impl State {
    /// Records a database before it is created, so that a crash between the
    /// two never leaves a database we do not know we own.
    pub async fn shadow_db_planned(
        &self,
        target: &str,
        name: &str,
        kind: &str,
        snapshot_id: Option<&str>,
    ) -> Result<(), StateError> {
        sqlx::query(
            "INSERT OR REPLACE INTO shadow_databases (name, target, kind, snapshot_id, pid, host, created_at) VALUES (?, ?, ?, ?, ?, ?, ?)",
        )
        .bind(name)
        .bind(target)
        .bind(kind)
        .bind(snapshot_id)
        .bind(std::process::id() as i64)
        .bind(hostname())
        .bind(Utc::now().to_rfc3339())
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    pub async fn shadow_db_dropped(&self, target: &str, name: &str) -> Result<(), StateError> {
        sqlx::query("DELETE FROM shadow_databases WHERE target = ? AND name = ?")
            .bind(target)
            .bind(name)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    pub async fn shadow_dbs(&self, target: &str) -> Result<Vec<ShadowDb>, StateError> {
        let rows = sqlx::query("SELECT name, kind, snapshot_id, pid, host FROM shadow_databases WHERE target = ?")
            .bind(target)
            .fetch_all(&self.pool)
            .await?;
        Ok(rows
            .into_iter()
            .map(|r| ShadowDb {
                name: r.get("name"),
                kind: r.get("kind"),
                snapshot_id: r.get("snapshot_id"),
                pid: r.get::<i64, _>("pid") as u32,
                host: r.get("host"),
            })
            .collect())
    }

    pub async fn verification_started(&self, id: &str, target: &str, snapshot_id: &str) -> Result<(), StateError> {
        sqlx::query("INSERT INTO verifications (id, target, snapshot_id, started_at) VALUES (?, ?, ?, ?)")
            .bind(id)
            .bind(target)
            .bind(snapshot_id)
            .bind(Utc::now().to_rfc3339())
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    pub async fn verification_finished(&self, id: &str, v: &Verification) -> Result<(), StateError> {
        sqlx::query(
            "UPDATE verifications SET finished_at = ?, ok = ?, method = ?, restore_duration_ms = ?, tables_checked = ?, mismatches = ? WHERE id = ?",
        )
        .bind(Utc::now().to_rfc3339())
        .bind(v.ok)
        .bind(&v.method)
        .bind(v.restore_duration_ms.map(|ms| ms as i64))
        .bind(v.tables_checked as i64)
        .bind(serde_json::to_string(&v.mismatches).expect("strings serialize"))
        .bind(id)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    pub async fn verification_failed(&self, id: &str, error: &str) -> Result<(), StateError> {
        sqlx::query("UPDATE verifications SET finished_at = ?, ok = 0, error = ? WHERE id = ?")
            .bind(Utc::now().to_rfc3339())
            .bind(error)
            .bind(id)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// Checksums recorded for applied migrations; records `current` ones not
    /// seen before (first sight is the baseline).
    pub async fn applied_checksums(
        &self,
        target: &str,
        current: &[(String, String)],
    ) -> Result<std::collections::HashMap<String, String>, StateError> {
        for (version, checksum) in current {
            sqlx::query(
                "INSERT INTO applied_checksums (target, version, checksum, first_seen) VALUES (?, ?, ?, ?)
                 ON CONFLICT (target, version) DO NOTHING",
            )
            .bind(target)
            .bind(version)
            .bind(checksum)
            .bind(Utc::now().to_rfc3339())
            .execute(&self.pool)
            .await?;
        }
        let rows = sqlx::query("SELECT version, checksum FROM applied_checksums WHERE target = ?")
            .bind(target)
            .fetch_all(&self.pool)
            .await?;
        Ok(rows.iter().map(|r| (r.get("version"), r.get("checksum"))).collect())
    }
}

fn run_from_row(r: &sqlx::sqlite::SqliteRow) -> SnapshotRun {
    let started: String = r.get("started_at");
    SnapshotRun {
        id: r.get("id"),
        target: r.get("target"),
        status: RunStatus::parse(r.get::<String, _>("status").as_str()),
        started_at: DateTime::parse_from_rfc3339(&started).map(|d| d.with_timezone(&Utc)).unwrap_or_default(),
        pid: r.get::<i64, _>("pid") as u32,
        host: r.get("host"),
        error: r.get("error"),
    }
}
