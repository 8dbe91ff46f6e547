//! Samples of live's `pg_stat_statements`, for the performance watch after
//! a release. Read-only: the view is read, never reset (a reset would take
//! every other reader's history away). A sample keeps, per query id in the
//! connected database, the cumulative calls, execution time and shared
//! buffers touched, and the normalized statement's first line (constants
//! are `$n` there, so no value is kept). Utility statements (DDL, `SET`,
//! `ALTER ROLE … PASSWORD`) are left out: their text is not normalized and
//! may hold secrets, and the watch compares the application's queries.

use serde::{Deserialize, Serialize};
use sqlx::Row;

use super::{ConnUrl, PgError};

/// Statements kept per sample, by total execution time.
const MAX_QUERIES: i64 = 1000;
/// Characters of a statement's first line kept.
const FIRST_LINE_CHARS: usize = 120;

/// One query id's cumulative counters (summed over roles).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct QueryStat {
    pub queryid: i64,
    pub calls: i64,
    pub total_ms: f64,
    /// `shared_blks_hit + shared_blks_read`.
    pub shared_blks: i64,
    pub first_line: String,
}

/// The counters of every kept query at one moment.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Sample {
    pub taken_at: chrono::DateTime<chrono::Utc>,
    pub queries: Vec<QueryStat>,
}

impl Sample {
    pub fn get(&self, queryid: i64) -> Option<&QueryStat> {
        self.queries.iter().find(|q| q.queryid == queryid)
    }
}

/// A sample of `url`'s database, or why there is none (the extension is
/// not created in the database, or not in `shared_preload_libraries`).
pub async fn sample(url: &ConnUrl) -> Result<Result<Sample, String>, PgError> {
    let mut conn = super::connect(url, "pgrehearse-watch").await?;
    let q = |source| PgError::Query { url: url.redacted(), source };
    let schema: Option<String> = sqlx::query_scalar(
        "SELECT n.nspname::text FROM pg_extension e JOIN pg_namespace n ON n.oid = e.extnamespace \
         WHERE e.extname = 'pg_stat_statements'",
    )
    .fetch_optional(&mut conn)
    .await
    .map_err(q)?;
    let Some(schema) = schema else {
        return Ok(Err(format!(
            "pg_stat_statements is not installed in database {} (CREATE EXTENSION pg_stat_statements, with the \
             library in shared_preload_libraries)",
            url.database()
        )));
    };
    let sql = format!(
        "SELECT queryid, sum(calls)::int8 AS calls, sum(total_exec_time)::float8 AS total_ms, \
         sum(shared_blks_hit + shared_blks_read)::int8 AS shared_blks, min(split_part(query, E'\\n', 1)) AS first_line \
         FROM {}.pg_stat_statements \
         WHERE dbid = (SELECT oid FROM pg_database WHERE datname = current_database()) AND queryid IS NOT NULL \
           AND query ~* '^\\s*(select|insert|update|delete|with|merge|values|table)\\M' \
         GROUP BY queryid ORDER BY 3 DESC LIMIT {MAX_QUERIES}",
        super::quote_ident(&schema)
    );
    let rows = match sqlx::query(&sql).fetch_all(&mut conn).await {
        Ok(rows) => rows,
        // 55000: "pg_stat_statements must be loaded via shared_preload_libraries".
        Err(sqlx::Error::Database(db)) if db.code().as_deref() == Some("55000") => {
            return Ok(Err(format!("pg_stat_statements is not usable on live: {}", db.message())));
        }
        Err(e) => return Err(q(e)),
    };
    let queries = rows
        .iter()
        .map(|r| QueryStat {
            queryid: r.get("queryid"),
            calls: r.get("calls"),
            total_ms: r.get("total_ms"),
            shared_blks: r.get("shared_blks"),
            first_line: r.get::<String, _>("first_line").chars().take(FIRST_LINE_CHARS).collect(),
        })
        .collect();
    Ok(Ok(Sample { taken_at: chrono::Utc::now(), queries }))
}
