"""Serving overheads from request logs (``tqsim calibrate --serving-log``, the HTTP driver): any serving stack.

A request log says when each request arrived and completed, and maybe which batch it rode in and how long that
batch's forward call took. The stack's costs are not observed directly, so they are fitted by *replaying each
run's own arrivals* through the simulator (:mod:`tqsim.whatif.simulator`) with the calibrated forward times and
choosing the overheads whose simulated latency quantiles match the observed ones (the method of simulated
quantiles; common random numbers make the loss smooth enough for Nelder–Mead). The fitted terms are those of
:class:`~tqsim.whatif.overheads.ServingOverheads`, so ``tqsim whatif`` and ``tqsim plan`` use them unchanged.
docs/method.md, "Serving overheads from request logs", states the model and its limits.
"""

from __future__ import annotations

import dataclasses
from typing import Sequence

import numpy as np

from tqsim.data.request_log import RequestLog
from tqsim.errors import UserError
from tqsim.whatif.overheads import ServingOverheads, grid_draws, rate_factor, served_forward
from tqsim.whatif.service import ServiceModel, WithOverheads
from tqsim.whatif.simulator import ServingSetup, serve_pool, service_pool

# latency quantiles matched, and their weights: the median pins the level, p99 (the noisiest) the tail
QUANTILES = np.array([0.1, 0.25, 0.5, 0.75, 0.9, 0.99])
WEIGHTS = np.array([1.0, 1.0, 2.0, 1.0, 1.0, 0.5])
CHUNK_S = 2.0          # a run is cut into chunks this long to see its level move when no repeated run measures it
SAME_RATE = 0.15       # logs whose offered rates differ by less than this are repeats of one load
OVERLOADED = 0.9       # a run that completed less than this share of the offered rate measured a capacity ...
GROWING = 3.0          # ... as did one whose last quarter's median latency is this many times its first's
CAPACITY_WEIGHT = 4.0  # a measured capacity against the six latency quantiles of a run
ODDS = ("pause_prob", "frontend_out_share")  # fitted through their odds: exp(x) / (1 + exp(x))
FRONTEND_BUSY = 0.05   # a front end this busy at the busiest fitted load also has its answers' share fitted ...
ANSWER_SPACING_S = 10e-6  # ... if the answers of one batch leave at least this far apart (one at a time)
# a pause's size is Exponential: its quantiles, for ServingOverheads.pause_s to resample
_EXP_QUANTILES = -np.log1p(-(np.arange(200) + 0.5) / 200)


@dataclasses.dataclass
class LogFit:
    """The fitted overheads, what the fit saw (per run: observed and replayed quantiles) and notes for the user."""

    overheads: ServingOverheads
    runs: list[dict]
    notes: list[str]
    parameters: list[str]   # the terms fitted by replay (the others were read from the log)
    loss: float


def _answered(log: RequestLog) -> np.ndarray:
    return log.ok & np.isfinite(log.completion_s)


def _log_quantiles(latency: np.ndarray) -> np.ndarray:
    return np.log(np.maximum(np.quantile(latency, QUANTILES), 1e-7))


