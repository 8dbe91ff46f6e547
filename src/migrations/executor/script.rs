//! One migration's up (again) or down on its own, with its history row
//! fixed as the tool would: what the rehearsal's reversibility walk and a
//! release's `on_failure = "down"` run.

use std::time::{Duration, Instant};

use sqlx::{Connection, PgConnection};

use super::{Executor, excerpt};
use crate::migrations::{self, Change, Down, Migration, split};

/// Which script of a migration runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    Up,
    Down,
}

impl Executor<'_> {
    /// Runs `m`'s up or down SQL on `conn`, in a transaction when the
    /// script is transactional, then fixes the history as the tool would.
    /// No retries. Errors name the line and statement.
    pub async fn script(
        &self,
        conn: &mut PgConnection,
        m: &Migration,
        direction: Direction,
    ) -> Result<Duration, String> {
        let (sql, transactional) = match (&m.down, direction) {
            (_, Direction::Up) => (m.up_sql.as_str(), m.transactional),
            (Down::Sql { sql, transactional, .. }, Direction::Down) => (sql.as_str(), *transactional),
            (_, Direction::Down) => return Err(format!("migration {} has no down script", m.version)),
        };
        let started = Instant::now();
        let change = |took| if direction == Direction::Down { Change::Reverted } else { Change::Applied(took) };
        let (kind, table) = (self.kind, self.table);
        if transactional {
            let mut tx = conn.begin().await.map_err(|e| e.to_string())?;
            execute_all(&mut tx, sql).await?;
            migrations::record(&mut tx, kind, table, m, change(started.elapsed())).await.map_err(|e| e.to_string())?;
            tx.commit().await.map_err(|e| e.to_string())?;
        } else {
            execute_all(conn, sql).await?;
            migrations::record(conn, kind, table, m, change(started.elapsed())).await.map_err(|e| e.to_string())?;
        }
        Ok(started.elapsed())
    }
}

async fn execute_all(conn: &mut PgConnection, sql: &str) -> Result<(), String> {
    for stmt in split::split(sql) {
        sqlx::raw_sql(&stmt.sql)
            .execute(&mut *conn)
            .await
            .map_err(|e| format!("line {}: {}: {e}", stmt.line, excerpt(&stmt.sql)))?;
    }
    Ok(())
}
