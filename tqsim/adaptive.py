"""``tqsim calibrate --adaptive``: measure, refit, choose what to measure next, until the target
configurations' forecasts are as narrow as asked or the budget is spent.

Every round's state is the calibration on disk, so a killed run resumes by running the same command: it
refits what was measured and goes on. The budget counts every inference of the calibration (timed, warm-up
and quality passes), so a resumed run continues the same budget. The choice is
:class:`tqsim.models.design.Design`'s (docs/method.md, "Choosing what to measure").
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from typing import Callable, Protocol

import numpy as np

from tqsim.errors import UserError
from tqsim.factors import FACTORS, Config
from tqsim.models.design import Design, P99Forecasts, Pick, p99_forecasts, step_inferences
from tqsim.models.spec import CATEGORICAL

PER_ROUND = 3          # choices between refits: a refit costs ~10 s, a step of 5 passes a second or two
REFERENCE_PASSES = 20  # a plain `tqsim calibrate`'s passes: what measuring the whole target grid would cost
FIT = dict(draws=500, tune=500, chains=2)   # between rounds (r-hat and ESS are still checked); the last is a full fit


class Measurements(Protocol):
    """Where passes come from: this machine's workspace (:class:`WorkspaceMeasurements`), or a recorded campaign
    replayed by a benchmark."""

    n_instances: int
    warmup: int

    def passes(self) -> dict[Config, int]: ...
    def measure(self, steps: list[tuple[Config, int]]) -> None: ...
    def fit(self, final: bool = False): ...


@dataclasses.dataclass
class Round:
    picks: list[Pick]
    widest: float          # the widest target's relative p99 width before the round
    spent: int             # inferences before the round


@dataclasses.dataclass
class AdaptiveResult:
    targets: list[Config]
    widths: np.ndarray                 # per target, relative 90 % width of p99 the model makes, at the stop
    until_width: float
    spent: int                         # inferences of the calibration, at the stop
    budget: int
    full_grid: int                     # inferences of measuring every target with REFERENCE_PASSES passes
    stop: str                          # "width" or "budget"
    rounds: list[Round]
    passes: dict[Config, int]
    fm: object = None

    def as_dict(self) -> dict:
        return {"targets": [t.id for t in self.targets], "until_width": self.until_width,
                "widths": {t.id: float(w) for t, w in zip(self.targets, self.widths)},
                "spent_inferences": self.spent, "budget_inferences": self.budget,
                "full_grid_inferences": self.full_grid, "saved_share": 1 - self.spent / self.full_grid,
                "stop": self.stop, "passes": {c.id: n for c, n in self.passes.items()},
                "rounds": [{"widest": r.widest, "spent_inferences": r.spent, "picks": [p.as_dict() for p in r.picks]}
                           for r in self.rounds]}


def initial_design(targets: list[Config]) -> list[Config]:
    """The first measurements: the smallest, middle and largest target batch sizes at the fewest and most
    threads, for the first combination of categorical levels; the middle batch size at the fewest threads for
    each other one (an anchor the model can move from)."""
    groups: dict[tuple, list[Config]] = {}
    for t in targets:
        groups.setdefault(tuple(getattr(t, f) for f in CATEGORICAL), []).append(t)
    out: list[Config] = []
    for k, members in enumerate(groups.values()):
        bs = sorted({t.batch_size for t in members})
        th = sorted({t.threads for t in members})
        sizes = [bs[0], bs[len(bs) // 2], bs[-1]] if k == 0 else [bs[len(bs) // 2]]
        threads = [th[0], th[-1]] if k == 0 else [th[0]]
        for b in dict.fromkeys(sizes):
            for n in dict.fromkeys(threads):
                out.append(members[0].replace(batch_size=b, threads=n))
    return out


def inferences(passes: dict[Config, int], n_instances: int, warmup: int) -> int:
    """Every inference run: the timed passes, and each measured configuration's warm-up and quality passes."""
    return sum(step_inferences(n, True, warmup, n_instances) for n in passes.values() if n > 0)


def run_adaptive(targets: list[Config], source: Measurements, *, chunk: int = 5, until_width: float = 0.10,
                 budget: int | None = None, per_round: int = PER_ROUND, seed: int = 0,
                 log: Callable[[str], None] | None = None) -> AdaptiveResult:
    """The loop: complete the initial design, then fit → stop? → choose ``per_round`` steps → measure."""
    log = log or (lambda m: None)
    n, warm = source.n_instances, source.warmup
    full = inferences({t: REFERENCE_PASSES for t in targets}, n, warm)
    budget = full if budget is None else int(budget)
    if budget < n:
        raise UserError(f"--budget {budget} is smaller than one pass ({n} inferences); give at least "
                        f"{(chunk + warm + 1) * n} (one step of {chunk} passes with its warm-up).")
    first = initial_design(targets)
    have = source.passes()
    if sum(have.get(t, 0) > 0 for t in targets) < len(first):
        todo = [(c, chunk - have.get(c, 0)) for c in first if have.get(c, 0) < chunk]
        need = inferences({c: chunk for c in first}, n, warm)
        if need > budget:
            raise UserError(f"--budget {budget} does not cover the first {len(first)} configurations "
                            f"({need} inferences with --passes {chunk}); raise --budget or lower --passes.")
        log(f"initial design: {', '.join(c.id for c, _ in todo)} ({chunk} passes each)")
        source.measure(todo)
    rounds: list[Round] = []
    while True:
        fm = source.fit()
        now: P99Forecasts = p99_forecasts(fm, targets, seed=seed)
        w = now.widths
        have = source.passes()
        spent = inferences(have, n, warm)
        log(f"{spent:,} inferences spent ({100 * spent / full:.0f} % of the full grid); widest model interval "
            f"of p99 {100 * float(np.max(w)):.1f} % ({targets[int(np.argmax(w))].id}), {int((w <= until_width).sum())}/"
            f"{len(targets)} targets within {100 * until_width:g} %")
        if np.all(w <= until_width):
            stop = "width"
            break
        picks = Design(fm, targets, weights=now.weights).plan(chunk, warm, budget - spent, steps=per_round)
        if not picks:
            stop = "budget"
            break
        rounds.append(Round(picks, float(np.max(w)), spent))
        log("measuring " + ", ".join(f"{p.config.id} +{p.passes}" for p in picks))
        source.measure(_merge(picks))
    fm = source.fit(final=True)   # the model left behind is an ordinary `tqsim fit`, with its full draws
    return AdaptiveResult(targets, w, until_width, spent, budget, full, stop, rounds, dict(have), fm)


