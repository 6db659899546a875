"""Human-readable seconds, shared by the command line and the reports."""

from __future__ import annotations

import math


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
