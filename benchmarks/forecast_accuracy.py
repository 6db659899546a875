"""Forecast accuracy on REAL runs, three protocols side by side, beside the reproducibility floor.

Per workload (real timing on this machine):

1. **Campaign A**: 14 configurations (batch 1, 4, 8, 16, 32, 64, 128 × threads 1, 2), ``--passes`` passes
   spread over ``--sessions`` sessions (`tqsim calibrate --sessions`). Train = batch 1/4/16/64; held out =
   batch 8/32/128 (never shown to the fit).
2. Fit on A's training configurations.
3. **Campaign B**, after the fit, in another workspace (one new session): the held-out configurations
   again, plus two anchors (the cheapest training configuration of each thread count, as `tqsim check` picks).

Protocols, each scored on p50/p99 (relative error of the posterior median), 90 % interval coverage, and
tail quality at the held-out run's own T90/T99 (absolute error, interval width):

* **interleaved** — held-out configurations of A (same rounds and sessions as the training ones),
  forecast conditioned on the fitted sessions: model error. Each held-out run is split into its
  odd and even passes; forecasts and baselines are scored against each half, and the **floor** is
  one half used as the forecast of the other (the same configuration measured twice, same n).
* **interleaved, all passes** — the same forecasts against each held-out run whole (``--passes`` passes, the
  issue's "≤ 8 % where the held-out configurations were measured with ≥ 100 passes"); no floor (one run).
* **later** — B's held-out runs, forecast for a new session: what a user sees. Floor: A's measurement
  of the same configuration used as the forecast of B's.
* **later + check** — the same, conditioned on B's anchors (`validate` does it). Baselines are scaled
  by the anchors' B/A level ratio, as a user with a check would do. Floor: A's measurement scaled alike.

A diagnostic row beside them, **tqsim, level known** (interleaved): the same forecasts with each held-out
run's own measured level put in place of the interpolated one. It is not a forecast; the gap between it and
tqsim is what interpolating the level between calibrated batch sizes costs, and what is left is the shape's.

Baselines: **nearest** (the calibrated configuration with the same threads and the nearest batch
size in log: its pooled quantiles; its per-instance latencies scored at the held-out thresholds) and
**loglinear** (log quantiles, and log per-instance latencies pass by pass, interpolated linearly in
log batch size between the bracketing calibrated sizes; extrapolated from the last two beyond).
Also: the share of calibrated configurations whose own p99 lies in their own 90 % band.

Six held-out configurations a workload cannot pin a ratio or a coverage: the p99-over-floor ratio is printed with
a 90 % bootstrap interval over configurations, the later coverage with a Jeffreys interval that counts each
configuration once, and both also pooled over the workloads (18 configurations).

    python benchmarks/forecast_accuracy.py [--base DIR] [--passes 100] [--sessions 2] [--workloads ...]

Calibrations resume (existing files are reused). Prints one JSON line per workload and the tables.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import subprocess
import sys
import time
import warnings
from pathlib import Path

import numpy as np

os.environ.setdefault("PYTENSOR_FLAGS", "blas__ldflags=")
warnings.simplefilter("ignore")

TRAIN_BS, HELDOUT_BS, THREADS = (1, 4, 16, 64), (8, 32, 128), (1, 2)
QS = (("p50", 50), ("p99", 99))
TQ_AT = (("T90", 90), ("T99", 99))


def tqsim(*args: str) -> None:
    subprocess.run([sys.executable, "-m", "tqsim", *args], check=True, stdout=subprocess.DEVNULL)


def grid_args(batch_sizes) -> list[str]:
    return ["--grid", "batch_size=" + ",".join(map(str, sorted(batch_sizes))), "--grid", "threads=1,2"]


def key(ds) -> tuple[int, int]:
    return int(ds.attrs["batch_size"]), int(ds.attrs["threads"])


def files_of(home: Path, workload: str) -> dict:
    from tqsim.data.io import calibration_files, read_calibration
    from tqsim.data.workspace import Workspace

    ws = Workspace.at(home)
    folder = ws.calibration_dir(ws.resolve_system(None), workload)
    return {key(ds): ds for ds in (read_calibration(p, workload) for p in calibration_files(folder))}


def halves(ds):
    """The odd and even passes of a run: two measurements of one configuration, in interleaved rounds."""
    n = ds.sizes["pass"]
    return ds.isel({"pass": np.arange(0, n, 2)}), ds.isel({"pass": np.arange(1, n, 2)})


# ---- observed statistics ---------------------------------------------------------------------------
def quantiles(ds) -> dict:
    lat = ds["latency_s"].values
    return {name: float(np.percentile(lat, p)) for name, p in QS}


def taus(ds) -> np.ndarray:
    return np.array([np.percentile(ds["latency_s"].values, p) for _, p in TQ_AT])


def tail_at(lat: np.ndarray, ds_target, t: np.ndarray) -> np.ndarray:
    """TQ_0.01 of passes ``lat`` at thresholds ``t``, scored with the target's per-instance scores."""
    from tqsim.data.schema import instance_scores
    from tqsim.quality import quality_at_deadline, tail_quality

    return tail_quality(quality_at_deadline(lat, t, score=instance_scores(ds_target).values).T, 0.01)


