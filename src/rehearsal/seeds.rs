//! Seeds: the target's post-migration SQL scripts (`seeds = [...]`), run
//! twice in a rehearsal. Releases may re-run them, so a second run must
//! change nothing: the tables the first run wrote are fingerprinted
//! (order-independent hash of every row) before and after the second run,
//! and any difference is reported as "not idempotent", naming the tables.

use std::collections::BTreeSet;
use std::path::PathBuf;

use serde::Serialize;
use sqlx::{Connection, PgConnection};

use crate::migrations::split;

#[derive(Debug, Clone, Serialize)]
pub struct SeedResult {
    pub file: String,
    pub ok: bool,
    pub idempotent: Option<bool>,
    /// Tables whose content the second run changed.
    pub changed: Vec<String>,
    pub error: Option<String>,
    pub duration_ms: u64,
}

pub async fn run(conn: &mut PgConnection, seeds: &[PathBuf]) -> Vec<SeedResult> {
    let mut out = Vec::new();
    for path in seeds {
        out.push(run_one(conn, path).await);
    }
    out
}

async fn run_one(conn: &mut PgConnection, path: &PathBuf) -> SeedResult {
    let started = std::time::Instant::now();
    let mut result = SeedResult {
        file: path.display().to_string(),
        ok: false,
        idempotent: None,
        changed: Vec::new(),
        error: None,
        duration_ms: 0,
    };
    let sql = match std::fs::read_to_string(path) {
        Ok(s) => s,
        Err(e) => {
            result.error = Some(format!("cannot read the seed file: {e}"));
            return result;
        }
    };
    // First run: commit, remember which tables it wrote.
    let first = execute(conn, &sql).await;
    let written = match first {
        Ok(t) => t,
        Err(e) => {
            result.error = Some(format!("first run failed: {e}"));
            return result;
        }
    };
    let before = match fingerprints(conn, &written).await {
        Ok(f) => f,
        Err(e) => {
            result.error = Some(format!("reading the seeded tables failed: {e}"));
            return result;
        }
    };
    let second = execute(conn, &sql).await;
    let written_again = match second {
        Ok(t) => t,
        Err(e) => {
            result.error = Some(format!("second run failed (a seed must be safe to run again): {e}"));
            result.idempotent = Some(false);
            return result;
        }
    };
    let all: BTreeSet<String> = written.union(&written_again).cloned().collect();
    let after = match fingerprints(conn, &all).await {
        Ok(f) => f,
        Err(e) => {
            result.error = Some(format!("reading the seeded tables failed: {e}"));
            return result;
        }
    };
    result.changed = all.into_iter().filter(|t| before.get(t) != after.get(t)).collect();
    result.idempotent = Some(result.changed.is_empty());
    result.ok = true;
    result.duration_ms = started.elapsed().as_millis() as u64;
    result
}

/// Runs a seed in one transaction; returns the tables it inserted into,
/// updated or deleted from (`pg_stat_xact_user_tables`, read before commit).
async fn execute(conn: &mut PgConnection, sql: &str) -> Result<BTreeSet<String>, String> {
    let mut tx = conn.begin().await.map_err(|e| e.to_string())?;
    for stmt in split::split(sql) {
        sqlx::raw_sql(&stmt.sql).execute(&mut *tx).await.map_err(|e| format!("line {}: {e}", stmt.line))?;
    }
    let tables: Vec<String> = sqlx::query_scalar(
        "SELECT format('%I.%I', schemaname, relname) FROM pg_stat_xact_user_tables
          WHERE n_tup_ins + n_tup_upd + n_tup_del > 0",
    )
    .fetch_all(&mut *tx)
    .await
    .map_err(|e| e.to_string())?;
    tx.commit().await.map_err(|e| e.to_string())?;
    Ok(tables.into_iter().collect())
}

async fn fingerprints(
    conn: &mut PgConnection,
    tables: &BTreeSet<String>,
) -> Result<std::collections::HashMap<String, String>, sqlx::Error> {
    let mut out = std::collections::HashMap::new();
    for t in tables {
        // `t` came from format('%I.%I'), so it is already quoted.
        let hash: Option<String> = sqlx::query_scalar(&format!(
            "SELECT md5(coalesce(string_agg(h, '' ORDER BY h), '')) FROM (SELECT md5(x::text) AS h FROM {t} x) s"
        ))
        .fetch_one(&mut *conn)
        .await?;
        out.insert(t.clone(), hash.unwrap_or_default());
    }
    Ok(out)
}
