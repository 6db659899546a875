"""The Bayesian engine on the simulated system: spec, design, fit, save/load, ground truth."""

import math

import numpy as np
import pytest

from tqsim.data.io import load_campaign
from tqsim.errors import UserError
from tqsim.factors import Config
from tqsim.models import load, make_spec, save
from tqsim.models.spec import build_design
from tqsim.testing import example_fit, grid, simulate_campaign, write_campaign


@pytest.fixture(scope="module")
def campaign(tmp_path_factory):
    home = tmp_path_factory.mktemp("sim")
    return load_campaign(write_campaign(simulate_campaign(grid((1, 4, 16), (1, 2)), passes=5, seed=0), home))


def test_spec_is_printable_and_round_trips(campaign):
    spec = make_spec(campaign, "mixture", batches_per_pass=6)
    text = str(spec)
    assert "AR(1)" in text and "overhead + work" in text and "additive delay" in text
    assert spec.mean_form == "affine" and spec.terms[0] == "Tz"
    assert type(spec).from_json(spec.to_json()) == spec


def test_design_subsamples_full_batches_and_keeps_the_first(campaign):
    spec = make_spec(campaign, "student", batches_per_pass=6)
    d = build_design(campaign, spec)
    # per pass: bs1 540 batches -> 1 + 6; bs4 135 (full last) -> 1 + 6; bs16 34 (partial left out) -> 1 + 6
    assert d.y.size == 5 * 2 * (7 + 7 + 7)
    assert d.first.sum() == 5 * 6
    # no row of batch 16 is its partial 34th batch (12 instances, from instance 528 on)
    lat = campaign["latency_s"].values[2]
    partial = {float(v) for v in np.log(lat[:, 528])}
    assert not partial & set(d.y[d.cfg == 2].tolist())
    assert d.n_batches_total == 5 * 2 * (540 + 135 + 34)
    assert set(d.rnd.tolist()) == set(range(5))


def test_partial_batch_follows_the_smooth_surface(campaign):
    """Overhead-bound: a partial batch costs a full one; work-bound with κ = 1: proportionally less."""
    spec = make_spec(campaign, "mixture")
    assert spec.mean_form == "affine"
    P = len(spec.terms)
    config = Config(batch_size=16, threads=1)

    def surface(o0, w0, kappa):
        return {"overhead0": np.array([o0]), "work0": np.array([w0]), "work_exponent": np.array([kappa]),
                "overhead_coef": np.zeros((1, P)), "work_coef": np.zeros((1, P))}

    assert spec.partial_shift(surface(-5.0, -30.0, 1.0), config, 12)[0] == pytest.approx(0.0, abs=1e-6)
    assert spec.partial_shift(surface(-30.0, -5.0, 1.0), config, 12)[0] == pytest.approx(math.log(12 / 16))
    mixed = spec.partial_shift(surface(-9.0, -9.0, 1.0), config, 4)[0]
    assert math.log(4 / 16) < mixed < 0.0


def test_design_measures_each_pass_level_from_its_full_batches(campaign):
    spec = make_spec(campaign, "mixture", batches_per_pass=6)
    assert spec.pass_effects and "λ[c, pass] = median" in str(spec)
    d = build_design(campaign, spec)
    assert d.cell_level.size == 3 * 2 * 5 == int(d.cp.max()) + 1
    # config 2 is batch 16: 33 full batches + a partial one; the level is the median of batches 1..32
    lat = campaign["latency_s"].values[2, 3]
    per_batch = np.log(lat[::16][:34])
    k = int(np.flatnonzero(d.cell_cfg == 2)[3])
    assert d.cell_level[k] == pytest.approx(np.median(per_batch[1:33]))
    assert d.cell_cfg[k] == 2 and d.cell_rnd[k] == 3
    assert (d.cell_se > 0).all() and (d.cell_se < 0.05).all()


