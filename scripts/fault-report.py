#!/usr/bin/env python3
"""Renders the fault-injection report.

  python3 scripts/fault-report.py FAULTS.jsonl REPORT.md

FAULTS.jsonl has one line per fault a test injected and checked (written by
tests/it/harness/faults.rs). The report is a Markdown table, operation by
operation, printed and written to REPORT.md. With no lines at all (the fault
tests were filtered out of this run) it says so and exits 0.
"""

import json
import sys
from collections import Counter
from pathlib import Path


def main(src, dst):
    path = Path(src)
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.exists() else []
    if not rows:
        text = "# Fault-injection report\n\nNo fault test ran in this run.\n"
    else:
        rows.sort(key=lambda r: (r["operation"], r["test"], r["fault"]))
        per_op = Counter(r["operation"] for r in rows)
        out = [
            "# Fault-injection report",
            "",
            f"{len(rows)} faults injected and checked: "
            + ", ".join(f"{op} {n}" for op, n in sorted(per_op.items())) + ".",
            "Each line is written only after its test verified the outcome.",
            "",
            "| operation | fault | outcome (verified) | test |",
            "|---|---|---|---|",
        ]
        esc = lambda s: str(s).replace("|", "\\|").replace("\n", " ")
        out += [f"| {esc(r['operation'])} | {esc(r['fault'])} | {esc(r['outcome'])} | `{esc(r['test'])}` |" for r in rows]
        text = "\n".join(out) + "\n"
    Path(dst).write_text(text)
    print(text)
    print(f"fault report written to {dst}")


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    main(sys.argv[1], sys.argv[2])
