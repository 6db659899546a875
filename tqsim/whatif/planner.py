"""Capacity planning: the cheapest serving set-up that meets an objective with a given probability.

Search replicas × threads × max_batch × max_wait × (precision, backend, device) with replicas × threads
≤ cores. Each candidate is screened with few draws; the promising ones are simulated again with the full
number of draws. "Probability of meeting" is the fraction of draws (posterior/bootstrap draws of the
service model, each a whole simulated run) in which the objective holds. Cheapest = fewest cores (``cost
"cores"``), or fewest GPUs then fewest cores (``"gpus"``); ties go to the higher probability, then the
lower p99.
"""

from __future__ import annotations

import dataclasses
import itertools
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from tqsim.errors import UserError
from tqsim.factors import Variant
from tqsim.parallel import SERIAL, reporting
from tqsim.whatif.objective import Objective
from tqsim.whatif.service import ServiceModel
from tqsim.whatif.simulator import ServingSetup, WhatIf, check_rate, simulate_job

MAX_BATCHES = (1, 2, 4, 8, 16, 32)
MAX_WAITS_S = (0.0, 0.5e-3, 1e-3, 2e-3, 5e-3)
# what a set-up costs, for each --cost keyword (a prices file is the third kind: tqsim.whatif.fleet)
COSTS = {"cores": "replicas × threads", "gpus": "one GPU per replica on device=cuda, then cores"}


def cost_of(setup: ServingSetup, cost: str = "cores") -> tuple:
    """The planner's price of ``setup``, compared as a tuple: cores, or GPUs with ties broken by cores."""
    return (setup.gpus, setup.cores) if cost == "gpus" else (setup.cores,)


def parse_cost(text: str | None) -> tuple[str, Path | None]:
    """``--cost``: ``("cores" | "gpus", None)``, or ``("prices", path)`` for an existing prices file."""
    from tqsim.whatif.prices import EXAMPLE

    word = (text or "cores").strip()
    if word.lower() in COSTS:
        return word.lower(), None
    if Path(word).is_file():
        return "prices", Path(word)
    raise UserError(f"--cost {text}: not cores or gpus, and no such prices file; choose --cost cores (replicas × "
                    f"threads), --cost gpus (one per cuda replica) or --cost prices.toml ({EXAMPLE} per system).")


@dataclasses.dataclass
class Candidate:
    setup: ServingSetup
    probability: float = float("nan")   # P(objective met) over draws
    value: float = float("nan")         # mean over draws of the objective's metric
    whatif: WhatIf | None = None
    reason: str = ""                    # why rejected ("" when it meets the objective)

    @property
    def meets(self) -> bool:
        return not self.reason

    def as_dict(self) -> dict:
        out = {"replicas": self.setup.replicas, "threads": self.setup.threads, "cores": self.setup.cores,
               "gpus": self.setup.gpus, "max_batch": self.setup.max_batch, "max_wait_s": self.setup.max_wait_s,
               "precision": self.setup.precision, "backend": self.setup.backend, "device": self.setup.device,
               "probability": self.probability, "value": self.value,
               "meets": self.meets, "reason": self.reason}
        if self.whatif is not None:
            out["whatif"] = self.whatif.result(0)
        return out


@dataclasses.dataclass
class Plan:
    objective: Objective
    rate_rps: float
    cores: int
    confidence: float
    best: Candidate | None
    runners_up: list[Candidate]
    rejected: list[Candidate]
    closest: Candidate | None
    screened: list[Candidate] = dataclasses.field(default_factory=list)  # met the objective in screening only
    notes: list[str] = dataclasses.field(default_factory=list)            # what the inputs assumed
    cost: str = "cores"                                                   # a key of COSTS
    workload: str = ""                                                    # what was planned for, when known

    @property
    def feasible(self) -> bool:
        return self.best is not None

    def as_dict(self) -> dict:
        return {"objective": self.objective.text, "rate_rps": self.rate_rps, "cores": self.cores,
                "confidence": self.confidence, "feasible": self.feasible,
                "cost": {"kind": self.cost, "source": COSTS[self.cost]},
                "best": self.best.as_dict() if self.best else None,
                "runners_up": [c.as_dict() for c in self.runners_up],
                "closest": self.closest.as_dict() if self.closest else None,
                "rejected": [c.as_dict() for c in self.rejected],
                "screened_only": [c.as_dict() for c in self.screened], "notes": list(self.notes)}


def candidates(cores: int, *, replicas: Sequence[int] | None = None, threads: Sequence[int] | None = None,
               max_batches: Sequence[int] = MAX_BATCHES, max_waits_s: Sequence[float] = MAX_WAITS_S,
               variants: Sequence[Variant] = (Variant(),)) -> list[ServingSetup]:
    """Every set-up within the core budget; max_wait is irrelevant (and dropped) when max_batch is 1."""
    if not (isinstance(cores, (int, np.integer)) and cores >= 1):
        raise UserError(f"cores={cores}: must be a whole number ≥ 1.")
    reps = list(replicas or range(1, cores + 1))
    ths = list(threads or range(1, cores + 1))
    if min(ths) > cores:
        raise UserError(f"a core budget of {cores} is smaller than one replica needs (threads ≥ {min(ths)}).")
    out = []
    for r, t, b, v in itertools.product(reps, ths, max_batches, variants):
        if r * t > cores:
            continue
        for w in (max_waits_s if b > 1 else (0.0,)):
            out.append(ServingSetup(int(r), int(t), int(b), float(w), *v))
    return out


