"""Release benchmark: the time pgrehearse adds around a release (preflight, the
pre-release snapshot, post-checks and bookkeeping) against the migrations
themselves and against a plain `pg_dump -Fc -Z0 | zstd -1 > FILE`, and the time
a failed release takes to recover by restore against the measured restore time
of the same snapshot.

Set-up (untimed): a second PostgreSQL cluster as the shadow server. The live
database is `app` on the bench cluster, a `STRATEGY FILE_COPY` copy of the
dataset (so the restore swap never touches the dataset other benchmarks use),
re-created before every release. The target has `admin_url` = the superuser on
the live server's `postgres` database, an always-open window
(`cron = "* * * * * *"`, 24 h), the default `on_failure` (restore), a local
store and `restore_jobs = 2`. Two configurations share store, state and target
and differ only in their sqlx migrations directory:

  ok     one transactional migration, ADD COLUMN with a constant default
         (metadata only: the apply takes milliseconds, so pgrehearse's own work
         is what the release time shows)
  fail   1. ADD COLUMN (transactional), 2. `-- no-transaction` CREATE INDEX
         CONCURRENTLY on `products`, 3. CREATE UNIQUE INDEX on customers(email):
         it passes the rehearsal, then a customer row with a duplicate e-mail is
         inserted into live (data changes do not change the plan hash), so on
         live it fails after 1 and 2 committed

`pgrehearse snapshot` of `app`, `verify` of it (the shadow's template), then
`rehearse --no-reverse --snapshot ID` of each plan once (template clones).

Part 1, `--reps` times (median reported), each on a fresh copy of live followed
by one untimed `pg_dump -Fc -Z0 > /dev/null` (warm cache, as in snapshot.py):
  a. `pgrehearse approve --plan HASH`, then `pgrehearse --json apply` (ok plan):
     outcome and `timings` {preflight_ms, snapshot_ms, apply_ms, postcheck_ms,
     total_ms}; overhead = total_ms - apply_ms
  b. `pg_dump -Fc -Z0 | zstd -1 -q > FILE` (bash, pipefail) of the same database:
     the baseline of what a pre-release dump costs
  c. `pgrehearse snapshot` (a manual snapshot), for comparison with (a)'s snapshot

Part 2, `--reps` times, each on a fresh copy of live:
  d. approve the fail plan, insert the duplicate row, `pgrehearse --json apply`:
     outcome `restored`, `recovery_ms`, and from the journal's timestamps the
     restore (restore -> restore_done: fetch + SHA-256, CREATE DATABASE,
     pg_restore, ANALYZE, row-count checks), carry-over and swap phases; then
     live is checked to be in its pre-release state and the failed database to
     be kept with the committed migrations
  e. `pgrehearse --json verify --full <pre_snapshot_id>` on the shadow:
     `restore_duration_ms` (CREATE DATABASE + pg_restore -j2 + ANALYZE) and wall
  f. `pg_restore -j2 --exit-on-error --no-owner --no-acl` of that snapshot's
     archive (`pgrehearse download`) into a fresh database on the live server
  then the kept `app_failed_*` database is dropped (re-runs start clean).

Targets (PASS/FAIL computed from measured medians):
  every (a) applied, every migration applied; every (d) restored, live back to
  its pre-release state, the failed database kept, (e) ok with method restore
  no database of the benchmark left on the live server after its clean-up
  (a) snapshot_ms / (b)                         <= 1.3
  (a) total_ms - apply_ms / (b)                 <= 1.5
  (d) recovery_ms / ((e) restore_duration_ms + (d) swap)   <= 1.5
  full mode only: live database >= 500 MB
Information (no target): overhead / apply_ms, recovery_ms / (f), recovery_ms /
(e) wall.

Run it through the entry point, which sets up the cluster and the dataset:
  python3 bench/run.py --only release
  python3 bench/run.py --quick --only release --bin ~/.cache/pgrehearse-target/debug/pgrehearse
"""

import json
import os
import shlex
import sys
from datetime import datetime
from pathlib import Path

from common import MIB, Cluster, log, measure, median, sh

NAME = "release"
REPS = 2  # each repetition is a release and a failed, restored release on the full dataset
TITLE = "Release: overhead around apply, and recovery by restore"

