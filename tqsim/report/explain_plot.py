"""The ``tqsim explain --plot`` figure (also the report's): each factor's effects beside the variance split."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (after choosing the file-only backend)

from tqsim.plotting import save_figure  # noqa: E402


def _err(iv: dict, scale: float) -> tuple[float, list[list[float]]]:
    m = iv["median"] * scale
    return m, [[m - iv["lo"] * scale], [iv["hi"] * scale - m]]


def plot_explanation(d: dict, path: Path, *, title: str = "") -> Path:
    """From an explanation's ``as_dict()``: left, a forest plot of the effects (p50 and p99 % change; TQ change
    in pp on its own axis), 90 % intervals; right, each source's share of a call's log-latency variance."""
    effects = d["effects"]
    n = max(len(effects), 1)
    fig, (ax_l, ax_q, ax_v) = plt.subplots(1, 3, figsize=(14, max(3.2, 0.55 * max(n, len(d["variance"])) + 1.8)),
                                           gridspec_kw={"width_ratios": [2.2, 1.2, 1.8]}, layout="constrained")
    ys = list(range(len(effects)))[::-1]
    for y, e in zip(ys, effects):
        for key, dy, color, name in (("p50_change", 0.15, "C0", "p50"), ("p99_change", -0.15, "C1", "p99")):
            m, err = _err(e[key], 100)
            ax_l.errorbar([m], [y + dy], xerr=err, fmt="o", color=color, capsize=3, label=name if y == ys[0] else None)
        m, err = _err(e["tail_quality_change"], 100)
        ax_q.errorbar([m], [y], xerr=err, fmt="s", color="C2", capsize=3)
    for ax in (ax_l, ax_q):
        ax.axvline(0, color="0.5", lw=0.8)
        ax.set_ylim(-0.7, n - 0.3)
        ax.grid(axis="x", alpha=0.3)
    ax_l.set_yticks(ys, [e["label"] for e in effects])
    ax_q.set_yticks(ys, [""] * len(ys))
    ax_l.set_xlabel("change of a run's p50 / p99 (%)")
    ax_l.legend(fontsize=8, loc="best")
    ax_q.set_xlabel(f"change of TQ_{d['tail_q']:g} (pp)\nat {d['threshold_s'] * 1e3:.3g} ms")
    ax_l.set_title("effects, 90% intervals", fontsize=9)
    ax_q.set_title("tail quality", fontsize=9)
    shares = d["variance"]
    yv = list(range(len(shares)))[::-1]
    for y, s in zip(yv, shares):
        m, err = _err(s["share"], 100)
        ax_v.barh([y], [m], color="C4", alpha=0.6)
        ax_v.errorbar([m], [y], xerr=err, fmt="none", color="k", capsize=3)
    ax_v.set_yticks(yv, [s["label"] for s in shares], fontsize=8)
    ax_v.set_xlim(0, 100)
    ax_v.set_xlabel("share (%), 90% interval")
    ax_v.set_title(f"a call's log-latency variance\nat {d['base_id']}, by source", fontsize=9)
    ax_v.grid(axis="x", alpha=0.3)
    inter = d.get("interaction")
    head = title or f"{d['workload']} on {d['system']}: what each factor does"
    if inter:
        r = inter["p99_ratio_of_ratios"]
        head += f"\ninteraction, {inter['label']}: p99 × {r['median']:.2f} [{r['lo']:.2f}, {r['hi']:.2f}]"
    fig.suptitle(head, fontsize=10)
    path = Path(path)
    save_figure(fig, path, dpi=120)
    plt.close(fig)
    return path
