"""The serving store, ``calibration/<system>/<workload>/serving.json``: the serving overheads of each
set-up, keyed ``r<replicas>-th<threads>``.

Entries are plain dicts (``ServingOverheads.to_dict()`` plus what the calibration observed), so the
store needs nothing from the code that fits or uses them.
"""

from __future__ import annotations

import json
from pathlib import Path

SERVING_FILE = "serving.json"


def serving_key(replicas: int, threads: int) -> str:
    return f"r{int(replicas)}-th{int(threads)}"


def nearest_setup(folder: Path, replicas: int, threads: int) -> tuple[dict | None, str]:
    """The entry calibrated for this serving set-up, else the nearest one with the same threads.

    Returns ``(entry or None, note)``; the note says what was used, for the user.
    """
    path = Path(folder) / SERVING_FILE
    if not path.exists():
        return None, (f"no serving calibration ({path.name}); forward time only, which under-predicts "
                      "latency under load: run `tqsim calibrate --serving`.")
    data = json.loads(path.read_text())
    setups = data.get("setups", {})
    key = serving_key(replicas, threads)
    if key in setups:
        return setups[key], f"serving overheads of {key}"
    same = [k for k in setups if k.endswith(f"-th{int(threads)}")] or list(setups)
    if not same:
        return None, f"{path} holds no serving set-up; forward time only."
    near = min(same, key=lambda k: abs(int(k.split("-")[0][1:]) - replicas))
    return setups[near], f"serving overheads of {near} (no {key} calibrated)"


def save_setup(folder: Path, replicas: int, threads: int, entry: dict, *, workload: str, system: str) -> Path:
    """Merge ``entry`` into the folder's store under this set-up's key (other set-ups kept); atomic."""
    from tqsim.data.io import replacing

    path = Path(folder) / SERVING_FILE
    data = json.loads(path.read_text()) if path.exists() else {"workload": workload, "system": system, "setups": {}}
    data["setups"][serving_key(replicas, threads)] = entry
    with replacing(path) as tmp:
        Path(tmp).write_text(json.dumps(data, indent=1, default=float), encoding="utf-8")
    return path