# ---- baselines -------------------------------------------------------------------------------------
def bracket(sizes: np.ndarray, bs: int) -> tuple[int, float]:
    """The log-linear baseline's pair ``sizes[j - 1], sizes[j]`` around ``bs`` (the last two beyond either end,
    ``sizes`` sorted) and the weight of ``sizes[j]``, linear in log batch size."""
    x = np.log(sizes)
    j = int(np.clip(np.searchsorted(x, math.log(bs)), 1, len(x) - 1))
    return j, float((math.log(bs) - x[j - 1]) / (x[j] - x[j - 1]))


def baseline(train: dict, target, scale: float = 1.0) -> dict:
    """Nearest and log-linear forecasts of ``target``'s p50/p99 and TQ at its own T90/T99."""
    bs, th = key(target)
    sizes = np.array(sorted(b for b, t in train if t == th))
    x = np.log(sizes)
    j, w = bracket(sizes, bs)
    lo, hi = train[(int(sizes[j - 1]), th)], train[(int(sizes[j]), th)]
    near = train[(int(sizes[np.argmin(np.abs(x - math.log(bs)))]), th)]
    t = taus(target)
    out = {"nearest": {}, "loglinear": {}}
    for name in dict(QS):
        out["nearest"][name] = quantiles(near)[name] * scale
        out["loglinear"][name] = math.exp((1 - w) * math.log(quantiles(lo)[name]) + w * math.log(quantiles(hi)[name])) * scale
    out["nearest"]["tq"] = tail_at(near["latency_s"].values * scale, target, t)
    n = min(lo.sizes["pass"], hi.sizes["pass"])
    inter = np.exp((1 - w) * np.log(lo["latency_s"].values[:n]) + w * np.log(hi["latency_s"].values[:n])) * scale
    out["loglinear"]["tq"] = tail_at(inter, target, t)
    return out


METRICS = ("p50", "p99", "tq_T90", "tq_T99")
WHOLE = "interleaved, all passes"
LEVEL_KNOWN = "tqsim, level known"
PROTOCOLS = ("interleaved", WHOLE, "later", "later+check")


def errors_of(q: dict, tq: np.ndarray, q_ref: dict, tq_ref: np.ndarray) -> dict:
    """One configuration's errors: relative for the quantiles, absolute (pp) for TQ at T90 and T99."""
    out = {name: abs(q[name] / q_ref[name] - 1) for name in dict(QS)}
    out.update({f"tq_{label}": float(abs(tq[k] - tq_ref[k])) for k, (label, _) in enumerate(TQ_AT)})
    return out


def score_baselines(train: dict, targets: list, scale_of=lambda ds: 1.0) -> dict:
    """Per method, one error dict per target configuration."""
    rows = {"nearest": [], "loglinear": []}
    for ds in targets:
        b = baseline(train, ds, scale_of(ds))
        q, tq = quantiles(ds), tail_at(ds["latency_s"].values, ds, taus(ds))
        for m in rows:
            rows[m].append(errors_of(b[m], b[m]["tq"], q, tq))
    return rows


def floor_between(pairs: list, scale_of=lambda a, b: 1.0) -> list[dict]:
    """Measurement ``a`` of a configuration used as the forecast of measurement ``b`` of the same one."""
    out = []
    for a, b in pairs:
        s = scale_of(a, b)
        qa = {k: v * s for k, v in quantiles(a).items()}
        t = taus(b)
        out.append(errors_of(qa, tail_at(a["latency_s"].values * s, b, t), quantiles(b),
                             tail_at(b["latency_s"].values, b, t)))
    return out


