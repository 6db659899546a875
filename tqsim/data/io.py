"""netCDF I/O: atomic writes, checked reads, and a campaign as one dataset along ``config``."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

import numpy as np
import xarray as xr

from tqsim.data.schema import DataError, check_calibration, instance_scores
from tqsim.errors import UserError
from tqsim.factors import FACTORS

ENGINE = "h5netcdf"


@contextlib.contextmanager
def replacing(path: Path):
    """Yield a hidden temporary path beside ``path``; when the block succeeds, fsync it and rename it over
    ``path``. A kill or an error at any moment leaves the old file or the new one under the real name,
    never a half-written one (every file tqsim writes goes through here)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(path.parent, path.name)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        yield tmp
        with open(tmp, "rb") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def write_text_atomic(path: Path, text: str) -> Path:
    with replacing(path) as tmp:
        Path(tmp).write_text(text, encoding="utf-8")
    return Path(path)


def write_atomic(ds: xr.Dataset, path: Path) -> None:
    """Write a dataset under a temporary name then rename (:func:`replacing`)."""
    with replacing(path) as tmp:
        ds.to_netcdf(tmp, engine=ENGINE)


def remove_stale_temporaries(folder: Path, name: str = "*") -> list[Path]:
    """Delete temporary files (``.<name>.tmp-<pid>``) whose writer is no longer running: a kill between
    the write and the rename leaves one behind; it never holds anything a complete file does not."""
    removed = []
    for tmp in Path(folder).glob(f".{name}.tmp-*"):
        pid = tmp.name.rsplit("-", 1)[-1]
        if pid.isdigit() and int(pid) != os.getpid() and not _alive(int(pid)):
            try:
                tmp.unlink()
                removed.append(tmp)
            except OSError:
                pass
    return removed


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def read_dataset(path: Path) -> xr.Dataset:
    """Read a whole netCDF file into memory and close it (files are small; no handle leaks)."""
    path = Path(path)
    if not path.exists():
        raise UserError(f"{path}: no such file.")
    try:
        with xr.open_dataset(path, engine=ENGINE) as ds:
            return ds.load()
    except UserError:
        raise
    except Exception as exc:  # noqa: BLE001 - truncated, empty or foreign bytes fail in many ways inside HDF5
        raise DataError(f"{path}: not a readable netCDF file ({exc.__class__.__name__}); it is corrupt or not "
                        "tqsim's: delete it (or restore it) and re-calibrate that configuration.") from None


def read_calibration(path: Path, workload: str | None = None) -> xr.Dataset:
    ds = check_calibration(read_dataset(path), str(path), workload)
    if "score" not in ds:  # a file written before scores: the same variables as a new one, for load_campaign
        ds["score"] = instance_scores(ds)
    return ds.drop_vars("correct", errors="ignore")


def calibration_files(folder: Path) -> list[Path]:
    return sorted(p for p in Path(folder).glob("*.nc") if not p.name.startswith("."))


def load_campaign(source: Path | list[Path], workload: str | None = None) -> xr.Dataset:
    """Concatenate configuration files along ``config``, factors as coordinates (docs/schema.md).

    Configurations may hold different numbers of passes; missing passes are NaN.
    """
    if isinstance(source, (str, Path)):
        paths = calibration_files(source) if Path(source).is_dir() else [Path(source)]
    else:
        paths = [Path(p) for p in source]
    if not paths:
        raise UserError(f"{source}: holds no calibration files; run `tqsim calibrate` first.")
    parts = [read_calibration(p, workload) for p in paths]
    first = parts[0]
    for p, ds in zip(paths, parts):
        if ds.attrs["workload"] != first.attrs["workload"]:
            raise DataError(f"{p}: workload '{ds.attrs['workload']}' differs from '{first.attrs['workload']}'.")
        if ds.sizes["instance"] != first.sizes["instance"]:
            raise DataError(f"{p}: {ds.sizes['instance']} instances, but {paths[0]} has {first.sizes['instance']}.")
    ids = [p.stem for p in paths]
    cleaned = []
    for cid, ds in zip(ids, parts):
        ds = ds.drop_dims("warmup_pass", errors="ignore")
        ds = ds.assign_coords({"pass": np.arange(ds.sizes["pass"])})
        ds = ds.expand_dims(config=[cid])
        for f in FACTORS:
            value = ds.attrs[f]
            ds = ds.assign_coords({f: ("config", [bool(value) if f == "compile" else value])})
        cleaned.append(ds)
    out = xr.concat(cleaned, dim="config", join="outer", combine_attrs="drop_conflicts",
                    data_vars="all", coords="different", compat="equals")
    out.attrs = {k: first.attrs[k] for k in ("workload", "system", "quality_metric", "units", "schema_version",
                                             "fingerprint")}
    out["n_passes"] = ("config", [ds.sizes["pass"] for ds in parts])
    return out


def workspace_campaign(home=None, system: str | None = None, workload: str | None = None,
                       files: list[Path] | None = None) -> xr.Dataset:
    """The campaign to score: the given files and folders of files, else the workspace's ``<system>/<workload>``."""
    from tqsim.data.workspace import Workspace

    if files:
        paths: list[Path] = []
        for f in map(Path, files):
            if f.is_dir():
                found = calibration_files(f)
                if not found:
                    raise UserError(f"{f}: holds no calibration files (*.nc); run `tqsim calibrate` first.")
                paths += found
            else:
                paths.append(f)
        return load_campaign(paths)
    ws = Workspace.at(home)
    system = ws.resolve_system(system)
    return load_campaign(ws.calibration_dir(system, ws.resolve_workload(system, workload)))
