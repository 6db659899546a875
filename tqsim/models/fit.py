"""Fit the latency model to a campaign: summaries, sample, diagnostics, a :class:`FittedModel`."""

from __future__ import annotations

import time
import warnings
from pathlib import Path
from typing import Callable

import numpy as np
import xarray as xr

from tqsim.errors import UserError
from tqsim.factors import QUALITY_FACTORS
from tqsim.models.spec import make_spec
from tqsim.models.store import FittedModel, now, quality_level_id
from tqsim.models.summaries import configs_of_campaign, summarise
from tqsim.quality import scoring_of

# Graded like Vehtari et al. (2021): r-hat ≤ 1.01, bulk ESS ≥ 100 and no divergence is a clean
# fit; up to r-hat 1.05 / ESS 50 / divergences in 0.1 % of draws the posterior is usable but a
# forecast says so; beyond that a forecast is refused without --force.
RHAT_MAX = 1.01
ESS_MIN = 100
RHAT_FAIL = 1.05
ESS_FAIL = 50
DIVERGENCE_FAIL = 0.001
REFIT = "tqsim fit --draws 2000 --tune 1000"
FAMILIES = ("quantile",)


def default_sampler() -> str:
    try:
        import nutpie  # noqa: F401
    except ImportError:
        return "nuts"
    return "nutpie"


def diagnostics_of(idata, sampler: str) -> dict:
    import arviz as az

    post = idata.posterior
    if sampler == "advi":
        return {"sampler": "advi", "rhat_max": None, "ess_bulk_min": None, "ess_tail_min": None, "divergences": 0,
                "ok": True, "status": "ok", "note": "ADVI gives no convergence diagnostics and tends to narrow "
                                                    "scales; use it for quick looks, not final intervals."}
    n_draws = int(post.sizes["chain"] * post.sizes["draw"])
    if n_draws == 0:
        return {"sampler": sampler, "rhat_max": float("nan"), "ess_bulk_min": 0.0, "ess_tail_min": 0.0,
                "divergences": 0, "ok": False, "status": "fail", "chains": int(post.sizes["chain"]), "draws": 0}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        rhat = az.rhat(post)
        ess_b = az.ess(post, method="bulk")
        ess_t = az.ess(post, method="tail")

    def extreme(ds, fn):
        vals = [float(fn(ds[v].values)) for v in ds.data_vars if np.isfinite(ds[v].values).any()]
        return fn(np.array(vals)) if vals else float("nan")

    rhat_max = float(extreme(rhat, np.nanmax))
    ess_bulk_min = float(extreme(ess_b, np.nanmin))
    ess_tail_min = float(extreme(ess_t, np.nanmin))
    div = int(idata.sample_stats["diverging"].values.sum()) if "diverging" in idata.sample_stats else 0
    clean = rhat_max <= RHAT_MAX and div == 0 and ess_bulk_min >= ESS_MIN
    failed = not (rhat_max <= RHAT_FAIL and ess_bulk_min >= ESS_FAIL and div <= DIVERGENCE_FAIL * n_draws)
    status = "fail" if failed else ("ok" if clean else "warn")
    return {"sampler": sampler, "rhat_max": rhat_max, "ess_bulk_min": ess_bulk_min, "ess_tail_min": ess_tail_min,
            "divergences": div, "ok": status != "fail", "status": status, "chains": int(post.sizes["chain"]),
            "draws": int(post.sizes["draw"]),
            "thresholds": {"rhat_max": RHAT_MAX, "ess_bulk_min": ESS_MIN, "divergences": 0,
                           "rhat_fail": RHAT_FAIL, "ess_bulk_fail": ESS_FAIL, "divergence_rate_fail": DIVERGENCE_FAIL}}


def shortfall(d: dict) -> str:
    """What keeps a fit from clean, in words (e.g. "1 divergence, r-hat max 1.013 > 1.01")."""
    out = []
    if d.get("divergences"):
        out.append(f"{d['divergences']} divergence{'s' if d['divergences'] != 1 else ''}")
    if d.get("rhat_max") is not None and not d["rhat_max"] <= RHAT_MAX:
        out.append(f"r-hat max {d['rhat_max']:.3f} > {RHAT_MAX}")
    if d.get("ess_bulk_min") is not None and d["ess_bulk_min"] < ESS_MIN:
        out.append(f"bulk ESS min {d['ess_bulk_min']:.0f} < {ESS_MIN}")
    return ", ".join(out)


def _quality_levels(campaign: xr.Dataset) -> dict[str, dict]:
    levels: dict[str, dict] = {}
    for i in range(campaign.sizes["config"]):
        values = {f: campaign[f].values[i].item() for f in QUALITY_FACTORS}
        key = quality_level_id(values)
        if key in levels:
            continue
        scoring = scoring_of(campaign.isel(config=i))
        scoring.pop("metric")
        levels[key] = scoring  # score, and prediction + label where the files hold them
    return levels


