//! Renderer tests: subjects, the approve command, the chart, and escaping
//! of everything a report's content can carry into the HTML.

use super::*;
use crate::rehearsal::observer::Rewrite;
use crate::rehearsal::runner::{Failure, LockHeld};
use crate::report::email::release;

const EVIL: &str = "<script>alert('x')</script> & \"q\"";

fn migration(version: &str, name: &str, ms: u64, status: Status) -> MigrationResult {
    MigrationResult {
        version: version.into(),
        name: name.into(),
        file: format!("/srv/m/{version}_{name}.up.sql"),
        transactional: true,
        status,
        ok: status == Status::Applied,
        duration_ms: ms,
        statements: Vec::new(),
        locks: Vec::new(),
        locks_sampled_every_ms: None,
        rewrites: Vec::new(),
        size_deltas: Vec::new(),
        wal_bytes: None,
        blocking: Vec::new(),
        error: None,
        reversible: Some(Reversal::Reversible),
    }
}

fn lock(relation: &str, mode: &str, held_ms: u64) -> LockHeld {
    LockHeld {
        relation: relation.into(),
        mode: mode.into(),
        held_ms,
        statement: Some(0),
        sampled: false,
        taken_by: None,
    }
}

fn report(ok: bool, migrations: Vec<MigrationResult>) -> crate::rehearsal::Report {
    crate::rehearsal::Report {
        id: "20261124T093000Z-ab12".into(),
        target: "app".into(),
        plan: "9f2c".repeat(16),
        ok,
        verdict: if ok { "pass" } else { "problems" },
        problems: if ok { Vec::new() } else { vec![format!("migration 2 failed: {EVIL}")] },
        warnings: vec!["[index_not_concurrent] shown as lint".into(), format!("a warning with {EVIL}")],
        snapshot_id: "20261124T030000Z-0001".into(),
        snapshot_taken_at: "2026-11-24T03:00:00Z".into(),
        fresh_snapshot: None,
        method: "template_clone",
        restore_duration_ms: 550,
        database: "pgrehearse_app_x".into(),
        server_version: "16.4 (Debian 16.4-1)".into(),
        kept: false,
        started_at: "2026-11-24T09:30:00Z".into(),
        finished_at: "2026-11-24T09:30:09Z".into(),
        duration_ms: 9100,
        apply_ms: 4200,
        reverse_ms: Some(800),
        mode: "single_transaction".into(),
        role: "app".into(),
        live_role: "app".into(),
        lock_timeout_ms: 3000,
        catch_up: Vec::new(),
        drift: Vec::new(),
        migrations,
        reversible: Some(ok),
        reversibility_ignored: "the \\restrict line",
        lint: vec![crate::rehearsal::lint::Finding {
            rule: crate::lint_rule::LintRule::IndexNotConcurrent,
            severity: crate::lint_rule::Severity::Warning,
            migration: "2".into(),
            statement: Some(0),
            line: Some(1),
            sql: Some("CREATE INDEX o_c ON orders (c)".into()),
            relation: Some("orders".into()),
            lock: Some("ShareLock".into()),
            table_bytes: Some(1 << 30),
            table_rows: Some(1_000_000),
            effect: None,
            message: format!("blocks writes on orders for 3.1 s {EVIL}"),
        }],
        seeds: Vec::new(),
        queries: Vec::new(),
        queries_ms: None,
        notes: vec!["Timings are from a restored (cold) copy.".into()],
        approve: format!("pgrehearse approve --target app --plan {}", "9f2c".repeat(16)),
        schema_after: None,
        not_valid: Vec::new(),
    }
}

fn measured() -> Vec<MigrationResult> {
    let mut a = migration("1", "create_orders", 800, Status::Applied);
    a.locks = vec![lock("customers", "ShareLock", 300)];
    let mut b = migration("2", EVIL, 3100, Status::Applied);
    b.locks = vec![lock("orders", "ShareLock", 3100), lock("orders", "AccessExclusiveLock", 1200)];
    b.rewrites =
        vec![Rewrite { relation: "orders".into(), kind: "table", bytes_before: 10 << 20, bytes_after: 11 << 20 }];
    vec![a, b]
}

