"""Which configurations to measure next: the expected shrinkage of the forecasts' uncertainty over a target set.

Given a fit, every configuration-level quantity the forecast of p99 rests on (the level μ_c and the upper
quantiles of the pass, within-pass and first-batch quantile functions) is a Gaussian process, conditionally
on each posterior draw. Measuring configuration c with n more passes adds an observation of each with a
standard error that n sets; the posterior variance of every target x then falls by
``Σ(x, c)² / (Σ(c, c) + s_c²)`` whatever value is observed. Summed over the targets and averaged over the
posterior draws, this is the ALC criterion (Cohn 1996; Seo et al. 2000; Gramacy & Lee 2009). Beyond the
calibrated batch sizes the forecast also carries the extrapolation discrepancy (conditional.py); measuring a
configuration that widens the range removes it for the targets it brings inside. Choices and definitions:
docs/method.md, "Choosing what to measure".
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Sequence

import numpy as np

from tqsim.errors import UserError
from tqsim.factors import FACTORS, Config, parse_level
from tqsim.models.pymc_backend import noise_sd
from tqsim.models.spec import CATEGORICAL
from tqsim.models.summaries import MIN_BEYOND_PASS, MIN_BEYOND_WITHIN, knot

DESIGN_DRAWS = 50
FD_DRAWS, FD_PASSES = 40, 20   # the runs that weigh each quantile's part in p99
CALL_KINDS = ("within", "stall")   # summaries read from calls (level batches), not from passes
STEP = 0.05   # log units: the finite difference that weighs a quantile's part in log p99


# --------------------------------------------------------------------------------------------------
# The target set
# --------------------------------------------------------------------------------------------------

def parse_target(text: str, *, calibrated: Sequence[Config] = (), n_instances: int | None = None) -> list[Config]:
    """``'batch_size=1..256,threads=1,2,4'`` → the configurations of that grid. ``a..b`` (batch size and threads)
    is a, 2a, 4a, ... up to b (b included); a factor not named takes its calibrated levels (its default when
    nothing is calibrated). Every level is checked; a batch larger than the evaluation set is refused."""
    if not text or not text.strip():
        raise UserError("--target is empty; name the configurations you care about, e.g. "
                        "--target 'batch_size=1..256,threads=1,2'.")
    grid: dict[str, list] = {}
    current = None
    for token in (t.strip() for t in text.split(",")):
        if not token:
            continue
        if "=" in token:
            current, _, token = token.partition("=")
            current = current.strip().replace("-", "_")
            if current not in FACTORS:
                raise UserError(f"--target: unknown factor '{current}'; factors are: {', '.join(FACTORS)}.")
            if current in grid:
                raise UserError(f"--target names {current} twice; give its levels once, e.g. {current}=1,2,4.")
            grid[current] = []
        if current is None:
            raise UserError(f"--target '{text}': start with FACTOR=, e.g. --target 'batch_size=1..256,threads=1,2'.")
        grid[current] += _levels(current, token.strip(), text)
    for factor, levels in grid.items():
        if not levels:
            raise UserError(f"--target gives no level for {factor}; e.g. {factor}=1,2.")
    for factor in FACTORS:
        if factor not in grid:
            seen = sorted({getattr(c, factor) for c in calibrated}, key=str)
            grid[factor] = seen or [Config().as_dict()[factor]]
        grid[factor] = list(dict.fromkeys(grid[factor]))
    if n_instances is not None:
        big = [b for b in grid["batch_size"] if b > n_instances]
        if big:
            raise UserError(f"--target batch_size={big[0]} is larger than the evaluation set ({n_instances} instances); "
                            f"use at most {n_instances}.")
    import itertools

    return [Config.from_mapping(dict(zip(FACTORS, combo))) for combo in itertools.product(*(grid[f] for f in FACTORS))]


def _levels(factor: str, token: str, text: str) -> list:
    if ".." not in token:
        return [parse_level(factor, token)] if token else []
    if factor not in ("batch_size", "threads"):
        raise UserError(f"--target {factor}={token}: a range a..b is for batch_size and threads; list the levels of "
                        f"{factor} instead.")
    lo, _, hi = token.partition("..")
    a, b = parse_level(factor, lo), parse_level(factor, hi)
    if a > b:
        raise UserError(f"--target {factor}={token} is empty (it runs downwards); write {factor}={b}..{a}.")
    out = [a]
    while out[-1] * 2 <= b:
        out.append(out[-1] * 2)
    return out + ([b] if out[-1] != b else [])


def check_anchored(targets: list[Config], calibrated: Sequence[Config]) -> None:
    """Refuse a target range no calibrated configuration anchors: for each combination of categorical levels in
    the targets, one calibrated configuration with those levels inside the targets' batch-size × threads span."""
    groups: dict[tuple, list[Config]] = {}
    for t in targets:
        groups.setdefault(tuple(getattr(t, f) for f in CATEGORICAL), []).append(t)
    for levels, members in groups.items():
        bs = [t.batch_size for t in members]
        th = [t.threads for t in members]
        if not any(tuple(getattr(c, f) for f in CATEGORICAL) == levels and min(bs) <= c.batch_size <= max(bs)
                   and min(th) <= c.threads <= max(th) for c in calibrated):
            named = ", ".join(f"{f}={v}" for f, v in zip(CATEGORICAL, levels))
            mid = sorted(bs)[len(bs) // 2]
            raise UserError(f"no calibrated configuration anchors the target batch_size {min(bs)}–{max(bs)} × threads "
                            f"{min(th)}–{max(th)} at {named}; measure one there first (`tqsim calibrate --grid "
                            f"batch_size={mid} --grid threads={min(th)} ...`), or use `tqsim calibrate --adaptive`.")


# --------------------------------------------------------------------------------------------------
# Expected shrinkage
# --------------------------------------------------------------------------------------------------

@dataclasses.dataclass
class Pick:
    """One step of a plan: measure ``config`` for ``passes`` more passes (it has ``passes_before``)."""

    config: Config
    passes: int
    passes_before: int
    reduction: float       # share of the targets' integrated variance this step removes (after earlier steps)
    seconds: float         # expected measuring time (passes, and warm-up when new)

    def as_dict(self) -> dict:
        return {"config": self.config.as_dict(), "config_id": self.config.id, "passes": self.passes,
                "passes_before": self.passes_before, "reduction": self.reduction, "seconds": self.seconds}


class Design:
    """The posterior covariance, over the target configurations, of the level and of the p99 summaries, with
    what measuring any of them would add; :meth:`plan` chooses greedily."""

    def __init__(self, fm, targets: list[Config], *, weights: dict[str, np.ndarray] | None = None,
                 n_draws: int = DESIGN_DRAWS):
        from tqsim.models.conditional import conditional

        self.fm, self.targets = fm, list(targets)
        self.cond = cond = conditional(fm, n_draws)
        summ = fm.summaries
        self.n_instances = int(fm.n_instances)
        passes = {c.id: int(n) for c, n in zip(summ.configs, summ.n_passes)}
        self.passes = np.array([passes.get(t.id, 0) for t in self.targets], float)
        lev_mean, lev_cov = cond.level_moments(self.targets, beyond=False)
        self.level_mean = lev_mean
        # per term: covariance [D, m, m], the sd of one pass's (or call's) worth of data, kind, beyond-range rates
        self.terms: list[dict[str, Any]] = [dict(name="level", cov=lev_cov, unit_sd=_level_unit_sd(summ),
                                                 kind="level", u=0.5, rates=cond.extrapolation_sd)]
        if cond.live.size:
            _, shp_cov = cond.shape_moments(self.targets, beyond=False)
            for name in tracked_blocks(cond.blocks):
                b, row = cond.blocks.index(name), summ.blocks.index(name)
                u = knot(name)
                self.terms.append(dict(name=name, cov=shp_cov[:, b].copy(), kind=name.split(":")[0],
                                       u=0.5 if u is None else u,
                                       unit_sd=_shape_unit_sd(summ, row, name, self.n_instances),
                                       rates={e: float(v[b]) for e, v in cond.shape_extrapolation_sd.items()}))
        self.inflation = cond.loo_inflation()
        for t in self.terms:
            # a GP that misses its held-out configurations by more than it says is trusted less
            t["cov"] = t["cov"] * self.inflation.get(t["name"], 1.0)
            # log p99 per unit of the term, per target (1: the term adds to log p99 as it is)
            # (without weights: 0 for the stalls, whose part in p99 is all or nothing as p99 lies on them or not)
            t["w2"] = np.asarray(weights[t["name"]], float) ** 2 if weights and t["name"] in weights \
                else np.full(len(self.targets), 0.0 if t["name"].startswith("stall:") else 1.0)
        self.range = [math.log(b) for b in fm.spec.batch_range]
        self._seconds = np.exp(np.median(lev_mean, axis=0))  # a level batch's median latency

    # ---- pieces ------------------------------------------------------------------------------
    def _calls(self, i: int, passes: float, kind: str) -> float:
        """Values a summary of target ``i`` is computed from, after ``passes`` passes."""
        if kind not in CALL_KINDS:
            return passes
        return passes * level_batch_count(self.n_instances, self.targets[i].batch_size)

    def _se(self, term: dict, i: int, passes: float) -> float:
        """The standard error of term's summary of target ``i`` after ``passes`` passes (inf: not observed)."""
        if passes <= 0:
            return math.inf
        n = self._calls(i, passes, term["kind"])
        if term["kind"] != "level":
            need = (MIN_BEYOND_WITHIN if term["kind"] in CALL_KINDS else MIN_BEYOND_PASS) / min(term["u"], 1 - term["u"])
            if n < need:
                return math.inf
        return term["unit_sd"] / math.sqrt(n)

    def _added_noise(self, term: dict, i: int, add: int) -> float:
        """The variance of a new observation carrying what ``add`` more passes of target ``i`` add to what its
        passes already said (precisions add; the fit's floor on every summary's error cannot be measured away)."""
        def precision(passes):
            se = self._se(term, i, passes)
            return 0.0 if not math.isfinite(se) else 1.0 / float(noise_sd(se) ** 2)

        gain = precision(self.passes[i] + add) - precision(self.passes[i])
        return math.inf if gain <= 1e-12 else 1.0 / gain

    def _beyond_var(self, term: dict, lo: float, hi: float) -> np.ndarray:
        L = np.array([math.log(t.batch_size) for t in self.targets])
        return (np.maximum(L - hi, 0.0) * term["rates"]["hi"] + np.maximum(lo - L, 0.0) * term["rates"]["lo"]) ** 2

    def integrated_variance(self) -> float:
        """Σ over targets and terms of the posterior variance (averaged over draws), beyond-range error included."""
        return float(sum((t["w2"] * (np.diagonal(t["cov"], axis1=1, axis2=2).mean(0)
                                     + self._beyond_var(t, *self.range))).sum() for t in self.terms))

    def gain(self, i: int, add: int) -> float:
        """The expected fall of the integrated variance if target ``i`` is measured ``add`` more passes."""
        total = 0.0
        L = math.log(self.targets[i].batch_size)
        lo, hi = min(self.range[0], L), max(self.range[1], L)
        for t in self.terms:
            noise = self._added_noise(t, i, add)
            if math.isfinite(noise):
                col = t["cov"][:, :, i]                                                     # [D, m]
                total += float(((col ** 2 * t["w2"]).sum(1) / (col[:, i] + noise)).mean())
            total += float((t["w2"] * (self._beyond_var(t, *self.range) - self._beyond_var(t, lo, hi))).sum())
        return total

    def measure(self, i: int, add: int) -> None:
        """Condition on a (hypothetical) measurement: the variance update does not depend on its value."""
        for t in self.terms:
            noise = self._added_noise(t, i, add)
            if math.isfinite(noise):
                col = t["cov"][:, :, i]
                t["cov"] = t["cov"] - col[:, :, None] * col[:, None, :] / (col[:, i] + noise)[:, None, None]
        L = math.log(self.targets[i].batch_size)
        self.range = [min(self.range[0], L), max(self.range[1], L)]
        self.passes[i] += add

    def seconds(self, i: int, passes: int, warmup: int) -> float:
        """Expected time to measure ``passes`` passes of target ``i`` (and its warm-up and quality passes if new)."""
        bs = self.targets[i].batch_size
        per_pass = math.ceil(self.n_instances / bs) * float(self._seconds[i])
        return per_pass * (passes + (warmup + 1 if self.passes[i] == 0 else 0))

    def plan(self, chunk: int, warmup: int, budget: int, *, steps: int | None = None,
             partial: bool = False) -> list[Pick]:
        """Greedy steps of ``chunk`` passes (a configuration may be chosen again) while their inferences fit in
        ``budget``, at most ``steps`` of them; with ``partial``, a budget under one step still buys as many
        passes as it holds."""
        picks: list[Pick] = []
        left = budget
        while steps is None or len(picks) < steps:
            total = self.integrated_variance()
            gains = np.array([self.gain(i, chunk) for i in range(len(self.targets))])
            i = int(np.argmax(gains))
            if gains[i] <= 0:
                break
            new = self.passes[i] == 0
            passes, gain = chunk, float(gains[i])
            if step_inferences(passes, new, warmup, self.n_instances) > left:
                passes = left // self.n_instances - (warmup + 1 if new else 0)
                if picks or not partial or passes < 1:
                    break
                gain = self.gain(i, passes)
            picks.append(Pick(self.targets[i], passes, int(self.passes[i]), gain / total,
                              self.seconds(i, passes, warmup)))
            left -= step_inferences(passes, new, warmup, self.n_instances)
            self.measure(i, passes)
        return picks


def step_inferences(passes: int, new: bool, warmup: int, n_instances: int) -> int:
    """The inferences of measuring ``passes`` passes, with the warm-up and quality passes a new configuration
    also runs."""
    return int((passes + (warmup + 1 if new else 0)) * n_instances)


def _level_unit_sd(summ) -> float:
    """The se of a session level from one pass: the median over the calibration of se·√passes."""
    return float(np.median(np.asarray(summ.level_se) * np.sqrt(np.maximum(summ.level_passes, 1))))


def _shape_unit_sd(summ, row: int, name: str, n_instances: int) -> float:
    """The se of a summary from one pass (one call, for within-pass quantiles), the median over the calibration."""
    se = summ.shape_se[row]
    ok = np.isfinite(se) & np.isfinite(summ.shape[row])
    if not ok.any():
        return 0.1
    n = summ.n_passes.astype(float)
    if name.split(":")[0] in CALL_KINDS:
        n = n * np.array([level_batch_count(n_instances, c.batch_size) for c in summ.configs], float)
    return float(np.median(se[ok] * np.sqrt(n[ok])))


def level_batch_count(n_instances: int, batch_size: int) -> int:
    """How many batches of a pass its level (and the within-pass quantiles) are read from."""
    from tqsim.data.schema import batch_layout, level_batches

    return int(level_batches(np.bincount(batch_layout(n_instances, batch_size)), batch_size).size)


# --------------------------------------------------------------------------------------------------
# How wide the targets' forecasts are now
# --------------------------------------------------------------------------------------------------

@dataclasses.dataclass
class P99Forecasts:
    """Per target: the relative width of the 90 % interval of p99 that the model's uncertainty makes (``widths``:
    what measuring can shrink) and of a run's p99 (``run_widths``: with the run-to-run spread of a 100-pass run),
    and how much log p99 moves per unit of each summary the design tracks (``weights[name][target]``)."""

    widths: np.ndarray
    run_widths: np.ndarray
    weights: dict[str, np.ndarray]


def p99_forecasts(fm, targets: list[Config], *, n_draws: int = 100, n_passes: int = 100, seed: int = 0) -> P99Forecasts:
    """Forecast every target's p99 for runs in the calibration's own machine state (the session offset held at
    the calibration's average), and split its spread into the model's uncertainty, which measuring more
    configurations can shrink, and the run-to-run spread of a finite run, which it cannot. The drift to a new
    session is left out too: it needs sessions, not configurations. The model width is the run's interval
    scaled by the model's share of the standard deviation of log p99.

    Each tracked quantile is then moved by ``STEP`` and shorter runs simulated again with the same random
    numbers: the mean change of log p99 per unit is its weight in the design (a delta method: a slow first
    batch matters at batch 256, hardly at batch 1; the level's weight is 1)."""
    from tqsim.forecast import simulate_latency
    from tqsim.models.conditional import conditional

    cond, small = conditional(fm, n_draws), conditional(fm, FD_DRAWS)
    names = ["level"] + tracked_blocks(cond.blocks)
    widths = np.zeros(len(targets))
    weights = {name: np.ones(len(targets)) for name in names}

    def log_p99(config, state, draws, passes, k):
        D = state[0].shape[0]
        lat, _ = simulate_latency(fm, config, n_passes=passes, n_draws=draws, seed=seed + k, session=np.zeros(D),
                                  state=state)
        return np.log(np.percentile(lat.reshape(D, -1), 99, axis=1))

    run_widths = np.zeros(len(targets))
    for k, config in enumerate(targets):
        rng = np.random.default_rng([seed, k])
        state = (cond.level([config], noise=True, rng=rng)[:, 0], cond.shapes(config, rng))
        a = log_p99(config, state, n_draws, n_passes, k)
        lo, med, hi = np.exp(np.quantile(a, [0.05, 0.5, 0.95]))
        run_widths[k] = (hi - lo) / med
        # a second run from the same draws: half the mean squared difference is the run-to-run variance,
        # the rest of the variance over draws is the model's (the law of total variance)
        b = log_p99(config, state, n_draws, n_passes, k + 7919)
        total = 0.5 * (np.var(a) + np.var(b))
        model_var = max(total - 0.5 * np.mean((a - b) ** 2), 0.0)
        widths[k] = run_widths[k] * math.sqrt(model_var / total) if total > 0 else 0.0
        state = (small.level([config], noise=True, rng=rng)[:, 0], small.shapes(config, rng))
        base = log_p99(config, state, FD_DRAWS, FD_PASSES, k)
        for name in names[1:]:
            moved = log_p99(config, (state[0], dict(state[1], **{name: state[1][name] + STEP})), FD_DRAWS,
                            FD_PASSES, k)
            weights[name][k] = float(np.clip(np.mean(moved - base) / STEP, 0.0, 1.0))
    return P99Forecasts(widths, run_widths, weights)


def tracked_blocks(live: list[str]) -> list[str]:
    """The summaries a run's p99 can rest on, beside the level: the upper within-pass and pass quantiles, the
    stalls' share and size, and the first batch's (a large share of the instances at large batch sizes)."""
    return [b for b in live if b.startswith(("first:", "stall:"))
            or (b.split(":")[0] in ("within", "pass") and knot(b) >= 0.9)]


# --------------------------------------------------------------------------------------------------
# `tqsim suggest`
# --------------------------------------------------------------------------------------------------

@dataclasses.dataclass
class Suggestion:
    """The targets ranked by what one chunk of passes of each would remove, and the greedy plan for the budget."""

    targets: list[Config]
    passes: list[int]              # per target, passes measured so far
    widths: np.ndarray             # per target, relative 90 % width of p99 the model's uncertainty makes
    run_widths: np.ndarray         # per target, relative 90 % width of a 100-pass run's p99
    gains: np.ndarray              # per target, share of the integrated variance one chunk would remove
    seconds: np.ndarray            # per target, expected time of one chunk
    plan: list[Pick]
    chunk: int
    budget: int
    n_instances: int
    warmup: int
    workload: str = ""

    def commands(self) -> list[str]:
        """The plan as `tqsim calibrate` commands (``--passes`` is a configuration's total: a campaign resumes;
        a factor at its default level is left out)."""
        from tqsim.factors import DEFAULTS

        total: dict[Config, int] = {}
        for p in self.plan:
            total[p.config] = total.get(p.config, p.passes_before) + p.passes
        out = []
        for c, n in total.items():
            grid = [f"--grid {f}={v}" for f, v in c.as_dict().items()
                    if f in ("batch_size", "threads") or v != DEFAULTS[f]]
            out.append(" ".join(["tqsim calibrate"] + ([f"--workload {self.workload}"] if self.workload else []) + grid
                                + [f"--passes {n}"]))
        return out

    def as_dict(self) -> dict:
        order = np.argsort(-self.gains, kind="stable")
        return {"chunk_passes": self.chunk, "budget_inferences": self.budget,
                "plan_inferences": sum(step_inferences(p.passes, p.passes_before == 0, self.warmup, self.n_instances)
                                       for p in self.plan),
                "ranking": [{"config_id": self.targets[i].id, "config": self.targets[i].as_dict(),
                             "passes": self.passes[i], "p99_model_width": float(self.widths[i]),
                             "p99_run_width": float(self.run_widths[i]),
                             "reduction": float(self.gains[i]), "seconds": float(self.seconds[i])} for i in order],
                "plan": [p.as_dict() for p in self.plan], "commands": self.commands()}


def suggest(fm, target: str, *, budget: int | None = None, chunk: int = 5, warmup: int = 2,
            seed: int = 0) -> Suggestion:
    """``tqsim suggest``: rank the target configurations by the expected shrinkage of the targets' p99 forecasts
    that ``chunk`` more passes of each would bring, and plan greedily within ``budget`` inferences (default: three
    chunks)."""
    calibrated = fm.summaries.configs
    targets = parse_target(target, calibrated=calibrated, n_instances=fm.n_instances)
    check_anchored(targets, calibrated)
    for t in targets:
        fm.spec.check_forecastable(t)   # a categorical level never calibrated: the message names the fix
    n = int(fm.n_instances)
    if chunk < 1:
        raise UserError(f"--passes {chunk}: a step measures at least one pass (5 is usual).")
    budget = 3 * (chunk + warmup + 1) * n if budget is None else int(budget)
    if budget < n:
        raise UserError(f"--budget {budget} is smaller than one pass ({n} inferences of {fm.workload}); give at "
                        f"least {(chunk + warmup + 1) * n} (one chunk of {chunk} passes and its warm-up).")
    now = p99_forecasts(fm, targets, seed=seed)
    design = Design(fm, targets, weights=now.weights)
    total = design.integrated_variance()
    gains = np.array([design.gain(i, chunk) for i in range(len(targets))]) / total
    seconds = np.array([design.seconds(i, chunk, warmup) for i in range(len(targets))])
    passes = [int(p) for p in design.passes]
    plan = design.plan(chunk, warmup, budget, partial=True)
    return Suggestion(targets, passes, now.widths, now.run_widths, gains, seconds, plan, chunk, budget, n, warmup,
                      fm.workload)
