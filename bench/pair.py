"""Two configurations of one rehearsal measured against each other, for the
benchmarks that ask what a rehearsal feature costs (bench/probes.py: the probes,
bench/queries.py: the query comparison).

Set-up (untimed): a second PostgreSQL cluster as the shadow server, the plan's
migration files, two configurations `on` and `off` that share the store, the
state, the target and the migrations and differ only in the lines the benchmark
gives, one `pgrehearse snapshot` of the dataset and its `pgrehearse verify` (which
makes the target's template, so every rehearsal starts from a fresh clone of it).

Measured: one untimed warm-up of each, then `--reps` rehearsals of each,
round-robin (on, off, off, on, …) so drift on the machine falls on both alike.
"""

import json
import os

from common import Cluster, log, measure, sh
from restore import write_config

MODES = ("on", "off")


class Pair:
    def __init__(self, ctx, name, plan, extra, files=None):
        """`plan`: [(version, name, sql)] written as sqlx up files; `extra`: {mode: config
        lines} appended after the target; `files`: {file name: text} beside the configs."""
        self.ctx = ctx
        self.shadow = Cluster()
        ctx.stack.callback(self.shadow.stop)
        self.shadow.start()
        base = ctx.workdir / name
        self.base = base
        (base / "migrations").mkdir(parents=True)
        for version, mig, sql in plan:
            (base / "migrations" / f"{version}_{mig}.up.sql").write_text(sql + "\n")
        for fname, text in (files or {}).items():
            (base / fname).write_text(text)
        self.configs = {}
        for mode in MODES:
            path = write_config(base / f"pgrehearse-{mode}.toml", base, ctx.cluster, ctx.db, self.shadow)
            text = path.read_text() + f'migrations = {{ kind = "sqlx", dir = "{base / "migrations"}" }}\n'
            path.write_text(text + extra[mode])
            self.configs[mode] = path
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
        self._prepare()

    def pgr(self, mode, *args):
        return [self.ctx.binary, "-c", self.configs[mode], "--json", *args]

    def _prepare(self):
        self.snapshot_id = json.loads(sh(self.pgr("on", "snapshot"), env=self.env))["id"]
        drill = json.loads(sh(self.pgr("on", "verify", self.snapshot_id), env=self.env))
        if not drill.get("ok"):
            raise RuntimeError(f"the restore drill of {self.snapshot_id} failed: {drill}")
        log(f"snapshot {self.snapshot_id} verified (restore {drill['restore_duration_ms'] / 1000:.1f} s)")

    def rehearse(self, mode):
        """One `rehearse --json --no-reverse` of the verified snapshot; its report is `.report`."""
        r = measure(self.pgr(mode, "rehearse", "--no-reverse", "--snapshot", self.snapshot_id),
                    env=self.env, capture=True)
        if r.returncode not in (0, 2):  # 2: the rehearsal ran and found problems
            raise RuntimeError(f"pgrehearse rehearse exited {r.returncode}:\n{r.stdout[-2000:]}\n{r.stderr[-4000:]}")
        r.report = json.loads(r.stdout)
        return r

    def runs(self, describe):
        """The warm-up, then the round-robin runs: {mode: [Run with .report]}.
        `describe(runs)` gives the log line of each round."""
        log("warm-up: one rehearsal of each configuration (untimed)")
        for mode in MODES:
            self.rehearse(mode)
        runs = {mode: [] for mode in MODES}
        for i in range(self.ctx.args.reps):
            for mode in MODES if i % 2 == 0 else reversed(MODES):
                runs[mode].append(self.rehearse(mode))
            log(f"run {i + 1}/{self.ctx.args.reps}: {describe(runs)}")
        return runs
