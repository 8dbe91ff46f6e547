//! Every down judged on its own, in one rehearsal of a diesel project of 32
//! migrations, on a live cluster and a SECOND cluster as the shadow server:
//!
//! - a down that re-adds a dropped column (at the end of its table):
//!   `column_order_only`, a note, not a problem;
//! - a down that fails (it drops a table that does not exist): `failed`;
//! - a down that runs but loses a trigger its up dropped: `differs`, with a
//!   diff naming the trigger (and the migrations below and above it are
//!   still judged, and not blamed);
//! - diesel's generated comment-only down: a no-op down that runs — after a
//!   data-only up it reverts the schema (`reversible`), after an up that
//!   creates an index it does not (`differs`, saying why) — never "empty";
//! - no `down.sql` and a zero-byte one: `not_reversible`, warnings;
//! - twenty downs below them and clean ones between and above them:
//!   `reversible`.
//!
//! With only the column-order down among clean ones the rehearsal passes
//! (exit 0) and the plan can be approved; `[rehearsal] strict_column_order =
//! true` makes the same plan fail (exit 2). No scratch, reference or judge
//! database is left on the shadow. Read back with `psql`.

use crate::harness::migrations::*;
use crate::harness::shadow::scratch_dbs;
use serde_json::Value;

const SETUP: &str = "
    CREATE TABLE items (id integer PRIMARY KEY, legacy text, label text NOT NULL);
    INSERT INTO items SELECT i, 'old ' || i, 'item ' || i FROM generate_series(1, 500) i;
    CREATE FUNCTION keep_label() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN NEW.label := coalesce(NEW.label, OLD.label); RETURN NEW; END $$;
    CREATE TRIGGER items_keep_label BEFORE UPDATE ON items FOR EACH ROW EXECUTE FUNCTION keep_label();";

/// diesel's `migration generate` down.sql.
const GENERATED_DOWN: &str = "-- This file should undo anything in `up.sql`\n";

/// Diesel's directory name and version of migration `n`.
fn dir(n: usize, name: &str) -> (String, String) {
    (format!("2025-01-01-{n:06}_{name}"), format!("20250101{n:06}"))
}

/// A clean migration: a table of its own, dropped by its down.
fn clean(rig: &Rig, n: usize) -> String {
    let (d, v) = dir(n, &format!("create_t{n}"));
    rig.diesel(
        &d,
        &format!("CREATE TABLE t{n} (id integer PRIMARY KEY, item_id integer REFERENCES items (id), v text);\nCREATE INDEX t{n}_v_idx ON t{n} (v);\n"),
        Some(&format!("DROP TABLE t{n};\n")),
        None,
    );
    v
}

fn verdict<'a>(report: &'a Value, version: &str) -> &'a Value {
    &migration(report, version)["reversible"]
}