def fit_campaign(campaign: xr.Dataset, *, family: str = "auto", sampler: str | None = None, draws: int = 1000,
                 tune: int = 1000, chains: int = 2, seed: int = 0, progress: bool = False,
                 log: Callable[[str], None] | None = None) -> FittedModel:
    """Fit the model to a campaign (``tqsim.data.io.load_campaign``'s output).

    The campaign is first reduced to per-configuration summaries (:mod:`tqsim.models.summaries`),
    so the fit's cost depends on the number of configurations, not of passes.
    """
    from tqsim.models import pymc_backend as backend
    from tqsim.models.conditional import config_level_draws

    log = log or (lambda msg: None)
    sampler = sampler or default_sampler()
    if sampler not in ("nutpie", "nuts", "advi"):
        raise UserError(f"unknown sampler '{sampler}'; choose one of: nutpie, nuts, advi.")
    if family not in ("auto",) + FAMILIES:
        raise UserError(f"unknown family '{family}': tqsim models each configuration's own quantile functions "
                        "(the student and mixture families are gone); drop --family.")
    if chains < 1 or draws < 1 or tune < 0:
        raise UserError("--chains and --draws must be at least 1 and --tune at least 0.")
    t_start = time.perf_counter()
    configs = configs_of_campaign(campaign)
    if len(configs) < 2:
        make_spec(configs)  # raises the message that names the fix
    summ = summarise(campaign, seed=seed)
    spec = make_spec(summ.configs, summ)
    log(f"summarised {len(configs)} configurations, {int(summ.n_passes.sum())} passes "
        f"({summ.n_batches_total} calls) in {summ.sessions.size} session(s) in {time.perf_counter() - t_start:.1f} s")
    model = backend.build_model(spec, summ)
    idata, secs = backend.sample(model, backend.initial_point(spec, summ), sampler=sampler, draws=draws, tune=tune,
                                 chains=chains, seed=seed, progress=progress, log=log)
    # nutpie also stores the sampler's unconstrained coordinates (``shape_sd_log__``): not the model's
    # parameters, and their folded r-hat differs from the parameters' own
    idata.posterior = idata.posterior.drop_vars([v for v in idata.posterior.data_vars if str(v).endswith("__")])
    got = int(idata.posterior.sizes.get("draw", 0))
    if sampler != "advi" and got < draws:  # nutpie returns what it had when interrupted: never a model
        raise KeyboardInterrupt(f"sampling stopped after {got} of {draws} draws")
    diag = diagnostics_of(idata, sampler)
    diag.update({"family": spec.family, "family_choice": "fixed", "sample_seconds": round(secs, 2),
                 "total_seconds": round(time.perf_counter() - t_start, 2),
                 "n_obs": int(np.isfinite(summ.shape).sum() + summ.level.size),
                 "n_batches_total": int(summ.n_batches_total), "n_configs": len(configs),
                 "n_rounds": int(np.unique(campaign["round"].values[np.isfinite(campaign["round"].values)]).size),
                 "n_sessions": int(summ.sessions.size), "n_passes": int(summ.n_passes.sum())})
    fm = FittedModel(idata=idata, spec=spec, diagnostics=diag, system=str(campaign.attrs.get("system", "")),
                     workload=str(campaign.attrs.get("workload", "")),
                     quality_metric=str(campaign.attrs.get("quality_metric", "accuracy")),
                     n_instances=int(campaign.sizes["instance"]), quality_levels=_quality_levels(campaign),
                     configs=[dict(c.as_dict(), id=c.id) for c in configs], summaries=summ,
                     instance_size=(campaign["instance_size"].values[0].astype(float)
                                    if "instance_size" in campaign else None),
                     created_at=now())
    fm.add_config_levels(config_level_draws(fm))
    return fm


def fit_workspace(home=None, system: str | None = None, workload: str | None = None, *, family: str = "auto",
                  sampler: str | None = None, draws: int = 1000, tune: int = 1000, chains: int = 2, seed: int = 0,
                  progress: bool = False, log: Callable[[str], None] | None = None):
    """``tqsim fit``: fit the workspace's calibration of ``<system>/<workload>`` and save the model to
    ``models/<system>/<workload>.nc``; returns ``(FittedModel, path)``. The folder is checked writable
    before sampling, and a Ctrl-C swallowed during sampling stops here, before the saved model is replaced."""
    from tqsim import interrupts
    from tqsim.data.io import load_campaign
    from tqsim.data.workspace import Workspace
    from tqsim.models.store import save

    ws = Workspace.at(home)
    system = ws.resolve_system(system)
    workload = ws.resolve_workload(system, workload)
    target = ws.model_path(system, workload)
    ws.check_writable(target.parent)
    campaign = load_campaign(ws.calibration_dir(system, workload), workload=workload)
    fm = fit_campaign(campaign, family=family, sampler=sampler, draws=draws, tune=tune, chains=chains, seed=seed,
                      progress=progress, log=log)
    interrupts.check()
    return fm, save(fm, target)


