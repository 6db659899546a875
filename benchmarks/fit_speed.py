"""Fit speed on a simulated campaign shaped like digits-cnn: ~24 configurations × 20 passes, 540 instances.

Target (issue 4): ≤ 60 s on 2 cores with warm compile caches, r-hat ≤ 1.01, no divergences.
Runs the fit twice (the first warms PyTensor's/numba's caches) and prints both.

    python benchmarks/fit_speed.py [--family mixture|student|auto] [--sampler nutpie|nuts|advi]
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
import warnings

os.environ.setdefault("PYTENSOR_FLAGS", "blas__ldflags=")
warnings.simplefilter("ignore")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--family", default="mixture")
    ap.add_argument("--sampler", default=None)
    ap.add_argument("--passes", type=int, default=20)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--batches-per-pass", type=int, default=None)
    args = ap.parse_args()

    from tqsim.data.io import load_campaign
    from tqsim.testing import grid, simulate_campaign, write_campaign
    from tqsim.models import fit_campaign

    configs = grid(batch_sizes=(1, 2, 4, 8, 16, 32, 64, 128, 3, 6, 12, 24), threads=(1, 2))  # 24 configs
    home = tempfile.mkdtemp()
    camp = load_campaign(write_campaign(simulate_campaign(configs, passes=args.passes, seed=0, n_instances=540), home))
    for rep in range(args.repeats):
        t0 = time.perf_counter()
        fm = fit_campaign(camp, family=args.family, sampler=args.sampler, seed=rep,
                          batches_per_pass=args.batches_per_pass)
        secs = time.perf_counter() - t0
        d = fm.diagnostics
        print(json.dumps({"repeat": rep, "wall_s": round(secs, 1), "family": d["family"], "sampler": d["sampler"],
                          "sample_s": d["sample_seconds"], "rhat_max": d["rhat_max"], "ess_bulk_min": d["ess_bulk_min"],
                          "divergences": d["divergences"], "n_obs": d["n_obs"], "n_batches_total": d["n_batches_total"],
                          "ok": d["ok"], "loo": d["loo"]}))


if __name__ == "__main__":
    main()
