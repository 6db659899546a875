"""`tqsim suggest` and `tqsim calibrate --adaptive`: what to measure next, and the loop that measures it."""

import json
import math

import numpy as np
import pytest

from tests.cli_runner import run_cli as run
from tqsim.errors import UserError
from tqsim.factors import Config
from tqsim.adaptive import initial_design, inferences, run_adaptive
from tqsim.models.design import Design, check_anchored, parse_target, suggest
from tqsim.testing import Law, example_fit, simulate_campaign


# ---- the target set ----------------------------------------------------------------------------------
def test_parse_target_ranges_lists_and_defaults():
    ts = parse_target("batch_size=1..256,threads=1,2", n_instances=540)
    assert sorted({t.batch_size for t in ts}) == [1, 2, 4, 8, 16, 32, 64, 128, 256]
    assert sorted({t.threads for t in ts}) == [1, 2] and len(ts) == 18
    assert sorted({t.batch_size for t in parse_target("batch_size=3..20")}) == [3, 6, 12, 20]
    # a factor not named takes the calibrated levels
    cal = [Config(4, 1), Config(4, 2)]
    assert sorted({t.threads for t in parse_target("batch_size=8", calibrated=cal)}) == [1, 2]


@pytest.mark.parametrize("text, message", [
    ("", "--target is empty"),
    ("batch_size=16..4", "runs downwards"),
    ("flavour=1", "unknown factor"),
    ("precision=fp32..bf16", "a range a..b is for batch_size and threads"),
    ("1,2", "start with FACTOR="),
    ("batch_size=1,batch_size=2", "twice"),
    ("batch_size=1..1024", "larger than the evaluation set"),
])
def test_parse_target_refuses_with_the_fix(text, message):
    with pytest.raises(UserError, match=message):
        parse_target(text, n_instances=540)


def test_a_target_range_without_an_anchor_is_refused():
    cal = [Config(1, 1), Config(4, 1)]
    check_anchored(parse_target("batch_size=1..16,threads=1"), cal)
    with pytest.raises(UserError, match="no calibrated configuration anchors"):
        check_anchored(parse_target("batch_size=64..256,threads=1"), cal)
    with pytest.raises(UserError, match="precision=bf16"):
        check_anchored(parse_target("batch_size=1..16,threads=1,precision=bf16"), cal)


def test_initial_design_is_corners_and_centre():
    ts = parse_target("batch_size=1..256,threads=1,2")
    first = initial_design(ts)
    assert {(c.batch_size, c.threads) for c in first} == {(1, 1), (1, 2), (16, 1), (16, 2), (256, 1), (256, 2)}


# ---- the design ------------------------------------------------------------------------------------
def test_design_prefers_what_it_does_not_know():
    """On a fit of batch 1-64 (8 passes each): an unmeasured size beyond the range removes more than a calibrated
    one whose level and tail are known; measuring a configuration shrinks its own variance, and the
    shrinkage does not depend on anything but the design (the value measured is not needed)."""
    _, fm, _ = example_fit()
    targets = parse_target("batch_size=1..256,threads=1,2", n_instances=fm.n_instances)
    d = Design(fm, targets)
    g = {t.id: d.gain(i, 10) for i, t in enumerate(targets)}
    # (batch 1's body is known to its 0.99 quantile; above it, its own tail continued with a wide se, which
    # more passes turn into measurements)
    assert g["bs256-th1-fp32-torch-cpu"] > g["bs1-th1-fp32-torch-cpu"]
    assert g["bs128-th1-fp32-torch-cpu"] > g["bs64-th2-fp32-torch-cpu"]
    before = d.integrated_variance()
    i = [t.id for t in targets].index("bs256-th1-fp32-torch-cpu")
    var_i = d.terms[0]["cov"][:, i, i].mean()
    d.measure(i, 10)
    assert d.terms[0]["cov"][:, i, i].mean() < 0.5 * var_i
    assert d.integrated_variance() == pytest.approx(before - g["bs256-th1-fp32-torch-cpu"], rel=1e-6)
    # diminishing returns: the same configuration again removes less
    assert d.gain(i, 10) < g["bs256-th1-fp32-torch-cpu"]


