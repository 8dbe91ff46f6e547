"""Query comparison cost: how much comparing 50 queries' plans before and after the plan
(`queries[]`: each explained — and, with values, timed 5 times — on the copy before the
plan, after each migration (EXPLAIN only) and after the plan) adds to a rehearsal.

Set-up (untimed): a second PostgreSQL cluster as the shadow server; one
`pgrehearse snapshot` of the dataset into a local store; `pgrehearse verify` of it,
which makes the target's template. Two configurations share the store, the state,
the target and the migrations and differ only in `queries`:

  on    `queries = { file = "queries.toml", from_live = false }`: 50 queries
        (40 with values on `orders`, `customers` and `products`, 10 without: generic plans)
  off   `queries = { from_live = false }` and no file: no queries

The plan (one transaction, so the 50 queries are also explained after each of its two
migrations, inside it):
  1. ALTER TABLE orders ADD COLUMN gift_note text
  2. DROP INDEX orders_created_at_idx (the queries by `created_at` lose their index:
     findings, exit 2, as in real use)

Measured `--reps` times round-robin (on, off, on, off…; median reported) after one
untimed warm-up of each: `pgrehearse rehearse --json --no-reverse`'s `duration_ms`
(the whole rehearsal) and, with queries, `queries_ms` (the comparison's own time).

Targets (PASS/FAIL computed from measured values):
  `queries_ms` per query <= 200 ms (50 queries: 10 s; each is explained 4 times and, with
  values, timed up to 10 times — 5 before and 5 after, 3 once a query's runs took
  0.5 s — so this is up to ~14 round trips of EXPLAIN per query, some of them scans of
  1.2 M rows once the plan dropped their index)
  every query compared (no `error`), and the one-day `created_at` counts flagged
Reported, not judged: duration_ms with 50 queries / without. The rehearsal without
queries is a template clone plus two catalog changes (about half a second, also on the
full dataset), so that ratio says how short such a rehearsal is, not what the comparison
costs; the comparison is judged by its own time per query.

Run it through the entry point, which sets up the cluster and the dataset:
  python3 bench/run.py --only queries
  python3 bench/run.py --quick --only queries --bin /path/to/debug/pgrehearse
"""

import json
import sys
from pathlib import Path

from common import median
from pair import Pair

NAME = "queries"
REPS = 3
TITLE = "Query plans before and after: what comparing 50 queries adds to a rehearsal"

PER_QUERY_GOAL_MS = 200  # queries_ms / 50, at most

QUERIES_FILE = "bench-queries.toml"  # written beside the configurations

PLAN = [
    ("20240401000001", "orders_gift_note", "ALTER TABLE orders ADD COLUMN gift_note text;"),
    ("20240401000002", "drop_orders_created_at_idx", "DROP INDEX orders_created_at_idx;"),
]


def queries_toml():
    """50 queries: lookups by key, by customer, by date, joins, aggregates, a write."""
    q = []
    for k in range(1, 11):
        q.append((f"order_{k}", "SELECT * FROM orders WHERE id = $1", [k * 997]))
    for k in range(1, 11):
        q.append((f"orders_of_customer_{k}",
                  "SELECT id, status, total FROM orders WHERE customer_id = $1 ORDER BY created_at DESC LIMIT 20",
                  [k * 131]))
    for k in range(1, 6):
        q.append((f"orders_of_day_{k}", "SELECT count(*) FROM orders WHERE created_at >= $1::timestamptz "
                  "AND created_at < $1::timestamptz + interval '1 day'", [f"2020-0{k}-15"]))
    for k in range(1, 6):
        q.append((f"customer_{k}", "SELECT * FROM customers WHERE id = $1", [k * 77]))
    for k in range(1, 6):
        q.append((f"product_{k}", "SELECT * FROM products WHERE sku = $1", [f"SKU-{k * 13:06d}"]))
    for k in range(1, 3):
        q.append((f"customer_orders_join_{k}", "SELECT c.email, o.id, o.total FROM customers c "
                  "JOIN orders o ON o.customer_id = c.id WHERE c.id = $1", [k * 19]))
    q.append(("latest_orders", "SELECT id, total FROM orders ORDER BY created_at DESC LIMIT 50", None))
    q.append(("pending_count", "SELECT count(*) FROM orders WHERE status = $1", ["pending"]))
    # Without values: generic plans (EXPLAIN only).
    for sql in ("SELECT * FROM orders WHERE id = $1", "SELECT * FROM orders WHERE customer_id = $1",
                "SELECT * FROM orders WHERE created_at > $1", "SELECT * FROM customers WHERE email = $1",
                "SELECT * FROM products WHERE sku = $1", "SELECT * FROM customers WHERE id = $1",
                "UPDATE orders SET status = $1 WHERE id = $2", "SELECT total FROM orders WHERE id = $1",
                "SELECT count(*) FROM orders WHERE customer_id = $1",
                "SELECT id FROM orders WHERE created_at BETWEEN $1 AND $2"):
        q.append((f"generic_{len(q)}", sql, None))
    q.append(("touch_order", "UPDATE orders SET updated_at = updated_at WHERE id = $1", [4242]))
    assert len(q) == 50, len(q)
    out = []
    for qid, sql, params in q:
        out.append(f'[[query]]\nid = "{qid}"\nsql = "{sql}"\n' + (f"params = {json.dumps(params)}\n" if params else ""))
    return "\n".join(out)


