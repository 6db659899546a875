"""Seconds, percentages and numbers for people: printed (``4.5 ms``, ``12.3%``) and parsed (``20ms``)."""

from __future__ import annotations

import math
import re
from typing import Callable

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


def parse_key_values(text: str, keys, option: str, example: str = "") -> dict[str, str]:
    """``'a=1, b-c=2'`` → ``{"a": "1", "b_c": "2"}`` for an option's set-up string (``--serving``, ``--setup``):
    every key one of ``keys`` and given once, else a UserError naming the part and the accepted keys."""
    values: dict[str, str] = {}
    for part in filter(None, (p.strip() for p in str(text).split(","))):
        key, sep, value = part.partition("=")
        key = key.strip().replace("-", "_")
        if not sep or key not in keys:
            raise UserError(f"{option} '{part}': expected KEY=VALUE with KEY in {', '.join(keys)}"
                            + (f"; e.g. {example}." if example else "."))
        if key in values:
            raise UserError(f"{option}: {key} is given twice; give each key once.")
        values[key] = value.strip()
    return values


def fmt_pct(x: float | None, symbol: bool = True) -> str:
    """A fraction as ``12.3%`` (``12.3`` under a column already headed %); ``–`` when there is no finite value."""
    return "–" if x is None or not math.isfinite(x) else f"{100 * x:.1f}{'%' if symbol else ''}"


def fmt_iv(m, lo, hi, f: Callable[[float | None], str] = fmt_pct) -> str:
    """A value and its interval, ``m [lo, hi]``, each formatted by ``f``."""
    return f"{f(m)} [{f(lo)}, {f(hi)}]"


def fmt_num(x, fmt: str = ".3g") -> str:
    """A number in ``fmt``, or ``–`` when there is none (e.g. a diagnostic ADVI does not give)."""
    try:
        return format(float(x), fmt)
    except (TypeError, ValueError):
        return "–"
