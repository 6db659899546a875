"""Fuzz every parser a user types into, 10,000 examples each (tests/test_fuzz.py runs a few hundred).

Property: any input parses to a valid value or raises tqsim's user-error type (exit 2 with a message
naming the fix); anything else is a defect. Prints the examples tried, accepted and refused per parser.

    python benchmarks/fuzz_parsers.py [--examples 10000]
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--examples", type=int, default=10_000)
    args = ap.parse_args()
    os.environ["TQSIM_FUZZ_EXAMPLES"] = str(args.examples)
    from hypothesis import HealthCheck, given, settings

    from tests import test_fuzz as fz

    print("| parser | examples | accepted | refused (exit 2) | other errors | seconds |")
    print("|---|---|---|---|---|---|")
    for name, (check, strategy) in fz.CASES.items():
        counts = {"n": 0, "other": 0}
        fz.OUTCOMES.clear()

        @settings(max_examples=args.examples, deadline=None, suppress_health_check=list(HealthCheck),
                  database=None)
        @given(strategy)
        def run(value):
            counts["n"] += 1
            try:
                check(value)
            except AssertionError:
                raise
            except Exception:
                counts["other"] += 1
                raise

        t0 = time.perf_counter()
        try:
            run()
        except Exception as exc:  # noqa: BLE001 - reported, not hidden
            print(f"<!-- {name}: {type(exc).__name__}: {exc} -->")
        print(f"| {name} | {counts['n']:,} | {fz.OUTCOMES['accepted']:,} | {fz.OUTCOMES['refused']:,} | "
              f"{counts['other']} | {time.perf_counter() - t0:.1f} |")


if __name__ == "__main__":
    main()
