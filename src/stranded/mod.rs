//! Stranded writes: the rows other sessions inserted, updated or deleted on
//! live between a release's pre-release snapshot and the moment live was
//! taken offline for a restore. They are not in the restored database; they
//! stay in the failed database the restore keeps (`<db>_failed_<release>`).
//!
//! This file is the vocabulary shared by finding them (a comparison of the
//! failed and the restored database by primary key, done while live is
//! offline) and putting them back (`pgrehearse salvage`): what the release
//! record and every report show ([`StrandedWrites`]), and the list of the
//! stranded rows' keys, written into the kept database itself under the
//! schema [`SCHEMA`] — the application's data is never copied out of its
//! server (not into the state store, not into a report).
//!
//! The list, in the kept database:
//! - `pgrehearse_stranded.tables(relation, columns, unknown_reason)`: one row
//!   per compared table; `relation` is `format('%I.%I', schema, name)`,
//!   `columns` the columns both databases have (by name, sorted), which the
//!   comparison and salvage look at; `unknown_reason` is set when the table's
//!   writes cannot be told exactly (no primary key, written by the migration
//!   tool too, dropped by the plan …) and its rows are then not listed.
//! - `pgrehearse_stranded.rows(relation, op, key, before_digest)`: one row
//!   per stranded row; `op` is `insert`, `update` or `delete`; `key` the
//!   primary key's columns as a JSON object (`jsonb_populate_record` gives
//!   them back typed); `before_digest` the [`digest_sql`] of the row as the
//!   restored database held it (null for an insert), so salvage can tell
//!   whether live changed the row since.

pub mod exposure;

use serde::{Deserialize, Serialize};

mod compare;
pub mod detect;
mod text;

/// The schema in the kept database that lists its stranded rows.
pub const SCHEMA: &str = "pgrehearse_stranded";

/// What a restore stranded, as the release record and every report tell it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StrandedWrites {
    /// When the pre-release snapshot was taken (RFC 3339).
    pub since: String,
    /// When live was taken offline for the swap (RFC 3339).
    pub until: String,
    /// The database the stranded rows are kept in.
    pub kept_in: String,
    /// Tables with stranded rows; empty when nothing was written.
    pub tables: Vec<TableWrites>,
    /// Tables whose writes could not be told exactly, with why.
    #[serde(default)]
    pub unknown: Vec<UnknownTable>,
    /// Set when the finding itself failed or could not run (the restore
    /// still happened): then nothing above is complete, and every write made
    /// between `since` and `until` is only in `kept_in`.
    #[serde(default)]
    pub error: Option<String>,
}

/// The stranded rows of one table, counted by what happened to them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TableWrites {
    /// `schema.table`.
    pub table: String,
    pub inserted: u64,
    pub updated: u64,
    pub deleted: u64,
}

/// A table whose stranded writes are not counted exactly.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UnknownTable {
    /// `schema.table`.
    pub table: String,
    pub reason: String,
}

/// One stranded row's fate, as `pgrehearse_stranded.rows.op` stores it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Op {
    Insert,
    Update,
    Delete,
}

impl Op {
    pub fn as_str(self) -> &'static str {
        match self {
            Op::Insert => "insert",
            Op::Update => "update",
            Op::Delete => "delete",
        }
    }
}

/// A SQL expression for the digest of row `alias` over the columns named by
/// the `text[]` expression `columns`: the md5 of the row as JSON with only
/// those keys (JSON keys are sorted, so column order does not matter).
/// Finding and salvage compute digests with this one expression, so a digest
/// taken in one database compares with one taken in another.
pub fn digest_sql(alias: &str, columns: &str) -> String {
    format!(
        "md5(coalesce((SELECT jsonb_object_agg(e.key, e.value) FROM jsonb_each(to_jsonb({alias}.*)) e \
         WHERE e.key = ANY({columns})), '{{}}'::jsonb)::text)"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn digest_names_the_alias_and_the_columns() {
        let d = digest_sql("t", "$1");
        assert!(d.contains("to_jsonb(t.*)"), "{d}");
        assert!(d.contains("ANY($1)"), "{d}");
        assert!(d.contains("'{}'::jsonb"), "{d}");
    }

    #[test]
    fn ops_are_stored_by_name() {
        assert_eq!(serde_json::to_value(Op::Update).unwrap(), "update");
        assert_eq!(Op::Delete.as_str(), "delete");
    }

    #[test]
    fn an_empty_result_has_an_empty_table_list() {
        let s = StrandedWrites {
            since: "a".into(),
            until: "b".into(),
            kept_in: "app_failed_x".into(),
            tables: vec![],
            unknown: vec![],
            error: None,
        };
        let v = serde_json::to_value(&s).unwrap();
        assert_eq!(v["tables"], serde_json::json!([]));
        assert_eq!(v["kept_in"], "app_failed_x");
    }
}