#[test]
fn a_passing_rehearsal_has_subject_table_chart_and_the_approve_command() {
    let r = report(true, measured());
    let m = rehearsal(&r);
    assert_eq!(m.subject, "app: rehearsal 20261124T093000Z-ab12 passed");
    assert!(m.text.contains(&r.approve), "{}", m.text);
    assert!(m.html.contains(&r.approve), "{}", m.html);
    // The chart: one time scale, the longest (3.1 s) is the full width.
    assert!(m.html.contains("Duration and locks"));
    assert!(m.html.contains("width:320px;height:10px;background:#2563eb"), "{}", m.html);
    assert!(m.html.contains("width:83px;height:10px;background:#2563eb"), "800 of 3100 ms: {}", m.html);
    assert!(m.html.contains("height:6px;background:#ea580c"), "the longest lock is a SHARE lock: {}", m.html);
    // The table: strongest lock, its hold, the rewrite.
    for needle in ["ACCESS EXCLUSIVE on orders", "1.2 s", "table orders (10.0 MiB)", "SHARE on customers"] {
        assert!(m.html.contains(needle), "missing {needle:?}: {}", m.html);
    }
    assert!(m.html.contains("blocks writes on orders"), "lint findings are listed");
    assert!(!m.html.contains("shown as lint"), "lint warnings are not repeated as warnings");
}

#[test]
fn everything_from_the_report_is_escaped() {
    let mut ms = measured();
    ms[1].status = Status::Failed;
    ms[1].error = Some(Failure {
        file: "2.up.sql".into(),
        statement: Some(0),
        line: Some(3),
        sql: Some(format!("SELECT '{EVIL}'")),
        sqlstate: None,
        message: EVIL.into(),
        detail: Some(format!("Key (x)=({EVIL}) is duplicated.")),
        hint: None,
        position: Some(8),
    });
    let m = rehearsal(&report(false, ms));
    assert!(!m.html.contains("<script"), "{}", m.html);
    assert!(m.html.contains("&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt; &amp; &quot;q&quot;"), "{}", m.html);
    assert_eq!(m.subject, "app: rehearsal 20261124T093000Z-ab12 found problems");
    assert!(!m.html.contains("pgrehearse approve"), "a plan with problems offers no approval");
    assert!(m.html.contains("background:#dc2626"), "the failed migration's bar is red");
}

#[test]
fn drill_reports_rto_checks_and_mismatches() {
    let mut r = crate::drill::Report {
        snapshot_id: "20261124T030000Z-0001".into(),
        target: "app".into(),
        ok: true,
        method: Some("restore"),
        restore_duration_ms: Some(9400),
        tables_checked: 12,
        mismatches: Vec::new(),
        database: None,
        kept: false,
        verified_at: Some("2026-11-24T04:00:10Z".into()),
    };
    let m = drill(&r);
    assert_eq!(m.subject, "app: restore drill of 20261124T030000Z-0001 passed");
    assert!(m.text.contains("Restore time (RTO): 9.4 s") && m.text.contains("Tables checked: 12"), "{}", m.text);
    r.ok = false;
    r.mismatches = vec![format!("orders: 10 rows, expected 11 {EVIL}")];
    let m = drill(&r);
    assert!(m.subject.ends_with("FAILED"));
    assert!(m.html.contains("orders: 10 rows, expected 11 &lt;script&gt;"), "{}", m.html);
    assert!(m.text.contains("verify latest"));
}

