"""A campaign reduced to what the latency model is fitted on: per-configuration summaries with standard errors.

Each configuration's per-call latencies are split the way they vary (docs/method.md, "The model"):

* the **level** of a pass, ``λ[p]`` = the median log latency of its level batches (the full batches
  after the first), summarised per session by the median over that session's passes;
* the **pass** quantile function: the quantiles over passes of ``λ[p]`` minus its session's level;
* the **within** quantile function: the quantiles of ``log latency − λ[p]`` over every level batch of
  every pass that is not a stall (the body);
* the **stalls**: the share of level batches more than twice their pass level (``STALL_X``), on the logit
  scale, and the quantile function of how far beyond their pass level they land: rare far stalls whose
  rate and size are each configuration's own, pooled as a rate and a size rather than as a quantile that
  jumps when the rate crosses its level;
* the **first** quantile function: the same for the first batch of each pass (a position effect);
* the **size** slope: how a batch's log latency moves with the standardised log size of its largest
  instance (variable-length inputs, padded), removed from the within residuals before their quantiles
  are taken.
* the **tail per session**: ``log log(p99/p50)`` of each session's per-instance latencies, whose spread between
  sessions (beyond its bootstrap noise, pooled over configurations) says how far a new session's tail may move.

Every summary carries a standard error from a bootstrap over passes (moving blocks of consecutive
passes for the levels, whose machine state persists from pass to pass). Summaries a configuration's
data cannot pin (a 0.999 quantile of 300 calls) are left unobserved; the model fills them from the
other configurations. The cost is linear in the data and the model's size does not grow with passes.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import xarray as xr

from tqsim.data.schema import batch_starts, level_batches
from tqsim.factors import FACTORS, Config

# probability levels of the three quantile functions
U_WITHIN = (0.005, 0.02, 0.05, 0.1, 0.25, 0.5, 0.75, 0.9, 0.95, 0.98, 0.99, 0.995, 0.998, 0.999, 0.9995)
# 0.95: about one pass in ten falls in a slow episode, so the pass levels jump between 0.85 and 0.98; without a
# knot there the straight line from 0.9 to 0.98 put p99 up to 10 % short (docs/method.md, "Summaries")
U_PASS = (0.005, 0.01, 0.02, 0.1, 0.25, 0.75, 0.9, 0.95, 0.98, 0.99, 0.995)
U_FIRST = (0.1, 0.25, 0.5, 0.75, 0.9, 0.95, 0.98)
U_STALL = (0.1, 0.5, 0.9, 0.98)
# a call more than twice its pass level is a stall: on digits-mlp ~1 % of calls land 2.2–3.1× their pass level
# at every batch size and thread count, with almost nothing between 1.5× and 2.2× (docs/method.md)
STALL_X = math.log(2.0)
# a quantile is observed when this many values are expected beyond it (calls / passes); three calls, so that the
# quartiles of a short calibration's large batch sizes are its own (docs/method.md, "Summaries")
MIN_BEYOND_WITHIN = 3.0
MIN_BEYOND_PASS = 1.0
STALL_OWN_SD = 10         # stalls a configuration needs for its own spread to set its stall quantiles' se floor
SE_FLOOR = 0.002          # log units: below this a bootstrap se only says the bootstrap ran out of values
# sample quantiles are read at the order statistic u·(n + 1) (Hyndman & Fan 1996, type 6, "weibull"), whose
# probability is u on average: numpy's default (type 7, u·(n − 1) + 1) reads the 0.98 quantile of 100 passes at
# probability 0.970, so a steep tail stored at 0.98 was forecast, then sampled again, two steps short
# (digits-cnn's passes in a slow episode: 0.98 quantile +0.67 measured, +0.42 forecast; docs/method.md, "Summaries")
QUANTILE_METHOD = "weibull"
N_BOOT = 120


def block_names() -> list[str]:
    """Names of the shape summaries, in the order of ``Summaries.shape``: ``within:0.99``, ``pass:0.1``..."""
    return ([f"within:{u:g}" for u in U_WITHIN] + [f"pass:{u:g}" for u in U_PASS]
            + [f"first:{u:g}" for u in U_FIRST] + ["size:slope", "slow:sd", "stall:share"]
            + [f"stall:{u:g}" for u in U_STALL])


def knot(name: str) -> float | None:
    """The probability level in a quantile summary's name (``within:0.99`` → 0.99); None for the others
    (``stall:share``, ``size:slope``, ``slow:sd``)."""
    suffix = name.split(":")[1]
    return float(suffix) if suffix[:1].isdigit() else None


@dataclasses.dataclass
class Summaries:
    """Everything the fit sees, per configuration (``configs``) and, for levels, per session."""

    configs: list[Config]
    sessions: np.ndarray            # session ids, in order
    level: np.ndarray               # [obs] median pass level of (config, session), log seconds
    level_se: np.ndarray            # [obs]
    level_cfg: np.ndarray           # [obs] config index
    level_session: np.ndarray       # [obs] session index
    level_passes: np.ndarray        # [obs] passes behind it
    shape: np.ndarray               # [block, config] (NaN: unobserved)
    shape_se: np.ndarray            # [block, config]
    n_batches_total: int
    n_passes: np.ndarray            # [config]
    size_mean: float = 0.0          # of log instance size, for standardising a batch's mean size
    size_sd: float = 0.0            # 0: no size covariate
    # how much a configuration's tail moves between sessions (:func:`tail_session_variance`; NaN: one session)
    tail_session_var: float = math.nan
    tail_session_dof: int = 0

    @property
    def blocks(self) -> list[str]:
        return block_names()


def batch_size_covariate(sizes: np.ndarray | None, batch: np.ndarray, mean: float, sd: float) -> np.ndarray:
    """Standardised log size of each batch's *largest* instance (zeros without sizes): a padded batch
    costs what its longest member costs (the mean size explained half as much of digits-transformer's
    batch-to-batch spread)."""
    nb = int(batch[-1]) + 1
    if sizes is None or sd <= 0:
        return np.zeros(nb)
    z = (np.log(np.maximum(np.asarray(sizes, float), 1e-12)) - mean) / sd
    out = np.full(nb, -np.inf)
    np.maximum.at(out, batch, z)
    return out


def _blocks(n: int, rng: np.random.Generator, n_boot: int) -> np.ndarray:
    """Moving-block bootstrap indices ``[n_boot, n]`` over a series of ``n`` passes."""
    L = max(1, int(round(n ** (1 / 3))))
    starts = rng.integers(0, max(n - L + 1, 1), (n_boot, math.ceil(n / L)))
    idx = (starts[:, :, None] + np.arange(L)[None, None, :]).reshape(n_boot, -1)[:, :n]
    return np.minimum(idx, n - 1)


def _quantiles(values: np.ndarray, u: tuple, min_beyond: float, boot_idx: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Quantiles at ``u`` of ``values`` (``[pass]`` or ``[pass, call]``) and their se by resampling passes;
    NaN where fewer than ``min_beyond`` values are expected beyond the quantile."""
    u = np.asarray(u)
    values = np.asarray(values, float)
    q = np.quantile(values, u, method=QUANTILE_METHOD)
    if boot_idx.shape[0] > 1:
        reps = np.quantile(values[boot_idx].reshape(boot_idx.shape[0], -1), u, axis=1, method=QUANTILE_METHOD)
        se = np.maximum(np.std(reps, axis=1, ddof=1), SE_FLOOR)
    else:
        se = np.full(u.size, np.inf)
    ok = values.size * np.minimum(u, 1 - u) >= min_beyond
    return np.where(ok, q, np.nan), np.where(ok, se, np.nan)