def fit_log_overheads(logs: Sequence[RequestLog], forward: ServiceModel, setup: ServingSetup, *,
                      window: int | None = None, draws: int = 4, seed: int = 0,
                      capacity_rps: float | None = None) -> LogFit:
    """Fit :class:`ServingOverheads` of one serving set-up from its request logs and the calibrated ``forward``.

    Replayed terms: the service level relative to the calibration (``scale``, unless the log gives forward times),
    a cost per batch that keeps the replica busy (``per_batch_s``), a serial front end each request passes before the
    batcher (``frontend_s``: an HTTP server process), a cost per request that keeps nothing busy (``response_s``:
    the response path, the client) and the slowdown with the arrival rate
    (``inflation_s``: on a shared machine the server's front end and the load driver take CPU from the model).
    ``window``: requests per window (the evaluation set's size) for the window-to-window level.
    ``capacity_rps``: the throughput the stack sustained, when measured (a ramp); an overloaded log measures it too.
    """
    logs = [lg for lg in logs]
    if not logs:
        raise UserError("no request logs to fit; give --serving-log FILE (one file per run).")
    # An overloaded run (:func:`overloaded`) measured the stack's capacity, not its latency at a load: its
    # latencies grow with its length. It enters the fit through that capacity only.
    capacity = max((lg.sustained_rps for lg in logs if overloaded(lg)), default=capacity_rps)
    logs = [lg for lg in logs if not overloaded(lg)]
    if not logs:
        raise UserError("every log is of an overloaded run (it completed less than was offered); give runs at "
                        "lighter loads too, e.g. at 20 % and 50 % of the capacity.")
    with_forward = all(lg.has("forward_s") and lg.has("batch_id") for lg in logs)
    notes: list[str] = []
    # A run that met a slow minute at its knee (its median latency many times its rate's other runs': tqsim's server
    # ran one 0.5-load run at 10 ms against 1.3 ms, its service 1.25x slower, and formed most of the full batches)
    # says how slow the minute was, not what the stack's terms are: it is left out of everything the log reads and
    # of the fit, and enters the run-to-run level only.
    knee = at_knee(logs)
    for i in np.flatnonzero(knee):
        notes.append(f"{logs[i].source}: median latency {KNEE_RATIO:g}x or more its rate's other runs' (a slow "
                     "minute at the knee); it measured the run-to-run level only.")
    typical = [lg for lg, slow in zip(logs, knee) if not slow]
    base: ServiceModel = forward
    known: dict = {}
    read_at: dict = {}  # the arrival rate (mean over what was read) at which a known term was read from the logs
    if with_forward:  # the log gives in-server forward times: level, spread and stalls are read, not fitted
        per_log = [lg.batches("forward_s") for lg in typical]
        k, fwd = map(np.concatenate, zip(*per_log))
        served = served_forward(k, fwd, forward, np.repeat(np.arange(len(typical)), [b[0].size for b in per_log]))
        known = dict(shape=served.shape, shape_by_size=served.by_size, stall_prob=float(served.stalled.mean()),
                     stall_shape=np.sort(served.rel[served.stalled]).tolist())
        base = WithOverheads(forward, ServingOverheads(**known))  # scale 1: the served level is fitted below
        known["scale"] = served.scale
        read_at["scale"] = float(np.average([lg.rate_rps for lg in typical], weights=[b[0].size for b in per_log]))
    else:
        notes.append("the logs give no per-batch forward times (columns batch_id and forward_s): the service level "
                     "was fitted from latency alone and stalls come from the forward calibration.")
    # One pool of service times and one set of random numbers per (run, draw), reused by every trial (common
    # random numbers): the loss then moves smoothly with the parameters.
    replays = []
    for i, lg in enumerate(logs):
        ok = _answered(lg)
        if ok.sum() < 20:
            raise UserError(f"{lg.source}: only {int(ok.sum())} answered requests; a run needs at least 20.")
        for d in range(draws):
            rng = np.random.default_rng([seed, i, d])
            pool = service_pool(base, setup, lg.n, rng)
            replays.append(_Replay(i, lg, ok, pool, rng))
    fitted = [r for r in replays if not knee[r.run]]
    cycles = per_batch_from_cycles(typical, setup) if with_forward else None
    if cycles is not None:
        known["per_batch_s"], read_at["per_batch_s"] = cycles[0], cycles[2]
        notes.append(f"cost per batch outside the forward call: {cycles[0] * 1e3:.3f} ms, read from {cycles[1]} "
                     "batches that ran back to back.")
    names = (["scale"] if not with_forward else []) + (["per_batch_s"] if cycles is None else []) + [
        "frontend_s", "response_s", "inflation_s", "pause_prob", "pause_mean_s"]

    # The arrival rate's effect on the service (inflation_s, g) may be a speed-up where a measured capacity says
    # where it stops: exp(x) is then 1 + g × the busiest fitted rate (rate_factor); else exp(x) is g ≥ 0.
    top = max(lg.rate_rps for lg in logs)

    def unpack(x: np.ndarray, timer: str) -> dict:
        v = dict(zip(names, np.exp(x)), **{k: known[k] for k in ("scale", "per_batch_s") if k in known},
                 batch_timer=timer, until=capacity)
        for share in ODDS:  # a probability or a share: exp(x) is its odds
            v[share] = v[share] / (1.0 + v[share]) if share in names else 0.0
        if capacity is not None:
            v["inflation_s"] = (v["inflation_s"] - 1.0) / top
        for k, rate in read_at.items():  # a term read from the logs is what it was at the rate it was read at
            v[k] = known[k] / rate_factor(v["inflation_s"], rate, capacity)
        return v

    def pack(n: str, value: float) -> float:
        if n in ODDS:
            return float(np.log(value / (1 - value)))
        if n == "inflation_s" and capacity is not None:
            return float(np.log1p(value * top))
        return float(np.log(value))

    mean_pool = np.mean([r.pool.mean(axis=1) for r in replays], axis=0)  # [batch size - 1]

    def loss(x: np.ndarray, timer: str) -> float:
        v = unpack(x, timer)
        misfit = float(np.mean([np.sum(WEIGHTS * (_log_quantiles(r.latency(v, setup)) - r.observed) ** 2)
                                for r in fitted]))
        if capacity is None:
            return misfit
        return misfit + CAPACITY_WEIGHT * float(np.log(_capacity(v, mean_pool, setup, capacity) / capacity)) ** 2

    from scipy.optimize import minimize

    light = min(logs, key=lambda lg: lg.rate_rps)
    light_p50 = float(np.median(light.latency_s[_answered(light)]))
    start = {"scale": 1.0, "per_batch_s": 1e-5, "frontend_s": 1e-6, "response_s": max(0.1 * light_p50, 1e-6),
             "inflation_s": 1e-6, "pause_prob": 0.01, "pause_mean_s": max(light_p50, 1e-5)}
    starts = [start]
    if capacity is not None:  # also start from a front end that alone sets the measured capacity
        starts.append(dict(start, frontend_s=0.8 / capacity))
    # the stack's batching rule is chosen too: whichever timer replays the logs better (a tie keeps "oldest")
    timers = ("oldest", "cycle") if setup.max_wait_s > 0 else ("oldest",)
    def descend(x0: np.ndarray, step: float, kind: str):
        simplex = np.vstack([x0, x0 + step * np.eye(x0.size)])  # factor-3 steps: the terms trade off
        return minimize(loss, x0, args=(kind,), method="Nelder-Mead", options={
            "xatol": 0.01, "fatol": 1e-5, "adaptive": True, "maxiter": 400 * x0.size, "initial_simplex": simplex})

    def search():
        best, timer = None, "oldest"
        for kind in timers:  # each batching rule from every start, both directions (one descent finds the other's
            for first in starts:  # basin too rarely: the terms that fit one timer do not fit the other)
                x0 = np.array([pack(n, first[n]) for n in names])
                for step in (np.log(3.0), -np.log(3.0)):
                    res = descend(x0, step, kind)
                    if best is None or res.fun < best.fun - 1e-3:
                        best, timer = res, kind
        return best, timer

    best, timer = search()
    v = unpack(best.x, timer)
    # A front end busy enough to queue (an HTTP process) also sends the answers: the search is run again with the
    # share of its time spent on them (simulator.serve_pool; every term moves with it, so from the same starts, not
    # from this optimum). The quantiles of light loads cannot tell the two front ends apart (their losses differ by
    # < 1e-3 on LitServe's logs); the answers of one batch can: sent one at a time, they leave apart. A front end
    # that stays idle, or whose batches' answers leave together (tqsim's in-process server), keeps the one-way replay.
    busiest = max(lg.rate_rps * rate_factor(v["inflation_s"], lg.rate_rps, capacity) for lg in logs) * v["frontend_s"]
    if busiest >= FRONTEND_BUSY and answers_one_at_a_time(logs):
        names = names + ["frontend_out_share"]
        starts = [dict(first, frontend_out_share=0.3) for first in starts]
        best, timer = search()
        v = unpack(best.x, timer)
        notes.append(f"front end: {v['frontend_s'] * 1e3:.2f} ms a request, {v['frontend_out_share']:.0%} of it "
                     "spent sending the answer.")
    # Each run's own service level (run_levels), read through the replay of the fitted terms: their spread is the
    # run-to-run level the forecast draws. Its median latency would overstate it by far near a knee.
    levels = run_levels(replays, v, setup, len(logs))
    for r in replays:
        r.level = float(levels[r.run])
    if len(timers) > 1:
        notes.append(f"batch timer: {timer} (max_wait runs "
                     + ("from the oldest request's arrival" if timer == "oldest" else
                        "in windows from when a free replica starts collecting") + "), the rule that replays the "
                     "logs better.")
    runs = []
    for i, lg in enumerate(logs):
        mine = [r for r in replays if r.run == i]
        sim = np.mean([_log_quantiles(r.latency(v, setup)) for r in mine], axis=0)
        runs.append({"source": lg.source, "rate_rps": float(lg.rate_rps), "requests": lg.n,
                     "level": float(levels[i]), "fitted": not bool(knee[i]),
                     "observed_s": dict(zip(_qnames(), np.exp(mine[0].observed).tolist())),
                     "replayed_s": dict(zip(_qnames(), np.exp(sim).tolist()))})
    run_sd, run_dof, how = run_level_sd(logs, levels)
    notes.append(how)
    if capacity is not None:
        notes.append(f"capacity {capacity:.0f} req/s measured (the model's: "
                     f"{_capacity(v, mean_pool, setup, capacity):.0f} req/s).")
    phi, how = tail_dispersion(replays, v, setup, logs)
    notes.append(how)
    oh = ServingOverheads(scale=float(v["scale"]), per_batch_s=float(v["per_batch_s"]),
                          frontend_s=float(v["frontend_s"]), frontend_out_share=float(v["frontend_out_share"]),
                          response_s=float(v["response_s"]), inflation_s=float(v["inflation_s"]),
                          inflation_until_rps=capacity if v["inflation_s"] < 0 else None,
                          pause_prob=float(v["pause_prob"]), pause_s=(v["pause_mean_s"] * _EXP_QUANTILES).tolist(),
                          window_log_sd=window_level_sd(logs, window) if window else None,
                          run_log_sd=run_sd, run_log_dof=run_dof, stall_dispersion=phi, batch_timer=timer)
    if with_forward:
        oh.shape, oh.shape_by_size = known["shape"], known["shape_by_size"]
        oh.stall_prob, oh.stall_shape = known["stall_prob"], known["stall_shape"]
    return LogFit(oh, runs, notes, names, float(best.fun))


