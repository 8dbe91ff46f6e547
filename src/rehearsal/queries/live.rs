//! The statements that matter on live: `pg_stat_statements`, top N by total
//! execution time in live's database — read with one `SELECT`, nothing
//! else. Its texts are normalized (constants are `$1`, `$2`…), so they
//! carry no values; only statements that can be explained (`SELECT`,
//! `WITH`, `INSERT`, `UPDATE`, `DELETE`, `TABLE`, `VALUES`) and name no
//! `pg_…` catalog or function (pgrehearse's and pg_dump's own, monitoring)
//! are kept. They are explained on the copy, never run there: a statement
//! of live may do what a rollback does not undo (`nextval`, an advisory
//! lock, a notification).

use sqlx::Row;

use super::file::placeholders;
use super::{Origin, Query};
use crate::conn_url::ConnUrl;

/// Live's top `top` statements, or `Ok(None)` when the extension is not
/// installed in live's database. An error says why it could not be read
/// (not preloaded, not allowed).
pub async fn top(live: &ConnUrl, top: u32) -> Result<Option<Vec<Query>>, String> {
    let mut conn = crate::pg::connect(live, "pgrehearse-queries").await.map_err(|e| e.to_string())?;
    let schema: Option<String> = sqlx::query_scalar(
        "SELECT n.nspname::text FROM pg_extension e JOIN pg_namespace n ON n.oid = e.extnamespace
          WHERE e.extname = 'pg_stat_statements'",
    )
    .fetch_optional(&mut conn)
    .await
    .map_err(|e| e.to_string())?;
    let Some(schema) = schema else { return Ok(None) };
    let schema = format!("\"{}\"", schema.replace('"', "\"\""));
    // Rows of other roles read `<insufficient privilege>` without
    // pg_read_all_stats: they are left out, not compared.
    let rows = sqlx::query(&format!(
        "SELECT queryid::text AS id, query FROM {schema}.pg_stat_statements
          WHERE dbid = (SELECT oid FROM pg_database WHERE datname = current_database())
            AND query ~* '^\\s*(select|with|insert|update|delete|table|values)\\M'
            AND query !~* '\\mpg_|information_schema\\.'
          ORDER BY total_exec_time DESC
          LIMIT $1"
    ))
    .bind(i64::from(top))
    .fetch_all(&mut conn)
    .await
    .map_err(|e| e.to_string())?;
    let mut out = Vec::with_capacity(rows.len());
    for r in rows {
        let id: Option<String> = r.try_get("id").map_err(|e| e.to_string())?;
        let sql: String = r.try_get("query").map_err(|e| e.to_string())?;
        let Some(id) = id else { continue };
        let sql = sql.trim().trim_end_matches(';').trim().to_string();
        out.push(Query {
            id: format!("queryid:{id}"),
            placeholders: placeholders(&sql),
            sql,
            params: None,
            origin: Origin::Live,
        });
    }
    Ok(Some(out))
}
