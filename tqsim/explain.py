"""``tqsim explain``: what each factor does to latency and tail quality, and where a call's variance comes from.

An **effect** moves one factor from the base level to another, every other factor held at the base, and reports
the change of a run's p50 and p99 (a ratio) and of its tail quality at one deadline (a difference). Each is a
contrast of two forecasts computed with common random numbers (Law & Kelton, *Simulation Modeling and
Analysis*): per posterior draw the configurations' levels and shapes are drawn jointly
(:meth:`~tqsim.models.conditional.Conditional.joint`), the run shares one new session and one random stream, so
the contrast carries the factor's effect and its posterior uncertainty, not the noise of two independent
simulations. The **interaction** of batch size and threads is a ratio of two such ratios. The **variance
decomposition** splits a call's log latency at the base into the model's sources per posterior draw (Gelman
2005's finite-population variance components); the share of machine-wide round episodes, which the model folds
into the pass level, is estimated from the calibration by the method of moments. docs/method.md, "Explaining the
factors".
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

import numpy as np

from tqsim.errors import UserError
from tqsim.factors import FACTORS, Config, parse_level
from tqsim.forecast import (Interval, _qf, call_offsets, check_run_options, fit_warnings, partial_batch_shift,
                            quantile_draws, scoring_of_config, simulate_latency, within_pass_u)
from tqsim.models.store import FittedModel
from tqsim.quality import INTERVAL, parse_threshold, quality_at_deadline, tail_quality

NUMERIC = ("batch_size", "threads")
NAMES = {"batch_size": "batch", "threads": "threads", "precision": "precision", "backend": "backend",
         "device": "device", "compile": "compile"}
# the variance decomposition's Monte Carlo: a quadrature grid for the pass and first-batch quantile functions,
# simulated passes of calls (with their slow share) for the within-pass one
GRID = 2000
VAR_PASSES, VAR_CALLS = 100, 100
N_BOOT = 200
SOURCES = (("session", "between sessions"),
           ("round", "between rounds (machine-wide episodes)"),
           ("pass", "pass level"),
           ("position", "batch position (first / partial batch)"),
           ("slow", "slow calls (above the within-pass 0.9 quantile)"),
           ("body", "body of the calls (below the 0.9 quantile)"),
           ("size", "instance size"))


# ------------------------------------------------------------------------------------------------
# results
# ------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Effect:
    """Moving ``factor`` from ``frm`` to ``to`` (``config_from`` → ``config_to``): the relative change of a run's
    p50 and p99 (``p50``, ``p99``: ratio − 1 per draw) and the change of TQ_q at the deadline (``tq``: a
    difference, as a fraction; ×100 for percentage points)."""

    factor: str
    frm: Any
    to: Any
    label: str
    config_from: Config
    config_to: Config
    p50: Interval
    p99: Interval
    tq: Interval
    explicit: bool = False

    def as_dict(self) -> dict:
        return {"factor": self.factor, "from": self.frm, "to": self.to, "label": self.label,
                "from_config": self.config_from.id, "to_config": self.config_to.id, "explicit": self.explicit,
                "p50_change": self.p50.as_dict(), "p99_change": self.p99.as_dict(),
                "tail_quality_change": self.tq.as_dict()}


@dataclass(frozen=True)
class Interaction:
    """Batch size × threads: the threads contrast's p99 (and p50) ratio at the larger batch size divided by that
    at the smaller one; 1 means the two factors act independently (multiplicatively)."""

    label: str
    batch_sizes: tuple[int, int]
    threads: tuple[int, int]
    p99: Interval
    p50: Interval

    def as_dict(self) -> dict:
        return {"label": self.label, "batch_sizes": list(self.batch_sizes), "threads": list(self.threads),
                "p99_ratio_of_ratios": self.p99.as_dict(), "p50_ratio_of_ratios": self.p50.as_dict()}


@dataclass(frozen=True)
class Share:
    """One source of a call's log-latency variance at the base: its share of the total (per draw, the shares
    sum to 1) and its variance (log seconds squared)."""

    source: str
    label: str
    share: Interval
    variance: Interval

    def as_dict(self) -> dict:
        return {"source": self.source, "label": self.label, "share": self.share.as_dict(),
                "variance": self.variance.as_dict()}


@dataclass(frozen=True)
class RoundShare:
    """The machine-wide round component's share of the pass-level variance, from a campaign (method of moments;
    ``draws``: a bootstrap over rounds)."""

    estimate: float
    lo: float
    hi: float
    draws: np.ndarray
    n_rounds: int
    n_configs: int

    def as_dict(self) -> dict:
        return {"estimate": self.estimate, "lo": self.lo, "hi": self.hi, "rounds": self.n_rounds,
                "configs": self.n_configs}


@dataclass
class Explanation:
    """What each factor does around ``base``; ``as_dict()`` is the ``tqsim explain --json`` object."""

    system: str
    workload: str
    base: Config
    threshold: str
    threshold_s: float
    tail_q: float
    effects: list[Effect]
    interaction: Interaction | None
    variance: list[Share]
    round_share: RoundShare | None
    base_latency: dict[str, Interval]          # p50, p99 of a run at the base
    base_tail: Interval                         # TQ_q at the deadline at the base
    metric: str
    passes_per_run: int
    n_draws: int
    notes: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    def as_dict(self) -> dict:
        return {"system": self.system, "workload": self.workload, "base": self.base.as_dict(),
                "base_id": self.base.id, "interval": INTERVAL, "threshold": self.threshold,
                "threshold_s": self.threshold_s, "tail_q": self.tail_q, "metric": self.metric,
                "base_latency_s": {k: v.as_dict() for k, v in self.base_latency.items()},
                "base_tail_quality": self.base_tail.as_dict(),
                "effects": [e.as_dict() for e in self.effects],
                "interaction": self.interaction.as_dict() if self.interaction else None,
                "variance": [s.as_dict() for s in self.variance],
                "round_share": self.round_share.as_dict() if self.round_share else None,
                "passes_per_run": self.passes_per_run, "draws": self.n_draws, "notes": list(self.notes),
                "warnings": list(self.warnings)}

    def to_dict(self) -> dict:
        """The JSON contract of ``tqsim explain --json`` (the same object as :meth:`as_dict`)."""
        return self.as_dict()


# ------------------------------------------------------------------------------------------------
# the base point and the contrasts
# ------------------------------------------------------------------------------------------------

def parse_at(texts: Sequence[str] | None) -> dict[str, tuple]:
    """``["threads=2", "batch_size=8,32"]`` → ``{"threads": (2,), "batch_size": (8, 32)}``: a base level, or a
    contrast A → B. Malformed text, an unknown factor or level, and a factor given twice are refused."""
    out: dict[str, tuple] = {}
    for text in texts or []:
        if "=" not in text:
            raise UserError(f"--at {text}: write FACTOR=VALUE (the base level) or FACTOR=A,B (the contrast A → B), "
                            "e.g. --at batch_size=8 --at threads=1,2.")
        factor, _, values = str(text).partition("=")
        factor = factor.strip().replace("-", "_")
        parts = [v.strip() for v in values.split(",")]
        if not 1 <= len(parts) <= 2 or "" in parts:
            raise UserError(f"--at {text}: give one value (the base level) or two (the contrast A,B), "
                            "e.g. --at threads=1,2.")
        try:
            levels = tuple(parse_level(factor, v) for v in parts)
        except UserError as exc:
            raise UserError(f"--at {text}: {exc}") from None
        if factor in out:
            raise UserError(f"--at gives {factor} twice; give each factor once (FACTOR=VALUE or FACTOR=A,B).")
        if len(levels) == 2 and levels[0] == levels[1]:
            raise UserError(f"--at {text}: a contrast needs two different levels, e.g. --at {factor}=A,B.")
        out[factor] = levels
    return out


def _at_mapping(at) -> dict[str, tuple]:
    """``at`` as parsed ``{factor: (level,) or (A, B)}``: CLI-style strings, or a mapping of levels / pairs."""
    if at is None:
        return {}
    if isinstance(at, str):
        return parse_at([at])
    if not isinstance(at, Mapping):
        return parse_at(list(at))
    texts = []
    for factor, v in at.items():
        levels = v if isinstance(v, (tuple, list)) else (v,)
        texts.append(f"{factor}=" + ",".join(str(x) for x in levels))
    return parse_at(texts)


def calibrated_levels(fm: FittedModel) -> dict[str, list]:
    """Each factor's calibrated levels: numbers in order; categorical ones with the reference level first."""
    out: dict[str, list] = {}
    for f in FACTORS:
        seen = {c[f] for c in fm.configs}
        if f in NUMERIC:
            out[f] = sorted(int(v) for v in seen)
        else:
            ref = [parse_level(f, v) for v in fm.spec.levels.get(f, [])] or sorted(seen, key=str)
            out[f] = [v for v in ref if v in seen] + sorted((v for v in seen if v not in ref), key=str)
    return out


