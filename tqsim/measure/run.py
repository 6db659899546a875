"""``tqsim calibrate`` as a library call: plan → workload → campaign, with a progress bar."""

from __future__ import annotations

import contextlib
import signal
import warnings
from pathlib import Path
from typing import TYPE_CHECKING

from tqsim.data.workspace import Workspace, default_system_name, safe_name
from tqsim.errors import UserError
from tqsim.measure.campaign import Progress, run_campaign, summarise
from tqsim.measure.plan import build_plan

if TYPE_CHECKING:
    from tqsim.workloads.base import Workload


@contextlib.contextmanager
def _sigterm_as_interrupt():
    """SIGTERM ends a campaign like Ctrl-C: the pass in flight is dropped, every written file is kept."""
    def handler(signum, frame):
        raise KeyboardInterrupt
    try:
        previous = signal.signal(signal.SIGTERM, handler)
    except ValueError:  # not the main thread
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


@contextlib.contextmanager
def progress_bars(enabled: bool):
    """One rich display of progress bars; yields ``bar(name)``, which adds a bar (a fleet draws one per system)
    and returns its :class:`~tqsim.measure.campaign.Progress` callbacks (silent ones if not enabled)."""
    if not enabled:
        yield lambda name: Progress()
        return
    from rich.progress import BarColumn, MofNCompleteColumn, Progress as Bar, TextColumn, TimeElapsedColumn, \
        TimeRemainingColumn

    with Bar(TextColumn("[bold]calibrate[/bold] {task.fields[name]}{task.fields[label]}"), BarColumn(),
             MofNCompleteColumn(), TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn(),
             transient=False) as display:
        def bar(name: str) -> Progress:
            task = display.add_task("passes", total=1, label="", name=f"{name}: " if name else "")
            return Progress(start=lambda total: display.update(task, total=max(total, 1)),
                            advance=lambda label: display.update(task, advance=1, label=label))
        yield bar


@contextlib.contextmanager
def progress_bar(enabled: bool):
    """A single bar: :func:`progress_bars` with one."""
    with progress_bars(enabled) as bar:
        yield bar("")


def calibrate(plan_file: str | None, grid: list[str] | None, *, home: str | Path | None = None,
              system: str | list[str] | None = None, workload: "str | Workload | None" = None,
              passes: int | None = None,
              warmup: int | None = None, fresh: bool = False, seed: int | None = None,
              until_converged: bool = False, rjsd: float = 0.05, max_passes: int | None = None,
              sessions: int = 1, gap: str | float = 0.0, show_progress: bool = True, data: str | None = None,
              cluster: str | None = None, force: bool = False) -> dict:
    """Run (or resume) a calibration campaign and return the JSON-ready summary.

    ``cluster`` (a scheduler's ``tcp://HOST:PORT``, or ``local``) measures on a fleet of Dask workers instead of
    this machine: on every system they declare, or on ``system`` (a name or a list); ``force`` accepts a worker
    whose machine differs from its system's calibration (tqsim/measure/fleet.py).

    ``data`` is the evaluation data file of a model-file workload (``--workload model.onnx``).

    ``sessions > 1`` spreads the passes over that many sessions, each a fresh process started
    ``gap`` after the previous one ended, so that the fit can measure how much the machine's speed
    moves between sessions (docs/method.md, "Sessions") instead of assuming it.

    ``workload`` is a spec (built-in name, ``file.py:factory``) or an already-built ``Workload`` object
    (one session only: later sessions run in fresh processes, which rebuild the workload from a spec).
    """
    from tqsim.units import parse_duration
    from tqsim.workloads.base import Workload

    built = workload if isinstance(workload, Workload) else None
    if built is not None and sessions > 1:
        raise UserError(f"sessions={sessions} runs each session in a fresh process, which cannot receive a Workload "
                        "object; pass its spec instead (a built-in name or 'path/to/file.py:factory'), or sessions=1.")

    if until_converged:
        if not 0 < rjsd < 1:
            raise UserError(f"--rjsd {rjsd}: must lie in (0, 1); 0.05 is a common choice.")
        passes = max_passes if max_passes is not None else (passes or 200)
    if sessions < 1:
        raise UserError(f"--sessions {sessions}: need at least 1 session (3 or more to learn the drift).")
    gap_s = parse_duration(gap, "--gap")
    if built is not None:
        from tqsim.workloads.registry import resolve_workload

        built = resolve_workload(built)  # checked (and named) before any measuring
    plan = build_plan(plan_file, grid, workload=_plan_spec(built) if built is not None else workload, passes=passes,
                      warmup=warmup, seed=seed)
    if cluster is not None:
        return _on_fleet(cluster, plan, workload=built or workload, home=home, systems=system, fresh=fresh,
                         force=force, sessions=sessions, until_converged=until_converged, rjsd=rjsd,
                         show_progress=show_progress, data=data)
    if sessions > plan.passes:
        raise UserError(f"--sessions {sessions} with --passes {plan.passes}: each session needs at least one pass; "
                        f"use at most {plan.passes} sessions.")
    ws = Workspace.at(home)
    ws.check_writable()
    system = safe_name(system) if system else default_system_name()

    from tqsim.measure.backends import check_supported

    for config in plan.configs:  # cheap checks first: nothing trained or measured on a bad level
        check_supported(config)
    kwargs = dict(home=ws.home, system=system, workload=built or plan.workload, warmup=plan.warmup, seed=plan.seed,
                  until_converged=until_converged, rjsd=rjsd, show_progress=show_progress, data=data)
    if sessions == 1:
        return _one_session(plan_file, grid, passes=plan.passes, fresh=fresh, **kwargs)
    with _sigterm_as_interrupt():
        return _spread_sessions(plan_file, grid, plan, sessions, gap_s, fresh=fresh, **kwargs)


