"""Simulated requests per second of the serving simulator (target ≥ 1,000,000 on 2 cores).

Two figures per set-up: the event loop alone (``simulate_run``: arrivals given, service pool
sampled, batches served), and the whole what-if (``simulate``: arrivals, loop, percentiles, windowed
Q@T, tail quality) as `tqsim whatif` runs it. The service model is an EmpiricalService built from
synthetic per-call latencies, so the sampling cost is the real one. Single process, single thread.
"""

from __future__ import annotations

import time

import numpy as np

from tqsim.whatif import EmpiricalService, ServingOverheads, ServingSetup, WithOverheads, simulate, simulate_run
from tqsim.whatif.simulator import HAVE_NUMBA, poisson_arrivals


def main() -> None:
    rng = np.random.default_rng(0)
    base = EmpiricalService({k: 70e-6 * k**0.6 * np.exp(rng.normal(0, 0.1, (20, 200))) for k in (1, 2, 4, 8, 16)})
    # every term a calibrated model carries: served spread (shape), stalls at a run-level rate, pauses
    svc = WithOverheads(base, ServingOverheads(scale=1.6, per_batch_s=20e-6, per_request_s=5e-6,
                                               timer_late_s=[90e-6, 150e-6], pause_prob=1e-4, pause_s=[0.15],
                                               shape=list(np.exp(np.linspace(-0.3, 0.6, 1000))),
                                               stall_prob=0.003, stall_shape=[6.0, 9.0, 15.0],
                                               stall_dispersion=[0.3, 0.5, 0.9]))
    setups = [("1 replica, no batching", ServingSetup(1, 1, 1, 0.0), 8000),
              ("2 replicas, batch≤16, wait 2ms", ServingSetup(2, 1, 16, 2e-3), 20000),
              ("4 replicas, batch≤8, wait 0.5ms", ServingSetup(4, 1, 8, 0.5e-3), 30000)]
    simulate_run(svc, ServingSetup(1, 1, 2, 1e-3), poisson_arrivals(100, 100, rng), rng)  # JIT warm-up
    print(f"numba: {HAVE_NUMBA}")
    print(f"{'set-up':34s} {'rate/s':>8s} {'loop req/s':>12s} {'whatif req/s':>13s}")
    for name, setup, rate in setups:
        n = 2_000_000
        arr = poisson_arrivals(rate, n, rng)
        t0 = time.perf_counter()
        simulate_run(svc.draw(rng), setup, arr, rng, window=540)
        loop = n / (time.perf_counter() - t0)
        correct = rng.random(540) < 0.97
        t0 = time.perf_counter()
        wi = simulate(svc, setup, thresholds_s=[5e-3, 20e-3], rate_rps=rate, score=correct, draws=40,
                      n_windows=100)
        whole = 40 * wi.requests / (time.perf_counter() - t0)
        print(f"{name:34s} {rate:8d} {loop:12,.0f} {whole:13,.0f}")


if __name__ == "__main__":
    main()
