"""The README main job on a busy machine: calibrate → fit → predict while a CPU-bound program runs beside it.

Users' laptops are busy; noisy data must give a forecast with wider intervals, not a failed job. This
starts ``--hogs`` CPU-bound processes (a Python loop each, one core apiece), runs the README's main job
(the `tqsim` commands, in a fresh workspace) and reports each command's exit code and time, the fit's
diagnostics and the forecast's p99 interval; then the same job on the machine alone, for comparison.

    python benchmarks/busy_main_job.py [--hogs 1] [--base DIR] [--skip-calm]
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

os.environ.setdefault("PYTENSOR_FLAGS", "blas__ldflags=")

JOB = [["calibrate"], ["fit"], ["predict", "--set", "batch_size=8", "--set", "threads=2", "--json"]]


def hog(stop: float) -> None:
    x = 0
    while time.time() < stop:
        x = (x * 1103515245 + 12345) % 2147483648


def main_job(home: Path) -> dict:
    if home.exists():
        shutil.rmtree(home)
    home.mkdir(parents=True)
    out = {"steps": []}
    for args in JOB:
        t0 = time.perf_counter()
        p = subprocess.run([sys.executable, "-m", "tqsim", *args, "--home", str(home)], capture_output=True, text=True)
        out["steps"].append({"command": "tqsim " + " ".join(args), "exit": p.returncode,
                             "seconds": round(time.perf_counter() - t0, 1), "stderr_tail": p.stderr[-400:]})
        if p.returncode:
            return out
        if args[0] == "predict":
            r = json.loads(p.stdout)
            out["p99"] = r["latency_s"]["p99"]
            out["p50"] = r["latency_s"]["p50"]
            out["warnings"] = r["warnings"]
    from tqsim.models import load
    from tqsim.data.workspace import Workspace

    ws = Workspace.at(home)
    system = ws.resolve_system(None)
    d = load(ws.model_path(system, "digits-cnn")).diagnostics
    out["fit"] = {k: d[k] for k in ("rhat_max", "ess_bulk_min", "divergences", "status", "total_seconds")}
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--hogs", type=int, default=1)
    ap.add_argument("--base", type=Path, default=Path("/tmp/tqsim-busy"))
    ap.add_argument("--skip-calm", action="store_true")
    args = ap.parse_args()
    results = {}
    stop = time.time() + 3600
    procs = [multiprocessing.Process(target=hog, args=(stop,), daemon=True) for _ in range(args.hogs)]
    for p in procs:
        p.start()
    try:
        results["busy"] = main_job(args.base / "busy")
    finally:
        for p in procs:
            p.terminate()
    if not args.skip_calm:
        results["calm"] = main_job(args.base / "calm")
    print(json.dumps(results, indent=1))
    print("\n| machine | calibrate | fit | predict | fit r-hat / ESS / divergences | forecast p99 (90 % interval) |")
    print("|---|---|---|---|---|---|")
    for name, r in results.items():
        steps = {s["command"].split()[1]: s for s in r["steps"]}
        cells = [f"exit {steps[c]['exit']}, {steps[c]['seconds']} s" if c in steps else "–"
                 for c in ("calibrate", "fit", "predict")]
        fit = r.get("fit", {})
        diag = f"{fit.get('rhat_max', float('nan')):.3f} / {fit.get('ess_bulk_min', 0):.0f} / {fit.get('divergences')}"
        p99 = r.get("p99")
        band = (f"{1e6 * p99['median']:.0f} µs [{1e6 * p99['lo']:.0f}, {1e6 * p99['hi']:.0f}]" if p99 else "–")
        print(f"| {name} ({args.hogs if name == 'busy' else 0} CPU-bound beside) | " + " | ".join(cells)
              + f" | {diag} | {band} |")


if __name__ == "__main__":
    main()
