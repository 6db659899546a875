"""The machine's state in a session the fit never saw, read from anchors: calibrated configurations
measured again (by ``tqsim check``, or present in a held-out workspace).

A new session's level relative to the calibration's average is ``δ ~ N(0, σ_session²·(1 + 1/S))``
a priori. An anchor measured in that session gives ``m̂ − μ_anchor = δ + N(0, se²)`` (``μ_anchor``
its calibrated level, a posterior draw; ``se`` the standard error of its median pass level; with two or more
calibrated sessions σ_sc², the anchor's own move in that session, joins se²), so per
posterior draw δ has a conjugate normal posterior; anchors combine by precision. Forecasts that
take these draws are *conditioned on the machine state* instead of drawing a fresh session.
"""

from __future__ import annotations

import math
from statistics import NormalDist

import numpy as np

from tqsim.errors import UserError
from tqsim.factors import Config
from tqsim.models.conditional import conditional, session_config_sd
from tqsim.models.summaries import robust_sd
from tqsim.quality import INTERVAL

SE_FLOOR = 0.005
LEGACY_SESSION = 0


def level_se(levels: np.ndarray) -> float:
    """Standard error of the median of a few pass levels (1.2533·σ/√n, σ from the MAD)."""
    x = np.asarray(levels, float)
    if x.size < 2:
        return 0.1
    return max(1.2533 * robust_sd(x) / math.sqrt(x.size), SE_FLOOR)


def anchor_offsets(fm, anchors: list[tuple[Config, np.ndarray]], *, n_draws: int = 200,
                   seed: int = 0) -> np.ndarray:
    """``[D]`` posterior draws of the session offset δ given anchors ``(config, pass levels)``."""
    known = {c["id"] for c in fm.configs}
    anchors = [(c, np.asarray(lv, float)) for c, lv in anchors if c.id in known and len(lv)]
    if not anchors:
        raise UserError("no anchor is a calibrated configuration of this fit; check a calibrated configuration.")
    rng = np.random.default_rng(seed)
    cond = conditional(fm, n_draws)
    mu = cond.level([c for c, _ in anchors], noise=True, rng=rng)                     # [D, A]
    obs = np.array([np.median(lv) for _, lv in anchors])
    # an anchor's level also carries its own move in this session (σ_sc), not the machine's
    sc2 = session_config_sd(cond.post)[:, None] ** 2
    w = 1.0 / (np.array([level_se(lv) ** 2 for _, lv in anchors])[None, :] + sc2)    # [D, A]
    est = ((obs[None, :] - mu) * w).sum(axis=1) / w.sum(axis=1)                       # [D]
    se2 = 1.0 / w.sum(axis=1)
    S = max(int(fm.summaries.sessions.size), 1)
    v0 = cond.post["session_sd"] ** 2 * (1 + 1 / S)
    shrink = v0 / (v0 + se2)
    return shrink * est + np.sqrt(shrink * se2) * rng.standard_normal(est.shape)


def session_offsets_of(fm, sessions: np.ndarray, *, n_draws: int = 200) -> np.ndarray | None:
    """``[D, len(sessions)]``: the fitted effects of sessions the fit saw (relative to their average), or
    None when one of them is not a fitted session."""
    fitted = [int(s) for s in fm.summaries.sessions]
    # id 0 is "written before sessions were recorded": two such files may come from different campaigns
    if not all(int(s) in fitted and int(s) != LEGACY_SESSION for s in sessions):
        return None
    post = conditional(fm, n_draws).post
    idx = [fitted.index(int(s)) for s in sessions]
    D = next(iter(post.values())).shape[0]
    if "session_effect" not in post:
        return np.zeros((D, len(idx)))
    return post["session_effect"][:, idx]


def describe(delta: np.ndarray, fm) -> dict:
    """The offset as a speed relative to the calibration, with a 90 % interval, and whether it lies
    inside the spread of sessions the model knows (measured with ≥ 2 sessions, else assumed)."""
    cond = conditional(fm, delta.shape[0])
    S = max(int(fm.summaries.sessions.size), 1)
    band = NormalDist().inv_cdf((1 + INTERVAL) / 2) * float(np.median(cond.post["session_sd"])) * math.sqrt(1 + 1 / S)
    rel = np.exp(delta) - 1
    lo, med, hi = (float(v) for v in np.quantile(rel, [(1 - INTERVAL) / 2, 0.5, (1 + INTERVAL) / 2]))
    inside = abs(float(np.median(delta))) <= band
    return {"relative_latency": {"median": med, "lo": lo, "hi": hi},
            "drift_band": [math.exp(-band) - 1, math.exp(band) - 1], "inside_drift": bool(inside),
            "drift_measured": S >= 2, "sessions": S}


def sentence(d: dict) -> str:
    """``27 % [21, 33] slower than during calibration: outside the drift seen between sessions``."""
    r = d["relative_latency"]
    word = "slower" if r["median"] >= 0 else "faster"
    sign = 1 if r["median"] >= 0 else -1
    lo, hi = sorted((sign * 100 * r["lo"], sign * 100 * r["hi"]))
    seen = "seen between sessions" if d["drift_measured"] else "assumed between sessions (one calibrated session)"
    where = "inside" if d["inside_drift"] else "outside"
    lo_b, hi_b = (100 * v for v in d["drift_band"])
    return (f"{abs(100 * r['median']):.0f} % [{lo:.0f}, {hi:.0f}] {word} than during calibration: {where} the drift "
            f"{seen} ({lo_b:+.0f} % to {hi_b:+.0f} %)")
