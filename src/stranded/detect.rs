//! Finding the stranded writes of a restore, while live is offline between
//! the swap's two renames: every table of the kept (failed) database is
//! compared with the restored one by primary key (see `compare`), the
//! release's own writes are left out by their transaction ids, and the
//! stranded rows' keys are written into the kept database (the list the
//! module doc of `stranded` defines) in one transaction, so salvage sees all
//! of it or none.
//!
//! Tables whose write counters (`pg_stat_user_tables`) did not move since
//! the pre-release snapshot were not written and are not read at all; after
//! a statistics reset, or for a table the counters do not know, the table is
//! compared. The finding never fails the restore: [`find`] returns an
//! error inside the result instead.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::Instant;

use serde::{Deserialize, Serialize};
use sqlx::{Connection, PgConnection, Row};

use super::{SCHEMA, StrandedWrites, TableWrites, UnknownTable, compare};
use crate::pg::{self, ConnUrl, PgError};

/// What the release knows about its own writes on live.
#[derive(Debug, Clone, Default)]
pub struct Attribution {
    /// pgrehearse's own transaction ids on live (`pg_current_xact_id`, 64
    /// bits as journaled).
    pub own_xids: Vec<u64>,
    /// The migration tool's history table (`name` or `schema.name`): its
    /// new rows are the plan's, and their `xmin`s are the plan's
    /// transactions too (exact for tools that commit a migration with its
    /// row, as sqlx, diesel and Payload do).
    pub history_table: String,
    /// Set when some of the plan's writes carry no transaction id
    /// pgrehearse knows (statements outside a transaction, an external
    /// `command` tool): every table that differs is then unknown, with this
    /// reason.
    pub unattributed: Option<String>,
    /// Set when the plan may delete rows: a deletion leaves no `xmin` to
    /// attribute, so a table with deleted rows is then unknown.
    pub deletes: Option<String>,
}

/// Live's write counters per table, taken before the pre-release snapshot.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Counters {
    /// `pg_stat_database.stats_reset` of the database (a reset starts the
    /// counters again: then every table is compared).
    pub stats_reset: Option<String>,
    /// `schema.table` (quoted as `%I.%I`) → rows inserted, updated,
    /// deleted, and live (a `TRUNCATE` moves only the last).
    pub tables: BTreeMap<String, Vec<i64>>,
}

/// Reads the write counters of the database `url` points at.
pub async fn counters(url: &ConnUrl) -> Result<Counters, PgError> {
    let mut conn = pg::connect(url, "pgrehearse-stranded").await?;
    read_counters(&mut conn).await.map_err(|source| PgError::Query { url: url.redacted(), source })
}

async fn read_counters(conn: &mut PgConnection) -> Result<Counters, sqlx::Error> {
    let stats_reset: Option<String> =
        sqlx::query_scalar("SELECT stats_reset::text FROM pg_stat_database WHERE datname = current_database()")
            .fetch_optional(&mut *conn)
            .await?
            .flatten();
    let rows = sqlx::query(
        "SELECT format('%I.%I', schemaname, relname) AS rel, \
         ARRAY[n_tup_ins, n_tup_upd, n_tup_del, n_live_tup]::bigint[] AS n FROM pg_stat_user_tables",
    )
    .fetch_all(&mut *conn)
    .await?;
    let tables = rows.iter().map(|r| (r.get::<String, _>("rel"), r.get::<Vec<i64>, _>("n"))).collect();
    Ok(Counters { stats_reset, tables })
}

/// One ordinary table of a database, as the comparison needs it.
struct Table {
    schema: String,
    name: String,
    /// Column names, sorted.
    columns: Vec<String>,
    /// The primary key's columns, in key order; empty without one.
    key: Vec<String>,
}

async fn tables(conn: &mut PgConnection) -> Result<BTreeMap<String, Table>, sqlx::Error> {
    let rows = sqlx::query(&format!(
        "SELECT format('%I.%I', n.nspname, c.relname) AS rel, n.nspname::text AS schema, c.relname::text AS name, \
           ARRAY(SELECT a.attname::text FROM pg_attribute a WHERE a.attrelid = c.oid AND a.attnum > 0 \
                 AND NOT a.attisdropped ORDER BY a.attname::text COLLATE \"C\") AS columns, \
           ARRAY(SELECT a.attname::text FROM pg_index i, unnest(i.indkey::int2[]) WITH ORDINALITY k(attnum, ord), pg_attribute a \
                 WHERE i.indrelid = c.oid AND i.indisprimary AND a.attrelid = c.oid AND a.attnum = k.attnum ORDER BY k.ord) AS key \
         FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
         WHERE c.relkind = 'r' AND c.relpersistence <> 't' AND n.nspname NOT IN ('pg_catalog', 'information_schema', '{SCHEMA}') \
           AND n.nspname NOT LIKE 'pg\\_toast%' AND n.nspname NOT LIKE 'pg\\_temp%'"
    ))
    .fetch_all(&mut *conn)
    .await?;
    Ok(rows
        .into_iter()
        .map(|r| {
            let t =
                Table { schema: r.get("schema"), name: r.get("name"), columns: r.get("columns"), key: r.get("key") };
            (r.get::<String, _>("rel"), t)
        })
        .collect())
}

