//! Reversibility: after the plan applied, every migration with a down gets a
//! verdict of its own. For sqlx and diesel each down is judged in isolation
//! on a copy of the database at its migration's level (see [`walk`]): the
//! schema after the down must be the schema before the migration, and the
//! up applied again must give the schema of the first apply. External tools
//! revert the whole batch at once and get one verdict for it
//! (`external::reverse`).
//!
//! Schemas are `pg_dump --schema-only` texts. Dumps carry noise that differs
//! on every run — the random `\restrict` key current pg_dump releases write,
//! the version header — which is removed before comparing and reported as
//! ignored. The tool's history table is excluded (its rows are the point of
//! the migrations, not schema). A difference only in column order is its own
//! class ([`compare`]).

mod compare;
mod walk;

pub use compare::{Comparison, clean, compare, diff};
pub use walk::Copies;

use serde::Serialize;

use super::runner::MigrationResult;
use crate::conn_url::ConnUrl;
use crate::migrations::{Migration, Source};
use crate::pg::tools::{self, Tool};

/// The verdict on one migration's down.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
#[serde(tag = "result", rename_all = "snake_case")]
pub enum Reversal {
    /// The down restored the schema exactly and the up applied again.
    Reversible,
    /// The down restored every object, but re-added columns stand at the
    /// end of their tables (`diff` shows where): a note, not a problem,
    /// unless `[rehearsal] strict_column_order` is set.
    ColumnOrderOnly { diff: String },
    /// No down (missing, or a zero-byte file): reported, not a failure of
    /// the plan.
    NotReversible { reason: String },
    /// The down failed with an error, or applying the up again after it did.
    Failed { reason: String },
    /// The down ran but left the schema different from before the
    /// migration, or the up applied again gave another schema (`diff`).
    Differs { reason: String, diff: String },
    /// Not checked (the reference copy could not be made or used).
    NotChecked { reason: String },
}

impl Reversal {
    /// A verdict that fails the rehearsal.
    pub fn is_problem(&self, strict_column_order: bool) -> bool {
        match self {
            Reversal::Failed { .. } | Reversal::Differs { .. } => true,
            Reversal::ColumnOrderOnly { .. } => strict_column_order,
            _ => false,
        }
    }

    /// The down reverts its migration (column order aside unless strict).
    pub fn reverts(&self, strict_column_order: bool) -> bool {
        match self {
            Reversal::Reversible => true,
            Reversal::ColumnOrderOnly { .. } => !strict_column_order,
            _ => false,
        }
    }
}

/// What the comparison ignored, stated in the report.
pub const IGNORED: &str = "pg_dump's random \\restrict/\\unrestrict key lines, its version header comments, and the migration tool's history table";

/// Dumps the schema of the database at `url` without noise.
pub async fn schema(tool: &Tool, url: &ConnUrl, exclude_table: &str) -> Result<String, String> {
    dump_schema(tool, url, exclude_table, &[]).await
}

/// The schema as a release compares it with live: [`schema`] without
/// owners and privileges (the shadow copy is restored without them).
pub async fn portable_schema(tool: &Tool, url: &ConnUrl, exclude_table: &str) -> Result<String, String> {
    dump_schema(tool, url, exclude_table, &["--no-owner", "--no-privileges"]).await
}

async fn dump_schema(tool: &Tool, url: &ConnUrl, exclude_table: &str, extra: &[&str]) -> Result<String, String> {
    let mut cmd = tools::command(tool, url, "pgrehearse-schema");
    cmd.arg("--schema-only").args(extra);
    if !exclude_table.is_empty() {
        cmd.arg(format!("--exclude-table={exclude_table}"));
    }
    let out = cmd.output().await.map_err(|e| format!("cannot run {}: {e}", tool.path.display()))?;
    if !out.status.success() {
        return Err(format!(
            "pg_dump --schema-only failed: {}",
            tools::tail(&String::from_utf8_lossy(&out.stderr), 1000)
        ));
    }
    Ok(clean(&String::from_utf8_lossy(&out.stdout)))
}

/// Runs the reversibility check after a successful apply and fills each
/// result's `reversible`.
///
/// Native sources are judged per migration on `copies` (see [`walk`]); the
/// scratch database at `url` is only dumped, so it keeps the first apply's
/// schema and data for the seeds. External tools revert and re-apply the
/// whole batch on the scratch database.
#[allow(clippy::too_many_arguments)]
pub async fn check(
    source: &Source<'_>,
    target: &crate::config::Target,
    url: &ConnUrl,
    copies: Option<Copies<'_>>,
    tool: &Tool,
    plan: &[Migration],
    results: &mut [MigrationResult],
    s0: &str,
) {
    let table = source.table();
    let s_up = match schema(tool, url, &table).await {
        Ok(s) => s,
        Err(e) => {
            not_checked(results, &e);
            return;
        }
    };
    if !source.is_native() {
        super::external::reverse(source, url, tool, plan, results, s0, &s_up).await;
        return;
    }
    walk::walk(source, target, copies, tool, plan, results, &s_up).await;
}

/// The plan is reversible when every migration in it is (column order
/// aside unless strict).
pub fn plan_reverts(results: &[MigrationResult], strict_column_order: bool) -> bool {
    results.iter().all(|r| r.reversible.as_ref().is_some_and(|v| v.reverts(strict_column_order)))
}

/// The report's notes on downs: one per `column_order_only` verdict that
/// is not a problem.
pub fn notes(results: &[MigrationResult], strict_column_order: bool) -> Vec<String> {
    if strict_column_order {
        return Vec::new();
    }
    results
        .iter()
        .filter(|r| matches!(r.reversible, Some(Reversal::ColumnOrderOnly { .. })))
        .map(|r| {
            format!(
                "migration {}: column_order_only — its down brings every object back, but re-adds columns at the end of their tables (set `[rehearsal] strict_column_order = true` to make this a problem)",
                r.version
            )
        })
        .collect()
}

/// Marks every result without a verdict yet as not checked.
fn not_checked(results: &mut [MigrationResult], reason: &str) {
    for r in results {
        if r.reversible.is_none() {
            r.reversible = Some(Reversal::NotChecked { reason: reason.into() });
        }
    }
}
