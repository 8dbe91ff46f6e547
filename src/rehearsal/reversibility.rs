//! Reversibility: after the plan applied, run the downs in reverse, compare
//! `pg_dump --schema-only` after each down with the schema the migration
//! started from, then run the ups again and compare the result with the
//! first apply. Each down is judged by itself: the schema after reverting
//! migration *i* must equal the schema after migration *i − 1*.
//!
//! Dumps carry noise that differs on every run — the random `\restrict` key
//! current pg_dump releases write, the version header — which is removed
//! before comparing and reported as ignored. The tool's history table is
//! excluded (its rows are the point of the migrations, not schema).

use std::time::Duration;

use serde::Serialize;
use similar::TextDiff;
use sqlx::PgConnection;

use super::runner::{self, MigrationResult};
use crate::config::MigrationKind;
use crate::migrations::{self, Down, Migration, Source};
use crate::pg::tools::{self, Tool};
use crate::pg::url::ConnUrl;

/// The verdict on one migration's down.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
#[serde(tag = "result", rename_all = "snake_case")]
pub enum Reversal {
    /// The down restored the schema exactly and the up applied again.
    Reversible,
    /// No down (missing or empty): reported, not a failure of the plan.
    NotReversible { reason: String },
    /// The down ran but left the schema different (`diff`), or failed.
    Failed { reason: String, diff: Option<String> },
    /// Not checked (an earlier step failed, or a migration below it has no down).
    NotChecked { reason: String },
}

impl Reversal {
    pub fn is_failure(&self) -> bool {
        matches!(self, Reversal::Failed { .. })
    }
}

/// What the comparison ignored, stated in the report.
pub const IGNORED: &str = "pg_dump's random \\restrict/\\unrestrict key lines, its version header comments, and the migration tool's history table";

