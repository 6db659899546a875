"""Serving overheads fitted from request logs alone (tqsim.whatif.log_fit) on simulated stacks with known answers,
and the `calibrate --serving-log` / `validate --serving-log` commands end to end."""

from __future__ import annotations

import json

import numpy as np
import pytest

from cli_runner import run_cli
from tqsim.data.request_log import write_request_log
from tqsim.testing import grid, simulate_campaign, simulate_request_log, write_campaign
from tqsim.whatif.log_fit import fit_log_overheads, run_level_sd
from tqsim.whatif.overheads import ServingOverheads
from tqsim.whatif.service import EmpiricalService, WithOverheads
from tqsim.whatif.simulator import ServingSetup, saturation_rps, simulate

SETUP = ServingSetup(1, 1, 8, 0.5e-3)
TRUTH = ServingOverheads(scale=1.4, per_batch_s=80e-6, response_s=300e-6, pause_prob=0.01,
                         pause_s=(2e-3 * -np.log1p(-(np.arange(200) + 0.5) / 200)).tolist())


_RNG = np.random.default_rng(0)
RAW = {k: (150e-6 + 60e-6 * k) * np.exp(_RNG.normal(0, 0.05, (10, 200))) for k in (1, 2, 4, 8)}


@pytest.fixture(scope="module")
def forward():
    return EmpiricalService(RAW)


def _logs(forward, rates, seed=0, **kw):
    stack = WithOverheads(forward, TRUTH)
    return [simulate_request_log(stack, SETUP, r, 4.0, seed=seed + i, **kw) for i, r in enumerate(rates)]


def test_the_fit_recovers_a_known_stack_and_forecasts_a_load_it_never_saw(forward):
    cap = saturation_rps(WithOverheads(forward, TRUTH), SETUP)
    fit = fit_log_overheads(_logs(forward, [0.2 * cap, 0.5 * cap]), forward, SETUP, window=540)
    oh = fit.overheads
    assert oh.scale == pytest.approx(TRUTH.scale, rel=0.2)
    assert oh.response_s == pytest.approx(TRUTH.response_s, rel=0.5)
    assert fit.parameters == ["scale", "per_batch_s", "frontend_s", "response_s", "inflation_s", "pause_prob",
                              "pause_mean_s"]
    # a load between and beyond the fitted ones: the forecast p99 lies near the truth's, and the saturation rate too
    for frac in (0.35, 0.7):
        kw = dict(thresholds_s=[0.02], rate_rps=frac * cap, n_windows=40, draws=20, seed=3)
        true_p99 = simulate(WithOverheads(forward, TRUTH), SETUP, **kw).result()["latency_s"]["p99"]["mean"]
        got = simulate(WithOverheads(forward, oh), SETUP, **kw).result()["latency_s"]["p99"]
        assert got["mean"] == pytest.approx(true_p99, rel=0.25)
        assert got["lo"] <= true_p99 <= got["hi"]
    assert saturation_rps(WithOverheads(forward, oh), SETUP) == pytest.approx(cap, rel=0.1)


@pytest.mark.slow
def test_a_wrong_forward_level_is_absorbed_by_the_scale_not_by_the_fixed_costs(forward):
    """The same logs against a forward calibration 2x too slow: the fitted service (scale x forward + per batch)
    is the same, so is the saturation rate it implies."""
    cap = saturation_rps(WithOverheads(forward, TRUTH), SETUP)
    logs = _logs(forward, [0.2 * cap, 0.5 * cap])
    slow = EmpiricalService({k: 2 * v for k, v in RAW.items()})
    a = fit_log_overheads(logs, forward, SETUP, draws=2).overheads
    b = fit_log_overheads(logs, slow, SETUP, draws=2).overheads
    assert b.scale == pytest.approx(a.scale / 2, rel=0.25)
    assert saturation_rps(WithOverheads(slow, b), SETUP) == pytest.approx(cap, rel=0.2)


def test_known_batches_and_forward_times_fix_the_level(forward):
    from dataclasses import replace

    cap = saturation_rps(WithOverheads(forward, TRUTH), SETUP)
    logs = _logs(forward, [0.2 * cap, 0.5 * cap], with_batches=True)
    for lg in logs:  # the stack reports each batch's forward time: 1.4 x the calibration's
        lg.forward_s = TRUTH.scale * forward.sample(lg.batch_size, np.random.default_rng(0))
    fit = fit_log_overheads(logs, forward, SETUP)
    assert "scale" not in fit.parameters and fit.overheads.scale == pytest.approx(1.4, rel=0.05)
    assert fit.overheads.shape  # the served spread is read from the log
    assert replace(fit.overheads).to_dict() == fit.overheads.to_dict()