def test_pass_levels_off_when_a_pass_has_too_few_full_batches(tmp_path):
    big = load_campaign(write_campaign(simulate_campaign(grid((4, 256), (1,)), passes=3, seed=0), tmp_path))
    spec = make_spec(big, "mixture")
    assert not spec.pass_effects and "λ[c, pass]" not in str(spec)
    assert build_design(big, spec).y.size > 0


def test_fit_needs_two_configurations(tmp_path):
    one = load_campaign(write_campaign(simulate_campaign([Config()], passes=3, seed=0), tmp_path))
    with pytest.raises(UserError, match="at least two"):
        make_spec(one)


def test_uncalibrated_quality_level_refused_and_extrapolation_warned(campaign):
    spec = make_spec(campaign)
    with pytest.raises(UserError, match="precision=bf16"):
        spec.check_forecastable(Config(precision="bf16"))
    assert spec.check_forecastable(Config(batch_size=8, threads=2)) == []
    assert "outside the calibrated range" in spec.check_forecastable(Config(batch_size=128))[0]


def test_advi_fit_saves_and_loads_with_provenance(tmp_path):
    home, fm, _ = example_fit()
    path = save(fm, tmp_path / "m.nc")
    back = load(path, workload="sim")
    assert back.spec == fm.spec
    assert back.diagnostics["family"] == "mixture"
    assert set(back.quality_levels) == {"fp32-torch-cpu"}
    assert back.n_instances == 540 and len(back.configs) == 8
    for group in ("posterior", "observed_data", "constant_data"):
        assert group in back.idata.groups()
    assert back.idata.tqsim.attrs["tqsim_version"]
    w = back.posterior_draws()
    assert w["config_mean"].shape[1] == 8


def test_load_refuses_other_workload_missing_file_and_old_schema(tmp_path):
    home, fm, _ = example_fit()
    path = save(fm, tmp_path / "m.nc")
    with pytest.raises(UserError, match="not 'other'"):
        load(path, workload="other")
    with pytest.raises(UserError, match="tqsim fit"):
        load(tmp_path / "missing.nc")
    import arviz as az
    idata = az.from_netcdf(str(path))
    idata.tqsim.attrs["model_schema_version"] = 0
    idata.to_netcdf(str(tmp_path / "old.nc"))
    with pytest.raises(UserError, match="schema version 0"):
        load(tmp_path / "old.nc")


def test_nutpie_ground_truth_recovered():
    """24 draws of nothing: a real fit (nutpie) on the simulated law recovers its parameters."""
    _, fm, law = example_fit(sampler="nutpie", passes=10, draws=300, tune=300, batches_per_pass=16)
    d = fm.diagnostics
    assert d["rhat_max"] < 1.05 and d["divergences"] <= 5
    post = fm.posterior_draws()
    true_means = np.array([law.config_mean(Config(**{k: c[k] for k in ("batch_size", "threads")}))
                           for c in fm.configs])
    # μ_c is the typical pass's median; the fast mode sits δ_c away from it
    est = (post["config_mean"] + post["fast_offset"]).mean(axis=0)
    assert np.max(np.abs(est - true_means)) < 0.03
    # the additive first-batch cost and slow delay, in log seconds
    assert abs(post["first_cost0"].mean() - math.log(law.first_cost_s)) < 0.2
    assert abs(post["slow_delay"].mean() - math.log(law.slow_delay_s)) < 0.2
    assert abs(math.log(post["round_sd"].mean()) - math.log(law.round_sd)) < math.log(2.5)
    # the configuration's own pass-to-pass level, from the measured pass medians
    assert abs(math.log(post["pass_sd"].mean()) - math.log(law.pass_sd)) < math.log(1.5)