def _fit_job(options: dict, job: tuple) -> FittedModel:
    """One fit where a pool runs it (a Dask worker needs no workspace: the campaign travels with the job);
    a user mistake names the system and workload it is about."""
    system, workload, campaign = job
    try:
        return fit_campaign(campaign, **options)
    except UserError as exc:
        raise UserError(f"{system}/{workload}: {exc}") from None


def fit_each(home=None, system: str | None = None, workload: str | None = None, *, cluster: str,
             workers: int | None = None, sampler: str | None = None, draws: int = 1000, tune: int = 1000,
             chains: int = 2, seed: int = 0, family: str = "auto",
             log: Callable[[str], None] | None = None) -> list[tuple[FittedModel, Path]]:
    """``tqsim fit --cluster``: fit every system × workload of the workspace (or the ``system``/``workload``
    named) at once on the Dask workers at ``cluster`` (``local``: ``workers`` processes here, see
    :func:`tqsim.parallel.pool`), once the files are read, so a mistake is told before any worker starts. A fit is a pure function of its calibration
    and the seed, so this client reads the files and ships them, and the workers need no shared disk; each model
    comes back and is saved here atomically as it arrives, the same model a local ``fit_workspace`` with the
    same seed writes. Returns ``(FittedModel, path)`` in workspace order."""
    from tqsim.data.io import load_campaign
    from tqsim.data.workspace import Workspace
    from tqsim.models.store import save
    from tqsim.parallel import pool

    log = log or (lambda msg: None)
    ws = Workspace.at(home)
    systems = [ws.resolve_system(system)] if system else ws.systems()
    if not systems:
        ws.resolve_system(None)  # the message naming the fix for an empty workspace
    pairs = [(s, w) for s in systems for w in ([ws.resolve_workload(s, workload)] if workload else ws.workloads(s))]
    targets = [ws.model_path(s, w) for s, w in pairs]
    for t in targets:
        ws.check_writable(t.parent)
    jobs = [(s, w, load_campaign(ws.calibration_dir(s, w), workload=w)) for s, w in pairs]
    out: dict[int, tuple] = {}

    def done(i: int, fm: FittedModel) -> None:
        out[i] = fm, save(fm, targets[i])
        log(f"wrote {targets[i]} ({len(out)}/{len(jobs)})")

    with pool(cluster, workers) as on:
        log(f"fitting {len(jobs)} model(s) on {on.workers} worker(s)")
        on.map(_fit_job, jobs, dict(family=family, sampler=sampler, draws=draws, tune=tune, chains=chains, seed=seed),
               done)
    return [out[i] for i in range(len(jobs))]


def fit_summary(d: dict) -> list[tuple[str, str | None]]:
    """What a fit's diagnostics ``d`` mean for its forecasts, as ``(line, style)`` pairs (style ``None``,
    ``yellow`` for a caution, ``bold red`` for a failed fit): the CLI prints them, the API joins them."""
    lines: list[tuple[str, str | None]] = [
        (f"fitted {d['n_configs']} configurations ({d['n_passes']} passes, {d['n_batches_total']} calls, "
         f"{d['n_sessions']} session{'s' if d['n_sessions'] != 1 else ''}) with {d['sampler']} in "
         f"{d['total_seconds']:.1f} s", None)]
    if d.get("rhat_max") is not None:
        lines.append((f"r-hat max {d['rhat_max']:.3f}, ESS min {d['ess_bulk_min']:.0f}, divergences "
                      f"{d['divergences']}", None))
    if d["n_sessions"] < 2:
        lines.append(("one calibrated session: the drift between sessions is assumed, not measured "
                      "(`tqsim calibrate --sessions 3 --gap 5min` measures it).", "yellow"))
    lines += [(note, "yellow") for note in d.get("notes", [])]
    if not d["ok"]:
        lines.append(("diagnostics FAILED: refit with more --draws/--tune; predict refuses this fit without --force.",
                      "bold red"))
    elif d.get("status") == "warn":
        lines.append((f"diagnostics usable but not clean ({shortfall(d)}): forecasts will say so; refit with "
                      f"`{REFIT}` for final numbers.", "yellow"))
    return lines
