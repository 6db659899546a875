"""Monte Carlo of the Q@T distribution: simulate S passes of batch latencies, score them by counts.

No (S, instance) array is ever built: Q@T of a pass is a weighted count of on-time batches, the
weights being each batch's summed per-instance scores (accuracy, top_k, a callable) or per-class
counts (macro-F1).
"""

from __future__ import annotations

import numpy as np
from scipy import sparse

from tqsim.data.schema import batch_numbers, batch_starts
from tqsim.empirical.kde import make_sampler
from tqsim.quality import score_vector


def batch_index(batch: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(first instance of each batch, batch number 0..B-1 of each instance) from ``batch[instance]``."""
    return batch_starts(batch), batch_numbers(batch)


def batch_latencies(latency_s: np.ndarray, batch: np.ndarray) -> np.ndarray:
    """(pass, batch) latencies from the (pass, instance) latencies; all-NaN passes dropped."""
    lat = np.asarray(latency_s, dtype=float)
    lat = lat[~np.isnan(lat).all(axis=-1)]
    return lat[:, batch_index(batch)[0]]


class BatchScorer:
    """Per-batch counts that turn an (S, batch) on-time mask into Q@T (same numbers as quality_at_deadline)."""

    def __init__(self, batch: np.ndarray, *, score=None, prediction=None, label=None, metric: str = "accuracy"):
        _, b_of = batch_index(batch)
        n_b = int(b_of[-1]) + 1
        self.metric, self.n = metric, b_of.size
        if metric != "macro_f1":
            w = score_vector(score, prediction, label, metric)
            self.w_ = np.bincount(b_of, weights=w, minlength=n_b).astype(np.float32)
        else:
            prediction, label = np.asarray(prediction), np.asarray(label)
            classes = np.unique(label)
            pred_oh = (prediction[:, None] == classes).astype(np.float32)
            tp_oh = pred_oh * (prediction == label)[:, None]
            counts = np.zeros((n_b, 2 * classes.size), np.float32)
            np.add.at(counts, b_of, np.hstack([tp_oh, pred_oh]))
            # sparse: a batch holds at most batch_size classes, so this is ~C times cheaper than dense
            self.counts_ = sparse.csr_matrix(counts.T)
            self.n_classes_ = classes.size
            self.support_ = (label[:, None] == classes).sum(axis=0).astype(np.float32)

    def score(self, on_time: np.ndarray) -> np.ndarray:
        v = on_time.astype(np.float32)
        if self.metric != "macro_f1":
            return (v @ self.w_).astype(float) / self.n
        both = np.asarray((self.counts_ @ v.T).T)
        tp, pc = both[:, :self.n_classes_], both[:, self.n_classes_:]
        denom = pc + self.support_  # 2tp + fp + fn, with fp = pc - tp and fn = support - tp
        f1 = np.where(denom > 0, 2 * tp / np.where(denom > 0, denom, 1), 0.0)
        return f1.mean(axis=-1).astype(float)


def qat_from_batches(batch_latency_s: np.ndarray, thresholds_s, scorer: BatchScorer, *, log: bool = False,
                     chunk: int = 2500) -> np.ndarray:
    """Q@T (S, k) of simulated passes given (S, batch) latencies (log-seconds if ``log``)."""
    lat = np.asarray(batch_latency_s)
    taus = np.atleast_1d(np.asarray(thresholds_s, dtype=float))
    cut = (np.log(taus) if log else taus).astype(lat.dtype)
    out = np.empty((lat.shape[0], taus.size))
    for s in range(0, lat.shape[0], chunk):  # chunks keep the mask in cache
        part = lat[s:s + chunk]
        for j, c in enumerate(cut):
            out[s:s + chunk, j] = scorer.score(part <= c)
    return out


def monte_carlo_qat(latency_s: np.ndarray, batch: np.ndarray, thresholds_s, *, method: str = "kde",
                    n_sim: int = 10_000, seed: int = 0, score=None, prediction=None, label=None,
                    metric: str = "accuracy", bandwidth: str | float = "silverman", chunk: int = 256) -> np.ndarray:
    """Predicted Q@T of ``n_sim`` simulated passes (S, k) from measured (pass, instance) latencies.

    ``method``: ``kde`` (independent per-batch KDE on log-time), ``passes`` (whole passes resampled)
    or ``pass_kde`` (pass effect + per-batch KDE of residuals). Seeded and vectorised; passes are
    simulated in chunks small enough to stay in cache. ``bandwidth`` (KDE methods): "silverman" or
    a fixed width in log-seconds (0 = the measured values themselves).
    """
    rng = np.random.default_rng(seed)
    sampler = make_sampler(method, bandwidth).fit(batch_latencies(latency_s, batch))
    scorer = BatchScorer(batch, score=score, prediction=prediction, label=label, metric=metric)
    log_taus = np.log(np.atleast_1d(np.asarray(thresholds_s, dtype=float)))
    out = np.empty((n_sim, log_taus.size))
    for s in range(0, n_sim, chunk):
        m = min(chunk, n_sim - s)
        on = sampler.on_time(m, rng, log_taus)
        for j in range(log_taus.size):
            out[s:s + m, j] = scorer.score(on[j])
    return out
