"""Service-time models: how long one replica is busy with a batch of k requests.

A what-if result is a distribution, so a service model is used in two steps: ``draw(rng)`` fixes
one draw of everything uncertain about the level (a bootstrap or posterior draw), and the drawn
model then ``sample``s per-batch times. ``pass_effects`` gives the multiplicative slow/fast level of
each window of requests (the pass effect of docs/method.md), because machine-wide episodes, not
per-call noise, dominate the spread of Q@T.

Forward time is not service time (issue 5): :class:`WithOverheads` adds the serving stack's own
costs (:class:`~tqsim.whatif.overheads.ServingOverheads`), calibrated by
:func:`tqsim.serving_calibration.calibrate_serving` and stored as
``calibration/<system>/<workload>/serving.json``.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Callable, Mapping

import numpy as np

from tqsim.errors import UserError
from tqsim.whatif.overheads import ServingOverheads, rate_factor


class ServiceModel:
    """Service time of one batch on one replica of a fixed (threads, precision) configuration.

    Subclasses implement :meth:`sample`; the other hooks default to "no extra effect".
    """

    threads: int = 1
    precision: str = "fp32"

    def draw(self, rng: np.random.Generator) -> "ServiceModel":
        """One draw of the level uncertainty (posterior/bootstrap); the result is then sampled."""
        return self

    def sample(self, batch_sizes: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """Seconds of service for each batch of ``batch_sizes`` requests (no window effect)."""
        raise NotImplementedError

    def pass_effects(self, n: int, rng: np.random.Generator) -> np.ndarray:
        """Multiplicative level of each of ``n`` windows of requests (1 = typical)."""
        return np.ones(n)

    def extra_batch_s(self, n: int, rng: np.random.Generator) -> np.ndarray:
        """Additive delay of each of ``n`` batches (rare runtime pauses); zeros by default."""
        return np.zeros(n)

    def timer_lateness(self, n: int, rng: np.random.Generator) -> np.ndarray:
        """How late the batcher's max_wait timer fires, for ``n`` timer-closed batches."""
        return np.zeros(n)

    response_s: float = 0.0  # added to each request's latency after its batch ends; no replica busy
    frontend_s: float = 0.0  # per request at a serial front end before the batcher (an HTTP process)
    frontend_out_share: float = 0.0  # of frontend_s, spent again on the request's answer (simulator.serve_pool)
    batch_timer: str = "oldest"  # when max_wait runs out (simulator.serve_pool): "oldest" or "cycle"

    def min_service_s(self) -> float:
        """A lower bound of the service time of a batch of one (to refuse impossible deadlines)."""
        rng = np.random.default_rng(0)
        return float(np.min(self.sample(np.ones(256, dtype=np.int64), rng))) + self.response_s


def _groups(ks: np.ndarray):
    """(k, indices of ks equal to k) for every distinct k, in one sort instead of one scan per k."""
    flat = ks.ravel()
    order = np.argsort(flat, kind="stable")
    counts = np.bincount(flat)
    ends = np.cumsum(counts)
    for k in np.flatnonzero(counts):
        yield int(k), order[ends[k] - counts[k]:ends[k]]


class ConstantService(ServiceModel):
    """Deterministic service: ``base_s + per_item_s * (k - 1)``. M/D/1 in the tests."""

    def __init__(self, base_s: float, per_item_s: float = 0.0):
        self.base_s, self.per_item_s = float(base_s), float(per_item_s)

    def sample(self, batch_sizes, rng):
        return self.base_s + self.per_item_s * (np.asarray(batch_sizes, dtype=float) - 1)


class ExponentialService(ServiceModel):
    """Exponential service with mean ``base_s + per_item_s * (k - 1)``. M/M/c in the tests."""

    def __init__(self, base_s: float, per_item_s: float = 0.0):
        self.base_s, self.per_item_s = float(base_s), float(per_item_s)

    def sample(self, batch_sizes, rng):
        mean = self.base_s + self.per_item_s * (np.asarray(batch_sizes, dtype=float) - 1)
        return rng.exponential(mean)