SNAPSHOT_GOAL = 1.3   # pre-release snapshot_ms / (pg_dump -Fc -Z0 | zstd -1 > FILE), at most
OVERHEAD_GOAL = 1.5   # (total_ms - apply_ms) / the same baseline, at most
RECOVERY_GOAL = 1.5   # recovery_ms / (verify --full restore_duration_ms + swap), at most
MIN_DB_BYTES = 500_000_000  # the issue asks for a database of at least 500 MB (full mode)
JOBS = 2
TARGET = "app"
LIVE = "app"                      # the live database (a copy of the dataset)
BASELINE_DB = "bench_release_pg_restore"
DUP_EMAIL_OF = 1                  # customers.id whose e-mail the duplicate row copies

OK_PLAN = [
    ("20240301000001", "orders_gift_wrap",
     "ALTER TABLE orders ADD COLUMN gift_wrap boolean NOT NULL DEFAULT false;"),
]
FAIL_PLAN = [
    ("20240401000001", "orders_channel",
     "ALTER TABLE orders ADD COLUMN channel text NOT NULL DEFAULT 'web';"),
    ("20240401000002", "products_name_idx",
     "-- no-transaction\nCREATE INDEX CONCURRENTLY products_name_idx ON products (name);"),
    ("20240401000003", "customers_email_key",
     "CREATE UNIQUE INDEX customers_email_key ON customers (email);"),
]
FAIL_COLUMN = ("orders", "channel")
FAIL_INDEX = "products_name_idx"


def write_migrations(directory, migrations):
    directory.mkdir(parents=True)
    for version, name, sql in migrations:
        (directory / f"{version}_{name}.up.sql").write_text(sql + "\n")


def write_config(path, base, live, shadow, migrations):
    path.write_text(
        f'state_dir = "{base / "state"}"\n\n[store]\nkind = "local"\npath = "{base / "store"}"\n\n'
        f'[snapshot]\npg_bindir = "{live.bindir}"\n\n'
        f'[[targets]]\nname = "{TARGET}"\nlive_url = "{live.url(LIVE)}"\n'
        f'admin_url = "{live.url("postgres")}"\nshadow_url = "{shadow.url("postgres")}"\n'
        f'restore_jobs = {JOBS}\n'
        'windows = [{ cron = "* * * * * *", duration = "24h", timezone = "UTC" }]\n'
        f'migrations = {{ kind = "sqlx", dir = "{base / migrations}" }}\n')
    return path


def at(entry):
    return datetime.fromisoformat(entry["at"])


def phase_ms(journal, start, end):
    """Milliseconds between the first `start` step and the first `end` step after it."""
    s = next((e for e in journal if e["step"] == start), None)
    if s is None:
        return None
    e = next((e for e in journal if e["step"] == end and e["seq"] > s["seq"]), None)
    return None if e is None else (at(e) - at(s)).total_seconds() * 1000