def test_run_level_is_measured_by_repeats_else_stood_in_by_chunks(forward):
    logs = _logs(forward, [1000.0, 1000.0, 3000.0, 3000.0])
    sd, dof, how = run_level_sd(logs)
    assert dof == 2 and "measured by 4 runs at 2 rate(s)" in how
    sd, dof, how = run_level_sd(logs[::2])
    assert dof >= 2 and "chunks" in how and "understates" in how


def test_serving_log_calibration_and_validation_end_to_end(tmp_path, capsys, monkeypatch):
    """Import two loads' logs of a (simulated) stack, then score the what-if against two others it never saw."""
    from tqsim.whatif.inputs import WorkspaceInputs

    write_campaign(simulate_campaign(grid((1, 2, 4, 8), (1,)), passes=6, seed=0), tmp_path)
    fwd = WorkspaceInputs.open(tmp_path, None, None, overheads=False).service(1, "fp32")
    cap = saturation_rps(WithOverheads(fwd, TRUTH), SETUP)
    paths = []
    for i, frac in enumerate((0.2, 0.5, 0.35, 0.65)):
        p = tmp_path / f"run{i}.csv"
        write_request_log(simulate_request_log(WithOverheads(fwd, TRUTH), SETUP, frac * cap, 3.0, seed=i), p)
        paths.append(str(p))
    setup = "replicas=1,threads=1,max_batch=8,max_wait=0.5ms,stack=mystack"

    def tqsim(*args):
        return run_cli([*args, "--home", tmp_path], capsys, monkeypatch)

    code, out, err = tqsim("calibrate", "--serving-log", paths[0], "--serving-log", paths[1], "--setup", setup)
    assert code == 0, err
    assert "each run against its replay" in out
    store = json.loads((tmp_path / "calibration/simbox/sim/serving.json").read_text())
    assert list(store["setups"]) == ["mystack:r1-th1"]
    assert store["setups"]["mystack:r1-th1"]["scale"] == pytest.approx(1.4, rel=0.25)
    code, out, err = tqsim("validate", "--serving-log", paths[2], "--serving-log", paths[3], "--setup", setup, "--json")
    assert code == 0, err
    res = json.loads(out)
    assert [r["source"] for r in res["runs"]] == paths[2:]
    assert res["coverage"]["p99"]["runs"] == 2 and res["coverage"]["p99"]["inside"] >= 1
    for r in res["runs"]:
        assert abs(r["relative_error"]["p99"]) < 0.35
        assert r["observed"]["tail_quality"] is not None
    assert (tmp_path / "calibration/simbox/sim/serving-validation.json").exists()
    from tqsim.report.build import _Ctx, _serving_validation_section
    from tqsim.data.workspace import Workspace

    sec = _serving_validation_section(_Ctx(Workspace.at(tmp_path), "simbox", "sim", None, [], [], 0.01, 0, 10))
    assert sec.available and len(sec.tables[0].rows) == 2 and any(n.startswith("p99: ") for n in sec.notes)
    # a run the fit used is refused; what-if uses the imported stack; a stack never calibrated is named
    code, out, err = tqsim("validate", "--serving-log", paths[0], "--setup", setup)
    assert code == 2 and "used to fit" in err
    code, out, err = tqsim("whatif", "--rate", f"{0.3 * cap:.0f}", "--max-batch", "8", "--max-wait", "0.5ms",
                           "--stack", "mystack", "-t", "20ms", "--json")
    assert code == 0, err
    assert any("mystack:r1-th1" in n for n in json.loads(out)["notes"])
    code, out, err = tqsim("whatif", "--rate", "100", "-t", "20ms", "--stack", "other")
    assert code == 2 and "mystack" in err
    # the Python API answers the same
    from tqsim import Workspace

    ws = Workspace(tmp_path)
    val = ws.validate_serving_logs([paths[2]], setup)
    assert val.as_dict()["runs"][0]["forecast"]["p99"] == res["runs"][0]["forecast"]["p99"]
    sweep = ws.whatif(0.3 * cap, thresholds="20ms", max_batch=8, max_wait="0.5ms", stack="mystack")
    assert any("mystack:r1-th1" in n for n in sweep.notes)