def centre_level(levels: list[int]) -> int:
    """The calibrated level nearest (in log) the geometric centre of the calibrated ones; ties go to the lower."""
    g = sum(math.log(v) for v in levels) / len(levels)
    return min(levels, key=lambda v: (round(abs(math.log(v) - g), 9), v))


def _check_level(factor: str, value, levels: list) -> None:
    if factor in NUMERIC:
        lo, hi = levels[0], levels[-1]
        if not lo <= value <= hi:
            where = f"at {lo} only" if lo == hi else f"over {lo}–{hi}"
            raise UserError(f"--at {factor}={value}: {factor} was calibrated {where}; explain stays inside the "
                            "calibrated range (the model interpolates), so choose a value there.")
    elif value not in levels:
        raise UserError(f"--at {factor}={value}: never calibrated (calibrated: {', '.join(map(str, levels))}); "
                        f"choose one of those, or calibrate it with `tqsim calibrate --grid {factor}={value}`.")


def _label(factor: str, a, b, base: Config, varied: list[str]) -> str:
    context = [f"{NAMES[f]} {getattr(base, f)}" for f in ("batch_size", "threads") if f != factor and f in varied]
    context += [f"{f} {getattr(base, f)}" for f in FACTORS if f not in NUMERIC and f != factor and f in varied]
    return f"{NAMES[factor]} {a} → {b}" + (f" at {', '.join(context)}" if context else "")


