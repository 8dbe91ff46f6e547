//! Query plans before and after the plan, measured on the scratch copy
//! (`queries[]`), on a live cluster with 1 M rows in `orders`, an index on
//! `orders.customer_id`, and `pg_stat_statements` preloaded (the application
//! ran `SELECT … WHERE customer_id = <n>` a few hundred times). The
//! rehearsals are shared by the tests below:
//!
//! - a plan that only adds a column flags none of 20 listed queries;
//! - a plan whose second migration drops the index is a finding naming
//!   `orders_of_customer` and migration 2 (exit 2); an index the plan
//!   creates that no query uses is a note;
//! - accepting the query by id (`queries.accept`) passes;
//! - without a queries file, live's top statements are compared;
//! - a bad queries file stops the rehearsal with a message saying what to fix;
//! - explaining inside the plan's transaction lengthens neither the locks
//!   held nor the probes' waits nor `apply_ms` (its own small rig).
//!
//! Independent read-backs with `psql`: the kept copy's own `EXPLAIN` shows
//! the sequential scan, live's `pg_stat_statements` names the statement the
//! report lists, and live still has its index and rows.

use crate::harness::cli::{Run, local_store_path};
use crate::harness::migrations::*;
use serde_json::Value;
use std::sync::OnceLock;
use std::time::Instant;

const ORDERS: u32 = 1_000_000;

struct Rehearsals {
    unrelated: Value,
    dropped: Value,
    dropped_markdown: String,
    /// `EXPLAIN` of the customer query on the kept copy after the plan, by psql.
    kept_explain: String,
    accepted: Value,
    from_live: Value,
    /// live's `pg_stat_statements` queryid of the customer statement, by psql.
    live_queryid: String,
    bad_file: Run,
    bad_file_path: String,
}

/// The 20 listed queries: by primary key, by customer (the index the plan
/// drops), generic plans, a range, a join, a write (timed, rolled back).
fn queries_toml() -> String {
    let mut q: Vec<(String, String, Option<String>)> = Vec::new();
    for k in 1..=6 {
        q.push((format!("by_id_{k}"), "SELECT * FROM orders WHERE id = $1".into(), Some(format!("[{}]", k * 1000))));
    }
    q.push((
        "orders_of_customer".into(),
        "SELECT id, amount FROM orders WHERE customer_id = $1 ORDER BY id".into(),
        Some("[42]".into()),
    ));
    for k in 2..=5 {
        q.push((
            format!("customer_{k}"),
            "SELECT id, amount FROM orders WHERE customer_id = $1 ORDER BY id".into(),
            Some(format!("[{}]", k * 7)),
        ));
    }
    q.push(("customer_generic".into(), "SELECT id FROM orders WHERE customer_id = $1".into(), None));
    q.push(("id_generic".into(), "SELECT amount FROM orders WHERE id = $1".into(), None));
    q.push((
        "customers_any".into(),
        "SELECT count(*) FROM orders WHERE customer_id = ANY($1)".into(),
        Some("[\"{1,2,3}\"]".into()),
    ));
    q.push(("latest".into(), "SELECT id FROM orders ORDER BY id DESC LIMIT 10".into(), None));
    q.push((
        "range".into(),
        "SELECT sum(amount) FROM orders WHERE id BETWEEN $1 AND $2".into(),
        Some("[1000, 2000]".into()),
    ));
    q.push((
        "self_join".into(),
        "SELECT a.id, b.id FROM orders a JOIN orders b ON b.id = a.id + 1 WHERE a.id = $1".into(),
        Some("[500]".into()),
    ));
    q.push(("update_one".into(), "UPDATE orders SET amount = amount WHERE id = $1".into(), Some("[77]".into())));
    q.push(("customer_count".into(), "SELECT count(*) FROM orders WHERE customer_id = $1".into(), Some("[99]".into())));
    q.push((
        "exists_customer".into(),
        "SELECT EXISTS (SELECT 1 FROM orders WHERE customer_id = $1)".into(),
        Some("[5]".into()),
    ));
    assert_eq!(q.len(), 20);
    q.iter()
        .map(|(id, sql, params)| {
            let params = params.as_ref().map(|p| format!("params = {p}\n")).unwrap_or_default();
            format!("[[query]]\nid = \"{id}\"\nsql = \"{sql}\"\n{params}\n")
        })
        .collect()
}

