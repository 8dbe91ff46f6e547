//! Reading a kept database's list of stranded rows (the contract of
//! [`crate::stranded`]) and planning every row against live: what live's
//! schema still holds, and whether live's row is still as the restore left
//! it. Values are never quoted here: the server quotes them
//! (`format('%L', …)`) and the SQL carries them as JSON literals that
//! `jsonb_populate_record` turns back into typed rows.

use std::collections::{BTreeSet, HashMap};

use sqlx::Row;
use sqlx::postgres::PgConnection;

use super::SkipReason;
use crate::pg::{ConnUrl, PgError, quote_ident};
use crate::stranded::{Op, SCHEMA, digest_sql};

/// A query's error on the database at `url`, with the URL redacted.
pub(super) fn query_err(url: &ConnUrl) -> impl Fn(sqlx::Error) -> PgError + '_ {
    move |source| PgError::Query { url: url.redacted(), source }
}

/// One compared table of the list.
#[derive(Debug, Clone)]
pub(super) struct Listed {
    /// `format('%I.%I', schema, name)`, as the list names it.
    pub relation: String,
    pub columns: Vec<String>,
    pub unknown_reason: Option<String>,
}

/// A stranded row of the list, with its kept version (values quoted by the
/// server).
#[derive(Debug, Clone)]
pub(super) struct Stranded {
    pub op: Op,
    pub key: serde_json::Value,
    pub key_lit: String,
    pub before_digest: Option<String>,
    pub before_lit: String,
    /// The row in the kept database (none for a delete).
    pub kept: Option<KeptRow>,
}

#[derive(Debug, Clone)]
pub(super) struct KeptRow {
    /// Column → value, over the list's columns.
    pub values: serde_json::Map<String, serde_json::Value>,
    /// The same as a quoted JSON literal.
    pub lit: String,
    /// Its digest over the columns live still has (see [`stranded_rows`]).
    pub digest: String,
    /// `age(xmin)`: larger is older (committed earlier).
    pub age: i64,
}

/// A relation as live or the kept database names it now (server-quoted), or
/// none when it is gone.
pub(super) async fn resolve(conn: &mut PgConnection, url: &ConnUrl, relation: &str) -> Result<Option<String>, PgError> {
    sqlx::query_scalar(
        "SELECT format('%I.%I', n.nspname, c.relname) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
         WHERE format('%I.%I', n.nspname, c.relname) = $1 AND c.relkind IN ('r', 'p')",
    )
    .bind(relation)
    .fetch_optional(conn)
    .await
    .map_err(query_err(url))
}

/// Whether the kept database holds the list at all.
pub(super) async fn has_list(kept: &mut PgConnection, url: &ConnUrl) -> Result<bool, PgError> {
    sqlx::query_scalar(
        "SELECT count(*) = 2 FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
         WHERE n.nspname = $1 AND c.relname IN ('tables', 'rows')",
    )
    .bind(SCHEMA)
    .fetch_one(kept)
    .await
    .map_err(query_err(url))
}

pub(super) async fn tables(kept: &mut PgConnection, url: &ConnUrl) -> Result<Vec<Listed>, PgError> {
    let rows = sqlx::query(&format!(
        "SELECT relation, columns::text[] AS columns, unknown_reason FROM {SCHEMA}.tables ORDER BY relation"
    ))
    .fetch_all(kept)
    .await
    .map_err(query_err(url))?;
    Ok(rows
        .iter()
        .map(|r| Listed {
            relation: r.get("relation"),
            columns: r.get::<Option<Vec<String>>, _>("columns").unwrap_or_default(),
            unknown_reason: r.get("unknown_reason"),
        })
        .collect())
}

/// The primary key's columns of `relation`, in key order (empty without one).
pub(super) async fn key_columns(
    conn: &mut PgConnection,
    url: &ConnUrl,
    relation: &str,
) -> Result<Vec<String>, PgError> {
    sqlx::query_scalar(
        "SELECT a.attname::text FROM pg_index i JOIN pg_class c ON c.oid = i.indrelid \
         JOIN pg_namespace n ON n.oid = c.relnamespace \
         CROSS JOIN LATERAL unnest(i.indkey::int2[]) WITH ORDINALITY AS k(attnum, ord) \
         JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum \
         WHERE i.indisprimary AND format('%I.%I', n.nspname, c.relname) = $1 ORDER BY k.ord",
    )
    .bind(relation)
    .fetch_all(conn)
    .await
    .map_err(query_err(url))
}

