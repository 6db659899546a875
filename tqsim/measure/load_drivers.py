"""Load drivers for the serving loop: Poisson arrivals at a target rate, recorded per query.

:func:`run_load` drives a :class:`~tqsim.measure.server.BatchingServer` with MLPerf LoadGen's Server
scenario (``mlcommons-loadgen``: Poisson arrivals at ``server_target_qps``), or, when LoadGen is not
installed, with an in-process Poisson driver (labelled ``driver="poisson-fallback"`` in the result).
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import numpy as np

from tqsim.data.serving_run import ServingRun
from tqsim.errors import UserError
from tqsim.measure.server import BatchingServer, now


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
    server.start(complete_queries)
    t0 = now()
    try:
        summary = loadgen_server_test(lambda queries: server.submit([(q.id, q.index) for q in queries]),
                                      server.n_instances, rate_rps, duration_s, seed)
    finally:
        elapsed = now() - t0
        server.stop()
    return server.collect(rate_rps, "loadgen-server", elapsed, summary)


def loadgen_server_test(issue, n_samples: int, rate_rps: float, duration_s: float, seed: int) -> dict:
    """One run of LoadGen's Server scenario (Poisson arrivals at ``rate_rps``) over ``n_samples`` instances.

    ``issue(queries)`` gets LoadGen's queries (``.id``, ``.index``) on LoadGen's thread; every query must be
    completed with :func:`complete_queries`. Blocks until LoadGen has them all; returns LoadGen's own summary.
    """
    import mlperf_loadgen as lg

    sut = lg.ConstructSUT(issue, lambda: None)
    qsl = lg.ConstructQSL(n_samples, n_samples, lambda s: None, lambda s: None)
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
        try:
            lg.StartTestWithLogSettings(sut, qsl, st, ls)
        finally:
            lg.DestroyQSL(qsl)
            lg.DestroySUT(sut)
        return _loadgen_summary(Path(out) / "mlperf_log_summary.txt")


def complete_queries(query_ids) -> None:
    """Tell LoadGen these queries are complete (from any thread)."""
    import mlperf_loadgen as lg

    lg.QuerySamplesComplete([lg.QuerySampleResponse(i, 0, 0) for i in query_ids])


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
    offsets, samples = poisson_schedule(rate_rps, duration_s, server.n_instances, seed)
    server.start(lambda ids: None)
    t0 = now()
    for i in range(offsets.size):
        due = t0 + offsets[i]
        while True:
            left = due - now()
            if left <= 0:
                break
            if left > 3e-4:
                time.sleep(left - 2e-4)
        server.submit([(i, int(samples[i]))])
    while not server.queue_empty():  # drain
        time.sleep(0.01)
    time.sleep(0.05)
    elapsed = now() - t0
    server.stop()
    return server.collect(rate_rps, "poisson-fallback", elapsed)


def poisson_schedule(rate_rps: float, duration_s: float, n_instances: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """The fallback's open-loop schedule: ``int(rate × duration)`` arrival offsets (s, Poisson) and the instance
    each asks for (uniform), the same for the in-process server and the HTTP driver."""
    rng = np.random.default_rng(seed)
    n = int(rate_rps * duration_s)
    return np.cumsum(rng.exponential(1.0 / rate_rps, n)), rng.integers(0, n_instances, n)
