"""What the timing harness adds to a forward call (issue 2).

1. A model that does nothing (a Python no-op, and torch's nn.Identity through the real backend
   path): the median time per timed call is the harness overhead (clock pair + call + sync).
2. A model of known cost (a busy-wait of exactly C µs on the same monotonic clock): ratio of the
   measured median to C, for several C.

Run: python benchmarks/harness_overhead.py   (prints figures; copy them into RESULTS.md)
"""

from __future__ import annotations

import time

import numpy as np

from tqsim.measure.timing import time_pass


class _Runner:
    def __init__(self, forward, n_calls: int):
        self.batches = [((),)] * n_calls
        self.forward = forward
        self.synchronize = lambda: None


def _spin(cost_ns: int):
    def forward(args):
        end = time.perf_counter_ns() + cost_ns
        while time.perf_counter_ns() < end:
            pass
    return forward


def main(n_calls: int = 20000, passes: int = 5) -> None:
    clock_pairs = np.array([-(time.perf_counter_ns() - time.perf_counter_ns()) for _ in range(n_calls)])
    print(f"clock: back-to-back perf_counter_ns pair, median {np.median(clock_pairs):.0f} ns")
    noop = np.concatenate([time_pass(_Runner(lambda a: None, n_calls)) for _ in range(passes)])
    print(f"null model (Python no-op): median overhead per timed call {np.median(noop) / 1e3:.3f} µs, "
          f"p99 {np.percentile(noop, 99) / 1e3:.3f} µs over {noop.size} calls")

    import torch

    from tqsim.factors import Config
    from tqsim.measure.backends import prepare
    from tqsim.workloads.base import Workload

    null = Workload(name="null", task="identity", model=torch.nn.Identity(), inputs=torch.zeros(n_calls, 1),
                    labels=np.zeros(n_calls, dtype=int))
    runner = prepare(null, Config(batch_size=1, threads=1))
    tn = np.concatenate([time_pass(runner) for _ in range(passes)])
    print(f"null model (torch nn.Identity through the real backend runner): median {np.median(tn) / 1e3:.3f} µs, "
          f"p99 {np.percentile(tn, 99) / 1e3:.3f} µs per timed call")
    per_call = np.concatenate([time_pass(_Runner(runner.forward, n_calls)) for _ in range(passes)])
    print(f"  (same model with inference_mode entered per call instead of per pass: {np.median(per_call) / 1e3:.3f} µs)")

    print("known-cost model (busy-wait of C µs): measured median / C")
    for cost_us in (10, 50, 100, 1000):
        n = max(200, min(n_calls, int(2e6 / cost_us)))
        t = time_pass(_Runner(_spin(cost_us * 1000), n))
        print(f"  C = {cost_us:5d} µs: median {np.median(t) / 1e3:9.3f} µs, ratio {np.median(t) / (cost_us * 1e3):.4f}")


if __name__ == "__main__":
    main()
