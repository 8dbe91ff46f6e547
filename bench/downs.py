"""Reversibility benchmark: what judging every down on its own costs on a generated
diesel plan of 200 migrations, with every down right and with three broken ones.

Set-up (untimed): a second PostgreSQL cluster as the shadow server; one
`pgrehearse snapshot` of the dataset into a local store; `pgrehearse verify` of it
(the target's template). Two diesel migration directories of N = 200 migrations:

  clean   each migration creates a table of its own with an index and a foreign key
          to `customers`, and every 10th adds a column to `products`; every down
          drops what its up made
  broken  the same, but the downs of migrations 50, 100 and 150 forget their index
          (`differs`): after each, the judge copy is rebuilt (a file copy of the
          pre-plan copy, then the ups below applied again)

Measured `--reps` times round-robin (median reported): `pgrehearse rehearse --json
--snapshot ID` of each plan, its `reverse_ms` (the reversibility phase: a judge
copy cloned, then per migration an up, a down and the up again, each followed by
`pg_dump --schema-only`), its `apply_ms` and the whole process; and `--no-reverse`
of the clean plan for the process time without the phase.

Targets (PASS/FAIL computed from measured values):
  every clean down `reversible`, the three broken ones `differs`, none `not_checked`
  no scratch, reference or judge database left on the shadow
  the reversibility phase costs at most 1 s per judged down (clean plan)

Run it through the entry point, which sets up the cluster and the dataset:
  python3 bench/run.py --only downs
  python3 bench/run.py --quick --only downs --bin ~/.cache/pgrehearse-target/debug/pgrehearse
"""

import json
import os
import re

from common import Cluster, log, measure, median, sh
from restore import write_config

NAME = "downs"
REPS = 2
TITLE = "Reversibility: every down judged on its own (200 migrations)"
N = 200
BROKEN = (50, 100, 150)
PER_DOWN_GOAL_S = 1.0


def write_plan(directory, broken):
    for n in range(1, N + 1):
        d = directory / f"2025-01-01-{n:06d}_g{n}"
        d.mkdir(parents=True)
        up = (f"CREATE TABLE g{n} (id integer PRIMARY KEY, customer_id integer REFERENCES customers (id), "
              f"v text);\nCREATE INDEX g{n}_v_idx ON g{n} (v);\n")
        down = f"DROP TABLE g{n};\n"
        if n % 10 == 0:
            up += f"ALTER TABLE products ADD COLUMN g{n} integer;\n"
            down = f"ALTER TABLE products DROP COLUMN g{n};\n" + down
        if n in broken:
            # An index on products, which the down forgets (the table's own
            # index would go with the table).
            up += f"CREATE INDEX products_g{n}_idx ON products (id);\n"
        (d / "up.sql").write_text(up)
        (d / "down.sql").write_text(down)


class Bench:
    def __init__(self, ctx, shadow):
        self.ctx, self.shadow = ctx, shadow
        self.base = ctx.workdir / "downs"
        self.base.mkdir()
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
        self.configs = {}
        for name, broken in (("clean", ()), ("broken", BROKEN)):
            write_plan(self.base / name, broken)
            path = write_config(self.base / f"pgrehearse-{name}.toml", self.base, ctx.cluster, ctx.db, shadow)
            path.write_text(path.read_text() + f'migrations = {{ kind = "diesel", dir = "{self.base / name}" }}\n')
            self.configs[name] = path

    def pgr(self, name, *args):
        return [self.ctx.binary, "-c", self.configs[name], "--json", *args]

    def prepare(self):
        out = json.loads(sh(self.pgr("clean", "snapshot"), env=self.env))
        self.snapshot_id = out["id"]
        drill = json.loads(sh(self.pgr("clean", "verify", self.snapshot_id), env=self.env))
        if not drill.get("ok"):
            raise RuntimeError(f"the restore drill of {self.snapshot_id} failed: {drill}")
        log(f"snapshot {self.snapshot_id} verified")

    def rehearse(self, name, *extra):
        r = measure(self.pgr(name, "rehearse", "--snapshot", self.snapshot_id, *extra), env=self.env, capture=True)
        if r.returncode not in (0, 2):
            raise RuntimeError(f"pgrehearse rehearse exited {r.returncode}:\n{r.stdout[-2000:]}\n{r.stderr[-4000:]}")
        r.report = json.loads(r.stdout)
        return r