fn rehearsals() -> &'static Rehearsals {
    static R: OnceLock<Rehearsals> = OnceLock::new();
    R.get_or_init(|| {
        let t0 = Instant::now();
        let rig = Rig::start("sqlx", "");
        rig.live.append_conf("shared_preload_libraries = 'pg_stat_statements'");
        rig.live.restart();
        rig.live.psql("app", "CREATE EXTENSION pg_stat_statements");
        as_app(
            &rig.live,
            "app",
            &format!(
                "CREATE TABLE orders (id integer PRIMARY KEY, customer_id integer NOT NULL, amount integer NOT NULL);
                 INSERT INTO orders SELECT i, i % 5000, i % 1000 FROM generate_series(1, {ORDERS}) i;
                 CREATE INDEX orders_customer_idx ON orders (customer_id);"
            ),
        );
        rig.live.psql("app", "VACUUM ANALYZE orders");
        // The application's traffic: what pg_stat_statements ranks.
        let traffic: String =
            (0..300).map(|i| format!("SELECT id, amount FROM orders WHERE customer_id = {};\n", i * 13 % 5000)).collect();
        as_app(&rig.live, "app", &traffic);

        let file = rig.pgr.dir().join("project-queries.toml");
        std::fs::write(&file, queries_toml()).expect("write the queries file");
        let file_toml = format!("{:?}", file.display().to_string());
        rig.configure(&format!("queries = {{ file = {file_toml}, from_live = false }}"));

        rig.sqlx("1", "add_note", "ALTER TABLE orders ADD COLUMN note text;\n", None);
        let snap = rig.snapshot();
        let r = rig.rehearse(&["--snapshot", &snap, "--no-reverse"]);
        r.ok();
        let unrelated = r.json();

        rig.sqlx("2", "drop_customer_idx", "DROP INDEX orders_customer_idx;\n", None);
        rig.sqlx("3", "amount_idx", "CREATE INDEX orders_amount_idx ON orders (amount);\n", None);
        let r = rig.rehearse(&["--snapshot", &snap, "--no-reverse", "--keep"]);
        r.expect_code(2);
        let dropped = r.json();
        let id = dropped["id"].as_str().expect("rehearsal id");
        let md = local_store_path(&rig.pgr).join(format!("app/rehearsals/{id}/report.md"));
        let dropped_markdown = std::fs::read_to_string(&md).unwrap_or_else(|e| panic!("{}: {e}", md.display()));
        let kept = kept_db(&rig, &dropped);
        let kept_explain = rig.shadow.psql(&kept, "EXPLAIN SELECT id, amount FROM orders WHERE customer_id = 42 ORDER BY id");

        rig.configure(&format!("queries = {{ file = {file_toml}, from_live = false, accept = [\"orders_of_customer\", \"customer_2\", \"customer_3\", \"customer_4\", \"customer_5\", \"customer_generic\", \"customers_any\", \"customer_count\", \"exists_customer\"] }}"));
        let r = rig.rehearse(&["--snapshot", &snap, "--no-reverse"]);
        let accepted = r.json();

        // No queries file: live's pg_stat_statements only.
        rig.configure("");
        let r = rig.rehearse(&["--snapshot", &snap, "--no-reverse"]);
        let from_live = r.json();
        let live_queryid = rig
            .live
            .psql(
                "app",
                "SELECT queryid FROM pg_stat_statements WHERE query = 'SELECT id, amount FROM orders WHERE customer_id = $1'",
            )
            .trim()
            .to_string();

        let bad = rig.pgr.dir().join("bad-queries.toml");
        std::fs::write(&bad, "[[query]]\nid = \"q\"\nsql = \"SELECT * FROM orders WHERE id = $1\"\nparams = [1, 2]\n")
            .expect("write the bad queries file");
        rig.configure(&format!("queries = {{ file = {:?} }}", bad.display().to_string()));
        let bad_file = rig.rehearse(&["--snapshot", &snap, "--no-reverse"]);

        assert_eq!(rows(&rig.live, "app", "SELECT count(*) FROM orders"), [ORDERS.to_string()], "live's rows changed");
        assert_eq!(
            rows(&rig.live, "app", "SELECT count(*) FROM pg_indexes WHERE indexname = 'orders_customer_idx'"),
            ["1"],
            "live lost its index"
        );
        eprintln!("rehearse_queries: all rehearsals in {:?}", t0.elapsed());
        Rehearsals {
            unrelated,
            dropped,
            dropped_markdown,
            kept_explain,
            accepted,
            from_live,
            live_queryid,
            bad_file,
            bad_file_path: bad.display().to_string(),
        }
    })
}

