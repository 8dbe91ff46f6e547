//! The comparison of one table between the kept (failed) database and the
//! restored one, by primary key: both sides are read ordered by the key's
//! JSON text in byte order (`COLLATE "C"`, the same order on both sides
//! whatever the databases' collations) and merged as they stream, so a table
//! of any size is compared in constant memory. A key only in the kept
//! database is an insert, in both with a different [`digest_sql`] an update,
//! only in the restored one a delete. Rows whose `xmin` is one of the
//! release's own transactions are the plan's, not stranded.

use std::cmp::Ordering;
use std::collections::HashSet;

use futures::TryStreamExt;
use sqlx::{PgConnection, Row};

use super::{Op, SCHEMA, digest_sql};
use crate::pg::quote_ident;

/// One row as read for the comparison.
struct Read {
    key: String,
    digest: String,
    xmin: i64,
}

/// What the comparison of one table found.
#[derive(Debug, Default)]
pub(super) struct Diff {
    pub inserted: u64,
    pub updated: u64,
    pub deleted: u64,
    /// The `xmin`s of the rows counted as inserted or updated (for the
    /// history table: the plan's own transactions).
    pub xmins: Vec<i64>,
}

/// The stranded rows of the table being compared, written into the kept
/// database's list in batches on `out` (a transaction the caller commits).
struct Listing<'a> {
    out: &'a mut PgConnection,
    relation: &'a str,
    ops: Vec<&'static str>,
    keys: Vec<String>,
    before: Vec<Option<String>>,
}

impl Listing<'_> {
    async fn push(&mut self, op: Op, key: String, before: Option<String>) -> Result<(), sqlx::Error> {
        self.ops.push(op.as_str());
        self.keys.push(key);
        self.before.push(before);
        if self.ops.len() >= 5000 {
            self.flush().await?;
        }
        Ok(())
    }

    async fn flush(&mut self) -> Result<(), sqlx::Error> {
        if self.ops.is_empty() {
            return Ok(());
        }
        sqlx::query(&format!(
            "INSERT INTO {SCHEMA}.rows (relation, op, key, before_digest) \
             SELECT $1, o, k::jsonb, d FROM unnest($2::text[], $3::text[], $4::text[]) AS u(o, k, d)"
        ))
        .bind(self.relation)
        .bind(&self.ops)
        .bind(&self.keys)
        .bind(&self.before)
        .execute(&mut *self.out)
        .await?;
        self.ops.clear();
        self.keys.clear();
        self.before.clear();
        Ok(())
    }
}

/// The SELECT that reads `relation` for the comparison: the key as JSON
/// text, the digest over `$1` (the columns both sides have; no parameter
/// when `whole`) and `xmin`.
/// When `$1` is every column of the side read (`whole`), the digest is
/// computed as `md5(to_jsonb(t)::text)`: the same value as [`digest_sql`]
/// (jsonb's text form does not depend on how the object was built), about
/// three times cheaper, which matters while live is offline.
fn select(relation: &str, key: &[String], whole: bool) -> String {
    let pairs: Vec<String> = key.iter().map(|c| format!("'{}', t.{}", c.replace('\'', "''"), quote_ident(c))).collect();
    let k = format!("(jsonb_build_object({}))::text", pairs.join(", "));
    let digest = if whole { "md5(to_jsonb(t.*)::text)".to_string() } else { digest_sql("t", "$1") };
    format!(
        "SELECT {k} AS k, {digest} AS d, t.xmin::text::bigint AS x FROM ONLY {relation} t ORDER BY {k} COLLATE \"C\""
    )
}

fn read(row: sqlx::postgres::PgRow) -> Read {
    Read { key: row.get("k"), digest: row.get("d"), xmin: row.get("x") }
}