fn is_history(t: &Table, history: &str) -> bool {
    match history.split_once('.') {
        Some((s, n)) => t.schema == s && t.name == n,
        None => !history.is_empty() && t.name == history,
    }
}

/// Compares the kept database `kept` with the restored `restored` (both on
/// the server of `admin`), writes the list of stranded rows into `kept` and
/// returns what it found. `since`/`until` are the release's snapshot time
/// and the moment live was closed. On any failure the result carries the
/// error and no table (the restore goes on).
pub async fn find(
    admin: &ConnUrl,
    kept: &str,
    restored: &str,
    attribution: &Attribution,
    before: Option<&Counters>,
    since: String,
    until: String,
) -> StrandedWrites {
    let t0 = Instant::now();
    let mut out =
        StrandedWrites { since, until, kept_in: kept.to_string(), tables: vec![], unknown: vec![], error: None };
    match run(admin, kept, restored, attribution, before).await {
        Ok((tables, unknown, compared)) => {
            out.tables = tables;
            out.unknown = unknown;
            tracing::info!(
                kept = %kept, compared, tables = out.tables.len(), rows = out.rows(), unknown = out.unknown.len(),
                elapsed_ms = t0.elapsed().as_millis() as u64,
                "Compared the failed database with the restored one for stranded writes."
            );
        }
        Err(e) => {
            tracing::error!(kept = %kept, error = %e, "Cannot tell which writes the restore stranded; they are all in the kept database.");
            out.error = Some(e.to_string());
        }
    }
    out
}

#[cfg(not(feature = "crash-hooks"))]
fn injected() -> Result<(), sqlx::Error> {
    Ok(())
}

/// Test builds: `PGREHEARSE_FAIL_AT=stranded` makes the finding fail, as an
/// unreadable kept database would.
#[cfg(feature = "crash-hooks")]
fn injected() -> Result<(), sqlx::Error> {
    match std::env::var("PGREHEARSE_FAIL_AT").as_deref() {
        Ok("stranded") => Err(sqlx::Error::Protocol("injected failure (PGREHEARSE_FAIL_AT=stranded)".into())),
        _ => Ok(()),
    }
}

type Found = (Vec<TableWrites>, Vec<UnknownTable>, usize);

