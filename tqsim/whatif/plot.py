"""Curves of a what-if sweep: tail quality and p99 against load, one line per replica count."""

from __future__ import annotations

from pathlib import Path


def plot_sweep(out: dict, path: Path) -> Path:
    """Write a two-panel PNG from the ``whatif`` JSON object; bands are the 90% intervals."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from tqsim.plotting import plain_log_labels, save_figure
    from tqsim.whatif.simulator import central

    fig, (ax_q, ax_l) = plt.subplots(1, 2, figsize=(10, 4))
    groups: dict = {}
    for r in out["results"]:
        groups.setdefault((r["replicas"], r["threshold_s"]), []).append(r)
    for (reps, thr), rows in sorted(groups.items()):
        rows.sort(key=lambda r: r["rate_rps"])
        x = [r["rate_rps"] for r in rows]
        label = f"{reps} replica(s), deadline {thr * 1e3:g} ms"
        tq = [r["tail_quality"] for r in rows]
        line, = ax_q.plot(x, [central(t) for t in tq], marker="o", label=label)
        ax_q.fill_between(x, [t["lo"] for t in tq], [t["hi"] for t in tq], alpha=0.2, color=line.get_color())
        p99 = [r["latency_s"]["p99"] for r in rows]
        ax_l.plot(x, [central(p) * 1e3 for p in p99], marker="o", color=line.get_color(), label=f"{reps} replica(s)")
        ax_l.fill_between(x, [p["lo"] * 1e3 for p in p99], [p["hi"] * 1e3 for p in p99], alpha=0.2,
                          color=line.get_color())
        ax_l.axhline(thr * 1e3, ls=":", color=line.get_color(), lw=1)
    ax_q.set(xlabel="arrival rate (requests/s)", ylabel="tail quality", title="tail quality vs load")
    # A flat curve must read as flat: at least 5 points of quality in view, no offset notation.
    shown = [v for r in out["results"] for v in (r["tail_quality"]["lo"], r["tail_quality"]["hi"])]
    if max(shown) - min(shown) < 0.05:
        ax_q.set_ylim(max(max(shown) - 0.05, 0.0), min(max(shown) + 0.01, 1.0))
    ax_q.ticklabel_format(axis="y", useOffset=False, style="plain")
    ax_l.set(xlabel="arrival rate (requests/s)", ylabel="p99 end-to-end latency (ms)", title="p99 vs load",
             yscale="log")
    plain_log_labels(ax_l.yaxis)
    ax_q.legend(fontsize=8)
    ax_l.legend(fontsize=8)
    fig.suptitle(f"{out['workload']} on {out['system']} (bands: 90% intervals)")
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_figure(fig, path, dpi=110)
    plt.close(fig)
    return path
