"""Posterior + configuration -> predictive latency, Q@T and tail quality (DESIGN §5, §7 ``predict``).

For each posterior draw, simulate a run of ``n_passes`` passes made at another time: draw the run's
machine-effect path from the fitted AR(1) (plus the uncertainty of the calibration's average
machine state) and each pass's own level, draw every batch's latency with its position effect and
residual (mixture or Student-t; the first batch has its own Normal noise), give every instance its
batch's latency (the batch layout follows from the instance count and the batch size, last batch
partial), mark late instances, score Q@T with the correctness
vector of the configuration's quality-relevant levels. Every reported quantity is a per-draw
statistic summarised by its posterior mean and a 90 % credible interval over draws.
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
from tqsim.models.spec import batch_layout
from tqsim.models.store import FittedModel, quality_level_id
from tqsim.quality import (Threshold, no_deadline_quality, parse_thresholds, quality_at_deadline,
                           tail_quality)

PERCENTILES = (("p50", 50.0), ("p90", 90.0), ("p99", 99.0), ("p99.9", 99.9))
INTERVAL = 0.9
RESID_CAP = 8.0


@dataclass
class Forecast:
    """Simulated runs of one configuration: ``latency_s[draw, pass, instance]`` and the summaries."""

    config: Config
    latency_s: np.ndarray
    qat: np.ndarray                    # [draw, pass, k]
    thresholds_s: np.ndarray           # [k]
    threshold_labels: list[str]
    calibrated: bool
    warnings: list[str] = field(default_factory=list)
    diagnostics_ok: bool = True
    tail_q: float = 0.01
    result: dict = field(default_factory=dict)


def _summary(x: np.ndarray, level: float = INTERVAL) -> dict[str, float]:
    a = (1 - level) / 2
    return {"mean": float(np.mean(x)), "lo": float(np.quantile(x, a)), "hi": float(np.quantile(x, 1 - a))}


def simulate_latency(fm: FittedModel, config: Config, *, n_passes: int = 100, n_draws: int = 200,
                     seed: int = 0, n_instances: int | None = None) -> tuple[np.ndarray, bool]:
    """Predictive instance latencies ``[draw, pass, instance]`` (seconds) and whether ``config`` was calibrated."""
    spec = fm.spec
    rng = np.random.default_rng(seed)
    post = fm.posterior_draws(n_draws)
    D = post["config_mean"].shape[0]
    n = int(n_instances or fm.n_instances)
    bs = int(config.batch_size)
    batch = batch_layout(n, bs)
    nb = int(batch[-1]) + 1
    ids = [c["id"] for c in fm.configs]
    calibrated = config.id in ids
    Z = spec.scaled([config])[0]
    col = ids.index(config.id) if calibrated else None

    def own(name: str, trend, sd):
        """The config's own fitted term if it was calibrated, else its trend plus a fresh deviation."""
        return post[name][:, col] if calibrated else trend + rng.normal(0.0, 1.0, D) * sd

    if calibrated:
        mean = post["config_mean"][:, col]
    else:
        X = spec.features([config])[0]
        # the deviation of a new config, conditioned on the calibrated configs' deviations (kriging
        # with the fit's prior correlation); σ_cfg² cancels from the weights
        cal = [Config.from_mapping({k: v for k, v in c.items() if k != "id"}) for c in fm.configs]
        K = spec.correlation(cal, cal) + 1e-9 * np.eye(len(cal))
        k = spec.correlation([config], cal)[0]
        wts = np.linalg.solve(K, k)
        cond_sd = np.sqrt(max(spec.correlation([config], [config])[0, 0] - float(k @ wts), 1e-12))
        dev = post["config_effect"] @ wts + rng.normal(0.0, 1.0, D) * post["config_sd"] * cond_sd
        mean = spec.smooth_mean(post, X, spec.log_batch([config])[0]) + dev
    if spec.pass_effects:  # the fast mode's centre relative to a pass's median level
        # the offset's scale: fitted before session 4, a fixed prior sd since
        sd = post["fast_offset_sd"] if "fast_offset_sd" in post else spec.priors["fast_offset"]["sd"]
        mean = mean + own("fast_offset", post["fast_offset0"] + post["fast_offset_slope"] @ Z, sd)
    # the run's machine effect: a fresh stationary AR(1) path (the config means already carry the
    # uncertainty of the calibration's average machine state, except in fits whose latent round
    # effects summed to zero: there it is added back)
    sd, phi = post["round_sd"], post["round_phi"]
    path = np.empty((D, n_passes))
    path[:, 0] = rng.normal(0.0, 1.0, D) * sd
    innov = sd * np.sqrt(np.clip(1 - phi ** 2, 0, None))
    for t in range(1, n_passes):
        path[:, t] = phi * path[:, t - 1] + rng.normal(0.0, 1.0, D) * innov
    if spec.round_model == "ar1":
        R = max(int(fm.diagnostics.get("n_rounds", 1)), 1)
        sd_mean = sd * np.sqrt(np.clip((1 + phi) / np.clip(1 - phi, 1e-3, None), 0, None) / R)
        path += (rng.normal(0.0, 1.0, D) * sd_mean)[:, None]
    if spec.pass_effects:  # the config's own pass-to-pass level, beyond the shared machine effect
        path += rng.normal(0.0, 1.0, (D, n_passes)) * post["pass_sd"][:, None]
    log_t = (mean[:, None, None] + path[:, :, None]) * np.ones((1, 1, nb))
    last = n - (nb - 1) * bs
    if last < bs:
        log_t[:, :, -1] += spec.partial_shift(post, config, last)[:, None]
    # the first batch's additive cold-start cost (an unseen config: the trend plus a fresh deviation)
    first = own("first_cost", post["first_cost0"] + post["first_cost_bs"] * Z[0], post["first_cost_sd"])
    log_t[:, :, 0] = np.logaddexp(log_t[:, :, 0], first[:, None])
    sigma = np.exp(post["log_sigma0"] + post["log_sigma_slope"] @ Z)[:, None, None]
    shape = (D, n_passes, nb)
    if spec.family == "student":
        nu = post["nu"][:, None, None]
        resid = sigma * rng.standard_t(np.broadcast_to(nu, shape))
    else:
        logit = own("slow_logit", post["slow_logit0"] + post["slow_logit_slope"] @ Z, post["slow_logit_sd"])
        slow = rng.random(shape) < (1.0 / (1.0 + np.exp(-logit)))[:, None, None]
        # a slow hit adds the delay e^d to the call: log(e^m + e^d) - m on top of m
        hit = np.logaddexp(log_t, post["slow_delay"][:, None, None]) - log_t
        resid = np.where(slow, hit + post["slow_sd"][:, None, None] * rng.standard_normal(shape),
                         sigma * rng.standard_normal(shape))
    # the first batch's own noise replaces the residual family there
    first_sigma = post["first_sigma"][:, col] if calibrated else np.exp(
        post["first_log_sigma0"] + post["first_log_sigma_slope"] @ Z)
    resid[:, :, 0] = first_sigma[:, None] * rng.standard_normal((D, n_passes))
    # a Student-t with small ν draws absurd log-residuals (exp overflows to inf and poisons the
    # percentiles); cap at ±RESID_CAP in log space (e^8 ≈ 3000× the typical batch)
    resid = np.clip(resid, -RESID_CAP, RESID_CAP)
    return np.exp(log_t + resid)[:, :, batch], calibrated


