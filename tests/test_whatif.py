"""The serving simulator against queueing theory where it is exact, plus its service models."""

from __future__ import annotations

import math

import numpy as np
import pytest

from tqsim.errors import UserError
from tqsim.whatif import (ConstantService, EmpiricalService, ExponentialService, ForecastService, ServingOverheads,
                          ServingSetup, WithOverheads, simulate, simulate_run)
from tqsim.whatif.simulator import check_trace, fixed_batch_capacity, poisson_arrivals, read_trace


def _mean_wait(service, setup, rate, n=1_000_000, seed=1):
    rng = np.random.default_rng(seed)
    run = simulate_run(service, setup, poisson_arrivals(rate, n, rng), rng)
    return float(np.mean(run.start_s - run.arrival_s)), run


def test_mm1_mean_wait():
    lam, mu = 500.0, 1000.0
    rho = lam / mu
    wq, _ = _mean_wait(ExponentialService(1 / mu), ServingSetup(), lam)
    assert wq == pytest.approx(rho / (mu - lam), rel=0.05)


def test_md1_pollaczek_khinchine():
    lam, mu = 700.0, 1000.0
    rho = lam / mu
    wq, run = _mean_wait(ConstantService(1 / mu), ServingSetup(), lam)
    assert wq == pytest.approx(rho / (2 * mu * (1 - rho)), rel=0.05)
    assert run.utilisation[0] == pytest.approx(rho, rel=0.02)


def test_mmc_erlang_c():
    lam, mu, c = 1500.0, 1000.0, 2
    a = lam / mu
    rho = a / c
    tail = a**c / math.factorial(c) / (1 - rho)
    p_wait = tail / (sum(a**k / math.factorial(k) for k in range(c)) + tail)
    wq, run = _mean_wait(ExponentialService(1 / mu), ServingSetup(replicas=c), lam)
    assert wq == pytest.approx(p_wait / (c * mu - lam), rel=0.06)
    assert np.allclose(run.utilisation, rho, rtol=0.03)


def test_zero_load_gives_bare_service_time():
    rng = np.random.default_rng(0)
    arr = np.arange(1000) * 1.0  # one request a second, service 2 ms
    run = simulate_run(ConstantService(2e-3), ServingSetup(max_batch=8, max_wait_s=0.0), arr, rng)
    assert np.allclose(run.latency_s, 2e-3)
    assert (run.batch_sizes == 1).all()


def test_batch_one_equals_no_batching_lindley():
    """max_batch=1 (any max_wait) is a plain FIFO queue: compare with the Lindley recursion."""
    rng = np.random.default_rng(3)
    n = 20000
    arr = poisson_arrivals(800, n, rng)
    svc = ExponentialService(1e-3)
    runs = [simulate_run(svc, ServingSetup(max_batch=1, max_wait_s=w), arr, np.random.default_rng(9))
            for w in (0.0, 5e-3)]
    assert np.array_equal(runs[0].done_s, runs[1].done_s)
    s = runs[0].done_s - runs[0].start_s  # the service times actually used
    wait = np.zeros(n)
    for i in range(1, n):  # Lindley: W_i = max(0, W_{i-1} + S_{i-1} - (A_i - A_{i-1}))
        wait[i] = max(0.0, wait[i - 1] + s[i - 1] - (arr[i] - arr[i - 1]))
    assert np.allclose(runs[0].start_s - arr, wait, atol=1e-12)


def test_dynamic_batcher_closes_when_full_or_on_timer():
    arr = np.array([0.0, 0.2e-3, 0.4e-3, 0.6e-3, 5e-3, 20e-3, 20.1e-3])
    run = simulate_run(ConstantService(1e-3), ServingSetup(max_batch=4, max_wait_s=1e-3), arr,
                       np.random.default_rng(0))
    assert list(run.batch_sizes) == [4, 1, 2]
    assert np.allclose(run.start_s, [0.6e-3] * 4 + [6e-3] + [21e-3] * 2)
    assert np.allclose(run.done_s, run.start_s + 1e-3)