class EmpiricalService(ServiceModel):
    """Service times resampled from calibration: no fit needed.

    Per calibrated batch size k the per-call latencies of every pass are split into the pass level
    (its median) and a residual ratio (latency / pass median). A sample is
    ``level_k * residual``; a window's effect is a resampled pass level relative to the pooled
    median; a draw resamples the passes (bootstrap) to carry the uncertainty of the centre. Batch
    sizes never calibrated are interpolated linearly in log batch size between the quantiles of the
    two neighbouring calibrated sizes (log-log extrapolation beyond the range, which is weak).
    """

    def __init__(self, per_call_s: Mapping[int, np.ndarray], threads: int = 1, precision: str = "fp32"):
        """``per_call_s[k]``: array [pass, call] (NaN allowed for missing calls) of forward times."""
        if not per_call_s:
            raise UserError("no calibrated batch sizes to build a service model from; run `tqsim calibrate`.")
        self.threads, self.precision = int(threads), precision
        self.sizes = np.array(sorted(int(k) for k in per_call_s))
        self.level_s: dict[int, float] = {}
        self.residual: dict[int, np.ndarray] = {}
        effects = []
        for k in self.sizes:
            lat = np.atleast_2d(np.asarray(per_call_s[k], dtype=float))
            med = np.nanmedian(lat, axis=1)
            keep = np.isfinite(med) & (med > 0)
            lat, med = lat[keep], med[keep]
            ratio = (lat / med[:, None]).ravel()
            self.residual[k] = np.sort(ratio[np.isfinite(ratio)])
            pooled = float(np.median(med))
            self.level_s[k] = pooled
            effects.append(np.log(med / pooled))
        # Passes of all batch sizes pooled: one set of pass effects (log scale, centred per size).
        self.log_pass_effect = np.concatenate(effects)
        self._level_mult = 1.0

    @classmethod
    def from_calibration_dir(cls, folder: Path, threads: int = 1, precision: str = "fp32",
                             backend: str = "torch", device: str = "cpu", drop_first: bool = True
                             ) -> "EmpiricalService":
        """Read every ``*.nc`` of a ``calibration/<system>/<workload>`` folder matching the factors.

        Full batches only (the last, partial batch is faster); the first batch of each pass is
        dropped because it pays the switch-configuration penalty a steady server never pays.
        """
        from tqsim.data.io import calibration_files, read_calibration
        from tqsim.data.schema import batch_latency

        per_call: dict[int, np.ndarray] = {}
        seen = []
        for path in calibration_files(folder):
            ds = read_calibration(path)
            a = ds.attrs
            levels = (int(a["threads"]), str(a["precision"]), str(a["backend"]), str(a["device"]))
            seen.append(levels)
            if levels != (int(threads), precision, backend, device) or bool(a.get("compile", False)):
                continue
            k = int(a["batch_size"])
            lat = batch_latency(ds).values  # [pass, batch]
            counts = np.bincount(ds["batch"].values)
            full = counts == k
            if drop_first and lat.shape[1] >= 3:
                full[0] = False
            if full.any():
                per_call[k] = lat[:, full]
        if not per_call:
            have = sorted(set(seen))
            hint = ", ".join(f"threads={t} {p} {b}/{d}" for t, p, b, d in have) or "nothing"
            raise UserError(f"no calibration for threads={threads} {precision} {backend}/{device} in {folder} "
                            f"(calibrated: {hint}); calibrate it, e.g. `tqsim calibrate --grid threads={threads}`.")
        return cls(per_call, threads, precision)

    def draw(self, rng):
        new = copy.copy(self)
        boot = rng.choice(self.log_pass_effect, size=self.log_pass_effect.size)
        # Centred: the draws spread around the calibrated level instead of shifting it (skewed effects).
        new._level_mult = float(np.exp(np.mean(boot) - np.mean(self.log_pass_effect)))
        return new

    def pass_effects(self, n, rng):
        return np.exp(rng.choice(self.log_pass_effect, size=n))

    def _quantile(self, k: int, u: np.ndarray) -> np.ndarray:
        r = self.residual[k]
        pos = np.clip(u * r.size - 0.5, 0, r.size - 1)
        lo = pos.astype(np.int64)
        hi = np.minimum(lo + 1, r.size - 1)
        return self.level_s[k] * (r[lo] + (pos - lo) * (r[hi] - r[lo]))

    def sample(self, batch_sizes, rng):
        ks = np.asarray(batch_sizes, dtype=np.int64).ravel()
        out = np.empty(ks.size, dtype=float)
        for k, sel in _groups(ks):
            n = sel.size
            if k in self.level_s:
                r = self.residual[k]
                out[sel] = self.level_s[k] * r[rng.integers(0, r.size, n)]
                continue
            u = rng.random(n)
            if self.sizes.size == 1:  # one size known: scale linearly in k (a rough, stated guess)
                k0 = int(self.sizes[0])
                out[sel] = self._quantile(k0, u) * k / k0
                continue
            i = int(np.clip(np.searchsorted(self.sizes, k), 1, self.sizes.size - 1))
            k1, k2 = int(self.sizes[i - 1]), int(self.sizes[i])
            w = (np.log(k) - np.log(k1)) / (np.log(k2) - np.log(k1))
            out[sel] = np.exp((1 - w) * np.log(self._quantile(k1, u)) + w * np.log(self._quantile(k2, u)))
        return (out * self._level_mult).reshape(np.shape(batch_sizes))


