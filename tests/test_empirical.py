"""Per-batch time distributions, Monte Carlo, rJSD and its floor (issue 3)."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats

from tqsim.empirical.convergence import (ConvergenceTracker, jensen_shannon_distance, jsd_floor, qat_histogram,
                                         rjsd_series)
from tqsim.empirical.kde import LogKDE, PassKDE, PassResampler, silverman_bandwidth
from tqsim.empirical.montecarlo import BatchScorer, batch_latencies, monte_carlo_qat, qat_from_batches
from tqsim.quality import quality_at_deadline


def test_bandwidth_is_scale_free():
    x = np.random.default_rng(0).lognormal(-9, 0.2, size=(40, 7))
    assert np.allclose(silverman_bandwidth(np.log(x)), silverman_bandwidth(np.log(1000 * x)))
    n = 40
    sd = np.log(x).std(axis=0, ddof=1)
    assert (silverman_bandwidth(np.log(x)) <= 0.9 * sd * n ** -0.2 + 1e-12).all()


def _data(bs=3, n_inst=31, n_pass=25, seed=0):
    rng = np.random.default_rng(seed)
    batch = np.arange(n_inst) // bs
    lat_b = rng.lognormal(-8, 0.2, size=(n_pass, batch[-1] + 1))
    label = rng.integers(0, 4, n_inst)
    pred = np.where(rng.random(n_inst) < 0.8, label, rng.integers(0, 4, n_inst))
    return lat_b, batch, pred, label


@pytest.mark.parametrize("metric", ["accuracy", "macro_f1"])
def test_batch_scoring_equals_instance_scoring(metric):
    lat_b, batch, pred, label = _data()
    taus = np.percentile(lat_b, [20, 60, 95])
    kw = {"prediction": pred, "label": label, "metric": metric}
    if metric == "accuracy":
        kw["score"] = pred == label
    got = qat_from_batches(lat_b, taus, BatchScorer(batch, **kw))
    ref = quality_at_deadline(lat_b[:, batch], taus, **kw)
    assert np.allclose(got, ref, atol=1e-6)
    assert np.allclose(batch_latencies(lat_b[:, batch], batch), lat_b)


def test_kde_cdf_matches_its_samples():
    lat_b, *_ = _data()
    kde = LogKDE().fit(lat_b)
    c = np.log(np.percentile(lat_b, [30, 70]))
    draws = kde.sample_log(20_000, np.random.default_rng(1))
    emp = (draws[None] <= c[:, None, None]).mean(axis=1)
    assert np.allclose(emp, kde.cdf(c), atol=0.015)


def test_monte_carlo_binomial_closed_form():
    # batch size 1, every instance correct, each instance late in exactly 2 of 10 passes, bandwidth 0:
    # the KDE is the per-instance empirical law, independent across instances, so Q@T ~ Bin(N, 0.8) / N.
    n_inst, n_pass = 50, 10
    rng = np.random.default_rng(0)
    lat = np.full((n_pass, n_inst), 1e-3)
    for i in range(n_inst):
        lat[rng.choice(n_pass, 2, replace=False), i] = 5e-3
    batch = np.arange(n_inst)
    q0 = monte_carlo_qat(lat, batch, [2e-3], n_sim=40_000, seed=1, score=np.ones(n_inst), method="kde",
                         bandwidth=0.0)[:, 0]
    exact = stats.binom(n_inst, 0.8)
    assert q0.mean() == pytest.approx(0.8, abs=0.002)
    assert q0.var() == pytest.approx(exact.var() / n_inst ** 2, rel=0.05)
    counts = np.bincount(np.rint(q0 * n_inst).astype(int), minlength=n_inst + 1) / q0.size
    assert np.abs(counts - exact.pmf(np.arange(n_inst + 1))).max() < 0.01


def test_pass_resampling_keeps_whole_passes():
    lat_b, batch, pred, label = _data(bs=1)
    taus = [np.percentile(lat_b, 80)]
    observed = quality_at_deadline(lat_b[:, batch], taus, score=pred == label)[:, 0]
    sim = monte_carlo_qat(lat_b[:, batch], batch, taus, method="passes", n_sim=3000, score=pred == label)[:, 0]
    assert set(np.round(sim, 9)) <= set(np.round(observed, 9))
    assert sim.mean() == pytest.approx(observed.mean(), abs=0.01)


def test_pass_effect_spread_is_kept_by_pass_methods():
    # strong shared pass effect: independent per-batch sampling under-states the Q@T spread
    rng = np.random.default_rng(0)
    n_pass, n_b = 60, 200
    lat = np.exp(-8 + rng.normal(0, 0.15, (n_pass, 1)) + rng.normal(0, 0.05, (n_pass, n_b)))
    batch = np.arange(n_b)
    tau = [np.percentile(lat, 70)]
    ok = np.ones(n_b, bool)
    sd_obs = quality_at_deadline(lat, tau, score=ok)[:, 0].std()
    sd = {m: monte_carlo_qat(lat, batch, tau, method=m, n_sim=4000, score=ok)[:, 0].std()
          for m in ("kde", "passes", "pass_kde")}
    assert sd["kde"] < 0.5 * sd_obs
    assert sd["passes"] == pytest.approx(sd_obs, rel=0.2)
    assert sd["pass_kde"] == pytest.approx(sd_obs, rel=0.3)


def test_samplers_seeded_and_positive():
    lat_b, *_ = _data()
    for cls in (LogKDE, PassResampler, PassKDE):
        a = cls().fit(lat_b).sample(50, np.random.default_rng(3))
        b = cls().fit(lat_b).sample(50, np.random.default_rng(3))
        assert np.array_equal(a, b) and (a > 0).all() and a.shape == (50, lat_b.shape[1])


def test_jensen_shannon_distance():
    assert jensen_shannon_distance([1, 0], [1, 0]) == 0
    assert jensen_shannon_distance([1, 0], [0, 1]) == pytest.approx(1.0)
    d = jensen_shannon_distance([1, 0], [0.5, 0.5])
    assert d == pytest.approx(np.sqrt(stats.entropy([0.75, 0.25], base=2) - 0.5))
    assert d == pytest.approx(jensen_shannon_distance([0.5, 0.5], [1, 0]))


def test_histogram_fixed_grid():
    h = qat_histogram([0.0, 0.5, 1.0, np.nan])
    assert h.size == 200 and h.sum() == pytest.approx(1) and h[-1] == pytest.approx(1 / 3)


def test_tracker_window_and_convergence():
    t = ConvergenceTracker(epsilon=0.05, window=5)
    values = [t.update([0.9, 0.8]) for _ in range(4)]
    assert all(np.isnan(values)) and not t.converged
    assert t.update([0.9, 0.8]) == 0.0 and t.converged
    rng = np.random.default_rng(0)
    r = rjsd_series(rng.normal(0.9, 0.02, 400).clip(0, 1), window=10)
    assert np.isnan(r[:9]).all()
    assert np.nanmean(r[300:]) < np.nanmean(r[10:40])


def test_floor_shrinks_with_more_heldout_passes():
    pred = np.random.default_rng(0).normal(0.9, 0.02, 20_000).clip(0, 1)
    f30, f300 = jsd_floor(pred, 30), jsd_floor(pred, 300)
    assert 0 < f300["mean"] < f30["mean"] < 1
    assert f30["p05"] <= f30["mean"] <= f30["p95"]


def test_no_heavy_imports():
    import subprocess
    import sys

    code = ("import sys, tqsim.quality, tqsim.empirical; "
            "bad = [m for m in ('torch', 'onnxruntime', 'pymc') if m in sys.modules]; assert not bad, bad")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


def test_tail_quality_benchmark_on_synthetic_data():
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "benchmarks" / "tail_quality.py"
    spec = importlib.util.spec_from_file_location("tail_quality_bench", path)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    rng = np.random.default_rng(0)
    n_pass, n_inst = 45, 64
    batch = np.arange(n_inst) // 4
    lat_b = np.exp(-8 + rng.normal(0, 0.1, (n_pass, 1)) + rng.normal(0, 0.1, (n_pass, batch[-1] + 1)))
    res = bench.evaluate(lat_b[:, batch], batch, {"score": rng.random(n_inst) < 0.9, "metric": "accuracy"},
                         ks=(10,), heldout=30, n_sim=600)
    assert len(res["rows"]) == 3 * 3 and all(0 <= r["jsd"] <= 1 and 0 <= r["floor"] <= 1 for r in res["rows"])
    assert res["mlperf"]["p90_single_stream_min"] == 64
    assert "markdown" not in bench.markdown({"toy": {"c": res}})
