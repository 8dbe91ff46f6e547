"""Rehearsal benchmark: what measuring a migration plan costs (`pgrehearse rehearse`
against the same SQL run by psql in one transaction), and how well the lock sampler
sees short ACCESS EXCLUSIVE locks taken outside a transaction.

Set-up (untimed): a second PostgreSQL cluster as the shadow server; one
`pgrehearse snapshot` of the dataset into a local store; `pgrehearse verify` of it,
which restores it on the shadow and makes the target's template (a file copy that
refuses connections). Two configurations share the store, the state and the target
name (so the same snapshot and template) and differ only in their sqlx migrations
directory:

  plan   four transactional migrations on `orders`, each statement over a second on
         the full dataset: ALTER COLUMN customer_id TYPE bigint (rewrite, index
         rebuilds, FK re-check), a GIN index on the jsonb line items (a B-tree on
         one text column builds in 0.6-0.8 s here: C locale, 2 parallel workers),
         ADD COLUMN with DEFAULT random() (rewrite), UPDATE of the status of the
         30 % of rows not yet delivered
  locks  a transactional migration creating a plpgsql function that takes
         LOCK TABLE products IN ACCESS EXCLUSIVE MODE and sleeps N ms, then two
         `-- no-transaction` migrations calling it with 100 ms and 50 ms

Part 1, measured `--reps` times round-robin (median reported) after one untimed
warm-up of each:

  a. psql -X -q -1 -v ON_ERROR_STOP=1 -f plan.sql   (the up files concatenated, with
     \\timing on) in a database created just before, untimed, as
     CREATE DATABASE … TEMPLATE <pgrehearse's template> STRATEGY FILE_COPY — the very
     clone a rehearsal starts from, so both sides start from the same cold copy
  b. pgrehearse rehearse --json --no-reverse --snapshot ID   its `apply_ms`: the plan
     phase (statements, per-statement lock reads, catalog and WAL readings, history rows)

  The whole rehearse process's wall time (clone, plan, lint, report) is shown too.

Part 2: `--reps` rehearsals of the locks plan; for each hold, whether the report has
an `AccessExclusiveLock` on `products` with `sampled: true`, and its `held_ms` against
the true hold (the sleep; the statement's own duration bounds it from above).

Targets (PASS/FAIL computed from measured values):
  (b) / (a)  <= 1.10     measuring costs at most 10 % over plain psql
  every rehearsal of the plan: mode single_transaction, every migration applied
  the 100 ms ACCESS EXCLUSIVE hold is detected (sampled) in every rehearsal
  live is never written (no history table, no new column on live afterwards)

Run it through the entry point, which sets up the cluster and the dataset:
  python3 bench/run.py --only rehearse
  python3 bench/run.py --quick --only rehearse --bin ~/.cache/pgrehearse-target/debug/pgrehearse
"""

import json
import os
import re
import sys
from pathlib import Path

from common import Cluster, log, measure, median, sh
from restore import write_config

NAME = "rehearse"
REPS = 2  # each repetition is a minute of psql + rehearse on the full dataset
TITLE = "Rehearsal: measurement overhead and lock sampling"

OVERHEAD_GOAL = 1.10  # rehearse apply_ms / psql -1 -f plan.sql wall time, at most
BASELINE_DB = "bench_psql_plan"
LOCKED = "products"  # the small table the lock migrations hold

# (version, name, up SQL): one statement each, so psql's \timing lines map 1:1 to migrations.
PLAN = [
    ("20240101000001", "orders_customer_id_bigint",
     "ALTER TABLE orders ALTER COLUMN customer_id TYPE bigint;"),
    ("20240101000002", "orders_items_idx",
     "CREATE INDEX orders_items_idx ON orders USING gin (items jsonb_path_ops);"),
    ("20240101000003", "orders_risk_score",
     "ALTER TABLE orders ADD COLUMN risk_score double precision NOT NULL DEFAULT random();"),
    ("20240101000004", "orders_status_upper",
     "UPDATE orders SET status = upper(status) WHERE status <> 'delivered';"),
]

HOLDS = [("20240201000002", "hold_100ms", 100), ("20240201000003", "hold_50ms", 50)]
LOCKS = [
    ("20240201000001", "lock_helper",
     "CREATE FUNCTION bench_hold_lock(ms int) RETURNS void LANGUAGE plpgsql AS $$\n"
     "BEGIN\n"
     f"  LOCK TABLE {LOCKED} IN ACCESS EXCLUSIVE MODE;\n"
     "  PERFORM pg_sleep(ms / 1000.0);\n"
     "END\n"
     "$$;"),
    *[(v, n, f"-- no-transaction\nSELECT bench_hold_lock({ms});") for v, n, ms in HOLDS],
]


