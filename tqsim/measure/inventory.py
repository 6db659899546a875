"""What a workspace holds, read from the files themselves (``tqsim systems``)."""

from __future__ import annotations

import json
from pathlib import Path

from tqsim.data.io import calibration_files, read_dataset
from tqsim.data.workspace import Workspace


def inventory(home: str | Path | None) -> dict:
    ws = Workspace.at(home)
    systems = []
    for system in ws.systems():
        entries = []
        for workload in ws.workloads(system):
            files = calibration_files(ws.calibration_dir(system, workload))
            passes = [read_dataset(p).sizes.get("pass", 0) for p in files]
            entries.append({"workload": workload, "configs": [p.stem for p in files],
                            "passes_min": min(passes), "passes_max": max(passes),
                            "fitted": ws.model_path(system, workload).exists()})
        systems.append({"system": system, "fingerprint": system_fingerprint(ws, system), "workloads": entries})
    return {"home": str(ws.home), "systems": systems}


def system_fingerprint(ws: Workspace, system: str) -> dict | None:
    """The machine a system was last calibrated on: its newest calibration file's fingerprint, any workload
    (a fleet's worker is compared with it before it measures for that system)."""
    files = [p for w in ws.workloads(system) for p in calibration_files(ws.calibration_dir(system, w))]
    if not files:
        return None
    newest = max(files, key=lambda p: p.stat().st_mtime)
    return json.loads(str(read_dataset(newest).attrs.get("fingerprint", "{}"))) or None
