"""MLPerf LoadGen's early-stopping bound for a tail-latency percentile (``loadgen/early_stopping.cc``
and the "Early Stopping Criterion" appendix of the MLPerf inference rules), re-derived from the math.

A system meets its latency bound on each query with probability p. Having seen t over-latency
queries, LoadGen needs h under-latency ones such that a *minimally failing* system (on-time rate
p - d) would show t or fewer over-latency queries in h + t with probability below 1 - c:

    I_{p-d}(h, t + 1) = P(Bin(h + t, 1 - p + d) <= t) < 1 - c,      c = 0.99, d = 0 in LoadGen.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy import special, stats

CONFIDENCE = 0.99
TOLERANCE = 0.0


def _odds(h: int, t: int, p: float, d: float) -> float:
    """P(at most t over-latency queries among h + t) for a system on time with probability p - d."""
    return float(special.betainc(h, t + 1, p - d)) if h > 0 else 1.0


def min_passing_queries(overlatency: int, percentile: float, tolerance: float = TOLERANCE,
                        confidence: float = CONFIDENCE) -> int:
    """LoadGen's ``MinPassingQueriesFinder``: the fewest under-latency queries h given t over-latency ones.

    ``percentile`` as a fraction (0.9 for p90). Binary search over h; odds fall as h grows.
    """
    t, p, d, c = int(overlatency), float(percentile), float(tolerance), float(confidence)
    if not 0 < p - d < 1:
        raise ValueError(f"percentile - tolerance must lie in (0, 1), got {p - d}")
    lo = max(1, math.ceil(math.log(1 - c) / math.log(p - d)))  # the t = 0 answer is a lower bound
    hi = lo
    while _odds(hi, t, p, d) >= 1 - c:
        hi *= 2
    while lo < hi:
        mid = (lo + hi) // 2
        if _odds(mid, t, p, d) < 1 - c:
            hi = mid
        else:
            lo = mid + 1
    return lo


def min_queries(percentile: float, overlatency: int = 0, tolerance: float = TOLERANCE,
                confidence: float = CONFIDENCE) -> int:
    """Total queries (h + t) a claim needs with ``overlatency`` queries over the bound."""
    return min_passing_queries(overlatency, percentile, tolerance, confidence) + int(overlatency)


def server_check(n_queries: int, overlatency: int, percentile: float, tolerance: float = TOLERANCE,
                 confidence: float = CONFIDENCE) -> dict:
    """Server-scenario verdict: does a run of n queries, t of them over the bound, certify the percentile?"""
    need = min_queries(percentile, overlatency, tolerance, confidence)
    return {"queries": int(n_queries), "overlatency": int(overlatency), "required": need,
            "passed": n_queries >= need, "more_needed": max(0, need - int(n_queries))}


def max_overlatency(n_queries: int, percentile: float, tolerance: float = TOLERANCE,
                    confidence: float = CONFIDENCE) -> int:
    """The largest t with n >= h(t) + t (0 when even t = 1 is not allowed).

    n - t >= h(t) <=> P(Bin(n, 1-p+d) <= t) < 1-c, so t is one below the binomial (1-c)-quantile.
    """
    n = int(n_queries)
    if n <= 0:
        return 0
    t = int(stats.binom.ppf(1 - confidence, n, 1 - percentile + tolerance)) - 1
    # guard the boundary against floating-point ties: step until the exact condition holds
    while t >= 1 and n < min_queries(percentile, t, tolerance, confidence):
        t -= 1
    while n >= min_queries(percentile, t + 1, tolerance, confidence):
        t += 1
    return max(t, 0)


@dataclass(frozen=True)
class EarlyStopping:
    """What LoadGen would report for a single-stream style percentile claim."""

    percentile: float
    queries: int
    min_queries: int          # h(1) + 1: fewer queries and LoadGen refuses to estimate
    overlatency: int          # t: the estimate is the t-th largest latency
    latency_s: float          # NaN when queries < min_queries

    @property
    def discarded(self) -> int:
        return max(self.overlatency - 1, 0)

    @property
    def effective_percentile(self) -> float:
        """The empirical percentile the certified latency sits at: (n - t + 1) / n."""
        return (self.queries - self.overlatency + 1) / self.queries if self.overlatency else float("nan")

    def as_dict(self) -> dict:
        return {"percentile": self.percentile, "queries": self.queries, "min_queries": self.min_queries,
                "overlatency": self.overlatency, "discarded": self.discarded, "latency_s": self.latency_s,
                "effective_percentile": self.effective_percentile}


def early_stopping_estimate(latency_s: np.ndarray, percentile: float, tolerance: float = TOLERANCE,
                            confidence: float = CONFIDENCE) -> EarlyStopping:
    """LoadGen's single-stream early-stopping percentile estimate from query latencies (NaN ignored).

    Sort ascending, take t = max_overlatency(n), report the t-th largest latency (discard t-1).
    """
    lat = np.sort(np.asarray(latency_s, dtype=float).ravel())
    lat = lat[~np.isnan(lat)]
    n = lat.size
    floor = min_queries(percentile, 1, tolerance, confidence)
    if n < floor:
        return EarlyStopping(percentile, n, floor, 0, float("nan"))
    t = max(max_overlatency(n, percentile, tolerance, confidence), 1)
    return EarlyStopping(percentile, n, floor, t, float(lat[n - t]))


def queries_needed(percentile: float, overlatency_rate: float, tolerance: float = TOLERANCE,
                   confidence: float = CONFIDENCE, max_queries: int = 10**9) -> float:
    """Queries a server-style claim needs when a fraction ``overlatency_rate`` of queries is late.

    The smallest n with n >= h(t) + t for t = floor(rate * n) (the expected count); inf when the rate
    is at or above 1 - p (the claim can never pass).
    """
    r = float(overlatency_rate)
    if r >= 1 - percentile + tolerance:
        return float("inf")
    if r <= 0:
        return float(min_queries(percentile, 0, tolerance, confidence))

    def ok(n: int) -> bool:
        return n >= min_queries(percentile, int(math.floor(r * n)), tolerance, confidence)

    lo, hi = 1, min_queries(percentile, 0, tolerance, confidence)
    while not ok(hi):
        lo, hi = hi, hi * 2
        if hi > max_queries:
            return float("inf")
    while lo < hi:  # ok() is monotone up to rounding of floor(r n); the search finds a boundary
        mid = (lo + hi) // 2
        if ok(mid):
            hi = mid
        else:
            lo = mid + 1
    return float(lo)


def normal_approx_queries(percentile: float, confidence: float = CONFIDENCE, margin: float | None = None) -> float:
    """The fixed query counts of the MLPerf rules before early stopping (normal approximation).

    n = z_{(1-c)/2}^2 p (1-p) / margin^2, margin = (1-p)/20 by default: 23,886 for p90.
    """
    m = (1 - percentile) / 20 if margin is None else margin
    z = stats.norm.ppf((1 - confidence) / 2)
    return float(z * z * percentile * (1 - percentile) / (m * m))