class Bench:
    def __init__(self, ctx, shadow):
        self.ctx, self.live, self.shadow = ctx, ctx.cluster, shadow
        base = ctx.workdir / "release"
        base.mkdir()
        self.base = base
        write_migrations(base / "ok", OK_PLAN)
        write_migrations(base / "fail", FAIL_PLAN)
        self.ok_cfg = write_config(base / "pgrehearse-ok.toml", base, self.live, shadow, "ok")
        self.fail_cfg = write_config(base / "pgrehearse-fail.toml", base, self.live, shadow, "fail")
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
        self.zstd_file = base / "baseline.pgdump.zst"
        self.archive = base / "pre-release.pgdump"

    def pgr(self, config, *args):
        return [self.ctx.binary, "-c", config, "--json", *args]

    def json_of(self, config, *args, ok_codes=(0,)):
        r = measure(self.pgr(config, *args), env=self.env, capture=True)
        if r.returncode not in ok_codes:
            raise RuntimeError(f"pgrehearse {' '.join(args)} exited {r.returncode}:\n{r.stdout[-3000:]}\n"
                               f"{r.stderr[-4000:]}")
        r.doc = json.loads(r.stdout)
        return r

    # --- the live side -------------------------------------------------------------------------
    def ours(self):
        """Databases this benchmark made (or pgrehearse made for it) on the live server."""
        out = self.live.psql(
            "SELECT string_agg(datname, ' ') FROM pg_database WHERE datname = ANY "
            f"(ARRAY['{LIVE}', '{BASELINE_DB}']) OR datname LIKE '{LIVE}\\_failed\\_%' "
            f"OR datname LIKE '{LIVE}\\_restoring\\_%' OR datname LIKE '{LIVE}\\_replaced\\_%'")
        return out.split()

    def cleanup(self, keep_live=False):
        for db in self.ours():
            if keep_live and db == LIVE:
                continue
            self.live.psql(f'DROP DATABASE IF EXISTS "{db}" WITH (FORCE)')

    def fresh_live(self):
        """live := a file copy of the dataset; everything else of ours dropped."""
        self.cleanup()
        self.live.psql(f"CREATE DATABASE {LIVE} TEMPLATE {self.ctx.db} STRATEGY FILE_COPY")

    def warm(self):
        r = measure([self.live.bin("pg_dump"), "-Fc", "-Z0", *self.live.conn_args(LIVE)])
        if r.returncode != 0:
            raise RuntimeError(f"pg_dump failed: {r.stderr[-3000:]}")

    def zstd_baseline(self):
        pipe = (f"set -o pipefail; {shlex.join(map(str, [self.live.bin('pg_dump'), '-Fc', '-Z0', *self.live.conn_args(LIVE)]))}"
                f" | zstd -1 -q > {shlex.quote(str(self.zstd_file))}")
        r = measure(["bash", "-c", pipe])
        if r.returncode != 0:
            raise RuntimeError(f"pg_dump | zstd failed: {r.stderr[-3000:]}")
        r.size = self.zstd_file.stat().st_size
        self.zstd_file.unlink()
        return r

    # --- set-up ----------------------------------------------------------------------------------
    def prepare(self):
        self.fresh_live()
        self.db_bytes = int(self.live.psql(f"SELECT pg_database_size('{LIVE}')"))
        snap = self.json_of(self.ok_cfg, "snapshot").doc
        self.base_snapshot = snap["id"]
        drill = self.json_of(self.ok_cfg, "verify", self.base_snapshot).doc
        if not drill.get("ok"):
            raise RuntimeError(f"the restore drill of {self.base_snapshot} failed: {drill}")
        self.plans = {}
        for name, cfg in (("ok", self.ok_cfg), ("fail", self.fail_cfg)):
            rep = self.json_of(cfg, "rehearse", "--no-reverse", "--snapshot", self.base_snapshot).doc
            if not rep.get("ok"):
                raise RuntimeError(f"the rehearsal of the {name} plan did not pass: {json.dumps(rep)[:3000]}")
            self.plans[name] = rep
        log(f"snapshot {self.base_snapshot} ({snap['bytes_stored'] / MIB:.1f} MiB stored) verified; "
            f"plans rehearsed: ok {self.plans['ok']['plan'][:12]} ({self.plans['ok']['mode']}), "
            f"fail {self.plans['fail']['plan'][:12]} ({self.plans['fail']['mode']})")

    def approve(self, cfg, plan):
        return self.json_of(cfg, "approve", "--plan", plan["plan"]).doc

    # --- part 1 ----------------------------------------------------------------------------------
    def release_ok(self):
        self.fresh_live()
        self.warm()
        self.approve(self.ok_cfg, self.plans["ok"])
        a = self.json_of(self.ok_cfg, "apply", ok_codes=(0, 1))
        b = self.zstd_baseline()
        c = self.json_of(self.ok_cfg, "snapshot")
        col = self.live.psql("SELECT count(*) FROM information_schema.columns WHERE table_name = 'orders' "
                             "AND column_name = 'gift_wrap'", LIVE)
        a.good = (a.doc["outcome"] == "applied" and col == "1"
                  and len(a.doc["migrations"]) == len(OK_PLAN)
                  and all(m["status"] == "applied" for m in a.doc["migrations"]))
        return a, b, c

    # --- part 2 ----------------------------------------------------------------------------------
    def release_fail(self):
        self.fresh_live()
        self.approve(self.fail_cfg, self.plans["fail"])
        self.live.psql(
            "INSERT INTO customers SELECT (SELECT max(id) + 1 FROM customers), first_name, last_name, email, phone, "
            f"address, now(), marketing_opt_in, 'duplicate e-mail for the release benchmark' FROM customers "
            f"WHERE id = {DUP_EMAIL_OF}", LIVE)
        d = self.json_of(self.fail_cfg, "apply", ok_codes=(0, 1))
        doc = d.doc
        j = doc.get("journal", [])
        d.restore_ms = phase_ms(j, "restore", "restore_done")
        d.carry_ms = phase_ms(j, "restore_done", "swap")
        d.swap_ms = phase_ms(j, "swap", "swap_done")
        d.state = self.fail_state(doc)
        pre = doc.get("pre_snapshot_id")
        if not pre:
            raise RuntimeError(f"the failed release has no pre_snapshot_id: {json.dumps(doc)[:3000]}")
        e = self.json_of(self.fail_cfg, "verify", "--full", pre, ok_codes=(0, 2))
        if not e.doc.get("ok") or e.doc.get("method") != "restore":
            d.state.append(f"verify --full {pre}: ok {e.doc.get('ok')}, method {e.doc.get('method')}, "
                           f"mismatches {e.doc.get('mismatches')}")
        f = self.pg_restore(pre)
        self.cleanup(keep_live=True)
        return d, e, f

    def fail_state(self, doc):
        """What went right or wrong: outcome, statuses, live pre-release, failed db kept."""
        problems = []
        if doc.get("outcome") != "restored":
            problems.append(f"outcome {doc.get('outcome')} ({doc.get('reason')})")
        status = {m["version"]: m["status"] for m in doc.get("migrations", [])}
        want = {FAIL_PLAN[0][0]: "applied", FAIL_PLAN[1][0]: "applied", FAIL_PLAN[2][0]: "failed"}
        if status != want:
            problems.append(f"migration statuses {status}, expected {want}")
        table, column = FAIL_COLUMN
        live = self.live.psql(
            f"SELECT (SELECT count(*) FROM information_schema.columns WHERE table_name = '{table}' AND "
            f"column_name = '{column}') || ' ' || (to_regclass('{FAIL_INDEX}') IS NULL)::text || ' ' || "
            f"(to_regclass('_sqlx_migrations') IS NULL)::text || ' ' || (SELECT count(*) FROM customers "
            f"WHERE email = (SELECT email FROM customers WHERE id = {DUP_EMAIL_OF}))", LIVE)
        if live != "0 true true 2":
            problems.append(f"live is not in its pre-release state (column, no index, no history, "
                            f"duplicate rows: {live!r}, expected '0 true true 2')")
        kept = doc.get("failed_database")
        if not kept or kept not in self.ours():
            problems.append(f"failed database {kept!r} not kept")
        else:
            got = self.live.psql(
                f"SELECT (SELECT count(*) FROM information_schema.columns WHERE table_name = '{table}' AND "
                f"column_name = '{column}') || ' ' || (to_regclass('{FAIL_INDEX}') IS NOT NULL)::text",
                kept)
            if got != "1 true":
                problems.append(f"failed database {kept} lacks what migrations 1 and 2 committed ({got!r})")
        return problems

    def pg_restore(self, snapshot_id):
        sh(self.pgr(self.fail_cfg, "download", snapshot_id, "-o", self.archive), env=self.env)
        self.archive_bytes = self.archive.stat().st_size
        self.live.psql(f"DROP DATABASE IF EXISTS {BASELINE_DB}")
        self.live.psql(f"CREATE DATABASE {BASELINE_DB}")
        r = measure([self.live.bin("pg_restore"), *self.live.conn_args(BASELINE_DB), f"--jobs={JOBS}",
                     "--exit-on-error", "--no-owner", "--no-acl", self.archive])
        self.archive.unlink()
        self.live.psql(f"DROP DATABASE {BASELINE_DB}")
        if r.returncode != 0:
            raise RuntimeError(f"pg_restore exited {r.returncode}:\n{r.stderr[-4000:]}")
        return r


