"""The serving-overhead estimators on synthetic runs with known answers, and what the service model does with them."""

from __future__ import annotations

import numpy as np
import pytest

from tqsim.data.serving_run import ServingRun
from tqsim.whatif.overheads import (ServingOverheads, fit_inflation, run_log_sd, stall_dispersion_draws,
                                    window_log_sd)
from tqsim.whatif.service import ConstantService, WithOverheads


def test_inflation_fit_recovers_a_known_contention_term():
    rng = np.random.default_rng(0)

    def run(rate, g=2e-4, n=3000):
        k = rng.integers(1, 4, n)
        busy = (100e-6 + 50e-6 * k) * np.exp(rng.normal(0, 0.1, n)) * (1 + g * rate)
        z = np.zeros(1)
        return ServingRun(rate, 1, 1, 4, 0.0, "test", z, z, z, z.astype(int), z.astype(bool), k, np.zeros(n),
                          busy * 0.7, busy, np.full(n, np.nan), np.zeros(n, int), 1.0)

    assert fit_inflation([run(500), run(2000)]) == pytest.approx(2e-4, rel=0.15)
    assert fit_inflation([run(500, g=0.0), run(2000, g=0.0)]) == pytest.approx(0.0, abs=2e-5)


def test_window_log_sd_recovers_a_known_window_level_and_drives_pass_effects():
    """Batches whose level moves by N(0, 0.1) from one window of 100 requests to the next: the fit
    recovers that sd within run, ignoring the level difference between runs, and the service
    model then draws window levels with that spread and mean 1."""
    rng = np.random.default_rng(3)

    def run(level, n_windows=60, per_window=25):  # 25 batches of 4 requests = 100 requests a window
        k = np.full(n_windows * per_window, 4)
        lvl = np.repeat(rng.normal(level, 0.1, n_windows), per_window)
        fwd = 1e-3 * np.exp(lvl + rng.normal(0, 0.02, k.size))
        z = np.zeros(1)
        return ServingRun(100.0, 1, 1, 4, 0.0, "test", z, z, z, z.astype(int), z.astype(bool), k,
                          np.arange(k.size, dtype=float), fwd, fwd, np.full(k.size, np.nan), np.zeros(k.size, int), 1.0)

    sd = window_log_sd([run(0.0), run(0.5)], {4: 1e-3}, window=100)
    assert sd == pytest.approx(0.1, rel=0.2)
    assert window_log_sd([run(0.0, n_windows=1)], {4: 1e-3}, window=100) is None
    svc = WithOverheads(ConstantService(1e-3), ServingOverheads(window_log_sd=sd))
    e = svc.pass_effects(20000, np.random.default_rng(0))
    assert e.mean() == pytest.approx(1.0, abs=0.01) and np.log(e).std() == pytest.approx(sd, rel=0.05)


def test_run_log_sd_recovers_a_known_run_level_and_widens_simulated_runs():
    """Runs whose whole level moves by N(0, 0.15) from one run to the next, at two rates with a
    contention term: the between-run sd is recovered from the repeats (the rate effect is not
    counted), and each simulated run then draws its own level, mean 1, at least that wide."""
    rng = np.random.default_rng(5)

    def run(rate, n=400, g=2e-4):
        k = rng.integers(1, 5, n)
        busy = (100e-6 + 50e-6 * k) * np.exp(rng.normal(0, 0.15) + rng.normal(0, 0.05, n)) * (1 + g * rate)
        z = np.zeros(1)
        return ServingRun(rate, 1, 1, 4, 0.0, "test", z, z, z, z.astype(int), z.astype(bool), k, np.zeros(n),
                          busy * 0.7, busy, np.full(n, np.nan), np.zeros(n, int), 1.0)

    runs = [run(rate) for rate in (500.0, 2000.0) for _ in range(12)]
    sd, dof = run_log_sd(runs, g=2e-4)
    assert dof == 22 and sd == pytest.approx(0.15, rel=0.3)
    assert run_log_sd(runs[:1] + runs[12:13], g=2e-4) == (None, 0)  # one run per rate: no repeats
    svc = WithOverheads(ConstantService(1e-3), ServingOverheads(run_log_sd=sd, run_log_dof=dof))
    levels = np.array([svc.draw(np.random.default_rng(i)).sample(np.ones(1, int), rng)[0] / 1e-3
                       for i in range(4000)])
    assert levels.mean() == pytest.approx(1.0, abs=0.02)
    assert sd <= np.log(levels).std() <= 1.4 * sd
    same = WithOverheads(ConstantService(1e-3), ServingOverheads())
    assert same.draw(rng).sample(np.ones(3, int), rng) == pytest.approx(np.full(3, 1e-3))