def design(fm: FittedModel, at=None) -> tuple[Config, list[tuple[str, Any, Any, bool]], list[str]]:
    """The base configuration and the contrasts ``(factor, from, to, explicit)`` to explain, with notes on the
    contrasts left out. Defaults: docs/method.md, "Explaining the factors"."""
    wanted = _at_mapping(at)
    levels = calibrated_levels(fm)
    for factor, vals in wanted.items():
        for v in vals:
            _check_level(factor, v, levels[factor])
    values = {}
    for f in FACTORS:
        if f in wanted:
            values[f] = wanted[f][0]
        elif f in NUMERIC:
            values[f] = centre_level(levels[f])
        else:
            values[f] = levels[f][0]
    base = Config.from_mapping(values)
    try:
        scoring_of_config(fm, base)
    except UserError as exc:
        raise UserError(f"the base {base.id}: {exc} Choose calibrated levels with --at.") from None
    varied = [f for f in FACTORS if len(levels[f]) > 1]
    contrasts, notes = [], []
    for f in FACTORS:
        v = values[f]
        if f in wanted and len(wanted[f]) == 2:
            contrasts.append((f, v, wanted[f][1], True))
        elif f not in varied:
            continue
        elif f in NUMERIC:
            up = [x for x in levels[f] if x > v]
            contrasts.append((f, v, up[0] if up else max(x for x in levels[f] if x < v), False))
        else:
            contrasts += [(f, v, x, False) for x in levels[f] if x != v]
    kept = []
    for f, a, b, explicit in contrasts:
        try:
            scoring_of_config(fm, base.replace(**{f: b}))
        except UserError as exc:
            if explicit:
                raise UserError(f"--at {f}={a},{b}: {exc}") from None
            notes.append(f"{f} {a} → {b} left out: the quality of {base.replace(**{f: b}).id} is unknown (its "
                         "quality-relevant levels were never calibrated together); choose another base with --at.")
            continue
        kept.append((f, a, b, explicit))
    return base, kept, notes


# ------------------------------------------------------------------------------------------------
# the round share (from the calibration campaign)
# ------------------------------------------------------------------------------------------------

