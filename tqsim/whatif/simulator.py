"""Discrete-event simulation of a batching server: arrivals, a dynamic batcher, c FIFO replicas.

Batcher semantics (the same as :mod:`tqsim.measure.server`'s real loop): a replica that becomes
free takes the oldest waiting request and closes its batch when ``max_batch`` requests are there or
when the oldest has waited ``max_wait`` (plus the timer's lateness), whichever is first; a request
that already waited longer closes the batch at once; ``max_wait = 0`` takes whatever is queued.
The deadline runs from each request's arrival.

The event loop is a tight scalar loop over batches, compiled with numba when it is installed (it is
a dependency of pytensor here) and plain Python otherwise. Service times come from a pool sampled
once per draw from the :class:`~tqsim.whatif.service.ServiceModel`, so the model is called in
bulk, never per batch.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Sequence

import numpy as np

from tqsim.errors import UserError
from tqsim.factors import Variant
from tqsim.quality import INTERVAL
from tqsim.whatif.service import ServiceModel

try:  # numba is optional: ~100x faster loop
    from numba import njit as _njit

    HAVE_NUMBA = True
except Exception:  # pragma: no cover - depends on the environment
    HAVE_NUMBA = False

    def _njit(*a, **k):
        return (lambda f: f) if not (a and callable(a[0])) else a[0]


@_njit(cache=True, nogil=True)
def _serve(arr, c, max_batch, max_wait, pool, pick, extra, late, win_effect, win_size,
           done, start, bsize, busy, cycle):
    """Fill ``done``/``start`` per request, ``bsize`` per batch, ``busy`` per replica; return #batches.

    ``cycle``: the timer runs in windows of ``max_wait`` from when the free replica starts collecting, back to
    back while none arrives (LitServe), instead of from the oldest request's arrival."""
    n = arr.shape[0]
    m = pool.shape[1]
    free = np.zeros(c)
    for r in range(c):
        free[r] = arr[0] if n > 0 else 0.0
    i = 0
    nb = 0
    while i < n:
        r = 0
        for q in range(1, c):
            if free[q] < free[r]:
                r = q
        t = free[r]
        a0 = arr[i]
        last = i + max_batch - 1
        if last > n - 1:
            last = n - 1
        full_at = arr[last] if last - i + 1 == max_batch else np.inf
        if cycle and max_wait > 0.0:  # the window that holds the first request (or that opens as it frees)
            opened = t if a0 <= t else t + np.floor((a0 - t) / max_wait) * max_wait
            timer = opened + max_wait
        else:
            timer = a0 + max_wait
        if max_wait > 0.0 and timer > t and full_at > timer:
            timer += late[nb]  # a real timer fires late
        close = timer if timer < full_at else full_at
        if close < t:
            close = t
        if close < a0:
            close = a0
        j = i + 1
        while j < n and j - i < max_batch and arr[j] <= close:
            j += 1
        k = j - i
        s = pool[k - 1, int(pick[nb] * m)] * win_effect[i // win_size] + extra[nb]
        end = close + s
        for q in range(i, j):
            done[q] = end
            start[q] = close
        bsize[nb] = k
        busy[r] += s
        free[r] = end
        nb += 1
        i = j
    return nb


@dataclasses.dataclass(frozen=True)
class ServingSetup:
    """One serving set-up: replicas × threads with a dynamic batcher, at one precision, backend and device."""

    replicas: int = 1
    threads: int = 1
    max_batch: int = 1
    max_wait_s: float = 0.0
    precision: str = "fp32"
    backend: str = "torch"
    device: str = "cpu"

    def __post_init__(self):
        for name in ("replicas", "threads", "max_batch"):
            v = getattr(self, name)
            if not (isinstance(v, (int, np.integer)) and v >= 1):
                raise UserError(f"{name.replace('_', '-')}={v}: must be a whole number ≥ 1.")
        if not (math.isfinite(self.max_wait_s) and self.max_wait_s >= 0):
            raise UserError(f"max-wait={self.max_wait_s}: must be ≥ 0 seconds.")

    @property
    def cores(self) -> int:
        return self.replicas * self.threads

    @property
    def gpus(self) -> int:
        """One GPU per replica on device=cuda (a replica's threads are host threads, counted in cores)."""
        return self.replicas if self.device == "cuda" else 0

    @property
    def variant(self) -> Variant:
        return Variant(self.precision, self.backend, self.device)

    def label(self) -> str:
        where = "" if (self.backend, self.device) == ("torch", "cpu") else f" {self.backend}/{self.device}"
        return (f"{self.replicas}×th{self.threads} batch≤{self.max_batch} wait {self.max_wait_s * 1e3:g}ms "
                f"{self.precision}{where}")


@dataclasses.dataclass
class Run:
    """One simulated run (one draw): raw per-request arrays, kept for tests and custom statistics."""

    arrival_s: np.ndarray
    start_s: np.ndarray     # when its batch closed and service began
    done_s: np.ndarray      # when the request's response was out (batch end + response overhead)
    batch_sizes: np.ndarray
    busy_s: np.ndarray      # per replica

    @property
    def latency_s(self) -> np.ndarray:
        return self.done_s - self.arrival_s

    @property
    def utilisation(self) -> np.ndarray:
        span = float(self.done_s.max() - self.arrival_s.min()) if self.done_s.size else 1.0
        return self.busy_s / max(span, 1e-12)


def capacity_rps(service: ServiceModel, setup: ServingSetup, n: int = 4000) -> float:
    """Largest sustainable rate: replicas × the best k / mean service time of a batch of k ≤ max_batch, and no more
    than a serial front end passes."""
    rng = np.random.default_rng(0)
    ks = np.arange(1, setup.max_batch + 1)
    mean = service.sample(np.repeat(ks, n), rng).reshape(ks.size, n).mean(axis=1)
    mean = mean + service.extra_batch_s(ks.size * n, rng).mean()
    front = 1.0 / service.frontend_s if service.frontend_s > 0 else np.inf
    return float(min(setup.replicas * np.max(ks / mean), front))


def fixed_batch_capacity(service: ServiceModel, batch_size: int, replicas: int, rng: np.random.Generator,
                         n: int = 2000) -> tuple[float, float]:
    """``(requests/s, mean seconds per batch)`` of replicas always serving batches of ``batch_size``, in one
    draw of ``service`` (forward time plus per-batch overheads): a quick scale for rates and deadlines."""
    one = service.draw(rng)
    k = np.full(n, batch_size, dtype=int)
    mean_s = float(np.mean(one.sample(k, rng)) + np.mean(one.extra_batch_s(k.size, rng)))
    return replicas * batch_size / mean_s, mean_s


def saturation_rps(service: ServiceModel, setup: ServingSetup, n: int = 40000, busy: float = 0.95,
                   seed: int = 0) -> float:
    """The arrival rate at which simulated replicas (or a serial front end) are ``busy`` (fraction) of the time.

    Unlike :func:`capacity_rps` it counts the batches the batcher actually forms at that load. A
    batching server stays stable above it (batches grow) up to :func:`capacity_rps`, but latency
    climbs steeply there: it is where queueing starts to dominate, a conservative knee.
    """
    hi = capacity_rps(service, setup) * 1.2
    lo = 0.0
    for _ in range(14):
        mid = (lo + hi) / 2
        rng = np.random.default_rng(seed)
        svc = service.at_rate(mid) if hasattr(service, "at_rate") else service
        run = simulate_run(svc, setup, poisson_arrivals(mid, n, rng), rng, window=n)
        if max(float(np.mean(run.utilisation)), mid * svc.frontend_s) >= busy:  # replicas or the front end
            hi = mid
        else:
            lo = mid
    return (lo + hi) / 2


def poisson_arrivals(rate_rps: float, n: int, rng: np.random.Generator) -> np.ndarray:
    check_rate(rate_rps)
    return np.cumsum(rng.exponential(1.0 / rate_rps, n))


def check_rate(rate_rps: float) -> None:
    if not (isinstance(rate_rps, (int, float, np.number)) and math.isfinite(rate_rps) and rate_rps > 0):
        raise UserError(f"rate={rate_rps}: must be a positive, finite number of requests per second.")


def check_trace(arrivals_s: np.ndarray, source: str = "trace") -> np.ndarray:
    a = np.asarray(arrivals_s, dtype=float).ravel()
    if a.size == 0:
        raise UserError(f"{source}: holds no timestamps.")
    if not np.isfinite(a).all() or (a < 0).any():
        raise UserError(f"{source}: timestamps must be finite and ≥ 0 seconds.")
    if (np.diff(a) < 0).any():
        i = int(np.flatnonzero(np.diff(a) < 0)[0])
        raise UserError(f"{source}: timestamps must be sorted; line {i + 2} ({a[i + 1]}) comes before "
                        f"line {i + 1} ({a[i]}).")
    return a


def read_trace(path) -> np.ndarray:
    """A trace file: one arrival timestamp in seconds per line (``#`` comments allowed), or ``.npy``."""
    from pathlib import Path

    p = Path(path)
    if not p.exists():
        raise UserError(f"{p}: no such trace file.")
    if not p.is_file():
        raise UserError(f"{p}: is not a file; give a trace file with one arrival timestamp (seconds) per line.")
    import warnings

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # numpy warns about an empty file before we can say so
            a = np.load(p) if p.suffix == ".npy" else np.loadtxt(p, comments="#", ndmin=1, delimiter=None)
    except (ValueError, OSError, UnicodeDecodeError) as exc:
        raise UserError(f"{p}: not a list of timestamps in seconds, one per line "
                        f"({exc.__class__.__name__}).") from None
    a = check_trace(a, str(p))
    if a.size < 2 or a[-1] <= a[0]:
        raise UserError(f"{p}: a trace needs at least two distinct timestamps to have a rate.")
    return a


def simulate_run(service: ServiceModel, setup: ServingSetup, arrivals_s: np.ndarray,
                 rng: np.random.Generator, window: int | None = None) -> Run:
    """Simulate one run for one draw of ``service`` (already drawn) over the given arrivals."""
    arr = np.ascontiguousarray(arrivals_s, dtype=float)
    n = arr.size
    window = int(window or max(n, 1))
    pool = service_pool(service, setup, n, rng)
    pick = rng.random(n)
    return serve_pool(pool, setup, arr, pick, extra=service.extra_batch_s(n, rng), late=service.timer_lateness(n, rng),
                      effect=service.pass_effects(n // window + 1, rng), window=window, response_s=service.response_s,
                      frontend_s=service.frontend_s, batch_timer=service.batch_timer,
                      frontend_out_share=service.frontend_out_share)


def service_pool(service: ServiceModel, setup: ServingSetup, n: int, rng: np.random.Generator) -> np.ndarray:
    """Service times ``[batch size - 1, draw]`` for every batch size a run of ``n`` requests can form.

    Bounded by the work, not by the knob (--max-batch 1000000 once asked for 16 GB here)."""
    b = int(min(setup.max_batch, max(n, 1)))
    m = int(np.clip((1 << 17) // b, 64, 1 << 16))
    return np.ascontiguousarray(service.sample(np.repeat(np.arange(1, b + 1), m), rng).reshape(b, m), dtype=float)


def serve_pool(pool: np.ndarray, setup: ServingSetup, arrivals_s: np.ndarray, pick: np.ndarray, *,
               extra: np.ndarray | None = None, late: np.ndarray | None = None, effect: np.ndarray | None = None,
               window: int | None = None, response_s: float = 0.0, frontend_s: float = 0.0,
               batch_timer: str = "oldest", frontend_out_share: float = 0.0) -> Run:
    """Serve ``arrivals_s`` with batch times taken from ``pool`` (:func:`service_pool`) at the uniform ``pick``s.

    Split from :func:`simulate_run` so that a fit can transform one pool of forward times many times
    (common random numbers) without sampling the service model again. ``frontend_s``: each request first passes
    a serial front end (one HTTP process) that takes this long per request, before the batcher sees it.
    ``batch_timer``: when ``max_wait`` runs out: "oldest" (from the oldest request's arrival: tqsim's server,
    Triton's queue delay) or "cycle" (in windows from when the free replica starts collecting: LitServe).
    ``frontend_out_share``: the share of ``frontend_s`` the front end spends again on each request's answer, after its
    batch ends (one HTTP process decodes requests and sends answers on one event loop): answers then queue behind
    requests and requests behind answers, solved by :data:`FRONTEND_PASSES` passes of replaying both."""
    arrived = np.ascontiguousarray(arrivals_s, dtype=float)
    share = float(frontend_out_share) if frontend_s > 0 else 0.0
    arr = frontend_departures(arrived, frontend_s * (1.0 - share)) if frontend_s > 0 else arrived
    done, start, sizes, busy = _batches(arr, pool, setup, pick, extra, late, effect, window, batch_timer)
    span = float(arrived[-1] - arrived[0]) if arrived.size > 1 else 0.0
    if share <= 0.0 or arrived.size * frontend_s < 0.01 * span:  # a front end under 1 % busy queues nothing
        return Run(arrived, start, done + response_s, sizes, busy)
    for _ in range(FRONTEND_PASSES):
        arr, _ = frontend_both_ways(arrived, done, frontend_s * (1.0 - share), frontend_s * share)
        done, start, sizes, busy = _batches(arr, pool, setup, pick, extra, late, effect, window, batch_timer)
    _, answered = frontend_both_ways(arrived, done, frontend_s * (1.0 - share), frontend_s * share)
    return Run(arrived, start, answered + response_s, sizes, busy)


FRONTEND_PASSES = 3  # passes of (front end both ways, batcher): the answers' delays move the next requests' little


def frontend_both_ways(arrivals_s: np.ndarray, done_s: np.ndarray, in_s: float, out_s: float
                       ) -> tuple[np.ndarray, np.ndarray]:
    """One FIFO front end serving each request twice: ``in_s`` when it arrives, ``out_s`` when its batch is done
    (``done_s``), in the order the two kinds of work become ready. Returns when each request leaves for the batcher
    and when its answer has been sent."""
    n = arrivals_s.size
    ready = np.concatenate([arrivals_s, done_s])
    cost = np.concatenate([np.full(n, in_s), np.full(n, out_s)])
    order = np.argsort(ready, kind="stable")
    leave = np.empty(2 * n)
    leave[order] = _lindley(ready[order], cost[order])
    return leave[:n], leave[n:]


@_njit(cache=True, nogil=True)
def _lindley(ready, cost):
    out = np.empty(ready.shape[0])
    d = -np.inf
    for i in range(ready.shape[0]):
        d = (ready[i] if ready[i] > d else d) + cost[i]
        out[i] = d
    return out


def _batches(arr, pool, setup, pick, extra, late, effect, window, batch_timer):
    """The batcher and replicas over requests reaching the batcher at ``arr``: (done, start, batch sizes, busy)."""
    n = arr.size
    window = int(window or max(n, 1))
    zeros = np.zeros(n)
    extra = zeros if extra is None else np.ascontiguousarray(extra, dtype=float)
    late = zeros if late is None else np.ascontiguousarray(late, dtype=float)
    effect = np.ones(n // window + 1) if effect is None else np.ascontiguousarray(effect, dtype=float)
    done, start = np.empty(n), np.empty(n)
    bsize = np.empty(n, dtype=np.int64)
    busy = np.zeros(setup.replicas)
    nb = _serve(arr, setup.replicas, int(setup.max_batch), float(setup.max_wait_s), np.ascontiguousarray(pool),
                np.ascontiguousarray(pick, dtype=float), extra, late, effect, window, done, start, bsize, busy,
                batch_timer == "cycle")
    return done, start, bsize[:nb], busy


def frontend_departures(arrivals_s: np.ndarray, per_request_s: float) -> np.ndarray:
    """When each request leaves a single FIFO server taking ``per_request_s`` each (Lindley's recursion
    d_i = max(a_i, d_{i−1}) + s, in closed form for a constant s: d_i = max over j ≤ i of a_j + (i − j + 1) s)."""
    i = np.arange(arrivals_s.size)
    return np.maximum.accumulate(arrivals_s - i * per_request_s) + (i + 1) * per_request_s


def central(d: dict) -> float:
    """The point forecast of an interval: its median. A run's p99 or tail quality is skewed near a knee (a few draws
    overload), where the mean can lie outside its own 90 % interval; the median is the forecast that minimises the
    expected absolute error, the error the benchmarks score. Intervals written before it existed give their mean."""
    return float(d.get("median", d["mean"]))


def _interval(x: np.ndarray, interval: float) -> dict:
    x = np.asarray(x, dtype=float)
    lo, med, hi = np.nanquantile(x, [(1 - interval) / 2, 0.5, (1 + interval) / 2]) if x.size else (np.nan,) * 3
    return {"mean": float(np.nanmean(x)) if x.size else float("nan"), "median": float(med), "lo": float(lo),
            "hi": float(hi)}


@dataclasses.dataclass
class WhatIf:
    """Per-draw statistics of a what-if; ``result(i)`` gives the ``whatif`` JSON object (docs/design.md) of threshold i."""

    setup: ServingSetup
    rate_rps: float
    thresholds_s: np.ndarray
    tail_q: float
    interval: float
    latency_s: dict           # "p50"/"p99"/"p99.9" -> [draw]
    miss_rate: np.ndarray     # [draw, threshold]
    tail_quality: np.ndarray  # [draw, threshold]
    mean_quality: np.ndarray  # [draw, threshold]
    utilisation: np.ndarray   # [draw, replica]
    mean_batch: np.ndarray    # [draw]
    requests: int
    windows: int
    no_deadline_quality: float
    batch_timer: str = "oldest"  # the batching rule simulated (the service's: a stack's serving calibration)

    def result(self, i: int = 0) -> dict:
        s = self.setup
        return {
            "rate_rps": float(self.rate_rps), "replicas": s.replicas, "threads": s.threads,
            "max_batch": s.max_batch, "max_wait_s": float(s.max_wait_s), "precision": s.precision,
            "backend": s.backend, "device": s.device,
            "threshold_s": float(self.thresholds_s[i]),
            "latency_s": {k: _interval(v, self.interval) for k, v in self.latency_s.items()},
            "miss_rate": _interval(self.miss_rate[:, i], self.interval),
            "tail_quality": _interval(self.tail_quality[:, i], self.interval),
            "tail_q": self.tail_q,
            "mean_quality": _interval(self.mean_quality[:, i], self.interval),
            "no_deadline_quality": self.no_deadline_quality,
            "utilisation": [float(u) for u in np.mean(self.utilisation, axis=0)],
            "mean_batch_size": float(np.mean(self.mean_batch)),
            "saturated": self.saturated,
            "draws": int(self.miss_rate.shape[0]), "requests_per_draw": self.requests, "windows": self.windows,
        }

    @property
    def saturated(self) -> bool:
        """Replicas (nearly) always busy *with full batches*: the queue grows for as long as the run
        lasts, so latency figures depend on the simulated duration, not on a steady state. (Busy alone
        is not enough: a batching server stays stable while its batches can still grow.)"""
        return bool(np.mean(self.utilisation) >= 0.97 and np.mean(self.mean_batch) >= 0.95 * self.setup.max_batch)

    def results(self) -> list[dict]:
        return [self.result(i) for i in range(len(self.thresholds_s))]


def simulate(service: ServiceModel, setup: ServingSetup, *, thresholds_s: Sequence[float],
             rate_rps: float | None = None, arrivals_s: np.ndarray | None = None,
             score: np.ndarray | None = None, n_windows: int = 100, draws: int = 40,
             tail_q: float = 0.01, interval: float = INTERVAL, seed: int = 0, samples: str = "replay") -> WhatIf:
    """Serve Poisson arrivals at ``rate_rps`` (or the replayed ``arrivals_s``) over ``draws`` draws.

    The evaluation set's per-instance ``score`` vector (in [0, 1]; correctness for accuracy) is replayed
    in arrival order; each window of ``len(score)`` requests is one pass, whose Q@T is the mean score
    with late requests scoring 0. With
    ``samples="random"`` each request is a uniform draw from the set instead, as MLPerf LoadGen's
    Server scenario issues them: a window's accuracy then varies with its composition. Tail quality of
    a draw is the ``tail_q``-quantile of its windows' Q@T; every statistic is reported over draws
    (mean and ``interval`` bounds).
    """
    thresholds = np.atleast_1d(np.asarray(thresholds_s, dtype=float))
    if not (np.isfinite(thresholds).all() and (thresholds > 0).all()):
        raise UserError("thresholds must be positive durations, e.g. 20ms.")
    if draws < 1 or n_windows < 1:
        raise UserError("draws and windows must be ≥ 1.")
    if samples not in ("replay", "random"):
        raise UserError(f"samples must be 'replay' or 'random', not '{samples}'.")
    score = np.ones(1000) if score is None else np.asarray(score, dtype=float)
    n_inst = score.size
    if arrivals_s is not None:
        trace = check_trace(arrivals_s)
        n = trace.size
        span = float(trace[-1] - trace[0])
        rate = (n - 1) / span if span > 0 else float("inf")
    else:
        check_rate(rate_rps)
        n, rate = n_windows * n_inst, float(rate_rps)
    n_win = max(n // n_inst, 1)
    used = min(n_win * n_inst, n)
    lat_q = {"p50": 50.0, "p99": 99.0, "p99.9": 99.9}
    lat = {k: np.empty(draws) for k in lat_q}
    miss = np.empty((draws, thresholds.size))
    tail = np.empty((draws, thresholds.size))
    meanq = np.empty((draws, thresholds.size))
    util = np.empty((draws, setup.replicas))
    mb = np.empty(draws)
    if hasattr(service, "at_rate"):  # load-dependent service (driver contention), see ServingOverheads
        service = service.at_rate(rate)
    for d in range(draws):
        rng = np.random.default_rng([seed, d])
        svc = service.draw(rng)
        arr = trace if arrivals_s is not None else poisson_arrivals(rate, n, rng)
        run = simulate_run(svc, setup, arr, rng, window=n_inst)
        latency = run.latency_s
        pct = np.percentile(latency, list(lat_q.values()))
        for key, v in zip(lat_q, pct):
            lat[key][d] = v
        miss[d] = (latency[:, None] > thresholds[None, :]).mean(axis=0)
        w = latency[:used].reshape(-1, min(n_inst, used))
        ok = score[: w.shape[1]][None, :] if samples == "replay" else score[rng.integers(0, n_inst, w.shape)]
        q = ((w[:, :, None] <= thresholds[None, None, :]) * ok[:, :, None]).mean(axis=1)  # [window, thr]
        tail[d] = np.quantile(q, tail_q, axis=0)
        meanq[d] = q.mean(axis=0)
        util[d] = run.utilisation
        mb[d] = run.batch_sizes.mean()
    return WhatIf(setup, rate, thresholds, tail_q, interval, lat, miss, tail, meanq, util, mb, int(n),
                  int(n_win), float(score.mean()), service.batch_timer)


def simulate_job(shared: dict, job: tuple) -> WhatIf:
    """One :func:`simulate` call described by data, for a :mod:`tqsim.parallel` pool: ``job`` is
    ``(service key, scores key, setup, keyword arguments)``, the keys index ``shared["services"]`` and
    ``shared["scores"]`` (sent once per worker, not once per job). The seed is among the keyword arguments:
    whoever runs the job, the answer is the same."""
    service, scores, setup, options = job
    return simulate(shared["services"][service], setup, score=shared["scores"][scores], **options)
