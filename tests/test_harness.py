"""The timing loop, the campaign's rounds and resume, and the file contract, without torch."""

import numpy as np
import pytest

from tests.fakes import FakeRunner, ScriptedClock, fake_prepare, fake_workload
from tqsim.data.io import load_campaign, read_calibration, write_atomic
from tqsim.data.schema import DataError, batch_latency, check_calibration
from tqsim.data.workspace import Workspace
from tqsim.errors import UserError
from tqsim.factors import Config
from tqsim.measure.campaign import run_campaign
from tqsim.measure.plan import build_plan
from tqsim.measure.record import ConfigRecord
from tqsim.measure.timing import flag_outliers, time_pass


def test_time_pass_reads_the_clock_once_before_and_once_after_each_call():
    runner = FakeRunner(n=7, batch_size=3)  # batches of 3, 3, 1
    # clock: t0 (+5), t1 (+100) | t0 (+7), t1 (+250) | t0 (+1), t1 (+40)
    clock = ScriptedClock([5, 100, 7, 250, 1, 40])
    ns = time_pass(runner, clock)
    assert ns.tolist() == [100, 250, 40]
    assert clock.i == 6
    assert runner.calls == [0, 0, 3, 6]  # one untimed priming call of the first batch, then the pass


def test_time_pass_primes_only_as_asked():
    runner = FakeRunner(n=4, batch_size=2)
    time_pass(runner, ScriptedClock([0, 10]), prime=3)
    assert runner.calls == [0, 0, 0, 0, 2]
    runner = FakeRunner(n=4, batch_size=2)
    time_pass(runner, ScriptedClock([0, 10]), prime=0)
    assert runner.calls == [0, 2]


def test_flag_outliers_flags_far_calls_and_keeps_the_rest():
    x = np.r_[np.full(50, 1.0) + np.linspace(0, 0.01, 50), 5.0]
    flags = flag_outliers(x)
    assert flags.sum() == 1 and flags[-1]


def _run(tmp_path, passes=3, grid=("batch_size=2,5",), clock=None, **kw):
    plan = build_plan(None, list(grid), workload="fake", passes=passes, warmup=1, seed=3)
    ws = Workspace.at(tmp_path)
    return run_campaign(plan, ws, "sys", workload=fake_workload(), prepare=fake_prepare(),
                        activate=lambda c: None, clock=clock or ScriptedClock([1000, 2000]), **kw)


def test_campaign_writes_one_valid_file_per_config_with_shared_rounds(tmp_path):
    res = _run(tmp_path)
    assert res.measured_passes == 6
    files = sorted(res.folder.glob("*.nc"))
    assert [f.stem for f in files] == ["bs2-th1-fp32-torch-cpu", "bs5-th1-fp32-torch-cpu"]
    for f in files:
        ds = read_calibration(f, "fake")
        assert ds.sizes == {"pass": 3, "instance": 10, "warmup_pass": 1}
        assert ds["round"].values.tolist() == [0, 1, 2]
        assert np.allclose(ds["latency_s"].values, 2e-6)  # the scripted clock's 2000 ns per call
        assert ds["score"].values.mean() == pytest.approx(0.8)  # every 5th instance is wrong
    camp = load_campaign(res.folder, "fake")
    assert camp.sizes["config"] == 2 and list(camp["batch_size"].values) == [2, 5]


def test_resume_measures_only_what_is_missing_and_continues_rounds(tmp_path):
    _run(tmp_path, passes=2)
    res = _run(tmp_path, passes=4)
    assert res.measured_passes == 4
    for f in res.folder.glob("*.nc"):
        assert read_calibration(f)["round"].values.tolist() == [0, 1, 2, 3]
    again = _run(tmp_path, passes=4)
    assert again.measured_passes == 0


def test_resume_after_uneven_interrupted_round(tmp_path):
    _run(tmp_path, passes=2)
    path = tmp_path / "calibration/sys/fake/bs2-th1-fp32-torch-cpu.nc"
    rec = ConfigRecord.from_dataset(read_calibration(path))
    rec.keep_passes(1)
    write_atomic(rec.to_dataset(), path)  # as if killed after one config of round 1
    res = _run(tmp_path, passes=2)
    assert res.measured_passes == 1
    assert read_calibration(path).sizes["pass"] == 2


def test_fresh_starts_over(tmp_path):
    _run(tmp_path, passes=2)
    res = _run(tmp_path, passes=2, fresh=True)
    assert res.measured_passes == 4


def test_another_model_is_refused_not_overwritten(tmp_path):
    _run(tmp_path, passes=1)
    plan = build_plan(None, ["batch_size=2"], workload="fake", passes=2, warmup=0)
    other = fake_workload()
    other.digest = "different"
    with pytest.raises(UserError, match="different model"):
        run_campaign(plan, Workspace.at(tmp_path), "sys", workload=other, prepare=fake_prepare(),
                     activate=lambda c: None)


def test_stop_when_ends_a_configuration_early(tmp_path):
    res = _run(tmp_path, passes=10, stop_when=lambda rec: rec.n_passes >= 4)
    assert res.measured_passes == 8


def test_record_round_trip_is_exact(tmp_path):
    res = _run(tmp_path, passes=2, clock=ScriptedClock([3, 1234, 9, 777]))
    rec = res.records[0]
    path = tmp_path / "x.nc"
    write_atomic(rec.to_dataset(), path)
    back = ConfigRecord.from_dataset(read_calibration(path))
    assert back.config == rec.config
    assert [a.tolist() for a in back.pass_ns] == [a.tolist() for a in rec.pass_ns]
    assert [a.tolist() for a in back.warmup_ns] == [a.tolist() for a in rec.warmup_ns]
    assert back.rounds == rec.rounds and back.started_at == rec.started_at
    assert (back.prediction == rec.prediction).all()
    lat = batch_latency(read_calibration(path))
    assert lat.dims == ("pass", "batch") and lat.shape == (2, 5)


def test_schema_refuses_bad_data_naming_the_file(tmp_path):
    res = _run(tmp_path, passes=1)
    ds = res.records[0].to_dataset()
    bad = ds.copy(deep=True)
    bad["latency_s"][0, 0] = -1.0
    with pytest.raises(DataError, match="bad.nc.*non-positive"):
        check_calibration(bad, "bad.nc")
    with pytest.raises(DataError, match="missing variable 'round'"):
        check_calibration(ds.drop_vars("round"), "x.nc")
    with pytest.raises(DataError, match="workload 'fake', not 'other'"):
        check_calibration(ds, "x.nc", workload="other")


def test_batch_larger_than_the_evaluation_set_is_refused_before_measuring(tmp_path):
    with pytest.raises(UserError, match="larger than the evaluation set"):
        _run(tmp_path, grid=("batch_size=11",))
    assert not list(tmp_path.rglob("*.nc"))
