"""A real serving loop to check what-ifs against: a dynamic batcher in front of the model under test.

Replicas are worker threads (torch's intra-op pool is per process, so every replica runs ``threads``
threads; with ``threads=1`` ops run on the worker's own thread and release the GIL). Its batching
rule is the simulator's (:mod:`tqsim.whatif.simulator`): the first free replica takes the oldest
request and closes the batch when it is full or when that request has waited ``max_wait`` (the
timer may fire late: that lateness is measured), at once if it already waited longer. Every query's
arrival, batch close and completion are recorded, beside every batch's forward time, as a
:class:`~tqsim.data.serving_run.ServingRun`.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from typing import Any, Sequence

import numpy as np

from tqsim.data.serving_run import ServingRun
from tqsim.errors import UserError

now = time.perf_counter


def timed_forward(runner: Any, args: Any) -> tuple[Any, float]:
    """One collated batch (a workload's ``collate`` output) through a prepared runner: cast to its precision, move
    to its device, forward; returns the output and the forward's synchronised wall time, the one number every
    server in the loop reports per batch."""
    import torch

    from tqsim.measure.backends import DTYPES

    config = runner.config
    dtype, floats = DTYPES[config.precision], set(runner.workload.float_inputs)
    args = tuple(args) if isinstance(args, (tuple, list)) else (args,)
    args = tuple(torch.from_numpy(np.ascontiguousarray(a)) if isinstance(a, np.ndarray) else a for a in args)
    args = tuple(a.to(device=config.device, dtype=dtype if i in floats and a.is_floating_point() else a.dtype)
                 if isinstance(a, torch.Tensor) else a for i, a in enumerate(args))
    t0 = now()
    out = runner.forward(args)
    runner.synchronize()
    return out, now() - t0


class BatchingServer:
    """Dynamic batcher + ``replicas`` worker threads around a prepared runner of the model under test."""

    def __init__(self, workload: Any, replicas: int = 1, threads: int = 1, max_batch: int = 1,
                 max_wait_s: float = 0.0, precision: str = "fp32", backend: str = "torch", device: str = "cpu",
                 capacity: int = 500_000):
        from tqsim.factors import Config
        from tqsim.measure.backends import prepare

        if replicas < 1 or threads < 1 or max_batch < 1 or max_wait_s < 0:
            raise UserError("replicas, threads and max-batch must be ≥ 1 and max-wait ≥ 0.")
        if backend != "torch":
            raise UserError("the serving loop runs backend=torch only; drop backend=onnxruntime for --serving.")
        self.workload = workload
        self.replicas, self.threads, self.max_batch, self.max_wait_s = replicas, threads, max_batch, max_wait_s
        self.runner = prepare(workload, Config(batch_size=max_batch, threads=threads, precision=precision,
                                               backend=backend, device=device))
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
        return timed_forward(self.runner, self.workload.collate(self.workload.inputs, idx))

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

    @property
    def n_instances(self) -> int:
        """Instances of the evaluation set a query can ask for."""
        return int(self._labels.size)

    def queue_empty(self) -> bool:
        """No request is waiting for a batch (the drivers drain on it)."""
        with self._cond:
            return not self._queue

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
