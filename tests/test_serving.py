"""The real serving loop (batcher + worker threads) and the serving calibration, on a tiny model."""

from __future__ import annotations

import json

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from tqsim.measure.load_drivers import have_loadgen, run_load  # noqa: E402
from tqsim.measure.server import BatchingServer  # noqa: E402
from tqsim.serving_calibration import calibrate_serving  # noqa: E402
from tqsim.whatif.overheads import fit_overheads, load_overheads  # noqa: E402
from tqsim.whatif.service import ConstantService  # noqa: E402
from tqsim.workloads.base import Workload  # noqa: E402


def tiny_workload(n=64) -> Workload:
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(16, 32), torch.nn.ReLU(), torch.nn.Linear(32, 4)).eval()
    x = torch.randn(n, 16)
    with torch.no_grad():
        labels = model(x).argmax(-1).numpy()
    labels[:4] = (labels[:4] + 1) % 4  # a few wrong answers
    return Workload(name="toy", task="test", model=model, inputs=x, labels=labels)


def _check_run(run, max_batch):
    assert run.arrival_s.size > 50
    assert (np.diff(run.arrival_s) >= 0).all()
    assert (run.close_s >= run.arrival_s - 1e-9).all() and (run.done_s > run.close_s).all()
    assert run.batch_size.max() <= max_batch and run.batch_size.sum() == run.arrival_s.size
    assert (run.batch_forward_s > 0).all() and (run.batch_busy_s >= run.batch_forward_s).all()
    assert 0.8 < run.correct.mean() <= 1.0
    s = run.summary(0.05, 16)
    assert s["latency_s"]["p50"] <= s["latency_s"]["p99"]


def test_poisson_fallback_driver_batches():
    server = BatchingServer(tiny_workload(), replicas=2, max_batch=4, max_wait_s=1e-3)
    run = run_load(server, 400, 0.6, use_loadgen=False)
    assert run.driver == "poisson-fallback"
    _check_run(run, 4)
    late = run.batch_timer_late_s[np.isfinite(run.batch_timer_late_s)]
    assert late.size > 0 and np.median(late) < 5e-3
    assert set(np.unique(run.batch_replica)) <= {0, 1}


@pytest.mark.skipif(not have_loadgen(), reason="mlcommons-loadgen not installed")
def test_loadgen_server_scenario_drives_it():
    server = BatchingServer(tiny_workload(), replicas=1, max_batch=8, max_wait_s=0.5e-3)
    run = run_load(server, 300, 1.0, seed=1)
    assert run.driver == "loadgen-server"
    _check_run(run, 8)
    assert 150 < run.arrival_s.size < 700
    assert "p99" in run.loadgen


def test_fit_overheads_and_calibrate_serving(tmp_path):
    import sys

    sys.path.insert(0, str(__import__("pathlib").Path(__file__).parent))
    from test_planner import make_workspace

    make_workspace(tmp_path, sizes=(1, 2, 4), n_inst=64)
    server = BatchingServer(tiny_workload(), replicas=1, max_batch=4, max_wait_s=0.5e-3)
    run = run_load(server, 300, 0.5, use_loadgen=False)
    oh = fit_overheads([run], ConstantService(50e-6))
    assert oh.scale > 0 and oh.per_batch_s >= 0 and oh.per_request_s >= 0 and 0 <= oh.pause_prob <= 1
    path = calibrate_serving("toy", home=tmp_path, system="box", max_batch=4, rates_rps=[200, 400],
                             duration_s=0.4, repeats=2, use_loadgen=False, workload=tiny_workload())
    data = json.loads(path.read_text())
    assert "r1-th1" in data["setups"] and len(data["setups"]["r1-th1"]["observed"]) == 4
    assert data["setups"]["r1-th1"]["run_log_dof"] == 2 and data["setups"]["r1-th1"]["run_log_sd"] > 0
    got, note = load_overheads(path.parent, 1, 1)
    assert got is not None and "r1-th1" in note
    got2, note2 = load_overheads(path.parent, 2, 1)
    assert got2 is not None and "no r2-th1" in note2


def test_serving_calibration_sets_its_rates_below_saturation_from_a_probe(tmp_path):
    """Without rates, a probe run sets them from the capacity with overheads: the tiny model's
    forward-only capacity is far beyond what the Python server sustains, and rates taken from it
    saturated the replicas. Every calibration run stays below saturation, and progress sees each."""
    import sys

    from tqsim.measure.campaign import Progress

    sys.path.insert(0, str(__import__("pathlib").Path(__file__).parent))
    from test_planner import make_workspace

    make_workspace(tmp_path, sizes=(1, 2, 4), n_inst=64)
    seen = []
    path = calibrate_serving("toy", home=tmp_path, system="box", max_batch=4, duration_s=0.5, repeats=2,
                             use_loadgen=False, workload=tiny_workload(),
                             progress=Progress(start=seen.append, advance=seen.append))
    entry = json.loads(path.read_text())["setups"]["r1-th1"]
    assert seen[0] == 5 and seen[1:] == ["probe"] + [f"{r:g} req/s" for r in entry["rates_rps"]] * 2
    lo, hi = entry["rates_rps"]
    assert hi == pytest.approx(2.5 * lo, rel=0.01)
    assert all(np.mean(o["utilisation"]) < 0.9 for o in entry["observed"])


def test_a_front_end_that_also_sends_the_answers_queues_them_near_its_capacity():
    """One HTTP process reads requests and sends answers: the answers of one batch leave it one ``out`` apart, and
    near its capacity each kind of work waits for the other, so p99 climbs faster than with a front end that only
    reads (the same total time per request, the same capacity: measured 3.5x from 100 to 750 req/s against 2.7x)."""
    from tqsim.whatif.simulator import ServingSetup, poisson_arrivals, serve_pool

    setup = ServingSetup(1, 1, 8, 2e-3)
    pool = np.full((8, 64), 0.5e-3)

    def run(rate, share, seed=0):
        rng = np.random.default_rng(seed)
        arr = poisson_arrivals(rate, int(rate * 20), rng)
        return serve_pool(pool, setup, arr, rng.random(arr.size), frontend_s=1e-3, batch_timer="cycle",
                          frontend_out_share=share)

    light_one, light_two = run(100.0, 0.0), run(100.0, 0.5)
    # at light load nothing waits: the same 1 ms a request, split in two, is the same latency
    assert np.median(light_two.latency_s) == pytest.approx(np.median(light_one.latency_s), abs=0.2e-3)
    p99 = {(rate, share): float(np.quantile(run(rate, share).latency_s, 0.99)) for rate in (100.0, 750.0)
           for share in (0.0, 0.5)}
    assert p99[750.0, 0.5] / p99[100.0, 0.5] > 1.15 * p99[750.0, 0.0] / p99[100.0, 0.0]
    busy = run(750.0, 0.5)
    done = busy.done_s
    sizes = busy.batch_sizes
    ends = np.cumsum(sizes)
    gaps = [np.diff(np.sort(done[e - k:e])) for e, k in zip(ends, sizes) if k > 1]
    assert np.min(np.concatenate(gaps)) >= 0.5e-3 - 1e-9  # one answer at a time, out = 0.5 ms each