def test_waiting_requests_are_taken_when_a_replica_frees():
    # Service 10 ms; while busy, 5 requests queue; max_wait=0 takes up to max_batch at once.
    arr = np.array([0.0, 1e-3, 2e-3, 3e-3, 4e-3, 5e-3])
    run = simulate_run(ConstantService(10e-3), ServingSetup(max_batch=3, max_wait_s=0.0), arr,
                       np.random.default_rng(0))
    assert list(run.batch_sizes) == [1, 3, 2]
    assert np.allclose(run.start_s, [0, 10e-3, 10e-3, 10e-3, 20e-3, 20e-3])


def test_timer_lateness_delays_timer_closed_batches():
    oh = ServingOverheads(timer_late_s=[0.3e-3])
    svc = WithOverheads(ConstantService(1e-3), oh)
    run = simulate_run(svc, ServingSetup(max_batch=4, max_wait_s=1e-3), np.array([0.0]), np.random.default_rng(0))
    assert run.start_s[0] == pytest.approx(1.3e-3)


def test_tail_quality_falls_as_load_rises():
    correct = np.random.default_rng(0).random(200) < 0.95
    svc = ExponentialService(1e-3, 0.2e-3)
    tails = [simulate(svc, ServingSetup(max_batch=8, max_wait_s=0.5e-3), thresholds_s=[5e-3], rate_rps=r,
                      score=correct, draws=6, n_windows=60, seed=1).tail_quality[:, 0].mean()
             for r in (200, 1000, 2000, 3000, 3800)]
    assert all(a >= b - 1e-9 for a, b in zip(tails, tails[1:])), tails
    assert tails[0] > tails[-1]


def test_result_object_follows_the_json_contract():
    wi = simulate(ConstantService(1e-3), ServingSetup(2, 1, 4, 1e-3), thresholds_s=[2e-3, 20e-3], rate_rps=100,
                  score=np.ones(50), draws=3, n_windows=10)
    r = wi.results()
    assert len(r) == 2
    for key in ("rate_rps", "replicas", "threads", "max_batch", "max_wait_s", "precision", "backend", "device",
                "threshold_s", "latency_s", "miss_rate", "tail_quality", "utilisation"):
        assert key in r[0]
    assert set(r[0]["latency_s"]) == {"p50", "p99", "p99.9"}
    assert r[1]["tail_quality"]["mean"] == 1.0 and r[1]["miss_rate"]["mean"] == 0.0
    assert len(r[0]["utilisation"]) == 2
    lat = r[0]["latency_s"]
    assert lat["p50"]["mean"] <= lat["p99"]["mean"] <= lat["p99.9"]["mean"]


def test_setup_backend_and_device_default_to_torch_cpu_and_show_otherwise():
    assert ServingSetup(2, 1, 4, 1e-3).label() == "2×th1 batch≤4 wait 1ms fp32"
    gpu = ServingSetup(2, 3, 4, 1e-3, "fp16", "onnxruntime", "cuda")
    assert gpu.label() == "2×th3 batch≤4 wait 1ms fp16 onnxruntime/cuda"
    assert (gpu.cores, gpu.gpus, ServingSetup(replicas=2).gpus) == (6, 2, 0)
    assert gpu.variant == ("fp16", "onnxruntime", "cuda")


def test_empirical_service_interpolates_log_linearly():
    rng = np.random.default_rng(0)
    data = {1: 1e-3 * np.exp(rng.normal(0, 0.05, (10, 200))), 4: 4e-3 * np.exp(rng.normal(0, 0.05, (10, 200)))}
    svc = EmpiricalService(data)
    med2 = np.median(svc.sample(np.full(20000, 2), rng))
    assert med2 == pytest.approx(2e-3, rel=0.03)
    assert np.median(svc.sample(np.full(20000, 4), rng)) == pytest.approx(4e-3, rel=0.03)
    draws = [svc.draw(np.random.default_rng(i))._level_mult for i in range(20)]
    assert np.std(draws) > 0  # the level is uncertain across draws
    assert svc.pass_effects(5, rng).shape == (5,)


