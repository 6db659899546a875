"""Calibration plans: a factor grid + pass counts, from a TOML file and/or ``--grid`` options.

Every level is validated before anything is measured, so a typo never costs a half campaign.
"""

from __future__ import annotations

import dataclasses
import itertools
import tomllib
from importlib import resources
from pathlib import Path
from typing import Any

from tqsim.errors import UserError
from tqsim.factors import DEFAULTS, FACTORS, Config, parse_assignment, parse_level
from tqsim.workloads.files import model_kind

PLAN_KEYS = {"description", "workload", "passes", "warmup", "seed", "grid"}
QUICK_PLAN = "quick"


@dataclasses.dataclass(frozen=True)
class Plan:
    workload: str
    grid: dict[str, tuple]
    passes: int = 20
    warmup: int = 2
    seed: int = 0
    description: str = ""

    @property
    def configs(self) -> list[Config]:
        names = list(self.grid)
        return [Config.from_mapping(dict(zip(names, combo))) for combo in itertools.product(*self.grid.values())]

    def to_dict(self) -> dict[str, Any]:
        return {"workload": self.workload, "passes": self.passes, "warmup": self.warmup, "seed": self.seed,
                "grid": {k: list(v) for k, v in self.grid.items()}}


def shipped_plan_path(name: str) -> Path:
    return Path(str(resources.files("tqsim") / "plans" / f"{name}.toml"))


def read_plan_file(path: str | Path) -> dict[str, Any]:
    """Parse a plan file; syntax errors and unknown keys get one line that names the fix."""
    p = Path(path)
    if not p.exists() and not str(path).endswith(".toml") and shipped_plan_path(str(path)).exists():
        p = shipped_plan_path(str(path))
    if not p.exists():
        raise UserError(f"plan file {path} does not exist; give a TOML plan or use --grid FACTOR=V1,V2.")
    if not p.is_file():
        raise UserError(f"plan {path} is not a file; give a TOML plan file or use --grid FACTOR=V1,V2.")
    try:
        data = tomllib.loads(p.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as exc:
        raise UserError(f"{p}: TOML syntax error: {exc}.") from None
    except (UnicodeDecodeError, OSError) as exc:
        raise UserError(f"{p}: not a readable TOML text file ({exc.__class__.__name__}); give a plan like "
                        "calibration/plans/quick.toml.") from None
    unknown = set(data) - PLAN_KEYS
    if unknown:
        raise UserError(f"{p}: unknown key(s) {sorted(unknown)}; allowed: {sorted(PLAN_KEYS)}.")
    grid = data.get("grid", {})
    if not isinstance(grid, dict):
        raise UserError(f"{p}: [grid] must be a table like `batch_size = [1, 8]`.")
    for factor in grid:
        if factor not in FACTORS:
            raise UserError(f"{p}: unknown factor '{factor}' in [grid]; factors are: {', '.join(FACTORS)}.")
    return data


def build_plan(plan_file: str | Path | None, grid_options: list[str] | None, *, workload: str | None = None,
               passes: int | None = None, warmup: int | None = None, seed: int | None = None) -> Plan:
    """Merge (in rising priority) the defaults, the plan file (the quick plan if neither a file nor a
    grid is given), ``--grid`` options and explicit options into a validated :class:`Plan`."""
    data: dict[str, Any] = {}
    if plan_file is not None:
        data = read_plan_file(plan_file)
    elif not grid_options:
        data = read_plan_file(shipped_plan_path(QUICK_PLAN))
    grid: dict[str, list] = {}
    for factor, values in data.get("grid", {}).items():
        values = values if isinstance(values, list) else [values]
        if not values or any(isinstance(v, (list, dict)) for v in values):
            raise UserError(f"[grid] {factor} = {values!r}: give a list of levels, e.g. {factor} = [1, 8].")
        grid[factor] = [parse_level(factor, v) for v in values]
    for option in grid_options or []:
        factor, levels = parse_assignment(option)
        grid[factor] = levels
    for factor, levels in grid.items():
        if len(set(levels)) != len(levels):
            raise UserError(f"{factor} lists a level twice: {levels}.")
    workload = workload or data.get("workload", "digits-cnn")
    if not isinstance(workload, str) or not workload.strip():
        raise UserError(f"plan workload {workload!r}: give a workload name, e.g. workload = \"digits-cnn\".")
    if "backend" not in grid and model_kind(workload) == "onnx":
        grid["backend"] = ["onnxruntime"]  # an .onnx file runs in onnxruntime, without the user saying so
    ordered = {f: tuple(grid.get(f, [DEFAULTS[f]])) for f in FACTORS}
    passes = passes if passes is not None else _whole(data, "passes", 20)
    warmup = warmup if warmup is not None else _whole(data, "warmup", 2)
    seed = seed if seed is not None else _whole(data, "seed", 0)
    if seed < 0:
        raise UserError(f"seed {seed}: must be ≥ 0.")
    if passes < 1:
        raise UserError(f"--passes {passes}: need at least 1 timed pass (20 or more for tail statistics).")
    if warmup < 0:
        raise UserError(f"--warmup {warmup}: must be ≥ 0.")
    if passes > MAX_PASSES:
        raise UserError(f"--passes {passes}: more than {MAX_PASSES:,} passes per configuration is a typo or days of "
                        "measuring; calibrate in steps (a campaign resumes where it stopped).")
    return Plan(workload=workload, grid=ordered, passes=passes, warmup=warmup, seed=seed,
                description=str(data.get("description", "")))


MAX_PASSES = 10_000


def _whole(data: dict, key: str, default: int) -> int:
    """A whole-number plan key; ``2.7``, ``"abc"``, ``nan``, ``1e400`` are refused, never rounded."""
    value = data.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int):
        if isinstance(value, float) and value.is_integer():
            return int(value)
        raise UserError(f"plan key {key} = {value!r}: expected a whole number, e.g. {key} = {default}.")
    return value