def round_share(campaign, *, n_boot: int = N_BOOT, seed: int = 0) -> RoundShare | None:
    """The share of the pass-level variance that machine-wide round episodes explain, from a campaign.

    Per configuration, each pass's deviation from its session's median level (centred on the configuration's
    mean). The round component's variance is the average product of the deviations of two *different*
    configurations measured in the same round (a method-of-moments covariance component, Searle, Casella &
    McCulloch 1992), clipped at 0; its share is that over the configurations' average variance, clipped to
    [0, 1]. Interval: a bootstrap over rounds. ``None`` when fewer than 3 rounds hold two configurations."""
    from tqsim.models.summaries import pass_deviations

    parts = pass_deviations(campaign)
    rounds = np.unique(np.concatenate([r for r, _ in parts])) if parts else np.array([], np.int64)
    X = np.full((rounds.size, len(parts)), np.nan)
    for c, (r, dev) in enumerate(parts):
        if dev.size:
            X[np.searchsorted(rounds, r), c] = dev - dev.mean()
    present = np.isfinite(X)
    n_r = present.sum(axis=1)
    if int((n_r >= 2).sum()) < 3:
        return None
    x = np.where(present, X, 0.0)
    pair_sum = x.sum(axis=1) ** 2 - (x ** 2).sum(axis=1)              # Σ_{c≠c'} x_c x_c' per round
    pairs = (n_r * (n_r - 1)).astype(float)

    def share(w: np.ndarray) -> np.ndarray:                            # w [B, rounds]: round weights
        cov = (w @ pair_sum) / np.maximum(w @ pairs, 1e-300)
        var = (w @ x ** 2) / np.maximum(w @ present.astype(float), 1e-300)   # [B, config]
        return np.clip(np.maximum(cov, 0.0) / np.maximum(var.mean(axis=1), 1e-300), 0.0, 1.0)

    est = float(share(np.ones((1, rounds.size)))[0])
    rng = np.random.default_rng(seed)
    boot = share(rng.multinomial(rounds.size, np.full(rounds.size, 1 / rounds.size), size=n_boot).astype(float))
    a = (1 - INTERVAL) / 2
    return RoundShare(est, float(np.quantile(boot, a)), float(np.quantile(boot, 1 - a)), boot, int(rounds.size),
                      len(parts))


# ------------------------------------------------------------------------------------------------
# the variance decomposition at the base
# ------------------------------------------------------------------------------------------------

def _split(values: np.ndarray, groups: Sequence[np.ndarray]) -> tuple[np.ndarray, list[tuple]]:
    """Per draw (axis 0), the mean of ``values`` and, per group mask, ``(share, mean, variance)``."""
    total = values.shape[1]
    m = values.mean(axis=1)
    out = []
    for g in groups:
        n = g.sum(axis=1)
        p = n / total
        mg = np.where(g, values, 0.0).sum(axis=1) / np.maximum(n, 1)
        vg = np.where(g, (values - mg[:, None]) ** 2, 0.0).sum(axis=1) / np.maximum(n, 1)
        out.append((p, mg, vg))
    return m, out