def pscale(u: np.ndarray) -> np.ndarray:
    """The probability scale quantile functions are linear on between knots: log(2u) below the
    median, −log(2(1−u)) above, so that a straight line beyond the last knot is an exponential tail."""
    u = np.clip(np.asarray(u, float), 1e-12, 1 - 1e-12)
    return np.where(u < 0.5, np.log(2 * u), -np.log(2 * (1 - u)))


def own_tail(u: tuple, q: np.ndarray, se: np.ndarray, cap=math.inf) -> tuple[np.ndarray, np.ndarray]:
    """Quantiles a configuration's data cannot show (too few values beyond them) continued along its own tail:
    linearly on :func:`pscale` (an exponential tail) from its two outermost observed knots on
    that side, never turning back, with an se that adds the whole extrapolated distance. Left unobserved, the
    GP fills them from the trend of configurations whose data reach them: the small batch sizes, whose tails
    are long (digits-cnn batch 128, tight to +7 % at 0.95, got +30 % at 0.99 from batch 1–32 and a p99 10 % high).
    ``cap`` (one value, or one per knot) bounds the continuation above: the body's tail ends where the stalls
    begin; a pass's goes beyond the slowest pass seen only as its body would (:func:`beyond_the_slowest`)."""
    q, se = q.copy(), se.copy()
    z = pscale(np.asarray(u, float))
    obs = np.flatnonzero(np.isfinite(q))
    if obs.size < 2:
        return q, se
    for (a, b), beyond in ((obs[-2:], np.arange(obs[-1] + 1, len(u))), (obs[1::-1], np.arange(0, obs[0]))):
        slope = max((q[b] - q[a]) / (z[b] - z[a]), 0.0)
        bound = np.maximum(np.broadcast_to(cap, z.shape)[beyond], q[b])
        step = np.minimum(q[b] + slope * (z[beyond] - z[b]), bound) - q[b]
        q[beyond] = q[b] + step
        se[beyond] = np.sqrt(se[b] ** 2 + step ** 2)
    return q, se


