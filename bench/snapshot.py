"""Snapshot benchmark: how long `pgrehearse snapshot` takes, how much it stores
and how much memory it uses, against pg_dump on the same database.

Measured, each repeated `--reps` times (round-robin, median reported), after
one untimed warm-up dump so that every run reads from a warm page cache:

  1. pg_dump -Fc -f FILE          default gzip compression (what most tools do); FILE's size
  2. pg_dump -Fc -Z0 > /dev/null  the ceiling: dumping without compressing or storing
  3. pgrehearse snapshot          to the local store   (stored size, peak RSS)
  4. pgrehearse snapshot          to moto S3           (stored size, peak RSS; size read back with the AWS CLI)

Targets (PASS/FAIL computed from the measured medians):
  pg_dump -Fc time / pgrehearse time  >= 3.0
  pgrehearse time / ceiling time      <= 1.4
  pgrehearse stored bytes             <= pg_dump -Fc file bytes
  pgrehearse peak RSS                 <= 64 MiB

Run it through the entry point, which sets up the cluster and the dataset:
  python3 bench/run.py --only snapshot            (full: release build, ~640 MiB of data)
  python3 bench/snapshot.py --quick --bin PATH    (same, ~50 MiB dataset, any binary)
"""

import json
import os
import shutil
import sys
from pathlib import Path

from common import MIB, log, measure, median

NAME = "snapshot"
TITLE = "Snapshot: pg_dump -Fc -Z0 → zstd → store"

SPEEDUP_GOAL = 3.0     # pg_dump -Fc time / pgrehearse time, at least
CEILING_GOAL = 1.4     # pgrehearse time / pg_dump -Z0 time, at most
RSS_GOAL_MIB = 64      # pgrehearse peak RSS, at most
# For experiments: BENCH_ZSTD_LEVEL=3 overrides pgrehearse's default level.
LEVEL = f"zstd_level = {int(os.environ['BENCH_ZSTD_LEVEL'])}" if os.environ.get("BENCH_ZSTD_LEVEL") else ""


def write_config(path, state_dir, store_toml, cluster, db):
    path.write_text(
        f'state_dir = "{state_dir}"\n\n[store]\n{store_toml}\n\n'
        f'[snapshot]\npg_bindir = "{cluster.bindir}"\n{LEVEL}\n'
        f'[[targets]]\nname = "bench"\nlive_url = "{cluster.url(db)}"\n')
    return path


class Snapshotter:
    """One pgrehearse configuration (local or S3) and how to check and clean its store."""

    def __init__(self, ctx, kind):
        self.ctx, self.kind = ctx, kind
        base = ctx.workdir / f"snapshot-{kind}"
        base.mkdir()
        if kind == "local":
            self.store_dir = base / "store"
            store = f'kind = "local"\npath = "{self.store_dir}"'
            self.env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
        else:
            self.moto = ctx.moto()
            store = (f'kind = "s3"\nbucket = "{self.moto.bucket}"\nendpoint = "{self.moto.endpoint}"\n'
                     f'region = "{self.moto.REGION}"\nforce_path_style = true')
            self.env = self.moto.env()
        self.config = write_config(base / "pgrehearse.toml", base / "state", store, ctx.cluster, ctx.db)

    def run(self):
        r = measure([self.ctx.binary, "-c", self.config, "--json", "snapshot"], env=self.env, capture=True)
        if r.returncode != 0:
            raise RuntimeError(f"pgrehearse snapshot ({self.kind}) exited {r.returncode}:\n{r.stdout}\n{r.stderr[-4000:]}")
        out = json.loads(r.stdout)
        r.result = out
        r.size = out["bytes_stored"]
        r.readback = self.read_back(out["key"])
        self.clean()
        return r

    def read_back(self, key):
        """The stored dump's size as an independent reader sees it."""
        if self.kind == "local":
            return os.path.getsize(key)
        head = json.loads(self.moto.aws("s3api", "head-object", "--bucket", self.moto.bucket, "--key", key))
        return head["ContentLength"]

    def clean(self):
        """Deletes the snapshot so stores do not grow across repetitions."""
        if self.kind == "local":
            shutil.rmtree(self.store_dir, ignore_errors=True)
        else:
            self.moto.aws("s3", "rm", f"s3://{self.moto.bucket}/", "--recursive", "--only-show-errors")


