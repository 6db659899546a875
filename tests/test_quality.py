"""Q@T, thresholds, tail quality and its intervals (issue 3)."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import f1_score

from quality_fixtures import calibration_dataset
from tqsim.data.schema import call_latency
from tqsim.errors import UserError
from tqsim.factors import Config
from tqsim.quality import (Threshold, bootstrap_interval, latency_percentiles, minimum_interval, no_deadline_quality,
                           order_statistic_interval, parse_threshold, parse_thresholds, passes_for_tail_bound, qat_curve,
                           qat_dataarray, quality_at_deadline, quality_block, scoring_of, summarize_qat, tail_and_p99,
                           tail_quality, tail_quality_da)


@pytest.mark.parametrize("text,seconds", [("5ms", 5e-3), ("250us", 250e-6), ("250µs", 250e-6), ("0.005", 5e-3),
                                          ("2s", 2.0), ("1e-3", 1e-3), (" 3 ms ", 3e-3), (0.01, 0.01)])
def test_parse_absolute(text, seconds):
    t = parse_threshold(text)
    assert t.seconds == pytest.approx(seconds) and t.percentile is None


def test_parse_percentile_resolves_per_config():
    t = parse_threshold("p99.9")
    assert t.percentile == 99.9 and t.label == "p99.9"
    lat = np.random.default_rng(0).lognormal(size=(5, 100))
    assert t.resolve(lat) == pytest.approx(np.percentile(lat, 99.9))
    assert parse_threshold("p99").resolve(lat * 2) == pytest.approx(2 * parse_threshold("p99").resolve(lat))


@pytest.mark.parametrize("bad", ["abc", "-5ms", "0", "0ms", "p0", "p100", "p101", "5 parsecs", "", "p", "ms"])
def test_parse_bad_threshold(bad):
    with pytest.raises(UserError) as err:
        parse_threshold(bad)
    assert "\n" not in str(err.value)


def test_default_thresholds():
    assert [t.label for t in parse_thresholds(None)] == ["p90", "p95", "p99"]


def _toy(seed=0, n_pass=30, n_inst=80, n_cls=4):
    rng = np.random.default_rng(seed)
    lat = rng.lognormal(-8, 0.3, size=(n_pass, n_inst))
    label = rng.integers(0, n_cls, n_inst)
    pred = np.where(rng.random(n_inst) < 0.8, label, rng.integers(0, n_cls, n_inst))
    return lat, pred, label


@pytest.mark.parametrize("metric", ["accuracy", "macro_f1"])
def test_qat_monotone_and_limits(metric):
    lat, pred, label = _toy()
    taus = np.geomspace(lat.min() / 2, lat.max() * 2, 60)
    kw = {"prediction": pred, "label": label, "metric": metric}
    q = quality_at_deadline(lat, taus, **kw)
    assert q.shape == (30, 60)
    if metric == "accuracy":  # macro-F1 is not monotone: an on-time wrong answer adds a false positive
        assert (np.diff(q, axis=1) >= -1e-12).all()
    full = no_deadline_quality(**kw)
    assert np.allclose(q[:, -1], full)
    assert np.allclose(q[:, 0], 0.0)
    assert np.allclose(quality_at_deadline(lat, [lat.max()], **kw), full)


def test_accuracy_hand_computed():
    lat = np.array([[1.0, 2.0, 3.0, 4.0], [4.0, 3.0, 2.0, 1.0]])
    correct = np.array([True, True, False, True])
    q = quality_at_deadline(lat, [2.5], score=correct)
    assert q[:, 0].tolist() == [0.5, 0.25]  # pass 0: #0, #1 on time and correct; pass 1: #3 only


def test_macro_f1_matches_sklearn_with_late_as_no_class():
    lat, pred, label = _toy(seed=3)
    taus = np.percentile(lat, [50, 90, 99])
    q = quality_at_deadline(lat, taus, prediction=pred, label=label, metric="macro_f1")
    classes = np.unique(label)
    for p in range(0, 30, 7):
        for k, tau in enumerate(taus):
            shown = np.where(lat[p] <= tau, pred, -1)
            ref = f1_score(label, shown, labels=classes, average="macro", zero_division=0)
            assert q[p, k] == pytest.approx(ref)


def test_tail_quality_definition():
    x = np.arange(1, 11) / 10.0  # 10 passes: q = 0.01 is the minimum
    assert tail_quality(x, 0.01) == 0.1
    y = np.arange(200) / 200  # 200 passes: ceil(0.01 * 200) = 2nd smallest
    assert tail_quality(y, 0.01) == y[1]
    assert tail_quality(np.r_[x, np.nan], 0.01) == 0.1


def test_tail_below_mean_and_interval_ordering():
    lat, pred, label = _toy(seed=1, n_pass=60)
    q = quality_at_deadline(lat, np.percentile(lat, [90, 95, 99]), prediction=pred, label=label)
    for k in range(3):
        s = summarize_qat(q[:, k], q=0.05)
        assert s["tail"] <= s["mean"] + 1e-12
        assert s["min"] <= s["tail"]
        assert s["mean_lo"] <= s["mean"] <= s["mean_hi"]
        assert s["tail_lo"] <= s["tail"] <= s["tail_hi"]
        assert s["min_lo"] <= s["min"] <= s["min_hi"]
        assert s["std_lo"] <= s["std"] <= s["std_hi"]


def test_fewer_than_two_passes_refused():
    with pytest.raises(UserError, match="at least 2"):
        summarize_qat(np.array([0.9]))
    with pytest.raises(UserError, match="at least 2"):
        summarize_qat(np.array([0.9, np.nan]))


def test_bootstrap_seeded_and_vectorised():
    x = np.random.default_rng(0).normal(size=50)
    a = bootstrap_interval(x, lambda d: d.mean(axis=-1), seed=3)
    assert a == bootstrap_interval(x, lambda d: d.mean(axis=-1), seed=3)
    se = x.std(ddof=1) / np.sqrt(50)
    assert a[0] == pytest.approx(x.mean() - 1.645 * se, abs=0.6 * se)


def test_order_statistic_interval_coverage():
    rng = np.random.default_rng(0)
    q, n, reps = 0.1, 80, 600
    true = -1.2815515655446004  # 10% quantile of N(0, 1)
    hits = 0
    for _ in range(reps):
        lo, hi = order_statistic_interval(np.sort(rng.normal(size=n)), q, 0.9, floor=-np.inf, ceiling=np.inf)
        hits += lo <= true <= hi
    assert hits / reps >= 0.87


def test_tail_lower_bound_needs_passes():
    assert passes_for_tail_bound(0.01) == 299
    x = np.sort(np.random.default_rng(0).random(100))
    assert order_statistic_interval(x, 0.01)[0] == 0.0  # cannot be bounded from 100 passes
    assert order_statistic_interval(np.sort(np.random.default_rng(0).random(400)), 0.01)[0] > 0


def test_minimum_prediction_interval_by_simulation():
    rng = np.random.default_rng(1)
    n, below, above = 20, 0, 0
    for _ in range(2000):
        x = np.sort(rng.random(n))
        nxt = rng.random(n).min()
        lo, hi = minimum_interval(x)
        below += nxt < x[0]
        above += nxt > hi
    assert below / 2000 == pytest.approx(0.5, abs=0.04)  # the exchangeability result
    assert above / 2000 <= 0.06


def test_curve_band():
    lat, pred, label = _toy()
    c = qat_curve(lat, prediction=pred, label=label)
    assert (c["min"] <= c["mean"] + 1e-12).all() and (c["mean"] <= c["max"] + 1e-12).all()
    assert (np.diff(c["mean"]) >= -1e-12).all()
    assert c["max"][0] == 0 and c["min"][-1] == pytest.approx(no_deadline_quality(prediction=pred, label=label))


def test_xarray_wrappers_and_block():
    ds = calibration_dataset(Config(4), n_passes=12)
    da = qat_dataarray(ds, ["p90", "1ms"])
    assert da.dims == ("pass", "threshold") and list(da["threshold"].values) == ["p90", "1ms"]
    tq = tail_quality_da(da, 0.01, dim="pass")
    assert np.allclose(tq.values, da.min("pass").values)
    block = quality_block(ds, ["p90", "p99"], tail_q=0.01)
    assert {"metric", "no_deadline", "thresholds"} <= set(block)
    keys = {"threshold_s", "mean", "mean_lo", "mean_hi", "tail", "tail_q", "tail_lo", "tail_hi", "min", "min_lo",
            "min_hi"}
    for row in block["thresholds"]:
        assert keys <= set(row)
        assert row["tail"] <= row["mean"] + 1e-12


def test_block_macro_f1_and_bad_tail_q():
    ds = calibration_dataset(Config(1), n_passes=5, metric="macro_f1")
    assert quality_block(ds)["metric"] == "macro_f1"
    for q in (0, 1, 1.5, -0.1):
        with pytest.raises(UserError, match="tail"):
            quality_block(ds, tail_q=q)


def test_threshold_is_frozen_value():
    assert Threshold("5ms", seconds=0.005) == parse_threshold("5ms")


def test_macro_f1_not_monotone_by_design():
    # class 0: one right answer on time; instance 2 (label 1, predicted 0) arriving in time adds a false
    # positive to class 0, which lowers its F1 more than it changes class 1's (already missed).
    label = np.array([0, 0, 1, 1])
    pred = np.array([0, 1, 0, 1])
    lat = np.array([[1.0, 1.0, 2.0, 1.0]])
    q = quality_at_deadline(lat, [1.5, 2.5], prediction=pred, label=label, metric="macro_f1")[0]
    assert q[1] < q[0]


def test_scoring_of_reads_the_metric_and_its_vectors():
    acc = calibration_dataset(Config(1), n_passes=3)
    s = scoring_of(acc)
    assert set(s) == {"score", "metric"} and s["metric"] == "accuracy" and s["score"].dtype == float
    assert no_deadline_quality(**s) == pytest.approx(acc["correct"].values.mean())  # a file of before scores
    f1 = calibration_dataset(Config(1), n_passes=3, metric="macro_f1")
    s = scoring_of(f1)
    assert set(s) == {"score", "prediction", "label", "metric"} and s["metric"] == "macro_f1"
    assert no_deadline_quality(**s) == pytest.approx(f1_score(f1["label"].values, f1["prediction"].values,
                                                              average="macro"))


def test_latency_percentiles_pool_passes_and_ignore_missing():
    lat = np.array([[1.0, 2.0, 3.0], [4.0, 5.0, np.nan]])
    assert latency_percentiles(lat, (0, 50, 100)) == {"p0": 1.0, "p50": 3.0, "p100": 5.0}
    assert list(latency_percentiles(lat)) == ["p50", "p90", "p99", "p99.9"]


def test_call_latency_keeps_one_latency_per_call():
    batch = np.array([0, 0, 1, 1, 1, 2, 2])
    lat = np.array([[0.1, 0.1, 0.2, 0.2, 0.2, 0.3, 0.3], [1, 1, 2, 2, 2, 3, 3]])
    assert np.array_equal(call_latency(lat, batch), [[0.1, 0.2, 0.3], [1, 2, 3]])


def test_tail_and_p99_of_measured_passes():
    ds = calibration_dataset(Config(1), n_passes=4, n_instances=4)
    ds["latency_s"][:] = np.array([[1, 2, 3, 4], [2, 3, 4, 5], [3, 4, 5, 6], [np.nan] * 4]) * 1e-3  # a missing pass
    ds["correct"][:] = [False, True, True, True]
    # p50 of the measured latencies: 3.5 ms; Q@T per pass .5, .25, 0; TQ_0.5 of 3 passes: the 2nd worst
    assert tail_and_p99(ds, "p50", 0.5) == pytest.approx({"tail": 0.25, "threshold_s": 3.5e-3, "p99_s": 5.89e-3})
    # at 4 ms: .75, .5, .25; the worst pass
    assert tail_and_p99(ds, "4ms", 0.01)["tail"] == pytest.approx(0.25)
