"""Calibration planning (issue 16): does measuring only what the forecasts need match measuring everything?

Per workload, one REAL campaign of the whole target grid (batch 1, 2, 4, ..., 256 × threads 1, 2; ``--passes``
passes in ``--sessions`` sessions, `tqsim calibrate`) is the pool. Each configuration's passes are split, in
measured order within each session, into a training pool (even positions) and a test half (odd positions,
interleaved in time with the training passes). Each method takes passes from the training pool only, is fitted
on what it took (the same fit as ``tqsim calibrate --adaptive`` makes between rounds), and is scored on the
test halves of ALL targets with ``tqsim.validate.validate_config`` (the interleaved protocol of
forecast_accuracy.py): median |p99 error|, 90 % interval coverage of p50/p90/p99, |TQ error| at the test
half's own T99.

* **full grid** — every target with all its training passes.
* **adaptive** — tqsim's loop (``tqsim.adaptive.run_adaptive``, the code `calibrate --adaptive` runs),
  replaying this pool instead of measuring, until every target's p99 interval is within ``--until-width``
  or ``--budget-share`` of the full grid's inferences is spent.
* **uniform sparse** — every other batch size (1, 4, 16, 64, 256) × threads 1, 2, its passes set so that its
  inferences equal adaptive's.
* **every target, thin** — all targets, with equal passes, to equal adaptive's inferences.
* **random** — chunks of passes of random target configurations until adaptive's inferences (3 seeds; median).
* **floor** — each target's training half used as the forecast of its test half (the same configuration measured
  twice): no method can beat it on a calibrated configuration.

Inferences count every pass a calibration runs: timed, warm-up and quality passes.

    python benchmarks/calibration_planning.py [--base DIR] [--passes 80] [--sessions 2] [--workloads ...]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import time
import warnings
from pathlib import Path

import numpy as np

os.environ.setdefault("PYTENSOR_FLAGS", "blas__ldflags=")
warnings.simplefilter("ignore")
sys.path.insert(0, str(Path(__file__).parent))

BATCHES = (1, 2, 4, 8, 16, 32, 64, 128, 256)
THREADS = (1, 2)
SPARSE = (1, 4, 16, 64, 256)
TARGET = "batch_size=1..256,threads=1,2"


def campaign_of(base: Path, workload: str, passes: int, sessions: int):
    """The full target grid's campaign (measured once; a rerun resumes)."""
    from tqsim.data.io import load_campaign
    from tqsim.data.workspace import Workspace

    home = base / workload
    subprocess.run([sys.executable, "-m", "tqsim", "calibrate", "--home", str(home), "--workload", workload,
                    "--grid", "batch_size=" + ",".join(map(str, BATCHES)), "--grid",
                    "threads=" + ",".join(map(str, THREADS)), "--passes", str(passes), "--sessions", str(sessions)],
                   check=True, stdout=subprocess.DEVNULL)
    ws = Workspace.at(home)
    return load_campaign(ws.calibration_dir(ws.resolve_system(None), workload), workload=workload)


