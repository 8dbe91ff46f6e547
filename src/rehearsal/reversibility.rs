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

use serde::Serialize;
use similar::TextDiff;
use sqlx::PgConnection;

use super::runner::{self, MigrationResult};
use crate::conn_url::ConnUrl;
use crate::migrations::executor::{Direction, Executor, Retry};
use crate::migrations::{Down, Migration, Source};
use crate::pg::tools::{self, Tool};

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
/// result's `reversible`; returns true when no down failed.
///
/// `reference` is a file copy of the scratch database taken just before the
/// plan ran: the ups are applied there one by one to learn the exact schema
/// before and after each migration (the measured apply may have run as one
/// transaction, which shows no intermediate states). Then, on the scratch
/// database, each down must give the schema its migration started from, and
/// each up applied again the schema it gave the first time. The first down
/// that fails stops the way down: everything below it would be compared
/// against a schema it already changed.
#[allow(clippy::too_many_arguments)]
pub async fn check(
    source: &Source<'_>,
    target: &crate::config::Target,
    conn: &mut PgConnection,
    url: &ConnUrl,
    reference: Option<&ConnUrl>,
    tool: &Tool,
    plan: &[Migration],
    results: &mut [MigrationResult],
    s0: &str,
) -> bool {
    let table = source.table();
    let s_up = match schema(tool, url, &table).await {
        Ok(s) => s,
        Err(e) => {
            not_checked(results, &e);
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
    if k == plan.len() {
        return true;
    }
    let Some(reference) = reference else {
        not_checked(&mut results[k..], "no reference copy of the database could be made");
        return true;
    };
    // states[i]: the schema before migration i (states[0] = s0, states[n] = after all).
    let states = match stepwise(source, target, reference, tool, plan).await {
        Ok(s) => s,
        Err(e) => {
            not_checked(&mut results[k..], &format!("applying the plan step by step on a reference copy failed: {e}"));
            return true;
        }
    };
    if let Some(d) = diff(&states[plan.len()], &s_up, 60) {
        tracing::warn!(diff = %d, "The plan applied step by step gave another schema than the measured apply.");
    }
    for i in (k..plan.len()).rev() {
        let m = &plan[i];
        let ran = executor(source, &table).script(conn, m, Direction::Down).await;
        let verdict = match ran {
            Err(e) => Some(Reversal::Failed { reason: format!("the down failed: {e}"), diff: None }),
            Ok(_) => match schema(tool, url, &table).await {
                Err(e) => {
                    not_checked(&mut results[k..=i], &e);
                    return true;
                }
                Ok(found) => diff(&states[i], &found, 60).map(|d| Reversal::Failed {
                    reason: "after its down the schema differs from before it ran (`-` before the migration, `+` after its down)".into(),
                    diff: Some(d),
                }),
            },
        };
        if let Some(v) = verdict {
            results[i].reversible = Some(v);
            not_checked(&mut results[k..i], "a later migration's down failed, so the way down stopped there");
            not_checked(&mut results[i + 1..], "a lower down failed before the ups could run again");
            return false;
        }
    }
    // Every down restored its starting point: the ups must apply again and
    // give the schema they gave the first time.
    for i in k..plan.len() {
        let m = &plan[i];
        let ran = executor(source, &table).script(conn, m, Direction::Up).await;
        let verdict = match ran {
            Err(e) => Reversal::Failed { reason: format!("applying it again after its down failed: {e}"), diff: None },
            Ok(_) => match schema(tool, url, &table).await {
                Err(e) => Reversal::NotChecked { reason: e },
                Ok(found) => match diff(&states[i + 1], &found, 60) {
                    None => Reversal::Reversible,
                    Some(d) => Reversal::Failed {
                        reason: "applied again after its down, it gives another schema than the first time".into(),
                        diff: Some(d),
                    },
                },
            },
        };
        let failed = verdict.is_failure();
        results[i].reversible = Some(verdict);
        if failed {
            not_checked(&mut results[i + 1..], "applying an earlier migration again failed");
            return false;
        }
    }
    true
}

/// The schema before each migration and after the last, applying the plan
/// one migration at a time on the reference copy.
async fn stepwise(
    source: &Source<'_>,
    target: &crate::config::Target,
    url: &ConnUrl,
    tool: &Tool,
    plan: &[Migration],
) -> Result<Vec<String>, String> {
    let table = source.table();
    let mut conn = runner::session(url, target, "pgrehearse-reference").await.map_err(|e| e.to_string())?;
    let mut states = vec![schema(tool, url, &table).await?];
    for m in plan {
        executor(source, &table)
            .script(&mut conn, m, Direction::Up)
            .await
            .map_err(|e| format!("migration {}: {e}", m.version))?;
        states.push(schema(tool, url, &table).await?);
    }
    Ok(states)
}

/// The executor for downs and re-ups on the scratch copy (no retries: see
/// `migrations::executor`).
fn executor<'a>(source: &Source<'_>, table: &'a str) -> Executor<'a> {
    Executor { kind: source.kind(), table, retry: Retry::NONE, place: "the scratch copy" }
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
