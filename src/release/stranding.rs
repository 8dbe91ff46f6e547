//! The release's side of finding stranded writes (`stranded::detect` does
//! the comparison): live's write counters before the pre-release snapshot,
//! what the release knows of its own writes (the transaction ids its hooks
//! journaled, the history table, the plan's statements), the time range,
//! and the result recorded before live reopens — journaled (`stranded`,
//! `stranded_done`) and saved in the release record, so a run killed after
//! the swap still reports it, and one killed during the comparison repeats
//! it (live stays offline until the swap is finished).

use chrono::Utc;

use super::Ctx;
use super::journal::{Journal, Step};
use crate::config::{MigrationKind, Target};
use crate::migrations::Migration;
use crate::migrations::split;
use crate::state::{JournalEntry, ReleaseRow};
use crate::stranded::StrandedWrites;
use crate::stranded::detect::{self, Attribution, Counters};

/// Live's write counters now, as the release record keeps them (null when
/// they cannot be read: then every table is compared).
pub(super) async fn counters(target: &Target) -> serde_json::Value {
    match detect::counters(&target.live_url).await {
        Ok(c) => serde_json::to_value(c).expect("counters serialize"),
        Err(e) => {
            tracing::warn!(error = %e, "Cannot read live's write counters; a restore would compare every table.");
            serde_json::Value::Null
        }
    }
}

/// What the release knows about its own writes on live.
fn attribution(cx: &Ctx<'_>, steps: &[JournalEntry], plan: &[Migration]) -> Attribution {
    let own_xids =
        steps.iter().filter(|e| e.step == Step::Xid).filter_map(|e| e.detail.as_deref()?.parse::<u64>().ok()).collect();
    let unattributed = steps
        .iter()
        .find(|e| e.step == Step::Unattributed)
        .and_then(|e| e.detail.clone())
        .map(|d| format!("the release wrote rows pgrehearse cannot tell from other sessions' ({d})"));
    let deletes = match cx.source.kind() {
        MigrationKind::Sqlx | MigrationKind::Diesel => plan
            .iter()
            .find(|m| deletes_rows(&m.up_sql))
            .map(|m| format!("migration {} deletes rows, and a deleted row does not say who deleted it", m.version)),
        MigrationKind::Payload => Some(
            "Payload migrations run code pgrehearse cannot read, and a deleted row does not say who deleted it".into(),
        ),
        MigrationKind::Command => None,
    };
    Attribution { own_xids, history_table: cx.source.table(), unattributed, deletes }
}

/// Whether `sql` holds a statement that can delete rows.
fn deletes_rows(sql: &str) -> bool {
    split::tokens(sql).any(|t| t.is_kw("delete") || t.is_kw("truncate") || t.is_kw("merge"))
}

fn at_of(steps: &[JournalEntry], step: Step) -> Option<String> {
    steps.iter().rev().find(|e| e.step == step).map(|e| e.at.clone())
}

/// Compares `kept` with `restored` (live offline, between the swap's
/// renames), journals and saves the result; never fails.
pub(super) async fn find(
    cx: &Ctx<'_>,
    journal: &Journal,
    row: &ReleaseRow,
    plan: &[Migration],
    kept: &str,
    restored: &str,
) -> serde_json::Value {
    if let Err(e) = journal.step(Step::Stranded, Some(kept)).await {
        tracing::warn!(error = %e, "Cannot journal the stranded-writes comparison; comparing anyway.");
    }
    let steps = cx.state.journal(&row.id).await.unwrap_or_default();
    let since =
        steps.iter().find(|e| e.step == Step::Snapshot).map_or_else(|| row.started_at.clone(), |e| e.at.clone());
    let until = at_of(&steps, Step::SwapRenamed).unwrap_or_else(|| Utc::now().to_rfc3339());
    let before: Option<Counters> = serde_json::from_value(row.write_counters.clone()).ok();
    let admin = cx.target.admin();
    let t0 = std::time::Instant::now();
    let found =
        detect::find(&admin, kept, restored, &attribution(cx, &steps, plan), before.as_ref(), since, until).await;
    let ms = t0.elapsed().as_millis();
    let summary = match &found.error {
        Some(e) => format!("unknown: {e}"),
        None => format!(
            "{} row(s) in {} table(s), {} table(s) unknown; compared in {ms} ms",
            found.rows(),
            found.tables.len(),
            found.unknown.len()
        ),
    };
    let value = serde_json::to_value(&found).expect("stranded writes serialize");
    let mut saved = row.clone();
    saved.stranded_writes = value.clone();
    if let Err(e) = cx.state.release_update(&saved).await {
        tracing::warn!(error = %e, "Cannot save the stranded writes in the release record yet.");
    }
    if let Err(e) = journal.step(Step::StrandedDone, Some(&summary)).await {
        tracing::warn!(error = %e, "Cannot journal the stranded-writes comparison's result.");
    }
    value
}

/// The release record's `stranded_writes` after a swap: what this run
/// found, else what an earlier run of it saved, else an honest unknown
/// (the swap was finished without a recorded comparison).
pub(super) fn after_swap(found: Option<serde_json::Value>, saved: &serde_json::Value, kept: &str) -> serde_json::Value {
    if let Some(v) = found {
        return v;
    }
    if !saved.is_null() {
        return saved.clone();
    }
    let unknown = StrandedWrites {
        since: String::new(),
        until: String::new(),
        kept_in: kept.to_string(),
        tables: vec![],
        unknown: vec![],
        error: Some(
            "the swap was finished by an earlier run that stopped before recording the comparison; live has been open since, so a comparison now would mix in later writes".into(),
        ),
    };
    serde_json::to_value(unknown).expect("stranded writes serialize")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deleting_statements_are_seen_outside_comments_and_strings() {
        assert!(deletes_rows("DELETE FROM orders WHERE id < 3;"));
        assert!(deletes_rows("truncate log;"));
        assert!(!deletes_rows("-- delete nothing\nALTER TABLE t ADD COLUMN note text DEFAULT 'delete';"));
    }

    #[test]
    fn a_swap_without_a_recorded_comparison_is_unknown() {
        let v = after_swap(None, &serde_json::Value::Null, "app_failed_r");
        assert_eq!(v["kept_in"], "app_failed_r");
        assert_eq!(v["tables"], serde_json::json!([]));
        assert!(v["error"].as_str().unwrap().contains("earlier run"));
        let saved = serde_json::json!({"kept_in": "x"});
        assert_eq!(after_swap(None, &saved, "y"), saved);
    }
}