def run(ctx):
    shadow = Cluster()
    ctx.stack.callback(shadow.stop)
    shadow.start()
    b = Bench(ctx, shadow)
    ctx.stack.callback(lambda: _quietly(b.cleanup))
    b.prepare()

    part1 = []
    for i in range(ctx.args.reps):
        a, bl, c = b.release_ok()
        part1.append((a, bl, c))
        t = a.doc["timings"]
        log(f"release {i + 1}/{ctx.args.reps}: {a.doc['outcome']}, total {t.get('total_ms')} ms "
            f"(preflight {t.get('preflight_ms')}, snapshot {t.get('snapshot_ms')}, apply {t.get('apply_ms')}, "
            f"postcheck {t.get('postcheck_ms')}); pg_dump | zstd {bl.wall_s:.2f} s; "
            f"manual snapshot {c.wall_s:.2f} s")

    part2 = []
    for i in range(ctx.args.reps):
        d, e, f = b.release_fail()
        part2.append((d, e, f))
        log(f"failed release {i + 1}/{ctx.args.reps}: {d.doc['outcome']}, recovery "
            f"{d.doc['timings'].get('recovery_ms')} ms (restore {d.restore_ms:.0f}, swap {d.swap_ms:.0f}); "
            f"verify --full restore_duration_ms {e.doc.get('restore_duration_ms')} (wall {e.wall_s:.2f} s); "
            f"pg_restore -j{JOBS} {f.wall_s:.2f} s" + (f"; PROBLEMS: {d.state}" if d.state else ""))
    b.cleanup()
    b.left = b.ours()
    return report(ctx, b, part1, part2)


