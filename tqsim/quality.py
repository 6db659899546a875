"""Quality at a deadline (Q@T) and tail quality: NumPy core over any leading axes, xarray wrappers.

Q@T of one pass at threshold τ: every instance whose latency exceeds τ counts as wrong and stays in
the denominator (docs/design.md, vocabulary). Definitions and references: docs/method.md.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np
from scipy import special, stats

from tqsim.errors import UserError
from tqsim.units import parse_duration


def quality_at_deadline(latency_s: np.ndarray, thresholds_s: np.ndarray, *, score: np.ndarray | None = None,
                        prediction: np.ndarray | None = None, label: np.ndarray | None = None,
                        metric: str = "accuracy") -> np.ndarray:
    """Q@T per pass and threshold.

    ``latency_s``: (..., pass, instance). ``thresholds_s``: (k,) or broadcastable to (..., k).
    Returns (..., pass, k). Every metric but ``macro_f1`` (accuracy, ``top_k:K``, a callable) is the
    mean of the per-instance ``score`` (instance,) in [0, 1] with late instances scoring 0;
    ``macro_f1`` needs ``prediction`` and ``label`` (instance,) — a late instance is predicted as no
    class at all. docs/method.md, "Quality metrics".
    """
    lat = np.asarray(latency_s, dtype=float)
    tau = np.asarray(thresholds_s, dtype=float)
    tau = tau[..., None, None, :] if tau.ndim >= 1 else tau[None, None, None]
    valid = lat[..., None] <= tau  # (..., pass, instance, k)
    if metric == "macro_f1":
        return _macro_f1(valid, np.asarray(prediction), np.asarray(label))
    return (valid * score_vector(score, prediction, label, metric)[:, None]).mean(axis=-2)


def score_vector(score, prediction, label, metric: str) -> np.ndarray:
    """``score`` as floats; without it, accuracy's score from ``prediction == label`` (what callers
    that hold only predictions pass)."""
    if score is None:
        if metric != "accuracy":
            raise ValueError(f"metric {metric!r} needs per-instance scores")
        score = np.asarray(prediction) == np.asarray(label)
    return np.asarray(score, dtype=float)


def _macro_f1(valid: np.ndarray, prediction: np.ndarray, label: np.ndarray) -> np.ndarray:
    classes = np.unique(label)
    hit = (prediction == label)
    pred_oh = (prediction[:, None] == classes[None, :]).astype(float)  # (instance, class)
    tp_oh = pred_oh * hit[:, None]
    v = valid.astype(float)
    tp = np.einsum("...nk,nc->...kc", v, tp_oh)
    pred_c = np.einsum("...nk,nc->...kc", v, pred_oh)
    support = (label[:, None] == classes[None, :]).sum(axis=0).astype(float)
    fp = pred_c - tp
    fn = support - tp
    denom = 2 * tp + fp + fn
    f1 = np.where(denom > 0, 2 * tp / np.where(denom > 0, denom, 1), 0.0)
    return f1.mean(axis=-1)


def no_deadline_quality(*, score=None, prediction=None, label=None, metric: str = "accuracy") -> float:
    """Quality when nothing is late."""
    lat = np.zeros((1, len(score if score is not None else label)))
    return float(quality_at_deadline(lat, np.array([1.0]), score=score, prediction=prediction, label=label,
                                     metric=metric)[0, 0])


# --------------------------------------------------------------------------------------------------
# Thresholds: "5ms", "250us", "0.005", "2s" (absolute) or "p99" (of the configuration's own latency)
# --------------------------------------------------------------------------------------------------

DEFAULT_THRESHOLDS = ("p90", "p95", "p99")
INTERVAL = 0.9  # the one interval level of every estimate tqsim prints (central, or an order-statistic bound)
_PCT = re.compile(r"^p([0-9]*\.?[0-9]+)$")


@dataclass(frozen=True)
class Threshold:
    """A deadline: absolute (``seconds``) or a percentile of each configuration's own latencies."""

    text: str
    seconds: float | None = None
    percentile: float | None = None

    def resolve(self, latency_s: np.ndarray) -> float:
        """Seconds for one configuration; ``latency_s`` is its (pass, instance) latencies (NaN ignored)."""
        if self.seconds is not None:
            return self.seconds
        lat = np.asarray(latency_s, dtype=float)
        return float(np.nanpercentile(lat, self.percentile))

    @property
    def label(self) -> str:
        return self.text