fn queries(report: &Value) -> &Vec<Value> {
    report["queries"].as_array().unwrap_or_else(|| panic!("no queries[] in {report:#}"))
}

fn query<'a>(report: &'a Value, id: &str) -> &'a Value {
    queries(report).iter().find(|q| q["id"] == id).unwrap_or_else(|| panic!("query {id} is not in {report:#}"))
}

#[test]
fn a_plan_that_only_adds_a_column_flags_none_of_20_queries() {
    let r = &rehearsals().unrelated;
    let list = queries(r);
    assert_eq!(list.len(), 20, "{r:#}");
    for q in list {
        assert!(q["error"].is_null(), "query {} was not compared: {q:#}", q["id"]);
        assert!(q["finding"].is_null(), "query {} flagged by an ADD COLUMN: {q:#}", q["id"]);
        assert!(q["before"]["cost"].as_f64().is_some() && q["after"]["cost"].as_f64().is_some(), "{q:#}");
    }
    // With values: timed; without: the generic plan, not timed.
    assert!(query(r, "orders_of_customer")["after"]["ms"].as_f64().is_some(), "{r:#}");
    let generic = query(r, "customer_generic");
    assert_eq!((generic["plan"].as_str(), generic["after"]["ms"].is_null()), (Some("generic"), true), "{generic:#}");
    assert!(generic["before"]["scan"].as_str().unwrap_or_default().contains("orders_customer_idx"), "{generic:#}");
    assert_eq!(r["ok"], true);
}

#[test]
fn dropping_the_index_a_listed_query_uses_is_a_finding_naming_the_query_and_the_migration() {
    let r = rehearsals();
    let report = &r.dropped;
    assert_eq!(report["ok"], false);
    let q = query(report, "orders_of_customer");
    let f = &q["finding"];
    eprintln!("finding: {f:#}");
    assert_eq!(f["kind"], "seq_scan", "{q:#}");
    assert_eq!(f["migration"], "2", "the finding blames the DROP INDEX migration: {q:#}");
    assert_eq!(f["accepted"], false);
    assert!(f["ratio"].as_f64().unwrap_or_default() > 2.0, "{q:#}");
    let (before_ms, after_ms) = (q["before"]["ms"].as_f64().unwrap(), q["after"]["ms"].as_f64().unwrap());
    eprintln!("orders_of_customer: {before_ms:.2} ms → {after_ms:.2} ms");
    let before = q["before"]["scan"].as_str().unwrap_or_default();
    let after = q["after"]["scan"].as_str().unwrap_or_default();
    assert!(before.contains("orders_customer_idx"), "before: {before}");
    assert!(after.contains("Seq Scan on orders"), "after: {after}");
    let problems = problems_text(report);
    assert!(problems.contains("query `orders_of_customer` after migration 2"), "{problems}");
    // Queries by primary key kept their plan.
    assert!(query(report, "by_id_1")["finding"].is_null(), "{report:#}");
    // The kept copy, read by psql: the same sequential scan.
    assert!(r.kept_explain.contains("Seq Scan on orders"), "{}", r.kept_explain);
    // The unused new index is a note; the Markdown shows the finding.
    let notes = report["notes"].to_string();
    assert!(notes.contains("index `orders_amount_idx` created by the plan is used by none of the 20"), "{notes}");
    // The history table's primary key (created by the plan on a copy without one) is no query's index.
    assert!(!notes.contains("_sqlx_migrations_pkey"), "{notes}");
    assert!(r.dropped_markdown.contains("## Query plans"), "{}", r.dropped_markdown);
    assert!(
        r.dropped_markdown.contains(r"FINDING: query \`orders_of_customer\` after migration 2"),
        "{}",
        r.dropped_markdown
    );
}

#[test]
fn accepting_the_queries_by_id_passes() {
    let report = &rehearsals().accepted;
    assert_eq!(report["ok"], true, "{:#}", report["problems"]);
    let f = &query(report, "orders_of_customer")["finding"];
    assert_eq!((f["kind"].as_str(), f["accepted"].as_bool()), (Some("seq_scan"), Some(true)), "{f:#}");
    assert!(report["warnings"].to_string().contains("accepted by queries.accept"), "{:#}", report["warnings"]);
}

