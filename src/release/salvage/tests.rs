//! Salvage's decisions and SQL, without a server (the integration test
//! `tests/it/salvage.rs` runs them on real clusters).

use std::collections::BTreeSet;

use super::list::{Decision, KeptRow, LiveRow, Stranded, decide};
use super::*;
use crate::error_class::{Class, Classify};

fn row(op: Op, kept: Option<(&str, serde_json::Value, i64)>, before: Option<&str>) -> Stranded {
    Stranded {
        op,
        key: serde_json::json!({"id": 7}),
        key_lit: "'{\"id\": 7}'".into(),
        before_digest: before.map(str::to_string),
        before_lit: before.map_or("NULL".into(), |b| format!("'{b}'")),
        kept: kept.map(|(digest, values, age)| KeptRow {
            values: values.as_object().unwrap().clone(),
            lit: format!("'{values}'"),
            digest: digest.into(),
            age,
        }),
    }
}

/// Live's row: its digest over the list's columns, and over the common ones.
fn at(listed: &str, common: &str) -> Option<LiveRow> {
    Some(LiveRow { listed: listed.into(), common: common.into() })
}

fn cols(c: &[&str]) -> BTreeSet<String> {
    c.iter().map(|s| s.to_string()).collect()
}

#[test]
fn updates_apply_only_over_the_row_the_restore_left() {
    let live = cols(&["id", "email"]);
    let r = row(Op::Update, Some(("after", serde_json::json!({"id": 7, "email": "x"}), 3)), Some("before"));
    assert_eq!(decide(&r, at("before", "x").as_ref(), &live), Decision::Apply);
    assert_eq!(decide(&r, at("y", "after").as_ref(), &live), Decision::Already);
    assert!(matches!(decide(&r, at("other", "other").as_ref(), &live), Decision::Skip(SkipReason::Conflict, _)));
    assert!(matches!(decide(&r, None, &live), Decision::Skip(SkipReason::Conflict, _)));
}

#[test]
fn inserts_and_deletes_are_decided_by_the_key() {
    let live = cols(&["id", "email"]);
    let ins = row(Op::Insert, Some(("after", serde_json::json!({"id": 7, "email": "x"}), 3)), None);
    assert_eq!(decide(&ins, None, &live), Decision::Apply);
    assert_eq!(decide(&ins, at("z", "after").as_ref(), &live), Decision::Already);
    assert!(matches!(decide(&ins, at("else", "else").as_ref(), &live), Decision::Skip(SkipReason::Conflict, _)));
    let del = row(Op::Delete, None, Some("before"));
    assert_eq!(decide(&del, at("before", "c").as_ref(), &live), Decision::Apply);
    assert_eq!(decide(&del, None, &live), Decision::Already);
    assert!(matches!(decide(&del, at("changed", "c").as_ref(), &live), Decision::Skip(SkipReason::Conflict, _)));
}

#[test]
fn a_value_in_a_column_live_lacks_is_refused_but_a_null_is_not() {
    let live = cols(&["id", "note"]);
    let tagged = row(Op::Insert, Some(("a", serde_json::json!({"id": 7, "note": "n", "tag": "t"}), 1)), None);
    match decide(&tagged, None, &live) {
        Decision::Skip(SkipReason::ColumnsMissing, why) => assert!(why.contains("tag"), "{why}"),
        other => panic!("{other:?}"),
    }
    let untagged = row(Op::Insert, Some(("a", serde_json::json!({"id": 7, "note": "n", "tag": null}), 1)), None);
    assert_eq!(decide(&untagged, None, &live), Decision::Apply);
}

#[test]
fn deletes_run_first_then_rows_in_commit_order_and_every_write_is_guarded() {
    let live = cols(&["id", "email"]);
    let keys = vec!["id".to_string()];
    let young = row(Op::Insert, Some(("a", serde_json::json!({"id": 1, "email": "y"}), 2)), None);
    let old = row(Op::Update, Some(("b", serde_json::json!({"id": 2, "email": "o"}), 9)), Some("before"));
    let del = row(Op::Delete, None, Some("gone"));
    let mut st: Vec<_> = [&young, &old, &del]
        .iter()
        .map(|r| script::statement("public.t", "public.t", &keys, "'{id,email}'::text[]", &live, r))
        .collect();
    script::sort(&mut st);
    let ops: Vec<Op> = st.iter().map(|s| s.op).collect();
    assert_eq!(ops, [Op::Delete, Op::Update, Op::Insert]);
    assert!(st[0].sql.starts_with("DELETE FROM public.t AS t USING"), "{}", st[0].sql);
    assert!(st[0].sql.contains("= 'gone';"), "{}", st[0].sql);
    assert!(st[1].sql.contains("SET \"email\" = v.\"email\""), "{}", st[1].sql);
    assert!(!st[1].sql.contains("\"id\" = v.\"id\""), "the key is not rewritten: {}", st[1].sql);
    assert!(st[1].sql.ends_with("= 'before';"), "{}", st[1].sql);
    assert!(st[2].sql.contains("ON CONFLICT DO NOTHING"), "{}", st[2].sql);
}

#[test]
fn the_journal_keeps_each_salvage_run() {
    let entry = |step, detail: &str| crate::state::JournalEntry {
        seq: 1,
        step,
        detail: Some(detail.into()),
        at: "2026-01-01T00:00:00Z".into(),
    };
    let runs = SalvageRun::from_journal(&[
        entry(Step::Finished, "restored"),
        entry(Step::Salvaged, r#"{"inserted":3,"updated":2,"deleted":1,"skipped":4}"#),
    ]);
    assert_eq!(
        runs,
        [SalvageRun { at: "2026-01-01T00:00:00Z".into(), inserted: 3, updated: 2, deleted: 1, skipped: 4 }]
    );
}

#[test]
fn error_kinds_are_labels() {
    let e = SalvageError::NoList { database: "app_failed_r".into() };
    assert!(crate::error_class::is_label(e.kind()));
    assert_eq!(e.class(), Class::Usage);
    assert_eq!(SkipReason::ColumnsMissing.as_str(), "columns_missing");
    assert_eq!(serde_json::to_value(SkipReason::ListStale).unwrap(), "list_stale");
}

#[test]
fn the_file_is_one_transaction_and_free_text_stays_inside_its_comments() {
    let s = Salvage {
        release_id: "r-1".into(),
        kept_in: "app_failed_r_1".into(),
        database: "app".into(),
        applied: false,
        output: None,
        tables: Vec::new(),
        skipped: vec![Skipped {
            table: "public.t".into(),
            op: Op::Update,
            key: serde_json::json!({"id": "1\nDROP TABLE t;"}),
            reason: SkipReason::Conflict,
            detail: "changed\nDROP TABLE t;".into(),
        }],
        unknown: vec![Unknown {
            table: "public.audit".into(),
            reason: "no primary key\r\nDROP TABLE audit;".into(),
            rows_only_in_kept: Some(1),
            rows_only_in_live: Some(0),
        }],
        sql: None,
    };
    let rows = vec![("public.audit".to_string(), vec!["{\"note\": \"a\nDROP TABLE audit;\"}".to_string()])];
    let text = script::file(&s, &[], &rows);
    let code: Vec<&str> = text.lines().filter(|l| !l.starts_with("-- ") && !l.is_empty()).collect();
    assert_eq!(code, ["BEGIN;", "SET CONSTRAINTS ALL DEFERRED;", "COMMIT;"], "{text}");
}
