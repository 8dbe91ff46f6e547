//! `pgrehearse rehearse` and `status` with a diesel project, on a live
//! cluster and a SECOND cluster as the shadow server.
//!
//! - Diesel's order, not the directories' name order: the version is the
//!   name up to the first `_` with hyphens removed, compared as text, so
//!   `20240101120000_a` runs before `2024-01-02-000000_b` although it sorts
//!   after it by name (and `b` needs `a`'s table: the wrong order fails).
//! - `metadata.toml` with `run_in_transaction = false` runs the migration
//!   outside a transaction (`CREATE INDEX CONCURRENTLY` applies, which it
//!   cannot inside one).
//! - An empty `down.sql` is diesel's "not reversible": reported as
//!   `not_reversible`, a warning, not a problem — the rehearsal passes while
//!   every migration above it is proven reversible.
//! - The kept copy has `__diesel_schema_migrations` rows as diesel writes
//!   them; live gets none.

use crate::harness::migrations::*;

/// `(directory, version diesel derives from it)`, in diesel's order.
const ORDER: [(&str, &str); 4] = [
    ("2024-01-01-000000_backfill_labels", "20240101000000"),
    ("20240101120000_a", "20240101120000"),
    ("2024-01-02-000000_b", "20240102000000"),
    ("2024-01-03-000000_items_label_idx", "20240103000000"),
];

#[test]
fn diesel_order_transaction_mode_and_empty_down() {
    let rig = Rig::start(
        "diesel",
        "CREATE TABLE items (id integer PRIMARY KEY, label text NOT NULL);
         INSERT INTO items SELECT i, 'item ' || i FROM generate_series(1, 5000) i;",
    );
    // A data fix nobody can undo: an empty down.sql.
    rig.diesel(ORDER[0].0, "UPDATE items SET label = upper(label) WHERE id <= 10;\n", Some(""), None);
    rig.diesel(
        ORDER[1].0,
        "CREATE TABLE widgets (id integer PRIMARY KEY, item_id integer NOT NULL REFERENCES items (id));\n",
        Some("DROP TABLE widgets;\n"),
        None,
    );
    // Needs a's table: in name order it would run first and fail.
    rig.diesel(
        ORDER[2].0,
        "ALTER TABLE widgets ADD COLUMN color text;\n",
        Some("ALTER TABLE widgets DROP COLUMN color;\n"),
        None,
    );
    rig.diesel(
        ORDER[3].0,
        "CREATE INDEX CONCURRENTLY items_label_idx ON items (label);\n",
        Some("DROP INDEX CONCURRENTLY items_label_idx;\n"),
        Some("run_in_transaction = false\n"),
    );
    let mut by_name: Vec<&str> = ORDER.iter().map(|o| o.0).collect();
    by_name.sort();
    assert_ne!(by_name, ORDER.iter().map(|o| o.0).collect::<Vec<_>>(), "the fixture must differ in name order");
    let expected: Vec<String> = ORDER.iter().map(|o| o.1.to_string()).collect();

    // status lists them in diesel's order, with their modes.
    let st = rig.status();
    st.ok();
    let st = st.json();
    let pending: Vec<String> =
        st["pending"].as_array().unwrap().iter().map(|p| p["version"].as_str().unwrap().to_string()).collect();
    assert_eq!(pending, expected, "status pending order: {st:#}");
    let p = &st["pending"];
    assert_eq!(p[0]["reversible"], false, "empty down.sql: {st:#}");
    assert_eq!(p[3]["transactional"], false, "run_in_transaction = false: {st:#}");
    assert_eq!(p[1]["transactional"], true, "{st:#}");

    let r = rig.rehearse(&["--snapshot", "fresh", "--keep"]);
    let report = r.json();
    let out = &r.stdout;
    r.ok();
    assert_eq!(report["ok"], true, "report: {out}");
    assert_eq!(versions(&report), expected, "migrations[] order: {out}");
    let names: Vec<&str> =
        report["migrations"].as_array().unwrap().iter().map(|m| m["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["backfill_labels", "a", "b", "items_label_idx"], "names: {out}");
    for m in report["migrations"].as_array().unwrap() {
        assert_eq!(m["status"], "applied", "migration {}: {out}", m["version"]);
    }
    assert_eq!(report["mode"], "per_migration", "one migration runs outside a transaction: {out}");
    let cic = migration(&report, ORDER[3].1);
    assert_eq!(cic["transactional"], false, "run_in_transaction = false ran in a transaction? {cic:#}");
    assert!(
        !locks_on(cic, "items").iter().any(|l| l["mode"] == "ShareLock" || l["mode"] == "AccessExclusiveLock"),
        "CREATE INDEX CONCURRENTLY reported as blocking writes: {cic:#}"
    );
    assert_eq!(migration(&report, ORDER[1].1)["transactional"], true, "{out}");

    // The empty down: not reversible, a warning; the others are proven.
    let first = migration(&report, ORDER[0].1);
    assert_eq!(first["reversible"]["result"], "not_reversible", "empty down.sql: {first:#}");
    assert!(
        first["reversible"]["reason"].as_str().unwrap_or_default().contains("empty"),
        "reason of not_reversible: {first:#}"
    );
    for (_, v) in &ORDER[1..] {
        let m = migration(&report, v);
        assert_eq!(m["reversible"]["result"], "reversible", "migration {v}: {m:#}");
    }
    // No down failed, but the plan as a whole cannot be reverted: its first
    // migration has none. That is reported, and is not a problem.
    assert_eq!(report["reversible"], false, "{out}");
    assert_eq!(report["problems"], serde_json::json!([]), "{out}");
    assert!(
        report["warnings"].to_string().contains(&format!("migration {} is not reversible", ORDER[0].1)),
        "the empty down is not among the warnings: {out}"
    );

    // The kept copy: diesel's history table and the plan's effects.
    let kept = kept_db(&rig, &report);
    let sh = &rig.shadow;
    let history = rows(
        sh,
        &kept,
        "SELECT version || '|' || (run_on IS NOT NULL) FROM __diesel_schema_migrations ORDER BY run_on, version",
    );
    let expected_rows: Vec<String> = expected.iter().map(|v| format!("{v}|true")).collect();
    let mut sorted = history.clone();
    sorted.sort();
    assert_eq!(sorted, expected_rows, "__diesel_schema_migrations of the kept copy");
    assert_eq!(
        sh.psql(&kept, "SELECT format_type(atttypid, atttypmod) FROM pg_attribute WHERE attrelid = 'widgets'::regclass AND attname = 'color'"),
        "text"
    );
    assert_eq!(sh.psql(&kept, "SELECT indisvalid FROM pg_index WHERE indexrelid = 'items_label_idx'::regclass"), "t");
    assert_eq!(
        sh.psql(&kept, "SELECT label FROM items WHERE id = 3"),
        "ITEM 3",
        "the backfill did not run on the copy"
    );

    // Live: read only.
    assert!(
        !table_exists(&rig.live, "app", "__diesel_schema_migrations"),
        "the rehearsal wrote diesel's table on live"
    );
    assert!(!table_exists(&rig.live, "app", "widgets"), "the rehearsal changed live");
    assert_eq!(
        rig.live.psql("app", "SELECT label FROM items WHERE id = 3"),
        "item 3",
        "the rehearsal changed live's data"
    );

    let st = rig.status();
    st.ok();
    assert_eq!(st.json()["last_rehearsal"]["current_plan"], true, "{}", st.stdout);
}
