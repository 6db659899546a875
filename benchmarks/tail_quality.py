"""Tail quality on real runs (issue 3): how well do k passes predict the Q@T distribution of the
next 30, by KDE on log-time vs whole-pass resampling, and what would MLPerf have needed?

For every configuration of every workload in a workspace with >= k + 30 passes: hold out the last 30
passes; at the held-out configuration's own T_90/T_95/T_99 (per-instance latency percentiles of the
held-out passes) predict the Q@T distribution from the first k passes (10,000 simulated passes)
and report the Jensen–Shannon distance to the held-out histogram beside its floor (a perfect
predictor scored against 30 passes), and the errors in mean, minimum (expected minimum of 30
simulated passes vs the observed one) and standard deviation (ratio). Then the passes and
inferences the rJSD rule needed to converge (ε = 0.1 and 0.05) against MLPerf's counts.

    python -m tqsim calibrate --home WS --workload digits-cnn --grid batch_size=1,8 --passes 100
    python benchmarks/tail_quality.py WS [--k 10,20,40,70] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import math
import sys

import numpy as np

from tqsim.empirical.convergence import ConvergenceTracker, jensen_shannon_distance, jsd_floor, qat_histogram
from tqsim.empirical.mlperf import min_queries, normal_approx_queries, queries_needed
from tqsim.empirical.montecarlo import BatchScorer, batch_latencies, monte_carlo_qat, qat_from_batches
from tqsim.quality import campaign_configs, scoring_of

METHODS = ("kde", "passes", "pass_kde")
PCTS = (90, 95, 99)


def evaluate(lat: np.ndarray, batch: np.ndarray, scoring: dict, *, ks=(10, 20, 40, 70), heldout: int = 30,
             n_sim: int = 10_000, seed: int = 0) -> dict:
    """All figures for one configuration: (pass, instance) latencies in measurement order."""
    n = lat.shape[0]
    test = lat[n - heldout:]
    taus = np.percentile(test, PCTS)
    scorer = BatchScorer(batch, **scoring)
    observed = qat_from_batches(batch_latencies(test, batch), taus, scorer)  # (heldout, 3)
    rows = []
    for k in ks:
        if k > n - heldout:
            continue
        for method in METHODS:
            pred = monte_carlo_qat(lat[:k], batch, taus, method=method, n_sim=n_sim, seed=seed, **scoring)
            for j, pct in enumerate(PCTS):
                p, o = pred[:, j], observed[:, j]
                groups = p[: (p.size // heldout) * heldout].reshape(-1, heldout)
                rows.append({
                    "k": k, "method": method, "threshold": f"T_{pct}", "threshold_s": float(taus[j]),
                    "jsd": float(jensen_shannon_distance(qat_histogram(p), qat_histogram(o))),
                    "floor": jsd_floor(p, heldout, seed=seed)["mean"],
                    "mean_err": float(p.mean() - o.mean()),
                    "min_err": float(groups.min(axis=1).mean() - o.min()),
                    "std_ratio": float(p.std(ddof=1) / o.std(ddof=1)) if o.std() > 0 else float("nan"),
                    "obs_mean": float(o.mean()), "obs_min": float(o.min()), "obs_std": float(o.std(ddof=1))})
    # convergence of the rJSD rule over all passes in order, thresholds from all passes
    qat_all = qat_from_batches(batch_latencies(lat, batch), np.percentile(lat, PCTS), scorer)
    conv = {}
    for eps in (0.1, 0.05):
        tr = ConvergenceTracker(epsilon=eps)
        stop = next((i + 1 for i, row in enumerate(qat_all) if (tr.update(row), tr.converged)[1]), None)
        conv[str(eps)] = {"passes": stop, "inferences": None if stop is None else stop * lat.shape[1]}
    late95 = float((lat > np.percentile(lat, 95)).mean())
    late995 = float((lat > np.percentile(lat, 99.5)).mean())
    mlperf = {"p90_single_stream_min": min_queries(0.9, 1), "p99_single_stream_min": min_queries(0.99, 1),
              "p90_rules_fixed": round(normal_approx_queries(0.9)), "p99_rules_fixed": round(normal_approx_queries(0.99)),
              "p90_at_T95": queries_needed(0.9, late95), "p99_at_T99.5": queries_needed(0.99, late995)}
    return {"passes": n, "instances": lat.shape[1], "rows": rows, "convergence": conv, "mlperf": mlperf}


def _fmt(x, pp=False):
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return "–"
    return f"{100 * x:+.2f}" if pp else f"{x:.3g}"


def markdown(results: dict) -> str:
    out = []
    for wl, configs in results.items():
        for cid, r in configs.items():
            out.append(f"\n**{wl} · {cid}** ({r['passes']} passes × {r['instances']} instances; last 30 held out)\n")
            out.append("| k | method | τ | JSD | floor | mean err (pp) | min err (pp) | std pred/obs |")
            out.append("|---|---|---|---|---|---|---|---|")
            for row in r["rows"]:
                out.append(f"| {row['k']} | {row['method']} | {row['threshold']} | {row['jsd']:.2f} | {row['floor']:.2f} "
                           f"| {_fmt(row['mean_err'], True)} | {_fmt(row['min_err'], True)} | {_fmt(row['std_ratio'])} |")
            c, m = r["convergence"], r["mlperf"]
            out.append(f"\nrJSD < 0.1 after {_fmt(c['0.1']['passes'])} passes ({_fmt(c['0.1']['inferences'])} inferences); "
                       f"< 0.05 after {_fmt(c['0.05']['passes'])} ({_fmt(c['0.05']['inferences'])}). MLPerf: single-stream "
                       f"minimum {m['p90_single_stream_min']} (p90) / {m['p99_single_stream_min']} (p99) queries; server "
                       f"claim p90 at T_95 {_fmt(m['p90_at_T95'])}, p99 at T_99.5 {_fmt(m['p99_at_T99.5'])}; fixed "
                       f"counts of the rules {m['p90_rules_fixed']:,} / {m['p99_rules_fixed']:,}.")
    return "\n".join(out)


def run(home: str, *, workloads=None, ks=(10, 20, 40, 70), heldout: int = 30, n_sim: int = 10_000) -> dict:
    from tqsim.data.io import load_campaign
    from tqsim.data.workspace import Workspace

    ws = Workspace.at(home)
    results: dict = {}
    for system in ws.systems():
        for wl in workloads or ws.workloads(system):
            camp = load_campaign(ws.calibration_dir(system, wl))
            for ds in campaign_configs(camp):
                lat = ds["latency_s"].transpose("pass", "instance").values
                if lat.shape[0] < min(ks) + heldout:
                    print(f"skip {wl}/{ds.attrs['config_id']}: {lat.shape[0]} passes", file=sys.stderr)
                    continue
                results.setdefault(wl, {})[ds.attrs["config_id"]] = evaluate(
                    lat, ds["batch"].values, scoring_of(ds), ks=ks, heldout=heldout, n_sim=n_sim)
    return results


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("home")
    ap.add_argument("--workload", action="append")
    ap.add_argument("--k", default="10,20,40,70")
    ap.add_argument("--heldout", type=int, default=30)
    ap.add_argument("--json")
    args = ap.parse_args()
    res = run(args.home, workloads=args.workload, ks=tuple(int(k) for k in args.k.split(",")), heldout=args.heldout)
    print(markdown(res))
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(res, fh, indent=1, default=float)


if __name__ == "__main__":
    main()