/// Dumps the schema of the database at `url` without noise.
pub async fn schema(tool: &Tool, url: &ConnUrl, exclude_table: &str) -> Result<String, String> {
    let mut cmd = tools::command(tool, url, "pgrehearse-schema");
    cmd.arg("--schema-only");
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

/// Removes the lines that differ on every dump.
pub fn clean(dump: &str) -> String {
    dump.lines()
        .filter(|l| {
            !(l.starts_with("\\restrict ")
                || l.starts_with("\\unrestrict ")
                || l.starts_with("-- Dumped from database version")
                || l.starts_with("-- Dumped by pg_dump version"))
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// A unified diff of two schemas (`-` expected, `+` found), at most
/// `max_lines` lines; None when equal.
pub fn diff(expected: &str, found: &str, max_lines: usize) -> Option<String> {
    if expected == found {
        return None;
    }
    let d = TextDiff::from_lines(expected, found);
    let text = d.unified_diff().context_radius(2).header("expected", "found").to_string();
    let mut lines: Vec<&str> = text.lines().collect();
    if lines.len() > max_lines {
        let more = lines.len() - max_lines;
        lines.truncate(max_lines);
        return Some(format!("{}\n… {more} more lines", lines.join("\n")));
    }
    Some(lines.join("\n"))
}

/// Runs the reversibility check after a successful apply and fills each
/// result's `reversible`. Returns true when no down failed.
pub async fn check(
    source: &Source<'_>,
    conn: &mut PgConnection,
    url: &ConnUrl,
    tool: &Tool,
    plan: &[Migration],
    results: &mut [MigrationResult],
    s0: &str,
) -> bool {
    let table = source.table();
    let s_up = match schema(tool, url, &table).await {
        Ok(s) => s,
        Err(e) => {
            for r in results.iter_mut() {
                r.reversible = Some(Reversal::NotChecked { reason: e.clone() });
            }
            return true;
        }
    };
    if !source.is_native() {
        return super::external::reverse(source, url, tool, plan, results, s0, &s_up).await;
    }
    // Downs run from the end; a migration without one stops the way down.
    let k = plan.iter().rposition(|m| !m.down.is_reversible()).map_or(0, |i| i + 1);
    for (m, r) in plan.iter().zip(results.iter_mut()).take(k) {
        r.reversible = Some(match &m.down {
            Down::Missing => Reversal::NotReversible { reason: "it has no down migration".into() },
            Down::Empty { path } => Reversal::NotReversible { reason: format!("{} is empty", path.display()) },
            _ => Reversal::NotChecked {
                reason: "a later migration has no down, so this one cannot be reverted in order".into(),
            },
        });
    }
    let mut after_down: Vec<Option<String>> = vec![None; plan.len()];
    for i in (k..plan.len()).rev() {
        let m = &plan[i];
        let Down::Sql { sql, transactional, .. } = &m.down else { continue };
        let kind = source.kind();
        let ran = runner::run_script(conn, sql, *transactional, async |c: &mut PgConnection| match kind {
            MigrationKind::Sqlx => migrations::sqlx::record_reverted(c, &table, m).await,
            _ => migrations::diesel::record_reverted(c, &table, m).await,
        })
        .await;
        if let Err(e) = ran {
            results[i].reversible = Some(Reversal::Failed { reason: format!("the down failed: {e}"), diff: None });
            not_checked(&mut results[k..i], "an earlier down in the reverse order failed");
            return false;
        }
        match schema(tool, url, &table).await {
            Ok(s) => after_down[i] = Some(s),
            Err(e) => {
                not_checked(&mut results[k..=i], &e);
                return true;
            }
        }
    }
    let mut after_up: Vec<Option<String>> = vec![None; plan.len()];
    for i in k..plan.len() {
        let m = &plan[i];
        let kind = source.kind();
        let ran = runner::run_script(conn, &m.up_sql, m.transactional, async |c: &mut PgConnection| match kind {
            MigrationKind::Sqlx => migrations::sqlx::record_applied(c, &table, m, Duration::ZERO).await,
            _ => migrations::diesel::record_applied(c, &table, m).await,
        })
        .await;
        if let Err(e) = ran {
            results[i].reversible = Some(Reversal::Failed {
                reason: format!("applying it again after its down failed (the down left something behind): {e}"),
                diff: None,
            });
            not_checked(&mut results[i + 1..], "re-applying an earlier migration failed");
            return false;
        }
        after_up[i] = schema(tool, url, &table).await.ok();
    }
    let mut all_ok = true;
    for i in k..plan.len() {
        if results[i].reversible.is_some() {
            continue;
        }
        // After reverting i, the schema must be what it was before i ran.
        let expected = if i == 0 { Some(s0) } else if i > k { after_up[i - 1].as_deref() } else { None };
        let verdict = match (expected, after_down[i].as_deref()) {
            (Some(exp), Some(found)) => match diff(exp, found, 60) {
                None => Reversal::Reversible,
                Some(d) => Reversal::Failed {
                    reason: "after its down the schema differs from before it ran".into(),
                    diff: Some(d),
                },
            },
            // The first reversible migration above one without a down: the
            // re-apply is its check.
            _ => Reversal::Reversible,
        };
        all_ok &= !verdict.is_failure();
        results[i].reversible = Some(verdict);
    }
    if all_ok
        && let Some(last) = after_up.last().cloned().flatten()
        && let Some(d) = diff(&s_up, &last, 60)
    {
        let i = plan.len() - 1;
        results[i].reversible = Some(Reversal::Failed {
            reason: "applying the plan again after its downs gave a different schema than the first apply".into(),
            diff: Some(d),
        });
        all_ok = false;
    }
    all_ok
}

fn not_checked(results: &mut [MigrationResult], reason: &str) {
    for r in results {
        if r.reversible.is_none() {
            r.reversible = Some(Reversal::NotChecked { reason: reason.into() });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn noise_is_ignored_and_real_differences_shown() {
        let a = "\\restrict abc\n-- Dumped by pg_dump version 15.18\nCREATE TABLE t (a int);\n\\unrestrict abc";
        let b = "\\restrict xyz\n-- Dumped by pg_dump version 15.18\nCREATE TABLE t (a int);\n\\unrestrict xyz";
        assert_eq!(clean(a), clean(b));
        let c = "CREATE TABLE t (a int);\nCREATE TRIGGER x AFTER INSERT ON t EXECUTE FUNCTION f();";
        let d = diff(&clean(a), c, 50).unwrap();
        assert!(d.contains("+CREATE TRIGGER x"), "{d}");
    }
}
