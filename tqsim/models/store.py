"""Save and load a fitted model: ``models/<system>/<workload>.nc``, an ArviZ InferenceData file.

Groups: ``posterior``, ``sample_stats``, ``observed_data`` (the per-configuration summaries the model
was fitted to: session levels and shape quantiles), ``constant_data`` (their standard errors and
indices), and ``tqsim`` (what the fit saw: per-config factors, the per-instance scores of every
quality-relevant level, the instance count and sizes; attrs: the spec, diagnostics, schema and tqsim
versions, created_at).
ArviZ's own summaries and plots work on the file.
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import json
import os
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import xarray as xr

import tqsim
from tqsim.errors import UserError
from tqsim.models.spec import ModelSpec
from tqsim.models.summaries import Summaries

MODEL_SCHEMA_VERSION = 4


@dataclasses.dataclass
class FittedModel:
    """A fit: posterior draws, the spec, diagnostics and what the fit saw (learned state ends in ``_``)."""

    idata: Any                          # arviz.InferenceData
    spec: ModelSpec
    diagnostics: dict
    system: str
    workload: str
    quality_metric: str
    n_instances: int
    quality_levels: dict[str, dict]     # level id -> {"score": array in [0, 1], "prediction"?, "label"?}
    configs: list[dict]                 # factors of each calibrated config
    summaries: Summaries | None = None  # what the model was fitted to (needed to condition on it)
    instance_size: np.ndarray | None = None
    created_at: str = ""
    tqsim_version: str = tqsim.__version__
    cache_: dict = dataclasses.field(default_factory=dict, repr=False, compare=False)

    @property
    def diagnostics_ok(self) -> bool:
        return bool(self.diagnostics.get("ok", False))

    def add_config_levels(self, draws: np.ndarray) -> None:
        """Add each calibrated configuration's level (``config_level[chain, draw, config]``) to the posterior,
        so ArviZ's summaries and plots show it; derived from the sampled parameters, never sampled."""
        post = self.idata.posterior
        shape = (post.sizes["chain"], post.sizes["draw"], draws.shape[-1])
        post["config_level"] = (("chain", "draw", "config"), draws.reshape(shape))
        post.coords["config"] = [c["id"] for c in self.configs]

    def posterior_draws(self, max_draws: int | None = None, seed: int = 0) -> dict[str, np.ndarray]:
        """Posterior as flat arrays ``[draw, ...]`` (chains stacked), thinned evenly to ``max_draws``."""
        post = self.idata.posterior
        n = post.sizes["chain"] * post.sizes["draw"]
        idx = np.arange(n)
        if max_draws and n > max_draws:
            idx = np.linspace(0, n - 1, max_draws).round().astype(int)
        out = {}
        for name, da in post.data_vars.items():
            v = da.values.reshape((n,) + da.shape[2:])
            out[name] = v[idx]
        return out


def quality_level_id(values: dict) -> str:
    from tqsim.factors import QUALITY_FACTORS

    return "-".join(str(values[f]) for f in QUALITY_FACTORS)


def to_inference_data(fm: FittedModel):
    import arviz as az

    idata = fm.idata
    levels = sorted(fm.quality_levels)
    extra = xr.Dataset(coords={"quality_level": levels, "instance": np.arange(fm.n_instances),
                               "fit_config": [c["id"] for c in fm.configs]})
    extra["score"] = (("quality_level", "instance"),
                      np.stack([np.asarray(fm.quality_levels[k]["score"], float) for k in levels]))
    for key in ("prediction", "label"):
        if all(key in fm.quality_levels[k] for k in levels):
            extra[key] = (("quality_level", "instance"), np.stack([np.asarray(fm.quality_levels[k][key])
                                                                   for k in levels]))
    for f in ("batch_size", "threads", "precision", "backend", "device", "compile"):
        vals = [c[f] for c in fm.configs]
        extra[f] = ("fit_config", np.asarray([int(v) for v in vals]) if f == "compile" else np.asarray(vals))
    if fm.instance_size is not None:
        extra["instance_size"] = (("instance",), np.asarray(fm.instance_size, float))
    extra.attrs.update({
        "spec": fm.spec.to_json(), "diagnostics": json.dumps(fm.diagnostics, default=_json_default),
        "system": fm.system, "workload": fm.workload, "quality_metric": fm.quality_metric,
        "n_instances": int(fm.n_instances), "model_schema_version": MODEL_SCHEMA_VERSION,
        "tqsim_version": fm.tqsim_version, "created_at": fm.created_at,
        "chosen_family": fm.spec.family,
    })
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        keep = {g: getattr(idata, g) for g in ("posterior", "sample_stats") if hasattr(idata, g)}
        keep.update(_summary_groups(fm.summaries, fm.spec))
        out = az.InferenceData(**keep)
        out.add_groups({"tqsim": extra})
        for g in out.groups():
            ds = getattr(out, g)
            ds.attrs.update({"tqsim_version": fm.tqsim_version, "created_at": fm.created_at,
                             "workload": fm.workload, "system": fm.system})
    return out


