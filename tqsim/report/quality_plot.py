"""The ``tqsim quality --plot`` figure: Q@T-versus-threshold bands (min–max over passes, mean line)."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (after choosing the file-only backend)

from tqsim.plotting import plain_log_labels, save_figure  # noqa: E402


def plot_quality_bands(curves: list[dict], path: Path, *, marks: dict[str, list[float]] | None = None,
                       title: str = "") -> Path:
    """One panel, one band per configuration; dotted verticals at each config's reported thresholds."""
    fig, ax = plt.subplots(figsize=(7.5, 4.5), constrained_layout=True)
    for i, c in enumerate(curves):
        color = f"C{i % 10}"
        ms = [t * 1e3 for t in c["threshold_s"]]
        ax.fill_between(ms, c["min"], c["max"], color=color, alpha=0.25, linewidth=0)
        ax.plot(ms, c["mean"], color=color, label=c["config_id"])
        for tau in (marks or {}).get(c["config_id"], []):
            ax.axvline(tau * 1e3, color=color, linestyle=":", linewidth=0.8)
    ax.set_xscale("log")
    plain_log_labels(ax.xaxis)
    ax.set_xlabel("threshold τ (ms)")
    ax.set_ylabel("Q@T (band: min–max over passes; line: mean)")
    ax.set_ylim(-0.02, 1.02)
    ax.set_title(title or "Quality at deadline")
    ax.legend(fontsize="small", loc="lower right")
    path = Path(path)
    save_figure(fig, path, dpi=120)
    plt.close(fig)
    return path
