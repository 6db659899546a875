"""Forecasts: invariants on a quick fit, and ground truth on a real one."""

import numpy as np
import pytest

from tqsim.errors import UserError
from tqsim.factors import Config
from tqsim.forecast import (Forecast, forecast, percentile_bands, resolve_config, simulate_calls, simulate_latency,
                            survival_band, tail_and_p99_bands)
from tqsim.testing import example_fit


@pytest.fixture(scope="module")
def quick():
    return example_fit()


def test_predict_object_has_design_keys_and_invariants(quick):
    _, fm, _ = quick
    fc = forecast(fm, Config(batch_size=8, threads=2), n_passes=20, n_draws=50)
    r = fc.as_dict()
    assert r["latency_s"]["p99"]["median"] == fc.latency["p99"].median and fc.quality[0].tail.lo == \
        r["quality"]["thresholds"][0]["tail_lo"]                       # the JSON is the typed result, flattened
    for key in ("system", "workload", "config", "calibrated", "interval", "latency_s", "quality"):
        assert key in r
    assert r["calibrated"] is False and r["interval"] == 0.9
    lat = r["latency_s"]
    assert 0 < lat["p50"]["mean"] <= lat["p90"]["mean"] <= lat["p99"]["mean"] <= lat["p99.9"]["mean"]
    for v in lat.values():
        assert v["lo"] <= v["mean"] <= v["hi"]
    rows = r["quality"]["thresholds"]
    assert [row["threshold"] for row in rows] == ["p90", "p95", "p99"]
    for row in rows:
        assert 0 <= row["min"] <= row["tail"] <= row["mean"] <= r["quality"]["no_deadline"] <= 1
        for k in ("mean_lo", "mean_hi", "tail_lo", "tail_hi", "min_lo", "min_hi", "threshold_s", "tail_q"):
            assert k in row
    assert fc.latency_s.shape == (50, 20, 540)


def test_batch_layout_and_position_in_simulation(quick):
    _, fm, _ = quick
    fc = forecast(fm, Config(batch_size=64, threads=1), ["1s"], n_passes=4, n_draws=10)
    lat = fc.latency_s
    assert np.allclose(lat[..., :64], lat[..., :1])          # one latency per batch
    assert np.allclose(lat[..., 512:], lat[..., 539:540])    # last partial batch of 28
    assert fc.as_dict()["quality"]["thresholds"][0]["mean"] == pytest.approx(fc.as_dict()["quality"]["no_deadline"])


def test_refusals_and_warnings(quick):
    _, fm, _ = quick
    with pytest.raises(UserError, match="precision=fp16"):
        forecast(fm, Config(precision="fp16"))
    fc = forecast(fm, Config(batch_size=256), n_passes=5, n_draws=10)
    assert any("outside the calibrated range" in w for w in fc.warnings)
    bad = type(fm)(**{**fm.__dict__, "diagnostics": dict(fm.diagnostics, ok=False, rhat_max=1.3)})
    with pytest.raises(UserError, match="--force"):
        forecast(bad, Config(batch_size=8))
    fc = forecast(bad, Config(batch_size=8), n_passes=5, n_draws=10, force=True)
    assert fc.as_dict()["diagnostics_ok"] is False and "FAILED" in fc.as_dict()["warnings"][-1]


def test_resolve_config_fills_single_levels_and_asks_for_others(quick):
    _, fm, _ = quick
    assert resolve_config(fm, {"batch_size": "8", "threads": 2}) == Config(batch_size=8, threads=2)
    with pytest.raises(UserError, match="threads"):
        resolve_config(fm, {"batch_size": 8})
    with pytest.raises(UserError, match="unknown factor"):
        resolve_config(fm, {"bogus": 1, "threads": 1, "batch_size": 1})