def run(ctx):
    cluster, db, reps = ctx.cluster, ctx.db, ctx.args.reps
    pg_dump = cluster.bin("pg_dump")
    dump_file = ctx.workdir / "pg_dump-Fc.dump"
    gzip_cmd = [pg_dump, "-Fc", "-f", dump_file, *cluster.conn_args(db)]
    ceiling_cmd = [pg_dump, "-Fc", "-Z0", *cluster.conn_args(db)]
    snap = {kind: Snapshotter(ctx, kind) for kind in ("local", "s3")}

    log("warm-up: pg_dump -Fc -Z0 > /dev/null (untimed)")
    warm = measure(ceiling_cmd)
    if warm.returncode != 0:
        raise RuntimeError(f"pg_dump failed: {warm.stderr}")

    runs = {"gzip": [], "ceiling": [], "local": [], "s3": []}
    for i in range(reps):
        r = measure(gzip_cmd)
        if r.returncode != 0:
            raise RuntimeError(f"pg_dump -Fc failed: {r.stderr}")
        r.size = dump_file.stat().st_size
        dump_file.unlink()
        runs["gzip"].append(r)
        r = measure(ceiling_cmd)
        if r.returncode != 0:
            raise RuntimeError(f"pg_dump -Fc -Z0 failed: {r.stderr}")
        runs["ceiling"].append(r)
        for kind in ("local", "s3"):
            runs[kind].append(snap[kind].run())
        log(f"run {i + 1}/{reps}: " + ", ".join(f"{k} {v[-1].wall_s:.2f} s" for k, v in runs.items()))
    return report(ctx, runs)


def report(ctx, runs):
    t = {k: median([r.wall_s for r in v]) for k, v in runs.items()}
    size = {k: median([r.size for r in v]) for k, v in runs.items() if k != "ceiling"}
    rss_tree = {k: max(r.rss_tree_kib for r in v) / 1024 for k, v in runs.items()}
    rss_own = {k: max(r.rss_own_kib for r in v) / 1024 for k, v in runs.items()}
    raw = median([r.result["bytes_raw"] for r in runs["local"]])
    label = {"gzip": "`pg_dump -Fc -f FILE` (gzip)", "ceiling": "`pg_dump -Fc -Z0 > /dev/null` (ceiling)",
             "local": "`pgrehearse snapshot`, local store", "s3": "`pgrehearse snapshot`, moto S3"}

    ds = ctx.dataset
    lines = [
        f"Dataset: database {ds['database_mib']} MiB (tables {ds['table_mib']} MiB; rows: {ds['rows']}). "
        f"Uncompressed dump (`bytes_raw`): {raw / MIB:.1f} MiB; compression ratio: "
        f"zstd (pgrehearse) {raw / size['local']:.2f}×, gzip (`pg_dump -Fc`) {raw / size['gzip']:.2f}×.",
        "",
        f"Median of {ctx.args.reps} runs, after one untimed warm-up dump. Peak RSS is the largest "
        "of all runs: *tree* is GNU time's maximum RSS of the process and the children it reaped "
        "(pgrehearse's pg_dump), *own* is the process's own `VmHWM` sampled every 20 ms.",
        "",
        "| step | median wall | runs (s) | output | peak RSS tree / own |",
        "|---|---:|---|---:|---:|",
    ]
    for k, v in runs.items():
        out = f"{size[k] / MIB:.1f} MiB" if k in size else "—"
        lines.append(f"| {label[k]} | {t[k]:.2f} s | {', '.join(f'{r.wall_s:.2f}' for r in v)} | {out} "
                     f"| {rss_tree[k]:.1f} / {rss_own[k]:.1f} MiB |")
    for k in ("local", "s3"):
        ms = median([r.result["duration_ms"] for r in runs[k]])
        lines.append(f"\n`duration_ms` reported by pgrehearse ({k}): median {ms / 1000:.2f} s "
                     f"(wall time includes process start and store set-up).")

    checks = []
    for k, where in (("local", "local store"), ("s3", "S3")):
        checks += [
            (f"pg_dump -Fc time / pgrehearse time ({where})", t["gzip"] / t[k], f"≥ {SPEEDUP_GOAL}",
             t["gzip"] / t[k] >= SPEEDUP_GOAL, "{:.2f}×"),
            (f"pgrehearse time ({where}) / ceiling time", t[k] / t["ceiling"], f"≤ {CEILING_GOAL}",
             t[k] / t["ceiling"] <= CEILING_GOAL, "{:.2f}"),
            (f"stored size ({where}) vs pg_dump -Fc file", size[k] / size["gzip"], "≤ 1.00",
             size[k] <= size["gzip"], "{:.3f}×"),
            (f"peak RSS of pgrehearse ({where}), tree", rss_tree[k], f"≤ {RSS_GOAL_MIB} MiB",
             rss_tree[k] <= RSS_GOAL_MIB, "{:.1f} MiB"),
        ]
        bad = [r for r in runs[k] if r.readback != r.size]
        checks.append((f"stored object read back ({where}) has `bytes_stored` bytes",
                       len(runs[k]) - len(bad), f"{len(runs[k])} of {len(runs[k])}", not bad, "{} ok"))
    return {"markdown": "\n".join(lines), "checks": checks}


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import run as entry
    sys.exit(entry.main(["--only", NAME, *sys.argv[1:]]))