def variance_components(fm: FittedModel, cond, config: Config, shapes: dict[str, np.ndarray],
                        rng: np.random.Generator, rounds: RoundShare | None) -> dict[str, np.ndarray]:
    """``{source: [D]}``: the variance of a call's log latency in a run of ``config`` in a new session, split by
    source per posterior draw (log seconds²); the sources sum to the total. docs/method.md."""
    from tqsim.data.schema import batch_layout, level_batches
    from tqsim.models.conditional import session_config_sd
    from tqsim.models.summaries import SLOW_U, batch_size_covariate

    D = cond.D
    S = max(int(fm.summaries.sessions.size), 1)
    out = {"session": cond.post["session_sd"] ** 2 * (1 + 1 / S) + session_config_sd(cond.post) ** 2}
    grid = np.broadcast_to((np.arange(GRID) + 0.5) / GRID, (D, GRID))
    pass_qf = _qf(shapes, "pass", fixed={0.5: 0.0})
    v_pass = quantile_draws(*pass_qf, grid).var(axis=1) if pass_qf else np.zeros(D)
    if rounds is not None:
        rho = rounds.draws[np.arange(D) % rounds.draws.size]
        out["round"], out["pass"] = rho * v_pass, (1 - rho) * v_pass
    else:
        out["pass"] = v_pass
    # within a pass: the body and the slow calls (law of total variance over the two groups)
    u = within_pass_u(shapes.get("slow:sd"), D, VAR_PASSES, VAR_CALLS, rng).reshape(D, -1)
    w = call_offsets(shapes, u)
    m_w, ((p_b, m_b, v_b), (p_s, m_s, v_s)) = _split(w, [u < SLOW_U, u >= SLOW_U])
    v_w = p_b * v_b + p_s * v_s + p_b * (m_b - m_w) ** 2 + p_s * (m_s - m_w) ** 2
    body, slow = p_b * v_b, v_w - p_b * v_b
    # positions: the first batch (its own quantile function), the partial last batch, each batch's size term
    n, bs = int(fm.n_instances), int(config.batch_size)
    batch = batch_layout(n, bs)
    counts = np.bincount(batch)
    nb = counts.size
    lb = level_batches(counts, bs)
    first_qf = _qf(shapes, "first")
    has_first = first_qf is not None and lb.size > 0 and lb[0] > 0
    c = np.zeros((D, nb))
    size_var = np.zeros(D)
    if "size:slope" in shapes and fm.instance_size is not None and fm.spec.size_sd > 0:
        z = batch_size_covariate(fm.instance_size, batch, fm.spec.size_mean, fm.spec.size_sd)
        c += shapes["size:slope"][:, None] * (z - np.median(z[lb]))[None, :]
        size_var = shapes["size:slope"] ** 2 * z[int(has_first):].var()
    if counts[-1] < bs:
        c[:, -1] += partial_batch_shift(cond, config, int(counts[-1]))
    rest = c[:, int(has_first):]
    a = 1.0 / nb if has_first else 0.0
    var_c, m_rest = rest.var(axis=1), m_w + rest.mean(axis=1)
    position = (1 - a) * (var_c - size_var)
    if has_first:
        f = quantile_draws(*first_qf, grid)
        position = position + a * f.var(axis=1) + a * (1 - a) * (f.mean(axis=1) - m_rest) ** 2
    out.update(position=position, slow=(1 - a) * slow, body=(1 - a) * body)
    if size_var.any():
        out["size"] = (1 - a) * size_var
    return out


# ------------------------------------------------------------------------------------------------
# explain
# ------------------------------------------------------------------------------------------------

def _interaction(stats: dict, base: Config, batches: tuple[int, int], threads: tuple[int, int]) -> Interaction:
    """The threads contrast's ratio (p99, p50) at the larger batch size over that at the smaller, per draw."""
    t0, t1 = threads
    ratio = {b: [stats[base.replace(batch_size=b, threads=t1)][i] / stats[base.replace(batch_size=b, threads=t0)][i]
                 for i in (0, 1)] for b in batches}
    lo, hi = sorted(batches)
    return Interaction(f"threads {t0} → {t1}: ratio at batch {hi} ÷ ratio at batch {lo}", (lo, hi), (t0, t1),
                       Interval.of(ratio[hi][1] / ratio[lo][1]), Interval.of(ratio[hi][0] / ratio[lo][0]))


