"""Probe overhead: how much the rehearsal's probes (sessions that take the locks of the
application's reads and writes on every table a migration names, every 50 ms, and
measure each wait) add to the measured plan, `apply_ms`.

Set-up (untimed): a second PostgreSQL cluster as the shadow server; one
`pgrehearse snapshot` of the dataset into a local store; `pgrehearse verify` of it,
which makes the target's template. Two configurations share the store, the state,
the target and the migrations and differ only in `[rehearsal] probes`:

  on    the default: probes run while the plan runs
  off   `[rehearsal] probes = false`

The plan, file by file (its `-- no-transaction` file forces that), all on `orders`:
  1. UPDATE of the status of the ~30 % of rows not yet delivered (ROW EXCLUSIVE:
     probes are never blocked, so they query all the time — the worst case for
     their cost)
  2. CREATE INDEX CONCURRENTLY on `total` (SHARE UPDATE EXCLUSIVE: never blocked)
  3. CREATE INDEX on `currency` (SHARE: the write probe waits for the build)

Measured `--reps` times round-robin (on, off, on, off…; median reported) after one
untimed warm-up of each: `pgrehearse rehearse --json --no-reverse`'s `apply_ms`.

Targets (PASS/FAIL computed from measured values):
  apply_ms with probes / without  <= 1.05
  the CREATE INDEX's writes wait >= 80 % of its build; reads, and every wait of
  migrations 1 and 2, <= 50 ms (probes measure what they should while they cost little)
  without probes: no `blocking[]` in the report

Run it through the entry point, which sets up the cluster and the dataset:
  python3 bench/run.py --only probes
  python3 bench/run.py --quick --only probes --bin /path/to/debug/pgrehearse
"""

import sys
from pathlib import Path

from common import median
from pair import Pair

NAME = "probes"
REPS = 3
TITLE = "Rehearsal probes: overhead on apply_ms, and what they measure"

OVERHEAD_GOAL = 1.05  # apply_ms with probes / without, at most

UPDATE, CONCURRENT, INDEX = "20240301000001", "20240301000002", "20240301000003"
PLAN = [
    (UPDATE, "orders_status_upper", "UPDATE orders SET status = upper(status) WHERE status <> 'delivered';"),
    (CONCURRENT, "orders_total_idx",
     "-- no-transaction\nCREATE INDEX CONCURRENTLY orders_total_idx ON orders (total);"),
    (INDEX, "orders_currency_idx", "CREATE INDEX orders_currency_idx ON orders (currency);"),
]


def migration(report, version):
    return next(m for m in report["migrations"] if m["version"] == version)


def waits(report, version):
    """(reads, writes) the probes measured on `orders` during migration `version`."""
    b = next((b for b in migration(report, version).get("blocking", []) if b["relation"] == "orders"), None)
    return (None, None) if b is None else (b["reads_blocked_ms"], b["writes_blocked_ms"])




def run(ctx):
    pair = Pair(ctx, NAME, PLAN, {"on": "", "off": "\n[rehearsal]\nprobes = false\n"})

    def describe(runs):
        return f"apply_ms with probes {runs['on'][-1].report['apply_ms']} ms, without {runs['off'][-1].report['apply_ms']} ms"

    return report(ctx, pair.runs(describe))


def report(ctx, runs):
    on = median([r.report["apply_ms"] for r in runs["on"]])
    off = median([r.report["apply_ms"] for r in runs["off"]])
    ratio = on / off
    last = runs["on"][-1].report
    lines = [
        f"Dataset: {ctx.dataset['database_mib']} MiB (rows: {ctx.dataset['rows']}). Shadow: a second cluster on "
        "this machine; each rehearsal starts from a fresh clone of the same template. The plan runs file by file:",
        "",
        "| migration | statement |",
        "|---|---|",
        *(f"| {v}_{n} | `{sql.splitlines()[-1]}` |" for v, n, sql in PLAN),
        "",
        f"`apply_ms`, median of {ctx.args.reps} runs each, round-robin (the order alternates), after one untimed "
        "warm-up of each:",
        "",
        "| probes | median | runs (ms) |",
        "|---|---:|---|",
        f"| on | {on:.0f} ms | {', '.join(str(r.report['apply_ms']) for r in runs['on'])} |",
        f"| off (`[rehearsal] probes = false`) | {off:.0f} ms | "
        f"{', '.join(str(r.report['apply_ms']) for r in runs['off'])} |",
        "",
        f"Probes add {(ratio - 1) * 100:+.1f} % to `apply_ms`.",
        "",
        "What the probes measured (last run with probes), against each migration's own duration:",
        "",
        "| migration | duration | reads of `orders` waited | writes waited | caused by |",
        "|---|---:|---:|---:|---|",
    ]
    for v, n, _ in PLAN:
        m = migration(last, v)
        b = next((b for b in m.get("blocking", []) if b["relation"] == "orders"), {})
        lines.append(f"| {v}_{n} | {m['duration_ms']} ms | {b.get('reads_blocked_ms', '—')} ms | "
                     f"{b.get('writes_blocked_ms', '—')} ms | {('`' + b['statement'] + '`') if b.get('statement') else '—'} |")
    r_idx, w_idx = waits(last, INDEX)
    build = migration(last, INDEX)["statements"][0]["duration_ms"]
    free = [x for v in (UPDATE, CONCURRENT) for x in waits(last, v)] + [r_idx]
    measured_ok = w_idx is not None and w_idx >= 0.8 * build and all(x is not None and x <= 50 for x in free)
    none_off = all(not m.get("blocking") for r in runs["off"] for m in r.report["migrations"])
    checks = [
        ("`apply_ms` with probes / without", ratio, f"≤ {OVERHEAD_GOAL}", ratio <= OVERHEAD_GOAL, "{:.3f}"),
        ("CREATE INDEX: writes wait ≥ 80 % of the build; reads and migrations 1–2 ≤ 50 ms",
         f"writes {w_idx} ms of {build} ms; others ≤ {max((x or 0) for x in free)} ms", "yes", measured_ok, "{}"),
        ("without probes: no `blocking[]`", "yes" if none_off else "no", "yes", none_off, "{}"),
    ]
    return {"markdown": "\n".join(lines), "checks": checks}


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import run as entry
    sys.exit(entry.main(["--only", NAME, *sys.argv[1:]]))