@pytest.mark.parametrize("R, phi", [(1, 0.5), (2, -0.4), (9, 0.8)])
def test_marginal_pass_levels_equal_the_dense_gaussian(R, phi):
    """Round effects integrated out by Woodbury give exactly the dense N(0, D + BΣBᵀ) density."""
    import pytensor.tensor as pt
    from scipy.stats import multivariate_normal

    from tqsim.models.pymc_backend import _marginal_levels_logp

    rng = np.random.default_rng(R)
    rnd = np.r_[np.arange(R), rng.integers(0, R, 4 * R)]
    u, s2, sd = rng.normal(0, 0.1, rnd.size), rng.uniform(1e-3, 1e-2, rnd.size), 0.05
    lag = np.abs(np.subtract.outer(np.arange(R), np.arange(R)))
    B = np.eye(R)[rnd]
    dense = multivariate_normal(np.zeros(rnd.size), np.diag(s2) + B @ (sd ** 2 * phi ** lag) @ B.T).logpdf(u)
    got = _marginal_levels_logp(pt.as_tensor(u), pt.as_tensor(s2), rnd, R, pt.as_tensor(sd), pt.as_tensor(phi)).eval()
    assert got == pytest.approx(dense, rel=1e-10)


def test_shortfall_names_only_what_failed():
    from tqsim.models.fit import shortfall

    assert shortfall({"divergences": 1, "rhat_max": 1.007, "ess_bulk_min": 210}) == "1 divergence"
    assert shortfall({"divergences": 0, "rhat_max": 1.02, "ess_bulk_min": 80}) == "r-hat max 1.020 > 1.01, bulk ESS min 80 < 100"


def test_a_failed_fit_is_sampled_once_more_with_twice_the_tuning(campaign, monkeypatch):
    import arviz as az

    import tqsim.models.fit as fit_mod
    from tqsim.models import pymc_backend

    calls, verdicts = [], iter([{"status": "fail", "ok": False, "divergences": 9, "rhat_max": 1.002},
                                {"status": "ok", "ok": True, "divergences": 0, "rhat_max": 1.002}])

    def fake_sample(model, start, *, draws, tune, **kw):
        calls.append((draws, tune))
        return az.from_dict(posterior={"x": np.zeros((2, draws))}), 1.0

    monkeypatch.setattr(pymc_backend, "sample", fake_sample)
    monkeypatch.setattr(fit_mod, "diagnostics_of", lambda idata, sampler: dict(next(verdicts)))
    fm = fit_mod.fit_campaign(campaign, family="mixture", sampler="nutpie", draws=100, tune=50)
    assert calls == [(100, 50), (200, 100)]
    assert fm.diagnostics["ok"] and fm.diagnostics["retried_after"] == "9 divergences"
    calls.clear()
    verdicts = iter([{"status": "fail", "ok": False, "divergences": 9, "rhat_max": 1.002}])
    assert not fit_mod.fit_campaign(campaign, family="mixture", sampler="nutpie", draws=100, tune=50,
                                    retry=False).diagnostics["ok"]
    assert calls == [(100, 50)]


def test_a_student_tail_with_infinite_variance_is_flagged_for_automatic_choice():
    """ν below 2 (measured 0.7-0.9 on digits-mlp, with forecast p99 40-700x too high) keeps the Student
    family from being chosen automatically; a finite-variance tail, or another family, passes."""
    import arviz as az

    from tqsim.models.fit import NU_MIN, heavy_student_tail

    rng = np.random.default_rng(0)
    heavy = az.from_dict(posterior={"nu": rng.normal(0.8, 0.05, (2, 100))})
    light = az.from_dict(posterior={"nu": rng.normal(3.2, 0.2, (2, 100))})
    mixture = az.from_dict(posterior={"p_slow": rng.uniform(0, 0.1, (2, 100))})
    assert heavy_student_tail(heavy) == pytest.approx(0.8, abs=0.02) and heavy_student_tail(heavy) < NU_MIN
    assert heavy_student_tail(light) is None
    assert heavy_student_tail(mixture) is None and heavy_student_tail(None) is None
