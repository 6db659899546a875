"""The one report object behind ``tqsim report``: every number the page shows, assembled from the workspace.

:func:`build_report` reads the calibration, the fitted model (when there is one), held-out runs and
the serving calibration, and computes each section's numbers (``Section.data``, JSON-able) and the
arrays its figure needs (``Section.series``, never exported). A section whose inputs do not exist is
kept, marked unavailable, with a message naming the command that produces them. The object's types
live in :mod:`tqsim.report.types`; figures (:mod:`tqsim.report.figures`) and the exporters
(:mod:`tqsim.report.html`, :mod:`tqsim.report.markdown`, :meth:`Report.as_dict` for JSON) only read it;
:func:`write_report` runs them.
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import json
import warnings
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from tqsim.data.io import load_campaign
from tqsim.data.serving_store import SERVING_FILE
from tqsim.data.schema import call_latency
from tqsim.data.workspace import Workspace
from tqsim.errors import UserError
from tqsim.factors import FACTORS, Config
from tqsim.forecast import (INTERVAL, forecast, percentile_bands, simulate_calls, survival_band,
                            tail_and_p99_bands)
from tqsim.models import load
from tqsim.models.fit import REFIT
from tqsim.quality import (campaign_configs, check_tail_q, config_factors, latency_percentiles, measured_latency,
                           no_deadline_quality, parse_threshold, parse_thresholds, quality_curves, quality_report,
                           scoring_of, tail_and_p99)
from tqsim.report.figures import draw_figures
from tqsim.report.html import to_html
from tqsim.report.markdown import to_markdown
from tqsim.report.types import Report, Section, Table
from tqsim.units import fmt_iv, fmt_num, fmt_pct, fmt_seconds
from tqsim.validate import validate
from tqsim.whatif.inputs import WorkspaceInputs, whatif_sweep
from tqsim.whatif.simulator import central, fixed_batch_capacity


# ------------------------------------------------------------------------------------------------
# the builder
# ------------------------------------------------------------------------------------------------

@dataclasses.dataclass
class _Ctx:
    ws: Any
    system: str
    workload: str
    campaign: Any
    configs: list              # per-config datasets (tqsim.quality.campaign_configs)
    thresholds: list
    tail_q: float
    seed: int
    draws: int
    heat_threshold: Any = None
    fm: Any = None             # FittedModel usable for forecasts, or None
    fit_problem: str = ""      # why forecasts are absent / untrusted


def build_report(*, home=None, system: str | None = None, workload: str | None = None,
                 thresholds: Sequence[str] | None = None, tail_q: float = 0.01, heldout: str | Path | None = None,
                 whatif_rates: Sequence[float] | None = None, whatif_replicas: Sequence[int] = (1,),
                 whatif_max_batch: int = 1, whatif_deadline_s: float | None = None, draws: int = 100,
                 force: bool = False, seed: int = 0, progress: Callable[[str], None] | None = None) -> Report:
    """Assemble the report of ``<system>/<workload>`` (inputs are checked before anything is computed);
    ``progress`` is called with each section's name as it starts."""
    check_tail_q(tail_q)
    ths = parse_thresholds(thresholds)
    if draws < 10:
        raise UserError(f"--draws {draws}: forecast bands need at least 10 posterior draws (default 100).")
    if heldout is not None and not Path(heldout).exists():
        raise UserError(f"--heldout {heldout}: no such folder; measure held-out configurations with "
                        "`tqsim calibrate --home OTHER_DIR` and pass --heldout OTHER_DIR.")
    if whatif_max_batch < 1:
        raise UserError(f"--whatif-max-batch {whatif_max_batch}: must be ≥ 1.")
    if not whatif_replicas or min(whatif_replicas) < 1:
        raise UserError(f"--whatif-replicas {list(whatif_replicas)}: give positive integers, e.g. 1 or 1,2.")
    ws = Workspace.at(home)
    sys_name = ws.resolve_system(system)
    wl = ws.resolve_workload(sys_name, workload)
    campaign = load_campaign(ws.calibration_dir(sys_name, wl), workload=wl)
    configs = sorted(campaign_configs(campaign), key=lambda ds: _config_of(ds))  # batch size, then threads, ...
    ctx = _Ctx(ws, sys_name, wl, campaign, configs, ths, tail_q, seed, draws,
               heat_threshold=ths[0] if thresholds else parse_threshold("p99"))
    # heavy-tailed posterior draws can overflow exp(); the sections report that themselves
    with np.errstate(over="ignore", under="ignore", invalid="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        builders = [("fit", lambda: _fit_section(ctx, force)), ("overview", lambda: _overview_section(ctx)),
                    ("latency", lambda: _latency_section(ctx)), ("quality", lambda: _quality_section(ctx)),
                    ("heatmap", lambda: _heatmap_section(ctx)), ("explain", lambda: _explain_section(ctx)),
                    ("validation", lambda: _validation_section(ctx, heldout, force)),
                    ("what-if", lambda: _whatif_section(ctx, whatif_rates, list(whatif_replicas), whatif_max_batch,
                                                        whatif_deadline_s)),
                    ("serving-validation", lambda: _serving_validation_section(ctx))]
        built = {}
        for name, build in builders:           # the fit first: the other sections read its model
            if progress:
                progress(name)
            built[name] = build()
        sections = [built[n] for n in ("overview", "latency", "quality", "heatmap", "explain", "validation", "what-if",
                                       "serving-validation", "fit")]
    settings = {"thresholds": [t.label for t in ths], "tail_q": tail_q, "draws": draws, "seed": seed,
                "heldout": str(heldout) if heldout else None, "force": force, "interval": INTERVAL}
    warns = [ctx.fit_problem] if ctx.fm is not None and ctx.fit_problem else []
    return Report(system=sys_name, workload=wl, home=str(ws.home), settings=settings, sections=sections,
                  created_at=_dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"), warnings=warns)


def default_out(home, system: str, workload: str) -> Path:
    return Workspace.at(home).reports_dir() / system / workload


def write_report(report: Report, out: str | Path, *, markdown: bool = True) -> Path:
    """Draw the figures into ``out`` and write ``index.html`` (and ``index.md``); returns the HTML path."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out}: is a file; give a folder (it is created if missing).")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UserError(f"--out {out}: cannot create the folder ({exc.strerror}).") from None
    report.out = str(out.resolve())
    draw_figures(report, out)
    path = to_html(report, out)
    if markdown:
        to_markdown(report, out)
    return path


# ------------------------------------------------------------------------------------------------
# sections
# ------------------------------------------------------------------------------------------------

def _cmd(ctx: _Ctx, text: str) -> str:
    return f"`tqsim {text} --home {ctx.ws.home} --system {ctx.system} --workload {ctx.workload}`"


def _fit_section(ctx: _Ctx, force: bool) -> Section:
    """Loads the fit into ``ctx`` (so later sections can forecast) and describes it."""
    sec = Section("model", "Fitted model",
                  intro="The Bayesian latency model behind every forecast: its sessions, sampler and convergence "
                        "diagnostics, and the posterior of its scalar parameters (ArviZ forest plot, 90% HDI).")
    path = ctx.ws.model_path(ctx.system, ctx.workload)
    if not path.exists():
        ctx.fit_problem = f"no fitted model at {path}; run {_cmd(ctx, 'fit')}."
        sec.available, sec.missing = False, ctx.fit_problem
        return sec
    try:
        fm = load(path, workload=ctx.workload, system=ctx.system)
    except UserError as exc:
        ctx.fit_problem = f"the fitted model cannot be used: {exc}"
        sec.available, sec.missing = False, ctx.fit_problem
        return sec
    d = fm.diagnostics
    sec.data = {"path": str(path), "family": fm.spec.family, "diagnostics": d, "created_at": fm.created_at,
                "configs": [c["id"] for c in fm.configs]}
    rows = [["file", str(path)], ["created", fm.created_at],
            ["model", "each configuration's own quantile functions, pooled over the factors (docs/method.md)"],
            ["sessions", f"{d.get('n_sessions', 1)}" + ("" if d.get("n_sessions", 1) > 1 else
                                                         " (drift between sessions assumed, not measured)")],
            ["sampler", str(d.get("sampler"))],
            ["configurations / rounds", f"{d.get('n_configs')} / {d.get('n_rounds')}"],
            ["passes / calls", f"{d.get('n_passes')} / {d.get('n_batches_total')}"]]
    if d.get("rhat_max") is not None:
        rows += [["r-hat max (≤ 1.01)", fmt_num(d["rhat_max"], ".3f")],
                 ["ESS bulk min (≥ 100)", fmt_num(d.get("ess_bulk_min"), ".0f")],
                 ["ESS tail min", fmt_num(d.get("ess_tail_min"), ".0f")],
                 ["divergences", str(d.get("divergences"))]]
    rows.append(["diagnostics", "passed" if fm.diagnostics_ok else "FAILED"])
    if d.get("note"):
        rows.append(["note", d["note"]])
    sec.tables.append(Table(["", "value"], rows))
    sec.series["fm"] = fm
    # a fit a newer calibration has outgrown still forecasts, but say so
    fit_ids = {c["id"] for c in fm.configs}
    cal_ids = {ds.attrs["config_id"] for ds in ctx.configs}
    if cal_ids - fit_ids:
        sec.notes.append(f"calibrated after the fit (not seen by it): {', '.join(sorted(cal_ids - fit_ids))}; "
                         f"refit with {_cmd(ctx, 'fit')}.")
    what = (f"r-hat max {fmt_num(d.get('rhat_max'))}, ESS bulk min {fmt_num(d.get('ess_bulk_min'), '.0f')}, "
            f"{d.get('divergences')} divergences")
    if fm.diagnostics_ok:
        ctx.fm = fm
    elif force:
        ctx.fm = fm
        ctx.fit_problem = (f"FORECASTS FROM A FIT THAT FAILED ITS DIAGNOSTICS ({what}): shown because of --force; "
                           f"do not trust their intervals. Refit with `{REFIT}`.")
        sec.notes.append(ctx.fit_problem)
    else:
        ctx.fit_problem = (f"the fit at {path} failed its diagnostics ({what}), so forecasts are left out; refit "
                           f"with `{REFIT}`, or pass --force to show them marked untrusted.")
        sec.notes.append(ctx.fit_problem)
    return sec


def _overview_section(ctx: _Ctx) -> Section:
    sec = Section("overview", "Calibration",
                  intro="What was measured: one row per configuration; latency percentiles pool every instance "
                        "of every pass (an instance gets its batch's latency).")
    fp = {}
    try:
        fp = json.loads(str(ctx.campaign.attrs.get("fingerprint", "{}")))
    except (TypeError, ValueError):
        pass
    rows, data = [], []
    for ds in ctx.configs:
        lat = ds["latency_s"].transpose("pass", "instance").values
        pct = latency_percentiles(lat)
        nd = no_deadline_quality(**scoring_of(ds))
        n_pass = measured_latency(ds).shape[0]
        data.append({"config_id": ds.attrs["config_id"], "config": config_factors(ds), "passes": n_pass,
                     "instances": int(lat.shape[1]), "latency_s": pct, "no_deadline": nd})
        rows.append([ds.attrs["config_id"], str(n_pass), str(lat.shape[1]), fmt_seconds(pct["p50"]), fmt_seconds(pct["p99"]),
                     fmt_seconds(pct["p99.9"]), fmt_pct(nd)])
    sec.data = {"configs": data, "fingerprint": fp}
    sec.tables.append(Table(["configuration", "passes", "instances", "p50", "p99", "p99.9",
                             f"{ctx.campaign.attrs.get('quality_metric', 'quality')} (no deadline)"], rows))
    if fp:
        keep = {k: v for k, v in fp.items() if not isinstance(v, (dict, list))}
        sec.tables.append(Table(["system fingerprint", "value"], [[k, str(v)] for k, v in keep.items()],
                                title="System"))
    return sec


def _config_of(ds):
    return Config.from_mapping(config_factors(ds))


def _latency_section(ctx: _Ctx) -> Section:
    sec = Section("latency", "Latency distributions: observed vs forecast",
                  intro="Per configuration, the share of forward calls slower than x (the survival function "
                        "1 − ECDF, log–log, so the tail is visible down to one call in all passes). One call = "
                        "one batch. The shaded band, when a fit exists, is the forecast's 90% credible band "
                        "for a run of as many passes in the sessions it was measured in (a configuration the fit "
                        "saw must meet its own band); the dashed line its median.")
    if ctx.fm is None:
        sec.missing = f"Forecast bands are absent: {ctx.fit_problem}"
    curves, data, overflow = [], [], []
    for i, ds in enumerate(ctx.configs):
        lat = ds["latency_s"].transpose("pass", "instance").values
        keep = ~np.isnan(lat).all(axis=-1)
        lat = lat[keep]
        sessions = ds["session"].values[keep].astype(np.int64) if "session" in ds else np.zeros(lat.shape[0], np.int64)
        calls = np.sort(call_latency(lat, ds["batch"].values).ravel())
        cfg = _config_of(ds)
        row = {"config_id": ds.attrs["config_id"], "calls": int(calls.size),
               "observed_s": latency_percentiles(calls, (50, 99, 99.9))}
        curve = {"config_id": ds.attrs["config_id"], "observed": calls}
        if ctx.fm is not None:
            try:
                fc = simulate_calls(ctx.fm, cfg, n_passes=lat.shape[0], n_draws=ctx.draws, seed=ctx.seed + i,
                                    sessions=sessions)
            except UserError as exc:
                sec.notes.append(f"{ds.attrs['config_id']}: no forecast ({exc})")
            else:
                fin = fc[np.isfinite(fc) & (fc > 0)]
                if fin.size < fc.size:
                    overflow.append(f"{ds.attrs['config_id']} {(fc.size - fin.size) / fc.size:.2%}")
                lo_x = max(min(calls[0], float(np.quantile(fin, 0.001))), calls[0] / 100) * 0.9
                hi_x = min(max(calls[-1], float(np.quantile(fin, 0.9999))), 100 * calls[-1]) * 1.1
                grid = np.geomspace(lo_x, hi_x, 160)
                lo, mid, hi = survival_band(fc, grid)
                curve.update(grid=grid, lo=lo, mid=mid, hi=hi)
                row["forecast_s"] = percentile_bands(fc, (50, 99, 99.9))
        curves.append(curve)
        data.append(row)
    outside = [r["config_id"] for r in data if "forecast_s" in r
               and not r["forecast_s"]["p99"]["lo"] <= r["observed_s"]["p99"] <= r["forecast_s"]["p99"]["hi"]]
    if outside:
        sec.notes.append(f"{len(outside)} of {sum('forecast_s' in r for r in data)} configurations have their observed "
                         "p99 outside their own 90 % band (about 1 in 10 is expected): " + ", ".join(outside) + ".")
    if overflow:
        sec.notes.append("simulated calls that overflowed to 0 or ∞ seconds (an extremely heavy-tailed residual; "
                         "check the fit): " + ", ".join(overflow) + ".")
    sec.series["curves"] = curves
    sec.data = {"unit": "seconds per forward call", "configs": data}
    cols = ["configuration", "calls", "observed p50", "observed p99", "observed p99.9"]
    has_fc = any("forecast_s" in r for r in data)
    if has_fc:
        cols += ["forecast p99 [90%]", "observed p99 inside"]
    rows = []
    for r in data:
        o = r["observed_s"]
        cells = [r["config_id"], str(r["calls"]), fmt_seconds(o["p50"]), fmt_seconds(o["p99"]), fmt_seconds(o["p99.9"])]
        if has_fc:
            f = r.get("forecast_s", {}).get("p99")
            cells += [fmt_iv(f["median"], f["lo"], f["hi"], fmt_seconds) if f else "–",
                      ("yes" if f["lo"] <= o["p99"] <= f["hi"] else "no") if f else "–"]
        rows.append(cells)
    sec.tables.append(Table(cols, rows, title="Per-call latency"))
    return sec


def _quality_section(ctx: _Ctx) -> Section:
    sec = Section("quality", "Quality at a deadline (Q@T) versus threshold",
                  intro=f"Q@T of a pass counts every instance later than the deadline τ as wrong. Band: min–max "
                        f"of Q@T over the measured passes; line: mean; dotted verticals: the thresholds of the "
                        f"table. Tail quality TQ_{ctx.tail_q:g} is the {ctx.tail_q:g}-quantile of Q@T over "
                        "passes; brackets are 90% intervals (bootstrap for the mean, order statistics for "
                        "the tail, a prediction interval for the worst pass of another campaign).")
    rep = quality_report(ctx.campaign, ctx.thresholds, tail_q=ctx.tail_q, seed=ctx.seed, n_boot=500)
    order = {ds.attrs["config_id"]: i for i, ds in enumerate(ctx.configs)}
    rep["configs"].sort(key=lambda c: order[c["config_id"]])
    sec.data = {"configs": rep["configs"]}
    sec.series["curves"] = sorted(quality_curves(ctx.campaign), key=lambda c: order[c["config_id"]])
    # one panel per level of a factor other than batch size (bands of different thread counts overlap)
    other = [f for f in _varying(ctx) if f != "batch_size"]
    if other:
        sec.series["groups"] = {ds.attrs["config_id"]: f"{other[0]}={config_factors(ds)[other[0]]}"
                                for ds in ctx.configs}
    sec.series["marks"] = {c["config_id"]: [t["threshold_s"] for t in c["quality"]["thresholds"]]
                           for c in rep["configs"]}
    rows = []
    for c in rep["configs"]:
        for t in c["quality"]["thresholds"]:
            rows.append([c["config_id"], f"{t['threshold']} = {fmt_seconds(t['threshold_s'])}",
                         fmt_iv(t["mean"], t["mean_lo"], t["mean_hi"]), fmt_iv(t["tail"], t["tail_lo"], t["tail_hi"]),
                         fmt_iv(t["min"], t["min_lo"], t["min_hi"]), fmt_pct(t["late_fraction"])])
    sec.tables.append(Table(["configuration", "threshold τ", "mean Q@T [90%]", f"TQ_{ctx.tail_q:g} [90%]",
                             "min Q@T [90%]", "late instances"], rows, title="Measured Q@T per threshold"))
    return sec


def _varying(ctx: _Ctx) -> list[str]:
    levels = {f: {config_factors(ds)[f] for ds in ctx.configs} for f in FACTORS}
    return [f for f in FACTORS if len(levels[f]) > 1]


def _heatmap_section(ctx: _Ctx) -> Section:
    th = ctx.heat_threshold
    label = th.label
    which = ("a percentile of each configuration's own latency" if th.percentile is not None
             else "the same deadline for every configuration")
    sec = Section("heatmap", "Tail quality over two factors",
                  intro=f"Top: TQ_{ctx.tail_q:g} at threshold τ = {label} ({which}; set it with the first "
                        "--threshold). Bottom: p99 latency. Plain cells are measured; hatched cells labelled "
                        "“forecast” come from the fitted model (posterior median for a run of as many passes as "
                        "the calibration; 90% intervals in the table); “no data” cells have neither.")
    vary = _varying(ctx)
    pair = [f for f in ("batch_size", "threads") if f in vary]
    pair += [f for f in vary if f not in pair]
    if len(pair) < 2 and ctx.fm is None:
        sec.available = False
        sec.missing = ("needs two factors with at least two calibrated levels each (varied here: "
                       f"{', '.join(vary) or 'none'}); run `tqsim calibrate --grid batch_size=1,8,32 --grid "
                       "threads=1,2`, or fit a model (`tqsim fit`) to forecast the missing levels.")
        return sec
    fx = pair[0] if pair else "batch_size"
    fy = pair[1] if len(pair) > 1 else ("threads" if fx != "threads" else "batch_size")
    facts = [config_factors(ds) for ds in ctx.configs]
    # the other factors held at the level of most calibrated configurations
    fixed = {}
    for f in facts[0]:
        if f not in (fx, fy):
            vals = [c[f] for c in facts]
            fixed[f] = max(set(vals), key=vals.count)
    xs = sorted({c[fx] for c in facts})
    ys = sorted({c[fy] for c in facts})
    if ctx.fm is not None:
        for f, levels in ((fx, xs), (fy, ys)):
            if f == "batch_size" and len(levels) >= 1:  # fill powers of two between the calibrated extremes
                lo, hi = min(levels), max(levels)
                levels[:] = sorted(set(levels) | {2 ** k for k in range(12) if lo < 2 ** k < hi})
            if f == "threads" and len(levels) == 1:
                levels[:] = sorted(set(levels) | {1, 2})
    n_pass = int(np.median([int((~np.isnan(ds["latency_s"].values).all(axis=-1)).sum()) for ds in ctx.configs]))
    measured = {}
    for ds, c in zip(ctx.configs, facts):
        if any(c[f] != v for f, v in fixed.items()):
            continue
        measured[(c[fx], c[fy])] = {**tail_and_p99(ds, th, ctx.tail_q), "source": "measured",
                                    "config_id": ds.attrs["config_id"]}
    cells, fc_notes = [], set()
    for i, y in enumerate(ys):
        for j, x in enumerate(xs):
            cell = measured.get((x, y))
            if cell is None and ctx.fm is not None:
                cfg = Config.from_mapping({**fixed, fx: x, fy: y})
                try:
                    fc = forecast(ctx.fm, cfg, [th.text], n_passes=n_pass, n_draws=ctx.draws, tail_q=ctx.tail_q,
                                  seed=ctx.seed + 100 + 10 * i + j, force=True)
                except UserError as exc:
                    fc_notes.add(str(exc))
                else:
                    cell = {**tail_and_p99_bands(fc), "source": "forecast", "config_id": cfg.id}
                    fc_notes.update(w for w in fc.warnings if "DIAGNOSTICS" not in w)
            if cell is not None:
                cells.append({fx: x, fy: y, **cell})
    sec.notes += sorted(fc_notes)
    top = max((c["p99_s"] for c in cells if c["source"] == "measured"), default=float("inf"))
    wild = [c["config_id"] for c in cells if c["source"] == "forecast" and not c["p99_s"] < 10 * top]
    if wild:
        sec.notes.append(f"forecast p99 above 10× the slowest measured p99 ({fmt_seconds(top)}) for {', '.join(wild)}: "
                         "implausible; check the fit before trusting the forecast cells.")
    if len(xs) < 2 or len(ys) < 2:
        sec.notes.append(f"only one level of {fy if len(ys) < 2 else fx} is calibrated; calibrate another "
                         f"(`tqsim calibrate --grid {fy if len(ys) < 2 else fx}=...`) for a real second axis.")
    if ctx.fm is None:
        sec.missing = f"Uncalibrated cells stay blank: {ctx.fit_problem}"
    sec.data = {"x_factor": fx, "y_factor": fy, "x_levels": xs, "y_levels": ys, "fixed": fixed,
                "threshold": label, "tail_q": ctx.tail_q, "cells": cells}
    rows = [[c["config_id"], c["source"], fmt_seconds(c["threshold_s"]),
             fmt_iv(c["tail"], c["tail_lo"], c["tail_hi"]) if "tail_lo" in c else fmt_pct(c["tail"]),
             fmt_iv(c["p99_s"], c["p99_lo_s"], c["p99_hi_s"], fmt_seconds) if "p99_lo_s" in c else fmt_seconds(c["p99_s"])]
            for c in cells]
    sec.tables.append(Table(["configuration", "source", "τ", f"TQ_{ctx.tail_q:g}", "p99"], rows))
    return sec


def _explain_section(ctx: _Ctx) -> Section:
    sec = Section("explain", "What each factor does",
                  intro="Each factor moved from the base configuration (the calibrated levels nearest the centre) to "
                        "the next calibrated level, every other factor held: the change of a run's p50 and p99 (%) "
                        f"and of its tail quality TQ_{ctx.tail_q:g} at one deadline (percentage points), each a "
                        "contrast of two forecasts with common random numbers, with 90% intervals; then how a "
                        "call's log-latency variance at the base splits into sources. `tqsim explain --at` "
                        "chooses other contrasts (docs/method.md, \"Explaining the factors\").")
    if ctx.fm is None:
        sec.available, sec.missing = False, f"explaining the factors needs a usable fit: {ctx.fit_problem}"
        return sec
    from tqsim.explain import explain

    try:
        ex = explain(ctx.fm, threshold=ctx.heat_threshold, tail_q=ctx.tail_q, n_draws=ctx.draws,
                     seed=ctx.seed, campaign=ctx.campaign, force=True)
    except UserError as exc:
        sec.available, sec.missing = False, f"the factors cannot be explained: {exc}"
        return sec
    sec.data = ex.as_dict()
    sec.notes += [w for w in ex.warnings if "DIAGNOSTICS" not in w] + ex.notes

    def change(iv, pp=False):
        return f"{100 * iv.median:+.1f}{' pp' if pp else '%'} [{100 * iv.lo:+.1f}, {100 * iv.hi:+.1f}]"

    rows = [[e.label, change(e.p50), change(e.p99), change(e.tq, pp=True)] for e in ex.effects]
    sec.tables.append(Table(["effect", "p50 [90%]", "p99 [90%]", f"TQ_{ctx.tail_q:g} at {fmt_seconds(ex.threshold_s)} "
                             "[90%]"], rows, title=f"Effects around {ex.base.id} (deadline {ex.threshold})"))
    if ex.interaction is not None:
        i = ex.interaction
        sec.notes.append(f"interaction, {i.label}: p99 ×{i.p99.median:.2f} [{i.p99.lo:.2f}, {i.p99.hi:.2f}], p50 "
                         f"×{i.p50.median:.2f} [{i.p50.lo:.2f}, {i.p50.hi:.2f}] (1: the factors act independently).")
    sec.tables.append(Table(["source", "share of the variance [90%]"],
                            [[v.label, fmt_iv(v.share.median, v.share.lo, v.share.hi)] for v in ex.variance],
                            title=f"A call's log-latency variance at {ex.base.id}, in a run in a new session"))
    return sec


def _validation_section(ctx: _Ctx, heldout, force: bool) -> Section:
    sec = Section("validation", "Validation against held-out runs",
                  intro="Forecasts of configurations measured apart from the calibration (never shown to the "
                        "fit), against what was observed: p99 latency and tail quality at the held-out run's "
                        "own T99, with 90% intervals. The dashed diagonal is a perfect forecast.")
    if heldout is None:
        sec.available = False
        sec.missing = ("no held-out runs given: measure a few configurations separately "
                       "(`tqsim calibrate --home OTHER_DIR --grid batch_size=8`) and pass --heldout OTHER_DIR.")
        return sec
    if ctx.fm is None:
        sec.available = False
        sec.missing = f"validation needs a usable fit: {ctx.fit_problem}"
        return sec
    res = validate(ctx.fm, heldout, n_draws=ctx.draws, seed=ctx.seed, force=force)
    sec.data = res.as_dict()
    rows = []
    for r in res.configs:
        p = r["latency_s"]["p99"]
        t = r["tail_quality"][-1]
        rows.append([r["config_id"], "yes" if r["calibrated"] else "no", fmt_seconds(p["observed"]),
                     fmt_iv(p["predicted"], p["lo"], p["hi"], fmt_seconds), f"{100 * p['rel_error']:+.1f}%",
                     fmt_pct(t["observed"]), fmt_iv(t["predicted"], t["lo"], t["hi"]),
                     f"{r['rjsd']:.3f} ({r['rjsd_floor']:.3f})"])
    sec.tables.append(Table(["held-out configuration", "calibrated", "observed p99", "forecast p99 [90%]",
                             "p99 error", "observed TQ@T99", "forecast TQ@T99 [90%]", "rJSD (floor)"], rows))
    s = res.summary
    sec.tables.append(Table(["summary", "value"], [
        ["median |rel. error| of p99", fmt_pct(s["median_rel_error_p99"])],
        ["worst |rel. error| of p99", fmt_pct(s["max_rel_error_p99"])],
        ["coverage of the 90% intervals", f"{fmt_pct(s['coverage'])} of {s['n_intervals']}"],
        ["median |error| of tail quality", fmt_pct(s["median_abs_error_tail_quality"])],
        ["median rJSD (floor for these passes)", f"{s['median_rjsd']:.3f} ({s['median_rjsd_floor']:.3f})"]]))
    return sec


def _serving_validation_section(ctx: _Ctx) -> Section:
    """The latest `tqsim validate --serving-log`: what-if forecasts against a serving stack's own runs."""
    sec = Section("serving_validation", "What-if against real serving runs",
                  intro="The latest `tqsim validate --serving-log`: each logged run (never shown to the serving fit) "
                        "against the what-if forecast at its own offered rate, with 90% intervals.")
    path = ctx.ws.calibration_dir(ctx.system, ctx.workload) / "serving-validation.json"
    if not path.exists():
        sec.available = False
        sec.missing = ("no what-if validation yet: fit a stack from its request logs (`tqsim calibrate --serving-log "
                       "... --setup ...`), then `tqsim validate --serving-log OTHER_RUN.csv --setup ...`.")
        return sec
    res = json.loads(path.read_text())
    sec.data = res
    rows = []
    for r in res["runs"]:
        o, f, i = r["observed"], r["forecast"], r["inside"]
        tq = f["tail_quality"]
        rows.append([Path(r["source"]).name, f"{r['rate_rps']:.4g}", fmt_seconds(o["p50"]),
                     fmt_seconds(o["p99"]), fmt_iv(central(f["p99"]), f["p99"]["lo"], f["p99"]["hi"], fmt_seconds)
                     + (" ✓" if i["p99"] else " ✗"), fmt_pct(o["miss_rate"]),
                     "–" if o["tail_quality"] is None else fmt_pct(o["tail_quality"]),
                     fmt_iv(central(tq), tq["lo"], tq["hi"])])
    s = res["setup"]
    sec.tables.append(Table(["run", "rate (req/s)", "p50", "p99", "forecast p99 [90%]", "miss rate", "tail quality",
                             "forecast TQ [90%]"], rows,
                            title=f"stack {res['stack']}: {s['replicas']} replica(s) × {s['threads']} thread(s), "
                                  f"batch ≤ {s['max_batch']}, wait {fmt_seconds(s['max_wait_s'])}, deadline "
                                  f"{fmt_seconds(res['threshold_s'])}"))
    sec.notes += [f"{m}: {c['inside']}/{c['runs']} runs inside the 90% interval"
                  for m, c in res["coverage"].items() if c["runs"]] + res.get("notes", [])
    return sec


def _whatif_section(ctx: _Ctx, rates: list[float] | None, reps: list[int], max_batch: int,
                    deadline_s: float | None) -> Section:
    sec = Section("whatif", "What-if: serving under load",
                  intro="Simulated serving (Poisson arrivals, dynamic batcher, FIFO replicas) from the "
                        "calibrated forward times plus the serving calibration's overheads: tail quality over "
                        "windows of the evaluation set and p99 end-to-end latency against the arrival rate, "
                        "with 90% intervals. Explore further with `tqsim whatif` and `tqsim plan`.")
    serving = ctx.ws.calibration_dir(ctx.system, ctx.workload) / SERVING_FILE
    if rates is None and not serving.exists():
        sec.available = False
        sec.missing = (f"no serving calibration ({SERVING_FILE}): run `tqsim calibrate --serving` (or pass "
                       "--whatif-rate 100,200,400 to simulate from forward times only, which under-predicts "
                       "latency under load).")
        return sec
    src = WorkspaceInputs.open(ctx.ws.home, ctx.system, ctx.workload)
    precision = "fp32" if "fp32" in src.precisions() else src.precisions()[0]
    threads = src.threads()[0]
    svc = src.service(threads, precision, reps[0])
    k = min(max_batch, max(src.batch_sizes(threads, precision) or [1]))
    capacity, mean_s = fixed_batch_capacity(svc, k, reps[0], np.random.default_rng(ctx.seed))
    if rates is None:
        rates = [float(f"{capacity * f:.3g}") for f in (0.2, 0.4, 0.6, 0.8, 0.9)]
        sec.notes.append(f"rates chosen at 20–90% of an estimated capacity of {capacity:.3g} requests/s "
                         f"({reps[0]} replica(s), batches of {k}); set them with --whatif-rate.")
    if deadline_s is None:
        deadline_s = float(f"{10 * mean_s:.2g}")
        sec.notes.append(f"deadline {fmt_seconds(deadline_s)} = 10× the mean service time; set it with --whatif-deadline.")
    out = whatif_sweep(home=ctx.ws.home, system=ctx.system, workload=ctx.workload, rates=rates, replicas=reps,
                       threads=threads, max_batch=max_batch, max_wait_s=0.0, thresholds_s=[deadline_s],
                       precision=precision, draws=20, windows=30, tail_q=ctx.tail_q, seed=ctx.seed).as_dict()
    sec.notes += out["notes"]
    sec.data = out
    rows = []
    for r in out["results"]:
        lat = r["latency_s"]
        rows.append([f"{r['rate_rps']:.4g}", str(r["replicas"]), fmt_seconds(r["threshold_s"]),
                     fmt_seconds(central(lat["p50"])), fmt_iv(central(lat["p99"]), lat["p99"]["lo"], lat["p99"]["hi"], fmt_seconds),
                     fmt_pct(r["miss_rate"]["mean"]),
                     fmt_iv(central(r["tail_quality"]), r["tail_quality"]["lo"], r["tail_quality"]["hi"]),
                     " ".join(f"{u:.0%}" for u in r["utilisation"])])
    sec.tables.append(Table(["rate (req/s)", "replicas", "deadline", "p50", "p99 [90%]", "miss rate",
                             f"tail quality [90%]", "utilisation"], rows,
                            title=f"threads {threads}, batch ≤ {max_batch}, {precision}, "
                                  f"{out['service_model']} service times"))
    return sec