#[test]
fn without_a_queries_file_live_top_statements_are_compared() {
    let r = rehearsals();
    let report = &r.from_live;
    assert!(!r.live_queryid.is_empty(), "live's pg_stat_statements has no customer statement");
    let id = format!("queryid:{}", r.live_queryid);
    let q = query(report, &id);
    assert_eq!(q["origin"], "live");
    assert_eq!(q["text"], "SELECT id, amount FROM orders WHERE customer_id = $1");
    assert_eq!(q["plan"], "generic");
    // Live's statements are explained, never run on the copy.
    assert!(queries(report).iter().all(|q| q["after"]["ms"].is_null()), "{report:#}");
    assert!(queries(report).iter().all(|q| q["origin"] == "live"), "{report:#}");
    // Its generic plan lost the index too.
    assert_eq!(q["finding"]["kind"], "seq_scan", "{q:#}");
    assert_eq!(q["finding"]["migration"], "2", "{q:#}");
}

#[test]
fn a_bad_queries_file_says_what_to_fix() {
    let r = rehearsals();
    let run = &r.bad_file;
    run.expect_code(78);
    let out = format!("{}{}", run.stdout, run.stderr);
    assert!(out.contains(&r.bad_file_path), "{out}");
    assert!(out.contains("`params` has 2 values but the SQL uses 1 parameters"), "{out}");
}

/// Explaining the queries after each migration happens inside the plan's
/// transaction, but it is not the plan's time: with 5 listed queries that
/// each take 0.1 s to plan (an IMMUTABLE function is evaluated by the
/// planner), a plan of two migrations spends ≥ 1 s explaining between its
/// statements, and still reports the ACCESS EXCLUSIVE lock of its first
/// migration, the probes' waits behind it and `apply_ms` as what the plan
/// itself takes (milliseconds).
#[test]
fn explaining_inside_the_transaction_lengthens_neither_the_locks_nor_the_waits() {
    let rig = Rig::start(
        "sqlx",
        "CREATE TABLE t (id int PRIMARY KEY, note text);
         INSERT INTO t SELECT g, 'n' FROM generate_series(1, 1000) g;
         CREATE FUNCTION slow_one() RETURNS int IMMUTABLE LANGUAGE plpgsql
             AS $$ BEGIN PERFORM pg_sleep(0.1); RETURN 1; END $$;",
    );
    let file = rig.pgr.dir().join("slow-queries.toml");
    let list: String = (1..=5)
        .map(|k| format!("[[query]]\nid = \"slow_{k}\"\nsql = \"SELECT note FROM t WHERE id = slow_one() + $1\"\nparams = [{k}]\n\n"))
        .collect();
    std::fs::write(&file, list).expect("write the queries file");
    rig.configure(&format!("queries = {{ file = {:?}, from_live = false, runs = 1 }}", file.display().to_string()));
    rig.sqlx("1", "add_score", "ALTER TABLE t ADD COLUMN score int;\n", None);
    rig.sqlx("2", "touch", "SELECT 1;\n", None);
    let r = rig.rehearse(&["--no-reverse"]);
    r.ok();
    let report = r.json();
    assert_eq!(report["mode"], "single_transaction", "{report:#}");
    let queries_ms = report["queries_ms"].as_u64().expect("queries_ms");
    assert!(queries_ms >= 1000, "the 5 queries planned in {queries_ms} ms: the test needs ≥ 1 s of explaining");

    let m1 = &report["migrations"][0];
    let ax = m1["locks"]
        .as_array()
        .expect("locks")
        .iter()
        .find(|l| l["relation"] == "t" && l["mode"] == "AccessExclusiveLock")
        .unwrap_or_else(|| panic!("no ACCESS EXCLUSIVE on t for migration 1: {m1:#}"));
    let held = ax["held_ms"].as_u64().expect("held_ms");
    let blocked = m1["blocking"]
        .as_array()
        .expect("blocking")
        .iter()
        .find(|b| b["relation"] == "t")
        .unwrap_or_else(|| panic!("no probe of t for migration 1: {m1:#}"));
    let reads = blocked["reads_blocked_ms"].as_u64().expect("reads_blocked_ms");
    let apply_ms = report["apply_ms"].as_u64().expect("apply_ms");
    eprintln!(
        "explaining {queries_ms} ms; ACCESS EXCLUSIVE held {held} ms, reads waited {reads} ms, apply_ms {apply_ms}"
    );
    assert!(held < 400, "the lock's held time includes the explaining: {held} ms ({ax})");
    assert!(reads < 400, "the probes' wait includes the explaining: {reads} ms ({blocked})");
    assert!(apply_ms < 600, "apply_ms includes the explaining: {apply_ms} ms");
}
