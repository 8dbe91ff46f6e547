#!/usr/bin/env python3
"""Lists the slowest tests of a `cargo test` log whose binaries ran with
libtest's `--report-time` (scripts/test-runner.sh): `test NAME ... ok <1.234s>`."""
import re
import sys

log, count = sys.argv[1], int(sys.argv[2]) if len(sys.argv) > 2 else 15
timed = []
with open(log, errors="replace") as f:
    for line in f:
        m = re.match(r"^test (\S+) \.\.\. (\w+) <([0-9.]+)s>", line)
        if m:
            timed.append((float(m.group(3)), m.group(1), m.group(2)))
timed.sort(reverse=True)
print(f"slowest {min(count, len(timed))} of {len(timed)} timed tests:")
for secs, name, result in timed[:count]:
    print(f"  {secs:8.1f} s  {result:6}  {name}")
