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
  values, timed 10 times, so this is ~14 round trips of EXPLAIN per query)
  duration_ms with 50 queries / without  <= 1.5 on the full dataset, where a rehearsal
  (clone, plan, checks) takes tens of seconds; with --quick the rehearsal itself takes
  under a second and the ratio is reported, not judged
  every query compared (no `error`), and the one-day `created_at` counts flagged

Run it through the entry point, which sets up the cluster and the dataset:
  python3 bench/run.py --only queries
  python3 bench/run.py --quick --only queries --bin /path/to/debug/pgrehearse
"""

import json
import os
import sys
from pathlib import Path

from common import Cluster, log, measure, median, sh
from restore import write_config

NAME = "queries"
REPS = 3
TITLE = "Query plans before and after: what comparing 50 queries adds to a rehearsal"

RATIO_GOAL = 1.5  # duration_ms with 50 queries / without, at most (full dataset)
PER_QUERY_GOAL_MS = 200  # queries_ms / 50, at most

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


class Bench:
    def __init__(self, ctx, shadow):
        self.ctx, self.shadow = ctx, shadow
        base = ctx.workdir / "queries"
        (base / "migrations").mkdir(parents=True)
        for version, name, sql in PLAN:
            (base / "migrations" / f"{version}_{name}.up.sql").write_text(sql + "\n")
        (base / "bench-queries.toml").write_text(queries_toml())
        self.configs = {}
        for mode in ("on", "off"):
            path = write_config(base / f"pgrehearse-{mode}.toml", base, ctx.cluster, ctx.db, shadow)
            text = path.read_text() + f'migrations = {{ kind = "sqlx", dir = "{base / "migrations"}" }}\n'
            if mode == "on":
                text += f'queries = {{ file = "{base / "bench-queries.toml"}", from_live = false }}\n'
            else:
                text += "queries = { from_live = false }\n"
            path.write_text(text)
            self.configs[mode] = path
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}

    def pgr(self, mode, *args):
        return [self.ctx.binary, "-c", self.configs[mode], "--json", *args]

    def prepare(self):
        self.snapshot_id = json.loads(sh(self.pgr("on", "snapshot"), env=self.env))["id"]
        drill = json.loads(sh(self.pgr("on", "verify", self.snapshot_id), env=self.env))
        if not drill.get("ok"):
            raise RuntimeError(f"the restore drill of {self.snapshot_id} failed: {drill}")
        log(f"snapshot {self.snapshot_id} verified (restore {drill['restore_duration_ms'] / 1000:.1f} s)")

    def rehearse(self, mode):
        r = measure(self.pgr(mode, "rehearse", "--no-reverse", "--snapshot", self.snapshot_id),
                    env=self.env, capture=True)
        if r.returncode not in (0, 2):  # 2: the rehearsal ran and found problems (the created_at queries)
            raise RuntimeError(f"pgrehearse rehearse exited {r.returncode}:\n{r.stdout[-2000:]}\n{r.stderr[-4000:]}")
        r.report = json.loads(r.stdout)
        return r


def run(ctx):
    shadow = Cluster()
    ctx.stack.callback(shadow.stop)
    shadow.start()
    b = Bench(ctx, shadow)
    b.prepare()
    log("warm-up: one rehearsal with queries and one without (untimed)")
    b.rehearse("on")
    b.rehearse("off")
    runs = {"on": [], "off": []}
    for i in range(ctx.args.reps):
        for mode in ("on", "off") if i % 2 == 0 else ("off", "on"):
            runs[mode].append(b.rehearse(mode))
        log(f"run {i + 1}/{ctx.args.reps}: duration_ms with queries {runs['on'][-1].report['duration_ms']} ms "
            f"(queries_ms {runs['on'][-1].report.get('queries_ms')}), without {runs['off'][-1].report['duration_ms']} ms")
    return report(ctx, runs)


def report(ctx, runs):
    on = median([r.report["duration_ms"] for r in runs["on"]])
    off = median([r.report["duration_ms"] for r in runs["off"]])
    q_ms = median([r.report.get("queries_ms") or 0 for r in runs["on"]])
    ratio = on / off
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
        f"Comparing 50 queries adds {(ratio - 1) * 100:+.1f} % (its own `queries_ms`: median {q_ms:.0f} ms: "
        "50 explained and 40 timed 5 times before the plan, 50 explained after each of 2 migrations, "
        "50 explained and 40 timed after the plan).",
        "",
        f"Flagged in the last run ({len(flagged)}): {', '.join(flagged) or 'none'}. Not compared: {', '.join(errors) or 'none'}.",
    ]
    per_query = q_ms / 50
    quick = ctx.args.quick
    checks = [
        ("`queries_ms` per query", per_query, f"≤ {PER_QUERY_GOAL_MS} ms", per_query <= PER_QUERY_GOAL_MS, "{:.0f} ms"),
        ("`duration_ms` with 50 queries / without" + (" (--quick: reported, not judged)" if quick else ""),
         ratio, "—" if quick else f"≤ {RATIO_GOAL}", quick or ratio <= RATIO_GOAL, "{:.3f}"),
        ("every query compared; the one-day `created_at` counts flagged",
         f"{len(qs)} compared, {len(errors)} errors, {len(by_date & set(flagged))}/{len(by_date)} flagged", "yes",
         len(qs) == 50 and not errors and by_date <= set(flagged), "{}"),
    ]
    return {"markdown": "\n".join(lines), "checks": checks}


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import run as entry
    sys.exit(entry.main(["--only", NAME, *sys.argv[1:]]))
