"""How much the machine's speed moves between sessions: the basis of the session-scale prior.

Runs `tqsim calibrate --sessions N --gap G` on a small grid (each session a fresh process, minutes
apart), fits, and prints each session's level relative to the average (the fitted session effects),
the posterior of σ_session, and the plain spread of the per-configuration session levels — the
numbers docs/method.md ("Sessions") quotes for the prior used when a workspace holds one session.

    python benchmarks/session_drift.py [--sessions 6] [--gap 60s] [--passes 30] [--workload digits-cnn]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np

os.environ.setdefault("PYTENSOR_FLAGS", "blas__ldflags=")
warnings.simplefilter("ignore")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sessions", type=int, default=6)
    ap.add_argument("--gap", default="60s")
    ap.add_argument("--passes", type=int, default=30)
    ap.add_argument("--workload", default="digits-cnn")
    ap.add_argument("--grid", nargs="+", default=["batch_size=1,16,64", "threads=1,2"])
    ap.add_argument("--home", type=Path, default=Path("/tmp/tqsim-session-drift"))
    args = ap.parse_args()
    grid = [a for g in args.grid for a in ("--grid", g)]
    subprocess.run([sys.executable, "-m", "tqsim", "calibrate", "--workload", args.workload, *grid, "--passes",
                    str(args.passes), "--warmup", "1", "--sessions", str(args.sessions), "--gap", args.gap,
                    "--home", str(args.home)], check=True, stdout=subprocess.DEVNULL)
    from tqsim.data.io import load_campaign
    from tqsim.data.workspace import Workspace
    from tqsim.models import fit_campaign

    ws = Workspace.at(args.home)
    system = ws.resolve_system(None)
    fm = fit_campaign(load_campaign(ws.calibration_dir(system, args.workload)), seed=0)
    s = fm.summaries
    post = fm.posterior_draws()
    effects = post["session_effect"].mean(axis=0) if "session_effect" in post else np.zeros(1)
    # plain spread: per configuration, the sd of its session levels (log); median over configurations
    sds = [float(np.std(s.level[s.level_cfg == c], ddof=1)) for c in range(len(s.configs))
           if (s.level_cfg == c).sum() > 1]
    out = {"workload": args.workload, "system": system, "sessions": int(s.sessions.size), "gap": args.gap,
           "passes_per_session": args.passes // args.sessions,
           "session_effects_pct": [round(100 * (float(np.exp(e)) - 1), 1) for e in effects],
           "session_sd": {"median": float(np.median(post["session_sd"])),
                          "q05": float(np.quantile(post["session_sd"], 0.05)),
                          "q95": float(np.quantile(post["session_sd"], 0.95))},
           "plain_sd_of_session_levels": {"median": float(np.median(sds)), "min": float(np.min(sds)),
                                          "max": float(np.max(sds))},
           "diagnostics": {k: fm.diagnostics[k] for k in ("rhat_max", "divergences", "status")}}
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