def test_a_slow_run_is_slow_at_its_front_end_too():
    """A run's level is the machine's: it stretches the front end (where an HTTP stack saturates) and the response
    path with the batches, on top of the arrival rate's slowdown; without a run level nothing moves."""
    oh = ServingOverheads(frontend_s=2e-3, response_s=1e-3, inflation_s=1e-4, run_log_sd=0.3, run_log_dof=20)
    svc = WithOverheads(ConstantService(1e-3), oh).at_rate(1000.0)
    rng = np.random.default_rng(0)
    for i in range(50):
        run = svc.draw(np.random.default_rng(i))
        level = run.sample(np.ones(1, int), rng)[0] / (1e-3 * 1.1)  # the batch's stretch over the rate's
        assert run.frontend_s == pytest.approx(2e-3 * 1.1 * level) and run.response_s == pytest.approx(1e-3 * level)
    assert np.std([np.log(svc.draw(np.random.default_rng(i)).frontend_s) for i in range(400)]) > 0.2
    calm = WithOverheads(ConstantService(1e-3), ServingOverheads(frontend_s=2e-3)).at_rate(1000.0)
    assert calm.draw(rng).frontend_s == pytest.approx(2e-3)


def test_the_point_forecast_of_a_skewed_interval_is_its_median():
    from tqsim.whatif.simulator import _interval, central

    x = np.r_[np.full(80, 0.03), np.full(20, 5.0)]  # 1 draw in 5 overloads: the mean leaves the bulk
    iv = _interval(x, 0.9)
    assert central(iv) == pytest.approx(0.03) and iv["mean"] == pytest.approx(1.024)
    assert central({"mean": 2.0, "lo": 1.0, "hi": 3.0}) == 2.0  # written before the median was kept


def _stall_runs(rng, phi, runs_per_rate=20, n=2000, p=0.01):
    """Runs at two rates whose stall rate is p × Gamma(1/φ, φ) per run (φ = 0: the same p everywhere)."""
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


def test_serving_store_merges_set_ups_and_load_overheads_reads_them_back(tmp_path):
    """A stored entry carries calibration extras (observed runs, dates) that ServingOverheads ignores;
    saving one set-up keeps the others; a missing set-up falls back to the nearest with the same threads."""
    import json

    from tqsim.data.serving_store import SERVING_FILE, nearest_setup, save_setup, serving_key
    from tqsim.whatif.overheads import load_overheads

    assert load_overheads(tmp_path, 1, 1)[0] is None and "calibrate --serving" in load_overheads(tmp_path, 1, 1)[1]
    entry = dict(ServingOverheads(scale=1.5, inflation_s=1e-4).to_dict(), observed=[{"rate_rps": 10.0}],
                 created_at="2026-01-01T00:00:00+00:00")
    path = save_setup(tmp_path, 1, 1, entry, workload="toy", system="box")
    save_setup(tmp_path, 4, 2, ServingOverheads(scale=2.0).to_dict(), workload="toy", system="box")
    data = json.loads(path.read_text())
    assert path.name == SERVING_FILE and data["workload"] == "toy" and data["system"] == "box"
    assert set(data["setups"]) == {serving_key(1, 1), serving_key(4, 2)} == {"r1-th1", "r4-th2"}
    assert [p.name for p in tmp_path.iterdir()] == [SERVING_FILE]  # no temporary left behind
    got, note = load_overheads(tmp_path, 1, 1)
    assert got == ServingOverheads(scale=1.5, inflation_s=1e-4) and note == "serving overheads of r1-th1"
    assert load_overheads(tmp_path, 3, 2)[0].scale == 2.0
    assert nearest_setup(tmp_path, 2, 1)[1] == "serving overheads of r1-th1 (no r2-th1 calibrated)"


def test_a_what_if_well_above_the_busiest_fitted_run_says_so():
    oh = ServingOverheads(rates_rps=[100.0, 250.0])
    note = oh.beyond_fitted([200.0, 300.0, 400.0, None])  # None: a trace
    assert "400 req/s is beyond the busiest serving run fitted (250 req/s)" in note and "300" not in note
    assert oh.beyond_fitted([300.0]) is None and ServingOverheads().beyond_fitted([1e6]) is None
    assert ServingOverheads.from_dict({"rates_rps": [5.0], "stored_elsewhere": 1}).rates_rps == [5.0]
