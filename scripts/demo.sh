#!/usr/bin/env bash
# The first command on a fresh machine (Debian 12, as root): installs
# PostgreSQL if it is missing, builds pgrehearse, and runs `pgrehearse demo`,
# which starts two throwaway clusters under ./pgrehearse-demo, loads a
# sample shop database (128 MiB) and runs the whole cycle: snapshot, restore
# drill, rehearsal, approval, release, and a failing release that is
# restored. Arguments go to `pgrehearse demo` (e.g. --dir /srv/demo).
# Re-runnable: each run starts over in a clean sandbox.
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/pgrehearse-target}"

if ! command -v cargo >/dev/null 2>&1; then
    echo "error: cargo is needed to build pgrehearse (Rust >= 1.95); install it from https://rustup.rs" >&2
    exit 69
fi

# The server programs the demo runs (the demo looks in the same places).
have_postgres() {
    local bindir
    bindir="$(pg_config --bindir 2>/dev/null || true)"
    [ -n "$bindir" ] && [ -x "$bindir/initdb" ] && [ -x "$bindir/pg_ctl" ] && return 0
    compgen -G '/usr/lib/postgresql/*/bin/initdb' >/dev/null
}
if ! have_postgres; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
        echo "==> Installing PostgreSQL 15 (apt-get install postgresql-15)"
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql-15 postgresql-client-15 >/dev/null
    else
        echo "error: PostgreSQL is not installed. On Debian or Ubuntu, as root: apt-get install postgresql-15;" >&2
        echo "       elsewhere your distribution's PostgreSQL server package, with initdb and pg_ctl on PATH." >&2
        exit 69
    fi
fi

# A debug build: its dependencies are optimised (Cargo.toml), so the demo
# runs at nearly release speed, and `scripts/test.sh` (cargo test) reuses
# what it compiled.
echo "==> Building pgrehearse (cargo build; a first build takes about 11 minutes on 2 cores)"
cargo build --locked --quiet

echo "==> pgrehearse demo $*"
exec "$CARGO_TARGET_DIR/debug/pgrehearse" demo "$@"
