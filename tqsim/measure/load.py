"""How busy the machine was around a pass: other programs' CPU use, CPU steal, the load average.

Read from ``/proc/stat`` and this process's own CPU times, outside the timed region. A forecast's
intervals are only as narrow as the machine was quiet; these readings let ``tqsim calibrate``
warn when it was not, and let a later reader tell a noisy calibration from a noisy model.
"""

from __future__ import annotations

import dataclasses
import math
import os
import time

# other programs using more than this many cores (median over a session's passes) make it "busy"
BUSY_OTHER_CORES = 0.3
BUSY_STEAL = 0.05


def _proc_stat() -> tuple[float, float, float] | None:
    """(busy, steal, total) jiffies over all CPUs, or None where /proc/stat is not readable."""
    try:
        with open("/proc/stat") as fh:
            fields = fh.readline().split()
    except OSError:
        return None
    if not fields or fields[0] != "cpu":
        return None
    v = [float(x) for x in fields[1:]]
    v += [0.0] * (8 - len(v))
    idle = v[3] + v[4]
    steal = v[7]
    total = sum(v[:8])
    return total - idle - steal, steal, total


@dataclasses.dataclass
class LoadReading:
    wall: float
    self_cpu: float
    stat: tuple[float, float, float] | None
    load_avg: float


def read() -> LoadReading:
    t = os.times()
    try:
        la = os.getloadavg()[0]
    except OSError:
        la = math.nan
    return LoadReading(time.monotonic(), t.user + t.system, _proc_stat(), la)


def between(a: LoadReading, b: LoadReading) -> dict[str, float]:
    """Other programs' CPU use (cores), the stolen share of CPU time, and the load average at ``a``."""
    wall = b.wall - a.wall
    out = {"other_cpu": math.nan, "steal": math.nan, "load_avg": a.load_avg}
    if a.stat is None or b.stat is None or wall <= 0:
        return out
    hz = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
    busy = (b.stat[0] - a.stat[0]) / hz
    total = b.stat[2] - a.stat[2]
    out["other_cpu"] = max(0.0, (busy - (b.self_cpu - a.self_cpu)) / wall)
    out["steal"] = (b.stat[1] - a.stat[1]) / total if total > 0 else math.nan
    return out


def busy_note(other_cpu, steal, cores: int | None = None) -> str | None:
    """A warning when the median reading says the machine was shared, else None."""
    import numpy as np

    other = np.asarray(other_cpu, float)
    st = np.asarray(steal, float)
    med_other = float(np.nanmedian(other)) if np.isfinite(other).any() else math.nan
    med_steal = float(np.nanmedian(st)) if np.isfinite(st).any() else math.nan
    parts = []
    if med_other > BUSY_OTHER_CORES:
        of = f" of {cores}" if cores else ""
        parts.append(f"other programs used {med_other:.1f}{of} cores")
    if med_steal > BUSY_STEAL:
        parts.append(f"the hypervisor stole {100 * med_steal:.0f} % of CPU time")
    if not parts:
        return None
    return ("the machine was busy during calibration (" + "; ".join(parts) + "): its latencies are noisier and "
            "the forecasts' intervals wider; close other programs and calibrate again for tighter ones.")