def _one_session(plan_file, grid, *, home, system, workload, passes, warmup, seed, fresh, until_converged,
                 rjsd, show_progress, data=None) -> dict:
    """One session: this process measures every pass still missing, up to ``passes``, of ``workload``
    (a built ``Workload``, or a spec that this process builds: a session in a fresh process gets a spec)."""
    from tqsim.measure.backends import check_supported, prepare
    from tqsim.measure.fingerprint import fingerprint
    from tqsim.workloads.registry import resolve_workload

    wl = resolve_workload(workload, data)
    plan = build_plan(plan_file, grid, workload=workload if isinstance(workload, str) else _plan_spec(wl),
                      passes=passes, warmup=warmup, seed=seed)
    stop_when = _convergence_rule(rjsd) if until_converged else None
    with _sigterm_as_interrupt(), progress_bar(show_progress) as progress:
        result = run_campaign(plan, Workspace.at(home), system, workload=wl, prepare=prepare,
                              check_supported=lambda config: check_supported(config, wl),
                              fingerprint=fingerprint(), fresh=fresh,
                              progress=progress, stop_when=stop_when)
    if result.busy:
        warnings.warn(result.busy, UserWarning, stacklevel=2)
    return {
        "system": system, "workload": wl.name, "metric": wl.metric_name, "folder": str(result.folder),
        "plan": plan.to_dict(), "measured_passes": result.measured_passes, "elapsed_s": result.elapsed_s,
        "sessions": [result.session] if result.measured_passes else [], "busy": result.busy,
        "configs": summarise(result.records),
    }


def _on_fleet(cluster: str, plan, *, workload, home, systems: str | list[str] | None, fresh: bool, force: bool,
              sessions: int, until_converged: bool, rjsd: float, show_progress: bool, data: str | None) -> dict:
    """The campaign on a Dask cluster's workers (tqsim/measure/fleet.py); this process writes every file."""
    from tqsim.cluster import connect
    from tqsim.measure.fleet import calibrate_fleet
    from tqsim.workloads.base import Workload

    if isinstance(workload, Workload):
        raise UserError("a fleet's workers build the workload themselves: pass its spec (a built-in name, or a path "
                        "every worker can read), not a Workload object.")
    if sessions > 1:
        raise UserError(f"--sessions {sessions} with --cluster: each invocation on a fleet is one session; run the "
                        "same command again later with more --passes for the next one (it resumes).")
    ws = Workspace.at(home)
    systems = [systems] if isinstance(systems, str) else list(systems or [])
    local = None
    if cluster == "local":  # this machine: one worker, declaring --system (default: the host name)
        if len(systems) > 1:
            raise UserError(f"--cluster local is this machine alone: give it one --system, not {', '.join(systems)}.")
        local = safe_name(systems[0]) if systems else default_system_name()
    with connect(cluster, n_workers=1 if local else None, system=local) as client, _sigterm_as_interrupt(), \
            progress_bars(show_progress) as bar:
        result = calibrate_fleet(client, cluster, plan, plan.workload, data=data, workspace=ws,
                                 systems=[local] if local else systems, fresh=fresh, force=force,
                                 stop_when=_convergence_rule(rjsd) if until_converged else None, progress=bar)
    for note in result.warnings:
        warnings.warn(note, UserWarning, stacklevel=2)
    for name, res in result.systems.items():
        if res.busy:
            warnings.warn(f"system {name}: {res.busy}", UserWarning, stacklevel=2)
    measured = sum(r.measured_passes for r in result.systems.values())
    return {
        "cluster": cluster, "workload": result.workload, "metric": result.metric, "plan": plan.to_dict(),
        "measured_passes": measured, "elapsed_s": result.elapsed_s, "sessions": [result.session] if measured else [],
        "systems": [{"system": name, "folder": str(res.folder), "measured_passes": res.measured_passes,
                     "busy": res.busy, "configs": summarise(res.records)} for name, res in result.systems.items()],
    }


