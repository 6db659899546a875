"""Axis formatting shared by every figure: log axes labelled 0.5, 1, 2, 5, 10 rather than 5×10⁻¹."""

from __future__ import annotations


def plain_log_labels(axis) -> None:
    """Label a log-scaled matplotlib axis (``ax.xaxis``, ``ax.yaxis``, a colorbar's) with plain numbers:
    every decade, and the 2s and 5s between them."""
    from matplotlib import ticker

    axis.set_major_formatter(ticker.FuncFormatter(lambda v, _: f"{v:g}"))
    axis.set_minor_formatter(ticker.FuncFormatter(lambda v, _: f"{v:g}" if f"{v:.0e}"[0] in "25" else ""))