# ---- tqsim ---------------------------------------------------------------------------------------------
def errors_of_scored(r: dict) -> dict:
    """A validate row's errors as the baselines' (relative p50/p99, absolute TQ at T90/T99), plus the TQ interval
    widths and every interval's inside-flag."""
    e = {name: abs(r["latency_s"][name]["rel_error"]) for name in dict(QS)}
    for t in r["tail_quality"]:
        if t["threshold"] in dict(TQ_AT):
            e[f"tq_{t['threshold']}"] = t["abs_error"]
            e[f"tq_{t['threshold']}_width"] = t["hi"] - t["lo"]
    e["inside"] = [v["inside"] for v in r["latency_s"].values()] + [t["inside"] for t in r["tail_quality"]]
    return e


def score_tqsim(fm, targets: list, *, conditioned: bool, anchors=None, seed: int = 0) -> list[dict]:
    """One dict per target: errors as the baselines', plus interval widths and inside-flags."""
    from tqsim.validate import validate_config

    out = []
    for i, ds in enumerate(targets):
        row = validate_config(fm, ds, anchors=anchors, n_draws=200, seed=seed + i, force=True)
        r = row.get("conditioned") if conditioned else row
        if r is None:
            continue
        out.append(errors_of_scored(r))
    return out


def score_level_known(fm, targets: list, seed: int = 0) -> list[dict]:
    """tqsim with the held-out run's own level given (an oracle, not a forecast): each posterior draw of the
    configuration's level is moved to the run's measured median pass level in each of its sessions; everything
    else (pass-to-pass spread, body, stalls, first batch) stays the model's. What remains is the error of the
    shape; the difference to :func:`score_tqsim` is what interpolating the level between batch sizes costs."""
    from tqsim.forecast import forecast
    from tqsim.models.conditional import conditional
    from tqsim.validate import _score, anchor_passes, own_deadlines

    out = []
    for i, ds in enumerate(targets):
        config, levels, sessions = anchor_passes(ds)
        own = {x: float(np.median(levels[sessions == x])) for x in np.unique(sessions)}   # each session's level
        s = seed + i
        # the level draws simulate_latency makes first from its generator, reproduced to be cancelled exactly
        mu = conditional(fm, 200).level([config], noise=True, rng=np.random.default_rng(s))[:, 0]
        obs = ds["latency_s"].values[np.isfinite(ds["latency_s"].values).all(axis=1)]
        t_obs = own_deadlines(obs)
        fc = forecast(fm, config, list(t_obs.values()), n_passes=obs.shape[0], n_draws=200, seed=s, force=True,
                      session=np.array([own[x] for x in sessions])[None, :] - mu[:, None], tail_drift=False)
        r = _score(fc, obs, ds, t_obs, 0.01, np.random.default_rng(s), full=False)
        out.append(errors_of_scored(r))
    return out


def mean_of_halves(per_half: list[list[dict]]) -> list[dict]:
    """Interleaved: each configuration's error averaged over its two halves (inside-flags pooled)."""
    out = []
    for rows in zip(*per_half):
        d = {k: float(np.mean([r[k] for r in rows])) for k in rows[0] if k != "inside"}
        if "inside" in rows[0]:
            d["inside"] = [x for r in rows for x in r["inside"]]
        out.append(d)
    return out


def coverage_interval(rows: list[dict]) -> tuple[float, float, float]:
    """Share of every interval that held its observation, and a 90 % Jeffreys interval that counts each
    configuration once (its share of hits as a fractional success: one configuration's intervals share its
    errors, so they are not independent flags). Six configurations cannot tell 85 % from 95 %: a forecaster whose
    intervals hold 90 % of the time lands outside 85–95 % in most campaigns of that size, so the interval is
    printed beside the share."""
    from scipy.stats import beta

    flags = [np.asarray(r["inside"], float) for r in rows]
    share = float(np.concatenate(flags).mean())
    k, n = float(sum(f.mean() for f in flags)), len(flags)
    lo, hi = beta.ppf([0.05, 0.95], k + 0.5, n - k + 0.5)
    return share, float(lo), float(hi)


def summary(rows: list[dict]) -> dict:
    """Medians over the configurations, coverage over every interval."""
    out = {k: float(np.median([r[k] for r in rows])) for k in rows[0] if k != "inside"}
    if "inside" in rows[0]:
        out["coverage"] = coverage_interval(rows)[0]
    out["n"] = len(rows)
    return out


