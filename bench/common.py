"""Shared machinery for pgrehearse benchmarks: a throwaway PostgreSQL cluster,
a moto S3 server, building the binary, and timing a child process (wall time
and peak RSS).

Everything a benchmark starts is registered on an ExitStack by `bench/run.py`
and torn down at the end, also on error or Ctrl-C.
"""

import os
import random
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
VENV = Path(os.environ.get("PGREHEARSE_VENV", Path.home() / ".cache/pgrehearse-venv"))
MIB = 1 << 20


def log(msg):
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def sh(cmd, **kw):
    """Runs a command, raises with its output on failure, returns stdout."""
    kw.setdefault("text", True)
    p = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, **kw)
    if p.returncode != 0:
        raise RuntimeError(f"{' '.join(map(str, cmd))} exited {p.returncode}:\n{p.stdout}\n{p.stderr}")
    return p.stdout


def as_postgres(cmd):
    """initdb and pg_ctl refuse root: drop to the postgres user when root."""
    return ["runuser", "-u", "postgres", "--", *map(str, cmd)] if os.geteuid() == 0 else list(map(str, cmd))


@dataclass
class Run:
    """One measured child process."""
    wall_s: float
    rss_tree_kib: int   # max RSS of the process and the children it reaped (e.g. pg_dump), via GNU time
    rss_own_kib: int    # VmHWM of the process itself, sampled from /proc while it ran
    returncode: int
    stdout: str = ""
    stderr: str = ""


GNU_TIME = "/usr/bin/time"


def _child_of(pid):
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as f:
            kids = f.read().split()
        return int(kids[0]) if kids else None
    except OSError:
        return None


def measure(cmd, env=None, stdout=None, capture=False):
    """Runs `cmd`, returning its wall time and peak RSS. `stdout` may be a path
    or None (/dev/null); with `capture` stdout is returned as text.

    Peak RSS is not taken from this process's wait4/RUSAGE_CHILDREN: Python
    spawns with vfork, and Linux then carries the spawner's own RSS (~25 MiB)
    into the child's ru_maxrss. GNU time, a small process, forks the command
    afresh and reports its true maximum; /proc VmHWM gives the process alone.
    """
    cmd = [str(c) for c in cmd]
    with tempfile.TemporaryFile("w+") as err, tempfile.TemporaryFile("w+") as out, \
            tempfile.NamedTemporaryFile("r") as rss:
        wrapped = os.access(GNU_TIME, os.X_OK)
        if wrapped:
            cmd = [GNU_TIME, "-f", "%M", "-o", rss.name, *cmd]
        target = out if capture else (subprocess.DEVNULL if stdout is None else open(stdout, "wb"))
        t0 = time.monotonic()
        # Its own process group: on Ctrl-C or SIGTERM the whole tree is killed.
        p = subprocess.Popen(cmd, stdout=target, stderr=err, env=env, start_new_session=True)
        hwm, stop = [0], threading.Event()

        def sample():
            pid = None
            while not stop.is_set():
                pid = pid or (_child_of(p.pid) if wrapped else p.pid)
                try:
                    with open(f"/proc/{pid}/status") as f:
                        for line in f:
                            if line.startswith("VmHWM:"):
                                hwm[0] = max(hwm[0], int(line.split()[1]))
                except (OSError, TypeError):
                    if pid:
                        return
                stop.wait(0.02)

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        try:
            _, status, usage = os.wait4(p.pid, 0)
        except BaseException:
            os.killpg(p.pid, signal.SIGKILL)
            p.wait()
            raise
        wall = time.monotonic() - t0
        p.returncode = os.waitstatus_to_exitcode(status)
        stop.set()
        sampler.join()
        if target not in (out, subprocess.DEVNULL):
            target.close()
        tree = usage.ru_maxrss
        if wrapped:
            lines = rss.read().split()
            tree = int(lines[-1]) if lines and lines[-1].isdigit() else 0
        out.seek(0)
        err.seek(0)
        return Run(wall, tree, hwm[0], p.returncode, out.read(), err.read())


def median(xs):
    return statistics.median(xs) if xs else float("nan")


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def build_binary(bin_arg):
    """The pgrehearse binary: `--bin PATH` as given, else a release build."""
    if bin_arg:
        path = Path(bin_arg).resolve()
        if not os.access(path, os.X_OK):
            raise SystemExit(f"--bin {path}: not an executable file")
        return path
    target_dir = Path(os.environ.get("CARGO_TARGET_DIR") or Path.home() / ".cache/pgrehearse-target")
    log(f"cargo build --release (CARGO_TARGET_DIR={target_dir}); the first build takes ~12 min on 2 cores")
    env = dict(os.environ, CARGO_TARGET_DIR=str(target_dir))
    subprocess.run(["cargo", "build", "--release", "--locked"], cwd=REPO, env=env, check=True)
    return target_dir / "release/pgrehearse"