def beyond_the_slowest(values: np.ndarray, u: tuple) -> np.ndarray:
    """Per knot ``u``, how far a continued tail may reach: the largest value seen, and beyond its own probability
    ``n/(n + 1)`` only along the exponential tail of the middle half (the slope of the quartiles on :func:`pscale`).
    A busy machine stalls a few whole passes: the last observed knot lands on that jump, and a tail continued from
    it reached e^13; a light tail seen through five passes still continues past its largest pass."""
    x = np.asarray(values, float)
    n = x.size
    q25, q75 = np.quantile(x, [0.25, 0.75], method=QUANTILE_METHOD)
    z = pscale(np.asarray(u, float))
    slope = max(float(q75 - q25) / float(pscale(0.75) - pscale(0.25)), 0.0)
    return float(x.max()) + slope * np.maximum(z - pscale(n / (n + 1)), 0.0)


def _sorted_at(rows: np.ndarray, probs: np.ndarray) -> np.ndarray:
    """Quantiles of each sorted row of ``rows`` at that row's ``probs``, read as ``QUANTILE_METHOD`` does: linear
    between the order statistics around ``p·(n + 1)``."""
    n = rows.shape[1]
    pos = np.clip(np.asarray(probs) * (n + 1) - 1, 0, n - 1)
    lo = np.floor(pos).astype(np.int64)
    hi = np.minimum(lo + 1, n - 1)
    w = pos - lo
    return np.take_along_axis(rows, lo, 1) * (1 - w) + np.take_along_axis(rows, hi, 1) * w


