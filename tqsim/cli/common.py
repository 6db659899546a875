"""The ``app`` every command registers on, the options they share (docs/design.md) and the two renderers: JSON on
stdout, or rich tables."""

from __future__ import annotations

import contextlib
import json
import math
import sys
from pathlib import Path
from typing import Annotated, Any, Optional

import typer

from tqsim.units import fmt_seconds  # noqa: F401  (re-exported for the commands)

app = typer.Typer(
    name="tqsim",
    help="Predict latency and tail quality of deep-learning inference under a deadline.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


def _version(value: bool) -> None:
    if value:
        import tqsim

        typer.echo(f"tqsim {tqsim.__version__}")
        raise typer.Exit()


@app.callback()
def _root(version: bool = typer.Option(False, "--version", help="Print the version and exit.", callback=_version,
                                       is_eager=True)) -> None:
    """Predict latency and tail quality of deep-learning inference under a deadline."""


Home = Annotated[Optional[Path], typer.Option("--home", help="Workspace folder (env TQSIM_HOME; default: .).")]
System = Annotated[Optional[str], typer.Option("--system", help="System name (default: host name when measuring, "
                                                                 "the only system in the workspace otherwise).")]
WorkloadOpt = Annotated[Optional[str], typer.Option("--workload", help="Workload name, model file (.onnx, .pt, .toml), or path/file.py:factory.")]
LogSetup = Annotated[Optional[str], typer.Option(
    "--setup", help="With --serving-log: the set-up the logs were served with, e.g. "
                    "'replicas=2,threads=1,max_batch=8,max_wait=2ms,stack=litserve' (capacity=R: the throughput "
                    "it sustained, where measured).")]
Json = Annotated[bool, typer.Option("--json", help="Print one JSON object on stdout and nothing else.")]
Seed = Annotated[Optional[int], typer.Option("--seed", help="Random seed.")]
Debug = Annotated[bool, typer.Option("--debug", help="Show tracebacks of internal errors.")]
ClusterOpt = Annotated[Optional[str], typer.Option(
    "--cluster", help="Run on a Dask cluster: its scheduler tcp://HOST:PORT, or 'local' for one on this machine "
                      "(needs pip install 'tqsim[cluster]').")]
Workers = Annotated[Optional[int], typer.Option(
    "--workers", help="Simulations run at once (default: one per core; 1: serially); with --cluster local, its "
                      "worker processes.")]
Thresholds = Annotated[Optional[list[str]], typer.Option(
    "--threshold", "-t", help="Deadline: 5ms, 250us, 0.005 (s) or p99 (of the config's own latency); a list, "
                            "e.g. 5ms,p99, or repeated.")]


PLOT_SUFFIXES = (".png", ".svg", ".pdf")


def check_plot_path(path: Path | None) -> None:
    """Refuse a figure path we cannot write, before any work: wrong suffix, missing or read-only folder."""
    import os

    from tqsim.errors import UserError

    if path is None:
        return
    if path.suffix.lower() not in PLOT_SUFFIXES:
        raise UserError(f"--plot {path}: use a .png, .svg or .pdf file name.")
    folder = path.parent.resolve()
    if not folder.is_dir():
        raise UserError(f"--plot {path}: folder {path.parent} does not exist.")
    if path.is_dir() or not os.access(folder, os.W_OK) or (path.exists() and not os.access(path, os.W_OK)):
        raise UserError(f"--plot {path}: cannot write there; choose a writable file path.")


def _clean(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    if hasattr(value, "item") and callable(value.item):
        return _clean(value.item())
    return value


def emit_json(obj: dict) -> None:
    """One JSON object on stdout, nothing else (docs/design.md, JSON); NaN becomes null."""
    sys.stdout.write(json.dumps(_clean(obj), indent=2) + "\n")


def console(stderr: bool = False):
    from rich.console import Console

    return Console(stderr=stderr)


def split_list(values: list[str] | str | None) -> list[str]:
    """Every list option takes both forms: repeated (``--rate 100 --rate 200``) and comma lists (``--rate 100,200``)."""
    items = [values] if isinstance(values, str) else list(values or [])
    return [part.strip() for v in items for part in str(v).split(",") if part.strip()]


def numbers(values: list[str] | str | None, what: str, cast=float) -> list:
    """A list option's numbers, parsed once here so that the computations receive numbers, never text."""
    from tqsim.errors import UserError

    out = []
    for part in split_list(values):
        try:
            out.append(cast(part))
        except ValueError:
            raise UserError(f"{what} '{part}' is not a number; give e.g. 300 or 100,200,400.") from None
    return out


def durations(values: list[str] | str | None, what: str) -> list[float]:
    from tqsim.units import parse_duration

    return [parse_duration(v, what) for v in split_list(values)]


@contextlib.contextmanager
def steps(what: str, enabled: bool = True):
    """A transient progress line on stderr for work longer than a couple of seconds; yields the callback a
    computation calls with a description at each step (``None`` when disabled, e.g. under ``--json``)."""
    if not enabled:
        yield None
        return
    from rich.progress import Progress

    with Progress(transient=True, console=console(stderr=True)) as bar:
        task = bar.add_task(what, total=None)
        yield lambda description: bar.update(task, advance=1, description=f"{what}: {description}")


def shared_levels(config_ids: list[str]) -> tuple[list[str], str]:
    """Config ids without the trailing factor levels they all share, and those levels (``"fp32-torch-cpu"``): a
    table says them once, in its title, and fits 80 columns."""
    import os

    ids = [i.split("-") for i in config_ids]
    shared = min(len(os.path.commonprefix([i[::-1] for i in ids])), min(map(len, ids)) - 1)
    return ["-".join(i[:len(i) - shared]) for i in ids], "-".join(ids[0][len(ids[0]) - shared:])