def _score(cand: Candidate, obj: Objective, confidence: float, wi: WhatIf) -> None:
    ok = obj.met(wi)
    cand.whatif, cand.probability, cand.value = wi, float(ok.mean()), float(np.mean(obj.per_draw(wi)))
    cand.reason = "" if cand.probability >= confidence else (
        f"P(met) = {cand.probability:.2f} < {confidence:.2f}: {obj.metric} {obj.describe_value(cand.value)} "
        f"(target {obj.op} {obj.describe_value(obj.target)}); utilisation {np.mean(wi.utilisation):.0%}"
        + (" — saturated" if wi.saturated else ""))


def plan(objective: Objective, rate_rps: float, cores: int,
         service_for: Callable[..., ServiceModel], score_for: Callable[..., np.ndarray], *,
         confidence: float = 0.9, draws: int = 30, screen_draws: int = 6, n_windows: int = 100,
         refine: int = 8, seed: int = 0, progress: Callable[[str], None] | None = None, pool=None,
         cost: str = "cores", **space) -> Plan:
    """Search the set-ups of :func:`candidates` (``space`` passes its keyword arguments).

    ``service_for(threads, precision, replicas, backend, device)`` returns the replica's service model
    (raising a UserError when that configuration is not calibrated, which rejects the candidate with that
    reason); ``score_for(precision, backend, device)`` the evaluation set's per-instance scores. ``cost``
    (a key of :data:`COSTS`) orders the candidates, cheapest first. The simulations run on
    ``pool`` (:mod:`tqsim.parallel`; default: this thread); each is seeded by its candidate's place in
    the search space, so the plan is the same on any pool.
    """
    check_rate(rate_rps)
    if not 0 < confidence < 1:
        raise UserError(f"confidence={confidence}: must lie strictly between 0 and 1.")
    if cost not in COSTS:
        raise UserError(f"cost={cost!r}: a plan ranks by {' or '.join(COSTS)}; prices rank systems "
                        "(tqsim.whatif.fleet.plan_fleet).")
    pool = pool or SERIAL
    setups = candidates(cores, **space)
    thr = [objective.threshold_s if objective.threshold_s is not None else objective.target]
    shared: dict = {"services": {}, "scores": {}}
    cands, fastest, jobs = [], {}, {}
    for i, s in enumerate(setups):
        c = Candidate(s)
        cands.append(c)
        key = (s.threads, s.variant, s.replicas)
        try:
            if key not in shared["services"]:
                shared["services"][key] = service_for(s.threads, s.precision, s.replicas, s.backend, s.device)
                fastest[key] = shared["services"][key].min_service_s()
            if s.variant not in shared["scores"]:
                shared["scores"][s.variant] = score_for(*s.variant)
        except UserError as exc:
            c.reason = f"cannot be simulated: {exc}"
            continue
        jobs[i] = (key, s.variant, s, dict(thresholds_s=thr, rate_rps=rate_rps, draws=screen_draws,
                                             n_windows=max(n_windows // 2, 20), seed=seed + i))
    if not jobs:
        first = cands[0].reason.removeprefix("cannot be simulated: ") if cands else "no candidates in the space"
        raise UserError(f"no candidate set-up can be simulated: {first}")
    if objective.threshold_s is not None and objective.threshold_s < min(fastest.values()):
        raise UserError(f"deadline {objective.threshold_s * 1e3:g} ms is below the fastest possible service time "
                        f"({min(fastest.values()) * 1e3:.3g} ms for one request on an idle replica); no set-up can "
                        "meet it.")
    screened = [cands[i] for i in jobs]
    job_of = {id(cands[i]): job for i, job in jobs.items()}
    for c, wi in zip(screened, pool.map(simulate_job, list(jobs.values()), shared, reporting(
            progress, len(screened), lambda i: f"screened: {screened[i].setup.label()}"))):
        _score(c, objective, confidence, wi)
    # Re-simulate the promising ones with the full number of draws, cheapest first.
    price = lambda c: cost_of(c.setup, cost)  # noqa: E731
    simulated = sorted(screened, key=lambda c: (-c.probability, price(c), _p99(c)))
    promising = sorted(simulated[:refine], key=lambda c: (price(c), -c.probability))
    refined = [(k, p, s, dict(o, draws=draws, n_windows=n_windows, seed=seed + 7919))
               for k, p, s, o in (job_of[id(c)] for c in promising)]
    for c, wi in zip(promising, pool.map(simulate_job, refined, shared, reporting(
            progress, len(promising), lambda i: f"refined: {promising[i].setup.label()}"))):
        _score(c, objective, confidence, wi)
    order = lambda c: (price(c), -np.nan_to_num(c.probability, nan=-1.0), _p99(c))  # noqa: E731
    meeting = sorted([c for c in promising if c.meets], key=order)
    rejected = sorted([c for c in cands if not c.meets], key=order)
    screened_only = sorted([c for c in cands if c.meets and c not in promising], key=order)  # met, few draws
    best = meeting[0] if meeting else None
    closest = None
    if best is None:
        closest = max(screened, key=lambda c: (c.probability, -abs(c.value - objective.target),
                                               tuple(-x for x in price(c))))
    notes = [] if cost == "cores" else [
        "cost gpus: a replica on device=cuda counts one GPU, a CPU-only set-up none (every set-up stays within "
        "--cores); ties go to fewer cores, then the higher P(met), then the lower p99."]
    return Plan(objective, float(rate_rps), int(cores), confidence, best, meeting[1:4], rejected, closest,
                screened_only, notes, cost)


def _p99(c: Candidate) -> float:
    return float(np.mean(c.whatif.latency_s["p99"])) if c.whatif is not None else float("inf")
