"""Axis formatting shared by every figure: log axes labelled 0.5, 1, 2, 5, 10 rather than 5×10⁻¹."""

from __future__ import annotations


def plain_log_labels(axis) -> None:
    """Label a log-scaled matplotlib axis (``ax.xaxis``, ``ax.yaxis``, a colorbar's) with plain numbers:
    every decade, and the 2s and 5s between them."""
    from matplotlib import ticker

    axis.set_major_formatter(ticker.FuncFormatter(lambda v, _: f"{v:g}"))
    axis.set_minor_formatter(ticker.FuncFormatter(lambda v, _: f"{v:g}" if f"{v:.0e}"[0] in "25" else ""))


def save_figure(fig, path, **kw) -> None:
    """``fig.savefig`` under a temporary name, then renamed: a kill never leaves half a PNG under the real name."""
    from pathlib import Path

    from tqsim.data.io import replacing

    path = Path(path)
    with replacing(path) as tmp:
        fig.savefig(tmp, format=path.suffix.lstrip(".").lower() or "png", **kw)
