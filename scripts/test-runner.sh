#!/usr/bin/env bash
# Cargo's runner for the test binaries (set by scripts/test.sh): runs each
# binary with libtest's per-test timings (`--report-time`, an unstable
# libtest option that RUSTC_BOOTSTRAP unlocks at run time only; nothing is
# compiled differently) so that the test command can list the slowest tests.
set -euo pipefail
bin="$1"
shift
case "$(basename "$bin")" in
    # Only test harness binaries take libtest's options.
    pgrehearse-*|it-*) RUSTC_BOOTSTRAP=1 exec "$bin" "$@" -Z unstable-options --report-time ;;
    *) exec "$bin" "$@" ;;
esac
