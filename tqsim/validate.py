"""Forecasts vs held-out real runs (DESIGN §5 "Validation", §7 ``validate``).

For each held-out configuration file: forecast a run with the same number of passes, then score
relative error of p50/p90/p99 and whether each observed value lies inside its 90 % interval; rJSD
(base-2 Jensen–Shannon distance between predicted and observed latency histograms on a fixed log
grid, :func:`tqsim.empirical.convergence.jensen_shannon_distance`) beside its floor for the same
number of held-out passes; Wasserstein-1 and CRPS relative to the observed median; the absolute
error of tail quality at the held-out configuration's own T_90/T_95/T_99.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from tqsim.data.schema import instance_correct
from tqsim.errors import UserError
from tqsim.factors import Config
from tqsim.forecast import PERCENTILES, forecast
from tqsim.models.store import FittedModel
from tqsim.quality import quality_at_deadline, tail_quality

N_BINS = 120


def _jsd(p, q):
    try:
        from tqsim.empirical.convergence import jensen_shannon_distance
    except ImportError:  # pragma: no cover - the empirical engine ships it
        def jensen_shannon_distance(p, q, axis=-1):
            p = p / p.sum(axis=axis, keepdims=True)
            q = q / q.sum(axis=axis, keepdims=True)
            m = (p + q) / 2
            h = lambda x: -np.sum(np.where(x > 0, x * np.log2(np.where(x > 0, x, 1)), 0.0), axis=axis)  # noqa: E731
            return np.sqrt(np.clip(h(m) - (h(p) + h(q)) / 2, 0, 1))
    return jensen_shannon_distance(p, q)


def log_grid(*samples: np.ndarray, n_bins: int = N_BINS) -> np.ndarray:
    lo = min(float(np.min(s)) for s in samples)
    hi = max(float(np.max(s)) for s in samples)
    return np.exp(np.linspace(np.log(lo) - 1e-9, np.log(hi) + 1e-9, n_bins + 1))


def crps_sample(sample: np.ndarray, obs: np.ndarray) -> float:
    """Mean CRPS of observations ``obs`` under the empirical distribution of ``sample`` (energy form)."""
    x = np.sort(np.asarray(sample, float))
    m = x.size
    cs = np.r_[0.0, np.cumsum(x)]
    y = np.asarray(obs, float)
    k = np.searchsorted(x, y)
    e_xy = (k * y - cs[k] + (cs[-1] - cs[k]) - (m - k) * y) / m
    i = np.arange(1, m + 1)
    e_xx = 2.0 * np.sum((2 * i - m - 1) * x) / (m * m)
    return float(np.mean(e_xy - 0.5 * e_xx))


def validate_config(fm: FittedModel, ds, *, n_draws: int = 200, seed: int = 0, force: bool = False,
                    tail_q: float = 0.01) -> dict:
    from scipy.stats import wasserstein_distance

    values = {f: ds.attrs[f] for f in ("batch_size", "threads", "precision", "backend", "device", "compile")}
    values["compile"] = bool(values["compile"])
    config = Config.from_mapping(values)
    obs = ds["latency_s"].values
    obs = obs[np.isfinite(obs).all(axis=1)]
    n_pass = obs.shape[0]
    t_obs = {name: float(np.percentile(obs, p)) for name, p in (("T90", 90), ("T95", 95), ("T99", 99))}
    fc = forecast(fm, config, list(t_obs.values()), n_passes=n_pass, n_draws=n_draws, tail_q=tail_q, seed=seed,
                  force=force)
    lat = fc.latency_s
    D = lat.shape[0]
    flat = lat.reshape(D, -1)
    rng = np.random.default_rng(seed)
    row: dict = {"config": config.as_dict(), "config_id": config.id, "calibrated": fc.calibrated,
                 "passes": int(n_pass), "warnings": fc.warnings, "latency_s": {}}
    for name, p in PERCENTILES:
        if name == "p99.9":
            continue
        o = float(np.percentile(obs, p))
        per_draw = np.percentile(flat, p, axis=1)
        lo, hi = np.quantile(per_draw, [0.05, 0.95])
        pred = float(per_draw.mean())
        row["latency_s"][name] = {"observed": o, "predicted": pred, "lo": float(lo), "hi": float(hi),
                                  "rel_error": (pred - o) / o, "inside": bool(lo <= o <= hi)}
    pooled = flat.ravel()
    pred_sample = pooled[rng.integers(0, pooled.size, min(pooled.size, 200_000))]
    obs_flat = obs.ravel()
    edges = log_grid(pred_sample, obs_flat)
    h_pred = np.histogram(pooled, edges)[0].astype(float)
    h_obs = np.histogram(obs_flat, edges)[0].astype(float)
    row["rjsd"] = float(_jsd(h_obs, h_pred))
    floors = [float(_jsd(np.histogram(lat[d].ravel(), edges)[0].astype(float), h_pred))
              for d in rng.choice(D, min(D, 50), replace=False)]
    row["rjsd_floor"] = float(np.mean(floors))
    med = float(np.median(obs_flat))
    row["w1_rel"] = float(wasserstein_distance(pred_sample, obs_flat)) / med
    obs_sub = obs_flat[rng.integers(0, obs_flat.size, min(obs_flat.size, 20_000))]
    row["crps_rel"] = crps_sample(pred_sample[:50_000], obs_sub) / med
    correct = instance_correct(ds).values
    metric = str(ds.attrs.get("quality_metric", "accuracy"))
    kw = {"correct": correct} if metric == "accuracy" else {"prediction": ds["prediction"].values,
                                                              "label": ds["label"].values}
    taus = np.array(list(t_obs.values()))
    q_obs = quality_at_deadline(obs, taus, metric=metric, **kw)  # [pass, k]
    tq_obs = tail_quality(q_obs.T, tail_q)
    row["tail_quality"] = []
    for k, (label, tau) in enumerate(t_obs.items()):
        f = fc.result["quality"]["thresholds"][k]
        row["tail_quality"].append({"threshold": label, "threshold_s": float(tau), "observed": float(tq_obs[k]),
                                    "predicted": f["tail"], "lo": f["tail_lo"], "hi": f["tail_hi"],
                                    "abs_error": abs(f["tail"] - float(tq_obs[k])),
                                    "inside": bool(f["tail_lo"] <= tq_obs[k] <= f["tail_hi"]),
                                    "mean_observed": float(q_obs[:, k].mean()), "mean_predicted": f["mean"]})
    return row


def validate(fm: FittedModel, heldout: str | Path, *, n_draws: int = 200, seed: int = 0, force: bool = False,
             tail_q: float = 0.01) -> dict:
    """Score the fit against every configuration file under ``heldout``; DESIGN §7's ``validate`` object."""
    from tqsim.data.io import calibration_files, read_calibration
    from tqsim.data.workspace import Workspace

    folder = Path(heldout)
    ws = Workspace.at(folder)  # a workspace: its calibration of this workload, this system first
    systems = [s for s in ws.systems() if fm.workload in ws.workloads(s)]
    if fm.system in systems or len(systems) == 1:
        folder = ws.calibration_dir(fm.system if fm.system in systems else systems[0], fm.workload)
    files = calibration_files(folder) if folder.is_dir() else ([folder] if folder.exists() else [])
    if not files:
        raise UserError(f"{heldout}: holds no {fm.workload} configuration files; measure held-out configurations "
                        "with `tqsim calibrate --home OTHER_DIR` and pass OTHER_DIR (or a folder of .nc files).")
    rows = [validate_config(fm, read_calibration(p, fm.workload), n_draws=n_draws, seed=seed + i, force=force,
                            tail_q=tail_q) for i, p in enumerate(files)]
    err99 = np.array([abs(r["latency_s"]["p99"]["rel_error"]) for r in rows])
    inside = [r["latency_s"][k]["inside"] for r in rows for k in r["latency_s"]]
    inside += [t["inside"] for r in rows for t in r["tail_quality"]]
    tq_err = [t["abs_error"] for r in rows for t in r["tail_quality"]]
    summary = {"median_rel_error_p99": float(np.median(err99)), "max_rel_error_p99": float(np.max(err99)),
               "coverage": float(np.mean(inside)), "n_intervals": len(inside),
               "median_abs_error_tail_quality": float(np.median(tq_err)),
               "median_rjsd": float(np.median([r["rjsd"] for r in rows])),
               "median_rjsd_floor": float(np.median([r["rjsd_floor"] for r in rows])),
               "median_abs_rel_error_p50": float(np.median([abs(r["latency_s"]["p50"]["rel_error"]) for r in rows]))}
    return {"system": fm.system, "workload": fm.workload, "heldout": str(folder), "family": fm.spec.family,
            "diagnostics_ok": fm.diagnostics_ok, "configs": rows, "summary": summary}