def test_serving_log_bad_input_exits_2(tmp_path, capsys, monkeypatch):
    write_campaign(simulate_campaign(grid((1, 2), (1,)), passes=2, seed=0), tmp_path)
    cases = [
        (["calibrate", "--setup", "replicas=1,threads=1,max_batch=8,max_wait=0"], "--serving-log"),
        (["calibrate", "--serving-log", "x.csv"], "--setup"),
        (["calibrate", "--serving-log", "x.csv", "--setup", "replicas=1,threads=1,max_batch=8"], "max_wait"),
        (["validate", "--serving-log", "x.csv"], "--setup"),
        (["validate"], "--heldout"),
    ]
    for argv, needle in cases:
        code, out, err = run_cli([*argv, "--home", tmp_path], capsys, monkeypatch)
        assert code == 2 and needle in err, (argv, err)


def test_answers_sent_one_at_a_time_are_told_from_answers_that_leave_together(forward):
    """The two-way front end is fitted only for a stack whose batches' answers leave one after another (one HTTP
    process); tqsim's in-process server answers a batch at once."""
    from tqsim.whatif.log_fit import answers_one_at_a_time

    log = _logs(forward, [1000.0], with_batches=True)[0]
    assert not answers_one_at_a_time([log])  # the simulated server answers a batch at once
    rank = np.zeros(log.n)
    for b in np.unique(log.batch_id):
        mine = np.flatnonzero(log.batch_id == b)
        rank[mine] = np.arange(mine.size)
    log.completion_s = log.completion_s + 0.4e-3 * rank  # 0.4 ms between answers, as LitServe's logs show
    assert answers_one_at_a_time([log])
    log.batch_id = np.full(log.n, -1)  # batches unknown: nothing says otherwise
    assert answers_one_at_a_time([log])


def _log_with_forward(stack, rate, seed, duration_s=4.0):
    """A simulated log that names batches and their forward times (each batch's service less the per-batch cost),
    as tqsim's own server logs them."""
    from tqsim.data.request_log import RequestLog
    from tqsim.whatif.simulator import poisson_arrivals, simulate_run

    rng = np.random.default_rng(seed)
    arr = poisson_arrivals(rate, int(rate * duration_s), rng)
    svc = stack.draw(rng)
    run = simulate_run(svc, SETUP, arr, rng, window=540)
    ids = np.repeat(np.arange(run.batch_sizes.size), run.batch_sizes)
    fwd = run.done_s - svc.response_s - run.start_s - stack.oh.per_batch_s
    return RequestLog.from_arrays(run.arrival_s, run.done_s, sample_index=rng.integers(0, 540, arr.size),
                                  batch_id=ids, batch_size=run.batch_sizes[ids], forward_s=fwd,
                                  source=f"simulated {rate:g} req/s #{seed}", driver="simulated")


def test_the_cost_per_batch_is_read_from_batches_that_ran_back_to_back(forward):
    """Latency cannot tell a per-batch cost from a front end; back-to-back batches can: the time between their
    answers, less the forward call, is what keeps the replica busy."""
    from tqsim.whatif.log_fit import per_batch_from_cycles

    cap = saturation_rps(WithOverheads(forward, TRUTH), SETUP)
    log = _log_with_forward(WithOverheads(forward, TRUTH), 0.6 * cap, seed=1)
    got, pairs, rate = per_batch_from_cycles([log], SETUP)
    assert pairs >= 100 and got == pytest.approx(TRUTH.per_batch_s, rel=0.15) and rate == pytest.approx(log.rate_rps)
    assert per_batch_from_cycles([_log_with_forward(WithOverheads(forward, TRUTH), 0.02 * cap, 2)], SETUP) is None
    log.batch_id = np.full(log.n, -1)  # batches not named: nothing to read
    assert per_batch_from_cycles([log], SETUP) is None


