"""Where independent computations run: in this thread, on a local thread pool, or on Dask workers, behind one
order-keeping ``map``. Every task carries its own inputs and seed, so the answers are the same, seed for seed,
whichever of these runs them and in whatever order (issue 17); only the wall time changes.

A thread pool is the local default because the serving simulator's event loop releases the GIL (numba,
``nogil``) and a pool of threads shares the service models without copying them; the Dask pool scatters the
shared inputs once per worker instead of once per task.
"""

from __future__ import annotations

import contextlib
import os
from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait
from typing import Any, Callable, Iterator, Sequence

Done = Callable[[int, Any], None]


class Serial:
    """Runs the tasks one after the other in this thread: what ``--workers 1`` means, and what a library call
    without a pool gets."""

    workers = 1

    def map(self, fn: Callable, items: Sequence, shared: Any = None, done: Done | None = None) -> list:
        """``[fn(shared, item) for item in items]``; ``done(index, result)`` is called as each task finishes."""
        out = []
        for i, item in enumerate(items):
            out.append(fn(shared, item))
            if done:
                done(i, out[-1])
        return out


class Threads(Serial):
    """A local pool of ``workers`` threads."""

    def __init__(self, pool: ThreadPoolExecutor, workers: int):
        self.pool, self.workers = pool, workers

    def map(self, fn, items, shared=None, done=None):
        futures = {self.pool.submit(fn, shared, item): i for i, item in enumerate(items)}
        out: list = [None] * len(futures)
        pending = set(futures)
        while pending:
            finished, pending = wait(pending, return_when=FIRST_EXCEPTION)
            for f in sorted(finished, key=futures.get):
                if f.exception() is not None:
                    for p in pending:
                        p.cancel()
                    raise f.exception()
                out[futures[f]] = f.result()
                if done:
                    done(futures[f], out[futures[f]])
        return out


class Cluster(Serial):
    """The workers of a Dask ``distributed.Client``; ``shared`` travels once to each worker (scattered with
    ``broadcast``), each item inside its task."""

    def __init__(self, client):
        self.client = client

    @property
    def workers(self) -> int:
        return max(len(self.client.scheduler_info()["workers"]), 1)

    def map(self, fn, items, shared=None, done=None):
        from distributed import as_completed

        if not items:
            return []
        # scattered inside a list: Dask would take a dict's entries, or a list's items, as separate data
        shared_f = self.client.scatter([shared], broadcast=True, hash=False)[0] if shared is not None else None
        # items travel inside their tasks (small: a candidate, a rate); results come back in batches
        futures = self.client.map(fn, [shared_f] * len(items), list(items), pure=False)
        index = {f.key: i for i, f in enumerate(futures)}
        out: list = [None] * len(futures)
        try:
            for f, result in as_completed(futures, with_results=True, raise_errors=True):
                out[index[f.key]] = result  # the task's own exception is raised (a UserError stays one)
                if done:
                    done(index[f.key], result)
        finally:
            self.client.cancel(futures + ([shared_f] if shared_f is not None else []))
        return out


SERIAL = Serial()


def reporting(progress: Callable[[str], None] | None, n: int, describe: Callable[[int], str]) -> Done | None:
    """A ``done`` callback that tells ``progress`` "k/n <what task i was>" in the order the tasks finish."""
    if not progress:
        return None
    count = iter(range(1, n + 1))
    return lambda i, _: progress(f"{next(count)}/{n} {describe(i)}")


def default_workers() -> int:
    """One per core this process may run on."""
    try:
        return len(os.sched_getaffinity(0)) or 1
    except AttributeError:  # pragma: no cover - not Linux
        return os.cpu_count() or 1


@contextlib.contextmanager
def pool(cluster: str | None = None, workers: int | None = None) -> Iterator[Serial]:
    """The pool a command's ``--cluster``/``--workers`` ask for: the Dask cluster at ``cluster`` (``local``:
    one started here with ``workers`` processes, default one per core), else ``workers`` local threads
    (default one per core; 1 runs serially)."""
    from tqsim.errors import UserError

    if workers is not None and workers < 1:
        raise UserError(f"--workers {workers}: give a whole number ≥ 1 (1 runs everything in one thread).")
    if cluster:
        from tqsim.cluster import connect

        with connect(cluster, workers) as client:
            yield Cluster(client)
        return
    n = workers or default_workers()
    if n == 1:
        yield SERIAL
        return
    with ThreadPoolExecutor(max_workers=n, thread_name_prefix="tqsim") as executor:
        yield Threads(executor, n)