def rebuilds_s(run):
    """The judge-copy rebuilds the rehearsal logged (INFO "Judge copy rebuilt …"), in seconds."""
    lines = [line for line in (run.stderr or "").splitlines() if "Judge copy rebuilt" in line]
    return [int(m.group(1)) / 1000 for line in lines if (m := re.search(r"elapsed_ms\D{0,12}(\d+)", line))]


def verdicts(report):
    return [(m["version"], (m.get("reversible") or {}).get("result")) for m in report["migrations"]]


def run(ctx):
    shadow = Cluster()
    ctx.stack.callback(shadow.stop)
    shadow.start()
    b = Bench(ctx, shadow)
    b.prepare()
    runs = {"clean": [], "broken": [], "no_reverse": []}
    for i in range(ctx.args.reps):
        runs["clean"].append(b.rehearse("clean"))
        runs["broken"].append(b.rehearse("broken"))
        runs["no_reverse"].append(b.rehearse("clean", "--no-reverse"))
        log(f"run {i + 1}/{ctx.args.reps}: reverse_ms clean {runs['clean'][-1].report.get('reverse_ms')}, "
            f"broken {runs['broken'][-1].report.get('reverse_ms')}")
    left = shadow.psql("SELECT coalesce(string_agg(datname, ', '), '') FROM pg_database "
                       "WHERE datname LIKE 'pgrehearse%' AND NOT datistemplate")
    return report(ctx, runs, left)


def report(ctx, runs, left):
    def med(key, field):
        return median([r.report.get(field, 0) / 1000 for r in runs[key]])

    clean_ok = all(res == "reversible" for r in runs["clean"] for _, res in verdicts(r.report))
    broken_versions = {f"20250101{n:06d}" for n in BROKEN}
    broken_ok = all(
        (res == "differs") if v in broken_versions else (res == "reversible")
        for r in runs["broken"] for v, res in verdicts(r.report))
    rev_clean = med("clean", "reverse_ms")
    rev_broken = med("broken", "reverse_ms")
    per_down = rev_clean / N
    rebuilds = [x for r in runs["broken"] for x in rebuilds_s(r)]
    ds = ctx.dataset
    lines = [
        f"Dataset: database {ds['database_mib']} MiB (rows: {ds['rows']}). Shadow: a second cluster on this "
        f"machine. A generated diesel plan of {N} migrations (a table with an index and a foreign key each, "
        f"a column on `products` every 10th); `broken`: the downs of {', '.join(map(str, BROKEN))} forget an "
        "index on `products`.",
        "",
        f"Median of {ctx.args.reps} runs, round-robin.",
        "",
        "| run | `reverse_ms` | `apply_ms` | whole process |",
        "|---|---:|---:|---:|",
        f"| clean plan | {rev_clean:.1f} s | {med('clean', 'apply_ms'):.1f} s | "
        f"{median([r.wall_s for r in runs['clean']]):.1f} s |",
        f"| broken plan (3 rebuilds of the judge copy) | {rev_broken:.1f} s | {med('broken', 'apply_ms'):.1f} s | "
        f"{median([r.wall_s for r in runs['broken']]):.1f} s |",
        f"| clean plan, `--no-reverse` | — | {med('no_reverse', 'apply_ms'):.1f} s | "
        f"{median([r.wall_s for r in runs['no_reverse']]):.1f} s |",
        "",
        f"Per judged down (clean): {per_down * 1000:.0f} ms (an up, a down, the up again, three "
        f"`pg_dump --schema-only`). Judge-copy rebuilds logged in the broken runs: "
        + (", ".join(f"{x:.1f} s" for x in rebuilds) or "none found in the log")
        + " (a file copy of the pre-plan copy, then the ups below the next migration).",
    ]
    checks = [
        ("clean plan: every down `reversible`", 1 if clean_ok else 0, "yes", clean_ok, "{}"),
        ("broken plan: 3 `differs`, the rest `reversible`", 1 if broken_ok else 0, "yes", broken_ok, "{}"),
        ("databases left on the shadow", left or "none", "none", not left, "{}"),
        ("reversibility phase per judged down (clean)", per_down, f"≤ {PER_DOWN_GOAL_S} s",
         per_down <= PER_DOWN_GOAL_S, "{:.3f} s"),
    ]
    return {"markdown": "\n".join(lines), "checks": checks}
