"""The serving store, ``calibration/<system>/<workload>/serving.json``: the serving overheads of each
set-up, keyed ``r<replicas>-th<threads>`` for tqsim's own server and ``<stack>:r<replicas>-th<threads>`` for another
stack (fitted from its request logs: ``tqsim calibrate --serving-log`` or ``--serving target=URL``).

Entries are plain dicts (``ServingOverheads.to_dict()`` plus what the calibration observed), so the
store needs nothing from the code that fits or uses them.
"""

from __future__ import annotations

import json
from pathlib import Path

SERVING_FILE = "serving.json"
OWN_STACK = "tqsim"  # tqsim's own in-process BatchingServer


def serving_key(replicas: int, threads: int, stack: str = OWN_STACK) -> str:
    own = f"r{int(replicas)}-th{int(threads)}"
    return own if stack == OWN_STACK else f"{stack}:{own}"


def _split(key: str) -> tuple[str, int, int]:
    """``(stack, replicas, threads)`` of a store key."""
    stack, _, own = key.rpartition(":")
    reps, threads = own.split("-")
    return stack or OWN_STACK, int(reps[1:]), int(threads[2:])


def stacks(folder: Path) -> list[str]:
    """The serving stacks calibrated in this folder."""
    path = Path(folder) / SERVING_FILE
    return sorted({_split(k)[0] for k in json.loads(path.read_text()).get("setups", {})}) if path.exists() else []


def nearest_setup(folder: Path, replicas: int, threads: int, stack: str = OWN_STACK) -> tuple[dict | None, str]:
    """The entry calibrated for this serving set-up of ``stack``, else the nearest one of that stack with the same
    threads (else any threads).

    Returns ``(entry or None, note)``; the note says what was used, for the user.
    """
    path = Path(folder) / SERVING_FILE
    how = ("run `tqsim calibrate --serving`" if stack == OWN_STACK else
           f"import its logs with `tqsim calibrate --serving-log FILE --setup '...,stack={stack}'`")
    if not path.exists():
        return None, (f"no serving calibration ({path.name}); forward time only, which under-predicts "
                      f"latency under load: {how}.")
    setups = json.loads(path.read_text()).get("setups", {})
    key = serving_key(replicas, threads, stack)
    if key in setups:
        return setups[key], f"serving overheads of {key}"
    mine = [k for k in setups if _split(k)[0] == stack]
    same = [k for k in mine if _split(k)[2] == int(threads)] or mine
    if not same:
        return None, f"{path} holds no serving set-up of stack {stack}; forward time only: {how}."
    near = min(same, key=lambda k: abs(_split(k)[1] - replicas))
    return setups[near], f"serving overheads of {near} (no {key} calibrated)"


def save_setup(folder: Path, replicas: int, threads: int, entry: dict, *, workload: str, system: str,
               stack: str = OWN_STACK) -> Path:
    """Merge ``entry`` into the folder's store under this set-up's key (other set-ups kept); atomic."""
    from tqsim.data.io import replacing

    path = Path(folder) / SERVING_FILE
    data = json.loads(path.read_text()) if path.exists() else {"workload": workload, "system": system, "setups": {}}
    data["setups"][serving_key(replicas, threads, stack)] = entry
    with replacing(path) as tmp:
        Path(tmp).write_text(json.dumps(data, indent=1, default=float), encoding="utf-8")
    return path
