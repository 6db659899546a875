"""Do `tqsim explain`'s effects agree with effects measured directly? (issue 16)

Per workload, the REAL campaigns of `benchmarks/forecast_accuracy.py` (campaign A: batch 1/4/8/16/32/64/128 ×
threads 1/2, 100 passes in two sessions; copied, never written). The model is fitted in memory on the training
configurations only (batch 1/4/16/64), as there; explain then computes contrasts whose two ends were measured
but never shown to the fit:

* threads 1 → 2 at batch 8 and at batch 32;
* batch 8 → 32 at threads 1 and at threads 2.

(Batch 128 was measured too, but lies beyond the training range, where explain refuses to go.)

Each is compared with the same contrast measured between the two held-out configurations of the campaign: the
ratio of their p50 and of their p99 (per-instance latency pooled over the 100 passes) and the difference of their
TQ_0.01 (the worst of the 100 passes) at one deadline — the larger of the two ends' measured p99, a deadline both
nearly meet, so that the change is not pinned at ±100 pp. The measured interval is a paired bootstrap over rounds
(both configurations of a round resampled together, as they shared its machine state). Reported per contrast:
explained [90 %], measured [90 %], whether the signs agree (the explained posterior median's and the measured
value's) and whether the two intervals overlap.

    python benchmarks/explain_effects.py [--base /work/bench/fa] [--workloads ...] [--boot 400]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np

os.environ.setdefault("PYTENSOR_FLAGS", "blas__ldflags=")
warnings.simplefilter("ignore")
sys.path.insert(0, str(Path(__file__).resolve().parent))

from forecast_accuracy import TRAIN_BS, files_of, key  # noqa: E402

CONTRASTS = ((("threads", 1, 2), {"batch_size": 8}), (("threads", 1, 2), {"batch_size": 32}),
             (("batch_size", 8, 32), {"threads": 1}), (("batch_size", 8, 32), {"threads": 2}))
METRICS = (("p50", "p50_change", "%"), ("p99", "p99_change", "%"), ("tq", "tail_quality_change", "pp"))


def measured(ds_a, ds_b, tau: float, n_boot: int, seed: int) -> dict:
    """Measured p50/p99 ratio − 1 and TQ_0.01 difference of ``ds_b`` over ``ds_a`` (held-out runs of one
    campaign), each with a 90 % paired bootstrap interval over the rounds both measured."""
    from tqsim.data.schema import instance_scores
    from tqsim.quality import quality_at_deadline, tail_quality

    ra, rb = ds_a["round"].values.tolist(), ds_b["round"].values.tolist()
    common = np.intersect1d(ra, rb)
    la = ds_a["latency_s"].values[[ra.index(r) for r in common]]   # pass p of a is measured in the round of b's
    lb = ds_b["latency_s"].values[[rb.index(r) for r in common]]
    qa = quality_at_deadline(la, np.array([tau]), score=instance_scores(ds_a).values)[:, 0]
    qb = quality_at_deadline(lb, np.array([tau]), score=instance_scores(ds_b).values)[:, 0]

    def stats(idx):
        pa = np.percentile(la[idx].reshape(idx.shape[0], -1), [50, 99], axis=1)
        pb = np.percentile(lb[idx].reshape(idx.shape[0], -1), [50, 99], axis=1)
        return {"p50": pb[0] / pa[0] - 1, "p99": pb[1] / pa[1] - 1,
                "tq": tail_quality(qb[idx], 0.01) - tail_quality(qa[idx], 0.01)}

    point = {k: float(v[0]) for k, v in stats(np.arange(common.size)[None]).items()}
    idx = np.random.default_rng(seed).integers(0, common.size, (n_boot, common.size))
    reps = {}
    for chunk in np.array_split(np.arange(n_boot), max(n_boot // 50, 1)):   # keeps the arrays small
        for k, v in stats(idx[chunk]).items():
            reps.setdefault(k, []).append(v)
    return {k: {"value": point[k], "lo": float(np.quantile(np.concatenate(v), 0.05)),
                "hi": float(np.quantile(np.concatenate(v), 0.95))} for k, v in reps.items()}


def run_workload(base: Path, workload: str, work: Path, n_boot: int) -> dict:
    from tqsim.data.io import load_campaign
    from tqsim.explain import explain
    from tqsim.factors import Config
    from tqsim.models import fit_campaign

    src = base / workload / "A"
    home = work / workload
    shutil.copytree(src / "calibration", home / "calibration", ignore=shutil.ignore_patterns(".calibrate.lock"))
    A = files_of(home, workload)
    train = [k for k in A if k[0] in TRAIN_BS]
    folder = next((home / "calibration").glob(f"*/{workload}"))
    campaign = load_campaign([folder / f"{Config(*k).id}.nc" for k in sorted(train)])
    t0 = time.perf_counter()
    fm = fit_campaign(campaign, seed=0)
    t_fit = time.perf_counter() - t0
    rows = []
    for (factor, a, b), at in CONTRASTS:
        ka = (at.get("batch_size", a if factor == "batch_size" else None), at.get("threads", a if factor == "threads" else None))
        kb = (at.get("batch_size", b if factor == "batch_size" else None), at.get("threads", b if factor == "threads" else None))
        tau = max(float(np.percentile(A[k]["latency_s"].values, 99)) for k in (ka, kb))
        t1 = time.perf_counter()
        ex = explain(fm, {**at, factor: (a, b)}, threshold=tau, campaign=campaign, force=True)
        t_ex = time.perf_counter() - t1
        eff = next(e for e in ex.as_dict()["effects"] if e["factor"] == factor)
        assert (eff["from_config"], eff["to_config"]) == (Config(*ka).id, Config(*kb).id)
        meas = measured(A[ka], A[kb], tau, n_boot, seed=len(rows))
        for name, field, unit in METRICS:
            e, m = eff[field], meas[name]
            rows.append({"contrast": eff["label"], "metric": name, "unit": unit, "threshold_s": tau,
                         "explained": {k: e[k] for k in ("median", "lo", "hi")}, "measured": m,
                         "sign_agrees": bool(np.sign(round(e["median"], 4)) == np.sign(round(m["value"], 4))),
                         "explained_excludes_0": bool(e["lo"] > 0 or e["hi"] < 0),
                         "overlap": bool(e["lo"] <= m["hi"] and m["lo"] <= e["hi"]),
                         "measured_inside": bool(e["lo"] <= m["value"] <= e["hi"]), "explain_s": round(t_ex, 2)})
    return {"workload": workload, "fit_s": round(t_fit, 1), "diagnostics": fm.diagnostics.get("status"),
            "base_sessions": int(fm.summaries.sessions.size), "rows": rows}


def fmt(x: dict, unit: str, key: str = "median") -> str:
    return f"{100 * x[key]:+.1f} [{100 * x['lo']:+.1f}, {100 * x['hi']:+.1f}]"


def table(results: list[dict]) -> str:
    out = ["| workload | contrast | metric | explained [90 %] | measured [90 %] | sign agrees | intervals overlap | "
           "measured inside explained |", "|---|---|---|---|---|---|---|---|"]
    for r in results:
        for row in r["rows"]:
            unit = "%" if row["unit"] == "%" else " pp"
            out.append(f"| {r['workload']} | {row['contrast']} | {row['metric']} ({unit.strip()}) | "
                       f"{fmt(row['explained'], unit)} | {fmt(row['measured'], unit, 'value')} | "
                       f"{'yes' if row['sign_agrees'] else 'NO'} | {'yes' if row['overlap'] else 'NO'} | "
                       f"{'yes' if row['measured_inside'] else 'no'} |")
    out += ["", "| workload | metric | sign agrees | sign agrees where explain's interval excludes 0 | intervals "
            "overlap | measured inside explained | median 90 % width, explained / measured |", "|---|---|---|---|---|---|---|"]
    everything = [row for r in results for row in r["rows"]]
    for label, rows in [(r["workload"], r["rows"]) for r in results] + [("all", everything)]:
        for metric in ("p50", "p99", "tq", "all"):
            sel = [x for x in rows if metric == "all" or x["metric"] == metric]
            claims = [x for x in sel if x["explained_excludes_0"]]
            width = [(x["explained"]["hi"] - x["explained"]["lo"], x["measured"]["hi"] - x["measured"]["lo"])
                     for x in sel]
            widths = (f"{100 * np.median([w[0] for w in width]):.1f} / {100 * np.median([w[1] for w in width]):.1f}"
                      if metric != "all" else "–")
            out.append(f"| {label} | {metric} | {sum(x['sign_agrees'] for x in sel)}/{len(sel)} | "
                       f"{sum(x['sign_agrees'] for x in claims)}/{len(claims)} | "
                       f"{sum(x['overlap'] for x in sel)}/{len(sel)} | {sum(x['measured_inside'] for x in sel)}/{len(sel)} "
                       f"| {widths} |")
    return "\n".join(out)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--base", type=Path, default=Path("/work/bench/fa"))
    ap.add_argument("--workloads", nargs="+", default=["digits-cnn", "digits-mlp", "digits-transformer"])
    ap.add_argument("--boot", type=int, default=400)
    ap.add_argument("--tables", type=Path, help="only print the tables of an earlier run's JSON lines (this file)")
    args = ap.parse_args()
    if args.tables:
        print(table([json.loads(line) for line in args.tables.read_text().splitlines() if line.startswith("{")]))
        return
    results = []
    with tempfile.TemporaryDirectory(prefix="tqsim-explain-bench-") as work:
        for wl in args.workloads:
            r = run_workload(args.base, wl, Path(work), args.boot)
            print(json.dumps(r), flush=True)
            results.append(r)
    print(table(results))


if __name__ == "__main__":
    sys.exit(main())