def paired_difference(a: list[dict], b: list[dict], metric: str, n_boot: int = 4000, seed: int = 0) -> tuple:
    """Median error of ``a`` minus that of ``b`` over the same configurations, with a 90 % bootstrap interval
    (configurations resampled together): whether a win or a loss is larger than the choice of configurations."""
    x = np.array([r[metric] for r in a])
    y = np.array([r[metric] for r in b])
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(x), size=(n_boot, len(x)))
    d = np.median(x[idx], axis=1) - np.median(y[idx], axis=1)
    return float(np.median(x) - np.median(y)), float(np.quantile(d, 0.05)), float(np.quantile(d, 0.95))


def paired_ratio(a: list[dict], b: list[dict], metric: str, n_boot: int = 4000, seed: int = 0) -> tuple:
    """Median error of ``a`` over that of ``b`` (the same configurations), with a 90 % bootstrap interval
    (configurations resampled together): the "≤ 1.5× the floor" target read with its uncertainty."""
    x = np.array([r[metric] for r in a])
    y = np.array([r[metric] for r in b])
    idx = np.random.default_rng(seed).integers(0, len(x), size=(n_boot, len(x)))
    reps = np.median(x[idx], axis=1) / np.maximum(np.median(y[idx], axis=1), 1e-12)
    return float(np.median(x) / max(np.median(y), 1e-12)), float(np.quantile(reps, 0.05)), float(np.quantile(reps, 0.95))


def own_band(fm, train: dict) -> dict:
    """Calibrated configurations: their own observed p99 inside their own 90 % band (new session and
    conditioned on the fitted sessions)."""
    from tqsim.validate import validate_config

    hits = {"new_session": [], "conditioned": []}
    for i, ds in enumerate(train.values()):
        row = validate_config(fm, ds, n_draws=200, seed=100 + i, force=True)
        hits["new_session"].append(row["latency_s"]["p99"]["inside"])
        if row.get("conditioned"):
            hits["conditioned"].append(row["conditioned"]["latency_s"]["p99"]["inside"])
    return {k: float(np.mean(v)) for k, v in hits.items() if v}


