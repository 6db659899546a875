"""Options every command shares (DESIGN §6) and the two renderers: JSON on stdout, or rich tables."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path
from typing import Annotated, Any, Optional

import typer

from tqsim.units import fmt_seconds  # noqa: F401  (re-exported for the commands)

Home = Annotated[Optional[Path], typer.Option("--home", help="Workspace folder (env TQSIM_HOME; default: .).")]
System = Annotated[Optional[str], typer.Option("--system", help="System name (default: host name when measuring, "
                                                                 "the only system in the workspace otherwise).")]
WorkloadOpt = Annotated[Optional[str], typer.Option("--workload", help="Workload name, or path/file.py:factory.")]
Json = Annotated[bool, typer.Option("--json", help="Print one JSON object on stdout and nothing else.")]
Seed = Annotated[Optional[int], typer.Option("--seed", help="Random seed.")]
Debug = Annotated[bool, typer.Option("--debug", help="Show tracebacks of internal errors.")]
Thresholds = Annotated[Optional[list[str]], typer.Option(
    "--threshold", "-t", help="Deadline: 5ms, 250us, 0.005 (s) or p99 (of the config's own latency). Repeatable.")]


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
    """One JSON object on stdout, nothing else (DESIGN §7); NaN becomes null."""
    sys.stdout.write(json.dumps(_clean(obj), indent=2) + "\n")


def console(stderr: bool = False):
    from rich.console import Console

    return Console(stderr=stderr)
