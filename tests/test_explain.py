"""`tqsim explain`: effects, interaction and variance split held to a simulated system with a known law; its
choices of base and contrasts; every user mistake exits 2 naming the fix; --json and --plot."""

import json
import math
import tempfile

import numpy as np
import pytest

from tests.cli_runner import run_cli as run
from tqsim.data.io import load_campaign
from tqsim.errors import UserError
from tqsim.explain import calibrated_levels, centre_level, design, explain, parse_at, round_share, variance_components
from tqsim.factors import Config
from tqsim.testing import Law, example_fit, grid, simulate_campaign, write_campaign

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def quick():
    """The shared quick fit: batch 1/4/16/64 × threads 1/2 of the known law, and its campaign."""
    home, fm, law = example_fit()
    return home, fm, law, load_campaign(home / "calibration" / "simbox" / "sim")


@pytest.fixture(scope="module")
def explained(quick):
    home, fm, law, campaign = quick
    return explain(fm, campaign=campaign, n_draws=200, n_passes=50)


@pytest.fixture(scope="module")
def truth(quick, explained):
    """The law's long-run p50/p99 and expected TQ_0.01 (runs of 20 passes) of the four corners, at the deadline
    explain used."""
    law = quick[2]
    return {c: law.truth(c, 540, [explained.threshold_s], n_runs=150, passes_per_run=20)
            for c in (Config(4, 1), Config(16, 1), Config(4, 2), Config(16, 2))}


def _inside(iv, x, slack=0.0):
    return iv.lo - slack <= x <= iv.hi + slack


def test_base_is_the_calibrated_centre_and_contrasts_go_up(quick, explained):
    _, fm, _, _ = quick
    # batch 1/4/16/64: centre 8, equally far (in log) from 4 and 16 → the lower; threads 1/2 → 1
    assert explained.base == Config(4, 1)
    assert [(e.factor, e.frm, e.to) for e in explained.effects] == [("batch_size", 4, 16), ("threads", 1, 2)]
    assert explained.effects[1].label == "threads 1 → 2 at batch 4"
    assert centre_level([1, 8, 32]) == 8 and centre_level([1, 2]) == 1 and centre_level([2, 4, 8]) == 4
    base, contrasts, _ = design(fm, {"batch_size": 64})               # the top level: the contrast goes down
    assert base == Config(64, 1) and contrasts[0][:3] == ("batch_size", 64, 16)
    base, contrasts, _ = design(fm, ["batch_size=8", "threads=2,1"])  # never calibrated, inside the range: fine
    assert base == Config(8, 2) and [c[:4] for c in contrasts] == [("batch_size", 8, 16, False),
                                                                   ("threads", 2, 1, True)]
    assert calibrated_levels(fm)["batch_size"] == [1, 4, 16, 64] and calibrated_levels(fm)["precision"] == ["fp32"]


def test_effects_have_the_right_sign_and_cover_the_laws(explained, truth):
    """threads 1 → 2 makes batch 4 faster (the law: −14 % at the median), batch 4 → 16 slower (+132 %); each
    90 % interval holds the law's own change; a deadline at batch 4's p99 loses almost all of batch 16's passes."""
    b, up, th = Config(4, 1), Config(16, 1), Config(4, 2)
    batch, threads = explained.effects
    assert batch.p50.lo > 0.5 and threads.p50.hi < 0
    for eff, other in ((batch, up), (threads, th)):
        for iv, q in ((eff.p50, "p50"), (eff.p99, "p99")):
            assert _inside(iv, truth[other][q] / truth[b][q] - 1), (eff.label, q, iv, truth[other][q] / truth[b][q])
        # TQ: the law's expected TQ of a 20-pass run; explain's runs are longer (50 passes), so allow 2 pp
        assert _inside(eff.tq, truth[other]["tail_q"][0] - truth[b]["tail_q"][0], slack=0.02)
    assert batch.tq.median < -0.8      # the deadline at batch 4's p99 loses almost all of batch 16's passes
    assert explained.threshold == "p99" and explained.threshold_s == pytest.approx(explained.base_latency["p99"].median)


def test_interaction_is_below_one_as_in_the_law(explained, truth):
    """bs_th < 0: threads help more at larger batches, so the ratio at batch 16 over that at 4 is < 1."""
    i = explained.interaction
    assert i.batch_sizes == (4, 16) and i.threads == (1, 2)
    r = {q: (truth[Config(16, 2)][q] / truth[Config(16, 1)][q]) / (truth[Config(4, 2)][q] / truth[Config(4, 1)][q])
         for q in ("p50", "p99")}
    assert r["p50"] < 1 and i.p50.hi < 1 and _inside(i.p50, r["p50"])
    assert _inside(i.p99, r["p99"])


