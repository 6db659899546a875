"""How close can any interpolation of the calibrated batch sizes come to a held-out batch size's level?

The floor-ratio target of the forecast benchmark asks batch 8, 32 and 128 to be forecast from batch 1, 4, 16
and 64 as well as measuring them again. A configuration's p99 is its level times its shape, so the level alone
bounds what is possible. This measures every batch size 1–128 × threads 1/2 once (`tqsim calibrate`; a rerun
resumes), reads each configuration's level (the median pass level, as the fit sees it), and scores simple
interpolants and tqsim's fitted model on the held-out levels.

    python benchmarks/level_interpolation.py [--base DIR] [--passes 20] [--workloads ...]
"""

from __future__ import annotations

import argparse
import math
import os
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np

os.environ.setdefault("PYTENSOR_FLAGS", "blas__ldflags=")
warnings.simplefilter("ignore")
sys.path.insert(0, str(Path(__file__).parent))

ALL_BS, TRAIN_BS, HELDOUT_BS, THREADS = (1, 2, 4, 8, 16, 32, 64, 128), (1, 4, 16, 64), (8, 32, 128), (1, 2)


def campaign_folder(base: Path, workload: str, passes: int) -> Path:
    from tqsim.data.workspace import Workspace

    home = base / workload
    subprocess.run([sys.executable, "-m", "tqsim", "calibrate", "--home", str(home), "--workload", workload,
                    "--grid", "batch_size=" + ",".join(map(str, ALL_BS)), "--grid",
                    "threads=" + ",".join(map(str, THREADS)), "--passes", str(passes)],
                   check=True, stdout=subprocess.DEVNULL)
    ws = Workspace.at(home)
    return ws.calibration_dir(ws.resolve_system(None), workload)


def levels_of(folder: Path, workload: str) -> dict[tuple[int, int], float]:
    """Per (batch size, threads): the log level, averaged over sessions."""
    from tqsim.data.io import load_campaign
    from tqsim.models.summaries import summarise

    s = summarise(load_campaign(folder, workload=workload))
    return {(c.batch_size, c.threads): float(np.mean(s.level[s.level_cfg == i])) for i, c in enumerate(s.configs)}


# ---- interpolants: (batch sizes, latencies) → latency at x ----------------------------------------------
def loglinear(b, y, x):
    """The forecast benchmark's log-linear baseline, on levels."""
    from forecast_accuracy import bracket

    j, w = bracket(np.asarray(b, float), x)
    return math.exp((1 - w) * math.log(y[j - 1]) + w * math.log(y[j]))


def quadratic(b, y, x):
    return math.exp(np.polyval(np.polyfit(np.log(b), np.log(y), 2), math.log(x)))


def pchip(b, y, x):
    from scipy.interpolate import PchipInterpolator

    return math.exp(PchipInterpolator(np.log(b), np.log(y), extrapolate=True)(math.log(x)))


def overhead_work(b, y, x, power: bool = False):
    """overhead + work·batch(^κ), least squares in log latency."""
    from scipy.optimize import least_squares

    b, y = np.asarray(b, float), np.asarray(y, float)

    def curve(p, at):
        return math.exp(p[0]) + math.exp(p[1]) * at ** (p[2] if power else 1.0)

    fit = least_squares(lambda p: np.log(curve(p, b)) - np.log(y),
                        [math.log(y[0] / 2), math.log(y[-1] / b[-1])] + ([1.0] if power else []))
    return curve(fit.x, x)


def without_first(f):
    return lambda b, y, x: f(b[1:], y[1:], x)


INTERPOLANTS = {
    "log-linear": loglinear,
    "quadratic in log batch size": quadratic,
    "monotone cubic (PCHIP) in log-log": pchip,
    "overhead + work·batch": overhead_work,
    "overhead + work·batch^κ": lambda b, y, x: overhead_work(b, y, x, power=True),
    "overhead + work·batch, batch 1 left out": without_first(overhead_work),
    "quadratic, batch 1 left out": without_first(quadratic),
}


def tqsim_errors(folder: Path, lv: dict) -> tuple[list[float], list[float], float]:
    """The fitted model's posterior-mean level errors, their z-scores, and its leave-one-out inflation."""
    from tqsim.data.io import load_campaign
    from tqsim.factors import Config
    from tqsim.models import fit_campaign
    from tqsim.models.conditional import conditional

    fm = fit_campaign(load_campaign([folder / f"{Config(b, t).id}.nc" for b in TRAIN_BS for t in THREADS]), seed=0)
    cond = conditional(fm, 200)
    held = [Config(b, t) for t in THREADS for b in HELDOUT_BS]
    mean, cov = cond.level_moments(held)
    m = mean.mean(0)
    sd = np.sqrt(np.diagonal(cov, axis1=1, axis2=2).mean(0) + mean.var(0))
    truth = np.array([lv[(c.batch_size, c.threads)] for c in held])
    return list(np.exp(m - truth) - 1), list((m - truth) / sd), cond.loo_inflation()["level"]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--base", default=os.environ.get("TQSIM_BENCH", "/tmp/tqsim-level-interpolation"))
    ap.add_argument("--passes", type=int, default=20)
    ap.add_argument("--workloads", nargs="+", default=["digits-cnn", "digits-mlp", "digits-transformer"])
    args = ap.parse_args()
    table: dict[str, dict[str, float]] = {}
    for w in args.workloads:
        folder = campaign_folder(Path(args.base), w, args.passes)
        lv = levels_of(folder, w)
        for th in THREADS:
            print(f"{w} threads {th} level (µs): " +
                  " ".join(f"{b}:{math.exp(lv[(b, th)]) * 1e6:.0f}" for b in ALL_BS if (b, th) in lv))
        for name, f in INTERPOLANTS.items():
            errs = [f(list(TRAIN_BS), [math.exp(lv[(b, th)]) for b in TRAIN_BS], x) / math.exp(lv[(x, th)]) - 1
                    for th in THREADS for x in HELDOUT_BS]
            table.setdefault(name, {})[w] = float(np.median(np.abs(errs)))
            print(f"  {name:42s} {np.median(np.abs(errs)) * 100:5.1f} %  " + " ".join(f"{e * 100:+.0f}" for e in errs))
        errs, z, loo = tqsim_errors(folder, lv)
        table.setdefault("tqsim", {})[w] = float(np.median(np.abs(errs)))
        print(f"  {'tqsim (posterior mean)':42s} {np.median(np.abs(errs)) * 100:5.1f} %  "
              + " ".join(f"{e * 100:+.0f}" for e in errs) + "  z " + " ".join(f"{v:+.1f}" for v in z)
              + f"  leave-one-out inflation {loo:.2f}")
    print("\n| interpolant | " + " | ".join(args.workloads) + " |\n|---|" + "---|" * len(args.workloads))
    for name, row in table.items():
        print(f"| {name} | " + " | ".join(f"{row[w] * 100:.1f} %" for w in args.workloads) + " |")


if __name__ == "__main__":
    main()