def parse_threshold(text: str | float) -> Threshold:
    """Parse one threshold, or raise a UserError naming the accepted forms."""
    if isinstance(text, Threshold):
        return text
    raw = str(text).strip()
    low = raw.lower().replace(" ", "")
    hint = "write e.g. 5ms, 250us, 0.005 (seconds), 2s or p99"
    m = _PCT.match(low)
    if m:
        pct = float(m.group(1))
        if not 0 < pct < 100:
            raise UserError(f"threshold '{raw}': a percentile must lie strictly between 0 and 100 (e.g. p99).")
        return Threshold(text=f"p{m.group(1)}", percentile=pct)
    try:
        seconds = parse_duration(low, "threshold")
    except UserError:
        if low.startswith("-"):
            raise UserError(f"threshold '{raw}': a deadline must be positive; {hint}.") from None
        raise UserError(f"threshold '{raw}' is not understood; {hint}.") from None
    if not seconds > 0:
        raise UserError(f"threshold '{raw}': a deadline must be positive; {hint}.")
    return Threshold(text=raw, seconds=seconds)


def parse_thresholds(texts: Sequence[str | float] | None) -> list[Threshold]:
    """Parse several thresholds; none given means ``p90 p95 p99`` of each configuration."""
    return [parse_threshold(t) for t in (texts or DEFAULT_THRESHOLDS)]


def check_tail_q(q: float) -> float:
    if not (0 < q < 1):
        raise UserError(f"--tail-q {q}: the tail quantile must lie strictly between 0 and 1 (default 0.01).")
    return float(q)


def check_passes(n_passes: int, what: str = "this configuration") -> None:
    if n_passes < 2:
        raise UserError(f"{what} has {n_passes} pass(es); a distribution of Q@T over passes needs at least 2 "
                        "(tail quality, spread and intervals are undefined from one run). Calibrate more passes "
                        "with `tqsim calibrate --passes N`.")


# --------------------------------------------------------------------------------------------------
# Statistics of Q@T over passes (NumPy core: passes on axis -1 after moving)
# --------------------------------------------------------------------------------------------------

def tail_quality(qat: np.ndarray, q: float = 0.01, axis: int = -1) -> np.ndarray:
    """TQ_q: the q-quantile of Q@T over passes, as an observed value (inverted empirical CDF).

    The k-th smallest of n passes with k = ceil(q n) (at least 1): with n < 1/q passes this is the
    minimum. NaN passes (a config with fewer passes in a campaign) are ignored.
    """
    return np.nanquantile(np.asarray(qat, dtype=float), q, axis=axis, method="inverted_cdf")


def order_statistic_interval(sorted_x: np.ndarray, q: float, level: float = INTERVAL,
                             floor: float = 0.0, ceiling: float = 1.0) -> tuple[float, float]:
    """Distribution-free interval for the q-quantile from order statistics (binomial coverage).

    ``lo = x_(l)`` with P(Bin(n, q) >= l) >= (1+level)/2, ``hi = x_(u)`` with P(Bin(n, q) <= u-1) >=
    (1+level)/2. When n is too small for such an order statistic to exist, the bound is the metric's
    own floor (0) or ceiling (1): honest, and it tells the user more passes are needed.
    """
    x = np.asarray(sorted_x, dtype=float)
    n = x.size
    a = (1 - level) / 2
    j = np.arange(1, n + 1)
    ok_lo = stats.binom.sf(j - 1, n, q) >= 1 - a   # P(X_(j) <= xi_q) = P(Bin >= j)
    ok_hi = stats.binom.cdf(j - 1, n, q) >= 1 - a  # P(X_(j) >= xi_q) = P(Bin <= j-1)
    lo = x[j[ok_lo].max() - 1] if ok_lo.any() else floor
    hi = x[j[ok_hi].min() - 1] if ok_hi.any() else ceiling
    return float(lo), float(hi)


