"""The simulated system: schema-valid files, and the law it claims."""

import math

import numpy as np

from tqsim.data.io import load_campaign
from tqsim.data.schema import batch_latency, check_calibration
from tqsim.factors import Config
from tqsim.testing import Law, ar1_path, grid, simulate_campaign, write_campaign


def test_campaign_passes_schema_and_loads(tmp_path):
    ds = simulate_campaign(grid((1, 8), (1, 2)), passes=4, seed=1, n_instances=100, instance_sizes=True)
    for d in ds:
        check_calibration(d)
    camp = load_campaign(write_campaign(ds, tmp_path))
    assert camp.sizes["config"] == 4 and camp.sizes["pass"] == 4
    assert set(camp["batch_size"].values.tolist()) == {1, 8}
    # rounds shared across configurations (the shared machine effect)
    assert (camp["round"].values == np.arange(4)).all()


def test_batch_latency_constant_within_batch_and_last_partial_is_faster():
    law = Law(slow_logit=-30.0, fast_sd=1e-6, round_sd=1e-6, pass_sd=0.0, first_cost_s=0.0)
    d = simulate_campaign([Config(batch_size=64)], passes=2, seed=0, n_instances=540, law=law)[0]
    lat = d["latency_s"].values
    assert np.allclose(lat[:, :64], lat[:, :1])
    b = batch_latency(d).values
    assert b.shape == (2, 9)
    assert math.isclose(np.log(b[0, -1] / b[0, 1]), law.partial_slope * math.log(28 / 64), rel_tol=1e-3)


def test_law_mean_matches_simulation():
    law = Law(slow_logit=-30.0, session_sd=0.0)
    cfg = Config(batch_size=16, threads=2)
    rng = np.random.default_rng(0)
    lat = law.simulate_passes(cfg, 400, 160, rng)
    body = np.log(lat[:, 16:-16:16])
    assert abs(body.mean() - law.config_mean(cfg)) < 0.01


def test_ar1_path_has_requested_sd_and_correlation():
    x = ar1_path(20000, 0.1, 0.6, np.random.default_rng(1))
    assert abs(x.std() - 0.1) < 0.01
    assert abs(np.corrcoef(x[1:], x[:-1])[0, 1] - 0.6) < 0.05


def test_correctness_fixed_across_campaigns_and_levels_mostly_agree():
    law = Law()
    a = law.correct(Config(precision="fp32"), 540)
    assert (a == law.correct(Config(batch_size=8, precision="fp32"), 540)).all()
    b = law.correct(Config(precision="bf16"), 540)
    assert 0.9 < (a == b).mean() < 1.0


def test_truth_quantiles_ordered():
    t = Law().truth(Config(4, 1), 540, [2e-4], n_runs=10, passes_per_run=5)
    assert t["p50"] <= t["p90"] <= t["p99"] <= t["p99.9"]
    assert 0 <= t["tail_q"][0] <= t["mean_q"][0] <= 1
