"""A real serving loop to check what-ifs against, and the serving calibration it feeds.

:class:`BatchingServer` is a dynamic batcher in front of the model under test: replicas are worker
threads (torch's intra-op pool is per process, so every replica runs ``threads`` threads; with
``threads=1`` ops run on the worker's own thread and release the GIL). Its batching rule is the
simulator's (:mod:`tqsim.whatif.simulator`): the first free replica takes the oldest request and
closes the batch when it is full or when that request has waited ``max_wait`` (the timer may fire
late: that lateness is measured), at once if it already waited longer.

:func:`run_load` drives it with MLPerf LoadGen's Server scenario (``mlcommons-loadgen``: Poisson
arrivals at ``server_target_qps``), or, when LoadGen is not installed, with an in-process Poisson
driver (labelled ``driver="poisson-fallback"`` in the result). Every query's arrival (the SUT
callback), batch close and completion are recorded here, beside every batch's forward time.

:func:`calibrate_serving` runs short light- and moderate-load runs and stores the serving stack's
overheads (:class:`tqsim.whatif.service.ServingOverheads`) in
``calibration/<system>/<workload>/serving.json`` under the key ``r<replicas>-th<threads>``.
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import json
import tempfile
import threading
import time
import warnings
from collections import deque
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from tqsim.errors import UserError

now = time.perf_counter


@dataclasses.dataclass
class ServingRun:
    """What one loaded run measured. Times in seconds on ``time.perf_counter``'s clock."""

    rate_rps: float
    replicas: int
    threads: int
    max_batch: int
    max_wait_s: float
    driver: str
    arrival_s: np.ndarray        # per query, in arrival order
    close_s: np.ndarray          # when its batch closed
    done_s: np.ndarray           # when its completion was reported
    sample: np.ndarray           # evaluation-set instance served
    correct: np.ndarray          # the served prediction was right
    batch_size: np.ndarray       # per batch
    batch_close_s: np.ndarray
    batch_forward_s: np.ndarray  # forward call + synchronize
    batch_busy_s: np.ndarray     # close -> completion reported (collate, forward, post-process, respond)
    batch_timer_late_s: np.ndarray  # close - (oldest arrival + max_wait) for timer-closed batches, else NaN
    batch_replica: np.ndarray
    duration_s: float
    loadgen: dict = dataclasses.field(default_factory=dict)  # LoadGen's own summary figures, when it ran

    @property
    def latency_s(self) -> np.ndarray:
        return self.done_s - self.arrival_s

    @property
    def utilisation(self) -> list[float]:
        return [float(self.batch_busy_s[self.batch_replica == r].sum() / self.duration_s)
                for r in range(self.replicas)]

    def window_quality(self, threshold_s: float, window: int) -> np.ndarray:
        """Q@T of consecutive windows of ``window`` queries in arrival order (full windows only)."""
        n = (self.arrival_s.size // window) * window
        ok = (self.latency_s[:n] <= threshold_s) & self.correct[:n]
        return ok.reshape(-1, window).mean(axis=1)

    def summary(self, threshold_s: float, window: int, tail_q: float = 0.01) -> dict:
        lat = self.latency_s
        q = self.window_quality(threshold_s, window)
        return {"rate_rps": self.rate_rps, "achieved_rps": float((lat.size - 1) / max(np.ptp(self.arrival_s), 1e-9)),
                "queries": int(lat.size), "windows": int(q.size), "driver": self.driver,
                "latency_s": {k: float(np.percentile(lat, p)) for k, p in (("p50", 50), ("p99", 99), ("p99.9", 99.9))},
                "miss_rate": float((lat > threshold_s).mean()),
                "tail_quality": float(np.quantile(q, tail_q)) if q.size else float("nan"),
                "mean_quality": float(q.mean()) if q.size else float("nan"),
                "utilisation": self.utilisation, "mean_batch_size": float(self.batch_size.mean()),
                "loadgen": self.loadgen}


class BatchingServer:
    """Dynamic batcher + ``replicas`` worker threads around a prepared runner of the model under test."""

    def __init__(self, workload: Any, replicas: int = 1, threads: int = 1, max_batch: int = 1,
                 max_wait_s: float = 0.0, precision: str = "fp32", backend: str = "torch", device: str = "cpu",
                 capacity: int = 500_000):
        from tqsim.factors import Config
        from tqsim.measure.backends import DTYPES, prepare

        if replicas < 1 or threads < 1 or max_batch < 1 or max_wait_s < 0:
            raise UserError("replicas, threads and max-batch must be ≥ 1 and max-wait ≥ 0.")
        if backend != "torch":
            raise UserError("the serving loop runs backend=torch only; drop backend=onnxruntime for --serving.")
        self.workload = workload
        self.replicas, self.threads, self.max_batch, self.max_wait_s = replicas, threads, max_batch, max_wait_s
        self.runner = prepare(workload, Config(batch_size=max_batch, threads=threads, precision=precision,
                                               backend=backend, device=device))
        self._dtype = DTYPES[precision]
        self._device = device
        self._floats = set(workload.float_inputs)
        self._labels = np.asarray(workload.labels)
        self._queue: deque = deque()
        self._cond = threading.Condition()
        self._form = threading.Lock()  # one replica forms a batch at a time: the oldest request has one owner
        self._stop = False
        self._complete = None
        n = int(capacity)
        # Preallocated logs: no per-query Python objects for the garbage collector to walk.
        self.q_arr, self.q_close, self.q_done = np.zeros(n), np.zeros(n), np.zeros(n)
        self.q_sample = np.zeros(n, np.int64)
        self.q_ok = np.zeros(n, bool)
        self.q_n = 0
        self.b = {k: np.zeros(n) for k in ("close", "fwd", "busy", "late")}
        self.b_size = np.zeros(n, np.int64)
        self.b_rep = np.zeros(n, np.int64)
        self.b_n = 0
        self._log = threading.Lock()
        self._workers: list[threading.Thread] = []

    # -- requests in ------------------------------------------------------------------------------
    def submit(self, items: Sequence[tuple[Any, int]], t: float | None = None) -> None:
        """Enqueue ``(query_id, instance)`` pairs that arrived at ``t`` (default: now)."""
        t = now() if t is None else t
        with self._cond:
            for qid, idx in items:
                self._queue.append((t, qid, idx))
            self._cond.notify_all()

    # -- workers ----------------------------------------------------------------------------------
    def start(self, complete) -> None:
        """``complete(query_ids)`` reports finished queries (LoadGen's QuerySamplesComplete, or a no-op)."""
        self._complete, self._stop = complete, False
        self._warm()
        self._workers = [threading.Thread(target=self._work, args=(r,), daemon=True) for r in range(self.replicas)]
        for w in self._workers:
            w.start()

    def stop(self) -> None:
        with self._cond:
            self._stop = True
            self._cond.notify_all()
        for w in self._workers:
            w.join(timeout=10)

    def _warm(self) -> None:
        for k in sorted({1, self.max_batch, max(1, self.max_batch // 2)}):
            for _ in range(20):
                self._forward(np.arange(k) % self._labels.size)

    def _forward(self, idx: np.ndarray):
        import torch

        args = self.workload.collate(self.workload.inputs, idx)
        args = tuple(args) if isinstance(args, (tuple, list)) else (args,)
        args = tuple(a.to(device=self._device, dtype=self._dtype if i in self._floats and a.is_floating_point()
                          else a.dtype) if isinstance(a, torch.Tensor) else a for i, a in enumerate(args))
        t0 = now()
        out = self.runner.forward(args)
        self.runner.synchronize()
        t1 = now()
        return out, t1 - t0

    def _take(self):
        """Block until a batch is due; return (items, close time, timer lateness or NaN) or None at stop."""
        with self._form, self._cond:
            while not self._queue and not self._stop:
                self._cond.wait()
            if self._stop:
                return None
            due = self._queue[0][0] + self.max_wait_s
            timed = False
            while len(self._queue) < self.max_batch and not self._stop:
                remaining = due - now()
                if remaining <= 0:
                    break
                timed = True
                self._cond.wait(remaining)
            k = min(self.max_batch, len(self._queue))
            items = [self._queue.popleft() for _ in range(k)]
            t_close = now()
        late = t_close - due if (timed and k < self.max_batch) else float("nan")
        return items, t_close, late

    def _work(self, replica: int) -> None:
        import torch

        torch.set_num_threads(self.threads)
        while True:
            got = self._take()
            if got is None:
                return
            items, t_close, late = got
            idx = np.fromiter((it[2] for it in items), np.int64, len(items))
            out, fwd = self._forward(idx)
            ok = self.runner.predicted_classes(out) == self._labels[idx]
            self._complete([it[1] for it in items])
            t_done = now()
            with self._log:
                q, b = self.q_n, self.b_n
                k = len(items)
                if q + k > self.q_arr.size:
                    continue
                self.q_arr[q:q + k] = [it[0] for it in items]
                self.q_close[q:q + k] = t_close
                self.q_done[q:q + k] = t_done
                self.q_sample[q:q + k] = idx
                self.q_ok[q:q + k] = ok
                self.q_n = q + k
                self.b["close"][b], self.b["fwd"][b], self.b["busy"][b], self.b["late"][b] = (
                    t_close, fwd, t_done - t_close, late)
                self.b_size[b], self.b_rep[b] = k, replica
                self.b_n = b + 1

    def reset_logs(self) -> None:
        with self._log:
            self.q_n = self.b_n = 0

    def collect(self, rate_rps: float, driver: str, duration_s: float, loadgen: dict | None = None) -> ServingRun:
        with self._log:
            q, b = self.q_n, self.b_n
            order = np.argsort(self.q_arr[:q], kind="stable")
            pick = lambda a: a[:q][order].copy()  # noqa: E731
            return ServingRun(float(rate_rps), self.replicas, self.threads, self.max_batch, self.max_wait_s, driver,
                              pick(self.q_arr), pick(self.q_close), pick(self.q_done), pick(self.q_sample),
                              pick(self.q_ok), self.b_size[:b].copy(), self.b["close"][:b].copy(),
                              self.b["fwd"][:b].copy(), self.b["busy"][:b].copy(), self.b["late"][:b].copy(),
                              self.b_rep[:b].copy(), float(duration_s), loadgen or {})


def have_loadgen() -> bool:
    try:
        import mlperf_loadgen  # noqa: F401
    except ImportError:
        return False
    return True


def run_load(server: BatchingServer, rate_rps: float, duration_s: float = 10.0, *, seed: int = 0,
             use_loadgen: bool | None = None) -> ServingRun:
    """One loaded run at ``rate_rps`` Poisson arrivals for about ``duration_s``, recorded per query.

    LoadGen's Server scenario drives it when ``mlcommons-loadgen`` is installed (LoadGen's own p50/p99,
    which include its issue delay, are kept under ``loadgen``); otherwise an in-process Poisson driver
    (``driver="poisson-fallback"``).
    """
    if not (rate_rps > 0 and duration_s > 0):
        raise UserError("rate and duration of a serving run must be positive.")
    use_loadgen = have_loadgen() if use_loadgen is None else use_loadgen
    server.reset_logs()
    if use_loadgen:
        return _run_loadgen(server, rate_rps, duration_s, seed)
    return _run_poisson(server, rate_rps, duration_s, seed)


def _run_loadgen(server: BatchingServer, rate_rps: float, duration_s: float, seed: int) -> ServingRun:
    import mlperf_loadgen as lg

    n_inst = server._labels.size

    def issue(queries):
        server.submit([(q.id, q.index) for q in queries])

    sut = lg.ConstructSUT(issue, lambda: None)
    qsl = lg.ConstructQSL(n_inst, n_inst, lambda s: None, lambda s: None)
    st = lg.TestSettings()
    st.scenario = lg.TestScenario.Server
    st.mode = lg.TestMode.PerformanceOnly
    st.server_target_qps = float(rate_rps)
    st.server_target_latency_ns = int(1e9)
    st.min_duration_ms = int(duration_s * 1000)
    st.max_duration_ms = int(duration_s * 1000 * 3)
    st.min_query_count = max(1, int(rate_rps * duration_s * 0.5))
    st.qsl_rng_seed = st.sample_index_rng_seed = st.schedule_rng_seed = int(seed) + 1
    with tempfile.TemporaryDirectory() as out:
        ls = lg.LogSettings()
        ls.log_output.outdir = out
        ls.log_output.copy_summary_to_stdout = False
        server.start(lambda ids: lg.QuerySamplesComplete([lg.QuerySampleResponse(i, 0, 0) for i in ids]))
        t0 = now()
        try:
            lg.StartTestWithLogSettings(sut, qsl, st, ls)
        finally:
            elapsed = now() - t0
            server.stop()
            lg.DestroyQSL(qsl)
            lg.DestroySUT(sut)
        summary = _loadgen_summary(Path(out) / "mlperf_log_summary.txt")
    return server.collect(rate_rps, "loadgen-server", elapsed, summary)


def _loadgen_summary(path: Path) -> dict:
    """LoadGen's own figures (its latency includes its issue delay): percentiles in seconds."""
    out: dict = {}
    if not path.exists():
        return out
    for line in path.read_text().splitlines():
        key, _, value = line.partition(":")
        key, value = key.strip(), value.strip()
        if key.endswith("percentile latency (ns)"):
            out["p" + key.split()[0].rstrip("0").rstrip(".")] = float(value) * 1e-9
        elif key in ("Completed samples per second", "Scheduled samples per second"):
            out[key.split()[0].lower() + "_rps"] = float(value)
        elif key == "Result is":
            out["result"] = value
    return out


def _run_poisson(server: BatchingServer, rate_rps: float, duration_s: float, seed: int) -> ServingRun:
    """Fallback driver: a thread issues Poisson arrivals (busy-waits the last 200 µs before each)."""
    rng = np.random.default_rng(seed)
    n = int(rate_rps * duration_s)
    gaps = rng.exponential(1.0 / rate_rps, n)
    samples = rng.integers(0, server._labels.size, n)
    server.start(lambda ids: None)
    t0 = now()
    due = t0
    for i in range(n):
        due += gaps[i]
        while True:
            left = due - now()
            if left <= 0:
                break
            if left > 3e-4:
                time.sleep(left - 2e-4)
        server.submit([(i, int(samples[i]))])
    while True:  # drain
        with server._cond:
            if not server._queue:
                break
        time.sleep(0.01)
    time.sleep(0.05)
    elapsed = now() - t0
    server.stop()
    return server.collect(rate_rps, "poisson-fallback", elapsed)


# -- serving calibration ---------------------------------------------------------------------------

STALL_RATIO = 5.0  # a batch stalls when its in-server forward time exceeds 5x its batch size's median
PROBE_LOAD = 0.05  # the probe's rate, as a fraction of the forward-time-only capacity
SATURATED = 0.9  # a serving run whose replicas were busier than this measured a queue, not overheads

def fit_overheads(runs: Sequence[ServingRun], forward, window: int | None = None) -> "ServingOverheads":
    """Fit :class:`ServingOverheads` from loaded runs and the calibrated forward-time model ``forward``.

    ``scale`` = median ratio of in-server forward times to the calibrated median at the same batch
    size; per-batch and per-request costs = a least-squares line through the median (busy - forward)
    per batch size; ``timer_late_s`` = quantiles of the measured lateness; pauses = batches whose
    overhead (busy - forward) exceeds 20× its median and 2 ms; ``shape`` = the in-server spread of
    forward times around their median (see :class:`~tqsim.whatif.service.ServingOverheads`);
    ``window_log_sd`` = the spread of the served level from one window of ``window`` requests to the
    next (sd of each window's mean log forward time relative to its batch size's median, within a
    run, pooled): how much a "pass" moves while serving, measured where it is served.

    ``inflation_s`` (g): in one Python process the driver's callbacks and the replicas share the
    GIL, so a batch of the same size takes longer the more requests arrive per second. With runs
    at two or more rates, g is fitted from the ratio of median busy times at equal batch sizes,
    ``mean busy(k, λ) ∝ 1 + g λ``; every other term is then fitted on busy / (1 + g λ).
    """
    from tqsim.whatif.service import ServingOverheads

    g = _fit_inflation(runs)
    k = np.concatenate([r.batch_size for r in runs])
    infl = np.concatenate([np.full(r.batch_size.size, 1 + g * r.rate_rps) for r in runs])
    fwd = np.concatenate([r.batch_forward_s for r in runs]) / infl
    busy = np.concatenate([r.batch_busy_s for r in runs]) / infl
    late = np.concatenate([r.batch_timer_late_s for r in runs])
    sizes = np.unique(k)
    cal = {int(s): float(np.median(forward.sample(np.full(4000, int(s)), np.random.default_rng(0)))) for s in sizes}
    ratio = fwd / np.array([cal[int(s)] for s in k])
    scale = float(np.median(ratio))
    # The spread of in-server forward times around their own median per batch size, pooled: the
    # body as quantiles, the stalls (> STALL_RATIO × the median) kept whole, since their rate is
    # what moves from one run to the next.
    med_fwd = {int(s): float(np.median(fwd[k == s])) for s in sizes}
    rel = fwd / np.array([med_fwd[int(s)] for s in k])
    stalled = rel > STALL_RATIO
    shape = np.quantile(rel[~stalled], np.linspace(0.0005, 0.9995, 1000)).tolist()
    over = busy - fwd
    med_k = np.array([np.median(over[k == s]) for s in sizes])
    w = np.array([np.sum(k == s) for s in sizes], dtype=float)
    if sizes.size >= 2:
        slope, icpt = np.polyfit(sizes.astype(float), med_k, 1, w=np.sqrt(w))
        slope = max(float(slope), 0.0)
        icpt = float(np.average(med_k - slope * sizes, weights=w))
    else:
        slope, icpt = 0.0, float(med_k[0] - 0.0)
    per_request = slope
    per_batch = max(icpt, 0.0)
    # Pauses of the serving stack itself (not forward outliers, which ``shape`` holds): overheads
    # far beyond their typical size.
    typical = np.array([max(float(np.median(over[k == s])), 0.0) for s in k])
    pause = (over > 20 * typical) & (over > 2e-3)
    late = late[np.isfinite(late)]
    late_q = np.quantile(np.maximum(late, 0.0), np.linspace(0.005, 0.995, 100)).tolist() if late.size else [0.0]
    run_sd, run_dof = _run_log_sd(runs, g)
    return ServingOverheads(scale=scale, per_batch_s=per_batch, per_request_s=per_request, response_s=0.0,
                            timer_late_s=late_q, pause_prob=float(pause.mean()),
                            pause_s=(over[pause] - typical[pause]).tolist(), shape=shape, inflation_s=g,
                            window_log_sd=_window_log_sd(runs, med_fwd, window) if window else None,
                            run_log_sd=run_sd, run_log_dof=run_dof,
                            stall_prob=float(stalled.mean()), stall_shape=np.sort(rel[stalled]).tolist(),
                            stall_dispersion=stall_dispersion_draws(runs, stalled | pause))



def stall_dispersion_draws(runs: Sequence[ServingRun], stalled: np.ndarray, n_draws: int = 400,
                           seed: int = 0) -> list[float]:
    """Posterior draws of φ, the squared coefficient of variation of a run's stall rate across runs.

    Model: run r's stall rate is ``p · m_r`` with ``m_r ~ Gamma(1/φ, φ)`` (mean 1, variance φ), so
    its stall count is negative binomial. Runs at one rate share p; conditioning on each rate's
    total removes p exactly, leaving a Dirichlet-multinomial in φ over the runs at that rate (shape
    ``n_r / (φ n̄)`` per run, n_r its batches: exposure-proportional, exact for equal exposures).
    Prior φ ~ Exponential(1). The posterior is evaluated on a grid and drawn by inverse CDF; with few
    runs it is wide, and that width reaches the forecast's intervals. ``stalled`` flags the batches of
    all runs, concatenated in run order. [] without repeated rates.
    """
    from scipy.special import gammaln

    sizes = np.array([r.batch_size.size for r in runs], dtype=float)
    per_run = np.array([flags.sum() for flags in np.split(stalled, np.cumsum(sizes[:-1]).astype(int))], dtype=float)
    by_rate: dict[float, list[int]] = {}
    for i, r in enumerate(runs):
        by_rate.setdefault(round(float(r.rate_rps), 1), []).append(i)
    groups = []
    for idx in by_rate.values():
        if len(idx) < 2:
            continue
        n, counts = sizes[idx], per_run[idx]
        if counts.sum() > 0 and n.min() > 0:
            groups.append((counts, n / n.mean()))
    if not groups:
        return []
    phi = np.r_[1e-6, np.geomspace(1e-3, 20.0, 600)]
    loglik = np.zeros_like(phi)
    for counts, expo in groups:
        alpha = expo[None, :] / phi[:, None]  # [grid, run]
        loglik += (gammaln(alpha.sum(1)) - gammaln(counts.sum() + alpha.sum(1))
                   + np.sum(gammaln(counts[None, :] + alpha) - gammaln(alpha), axis=1))
    logpost = loglik - phi  # Exponential(1) prior on φ
    width = np.gradient(phi)
    w = np.exp(logpost - logpost.max()) * width
    cdf = np.cumsum(w) / w.sum()
    u = (np.arange(n_draws) + np.random.default_rng(seed).random(n_draws)) / n_draws  # stratified
    return np.round(np.interp(u, cdf, phi), 5).tolist()


def _run_log_sd(runs: Sequence[ServingRun], g: float) -> tuple[float | None, int]:
    """Pooled sd, between repeated runs at the same rate, of each run's served level, and its dof.

    A run's level is the median over its batches of log(busy / (1 + g λ)) relative to the median at
    the same batch size over the runs at that rate. (None, 0) without repeats."""
    by_rate: dict[float, list[ServingRun]] = {}
    for r in runs:
        by_rate.setdefault(round(float(r.rate_rps), 1), []).append(r)
    sq, dof = 0.0, 0
    for rate, group in by_rate.items():
        if len(group) < 2:
            continue
        per_run = [np.log(r.batch_busy_s / (1 + g * rate)) for r in group]
        k, busy = np.concatenate([r.batch_size for r in group]), np.concatenate(per_run)
        med = {int(s): float(np.median(busy[k == s])) for s in np.unique(k)}
        levels = np.array([np.median(b - np.array([med[int(s)] for s in r.batch_size]))
                           for r, b in zip(group, per_run)])
        sq += float(np.sum((levels - levels.mean()) ** 2))
        dof += len(group) - 1
    return (float(np.sqrt(sq / dof)), dof) if dof else (None, 0)


def _window_log_sd(runs: Sequence[ServingRun], med_fwd: dict, window: int, min_windows: int = 4) -> float | None:
    """Pooled within-run sd of per-window mean log(forward / median at its batch size); None if too few windows."""
    sq, dof, n_windows = 0.0, 0, 0
    for r in runs:
        order = np.argsort(r.batch_close_s, kind="stable")
        k = r.batch_size[order]
        rel = np.log(r.batch_forward_s[order] / np.array([med_fwd.get(int(s), np.nan) for s in k]))
        ok = np.isfinite(rel)
        win = ((np.cumsum(k) - k) // max(int(window), 1))[ok]
        counts = np.bincount(win)
        means = (np.bincount(win, weights=rel[ok]) / np.maximum(counts, 1))[counts > 0]
        n_windows += means.size
        if means.size >= 2:
            sq += float(np.sum((means - means.mean()) ** 2))
            dof += means.size - 1
    return float(np.sqrt(sq / dof)) if n_windows >= min_windows and dof > 0 else None


def _robust_mean(x: np.ndarray) -> float:
    """Mean of the values up to the 99.5th percentile: stalls count, a single freak pause does not."""
    return float(np.mean(np.minimum(x, np.quantile(x, 0.995))))


def _fit_inflation(runs: Sequence[ServingRun], min_batches: int = 20) -> float:
    """g of ``busy ∝ 1 + g λ`` from pairs of runs at different rates (weighted median over batch sizes); ≥ 0.

    Means, not medians: contention shows as more frequent stalls (measured with two thread replicas:
    batches of one taking > 2 ms went from 0.2 % at 800 req/s to 9.6 % at 2,600 req/s while the median
    busy time stayed within 15 %), and it is the mean that sets utilisation and saturation.
    """
    est, weight = [], []
    for i, lo in enumerate(runs):
        for hi in runs[i + 1:]:
            a, b = (lo, hi) if lo.rate_rps < hi.rate_rps else (hi, lo)
            if b.rate_rps <= a.rate_rps * 1.2:
                continue
            for s in np.intersect1d(a.batch_size, b.batch_size):
                ma, mb = a.batch_size == s, b.batch_size == s
                if ma.sum() < min_batches or mb.sum() < min_batches:
                    continue
                ratio = _robust_mean(b.batch_busy_s[mb]) / _robust_mean(a.batch_busy_s[ma])
                den = b.rate_rps - ratio * a.rate_rps
                if den > 0:
                    est.append((ratio - 1) / den)
                    weight.append(min(ma.sum(), mb.sum()))
    if not est:
        return 0.0
    order = np.argsort(est)
    cw = np.cumsum(np.asarray(weight, float)[order])
    return max(float(np.asarray(est)[order][np.searchsorted(cw, cw[-1] / 2)]), 0.0)  # weighted median


def _rates_from_probe(server: BatchingServer, forward, setup, loads: Sequence[float], duration_s: float,
                      seed: int, use_loadgen: bool | None) -> list[float]:
    """``loads`` × the capacity predicted with the overheads of one light probe run.

    Forward time alone overstates what a server sustains: with 2 replicas and batches of 16 the
    forward-only capacity here was ~43,000 req/s and the server saturated below 13,000, so rates set
    from it ran a calibration at saturation. The probe starts at ``PROBE_LOAD`` of the forward-only
    capacity and is repeated 4× slower while its replicas are saturated.
    """
    from tqsim.whatif.service import WithOverheads
    from tqsim.whatif.simulator import capacity_rps, saturation_rps

    rate = PROBE_LOAD * capacity_rps(forward, setup)
    for _ in range(4):
        probe = run_load(server, round(rate, 1), duration_s, seed=seed + 999, use_loadgen=use_loadgen)
        if np.mean(probe.utilisation) < SATURATED:
            break
        rate /= 4
    served = saturation_rps(WithOverheads(forward, fit_overheads([probe], forward)), setup)
    return [round(f * served, 1) for f in loads]


def calibrate_serving(workload_spec: str, home=None, system: str | None = None, *, replicas: int = 1,
                      threads: int = 1, max_batch: int = 8, max_wait_s: float = 0.5e-3, precision: str = "fp32",
                      rates_rps: Sequence[float] | None = None, loads: Sequence[float] = (0.2, 0.5),
                      duration_s: float = 8.0, repeats: int = 3, seed: int = 0, use_loadgen: bool | None = None,
                      workload: Any = None, progress: Any = None) -> Path:
    """Measure the serving stack's overheads for one set-up and store them; return the file's path.

    Needs the forward-time calibration of ``threads``/``precision`` in the workspace (``tqsim
    calibrate``). Runs the real :class:`BatchingServer` at ``rates_rps`` (default: ``loads`` times
    the capacity a probe run predicts, i.e. light and moderate load) for ``duration_s`` each,
    ``repeats`` times (how much a whole run's level moves from one run to the next), fits
    :class:`~tqsim.whatif.service.ServingOverheads` and merges them into
    ``calibration/<system>/<workload>/serving.json`` under ``r<replicas>-th<threads>``.
    ``progress`` (a :class:`~tqsim.measure.campaign.Progress`) is told of every run.
    """
    from tqsim.data.workspace import Workspace, default_system_name, safe_name, workload_name_of
    from tqsim.measure.campaign import Progress
    from tqsim.whatif.service import SERVING_FILE, EmpiricalService, serving_key
    from tqsim.whatif.simulator import ServingSetup

    ws = Workspace.at(home)
    system = system or (ws.systems()[0] if len(ws.systems()) == 1 else default_system_name())
    name = safe_name(workload_name_of(workload_spec))
    folder = ws.calibration_dir(system, name)
    forward = EmpiricalService.from_calibration_dir(folder, threads, precision)
    if workload is None:
        from tqsim.workloads.registry import get_workload

        workload = get_workload(workload_spec)
    setup = ServingSetup(replicas, threads, max_batch, max_wait_s, precision)
    server = BatchingServer(workload, replicas, threads, max_batch, max_wait_s, precision)
    repeats = max(int(repeats), 1)
    progress = progress or Progress()
    progress.start(repeats * len(rates_rps) if rates_rps is not None else repeats * len(loads) + 1)
    if rates_rps is None:
        rates_rps = _rates_from_probe(server, forward, setup, loads, min(duration_s, 4.0), seed, use_loadgen)
        progress.advance("probe")
    # repeats interleaved over the rates, so that a slow minute does not pass for a rate effect
    runs = []
    for j in range(repeats):
        for i, r in enumerate(rates_rps):
            runs.append(run_load(server, r, duration_s, seed=seed + i + 100 * j, use_loadgen=use_loadgen))
            progress.advance(f"{r:g} req/s")
    saturated = sorted({r.rate_rps for r in runs if np.mean(r.utilisation) > SATURATED})
    if saturated:
        warnings.warn(f"the serving runs at {', '.join(f'{r:g}' for r in saturated)} req/s saturated the replicas "
                      f"(> {SATURATED:.0%} busy), so their overheads include queueing; calibrate again with lower "
                      "rates (omit rates to let a probe run choose them).", stacklevel=2)
    oh = fit_overheads(runs, forward, window=workload.n_instances)
    oh.source = (f"{len(runs)} serving runs ({runs[0].driver}) at {', '.join(f'{r:g}' for r in rates_rps)} req/s "
                 f"× {repeats}, {duration_s:g} s each, batch ≤ {max_batch}, wait {max_wait_s * 1e3:g} ms")
    path = folder / SERVING_FILE
    data = json.loads(path.read_text()) if path.exists() else {"workload": name, "system": system, "setups": {}}
    entry = oh.to_dict()
    entry.update(created_at=_dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
                 max_batch=max_batch, max_wait_s=max_wait_s, precision=precision, rates_rps=list(rates_rps),
                 observed=[r.summary(0.02, workload.n_instances) for r in runs])
    data["setups"][serving_key(replicas, threads)] = entry
    from tqsim.data.io import write_text_atomic

    write_text_atomic(path, json.dumps(data, indent=1, default=float))
    return path
