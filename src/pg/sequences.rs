//! Carrying sequence positions forward from one database to another, so that
//! a database restored from a snapshot never hands out an id the database it
//! replaces already gave away.
//!
//! A restore puts every sequence back where it stood at the snapshot; rows the
//! application wrote after it (now kept in the replaced database) hold ids
//! beyond that point, and the restored sequences would hand the same ids out
//! again. Before the restored database takes the live name, each of its
//! sequences is set past the larger of its own position and the replaced
//! database's (`setval(…, greatest, true)`: the next `nextval` returns the
//! value after it). Sequences only one side has are left as they are.
//! Descending sequences move the other way.

use std::collections::HashMap;

use sqlx::Row;

use super::{ConnUrl, PgError, connect, quote_ident};

/// One sequence moved forward: `schema.name` from `from` to `to`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Advanced {
    pub sequence: String,
    pub from: Option<i64>,
    pub to: i64,
}

/// Sets every sequence of database `to_db` past its position in `from_db`
/// (both on the server of `admin`, whose role must be able to read and set
/// them). Returns the sequences it moved; one it cannot read or set is
/// logged with the grant it needs and left as restored.
pub async fn carry_forward(admin: &ConnUrl, from_db: &str, to_db: &str) -> Result<Vec<Advanced>, PgError> {
    let from_url = admin.with_database(from_db);
    let mut from = connect(&from_url, "pgrehearse-sequences").await?;
    let old = positions(&mut from, &from_url).await?;
    drop(from);
    let to_url = admin.with_database(to_db);
    let mut to = connect(&to_url, "pgrehearse-sequences").await?;
    let new = positions(&mut to, &to_url).await?;
    let mut moved = Vec::new();
    for (name, (restored, ascending)) in &new {
        let Some((Some(failed), _)) = old.get(name) else { continue };
        let past = match restored {
            Some(r) if (*ascending && r >= failed) || (!*ascending && r <= failed) => continue,
            _ => *failed,
        };
        let (schema, seq) = name.split_once('.').expect("names are schema.sequence");
        let target = format!("{}.{}", quote_ident(schema), quote_ident(seq));
        let set = sqlx::query("SELECT setval($1::regclass, $2, true)").bind(&target).bind(past).execute(&mut to).await;
        if let Err(e) = set {
            // A restore that cannot move one sequence still restores: the
            // sequence is named for a person, as an unreadable one is.
            tracing::warn!(
                sequence = %name, error = %super::explain(&e),
                "Cannot set this restored sequence past the replaced database's position; grant the admin role UPDATE on it and run setval by hand."
            );
            continue;
        }
        moved.push(Advanced { sequence: name.clone(), from: *restored, to: past });
    }
    moved.sort_by(|a, b| a.sequence.cmp(&b.sequence));
    Ok(moved)
}

/// Every sequence of the connected database: `schema.name` → (last value
/// handed out, `None` before the first `nextval`; ascending).
async fn positions(
    conn: &mut sqlx::PgConnection,
    url: &ConnUrl,
) -> Result<HashMap<String, (Option<i64>, bool)>, PgError> {
    let rows = sqlx::query(
        "SELECT schemaname || '.' || sequencename AS name, last_value, increment_by > 0 AS ascending, \
         has_sequence_privilege(format('%I.%I', schemaname, sequencename), 'SELECT') AS readable FROM pg_sequences",
    )
    .fetch_all(conn)
    .await
    .map_err(|source| PgError::Query { url: url.redacted(), source })?;
    let mut out = HashMap::new();
    for r in &rows {
        let name: String = r.get("name");
        if !r.get::<bool, _>("readable") {
            // pg_sequences shows NULL then, as for a sequence never used.
            tracing::warn!(
                sequence = %name,
                "Cannot read this sequence's position (no SELECT on it), so it is not carried forward; grant the admin role SELECT and UPDATE on the database's sequences."
            );
            continue;
        }
        out.insert(name, (r.get("last_value"), r.get("ascending")));
    }
    Ok(out)
}
