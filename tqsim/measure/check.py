"""``tqsim check``'s measurement: a few passes of one or two calibrated anchor configurations, now.

Nothing is written to the calibration: a check reads the machine's current state, it does not add
to what the model is fitted on. The record (``checks/<system>/<workload>.json``) keeps every pass's
level (the same statistic the fit summarises) so that any later fit can condition on it.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np

from tqsim.data.workspace import Workspace
from tqsim.errors import UserError
from tqsim.factors import Config

CHECK_BUDGET_S = 8.0       # measuring stops after this; the whole check stays within ~15 s
MIN_PASSES, MAX_PASSES = 3, 30


def pass_levels_from_ns(ns: np.ndarray, counts: np.ndarray, batch_size: int) -> float:
    """A pass's level: the median log latency (seconds) of its level batches, as the fit reads it."""
    from tqsim.data.schema import level_batches

    lb = level_batches(counts, batch_size)
    return float(np.median(np.log(np.asarray(ns, float)[lb] / 1e9)))


def cheapest(configs: list[Config], pass_seconds: dict[str, float], n: int = 2) -> list[Config]:
    """The cheapest calibrated configuration of each thread count, cheapest first, at most ``n``."""
    by_threads: dict[int, Config] = {}
    for c in sorted(configs, key=lambda c: pass_seconds[c.id]):
        by_threads.setdefault(c.threads, c)
    return sorted(by_threads.values(), key=lambda c: pass_seconds[c.id])[:n]


def measure_anchors(workload, anchors: list[Config], *, budget_s: float = CHECK_BUDGET_S, progress=None) -> list[dict]:
    """Time interleaved passes of the anchors (after one warm-up pass each) until the budget is spent."""
    from tqsim.measure.backends import prepare
    from tqsim.measure.campaign import set_torch_threads
    from tqsim.measure.timing import time_pass

    runners = {}
    out = {c.id: {"config_id": c.id, "config": c.as_dict(), "levels": []} for c in anchors}
    try:
        for c in anchors:
            runners[c.id] = prepare(workload, c)
            set_torch_threads(c)
            time_pass(runners[c.id])
        t0 = time.perf_counter()
        while True:
            for c in anchors:
                set_torch_threads(c)
                r = runners[c.id]
                counts = np.bincount(np.asarray(r.batch_of_instance))
                out[c.id]["levels"].append(pass_levels_from_ns(time_pass(r), counts, c.batch_size))
                if progress:
                    progress(c.id)
            n = len(out[anchors[0].id]["levels"])
            elapsed = time.perf_counter() - t0
            if n >= MAX_PASSES or (n >= MIN_PASSES and elapsed + elapsed / n > budget_s):
                break
    finally:
        for r in runners.values():
            r.close()
    return list(out.values())


def checks_path(ws: Workspace, system: str, workload: str) -> Path:
    return ws.home / "checks" / system / f"{workload}.json"


def save_check(ws: Workspace, system: str, workload: str, record: dict) -> Path:
    """Append the check to the workspace's list of checks (written atomically)."""
    path = checks_path(ws, system, workload)
    path.parent.mkdir(parents=True, exist_ok=True)
    history = load_checks(ws, system, workload, missing_ok=True)
    history.append(record)
    from tqsim.data.io import write_text_atomic

    return write_text_atomic(path, json.dumps({"checks": history}, indent=1))


def load_checks(ws: Workspace, system: str, workload: str, missing_ok: bool = False) -> list[dict]:
    path = checks_path(ws, system, workload)
    if not path.exists():
        if missing_ok:
            return []
        raise UserError(f"no check of {workload} on {system} yet; run `tqsim check` first.")
    try:
        data = json.loads(path.read_text())
        checks = data["checks"]
        assert isinstance(checks, list)
    except (ValueError, KeyError, AssertionError):
        if missing_ok:
            return []
        raise UserError(f"{path} is not a readable check record; delete it and run `tqsim check` again.") from None
    return checks


