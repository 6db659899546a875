"""The timed region: one pass over the evaluation set, one clock reading pair per forward call.

Kept minimal on purpose (MLPerf/hyperfine hygiene): batches are collated, cast and moved before
the pass; inside it there is no scoring, logging or result allocation — just clock, forward,
device synchronisation, clock, and one store into a preallocated int64 array. The clock is
injectable (``time.perf_counter_ns`` by default) so the loop is tested with a fake clock.
"""

from __future__ import annotations

import contextlib
import gc
import time
from typing import Any, Callable, Protocol, Sequence

import numpy as np

Clock = Callable[[], int]


class Timeable(Protocol):
    batches: Sequence[tuple]

    def forward(self, args: tuple) -> Any: ...

    def synchronize(self) -> None: ...


PRIMING_CALLS = 1


def time_pass(runner: Timeable, clock: Clock = time.perf_counter_ns, prime: int = PRIMING_CALLS) -> np.ndarray:
    """Return the wall time in nanoseconds of every forward call of one pass, in batch order.

    ``prime`` untimed calls of the first batch run just before the timed ones: passes of different
    configurations are interleaved, and the first call after a switch (other weights in cache, the
    thread pool resized, an idle GPU) measured 2.2x the median on the CPU and 4.4x on an H200 —
    a cost of the harness's interleaving, not of a pass (docs/method.md, "Priming").

    The garbage collector is paused for the pass (as ``timeit`` does) and run just before it,
    so a collection of the harness's own objects never lands inside a timed call. A runner may
    offer ``pass_context()`` (e.g. torch's inference mode, ~3 µs to enter) with ``raw_forward``
    valid inside it, so that cost is paid once per pass instead of once per call.
    """
    batches = runner.batches
    context = getattr(runner, "pass_context", contextlib.nullcontext)
    forward = getattr(runner, "raw_forward", runner.forward)
    sync = runner.synchronize
    out = np.empty(len(batches), dtype=np.int64)
    gc.collect()
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        with context():
            for _ in range(prime if batches else 0):
                forward(batches[0])
                sync()
            for i, args in enumerate(batches):
                t0 = clock()
                forward(args)
                sync()
                out[i] = clock() - t0
    finally:
        if was_enabled:
            gc.enable()
    return out


def flag_outliers(latency_s: np.ndarray, threshold: float = 10.0) -> np.ndarray:
    """Flag calls far from the median, as hyperfine does: modified z-score |x-med|/(1.4826 MAD) > threshold.

    Flags are for warnings only; tails are what tqsim studies, so nothing is ever dropped.
    """
    x = np.asarray(latency_s, dtype=float)
    med = np.median(x)
    mad = 1.4826 * np.median(np.abs(x - med))
    if mad == 0:
        return x > med * 10
    return np.abs(x - med) / mad > threshold