def write_migrations(directory, migrations):
    directory.mkdir(parents=True)
    for version, name, sql in migrations:
        (directory / f"{version}_{name}.up.sql").write_text(sql + "\n")


class Bench:
    """pgrehearse with a local store, the shadow cluster and two migration directories."""

    def __init__(self, ctx, shadow):
        self.ctx, self.shadow = ctx, shadow
        base = ctx.workdir / "rehearse"
        base.mkdir()
        self.base = base
        write_migrations(base / "plan", PLAN)
        write_migrations(base / "locks", LOCKS)
        self.config = self._config("plan")
        self.locks_config = self._config("locks")
        self.plan_sql = base / "plan.sql"
        self.plan_sql.write_text("\\timing on\n" + "".join(sql + "\n" for _, _, sql in PLAN))
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}

    def _config(self, migrations):
        path = write_config(self.base / f"pgrehearse-{migrations}.toml", self.base, self.ctx.cluster,
                            self.ctx.db, self.shadow)
        path.write_text(path.read_text() + f'migrations = {{ kind = "sqlx", dir = "{self.base / migrations}" }}\n')
        return path

    def pgr(self, config, *args):
        return [self.ctx.binary, "-c", config, "--json", *args]

    def prepare(self):
        out = json.loads(sh(self.pgr(self.config, "snapshot"), env=self.env))
        self.snapshot_id = out["id"]
        drill = json.loads(sh(self.pgr(self.config, "verify", self.snapshot_id), env=self.env))
        if not drill.get("ok"):
            raise RuntimeError(f"the restore drill of {self.snapshot_id} failed: {drill}")
        self.template = self.shadow.psql(
            "SELECT datname FROM pg_database WHERE datistemplate AND NOT datallowconn AND datname LIKE 'pgrehearse%'")
        if not self.template or "\n" in self.template:
            raise RuntimeError(f"expected one pgrehearse template on the shadow, found {self.template!r}")
        log(f"snapshot {self.snapshot_id} verified (restore {drill['restore_duration_ms'] / 1000:.1f} s); "
            f"template {self.template}")

    def baseline(self):
        """psql -1 -f plan.sql on a fresh file copy of the template (the copy is untimed)."""
        self.shadow.psql(f"DROP DATABASE IF EXISTS {BASELINE_DB}")
        self.shadow.psql(f"CREATE DATABASE {BASELINE_DB} TEMPLATE {self.template} STRATEGY FILE_COPY")
        r = measure([self.shadow.bin("psql"), *self.shadow.conn_args(BASELINE_DB), "-X", "-q", "-1",
                     "-v", "ON_ERROR_STOP=1", "-f", self.plan_sql], capture=True)
        if r.returncode != 0:
            raise RuntimeError(f"psql -f plan.sql exited {r.returncode}:\n{r.stdout[-2000:]}\n{r.stderr[-4000:]}")
        # One "Time: … ms" per statement; the last one is the COMMIT that -1 appends (if shown).
        r.statement_ms = [float(x) for x in re.findall(r"^Time: ([0-9.]+) ms", r.stdout, re.M)][:len(PLAN)]
        self.shadow.psql(f"DROP DATABASE {BASELINE_DB}")
        return r

    def rehearse(self, config):
        r = measure(self.pgr(config, "rehearse", "--no-reverse", "--snapshot", self.snapshot_id),
                    env=self.env, capture=True)
        if r.returncode not in (0, 2):  # 2: the rehearsal ran and found problems (the report says which)
            raise RuntimeError(f"pgrehearse rehearse exited {r.returncode}:\n{r.stdout[-2000:]}\n{r.stderr[-4000:]}")
        r.report = json.loads(r.stdout)
        return r