def test_variance_shares_sum_to_one_and_add_up_to_the_simulated_variance(quick, explained):
    _, fm, _, _ = quick
    shares = {s.source: s for s in explained.variance}
    assert list(shares) == ["session", "round", "pass", "position", "slow", "body"]   # no sizes in this workload
    assert sum(s.share.mean for s in shares.values()) == pytest.approx(1.0)          # per draw, so on average too
    assert all(0 <= s.share.lo <= s.share.median <= s.share.hi <= 1 for s in shares.values())
    # the sources add up to the variance of the model's own simulated calls (a run at the state's session)
    from tqsim.data.schema import batch_layout, batch_starts
    from tqsim.forecast import simulate_latency
    from tqsim.models.conditional import conditional

    cond = conditional(fm, 60)
    for cfg in (Config(4, 1), Config(64, 2)):     # batch 64: the first and the partial last batch matter
        mu, shapes = cond.joint([cfg], np.random.default_rng(3))
        state = {k: v[:, 0] for k, v in shapes.items()}
        parts = variance_components(fm, cond, cfg, state, np.random.default_rng(4), None)
        within_run = sum(v for k, v in parts.items() if k != "session")
        lat, _ = simulate_latency(fm, cfg, n_passes=300, n_draws=60, seed=5, session=np.zeros(60),
                                  state=(mu[:, 0], state))
        calls = np.log(lat[:, :, batch_starts(batch_layout(fm.n_instances, cfg.batch_size))]).reshape(60, -1)
        assert np.median(within_run / calls.var(axis=1)) == pytest.approx(1.0, abs=0.06)


@pytest.mark.parametrize("law, expected", [(Law(round_sd=0.06, pass_sd=0.04, round_phi=0.0), 0.06 ** 2 / 0.0052),
                                           (Law(round_sd=0.0, pass_sd=0.05, round_phi=0.0), 0.0)])
def test_round_share_recovers_the_laws(law, expected, tmp_path):
    """Machine-wide round effects (shared by every configuration of a round) over their own pass noise:
    0.69 and 0 in these laws; 60 rounds in two sessions, six configurations."""
    campaign = load_campaign(write_campaign(simulate_campaign(grid((1, 2, 4), (1, 2)), passes=60, seed=5, law=law,
                                                              sessions=2), tmp_path))
    rs = round_share(campaign)
    assert rs.n_rounds == 60 and rs.n_configs == 6
    assert rs.estimate == pytest.approx(expected, abs=0.08) and rs.lo - 0.02 <= expected <= rs.hi + 0.02
    assert rs.hi - rs.lo < 0.25


def test_round_share_splits_the_pass_level_and_goes_without_a_campaign(quick, explained):
    _, fm, _, _ = quick
    shares = {s.source: s for s in explained.variance}
    rs = explained.round_share
    assert rs is not None and rs.n_rounds == 8 and 0 <= rs.lo <= rs.estimate <= rs.hi <= 1
    ratio = shares["round"].variance.median / (shares["round"].variance.median + shares["pass"].variance.median)
    assert rs.lo - 0.05 <= ratio <= rs.hi + 0.05
    alone = explain(fm, n_draws=40, n_passes=10)
    assert [s.source for s in alone.variance] == ["session", "pass", "position", "slow", "body"]
    assert alone.round_share is None and any("round episodes" in n for n in alone.notes)
    assert "round episodes included" in alone.variance[1].label


SIZED = Law(size_effect=0.3)


@pytest.fixture(scope="module")
def two_precisions(tmp_path_factory):
    """A quick fit where precision varies — fp16 is slower by e^0.4 and scores other instances (accuracy 0.96
    against 0.955 on these 200 instances) — and instances differ in size, which costs time."""
    from tqsim.models import fit_campaign

    home = tmp_path_factory.mktemp("precision")
    campaign = load_campaign(write_campaign(simulate_campaign(grid((4, 16), (1, 2), ("fp32", "fp16")), passes=6,
                                                              seed=2, n_instances=200, law=SIZED,
                                                              instance_sizes=True), home))
    return fit_campaign(campaign, draws=300, tune=300, seed=0), campaign


def test_a_precision_contrast_scores_each_end_with_its_own_instances(two_precisions):
    fm, campaign = two_precisions
    ex = explain(fm, threshold="1s", n_draws=60, n_passes=10, force=True, campaign=campaign)  # 1 s: nothing late
    prec = next(e for e in ex.effects if e.factor == "precision")
    assert (prec.frm, prec.to, prec.label) == ("fp32", "fp16", "precision fp32 → fp16 at batch 4, threads 1")
    acc = [SIZED.correct(Config(4, 1, p), 200).mean() for p in ("fp32", "fp16")]
    assert prec.tq.lo == prec.tq.hi == pytest.approx(acc[1] - acc[0])       # exactly the accuracy difference
    assert _inside(prec.p50, math.exp(0.4) - 1)
    # instance sizes: a source of their own (a batch's standardised size costs 0.3 log units per sd here)
    size = next(s for s in ex.variance if s.source == "size")
    assert size.share.lo > 0.05 and sum(s.share.mean for s in ex.variance) == pytest.approx(1.0)
    with pytest.raises(UserError, match="never calibrated.*--grid precision=bf16"):
        explain(fm, {"precision": "bf16"}, n_draws=10, n_passes=2, force=True)


