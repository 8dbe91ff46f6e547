#!/usr/bin/env bash
# Installs the Payload CMS test fixture's packages (tests/fixtures/payload):
# `npm ci` from the committed lockfile, skipped when node_modules already
# matches it (a hash of package-lock.json, plus the platform, kept in
# node_modules/.lock-hash after a successful install).
#
# Needs only node (>= 20.9) and npm; idempotent; prints what it did.
# About 15 s and 180 MB on a warm npm cache, longer on a cold one.
set -euo pipefail

dir="$(cd "$(dirname "$0")/../tests/fixtures/payload" && pwd)"

if ! command -v node >/dev/null 2>&1 || ! command -v npm >/dev/null 2>&1; then
    echo "payload fixture: node and npm are needed (Node.js >= 20.9); install them first" >&2
    exit 1
fi
if ! node -e 'const [a,b]=process.versions.node.split(".").map(Number); process.exit(a>20||(a===20&&b>=9)?0:1)'; then
    echo "payload fixture: Node.js $(node --version) is too old; Payload 3 needs >= 20.9" >&2
    exit 1
fi

want="$(sha256sum "$dir/package-lock.json" | cut -d' ' -f1) $(node -p 'process.platform + "-" + process.arch')"
stamp="$dir/node_modules/.lock-hash"
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ] && [ -f "$dir/node_modules/payload/bin.js" ]; then
    echo "payload fixture: node_modules is up to date with package-lock.json ($dir)"
    exit 0
fi

echo "payload fixture: npm ci in $dir"
start=$(date +%s)
(cd "$dir" && npm ci --no-audit --no-fund --loglevel=error)
printf '%s\n' "$want" >"$stamp"
echo "payload fixture: installed in $(( $(date +%s) - start ))s ($(du -sh "$dir/node_modules" | cut -f1))"
