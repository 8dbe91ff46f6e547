//! The SQL that puts stranded rows into live, and the file `salvage -o`
//! writes: one transaction, deletes first, then inserts and updates in
//! commit order; every statement guarded so that running it twice changes
//! nothing and a row live changed since the restore is never overwritten.
//! Values arrive quoted by the server (see `list.rs`); identifiers are
//! quoted by the server (relations) or [`quote_ident`] (columns).

use std::fmt::Write as _;

use super::list::{Stranded, key_match};
use super::{Salvage, Unknown};
use crate::pg::quote_ident;
use crate::stranded::{Op, digest_sql};

/// One statement to run on live, and what it is for.
#[derive(Debug, Clone)]
pub(super) struct Statement {
    pub table: String,
    pub op: Op,
    pub key: serde_json::Value,
    pub sql: String,
    /// Deletes first (their rows are gone: no commit time), then by age,
    /// oldest first.
    pub order: (u8, i64),
}

/// The statement for `row` of `table` (live's quoted name `rel`, key
/// columns `keys`, the list's columns as a literal `cols_lit`), writing
/// only the columns in `writable`.
pub(super) fn statement(
    table: &str,
    rel: &str,
    keys: &[String],
    cols_lit: &str,
    writable: &std::collections::BTreeSet<String>,
    row: &Stranded,
) -> Statement {
    let guard = format!("{} = {}", digest_sql("t", cols_lit), row.before_lit);
    let on = key_match(keys, "t", "k");
    let (sql, order) = match (&row.op, &row.kept) {
        (Op::Delete, _) | (_, None) => (
            format!(
                "DELETE FROM {rel} AS t USING jsonb_populate_record(NULL::{rel}, {key}) AS k WHERE {on} AND {guard};",
                key = row.key_lit
            ),
            (0, 0),
        ),
        (Op::Insert, Some(kept)) => {
            let cols: Vec<String> =
                kept.values.keys().filter(|c| writable.contains(c.as_str())).map(|c| quote_ident(c)).collect();
            let cols = cols.join(", ");
            (
                format!(
                    "INSERT INTO {rel} ({cols}) OVERRIDING SYSTEM VALUE SELECT {cols} \
                     FROM jsonb_populate_record(NULL::{rel}, {lit}) ON CONFLICT DO NOTHING;",
                    lit = kept.lit
                ),
                (1, -kept.age),
            )
        }
        (Op::Update, Some(kept)) => {
            let assign = |c: &String| format!("{q} = v.{q}", q = quote_ident(c));
            let mut set: Vec<String> =
                kept.values.keys().filter(|c| writable.contains(c.as_str()) && !keys.contains(c)).map(assign).collect();
            if set.is_empty() {
                // A table of key columns only: set the key to itself.
                set = keys.iter().map(assign).collect();
            }
            (
                format!(
                    "UPDATE {rel} AS t SET {set} FROM jsonb_populate_record(NULL::{rel}, {key}) AS k, \
                     jsonb_populate_record(NULL::{rel}, {lit}) AS v WHERE {on} AND {guard};",
                    set = set.join(", "),
                    key = row.key_lit,
                    lit = kept.lit
                ),
                (1, -kept.age),
            )
        }
    };
    Statement { table: table.to_string(), op: row.op, key: row.key.clone(), sql, order }
}

/// Puts statements in the order they run (see [`Statement::order`]).
pub(super) fn sort(statements: &mut [Statement]) {
    statements.sort_by(|a, b| a.order.cmp(&b.order).then_with(|| a.table.cmp(&b.table)));
}

/// A comment line: its text on one line.
fn comment(text: &str) -> String {
    format!("-- {}\n", text.replace(['\n', '\r'], " "))
}

/// The whole file: a header saying what it is, the skipped rows, one
/// transaction, then the rows of tables without an exact list as
/// commented data for a person.
pub(super) fn file(s: &Salvage, statements: &[Statement], unknown_rows: &[(String, Vec<String>)]) -> String {
    let mut out = String::new();
    out.push_str(&comment(&format!(
        "pgrehearse salvage of release {}: the rows other sessions wrote on live between its pre-release snapshot and \
         the restore, kept in database {}.",
        s.release_id, s.kept_in
    )));
    out.push_str(&comment(&format!(
        "Run it against live (database {}), e.g. psql -v ON_ERROR_STOP=1 -d {} -f FILE. It is one transaction; \
         every statement is guarded, so running it again changes nothing.",
        s.database, s.database
    )));
    out.push_str(&comment(
        "Inserts do nothing where the key exists; updates and deletes touch a row only while live holds it as the \
         restore left it (its digest), so a row live changed since is never overwritten.",
    ));
    out.push_str(&comment(
        "Deletes come first (a deleted row leaves no commit time behind; deleting first frees keys and unique values \
         that later inserts may reuse), then inserts and updates in the order they committed.",
    ));
    if !s.skipped.is_empty() {
        out.push_str(&comment(&format!("Skipped ({} rows, not in this file):", s.skipped.len())));
        for k in &s.skipped {
            out.push_str(&comment(&format!(
                "  {} {} {}: {} — {}",
                k.table,
                k.op.as_str(),
                k.key,
                k.reason.as_str(),
                k.detail
            )));
        }
    }
    out.push_str("BEGIN;\nSET CONSTRAINTS ALL DEFERRED;\n");
    for st in statements {
        let _ = writeln!(out, "{}", st.sql);
    }
    out.push_str("COMMIT;\n");
    for u in &s.unknown {
        out.push_str(&unknown_section(u, unknown_rows.iter().find(|(t, _)| t == &u.table).map(|(_, r)| r.as_slice())));
    }
    out
}

fn unknown_section(u: &Unknown, rows: Option<&[String]>) -> String {
    let mut out = String::from("\n");
    out.push_str(&comment(&format!("Table {} is not salvaged here: {}.", u.table, u.reason)));
    match (u.rows_only_in_kept, u.rows_only_in_live) {
        (Some(k), Some(l)) => out.push_str(&comment(&format!(
            "{k} row(s) are only in the kept database and {l} only in live (whole rows compared); the kept ones \
             follow as JSON, one a line, for a person to put back:"
        ))),
        _ => out.push_str(&comment("Its rows could not be compared; look at the kept database yourself.")),
    }
    for r in rows.unwrap_or_default() {
        out.push_str(&comment(r));
    }
    out
}
