//! The rehearsal's verdict: what fails it (problems, exit 2) — drift, a
//! failed migration, a down that does not revert its up (or only re-adds
//! columns at the end under `strict_column_order`), a lint finding denied —
//! and what informs the approval (warnings).

use super::runner::MigrationResult;
use super::{lint, reversibility, seeds};
use crate::lint_rule::Severity;
use crate::migrations::Plan;

/// Problems fail the rehearsal (exit 2); warnings inform the approval.
pub(super) fn verdict(
    plan: &Plan,
    results: &[MigrationResult],
    lint: &[lint::Finding],
    seeds: &[seeds::SeedResult],
    strict_column_order: bool,
) -> (Vec<String>, Vec<String>) {
    let mut problems = Vec::new();
    let mut warnings = Vec::new();
    for d in &plan.drift {
        problems.push(format!("drift: {d}"));
    }
    for r in results {
        if let Some(e) = &r.error {
            let at = match (e.line, &e.sql) {
                (Some(line), Some(sql)) => format!(" at line {line} ({sql})"),
                _ => String::new(),
            };
            problems.push(format!("migration {} ({}) failed{at}: {}", r.version, e.file, e.full_message()));
        }
        match &r.reversible {
            Some(reversibility::Reversal::Failed { reason } | reversibility::Reversal::Differs { reason, .. }) => {
                problems.push(format!("migration {}: its down does not revert it: {reason}", r.version))
            }
            Some(reversibility::Reversal::ColumnOrderOnly { .. }) if strict_column_order => problems.push(format!(
                "migration {}: its down re-adds columns at the end of their tables (column order only; `[rehearsal] strict_column_order` is set)",
                r.version
            )),
            Some(reversibility::Reversal::NotReversible { reason }) => {
                warnings.push(format!("migration {} is not reversible: {reason}", r.version))
            }
            _ => {}
        }
    }
    for f in lint {
        let line = format!("[{}] migration {}: {}", f.rule, f.migration, f.message);
        if f.severity == Severity::Error {
            problems.push(format!("{line} (denied by lint.deny)"))
        } else {
            warnings.push(line)
        }
    }
    for s in seeds {
        if let Some(e) = &s.error {
            problems.push(format!("seed {} failed: {e}", s.file));
        } else if s.idempotent == Some(false) {
            warnings.push(format!("seed {} is not idempotent: a second run changed {}", s.file, s.changed.join(", ")));
        }
    }
    (problems, warnings)
}