/// The columns of `relation` a row can be written to (not generated).
pub(super) async fn writable_columns(
    conn: &mut PgConnection,
    url: &ConnUrl,
    relation: &str,
) -> Result<BTreeSet<String>, PgError> {
    let cols: Vec<String> = sqlx::query_scalar(
        "SELECT a.attname::text FROM pg_attribute a JOIN pg_class c ON c.oid = a.attrelid \
         JOIN pg_namespace n ON n.oid = c.relnamespace \
         WHERE format('%I.%I', n.nspname, c.relname) = $1 AND a.attnum > 0 AND NOT a.attisdropped \
           AND a.attgenerated = ''",
    )
    .bind(relation)
    .fetch_all(conn)
    .await
    .map_err(query_err(url))?;
    Ok(cols.into_iter().collect())
}

/// `columns` as a quoted `text[]` literal, quoted by the server.
pub(super) async fn array_literal(
    conn: &mut PgConnection,
    url: &ConnUrl,
    columns: &[String],
) -> Result<String, PgError> {
    let lit: String = sqlx::query_scalar("SELECT format('%L::text[]', $1::text[])")
        .bind(columns)
        .fetch_one(conn)
        .await
        .map_err(query_err(url))?;
    Ok(lit)
}

/// `t.a = k.a AND t.b = k.b` over `keys`.
pub(super) fn key_match(keys: &[String], t: &str, k: &str) -> String {
    keys.iter().map(|c| format!("{t}.{q} = {k}.{q}", q = quote_ident(c))).collect::<Vec<_>>().join(" AND ")
}

/// The stranded rows of one table (`rel`: the kept database's quoted name,
/// `keys` its primary key), each with its kept version and that version's
/// digest over `common` (the list's columns live still has), which tells
/// whether live already holds the row.
pub(super) async fn stranded_rows(
    kept: &mut PgConnection,
    url: &ConnUrl,
    t: &Listed,
    rel: &str,
    keys: &[String],
    common: &[String],
) -> Result<Vec<Stranded>, PgError> {
    let digest = digest_sql("t", "$3::text[]");
    let sql = format!(
        "SELECT r.op::text AS op, r.key::text AS key, r.before_digest::text AS before_digest, \
                format('%L', r.key::text) AS key_lit, format('%L', r.before_digest::text) AS before_lit, \
                x.row_json, format('%L', x.row_json) AS row_lit, x.digest, x.age \
         FROM {SCHEMA}.rows r LEFT JOIN LATERAL ( \
             SELECT (SELECT jsonb_object_agg(e.key, e.value) FROM jsonb_each(to_jsonb(t.*)) e \
                     WHERE e.key = ANY($2::text[]))::text AS row_json, \
                    {digest} AS digest, age(t.xmin)::bigint AS age \
             FROM jsonb_populate_record(NULL::{rel}, r.key) k JOIN {rel} t ON {on} \
         ) x ON true \
         WHERE r.relation = $1",
        on = key_match(keys, "t", "k")
    );
    let rows = sqlx::query(&sql)
        .bind(&t.relation)
        .bind(&t.columns)
        .bind(common)
        .fetch_all(kept)
        .await
        .map_err(query_err(url))?;
    let mut out = Vec::with_capacity(rows.len());
    for r in rows {
        let op = match r.get::<String, _>("op").as_str() {
            "insert" => Op::Insert,
            "update" => Op::Update,
            "delete" => Op::Delete,
            other => {
                tracing::warn!(relation = %t.relation, op = other, "The list names an operation this version does not know; row ignored.");
                continue;
            }
        };
        let key: String = r.get("key");
        let row_json: Option<String> = r.get("row_json");
        let kept_row = match row_json {
            Some(j) => Some(KeptRow {
                values: serde_json::from_str(&j).unwrap_or_default(),
                lit: r.get("row_lit"),
                digest: r.get("digest"),
                age: r.get("age"),
            }),
            None => None,
        };
        out.push(Stranded {
            op,
            key: serde_json::from_str(&key).unwrap_or(serde_json::Value::Null),
            key_lit: r.get("key_lit"),
            before_digest: r.get("before_digest"),
            before_lit: r.get("before_lit"),
            kept: kept_row,
        });
    }
    Ok(out)
}