class Pool:
    """The campaign split into a training pool and a test half per configuration; subsets of the pool as
    campaigns (untaken passes are NaN, as a shorter calibration file reads)."""

    def __init__(self, campaign, swap: bool = False):
        from tqsim.models.summaries import configs_of_campaign

        self.campaign = campaign
        self.configs = configs_of_campaign(campaign)
        self.train, self.test = {}, {}
        for i, c in enumerate(self.configs):
            rounds = campaign["round"].values[i]
            ses = campaign["session"].values[i]
            ok = np.isfinite(campaign["latency_s"].values[i]).all(axis=1)
            order = [p for p in np.argsort(rounds, kind="stable") if ok[p]]
            per = {s: [p for p in order if ses[p] == s] for s in dict.fromkeys(ses[order])}
            first, second = (1, 0) if swap else (0, 1)     # --swap: the other half trains
            train = {s: v[first::2] for s, v in per.items()}
            self.test[c] = np.array(sorted(p for v in per.values() for p in v[second::2]))
            # the pool is taken in time order, sessions interleaved: any subset of 2+ passes spans the sessions
            self.train[c] = np.array([v[k] for k in range(max(map(len, train.values()))) for v in train.values()
                                      if k < len(v)])

    def subset(self, take: dict):
        idx = [i for i, c in enumerate(self.configs) if take.get(c, 0) > 0]
        ds = self.campaign.isel(config=idx).copy(deep=True)
        lat = ds["latency_s"].values
        for j, i in enumerate(idx):
            keep = np.zeros(lat.shape[1], bool)
            keep[self.train[self.configs[i]][:take[self.configs[i]]]] = True
            lat[j, ~keep] = np.nan
        ds["latency_s"].values = lat
        ds["n_passes"].values = np.array([take[self.configs[i]] for i in idx])
        return ds

    def test_ds(self, config):
        i = self.configs.index(config)
        ds = self.campaign.isel(config=i, **{"pass": self.test[config]})
        ds.attrs.update({f: (int(v) if f in ("batch_size", "threads", "compile") else str(v))
                         for f, v in config.as_dict().items()})
        return ds

    def train_ds(self, config):
        i = self.configs.index(config)
        return self.campaign.isel(config=i, **{"pass": self.train[config]})


class Replay:
    """The adaptive loop's measurements, taken from the pool (tqsim.adaptive.Measurements)."""

    warmup = 2

    def __init__(self, pool: Pool, seed: int = 0):
        self.pool, self.seed = pool, seed
        self.n_instances = int(pool.campaign.sizes["instance"])
        self.take: dict = {}
        self.fit_seconds = []
        self.last = None

    def passes(self):
        return dict(self.take)

    def measure(self, steps):
        for config, add in steps:
            self.take[config] = min(self.take.get(config, 0) + add, len(self.pool.train[config]))

    def fit(self, final: bool = False):
        if final and self.last is not None:   # scored as the rounds' fit: the full refit changes little
            return self.last
        self.last = fit(self.pool, self.take, self.seed, self.fit_seconds)
        return self.last


def fit(pool: Pool, take: dict, seed: int, seconds: list | None = None):
    from tqsim.adaptive import FIT
    from tqsim.models.fit import fit_campaign

    t0 = time.perf_counter()
    fm = fit_campaign(pool.subset(take), seed=seed, **FIT)
    if seconds is not None:
        seconds.append(time.perf_counter() - t0)
    return fm


def score(fm, pool: Pool, seed: int = 0) -> list[dict]:
    """Per target: |p50|, |p99| relative errors, p50/p90/p99 inside the 90 % interval, |TQ error| at T99 (pp)."""
    from tqsim.validate import validate_config

    rows = []
    for k, c in enumerate(pool.configs):
        row = validate_config(fm, pool.test_ds(c), n_draws=200, seed=seed + k, force=True)
        r = row.get("conditioned") or row   # in the fitted sessions' machine state: model error
        tq = [t for t in r["tail_quality"] if t["threshold"] == "T99"]
        rows.append({"config": c.id, "p50": abs(r["latency_s"]["p50"]["rel_error"]),
                     "p99": abs(r["latency_s"]["p99"]["rel_error"]),
                     "inside": [v["inside"] for v in r["latency_s"].values()],
                     "tq_T99": tq[0]["abs_error"] if tq else math.nan})
    return rows


def floor(pool: Pool) -> list[dict]:
    """The training half of each target used as the forecast of its test half."""
    rows = []
    for c in pool.configs:
        a, b = pool.train_ds(c)["latency_s"].values, pool.test_ds(c)["latency_s"].values
        rows.append({"config": c.id, "p50": abs(np.percentile(a, 50) / np.percentile(b, 50) - 1),
                     "p99": abs(np.percentile(a, 99) / np.percentile(b, 99) - 1)})
    return rows