def passes_for_tail_bound(q: float, level: float = INTERVAL) -> int:
    """Passes needed before the q-quantile has any distribution-free lower bound: (1-q)^n <= (1-level)/2."""
    return int(math.ceil(math.log((1 - level) / 2) / math.log1p(-q)))


def minimum_interval(sorted_x: np.ndarray, level: float = INTERVAL, floor: float = 0.0) -> tuple[float, float]:
    """Distribution-free prediction interval for the minimum Q@T of *another* campaign of n passes.

    By exchangeability of 2n passes, P(new minimum >= x_(j)) = C(2n-j, n) / C(2n, n). For j = 1 that
    is 1/2: the next campaign's worst pass is worse than every pass seen so far half the time, so the
    lower end is the metric's floor (0). The upper end is the smallest x_(u) with
    P(new minimum > x_(u)) <= (1-level)/2.
    """
    x = np.asarray(sorted_x, dtype=float)
    n = x.size
    a = (1 - level) / 2
    j = np.arange(1, n + 1)
    log_p = (special.gammaln(2 * n - j + 1) - special.gammaln(n - j + 1)
             - special.gammaln(2 * n + 1) + special.gammaln(n + 1))  # log C(2n-j,n)/C(2n,n)
    ok = np.exp(log_p) <= a
    hi = x[j[ok].min() - 1] if ok.any() else float(np.max(x))
    return float(floor), float(hi)


def bootstrap_interval(x: np.ndarray, stat: Callable[[np.ndarray], np.ndarray], *, level: float = INTERVAL,
                       n_boot: int = 2000, seed: int = 0) -> tuple[float, float]:
    """Percentile bootstrap over passes, vectorised: ``stat`` reduces the last axis of (n_boot, n)."""
    x = np.asarray(x, dtype=float)
    rng = np.random.default_rng(seed)
    draws = stat(x[rng.integers(0, x.size, size=(n_boot, x.size))])
    a = (1 - level) / 2
    lo, hi = np.quantile(draws, [a, 1 - a])
    return float(lo), float(hi)


def summarize_qat(qat: np.ndarray, *, q: float = 0.01, level: float = INTERVAL, n_boot: int = 2000,
                  seed: int = 0) -> dict[str, float]:
    """Mean, std, minimum and TQ_q of one (pass,) vector of Q@T, each with a 90% interval.

    mean, std: percentile bootstrap over passes. TQ_q: order-statistic (binomial) interval. min:
    prediction interval for the worst pass of another campaign of the same size. docs/method.md
    says why the bootstrap is not used for the extremes.
    """
    x = np.asarray(qat, dtype=float)
    x = np.sort(x[~np.isnan(x)])
    check_passes(x.size)
    mean_lo, mean_hi = bootstrap_interval(x, lambda d: d.mean(axis=-1), level=level, n_boot=n_boot, seed=seed)
    std_lo, std_hi = bootstrap_interval(x, lambda d: d.std(axis=-1, ddof=1), level=level, n_boot=n_boot,
                                        seed=seed + 1)
    tail_lo, tail_hi = order_statistic_interval(x, q, level)
    min_lo, min_hi = minimum_interval(x, level)
    return {"mean": float(x.mean()), "mean_lo": mean_lo, "mean_hi": mean_hi,
            "tail": float(tail_quality(x, q)), "tail_q": q, "tail_lo": tail_lo, "tail_hi": tail_hi,
            "min": float(x[0]), "min_lo": min_lo, "min_hi": min_hi,
            "std": float(x.std(ddof=1)), "std_lo": std_lo, "std_hi": std_hi, "max": float(x[-1])}


def qat_curve(latency_s: np.ndarray, *, n_points: int = 120, score=None, prediction=None, label=None,
              metric: str = "accuracy") -> dict[str, np.ndarray]:
    """The min/mean/max band of Q@T over passes along a log-spaced sweep of thresholds.

    The sweep spans the configuration's own latencies (0 below the fastest batch, the no-deadline
    quality above the slowest), so the band shows where the deadline starts to bite.
    """
    lat = np.asarray(latency_s, dtype=float)
    lat = lat[~np.isnan(lat).all(axis=-1)]
    lo, hi = np.nanmin(lat), np.nanmax(lat)
    taus = np.geomspace(lo / 1.05, hi * 1.05, n_points)
    qat = quality_at_deadline(lat, taus, score=score, prediction=prediction, label=label, metric=metric)
    return {"threshold_s": taus, "min": qat.min(axis=0), "mean": qat.mean(axis=0), "max": qat.max(axis=0)}