def test_fit_explain_is_the_cli_s_call(quick):
    from tqsim.api import Workspace

    home = quick[0]
    ex = Workspace(home).load_fit().explain({"threads": (2, 1)}, threshold="2ms", draws=30, passes=5)
    assert ex.base == Config(4, 2) and ex.threshold_s == pytest.approx(0.002)
    assert ex.effects[1].label == "threads 2 → 1 at batch 4" and ex.effects[1].p50.median > 0
    assert ex.round_share is not None        # the workspace's calibration was read


# ------------------------------------------------------------------------------------------------
# the command line
# ------------------------------------------------------------------------------------------------

def test_json_has_the_documented_keys_and_plot_writes_a_png(quick, tmp_path, capsys, monkeypatch):
    home = quick[0]
    png = tmp_path / "explain.png"
    code, out, err = run(["explain", "--home", home, "--at", "batch_size=8", "--threshold", "500us", "--draws", "30",
                          "--passes", "10", "--plot", png, "--json"], capsys, monkeypatch)
    assert code == 0, err
    d = json.loads(out)
    for key in ("system", "workload", "base", "base_id", "interval", "threshold", "threshold_s", "tail_q", "metric",
                "base_latency_s", "base_tail_quality", "effects", "interaction", "variance", "round_share",
                "passes_per_run", "draws", "notes", "warnings"):
        assert key in d, key
    assert d["base_id"] == "bs8-th1-fp32-torch-cpu" and d["threshold_s"] == pytest.approx(5e-4) and d["draws"] == 30
    e = d["effects"][0]
    assert set(e) >= {"factor", "from", "to", "label", "from_config", "to_config", "p50_change", "p99_change",
                      "tail_quality_change"}
    assert (e["from"], e["to"], e["to_config"]) == (8, 16, "bs16-th1-fp32-torch-cpu")
    assert set(e["p99_change"]) == {"mean", "median", "lo", "hi"}
    assert d["interaction"]["batch_sizes"] == [8, 16] and "p99_ratio_of_ratios" in d["interaction"]
    assert {v["source"] for v in d["variance"]} == {"session", "round", "pass", "position", "slow", "body"}
    assert png.read_bytes()[:8] == PNG_MAGIC and png.stat().st_size > 20_000


def test_table_names_the_effects(quick, capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "160")      # an effect's label wraps in 80 columns
    code, out, err = run(["explain", "--home", quick[0], "--draws", "20", "--passes", "5"], capsys, monkeypatch)
    assert code == 0, err
    assert "threads 1 → 2 at batch 4" in out and "between sessions" in out and "interaction" in out
    assert "one session" in err      # the drift between sessions is assumed


@pytest.mark.parametrize("args, message", [
    (["--at", "threads"], "FACTOR=VALUE"),
    (["--at", "threads=1,2,4"], "one value"),
    (["--at", "flavour=3"], "unknown factor"),
    (["--at", "threads=two"], "whole number"),
    (["--at", "threads=1", "--at", "threads=2"], "twice"),
    (["--at", "threads=2,2"], "two different levels"),
    (["--at", "batch_size=256"], "calibrated over 1–64"),
    (["--at", "threads=1,4"], "calibrated over 1–2"),
    (["--at", "precision=fp16"], "--grid precision=fp16"),
    (["--threshold", "fast"], "5ms"),
    (["--plot", "out.gif"], ".png"),
    (["--tail-q", "2"], "between 0 and 1"),
])
def test_bad_input_exits_2_naming_the_fix(quick, args, message, capsys, monkeypatch):
    code, out, err = run(["explain", "--home", quick[0], "--draws", "10", "--passes", "2", *args], capsys, monkeypatch)
    assert code == 2 and message in err and out == "", err
    assert len(err.strip().splitlines()) <= 3


def test_explain_before_fit_names_tqsim_fit(tmp_path, capsys, monkeypatch):
    write_campaign(simulate_campaign(grid((1, 4), (1,)), passes=2, seed=0), tmp_path)
    code, out, err = run(["explain", "--home", tmp_path], capsys, monkeypatch)
    assert code == 2 and "tqsim fit" in err and out == ""


def test_parse_at_forms():
    assert parse_at(["threads=2", "batch-size=8,32", "compile=on"]) == {"threads": (2,), "batch_size": (8, 32),
                                                                       "compile": (True,)}
    assert parse_at(None) == {}
    with pytest.raises(UserError, match="--at precision=fp64: unknown precision"):
        parse_at(["precision=fp64"])
