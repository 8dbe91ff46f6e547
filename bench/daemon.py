"""Idle daemon benchmark: what `pgrehearse daemon` costs while it waits.

Set-up: two targets on the benchmark cluster (the dataset's database, and a
second database), each with a sqlx migration source, a nightly snapshot and
weekly drill schedule and a weekly window — nothing due during the run — the
HTTP API listening, the default poll interval (30 s) and one at 1 s (the
busiest a test configuration gets).

Measured after 5 s of warm-up, over 30 s (20 s with --quick), by sampling
/proc/<pid>: resident memory (VmRSS, and the peak VmHWM) and CPU time
(utime + stime of every thread) → CPU % of one core. One GET /metrics is
made first so that the API's code paths are resident too.

Targets: RSS <= 20 MiB; CPU <= 0.5 % of a core (≈ 0).
"""

import os
import subprocess
import time
import urllib.request
from pathlib import Path

from common import MIB, free_port, log

NAME = "daemon"
TITLE = "Idle daemon: memory and CPU with two targets"


def config(ctx, workdir, port, poll):
    mig = workdir / "migrations"
    mig.mkdir(exist_ok=True)
    targets = []
    for name, db in (("app", ctx.db), ("second", "daemon_second")):
        targets.append(f"""
[[targets]]
name = "{name}"
live_url = "{ctx.cluster.url(db)}"
migrations = {{ kind = "sqlx", dir = "{mig}" }}
snapshot_schedule = "0 0 3 * * *"
verify_schedule = "0 0 4 * * Sun"
windows = [{{ cron = "0 0 2 * * Sun", duration = "2h", timezone = "Europe/Berlin" }}]
""")
    text = f"""state_dir = "{workdir / 'state'}"

[store]
kind = "local"
path = "{workdir / 'store'}"

[api]
listen = "127.0.0.1:{port}"

[daemon]
poll_interval = "{poll}"
""" + "".join(targets)
    path = workdir / "pgrehearse.toml"
    path.write_text(text)
    return path


def cpu_ticks(pid):
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])  # utime, stime (all threads)


def mem_kib(pid):
    out = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(("VmRSS:", "VmHWM:")):
            k, v = line.split(":")
            out[k] = int(v.split()[0])
    return out


def measure_idle(ctx, poll, seconds):
    workdir = ctx.workdir / f"daemon-{poll}"
    workdir.mkdir(exist_ok=True)
    port = free_port()
    cfg = config(ctx, workdir, port, poll)
    env = dict(os.environ, RUST_LOG="warn")
    proc = subprocess.Popen([str(ctx.binary), "-c", str(cfg), "daemon"], env=env,
                            stdout=subprocess.DEVNULL, stderr=open(workdir / "daemon.log", "w"))
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2).read()
                break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"the daemon did not start: {(workdir / 'daemon.log').read_text()[-2000:]}")
                time.sleep(0.1)
        time.sleep(5)
        hz = os.sysconf("SC_CLK_TCK")
        t0, c0 = time.monotonic(), cpu_ticks(proc.pid)
        rss = []
        while time.monotonic() - t0 < seconds:
            rss.append(mem_kib(proc.pid)["VmRSS"])
            time.sleep(1)
        elapsed = time.monotonic() - t0
        cpu = (cpu_ticks(proc.pid) - c0) / hz / elapsed * 100
        hwm = mem_kib(proc.pid)["VmHWM"]
        return {"poll": poll, "rss_mib": max(rss) / 1024, "hwm_mib": hwm / 1024, "cpu_pct": cpu, "seconds": elapsed}
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()


def run(ctx):
    ctx.cluster.psql("DROP DATABASE IF EXISTS daemon_second")
    ctx.cluster.psql("CREATE DATABASE daemon_second")
    seconds = 20 if ctx.args.quick else 30
    try:
        results = [measure_idle(ctx, poll, seconds) for poll in ("30s", "1s")]
    finally:
        ctx.cluster.psql("DROP DATABASE IF EXISTS daemon_second")
    for r in results:
        log(f"idle daemon, poll {r['poll']}: RSS {r['rss_mib']:.1f} MiB (peak {r['hwm_mib']:.1f}), CPU {r['cpu_pct']:.2f} %")
    rows = [f"| {r['poll']} | {r['rss_mib']:.1f} MiB | {r['hwm_mib']:.1f} MiB | {r['cpu_pct']:.2f} % | {r['seconds']:.0f} s |"
            for r in results]
    md = "\n".join([
        "Two targets, nothing due; API listening. Sampled from /proc every second after a 5 s warm-up.",
        "",
        "| poll_interval | max VmRSS | VmHWM (peak since start) | CPU (% of one core) | sampled |",
        "|---|---:|---:|---:|---:|",
        *rows,
    ])
    checks = []
    for r in results:
        checks.append((f"idle RSS, poll {r['poll']}", r["rss_mib"], "<= 20 MiB", r["rss_mib"] <= 20, "{:.1f} MiB"))
        checks.append((f"idle CPU, poll {r['poll']}", r["cpu_pct"], "<= 0.5 % of a core", r["cpu_pct"] <= 0.5, "{:.2f} %"))
    return {"markdown": md, "checks": checks}
