"""Kill points and corrupt files, many seeds: the reliability table of RESULTS.

Runs tests/test_faults.py with ``TQSIM_FAULT_REPEATS`` seeded kill points per command and signal (each
test asserts that nothing finished is lost and no half-written file exists under a real name), and
prints how many kill points each command took and how many lost data.

    python benchmarks/faults.py [--repeats 5]
"""

from __future__ import annotations

import argparse
import collections
import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()
    env = dict(os.environ, TQSIM_FAULT_REPEATS=str(args.repeats))
    p = subprocess.run([sys.executable, "-m", "pytest", "-q", "-rA", "-p", "no:cacheprovider", "tests/test_faults.py"],
                       cwd=ROOT, env=env, capture_output=True, text=True)
    rows: dict = collections.defaultdict(lambda: {"passed": 0, "failed": 0})
    for line in p.stdout.splitlines():
        m = re.match(r"^(PASSED|FAILED|ERROR) tests/test_faults.py::(\w+)(\[.*\])?", line)
        if m:
            rows[m.group(2)]["passed" if m.group(1) == "PASSED" else "failed"] += 1
    print("| fault test | cases | data lost / internal errors (failed cases) |")
    print("|---|---|---|")
    for name, r in rows.items():
        print(f"| {name} | {r['passed'] + r['failed']} | {r['failed']} |")
    print(p.stdout.strip().splitlines()[-1])
    for line in p.stdout.splitlines():                  # why each failed case failed, for the note
        if line.startswith(("FAILED", "ERROR")):
            print(line[:400])


if __name__ == "__main__":
    main()