def run(ctx):
    shadow = Cluster()
    ctx.stack.callback(shadow.stop)
    shadow.start()
    b = Bench(ctx, shadow)
    b.prepare()

    log("warm-up: psql -1 -f plan.sql and pgrehearse rehearse (untimed)")
    b.baseline()
    b.rehearse(b.config)

    runs = {"psql": [], "rehearse": []}
    for i in range(ctx.args.reps):
        runs["psql"].append(b.baseline())
        runs["rehearse"].append(b.rehearse(b.config))
        log(f"run {i + 1}/{ctx.args.reps}: psql {runs['psql'][-1].wall_s:.2f} s, rehearse apply_ms "
            f"{runs['rehearse'][-1].report['apply_ms'] / 1000:.2f} s (process {runs['rehearse'][-1].wall_s:.2f} s)")

    locks = []
    for i in range(ctx.args.reps):
        locks.append(b.rehearse(b.locks_config))
        log(f"locks run {i + 1}/{ctx.args.reps}: " + ", ".join(
            f"{name} {hold_of(locks[-1].report, v)}" for v, name, _ in HOLDS))

    live = ctx.cluster.psql("SELECT (to_regclass('_sqlx_migrations') IS NULL)::text || ' ' || (SELECT count(*) "
                            "FROM information_schema.columns WHERE table_name = 'orders' AND column_name = "
                            "'risk_score')", ctx.db)
    left = shadow.psql("SELECT string_agg(datname, ', ') FROM pg_database WHERE datname LIKE 'pgrehearse%' "
                       f"AND datname <> '{b.template}'")
    return report(ctx, b, runs, locks, live == "true 0", left)


def ae_lock(rep, version):
    """The ACCESS EXCLUSIVE lock on LOCKED the report gives migration `version`, or None."""
    m = next((m for m in rep["migrations"] if m["version"] == version), None)
    if m is None:
        return None, None
    lock = next((lk for lk in m["locks"] if lk["relation"] == LOCKED and lk["mode"] == "AccessExclusiveLock"), None)
    return m, lock


def hold_of(rep, version):
    _, lock = ae_lock(rep, version)
    return "missed" if lock is None else f"{lock['held_ms']} ms"