def test_survival_band_from_known_draws():
    calls = np.array([[1.0, 2, 3, 4], [2, 3, 4, 5], [3, 4, 5, 6]])
    # P(call > x) per draw: at 2.5 (.5, .75, 1); at 3 (.25, .5, .75), a call at x is not above it; at 4.5 (0, .25, .5)
    lo, mid, hi = survival_band(calls, np.array([2.5, 3.0, 4.5]), level=0.5)
    assert np.allclose(mid, [0.75, 0.5, 0.25])
    assert np.allclose(lo, [0.625, 0.375, 0.125]) and np.allclose(hi, [0.875, 0.625, 0.375])
    lo, _, hi = survival_band(calls, np.array([2.5]))  # the default 90 % band
    assert lo[0] == pytest.approx(0.525) and hi[0] == pytest.approx(0.975)


def test_percentile_bands_summarise_each_draws_percentile():
    calls = np.arange(101.0)[None, :] + 10.0 * np.arange(5)[:, None]   # draw d: 10d, …, 10d + 100
    bands = percentile_bands(calls, (50, 99), level=0.5)
    assert bands["p50"] == pytest.approx({"mean": 70.0, "median": 70.0, "lo": 60.0, "hi": 80.0})
    assert bands["p99"] == pytest.approx({"mean": 119.0, "median": 119.0, "lo": 109.0, "hi": 129.0})
    assert list(percentile_bands(calls)) == ["p50", "p99", "p99.9"]


def test_tail_and_p99_bands_of_a_known_forecast():
    D, P = 5, 10
    qat = np.full((D, P, 2), 0.5)
    order = np.random.default_rng(0).permutation(P)
    qat[:, :, 1] = (np.arange(D)[:, None] + order[None, :]) / 100   # draw d: passes d/100 … (d + 9)/100, shuffled
    lat = np.broadcast_to((np.arange(D) + 1.0)[:, None, None] * 1e-3, (D, P, 40)).copy()   # draw d: (d + 1) ms
    fc = Forecast(system="s", workload="w", config=Config(4), latency_s=lat, qat=qat,
                  thresholds_s=np.array([0.002, 0.003]), threshold_labels=["2ms", "3ms"], calibrated=True,
                  latency={}, quality=[], metric="accuracy", no_deadline=1.0, passes_per_run=P, family="quantile",
                  session="a new session", tail_q=0.25)
    # TQ_0.25 of 10 passes is the 3rd worst: (d + 2)/100, i.e. .02 … .06 over draws
    assert tail_and_p99_bands(fc, k=1, level=0.5) == pytest.approx(
        {"tail": 0.04, "tail_lo": 0.03, "tail_hi": 0.05, "threshold_s": 0.003,
         "p99_s": 3e-3, "p99_lo_s": 2e-3, "p99_hi_s": 4e-3})
    assert tail_and_p99_bands(fc)["tail"] == 0.5 and tail_and_p99_bands(fc)["threshold_s"] == 0.002


def test_simulate_calls_one_latency_per_call_in_the_fitted_sessions(quick):
    _, fm, _ = quick
    cfg = Config(batch_size=64, threads=1)
    calls = simulate_calls(fm, cfg, n_passes=3, n_draws=10, seed=4)
    lat, _ = simulate_latency(fm, cfg, n_passes=3, n_draws=10, seed=4)
    assert calls.shape == (10, 3 * 9)  # 540 instances: 8 full batches of 64 and a partial one, per pass
    assert np.array_equal(calls, lat[:, :, ::64].reshape(10, -1))
    # a session the fit saw (the only one: its fitted offset is 0) replaces the fresh session's draw
    sid = int(fm.summaries.sessions[0])
    seen = simulate_calls(fm, cfg, n_passes=3, n_draws=10, seed=4, sessions=np.full(3, sid))
    lat0, _ = simulate_latency(fm, cfg, n_passes=3, n_draws=10, seed=4, session=np.zeros((10, 3)))
    assert np.array_equal(seen, lat0[:, :, ::64].reshape(10, -1)) and not np.array_equal(seen, calls)
    unseen = simulate_calls(fm, cfg, n_passes=3, n_draws=10, seed=4, sessions=np.full(3, sid + 1))
    assert np.array_equal(unseen, calls)  # a session the fit never saw: a new one

