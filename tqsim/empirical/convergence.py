"""rJSD: how much the estimated Q@T distribution still moves as passes are added; and its floor.

Definitions (docs/method.md): histograms on a fixed grid of Q@T (bins of ``bin_width`` on [0, 1]);
D = base-2 Jensen–Shannon *distance* (square root of the divergence, in [0, 1]); rJSD_t = the
largest D between successive estimates among the last W estimates.
"""

from __future__ import annotations

from collections import deque

import numpy as np

from tqsim.data.schema import batch_numbers

BIN_WIDTH = 0.005
WINDOW = 10
EPSILON = 0.05


def qat_edges(bin_width: float = BIN_WIDTH) -> np.ndarray:
    """The fixed grid: bins of ``bin_width`` over [0, 1] (Q@T is a fraction for every metric here)."""
    n = int(round(1 / bin_width))
    return np.linspace(0.0, 1.0, n + 1)


def qat_histogram(values: np.ndarray, edges: np.ndarray | None = None) -> np.ndarray:
    """Probabilities of Q@T values on the fixed grid (NaN ignored; 1.0 falls in the last bin)."""
    edges = qat_edges() if edges is None else edges
    v = np.asarray(values, dtype=float).ravel()
    v = np.clip(v[~np.isnan(v)], edges[0], edges[-1])
    counts = np.histogram(v, bins=edges)[0].astype(float)
    return counts / max(counts.sum(), 1.0)


def jensen_shannon_distance(p: np.ndarray, q: np.ndarray, axis: int = -1) -> np.ndarray:
    """Base-2 Jensen–Shannon distance sqrt(H(m) - (H(p)+H(q))/2), m = (p+q)/2; 0 = same, 1 = disjoint."""
    p = np.asarray(p, dtype=float)
    q = np.asarray(q, dtype=float)
    p = p / p.sum(axis=axis, keepdims=True)
    q = q / q.sum(axis=axis, keepdims=True)
    m = (p + q) / 2

    def h(x):
        return -np.sum(np.where(x > 0, x * np.log2(np.where(x > 0, x, 1)), 0.0), axis=axis)

    return np.sqrt(np.clip(h(m) - (h(p) + h(q)) / 2, 0.0, 1.0))


class ConvergenceTracker:
    """Feed the Q@T of each new pass (one value per threshold); stop once rJSD < ε.

    The estimate after t passes is the histogram of their Q@T values. rJSD is NaN until W estimates
    exist, so at least W passes are always measured.
    """

    def __init__(self, epsilon: float = EPSILON, window: int = WINDOW, bin_width: float = BIN_WIDTH):
        if window < 2:
            raise ValueError("the window needs at least 2 estimates")
        self.epsilon, self.window, self.bin_width = epsilon, window, bin_width
        self.edges_ = qat_edges(bin_width)
        self.counts_: np.ndarray | None = None
        self.steps_: deque = deque(maxlen=window - 1)
        self.history_: list[float] = []
        self.n_passes_ = 0

    def update(self, qat_of_new_pass) -> float:
        v = np.clip(np.atleast_1d(np.asarray(qat_of_new_pass, dtype=float)), 0.0, 1.0)
        n_bins = self.edges_.size - 1
        if self.counts_ is None:
            self.counts_ = np.zeros((v.size, n_bins))
        before = self.counts_.copy()
        bins = np.minimum(np.searchsorted(self.edges_, v, side="right") - 1, n_bins - 1)
        self.counts_[np.arange(v.size), bins] += 1
        self.n_passes_ += 1
        if self.n_passes_ >= 2:
            self.steps_.append(float(np.max(jensen_shannon_distance(before, self.counts_))))
        r = max(self.steps_) if self.n_passes_ >= self.window else float("nan")
        self.history_.append(r)
        return r

    @property
    def rjsd(self) -> float:
        return self.history_[-1] if self.history_ else float("nan")

    @property
    def converged(self) -> bool:
        return bool(self.rjsd < self.epsilon)


def rjsd_series(qat: np.ndarray, window: int = WINDOW, bin_width: float = BIN_WIDTH) -> np.ndarray:
    """rJSD after each pass of a measured (pass,) or (pass, k) Q@T sequence, in measurement order."""
    tracker = ConvergenceTracker(window=window, bin_width=bin_width)
    return np.array([tracker.update(row) for row in np.asarray(qat, dtype=float)])


def jsd_floor(predicted_qat: np.ndarray, n_heldout: int, *, n_rep: int = 500, seed: int = 0,
              bin_width: float = BIN_WIDTH) -> dict[str, float]:
    """The distance a *perfect* predictor scores against n held-out passes, by simulation.

    Draw n passes from the predicted distribution itself, histogram them, measure D to the
    prediction; repeat. A validation distance is only meaningful beside this (docs/method.md).
    """
    edges = qat_edges(bin_width)
    pred = np.asarray(predicted_qat, dtype=float).ravel()
    pred = pred[~np.isnan(pred)]
    rng = np.random.default_rng(seed)
    p = qat_histogram(pred, edges)
    draws = pred[rng.integers(0, pred.size, size=(n_rep, n_heldout))]
    idx = np.minimum(np.searchsorted(edges, np.clip(draws, 0, 1), side="right") - 1, edges.size - 2)
    counts = np.zeros((n_rep, edges.size - 1))
    np.add.at(counts, (np.repeat(np.arange(n_rep), n_heldout), idx.ravel()), 1)
    d = jensen_shannon_distance(counts, p[None, :])
    return {"mean": float(d.mean()), "p05": float(np.quantile(d, 0.05)), "p95": float(np.quantile(d, 0.95))}


def qat_rjsd(batch_latency_s: np.ndarray, batch: np.ndarray, *, score=None, prediction=None, label=None,
             metric: str = "accuracy", percentiles=(90, 95, 99), window: int = WINDOW,
             bin_width: float = BIN_WIDTH) -> np.ndarray:
    """rJSD after each measured pass of one configuration, Q@T taken at its current p90/p95/p99.

    The thresholds are fixed from all passes measured so far, then every pass is scored in
    measurement order and fed to a tracker; the largest change over the thresholds counts.
    """
    from tqsim.empirical.montecarlo import BatchScorer, qat_from_batches

    lat = np.asarray(batch_latency_s, dtype=float)
    batch = np.asarray(batch)
    b_of = batch_numbers(batch)
    taus = np.percentile(lat[:, b_of], percentiles)  # per-instance latencies, as Threshold.resolve
    scorer = BatchScorer(batch, score=score, prediction=prediction, label=label, metric=metric)
    return rjsd_series(qat_from_batches(lat, taus, scorer), window, bin_width)


def converged_record(record, epsilon: float = EPSILON, window: int = WINDOW) -> bool:
    """Stop rule for adaptive calibration (`tqsim calibrate --until-converged`) on a harness ConfigRecord.

    True once at least ``window`` passes exist and the latest rJSD is below ε.
    """
    lat = record.batch_latency_s()
    if lat.shape[0] < window:
        return False
    r = qat_rjsd(lat, record.batch_of_instance, score=record.score, prediction=record.prediction,
                 label=record.label, metric=record.metric, window=window)
    return bool(r[-1] < epsilon)
