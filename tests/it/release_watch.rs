//! The performance watch after a release, on real clusters with
//! `pg_stat_statements` preloaded on live, 1 M rows in `orders`, and an
//! application query (`… WHERE customer_id = n`, a new `n` each time) run
//! in a loop by a separate session for the whole test:
//!
//! - a release that drops the index that query uses, released by the
//!   daemon: the daemon runs the watch when `watch_after` (6 s) has passed,
//!   mails an alert naming the release and the query, and exports the
//!   gauges; the release record keeps the result;
//! - a release that adds an unused column: `pgrehearse watch ID` compares
//!   the query (so it could have flagged it) and finds nothing slower;
//!   nothing is mailed;
//! - live without `pg_stat_statements`: the record says so, not an error.

use crate::harness::daemon::{daemon_toml, metric, start};
use crate::harness::http;
use crate::harness::migrations::*;
use crate::harness::pg::Cluster;
use crate::harness::readme::{documented_metrics, exported_metrics, is_watch_metric};
use crate::harness::release::*;
use crate::harness::smtp::eml_files;
use crate::harness::wait_for;
use serde_json::Value;
use std::io::Write;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

const ORDERS: &str = "CREATE TABLE orders (id bigint PRIMARY KEY, customer_id int NOT NULL, total numeric NOT NULL);
    INSERT INTO orders SELECT g, 1 + (g::bigint * 7919) % 10000, (g % 1000) / 10.0 FROM generate_series(1, 1000000) g;
    CREATE INDEX orders_customer ON orders (customer_id);
    ANALYZE orders;";

/// The application's query, as `pg_stat_statements` normalizes it.
const APP_QUERY: &str = "SELECT count(*), sum(total) FROM orders WHERE customer_id = $1";

/// The target's watch: 6 s after the release, queries with 10 calls.
const WATCH: &str = "watch_after = \"6s\"\nwatch_min_calls = 10\n";

fn email_file_toml() -> String {
    "\n[email]\ntransport = \"file\"\nfrom = \"pgrehearse <pgr@example.com>\"\nto = [\"dba@example.com\"]\n".into()
}

/// Preloads `pg_stat_statements` on live (a restart), creates it in `app`,
/// and lets live's role (`app`) read every role's statements.
fn enable_stat_statements(c: &Cluster) {
    c.psql("postgres", "ALTER SYSTEM SET shared_preload_libraries = 'pg_stat_statements'");
    c.restart();
    c.psql("app", "CREATE EXTENSION pg_stat_statements");
    c.psql("postgres", "GRANT pg_read_all_stats TO app");
}

/// The application: one session running the query every 50 ms with a new
/// constant each time; killed on drop.
struct AppLoop {
    stop: Arc<AtomicBool>,
    child: std::process::Child,
}

