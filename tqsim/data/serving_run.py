"""What one loaded serving run measured: the record the serving loop produces and the overhead fit reads.

Plain arrays, so that :mod:`tqsim.whatif` fits from it without importing the server that made it.
"""

from __future__ import annotations

import dataclasses

import numpy as np


@dataclasses.dataclass
class ServingRun:
    """What one loaded run measured. Times in seconds on ``time.perf_counter``'s clock."""

    rate_rps: float
    replicas: int
    threads: int
    max_batch: int
    max_wait_s: float
    driver: str
    arrival_s: np.ndarray        # per query, in arrival order
    close_s: np.ndarray          # when its batch closed
    done_s: np.ndarray           # when its completion was reported
    sample: np.ndarray           # evaluation-set instance served
    correct: np.ndarray          # the served prediction was right
    batch_size: np.ndarray       # per batch
    batch_close_s: np.ndarray
    batch_forward_s: np.ndarray  # forward call + synchronize
    batch_busy_s: np.ndarray     # close -> completion reported (collate, forward, post-process, respond)
    batch_timer_late_s: np.ndarray  # close - (oldest arrival + max_wait) for timer-closed batches, else NaN
    batch_replica: np.ndarray
    duration_s: float
    loadgen: dict = dataclasses.field(default_factory=dict)  # LoadGen's own summary figures, when it ran

    @property
    def latency_s(self) -> np.ndarray:
        return self.done_s - self.arrival_s

    @property
    def utilisation(self) -> list[float]:
        return [float(self.batch_busy_s[self.batch_replica == r].sum() / self.duration_s)
                for r in range(self.replicas)]

    def window_quality(self, threshold_s: float, window: int) -> np.ndarray:
        """Q@T of consecutive windows of ``window`` queries in arrival order (full windows only)."""
        n = (self.arrival_s.size // window) * window
        ok = (self.latency_s[:n] <= threshold_s) & self.correct[:n]
        return ok.reshape(-1, window).mean(axis=1)

    def summary(self, threshold_s: float, window: int, tail_q: float = 0.01) -> dict:
        lat = self.latency_s
        q = self.window_quality(threshold_s, window)
        return {"rate_rps": self.rate_rps, "achieved_rps": float((lat.size - 1) / max(np.ptp(self.arrival_s), 1e-9)),
                "queries": int(lat.size), "windows": int(q.size), "driver": self.driver,
                "latency_s": {k: float(np.percentile(lat, p)) for k, p in (("p50", 50), ("p99", 99), ("p99.9", 99.9))},
                "miss_rate": float((lat > threshold_s).mean()),
                "tail_quality": float(np.quantile(q, tail_q)) if q.size else float("nan"),
                "mean_quality": float(q.mean()) if q.size else float("nan"),
                "utilisation": self.utilisation, "mean_batch_size": float(self.batch_size.mean()),
                "loadgen": self.loadgen}
