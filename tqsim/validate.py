"""Forecasts vs held-out real runs (docs/method.md ``validate``).

For each held-out configuration file: forecast a run with the same number of passes, then score
relative error of p50/p90/p99 and whether each observed value lies inside its 90 % interval; rJSD
(base-2 Jensen–Shannon distance between predicted and observed latency histograms on a fixed log
grid, :func:`tqsim.empirical.convergence.jensen_shannon_distance`) beside its floor for the same
number of held-out passes; Wasserstein-1 and CRPS relative to the observed median; the absolute
error of tail quality at the held-out configuration's own T_90/T_95/T_99.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from tqsim.empirical.convergence import jensen_shannon_distance
from tqsim.errors import UserError
from tqsim.factors import Config
from tqsim.forecast import PERCENTILES, forecast
from tqsim.models.store import FittedModel
from tqsim.quality import INTERVAL, quality_at_deadline, scoring_of, tail_quality

N_BINS = 120


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


def _score(fc, obs: np.ndarray, ds, t_obs: dict, tail_q: float, rng: np.random.Generator, full: bool) -> dict:
    """Observed vs forecast for one held-out file: latency percentiles, distances, tail quality."""
    from scipy.stats import wasserstein_distance

    lat = fc.latency_s
    D = lat.shape[0]
    flat = lat.reshape(D, -1)
    row: dict = {"latency_s": {}}
    for name, p in PERCENTILES:
        if name == "p99.9":
            continue
        o = float(np.percentile(obs, p))
        per_draw = np.percentile(flat, p, axis=1)
        lo, hi = np.quantile(per_draw, [(1 - INTERVAL) / 2, (1 + INTERVAL) / 2])
        pred = float(np.median(per_draw))
        row["latency_s"][name] = {"observed": o, "predicted": pred, "mean": float(per_draw.mean()), "lo": float(lo),
                                  "hi": float(hi), "rel_error": (pred - o) / o, "inside": bool(lo <= o <= hi)}
    if full:
        pooled = flat.ravel()
        pred_sample = pooled[rng.integers(0, pooled.size, min(pooled.size, 200_000))]
        obs_flat = obs.ravel()
        edges = log_grid(pred_sample, obs_flat)
        h_pred = np.histogram(pooled, edges)[0].astype(float)
        row["rjsd"] = float(jensen_shannon_distance(np.histogram(obs_flat, edges)[0].astype(float), h_pred))
        floors = [float(jensen_shannon_distance(np.histogram(lat[d].ravel(), edges)[0].astype(float), h_pred))
                  for d in rng.choice(D, min(D, 50), replace=False)]
        row["rjsd_floor"] = float(np.mean(floors))
        med = float(np.median(obs_flat))
        row["w1_rel"] = float(wasserstein_distance(pred_sample, obs_flat)) / med
        obs_sub = obs_flat[rng.integers(0, obs_flat.size, min(obs_flat.size, 20_000))]
        row["crps_rel"] = crps_sample(pred_sample[:50_000], obs_sub) / med
    taus = np.array(list(t_obs.values()))
    q_obs = quality_at_deadline(obs, taus, **scoring_of(ds))  # [pass, k]
    tq_obs = tail_quality(q_obs.T, tail_q)
    row["tail_quality"] = []
    for k, (label, tau) in enumerate(t_obs.items()):
        tq = fc.quality[k].tail
        row["tail_quality"].append({"threshold": label, "threshold_s": float(tau), "observed": float(tq_obs[k]),
                                    "predicted": tq.median, "lo": tq.lo, "hi": tq.hi,
                                    "abs_error": abs(tq.median - float(tq_obs[k])),
                                    "inside": bool(tq.lo <= tq_obs[k] <= tq.hi),
                                    "mean_observed": float(q_obs[:, k].mean()),
                                    "mean_predicted": fc.quality[k].mean.median})
    return row


def own_deadlines(obs: np.ndarray) -> dict[str, float]:
    """A held-out run's own T90/T95/T99 (its latency percentiles), the deadlines its tail quality is scored at."""
    return {name: float(np.percentile(obs, p)) for name, p in (("T90", 90), ("T95", 95), ("T99", 99))}