def _summary_groups(summ: Summaries, spec: ModelSpec) -> dict[str, xr.Dataset]:
    """The summaries as ArviZ's ``observed_data`` (the values) and ``constant_data`` (se, indices)."""
    obs = xr.Dataset({"level": ("level_obs", summ.level), "shape": (("block", "config"), summ.shape)},
                     coords={"block": spec.blocks, "config": [c.id for c in summ.configs]})
    const = xr.Dataset({"level_se": ("level_obs", summ.level_se), "level_cfg": ("level_obs", summ.level_cfg),
                        "level_session": ("level_obs", summ.level_session),
                        "level_passes": ("level_obs", summ.level_passes),
                        "shape_se": (("block", "config"), summ.shape_se), "sessions": ("session", summ.sessions),
                        "n_passes": ("config", summ.n_passes)},
                       coords={"block": spec.blocks, "config": [c.id for c in summ.configs]},
                       attrs={"n_batches_total": int(summ.n_batches_total), "size_mean": summ.size_mean,
                              "size_sd": summ.size_sd, "tail_session_var": float(summ.tail_session_var),
                              "tail_session_dof": int(summ.tail_session_dof)})
    return {"observed_data": obs, "constant_data": const}


def _summaries_from(idata, configs: list) -> Summaries:
    obs, const = idata.observed_data, idata.constant_data
    return Summaries(configs=configs, sessions=const["sessions"].values.astype(np.int64),
                     level=obs["level"].values, level_se=const["level_se"].values,
                     level_cfg=const["level_cfg"].values.astype(np.int64),
                     level_session=const["level_session"].values.astype(np.int64),
                     level_passes=const["level_passes"].values.astype(np.int64), shape=obs["shape"].values,
                     shape_se=const["shape_se"].values, n_batches_total=int(const.attrs["n_batches_total"]),
                     n_passes=const["n_passes"].values.astype(np.int64), size_mean=float(const.attrs["size_mean"]),
                     size_sd=float(const.attrs["size_sd"]),
                     # models saved before tails were compared between sessions: unmeasured
                     tail_session_var=float(const.attrs.get("tail_session_var", float("nan"))),
                     tail_session_dof=int(const.attrs.get("tail_session_dof", 0)))


def _json_default(o):
    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    return str(o)


def save(fm: FittedModel, path: str | os.PathLike) -> Path:
    """Write atomically (temporary name, then rename)."""
    from tqsim.data.io import replacing

    path = Path(path)
    with replacing(path) as tmp, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        to_inference_data(fm).to_netcdf(str(tmp), engine="h5netcdf")
    return path


def load(path: str | os.PathLike, workload: str | None = None, system: str | None = None) -> FittedModel:
    """Read a fitted model; refuse one from another workload/system or an older model schema."""
    import arviz as az

    path = Path(path)
    if not path.exists():
        what = f" for workload '{workload}'" if workload else ""
        raise UserError(f"no fitted model{what} at {path}; run `tqsim fit` first.")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            idata = az.from_netcdf(str(path), engine="h5netcdf")
            for g in idata.groups():
                getattr(idata, g).load()
    except Exception as exc:  # noqa: BLE001 - any unreadable file is the user's to replace
        raise UserError(f"{path}: not a readable tqsim model file ({exc.__class__.__name__}); "
                        "re-run `tqsim fit`.") from None
    if "tqsim" not in idata.groups():
        raise UserError(f"{path}: not a tqsim model file (no 'tqsim' group); re-run `tqsim fit`.")
    extra = idata["tqsim"]
    attrs = extra.attrs
    version = int(attrs.get("model_schema_version", 0))
    if version != MODEL_SCHEMA_VERSION:
        raise UserError(f"{path}: model schema version {version}, this tqsim reads {MODEL_SCHEMA_VERSION}; "
                        "re-run `tqsim fit` to refit.")
    if workload is not None and attrs["workload"] != workload:
        raise UserError(f"{path}: is a model of workload '{attrs['workload']}', not '{workload}'; "
                        f"run `tqsim fit --workload {workload}`.")
    if system is not None and attrs["system"] != system:
        raise UserError(f"{path}: is a model of system '{attrs['system']}', not '{system}'; "
                        f"run `tqsim fit --system {system}`.")
    levels = {}
    for i, lvl in enumerate(extra["quality_level"].values.tolist()):
        # a model saved before scores holds "correct" (accuracy and macro-F1 only): its score is that
        d = {"score": extra["score" if "score" in extra else "correct"].values[i].astype(float)}
        for key in ("prediction", "label"):
            if key in extra:
                d[key] = extra[key].values[i]
        levels[str(lvl)] = d
    configs = []
    for j, cid in enumerate(extra["fit_config"].values.tolist()):
        c = {"id": str(cid)}
        for f in ("batch_size", "threads", "precision", "backend", "device", "compile"):
            v = extra[f].values[j]
            c[f] = bool(v) if f == "compile" else (int(v) if f in ("batch_size", "threads") else str(v))
        configs.append(c)
    from tqsim.factors import Config

    cfg_objs = [Config.from_mapping({k: v for k, v in c.items() if k != "id"}) for c in configs]
    return FittedModel(idata=idata, spec=ModelSpec.from_json(attrs["spec"]), diagnostics=json.loads(attrs["diagnostics"]),
                       system=str(attrs["system"]), workload=str(attrs["workload"]),
                       quality_metric=str(attrs["quality_metric"]), n_instances=int(attrs["n_instances"]),
                       quality_levels=levels, configs=configs, summaries=_summaries_from(idata, cfg_objs),
                       instance_size=extra["instance_size"].values if "instance_size" in extra else None,
                       created_at=str(attrs["created_at"]), tqsim_version=str(attrs["tqsim_version"]))


def now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def load_from_workspace(home=None, system: str | None = None, workload: str | None = None) -> FittedModel:
    """The saved fit of ``<system>/<workload>`` in the workspace at ``home`` (each the only one when not named)."""
    from tqsim.data.workspace import Workspace

    ws = Workspace.at(home)
    system = ws.resolve_system(system)
    workload = ws.resolve_workload(system, workload)
    return load(ws.model_path(system, workload), workload=workload, system=system)
