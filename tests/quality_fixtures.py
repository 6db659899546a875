"""Tiny calibration files for the quality tests, written like the harness writes them (docs/schema.md)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import xarray as xr

from tqsim.data.io import write_atomic
from tqsim.data.schema import SCHEMA_VERSION
from tqsim.factors import Config


def calibration_dataset(config: Config, *, n_passes: int = 20, n_instances: int = 60, seed: int = 0,
                        median_s: float = 1e-4, metric: str = "accuracy", workload: str = "toy",
                        system: str = "box") -> xr.Dataset:
    rng = np.random.default_rng(seed)
    batch = np.arange(n_instances) // config.batch_size
    n_b = batch[-1] + 1
    pass_effect = rng.normal(0, 0.05, size=(n_passes, 1))
    lat_b = median_s * config.batch_size ** 0.6 * np.exp(pass_effect + rng.normal(0, 0.1, size=(n_passes, n_b)))
    label = rng.integers(0, 3, n_instances)
    pred = np.where(rng.random(n_instances) < 0.9, label, (label + 1) % 3)
    ds = xr.Dataset(
        {"latency_s": (("pass", "instance"), lat_b[:, batch]), "batch": ("instance", batch),
         "round": ("pass", np.arange(n_passes)), "pass_started_at": ("pass", np.arange(n_passes, dtype=float))},
        attrs={"workload": workload, "system": system, "fingerprint": json.dumps({"cpu": "toy"}),
               "quality_metric": metric, "tqsim_version": "test", "created_at": "2026-11-29T00:00:00Z",
               "units": "seconds", "schema_version": SCHEMA_VERSION,
               **{k: (int(v) if isinstance(v, bool) else v) for k, v in config.as_dict().items()}})
    if metric == "accuracy":
        ds["correct"] = ("instance", pred == label)
    else:
        ds["prediction"] = ("instance", pred)
        ds["label"] = ("instance", label)
    return ds


def write_workspace(home: Path, configs=(Config(1), Config(4)), **kw) -> Path:
    """A workspace holding one system 'box', workload 'toy', one file per configuration."""
    folder = Path(home) / "calibration" / kw.get("system", "box") / kw.get("workload", "toy")
    for i, c in enumerate(configs):
        write_atomic(calibration_dataset(c, seed=kw.pop("seed", 0) + i, **kw), folder / f"{c.id}.nc")
    return folder
