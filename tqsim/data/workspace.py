"""Where tqsim keeps things (docs/design.md): ``calibration/<system>/<workload>/<id>.nc`` and friends."""

from __future__ import annotations

import os
import re
import socket
from dataclasses import dataclass
from pathlib import Path

from tqsim.errors import UserError


def default_system_name() -> str:
    return safe_name(socket.gethostname().split(".")[0] or "localhost")


def safe_name(name: str) -> str:
    """A name usable as one path component (user workloads are named after files and factories)."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("._") or "unnamed"


@dataclass(frozen=True)
class Workspace:
    home: Path

    @classmethod
    def at(cls, home: str | os.PathLike | None) -> "Workspace":
        return cls(Path(home or os.environ.get("TQSIM_HOME") or ".").expanduser().resolve())

    def calibration_dir(self, system: str, workload: str) -> Path:
        return self.home / "calibration" / system / workload

    def config_path(self, system: str, workload: str, config_id: str) -> Path:
        return self.calibration_dir(system, workload) / f"{config_id}.nc"

    def model_path(self, system: str, workload: str) -> Path:
        return self.home / "models" / system / f"{workload}.nc"

    def reports_dir(self) -> Path:
        return self.home / "reports"

    def systems(self) -> list[str]:
        root = self.home / "calibration"
        if not root.is_dir():
            return []
        return sorted(p.name for p in root.iterdir() if p.is_dir() and p.name != "plans" and any(p.iterdir()))

    def workloads(self, system: str) -> list[str]:
        root = self.home / "calibration" / system
        return sorted(p.name for p in root.iterdir() if p.is_dir() and any(p.glob("*.nc"))) if root.is_dir() else []

    def resolve_system(self, system: str | None) -> str:
        """The named system, or the only one in the workspace; otherwise a message naming the choices."""
        known = self.systems()
        if system:
            if system not in known:
                hint = f"known: {', '.join(known)}" if known else "run `tqsim calibrate` first"
                raise UserError(f"no calibration for system '{system}' under {self.home}; {hint}.")
            return system
        if not known:
            raise UserError(f"the workspace {self.home} holds no calibration; run `tqsim calibrate` first "
                            "(or pass --home).")
        if len(known) > 1:
            raise UserError(f"the workspace holds several systems ({', '.join(known)}); pick one with --system.")
        return known[0]

    def resolve_workload(self, system: str, workload: str | None) -> str:
        known = self.workloads(system)
        if workload:
            name = safe_name(workload_name_of(workload))
            if name not in known:
                hint = f"calibrated: {', '.join(known)}" if known else "none calibrated yet"
                raise UserError(f"no calibration of workload '{name}' on system '{system}' ({hint}); "
                                f"run `tqsim calibrate --workload {workload} --system {system}`.")
            return name
        if len(known) == 1:
            return known[0]
        if not known:
            raise UserError(f"system '{system}' has no calibrated workload; run `tqsim calibrate` first.")
        raise UserError(f"system '{system}' has several workloads ({', '.join(known)}); pick one with --workload.")

    def check_writable(self, folder: Path | None = None) -> None:
        """Refuse at once (before any measuring or sampling) a home, or a folder of it, we cannot write."""
        folder = Path(folder) if folder is not None else self.home
        try:
            folder.mkdir(parents=True, exist_ok=True)
            probe = folder / f".tqsim-write-probe-{os.getpid()}"
            probe.write_bytes(b"")
            probe.unlink()
        except OSError as exc:
            raise UserError(f"cannot write to {folder} ({exc.strerror or exc}); pass a writable --home or set "
                            "TQSIM_HOME.") from None


def workload_name_of(spec: str) -> str:
    """The stored name of a workload spec: built-ins by name, ``file.py:factory`` as ``file-factory``,
    a model file by its stem (``model.onnx`` as ``model``), a TOML description by its ``name`` key or stem."""
    path = Path(spec)
    if path.suffix.lower() in (".onnx", ".pt"):
        return path.stem
    if path.suffix.lower() == ".toml":
        return _described_name(path) or path.stem
    if ":" in spec:
        module, _, factory = spec.rpartition(":")
        stem = Path(module).stem if module.endswith(".py") else module.rsplit(".", 1)[-1]
        return f"{stem}-{factory}"
    return spec


def described(path: Path, key: str):
    """One key of a TOML workload description, or None where the file is unreadable or lacks it: for
    naming and defaults only, the loader (tqsim/workloads/files.py) reports what is wrong with it."""
    import tomllib

    try:
        return tomllib.loads(path.read_text(encoding="utf-8")).get(key)
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError):
        return None


def _described_name(path: Path) -> str | None:
    """The ``name`` key of a TOML workload description, if it is readable and has one."""
    name = described(path, "name")
    return name if isinstance(name, str) and name.strip() else None
