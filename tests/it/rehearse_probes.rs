//! What the application would feel, measured by the rehearsal's probes
//! (`migrations[].blocking[]`), on a live cluster with 1 M rows in `orders`
//! and a SECOND cluster as the shadow server. One plan of five migrations,
//! run file by file (a `-- no-transaction` file forces it), so that each
//! migration's locks end with it; one rehearsal with probes and one without
//! are shared by the tests below:
//!
//! - `LOCK TABLE orders IN ACCESS EXCLUSIVE MODE; SELECT pg_sleep(2)` makes
//!   reads and writes wait 2 s (±15 %), blamed on the `LOCK TABLE`;
//! - a plain `CREATE INDEX` makes writes wait about its build and reads not;
//! - `CREATE INDEX CONCURRENTLY` and `ADD CONSTRAINT … NOT VALID`: ≤ 50 ms;
//! - `ADD COLUMN` with a constant default: ≈ 0;
//! - lint findings quote the waits; the Markdown report shows them;
//! - `[rehearsal] probes = false` reports no `blocking[]`.
//!
//! Independent read-backs: the measured waits are checked against the
//! statements' own durations in the report, and the data on live with `psql`.

use crate::harness::cli::local_store_path;
use crate::harness::migrations::*;
use serde_json::Value;
use std::sync::OnceLock;
use std::time::Instant;

const ORDERS: u32 = 1_000_000;

const LOCK: &str = "1";
const INDEX: &str = "2";
const CONCURRENT: &str = "3";
const NOT_VALID: &str = "4";
const ADD_COLUMN: &str = "5";

struct Rehearsals {
    with_probes: Value,
    without_probes: Value,
    /// The Markdown report of the rehearsal with probes, from the store.
    markdown: String,
}

/// Both rehearsals, run once for every test of this module (the clusters
/// stop when they are done).
fn rehearsals() -> &'static Rehearsals {
    static R: OnceLock<Rehearsals> = OnceLock::new();
    R.get_or_init(|| {
        let t0 = Instant::now();
        let rig = Rig::start("sqlx", "");
        as_app(
            &rig.live,
            "app",
            &format!(
                "CREATE TABLE orders (id integer PRIMARY KEY, customer_id integer NOT NULL, amount integer NOT NULL);
                 INSERT INTO orders SELECT i, i % 5000, i % 1000 FROM generate_series(1, {ORDERS}) i;"
            ),
        );
        rig.live.psql("app", "VACUUM ANALYZE orders");
        let files = [
            (LOCK, "lock_orders", "LOCK TABLE orders IN ACCESS EXCLUSIVE MODE;\nSELECT pg_sleep(2);\n"),
            (INDEX, "orders_customer_idx", "CREATE INDEX orders_customer_idx ON orders (customer_id);\n"),
            (
                CONCURRENT,
                "orders_amount_idx",
                "-- no-transaction\nCREATE INDEX CONCURRENTLY orders_amount_idx ON orders (amount);\n",
            ),
            (
                NOT_VALID,
                "amount_positive",
                "ALTER TABLE orders ADD CONSTRAINT amount_positive CHECK (amount >= 0) NOT VALID;\n",
            ),
            (ADD_COLUMN, "add_note", "ALTER TABLE orders ADD COLUMN note text NOT NULL DEFAULT 'none';\n"),
        ];
        for (v, name, up) in files {
            rig.sqlx(v, name, up, None);
        }
        let snap = rig.snapshot();
        let r = rig.rehearse(&["--snapshot", &snap, "--no-reverse"]);
        r.ok();
        let with_probes = r.json();
        let id = with_probes["id"].as_str().expect("rehearsal id");
        let md = local_store_path(&rig.pgr).join(format!("app/rehearsals/{id}/report.md"));
        let markdown = std::fs::read_to_string(&md).unwrap_or_else(|e| panic!("{}: {e}", md.display()));

        let config = std::fs::read_to_string(rig.pgr.config_path()).expect("the rig's config");
        rig.pgr.write_config(&format!("{config}\n[rehearsal]\nprobes = false\n"));
        let r = rig.rehearse(&["--snapshot", &snap, "--no-reverse"]);
        r.ok();
        let without_probes = r.json();
        assert_eq!(
            rows(&rig.live, "app", "SELECT count(*) FROM orders"),
            [ORDERS.to_string()],
            "live's orders changed under the rehearsal"
        );
        eprintln!("rehearse_probes: both rehearsals in {:?}", t0.elapsed());
        Rehearsals { with_probes, without_probes, markdown }
    })
}

/// `blocking[]` of migration `version` on `orders`: (reads, writes, statement).
fn orders_waits(report: &Value, version: &str) -> (u64, u64, String) {
    let m = migration(report, version);
    let b = m["blocking"]
        .as_array()
        .unwrap_or_else(|| panic!("migration {version} has no blocking[]: {m:#}"))
        .iter()
        .find(|b| b["relation"] == "orders")
        .unwrap_or_else(|| panic!("migration {version} reports no waits on orders: {m:#}"));
    let ms = |k: &str| b[k].as_u64().unwrap_or_else(|| panic!("{k} is not a number: {b:#}"));
    (ms("reads_blocked_ms"), ms("writes_blocked_ms"), b["statement"].as_str().unwrap_or_default().to_string())
}