def test_forecast_hook_uses_one_posterior_draw_per_simulation_draw():
    calls = []

    def fake(batch_size, threads, n, rng):
        d = int(rng.integers(100))  # the forecast engine picks its posterior draw first
        calls.append((batch_size, d))
        return np.full(n, 1e-3 * batch_size * (1 + d / 1000))

    svc = ForecastService(fake, threads=1).draw(np.random.default_rng(5))
    svc.sample(np.array([1, 2, 2, 4]), np.random.default_rng(0))
    assert len({d for _, d in calls}) == 1 and {k for k, _ in calls} == {1, 2, 4}


def test_the_forecast_is_asked_for_the_whole_variant(monkeypatch):
    """--service forecast: the fitted model simulates the replica's precision, backend and device, not torch/cpu."""
    import tqsim.forecast
    from tqsim.factors import Config
    from tqsim.whatif.inputs import posterior_latency_fn

    asked = []

    def fake_simulate_latency(fitted, config, **kw):
        asked.append(config)
        return np.full((2, kw["n_passes"], 8), 1e-3), True

    monkeypatch.setattr(tqsim.forecast, "simulate_latency", fake_simulate_latency)
    draw = posterior_latency_fn(None, "fp16", "onnxruntime", "cuda", n_draws=2, n_passes=3)
    assert draw(4, 2, 5, np.random.default_rng(0)).shape == (5,)
    assert asked == [Config(4, 2, "fp16", "onnxruntime", "cuda")]


def test_bad_input_is_a_user_error():
    with pytest.raises(UserError):
        simulate(ConstantService(1e-3), ServingSetup(), thresholds_s=[1e-3], rate_rps=-3)
    with pytest.raises(UserError):
        ServingSetup(replicas=0)
    with pytest.raises(UserError):
        ServingSetup(max_batch=0)
    with pytest.raises(UserError, match="sorted"):
        check_trace(np.array([0.0, 2.0, 1.0]))
    with pytest.raises(UserError):
        check_trace(np.array([-1.0, 2.0]))


def test_trace_replay(tmp_path):
    p = tmp_path / "trace.txt"
    p.write_text("# arrivals\n0\n0.001\n0.002\n0.010\n")
    arr = read_trace(p)
    wi = simulate(ConstantService(1e-3), ServingSetup(), thresholds_s=[5e-3], arrivals_s=arr,
                  score=np.ones(2), draws=2)
    assert wi.result()["latency_s"]["p50"]["mean"] == pytest.approx(1e-3)
    (tmp_path / "bad.txt").write_text("0\n0.5\n0.1\n")
    with pytest.raises(UserError, match="sorted"):
        read_trace(tmp_path / "bad.txt")


def test_empirical_draws_are_centred_on_the_calibrated_level():
    rng = np.random.default_rng(1)
    lat = 1e-3 * np.exp(rng.normal(0, 0.05, (30, 100)))
    lat[::5] *= 3.0  # right-skewed pass effects: a few slow passes
    svc = EmpiricalService({1: lat})
    mult = [svc.draw(np.random.default_rng(i))._level_mult for i in range(200)]
    assert np.exp(np.mean(np.log(mult))) == pytest.approx(1.0, abs=0.02)


def test_overheads_shape_keeps_the_median_and_inflation_stretches():
    base = ConstantService(1e-3, 0.5e-3)
    oh = ServingOverheads(scale=2.0, per_batch_s=1e-4, shape=[0.9, 1.0, 1.0, 1.1, 5.0], inflation_s=1e-4)
    svc = WithOverheads(base, oh)
    s = svc.sample(np.full(10000, 3), np.random.default_rng(0))
    assert np.median(s) == pytest.approx(2.0 * 2e-3 + 1e-4)
    assert s.max() == pytest.approx(2.0 * 2e-3 * 5 + 1e-4)
    fast = svc.at_rate(1000).sample(np.full(10, 1), np.random.default_rng(0))
    assert np.median(fast) == pytest.approx(1.1 * (2.0 * 1e-3 + 1e-4))  # 1 + g λ = 1.1