/// Live's row with each key, as two digests: over the list's columns
/// (`cols_lit`, compared with the restore's `before_digest`) and over the
/// columns live still has (`common_lit`, compared with the kept row's);
/// none where live has no such row.
pub(super) async fn live_digests(
    live: &mut PgConnection,
    url: &ConnUrl,
    rel: &str,
    keys: &[String],
    (cols_lit, common_lit): (&str, &str),
    rows: &[Stranded],
) -> Result<Vec<Option<LiveRow>>, PgError> {
    let list = serde_json::Value::Array(rows.iter().map(|r| r.key.clone()).collect()).to_string();
    let sql = format!(
        "SELECT x.listed, x.common FROM jsonb_array_elements($1::jsonb) WITH ORDINALITY AS e(key, ord) \
         LEFT JOIN LATERAL (SELECT {listed} AS listed, {common} AS common \
             FROM jsonb_populate_record(NULL::{rel}, e.key) k JOIN {rel} t ON {on}) x ON true \
         ORDER BY e.ord",
        listed = digest_sql("t", cols_lit),
        common = digest_sql("t", common_lit),
        on = key_match(keys, "t", "k")
    );
    let got = sqlx::query(&sql).bind(list).fetch_all(live).await.map_err(query_err(url))?;
    Ok(got
        .iter()
        .map(|r| {
            let listed: Option<String> = r.get("listed");
            listed.map(|listed| LiveRow { listed, common: r.get("common") })
        })
        .collect())
}

/// Live's row with a stranded row's key, by its digests.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct LiveRow {
    /// Over the list's columns: equal to `before_digest` while live holds
    /// the row as the restore left it.
    pub listed: String,
    /// Over the columns live still has: equal to the kept row's digest when
    /// live already holds the row as the kept database does.
    pub common: String,
}

/// What to do with one stranded row, given live's row with its key.
pub(super) fn decide(row: &Stranded, live: Option<&LiveRow>, writable: &BTreeSet<String>) -> Decision {
    if let Some(k) = &row.kept {
        let lacking: Vec<&str> = k
            .values
            .iter()
            .filter(|(c, v)| !v.is_null() && !writable.contains(c.as_str()))
            .map(|(c, _)| c.as_str())
            .collect();
        if row.op != Op::Delete && !lacking.is_empty() {
            return Decision::Skip(
                SkipReason::ColumnsMissing,
                format!("live has no column {} for this row's value(s)", lacking.join(", ")),
            );
        }
    }
    let after = row.kept.as_ref().map(|k| k.digest.as_str());
    match (row.op, after, live) {
        (Op::Delete, Some(_), _) | (Op::Insert | Op::Update, None, _) => Decision::Skip(
            SkipReason::ListStale,
            "the kept database does not hold this row as its list says (was it changed since the restore?)".into(),
        ),
        (Op::Insert, _, None) => Decision::Apply,
        (_, Some(a), Some(l)) if a == l.common => Decision::Already,
        (Op::Delete, _, None) => Decision::Already,
        (Op::Insert, _, Some(_)) => {
            Decision::Skip(SkipReason::Conflict, "live holds a different row with this key".into())
        }
        (Op::Update, _, None) => Decision::Skip(SkipReason::Conflict, "live deleted this row since the restore".into()),
        (Op::Update | Op::Delete, _, Some(l)) if row.before_digest.as_deref() == Some(l.listed.as_str()) => {
            Decision::Apply
        }
        (Op::Update | Op::Delete, _, Some(_)) => Decision::Skip(
            SkipReason::Conflict,
            "live changed this row since the restore; it is not overwritten".into(),
        ),
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Decision {
    Apply,
    /// Live already holds the row as the kept database does (or, for a
    /// delete, no longer holds it).
    Already,
    Skip(SkipReason, String),
}

/// The multiset of row digests (over `cols_lit`) of `rel`.
pub(super) async fn digest_counts(
    conn: &mut PgConnection,
    url: &ConnUrl,
    rel: &str,
    cols_lit: &str,
) -> Result<HashMap<String, i64>, PgError> {
    let rows =
        sqlx::query(&format!("SELECT {} AS d, count(*) AS n FROM {rel} t GROUP BY 1", digest_sql("t", cols_lit)))
            .fetch_all(conn)
            .await
            .map_err(query_err(url))?;
    Ok(rows.iter().map(|r| (r.get::<String, _>("d"), r.get::<i64, _>("n"))).collect())
}

/// The rows of `rel` (over `cols`) whose digest is one of `digests`, as
/// JSON text, one a row.
pub(super) async fn rows_with_digests(
    conn: &mut PgConnection,
    url: &ConnUrl,
    rel: &str,
    cols: &[String],
    cols_lit: &str,
    digests: &[String],
) -> Result<Vec<String>, PgError> {
    sqlx::query_scalar(&format!(
        "SELECT (SELECT jsonb_object_agg(e.key, e.value) FROM jsonb_each(to_jsonb(t.*)) e WHERE e.key = ANY($1::text[]))::text \
         FROM {rel} t WHERE {} = ANY($2::text[])",
        digest_sql("t", cols_lit)
    ))
    .bind(cols)
    .bind(digests)
    .fetch_all(conn)
    .await
    .map_err(query_err(url))
}