fn statement_ms(report: &Value, version: &str, index: usize) -> u64 {
    let m = migration(report, version);
    m["statements"][index]["duration_ms"].as_u64().unwrap_or_else(|| panic!("no statement {index}: {m:#}"))
}

#[test]
fn lock_and_sleep_blocks_reads_and_writes_for_two_seconds() {
    let report = &rehearsals().with_probes;
    let (reads, writes, statement) = orders_waits(report, LOCK);
    eprintln!("LOCK + pg_sleep(2): reads {reads} ms, writes {writes} ms, by {statement}");
    for (what, ms) in [("reads", reads), ("writes", writes)] {
        assert!((1700..=2300).contains(&ms), "{what} of orders waited {ms} ms, not 2 s ±15 %: {report:#}");
    }
    assert!(statement.starts_with("LOCK TABLE orders"), "the wait is not blamed on the LOCK TABLE: {statement}");
}

#[test]
fn create_index_blocks_writes_for_its_build_and_not_reads() {
    let report = &rehearsals().with_probes;
    let (reads, writes, statement) = orders_waits(report, INDEX);
    let build = statement_ms(report, INDEX, 0);
    let migration_ms = migration(report, INDEX)["duration_ms"].as_u64().unwrap();
    eprintln!("CREATE INDEX: build {build} ms (migration {migration_ms} ms), reads {reads} ms, writes {writes} ms");
    assert!(build >= 100, "an index on {ORDERS} rows built in {build} ms? {report:#}");
    assert!(
        writes as f64 >= 0.8 * build as f64 && writes <= migration_ms + 100,
        "writes waited {writes} ms for a {build} ms build (migration {migration_ms} ms)"
    );
    assert!(reads <= 50, "reads waited {reads} ms on a CREATE INDEX (SHARE lets reads through)");
    assert!(statement.starts_with("CREATE INDEX orders_customer_idx"), "blamed on: {statement}");
}

#[test]
fn concurrent_index_and_not_valid_constraint_block_nothing() {
    let report = &rehearsals().with_probes;
    for version in [CONCURRENT, NOT_VALID] {
        let (reads, writes, _) = orders_waits(report, version);
        eprintln!("migration {version}: reads {reads} ms, writes {writes} ms");
        assert!(reads <= 50 && writes <= 50, "migration {version}: reads {reads} ms, writes {writes} ms (> 50 ms)");
    }
    // The concurrent build took a while: the probes ran through it.
    assert!(statement_ms(report, CONCURRENT, 0) >= 100, "{report:#}");
}

#[test]
fn add_column_with_a_constant_default_blocks_nothing() {
    let report = &rehearsals().with_probes;
    let (reads, writes, _) = orders_waits(report, ADD_COLUMN);
    eprintln!("ADD COLUMN … DEFAULT 'none': reads {reads} ms, writes {writes} ms");
    assert!(reads <= 50 && writes <= 50, "ADD COLUMN with a constant default: reads {reads} ms, writes {writes} ms");
}

#[test]
fn lint_and_markdown_quote_the_measured_waits() {
    let r = rehearsals();
    let blocks = findings(&r.with_probes, "blocks_traffic");
    let lock = blocks.iter().find(|f| f["migration"] == LOCK);
    let lock =
        lock.unwrap_or_else(|| panic!("no blocks_traffic finding for the LOCK TABLE: {:#}", r.with_probes["lint"]));
    let text = lock["message"].as_str().unwrap_or_default();
    assert!(text.contains("reads of `orders` would wait 2."), "{text}");
    assert!(lock["sql"].as_str().unwrap_or_default().starts_with("LOCK TABLE"), "{lock:#}");
    let index = findings(&r.with_probes, "index_not_concurrent");
    let index = index.iter().find(|f| f["migration"] == INDEX).expect("index_not_concurrent on migration 2");
    assert!(
        index["message"].as_str().unwrap_or_default().contains("Probes measured: writes to `orders` would wait"),
        "{index:#}"
    );
    assert!(
        !blocks.iter().any(|f| f["migration"] == INDEX),
        "the CREATE INDEX wait is explained by index_not_concurrent already: {blocks:?}"
    );
    assert!(r.markdown.contains("What the application would wait for"), "{}", r.markdown);
    assert!(r.markdown.contains("| `orders` | 2."), "the LOCK TABLE row in the Markdown: {}", r.markdown);
}

#[test]
fn probes_off_reports_no_blocking() {
    let report = &rehearsals().without_probes;
    for m in report["migrations"].as_array().expect("migrations[]") {
        assert_eq!(m["blocking"], serde_json::json!([]), "probes = false, yet: {m:#}");
    }
    assert!(findings(report, "blocks_traffic").is_empty(), "{:#}", report["lint"]);
}