#[test]
fn a_restored_release_says_what_recovery_did() {
    let row = crate::state::ReleaseRow {
        id: "r-20261124T020000Z-77".into(),
        target: "app".into(),
        plan_hash: "ab".repeat(32),
        content_hash: "cd".repeat(32),
        approval_id: Some("a-1".into()),
        rehearsal_id: Some("20261124T093000Z-ab12".into()),
        database: "app".into(),
        on_failure: "restore".into(),
        outcome: crate::state::Outcome::Restored,
        reason: Some(format!("migration 2 failed: duplicate key {EVIL}")),
        error_kind: Some(crate::state::ReleaseErrorKind::MigrationFailed),
        pre_snapshot_id: Some("20261124T020001Z-0002".into()),
        failed_database: Some("app_failed_r-20261124T020000Z-77".into()),
        recovery: Some("restore".into()),
        started_at: "2026-11-24T02:00:00Z".into(),
        finished_at: Some("2026-11-24T02:00:30Z".into()),
        pid: 42,
        host: "db-admin".into(),
        migrations: serde_json::json!([
            {"version": "1", "name": "a", "status": "applied", "duration_ms": 1500, "attempts": 1, "error": null},
            {"version": "2", "name": "b", "status": "failed", "duration_ms": 300, "attempts": 2, "error": {
                "message": "could not create unique index \"sites_homepage_key\"", "sqlstate": "23505",
                "detail": "Key (homepage)=(https://a.example) is duplicated.", "hint": null, "position": null,
                "file": "2_b.up.sql", "statement": 0, "line": 1, "sql": "CREATE UNIQUE INDEX …",
            }},
        ]),
        timings: serde_json::json!({"preflight_ms": 200, "snapshot_ms": 4100, "apply_ms": 1800, "recovery_ms": 9000, "total_ms": 15100}),
        warnings: Vec::new(),
        pending: serde_json::json!([]),
        server_version: Some("16.4 (Debian 16.4-1)".into()),
        stranded_writes: serde_json::json!({
            "since": "2026-11-24T02:00:01Z", "until": "2026-11-24T02:00:20Z", "kept_in": "app_failed_r_77",
            "tables": [{"table": "public.orders", "inserted": 41, "updated": 2, "deleted": 0}], "unknown": [], "error": null,
        }),
        write_counters: serde_json::Value::Null,
    };
    let rel = crate::release::Release::new(row, Vec::new(), false);
    let m = release(&rel);
    assert_eq!(m.subject, "app: release r-20261124T020000Z-77 restored");
    for needle in [
        "Recovery taken: restore",
        "Failed database kept as: app_failed_r-20261124T020000Z-77",
        "Pre-release snapshot: 20261124T020001Z-0002",
        "preflight 200 ms, pre-release snapshot 4.1 s, apply 1.8 s, recovery 9.0 s, total 15.1 s",
        "failed       2 b — 300 ms, 2 attempts: could not create unique index \"sites_homepage_key\" DETAIL: Key (homepage)=(https://a.example) is duplicated.",
        "Live's server: PostgreSQL 16.4 (Debian 16.4-1)",
        "Stranded writes: 43 row(s) other sessions wrote on live between 2026-11-24T02:00:01Z and 2026-11-24T02:00:20Z are NOT in live; they are kept in `app_failed_r_77`.",
        "public.orders: inserted 41, updated 2, deleted 0",
        "pgrehearse salvage r-20261124T020000Z-77 --apply",
    ] {
        assert!(m.text.contains(needle), "missing {needle:?} in\n{}", m.text);
    }
    assert!(m.html.contains("public.orders: inserted 41, updated 2, deleted 0"), "{}", m.html);
    assert!(m.html.contains("width:320px;height:10px;background:#2563eb"), "{}", m.html);
    assert!(m.html.contains("duplicate key &lt;script&gt;"), "{}", m.html);
}

#[test]
fn alerts_name_target_and_job_and_escape_the_error() {
    let m = alert("app", "snapshot", EVIL);
    assert_eq!(m.subject, "ALERT app: snapshot failed");
    assert!(m.text.contains(EVIL) && m.text.contains("pgrehearse --target app snapshot"), "{}", m.text);
    assert!(!m.html.contains("<script") && m.html.contains("&lt;script&gt;"), "{}", m.html);
}

#[test]
fn a_failure_report_names_detail_hint_server_and_keeps_its_tables_whole() {
    let mut ms = measured();
    ms[1].status = Status::Failed;
    ms[1].statements = vec![
        crate::rehearsal::runner::StatementResult {
            index: 0,
            line: 1,
            sql: "UPDATE t SET a = a || '`x`'".into(),
            duration_ms: 5,
        },
        crate::rehearsal::runner::StatementResult {
            index: 1,
            line: 2,
            sql: "CREATE UNIQUE INDEX sites_homepage_key ON sites (homepage)".into(),
            duration_ms: 9,
        },
    ];
    ms[1].error = Some(Failure {
        file: "2.up.sql".into(),
        statement: Some(1),
        line: Some(2),
        sql: Some("CREATE UNIQUE INDEX sites_homepage_key ON sites (homepage)".into()),
        sqlstate: Some("23505".into()),
        message: "could not create unique index \"sites_homepage_key\"".into(),
        detail: Some("Key (homepage)=(https://a.example) is duplicated.".into()),
        hint: Some("Remove the duplicate `homepage` values first.".into()),
        position: None,
    });
    let mut c = migration("3", "concurrently", 40, Status::Applied);
    c.transactional = false;
    c.locks_sampled_every_ms = Some(20);
    ms.push(c);
    let m = rehearsal(&report(false, ms));
    for needle in [
        "- Server: PostgreSQL 16.4 (Debian 16.4-1)",
        "**Error at line 2:** could not create unique index \"sites_homepage_key\" (SQLSTATE 23505)",
        "Detail: Key (homepage)=(https://a.example) is duplicated.",
        "Hint: Remove the duplicate \\`homepage\\` values first.",
        "| 1 | 1 | ``UPDATE t SET a = a \\|\\| '`x`'`` | 5 ms |",
        "Locks on existing tables: none observed (sampled every 20 ms)",
    ] {
        assert!(m.text.contains(needle), "missing {needle:?} in\n{}", m.text);
    }
    assert!(!m.text.contains("Locks on existing tables: none\n"), "a sampled migration says what was sampled");
    for needle in
        ["Key (homepage)=(https://a.example) is duplicated.", "none observed (sampled every 20 ms)", "PostgreSQL 16.4"]
    {
        assert!(m.html.contains(needle), "missing {needle:?} in the HTML");
    }
}