def _spread_sessions(plan_file, grid, plan, sessions: int, gap_s: float, *, fresh: bool, **kwargs) -> dict:
    """Session k measures up to ⌈k·passes/N⌉ passes per configuration, in a process of its own (a new
    process is what a later run of the user's is); sessions whose share is already on disk are skipped."""
    import concurrent.futures
    import math
    import multiprocessing
    import time

    from tqsim.data.io import calibration_files, read_dataset

    folder = Workspace.at(kwargs["home"]).calibration_dir(kwargs["system"], safe_name(_stored_name(plan.workload)))
    on_disk = {p.stem: read_dataset(p).sizes.get("pass", 0) for p in calibration_files(folder)} if folder.is_dir() \
        and not fresh else {}
    have = min((on_disk.get(c.id, 0) for c in plan.configs), default=0)
    out: dict = {}
    t0, ran, measured, ids, busy = time.perf_counter(), 0, 0, [], []
    for k in range(1, sessions + 1):
        target = math.ceil(k * plan.passes / sessions)
        if target <= have:
            continue
        if ran:
            _wait(gap_s, k, sessions, kwargs["show_progress"])
        ctx = multiprocessing.get_context("spawn")
        with concurrent.futures.ProcessPoolExecutor(1, mp_context=ctx, initializer=_die_with_parent) as pool:
            out = pool.submit(_one_session, plan_file, grid, passes=target, fresh=fresh and not ran,
                              **kwargs).result()
        ran += 1
        measured += out["measured_passes"]
        ids += out["sessions"]
        if out.get("busy"):
            busy.append(out["busy"])
        have = target
    if not out:  # everything was on disk already: one ordinary (empty) session reports it
        out = _one_session(plan_file, grid, passes=plan.passes, fresh=False, **kwargs)
    out.update({"plan": plan.to_dict(), "measured_passes": measured, "elapsed_s": time.perf_counter() - t0,
                "sessions": ids, "busy": busy[0] if busy else None})
    if busy:
        warnings.warn(busy[0] + (f" ({len(busy)} of {ran} sessions)" if ran > 1 else ""), UserWarning, stacklevel=2)
    return out


def _plan_spec(workload) -> str:
    """The spec a plan names a built workload by: a model file's own path (so an .onnx file gets its
    default backend), else the workload's name."""
    return workload.source.get("spec") or workload.name


def _die_with_parent() -> None:
    """A session's process ends (SIGTERM: the pass in flight dropped, files kept) when the process that
    started it dies: killed by SIGTERM or SIGKILL, the parent once left its session measuring on alone,
    beside the next campaign."""
    import ctypes
    import signal as _signal
    import sys

    if sys.platform.startswith("linux"):
        try:
            ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, int(_signal.SIGTERM))  # PR_SET_PDEATHSIG
        except (OSError, AttributeError):
            pass


def _stored_name(workload: str) -> str:
    from tqsim.data.workspace import workload_name_of

    return workload_name_of(workload)


def _wait(gap_s: float, k: int, n: int, show: bool) -> None:
    import time

    if show and gap_s > 0:
        from rich.console import Console

        Console(stderr=True).print(f"[dim]session {k} of {n} starts in {gap_s:.0f} s (Ctrl-C stops; the same "
                                   "command resumes)[/dim]")
    time.sleep(gap_s)


def _convergence_rule(eps: float):
    """Adaptive calibration: a configuration stops once the rJSD of its Q@T estimate is below ε."""
    from tqsim.empirical.convergence import converged_record

    return lambda rec: converged_record(rec, eps)
