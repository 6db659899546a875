"""Posterior + configuration -> predictive latency, Q@T and tail quality (the ``predict`` object).

For each posterior draw, simulate a run of ``n_passes`` passes made in another session: the
configuration's level (its own if calibrated, its GP conditional if not), a fresh session effect
(or the one a check measured), each pass's deviation drawn from the configuration's pass quantile
function, each batch from its within-pass quantile function (the first batch from its own), a
partial last batch shifted along the level surface; every instance gets its batch's latency, late
instances score 0, and Q@T is scored with the per-instance scores of the configuration's
quality-relevant levels. Every reported quantity is a per-draw statistic summarised by its
posterior mean and a 90 % interval over draws.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np

from tqsim.errors import UserError
from tqsim.factors import Config
from tqsim.models.fit import REFIT, shortfall
from tqsim.models.summaries import pscale
from tqsim.data.schema import batch_layout, call_latency
from tqsim.models.store import FittedModel, quality_level_id
from tqsim.quality import (INTERVAL, Threshold, no_deadline_quality, parse_thresholds, quality_at_deadline,
                           tail_quality)

PERCENTILES = (("p50", 50.0), ("p90", 90.0), ("p99", 99.0), ("p99.9", 99.9))
RESID_CAP = 8.0


@dataclass(frozen=True)
class Interval:
    """A per-draw statistic over the posterior: mean, median (the point forecast: it minimises the expected
    absolute error, and a tail percentile's predictive is right-skewed) and the central interval."""

    mean: float
    median: float
    lo: float
    hi: float

    @classmethod
    def of(cls, x: np.ndarray, level: float = INTERVAL) -> "Interval":
        a = (1 - level) / 2
        return cls(float(np.mean(x)), float(np.median(x)), float(np.quantile(x, a)), float(np.quantile(x, 1 - a)))

    def as_dict(self) -> dict[str, float]:
        return {"mean": self.mean, "median": self.median, "lo": self.lo, "hi": self.hi}


@dataclass(frozen=True)
class QualityAt:
    """Q@T of forecast runs at one deadline: its mean over passes, tail quality TQ_q and minimum, per draw."""

    threshold: str
    threshold_s: float
    tail_q: float
    mean: Interval
    tail: Interval
    minimum: Interval

    def as_dict(self) -> dict:
        out = {"threshold": self.threshold, "threshold_s": self.threshold_s, "tail_q": self.tail_q}
        for key, iv in (("mean", self.mean), ("tail", self.tail), ("min", self.minimum)):
            out.update({key: iv.mean, f"{key}_median": iv.median, f"{key}_lo": iv.lo, f"{key}_hi": iv.hi})
        return out


@dataclass
class Forecast:
    """Simulated runs of one configuration (``latency_s[draw, pass, instance]``, ``qat[draw, pass, k]``) and
    their summaries; ``as_dict()`` is the ``predict`` JSON object (docs/design.md)."""

    system: str
    workload: str
    config: Config
    latency_s: np.ndarray
    qat: np.ndarray
    thresholds_s: np.ndarray           # [k]
    threshold_labels: list[str]
    calibrated: bool
    latency: dict[str, Interval]       # "p50", "p90", "p99", "p99.9" of a run's per-instance latency
    quality: list[QualityAt]           # one per threshold
    metric: str
    no_deadline: float                 # quality when nothing is late
    passes_per_run: int
    family: str
    session: str                       # which session the runs are forecast for
    warnings: list[str] = field(default_factory=list)
    diagnostics_ok: bool = True
    tail_q: float = 0.01

    def as_dict(self) -> dict:
        return {"system": self.system, "workload": self.workload, "config": self.config.as_dict(),
                "config_id": self.config.id, "calibrated": bool(self.calibrated), "interval": INTERVAL,
                "latency_s": {name: iv.as_dict() for name, iv in self.latency.items()},
                "quality": {"metric": self.metric, "no_deadline": self.no_deadline,
                            "thresholds": [q.as_dict() for q in self.quality]},
                "passes_per_run": self.passes_per_run, "draws": int(self.latency_s.shape[0]), "family": self.family,
                "session": self.session, "diagnostics_ok": bool(self.diagnostics_ok), "warnings": list(self.warnings)}

    def to_dict(self) -> dict:
        """The JSON contract of ``tqsim predict --json`` (the same object as :meth:`as_dict`)."""
        return self.as_dict()

    def to_xarray(self):
        """The simulated runs as a self-describing ``xarray.Dataset``: ``latency_s[draw, pass, instance]``,
        ``qat[draw, pass, threshold]``, and their summaries over draws (``latency[percentile, stat]``,
        ``quality_mean``/``quality_tail``/``quality_min[threshold, stat]``, stat = mean, median, lo, hi);
        what was forecast (system, workload, configuration, session, metric, ...) in the attributes."""
        import json

        import xarray as xr

        stats = ["mean", "median", "lo", "hi"]

        def table(ivs):
            return np.array([[getattr(iv, s) for s in stats] for iv in ivs], float)

        ds = xr.Dataset(
            {"latency_s": (("draw", "pass", "instance"), self.latency_s,
                           {"units": "s", "long_name": "latency of each instance in each pass of a simulated run"}),
             "qat": (("draw", "pass", "threshold"), self.qat,
                     {"long_name": f"{self.metric} at the deadline (late instances count as wrong), per pass"}),
             "latency": (("percentile", "stat"), table(self.latency.values()),
                         {"units": "s", "long_name": "a run's latency percentile over draws"}),
             "quality_mean": (("threshold", "stat"), table(q.mean for q in self.quality),
                              {"long_name": "mean Q@T of a run over draws"}),
             "quality_tail": (("threshold", "stat"), table(q.tail for q in self.quality),
                              {"long_name": f"tail quality TQ_{self.tail_q:g} of a run over draws"}),
             "quality_min": (("threshold", "stat"), table(q.minimum for q in self.quality),
                             {"long_name": "minimum Q@T of a run over draws"})},
            coords={"draw": np.arange(self.latency_s.shape[0]), "pass": np.arange(self.latency_s.shape[1]),
                    "instance": np.arange(self.latency_s.shape[2]), "threshold": list(self.threshold_labels),
                    "threshold_s": ("threshold", np.asarray(self.thresholds_s, float), {"units": "s"}),
                    "percentile": list(self.latency), "stat": stats})
        ds.attrs.update({"system": self.system, "workload": self.workload, "config_id": self.config.id,
                         "config": json.dumps(self.config.as_dict()), "calibrated": int(self.calibrated),
                         "metric": self.metric, "no_deadline_quality": float(self.no_deadline),
                         "tail_q": float(self.tail_q), "interval": INTERVAL, "passes_per_run": int(self.passes_per_run),
                         "family": self.family, "session": self.session, "diagnostics_ok": int(self.diagnostics_ok),
                         "warnings": json.dumps(list(self.warnings)),
                         "description": "tqsim forecast: posterior-predictive simulated runs of one configuration; "
                                        "stat lo/hi bound the central interval given by the interval attribute"})
        return ds


def quantile_draws(knots_u: np.ndarray, values: np.ndarray, u: np.ndarray) -> np.ndarray:
    """Evaluate per-draw quantile functions (``values[D, K]`` at ``knots_u[K]``, sorted per draw: the
    rearrangement of Chernozhukov et al. 2010) at ``u[D, ...]``: piecewise linear on :func:`pscale`,
    extended linearly beyond the end knots, capped at ±RESID_CAP."""
    q = np.sort(values, axis=1)
    zk = pscale(knots_u)
    z = pscale(u)
    D = q.shape[0]
    flat = z.reshape(D, -1)
    if zk.size == 1:
        return np.broadcast_to(q[:, :1], flat.shape).reshape(z.shape).copy()
    idx = np.clip(np.searchsorted(zk, flat), 1, zk.size - 1)
    lo, hi = np.take_along_axis(q, idx - 1, 1), np.take_along_axis(q, idx, 1)
    slope = (hi - lo) / (zk[idx] - zk[idx - 1])
    out = lo + slope * (flat - zk[idx - 1])
    return np.clip(out, -RESID_CAP, RESID_CAP).reshape(z.shape)


def _qf(shapes: dict[str, np.ndarray], kind: str, fixed: dict[float, float] | None = None):
    """The knots and per-draw values of one quantile function (``within``, ``pass``, ``first``)."""
    from tqsim.models.summaries import knot

    pts = {knot(name): v for name, v in shapes.items() if name.startswith(kind + ":") and knot(name) is not None}
    D = next(iter(shapes.values())).shape[0] if shapes else 1
    for u, v in (fixed or {}).items():
        pts.setdefault(u, np.full(D, v))
    if not pts:
        return None
    u = np.array(sorted(pts))
    return u, np.stack([pts[k] for k in u], axis=1)


def call_offsets(shapes: dict[str, np.ndarray], u: np.ndarray) -> np.ndarray:
    """Each call's log latency around its pass level at probability levels ``u[D, ...]``: the body's quantile
    function below ``1 − π`` and the stalls' above it, ``π`` the configuration's stall share (a mixture split
    at ``STALL_X``; models fitted before stalls were summarised have none and use the within quantiles)."""
    from tqsim.models.summaries import STALL_X

    body = _qf(shapes, "within", fixed={0.5: 0.0})
    if "stall:share" not in shapes:
        return quantile_draws(*body, u)
    D = u.shape[0]
    pi = (1.0 / (1.0 + np.exp(-np.asarray(shapes["stall:share"], float)))).reshape((D,) + (1,) * (u.ndim - 1))
    cut = 1.0 - pi
    is_stall = u > cut
    out = np.minimum(quantile_draws(*body, np.where(is_stall, 0.5, u / cut)), STALL_X)
    stall = _qf(shapes, "stall")
    if stall is None:
        far = np.full(u.shape, STALL_X)
    else:
        far = np.maximum(quantile_draws(*stall, np.where(is_stall, (u - cut) / pi, 0.5)), STALL_X)
    return np.where(is_stall, far, out)


def within_pass_u(slow_sd: np.ndarray | None, D: int, n_passes: int, nb: int,
                  rng: np.random.Generator) -> np.ndarray:
    """``[D, pass, batch]`` probability levels of the calls of each simulated pass. With ``slow_sd`` (the
    configuration's logit-scale sd of its passes' slow share), a pass draws its share
    ``f = logistic(c + s·z)`` — ``c`` set so that the share averages 0.1, which keeps the pooled
    quantile function exactly — and each call is slow (``u`` in [0.9, 1)) with probability ``f``."""
    from tqsim.models.summaries import SLOW_U

    v = rng.random((D, n_passes, nb))
    if slow_sd is None:
        return v
    s = np.clip(np.asarray(slow_sd, float), 0.0, 5.0)
    c = logit_centre(s, 1 - SLOW_U)
    f = 1.0 / (1.0 + np.exp(-(c[:, None] + s[:, None] * rng.standard_normal((D, n_passes)))))
    slow = rng.random((D, n_passes, nb)) < f[:, :, None]
    return np.where(slow, SLOW_U + (1 - SLOW_U) * v, SLOW_U * v)


def logit_centre(s: np.ndarray, mean: float) -> np.ndarray:
    """``c`` with ``E[logistic(c + s·Z)] = mean``, Z ~ N(0, 1), per entry of ``s`` (Gauss–Hermite, Newton)."""
    x, w = np.polynomial.hermite_e.hermegauss(40)
    w = w / w.sum()
    c = np.full(np.shape(s), math.log(mean / (1 - mean)))
    for _ in range(30):
        p = 1.0 / (1.0 + np.exp(-(c[..., None] + np.asarray(s)[..., None] * x)))
        g = (p * w).sum(-1) - mean
        c = c - g / np.maximum((p * (1 - p) * w).sum(-1), 1e-12)
    return c


def simulate_latency(fm: FittedModel, config: Config, *, n_passes: int = 100, n_draws: int = 200,
                     seed: int = 0, n_instances: int | None = None,
                     session: np.ndarray | None = None,
                     state: tuple[np.ndarray, dict[str, np.ndarray]] | None = None,
                     tail_drift: bool | None = None) -> tuple[np.ndarray, bool]:
    """Predictive instance latencies ``[draw, pass, instance]`` (seconds) and whether ``config`` was calibrated.

    ``session``: ``[D]`` draws (or ``[D, n_passes]``) of the run's machine state relative to the
    calibration's average; by default a fresh session (:func:`tqsim.models.conditional.session_offset`).
    ``state``: the configuration's level ``[D]`` and shape summaries ``{name: [D]}`` already drawn (jointly
    with other configurations' by :meth:`~tqsim.models.conditional.Conditional.joint`); by default drawn here.
    ``tail_drift``: stretch the run's tail as a new session's may be (:func:`~tqsim.models.conditional.
    tail_stretch_draws`); by default when ``session`` is drawn here (a check observes a session's level, not its
    tail, so its callers say True)."""
    from tqsim.data.schema import level_batches
    from tqsim.models.conditional import conditional, session_offset, tail_stretch_draws
    from tqsim.models.summaries import batch_size_covariate

    rng = np.random.default_rng(seed)
    cond = conditional(fm, n_draws)
    D = cond.D
    n = int(n_instances or fm.n_instances)
    bs = int(config.batch_size)
    batch = batch_layout(n, bs)
    nb = int(batch[-1]) + 1
    counts = np.bincount(batch, minlength=nb)
    calibrated = config.id in [c["id"] for c in fm.configs]
    mu = cond.level([config], noise=True, rng=rng)[:, 0] if state is None else state[0]    # [D]
    new_tail = session is None if tail_drift is None else tail_drift
    if session is None:
        session = session_offset(fm, cond.post, rng)
    session = np.asarray(session, float)
    offset = session[:, None] if session.ndim == 1 else session
    shapes = cond.shapes(config, rng) if state is None else state[1]
    # the pass levels
    pass_qf = _qf(shapes, "pass", fixed={0.5: 0.0})
    dev = quantile_draws(*pass_qf, rng.random((D, n_passes))) if pass_qf else np.zeros((D, n_passes))
    level = mu[:, None] + offset + dev                                                    # [D, P]
    lb = level_batches(counts, bs)
    if lb.size > 1:
        # every batch around its pass level; a pass's share of slow calls (above the within 0.9 quantile)
        # varies between passes as the configuration's did (logit-normal, mean 0.1), not binomially
        log_t = level[:, :, None] + call_offsets(shapes, within_pass_u(shapes.get("slow:sd"), D, n_passes, nb, rng))
    else:   # one level batch a pass: it is the pass level, whose quantile function holds all its spread
        log_t = np.broadcast_to(level[:, :, None], (D, n_passes, nb)).copy()
    if "size:slope" in shapes and fm.instance_size is not None and fm.spec.size_sd > 0 and n == fm.n_instances:
        z = batch_size_covariate(fm.instance_size, batch, fm.spec.size_mean, fm.spec.size_sd)
        log_t += shapes["size:slope"][:, None, None] * (z - np.median(z[lb]))[None, None, :]
    first = _qf(shapes, "first")
    if first is not None and lb.size and lb[0] > 0:
        log_t[:, :, 0] = level + quantile_draws(*first, rng.random((D, n_passes)))
    last = int(counts[-1])
    if last < bs:  # a partial last batch moves along the level surface from bs to its own size
        log_t[:, :, -1] += partial_batch_shift(cond, config, last)[:, None]
    if new_tail:
        # every call above the run's median moves away from it by the factor e^ε (its own generator: the rest of
        # the simulation stays as it was)
        eps = tail_stretch_draws(fm.summaries, D, np.random.default_rng([seed, 7]))
        med = np.median(log_t.reshape(D, -1), axis=1)[:, None, None]
        above = log_t - med
        log_t = np.where(above > 0, med + above * np.exp(eps)[:, None, None], log_t)
    return np.exp(log_t)[:, :, batch], calibrated


def partial_batch_shift(cond, config: Config, last: int) -> np.ndarray:
    """``[D]``: how much faster (log) a partial last batch of ``last`` instances is than a full one: the level
    surface's own change from ``config.batch_size`` to ``last`` (conditional means)."""
    pair = cond.level([config.replace(batch_size=last), config], noise=False)
    return pair[:, 0] - pair[:, 1]


def check_run_options(n_passes: int, n_draws: int, tail_q: float) -> None:
    """Refuse simulation sizes and a tail quantile no forecast can use (the messages name the usual values)."""
    if not (isinstance(n_passes, (int, np.integer)) and 1 <= n_passes <= 100_000):
        raise UserError(f"--passes {n_passes}: a simulated run needs 1 to 100,000 passes (100 is usual).")
    if not 0 < tail_q < 1:
        raise UserError(f"--tail-q {tail_q}: must lie strictly between 0 and 1 (0.01 is usual).")
    if not 1 <= n_draws <= 10_000:
        raise UserError(f"--draws {n_draws}: use 1 to 10,000 posterior draws (200 is usual).")


def scoring_of_config(fm: FittedModel, config: Config) -> dict:
    """The per-instance scores (and prediction + label for macro-F1) of ``config``'s quality-relevant levels;
    refused when no calibrated configuration had those levels (its quality is unknown)."""
    level = quality_level_id(config.as_dict())
    if level not in fm.quality_levels:
        raise UserError(f"quality-relevant levels {level} were never calibrated (calibrated: "
                        f"{', '.join(sorted(fm.quality_levels))}); calibrate a configuration with them first.")
    return fm.quality_levels[level]


def fit_warnings(fm: FittedModel, force: bool) -> list[str]:
    """What the fit's diagnostics mean for anything computed from it: a failed fit is refused unless ``force``
    (then a warning in capitals), a usable but unclean one gets a caution."""
    if not fm.diagnostics_ok:
        what = shortfall(fm.diagnostics)
        if not force:
            raise UserError(f"the fit failed its diagnostics ({what}); refit with more draws "
                            f"(`{REFIT}`) or forecast anyway with --force.")
        return [f"FORECAST FROM A FIT THAT FAILED ITS DIAGNOSTICS ({what}); do not trust the intervals."]
    if fm.diagnostics.get("status") == "warn":
        return [f"the fit is usable but not clean ({shortfall(fm.diagnostics)}): intervals may be a little "
                f"off; `{REFIT}` for final numbers."]
    return []


def forecast(fm: FittedModel, config: Config, thresholds: Sequence[str | float | Threshold] | None = None, *,
             n_passes: int = 100, n_draws: int = 200, tail_q: float = 0.01, seed: int = 0,
             force: bool = False, session: np.ndarray | None = None, session_note: str | None = None,
             tail_drift: bool | None = None) -> Forecast:
    """Forecast ``config`` from a fitted model (runs of ``n_passes`` passes, ``n_draws`` posterior draws).

    Thresholds: absolute seconds, or ``pXX`` = that percentile of the forecast latency (posterior
    mean). Refuses a quality-relevant level never calibrated, and a fit whose diagnostics failed
    unless ``force``; warns outside the calibrated batch-size/thread range. ``session``, ``tail_drift``: as
    :func:`simulate_latency`.
    """
    check_run_options(n_passes, n_draws, tail_q)
    if config.batch_size > fm.n_instances:
        raise UserError(f"batch_size={config.batch_size} is larger than the evaluation set ({fm.n_instances} "
                        f"instances); use at most {fm.n_instances}.")
    warns = fm.spec.check_forecastable(config)
    from tqsim.models.conditional import conditional

    extra = float(conditional(fm, n_draws).beyond_sd([config])[0])
    if extra > 0:
        warns.append(f"beyond the calibrated batch sizes the level's interval includes ±{100 * (math.exp(1.645 * extra) - 1):.0f} % "
                     "(90 %) of extrapolation error, measured by leaving the end batch size out of the calibration.")
    if fm.summaries.sessions.size < 2 and session is None:
        warns.append("the calibration holds one session, so the drift between sessions (of the level and of the "
                     "tail) is ASSUMED (a prior), not measured; `tqsim calibrate --sessions 3 --gap 5min` measures it.")
    kw = scoring_of_config(fm, config)  # score, and prediction + label (macro-F1) where the fit saw them
    warns += fit_warnings(fm, force)
    lat, calibrated = simulate_latency(fm, config, n_passes=n_passes, n_draws=n_draws, seed=seed, session=session,
                                       tail_drift=tail_drift)
    D = lat.shape[0]
    flat = lat.reshape(D, -1)
    pct = {name: np.percentile(flat, p, axis=1) for name, p in PERCENTILES}
    parsed = parse_thresholds(thresholds)
    taus, labels = [], []
    for th in parsed:
        if th.seconds is not None:
            taus.append(th.seconds)
        else:
            taus.append(float(np.mean(np.percentile(flat, th.percentile, axis=1))))
        labels.append(th.text)
    taus_arr = np.asarray(taus, float)
    qat = quality_at_deadline(lat, taus_arr, metric=fm.quality_metric, **kw)  # [draw, pass, k]
    mean_q = qat.mean(axis=1)
    tail = tail_quality(np.moveaxis(qat, 1, -1), tail_q)  # [draw, k]
    min_q = qat.min(axis=1)
    quality = [QualityAt(labels[k], float(tau), tail_q, Interval.of(mean_q[:, k]), Interval.of(tail[:, k]),
                         Interval.of(min_q[:, k])) for k, tau in enumerate(taus_arr)]
    sessions = fm.summaries.sessions.size
    session_text = session_note or (f"a new session (drift measured over {sessions} sessions)" if sessions > 1
                                    else "a new session (drift assumed: one calibrated session)")
    return Forecast(system=fm.system, workload=fm.workload, config=config, latency_s=lat, qat=qat,
                    thresholds_s=taus_arr, threshold_labels=labels, calibrated=bool(calibrated),
                    latency={name: Interval.of(v) for name, v in pct.items()}, quality=quality,
                    metric=fm.quality_metric, no_deadline=no_deadline_quality(metric=fm.quality_metric, **kw),
                    passes_per_run=int(n_passes), family=fm.spec.family, session=session_text, warnings=warns,
                    diagnostics_ok=bool(fm.diagnostics_ok), tail_q=tail_q)


# --------------------------------------------------------------------------------------------------
# Per-call bands of a forecast (the report sets them beside the measured distribution)
# --------------------------------------------------------------------------------------------------

def simulate_calls(fm: FittedModel, config: Config, *, n_passes: int, n_draws: int = 200, seed: int = 0,
                   sessions: np.ndarray | None = None) -> np.ndarray:
    """Per-call predictive latencies ``[draw, call]`` (the calls of every pass, pooled). ``sessions``: each
    pass's session id; passes of sessions the fit saw are simulated in those sessions' fitted machine
    state (so a calibrated configuration meets its own band), any other run in a new session."""
    from tqsim.drift import session_offsets_of
    from tqsim.models.conditional import conditional, in_known_sessions

    offsets = None
    if sessions is not None:
        fitted = session_offsets_of(fm, np.unique(sessions), n_draws=n_draws)
        if fitted is not None:
            offsets = in_known_sessions(conditional(fm, n_draws).post, fitted, sessions,
                                        np.random.default_rng([seed, 3]))
    lat, _ = simulate_latency(fm, config, n_passes=n_passes, n_draws=n_draws, seed=seed, session=offsets)
    calls = call_latency(lat, batch_layout(lat.shape[-1], config.batch_size))
    return calls.reshape(calls.shape[0], -1)


def survival_band(calls: np.ndarray, grid: np.ndarray,
                  level: float = INTERVAL) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(lo, median, hi)`` over draws of the survival function P(latency > x) at ``grid``, from
    ``calls[draw, call]``: a band to lay over the observed survival function."""
    srt = np.sort(calls, axis=1)
    surv = 1.0 - np.stack([np.searchsorted(s, grid, side="right") for s in srt]) / srt.shape[1]
    a = (1 - level) / 2
    return np.quantile(surv, a, axis=0), np.quantile(surv, 0.5, axis=0), np.quantile(surv, 1 - a, axis=0)


def percentile_bands(calls: np.ndarray, percentiles: Sequence[float] = (50, 99, 99.9),
                     level: float = INTERVAL) -> dict[str, dict[str, float]]:
    """``{"p99": {mean, median, lo, hi}, ...}``: each latency percentile of a run (``calls[draw, call]``)
    per draw, summarised over draws."""
    return {f"p{p:g}": Interval.of(np.percentile(calls, p, axis=1), level).as_dict() for p in percentiles}


def tail_and_p99_bands(fc: Forecast, k: int = 0, level: float = INTERVAL) -> dict[str, float]:
    """Posterior median and central interval of TQ_q at threshold ``k`` and of p99 latency: medians, as
    they resist the rare absurd draw of a heavy-tailed residual (a forecast cell of the report's heatmap)."""
    tq = Interval.of(tail_quality(fc.qat[:, :, k], fc.tail_q), level)
    p99 = Interval.of(np.percentile(fc.latency_s.reshape(fc.latency_s.shape[0], -1), 99, axis=1), level)
    return {"tail": tq.median, "tail_lo": tq.lo, "tail_hi": tq.hi, "threshold_s": float(fc.thresholds_s[k]),
            "p99_s": p99.median, "p99_lo_s": p99.lo, "p99_hi_s": p99.hi}


def resolve_config(fm: FittedModel, assignments: dict[str, object]) -> Config:
    """Fill factors left unset from the calibration when it used a single level; otherwise ask by name."""
    from tqsim.factors import FACTORS, parse_level

    values = {}
    for f, v in assignments.items():
        values[f] = parse_level(f, v)
    missing = []
    for f in FACTORS:
        if f in values:
            continue
        seen = sorted({c[f] for c in fm.configs}, key=lambda v: (isinstance(v, str), v))  # numbers in order
        if len(seen) == 1:
            values[f] = fm.configs[0][f]
        else:
            missing.append(f"{f} (calibrated: {', '.join(map(str, seen))})")
    if missing:
        raise UserError("the calibration used several levels of " + "; ".join(missing)
                        + "; choose with --set FACTOR=VALUE.")
    return Config.from_mapping(values)


def predict(fm: FittedModel, settings: dict[str, object] | None = None,
            thresholds: Sequence[str | float | Threshold] | None = None, *, check: dict | None = None,
            n_passes: int = 100, n_draws: int = 200, tail_q: float = 0.01, seed: int = 0,
            force: bool = False) -> Forecast:
    """``tqsim predict``: forecast the configuration ``settings`` names (``{"batch_size": 8, ...}``; a factor
    left out takes the calibration's level when it used one), in a new session or, given ``check`` (a
    record of ``tqsim check``), in the machine state that check measured."""
    from tqsim.factors import Config

    config = resolve_config(fm, dict(settings or {}))
    session = note = None
    if check is not None:
        from tqsim.drift import anchor_offsets, describe, sentence
        from tqsim.models.conditional import conditional, in_known_sessions

        anchors = [(Config.from_mapping(a["config"]), a["levels"]) for a in check["anchors"]]
        delta = anchor_offsets(fm, anchors, n_draws=n_draws, seed=seed)
        note = f"conditioned on the check of {check['created_at']}: " + sentence(describe(delta, fm))
        # the check read the machine's shift; this configuration's own move in the session is still drawn
        session = in_known_sessions(conditional(fm, n_draws).post, delta[:, None], np.zeros(1),
                                    np.random.default_rng([seed, 3]))[:, 0]
    # a check measures the session's level, not its tail: that is still a new session's
    return forecast(fm, config, thresholds, n_passes=n_passes, n_draws=n_draws, tail_q=tail_q, seed=seed,
                    force=force, session=session, session_note=note, tail_drift=True)
