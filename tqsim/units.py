"""Human-readable seconds, percentages and numbers, shared by the command line and the reports."""

from __future__ import annotations

import math
from typing import Callable


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


def fmt_pct(x: float | None) -> str:
    """A fraction as ``12.3%``; ``–`` when there is no (finite) value."""
    return "–" if x is None or not math.isfinite(x) else f"{100 * x:.1f}%"


def fmt_iv(m, lo, hi, f: Callable[[float | None], str] = fmt_pct) -> str:
    """A value and its interval, ``m [lo, hi]``, each formatted by ``f``."""
    return f"{f(m)} [{f(lo)}, {f(hi)}]"


def fmt_num(x, fmt: str = ".3g") -> str:
    """A number in ``fmt``, or ``–`` when there is none (e.g. a diagnostic ADVI does not give)."""
    try:
        return format(float(x), fmt)
    except (TypeError, ValueError):
        return "–"