# ---- the protocol --------------------------------------------------------------------------------------
def run_workload(base: Path, workload: str, passes: int, sessions: int, gap: str) -> dict:
    from tqsim.data.io import load_campaign
    from tqsim.data.workspace import Workspace
    from tqsim.drift import level_se  # noqa: F401  (imported for its side-free check that tqsim is importable)
    from tqsim.factors import Config
    from tqsim.models import fit_campaign
    from tqsim.validate import anchor_passes

    home_a, home_b = base / workload / "A", base / workload / "B"
    t0 = time.perf_counter()
    tqsim("calibrate", "--workload", workload, *grid_args(TRAIN_BS + HELDOUT_BS), "--passes", str(passes),
          "--warmup", "1", "--sessions", str(sessions), "--gap", gap, "--home", str(home_a))
    t_a = time.perf_counter() - t0
    A = files_of(home_a, workload)
    train = {k: v for k, v in A.items() if k[0] in TRAIN_BS}
    held_a = [v for k, v in sorted(A.items()) if k[0] in HELDOUT_BS]
    ws = Workspace.at(home_a)
    system = ws.resolve_system(None)
    folder = ws.calibration_dir(system, workload)
    t1 = time.perf_counter()
    fm = fit_campaign(load_campaign([folder / f"{Config(b, t).id}.nc" for b, t in train]), seed=0)
    t_fit = time.perf_counter() - t1
    # campaign B: after the fit, the held-out configurations and two anchors, in a new session
    pass_s = {k: float(np.median(v["latency_s"].values.sum(axis=1) / k[0])) for k, v in train.items()}
    anchors_k = [min((k for k in train if k[1] == th), key=pass_s.get) for th in THREADS]
    b_sizes = sorted(set(HELDOUT_BS) | {k[0] for k in anchors_k})
    tqsim("calibrate", "--workload", workload, *grid_args(b_sizes), "--passes", str(max(passes // sessions, 20)),
          "--warmup", "1", "--home", str(home_b))
    B = files_of(home_b, workload)
    held_b = [B[key(ds)] for ds in held_a]
    anchors = [anchor_passes(B[k]) for k in anchors_k]
    anchor_ratio = {th: math.exp(float(np.median(anchor_passes(B[k])[1]) - np.median(anchor_passes(A[k])[1])))
                    for k, th in zip(anchors_k, THREADS)}
    # interleaved: score against each half; floor: half vs half
    split = [halves(ds) for ds in held_a]
    per_half = [score_baselines(train, [h[i] for h in split]) for i in (0, 1)]
    interleaved = {"tqsim": mean_of_halves([score_tqsim(fm, [h[i] for h in split], conditioned=True) for i in (0, 1)]),
                   **{m: mean_of_halves([per_half[i][m] for i in (0, 1)]) for m in ("nearest", "loglinear")},
                   "floor": mean_of_halves([floor_between([(h[1 - i], h[i]) for h in split]) for i in (0, 1)]),
                   LEVEL_KNOWN: mean_of_halves([score_level_known(fm, [h[i] for h in split]) for i in (0, 1)])}
    # the whole held-out run (100 passes): the target "≤ 8 % where held out with ≥ 100 passes"; no floor (one run)
    whole = {"tqsim": score_tqsim(fm, held_a, conditioned=True), **score_baselines(train, held_a)}
    later = {"tqsim": score_tqsim(fm, held_b, conditioned=False), **score_baselines(train, held_b),
             "floor": floor_between(list(zip(held_a, held_b)))}
    scale = lambda ds: anchor_ratio[key(ds)[1]]  # noqa: E731
    checked = {"tqsim": score_tqsim(fm, held_b, conditioned=True, anchors=anchors),
               **score_baselines(train, held_b, scale_of=scale),
               "floor": floor_between(list(zip(held_a, held_b)), scale_of=lambda a, b: scale(b))}
    protocols = {"interleaved": interleaved, WHOLE: whole, "later": later, "later+check": checked}
    differences = {proto: {m: {k: paired_difference(rows["tqsim"], rows[m], k) for k in METRICS}
                           for m in rows if m != "tqsim"} for proto, rows in protocols.items()}
    post = fm.posterior_draws()
    return {"workload": workload, "system": fm.system, "passes": passes, "sessions": sessions,
            "calibrate_A_s": round(t_a, 1), "fit_s": round(t_fit, 1),
            "diagnostics": {k: fm.diagnostics[k] for k in ("rhat_max", "ess_bulk_min", "divergences", "status")},
            **{name: {"median": float(np.median(post[name])), "q05": float(np.quantile(post[name], 0.05)),
                      "q95": float(np.quantile(post[name], 0.95))}
               for name in ("session_sd", "session_config_sd") if name in post},
            "anchors": [Config(*k).id for k in anchors_k],
            "drift_B_vs_A": {str(th): anchor_ratio[th] - 1 for th in THREADS},
            "own_band": own_band(fm, train),
            "held_out": [Config(*key(ds)).id for ds in held_a],
            **{proto: {m: summary(rows) for m, rows in r.items()} for proto, r in protocols.items()},
            "per_config": protocols, "tqsim_minus": differences}


def tables(rows: list[dict]) -> str:
    out = ["| workload | protocol | method | \\|p50 err\\| | \\|p99 err\\| | TQ err T90 (pp) | TQ err T99 (pp) | "
           "TQ 90% width T99 (pp) | coverage |", "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        for proto in PROTOCOLS:
            for m in (m for m in ("tqsim", LEVEL_KNOWN, "nearest", "loglinear", "floor") if m in r.get(proto, {})):
                s = r[proto][m]
                cov = f"{100 * s['coverage']:.0f}%" if "coverage" in s else "–"
                w99 = f"{100 * s['tq_T99_width']:.1f}" if "tq_T99_width" in s else "–"
                out.append(f"| {r['workload']} | {proto} | {m} | {100 * s['p50']:.1f}% | {100 * s['p99']:.1f}% | "
                           f"{100 * s['tq_T90']:.1f} | {100 * s['tq_T99']:.1f} | {w99} | {cov} |")
    out.append("")
    out.append("| workload | p99 error / floor (interleaved; 90 % over configurations) | later coverage (90 % over configurations) | own p99 in own band (new session / "
               "conditioned) | σ_session; σ_sc (90 %) | drift B vs A (th1, th2) | fit (s) | r-hat | divergences |")
    out.append("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        pc = r["per_config"]["interleaved"]
        ratio, r_lo, r_hi = paired_ratio(pc["tqsim"], pc["floor"], "p99")
        ob = r["own_band"]
        sd = r["session_sd"]
        sc = r.get("session_config_sd")
        sc_text = f"; {sc['median']:.3f} [{sc['q05']:.3f}, {sc['q95']:.3f}]" if sc else ""
        cov, lo, hi = coverage_interval(r["per_config"]["later"]["tqsim"])
        out.append(f"| {r['workload']} | {ratio:.2f} [{r_lo:.2f}, {r_hi:.2f}] | {100 * cov:.0f}% [{100 * lo:.0f}, {100 * hi:.0f}] | "
                   f"{100 * ob.get('new_session', float('nan')):.0f}% / {100 * ob.get('conditioned', float('nan')):.0f}% | "
                   f"{sd['median']:.3f} [{sd['q05']:.3f}, {sd['q95']:.3f}]{sc_text} | "
                   f"{100 * r['drift_B_vs_A']['1']:+.0f}%, {100 * r['drift_B_vs_A']['2']:+.0f}% | {r['fit_s']} | "
                   f"{r['diagnostics']['rhat_max']:.3f} | {r['diagnostics']['divergences']} |")
    pc = [r["per_config"]["interleaved"] for r in rows]
    ratio, lo, hi = paired_ratio([c for p in pc for c in p["tqsim"]], [c for p in pc for c in p["floor"]], "p99")
    out.append(f"\ninterleaved: p99 error over the floor pooled over the workloads {ratio:.2f} [{lo:.2f}, {hi:.2f}] "
               f"({sum(len(p['tqsim']) for p in pc)} configurations, 90 % bootstrap over configurations)")
    for proto in ("later", "later+check"):
        pooled = [c for r in rows for c in r["per_config"][proto]["tqsim"]]
        cov, lo, hi = coverage_interval(pooled)
        out.append(f"\n{proto}: coverage pooled over the workloads {100 * cov:.0f}% [{100 * lo:.0f}, {100 * hi:.0f}] "
                   f"({len(pooled)} configurations, 90 % Jeffreys interval counting each once)")
    out.append("")
    out.append("tqsim's median error minus the other method's, over the same held-out configurations (90 % bootstrap "
               "interval, configurations resampled; negative: tqsim closer)")
    out.append("")
    out.append("| workload | protocol | vs | p50 (pp) | p99 (pp) | TQ T90 (pp) | TQ T99 (pp) |")
    out.append("|---|---|---|---|---|---|---|")
    for r in rows:
        for proto in PROTOCOLS:
            for m in (m for m in ("loglinear", "nearest", "floor") if m in r["tqsim_minus"].get(proto, {})):
                cells = [f"{100 * d:+.1f} [{100 * lo:+.1f}, {100 * hi:+.1f}]"
                         for d, lo, hi in (r["tqsim_minus"][proto][m][k] for k in METRICS)]
                out.append(f"| {r['workload']} | {proto} | {m} | " + " | ".join(cells) + " |")
    return "\n".join(out)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--base", type=Path, default=Path("/tmp/tqsim-forecast-accuracy"))
    ap.add_argument("--passes", type=int, default=100)
    ap.add_argument("--sessions", type=int, default=2)
    ap.add_argument("--gap", default="30s")
    ap.add_argument("--workloads", nargs="+", default=["digits-cnn", "digits-mlp", "digits-transformer"])
    ap.add_argument("--fresh", action="store_true", help="delete the base folder first")
    ap.add_argument("--variant", default="", help="JSON of ModelSpec fields to override (model comparisons)")
    args = ap.parse_args()
    if args.variant:
        import tqsim.models.fit as fit_module

        base_spec, fields = fit_module.make_spec, json.loads(args.variant)

        def make_spec(*a, **k):
            spec = base_spec(*a, **k)
            for name, value in fields.items():
                setattr(spec, name, value)
            return spec

        fit_module.make_spec = make_spec
    if args.fresh and args.base.exists():
        shutil.rmtree(args.base)
    rows = []
    for wl in args.workloads:
        r = run_workload(args.base, wl, args.passes, args.sessions, args.gap)
        print(json.dumps(r, default=float), flush=True)
        rows.append(r)
    print(tables(rows))


if __name__ == "__main__":
    sys.exit(main())