class Cluster:
    """A throwaway PostgreSQL cluster, unix socket only, fsync=off.

    With `keep_dir` the cluster lives in that fixed directory and survives the
    run (stopped, not deleted) so that the next `--keep` run reuses its data.
    """

    def __init__(self, keep_dir=None):
        self.bindir = Path(sh(["pg_config", "--bindir"]).strip())
        self.kept = keep_dir is not None
        if keep_dir:
            self.dir = Path(keep_dir)
            self.dir.mkdir(exist_ok=True)
        else:
            self.dir = Path(tempfile.mkdtemp(prefix="pgrb-", dir="/tmp"))
        if os.geteuid() == 0:
            shutil.chown(self.dir, "postgres", "postgres")
        self.data = self.dir / "data"
        self.port = None
        self.running = False

    def bin(self, name):
        return self.bindir / name

    def start(self):
        """initdb if needed, then start on a random port (the socket is in the private directory)."""
        if not (self.data / "PG_VERSION").exists():
            sh(as_postgres([self.bin("initdb"), "-D", self.data, "-U", "postgres", "-A", "trust",
                            "-E", "UTF8", "--locale=C", "--no-sync"]))
        self.port = random.randint(20000, 60000)
        opts = (f"-c listen_addresses='' -c unix_socket_directories='{self.dir}' -c port={self.port} "
                "-c fsync=off -c synchronous_commit=off -c full_page_writes=off -c max_wal_size=4GB")
        sh(as_postgres([self.bin("pg_ctl"), "-D", self.data, "-l", self.dir / "server.log", "-w",
                        "-t", "120", "-o", opts, "start"]))
        self.running = True
        log(f"PostgreSQL running in {self.dir} (port {self.port})")

    def stop(self):
        if self.running:
            subprocess.run(as_postgres([self.bin("pg_ctl"), "-D", self.data, "-m", "fast", "-w", "stop"]),
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            self.running = False
        if not self.kept:
            shutil.rmtree(self.dir, ignore_errors=True)

    def conn_args(self, db="postgres"):
        return ["-h", str(self.dir), "-p", str(self.port), "-U", "postgres", "-d", db]

    def url(self, db):
        return f"postgres://postgres@localhost/{db}?host={self.dir}&port={self.port}"

    def psql(self, sql, db="postgres"):
        """Runs SQL (stops at the first error), returns unaligned tuples-only output."""
        return sh([self.bin("psql"), *self.conn_args(db), "-X", "-q", "-A", "-t",
                   "-v", "ON_ERROR_STOP=1", "-c", sql]).strip()


def ensure_venv():
    """The virtualenv with moto_server (>= 5.2.5) and the AWS CLI."""
    if (VENV / "bin/moto_server").exists() and (VENV / "bin/aws").exists():
        return
    log(f"creating {VENV} with moto[server]>=5.2.5 and awscli")
    if not (VENV / "bin/python").exists():
        subprocess.run([sys.executable, "-m", "venv", str(VENV)], check=True)
    subprocess.run([str(VENV / "bin/pip"), "install", "-q", "moto[server]>=5.2.5", "awscli"], check=True)


class Moto:
    """A moto S3 server on a free loopback port, with a bucket."""

    KEY = "test"
    REGION = "us-east-1"

    def __init__(self, workdir, bucket="bench"):
        ensure_venv()
        self.bucket = bucket
        self.log_path = Path(workdir) / "moto.log"
        self.proc = None
        for _ in range(5):
            self.port = free_port()
            self.endpoint = f"http://127.0.0.1:{self.port}"
            logf = open(self.log_path, "ab")
            self.proc = subprocess.Popen([str(VENV / "bin/moto_server"), "-H", "127.0.0.1", "-p", str(self.port)],
                                         stdin=subprocess.DEVNULL, stdout=logf, stderr=logf)
            logf.close()
            if self._wait_up():
                break
            self.stop()
        else:
            raise RuntimeError(f"moto_server did not start; see {self.log_path}")
        self.aws("s3api", "create-bucket", "--bucket", bucket)
        log(f"moto S3 at {self.endpoint}, bucket {bucket}")

    def _wait_up(self):
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                return False
            try:
                urllib.request.urlopen(self.endpoint, timeout=1)
                return True
            except urllib.error.HTTPError:
                return True
            except OSError:
                time.sleep(0.1)
        return False

    def env(self, base=None):
        env = dict(base or os.environ)
        for k in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL"):
            env.pop(k, None)
        env.update(AWS_ACCESS_KEY_ID=self.KEY, AWS_SECRET_ACCESS_KEY=self.KEY, AWS_REGION=self.REGION,
                   AWS_DEFAULT_REGION=self.REGION, AWS_CONFIG_FILE="/nonexistent",
                   AWS_SHARED_CREDENTIALS_FILE="/nonexistent", AWS_EC2_METADATA_DISABLED="true")
        return env

    def aws(self, *args):
        return sh([str(VENV / "bin/aws"), "--endpoint-url", self.endpoint, "--output", "json", *args], env=self.env())

    def stop(self):
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def machine_info(cluster):
    cpu = "unknown"
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    with open("/proc/meminfo") as f:
        mem_kib = int(next(line for line in f if line.startswith("MemTotal")).split()[1])
    return {
        "nproc": len(os.sched_getaffinity(0)),
        "memory": f"{mem_kib / (1 << 20):.1f} GiB",
        "cpu": cpu,
        "postgresql": cluster.psql("SELECT version()"),
        "pg_dump": sh([cluster.bin("pg_dump"), "--version"]).strip(),
        "load average (1, 5, 15 min) at start": " ".join(f"{x:.2f}" for x in os.getloadavg()),
    }


def git_describe():
    try:
        head = sh(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"]).strip()
        dirty = sh(["git", "-C", str(REPO), "status", "--porcelain", "--untracked-files=no"]).strip()
        return head + (" (with uncommitted changes)" if dirty else "")
    except (RuntimeError, OSError):
        return "unknown"


@dataclass
class Context:
    """What every benchmark receives from `bench/run.py`."""
    args: object
    binary: Path
    cluster: Cluster
    db: str
    dataset: dict
    workdir: Path
    stack: object           # contextlib.ExitStack for teardown
    _moto: Moto = field(default=None, repr=False)

    def moto(self):
        """The S3 server, started on first use."""
        if self._moto is None:
            self._moto = Moto(self.workdir)
            self.stack.callback(self._moto.stop)
        return self._moto
