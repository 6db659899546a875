"""The calibration file contract (docs/schema.md), checked at every boundary; see docs/schema.md."""

from __future__ import annotations

import numpy as np
import xarray as xr

from tqsim.errors import UserError
from tqsim.factors import FACTORS, parse_level

SCHEMA_VERSION = 1
REQUIRED_VARS = {
    "latency_s": ("pass", "instance"),
    "batch": ("instance",),
    "round": ("pass",),
    "pass_started_at": ("pass",),
}
REQUIRED_ATTRS = ("workload", "system", "fingerprint", "quality_metric", "tqsim_version", "created_at",
                  "units", "schema_version") + FACTORS


class DataError(UserError):
    """Calibration data that breaks the contract; the message names the file and the problem."""


def check_calibration(ds: xr.Dataset, source: str = "<dataset>", workload: str | None = None) -> xr.Dataset:
    """Refuse a dataset that breaks docs/schema.mdnaming ``source`` and the problem; return it unchanged."""
    for name, dims in REQUIRED_VARS.items():
        if name not in ds:
            raise DataError(f"{source}: missing variable '{name}'; is this a tqsim calibration file?")
        if ds[name].dims != dims:
            raise DataError(f"{source}: '{name}' has dims {ds[name].dims}, expected {dims}.")
    missing = [a for a in REQUIRED_ATTRS if a not in ds.attrs]
    if missing:
        raise DataError(f"{source}: missing attributes {missing}; re-run `tqsim calibrate` to rewrite it.")
    for f in FACTORS:  # a text batch size passed here once, then failed every command after
        try:
            parse_level(f, ds.attrs[f] if f != "compile" else bool(int(ds.attrs[f])))
        except (UserError, ValueError, TypeError):
            raise DataError(f"{source}: attribute {f}={ds.attrs[f]!r} is not a valid level; the file is corrupt "
                            "(re-calibrate that configuration).") from None
    try:
        version = int(ds.attrs["schema_version"])
    except (ValueError, TypeError):
        raise DataError(f"{source}: schema_version {ds.attrs['schema_version']!r} is not a number.") from None
    if version != SCHEMA_VERSION:
        raise DataError(f"{source}: schema version {ds.attrs['schema_version']} (this tqsim reads "
                        f"{SCHEMA_VERSION}); re-calibrate with this version.")
    if workload is not None and ds.attrs["workload"] != workload:
        raise DataError(f"{source}: belongs to workload '{ds.attrs['workload']}', not '{workload}'.")
    if not ("score" in ds or "correct" in ds or ("prediction" in ds and "label" in ds)):
        raise DataError(f"{source}: has no 'score' (nor 'correct' or 'prediction'+'label'); quality cannot be "
                        "scored.")
    for name in ("score", "correct", "prediction", "label", "instance_size"):
        if name in ds and ds[name].dims != ("instance",):
            raise DataError(f"{source}: '{name}' must have dims ('instance',), has {ds[name].dims}.")
    if "score" in ds:
        score = ds["score"].values.astype(float)
        if not (np.isfinite(score) & (score >= 0) & (score <= 1)).all():
            raise DataError(f"{source}: 'score' holds values outside [0, 1] or NaN; the file is corrupt "
                            "(re-calibrate that configuration).")
    lat = ds["latency_s"].values
    if lat.size and not (np.isfinite(lat).all() and (lat > 0).all()):
        bad = int((~np.isfinite(lat) | (lat <= 0)).sum())
        raise DataError(f"{source}: {bad} latencies are non-positive or non-finite; the file is corrupt.")
    nb = ds["batch"].values
    if nb.size and (np.diff(nb) < 0).any():
        raise DataError(f"{source}: 'batch' must be non-decreasing over instances (fixed batch order).")
    return ds


def instance_scores(ds: xr.Dataset) -> xr.DataArray:
    """Per-instance score in [0, 1] (float) under the file's ``quality_metric``, what every consumer of
    quality scores with: ``score`` itself, or from files written before it, ``correct`` or
    ``prediction == label`` (those files were all accuracy or macro-F1, whose score is correctness)."""
    if "score" in ds:
        return ds["score"].astype(float)
    if "correct" in ds:
        return ds["correct"].astype(float)
    return (ds["prediction"] == ds["label"]).astype(float)


def batch_layout(n_instances: int, batch_size: int) -> np.ndarray:
    """Batch index of each instance: fixed order, last batch partial (the harness's layout)."""
    return np.arange(n_instances) // int(batch_size)


def level_batches(counts: np.ndarray, batch_size: int) -> np.ndarray:
    """The batches a pass's level is read from: full ones after the first (all full ones, or all, if none)."""
    nb = counts.size
    full = counts == batch_size
    idx = np.flatnonzero(full & (np.arange(nb) > 0))
    if idx.size == 0:
        idx = np.flatnonzero(full)
    return idx if idx.size else np.arange(nb)


def batch_starts(batch: np.ndarray) -> np.ndarray:
    """Index of the first instance of each batch (batches are consecutive runs of equal ``batch``)."""
    batch = np.asarray(batch)
    return np.flatnonzero(np.r_[True, np.diff(batch) != 0])


def batch_numbers(batch: np.ndarray) -> np.ndarray:
    """Batch number 0..B-1 of each instance."""
    batch = np.asarray(batch)
    return np.cumsum(np.r_[0, np.diff(batch) != 0])


def call_latency(latency_s: np.ndarray, batch: np.ndarray) -> np.ndarray:
    """Latency of each forward call (one per batch) from per-instance latencies ``[..., instance]``."""
    return np.asarray(latency_s)[..., batch_starts(batch)]


def batch_latency(ds: xr.Dataset) -> xr.DataArray:
    """Latency of each batch (dims ``pass``, ``batch``): the raw per-call times, one per forward call."""
    first = batch_starts(ds["batch"].values)
    out = ds["latency_s"].isel(instance=first).rename(instance="batch")
    return out.assign_coords(batch=np.arange(first.size))
