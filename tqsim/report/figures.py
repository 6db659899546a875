"""The report's figures (matplotlib, Agg): each reads one section of the report object and writes a PNG.

Q@T bands reuse :func:`tqsim.report.quality_plot.plot_quality_bands`; what-if curves reuse
:func:`tqsim.whatif.plot.plot_sweep`; the model's forest plot is ArviZ's.
"""

from __future__ import annotations

import math
import warnings
from pathlib import Path

import matplotlib
import numpy as np

matplotlib.use("Agg")
import arviz as az  # noqa: E402  (it draws with matplotlib: import after choosing the file-only backend)
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.colors import LogNorm, Normalize  # noqa: E402
from matplotlib.lines import Line2D  # noqa: E402
from matplotlib.patches import Rectangle  # noqa: E402
from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter  # noqa: E402

from tqsim.plotting import plain_log_labels, save_figure  # noqa: E402
from tqsim.report.explain_plot import plot_explanation  # noqa: E402
from tqsim.report.quality_plot import plot_quality_bands  # noqa: E402
from tqsim.report.types import Figure, Report  # noqa: E402
from tqsim.whatif.plot import plot_sweep  # noqa: E402

DPI = 110


def _ms(x):
    return np.asarray(x, dtype=float) * 1e3


def draw_figures(report: Report, out: Path) -> None:
    """Write every figure whose section has data into ``out/figures`` and record it on the section."""
    folder = Path(out) / "figures"
    folder.mkdir(parents=True, exist_ok=True)
    for old in [*folder.glob("quality-*.png"), *(folder / f"{k}.png" for k in _DRAW)]:
        old.unlink(missing_ok=True)  # figures of an earlier report whose data are gone now
    title = f"{report.workload} on {report.system}"
    for sec in report.sections:
        sec.figures = []
        draw = _DRAW.get(sec.key)
        if draw is None or not sec.available:
            continue
        figs = draw(sec, folder, title)
        for fig in (figs if isinstance(figs, list) else [figs] if figs is not None else []):
            fig.file = f"figures/{Path(fig.file).name}"
            sec.figures.append(fig)


def latency_figure(sec, folder: Path, title: str) -> Figure | None:
    curves = sec.series.get("curves") or []
    if not curves:
        return None
    n = len(curves)
    ncol = min(4, n)
    nrow = math.ceil(n / ncol)
    fig, axes = plt.subplots(nrow, ncol, figsize=(3.4 * ncol + 0.6, 2.8 * nrow + 0.9), squeeze=False,
                             layout="constrained")  # own y range each: the tail reaches 1/calls
    forecast_any = False
    for ax, c in zip(axes.flat, curves):
        obs = c["observed"]
        surv = 1.0 - np.arange(1, obs.size + 1) / obs.size
        floor = 0.5 / obs.size
        ax.step(_ms(obs), np.maximum(surv, floor), where="post", color="C0", lw=1.3, label="observed")
        if "grid" in c:
            forecast_any = True
            ax.fill_between(_ms(c["grid"]), np.maximum(c["lo"], floor), np.maximum(c["hi"], floor), color="C1",
                            alpha=0.3, lw=0, label="forecast 90% band")
            ax.plot(_ms(c["grid"]), np.maximum(c["mid"], floor), color="C1", ls="--", lw=1, label="forecast median")
        for p, ls in ((50, ":"), (99, "-.")):
            ax.axvline(np.percentile(obs, p) * 1e3, color="0.4", ls=ls, lw=0.8)
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_ylim(floor * 0.8, 1.5)
        # the observed range, widened a little; a forecast tail beyond it is cut (its p99 is in the table)
        ax.set_xlim(obs[0] * 1e3 / 1.5, obs[-1] * 1e3 * 2.5)
        ax.set_title(c["config_id"], fontsize=9)
        # plain numbers at 1-2-5 steps: log minor labels collide when a panel spans less than a decade
        lo_x, hi_x = ax.get_xlim()
        span = math.log10(hi_x / lo_x)
        subs = (1.0, 2.0, 5.0) if span < 1.4 else (1.0, 3.0) if span < 2.6 else (1.0,)
        ax.xaxis.set_major_locator(LogLocator(base=10, subs=subs))
        ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
        ax.xaxis.set_minor_formatter(NullFormatter())
        ax.tick_params(labelsize=8)
        ax.grid(True, which="major", alpha=0.3)
    for ax in axes.flat[n:]:
        ax.set_visible(False)
    for ax in axes[:, 0]:
        ax.set_ylabel("P(call latency > x)", fontsize=9)
    for ax in axes[-1, :]:
        ax.set_xlabel("latency x (ms)", fontsize=9)
    for ax in axes.flat[max(0, n - ncol):n]:
        ax.set_xlabel("latency x (ms)", fontsize=9)
    handles, labels = axes.flat[0].get_legend_handles_labels()
    handles += [Line2D([], [], color="0.4", ls=":", lw=0.8), Line2D([], [], color="0.4", ls="-.", lw=0.8)]
    labels += ["observed p50", "observed p99"]
    fig.legend(handles, labels, loc="outside lower center", ncol=len(labels), fontsize=9, frameon=False)
    fig.suptitle(f"{title}: per-call latency, observed vs forecast", fontsize=11)
    path = folder / "latency.png"
    save_figure(fig, path, dpi=DPI, bbox_inches="tight")
    plt.close(fig)
    cap = "Observed survival function per configuration" + (" with the forecast's 90% band." if forecast_any
                                                          else " (no forecast: see the note above).")
    return Figure("latency", str(path), "Latency distributions", cap)


