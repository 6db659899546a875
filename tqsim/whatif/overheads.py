"""The serving stack's own costs (:class:`ServingOverheads`) and their fit from loaded serving runs.

The estimators read :class:`~tqsim.data.serving_run.ServingRun` records (arrays), never the server
that made them; the model they fit is described in docs/method.md, "Serving what-if".
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np

from tqsim.data.serving_run import ServingRun
from tqsim.data.serving_store import OWN_STACK, nearest_setup

STALL_RATIO = 5.0  # a batch stalls when its in-server forward time exceeds 5x its batch size's median
MIN_SIZE_BATCHES = 200  # a batch size served this often in request logs gets its own served distribution


BEYOND_FITTED = 1.25  # a what-if rate this far above the busiest fitted run is noted as extrapolated


@dataclasses.dataclass
class ServingOverheads:
    """The serving stack's own costs, measured by short real serving runs.

    Service of a batch of k = ``scale * forward(k) + per_batch_s + per_request_s * k`` (+ a pause
    with probability ``pause_prob``); the max_wait timer fires late by a draw of
    ``timer_late_s``; ``response_s`` is added to every request after its batch (completion
    callback, hand-off) without keeping the replica busy.

    ``shape`` (quantiles of in-server forward time / its median), when given, replaces the spread
    of the forward-time model around its median: the forward calibration then says how the median
    moves with batch size, threads and precision, the serving runs how in-server calls spread (a tight
    timing loop and a loaded server spread differently; docs/method.md).

    ``inflation_s`` (g) stretches every batch by ``1 + g λ`` at arrival rate λ: in one Python
    process the request driver and the replicas contend for the GIL, more so the more requests
    arrive (:meth:`~tqsim.whatif.service.WithOverheads.at_rate`). Fitted from request logs with a measured
    capacity, g may be negative up to ``inflation_until_rps`` (:func:`rate_factor`).
    """

    scale: float = 1.0
    per_batch_s: float = 0.0
    per_request_s: float = 0.0
    response_s: float = 0.0
    timer_late_s: list = dataclasses.field(default_factory=lambda: [0.0])
    pause_prob: float = 0.0
    pause_s: list = dataclasses.field(default_factory=list)
    shape: list = dataclasses.field(default_factory=list)
    # per batch size served often in request logs: quantiles of its in-server forward time over scale × the
    # calibrated median (its own level and spread: on tqsim's server batch 1 ran 3.3x its calibration, batch 8 2.3x)
    shape_by_size: dict = dataclasses.field(default_factory=dict)
    inflation_s: float = 0.0  # g: service × (1 + g × arrival rate), contention with the request driver
    # g < 0 (fitted from logs with a measured capacity): a server that runs faster the busier it is stops speeding
    # up at this rate, its measured capacity (rate_factor)
    inflation_until_rps: float | None = None
    # sd of the served level between windows of requests, measured in the serving runs (None: use the
    # forward calibration's pass effects, whose spread between timed passes is several times larger:
    # on the 2-vCPU VM it over-forecast p99 at 50-100 % load by 1.6-80x, benchmarks/RESULTS.md)
    window_log_sd: float | None = None
    # sd of a whole run's served level from one run to the next at the same rate (the machine's state
    # for the minute: repeats of one load level here differed 6-76 % in p99 on a calm hour), pooled
    # over repeated serving-calibration runs, with its degrees of freedom; None: not measured
    run_log_sd: float | None = None
    run_log_dof: int = 0
    # Stalls: in-server forward calls beyond STALL_RATIO × their median (``stall_shape``, as ratios to
    # the median; ``shape`` is then the body without them), a fraction ``stall_prob`` of batches
    # pooled over the calibration runs. A run's stall rate (and pause rate) is that times a Gamma
    # draw of mean 1 and variance φ, φ drawn from ``stall_dispersion`` (posterior draws; [] = the
    # pooled rate in every run): repeated runs at one rate here differed 20x in stalls and 4x in p99.
    stall_prob: float = 0.0
    stall_shape: list = dataclasses.field(default_factory=list)
    stall_dispersion: list = dataclasses.field(default_factory=list)
    # a serial front end every request passes before the batcher (an HTTP server process), seconds per request;
    # fitted from request logs (tqsim.whatif.log_fit), 0 for tqsim's in-process server
    frontend_s: float = 0.0
    # the share of frontend_s the front end spends on each request's answer, when its batch is done (one event loop
    # reads requests and sends answers: near its capacity each waits for the other); fitted from request logs
    frontend_out_share: float = 0.0
    # when the batcher's max_wait runs out: "oldest" (from the oldest request's arrival, tqsim's server) or "cycle"
    # (windows from when a free replica starts collecting, back to back: LitServe); chosen by the log fit
    batch_timer: str = "oldest"
    source: str = ""
    rates_rps: list = dataclasses.field(default_factory=list)  # the arrival rates of the runs fitted (req/s)

    def beyond_fitted(self, rates_rps) -> str | None:
        """A note when a what-if asks for rates well above the busiest fitted run (× ``BEYOND_FITTED``): what
        happens only near the knee (a front end that stalls, a slow minute that outruns the server) was never in
        the fit, and runs there missed their intervals 5-20× in the benchmarks (docs/method.md)."""
        top = max(self.rates_rps, default=0.0)
        above = sorted(r for r in rates_rps if top and r is not None and r > BEYOND_FITTED * top)
        if not above:
            return None
        return (f"{', '.join(f'{r:g}' for r in above)} req/s is beyond the busiest serving run fitted ({top:.0f} "
                "req/s): bursts that only happen near the knee are not in the fit, so the interval is that of a run "
                "without one; calibrate at a load near the one you plan for.")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping) -> "ServingOverheads":
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})



def load_overheads(folder: Path, replicas: int, threads: int, stack: str = OWN_STACK
                   ) -> tuple[ServingOverheads | None, str]:
    """Overheads calibrated for this serving set-up of ``stack``, else the nearest one with the same threads.

    Returns ``(overheads or None, note)``; the note says what was used, for the user.
    """
    entry, note = nearest_setup(folder, replicas, threads, stack)
    return (ServingOverheads.from_dict(entry) if entry is not None else None), note


def fit_overheads(runs: Sequence[ServingRun], forward, window: int | None = None) -> ServingOverheads:
    """Fit :class:`ServingOverheads` from loaded runs and the calibrated forward-time model ``forward``.

    Forward time is not service time: scale, per-batch and per-request costs, timer lateness, pauses,
    the served spread and stalls are read where requests are served, every term on busy / (1 + g λ).
    ``window``: requests per window for :func:`window_log_sd` (None: not measured).
    """
    g = fit_inflation(runs)
    k = np.concatenate([r.batch_size for r in runs])
    infl = np.concatenate([np.full(r.batch_size.size, 1 + g * r.rate_rps) for r in runs])
    fwd = np.concatenate([r.batch_forward_s for r in runs]) / infl
    busy = np.concatenate([r.batch_busy_s for r in runs]) / infl
    late = np.concatenate([r.batch_timer_late_s for r in runs])
    sizes = np.unique(k)
    served = served_forward(k, fwd, forward)
    scale, med_fwd, rel, stalled, shape = served.scale, served.median_s, served.rel, served.stalled, served.shape
    over = busy - fwd
    med_k = np.array([np.median(over[k == s]) for s in sizes])
    w = np.array([np.sum(k == s) for s in sizes], dtype=float)
    if sizes.size >= 2:
        slope, icpt = np.polyfit(sizes.astype(float), med_k, 1, w=np.sqrt(w))
        slope = max(float(slope), 0.0)
        icpt = float(np.average(med_k - slope * sizes, weights=w))
    else:
        slope, icpt = 0.0, float(med_k[0] - 0.0)
    per_request = slope
    per_batch = max(icpt, 0.0)
    # Pauses of the serving stack itself (not forward outliers, which ``shape`` holds): overheads
    # far beyond their typical size.
    typical = np.array([max(float(np.median(over[k == s])), 0.0) for s in k])
    pause = (over > 20 * typical) & (over > 2e-3)
    late = late[np.isfinite(late)]
    late_q = np.quantile(np.maximum(late, 0.0), np.linspace(0.005, 0.995, 100)).tolist() if late.size else [0.0]
    run_sd, run_dof = run_log_sd(runs, g)
    return ServingOverheads(scale=scale, per_batch_s=per_batch, per_request_s=per_request, response_s=0.0,
                            timer_late_s=late_q, pause_prob=float(pause.mean()),
                            pause_s=(over[pause] - typical[pause]).tolist(), shape=shape, inflation_s=g,
                            window_log_sd=window_log_sd(runs, med_fwd, window) if window else None,
                            run_log_sd=run_sd, run_log_dof=run_dof,
                            stall_prob=float(stalled.mean()), stall_shape=np.sort(rel[stalled]).tolist(),
                            stall_dispersion=stall_dispersion_draws(runs, stalled | pause))


@dataclasses.dataclass
class ServedForward:
    """In-server forward times against the calibrated ones: the level (``scale``), the body's spread around each
    batch size's median (``shape``, quantiles of the ratio) and the stalls (ratio > STALL_RATIO), kept whole since
    their rate is what moves from one run to the next."""

    scale: float
    median_s: dict
    rel: np.ndarray
    stalled: np.ndarray
    shape: list
    by_size: dict  # batch size -> quantiles of its served forward time over scale × the calibrated median


def served_forward(k: np.ndarray, fwd: np.ndarray, forward, run: np.ndarray | None = None) -> ServedForward:
    """:class:`ServedForward` of batches of sizes ``k`` that took ``fwd`` seconds, against the model ``forward``.

    ``run`` (each batch's run): the spread is then each batch against its own run's median at its size, for a model
    that draws the run's level apart (one slow run would otherwise put its whole level into every batch's spread).
    """
    sizes = np.unique(k)
    cal = {int(s): float(np.median(forward.sample(np.full(4000, int(s)), np.random.default_rng(0)))) for s in sizes}
    scale = float(np.median(fwd / np.array([cal[int(s)] for s in k])))
    med_fwd = {int(s): float(np.median(fwd[k == s])) for s in sizes}
    rel = fwd / np.array([med_fwd[int(s)] for s in k])
    if run is not None:
        for key in np.unique(np.stack([run, k]), axis=1).T:
            mine = (run == key[0]) & (k == key[1])
            rel[mine] = fwd[mine] / np.median(fwd[mine])
    stalled = rel > STALL_RATIO
    shape = np.quantile(rel[~stalled], np.linspace(0.0005, 0.9995, 1000)).tolist()
    by_size = {}
    if run is not None:  # sizes served often enough: their own level against the calibration, and their own spread
        for s in sizes:
            mine = (k == s) & ~stalled
            if mine.sum() >= MIN_SIZE_BATCHES:
                by_size[int(s)] = np.quantile(rel[mine] * med_fwd[int(s)] / (scale * cal[int(s)]),
                                              np.linspace(0.0025, 0.9975, 200)).tolist()
    return ServedForward(scale, med_fwd, rel, stalled, shape, by_size)


def stall_dispersion_draws(runs: Sequence[ServingRun], stalled: np.ndarray, n_draws: int = 400,
                           seed: int = 0) -> list[float]:
    """Posterior draws of φ, the variance of a run's stall-rate multiplier (Gamma, mean 1) across runs.

    Repeated runs at one rate differ many-fold in stalls, and stalls set p99. ``stalled`` flags the
    batches of all runs, concatenated in run order; [] without repeated rates.
    """
    from scipy.special import gammaln

    sizes = np.array([r.batch_size.size for r in runs], dtype=float)
    per_run = np.array([flags.sum() for flags in np.split(stalled, np.cumsum(sizes[:-1]).astype(int))], dtype=float)
    by_rate: dict[float, list[int]] = {}
    for i, r in enumerate(runs):
        by_rate.setdefault(round(float(r.rate_rps), 1), []).append(i)
    groups = []
    for idx in by_rate.values():
        if len(idx) < 2:
            continue
        n, counts = sizes[idx], per_run[idx]
        if counts.sum() > 0 and n.min() > 0:
            groups.append((counts, n / n.mean()))
    if not groups:
        return []
    phi = np.r_[1e-6, np.geomspace(1e-3, 20.0, 600)]
    loglik = np.zeros_like(phi)
    for counts, expo in groups:
        alpha = expo[None, :] / phi[:, None]  # [grid, run]
        loglik += (gammaln(alpha.sum(1)) - gammaln(counts.sum() + alpha.sum(1))
                   + np.sum(gammaln(counts[None, :] + alpha) - gammaln(alpha), axis=1))
    return grid_draws(phi, loglik - phi, n_draws, seed)  # Exponential(1) prior on φ


MIN_RATE_FACTOR = 0.5  # no server is taken to run more than twice as fast busy as idle


def rate_factor(g: float, rate_rps: float, until_rps: float | None = None) -> float:
    """How much the arrival rate stretches a batch: ``1 + g λ``. A negative g (tqsim's server on a 2-vCPU VM ran
    its forward calls 25 % faster saturated than at a fifth of its capacity) stops at ``until_rps``, the measured
    capacity: a saturated server is as busy as it gets."""
    if g < 0 and until_rps:
        rate_rps = min(float(rate_rps), float(until_rps))
    return max(1.0 + float(g) * float(rate_rps), MIN_RATE_FACTOR)


def grid_draws(grid: np.ndarray, logpost: np.ndarray, n_draws: int, seed: int = 0) -> list[float]:
    """Stratified draws from a posterior known on a grid (log density ``logpost`` at ``grid``), by its CDF."""
    w = np.exp(logpost - logpost.max()) * np.gradient(grid)
    cdf = np.cumsum(w) / w.sum()
    u = (np.arange(n_draws) + np.random.default_rng(seed).random(n_draws)) / n_draws
    return np.round(np.interp(u, cdf, grid), 5).tolist()


def run_log_sd(runs: Sequence[ServingRun], g: float) -> tuple[float | None, int]:
    """Pooled sd, between repeated runs at one rate, of a run's served level, with its dof; (None, 0) without repeats.

    The machine's state for the minute moves every batch of a run together, which per-batch noise cannot.
    """
    by_rate: dict[float, list[ServingRun]] = {}
    for r in runs:
        by_rate.setdefault(round(float(r.rate_rps), 1), []).append(r)
    sq, dof = 0.0, 0
    for rate, group in by_rate.items():
        if len(group) < 2:
            continue
        per_run = [np.log(r.batch_busy_s / (1 + g * rate)) for r in group]
        k, busy = np.concatenate([r.batch_size for r in group]), np.concatenate(per_run)
        med = {int(s): float(np.median(busy[k == s])) for s in np.unique(k)}
        levels = np.array([np.median(b - np.array([med[int(s)] for s in r.batch_size]))
                           for r, b in zip(group, per_run)])
        sq += float(np.sum((levels - levels.mean()) ** 2))
        dof += len(group) - 1
    return (float(np.sqrt(sq / dof)), dof) if dof else (None, 0)


def window_log_sd(runs: Sequence[ServingRun], med_fwd: dict, window: int, min_windows: int = 4) -> float | None:
    """Pooled within-run sd of per-window mean log(forward / median at its batch size); None if too few windows.

    How much a "pass" moves while serving, measured where it is served, not in the timing loop.
    """
    sq, dof, n_windows = 0.0, 0, 0
    for r in runs:
        order = np.argsort(r.batch_close_s, kind="stable")
        k = r.batch_size[order]
        rel = np.log(r.batch_forward_s[order] / np.array([med_fwd.get(int(s), np.nan) for s in k]))
        ok = np.isfinite(rel)
        win = ((np.cumsum(k) - k) // max(int(window), 1))[ok]
        counts = np.bincount(win)
        means = (np.bincount(win, weights=rel[ok]) / np.maximum(counts, 1))[counts > 0]
        n_windows += means.size
        if means.size >= 2:
            sq += float(np.sum((means - means.mean()) ** 2))
            dof += means.size - 1
    return float(np.sqrt(sq / dof)) if n_windows >= min_windows and dof > 0 else None


def _robust_mean(x: np.ndarray) -> float:
    """Mean of the values up to the 99.5th percentile: stalls count, a single freak pause does not."""
    return float(np.mean(np.minimum(x, np.quantile(x, 0.995))))


def fit_inflation(runs: Sequence[ServingRun], min_batches: int = 20) -> float:
    """g of ``busy ∝ 1 + g λ`` from pairs of runs at different rates (weighted median over batch sizes); ≥ 0.

    The request driver and the replicas share one GIL, so batches stretch with the arrival rate. Means,
    not medians: contention shows as more frequent stalls, and the mean sets utilisation and saturation.
    """
    est, weight = [], []
    for i, lo in enumerate(runs):
        for hi in runs[i + 1:]:
            a, b = (lo, hi) if lo.rate_rps < hi.rate_rps else (hi, lo)
            if b.rate_rps <= a.rate_rps * 1.2:
                continue
            for s in np.intersect1d(a.batch_size, b.batch_size):
                ma, mb = a.batch_size == s, b.batch_size == s
                if ma.sum() < min_batches or mb.sum() < min_batches:
                    continue
                ratio = _robust_mean(b.batch_busy_s[mb]) / _robust_mean(a.batch_busy_s[ma])
                den = b.rate_rps - ratio * a.rate_rps
                if den > 0:
                    est.append((ratio - 1) / den)
                    weight.append(min(ma.sum(), mb.sum()))
    if not est:
        return 0.0
    order = np.argsort(est)
    cw = np.cumsum(np.asarray(weight, float)[order])
    return max(float(np.asarray(est)[order][np.searchsorted(cw, cw[-1] / 2)]), 0.0)  # weighted median