def forecast(fm: FittedModel, config: Config, thresholds: Sequence[str | float | Threshold] | None = None, *,
             n_passes: int = 100, n_draws: int = 200, tail_q: float = 0.01, seed: int = 0,
             force: bool = False) -> Forecast:
    """Forecast ``config`` from a fitted model; the result's ``.result`` is DESIGN §7's ``predict`` object.

    Thresholds: absolute seconds, or ``pXX`` = that percentile of the forecast latency (posterior
    mean). Refuses a quality-relevant level never calibrated, and a fit whose diagnostics failed
    unless ``force``; warns outside the calibrated batch-size/thread range.
    """
    warns = fm.spec.check_forecastable(config)
    level = quality_level_id(config.as_dict())
    if level not in fm.quality_levels:
        raise UserError(f"quality-relevant levels {level} were never calibrated (calibrated: "
                        f"{', '.join(sorted(fm.quality_levels))}); calibrate a configuration with them first.")
    if not fm.diagnostics_ok:
        what = shortfall(fm.diagnostics)
        if not force:
            raise UserError(f"the fit failed its diagnostics ({what}); refit with more draws "
                            f"(`{REFIT}`) or forecast anyway with --force.")
        warns.append(f"FORECAST FROM A FIT THAT FAILED ITS DIAGNOSTICS ({what}); do not trust the intervals.")
    elif fm.diagnostics.get("status") == "warn":
        warns.append(f"the fit is usable but not clean ({shortfall(fm.diagnostics)}): intervals may be a little "
                     f"off; `{REFIT}` for final numbers.")
    lat, calibrated = simulate_latency(fm, config, n_passes=n_passes, n_draws=n_draws, seed=seed)
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
    scoring = fm.quality_levels[level]
    kw = {"correct": scoring["correct"]} if fm.quality_metric == "accuracy" else {
        "prediction": scoring.get("prediction"), "label": scoring.get("label")}
    qat = quality_at_deadline(lat, taus_arr, metric=fm.quality_metric, **kw)  # [draw, pass, k]
    mean_q = qat.mean(axis=1)
    tail = tail_quality(np.moveaxis(qat, 1, -1), tail_q)  # [draw, k]
    min_q = qat.min(axis=1)
    rows = []
    for k, tau in enumerate(taus_arr):
        m, t, mn = _summary(mean_q[:, k]), _summary(tail[:, k]), _summary(min_q[:, k])
        rows.append({"threshold": labels[k], "threshold_s": float(tau), "mean": m["mean"], "mean_lo": m["lo"],
                     "mean_hi": m["hi"], "tail": t["mean"], "tail_q": tail_q, "tail_lo": t["lo"], "tail_hi": t["hi"],
                     "min": mn["mean"], "min_lo": mn["lo"], "min_hi": mn["hi"]})
    result = {
        "system": fm.system, "workload": fm.workload, "config": config.as_dict(), "config_id": config.id,
        "calibrated": bool(calibrated), "interval": INTERVAL,
        "latency_s": {name: _summary(v) for name, v in pct.items()},
        "quality": {"metric": fm.quality_metric, "no_deadline": no_deadline_quality(metric=fm.quality_metric, **kw),
                    "thresholds": rows},
        "passes_per_run": int(n_passes), "draws": int(D), "family": fm.spec.family,
        "diagnostics_ok": bool(fm.diagnostics_ok), "warnings": list(warns),
    }
    return Forecast(config=config, latency_s=lat, qat=qat, thresholds_s=taus_arr, threshold_labels=labels,
                    calibrated=calibrated, warnings=warns, diagnostics_ok=fm.diagnostics_ok, tail_q=tail_q,
                    result=result)


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