def quality_figure(sec, folder: Path, title: str) -> list[Figure] | None:
    """:func:`plot_quality_bands` once per group of at most four configurations, so bands stay legible."""
    curves = sec.series.get("curves") or []
    if not curves:
        return None
    groups: dict = {}
    for c in curves:
        groups.setdefault(sec.series.get("groups", {}).get(c["config_id"], ""), []).append(c)
    panels = []
    for name, members in groups.items():
        for k in range(0, len(members), 4):
            panels.append((name, members[k:k + 4]))
    figs = []
    for n, (name, members) in enumerate(panels, 1):
        path = plot_quality_bands(members, folder / f"quality-{n}.png", marks=sec.series.get("marks"),
                                  title=f"{title}: Q@T versus threshold" + (f" ({name})" if name else ""))
        figs.append(Figure("quality", str(path), "Q@T versus threshold" + (f" ({name})" if name else ""),
                           "Band: min–max of Q@T over passes; line: mean; dotted: the table's thresholds."))
    return figs


def heatmap_figure(sec, folder: Path, title: str) -> Figure | None:
    d = sec.data
    cells = d.get("cells") or []
    if not cells:
        return None
    fx, fy, xs, ys = d["x_factor"], d["y_factor"], d["x_levels"], d["y_levels"]
    tq = np.full((len(ys), len(xs)), np.nan)
    p99 = np.full_like(tq, np.nan)
    src = np.full(tq.shape, "", dtype=object)
    for c in cells:
        i, j = ys.index(c[fy]), xs.index(c[fx])
        tq[i, j], p99[i, j], src[i, j] = c["tail"], c["p99_s"] * 1e3, c["source"]
    w = max(7.0, 1.05 * len(xs) + 2.5)
    fig, axes = plt.subplots(2, 1, figsize=(w, 2 * (0.75 * len(ys) + 1.3) + 0.5), layout="constrained")
    meas = src == "measured"

    def limits(z, log):
        ref = z[meas & np.isfinite(z)] if (meas & np.isfinite(z)).any() else z[np.isfinite(z)]
        lo, hi = (float(ref.min()), float(ref.max())) if ref.size else (1.0, 2.0)
        if hi <= lo:
            lo, hi = (lo / 1.5, hi * 1.5) if log else (lo - 0.05, hi + 0.05)
        return LogNorm(lo, hi, clip=True) if log else Normalize(lo, hi, clip=True)

    panels = ((axes[0], tq, f"TQ_{d['tail_q']:g} at τ = {d['threshold']}", "viridis", "{:.3f}", limits(tq, False)),
              (axes[1], p99, "p99 latency (ms)", "magma_r", "{:.3g}", limits(p99, True)))
    for ax, z, label, cmap, fmt, norm in panels:
        masked = np.ma.masked_invalid(z)
        im = ax.imshow(masked, cmap=cmap, norm=norm, aspect="auto", origin="lower")
        cb = fig.colorbar(im, ax=ax, shrink=0.95, pad=0.01)
        cb.set_label(label, fontsize=9)
        if isinstance(norm, LogNorm):
            plain_log_labels(cb.ax.yaxis)
        for i in range(len(ys)):
            for j in range(len(xs)):
                if not np.isfinite(z[i, j]):
                    text = "∞\nforecast" if z[i, j] == np.inf else "no data"
                    ax.text(j, i, text, ha="center", va="center", fontsize=8, color="0.4")
                    continue
                frac = float(norm(z[i, j]))
                dark = frac < 0.55 if cmap == "viridis" else frac > 0.45
                color = "white" if dark else "black"
                text = fmt.format(z[i, j]) + ("\nforecast" if src[i, j] == "forecast" else "")
                ax.text(j, i, text, ha="center", va="center", fontsize=9, color=color)
                if src[i, j] == "forecast":
                    ax.add_patch(Rectangle((j - 0.5, i - 0.5), 1, 1, fill=False, hatch="//", edgecolor=color,
                                           lw=0, alpha=0.35))
        ax.set_xticks(range(len(xs)), [str(x) for x in xs])
        ax.set_yticks(range(len(ys)), [str(y) for y in ys])
        ax.set_xlabel(fx.replace("_", " "))
        ax.set_ylabel(fy.replace("_", " "))
        ax.set_title(label, fontsize=10)
    fixed = ", ".join(f"{k}={v}" for k, v in d["fixed"].items())
    fig.suptitle(f"{title}: {fy} × {fx}, hatched = forecast\n({fixed})", fontsize=10)
    path = folder / "heatmap.png"
    save_figure(fig, path, dpi=DPI)
    plt.close(fig)
    return Figure("heatmap", str(path), "Tail-quality heatmap",
                  "Measured cells plain, forecast cells hatched and labelled.")