/// Compares `relation` (already quoted, `schema.table`) between `kept` and
/// `restored` by the primary key `key` over `columns` (`whole`: whether
/// they are all of the kept, and of the restored, table's). With `list`, writes
/// the stranded rows into the kept database's list on it; rows with an
/// `xmin` in `own` are the release's and not counted.
pub(super) async fn table(
    kept: &mut PgConnection,
    restored: &mut PgConnection,
    list: Option<&mut PgConnection>,
    relation: &str,
    key: &[String],
    columns: &[String],
    whole: (bool, bool),
    own: &HashSet<i64>,
) -> Result<Diff, sqlx::Error> {
    let (sql_a, sql_b) = (select(relation, key, whole.0), select(relation, key, whole.1));
    // The whole-row form takes no parameter.
    let query = |sql, whole: bool| if whole { sqlx::query(sql) } else { sqlx::query(sql).bind(columns) };
    let mut a = query(&sql_a, whole.0).fetch(kept).map_ok(read);
    let mut b = query(&sql_b, whole.1).fetch(restored).map_ok(read);
    let mut listing = list.map(|out| Listing { out, relation, ops: vec![], keys: vec![], before: vec![] });
    let mut diff = Diff::default();
    let (mut x, mut y) = (a.try_next().await?, b.try_next().await?);
    loop {
        let order = match (&x, &y) {
            (None, None) => break,
            (Some(_), None) => Ordering::Less,
            (None, Some(_)) => Ordering::Greater,
            (Some(f), Some(r)) => f.key.as_bytes().cmp(r.key.as_bytes()),
        };
        match order {
            Ordering::Less => {
                let f = x.take().expect("a kept row");
                if !own.contains(&f.xmin) {
                    diff.inserted += 1;
                    diff.xmins.push(f.xmin);
                    if let Some(l) = listing.as_mut() {
                        l.push(Op::Insert, f.key, None).await?;
                    }
                }
                x = a.try_next().await?;
            }
            Ordering::Greater => {
                let r = y.take().expect("a restored row");
                diff.deleted += 1;
                if let Some(l) = listing.as_mut() {
                    l.push(Op::Delete, r.key, Some(r.digest)).await?;
                }
                y = b.try_next().await?;
            }
            Ordering::Equal => {
                let (f, r) = (x.take().expect("a kept row"), y.take().expect("a restored row"));
                if f.digest != r.digest {
                    if !own.contains(&f.xmin) {
                        diff.updated += 1;
                        diff.xmins.push(f.xmin);
                        if let Some(l) = listing.as_mut() {
                            l.push(Op::Update, f.key, Some(r.digest)).await?;
                        }
                    }
                }
                x = a.try_next().await?;
                y = b.try_next().await?;
            }
        }
    }
    if let Some(l) = listing.as_mut() {
        l.flush().await?;
    }
    Ok(diff)
}

/// Rows of `relation` in the connected database whose `xmin` is not in
/// `own` (for a table only the kept database has).
pub(super) async fn others_rows(
    conn: &mut PgConnection,
    relation: &str,
    own: &HashSet<i64>,
) -> Result<i64, sqlx::Error> {
    let own: Vec<i64> = own.iter().copied().collect();
    sqlx::query_scalar(&format!("SELECT count(*) FROM ONLY {relation} t WHERE NOT (t.xmin::text::bigint = ANY($1))"))
        .bind(own)
        .fetch_one(conn)
        .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_read_orders_by_the_key_text_in_byte_order() {
        let sql = select("public.\"Order\"", &["id".into(), "it's".into()], false);
        assert!(sql.contains("jsonb_build_object('id', t.\"id\", 'it''s', t.\"it's\")"), "{sql}");
        assert!(sql.contains("COLLATE \"C\""), "{sql}");
        assert!(sql.contains("FROM ONLY public.\"Order\" t"), "{sql}");
        assert!(sql.contains("t.xmin::text::bigint"), "{sql}");
        assert!(sql.contains("ANY($1)"), "{sql}");
        let whole = select("public.t", &["id".into()], true);
        assert!(whole.contains("md5(to_jsonb(t.*)::text"), "{whole}");
    }
}