def run(ctx):
    queries = ctx.workdir / NAME / QUERIES_FILE
    extra = {"on": f'queries = {{ file = "{queries}", from_live = false }}\n', "off": "queries = { from_live = false }\n"}
    pair = Pair(ctx, NAME, PLAN, extra, {QUERIES_FILE: queries_toml()})

    def describe(runs):
        on, off = runs["on"][-1].report, runs["off"][-1].report
        return (f"duration_ms with queries {on['duration_ms']} ms (queries_ms {on.get('queries_ms')}), "
                f"without {off['duration_ms']} ms")

    return report(ctx, pair.runs(describe))


def report(ctx, runs):
    on = median([r.report["duration_ms"] for r in runs["on"]])
    off = median([r.report["duration_ms"] for r in runs["off"]])
    q_ms = median([r.report.get("queries_ms") or 0 for r in runs["on"]])
    last = runs["on"][-1].report
    qs = last.get("queries", [])
    errors = [q["id"] for q in qs if q.get("error")]
    flagged = sorted(q["id"] for q in qs if q.get("finding"))
    by_date = {q["id"] for q in qs if q["id"].startswith("orders_of_day_")}
    lines = [
        f"Dataset: {ctx.dataset['database_mib']} MiB (rows: {ctx.dataset['rows']}). Shadow: a second cluster on "
        "this machine; each rehearsal starts from a fresh clone of the same template. The plan, in one transaction:",
        "",
        "| migration | statement |",
        "|---|---|",
        *(f"| {v}_{n} | `{sql}` |" for v, n, sql in PLAN),
        "",
        f"`duration_ms` of the whole rehearsal, median of {ctx.args.reps} runs each, round-robin, after one "
        "untimed warm-up of each:",
        "",
        "| queries | median | runs (ms) |",
        "|---|---:|---|",
        f"| 50 (file) | {on:.0f} ms | {', '.join(str(r.report['duration_ms']) for r in runs['on'])} |",
        f"| none | {off:.0f} ms | {', '.join(str(r.report['duration_ms']) for r in runs['off'])} |",
        "",
        f"Comparing 50 queries takes {q_ms:.0f} ms (its own `queries_ms`, median: 50 explained and 40 timed "
        "up to 5 times before the plan, 50 explained after each of 2 migrations, 50 explained and 40 timed "
        f"up to 5 times after the plan); the whole rehearsal takes {on / off:.1f}× as long as without queries "
        "(reported, not judged: without queries this rehearsal is a template clone and two catalog changes).",
        "",
        f"Flagged in the last run ({len(flagged)}): {', '.join(flagged) or 'none'}. Not compared: {', '.join(errors) or 'none'}.",
    ]
    per_query = q_ms / 50
    checks = [
        ("`queries_ms` per query", per_query, f"≤ {PER_QUERY_GOAL_MS} ms", per_query <= PER_QUERY_GOAL_MS, "{:.0f} ms"),
        ("every query compared; the one-day `created_at` counts flagged",
         f"{len(qs)} compared, {len(errors)} errors, {len(by_date & set(flagged))}/{len(by_date)} flagged", "yes",
         len(qs) == 50 and not errors and by_date <= set(flagged), "{}"),
    ]
    return {"markdown": "\n".join(lines), "checks": checks}


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import run as entry
    sys.exit(entry.main(["--only", NAME, *sys.argv[1:]]))