class ForecastService(ServiceModel):
    """Hook for the Bayesian forecast: service times from posterior predictive draws.

    ``draw_batch_latency(batch_size, threads, n, rng) -> seconds[n]`` returns ``n`` forward times of
    one posterior draw (pass effect included). Within one :meth:`draw` every batch size is asked
    with a generator seeded identically, so a callable that first picks its posterior draw with
    ``rng.integers`` picks the same draw for every batch size.
    """

    def __init__(self, draw_batch_latency: Callable[[int, int, int, np.random.Generator], np.ndarray],
                 threads: int = 1, precision: str = "fp32"):
        self.fn, self.threads, self.precision = draw_batch_latency, int(threads), precision
        self._seed = 0

    def draw(self, rng):
        new = copy.copy(self)
        new._seed = int(rng.integers(2**62))
        return new

    def sample(self, batch_sizes, rng):
        ks = np.asarray(batch_sizes, dtype=np.int64).ravel()
        out = np.empty(ks.size, dtype=float)
        for k, sel in _groups(ks):
            out[sel] = np.asarray(self.fn(int(k), self.threads, sel.size,
                                          np.random.default_rng(self._seed)), dtype=float)
        return out.reshape(np.shape(batch_sizes))


class WithOverheads(ServiceModel):
    """A forward-time model plus the serving stack's overheads (:class:`ServingOverheads`)."""

    def __init__(self, base: ServiceModel, overheads: ServingOverheads):
        self.base, self.oh = base, overheads
        self.threads, self.precision = base.threads, base.precision
        self.frontend_out_share = float(overheads.frontend_out_share)
        self.batch_timer = overheads.batch_timer
        self._late = np.asarray(overheads.timer_late_s or [0.0], dtype=float)
        self._pause = np.asarray(overheads.pause_s or [0.0], dtype=float)
        self._shape = np.sort(np.asarray(overheads.shape, dtype=float))
        self._by_size = {int(k): np.asarray(v, dtype=float) for k, v in (overheads.shape_by_size or {}).items()}
        self._stall = np.asarray(overheads.stall_shape, dtype=float)
        self._factor = 1.0
        self._run = 1.0
        self._stall_mult = 1.0  # this run's stall (and pause) rate over the pooled one
        self._on_machine()  # frontend_s and response_s, at no rate and the pooled level

    def at_rate(self, rate_rps: float) -> "WithOverheads":
        """This model at arrival rate ``rate_rps``: batches stretched by ``1 + inflation_s × rate``."""
        new = copy.copy(self)
        new._factor = rate_factor(self.oh.inflation_s, rate_rps, self.oh.inflation_until_rps)
        return new._on_machine()

    def _on_machine(self) -> "WithOverheads":
        """The front end shares the machine with the model: the arrival rate's slowdown stretches it too, and a run's
        level stretches every CPU cost of the run, front end and response path included. A slow run of an HTTP stack
        is slow where it saturates (LitServe's front end), which is where a slow run's tail comes from."""
        self.frontend_s = float(self.oh.frontend_s) * self._factor * self._run
        self.response_s = float(self.oh.response_s) * self._run
        return self

    def draw(self, rng):
        """One simulated run: a draw of the forward model and of the run's machine state."""
        new = copy.copy(self)
        new.base = self.base.draw(rng)
        new._run = self._run_level(rng)
        new._stall_mult = self._run_stall_multiplier(rng)
        return new._on_machine()

    def _run_stall_multiplier(self, rng: np.random.Generator) -> float:
        """The run's stall rate over the pooled rate: Gamma(1/φ, φ), φ a posterior draw; 1 if unmeasured."""
        draws = self.oh.stall_dispersion
        if not draws:
            return 1.0
        phi = float(draws[rng.integers(len(draws))])
        return float(rng.gamma(1.0 / phi, phi)) if phi > 1e-6 else 1.0

    def _run_level(self, rng: np.random.Generator) -> float:
        """The run's multiplicative service level, lognormal with mean 1. Its sd is itself uncertain
        (a few repeated runs measure it): σ² is drawn from its scaled-inverse-χ² posterior
        (``dof·s²/χ²_dof``, Gelman et al., BDA3 §3.2) so that the interval says how little is known."""
        sd, dof = self.oh.run_log_sd, int(self.oh.run_log_dof)
        if not sd or dof < 1:
            return 1.0
        sd = float(sd) * np.sqrt(dof / rng.chisquare(dof))
        return float(np.exp(rng.normal(-0.5 * sd * sd, sd)))

    def sample(self, batch_sizes, rng):
        k = np.asarray(batch_sizes, dtype=float)
        fwd = np.asarray(self.base.sample(batch_sizes, rng), dtype=float).ravel()
        if self._shape.size:  # keep the model's median per batch size, take the served spread
            p_stall = min(self.oh.stall_prob * self._stall_mult, 1.0) if self._stall.size else 0.0
            for size, idx in _groups(np.asarray(batch_sizes, dtype=np.int64).ravel()):
                shape = self._by_size.get(int(size), self._shape)
                rel = shape[rng.integers(0, shape.size, idx.size)]
                if p_stall > 0:
                    hit = rng.random(idx.size) < p_stall
                    rel[hit] = self._stall[rng.integers(0, self._stall.size, int(hit.sum()))]
                fwd[idx] = np.median(fwd[idx]) * rel
        return self._factor * self._run * (self.oh.scale * fwd.reshape(k.shape) + self.oh.per_batch_s
                                           + self.oh.per_request_s * k)

    def pass_effects(self, n, rng):
        sd = self.oh.window_log_sd
        if sd is not None:  # lognormal with mean 1: the serving runs' own window-to-window level
            return np.exp(rng.normal(-0.5 * sd * sd, sd, n))
        e = np.asarray(self.base.pass_effects(n, rng), dtype=float)
        if self._shape.size:  # the served spread already holds the serving runs' level: keep the mean at 1
            e = e / np.mean(self.base.pass_effects(4096, np.random.default_rng(1)))
        return e

    def extra_batch_s(self, n, rng):
        if self.oh.pause_prob <= 0:
            return np.zeros(n)
        hit = rng.random(n) < min(self.oh.pause_prob * self._stall_mult, 1.0)
        out = np.zeros(n)
        out[hit] = rng.choice(self._pause, size=int(hit.sum()))
        return out

    def timer_lateness(self, n, rng):
        return rng.choice(self._late, size=n)