def _body_quantiles(resid: np.ndarray, boot: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Quantiles at ``U_WITHIN`` of the calls that are not stalls (``resid ≤ STALL_X``) and their se by
    resampling passes: the body's ``u`` is the whole sample's ``u·(1 − stall share)``."""
    u = np.asarray(U_WITHIN)
    flat = np.sort(resid.ravel())[None, :]
    share = (flat > STALL_X).mean(axis=1, keepdims=True)
    q = _sorted_at(flat, u[None, :] * (1 - share))[0]
    if boot.shape[0] > 1:
        reps = np.sort(resid[boot].reshape(boot.shape[0], -1), axis=1)
        r_share = (reps > STALL_X).mean(axis=1, keepdims=True)
        se = np.maximum(np.std(_sorted_at(reps, u[None, :] * (1 - r_share)), axis=0, ddof=1), SE_FLOOR)
    else:
        se = np.full(u.size, np.inf)
    n_body = resid.size * (1 - float(share[0, 0]))
    ok = n_body * np.minimum(u, 1 - u) >= MIN_BEYOND_WITHIN
    return np.where(ok, q, np.nan), np.where(ok, se, np.nan)


def stall_logit(k: int, n: int) -> tuple[float, float]:
    """The mean and sd of logit π given ``k`` stalls in ``n`` calls under Jeffreys' Beta(½, ½) prior:
    ``ψ(k+½) − ψ(n−k+½)`` and ``√(ψ′(k+½) + ψ′(n−k+½))`` (E and Var of log X for X ~ Beta). The empirical logit
    ``log((k+½)/(n−k+½))`` with se ``√(1/(k+½) + 1/(n−k+½))`` puts no stall in 21 calls at 2.3 % ± 1.4 on the
    logit, symmetric, where the likelihood is flat below and falls off above: pooled over configurations with
    few calls (large batches, short calibrations) it raised their forecast stall share and their p99 by 50–70 %."""
    from scipy.special import digamma, polygamma

    a, b = k + 0.5, n - k + 0.5
    return float(digamma(a) - digamma(b)), float(math.sqrt(polygamma(1, a) + polygamma(1, b)))


def _stall_summaries(resid: np.ndarray, boot: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``stall:share`` (the logit of the share of calls beyond ``STALL_X``: its posterior mean and sd given k
    stalls in n calls; never unobserved: no stall in n calls is a measurement too) and the ``U_STALL`` quantiles
    of the stalls' offsets (observed when one stall is expected beyond them), each with its se by resampling passes."""
    n = resid.size
    k = int((resid > STALL_X).sum())
    values = np.full(1 + len(U_STALL), np.nan)
    ses = np.full_like(values, np.nan)
    values[0], se = stall_logit(k, n)
    per_pass = (resid > STALL_X).sum(axis=1)
    if boot.shape[0] > 1:
        kk = per_pass[boot].sum(axis=1)
        se = max(se, float(np.std([stall_logit(int(x), n)[0] for x in kk], ddof=1)))
    ses[0] = max(se, SE_FLOOR)
    u = np.asarray(U_STALL)
    ok = k * np.minimum(u, 1 - u) >= MIN_BEYOND_PASS
    if ok.any():
        stalls = [row[row > STALL_X] for row in resid]
        values[1:] = np.where(ok, np.quantile(np.concatenate(stalls), u, method=QUANTILE_METHOD), np.nan)
        reps = [np.quantile(np.concatenate([stalls[i] for i in row]), u, method=QUANTILE_METHOD) for row in boot
                if per_pass[row].sum() > 0]
        sd = np.std(reps, axis=0, ddof=1) if len(reps) > 1 else np.full(u.size, np.inf)
        ses[1:] = np.where(ok, np.maximum(sd, SE_FLOOR), np.nan)
    return values, ses


def robust_sd(x: np.ndarray) -> float:
    """1.4826·MAD: the sd of a normal sample, unmoved by a few far values."""
    x = np.asarray(x, float)
    return 1.4826 * float(np.median(np.abs(x - np.median(x))))


def stall_quantile_se(se: np.ndarray, stalls: dict[int, np.ndarray]) -> np.ndarray:
    """The stall quantiles' se ``[U_STALL, config]``, at least that of a sample quantile of the configuration's
    ``k`` stalls, ``s·√(u(1 − u)/k)/φ(Φ⁻¹(u))``: ``s`` the robust sd (1.4826·MAD) of its own stalls when it has
    ``STALL_OWN_SD`` or more, else of every stall of the campaign (``stalls``: per configuration index, its stall
    offsets). The bootstrap over passes cannot see it when a few stalls share one pass: two stalls of one
    digits-cnn pass read as a median known to ±0.002, next to a neighbour's at 0.88 ± 0.002 and another's at 3.4,
    and the GP over the stall sizes then spread its unobserved configurations' median stall from 0.01× to 1,500×
    their level. Robust, because a few 100× stalls of one configuration would otherwise widen every other's."""
    from scipy.stats import norm

    pooled = np.concatenate(list(stalls.values())) if stalls else np.zeros(0)
    if pooled.size < 2:
        return se
    u = np.asarray(U_STALL)
    se = se.copy()
    for col, x in stalls.items():
        if x.size:
            s = robust_sd(x) if x.size >= STALL_OWN_SD else robust_sd(pooled)
            floor = s * np.sqrt(u * (1 - u) / x.size) / norm.pdf(norm.ppf(u))
            se[:, col] = np.where(np.isfinite(se[:, col]), np.maximum(se[:, col], floor), se[:, col])
    return se


def tail_stretch(lat: np.ndarray, sessions: np.ndarray, rng: np.random.Generator,
                 n_boot: int = 40) -> tuple[list[float], list[float]]:
    """Per session of one configuration (with 3+ passes), ``log log(p99/p50)`` of its per-instance latencies
    ``lat[pass, instance]``, and its se by a moving-block bootstrap over that session's passes: how far the tail
    reaches beyond the median, on a scale where a stretch of the tail is a shift. Sessions whose p99 is within
    0.1 % of their p50 say nothing of a tail and are skipped."""
    values, ses = [], []
    for s in np.unique(sessions):
        x = lat[sessions == s]
        n = x.shape[0]
        if n < 3:
            continue
        p50, p99 = np.percentile(x, [50, 99])
        r = p99 / p50
        if not r > 1.001:
            continue
        reps = np.array([np.divide(*np.percentile(x[i], [99, 50])) for i in _blocks(n, rng, n_boot)])
        reps = np.log(np.log(np.maximum(reps, 1.0005)))
        values.append(float(np.log(np.log(r))))
        ses.append(float(np.std(reps, ddof=1)))
    return values, ses


def tail_session_variance(per_config: list[tuple[list[float], list[float]]]) -> tuple[float, int]:
    """The variance between sessions of a configuration's tail (:func:`tail_stretch`), beyond what its bootstrap
    se explains, pooled over configurations (method of moments, floored at 0), and its degrees of freedom."""
    excess, dof = [], 0
    for values, ses in per_config:
        if len(values) < 2:
            continue
        v = np.asarray(values)
        excess.append((np.var(v, ddof=1) - np.mean(np.square(ses))) * (v.size - 1))
        dof += v.size - 1
    if not dof:
        return math.nan, 0
    return max(float(np.sum(excess)) / dof, 0.0), dof


def level_deviations(lam: np.ndarray, sessions: np.ndarray) -> tuple[np.ndarray, dict]:
    """Each pass's level minus its session's median level (``[pass]``), and those medians per session."""
    dev = np.empty(lam.shape, float)
    meds = {}
    for s in np.unique(sessions):
        m = sessions == s
        meds[s] = float(np.median(lam[m]))
        dev[m] = lam[m] - meds[s]
    return dev, meds


def pass_deviations(campaign: xr.Dataset) -> list[tuple[np.ndarray, np.ndarray]]:
    """Per configuration of a campaign, ``(rounds, deviations)`` of its measured passes: each pass's level
    (the median log latency of its level batches) minus its session's median level, as the fit sees them."""
    configs = configs_of_campaign(campaign)
    lat_all = campaign["latency_s"].values
    rounds = campaign["round"].values
    sessions_all = campaign["session"].values if "session" in campaign else np.zeros_like(rounds)
    out = []
    for c, cfg in enumerate(configs):
        keep = np.isfinite(lat_all[c]).all(axis=1)
        batch = campaign["batch"].values[c].astype(np.int64)
        starts = batch_starts(batch)
        lb = level_batches(np.diff(np.r_[starts, batch.size]), cfg.batch_size)
        lam = np.median(np.log(lat_all[c][keep][:, starts])[:, lb], axis=1)
        dev, _ = level_deviations(lam, np.asarray(sessions_all[c][keep]).astype(np.int64))
        out.append((np.asarray(rounds[c][keep]).astype(np.int64), dev))
    return out


def configs_of_campaign(campaign: xr.Dataset) -> list[Config]:
    """The configuration of each ``config`` of a campaign, in order."""
    out = []
    for i in range(campaign.sizes["config"]):
        values = {f: campaign[f].values[i].item() for f in FACTORS if f in campaign.coords}
        values["compile"] = bool(values.get("compile", False))
        out.append(Config.from_mapping(values))
    return out


def summarise(campaign: xr.Dataset, seed: int = 0, n_boot: int = N_BOOT) -> Summaries:
    """Reduce a campaign (``tqsim.data.io.load_campaign``) to the model's summaries."""
    rng = np.random.default_rng(seed)
    configs = configs_of_campaign(campaign)
    lat_all = campaign["latency_s"].values                      # [config, pass, instance]
    rounds = campaign["round"].values
    sessions_all = campaign["session"].values if "session" in campaign else np.zeros_like(rounds)
    has_size = "instance_size" in campaign
    size_mean = size_sd = 0.0
    if has_size:
        logs = np.log(np.maximum(campaign["instance_size"].values[0].astype(float), 1e-12))
        size_mean, size_sd = float(logs.mean()), float(logs.std())
    finite_sessions = sessions_all[np.isfinite(sessions_all)] if sessions_all.dtype.kind == "f" else sessions_all
    session_ids = np.unique(finite_sessions).astype(np.int64)
    names = block_names()
    shape = np.full((len(names), len(configs)), np.nan)
    shape_se = np.full_like(shape, np.nan)
    lv, lv_se, lv_cfg, lv_ses, lv_n = [], [], [], [], []
    total, n_passes = 0, []
    stalls: dict[int, np.ndarray] = {}     # each configuration's stall offsets (those with within-pass spread)
    tails = []                             # each configuration's tail per session
    tail_rng = np.random.default_rng([seed, 1])
    for c, cfg in enumerate(configs):
        keep = np.isfinite(lat_all[c]).all(axis=1)
        batch = campaign["batch"].values[c].astype(np.int64)
        starts = batch_starts(batch)
        counts = np.diff(np.r_[starts, batch.size])
        y = np.log(lat_all[c][keep][:, starts])              # [pass, batch]
        order = np.argsort(rounds[c][keep], kind="stable")    # passes in the order they were measured
        y = y[order]
        ses = np.asarray(sessions_all[c][keep][order]).astype(np.int64)
        P, nb = y.shape
        n_passes.append(P)
        total += P * nb
        lb = level_batches(counts, cfg.batch_size)
        lam = np.median(y[:, lb], axis=1)
        dev, meds = level_deviations(lam, ses)
        pass_sd = 1.4826 * float(np.median(np.abs(dev))) if P > 2 else math.nan
        for s, med in meds.items():
            m = ses == s
            n = int(m.sum())
            se = float(np.std(np.median(lam[m][_blocks(n, rng, n_boot)], axis=1), ddof=1)) if n > 1 else 0.0
            # a session of a few passes bootstraps a too-small se: at least that of a median of n passes
            if np.isfinite(pass_sd):
                se = max(se, 1.2533 * pass_sd / math.sqrt(n)) if n < 8 else se
            elif n < 3:
                se = max(se, 0.1)
            lv.append(med)
            lv_se.append(max(se, SE_FLOOR))
            lv_cfg.append(c)
            lv_ses.append(int(np.searchsorted(session_ids, s)))
            lv_n.append(n)
        boot = _blocks(P, rng, n_boot) if P > 1 else np.zeros((0, P), np.int64)
        tails.append(tail_stretch(lat_all[c][keep], sessions_all[c][keep], tail_rng))
        k = 0
        # within: each level batch around its pass level, the size effect removed
        zb = batch_size_covariate(campaign["instance_size"].values[c] if has_size else None, batch, size_mean,
                                  size_sd)
        resid = y[:, lb] - lam[:, None]
        slope, slope_se = _size_slope(resid, zb[lb], boot)
        if has_size and size_sd > 0:
            resid = resid - slope * (zb[lb] - np.median(zb[lb]))[None, :]
        # one level batch a pass is its pass level: it says nothing of the spread within a pass (the forecast
        # adds none there), so its within and stall summaries stay unobserved rather than a spread of zero
        within_pass = resid.shape[1] > 1
        if within_pass:
            q, se = own_tail(U_WITHIN, *_body_quantiles(resid, boot), cap=STALL_X)
            shape[k:k + len(U_WITHIN), c], shape_se[k:k + len(U_WITHIN), c] = q, se
        k += len(U_WITHIN)
        if P > 1:
            q, se = own_tail(U_PASS, *_quantiles(dev, U_PASS, MIN_BEYOND_PASS, boot),
                             cap=beyond_the_slowest(dev, U_PASS))
            shape[k:k + len(U_PASS), c], shape_se[k:k + len(U_PASS), c] = q, se
        k += len(U_PASS)
        if lb.size and lb[0] > 0 and P > 1:  # the first batch is not a level batch: its own offsets
            first = y[:, 0] - lam
            q, se = own_tail(U_FIRST, *_quantiles(first, U_FIRST, MIN_BEYOND_PASS, boot),
                             cap=beyond_the_slowest(first, U_FIRST))
            shape[k:k + len(U_FIRST), c], shape_se[k:k + len(U_FIRST), c] = q, se
        k += len(U_FIRST)
        if has_size and size_sd > 0 and np.ptp(zb[lb]) > 0:
            shape[k, c], shape_se[k, c] = slope, slope_se
        k += 1
        if P > 2 and within_pass:
            shape[k, c], shape_se[k, c] = slow_share_sd(resid, boot)
        k += 1
        if within_pass:
            q, se = _stall_summaries(resid, boot)
            shape[k:k + 1 + len(U_STALL), c], shape_se[k:k + 1 + len(U_STALL), c] = q, se
            stalls[c] = resid[resid > STALL_X]
    rows = [names.index(f"stall:{u:g}") for u in U_STALL]
    shape_se[rows] = stall_quantile_se(shape_se[rows], stalls)
    tail_var, tail_dof = tail_session_variance(tails)
    return Summaries(configs=configs, sessions=session_ids, level=np.array(lv), level_se=np.array(lv_se),
                     level_cfg=np.array(lv_cfg, np.int64), level_session=np.array(lv_ses, np.int64),
                     level_passes=np.array(lv_n, np.int64), shape=shape, shape_se=shape_se, n_batches_total=total,
                     n_passes=np.array(n_passes, np.int64), size_mean=size_mean, size_sd=size_sd,
                     tail_session_var=tail_var, tail_session_dof=tail_dof)


SLOW_U = 0.9   # the "slow share" of a pass: its calls above the configuration's own within-pass 0.9 quantile


def slow_share_sd(resid: np.ndarray, boot: np.ndarray) -> tuple[float, float]:
    """How much a pass's share of slow calls varies beyond binomial noise, on the logit scale.

    Per pass, f = the share of its level batches above the configuration's within-pass 0.9 quantile
    (0.1 on average). Measured, var(f) = binomial var + latent var; the latent sd on the logit scale is
    ``√(latent var) / (0.1·0.9)`` (delta method). Real passes vary far beyond binomial (docs/method.md,
    "Summaries: what the fit sees"): iid calls within a pass cannot make them."""
    q = np.quantile(resid, SLOW_U)
    f = (resid > q).mean(axis=1)                            # [pass]
    n = resid.shape[1]

    def sd(frac):  # E[f(1 − f)] = p(1 − p)(n − 1)/n, so the binomial variance is E[f(1 − f)]/(n − 1)
        latent = max(float(np.var(frac, ddof=1)) - float(np.mean(frac * (1 - frac))) / (n - 1), 0.0)
        return math.sqrt(latent) / (SLOW_U * (1 - SLOW_U))

    est = sd(f)
    reps = [sd(f[row]) for row in boot] if boot.shape[0] > 1 else []
    return est, max(float(np.std(reps, ddof=1)) if len(reps) > 1 else np.inf, 0.05)


def _size_slope(resid: np.ndarray, z: np.ndarray, boot: np.ndarray) -> tuple[float, float]:
    """Least-squares slope of a batch's residual on its size covariate, with a bootstrap se over passes."""
    zc = z - z.mean()
    ss = float(zc @ zc)
    if ss <= 0:
        return 0.0, np.nan
    per_pass = resid @ zc / ss                       # one slope per pass
    slope = float(per_pass.mean())
    reps = per_pass[boot].mean(axis=1) if boot.size else np.array([slope])
    return slope, max(float(np.std(reps, ddof=1)) if reps.size > 1 else np.inf, SE_FLOOR)
