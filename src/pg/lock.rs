//! The per-target heavy-job lock: a session-level advisory lock on the live
//! server. Its session holds no open transaction (a held transaction would
//! block `CREATE INDEX CONCURRENTLY` on live), and because the lock lives in
//! PostgreSQL, two pgrehearse processes on different hosts exclude each other.
//!
//! Advisory locks belong to one database, and a release that restores may
//! rename the live database away and another into its place (which needs
//! the live database to have no session at all). So the lock is taken in
//! the live server's maintenance database, `postgres`, through `admin_url`
//! when one is set: it stays held, and means the same, across the swap.

use sha2::{Digest, Sha256};
use sqlx::Connection;
use sqlx::postgres::PgConnection;

use super::{ConnUrl, PgError};
use crate::error_class::{Class, Classify};

/// The advisory-lock key of a target: stable across versions and hosts.
pub fn key(target: &str) -> i64 {
    let digest = Sha256::digest(format!("pgrehearse:heavy:{target}").as_bytes());
    i64::from_be_bytes(digest[..8].try_into().expect("8 bytes"))
}

#[derive(Debug, thiserror::Error)]
pub enum LockError {
    #[error(
        "another heavy job of target `{target}` (snapshot, drill or release) is running{holder}; wait for it to finish"
    )]
    Held { target: String, holder: String },
    #[error(transparent)]
    Pg(#[from] PgError),
}

impl Classify for LockError {
    fn class(&self) -> Class {
        match self {
            LockError::Held { .. } => Class::Refused,
            LockError::Pg(e) => e.class(),
        }
    }

    fn kind(&self) -> &'static str {
        match self {
            LockError::Held { .. } => "lock_held",
            LockError::Pg(e) => e.kind(),
        }
    }
}

/// A held heavy-job lock. Released when dropped (the session closes).
pub struct HeavyLock {
    conn: Option<PgConnection>,
}

impl HeavyLock {
    /// Tries to take the heavy-job lock (see the module doc) of the target
    /// named `target`, on the live server reached through `admin` (the
    /// target's admin URL; its `postgres` database is used), without waiting.
    pub async fn for_target(admin: &ConnUrl, target: &str, job: &str) -> Result<HeavyLock, LockError> {
        HeavyLock::try_acquire(&admin.with_database("postgres"), target, job).await
    }

    /// Tries to take the lock on `target` (a lock key) in the database at
    /// `url` without waiting.
    pub async fn try_acquire(url: &ConnUrl, target: &str, job: &str) -> Result<HeavyLock, LockError> {
        let mut conn = super::connect(url, &format!("pgrehearse-lock-{job}")).await?;
        let got: bool = sqlx::query_scalar("SELECT pg_try_advisory_lock($1)")
            .bind(key(target))
            .fetch_one(&mut conn)
            .await
            .map_err(|source| PgError::Query { url: url.redacted(), source })?;
        if got {
            return Ok(HeavyLock { conn: Some(conn) });
        }
        let holder: Option<String> = sqlx::query_scalar(
            "SELECT format(' (pid %s, %s, since %s)', a.pid, a.application_name, a.backend_start) \
             FROM pg_locks l JOIN pg_stat_activity a USING (pid) \
             WHERE l.locktype = 'advisory' AND l.granted \
               AND ((l.classid::bigint << 32) | l.objid::bigint) = $1 LIMIT 1",
        )
        .bind(key(target))
        .fetch_optional(&mut conn)
        .await
        .ok()
        .flatten();
        Err(LockError::Held { target: target.into(), holder: holder.unwrap_or_default() })
    }

    /// Releases the lock explicitly (dropping also releases it).
    pub async fn release(mut self) {
        if let Some(conn) = self.conn.take() {
            let _ = conn.close().await;
        }
    }
}
