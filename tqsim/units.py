"""Seconds for people: printed (``4.5 ms``) and parsed (``20ms``), shared by every layer."""

from __future__ import annotations

import math
import re

from tqsim.errors import UserError

_UNITS = {"s": 1.0, "ms": 1e-3, "us": 1e-6, "µs": 1e-6, "ns": 1e-9, "min": 60.0, "m": 60.0, "h": 3600.0}
_DUR = re.compile(r"^\s*([0-9]*\.?[0-9]+(?:[eE][-+]?\d+)?)\s*(s|ms|us|µs|ns|min|m|h)?\s*$")


def fmt_seconds(s: float | None) -> str:
    """``123 µs``, ``4.5 ms``, ``1.2 s``; ``∞`` for infinity, ``–`` when there is no value."""
    if s is None or (isinstance(s, float) and math.isnan(s)):
        return "–"
    if s == math.inf:
        return "∞"
    if not math.isfinite(s):
        return "–"
    if s < 1e-3:
        return f"{s * 1e6:.0f} µs"
    if s < 1:
        return f"{s * 1e3:.3g} ms"
    return f"{s:.3g} s"


def parse_duration(text: str | float, what: str = "duration") -> float:
    """``20ms``, ``250us``, ``0.02`` (seconds) -> seconds; a UserError naming the forms otherwise."""
    if isinstance(text, (int, float)):
        value = float(text)
    else:
        m = _DUR.match(str(text))
        if not m:
            raise UserError(f"{what} '{text}' is not a duration; write e.g. 20ms, 250us, 0.02 (seconds) or 5min.")
        value = float(m.group(1)) * _UNITS[m.group(2) or "s"]
    if not (math.isfinite(value) and value >= 0):
        raise UserError(f"{what} '{text}' must be a non-negative duration.")
    return value
