"""Monte Carlo speed (issue 3): S = 10,000 simulated passes × 1,797 instances on this machine.

Prints seconds per call for each method at batch size 1 (1,797 batches per pass: the worst case)
and 8, three thresholds, accuracy and macro-F1. Target: well under 1 s on 2 cores.
Run: python benchmarks/montecarlo_speed.py
"""

from __future__ import annotations

import os
import time

import numpy as np

from tqsim.empirical.montecarlo import monte_carlo_qat

N_INSTANCES, N_PASSES, S = 1797, 30, 10_000


def synthetic(batch_size: int, rng: np.random.Generator):
    batch = np.arange(N_INSTANCES) // batch_size
    n_b = batch[-1] + 1
    lat_b = 1e-4 * batch_size ** 0.7 * rng.lognormal(0, 0.1, size=(N_PASSES, n_b))
    label = rng.integers(0, 10, N_INSTANCES)
    pred = np.where(rng.random(N_INSTANCES) < 0.97, label, rng.integers(0, 10, N_INSTANCES))
    return lat_b[:, batch], batch, pred, label


def main() -> None:
    rng = np.random.default_rng(0)
    print(f"Monte Carlo of {S:,} passes x {N_INSTANCES:,} instances, 3 thresholds, "
          f"{os.cpu_count()} CPU cores (best of 3)")
    for bs in (1, 8):
        lat, batch, pred, label = synthetic(bs, rng)
        taus = np.percentile(lat, [90, 95, 99])
        for metric in ("accuracy", "macro_f1"):
            for method in ("kde", "passes", "pass_kde"):
                times = []
                for rep in range(3):
                    t0 = time.perf_counter()
                    monte_carlo_qat(lat, batch, taus, method=method, n_sim=S, seed=rep, prediction=pred, label=label,
                                    score=pred == label if metric == "accuracy" else None, metric=metric)
                    times.append(time.perf_counter() - t0)
                print(f"  batch_size={bs:<2} {metric:<9} {method:<9} {min(times):6.3f} s")


if __name__ == "__main__":
    main()