def summary(rows: list[dict], take: dict | None, n: int, warmup: int = 2) -> dict:
    from tqsim.adaptive import inferences

    out = {"p50": float(np.median([r["p50"] for r in rows])), "p99": float(np.median([r["p99"] for r in rows]))}
    if "inside" in rows[0]:
        out["coverage"] = float(np.mean([x for r in rows for x in r["inside"]]))
        out["tq_T99"] = float(np.nanmedian([r["tq_T99"] for r in rows]))
    if take is not None:
        out["inferences"] = inferences(take, n, warmup)
        out["configs"] = sum(1 for v in take.values() if v > 0)
    return out


def paired(a: list[dict], b: list[dict], key: str = "p99", n_boot: int = 4000, seed: int = 0) -> tuple:
    """Median |error| of a minus b over the same targets, with a 90 % bootstrap interval over targets."""
    x = np.array([r[key] for r in a])
    y = np.array([r[key] for r in b])
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, x.size, (n_boot, x.size))
    d = np.median(x[idx], axis=1) - np.median(y[idx], axis=1)
    return float(np.median(x) - np.median(y)), float(np.quantile(d, 0.05)), float(np.quantile(d, 0.95))


def equal_spend(pool: Pool, configs: list, spend: int, n: int, warmup: int = 2) -> dict:
    """Passes for ``configs``, equal for each, so that their inferences come closest to ``spend`` from below."""
    per = max(int(spend // (len(configs) * n)) - warmup - 1, 2)
    return {c: min(per, len(pool.train[c])) for c in configs}


def random_spend(pool: Pool, spend: int, n: int, chunk: int, seed: int, warmup: int = 2) -> dict:
    """Chunks of random targets' passes until the next would pass ``spend`` (at least two configurations)."""
    from tqsim.adaptive import inferences

    rng = np.random.default_rng(seed)
    take: dict = {}
    while True:
        c = pool.configs[int(rng.integers(len(pool.configs)))]
        trial = dict(take)
        trial[c] = min(trial.get(c, 0) + chunk, len(pool.train[c]))
        if inferences(trial, n, warmup) > spend and sum(v > 0 for v in take.values()) >= 2:
            return take
        take = trial


def run(workload: str, args) -> dict:
    from tqsim.adaptive import inferences, run_adaptive
    from tqsim.models.design import parse_target

    pool = Pool(campaign_of(Path(args.base), workload, args.passes, args.sessions), swap=args.swap)
    n = int(pool.campaign.sizes["instance"])
    targets = parse_target(TARGET, n_instances=n)
    assert set(targets) == set(pool.configs), "the campaign must hold the whole target grid"
    out = {"workload": workload, "targets": len(targets), "pool_passes": int(min(map(len, pool.train.values())))}
    full_take = {c: len(pool.train[c]) for c in pool.configs}
    full_inf = inferences(full_take, n, 2)
    t0 = time.perf_counter()
    fm_full = fit(pool, full_take, args.seed)
    rows = {"full grid": score(fm_full, pool, args.seed)}
    out["fit_full_s"] = round(time.perf_counter() - t0, 1)
    # adaptive: the same loop as `tqsim calibrate --adaptive`, on the replayed pool
    replay = Replay(pool, args.seed)
    log = (lambda m: print(f"  [{workload}] {m}", file=sys.stderr, flush=True))
    t0 = time.perf_counter()
    res = run_adaptive(targets, replay, chunk=args.chunk, until_width=args.until_width,
                       budget=int(args.budget_share * full_inf), seed=args.seed, log=log)
    out["adaptive_s"] = round(time.perf_counter() - t0, 1)
    out["adaptive_fit_s"] = [round(s, 1) for s in replay.fit_seconds]
    out["adaptive_stop"] = res.stop
    out["adaptive_widest"] = float(res.widths.max())
    rows["adaptive"] = score(res.fm, pool, args.seed)
    spend = inferences(replay.take, n, 2)
    takes = {"full grid": full_take, "adaptive": dict(replay.take)}
    if args.only_adaptive:
        out["methods"] = {m: summary(r, takes[m], n) for m, r in rows.items()}
        out["adaptive_takes"] = {c.id: v for c, v in replay.take.items()}
        return out
    sparse = [c for c in pool.configs if c.batch_size in SPARSE]
    takes["uniform sparse"] = equal_spend(pool, sparse, spend, n)
    rows["uniform sparse"] = score(fit(pool, takes["uniform sparse"], args.seed), pool, args.seed)
    takes["every target, thin"] = equal_spend(pool, pool.configs, spend, n)
    rows["every target, thin"] = score(fit(pool, takes["every target, thin"], args.seed), pool, args.seed)
    rand_rows, rand_takes = [], []
    for s in range(3):
        tk = random_spend(pool, spend, n, args.chunk, seed=100 + s)
        rand_rows.append(score(fit(pool, tk, args.seed), pool, args.seed))
        rand_takes.append(tk)
    k = int(np.argsort([np.median([r["p99"] for r in rr]) for rr in rand_rows])[1])   # the median seed
    rows["random"], takes["random"] = rand_rows[k], rand_takes[k]
    out["random_p99_seeds"] = [float(np.median([r["p99"] for r in rr])) for rr in rand_rows]
    out["methods"] = {m: summary(r, takes[m], n) for m, r in rows.items()}
    out["methods"]["floor"] = summary(floor(pool), None, n)
    out["full_grid_inferences"] = full_inf
    out["adaptive_share"] = spend / full_inf
    out["adaptive_takes"] = {c.id: v for c, v in replay.take.items()}
    out["paired_p99"] = {m: paired(rows["adaptive"], rows[m]) for m in ("full grid", "uniform sparse",
                                                                          "every target, thin")}
    out["paired_p99"]["random"] = paired(rows["adaptive"], rand_rows[k])
    out["per_config"] = {m: {r["config"]: round(r["p99"], 4) for r in rs} for m, rs in rows.items()}
    return out


def table(res: dict) -> str:
    lines = [f"{res['workload']}: {res['targets']} targets, training pool {res['pool_passes']} passes each; "
             f"adaptive stopped on {res['adaptive_stop']} (widest model interval of p99 "
             f"{100 * res['adaptive_widest']:.0f} %)",
             f"{'method':<16}{'configs':>8}{'inferences':>12}{'share':>7}{'|p50 err|':>11}{'|p99 err|':>11}"
             f"{'coverage':>10}{'TQ T99 pp':>11}"]
    full = res["methods"]["full grid"]["inferences"]
    for m, s in res["methods"].items():
        inf = s.get("inferences")
        cov = f"{100 * s['coverage']:.0f} %" if "coverage" in s else "–"
        tq = f"{100 * s['tq_T99']:.1f}" if "tq_T99" in s else "–"
        spent = f"{inf:,}" if inf else "–"
        share = f"{100 * inf / full:.0f} %" if inf else ""
        lines.append(f"{m:<16}{s.get('configs', ''):>8}{spent:>12}{share:>7}{100 * s['p50']:>10.1f}%"
                     f"{100 * s['p99']:>10.1f}%{cov:>10}{tq:>11}")
    for m, (d, lo, hi) in res.get("paired_p99", {}).items():
        lines.append(f"adaptive − {m}: median |p99 err| {100 * d:+.1f} pp, 90 % [{100 * lo:+.1f}, {100 * hi:+.1f}]")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--base", default=os.environ.get("TQSIM_BENCH", "/tmp/tqsim-calibration-planning"))
    ap.add_argument("--workloads", nargs="+", default=["digits-cnn", "digits-mlp"])
    ap.add_argument("--only-adaptive", action="store_true", help="score the full grid and adaptive only")
    ap.add_argument("--swap", action="store_true", help="train on the odd passes, test on the even ones")
    ap.add_argument("--passes", type=int, default=80)
    ap.add_argument("--sessions", type=int, default=2)
    ap.add_argument("--chunk", type=int, default=5)
    ap.add_argument("--until-width", type=float, default=0.10)
    ap.add_argument("--budget-share", type=float, default=0.25)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    for w in args.workloads:
        res = run(w, args)
        print(json.dumps(res), flush=True)
        print(table(res), flush=True)


if __name__ == "__main__":
    main()