class _Batches:
    """A log's answered requests grouped by batch: each batch's size, first and last answer and newest arrival (in
    the order of :meth:`RequestLog.batches`, which gives the batch-level columns)."""

    def __init__(self, log: RequestLog):
        ok = log.ok
        _, batch, self.size = np.unique(log.batch_id[ok], return_inverse=True, return_counts=True)
        self.first_answer, self.last_answer = np.full(self.size.size, np.inf), np.full(self.size.size, -np.inf)
        self.newest_arrival = np.full(self.size.size, -np.inf)
        np.minimum.at(self.first_answer, batch, log.completion_s[ok])
        np.maximum.at(self.last_answer, batch, log.completion_s[ok])
        np.maximum.at(self.newest_arrival, batch, log.arrival_s[ok])


def answers_one_at_a_time(logs: Sequence[RequestLog]) -> bool:
    """Whether the answers of one batch leave the stack one after another (median spacing ≥ ``ANSWER_SPACING_S``
    over batches of two or more), as from one HTTP process; True when the logs do not name batches (nothing says
    otherwise). tqsim's in-process server: 0 µs; LitServe: 0.4–0.6 ms."""
    spacing = []
    for lg in logs:
        if not lg.has("batch_id"):
            return True
        b = _Batches(lg)
        several = b.size > 1
        spacing.append((b.last_answer - b.first_answer)[several] / (b.size[several] - 1))
    spacing = np.concatenate(spacing) if spacing else np.zeros(0)
    return bool(spacing.size == 0 or np.median(spacing) >= ANSWER_SPACING_S)