def test_capacity_and_saturation_rate():
    from tqsim.whatif.simulator import capacity_rps, saturation_rps

    setup = ServingSetup(replicas=2, max_batch=4)
    svc = ConstantService(1e-3, 0.25e-3)  # a batch of 4 takes 1.75 ms: 2 × 4 / 1.75 ms = 4571/s
    assert capacity_rps(svc, setup) == pytest.approx(2 * 4 / 1.75e-3, rel=1e-6)
    sat = saturation_rps(svc, setup, n=20000)
    assert 0.5 * 4571 < sat < 4571  # 95 % busy comes before full batches can no longer keep up
    assert saturation_rps(ConstantService(1e-3), ServingSetup(), n=20000) == pytest.approx(950, rel=0.05)


def test_saturated_flag_needs_full_batches():
    svc = ConstantService(1e-3, 0.1e-3)
    kw = dict(thresholds_s=[5e-3], score=np.ones(100), draws=2, n_windows=20)
    assert simulate(svc, ServingSetup(), rate_rps=2000, **kw).saturated
    assert not simulate(svc, ServingSetup(), rate_rps=500, **kw).saturated
    # 1.5 × the unbatched capacity, but batches of 4 keep up (4 / 1.3 ms = 3077/s): busy, not saturated
    assert not simulate(svc, ServingSetup(max_batch=4), rate_rps=1500, **kw).saturated


def test_random_samples_spread_window_quality_like_loadgen():
    """No request is late: replayed windows all score the set's accuracy; random draws (LoadGen's
    way) keep the mean but spread the windows, so the worst window is below it by ~2 binomial sds."""
    correct = np.arange(540) % 50 != 0  # 98 % accurate
    kw = dict(thresholds_s=[1.0], rate_rps=50, score=correct, n_windows=60, draws=4, seed=0)
    replay = simulate(ConstantService(1e-4), ServingSetup(), **kw).result()
    rand = simulate(ConstantService(1e-4), ServingSetup(), samples="random", **kw).result()
    acc = correct.mean()
    assert replay["tail_quality"]["mean"] == pytest.approx(acc)
    assert rand["mean_quality"]["mean"] == pytest.approx(acc, abs=0.003)
    sd = math.sqrt(acc * (1 - acc) / 540)
    assert acc - 4 * sd < rand["tail_quality"]["mean"] < acc - 0.5 * sd
    with pytest.raises(UserError, match="replay"):
        simulate(ConstantService(1e-4), ServingSetup(), samples="shuffled", **kw)


def test_a_huge_max_batch_costs_memory_by_the_work_not_the_knob():
    """--max-batch 1000000 was killed by the kernel at ~24 GB: the pool of service draws covered every
    batch size up to the knob. Now it covers what can occur (at most the run's requests)."""
    import tracemalloc

    tracemalloc.start()
    run = simulate_run(ConstantService(1e-4), ServingSetup(max_batch=1_000_000, max_wait_s=1e-3),
                       poisson_arrivals(2000.0, 2000, np.random.default_rng(0)), np.random.default_rng(1))
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert run.batch_sizes.max() <= 2000 and peak < 300e6


def test_fixed_batch_capacity_counts_forward_time_and_per_batch_delays():
    svc = ConstantService(0.010, 0.002)  # a batch of 4: 16 ms
    cap, mean_s = fixed_batch_capacity(svc, 4, 2, np.random.default_rng(0))
    assert mean_s == pytest.approx(0.016) and cap == pytest.approx(2 * 4 / 0.016)

    class Paused(ConstantService):
        def extra_batch_s(self, n, rng):
            return np.full(n, 0.004)

    cap, mean_s = fixed_batch_capacity(Paused(0.010, 0.002), 4, 2, np.random.default_rng(0))
    assert mean_s == pytest.approx(0.020) and cap == pytest.approx(400.0)
