//! One query's plan on the copy: `PREPARE` it, then `EXPLAIN (VERBOSE,
//! FORMAT JSON) EXECUTE` it — with its values (`plan_cache_mode =
//! force_custom_plan`, then timed with `EXPLAIN (ANALYZE, TIMING OFF)`, the
//! median of up to `runs` runs, fewer — at least [`MIN_RUNS`] — once they
//! took [`TIME_BOX`]) or, for a normalized statement without values, with NULLs
//! under `force_generic_plan`: the generic plan, which does not look at the
//! values (PostgreSQL 15 has no `EXPLAIN (GENERIC_PLAN)`; this works on
//! every supported version).
//!
//! Everything runs in a transaction (or, inside the plan's own transaction,
//! a savepoint) that is rolled back: a timed `UPDATE` changes nothing, and
//! the locks the `EXPLAIN` took end with it.

use std::time::{Duration, Instant};

use serde::Serialize;
use sqlx::{PgConnection, Row};

use super::Query;

const STATEMENT: &str = "pgrehearse_query";

/// A query's timed runs stop once they took this long together, after at
/// least [`MIN_RUNS`]: the time of a slow query is steady enough in three
/// runs, and a plan that turns 50 lookups into scans must not keep the
/// rehearsal busy for minutes repeating them.
const TIME_BOX: Duration = Duration::from_millis(500);

/// The fewest timed runs whose median is a median (fewer when `runs` says so).
const MIN_RUNS: usize = 3;

/// A query's plan at one point: its total cost, its median time (queries
/// with values, when timed) and its scan nodes.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Side {
    pub cost: f64,
    pub ms: Option<f64>,
    /// The key nodes, e.g. `Index Scan using orders_customer_idx on orders`.
    pub scan: String,
    pub nodes: Vec<ScanNode>,
}

/// A node of the plan that reads a relation or an index.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ScanNode {
    pub node: String,
    pub relation: Option<String>,
    pub index: Option<String>,
}

impl Side {
    /// One line: cost, median time when timed, key nodes.
    pub fn brief(&self) -> String {
        match self.ms {
            Some(ms) => format!("cost {:.1}, {ms:.2} ms, {}", self.cost, self.scan),
            None => format!("cost {:.1}, {}", self.cost, self.scan),
        }
    }
}

impl ScanNode {
    pub fn describe(&self) -> String {
        let mut s = self.node.clone();
        if let Some(i) = &self.index {
            s.push_str(&format!(" using {i}"));
        }
        if let Some(r) = &self.relation {
            s.push_str(&format!(" on {r}"));
        }
        s
    }

    /// Whether this node reads its table through an index.
    pub fn by_index(&self) -> bool {
        matches!(self.node.as_str(), "Index Scan" | "Index Only Scan" | "Bitmap Heap Scan")
    }
}

/// The plan of `q` on `conn`, timed `runs` times when it has values
/// ([`Query::timed`]; `runs = 0`: EXPLAIN only). `in_tx`: the session is inside a transaction
/// that must survive (a savepoint is used). An error is the query's own
/// (it cannot be prepared or planned); a broken session shows up as an
/// error of the next statement.
pub async fn explain(conn: &mut PgConnection, q: &Query, runs: u32, in_tx: bool) -> Result<Side, String> {
    let (open, close) = if in_tx {
        (
            "SAVEPOINT pgrehearse_queries",
            "ROLLBACK TO SAVEPOINT pgrehearse_queries; RELEASE SAVEPOINT pgrehearse_queries",
        )
    } else {
        ("BEGIN", "ROLLBACK")
    };
    exec(conn, open).await?;
    let result = plan(conn, q, runs).await;
    exec(conn, close).await?;
    // A statement prepared before an error survives the rollback.
    let left: bool = sqlx::query_scalar("SELECT EXISTS (SELECT FROM pg_prepared_statements WHERE name = $1)")
        .bind(STATEMENT)
        .fetch_one(&mut *conn)
        .await
        .map_err(|e| e.to_string())?;
    if left {
        exec(conn, &format!("DEALLOCATE {STATEMENT}")).await?;
    }
    result
}