def _quietly(fn):
    try:
        fn()
    except Exception as e:  # teardown must not hide the benchmark's own error
        log(f"release benchmark clean-up failed: {e}")


def ms(x):
    return "—" if x is None else f"{x / 1000:.2f}"


def short(x):
    """Milliseconds, for phases that take milliseconds."""
    return "—" if x is None else f"{x:.0f} ms"


def report(ctx, b, part1, part2):
    reps = ctx.args.reps
    tim = [a.doc["timings"] for a, _, _ in part1]
    med = {k: median([t[k] for t in tim if t.get(k) is not None]) for k in
           ("preflight_ms", "snapshot_ms", "apply_ms", "postcheck_ms", "total_ms")}
    overheads = [t["total_ms"] - t["apply_ms"] for t in tim]
    overhead = median(overheads)
    zstd_ms = median([bl.wall_s * 1000 for _, bl, _ in part1])
    manual_ms = median([c.wall_s * 1000 for _, _, c in part1])
    manual_dur = median([c.doc["duration_ms"] for _, _, c in part1])
    process_ms = median([a.wall_s * 1000 for a, _, _ in part1])
    zstd_bytes = median([bl.size for _, bl, _ in part1])
    ds = ctx.dataset
    lines = [
        f"Dataset: live database `{LIVE}` {b.db_bytes / MIB:.0f} MiB ({b.db_bytes / 1e6:.0f} MB; a `FILE_COPY` copy "
        f"of the dataset: tables {ds['table_mib']} MiB; rows: {ds['rows']}). Shadow: a second cluster on this "
        f"machine. Local store, `restore_jobs = {JOBS}`. Base snapshot {b.base_snapshot}; both plans rehearsed "
        "once on its template clone, each release approved just before it runs.",
        "",
        "### Part 1: time added around a release",
        "",
        "Plan: " + "; ".join(f"`{v}_{n}`: `{sql}`" for v, n, sql in OK_PLAN)
        + f" (mode {b.plans['ok']['mode']}).",
        "",
        f"{reps} releases, each on a fresh copy of live after one untimed `pg_dump -Fc -Z0 > /dev/null`; "
        "then, on the same database, the baseline (b) and a manual snapshot (c). Figures from "
        "`pgrehearse --json apply`'s `timings` (ms → s); overhead = `total_ms − apply_ms`: preflight (with the "
        "heavy-job lock and the plan), the pre-release snapshot and its pin, post-checks, journal and record.",
        "",
        "| run | outcome | preflight | snapshot | apply | postcheck | total | overhead | apply process wall "
        "| (b) `pg_dump -Fc -Z0 \\| zstd -1 > FILE` | (c) `pgrehearse snapshot` wall / `duration_ms` |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for i, (a, bl, c) in enumerate(part1):
        t = a.doc["timings"]
        lines.append(f"| {i + 1} | {a.doc['outcome']} | {ms(t.get('preflight_ms'))} s | {ms(t.get('snapshot_ms'))} s "
                     f"| {ms(t.get('apply_ms'))} s | {ms(t.get('postcheck_ms'))} s | {ms(t.get('total_ms'))} s "
                     f"| {ms(overheads[i])} s | {a.wall_s:.2f} s | {bl.wall_s:.2f} s "
                     f"| {c.wall_s:.2f} / {ms(c.doc['duration_ms'])} s |")
    lines.append(f"| **median** | | {ms(med['preflight_ms'])} s | {ms(med['snapshot_ms'])} s | {ms(med['apply_ms'])} s "
                 f"| {ms(med['postcheck_ms'])} s | {ms(med['total_ms'])} s | {ms(overhead)} s "
                 f"| {process_ms / 1000:.2f} s | {zstd_ms / 1000:.2f} s | {manual_ms / 1000:.2f} / {ms(manual_dur)} s |")
    rest = med["total_ms"] - med["preflight_ms"] - med["snapshot_ms"] - med["apply_ms"] - med["postcheck_ms"]
    warnings = sorted({w for a, _, _ in part1 for w in a.doc.get("warnings", [])})
    lines += [
        "",
        f"Ratios (medians): pre-release snapshot / (b) **{med['snapshot_ms'] / zstd_ms:.2f}×**; "
        f"overhead / (b) **{overhead / zstd_ms:.2f}×**; overhead / apply **{overhead / max(med['apply_ms'], 1):.0f}×** "
        f"(the apply is a metadata-only ADD COLUMN, {med['apply_ms']:.0f} ms); pre-release snapshot / manual "
        f"snapshot's `duration_ms` {med['snapshot_ms'] / manual_dur:.2f}×. Not in a phase (lock, pin, "
        f"journal, record; median total − phases): {rest:.0f} ms. (b) wrote {zstd_bytes / MIB:.1f} MiB.",
        "",
        "What this time means for the application: during preflight and the pre-release snapshot it keeps "
        "running (pg_dump takes ACCESS SHARE locks, which only DDL waits for); it is time added to the release "
        "window, and downtime only where the application is stopped for the whole release.",
    ]
    if warnings:
        lines += ["", "Post-check warnings: " + "; ".join(warnings)]

    rec = [d.doc["timings"].get("recovery_ms") for d, _, _ in part2]
    rec_med = median([x for x in rec if x is not None])
    restore_ph = median([d.restore_ms for d, _, _ in part2 if d.restore_ms is not None])
    carry = median([d.carry_ms for d, _, _ in part2 if d.carry_ms is not None])
    swap = median([d.swap_ms for d, _, _ in part2 if d.swap_ms is not None])
    v_rd = median([e.doc["restore_duration_ms"] for _, e, _ in part2 if e.doc.get("restore_duration_ms") is not None])
    v_wall = median([e.wall_s * 1000 for _, e, _ in part2])
    pr = median([f.wall_s * 1000 for _, _, f in part2])
    f_total = median([d.doc["timings"]["total_ms"] for d, _, _ in part2])
    f_snap = median([d.doc["timings"]["snapshot_ms"] for d, _, _ in part2])
    lines += [
        "",
        "### Part 2: recovery of a failed release by restore",
        "",
        "Plan (mode " + b.plans["fail"]["mode"] + "): "
        + "; ".join(f"`{v}_{n}`: `{sql.replace(chr(10), ' ')}`" for v, n, sql in FAIL_PLAN)
        + f". After its rehearsal passed, a customer row copying the e-mail of customer {DUP_EMAIL_OF} is inserted "
        "into live, so migration 3 fails there after 1 and 2 committed; `on_failure` is the default (restore).",
        "",
        f"{reps} failed releases, each on a fresh copy of live. Recovery phases from the release journal's "
        "timestamps: restore = `restore` → `restore_done` (fetch and SHA-256 of the stored object, decompress to "
        "staging, CREATE DATABASE, pg_restore, ANALYZE, row-count checks), carry-over = → `swap` (owner, settings, "
        "grants), swap = `swap` → `swap_done`. (e) is `pgrehearse --json verify --full <pre_snapshot_id>` on the "
        f"shadow: its `restore_duration_ms` (CREATE DATABASE, pg_restore -j{JOBS}, ANALYZE; not the fetch) and "
        f"whole wall time; (f) is `pg_restore -j{JOBS} --exit-on-error --no-owner --no-acl` of that snapshot's "
        f"archive ({b.archive_bytes / MIB:.1f} MiB, `pgrehearse download`) into a fresh database on the live server.",
        "",
        "| run | outcome | `recovery_ms` | restore | carry-over | swap | release total | (e) `restore_duration_ms` "
        "| (e) wall | (f) pg_restore | problems |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for i, (d, e, f) in enumerate(part2):
        lines.append(f"| {i + 1} | {d.doc['outcome']} | {ms(rec[i])} s | {ms(d.restore_ms)} s | {short(d.carry_ms)} "
                     f"| {short(d.swap_ms)} | {ms(d.doc['timings'].get('total_ms'))} s "
                     f"| {ms(e.doc.get('restore_duration_ms'))} s | {e.wall_s:.2f} s | {f.wall_s:.2f} s "
                     f"| {'; '.join(d.state) or '—'} |")
    lines.append(f"| **median** | | {ms(rec_med)} s | {ms(restore_ph)} s | {short(carry)} | {short(swap)} "
                 f"| {ms(f_total)} s | {ms(v_rd)} s | {v_wall / 1000:.2f} s | {pr / 1000:.2f} s | |")
    goal_base = v_rd + swap
    lines += [
        "",
        f"Ratios (medians): `recovery_ms` / ((e) `restore_duration_ms` + swap) **{rec_med / goal_base:.2f}×**; "
        f"`recovery_ms` / (e) wall {rec_med / v_wall:.2f}×; `recovery_ms` / (f) pg_restore "
        f"**{rec_med / pr:.2f}×**. From the start of the failed release to live back in its pre-release state: "
        f"{f_total / 1000:.2f} s (of which the pre-release snapshot {f_snap / 1000:.2f} s).",
    ]
    lines += ["", "Databases of this benchmark left on the live server after its clean-up: "
              + (", ".join(b.left) if b.left else "none") + f" (it drops `{LIVE}`, `{LIVE}_failed_*`, "
              f"`{LIVE}_restoring_*` and `{BASELINE_DB}`, also before it starts)."]
    if part2 and part2[-1][0].doc.get("reason"):
        lines += ["", f"Reason recorded (last run): {part2[-1][0].doc['reason'][:600]}"]

    applied = sum(1 for a, _, _ in part1 if a.good)
    restored = sum(1 for d, _, _ in part2 if not d.state)
    checks = [
        ("releases applied, every migration applied", applied, f"{reps} of {reps}", applied == reps, "{}"),
        ("pre-release `snapshot_ms` / `pg_dump -Fc -Z0 \\| zstd -1 > FILE`", med["snapshot_ms"] / zstd_ms,
         f"≤ {SNAPSHOT_GOAL}", med["snapshot_ms"] / zstd_ms <= SNAPSHOT_GOAL, "{:.2f}"),
        ("overhead (`total_ms − apply_ms`) / `pg_dump -Fc -Z0 \\| zstd -1 > FILE`", overhead / zstd_ms,
         f"≤ {OVERHEAD_GOAL}", overhead / zstd_ms <= OVERHEAD_GOAL, "{:.2f}"),
        ("failed releases restored: live pre-release, failed database kept", restored, f"{reps} of {reps}",
         restored == reps, "{}"),
        ("`recovery_ms` / (verify --full `restore_duration_ms` + swap)", rec_med / goal_base,
         f"≤ {RECOVERY_GOAL}", rec_med / goal_base <= RECOVERY_GOAL, "{:.2f}"),
    ]
    checks.append(("databases of the benchmark left on the live server", len(b.left), "0", not b.left, "{}"))
    if not ctx.args.quick:
        checks.append(("live database size", b.db_bytes / 1e6, f"≥ {MIN_DB_BYTES / 1e6:.0f} MB",
                       b.db_bytes >= MIN_DB_BYTES, "{:.0f} MB"))
    return {"markdown": "\n".join(lines), "checks": checks}


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import run as entry
    sys.exit(entry.main(["--only", NAME, *sys.argv[1:]]))