def explain(fm: FittedModel, at=None, threshold=None, *, tail_q: float = 0.01,
            n_draws: int = 200, n_passes: int = 100, seed: int = 0, campaign=None,
            force: bool = False) -> Explanation:
    """What each factor calibrated at two or more levels does around a base configuration.

    ``at``: ``{"batch_size": 8, "threads": (1, 2)}`` or CLI-style ``["batch_size=8", "threads=1,2"]``: a base
    level, or a contrast A → B. ``threshold``: the deadline of tail quality (seconds, ``"2ms"``, or ``"p99"``:
    that percentile of the base's forecast latency, posterior median; the default). ``campaign``: the
    calibration (``tqsim.data.io.load_campaign``), for the round share; without it rounds stay in the pass
    level. Runs of ``n_passes`` passes, ``n_draws`` posterior draws, in a new session."""
    from tqsim.models.conditional import conditional, session_offset

    check_run_options(n_passes, n_draws, tail_q)
    th = parse_threshold(threshold if threshold is not None else "p99")
    warns = fit_warnings(fm, force)
    base, contrasts, notes = design(fm, at)
    warns += fm.spec.check_forecastable(base)     # refuses a categorical level never calibrated
    if fm.summaries.sessions.size < 2:
        warns.append("the calibration holds one session, so the share between sessions comes from the prior "
                     "(assumed, not measured); `tqsim calibrate --sessions 3 --gap 5min` measures it.")
    ends = {(f, b): base.replace(**{f: b}) for f, _, b, _ in contrasts}
    by_factor = {f: (a, b) for f, a, b, _ in contrasts}
    corner = None
    if "batch_size" in by_factor and "threads" in by_factor:
        corner = base.replace(batch_size=by_factor["batch_size"][1], threads=by_factor["threads"][1])
    configs = list(dict.fromkeys([base, *ends.values(), *([corner] if corner else [])]))
    cond = conditional(fm, n_draws)
    rng = np.random.default_rng([seed, 1])
    mu, shapes = cond.joint(configs, rng)
    session = session_offset(fm, cond.post, rng)
    stats: dict[Config, tuple[np.ndarray, np.ndarray, np.ndarray]] = {}
    tau = th.seconds
    for k, cfg in enumerate(configs):   # the base first: a percentile deadline is the base's
        state = (mu[:, k], {name: v[:, k] for name, v in shapes.items()})
        lat, _ = simulate_latency(fm, cfg, n_passes=n_passes, n_draws=n_draws, seed=seed, session=session,
                                  state=state)
        flat = lat.reshape(lat.shape[0], -1)
        p50, p99 = np.percentile(flat, [50, 99], axis=1)
        if tau is None:
            tau = float(np.median(np.percentile(flat, th.percentile, axis=1)))
        qat = quality_at_deadline(lat, np.array([tau]), metric=fm.quality_metric, **scoring_of_config(fm, cfg))
        stats[cfg] = (p50, p99, tail_quality(qat[:, :, 0], tail_q))
        del lat, flat, qat
    varied = [f for f, lv in calibrated_levels(fm).items() if len(lv) > 1]
    effects = []
    for f, a, b, explicit in contrasts:
        s0, s1 = stats[base], stats[ends[(f, b)]]
        effects.append(Effect(f, a, b, _label(f, a, b, base, varied), base, ends[(f, b)],
                              Interval.of(s1[0] / s0[0] - 1), Interval.of(s1[1] / s0[1] - 1),
                              Interval.of(s1[2] - s0[2]), explicit))
    interaction = _interaction(stats, base, by_factor["batch_size"], by_factor["threads"]) if corner else None
    rounds = round_share(campaign, seed=seed) if campaign is not None else None
    if campaign is None:
        notes.append("without the calibration campaign, machine-wide round episodes cannot be told from the pass "
                     "level: they stay inside it.")
    elif rounds is None:
        notes.append("the calibration has too few rounds holding two configurations to separate round episodes "
                     "from the pass level; they stay inside it.")
    base_state = {name: v[:, 0] for name, v in shapes.items()}
    parts = variance_components(fm, cond, base, base_state, np.random.default_rng([seed, 2]), rounds)
    total = sum(parts.values())
    labels = dict(SOURCES)
    if rounds is None:
        labels["pass"] = "pass level (round episodes included)"
    variance = [Share(k, labels[k], Interval.of(parts[k] / total), Interval.of(parts[k])) for k, _ in SOURCES
                if k in parts]
    p50, p99, tq = stats[base]
    return Explanation(system=fm.system, workload=fm.workload, base=base, threshold=th.text, threshold_s=float(tau),
                       tail_q=tail_q, effects=effects, interaction=interaction, variance=variance,
                       round_share=rounds, base_latency={"p50": Interval.of(p50), "p99": Interval.of(p99)},
                       base_tail=Interval.of(tq), metric=fm.quality_metric, passes_per_run=int(n_passes),
                       n_draws=int(cond.D), notes=notes, warnings=warns)


def explain_workspace(home=None, system: str | None = None, workload: str | None = None, **options) -> Explanation:
    """``tqsim explain``: :func:`explain` on the workspace's saved fit of ``<system>/<workload>``."""
    from tqsim.models.store import load_from_workspace

    return explain_in_workspace(load_from_workspace(home, system, workload), home, **options)


def explain_in_workspace(fm: FittedModel, home=None, **options) -> Explanation:
    """:func:`explain` with the calibration campaign of the workspace at ``home`` for the round share; when its
    files are gone (or unreadable), rounds stay in the pass level and a note says why."""
    from tqsim.data.io import load_campaign
    from tqsim.data.workspace import Workspace

    folder = Workspace.at(home).calibration_dir(fm.system, fm.workload)
    try:
        campaign, why = load_campaign(folder, workload=fm.workload), ""
    except UserError as exc:
        campaign, why = None, str(exc)
    out = explain(fm, campaign=campaign, **options)
    if why:
        out.notes.append(f"the calibration could not be read ({why}), so round episodes stay in the pass level.")
    return out