def report(ctx, b, runs, locks, live_untouched, left):
    reps = ctx.args.reps
    psql = median([r.wall_s for r in runs["psql"]])
    apply = median([r.report["apply_ms"] / 1000 for r in runs["rehearse"]])
    whole = median([r.wall_s for r in runs["rehearse"]])
    ds = ctx.dataset
    lines = [
        f"Dataset: database {ds['database_mib']} MiB (tables {ds['table_mib']} MiB; rows: {ds['rows']}). "
        f"Shadow: a second cluster on this machine. Snapshot {b.snapshot_id}, restored once by "
        "`pgrehearse verify` into the target's template; every measured run starts from a fresh "
        "`STRATEGY FILE_COPY` clone of that template (for psql: created untimed just before).",
        "",
        "### Measurement overhead: a plan of four transactional migrations on `orders`",
        "",
        "| migration | statement |",
        "|---|---|",
        *(f"| {v}_{n} | `{sql}` |" for v, n, sql in PLAN),
        "",
        f"Median of {reps} runs, round-robin, after one untimed warm-up of each. (a) is the whole psql "
        "process; (b) is the report's `apply_ms` (the plan phase, measurement included, in one "
        "transaction as live would run it); (c) is the whole rehearse process, for information.",
        "",
        "| step | median | runs (s) |",
        "|---|---:|---|",
        f"| (a) `psql -X -q -1 -v ON_ERROR_STOP=1 -f plan.sql` on a fresh clone | {psql:.2f} s | "
        f"{', '.join(f'{r.wall_s:.2f}' for r in runs['psql'])} |",
        f"| (b) `pgrehearse rehearse --json --no-reverse`: `apply_ms` | {apply:.2f} s | "
        f"{', '.join('%.2f' % (r.report['apply_ms'] / 1000) for r in runs['rehearse'])} |",
        f"| (c) the same rehearse process, whole wall time | {whole:.2f} s | "
        f"{', '.join(f'{r.wall_s:.2f}' for r in runs['rehearse'])} |",
        "",
        "Where (c) goes (medians from the reports): "
        f"scratch copy {median([r.report['restore_duration_ms'] for r in runs['rehearse']]) / 1000:.2f} s "
        f"(method {', '.join(sorted({r.report['method'] for r in runs['rehearse']}))}), "
        f"rehearsal `duration_ms` {median([r.report['duration_ms'] for r in runs['rehearse']]) / 1000:.2f} s, "
        f"mode {', '.join(sorted({r.report['mode'] for r in runs['rehearse']}))}.",
        "",
        "Per migration (medians): psql's `\\timing` of the statement against the report's `duration_ms` "
        "(which includes the lock, catalog and WAL readings and the history row), with what the report measured "
        "(last run).",
        "",
        "| migration | psql `\\timing` | report `duration_ms` | locks (strongest per relation, held) | rewrites | WAL |",
        "|---|---:|---:|---|---|---:|",
    ]
    last = runs["rehearse"][-1].report
    for i, (v, n, _) in enumerate(PLAN):
        t_psql = median([r.statement_ms[i] for r in runs["psql"] if len(r.statement_ms) > i])
        t_rep = median([m["duration_ms"] for r in runs["rehearse"] for m in r.report["migrations"] if m["version"] == v])
        m = next((m for m in last["migrations"] if m["version"] == v), {})
        best = {}
        for lk in m.get("locks", []):
            if lk["relation"] not in best or strength(lk["mode"]) > strength(best[lk["relation"]]["mode"]):
                best[lk["relation"]] = lk
        lk_text = ", ".join(f"{lk['relation']} {lk['mode'].removesuffix('Lock')} {lk['held_ms'] / 1000:.2f} s"
                            for lk in best.values()) or "—"
        rw = ", ".join(w["relation"] for w in m.get("rewrites", [])) or "—"
        wal = m.get("wal_bytes")
        lines.append(f"| {v}_{n} | {t_psql / 1000:.2f} s | {t_rep / 1000:.2f} s | {lk_text} | {rw} | "
                     f"{'—' if wal is None else f'{wal / (1 << 20):.0f} MiB'} |")

    shortest = min(median([r.statement_ms[i] for r in runs["psql"] if len(r.statement_ms) > i])
                   for i in range(len(PLAN)))
    lines += ["", f"Shortest statement of the plan (psql median): {shortest / 1000:.2f} s."]
    lines += [
        "",
        "### Lock sampling: ACCESS EXCLUSIVE on `products` held 100 ms and 50 ms outside a transaction",
        "",
        f"Migrations (mode `{', '.join(sorted({r.report['mode'] for r in locks}))}`): "
        + "; ".join(f"`{v}_{n}`" for v, n, _ in LOCKS)
        + f". The function takes `LOCK TABLE {LOCKED} IN ACCESS EXCLUSIVE MODE` then `pg_sleep`; the true "
        "hold is the sleep plus the implicit commit, bounded above by the statement's duration.",
        "",
        "| run | " + " | ".join(f"{ms} ms hold: reported (sampled) | statement" for _, _, ms in HOLDS) + " |",
        "|---|" + "---:|---:|" * len(HOLDS),
    ]
    detected = {v: 0 for v, _, _ in HOLDS}
    for i, r in enumerate(locks):
        cells = []
        for v, _, ms in HOLDS:
            m, lk = ae_lock(r.report, v)
            ok = lk is not None and lk.get("sampled") is True
            detected[v] += ok
            stmt = m["statements"][0]["duration_ms"] if m and m.get("statements") else None
            cells.append("missed" if lk is None else f"{lk['held_ms']} ms ({'yes' if lk.get('sampled') else 'no'})")
            cells.append("—" if stmt is None else f"{stmt} ms")
        lines.append(f"| {i + 1} | " + " | ".join(cells) + " |")
    lines.append("")
    lines.append("Detected: " + ", ".join(f"{ms} ms hold {detected[v]} of {len(locks)}" for v, _, ms in HOLDS)
                 + " (the sampler reads `pg_locks` every 20 ms; `held_ms` = last − first sighting + 20 ms).")
    if left:
        lines.append(f"\nDatabases pgrehearse left on the shadow besides its template: {left}.")

    plan_ok = [r for r in runs["rehearse"] if r.report["mode"] == "single_transaction"
               and len(r.report["migrations"]) == len(PLAN) and all(m["status"] == "applied" for m in r.report["migrations"])]
    v100 = HOLDS[0][0]
    checks = [
        ("rehearse `apply_ms` / psql -1 -f plan.sql time", apply / psql, f"≤ {OVERHEAD_GOAL}",
         apply / psql <= OVERHEAD_GOAL, "{:.3f}"),
        ("rehearsals of the plan in one transaction, every migration applied", len(plan_ok),
         f"{reps} of {reps}", len(plan_ok) == reps, "{}"),
        ("100 ms ACCESS EXCLUSIVE hold detected (sampled)", detected[v100], f"{len(locks)} of {len(locks)}",
         detected[v100] == len(locks), "{}"),
        ("live untouched (no `_sqlx_migrations`, no `orders.risk_score`)", "yes" if live_untouched else "no",
         "yes", live_untouched, "{}"),
    ]
    return {"markdown": "\n".join(lines), "checks": checks}


STRENGTH = ["AccessShareLock", "RowShareLock", "RowExclusiveLock", "ShareUpdateExclusiveLock", "ShareLock",
            "ShareRowExclusiveLock", "ExclusiveLock", "AccessExclusiveLock"]


def strength(mode):
    return STRENGTH.index(mode) if mode in STRENGTH else -1


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import run as entry
    sys.exit(entry.main(["--only", NAME, *sys.argv[1:]]))