def test_a_new_sessions_tail_stretches_by_the_spread_measured_between_sessions(quick):
    """A run in a new session reaches beyond its median by e^ε as far as the calibration did, ε ~ N(0, σ²) with σ
    from the calibration's sessions: the median stays, log log(p99/p50) moves by ε exactly, and a run in a fitted
    session (or with the stretch off) is untouched."""
    import dataclasses

    _, fm, _ = quick
    cfg = Config(batch_size=16, threads=2)

    def run(var, **kw):
        fm.summaries = dataclasses.replace(fm.summaries, tail_session_var=var, tail_session_dof=50)
        lat, _ = simulate_latency(fm, cfg, n_passes=20, n_draws=200, seed=3, **kw)
        p50, p99 = np.percentile(lat.reshape(200, -1), [50, 99], axis=1)
        return p50, np.log(np.log(p99 / p50))

    saved = fm.summaries
    zero = np.zeros(200)
    try:
        fresh50, fresh = run(0.3 ** 2)                                   # a new session: stretched
        off50, off = run(0.3 ** 2, tail_drift=False)                     # the same run, not stretched
        seen50, seen = run(0.3 ** 2, session=zero)                       # a fitted session: never stretched
        base50, base = run(0.0, session=zero, tail_drift=False)
        checked50, checked = run(0.3 ** 2, session=zero, tail_drift=True)   # a checked level, a new tail
    finally:
        fm.summaries = saved
    assert np.allclose(seen, base) and np.allclose(seen50, base50)
    assert np.allclose(checked50, base50, rtol=0.02) and not np.allclose(checked, base)
    assert np.allclose(fresh50, off50, rtol=0.02)
    moved = fresh - off
    assert 0.24 < np.std(moved) < 0.36 and abs(np.mean(moved)) < 0.07


def test_true_p99_inside_interval_for_unseen_config():
    _, fm, law = example_fit(passes=10)
    for cfg in (Config(8, 2), Config(32, 1)):
        fc = forecast(fm, cfg, ["p99"], n_passes=20, n_draws=200, force=True)
        truth = law.truth(cfg, 540, fc.thresholds_s, n_runs=60, passes_per_run=20)
        lat = fc.as_dict()["latency_s"]["p99"]
        assert lat["lo"] <= truth["p99"] <= lat["hi"]
        row = fc.as_dict()["quality"]["thresholds"][0]
        assert row["mean_lo"] - 0.005 <= truth["mean_q"][0] <= row["mean_hi"] + 0.005


@pytest.mark.slow
def test_coverage_near_nominal_over_seeds():
    """Over seeds and unseen configs, the 90% interval of p99 holds the true per-run p99 ~90% of the time."""
    from tqsim.data.io import load_campaign
    from tqsim.models import fit_campaign
    from tqsim.testing import Law, grid, simulate_campaign, write_campaign
    import tempfile

    hits = []
    law = Law()
    for seed in range(4):
        home = tempfile.mkdtemp()
        camp = load_campaign(write_campaign(simulate_campaign(grid(), passes=10, seed=seed, law=law), home))
        fm = fit_campaign(camp, draws=300, tune=300, seed=seed)
        for cfg in (Config(8, 1), Config(32, 2), Config(2, 2)):
            fc = forecast(fm, cfg, ["p99"], n_passes=20, n_draws=200, force=True, seed=seed)
            truth = law.truth(cfg, 540, [], n_runs=20, passes_per_run=20, seed=seed)
            lo, hi = fc.as_dict()["latency_s"]["p99"]["lo"], fc.as_dict()["latency_s"]["p99"]["hi"]
            hits += [lo <= x <= hi for x in truth["per_run"]["p99"]]
    assert 0.75 <= np.mean(hits) <= 0.99