impl AppLoop {
    fn start(c: &Cluster) -> AppLoop {
        let mut child = c.psql_session("app", "");
        let mut stdin = child.stdin.take().unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let s = stop.clone();
        std::thread::spawn(move || {
            let mut n = 0u64;
            while !s.load(Ordering::Relaxed) {
                n += 1;
                let sql = APP_QUERY.replace("$1", &(n % 10000 + 1).to_string());
                if stdin.write_all(format!("{sql};\n").as_bytes()).and_then(|_| stdin.flush()).is_err() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        });
        AppLoop { stop, child }
    }
}

impl Drop for AppLoop {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Calls of the application's query so far (read as the superuser).
fn app_calls(c: &Cluster) -> i64 {
    let sql = format!("SELECT coalesce(sum(calls), 0) FROM pg_stat_statements WHERE query = '{APP_QUERY}'");
    c.psql("app", &sql).parse().unwrap()
}

/// A rig with 1 M orders, `pg_stat_statements`, the application running
/// (with calls already counted), and `up`/`down` as migration 1.
fn watched_rig(up: &str, down: &str) -> (Rig, AppLoop) {
    let rig = Rig::start("sqlx", ORDERS);
    enable_stat_statements(&rig.live);
    let app = AppLoop::start(&rig.live);
    rig.sqlx("1", "change", up, Some(down));
    wait_for("the application's first calls", Duration::from_secs(30), Duration::from_millis(100), || {
        (app_calls(&rig.live) >= 40).then_some(())
    });
    (rig, app)
}

fn only_release(rig: &Rig) -> Value {
    let list = rig.pgr.run_json(&["releases"]).json();
    let applied: Vec<&Value> = list.as_array().unwrap().iter().filter(|r| r["outcome"] == "applied").collect();
    assert_eq!(applied.len(), 1, "{list:#}");
    applied[0].clone()
}

#[test]
fn a_dropped_index_raises_the_alert_and_the_metric_within_the_period() {
    let (rig, _app) =
        watched_rig("DROP INDEX orders_customer;\n", "CREATE INDEX orders_customer ON orders (customer_id);\n");
    let port = http::free_port();
    let addr = format!("127.0.0.1:{port}");
    // The rehearsal's query comparison flags this very plan (live's top
    // statement turns into a sequential scan): this test is about the watch
    // after a release that went ahead anyway, so live's statements are not
    // compared before it.
    configure(&rig, &format!("{WATCH}queries = {{ from_live = false }}\n"));
    rehearse_and_approve(&rig);
    let text = std::fs::read_to_string(rig.pgr.config_path()).unwrap();
    rig.pgr.write_config(&format!("{text}{}{}", email_file_toml(), daemon_toml(port, None)));
    let _daemon = start(&rig.pgr, port);

    // The daemon releases the approved plan, then watches.
    wait_for("an applied release", Duration::from_secs(120), Duration::from_millis(500), || {
        let list = rig.pgr.run_json(&["releases"]).json();
        list.as_array()?.iter().any(|r| r["outcome"] == "applied").then_some(())
    });
    let id = only_release(&rig)["release_id"].as_str().unwrap().to_string();
    assert_eq!(rig.live.psql("app", "SELECT count(*) FROM pg_indexes WHERE indexname = 'orders_customer'"), "0");
    let slower = wait_for("the watch's metric", Duration::from_secs(60), Duration::from_millis(250), || {
        metric(&addr, "pgrehearse_watch_slower_queries{target=\"app\"}")
    });
    assert_eq!(slower, 1.0, "{}", http::get(&addr, "/metrics").unwrap().body);
    let body = http::get(&addr, "/metrics").unwrap().body;
    let ratio_line = body
        .lines()
        .find(|l| l.starts_with("pgrehearse_watch_slower_query_ratio{"))
        .unwrap_or_else(|| panic!("no ratio gauge:\n{body}"));
    assert!(ratio_line.contains(&format!("release=\"{id}\"")), "{ratio_line}");
    // The README's rows for these two gauges are what this daemon exports.
    let exported = exported_metrics(&body);
    let documented: Vec<_> = documented_metrics().into_iter().filter(|(n, _)| is_watch_metric(n)).collect();
    assert_eq!(documented.len(), 2, "{documented:?}");
    for (name, shape) in &documented {
        assert_eq!(Some(shape), exported.get(name), "README row vs /metrics for {name}");
    }

    // The record keeps the result: the query, its mean before and after.
    let rec = release(&rig, &id);
    let w = &rec["watch"];
    eprintln!("watch of {id}: {w:#}");
    assert_eq!(w["status"], "done", "{rec:#}");
    let slower = w["slower"].as_array().unwrap();
    assert_eq!(slower.len(), 1, "{w:#}");
    assert_eq!(slower[0]["query"], APP_QUERY, "{w:#}");
    assert!(slower[0]["ratio"].as_f64().unwrap() >= 2.0, "{w:#}");
    assert!(slower[0]["calls_after"].as_i64().unwrap() >= 10, "{w:#}");
    let shared_after = slower[0]["shared_blks_per_call_after"].as_f64().unwrap();
    assert!(shared_after > 10.0 * slower[0]["shared_blks_per_call_before"].as_f64().unwrap(), "{w:#}");
    // Within the configured period (6 s), give or take the daemon's 1 s poll.
    let at = |v: &Value| chrono::DateTime::parse_from_rfc3339(v.as_str().unwrap()).unwrap();
    let took = at(&w["after_to"]) - at(&w["after_from"]);
    assert!(took >= chrono::Duration::seconds(6) && took <= chrono::Duration::seconds(15), "{took} {w:#}");

    // The alert names the release and the query.
    let mails = eml_files(&rig.pgr.state_dir().join("mail"));
    let alert = mails
        .iter()
        .find(|m| m.subject.contains("slower after release"))
        .unwrap_or_else(|| panic!("no alert in {:?}", mails.iter().map(|m| &m.subject).collect::<Vec<_>>()));
    assert!(alert.subject.contains(&id), "{}", alert.subject);
    assert!(alert.text.contains(APP_QUERY), "{}", alert.text);
}

#[test]
fn an_unused_column_raises_nothing() {
    let (rig, _app) =
        watched_rig("ALTER TABLE orders ADD COLUMN note text;\n", "ALTER TABLE orders DROP COLUMN note;\n");
    configure(&rig, WATCH);
    let text = std::fs::read_to_string(rig.pgr.config_path()).unwrap();
    rig.pgr.write_config(&format!("{text}{}", email_file_toml()));
    rehearse_and_approve(&rig);
    let r = apply(&rig);
    r.ok();
    let id = r.json()["release_id"].as_str().unwrap().to_string();
    assert_eq!(release(&rig, &id)["watch"]["status"], "pending");

    let w = rig.pgr.run_json(&["watch", &id]);
    assert_eq!(w.code, 0, "{}\n{}", w.stdout, w.stderr);
    let w = w.json();
    eprintln!("watch of {id}: {w:#}");
    assert_eq!(w["status"], "done", "{w:#}");
    let compared = w["queries"].as_array().unwrap();
    assert!(compared.iter().any(|q| q["query"] == APP_QUERY), "the application's query must be compared: {w:#}");
    assert!(w["slower"].as_array().unwrap().is_empty(), "{w:#}");
    assert_eq!(release(&rig, &id)["watch"]["status"], "done");
    let mails = eml_files(&rig.pgr.state_dir().join("mail"));
    assert!(
        !mails.iter().any(|m| m.subject.contains("slower")),
        "{:?}",
        mails.iter().map(|m| &m.subject).collect::<Vec<_>>()
    );
}

#[test]
fn without_pg_stat_statements_the_record_says_so() {
    let rig = Rig::start("sqlx", "CREATE TABLE t (id int PRIMARY KEY);");
    configure(&rig, WATCH);
    rig.sqlx("1", "add", "ALTER TABLE t ADD COLUMN note text;\n", Some("ALTER TABLE t DROP COLUMN note;\n"));
    rehearse_and_approve(&rig);
    let r = apply(&rig);
    r.ok();
    let id = r.json()["release_id"].as_str().unwrap().to_string();
    let w = &release(&rig, &id)["watch"];
    assert_eq!(w["status"], "unavailable", "{w:#}");
    assert!(w["note"].as_str().unwrap().contains("pg_stat_statements"), "{w:#}");
    let again = rig.pgr.run_json(&["watch", &id]);
    assert_eq!(again.code, 0, "{}", again.stderr);
    assert_eq!(again.json()["status"], "unavailable");
}