MIN_BACK_TO_BACK = 30  # back-to-back batches needed to read the per-batch cost from the log


def per_batch_from_cycles(logs: Sequence[RequestLog], setup: ServingSetup) -> tuple[float, int, float] | None:
    """The replica's cost per batch outside its forward call, read from batches that ran back to back: the time
    from one batch's answers to the next's, less the next one's forward time (median over such pairs), how many
    pairs, and the arrival rate they were read at (the pairs' mean). None when the logs cannot say it (no batch ids
    or forward times, or answers leaving one at a time from a front end that then paces the batches, several
    replicas without a replica column, or too few pairs).

    Back to back: every request of the next batch had arrived before the previous batch answered, and the batch
    was full (or the stack does not wait), so nothing but the replica's own work lay between the two. Latency
    quantiles alone cannot tell this cost from a serial front end or a response path: they add alike at light
    load, but only this one keeps the replica busy, and it sets the capacity (tqsim's server: 0.23 ms a batch,
    which a fit from latency put in a 0.13 ms-per-request front end, capping it 25 % low).
    """
    if not all(lg.has("batch_id") and lg.has("forward_s") for lg in logs) or answers_one_at_a_time(logs):
        return None
    if setup.replicas > 1 and not all(lg.has("replica") for lg in logs):
        return None
    rest, rates = [], []
    for lg in logs:
        b = _Batches(lg)
        answered, newest, size = b.first_answer, b.newest_arrival, b.size
        _, fwd = lg.batches("forward_s")
        replica = lg.batches("replica")[1].astype(int) if setup.replicas > 1 else np.zeros(size.size, int)
        for r in np.unique(replica):
            mine = np.flatnonzero(replica == r)
            mine = mine[np.argsort(answered[mine], kind="stable")]
            prev, nxt = mine[:-1], mine[1:]
            clean = (newest[nxt] < answered[prev]) & ((size[nxt] == setup.max_batch) | (setup.max_wait_s <= 0))
            rest.append(answered[nxt][clean] - answered[prev][clean] - fwd[nxt][clean])
            rates.append(np.full(int(clean.sum()), float(lg.rate_rps)))
    rest = np.concatenate(rest) if rest else np.zeros(0)
    if rest.size < MIN_BACK_TO_BACK:
        return None
    return max(float(np.median(rest)), 0.0), int(rest.size), float(np.mean(np.concatenate(rates)))