# --------------------------------------------------------------------------------------------------
# xarray wrappers over a calibration file or a campaign (load_campaign): named dims, NaN passes
# --------------------------------------------------------------------------------------------------

def scoring_of(ds) -> dict:
    """The keyword arguments that score one configuration's dataset (``metric``, the per-instance
    ``score``, and for macro-F1 the predictions and labels), for :func:`quality_at_deadline` and
    :func:`no_deadline_quality`."""
    from tqsim.data.schema import instance_scores

    metric = str(ds.attrs.get("quality_metric", "accuracy"))
    out = {"score": instance_scores(ds).values, "metric": metric}
    if "prediction" in ds and "label" in ds:
        out.update(prediction=ds["prediction"].values, label=ds["label"].values)
    return out


def qat_dataarray(ds, thresholds: Sequence[str | Threshold], *, pass_dim: str = "pass",
                  instance_dim: str = "instance"):
    """Q@T of every pass of one configuration's dataset, dims (pass, threshold); NaN for missing passes.

    The ``threshold`` coordinate holds the labels; ``threshold_s`` the resolved seconds.
    """
    import xarray as xr

    ths = [parse_threshold(t) for t in thresholds]
    lat = ds["latency_s"].transpose(pass_dim, instance_dim).values
    taus = np.array([t.resolve(lat) for t in ths])
    qat = quality_at_deadline(lat, taus, **scoring_of(ds))
    qat[np.isnan(lat).all(axis=-1)] = np.nan
    return xr.DataArray(qat, dims=(pass_dim, "threshold"),
                        coords={"threshold": [t.label for t in ths], "threshold_s": ("threshold", taus)},
                        name="qat")


def tail_quality_da(qat, q: float = 0.01, dim: str = "pass"):
    """xarray wrapper of :func:`tail_quality` over the named dimension."""
    import xarray as xr

    return xr.apply_ufunc(tail_quality, qat, kwargs={"q": q}, input_core_dims=[[dim]])


def config_factors(ds) -> dict:
    """The factors of one configuration (from attrs of a file, or coords of a campaign slice)."""
    from tqsim.factors import FACTORS

    out = {}
    for f in FACTORS:
        if f in ds.coords:
            v = ds.coords[f].values
            out[f] = v.item() if hasattr(v, "item") else v
        elif f in ds.attrs:
            out[f] = ds.attrs[f]
    if "compile" in out:
        out["compile"] = bool(out["compile"])
    return out


def measured_latency(ds) -> np.ndarray:
    """``[pass, instance]`` latencies of the passes actually measured (a campaign pads missing passes with NaN)."""
    lat = ds["latency_s"].transpose("pass", "instance").values
    return lat[~np.isnan(lat).all(axis=-1)]


def quality_block(ds, thresholds: Sequence[str | Threshold] | None = None, *, tail_q: float = 0.01,
                  level: float = INTERVAL, n_boot: int = 2000, seed: int = 0) -> dict:
    """The ``quality`` JSON object (docs/design.md) for one configuration's dataset (dims pass, instance)."""
    check_tail_q(tail_q)
    ths = parse_thresholds(thresholds)
    lat = measured_latency(ds)
    check_passes(lat.shape[0], f"configuration {ds.attrs.get('config_id', '')}".strip())
    scoring = scoring_of(ds)
    taus = np.array([t.resolve(lat) for t in ths])
    qat = quality_at_deadline(lat, taus, **scoring)
    rows = []
    for i, (t, tau) in enumerate(zip(ths, taus)):
        row = {"threshold_s": float(tau), "threshold": t.label}
        row.update(summarize_qat(qat[:, i], q=tail_q, level=level, n_boot=n_boot, seed=seed + 7 * i))
        row["late_fraction"] = float((lat > tau).mean())
        rows.append(row)
    return {"metric": scoring["metric"], "no_deadline": no_deadline_quality(**scoring),
            "interval": level, "thresholds": rows,
            "passes_for_tail_lo": passes_for_tail_bound(tail_q, level)}


