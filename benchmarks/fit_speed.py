"""Fit speed against the number of passes: does a long calibration still fit in a minute?

Each case is fitted in a fresh process, the way `tqsim fit` runs (model compile included), on a
simulated campaign shaped like digits-cnn (540 instances): 14 configurations (batch 1–128 ×
threads 1/2) × 20 / 100 / 300 passes, and 4 configurations × 300 passes. ``--real HOME ...`` adds
real calibrations (every configuration of the workspace's only system/workload).

Targets (issue 19): 14 × 100 and 4 × 300 in ≤ 60 s on 2 cores, r-hat ≤ 1.01, 0 divergences, no retry.

    python benchmarks/fit_speed.py [--seeds 0 1] [--real /tmp/home1 /tmp/home2]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
import warnings

os.environ.setdefault("PYTENSOR_FLAGS", "blas__ldflags=")
warnings.simplefilter("ignore")

CASES = [(14, 20), (14, 100), (14, 300), (4, 300)]


def configs_for(n: int):
    from tqsim.testing import grid

    if n == 4:
        return grid(batch_sizes=(1, 32), threads=(1, 2))
    return grid(batch_sizes=(1, 2, 4, 8, 16, 32, 64), threads=(1, 2))[:n]


def one(n_configs: int, passes: int, seed: int, real: str | None) -> dict:
    from tqsim.data.io import load_campaign
    from tqsim.data.workspace import Workspace
    from tqsim.models import fit_campaign
    from tqsim.testing import simulate_campaign, write_campaign

    if real:
        ws = Workspace.at(real)
        system = ws.resolve_system(None)
        folder = ws.calibration_dir(system, ws.resolve_workload(system, None))
    else:
        folder = write_campaign(simulate_campaign(configs_for(n_configs), passes=passes, seed=seed, sessions=2),
                                tempfile.mkdtemp())
    t0 = time.perf_counter()
    fm = fit_campaign(load_campaign(folder), seed=seed)
    d = fm.diagnostics
    return {"configs": d["n_configs"], "passes": d["n_passes"] // d["n_configs"], "calls": d["n_batches_total"],
            "seed": seed, "source": real or "simulated", "wall_s": round(time.perf_counter() - t0, 1),
            "sample_s": d["sample_seconds"], "rhat_max": round(d["rhat_max"], 4), "ess_bulk_min": round(d["ess_bulk_min"]),
            "divergences": d["divergences"], "status": d["status"]}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seeds", type=int, nargs="+", default=[0])
    ap.add_argument("--real", nargs="*", default=[])
    ap.add_argument("--one", nargs=3, metavar=("CONFIGS", "PASSES", "SEED"), help=argparse.SUPPRESS)
    ap.add_argument("--one-real", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.one or args.one_real:
        c, p, s = (int(v) for v in (args.one or (0, 0, 0)))
        print(json.dumps(one(c, p, s, args.one_real)))
        return
    jobs = [["--one", str(c), str(p), str(s)] for c, p in CASES for s in args.seeds]
    jobs += [["--one-real", h] for h in args.real]
    rows = []
    for job in jobs:
        out = subprocess.run([sys.executable, __file__, *job], capture_output=True, text=True, check=True)
        row = json.loads(out.stdout.strip().splitlines()[-1])
        print(json.dumps(row), flush=True)
        rows.append(row)
    print("\n| source | configs × passes | calls | fit (s, fresh process) | sampling (s) | r-hat max | ESS min | divergences |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['source']} | {r['configs']} × {r['passes']} | {r['calls']:,} | {r['wall_s']} | {r['sample_s']} | "
              f"{r['rhat_max']} | {r['ess_bulk_min']} | {r['divergences']} |")


if __name__ == "__main__":
    main()