def test_suggest_plans_within_the_budget():
    _, fm, _ = example_fit()
    n = fm.n_instances
    s = suggest(fm, "batch_size=1..256,threads=1,2", budget=5 * 13 * n, chunk=10)
    d = s.as_dict()
    assert d["plan_inferences"] <= 5 * 13 * n and len(s.plan) >= 4
    assert d["ranking"][0]["reduction"] == max(r["reduction"] for r in d["ranking"])
    assert all(0 <= r["reduction"] <= 1 for r in d["ranking"]) and all(0 <= r["p99_model_width"] < r["p99_run_width"] for r in d["ranking"])
    # each step removes a share of what is left, and the greedy shares fall
    shares = [p.reduction for p in s.plan]
    assert shares[0] >= shares[-1] > 0
    assert all(c.startswith("tqsim calibrate --workload sim --grid batch_size=") for c in s.commands())
    with pytest.raises(UserError, match="smaller than one pass"):
        suggest(fm, "batch_size=1..64", budget=n - 1)
    # a budget under one chunk still plans what it holds
    small = suggest(fm, "batch_size=1..64,threads=1", budget=6 * n, chunk=10)
    assert len(small.plan) == 1 and small.plan[0].passes <= 6


def test_suggest_cli_table_json_and_mistakes(capsys, monkeypatch, tmp_path):
    home, fm, _ = example_fit()
    code, out, err = run(["suggest", "--home", home, "--target", "batch_size=1..128,threads=1,2", "--json"],
                         capsys, monkeypatch)
    assert code == 0, err
    obj = json.loads(out)
    assert {"ranking", "plan", "commands", "budget_inferences", "plan_inferences"} <= set(obj)
    code, out, err = run(["suggest", "--home", home, "--target", "batch_size=1..128,threads=1,2"], capsys, monkeypatch)
    assert code == 0 and "next plan" in out and "tqsim calibrate --workload sim --grid" in out
    for args, message in ((["--target", "batch_size=512..1024"], "larger than the evaluation set"),
                          (["--target", "batch_size=1..16", "--budget", "10"], "smaller than one pass"),
                          (["--target", "batch_size=1..16,precision=bf16"], "precision=bf16")):
        code, out, err = run(["suggest", "--home", home, *args], capsys, monkeypatch)
        assert code == 2 and message in err and out == "", err
    code, out, err = run(["suggest", "--home", tmp_path, "--target", "batch_size=1..16"], capsys, monkeypatch)
    assert code == 2 and "tqsim calibrate" in err


# ---- the loop ----------------------------------------------------------------------------------------
class Simulated:
    """Measurements from the simulated system with a known law: each step a new stretch of rounds."""

    warmup = 2

    def __init__(self, n_instances=540):
        self.n_instances = n_instances
        self.data: dict = {}
        self.law = Law()
        self.fits = 0
        self.finals = 0
        self.steps: list = []

    def passes(self):
        return {c: ds.sizes["pass"] for c, ds in self.data.items()}

    def measure(self, steps):
        import xarray as xr

        self.steps.append(steps)
        for k, (config, add) in enumerate(steps):
            first = 100 * len(self.steps)
            new = simulate_campaign([config], passes=add, seed=len(self.steps) * 97 + k, law=self.law,
                                    n_instances=self.n_instances, first_round=first)[0]
            old = self.data.get(config)
            if old is not None:
                new = new.assign_coords({"pass": np.arange(old.sizes["pass"], old.sizes["pass"] + add)})
                new = xr.concat([old, new], dim="pass", data_vars="minimal", coords="minimal", compat="override")
            self.data[config] = new

    def fit(self, final=False):
        if final:   # the full refit the workspace source makes; the loop's last fit stands in for it here
            self.finals += 1
            return self.last
        from tqsim.data.io import load_campaign
        from tqsim.models.fit import fit_campaign
        import tempfile
        from tqsim.testing import write_campaign

        self.fits += 1
        folder = write_campaign(list(self.data.values()), tempfile.mkdtemp(prefix="tqsim-adaptive-"))
        self.last = fit_campaign(load_campaign(folder), draws=300, tune=300, seed=0)
        return self.last


