#!/usr/bin/env bash
# The project's test command: installs what the integration tests need on a
# fresh Debian 12 machine (as root), then runs the whole suite.
#
# Idempotent and quick when everything is already there: each step checks
# before it installs.
set -euo pipefail

cd "$(dirname "$0")/.."

apt_updated=0
apt_install() {
    if [ "$apt_updated" = 0 ]; then
        apt-get update -qq
        apt_updated=1
    fi
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@"
}

# PostgreSQL 15: server binaries for throwaway clusters, client tools for
# reading results back (psql, pg_dump, pg_restore).
if ! command -v pg_config >/dev/null 2>&1 || [ ! -x "$(pg_config --bindir)/initdb" ]; then
    apt_install postgresql-15 postgresql-client-15
fi
# initdb refuses to run as root: the tests drop to this user.
if ! id postgres >/dev/null 2>&1; then
    echo "the postgres user is missing although PostgreSQL is installed" >&2
    exit 1
fi

# zstd decompresses stored dumps; age-keygen makes test keys.
command -v zstd >/dev/null 2>&1 || apt_install zstd
command -v age-keygen >/dev/null 2>&1 || apt_install age
# sqlite3 edits the state store as an older pgrehearse wrote it (report_accuracy).
command -v sqlite3 >/dev/null 2>&1 || apt_install sqlite3
# systemd-analyze (verify, security), systemd-sysusers and systemd-tmpfiles
# check the shipped unit and its sysusers/tmpfiles files; systemd need not
# be PID 1 for that.
if ! command -v systemd-analyze >/dev/null 2>&1 || ! command -v systemd-sysusers >/dev/null 2>&1 \
    || ! command -v systemd-tmpfiles >/dev/null 2>&1; then
    apt_install systemd
fi
# The unit's ExecReload= runs /bin/kill (procps; absent from minimal images).
[ -x /bin/kill ] || apt_install procps
# promtool (Debian's prometheus package) parses and lints /metrics in the
# API test. Only the CLI is used: a policy-rc.d keeps the package's server
# from starting (Debian container images ship one; else one is made for
# the install and removed after).
if ! command -v promtool >/dev/null 2>&1; then
    if [ -e /usr/sbin/policy-rc.d ]; then
        apt_install --no-install-recommends prometheus
    else
        printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d
        chmod 755 /usr/sbin/policy-rc.d
        apt_install --no-install-recommends prometheus
        rm -f /usr/sbin/policy-rc.d
    fi
fi
# Debian's Chromium for the status page's browser test (playwright-core
# drives it; Playwright's own browser downloads are not used).
[ -x /usr/bin/chromium ] || apt_install chromium
# Debian's python3 needs python3-venv for `python3 -m venv`.
if ! python3 -c 'import venv, ensurepip' >/dev/null 2>&1; then
    apt_install python3 python3-venv
fi

# A virtualenv with moto (>= 5.2.5: 5.2.1 breaks the Rust SDK's
# CompleteMultipartUpload), aiosmtpd and the AWS CLI (the independent client
# that reads objects back).
export PGREHEARSE_VENV="${PGREHEARSE_VENV:-$HOME/.cache/pgrehearse-venv}"
if [ ! -x "$PGREHEARSE_VENV/bin/python" ]; then
    python3 -m venv "$PGREHEARSE_VENV"
fi
venv_ok() {
    "$PGREHEARSE_VENV/bin/python" - <<'PY'
import importlib.metadata as m, sys
def v(name):
    try:
        return tuple(int(x) for x in m.version(name).split(".")[:3] if x.isdigit())
    except m.PackageNotFoundError:
        return None
ok = (v("moto") or (0,)) >= (5, 2, 5) and v("aiosmtpd") and v("awscli") and v("flask")
sys.exit(0 if ok else 1)
PY
}
if ! venv_ok; then
    "$PGREHEARSE_VENV/bin/pip" install -q 'moto[server]>=5.2.5' aiosmtpd awscli
fi

# The Payload CMS fixture project the payload rehearsal tests drive
# (npm ci from its lockfile; skipped when up to date).
bash "$(dirname "$0")/payload-fixture.sh"

# The browser test's driver, playwright-core, pinned by the fixture's
# lockfile (npm ci; skipped when node_modules matches it).
browser_fixture="tests/fixtures/browser"
browser_want="$(sha256sum "$browser_fixture/package-lock.json" | cut -d' ' -f1)"
if [ "$(cat "$browser_fixture/node_modules/.lock-hash" 2>/dev/null)" != "$browser_want" ] \
    || [ ! -f "$browser_fixture/node_modules/playwright-core/package.json" ]; then
    (cd "$browser_fixture" && npm ci --no-audit --no-fund --loglevel=error)
    printf '%s\n' "$browser_want" >"$browser_fixture/node_modules/.lock-hash"
fi

export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/pgrehearse-target}"
# The fault-injection tests append one line per checked fault here; the
# report rendered from it after the run lists every fault and its outcome.
artifacts="$CARGO_TARGET_DIR/test-artifacts"
mkdir -p "$artifacts"
rm -f "$artifacts/faults.jsonl"
# Each test binary runs through scripts/test-runner.sh, which asks libtest
# for per-test timings; the slowest are listed at the end with the wall time.
export CARGO_TARGET_X86_64_UNKNOWN_LINUX_GNU_RUNNER="$PWD/scripts/test-runner.sh"
log="$artifacts/test-output.log"
started=$(date +%s)
status=0
set +o pipefail
# crash-hooks: the test-only fault injection the crash tests use.
cargo test --locked --features crash-hooks "$@" 2>&1 | tee "$log"
status=${PIPESTATUS[0]}
set -o pipefail
python3 scripts/fault-report.py "$artifacts/faults.jsonl" "$artifacts/fault-report.md" || status=1
python3 scripts/slowest-tests.py "$log" 15 || true
echo "test command wall time: $(( $(date +%s) - started )) s (exit $status)"
exit "$status"
