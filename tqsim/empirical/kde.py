"""Per-batch latency distributions to simulate passes from: KDE on log-time, or whole passes.

Latency is measured per batch (every instance of a batch shares its batch's time), so everything
here works on batch latencies ``(pass, batch)`` and Monte Carlo expands to instances by counts.
Samplers follow scikit-learn's contract: ``__init__`` stores settings, ``fit`` returns self,
learned state ends in ``_``. ``sample_log`` returns log-seconds (cheaper to compare with log τ).
"""

from __future__ import annotations

import numpy as np
from scipy import special


def silverman_bandwidth(x: np.ndarray, axis: int = 0) -> np.ndarray:
    """Silverman's rule 0.9·min(σ, IQR/1.34)·n^(-1/5) along ``axis`` (here: of log-seconds).

    On log-time the bandwidth is a *relative* width (0.05 ≈ ±5 %), so it means the same for a 24 µs
    and a 3 ms model — the reference code's bandwidth in absolute seconds did not.
    """
    x = np.asarray(x, dtype=float)
    n = x.shape[axis]
    sd = np.std(x, axis=axis, ddof=1) if n > 1 else np.zeros(np.delete(x.shape, axis))
    q75, q25 = np.percentile(x, [75, 25], axis=axis)
    iqr = (q75 - q25) / 1.34
    spread = np.where(iqr > 0, np.minimum(sd, iqr), sd)
    return 0.9 * spread * n ** (-0.2)


def _check(batch_latency_s: np.ndarray) -> np.ndarray:
    lat = np.asarray(batch_latency_s, dtype=float)
    if lat.ndim != 2:
        raise ValueError("batch latencies must be 2-D (pass, batch)")
    lat = lat[~np.isnan(lat).any(axis=1)]
    if lat.shape[0] < 2:
        raise ValueError("a latency distribution needs at least 2 passes")
    return lat


class LogKDE:
    """Independent Gaussian KDE per batch position on log-latency (the paper's model, scale-free).

    Simulated passes draw every batch independently, so they lose what a pass shares (machine
    episodes, a fixed count of timer hits): see docs/method.md for what that does to the Q@T spread.
    """

    def __init__(self, bandwidth: str | float = "silverman"):
        self.bandwidth = bandwidth

    def fit(self, batch_latency_s: np.ndarray) -> "LogKDE":
        self.log_ = np.log(_check(batch_latency_s)).astype(np.float32)
        bw = silverman_bandwidth(self.log_, axis=0) if self.bandwidth == "silverman" else \
            np.full(self.log_.shape[1], float(self.bandwidth))
        self.bandwidth_ = bw.astype(np.float32)
        return self

    def sample_log(self, n_passes: int, rng: np.random.Generator) -> np.ndarray:
        n, b = self.log_.shape
        rows = rng.integers(0, n, size=(n_passes, b), dtype=np.int32)
        out = np.take_along_axis(self.log_, rows, axis=0) if n_passes <= n else self.log_.T[
            np.arange(b, dtype=np.int32), rows]
        out += self.bandwidth_ * rng.standard_normal((n_passes, b), dtype=np.float32)
        return out

    def sample(self, n_passes: int, rng: np.random.Generator) -> np.ndarray:
        return np.exp(self.sample_log(n_passes, rng).astype(float))

    def cdf(self, log_taus: np.ndarray) -> np.ndarray:
        """P(batch b on time at τ_k) under the KDE, (k, batch): the mean of Gaussian CDFs."""
        c = np.asarray(log_taus, dtype=float)[:, None, None]
        h = self.bandwidth_.astype(float)
        diff = c - self.log_.astype(float)[None]
        z = np.where(h > 0, diff / np.where(h > 0, h, 1.0), np.where(diff >= 0, np.inf, -np.inf))
        return special.ndtr(z).mean(axis=1)

    def on_time(self, n_passes: int, rng: np.random.Generator, log_taus: np.ndarray) -> np.ndarray:
        """On-time mask (k, S, batch) by inverse-CDF sampling: one uniform per batch serves every τ.

        latency = F_b^-1(u) is on time at τ iff u < F_b(τ); sharing u across thresholds keeps each
        simulated pass one pass. Exact for the KDE, and cheaper than drawing latencies.
        """
        key = tuple(np.round(np.asarray(log_taus, dtype=float), 12))
        if getattr(self, "_cdf_key", None) != key:
            self._cdf_key, self._cdf = key, self.cdf(log_taus).astype(np.float32)
        u = rng.random((n_passes, self.log_.shape[1]), dtype=np.float32)
        return u[None] < self._cdf[:, None, :]


class PassResampler:
    """Whole measured passes drawn with replacement: keeps every within-pass correlation, invents nothing."""

    def fit(self, batch_latency_s: np.ndarray) -> "PassResampler":
        self.log_ = np.log(_check(batch_latency_s)).astype(np.float32)
        return self

    def sample_log(self, n_passes: int, rng: np.random.Generator) -> np.ndarray:
        return self.log_[rng.integers(0, self.log_.shape[0], size=n_passes)]

    def sample(self, n_passes: int, rng: np.random.Generator) -> np.ndarray:
        return np.exp(self.sample_log(n_passes, rng).astype(float))

    def on_time(self, n_passes: int, rng: np.random.Generator, log_taus: np.ndarray) -> np.ndarray:
        lat = self.sample_log(n_passes, rng)
        return lat[None] <= np.asarray(log_taus, dtype=np.float32)[:, None, None]


class PassKDE:
    """A measured pass effect (median log-latency of the pass) + per-batch KDE of the residuals.

    Keeps the between-pass variance that dominates the Q@T spread while smoothing within a pass.
    """

    def __init__(self, bandwidth: str | float = "silverman"):
        self.bandwidth = bandwidth

    def fit(self, batch_latency_s: np.ndarray) -> "PassKDE":
        log = np.log(_check(batch_latency_s))
        self.pass_effect_ = np.median(log, axis=1).astype(np.float32)
        self.kde_ = LogKDE(self.bandwidth).fit(np.exp(log - self.pass_effect_[:, None]))
        return self

    def sample_log(self, n_passes: int, rng: np.random.Generator) -> np.ndarray:
        out = self.kde_.sample_log(n_passes, rng)
        out += self.pass_effect_[rng.integers(0, self.pass_effect_.size, size=n_passes)][:, None]
        return out

    def sample(self, n_passes: int, rng: np.random.Generator) -> np.ndarray:
        return np.exp(self.sample_log(n_passes, rng).astype(float))

    def on_time(self, n_passes: int, rng: np.random.Generator, log_taus: np.ndarray) -> np.ndarray:
        lat = self.sample_log(n_passes, rng)
        return lat[None] <= np.asarray(log_taus, dtype=np.float32)[:, None, None]


LatencySampler = LogKDE | PassResampler | PassKDE
METHODS = {"kde": LogKDE, "passes": PassResampler, "pass_kde": PassKDE}


def make_sampler(method: str, bandwidth: str | float = "silverman") -> LatencySampler:
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; choose one of {', '.join(METHODS)}")
    return PassResampler() if method == "passes" else METHODS[method](bandwidth)