#[test]
fn every_down_gets_its_own_verdict_in_one_rehearsal() {
    let rig = Rig::start("diesel", SETUP);
    let mut clean_versions: Vec<String> = (1..=20).map(|n| clean(&rig, n)).collect();
    let (d, column_order) = dir(21, "drop_legacy");
    rig.diesel(
        &d,
        "ALTER TABLE items DROP COLUMN legacy;\n",
        Some("ALTER TABLE items ADD COLUMN legacy text;\n"),
        None,
    );
    clean_versions.push(clean(&rig, 22));
    let (d, fails) = dir(23, "audits");
    rig.diesel(&d, "CREATE TABLE audits (id integer);\n", Some("DROP TABLE audit_log;\n"), None);
    clean_versions.push(clean(&rig, 24));
    let (d, lost_trigger) = dir(25, "touched_at");
    rig.diesel(
        &d,
        "DROP TRIGGER items_keep_label ON items;\nALTER TABLE items ADD COLUMN touched_at timestamptz;\n",
        // Forgets to create the trigger again.
        Some("ALTER TABLE items DROP COLUMN touched_at;\n"),
        None,
    );
    let (d, noop_data) = dir(26, "upper_labels");
    rig.diesel(&d, "UPDATE items SET label = upper(label) WHERE id <= 5;\n", Some(GENERATED_DOWN), None);
    let (d, noop_index) = dir(27, "label_idx");
    rig.diesel(&d, "CREATE INDEX items_label_idx ON items (label);\n", Some(GENERATED_DOWN), None);
    clean_versions.push(clean(&rig, 28));
    let (d, missing) = dir(29, "no_down");
    rig.diesel(&d, "CREATE TABLE notes (id integer);\n", None, None);
    let (d, zero_bytes) = dir(30, "zero_byte_down");
    rig.diesel(&d, "CREATE TABLE tags (id integer);\n", Some(""), None);
    let (d, concurrent) = dir(31, "items_id_label_idx");
    rig.diesel(
        &d,
        "CREATE INDEX CONCURRENTLY items_id_label_idx ON items (id, label);\n",
        Some("DROP INDEX CONCURRENTLY items_id_label_idx;\n"),
        Some("run_in_transaction = false\n"),
    );
    clean_versions.push(concurrent);
    clean_versions.push(clean(&rig, 32));

    let r = rig.rehearse(&["--snapshot", "fresh"]);
    r.expect_code(2);
    let report = r.json();
    let out = &r.stdout;
    assert_eq!(versions(&report).len(), 32, "{out}");
    for m in report["migrations"].as_array().unwrap() {
        assert_eq!(m["status"], "applied", "every up applies: {out}");
    }

    for v in &clean_versions {
        assert_eq!(verdict(&report, v)["result"], "reversible", "migration {v}'s down is right: {out}");
    }
    let co = verdict(&report, &column_order);
    assert_eq!(co["result"], "column_order_only", "a re-added column: {co:#}");
    assert!(co["diff"].as_str().is_some_and(|d| d.contains("legacy text")), "the diff shows the column: {co:#}");

    let f = verdict(&report, &fails);
    assert_eq!(f["result"], "failed", "{f:#}");
    assert!(f["reason"].as_str().is_some_and(|s| s.contains("audit_log")), "the error names the table: {f:#}");

    let t = verdict(&report, &lost_trigger);
    assert_eq!(t["result"], "differs", "{t:#}");
    assert!(
        t["diff"].as_str().is_some_and(|d| d.contains("-CREATE TRIGGER items_keep_label")),
        "the diff names the lost trigger: {t:#}"
    );

    assert_eq!(verdict(&report, &noop_data)["result"], "reversible", "a no-op down after a data-only up: {out}");
    let ni = verdict(&report, &noop_index);
    assert_eq!(ni["result"], "differs", "{ni:#}");
    assert!(ni["reason"].as_str().is_some_and(|s| s.contains("only comments")), "{ni:#}");
    assert!(ni["diff"].as_str().is_some_and(|d| d.contains("+CREATE INDEX items_label_idx")), "{ni:#}");

    for v in [&missing, &zero_bytes] {
        assert_eq!(verdict(&report, v)["result"], "not_reversible", "migration {v}: {out}");
    }
    assert!(verdict(&report, &zero_bytes)["reason"].as_str().is_some_and(|s| s.contains("empty")), "{out}");
    assert!(!out.contains("not_checked"), "every down is judged: {out}");

    // Problems: exactly the three broken downs; the column order is a note.
    let problems: Vec<&str> = report["problems"].as_array().unwrap().iter().filter_map(Value::as_str).collect();
    assert_eq!(problems.len(), 3, "{problems:#?}");
    for v in [&fails, &lost_trigger, &noop_index] {
        assert!(problems.iter().any(|p| p.contains(&format!("migration {v}:"))), "{v} not among {problems:#?}");
    }
    assert!(report["notes"].to_string().contains("column_order_only"), "no column-order note: {out}");
    assert_eq!(report["reversible"], false, "{out}");
    assert!(report["reverse_ms"].as_u64().is_some(), "{out}");
    let left: Vec<String> = scratch_dbs(&rig.shadow).into_iter().filter(|d| !d.ends_with("_template")).collect();
    assert_eq!(left, Vec::<String>::new(), "databases left on the shadow");
}

#[test]
fn column_order_only_passes_and_approves_unless_strict() {
    let rig = Rig::start("diesel", SETUP);
    let below = clean(&rig, 1);
    let (d, column_order) = dir(2, "drop_legacy");
    rig.diesel(
        &d,
        "ALTER TABLE items DROP COLUMN legacy;\n",
        Some("ALTER TABLE items ADD COLUMN legacy text;\n"),
        None,
    );
    let above = clean(&rig, 3);

    let r = rig.rehearse(&["--snapshot", "fresh"]);
    r.ok();
    let report = r.json();
    assert_eq!(report["ok"], true, "{}", r.stdout);
    assert_eq!(report["problems"], serde_json::json!([]), "{}", r.stdout);
    assert_eq!(verdict(&report, &column_order)["result"], "column_order_only", "{}", r.stdout);
    for v in [&below, &above] {
        assert_eq!(verdict(&report, v)["result"], "reversible", "{}", r.stdout);
    }
    assert_eq!(report["reversible"], true, "column order alone keeps the plan reversible: {}", r.stdout);
    let plan = report["plan"].as_str().unwrap().to_string();
    let a = rig.pgr.run_json(&["approve", "--plan", &plan]);
    a.ok();
    assert_eq!(a.json()["plan"], plan.as_str());

    // The Markdown report says it in words.
    let md = rig.pgr.run(&["rehearse"]);
    md.ok();
    assert!(md.stdout.contains("column order only"), "{}", md.stdout);

    rig.configure("\n[rehearsal]\nstrict_column_order = true\n");
    let r = rig.rehearse(&[]);
    r.expect_code(2);
    let report = r.json();
    assert_eq!(verdict(&report, &column_order)["result"], "column_order_only", "{}", r.stdout);
    assert!(problems_text(&report).contains(&format!("migration {column_order}:")), "{}", r.stdout);
    let left: Vec<String> = scratch_dbs(&rig.shadow).into_iter().filter(|d| !d.ends_with("_template")).collect();
    assert_eq!(left, Vec::<String>::new(), "databases left on the shadow");
}