async fn run(
    admin: &ConnUrl,
    kept: &str,
    restored: &str,
    attribution: &Attribution,
    before: Option<&Counters>,
) -> Result<Found, PgError> {
    let kept_url = admin.with_database(kept);
    let q = |source| PgError::Query { url: kept_url.redacted(), source };
    let mut k = pg::connect(&kept_url, "pgrehearse-stranded").await?;
    let mut list = pg::connect(&kept_url, "pgrehearse-stranded").await?;
    // The kept database may still carry the write fence (`fence_writes`):
    // its original settings come back only after the swap, and the list
    // is written before.
    sqlx::Executor::execute(&mut list, "SET default_transaction_read_only = off").await.map_err(q)?;
    let restored_url = admin.with_database(restored);
    let mut r = pg::connect(&restored_url, "pgrehearse-stranded").await?;
    injected().map_err(q)?;
    let now = read_counters(&mut k).await.map_err(q)?;
    let kept_tables = tables(&mut k).await.map_err(q)?;
    let restored_tables =
        tables(&mut r).await.map_err(|source| PgError::Query { url: restored_url.redacted(), source })?;
    // A repeated run (after a crash) starts the list again.
    let mut tx = list.begin().await.map_err(q)?;
    for sql in [
        format!("DROP SCHEMA IF EXISTS {SCHEMA} CASCADE"),
        format!("CREATE SCHEMA {SCHEMA}"),
        format!(
            "CREATE TABLE {SCHEMA}.tables (relation text PRIMARY KEY, columns text[] NOT NULL, unknown_reason text)"
        ),
        format!(
            "CREATE TABLE {SCHEMA}.rows (relation text NOT NULL, \
             op text NOT NULL CHECK (op IN ('insert', 'update', 'delete')), key jsonb NOT NULL, before_digest text)"
        ),
    ] {
        sqlx::query(&sql).execute(&mut *tx).await.map_err(q)?;
    }
    let mut own: HashSet<i64> = attribution.own_xids.iter().map(|x| (x % (1 << 32)) as i64).collect();
    // The history table first: its new rows' transactions are the plan's.
    let mut order: Vec<&String> = kept_tables.keys().collect();
    order.sort_by_key(|rel| !is_history(&kept_tables[*rel], &attribution.history_table));
    let (mut found, mut unknown, mut compared) = (Vec::new(), Vec::new(), 0);
    let mut reasons: HashMap<String, String> = HashMap::new();
    for rel in order {
        let t = &kept_tables[rel];
        let old = restored_tables.get(rel);
        if is_history(t, &attribution.history_table) {
            own.extend(history_xmins(&mut k, &mut r, rel, t, old).await.map_err(q)?);
            continue;
        }
        let Some(old) = old else {
            let others = compare::others_rows(&mut k, rel, &own).await.map_err(q)?;
            if others > 0 {
                reasons.insert(
                    rel.clone(),
                    format!(
                        "created by the release, so not in live; {others} of its rows were written by other sessions"
                    ),
                );
            }
            continue;
        };
        let columns: Vec<String> = t.columns.iter().filter(|c| old.columns.contains(c)).cloned().collect();
        let moved = match (before, now.tables.get(rel)) {
            (Some(b), Some(n)) if b.stats_reset == now.stats_reset => b.tables.get(rel) != Some(n),
            _ => true,
        };
        let reason = if !moved {
            None
        } else if old.key.is_empty() {
            Some(format!(
                "no primary key: its rows cannot be matched one to one ({})",
                row_counts(&mut k, &mut r, rel).await.map_err(q)?
            ))
        } else if !old.key.iter().all(|c| columns.contains(c)) {
            Some("the release changed its primary key's columns".to_string())
        } else {
            compared += 1;
            let whole = (columns.len() == t.columns.len(), columns.len() == old.columns.len());
            let d = compare::table(&mut k, &mut r, Some(&mut *tx), rel, &old.key, &columns, whole, &own)
                .await
                .map_err(q)?;
            let differs = d.inserted + d.updated + d.deleted > 0;
            match (&attribution.unattributed, &attribution.deletes) {
                (Some(why), _) if differs => Some(why.clone()),
                (_, Some(why)) if d.deleted > 0 => Some(why.clone()),
                _ => {
                    if differs {
                        found.push(TableWrites {
                            table: rel.clone(),
                            inserted: d.inserted,
                            updated: d.updated,
                            deleted: d.deleted,
                        });
                    }
                    None
                }
            }
        };
        if let Some(why) = &reason {
            // Its rows are not listed: salvage must not put back a guess.
            sqlx::query(&format!("DELETE FROM {SCHEMA}.rows WHERE relation = $1"))
                .bind(rel)
                .execute(&mut *tx)
                .await
                .map_err(q)?;
            reasons.insert(rel.clone(), why.clone());
        }
        sqlx::query(&format!("INSERT INTO {SCHEMA}.tables (relation, columns, unknown_reason) VALUES ($1, $2, $3)"))
            .bind(rel)
            .bind(&columns)
            .bind(reason)
            .execute(&mut *tx)
            .await
            .map_err(q)?;
    }
    for (rel, t) in &restored_tables {
        if !kept_tables.contains_key(rel) && !is_history(t, &attribution.history_table) {
            reasons.insert(
                rel.clone(),
                "dropped or renamed by the release: writes to it after the snapshot are not in the kept database under this name".into(),
            );
        }
    }
    tx.commit().await.map_err(q)?;
    unknown.extend(reasons.into_iter().map(|(table, reason)| UnknownTable { table, reason }));
    unknown.sort_by(|a, b| a.table.cmp(&b.table));
    found.sort_by(|a, b| a.table.cmp(&b.table));
    Ok((found, unknown, compared))
}

/// The transactions that wrote the history table's new rows (the plan's):
/// every row's when the release created the table.
async fn history_xmins(
    k: &mut PgConnection,
    r: &mut PgConnection,
    rel: &str,
    t: &Table,
    old: Option<&Table>,
) -> Result<Vec<i64>, sqlx::Error> {
    let Some(old) = old else {
        return sqlx::query_scalar(&format!("SELECT DISTINCT xmin::text::bigint FROM ONLY {rel}")).fetch_all(k).await;
    };
    let columns: Vec<String> = t.columns.iter().filter(|c| old.columns.contains(c)).cloned().collect();
    if old.key.is_empty() || !old.key.iter().all(|c| columns.contains(c)) {
        return Ok(Vec::new());
    }
    let whole = (columns.len() == t.columns.len(), columns.len() == old.columns.len());
    Ok(compare::table(k, r, None, rel, &old.key, &columns, whole, &HashSet::new()).await?.xmins)
}

async fn row_counts(k: &mut PgConnection, r: &mut PgConnection, rel: &str) -> Result<String, sqlx::Error> {
    let sql = format!("SELECT count(*) FROM ONLY {rel}");
    let now: i64 = sqlx::query_scalar(&sql).fetch_one(k).await?;
    let then: i64 = sqlx::query_scalar(&sql).fetch_one(r).await?;
    Ok(format!("{now} rows in the kept database, {then} in the restored one"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(schema: &str, name: &str) -> Table {
        Table { schema: schema.into(), name: name.into(), columns: vec![], key: vec![] }
    }

    #[test]
    fn the_history_table_is_found_by_bare_or_qualified_name() {
        assert!(is_history(&t("public", "_sqlx_migrations"), "_sqlx_migrations"));
        assert!(is_history(&t("meta", "h"), "meta.h"));
        assert!(!is_history(&t("public", "h"), "meta.h"));
        assert!(!is_history(&t("public", "orders"), ""));
    }
}