def test_adaptive_loop_stops_on_budget_and_resumes():
    targets = parse_target("batch_size=1..16,threads=1", n_instances=540)
    src = Simulated()
    per_step = (6 + 3) * 540
    budget = 3 * per_step + 2 * per_step          # the initial design and two more steps
    res = run_adaptive(targets, src, chunk=6, until_width=0.001, budget=budget, per_round=2)
    assert res.stop == "budget" and res.spent <= budget
    assert len(src.steps[0]) == 3 and sum(n > 0 for n in res.passes.values()) >= 3
    assert len(res.rounds) == 1 and len(res.rounds[0].picks) == 2
    assert res.spent == inferences(src.passes(), 540, 2)
    assert res.full_grid == len(targets) * 23 * 540 and res.as_dict()["saved_share"] > 0.2
    # resumed with a larger budget: no new initial design, the loop goes on from what is there (one fit of what
    # is there, then one per round: a round re-measuring a configuration is cheaper than a new one, so the extra
    # budget may buy more than one round)
    fits, before = src.fits, len(src.steps)
    res2 = run_adaptive(targets, src, chunk=6, until_width=0.001, budget=budget + per_step, per_round=2)
    rounds = len(src.steps) - before
    assert rounds >= 1 and all(len(step) <= 2 for step in src.steps[before:])
    assert src.fits == fits + 1 + rounds and res.spent < res2.spent <= budget + per_step
    assert src.finals == 2   # each run ends with the full fit


@pytest.mark.slow
def test_adaptive_loop_stops_when_the_targets_are_narrow():
    targets = parse_target("batch_size=1..16,threads=1", n_instances=540)
    src = Simulated()
    res = run_adaptive(targets, src, chunk=6, until_width=5.0, budget=10 ** 7)
    assert res.stop == "width" and not res.rounds and np.all(res.widths <= 5.0)


def test_adaptive_budget_mistakes():
    targets = parse_target("batch_size=1..16,threads=1", n_instances=540)
    with pytest.raises(UserError, match="smaller than one pass"):
        run_adaptive(targets, Simulated(), budget=100)
    with pytest.raises(UserError, match="does not cover the first"):
        run_adaptive(targets, Simulated(), chunk=6, budget=2 * 540 * 9)


@pytest.mark.parametrize("args, message", [
    (["--adaptive"], "--adaptive needs --target"),
    (["--adaptive", "--target", ""], "--target is empty"),
    (["--adaptive", "--target", "batch_size=1..8", "--grid", "threads=1"], "drop --grid"),
    (["--target", "batch_size=1..8"], "add --adaptive"),
    (["--adaptive", "--target", "batch_size=1..8", "--until-width", "wide"], "relative width"),
    (["--adaptive", "--target", "batch_size=1..8", "--budget", "5"], "smaller than one pass"),
])
def test_calibrate_adaptive_mistakes_exit_2(args, message, capsys, monkeypatch, tmp_path):
    code, out, err = run(["calibrate", "--home", tmp_path, "--workload", "digits-mlp", *args], capsys, monkeypatch)
    assert code == 2 and message in err, err
    assert not (tmp_path / "calibration").exists() or not any((tmp_path / "calibration").rglob("*.nc"))


@pytest.mark.slow
def test_calibrate_adaptive_real_workload(capsys, monkeypatch, tmp_path):
    """The README's workload, really measured: the loop runs to its stop, and says what it spent."""
    from tests.conftest import WORKLOAD

    args = ["calibrate", "--home", tmp_path, "--workload", WORKLOAD, "--adaptive", "--target",
            "batch_size=1..16,threads=1", "--passes", "4", "--warmup", "0", "--json"]
    code, out, err = run([*args, "--budget", str(20 * 60)], capsys, monkeypatch)
    assert code == 0, err
    obj = json.loads(out)
    assert obj["stop"] in ("width", "budget") and obj["spent_inferences"] <= obj["budget_inferences"]
    assert (tmp_path / "models").is_dir() and math.isfinite(obj["saved_share"])
