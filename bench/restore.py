"""Restore benchmark: how long a restore drill (`pgrehearse verify`) takes, against
a plain local `pg_restore -j2` of the same dump file, and how much the template
clone saves on a repeated drill.

Set-up (untimed): a second PostgreSQL cluster as the shadow server; one
`pgrehearse snapshot` of the dataset into a local store; `pgrehearse download`
of it, which writes the very pg_dump archive the drill restores.

Measured, each repeated `--reps` times (round-robin, median reported), after one
untimed warm-up of (a) and of (b) (which also creates the template):

  a. pg_restore -j2 --exit-on-error --no-owner --no-acl FILE   into a fresh database on the
     shadow cluster (created just before, untimed: the strictest baseline), the same flags
     the drill uses
  b. pgrehearse verify --full   read the stored object and check its SHA-256, decompress to
     staging, CREATE DATABASE, pg_restore -j2, ANALYZE, row counts and index checks,
     template refresh, drop the scratch database, record the outcome
  c. pgrehearse verify          the same snapshot again: SHA-256 check, then a FILE_COPY clone
     of the template instead of pg_restore

Targets (PASS/FAIL computed from the measured medians):
  (b) / (a)  <= 1.15     restore from the store costs at most 15 % more than pg_restore alone
  (c) / (b)  <= 0.10     a repeated drill is at least 10x cheaper than a full restore
  every (b) reports method "restore", every (c) "template_clone", all ok

Run it through the entry point, which sets up the cluster and the dataset:
  python3 bench/run.py --only restore
  python3 bench/run.py --quick --only restore --bin ~/.cache/pgrehearse-target/debug/pgrehearse
"""

import json
import os
import sys
from pathlib import Path

from common import MIB, Cluster, log, measure, median, sh

NAME = "restore"
TITLE = "Restore drill: pgrehearse verify vs pg_restore -j2"

FULL_GOAL = 1.15   # verify --full time / local pg_restore -j2 time, at most
CLONE_GOAL = 0.10  # second verify (template clone) time / verify --full time, at most
JOBS = 2
BASELINE_DB = "bench_pg_restore"


def write_config(path, base, live, db, shadow):
    path.write_text(
        f'state_dir = "{base / "state"}"\n\n[store]\nkind = "local"\npath = "{base / "store"}"\n\n'
        f'[snapshot]\npg_bindir = "{live.bindir}"\n\n'
        f'[[targets]]\nname = "bench"\nlive_url = "{live.url(db)}"\nshadow_url = "{shadow.url("postgres")}"\n'
        f'restore_jobs = {JOBS}\n')
    return path


class Drill:
    """pgrehearse with a local store and the shadow cluster, and the baseline pg_restore."""

    def __init__(self, ctx, shadow):
        self.ctx, self.shadow = ctx, shadow
        base = ctx.workdir / "restore"
        base.mkdir()
        self.config = write_config(base / "pgrehearse.toml", base, ctx.cluster, ctx.db, shadow)
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
        self.dump = base / "snapshot.pgdump"

    def pgr(self, *args):
        return [self.ctx.binary, "-c", self.config, "--json", *args]

    def prepare(self):
        out = json.loads(sh(self.pgr("snapshot"), env=self.env))
        self.snapshot_id = out["id"]
        sh(self.pgr("download", self.snapshot_id, "-o", self.dump), env=self.env)
        self.dump_bytes = self.dump.stat().st_size
        self.raw_bytes = out["bytes_raw"]
        log(f"snapshot {self.snapshot_id}: archive {self.dump_bytes / MIB:.1f} MiB "
            f"(stored {out['bytes_stored'] / MIB:.1f} MiB)")

    def baseline(self):
        self.shadow.psql(f"DROP DATABASE IF EXISTS {BASELINE_DB}")
        self.shadow.psql(f"CREATE DATABASE {BASELINE_DB}")
        r = measure([self.shadow.bin("pg_restore"), *self.shadow.conn_args(BASELINE_DB), f"--jobs={JOBS}",
                     "--exit-on-error", "--no-owner", "--no-acl", self.dump])
        if r.returncode != 0:
            raise RuntimeError(f"pg_restore exited {r.returncode}:\n{r.stderr[-4000:]}")
        self.shadow.psql(f"DROP DATABASE {BASELINE_DB}")
        return r

    def verify(self, full, method):
        r = measure(self.pgr("verify", *(["--full"] if full else []), self.snapshot_id), env=self.env, capture=True)
        if r.returncode != 0:
            raise RuntimeError(f"pgrehearse verify{' --full' if full else ''} exited {r.returncode}:\n"
                               f"{r.stdout}\n{r.stderr[-4000:]}")
        r.result = json.loads(r.stdout)
        r.as_expected = r.result.get("ok") is True and r.result.get("method") == method
        return r


