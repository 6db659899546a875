"""Factors, their levels and the configuration id: the vocabulary every part shares
(docs/design.md)."""

from __future__ import annotations

import dataclasses
import re
from typing import Any, NamedTuple

from tqsim.errors import UserError

FACTORS = ("batch_size", "threads", "precision", "backend", "device", "compile")
PRECISIONS = ("fp32", "bf16", "fp16")
BACKENDS = ("torch", "onnxruntime")
DEVICES = ("cpu", "cuda")
# Factors that change the numbers the network computes, hence its correctness; the others only
# change time. A forecast may interpolate over time factors, never over these.
QUALITY_FACTORS = ("precision", "backend", "device")
DEFAULTS: dict[str, Any] = {
    "batch_size": 1,
    "threads": 1,
    "precision": "fp32",
    "backend": "torch",
    "device": "cpu",
    "compile": False,
}


class Variant(NamedTuple):
    """The levels of the quality factors (fields in QUALITY_FACTORS' order): a what-if's service times and
    scores are per variant, since a backend, device or precision changes both time and correctness."""

    precision: str = "fp32"
    backend: str = "torch"
    device: str = "cpu"

    def label(self) -> str:
        return f"{self.precision} {self.backend}/{self.device}"


@dataclasses.dataclass(frozen=True, order=True)
class Config:
    """One value for every factor; frozen and hashable like torch.utils.benchmark's task spec."""

    batch_size: int = 1
    threads: int = 1
    precision: str = "fp32"
    backend: str = "torch"
    device: str = "cpu"
    compile: bool = False

    @property
    def id(self) -> str:
        """Stable id, e.g. ``bs8-th2-fp32-torch-cpu`` (``-compiled`` appended when compiled)."""
        base = f"bs{self.batch_size}-th{self.threads}-{self.precision}-{self.backend}-{self.device}"
        return base + ("-compiled" if self.compile else "")

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def replace(self, **changes: Any) -> "Config":
        return dataclasses.replace(self, **changes)

    @classmethod
    def from_mapping(cls, values: dict[str, Any]) -> "Config":
        merged = dict(DEFAULTS)
        for key, value in values.items():
            merged[key] = parse_level(key, value)
        return cls(**merged)


_ID = re.compile(r"^bs(\d+)-th(\d+)-(\w+)-(\w+)-(\w+?)(-compiled)?$")


def parse_config_id(config_id: str) -> Config:
    m = _ID.match(config_id)
    if not m:
        raise UserError(f"'{config_id}' is not a configuration id like 'bs8-th2-fp32-torch-cpu'.")
    bs, th, prec, backend, device, compiled = m.groups()
    return Config(int(bs), int(th), prec, backend, device, bool(compiled))


def _parse_bool(text: str) -> bool:
    low = str(text).strip().lower()
    if low in ("1", "true", "on", "yes"):
        return True
    if low in ("0", "false", "off", "no"):
        return False
    raise ValueError(text)


def parse_level(factor: str, value: Any) -> Any:
    """Turn a level given as text (CLI, TOML) into its typed value, or raise a UserError naming the fix."""
    if factor not in FACTORS:
        raise UserError(f"unknown factor '{factor}'; factors are: {', '.join(FACTORS)}.")
    try:
        if factor in ("batch_size", "threads"):
            if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
                raise ValueError(value)
            level = int(value)
            if level < 1:
                raise UserError(f"{factor}={value}: must be a whole number ≥ 1.")
            return level
        if factor == "compile":
            return value if isinstance(value, bool) else _parse_bool(value)
    except ValueError:
        kind = "on/off" if factor == "compile" else "a whole number ≥ 1"
        raise UserError(f"{factor}={value!r}: expected {kind}.") from None
    allowed = {"precision": PRECISIONS, "backend": BACKENDS, "device": DEVICES}[factor]
    level = str(value).strip().lower()
    if level not in allowed:
        raise UserError(f"unknown {factor} '{value}'; choose one of: {', '.join(allowed)}.")
    return level


def parse_assignment(text: str) -> tuple[str, list[Any]]:
    """Parse ``factor=v1,v2`` (the form of ``--grid`` and ``--set``)."""
    if "=" not in text:
        raise UserError(f"'{text}' is not FACTOR=VALUE[,VALUE...]; for example --grid batch_size=1,8,32.")
    factor, _, values = text.partition("=")
    factor = factor.strip().replace("-", "_")
    levels = [parse_level(factor, v) for v in values.split(",") if v.strip() != ""]
    if not levels:
        raise UserError(f"'{text}' gives no value for {factor}.")
    return factor, levels
