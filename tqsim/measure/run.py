"""``tqsim calibrate`` as a library call: plan → workload → campaign, with a progress bar."""

from __future__ import annotations

import contextlib
import signal
from pathlib import Path

from tqsim.data.workspace import Workspace, default_system_name, safe_name
from tqsim.errors import UserError
from tqsim.measure.campaign import Progress, run_campaign, summarise
from tqsim.measure.plan import build_plan


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
def _progress_bar(enabled: bool):
    if not enabled:
        yield Progress()
        return
    from rich.progress import BarColumn, MofNCompleteColumn, Progress as Bar, TextColumn, TimeElapsedColumn, \
        TimeRemainingColumn

    with Bar(TextColumn("[bold]calibrate[/bold] {task.fields[label]}"), BarColumn(), MofNCompleteColumn(),
             TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn(), transient=False) as bar:
        task = bar.add_task("passes", total=1, label="")
        yield Progress(start=lambda total: bar.update(task, total=max(total, 1)),
                       advance=lambda label: bar.update(task, advance=1, label=label))


def calibrate(plan_file: str | None, grid: list[str] | None, *, home: str | Path | None = None,
              system: str | None = None, workload: str | None = None, passes: int | None = None,
              warmup: int | None = None, fresh: bool = False, seed: int | None = None,
              until_converged: bool = False, rjsd: float = 0.05, max_passes: int | None = None,
              show_progress: bool = True) -> dict:
    """Run (or resume) a calibration campaign and return the JSON-ready summary."""
    if until_converged:
        if not 0 < rjsd < 1:
            raise UserError(f"--rjsd {rjsd}: must lie in (0, 1); 0.05 is a common choice.")
        passes = max_passes if max_passes is not None else (passes or 200)
    plan = build_plan(plan_file, grid, workload=workload, passes=passes, warmup=warmup, seed=seed)
    ws = Workspace.at(home)
    ws.check_writable()
    system = safe_name(system) if system else default_system_name()

    from tqsim.measure.backends import check_supported, prepare
    from tqsim.measure.fingerprint import fingerprint
    from tqsim.workloads import get_workload

    for config in plan.configs:  # cheap checks first: nothing trained or measured on a bad level
        check_supported(config)
    wl = get_workload(plan.workload)
    stop_when = _convergence_rule(rjsd) if until_converged else None
    with _sigterm_as_interrupt(), _progress_bar(show_progress) as progress:
        result = run_campaign(plan, ws, system, workload=wl, prepare=prepare, check_supported=check_supported,
                              fingerprint=fingerprint(), fresh=fresh, progress=progress, stop_when=stop_when)
    return {
        "system": system, "workload": wl.name, "metric": wl.metric, "folder": str(result.folder),
        "plan": plan.to_dict(), "measured_passes": result.measured_passes, "elapsed_s": result.elapsed_s,
        "configs": summarise(result.records),
    }


def _convergence_rule(eps: float):
    """Adaptive calibration: a configuration stops once the rJSD of its Q@T estimate is below ε."""
    from tqsim.empirical.convergence import converged_record

    return lambda rec: converged_record(rec, eps)


SERVING_KEYS = {"replicas": int, "threads": int, "max_batch": int, "max_wait": str, "precision": str,
                "duration": str, "repeats": int}


def calibrate_serving_setup(setup: str, *, home=None, system: str | None = None, workload: str | None = None,
                            seed: int | None = None, show_progress: bool = True):
    """``tqsim calibrate --serving 'replicas=1,threads=1,max_batch=8,max_wait=0.5ms'``: short real serving
    runs at light and moderate load whose overheads the what-if simulator adds to forward time."""
    from tqsim.measure.serving import calibrate_serving
    from tqsim.whatif.objective import parse_duration

    values: dict = {}
    for part in filter(None, (p.strip() for p in setup.split(","))):
        key, sep, value = part.partition("=")
        key = key.strip().replace("-", "_")
        if not sep or key not in SERVING_KEYS:
            raise UserError(f"--serving '{part}': expected KEY=VALUE with KEY in {', '.join(SERVING_KEYS)}.")
        try:
            values[key] = SERVING_KEYS[key](value.strip())
        except ValueError:
            raise UserError(f"--serving {key}={value}: expected a whole number.") from None
    from tqsim.whatif.simulator import ServingSetup

    setup = ServingSetup(values.get("replicas", 1), values.get("threads", 1), values.get("max_batch", 8),
                         parse_duration(values.get("max_wait", "0.5ms"), "max_wait"),
                         values.get("precision", "fp32"))  # refuses bad values before anything runs
    ws = Workspace.at(home)
    system = ws.resolve_system(system)
    with _progress_bar(show_progress) as progress:
        return calibrate_serving(
            workload or ws.resolve_workload(system, None), ws.home, system, replicas=setup.replicas,
            threads=setup.threads, max_batch=setup.max_batch, max_wait_s=setup.max_wait_s,
            precision=setup.precision, duration_s=parse_duration(values.get("duration", "8s"), "duration"),
            repeats=values.get("repeats", 3), seed=seed or 0, progress=progress)
