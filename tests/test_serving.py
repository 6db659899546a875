"""The real serving loop (batcher + worker threads) and the serving calibration, on a tiny model."""

from __future__ import annotations

import json

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from tqsim.measure.serving import (BatchingServer, calibrate_serving, fit_overheads, have_loadgen,  # noqa: E402
                                   run_load)
from tqsim.whatif.service import ConstantService, load_overheads  # noqa: E402
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


def test_inflation_fit_recovers_a_known_contention_term():
    from tqsim.measure.serving import ServingRun, _fit_inflation

    rng = np.random.default_rng(0)

    def run(rate, g=2e-4, n=3000):
        k = rng.integers(1, 4, n)
        busy = (100e-6 + 50e-6 * k) * np.exp(rng.normal(0, 0.1, n)) * (1 + g * rate)
        z = np.zeros(1)
        return ServingRun(rate, 1, 1, 4, 0.0, "test", z, z, z, z.astype(int), z.astype(bool), k, np.zeros(n),
                          busy * 0.7, busy, np.full(n, np.nan), np.zeros(n, int), 1.0)

    assert _fit_inflation([run(500), run(2000)]) == pytest.approx(2e-4, rel=0.15)
    assert _fit_inflation([run(500, g=0.0), run(2000, g=0.0)]) == pytest.approx(0.0, abs=2e-5)


def test_window_log_sd_recovers_a_known_window_level_and_drives_pass_effects():
    """Batches whose level moves by N(0, 0.1) from one window of 100 requests to the next: the fit
    recovers that sd within run, ignoring the level difference between runs, and the service
    model then draws window levels with that spread and mean 1."""
    from tqsim.measure.serving import ServingRun, _window_log_sd
    from tqsim.whatif.service import ServingOverheads, WithOverheads

    rng = np.random.default_rng(3)

    def run(level, n_windows=60, per_window=25):  # 25 batches of 4 requests = 100 requests a window
        k = np.full(n_windows * per_window, 4)
        lvl = np.repeat(rng.normal(level, 0.1, n_windows), per_window)
        fwd = 1e-3 * np.exp(lvl + rng.normal(0, 0.02, k.size))
        z = np.zeros(1)
        return ServingRun(100.0, 1, 1, 4, 0.0, "test", z, z, z, z.astype(int), z.astype(bool), k,
                          np.arange(k.size, dtype=float), fwd, fwd, np.full(k.size, np.nan), np.zeros(k.size, int), 1.0)

    sd = _window_log_sd([run(0.0), run(0.5)], {4: 1e-3}, window=100)
    assert sd == pytest.approx(0.1, rel=0.2)
    assert _window_log_sd([run(0.0, n_windows=1)], {4: 1e-3}, window=100) is None
    svc = WithOverheads(ConstantService(1e-3), ServingOverheads(window_log_sd=sd))
    e = svc.pass_effects(20000, np.random.default_rng(0))
    assert e.mean() == pytest.approx(1.0, abs=0.01) and np.log(e).std() == pytest.approx(sd, rel=0.05)


def test_run_log_sd_recovers_a_known_run_level_and_widens_simulated_runs():
    """Runs whose whole level moves by N(0, 0.15) from one run to the next, at two rates with a
    contention term: the between-run sd is recovered from the repeats (the rate effect is not
    counted), and each simulated run then draws its own level, mean 1, at least that wide."""
    from tqsim.measure.serving import ServingRun, _run_log_sd
    from tqsim.whatif.service import ServingOverheads, WithOverheads

    rng = np.random.default_rng(5)

    def run(rate, n=400, g=2e-4):
        k = rng.integers(1, 5, n)
        busy = (100e-6 + 50e-6 * k) * np.exp(rng.normal(0, 0.15) + rng.normal(0, 0.05, n)) * (1 + g * rate)
        z = np.zeros(1)
        return ServingRun(rate, 1, 1, 4, 0.0, "test", z, z, z, z.astype(int), z.astype(bool), k, np.zeros(n),
                          busy * 0.7, busy, np.full(n, np.nan), np.zeros(n, int), 1.0)

    runs = [run(rate) for rate in (500.0, 2000.0) for _ in range(12)]
    sd, dof = _run_log_sd(runs, g=2e-4)
    assert dof == 22 and sd == pytest.approx(0.15, rel=0.3)
    assert _run_log_sd(runs[:1] + runs[12:13], g=2e-4) == (None, 0)  # one run per rate: no repeats
    svc = WithOverheads(ConstantService(1e-3), ServingOverheads(run_log_sd=sd, run_log_dof=dof))
    levels = np.array([svc.draw(np.random.default_rng(i)).sample(np.ones(1, int), rng)[0] / 1e-3
                       for i in range(4000)])
    assert levels.mean() == pytest.approx(1.0, abs=0.02)
    assert sd <= np.log(levels).std() <= 1.4 * sd
    same = WithOverheads(ConstantService(1e-3), ServingOverheads())
    assert same.draw(rng).sample(np.ones(3, int), rng) == pytest.approx(np.full(3, 1e-3))