def run(ctx):
    shadow = Cluster()
    ctx.stack.callback(shadow.stop)
    shadow.start()
    d = Drill(ctx, shadow)
    d.prepare()

    log("warm-up: pg_restore and pgrehearse verify --full (untimed; the latter creates the template)")
    d.baseline()
    d.verify(True, "restore")

    runs = {"pg_restore": [], "full": [], "clone": []}
    for i in range(ctx.args.reps):
        runs["pg_restore"].append(d.baseline())
        runs["full"].append(d.verify(True, "restore"))
        runs["clone"].append(d.verify(False, "template_clone"))
        log(f"run {i + 1}/{ctx.args.reps}: " + ", ".join(f"{k} {v[-1].wall_s:.2f} s" for k, v in runs.items()))
    left = shadow.psql("SELECT string_agg(datname, ', ') FROM pg_database WHERE datname LIKE 'pgrehearse%'")
    return report(ctx, d, runs, left)


def report(ctx, d, runs, left):
    t = {k: median([r.wall_s for r in v]) for k, v in runs.items()}
    label = {"pg_restore": f"(a) `pg_restore -j{JOBS}` of the archive into a fresh database",
             "full": "(b) `pgrehearse verify --full` (download + SHA-256 + restore + checks)",
             "clone": "(c) `pgrehearse verify` again (SHA-256 + template clone + checks)"}
    ds = ctx.dataset
    lines = [
        f"Dataset: database {ds['database_mib']} MiB (tables {ds['table_mib']} MiB; rows: {ds['rows']}). "
        f"Archive restored: {d.dump_bytes / MIB:.1f} MiB (`pg_dump -Fc -Z0`, as `pgrehearse download` "
        f"writes it). Shadow: a second cluster on this machine; `restore_jobs = {JOBS}`.",
        "",
        f"Median of {ctx.args.reps} runs, round-robin, after one untimed warm-up of (a) and (b). (a) excludes "
        "`CREATE DATABASE`, `ANALYZE` and any checks; (b) and (c) are whole `pgrehearse` processes "
        "(start-up, state store, manifest rewrite included).",
        "",
        "| step | median wall | runs (s) | `restore_duration_ms` (median) |",
        "|---|---:|---|---:|",
    ]
    for k, v in runs.items():
        rd = "—" if k == "pg_restore" else f"{median([r.result['restore_duration_ms'] for r in v]) / 1000:.2f} s"
        lines.append(f"| {label[k]} | {t[k]:.2f} s | {', '.join(f'{r.wall_s:.2f}' for r in v)} | {rd} |")
    if left:
        lines.append(f"\nDatabases pgrehearse keeps on the shadow afterwards: {left}.")

    drills = runs["full"] + runs["clone"]
    good = [r for r in drills if r.as_expected]
    checks = [
        ("verify --full time / local pg_restore -j2 time", t["full"] / t["pg_restore"], f"≤ {FULL_GOAL}",
         t["full"] / t["pg_restore"] <= FULL_GOAL, "{:.2f}"),
        ("second verify (template clone) time / verify --full time", t["clone"] / t["full"], f"≤ {CLONE_GOAL}",
         t["clone"] / t["full"] <= CLONE_GOAL, "{:.3f}"),
        ("drills ok with the expected `method` (restore / template_clone)", len(good),
         f"{len(drills)} of {len(drills)}", len(good) == len(drills), "{} ok"),
    ]
    return {"markdown": "\n".join(lines), "checks": checks}


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import run as entry
    sys.exit(entry.main(["--only", NAME, *sys.argv[1:]]))