def validation_figure(sec, folder: Path, title: str) -> Figure | None:
    rows = sec.data.get("configs") or []
    if not rows:
        return None
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(10, 4.3), constrained_layout=True)
    for k, r in enumerate(rows):
        color = f"C{k % 10}"
        p = r["latency_s"]["p99"]
        o, m = p["observed"] * 1e3, p["predicted"] * 1e3
        a1.errorbar([o], [m], yerr=[[m - p["lo"] * 1e3], [p["hi"] * 1e3 - m]], fmt="o", color=color, capsize=4,
                    label=r["config_id"] + ("" if r["calibrated"] else " (never calibrated)"))
        t = r["tail_quality"][-1]
        a2.errorbar([t["observed"]], [t["predicted"]], yerr=[[t["predicted"] - t["lo"]], [t["hi"] - t["predicted"]]],
                    fmt="o", color=color, capsize=4)
    for ax in (a1, a2):
        lo = min(ax.get_xlim()[0], ax.get_ylim()[0])
        hi = max(ax.get_xlim()[1], ax.get_ylim()[1])
        ax.plot([lo, hi], [lo, hi], ls="--", color="0.5", lw=1)
        ax.set_xlim(lo, hi)
        ax.set_ylim(lo, hi)
        ax.grid(alpha=0.3)
    a1.set(xlabel="observed p99 latency (ms)", ylabel="forecast p99 latency (ms), 90% interval",
           title="p99 latency")
    a2.set(xlabel="observed tail quality at T99", ylabel="forecast tail quality, 90% interval",
           title="tail quality at the held-out run's own T99")
    a1.legend(fontsize=8, loc="upper left")
    fig.suptitle(f"{title}: forecasts vs held-out runs", fontsize=11)
    path = folder / "validation.png"
    save_figure(fig, path, dpi=DPI)
    plt.close(fig)
    return Figure("validation", str(path), "Validation", "Points on the dashed diagonal are perfect forecasts.")


def whatif_figure(sec, folder: Path, title: str) -> Figure | None:
    if not sec.data.get("results"):
        return None
    path = plot_sweep(sec.data, folder / "whatif.png")
    return Figure("whatif", str(path), "What-if curves", "Tail quality and p99 end-to-end latency against load.")


def model_figure(sec, folder: Path, title: str) -> Figure | None:
    fm = sec.series.get("fm")
    if fm is None:
        return None
    post = fm.idata.posterior
    if "config_level" not in post:
        return None
    n = post.sizes.get("config", 1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        axes = az.plot_forest(fm.idata, var_names=["config_level"], combined=True, hdi_prob=0.9,
                              figsize=(8, 0.32 * n + 1.5))
    fig = np.atleast_1d(axes)[0].figure
    np.atleast_1d(axes)[0].set_title(f"{title}: each calibrated configuration's level (90% HDI)", fontsize=10)
    np.atleast_1d(axes)[0].set_xlabel("median pass level, log seconds (the calibration sessions' average)")
    path = folder / "model.png"
    save_figure(fig, path, dpi=DPI, bbox_inches="tight")
    plt.close(fig)
    return Figure("model", str(path), "Posterior of the configuration levels", "ArviZ forest plot, 90% HDI.")


def explain_figure(sec, folder: Path, title: str) -> Figure | None:
    if not sec.data.get("effects") and not sec.data.get("variance"):
        return None
    path = plot_explanation(sec.data, folder / "explain.png", title=f"{title}: what each factor does")
    return Figure("explain", str(path), "What each factor does",
                  "Left: effects with 90% intervals; right: shares of a call's log-latency variance.")


_DRAW = {"latency": latency_figure, "quality": quality_figure, "heatmap": heatmap_figure,
         "validation": validation_figure, "whatif": whatif_figure, "model": model_figure,
         "explain": explain_figure}
