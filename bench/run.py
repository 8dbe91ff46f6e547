#!/usr/bin/env python3
"""Runs pgrehearse's benchmarks and writes bench/RESULTS.md.

  python3 bench/run.py                    all benchmarks, release build (cargo build --release)
  python3 bench/run.py --only snapshot    one benchmark
  python3 bench/run.py --quick --bin ~/.cache/pgrehearse-target/debug/pgrehearse
                                          ~50 MiB dataset, any binary: checks the scripts end to end;
                                          writes /tmp/pgrehearse-bench-RESULTS.quick.md, not RESULTS.md
  --keep                                  keep the cluster and its dataset in /tmp/pgrb-keep-{full,quick}
                                          (stopped) and reuse them on the next --keep run
  --reps N                                repetitions per measurement (median reported); default: each
                                          benchmark's REPS (3; 2 for the minute-long rehearse and release
                                          runs, which keeps the full run under 15 minutes)

Set-up done here, shared by every benchmark: build the binary, start a throwaway
PostgreSQL cluster (unix socket only, fsync=off) and create the dataset
(bench/dataset.py); a moto S3 server is started when a benchmark asks for it.
Everything is torn down at the end, also on error or Ctrl-C.

A benchmark is a module in bench/ listed in BENCHMARKS with NAME, TITLE and
run(ctx) -> {"markdown": str, "checks": [(what, value, goal, ok, fmt)]}.
Exit code: 0 when every target passes, 1 when one fails or a benchmark errs.
"""

import argparse
import contextlib
import importlib
import os
import shutil
import signal
import sys
import tempfile
import time
import traceback
from pathlib import Path

sys.dont_write_bytecode = True  # no __pycache__ in the source tree
sys.path.insert(0, str(Path(__file__).resolve().parent))

import common  # noqa: E402
import dataset  # noqa: E402

BENCHMARKS = ["snapshot", "restore", "rehearse", "probes", "queries", "release", "daemon"]
# Run only when named with --only (not part of the 15-minute full run).
OPTIONAL = ["downs"]
BENCH_DIR = Path(__file__).resolve().parent
DB = "benchdb"


def parse(argv):
    p = argparse.ArgumentParser(description="Run pgrehearse benchmarks and write bench/RESULTS.md.")
    p.add_argument("--quick", action="store_true", help="small dataset (~50 MiB), to check the scripts")
    p.add_argument("--bin", help="pgrehearse binary to use instead of a release build")
    p.add_argument("--keep", action="store_true", help="keep and reuse the cluster with its dataset")
    p.add_argument("--reps", type=int, help="repetitions per measurement (default: 3; rehearse and release 2)")
    p.add_argument("--only", action="append", choices=BENCHMARKS + OPTIONAL, help="run only this benchmark (repeatable)")
    p.add_argument("--out", help="results file (default bench/RESULTS.md; quick: /tmp/pgrehearse-bench-RESULTS.quick.md)")
    args = p.parse_args(argv)
    if args.reps is not None and args.reps < 1:
        p.error("--reps must be at least 1")
    args.command = " ".join(["python3 bench/run.py", *argv])
    return args


def render(args, binary, machine, sections, started, elapsed):
    checks = [c for s in sections for c in s["checks"]]
    failed = sum(1 for c in checks if not c[3])
    mode = "quick (~50 MiB dataset)" if args.quick else "full"
    out = [
        "# pgrehearse benchmarks",
        "",
        f"Written by `{args.command}` on {started} UTC "
        f"in {elapsed / 60:.1f} min; mode: {mode}. **{len(checks) - failed} of {len(checks)} targets pass.**",
        "",
        f"Binary: `{binary}`" + (" (a debug build: timings are not meaningful)" if "/debug/" in str(binary) else "")
        + f"; commit {common.git_describe()}.",
        "",
        "## Machine",
        "",
        "| | |",
        "|---|---|",
        *(f"| {k} | {v} |" for k, v in machine.items()),
        "",
        "Other work may share this machine: compare the load averages with nproc before trusting a ratio.",
    ]
    for s in sections:
        out += ["", f"## {s['title']}", "", s["markdown"], ""]
        if s["checks"]:
            out += ["| target | measured | goal | result |", "|---|---:|---|---|"]
            out += [f"| {what} | {fmt.format(value)} | {goal} | {'PASS' if ok else '**FAIL**'} |"
                    for what, value, goal, ok, fmt in s["checks"]]
    return "\n".join(out) + "\n", failed


def run_benchmark(name, ctx, reps):
    mod = importlib.import_module(name)
    ctx.args.reps = reps or getattr(mod, "REPS", 3)
    common.log(f"benchmark {name}: {mod.TITLE} ({ctx.args.reps} repetitions)")
    t0 = time.monotonic()
    try:
        section = mod.run(ctx)
    except Exception as e:  # one broken benchmark must not hide the others' results
        traceback.print_exc()
        section = {"markdown": f"The benchmark failed:\n\n```\n{e}\n```",
                   "checks": [(f"{name} ran to the end", 0, "yes", False, "no")]}
    section["title"] = mod.TITLE
    section["minutes"] = (time.monotonic() - t0) / 60
    return section


def main(argv=None):
    args = parse(sys.argv[1:] if argv is None else argv)
    # SIGTERM unwinds like Ctrl-C, so the cluster and moto are cleaned up.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    started = time.strftime("%Y-%m-%d %H:%M", time.gmtime())
    t0 = time.monotonic()
    binary = common.build_binary(args.bin)
    build_min = (time.monotonic() - t0) / 60
    with contextlib.ExitStack() as stack:
        workdir = Path(tempfile.mkdtemp(prefix="pgrb-work-"))
        stack.callback(shutil.rmtree, workdir, ignore_errors=True)
        keep_dir = f"/tmp/pgrb-keep-{'quick' if args.quick else 'full'}" if args.keep else None
        cluster = common.Cluster(keep_dir)
        stack.callback(cluster.stop)
        cluster.start()
        t_ds = time.monotonic()
        info = dataset.ensure(cluster, DB, args.quick)
        dataset_min = (time.monotonic() - t_ds) / 60
        common.log(f"dataset: {info['database_mib']} MiB database ({info['rows']})")
        machine = common.machine_info(cluster)
        ctx = common.Context(args=args, binary=binary, cluster=cluster, db=DB, dataset=info,
                             workdir=workdir, stack=stack)
        reps = args.reps
        sections = [run_benchmark(name, ctx, reps) for name in (args.only or BENCHMARKS)]
        machine["load average (1, 5, 15 min) at end"] = " ".join(f"{x:.2f}" for x in os.getloadavg())
    machine["time: build, dataset, each benchmark"] = f"{build_min:.1f} min build; {dataset_min:.1f} min dataset; " + \
        "; ".join(f"{s['title'].split(':')[0]} {s['minutes']:.1f} min" for s in sections)
    text, failed = render(args, binary, machine, sections, started, time.monotonic() - t0)
    out = Path(args.out or ("/tmp/pgrehearse-bench-RESULTS.quick.md" if args.quick else BENCH_DIR / "RESULTS.md"))
    out.write_text(text)
    print(text)
    common.log(f"results written to {out}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
