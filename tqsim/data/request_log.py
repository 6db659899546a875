"""One serving run as its requests saw it: the record of ``--serving-log`` files, the HTTP driver and tqsim's own server.

A request log is what any serving stack can give: when each request arrived and when it completed. Everything
else (its batch, batch size, replica, in-server forward time, evaluation-set instance, status) is optional and
used when present. Plain arrays, so that the overhead fit (:mod:`tqsim.whatif.log_fit`) needs nothing from the
stack that made the log. The file formats are in docs/schema.md, "Request logs".
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np

MIN_DURATION_S = 1.0  # a run shorter than this holds too few requests to say anything about a load


@dataclasses.dataclass
class RequestLog:
    """One run at one load, one row per request in arrival order. Times in seconds from the run's first arrival.

    Unknown optional values: ``batch_id``/``replica``/``sample_index`` -1, ``batch_size`` 0, ``forward_s`` NaN.
    """

    arrival_s: np.ndarray
    completion_s: np.ndarray
    ok: np.ndarray               # status: the request was answered (not an error or a timeout)
    sample_index: np.ndarray     # evaluation-set instance served, -1 unknown
    batch_id: np.ndarray         # -1 unknown
    batch_size: np.ndarray       # 0 unknown
    replica: np.ndarray          # -1 unknown
    forward_s: np.ndarray        # in-server forward time of the request's batch, NaN unknown
    source: str = ""             # the file or URL it came from, for messages
    driver: str = ""             # what produced it: "file", "http-loadgen", "http-poisson", "tqsim-server", ...
    correct: np.ndarray | None = None  # the served prediction was right, where the producer knows it

    def __post_init__(self):
        n = self.arrival_s.size
        for f in dataclasses.fields(self):
            v = getattr(self, f.name)
            if isinstance(v, np.ndarray) and v.size != n:
                raise ValueError(f"request log {self.source}: column {f.name} has {v.size} rows, expected {n}")

    @classmethod
    def from_arrays(cls, arrival_s, completion_s, *, ok=None, sample_index=None, batch_id=None, batch_size=None,
                    replica=None, forward_s=None, correct=None, source: str = "", driver: str = "") -> "RequestLog":
        """A log from whatever columns exist (missing ones unknown), sorted by arrival, times from the first."""
        arr = np.asarray(arrival_s, float)
        n = arr.size
        order = np.argsort(arr, kind="stable")

        def col(v, fill, dtype):
            return np.full(n, fill, dtype) if v is None else np.asarray(v, dtype)[order]

        t0 = float(arr[order[0]]) if n else 0.0
        return cls(arr[order] - t0, np.asarray(completion_s, float)[order] - t0, col(ok, True, bool),
                   col(sample_index, -1, np.int64), col(batch_id, -1, np.int64), col(batch_size, 0, np.int64),
                   col(replica, -1, np.int64), col(forward_s, np.nan, float), source, driver,
                   None if correct is None else np.asarray(correct, bool)[order])

    @property
    def n(self) -> int:
        return int(self.arrival_s.size)

    @property
    def latency_s(self) -> np.ndarray:
        return self.completion_s - self.arrival_s

    @property
    def duration_s(self) -> float:
        """First arrival to last arrival: the span over which the load was offered."""
        return float(self.arrival_s[-1] - self.arrival_s[0]) if self.n > 1 else 0.0

    @property
    def rate_rps(self) -> float:
        """The offered load: requests per second of the arrival span."""
        return (self.n - 1) / self.duration_s if self.duration_s > 0 else math.nan

    @property
    def error_rate(self) -> float:
        return float(1.0 - self.ok.mean()) if self.n else 0.0

    def has(self, column: str) -> bool:
        """Whether an optional column is known for every answered request."""
        v = getattr(self, column)[self.ok]
        if column == "forward_s":
            return bool(v.size and np.isfinite(v).all())
        if column == "batch_size":
            return bool(v.size and (v > 0).all())
        return bool(v.size and (v >= 0).all())

    def batch_sizes(self) -> np.ndarray:
        """One size per batch, when the log says which requests were batched together (else empty)."""
        if self.has("batch_id"):
            _, counts = np.unique(self.batch_id[self.ok], return_counts=True)
            return counts
        if self.has("batch_size"):
            return _sizes_from_per_request(self.batch_size[self.ok])
        return np.array([], np.int64)


def _sizes_from_per_request(per_request: np.ndarray) -> np.ndarray:
    """Batch sizes from each request's own batch size: a batch of k contributes k rows of k."""
    sizes, counts = np.unique(per_request, return_counts=True)
    return np.repeat(sizes, np.maximum(counts // np.maximum(sizes, 1), 1))


def from_serving_run(run) -> RequestLog:
    """The request log of one run of tqsim's own :class:`~tqsim.measure.server.BatchingServer`.

    Each request's batch is found by its replica and close time (one replica closes one batch at a time).
    """
    key = np.round(run.close_s * 1e9).astype(np.int64)
    bkey = np.round(run.batch_close_s * 1e9).astype(np.int64)
    order = np.argsort(bkey, kind="stable")
    pos = np.clip(np.searchsorted(bkey[order], key), 0, max(bkey.size - 1, 0))
    found = bkey.size > 0
    batch = order[pos] if found else np.full(key.size, -1)
    size = run.batch_size[batch] if found else np.zeros(key.size, np.int64)
    fwd = run.batch_forward_s[batch] if found else np.full(key.size, np.nan)
    rep = run.batch_replica[batch] if found else np.full(key.size, -1)
    return RequestLog.from_arrays(run.arrival_s, run.done_s, sample_index=run.sample, batch_id=batch,
                                  batch_size=size, replica=rep, forward_s=fwd, correct=run.correct,
                                  source=f"tqsim server at {run.rate_rps:g} req/s", driver=run.driver)