def validate_config(fm: FittedModel, ds, *, anchors: list | None = None, n_draws: int = 200, seed: int = 0,
                    force: bool = False, tail_q: float = 0.01) -> dict:
    """Score one held-out file twice: as a run in a new session (what a user sees), and conditioned
    on the machine's state in its session(s) — the fitted session effect when the fit saw that session,
    else the anchors measured in it — so that model error and drift are told apart."""
    from tqsim.drift import anchor_offsets, session_offsets_of
    from tqsim.models.conditional import conditional, in_known_sessions

    values = {f: ds.attrs[f] for f in ("batch_size", "threads", "precision", "backend", "device", "compile")}
    values["compile"] = bool(values["compile"])
    config = Config.from_mapping(values)
    keep = np.isfinite(ds["latency_s"].values).all(axis=1)
    obs = ds["latency_s"].values[keep]
    sessions = (ds["session"].values[keep] if "session" in ds else np.zeros(obs.shape[0])).astype(np.int64)
    n_pass = obs.shape[0]
    t_obs = own_deadlines(obs)
    rng = np.random.default_rng(seed)
    fc = forecast(fm, config, list(t_obs.values()), n_passes=n_pass, n_draws=n_draws, tail_q=tail_q, seed=seed,
                  force=force)
    row: dict = {"config": config.as_dict(), "config_id": config.id, "calibrated": fc.calibrated,
                 "passes": int(n_pass), "warnings": fc.warnings}
    row.update(_score(fc, obs, ds, t_obs, tail_q, rng, full=True))
    # the machine state of the held-out run's sessions
    uniq = np.unique(sessions)
    per_session = session_offsets_of(fm, uniq, n_draws=n_draws)
    fitted = per_session is not None         # the fit saw these sessions: their level and their tail
    how = "the fitted sessions" if fitted else None
    if per_session is None and anchors:
        cols = []
        for s in uniq:
            here = [(c, lv[ss == s]) for c, lv, ss in anchors if (ss == s).any()]
            if not here:
                cols = None
                break
            cols.append(anchor_offsets(fm, here, n_draws=n_draws, seed=seed + int(s) % 1000))
        if cols is not None:
            per_session = np.stack(cols, axis=1)
            how = "anchors: " + ", ".join(sorted({c.id for c, _, _ in anchors}))
    row["conditioned_on"] = how
    if per_session is not None:
        offsets = in_known_sessions(conditional(fm, n_draws).post, per_session, sessions, rng)   # [D, passes]
        # anchors observe a new session's level, not its tail
        fc_c = forecast(fm, config, list(t_obs.values()), n_passes=n_pass, n_draws=n_draws, tail_q=tail_q,
                        seed=seed, force=force, session=offsets, session_note=how, tail_drift=not fitted)
        row["conditioned"] = _score(fc_c, obs, ds, t_obs, tail_q, rng, full=False)
    return row


def anchor_passes(ds) -> tuple[Config, np.ndarray, np.ndarray]:
    """A held-out file of a calibrated configuration as an anchor: its config, pass levels and sessions."""
    from tqsim.data.schema import batch_starts, level_batches

    config = Config.from_mapping({f: ds.attrs[f] for f in ("batch_size", "threads", "precision", "backend",
                                                            "device", "compile")})
    keep = np.isfinite(ds["latency_s"].values).all(axis=1)
    starts = batch_starts(ds["batch"].values)
    counts = np.diff(np.r_[starts, ds.sizes["instance"]])
    y = np.log(ds["latency_s"].values[keep][:, starts])
    levels = np.median(y[:, level_batches(counts, config.batch_size)], axis=1)
    sessions = (ds["session"].values[keep] if "session" in ds else np.zeros(levels.size)).astype(np.int64)
    return config, levels, sessions


def _summary(rows: list[dict], key: str | None) -> dict:
    pick = (lambda r: r) if key is None else (lambda r: r.get(key))
    rows = [pick(r) for r in rows if pick(r) is not None]
    if not rows:
        return {}
    err99 = np.array([abs(r["latency_s"]["p99"]["rel_error"]) for r in rows])
    inside = [r["latency_s"][k]["inside"] for r in rows for k in r["latency_s"]]
    inside += [t["inside"] for r in rows for t in r["tail_quality"]]
    tq_err = [t["abs_error"] for r in rows for t in r["tail_quality"]]
    out = {"median_rel_error_p99": float(np.median(err99)), "max_rel_error_p99": float(np.max(err99)),
           "coverage": float(np.mean(inside)), "n_intervals": len(inside),
           "median_abs_error_tail_quality": float(np.median(tq_err)),
           "median_abs_rel_error_p50": float(np.median([abs(r["latency_s"]["p50"]["rel_error"]) for r in rows])),
           "median_interval_width_tail_quality": float(np.median([t["hi"] - t["lo"] for r in rows
                                                                  for t in r["tail_quality"]]))}
    if "rjsd" in rows[0]:
        out["median_rjsd"] = float(np.median([r["rjsd"] for r in rows]))
        out["median_rjsd_floor"] = float(np.median([r["rjsd_floor"] for r in rows]))
    return out


@dataclass
class Validation:
    """Forecasts scored against held-out runs: one row per held-out configuration (errors as a new session
    and conditioned on the machine state), their summaries, and the anchors that read the machine."""

    system: str
    workload: str
    heldout: str
    family: str
    diagnostics_ok: bool
    anchors: list[str]
    configs: list[dict]
    summary: dict
    summary_conditioned: dict

    def as_dict(self) -> dict:
        return asdict(self)


def validate(fm: FittedModel, heldout: str | Path, *, n_draws: int = 200, seed: int = 0, force: bool = False,
             tail_q: float = 0.01, progress=None) -> Validation:
    """Score the fit against every configuration file under ``heldout``.

    Held-out files of configurations the fit calibrated are anchors: they read the machine's state in
    their session, and are scored themselves only when nothing else was held out."""
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
    datasets = [read_calibration(p, fm.workload) for p in files]
    fitted = {c["id"] for c in fm.configs}
    anchors = [anchor_passes(ds) for ds in datasets if ds.attrs.get("config_id", "") in fitted]
    targets = [ds for ds in datasets if ds.attrs.get("config_id", "") not in fitted] or datasets
    rows = []
    for i, ds in enumerate(targets):
        rows.append(validate_config(fm, ds, anchors=anchors, n_draws=n_draws, seed=seed + i, force=force,
                                    tail_q=tail_q))
        if progress:
            progress(ds.attrs.get("config_id", ""))
    return Validation(fm.system, fm.workload, str(folder), fm.spec.family, bool(fm.diagnostics_ok),
                      sorted({c.id for c, _, _ in anchors}), rows, _summary(rows, None), _summary(rows, "conditioned"))