async fn plan(conn: &mut PgConnection, q: &Query, runs: u32) -> Result<Side, String> {
    let mode = if q.valued() { "force_custom_plan" } else { "force_generic_plan" };
    exec(conn, &format!("SET LOCAL plan_cache_mode = {mode}; SET LOCAL statement_timeout = '60s'")).await?;
    exec(conn, &format!("PREPARE {STATEMENT} AS {}", q.sql)).await.map_err(|e| format!("cannot prepare it: {e}"))?;
    let args = match &q.params {
        Some(p) => p.clone(),
        None => vec!["NULL".to_string(); q.placeholders],
    };
    let execute = if args.is_empty() {
        format!("EXECUTE {STATEMENT}")
    } else {
        format!("EXECUTE {STATEMENT}({})", args.join(", "))
    };
    let json = fetch(conn, &format!("EXPLAIN (VERBOSE, FORMAT JSON) {execute}")).await?;
    let mut side = summarize(&json)?;
    if q.timed() && runs > 0 {
        let mut times = Vec::with_capacity(runs as usize);
        let started = Instant::now();
        for _ in 0..runs {
            // Each run in its own savepoint: a timed INSERT does not collide with the one before.
            exec(conn, "SAVEPOINT pgrehearse_run").await?;
            // TIMING OFF: only the execution time is read, and per-node
            // clocks would slow a scan down by a clock call per row.
            let json = fetch(conn, &format!("EXPLAIN (ANALYZE, TIMING OFF, FORMAT JSON) {execute}")).await;
            exec(conn, "ROLLBACK TO SAVEPOINT pgrehearse_run").await?;
            times.push(execution_ms(&json?)?);
            if times.len() >= MIN_RUNS && started.elapsed() >= TIME_BOX {
                break;
            }
        }
        side.ms = Some(median(&mut times));
    }
    exec(conn, &format!("DEALLOCATE {STATEMENT}")).await?;
    Ok(side)
}

/// The cost and the scan nodes of an `EXPLAIN (FORMAT JSON)` output.
pub fn summarize(json: &str) -> Result<Side, String> {
    let v: serde_json::Value = serde_json::from_str(json).map_err(|e| format!("unreadable EXPLAIN output: {e}"))?;
    let plan = &v[0]["Plan"];
    let cost = plan["Total Cost"].as_f64().ok_or("EXPLAIN output without a total cost")?;
    let mut nodes = Vec::new();
    walk(plan, &mut nodes);
    let scan = if nodes.is_empty() {
        "no scan".to_string()
    } else {
        nodes.iter().map(ScanNode::describe).collect::<Vec<_>>().join("; ")
    };
    Ok(Side { cost, ms: None, scan, nodes })
}

fn walk(node: &serde_json::Value, out: &mut Vec<ScanNode>) {
    let s = |k: &str| node[k].as_str().map(str::to_string);
    if let Some(kind) = s("Node Type") {
        let relation = s("Relation Name").map(|r| match s("Schema") {
            Some(schema) if schema != "public" => format!("{schema}.{r}"),
            _ => r,
        });
        let index = s("Index Name");
        if kind.ends_with("Scan") && (relation.is_some() || index.is_some()) {
            out.push(ScanNode { node: kind, relation, index });
        }
    }
    for child in node["Plans"].as_array().into_iter().flatten() {
        walk(child, out);
    }
}

fn execution_ms(json: &str) -> Result<f64, String> {
    let v: serde_json::Value = serde_json::from_str(json).map_err(|e| format!("unreadable EXPLAIN output: {e}"))?;
    v[0]["Execution Time"].as_f64().ok_or_else(|| "EXPLAIN ANALYZE output without an execution time".to_string())
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n % 2 == 1 { v[n / 2] } else { (v[n / 2 - 1] + v[n / 2]) / 2.0 }
}

async fn exec(conn: &mut PgConnection, sql: &str) -> Result<(), String> {
    sqlx::raw_sql(sql).execute(&mut *conn).await.map(|_| ()).map_err(|e| e.to_string())
}

/// The one text (json) column of a one-row statement.
async fn fetch(conn: &mut PgConnection, sql: &str) -> Result<String, String> {
    let row = sqlx::raw_sql(sql).fetch_one(&mut *conn).await.map_err(|e| e.to_string())?;
    row.try_get_unchecked::<String, _>(0).map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scan_nodes_and_cost_of_a_plan() {
        let json = r#"[{"Plan": {"Node Type": "Limit", "Total Cost": 12.5, "Plans": [
            {"Node Type": "Bitmap Heap Scan", "Relation Name": "orders", "Schema": "public", "Total Cost": 12.0, "Plans": [
                {"Node Type": "Bitmap Index Scan", "Index Name": "orders_customer_idx"}]},
            {"Node Type": "Seq Scan", "Relation Name": "items", "Schema": "shop"}]}}]"#;
        let side = summarize(json).unwrap();
        assert_eq!(side.cost, 12.5);
        assert_eq!(
            side.scan,
            "Bitmap Heap Scan on orders; Bitmap Index Scan using orders_customer_idx; Seq Scan on shop.items"
        );
        assert!(side.nodes[0].by_index() && !side.nodes[2].by_index());
        assert_eq!(median(&mut [3.0, 1.0, 2.0, 100.0, 2.5]), 2.5);
    }
}