def _merge(picks: list[Pick]) -> list[tuple[Config, int]]:
    """One measuring step per configuration (a configuration chosen twice in a round gets both)."""
    out: dict[Config, int] = {}
    for p in picks:
        out[p.config] = out.get(p.config, 0) + p.passes
    return list(out.items())


class WorkspaceMeasurements:
    """Passes measured on this machine into the workspace, and fits saved beside them (``tqsim calibrate``'s own
    campaign and ``tqsim fit``'s own model: what the adaptive run leaves is an ordinary calibration and fit)."""

    def __init__(self, workload, *, home, system: str, seed: int = 0, warmup: int = 2, show_progress: bool = True,
                 data: str | None = None, log: Callable[[str], None] | None = None):
        from tqsim.workloads.registry import resolve_workload

        self.data = data
        self.workload = resolve_workload(workload, data)
        self.home, self.system, self.seed, self.warmup = home, system, seed, warmup
        self.n_instances = int(self.workload.n_instances)
        self.show_progress, self.log = show_progress, log or (lambda m: None)

    def _folder(self) -> Path:
        from tqsim.data.workspace import Workspace

        return Workspace.at(self.home).calibration_dir(self.system, self.workload.name)

    def passes(self) -> dict[Config, int]:
        from tqsim.data.io import calibration_files, read_calibration

        folder = self._folder()
        out = {}
        for path in calibration_files(folder) if folder.is_dir() else []:
            ds = read_calibration(path)
            out[Config.from_mapping({f: ds.attrs[f] for f in FACTORS if f in ds.attrs})] = int(ds.sizes.get("pass", 0))
        return out

    def measure(self, steps: list[tuple[Config, int]]) -> None:
        from tqsim.measure.run import calibrate

        have = self.passes()
        for config, add in steps:
            grid = [f"{f}={getattr(config, f)}" for f in FACTORS]
            calibrate(None, grid, home=self.home, system=self.system, workload=self.workload,
                      passes=have.get(config, 0) + add, warmup=self.warmup, seed=self.seed,
                      show_progress=self.show_progress, data=self.data)

    def fit(self, final: bool = False):
        from tqsim.models.fit import fit_workspace

        fm, path = fit_workspace(self.home, self.system, self.workload.name, seed=self.seed, **({} if final else FIT))
        self.log(f"refitted in {fm.diagnostics['total_seconds']:.1f} s → {path}")
        return fm


def adaptive_calibration(target: str, *, workload, home=None, system: str | None = None, chunk: int = 5,
                         until_width: float = 0.10, budget: int | None = None, seed: int = 0, warmup: int = 2,
                         show_progress: bool = True, data: str | None = None,
                         log: Callable[[str], None] | None = None) -> AdaptiveResult:
    """``tqsim calibrate --adaptive --target T``: the loop on this machine's workspace."""
    from tqsim.data.workspace import Workspace, default_system_name, safe_name
    from tqsim.measure.backends import check_supported
    from tqsim.models.design import parse_target

    if chunk < 2:
        raise UserError(f"--passes {chunk}: an adaptive step measures at least 2 passes (5 is usual).")
    ws = Workspace.at(home)
    ws.check_writable()
    system = safe_name(system) if system else default_system_name()
    source = WorkspaceMeasurements(workload, home=ws.home, system=system, seed=seed, warmup=warmup,
                                   show_progress=show_progress, data=data, log=log)
    targets = parse_target(target, calibrated=list(source.passes()), n_instances=source.n_instances)
    for config in targets:
        check_supported(config, source.workload)
    return run_adaptive(targets, source, chunk=chunk, until_width=until_width, budget=budget, seed=seed, log=log)


def parse_width(text: str | float) -> float:
    """``10%`` or ``0.1`` → 0.1."""
    s = str(text).strip()
    try:
        value = float(s[:-1]) / 100 if s.endswith("%") else float(s)
    except ValueError:
        raise UserError(f"--until-width {text!r}: give a relative width like 10% or 0.1.") from None
    if not math.isfinite(value) or value <= 0:
        raise UserError(f"--until-width {text!r}: must be a positive relative width like 10%.")
    return value