def test_a_slow_minute_at_the_knee_measures_the_run_level_and_does_not_bend_the_fit(forward):
    """Three runs at each of two loads; one of the heavier ones ran 2.1x slower everywhere (a slow minute on a
    shared machine) and queued near its knee. It is left out of the terms, which keep the stack's capacity, and
    enters the run-to-run level through its replay (its median latency would put that level far too high)."""
    from dataclasses import replace

    from tqsim.whatif.log_fit import run_level_sd

    stack = WithOverheads(forward, TRUTH)
    cap = saturation_rps(stack, SETUP)
    slow = WithOverheads(forward, replace(TRUTH, scale=2.1 * TRUTH.scale, per_batch_s=2.1 * TRUTH.per_batch_s,
                                          response_s=2.1 * TRUTH.response_s))
    logs = [_log_with_forward(stack, 0.2 * cap, s) for s in range(3)]
    logs += [_log_with_forward(slow if s == 3 else stack, 0.55 * cap, s) for s in range(3, 6)]
    fit = fit_log_overheads(logs, forward, SETUP, draws=2)
    assert [r["fitted"] for r in fit.runs] == [True] * 3 + [False, True, True]
    assert fit.runs[3]["level"] == pytest.approx(2.1, rel=0.15)
    assert any("slow minute at the knee" in n for n in fit.notes)
    oh = fit.overheads
    assert "per_batch_s" not in fit.parameters and oh.per_batch_s == pytest.approx(TRUTH.per_batch_s, rel=0.2)
    assert saturation_rps(WithOverheads(forward, oh), SETUP) == pytest.approx(cap, rel=0.1)
    # pooled over the two loads' repeats (4 dof), the true levels' spread is 0.30; read from median latency, more
    level = np.log([1, 1, 2.1])
    assert oh.run_log_sd == pytest.approx(np.sqrt(np.sum((level - level.mean()) ** 2) / 4), rel=0.4)
    assert run_level_sd(logs)[0] > 2 * oh.run_log_sd


def test_batch_sizes_served_often_keep_their_own_served_distribution(forward):
    """In-server forward time need not scale with the calibration alike at every size (tqsim's server: batch 1 at
    3.3x its calibration, batch 8 at 2.3x); a size the logs served often keeps its own level and spread."""
    rng = np.random.default_rng(0)
    med1 = float(np.median(forward.sample(np.full(4000, 1), np.random.default_rng(0))))
    oh = ServingOverheads(scale=2.0, shape=[0.9, 1.0, 1.1], shape_by_size={"1": [1.5, 1.6, 1.7]})
    svc = WithOverheads(forward, oh)
    one, eight = svc.sample(np.full(3000, 1), rng), svc.sample(np.full(3000, 8), rng)
    assert np.median(one) == pytest.approx(2.0 * 1.6 * med1, rel=0.05)
    med8 = float(np.median(forward.sample(np.full(4000, 8), np.random.default_rng(0))))
    assert np.median(eight) == pytest.approx(2.0 * med8, rel=0.05)
    assert ServingOverheads.from_dict(oh.to_dict()).shape_by_size == {"1": [1.5, 1.6, 1.7]}


def test_a_server_faster_the_busier_it_is_is_fitted_up_to_its_measured_capacity(forward):
    """tqsim's server on the 2-vCPU VM ran its forward calls 25 % faster saturated than at a fifth of its capacity.
    Logs at 0.2 and 0.5 of capacity and the measured capacity (a ramp) pin a speed-up with the rate (g < 0), which
    stops at that capacity; without the speed-up the fit would put the capacity 25 % low."""
    from dataclasses import replace

    from tqsim.whatif.simulator import capacity_rps

    base = capacity_rps(WithOverheads(forward, TRUTH), SETUP)
    until = base / 0.75
    truth = replace(TRUTH, inflation_s=-0.25 / until, inflation_until_rps=until)
    stack = WithOverheads(forward, truth)
    cap = capacity_rps(stack.at_rate(until), SETUP)
    logs = [simulate_request_log(stack, SETUP, f * cap, 4.0, seed=i) for i, f in enumerate((0.2, 0.5))]
    oh = fit_log_overheads(logs, forward, SETUP, draws=2, capacity_rps=cap).overheads
    assert oh.inflation_s < 0 and oh.inflation_until_rps == cap
    fitted = WithOverheads(forward, oh)
    assert capacity_rps(fitted.at_rate(cap), SETUP) == pytest.approx(cap, rel=0.1)
    assert capacity_rps(fitted.at_rate(3 * cap), SETUP) == capacity_rps(fitted.at_rate(cap), SETUP)
