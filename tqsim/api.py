"""The Python API (docs/api.md): the CLI's commands as calls on a :class:`Workspace`, taking objects and
numbers where the CLI takes text, and returning typed results instead of printing.

Each method calls the same library function as its command, so the two cannot drift apart. Importing this
module is cheap: torch, PyMC and xarray load inside the calls that need them.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterable, Mapping, Sequence

from tqsim.data.workspace import Workspace as _Folders
from tqsim.errors import UserError

if TYPE_CHECKING:
    from tqsim.explain import Explanation
    from tqsim.forecast import Forecast
    from tqsim.adaptive import AdaptiveResult
    from tqsim.models.design import Suggestion
    from tqsim.models.store import FittedModel
    from tqsim.serving_validation import Validation as ServingValidation
    from tqsim.validate import Validation
    from tqsim.whatif.inputs import Sweep
    from tqsim.whatif.log_fit import LogFit
    from tqsim.whatif.objective import Objective
    from tqsim.whatif.planner import Plan
    from tqsim.workloads.base import Workload

__all__ = ["Calibration", "Fit", "Workspace"]


@dataclass(frozen=True)
class Calibration:
    """What one ``calibrate`` call measured: where the files are, each configuration's summary (passes,
    latency p50/p99, quality, outliers), the passes measured now, the sessions that measured them (ids are
    start times in µs since the epoch) and the warning when other programs shared the machine."""

    system: str
    workload: str
    metric: str
    folder: Path
    configs: list[dict]
    measured_passes: int
    elapsed_s: float
    sessions: list[int]
    busy: str | None
    plan: dict

    @property
    def session(self) -> int | None:
        """The last session that measured passes (``None`` when everything was on disk already)."""
        return self.sessions[-1] if self.sessions else None

    @property
    def config_ids(self) -> list[str]:
        return [c["config_id"] for c in self.configs]

    def to_dict(self) -> dict:
        """The JSON contract of ``tqsim calibrate --json`` (without its ``warnings``)."""
        return dict(asdict(self), folder=str(self.folder))


class Fit:
    """A fitted latency model of one workload on one system (``models/<system>/<workload>.nc``)."""

    def __init__(self, model: "FittedModel", path: Path, workspace: "Workspace"):
        self.model = model
        self.path = Path(path)
        self.workspace = workspace

    system = property(lambda self: self.model.system)
    workload = property(lambda self: self.model.workload)

    @property
    def diagnostics(self) -> dict:
        """r-hat, ESS, divergences, ``status`` (ok / warn / fail) and what the fit saw (configs, passes, sessions)."""
        return self.model.diagnostics

    @property
    def ok(self) -> bool:
        """False when the diagnostics failed: :meth:`predict` then refuses without ``force=True``."""
        return self.model.diagnostics_ok

    @property
    def configs(self) -> list[str]:
        """The calibrated configurations the fit saw."""
        return [c["id"] for c in self.model.configs]

    def summary(self) -> str:
        """The fit in words, as ``tqsim fit`` prints it: what it saw, its diagnostics, and any caution."""
        from tqsim.models.fit import fit_summary

        return "\n".join([text for text, _ in fit_summary(self.diagnostics)] + [f"model file: {self.path}"])

    def __repr__(self) -> str:
        return f"<tqsim.Fit {self.workload} on {self.system}: {len(self.configs)} configs, " \
               f"diagnostics {self.diagnostics.get('status', '?')}>"

    def predict(self, batch_size: int | None = None, threads: int | None = None, *,
                thresholds: str | float | Sequence[str | float] | None = None, passes: int = 100, draws: int = 200,
                tail_q: float = 0.01, seed: int = 0, force: bool = False, now: bool = False,
                **factors: Any) -> "Forecast":
        """Forecast a configuration, calibrated or never run, as ``tqsim predict`` does.

        Factors (``batch_size``, ``threads``, and ``precision=``, ``backend=``, ... as keywords) left out take
        the calibration's level when it used only one. ``thresholds``: deadlines as seconds, ``"2ms"`` or
        ``"p99"`` (of the forecast latency). ``now=True`` conditions on the machine state the last
        ``tqsim check`` measured instead of drawing a new session.
        """
        from tqsim.forecast import predict

        settings = {k: v for k, v in dict(batch_size=batch_size, threads=threads, **factors).items() if v is not None}
        check = None
        if now:
            from tqsim.measure.check import load_checks

            check = load_checks(self.workspace._folders, self.system, self.workload)[-1]
        return predict(self.model, settings, _listed(thresholds), check=check, n_passes=passes, n_draws=draws,
                       tail_q=tail_q, seed=seed, force=force)

    def suggest(self, target: str, *, budget: int | None = None, passes: int = 5, seed: int = 0) -> "Suggestion":
        """Which of the ``target`` configurations (``"batch_size=1..256,threads=1,2"``) to measure next, as
        ``tqsim suggest``: ``.plan`` (greedy steps within ``budget`` inferences), ``.commands()``, ``.as_dict()``."""
        from tqsim.models.design import suggest

        return suggest(self.model, target, budget=budget, chunk=passes, seed=seed)

    def explain(self, at: Mapping[str, Any] | Sequence[str] | None = None, *, threshold: str | float | None = None,
                passes: int = 100, draws: int = 200, tail_q: float = 0.01, seed: int = 0,
                force: bool = False) -> "Explanation":
        """What each factor does around a base configuration, as ``tqsim explain``: effects on p50, p99 and tail
        quality with 90 % intervals, the batch size × threads interaction, and the split of a call's variance.

        ``at``: base levels and contrasts, ``{"batch_size": 8, "threads": (1, 2)}`` (or the CLI's
        ``["batch_size=8", "threads=1,2"]``); ``threshold``: the deadline of tail quality (``"2ms"``, seconds, or
        ``"p99"`` of the base's forecast latency, the default)."""
        from tqsim.explain import explain_in_workspace

        return explain_in_workspace(self.model, self.workspace.home, at=at, threshold=threshold, n_passes=passes,
                                    n_draws=draws, tail_q=tail_q, seed=seed, force=force)


class Workspace:
    """A tqsim workspace: the folder holding calibrations, fits and reports (the CLI's ``--home``).

    ``home=None`` is the CLI's default: ``$TQSIM_HOME``, else the current folder. ``system`` names the
    system (default: this host's name when measuring, the only system in the workspace otherwise).
    """

    def __init__(self, home: str | os.PathLike | None = None, system: str | None = None):
        self._folders = _Folders.at(home)
        self.system = system

    @property
    def home(self) -> Path:
        return self._folders.home

    def __repr__(self) -> str:
        return f"tqsim.Workspace({str(self.home)!r}" + (f", system={self.system!r})" if self.system else ")")

    def systems(self) -> list[str]:
        return self._folders.systems()

    def workloads(self, system: str | None = None) -> list[str]:
        """The calibrated workloads of ``system`` (default: the workspace's system)."""
        return self._folders.workloads(self._folders.resolve_system(system or self.system))

    # -- measuring ----------------------------------------------------------------------------------------

    def calibrate(self, workload: "str | Workload | None" = None,
                  grid: Mapping[str, Sequence | Any] | Sequence[str] | None = None, *, plan: str | os.PathLike | None = None,
                  passes: int | None = None, warmup: int | None = None, sessions: int = 1, gap: str | float = 0,
                  fresh: bool = False, seed: int | None = None, until_converged: bool = False, rjsd: float = 0.05,
                  max_passes: int | None = None, show_progress: bool = False) -> Calibration:
        """Measure (or resume measuring) every configuration of ``grid`` into the workspace, as ``tqsim calibrate``.

        ``workload``: a :class:`tqsim.workloads.Workload` object, or a spec (built-in name such as
        ``"digits-mlp"``, ``"path/to/file.py:factory"``, ``"module:factory"``). ``grid``: levels per factor,
        e.g. ``{"batch_size": [1, 8], "threads": [1, 2]}``; ``plan``: a plan TOML (the shipped quick plan when
        neither is given). ``sessions > 1`` needs a spec, as each session runs in a fresh process.
        """
        from tqsim.measure.run import calibrate

        out = calibrate(str(plan) if plan is not None else None, _grid_options(grid), home=self.home,
                        system=self.system, workload=workload, passes=passes, warmup=warmup, fresh=fresh, seed=seed,
                        until_converged=until_converged, rjsd=rjsd, max_passes=max_passes, sessions=sessions, gap=gap,
                        show_progress=show_progress)
        return Calibration(system=out["system"], workload=out["workload"], metric=out["metric"],
                           folder=Path(out["folder"]), configs=out["configs"],
                           measured_passes=int(out["measured_passes"]), elapsed_s=float(out["elapsed_s"]),
                           sessions=list(out["sessions"]), busy=out.get("busy"), plan=out["plan"])

    def calibrate_adaptive(self, target: str, workload: "str | Workload | None" = None, *, until_width: float = 0.10,
                           budget: int | None = None, passes: int = 5, warmup: int = 2, seed: int = 0,
                           show_progress: bool = False, log: Callable[[str], None] | None = None) -> "AdaptiveResult":
        """Measure only what the ``target`` forecasts need, as ``tqsim calibrate --adaptive``: until every target's
        p99 interval is narrower than ``until_width`` (relative) or ``budget`` inferences are spent. Resumes; ends
        with a saved fit (``.fm``); ``.as_dict()`` says what it spent against measuring the whole target grid."""
        from tqsim.adaptive import adaptive_calibration

        return adaptive_calibration(target, workload=workload or "digits-cnn", home=self.home, system=self.system,
                                    chunk=passes, until_width=until_width, budget=budget, seed=seed, warmup=warmup,
                                    show_progress=show_progress, log=log)

    # -- modelling ----------------------------------------------------------------------------------------

    def fit(self, workload: "str | Workload | None" = None, *, draws: int = 1000, tune: int = 1000, chains: int = 2,
            sampler: str | None = None, seed: int = 0, progress: bool = False,
            log: Callable[[str], None] | None = None) -> Fit:
        """Fit the Bayesian latency model to the calibration and save it, as ``tqsim fit`` (replaces the saved
        fit). ``sampler``: ``nutpie`` (default when installed), ``nuts`` or ``advi`` (quick, biased scales)."""
        from tqsim.models.fit import fit_workspace

        fm, path = fit_workspace(self.home, self.system, _name(workload), sampler=sampler, draws=draws, tune=tune,
                                 chains=chains, seed=seed, progress=progress, log=log)
        return Fit(fm, path, self)

    def load_fit(self, workload: "str | Workload | None" = None) -> Fit:
        """Reopen the saved fit (``tqsim fit`` made it, or :meth:`fit`)."""
        from tqsim.models.store import load_from_workspace

        fm = load_from_workspace(self.home, self.system, _name(workload))
        return Fit(fm, self._folders.model_path(fm.system, fm.workload), self)

    def quality(self, workload: "str | Workload | None" = None,
                thresholds: str | float | Sequence[str | float] | None = None, *, tail_q: float = 0.01,
                files: Iterable[str | os.PathLike] | None = None, seed: int = 0) -> dict:
        """Measured Q@T over passes, tail quality TQ_q, mean and minimum with 90% intervals and MLPerf's bound,
        per configuration, as ``tqsim quality --json`` (thresholds default to p90, p95, p99 of each
        configuration's own latency). ``files``: calibration files or folders to read instead of the workspace."""
        from tqsim.data.io import workspace_campaign
        from tqsim.quality import quality_report

        campaign = workspace_campaign(self.home, self.system, _name(workload),
                                      [Path(f) for f in files] if files is not None else None)
        return quality_report(campaign, _listed(thresholds), tail_q=tail_q, seed=seed)

    def validate(self, heldout: str | os.PathLike, workload: "str | Workload | None" = None, *, draws: int = 200,
                 seed: int = 0, force: bool = False) -> "Validation":
        """Score the saved fit's forecasts against held-out runs (a workspace calibrated with another home, or a
        folder of configuration files), as ``tqsim validate``."""
        from tqsim.validate import validate

        return validate(self.load_fit(workload).model, heldout, n_draws=draws, seed=seed, force=force)

    # -- serving ------------------------------------------------------------------------------------------

    def whatif(self, rates: float | Sequence[float] = 300.0, *, thresholds: str | float | Sequence[str | float],
               workload: "str | Workload | None" = None, replicas: int | Sequence[int] = 1, threads: int = 1,
               max_batch: int = 1, max_wait: str | float = 0.0, precision: str | None = None,
               backend: str | None = None, device: str | None = None, trace: str | os.PathLike | None = None,
               draws: int = 40, windows: int = 100, tail_q: float = 0.01, overheads: bool = True,
               service: str = "empirical", seed: int = 0, cluster: str | None = None,
               workers: int | None = None, stack: str = "tqsim") -> "Sweep":
        """Simulate serving under load (``rates`` in requests/s, or ``trace``: a file of arrival times), as
        ``tqsim whatif``: end-to-end latency, deadline misses and tail quality with 90% intervals, one result per
        (rate, replicas, threshold). ``service="forecast"`` takes forward times from the fit instead of the
        calibration (thread counts never calibrated). The simulations run on ``workers`` local threads (default: one
        per core) or on the Dask ``cluster`` (``"local"`` or ``"tcp://HOST:PORT"``), with the same answers."""
        from tqsim.parallel import pool
        from tqsim.units import parse_duration
        from tqsim.whatif.inputs import whatif_sweep

        with pool(cluster, workers) as on:
            return whatif_sweep(home=self.home, system=self.system, workload=_name(workload),
                                rates=[float(r) for r in _listed(rates)], replicas=[int(r) for r in _listed(replicas)],
                                threads=threads, max_batch=max_batch, max_wait_s=parse_duration(max_wait, "max_wait"),
                                thresholds_s=[parse_duration(t, "threshold") for t in _listed(thresholds)],
                                precision=precision, backend=backend, device=device,
                                trace=Path(trace) if trace is not None else None, draws=draws, windows=windows,
                                tail_q=tail_q, overheads=overheads, service=service, seed=seed, pool=on, stack=stack)

    def plan(self, objective: "str | Objective", rate: float, cores: int, *, workload: "str | Workload | None" = None,
             confidence: float = 0.9, max_batch: Sequence[int] | None = None,
             max_wait: Sequence[str | float] | None = None, precisions: Sequence[str] | None = None,
             backends: Sequence[str] | None = None, devices: Sequence[str] | None = None, cost: str = "cores",
             draws: int = 30, overheads: bool = True, service: str = "empirical", seed: int = 0,
             cluster: str | None = None, workers: int | None = None, stack: str = "tqsim") -> "Plan":
        """The cheapest serving set-up (fewest cores ≤ ``cores``, or GPUs then cores with ``cost="gpus"``) meeting
        ``objective`` (e.g. ``"tail_quality>=0.95@20ms"``, ``"p99<=15ms"``) at ``rate`` requests/s with probability
        ≥ ``confidence``, as ``tqsim plan``; ``cluster``/``workers`` as in :meth:`whatif`."""
        from tqsim.parallel import pool
        from tqsim.units import parse_duration
        from tqsim.whatif.inputs import plan_from_workspace
        from tqsim.whatif.objective import parse_objective

        goal = parse_objective(objective) if isinstance(objective, str) else objective
        with pool(cluster, workers) as on:
            return plan_from_workspace(goal, float(rate), int(cores), home=self.home, system=self.system,
                                       workload=_name(workload), confidence=confidence,
                                       max_batches=[int(b) for b in _listed(max_batch)] or None,
                                       max_waits_s=[parse_duration(w, "max_wait") for w in _listed(max_wait)] or None,
                                       precisions=_listed(precisions) or None, backends=_listed(backends) or None,
                                       devices=_listed(devices) or None, cost=cost, draws=draws, overheads=overheads,
                                       service=service, seed=seed, pool=on, stack=stack)


    def import_serving_logs(self, paths: Sequence[str | os.PathLike], setup: str, *,
                            workload: "str | Workload | None" = None, seed: int = 0) -> "LogFit":
        """``tqsim calibrate --serving-log``: fit a serving stack's overheads from its request logs (one file per
        run) served with ``setup`` (``'replicas=R,threads=T,max_batch=B,max_wait=W[,stack=S,capacity=C]'``) and
        store them, so that ``whatif(stack=S)`` and ``plan(stack=S)`` use them."""
        from tqsim.serving_calibration import calibrate_from_logs

        return calibrate_from_logs(list(paths), setup, home=self.home, system=self.system, workload=_name(workload),
                                   seed=seed)[1]

    def validate_serving_logs(self, paths: Sequence[str | os.PathLike], setup: str, *,
                              workload: "str | Workload | None" = None, threshold: str | float = "20ms",
                              draws: int = 40, seed: int = 0) -> "ServingValidation":
        """``tqsim validate --serving-log``: the what-if forecast of each logged run (never fitted) against what it
        measured, with the 90 % intervals and their coverage."""
        from tqsim.serving_validation import validate_logs
        from tqsim.units import parse_duration

        return validate_logs([str(p) for p in paths], setup, home=self.home, system=self.system,
                             workload=_name(workload), threshold_s=parse_duration(threshold, "threshold"),
                             draws=draws, seed=seed)

def _listed(value) -> list:
    """A scalar or a sequence as a list (``None``: empty), so ``thresholds="2ms"`` and ``["2ms", "p99"]`` both work."""
    if value is None:
        return []
    if isinstance(value, (str, bytes, int, float)):
        return [value]
    return list(value)


def _name(workload) -> str | None:
    """The stored name of a workload given as an object or a spec (``None``: the workspace's only one)."""
    from tqsim.data.workspace import safe_name
    from tqsim.workloads.base import Workload

    return safe_name(workload.name) if isinstance(workload, Workload) else workload


def _grid_options(grid) -> list[str] | None:
    """``{"batch_size": [1, 8]}`` (or ``["batch_size=1,8"]``, the CLI's form) as the plan's ``--grid`` options."""
    if grid is None:
        return None
    if isinstance(grid, Mapping):
        return [f"{factor}={','.join(str(v) for v in _listed(levels))}" for factor, levels in grid.items()]
    if isinstance(grid, str) or not all(isinstance(g, str) for g in grid):
        raise UserError(f"grid {grid!r}: give levels per factor, e.g. grid={{\"batch_size\": [1, 8], \"threads\": [1, 2]}}.")
    return list(grid)