def _stall_runs(rng, phi, runs_per_rate=20, n=2000, p=0.01):
    """Runs at two rates whose stall rate is p × Gamma(1/φ, φ) per run (φ = 0: the same p everywhere)."""
    from tqsim.measure.serving import ServingRun

    runs, stalled = [], []
    for rate in (500.0, 2000.0):
        for _ in range(runs_per_rate):
            m = rng.gamma(1 / phi, phi) if phi > 0 else 1.0
            k = np.ones(n + rng.integers(-50, 50), dtype=int)
            z = np.zeros(1)
            runs.append(ServingRun(rate, 1, 1, 4, 0.0, "test", z, z, z, z.astype(int), z.astype(bool), k,
                                   np.zeros(k.size), np.ones(k.size), np.ones(k.size), np.full(k.size, np.nan),
                                   np.zeros(k.size, int), 1.0))
            stalled.append(rng.random(k.size) < min(p * (1 + rate / 2000) * m, 1))  # p differs by rate
    return runs, np.concatenate(stalled)


def test_stall_dispersion_recovers_how_much_the_stall_rate_moves_between_runs():
    """φ (variance of a run's stall-rate multiplier) is recovered from repeated runs, whatever the
    rate-specific stall probability; steady runs give φ near 0; no repeats give no draws."""
    from tqsim.measure.serving import stall_dispersion_draws

    rng = np.random.default_rng(11)
    draws = np.array(stall_dispersion_draws(*_stall_runs(rng, 0.7)))
    assert draws.size == 400 and 0.4 < np.median(draws) < 1.2
    assert np.quantile(draws, 0.05) > 0.2  # 40 runs rule out a steady rate
    steady = np.array(stall_dispersion_draws(*_stall_runs(rng, 0.0)))
    assert np.median(steady) < 0.05
    runs, st = _stall_runs(rng, 0.7, runs_per_rate=1)
    assert stall_dispersion_draws(runs, st) == []


def test_simulated_runs_draw_their_own_stall_rate():
    """With φ = 1 each simulated run's stall fraction varies with a CV near 1 around the pooled rate;
    without dispersion every run stalls at the pooled rate."""
    from tqsim.whatif.service import ServingOverheads, WithOverheads

    def stall_fractions(dispersion):
        oh = ServingOverheads(shape=[0.9, 1.0, 1.1], stall_prob=0.02, stall_shape=[8.0, 12.0],
                              stall_dispersion=dispersion)
        svc = WithOverheads(ConstantService(1e-3), oh)
        rng = np.random.default_rng(2)
        return np.array([np.mean(svc.draw(rng).sample(np.ones(5000, int), rng) > 5e-3) for _ in range(400)])

    varying, fixed = stall_fractions([1.0]), stall_fractions([])
    assert varying.mean() == pytest.approx(0.02, rel=0.15) and fixed.mean() == pytest.approx(0.02, rel=0.05)
    assert varying.std() / varying.mean() == pytest.approx(1.0, rel=0.2)
    assert fixed.std() / fixed.mean() < 0.15  # binomial noise of 5,000 batches only