def overloaded(log: RequestLog) -> bool:
    """The run offered more than the stack served: it completed less than ``OVERLOADED`` of the offered rate, or
    its queue grew (the last quarter's median latency is more than ``GROWING`` times the first quarter's)."""
    if log.throughput_rps < OVERLOADED * float(log.rate_rps):
        return True
    lat = log.latency_s[_answered(log)]
    quarter = max(lat.size // 4, 1)
    return bool(np.median(lat[-quarter:]) > GROWING * np.median(lat[:quarter]))


def _capacity(v: dict, mean_pool: np.ndarray, setup: ServingSetup, rate: float) -> float:
    """Requests per second the replicas sustain with full use of batching, at arrival rate ``rate``."""
    k = np.arange(1, mean_pool.size + 1)
    factor = rate_factor(v["inflation_s"], rate, v.get("until"))
    busy = factor * (v["scale"] * mean_pool + v["per_batch_s"])
    front = 1.0 / (factor * v["frontend_s"]) if v["frontend_s"] > 0 else np.inf
    return float(min(setup.replicas * np.max(k / (busy + v["pause_prob"] * v["pause_mean_s"])), front))


class _Replay:
    """One draw of one logged run: its arrivals with a fixed pool of forward times and fixed random numbers."""

    def __init__(self, run: int, log: RequestLog, ok: np.ndarray, pool: np.ndarray, rng: np.random.Generator):
        self.run, self.log, self.ok, self.pool = run, log, ok, pool
        self.arrival_s = log.arrival_s - log.arrival_s[0]
        self.rate = float(log.rate_rps)
        self.observed = _log_quantiles(log.latency_s[ok])
        self.pick = rng.random(log.n)
        self.pause_u = rng.random(log.n)      # a batch pauses when its u < pause_prob
        self.pause_e = rng.exponential(1.0, log.n)
        self.level = 1.0  # the run's service level relative to the fit (run_levels), 1 until measured

    def latency(self, v: dict, setup: ServingSetup, pause_mult: float = 1.0, level: float | None = None) -> np.ndarray:
        """Replayed latency of the answered requests with the overheads ``v`` (request-aligned with the log), at the
        run's own service ``level`` (every CPU cost, as :meth:`WithOverheads.draw` stretches them)."""
        level = self.level if level is None else level
        factor = rate_factor(v["inflation_s"], self.rate, v.get("until")) * level
        extra = v["pause_mean_s"] * self.pause_e * (self.pause_u < v["pause_prob"] * pause_mult)
        run = serve_pool(factor * (v["scale"] * self.pool + v["per_batch_s"]), setup, self.arrival_s, self.pick,
                         extra=extra, response_s=v["response_s"] * level, frontend_s=v["frontend_s"] * factor,
                         batch_timer=v["batch_timer"], frontend_out_share=v["frontend_out_share"])
        return run.latency_s[self.ok]


TAIL_QUANTILES = np.array([0.9, 0.99])
_MULTIPLIERS = np.geomspace(0.05, 20.0, 31)


def tail_dispersion(replays: list, v: dict, setup: ServingSetup, logs: Sequence[RequestLog],
                    n_draws: int = 400, seed: int = 0) -> tuple[list[float], str]:
    """Draws of φ, the variance of a run's pause-rate multiplier (mean 1) across runs, and how it was measured.

    Each segment's multiplier is the one whose replay best matches its p90 and p99. Segments are whole runs
    when some rate was run more than once (groups of one rate), else ``CHUNK_S`` chunks of each run (a stand-in
    that understates minute-to-minute changes; the note says so). φ̂ is the pooled variance of the multipliers
    over their group's mean; φ is drawn from its posterior under the Exponential(1) prior of the white-box
    estimator (:func:`~tqsim.whatif.overheads.stall_dispersion_draws`), which keeps a few segments from
    claiming a multiplier that is nearly always 0 and rarely huge.
    """
    groups = _rate_groups(logs)
    repeated = any(len(g) > 1 for g in groups)
    # each replay's segments: (key, requests); a segment's error is summed over the run's draws
    segments = [[(r.run, slice(None))] if repeated else
                [((r.run, j), sel) for j, sel in enumerate(_chunks(r.arrival_s[r.ok], 200))] for r in replays]
    per_segment: dict = {}
    for i, m in enumerate(_MULTIPLIERS):
        for r, segs in zip(replays, segments):
            lat = r.latency(v, setup, m)
            for key, sel in segs:
                obs = np.log(np.quantile(r.log.latency_s[r.ok][sel], TAIL_QUANTILES))
                err = float(np.sum((np.log(np.quantile(lat[sel], TAIL_QUANTILES)) - obs) ** 2))
                per_segment.setdefault(key, np.zeros(_MULTIPLIERS.size))[i] += err
    by_group: dict = {}
    for key, e in per_segment.items():
        g = next(j for j, grp in enumerate(groups) if key in grp) if repeated else key[0]
        by_group.setdefault(g, []).append(float(_MULTIPLIERS[np.argmin(e)]))
    sq, dof = _pooled(np.array(ms) / np.mean(ms) for ms in by_group.values())  # relative to the group's mean
    if not dof:
        return [], "the tail's run-to-run spread was not measured (too few runs or chunks)."
    phi = sq / dof
    draws = _phi_draws(phi, dof, n_draws, seed)
    where = "repeated runs" if repeated else f"{CHUNK_S:g} s chunks of each run (understates run-to-run changes)"
    return draws, f"the tail's run-to-run spread φ = {phi:.2f} measured from {dof + len(by_group)} {where}."


def _chunks(arrival_s: np.ndarray, least: int) -> list[np.ndarray]:
    """Masks of a run's ``CHUNK_S`` chunks (by arrival time) that hold at least ``least`` requests."""
    chunk = np.floor(arrival_s / CHUNK_S).astype(int)
    return [chunk == c for c in np.unique(chunk) if (chunk == c).sum() >= least]


def _pooled(groups) -> tuple[float, int]:
    """Squared deviations from each group's own mean, summed over the groups of two or more, and their dof."""
    groups = [np.asarray(g, float) for g in groups if len(g) > 1]
    return sum(float(np.sum((g - g.mean()) ** 2)) for g in groups), sum(g.size - 1 for g in groups)


def _phi_draws(phi_hat: float, dof: int, n_draws: int, seed: int) -> list[float]:
    """Stratified draws of φ given a sample variance ``phi_hat`` on ``dof`` degrees of freedom (dof·φ̂/φ ~ χ²_dof)
    and an Exponential(1) prior."""
    grid = np.geomspace(1e-3, 20.0, 800)
    return grid_draws(grid, -0.5 * dof * np.log(grid) - 0.5 * dof * phi_hat / grid - grid, n_draws, seed)


def _rate_groups(logs: Sequence[RequestLog]) -> list[list[int]]:
    """Indices of the logs grouped by offered rate (within ``SAME_RATE``: a log's rate is measured from its
    arrivals, and an open-loop driver on a busy machine offers a few per cent more or less than it was asked)."""
    groups: list[list[int]] = []
    anchors: list[float] = []
    for i, lg in enumerate(logs):
        rate = float(lg.rate_rps)
        j = next((j for j, a in enumerate(anchors) if abs(rate - a) <= SAME_RATE * a), None)
        if j is None:
            anchors.append(rate)
            groups.append([i])
        else:
            groups[j].append(i)
    return groups


def _qnames() -> list[str]:
    return [f"p{100 * q:g}" for q in QUANTILES]


LEVELS = np.geomspace(0.4, 2.5, 75)  # a run's service level is searched on this grid (2.5 % steps)
BULK = slice(1, 4)                   # ... matching its p25, p50 and p75


def run_levels(replays: list, v: dict, setup: ServingSetup, n_runs: int) -> np.ndarray:
    """Each run's service level: the multiplier of every CPU cost (service, front end, response path) whose replay
    with the overheads ``v`` matches the run's p25–p75 (its tail is the pauses', :func:`tail_dispersion`).

    Read through the replay, not from the median latency, because near a knee a few per cent of speed move the
    latency many times over.
    """
    err = np.zeros((n_runs, LEVELS.size))
    for r in replays:
        for j, m in enumerate(LEVELS):
            err[r.run, j] += float(np.sum((_log_quantiles(r.latency(v, setup, level=m))[BULK] - r.observed[BULK]) ** 2))
    return LEVELS[np.argmin(err, axis=1)]


KNEE_RATIO = 3.0  # a run whose median latency is this many times its rate's median run's met a slow minute at its knee


def at_knee(logs: Sequence[RequestLog]) -> np.ndarray:
    """Per log: whether its median latency is ``KNEE_RATIO`` times the median over the runs at its rate (repeats)."""
    med = np.array([np.median(lg.latency_s[_answered(lg)]) for lg in logs])
    out = np.zeros(len(logs), bool)
    for g in _rate_groups(logs):
        out[g] = med[g] > KNEE_RATIO * np.median(med[g])
    return out


def run_level_sd(logs: Sequence[RequestLog], levels: np.ndarray | None = None) -> tuple[float | None, int, str]:
    """sd of a run's log service level from one run to the next at one load, its dof, and how it was measured.

    Repeated runs at one rate measure it (pooled over rates), from each run's ``levels`` (:func:`run_levels`) or,
    without them, its median latency. Without repeats, each run is cut into ``CHUNK_S`` chunks and their median
    latencies' spread stands in: minute-to-minute drift is then *under*-stated, and the note says so.
    """
    if levels is None:
        levels = np.array([np.median(lg.latency_s[_answered(lg)]) for lg in logs])
    groups = [np.log(levels[g]) for g in _rate_groups(logs)]
    sq, dof = _pooled(groups)
    if dof:
        return float(np.sqrt(sq / dof)), dof, f"run-to-run service level measured by {dof + len(groups)} runs at " \
                                               f"{len(groups)} rate(s) (sd {np.sqrt(sq / dof):.3f})."
    levels = []
    for lg in logs:
        ok = _answered(lg)
        lat = np.log(lg.latency_s[ok])
        levels.append([np.median(lat[sel]) for sel in _chunks(lg.arrival_s[ok], 20)])
    sq, dof = _pooled(levels)
    if not dof:
        return None, 0, "no run-to-run level measured (runs too short to cut into chunks)."
    sd = float(np.sqrt(sq / dof))
    return sd, dof, (f"one run per rate: the run-to-run level (sd {sd:.3f}) stands in from {CHUNK_S:g} s chunks of "
                     "each run, which understates minute-to-minute drift; repeat each rate for a measured one.")


def window_level_sd(logs: Sequence[RequestLog], window: int, min_windows: int = 4) -> float | None:
    """Pooled within-run sd of the log median latency of consecutive windows of ``window`` requests, at the
    lightest load (where latency is mostly service, not queueing); None with too few windows."""
    lg = min(logs, key=lambda x: x.rate_rps)
    lat = lg.latency_s[_answered(lg)]
    n = (lat.size // max(int(window), 1)) * int(window)
    if n // max(int(window), 1) < min_windows:
        return None
    levels = np.log(np.median(lat[:n].reshape(-1, int(window)), axis=1))
    return float(np.std(levels, ddof=1))
