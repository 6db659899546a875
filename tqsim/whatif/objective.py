"""Service-level objectives for `tqsim plan` (durations parse with :func:`tqsim.units.parse_duration`).

Grammar (one objective)::

    tail_quality>=X@T     the q-quantile of windowed Q@T at deadline T is at least X
    mean_quality>=X@T     mean Q@T at deadline T is at least X
    miss_rate<=X@T        at most a fraction X of requests exceed deadline T
    pNN<=T                the NN-th percentile of end-to-end latency is at most T (p50, p99, p99.9)

X is a fraction (0.95) or a percentage (95%); T is a duration (20ms, 250us, 0.02).
"""

from __future__ import annotations

import dataclasses
import re

import numpy as np

from tqsim.errors import UserError
from tqsim.units import parse_duration

GRAMMAR = "tail_quality>=X@T | mean_quality>=X@T | miss_rate<=X@T | p50|p99|p99.9<=T  (e.g. tail_quality>=0.95@20ms)"


def _fraction(text: str) -> float:
    t = text.strip()
    v = float(t[:-1]) / 100 if t.endswith("%") else float(t)
    if not 0 <= v <= 1:
        raise ValueError(text)
    return v


_OBJ = re.compile(r"^\s*(tail_quality|mean_quality|miss_rate|p\d+(?:\.\d+)?)\s*(>=|<=)\s*([^@]+?)\s*(?:@\s*(\S+))?\s*$")


@dataclasses.dataclass(frozen=True)
class Objective:
    """One parsed objective; ``met(whatif)`` gives, per draw, whether it holds."""

    metric: str
    op: str
    target: float
    threshold_s: float | None
    text: str

    def per_draw(self, whatif, i: int = 0) -> np.ndarray:
        """The objective's metric in every draw of a :class:`~tqsim.whatif.simulator.WhatIf`."""
        if self.metric == "tail_quality":
            return whatif.tail_quality[:, i]
        if self.metric == "mean_quality":
            return whatif.mean_quality[:, i]
        if self.metric == "miss_rate":
            return whatif.miss_rate[:, i]
        return whatif.latency_s[self.metric]

    def met(self, whatif, i: int = 0) -> np.ndarray:
        v = self.per_draw(whatif, i)
        return v >= self.target if self.op == ">=" else v <= self.target

    def describe_value(self, v: float) -> str:
        return f"{v * 1e3:.3g} ms" if self.metric.startswith("p") else f"{v:.3f}"


def parse_objective(text: str) -> Objective:
    m = _OBJ.match(text or "")
    if not m:
        raise UserError(f"objective '{text}' does not parse; grammar: {GRAMMAR}.")
    metric, op, value, at = m.groups()
    try:
        if metric.startswith("p"):
            if op != "<=" or at is not None:
                raise ValueError
            if metric not in ("p50", "p99", "p99.9"):
                raise UserError(f"objective '{text}': percentile {metric} is not simulated; use p50, p99 or p99.9.")
            return Objective(metric, op, parse_duration(value, "objective latency"), None, text)
        if at is None or (metric == "miss_rate") != (op == "<="):
            raise ValueError
        return Objective(metric, op, _fraction(value), parse_duration(at, "objective deadline"), text)
    except ValueError:
        raise UserError(f"objective '{text}' does not parse; grammar: {GRAMMAR}.") from None
