//! Everything that talks to PostgreSQL: sessions (URLs are `conn_url`), the
//! client programs (pg_dump, pg_dumpall, pg_restore), the per-target
//! advisory lock that keeps heavy jobs from overlapping, and the watchdog
//! for servers that stall (`stall`).

mod diagnostic;
pub mod lock;
pub mod sequences;
pub mod stall;
pub mod stat_statements;
pub mod tools;

pub use diagnostic::{Diagnostic, explain};

use sqlx::postgres::PgConnection;
use sqlx::{Connection, Row};

pub use crate::conn_url::ConnUrl;

use crate::error_class::{Class, Classify};

#[derive(Debug, thiserror::Error)]
pub enum PgError {
    #[error(
        "cannot connect to {url}: {}; check that the server runs and that the URL, role and password are right",
        explain(.source)
    )]
    Connect { url: String, source: sqlx::Error },
    #[error(
        "query on {url} failed: {}; if the server went away, retry once it is back; if the role lacks a privilege, grant it (the README's deployment walkthrough lists the grants pgrehearse needs)",
        explain(.source)
    )]
    Query { url: String, source: sqlx::Error },
    #[error(
        "cannot connect to {url}: the server stalled, it finished no session handshake within {}s (stall_timeout); check the server and the network between (a proxy or firewall holding the connection), then retry",
        .after.as_secs()
    )]
    Stalled { url: String, after: std::time::Duration },
}

impl PgError {
    /// The server answered but refused who we are or what we asked for
    /// (wrong password, no such role or database): the configuration is
    /// wrong, not the server down.
    pub fn is_config(&self) -> bool {
        let (PgError::Connect { source, .. } | PgError::Query { source, .. }) = self else { return false };
        matches!(source, sqlx::Error::Database(db) if matches!(db.code().as_deref(), Some("28P01" | "28000" | "3D000")))
    }

    /// Connection failures are a dependency being unavailable (exit 69).
    pub fn is_unavailable(&self) -> bool {
        match self {
            PgError::Connect { .. } | PgError::Stalled { .. } => true,
            PgError::Query { source, .. } => matches!(source, sqlx::Error::Io(_) | sqlx::Error::PoolTimedOut),
        }
    }
}

impl Classify for PgError {
    fn class(&self) -> Class {
        if self.is_config() {
            Class::Configuration
        } else if self.is_unavailable() {
            Class::Unavailable
        } else {
            Class::Failed
        }
    }

    fn kind(&self) -> &'static str {
        if self.is_config() {
            "pg_rejected"
        } else if matches!(self, PgError::Stalled { .. }) {
            "pg_stalled"
        } else if self.is_unavailable() {
            "pg_unreachable"
        } else {
            "pg_query_failed"
        }
    }
}

/// Opens a session; `application_name` makes it visible in pg_stat_activity.
/// A server that does not finish the handshake within `stall_timeout`
/// (see [`stall`]) fails it with [`PgError::Stalled`].
pub async fn connect(url: &ConnUrl, application_name: &str) -> Result<PgConnection, PgError> {
    let opts =
        url.connect_options(application_name).map_err(|source| PgError::Connect { url: url.redacted(), source })?;
    let after = stall::timeout();
    match tokio::time::timeout(after, PgConnection::connect_with(&opts)).await {
        Ok(c) => c.map_err(|source| PgError::Connect { url: url.redacted(), source }),
        Err(_) => Err(PgError::Stalled { url: url.redacted(), after }),
    }
}

/// Facts about a server and database, read once per job.
#[derive(Debug, Clone)]
pub struct ServerInfo {
    /// `server_version_num`, e.g. 150004.
    pub version_num: u32,
    /// `server_version`, e.g. "15.4 (Debian 15.4-1)".
    pub version: String,
    pub database: String,
    pub database_size: u64,
    /// `pg_control_system().system_identifier`: the same cluster whatever the
    /// host name it is reached by.
    pub system_identifier: String,
}

impl ServerInfo {
    pub fn major(&self) -> u32 {
        self.version_num / 10000
    }
}

pub async fn server_info(conn: &mut PgConnection, url: &ConnUrl) -> Result<ServerInfo, PgError> {
    let row = sqlx::query(
        "SELECT current_setting('server_version_num')::int4 AS num, current_setting('server_version') AS ver, \
         current_database() AS db, pg_database_size(current_database()) AS size, \
         (SELECT system_identifier::text FROM pg_control_system()) AS sysid",
    )
    .fetch_one(&mut *conn)
    .await
    .map_err(|source| PgError::Query { url: url.redacted(), source })?;
    Ok(ServerInfo {
        version_num: row.get::<i32, _>("num") as u32,
        version: row.get("ver"),
        database: row.get("db"),
        database_size: row.get::<i64, _>("size").max(0) as u64,
        system_identifier: row.get("sysid"),
    })
}

/// Quotes an identifier for SQL text.
pub fn quote_ident(s: &str) -> String {
    format!("\"{}\"", s.replace('"', "\"\""))
}

/// Constraints not yet validated (`NOT VALID`), as `schema.table.constraint`.
pub async fn not_valid_constraints(conn: &mut PgConnection) -> Result<Vec<String>, sqlx::Error> {
    sqlx::query_scalar(
        "SELECT format('%s.%s.%s', n.nspname, c.relname, k.conname) FROM pg_constraint k \
         JOIN pg_class c ON c.oid = k.conrelid JOIN pg_namespace n ON n.oid = c.relnamespace \
         WHERE NOT k.convalidated ORDER BY 1",
    )
    .fetch_all(&mut *conn)
    .await
}

/// Indexes marked invalid (a failed or interrupted concurrent build), as
/// `schema.index`.
pub async fn invalid_indexes(conn: &mut PgConnection) -> Result<Vec<String>, sqlx::Error> {
    sqlx::query_scalar(
        "SELECT format('%s.%s', n.nspname, c.relname) FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid \
         JOIN pg_namespace n ON n.oid = c.relnamespace WHERE NOT i.indisvalid ORDER BY 1",
    )
    .fetch_all(&mut *conn)
    .await
}