def latency_percentiles(latency_s: np.ndarray,
                        percentiles: Sequence[float] = (50, 90, 99, 99.9)) -> dict[str, float]:
    """``{"p50": ..., "p99.9": ...}`` of latencies pooled over every axis (NaN ignored)."""
    lat = np.asarray(latency_s, dtype=float)
    return {f"p{p:g}": float(np.nanpercentile(lat, p)) for p in percentiles}


def tail_and_p99(ds, threshold: str | Threshold, tail_q: float = 0.01) -> dict[str, float]:
    """TQ_q at one threshold (resolved on this configuration's own latencies) and the p99 latency of one
    configuration's measured passes: a cell of the report's heatmap."""
    lat = measured_latency(ds)
    tau = parse_threshold(threshold).resolve(lat)
    q = quality_at_deadline(lat, np.array([tau]), **scoring_of(ds))[:, 0]
    return {"tail": float(tail_quality(q, tail_q)), "threshold_s": float(tau),
            "p99_s": float(np.nanpercentile(lat, 99))}


# --------------------------------------------------------------------------------------------------
# The report behind `tqsim quality` (docs/design.md, JSON), one dict per configuration of a campaign
# --------------------------------------------------------------------------------------------------

def campaign_configs(campaign) -> list:
    """One dataset per configuration of a ``load_campaign`` result, trailing NaN passes dropped."""
    out = []
    for i in range(campaign.sizes["config"]):
        ds = campaign.isel(config=i)
        n = int(ds["n_passes"].values) if "n_passes" in ds else ds.sizes["pass"]
        ds = ds.isel({"pass": slice(0, n)})
        ds.attrs = dict(campaign.attrs, config_id=str(ds["config"].values))
        out.append(ds)
    return out


def mlperf_block(latency_s: np.ndarray, percentiles=(0.9, 0.99)) -> dict:
    """What MLPerf LoadGen's early stopping would certify from these per-instance latencies."""
    from tqsim.empirical.mlperf import early_stopping_estimate, min_queries, normal_approx_queries

    out = {"queries": int(np.isfinite(latency_s).sum()), "confidence": 0.99}
    for p in percentiles:
        es = early_stopping_estimate(latency_s, p).as_dict()
        es["min_queries_no_late"] = min_queries(p, 0)
        es["rules_fixed_queries"] = round(normal_approx_queries(p))
        out[f"p{100 * p:g}"] = es
    return out


def quality_report(campaign, thresholds: Sequence[str | Threshold] | None = None, *, tail_q: float = 0.01,
                   seed: int = 0, n_boot: int = 2000) -> dict:
    """The `tqsim quality` JSON object (docs/design.md, JSON) for a campaign, plus MLPerf's figures per config.

    Refuses (UserError) a bad tail quantile, bad thresholds, or any configuration with < 2 passes,
    before computing anything.
    """
    check_tail_q(tail_q)
    ths = parse_thresholds(thresholds)
    configs = campaign_configs(campaign)
    for ds in configs:
        check_passes(measured_latency(ds).shape[0], f"configuration {ds.attrs['config_id']}")
    rows = []
    for ds in configs:
        lat = ds["latency_s"].transpose("pass", "instance").values
        rows.append({"config": config_factors(ds), "config_id": ds.attrs["config_id"],
                     "passes": int(lat.shape[0]), "instances": int(lat.shape[1]),
                     "latency_s": latency_percentiles(lat),
                     "quality": quality_block(ds, ths, tail_q=tail_q, seed=seed, n_boot=n_boot),
                     "mlperf": mlperf_block(lat)})
    return {"system": campaign.attrs.get("system"), "workload": campaign.attrs.get("workload"), "configs": rows}


def quality_curves(campaign, n_points: int = 120) -> list[dict]:
    """The Q@T-versus-threshold band of every configuration (for ``--plot``)."""
    out = []
    for ds in campaign_configs(campaign):
        curve = qat_curve(ds["latency_s"].transpose("pass", "instance").values, n_points=n_points, **scoring_of(ds))
        out.append({"config_id": ds.attrs["config_id"], **curve})
    return out
