"""What-if validation (``tqsim validate --serving-log FILE ...``): score what-if forecasts against real runs.

Each run is a request log the serving fit did not see. For its set-up and its offered rate, the what-if
simulator forecasts p50, p99, utilisation, deadline miss rate and tail quality with 90 % intervals, exactly as
``tqsim whatif`` would have; the run's own figures are set beside them, with coverage over all runs.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Sequence

import numpy as np

from tqsim.data.request_log import summarise
from tqsim.errors import UserError
from tqsim.quality import INTERVAL

METRICS = ("p50", "p99", "utilisation", "miss_rate", "tail_quality")


@dataclasses.dataclass
class Validation:
    """Per run: observed and forecast figures; coverage of the 90 % intervals per metric."""

    system: str
    workload: str
    stack: str
    setup: dict
    threshold_s: float
    runs: list[dict]
    notes: list[str]

    def coverage(self) -> dict:
        out = {}
        for m in METRICS:
            flags = [r["inside"][m] for r in self.runs if r["inside"].get(m) is not None]
            out[m] = {"inside": int(sum(flags)), "runs": len(flags)}
        return out

    def as_dict(self) -> dict:
        return {"system": self.system, "workload": self.workload, "stack": self.stack, "setup": self.setup,
                "threshold_s": self.threshold_s, "interval": INTERVAL, "runs": self.runs,
                "coverage": self.coverage(), "notes": self.notes}


def _forecast_figures(res: dict) -> dict:
    lat = res["latency_s"]
    return {"p50": lat["p50"], "p99": lat["p99"], "miss_rate": res["miss_rate"], "tail_quality": res["tail_quality"],
            "utilisation": {"mean": float(np.mean(res["utilisation"])), "lo": None, "hi": None}}


def _sampling(log, window: int) -> str:
    """How the run chose instances: "replay" when it walked the evaluation set in order, else "random" (as
    LoadGen's Server scenario does), so that the forecast's windows vary in composition as the run's did."""
    idx = log.sample_index
    return "replay" if log.has("sample_index") and np.array_equal(idx, np.arange(idx.size) % window) else "random"


def validate_logs(paths: Sequence, setup_text: str, *, home=None, system=None, workload=None,
                  threshold_s: float = 0.02, tail_q: float = 0.01, draws: int = 40, seed: int = 0,
                  allow_fitted: bool = False) -> Validation:
    """Forecast each logged run from the stored serving calibration of its stack and score it (docstring above).

    A run whose file the fit used is refused (its forecast would be scored on its own data) unless
    ``allow_fitted``."""
    from tqsim.data.request_log import parse_log_setup
    from tqsim.data.serving_store import nearest_setup
    from tqsim.serving_calibration import _simulated_setup, file_digest, read_logs
    from tqsim.whatif.inputs import WorkspaceInputs
    from tqsim.whatif.simulator import central, simulate

    setup = parse_log_setup(setup_text)
    logs, notes = read_logs(paths)
    src = WorkspaceInputs.open(home, system, workload, stack=setup["stack"])
    entry, _ = nearest_setup(src.folder, setup["replicas"], setup["threads"], setup["stack"])
    if entry is None:
        raise UserError(f"no serving calibration of stack {setup['stack']} in {src.folder}; fit one first: `tqsim "
                        f"calibrate --serving-log FILE --setup '{setup_text}'` with logs of two loads.")
    seen = set(entry.get("log_digests", []))
    used = [str(p) for p in paths if file_digest(p) in seen]
    if used and not allow_fitted:
        raise UserError(f"{', '.join(used)}: used to fit the serving calibration, so scoring it says nothing about "
                        "the forecast; validate on other runs (or pass --allow-fitted to see the fit's own residuals).")
    sim_setup = _simulated_setup(setup)
    scores = src.scores(*sim_setup.variant)
    svc = src.service(sim_setup.threads, sim_setup.precision, sim_setup.replicas, sim_setup.backend, sim_setup.device)
    notes += src.notes
    runs = []
    for i, log in enumerate(logs):
        obs = summarise(log, threshold_s, scores, tail_q)
        res = simulate(svc, sim_setup, thresholds_s=[threshold_s], rate_rps=float(log.rate_rps), score=scores,
                       n_windows=max(log.n // scores.size, 5), draws=draws, tail_q=tail_q, seed=seed + i,
                       samples=_sampling(log, scores.size)).result()
        fc = _forecast_figures(res)
        observed = {"p50": obs["latency_s"]["p50"], "p99": obs["latency_s"]["p99"], "miss_rate": obs["miss_rate"],
                    "tail_quality": obs["tail_quality"], "utilisation": obs["utilisation"]}
        inside = {m: (None if observed[m] is None or fc[m]["lo"] is None
                      else bool(fc[m]["lo"] - 1e-12 <= observed[m] <= fc[m]["hi"] + 1e-12)) for m in METRICS}
        rel = {m: (None if observed[m] in (None, 0) else (central(fc[m]) - observed[m]) / observed[m])
               for m in ("p50", "p99")}
        runs.append({"source": str(paths[i]), "rate_rps": obs["rate_rps"], "requests": obs["requests"],
                     "observed": observed, "forecast": fc, "inside": inside, "relative_error": rel,
                     "saturated": bool(res["saturated"]), "throughput_rps": obs["throughput_rps"]})
    if any(r["observed"]["tail_quality"] is None for r in runs):
        notes.append("some logs give neither correctness nor sample_index, so their quality is not observed; add a "
                     "sample_index column (the evaluation-set instance of each request).")
    return Validation(src.system, src.workload, setup["stack"],
                      {k: setup[k] for k in ("replicas", "threads", "max_batch", "max_wait_s", "precision")},
                      float(threshold_s), runs, notes)


def save_validation(folder: Path, validation: Validation) -> Path:
    """Keep the latest what-if validation beside the serving calibration, for ``tqsim report``."""
    import json

    from tqsim.data.io import replacing

    path = Path(folder) / "serving-validation.json"
    with replacing(path) as tmp:
        Path(tmp).write_text(json.dumps(validation.as_dict(), indent=1, default=float), encoding="utf-8")
    return path
