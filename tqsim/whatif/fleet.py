"""Planning across machine types (``tqsim plan --systems all --cost prices.toml``).

Each system is planned on its own calibration by :func:`tqsim.whatif.planner.plan` (its core budget: the
prices file's ``cores``, else ``--cores``); every set-up that meets the objective there (the best and its
runners-up) is priced by the hour (:mod:`tqsim.whatif.prices`), and the cheapest wins, ties going to fewer
cores, then the higher probability, then the lower p99. Every other system is named with why it lost: it
could not be planned, no set-up met the objective, or its cheapest meeting set-up costs more.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from tqsim.errors import UserError
from tqsim.whatif.objective import Objective
from tqsim.whatif.planner import Candidate, Plan
from tqsim.whatif.prices import Price, prices_for


@dataclasses.dataclass
class Offer:
    """A set-up that meets the objective on one system, and what it costs there per hour."""

    system: str
    candidate: Candidate
    price: Price

    @property
    def cost_per_hour(self) -> float:
        return self.price.hourly(self.candidate.setup)

    def key(self) -> tuple:
        c = self.candidate
        p99 = float(np.mean(c.whatif.latency_s["p99"])) if c.whatif is not None else float("inf")
        return self.cost_per_hour, c.setup.cores, -c.probability, p99

    def as_dict(self) -> dict:
        return dict(self.candidate.as_dict(), system=self.system, cost_per_hour=self.cost_per_hour,
                    price=self.price.as_dict())


@dataclasses.dataclass
class SystemPlan:
    """One system's part of a fleet plan: its own plan (``None`` when it could not be planned) and its verdict."""

    system: str
    price: Price
    cores: int
    plan: Plan | None = None
    error: str = ""     # why it could not be planned
    reason: str = ""    # why it was not chosen; "" for the chosen system

    def offers(self) -> list[Offer]:
        if self.plan is None or self.plan.best is None:
            return []
        return sorted((Offer(self.system, c, self.price) for c in [self.plan.best, *self.plan.runners_up]),
                      key=Offer.key)

    def as_dict(self) -> dict:
        return {"system": self.system, "chosen": not self.reason, "reason": self.reason, "cores": self.cores,
                "price": self.price.as_dict(), "error": self.error or None,
                "plan": self.plan.as_dict() if self.plan is not None else None}


@dataclasses.dataclass
class FleetPlan:
    """The cheapest system and set-up that meets the objective, its runners-up, and every system's verdict.
    ``as_dict`` keeps the keys of the one-system plan JSON (docs/design.md) and adds the systems'."""

    objective: Objective
    rate_rps: float
    cores: int
    confidence: float
    workload: str
    best: Offer | None
    runners_up: list[Offer]
    systems: list[SystemPlan]
    source: str = ""  # the prices file

    @property
    def feasible(self) -> bool:
        return self.best is not None

    def _each(self, pick: Callable[[Plan], list]) -> list[dict]:
        return [dict(c.as_dict(), system=s.system) for s in self.systems if s.plan is not None
                for c in pick(s.plan) if c is not None]

    def as_dict(self) -> dict:
        closest = None
        if not self.feasible:
            near = [(s.system, s.plan.closest) for s in self.systems if s.plan is not None and s.plan.closest]
            if near:
                system, c = max(near, key=lambda sc: sc[1].probability)
                closest = dict(c.as_dict(), system=system)
        notes = [f"{s.system}: {n}" for s in self.systems if s.plan is not None for n in s.plan.notes]
        return {"objective": self.objective.text, "rate_rps": self.rate_rps, "cores": self.cores,
                "confidence": self.confidence, "workload": self.workload, "feasible": self.feasible,
                "cost": {"kind": "prices", "source": self.source},
                "best": self.best.as_dict() if self.best else None,
                "runners_up": [o.as_dict() for o in self.runners_up], "closest": closest,
                "rejected": self._each(lambda p: p.rejected), "screened_only": self._each(lambda p: p.screened),
                "systems": [s.as_dict() for s in self.systems], "notes": notes}


def priced_systems(home, systems: Sequence[str], workload: str | None, prices: Path) -> tuple[dict[str, Price], str]:
    """The systems ``--systems`` names (``all``: every system in the workspace) with their prices, and the one
    workload planned on them (``--workload``, else the only one calibrated among them). Checked before any
    simulation (or any worker) starts: a system the prices file leaves out is a mistake to fix first."""
    from tqsim.data.workspace import Workspace, safe_name, workload_name_of

    ws = Workspace.at(home)
    names = ws.systems() if list(systems) == ["all"] else [ws.resolve_system(s) for s in dict.fromkeys(systems)]
    if not names:
        ws.resolve_system(None)  # the message naming the fix for an empty workspace
    priced = prices_for(prices, names)
    if workload:
        return priced, safe_name(workload_name_of(workload))
    known = sorted({w for s in names for w in ws.workloads(s)})
    if len(known) != 1:
        raise UserError(f"the systems hold several workloads ({', '.join(known)}); pick one with --workload.")
    return priced, known[0]


def plan_fleet(objective: Objective, rate: float, cores: int, priced: dict[str, Price], workload: str, *,
               home=None, progress: Callable[[str], None] | None = None, source: str = "", **options) -> FleetPlan:
    """Plan ``workload`` on every system of ``priced`` (:func:`priced_systems`, read from the file ``source``) and
    choose the cheapest; ``options`` are :func:`~tqsim.whatif.inputs.plan_from_workspace`'s (confidence, draws,
    precisions, backends, devices, pool, ...)."""
    from tqsim.whatif.inputs import plan_from_workspace

    parts = []
    for name, price in priced.items():
        part = SystemPlan(name, price, price.cores or int(cores))
        say = (lambda m, name=name: progress(f"{name}: {m}")) if progress else None
        try:
            part.plan = plan_from_workspace(objective, rate, part.cores, home=home, system=name, workload=workload,
                                            progress=say, **options)
        except UserError as exc:
            part.error = str(exc)
        parts.append(part)
    if all(p.error for p in parts):
        raise UserError("no system can be planned: " + "; ".join(f"{p.system}: {p.error}" for p in parts[:2]))
    offers = sorted((o for p in parts for o in p.offers()), key=Offer.key)
    best = offers[0] if offers else None
    confidence = float(options.get("confidence", 0.9))
    for p in parts:
        p.reason = _verdict(p, best, objective, confidence)
    return FleetPlan(objective, float(rate), int(cores), confidence, workload, best, offers[1:4], parts, str(source))


def _verdict(part: SystemPlan, best: Offer | None, objective: Objective, confidence: float) -> str:
    """Why ``part`` was not chosen ("" when it holds the best offer)."""
    if part.error:
        return f"cannot be planned: {part.error}"
    mine = part.offers()
    if not mine:
        near = part.plan.closest
        return (f"no set-up within {part.cores} cores meets {objective.text} with P ≥ {confidence:g}"
                + (f"; closest {near.setup.label()}: {near.reason}" if near is not None else ""))
    if best is not None and best.system == part.system:
        return ""
    cheapest = mine[0]
    cost, won = cheapest.cost_per_hour, best.cost_per_hour
    if cost > won:
        return (f"costlier: its cheapest set-up meeting the objective, {cheapest.candidate.setup.label()}, costs "
                f"{cost:.4g}/h ({part.price.describe()}) against {won:.4g}/h on {best.system}")
    return (f"as cheap ({cost:.4g}/h) as {best.system}, which wins the tie on cores, then P(met), then p99 "
            f"({cheapest.candidate.setup.label()})")
