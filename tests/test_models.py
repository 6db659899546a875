"""The Bayesian engine on the simulated system: summaries, spec, fit, conditionals, save/load, ground truth."""

import dataclasses
import math

import numpy as np
import pytest

from tqsim.data.io import load_campaign
from tqsim.errors import UserError
from tqsim.factors import Config
from tqsim.models import fit as fit_module
from tqsim.models import fit_campaign, load, make_spec, save
from tqsim.models.summaries import STALL_X, U_FIRST, U_PASS, U_STALL, U_WITHIN, block_names, summarise
from tqsim.testing import Law, example_fit, grid, simulate_campaign, write_campaign


@pytest.fixture(scope="module")
def campaign(tmp_path_factory):
    home = tmp_path_factory.mktemp("sim")
    return load_campaign(write_campaign(simulate_campaign(grid((1, 4, 16), (1, 2)), passes=6, seed=0, sessions=2),
                                        home))


def test_summaries_read_levels_per_session_and_quantiles_only_where_data_pin_them(campaign):
    s = summarise(campaign)
    assert len(s.configs) == 6 and s.sessions.size == 2
    assert s.level.size == 12 and set(s.level_passes) == {3}       # (config, session) cells of 3 passes
    names = block_names()
    # batch 1: 539 level batches × 6 passes = 3234 calls: the 0.999 quantile (3.2 beyond) is observed, the 0.9995
    # (1.6 beyond) is not pinned by the data, so it is the configuration's own tail continued from 0.998 and
    # 0.999, with a wider se
    c1 = [i for i, c in enumerate(s.configs) if c.batch_size == 1][0]
    row = {u: names.index(f"within:{u:g}") for u in (0.998, 0.999, 0.9995)}
    q = {u: s.shape[r, c1] for u, r in row.items()}
    se = {u: s.shape_se[r, c1] for u, r in row.items()}
    assert q[0.998] <= q[0.999] <= q[0.9995] <= STALL_X       # the body ends where the stalls begin
    assert se[0.9995] > se[0.999]                               # less certain than the knot it continues
    # 6 passes: the pass quantile at 0.25 is observed (1.5 passes beyond), 0.1 (0.6) is continued below it
    p10, p25 = names.index("pass:0.1"), names.index("pass:0.25")
    assert s.shape[p10, c1] <= s.shape[p25, c1] and s.shape_se[p10, c1] > s.shape_se[p25, c1]
    # the first batch pays an added cost: its offsets sit above the within-pass median
    assert s.shape[names.index("first:0.5"), c1] > 0.3
    assert (s.shape_se[np.isfinite(s.shape)] > 0).all() and (s.level_se > 0).all()
    # + size slope, slow share, stall share
    assert len(U_WITHIN) + len(U_PASS) + len(U_FIRST) + 3 + len(U_STALL) == len(names)


def test_own_tail_continues_an_exponential_tail_exactly_and_never_turns_back():
    """A Laplace(0, b) quantile function is b·pscale(u): from its observed middle the continuation is exact, and
    the se grows with the distance extrapolated. A flat end continues flat."""
    from tqsim.models.summaries import own_tail, pscale

    u = np.array(U_WITHIN)
    truth = 0.07 * pscale(u)
    q = np.where((u >= 0.05) & (u <= 0.95), truth, np.nan)
    se = np.where(np.isfinite(q), 0.01, np.nan)
    got, got_se = own_tail(U_WITHIN, q, se)
    assert np.allclose(got, truth)
    hi = u > 0.95
    assert (np.diff(got_se[hi]) > 0).all() and got_se[hi][0] > 0.01
    assert np.allclose(got_se[hi], np.sqrt(0.01 ** 2 + (truth[hi] - truth[u == 0.95]) ** 2))
    flat = np.where(u <= 0.5, truth, np.nan)
    flat[u == 0.5] = flat[u == 0.25]            # a plateau at the top of what was observed
    assert np.allclose(own_tail(U_WITHIN, flat, se)[0][u > 0.5], flat[u == 0.5])
    alone = np.where(u == 0.5, 0.0, np.nan)     # one knot: nothing to continue
    assert np.isnan(own_tail(U_WITHIN, alone, se)[0][u != 0.5]).all()


def test_stalls_are_a_share_and_a_size_and_the_body_excludes_them():
    """A body N(0, 0.05) with 1.3 % of calls at ~3× their pass level: the unconditional 0.99 quantile of such a
    configuration sits on the stalls or in the gap depending on a share that barely moves; the summaries read
    the share (logit) and the stalls' offsets apart from the body, and the forecast's mixture puts them back."""
    from tqsim.forecast import call_offsets
    from tqsim.models.summaries import _body_quantiles, _blocks, _stall_summaries

    rng = np.random.default_rng(0)
    resid = rng.normal(0, 0.05, (100, 500))
    hit = rng.random(resid.shape) < 0.013
    resid[hit] = math.log(3) + rng.normal(0, 0.05, hit.sum())
    boot = _blocks(100, rng, 60)
    q, se = _body_quantiles(resid, boot)
    assert q[U_WITHIN.index(0.99)] == pytest.approx(0.05 * 2.326, abs=0.01)    # the body alone, not the stalls
    v, v_se = _stall_summaries(resid, boot)
    assert 1 / (1 + math.exp(-v[0])) == pytest.approx(hit.mean(), rel=0.02) and 0 < v_se[0] < 0.1
    assert v[1 + U_STALL.index(0.5)] == pytest.approx(math.log(3), abs=0.02)
    # no stall in 2,000 calls: still a measurement (share below ~1/2000), with a wide se
    none, none_se = _stall_summaries(rng.normal(0, 0.05, (20, 100)), _blocks(20, rng, 60))
    assert none[0] < math.log(1 / 2000) + 1 and none_se[0] > 1 and np.isnan(none[1:]).all()
    # the forecast's mixture: the share of calls beyond STALL_X and the body's quantile come back
    shapes = {f"within:{u:g}": np.full(4, x) for u, x in zip(U_WITHIN, q)}
    shapes.update({"stall:share": np.full(4, v[0])}, **{f"stall:{u:g}": np.full(4, x) for u, x in zip(U_STALL, v[1:])})
    out = call_offsets(shapes, rng.random((4, 50_000)))
    assert (out > STALL_X).mean() == pytest.approx(hit.mean(), abs=0.002)
    assert np.quantile(out[out <= STALL_X], 0.99) == pytest.approx(0.05 * 2.326, abs=0.01)


def test_the_pass_knots_place_a_slow_episode_of_one_pass_in_fifteen():
    """About one pass in ten to twenty falls in a slow episode: the pass quantile function, read through its knots as
    the forecast reads it, must put as many passes there (without the 0.95 knot: 5.3 % for 7 %)."""
    from tqsim.forecast import quantile_draws
    from tqsim.models.summaries import _quantiles

    rng = np.random.default_rng(3)
    n = 4000
    dev = np.where(rng.random(n) < 0.07, 0.5, 0.0) + 0.02 * rng.standard_normal(n)
    q, _ = _quantiles(dev, U_PASS, 1.0, np.zeros((0, n), np.int64))
    knots_u = np.array(sorted(U_PASS + (0.5,)))
    values = np.array([0.0 if u == 0.5 else q[U_PASS.index(u)] for u in knots_u])[None]
    passes = quantile_draws(knots_u, values, rng.random((1, 200_000)))
    slow = float(np.mean(passes > math.log(1.25)))
    assert slow == pytest.approx(0.07, abs=0.01), slow


def test_a_tail_knot_of_100_passes_estimates_the_quantile_at_its_own_probability():
    """The knot stored at u must be the population quantile at u: the probability of the value read at 0.98 from 100
    draws averages 0.98 (numpy's default reading averages 0.970, a steep tail forecast short)."""
    from tqsim.models.summaries import _quantiles

    rng = np.random.default_rng(1)
    u = (0.02, 0.1, 0.9, 0.98)
    probs = []
    for _ in range(2000):
        x = rng.exponential(size=100)
        q, _ = _quantiles(x, u, 1.0, np.zeros((0, 100), np.int64))
        probs.append(1 - np.exp(-q))                        # the Exp(1) probability of each estimate
    mean = np.mean(probs, axis=0)
    assert np.allclose(mean, u, atol=0.002), mean


def test_a_few_passes_stalled_whole_do_not_send_the_pass_tail_beyond_the_slowest_pass(tmp_path):
    """A busy machine stalls a few whole passes (their level 50× the others'): the last pass knot the data pin lands
    on that jump, and the tail continued exponentially from it must stop at the slowest pass seen (it reached e^13,
    a forecast p99 8× the measured one)."""
    datasets = simulate_campaign(grid((1, 4, 16), (1,)), passes=20, seed=3)
    ds = datasets[1]
    lat = ds["latency_s"].values.copy()
    lat[[4, 11], :] *= 50.0                                  # two of 20 passes stalled whole
    datasets[1] = ds.assign(latency_s=(ds["latency_s"].dims, lat))
    s = summarise(load_campaign(write_campaign(datasets, tmp_path)))
    names = block_names()
    c = [i for i, cfg in enumerate(s.configs) if cfg.batch_size == 4][0]
    knots = np.array([s.shape[names.index(f"pass:{u:g}"), c] for u in U_PASS])
    assert knots[U_PASS.index(0.9)] > 1.0                    # the jump is in the data the summaries read
    assert np.nanmax(knots) <= math.log(50.0) + 0.3          # and the continuation stops at the slowest pass


def test_a_continued_pass_tail_passes_the_slowest_pass_only_as_the_middle_half_would():
    """Five passes of a light tail: the slowest is about their 0.83 quantile, so the 0.995 knot lies beyond it, along
    the quartiles' exponential slope. Two passes of twenty stalled 100×: nothing beyond the slowest but that slope,
    which the eighteen calm passes make tiny."""
    from tqsim.models.summaries import beyond_the_slowest, pscale

    light = np.array([-0.04, -0.01, 0.0, 0.02, 0.05])
    cap = beyond_the_slowest(light, U_PASS)
    i995 = U_PASS.index(0.995)
    slope = (np.quantile(light, 0.75, method="weibull") - np.quantile(light, 0.25, method="weibull")) / (
        pscale(0.75) - pscale(0.25))
    assert cap[i995] == pytest.approx(0.05 + slope * (pscale(0.995) - pscale(5 / 6)))
    assert cap[U_PASS.index(0.75)] == pytest.approx(0.05)              # below the slowest's probability: the slowest
    stalled = np.r_[np.random.default_rng(0).normal(0, 0.01, 18), math.log(100), math.log(100) + 0.1]
    assert beyond_the_slowest(stalled, U_PASS)[i995] < math.log(100) + 0.2


def test_stall_quantiles_of_a_few_stalls_in_one_pass_get_the_se_of_a_sample_quantile():
    """Two stalls, both in one pass, look exactly known to a bootstrap over passes; their median gets at least
    the se of a median of two draws from the campaign's stall spread, while many stalls keep their bootstrap se."""
    from tqsim.models.summaries import _blocks, _stall_summaries, stall_quantile_se

    rng = np.random.default_rng(1)
    few = rng.normal(0, 0.03, (10, 50))
    few[3, :2] = [math.log(2.3), math.log(2.4)]
    many = rng.normal(0, 0.03, (100, 50))
    hit = rng.random(many.shape) < 0.02
    many[hit] = np.log(rng.uniform(2.2, 20, hit.sum()))
    rows = []
    for resid in (few, many):
        v, se = _stall_summaries(resid, _blocks(resid.shape[0], rng, 60))
        rows.append(se[1:])
    se = np.stack(rows, axis=1)                                             # [U_STALL, config]
    mid = U_STALL.index(0.5)
    assert se[mid, 0] < 0.01                                                 # the bootstrap alone: "known"
    stalls = {0: few[few > STALL_X], 1: many[many > STALL_X]}
    out = stall_quantile_se(se, stalls)
    pooled = np.concatenate(list(stalls.values()))
    s = 1.4826 * np.median(np.abs(pooled - np.median(pooled)))               # robust: the campaign's stalls
    assert out[mid, 0] == pytest.approx(1.2533 * s / math.sqrt(2), rel=1e-3)   # the se of a median of 2
    assert out[mid, 1] >= se[mid, 1] and out[mid, 1] < 0.5 * out[mid, 0]
    assert np.isnan(out[U_STALL.index(0.98), 0])                               # unobserved stays unobserved


@pytest.mark.parametrize("sigma", [0.0, 0.2])
def test_the_spread_of_a_tail_between_sessions_is_recovered(sigma):
    """Thirty configurations, three sessions each: a session stretches a configuration's log-normal tail by e^ε
    (ε ~ N(0, σ²)); the pooled method-of-moments estimate finds σ, and 0 when the sessions agree."""
    from tqsim.models.summaries import tail_session_variance, tail_stretch

    rng = np.random.default_rng(2)
    per = []
    for _ in range(30):
        sessions = np.repeat([1, 2, 3], 12)
        eps = rng.normal(0, sigma, 3)[sessions - 1]
        body = rng.normal(0, 0.08, (sessions.size, 300))
        lat = 1e-3 * np.exp(np.where(body > 0, body * np.exp(eps)[:, None], body))
        per.append(tail_stretch(lat, sessions, rng))
    var, dof = tail_session_variance(per)
    assert dof == 60
    assert (math.sqrt(var) < 0.05) if sigma == 0 else (0.15 < math.sqrt(var) < 0.25)
    assert tail_session_variance([tail_stretch(lat[:12], sessions[:12], rng)]) == (pytest.approx(math.nan, nan_ok=True), 0)


def test_level_summary_matches_the_law(campaign):
    """Level differences between configurations follow the law (the session offset is shared; each level
    has the sd of 6 pass medians, 0.05/√6 = 0.02)."""
    s = summarise(campaign)
    law = Law()
    est = np.array([s.level[s.level_cfg == c].mean() for c in range(len(s.configs))])
    true = np.array([law.config_mean(c) for c in s.configs])
    assert np.max(np.abs((est - est.mean()) - (true - true.mean()))) < 0.08


def test_spec_is_printable_round_trips_and_drops_single_level_factors(campaign):
    spec = make_spec(summarise(campaign).configs)
    assert "GP" in str(spec) and "quantile functions" in str(spec)
    assert spec.terms[:3] == ["Lz", "Tz", "Lz:Tz"]
    assert type(spec).from_json(spec.to_json()) == spec
    one_thread = make_spec([Config(1, 1), Config(4, 1), Config(16, 1)])
    assert one_thread.terms == ["Lz"]      # threads calibrated at one level is no dimension of the model
    assert make_spec([Config(8, 1), Config(8, 2)]).terms == ["Tz"]


def test_linear_curvature_extrapolation_keeps_the_calibrated_range_and_continues_along_the_tangent():
    spec = make_spec([Config(b, t) for b in (1, 4, 16, 64) for t in (1, 2)])
    inside = [Config(b, 1) for b in (1, 2, 8, 64)]
    outside = [Config(b, 1) for b in (128, 256, 512)]
    quad = spec.basis(inside + outside, 1.0, 1.0, level=True)[0][:, -1]
    spec.curvature_extrapolation = "linear"
    lin = spec.basis(inside + outside, 1.0, 1.0, level=True)[0][:, -1]
    np.testing.assert_allclose(lin[:4], quad[:4])                      # the calibrated range is unchanged
    assert np.all(lin[4:] < quad[4:])                                  # beyond it the column no longer bends up
    step = np.diff(lin[3:])                                            # 64 → 128 → 256 → 512: equal steps in log 2
    np.testing.assert_allclose(step, step[0])
    z64 = (math.log(64) - spec.centre["L"]) / spec.scale["L"]
    np.testing.assert_allclose(step[0], 2 * z64 * math.log(2) / spec.scale["L"])   # the tangent's slope at the edge
    assert type(spec).from_json(spec.to_json()).curvature_extrapolation == "linear"


@dataclasses.dataclass(frozen=True)
class OverheadThenWork(Law):
    """A cost that is an overhead, then work per instance: convex in log batch size inside the range, straight
    beyond it (as MiniLM's is), so a quadratic trend learnt inside says little of how it goes on."""

    overhead_s: float = 200e-6
    work_s: float = 10e-6

    def config_mean(self, config: Config) -> float:
        return math.log(self.overhead_s + self.work_s * config.batch_size)


def test_beyond_the_calibrated_batch_sizes_the_level_interval_widens_by_the_measured_discrepancy(tmp_path, monkeypatch):
    from tqsim.models.conditional import Conditional

    law = OverheadThenWork(session_sd=0.0, round_sd=0.02, pass_sd=0.02)
    # the mechanism alone: batch 1's own offset (spec.fast_path) would widen the trend's own variance instead
    monkeypatch.setattr(fit_module, "make_spec", lambda *a: dataclasses.replace(make_spec(*a), fast_path=False))
    folder = write_campaign(simulate_campaign(grid((1, 4, 16, 64), (1,)), passes=8, seed=0, law=law), tmp_path)
    fm = fit_campaign(load_campaign(folder), draws=300, tune=300, seed=0)
    assert not fm.spec.fast_path
    inside, beyond = [Config(16, 1), Config(64, 1)], [Config(128, 1), Config(256, 1)]
    on = Conditional(fm, 200)
    # leaving batch 64 out, the quadratic through 1/4/16 misses it by more than the model's own variance says
    assert on.extrapolation_sd["hi"] > 0.03 and on.extrapolation_sd["lo"] >= 0.0
    np.testing.assert_allclose(on.beyond_sd(inside + beyond),
                               [0, 0, math.log(2) * on.extrapolation_sd["hi"], math.log(4) * on.extrapolation_sd["hi"]])
    fm.spec.extrapolation_discrepancy = False
    off = Conditional(fm, 200)
    assert off.extrapolation_sd == {"lo": 0.0, "hi": 0.0}
    # the shape quantiles get their own rates, per summary, by the same check
    assert on.shape_extrapolation_sd["hi"].shape == (len(on.blocks),)
    assert np.all(on.shape_extrapolation_sd["hi"] >= 0) and not off.shape_extrapolation_sd["hi"].any()
    for config in inside:
        a, b = on.shapes(config, np.random.default_rng(2)), off.shapes(config, np.random.default_rng(2))
        assert all(np.allclose(a[k], b[k]) for k in a)
    draws_on = on.level(inside + beyond, noise=True, rng=np.random.default_rng(1))
    draws_off = off.level(inside + beyond, noise=True, rng=np.random.default_rng(1))
    np.testing.assert_allclose(draws_on[:, :2], draws_off[:, :2])              # nothing changes inside the range
    sd_on, sd_off = draws_on.std(axis=0), draws_off.std(axis=0)
    assert np.all(sd_on[2:] > 1.2 * sd_off[2:]) and sd_on[3] > sd_on[2]     # wider, and wider the farther out
    # the real level beyond the range lies inside the widened 90 % interval (the shift of an average round)
    lo, hi = np.percentile(draws_on[:, 2:], [5, 95], axis=0)
    truth = np.array([law.config_mean(c) for c in beyond])
    offset = np.median(draws_on[:, :2], axis=0) - np.array([law.config_mean(c) for c in inside])
    assert np.all((lo <= truth + offset.mean()) & (truth + offset.mean() <= hi))


@dataclasses.dataclass(frozen=True)
class FastPathAtOne(OverheadThenWork):
    """Batch 1 runs its own kernels at ``fast`` times the batched cost curve (digits-cnn: about 0.5)."""

    fast: float = 0.5

    def config_mean(self, config: Config) -> float:
        return super().config_mean(config) + (math.log(self.fast) if config.batch_size == 1 else 0.0)


@pytest.mark.parametrize("fast", [0.5, 1.0])
def test_batch_one_off_the_cost_curve_does_not_bend_its_neighbours(tmp_path, fast):
    from tqsim.models.conditional import Conditional

    law = FastPathAtOne(fast=fast, session_sd=0.0, round_sd=0.02, pass_sd=0.02)
    folder = write_campaign(simulate_campaign(grid((1, 4, 16, 64), (1, 2)), passes=8, seed=0, law=law), tmp_path)
    fm = fit_campaign(load_campaign(folder), draws=300, tune=300, seed=0)
    assert fm.spec.fast_path and "batch 1" in str(fm.spec)
    cond = Conditional(fm, 200)
    held = [Config(b, t) for t in (1, 2) for b in (8, 32)]
    draws = cond.level(held, noise=True, rng=np.random.default_rng(0))
    offset = float(np.mean([np.median(cond.level([c], noise=False)) - law.config_mean(c) for c in fm.summaries.configs
                            if c.batch_size > 1]))                      # the simulated rounds' average shift
    truth = np.array([law.config_mean(c) for c in held]) + offset
    err = np.abs(np.median(draws, axis=0) - truth)
    lo, hi = np.percentile(draws, [5, 95], axis=0)
    assert np.all((lo <= truth) & (truth <= hi))
    assert err.max() < 0.03, err          # without the offset: 0.055 at batch 8 (batch 1 bends the quadratic)
    fast_sd = np.median(cond.post["fast_path_sd"])
    assert (fast_sd > 0.3) if fast < 1 else (fast_sd < 0.25)


def test_fit_needs_two_configurations(tmp_path):
    one = load_campaign(write_campaign(simulate_campaign([Config()], passes=3, seed=0), tmp_path))
    with pytest.raises(UserError, match="at least two"):
        fit_campaign(one)


def test_uncalibrated_quality_level_refused_and_extrapolation_warned(campaign):
    spec = make_spec(summarise(campaign).configs)
    with pytest.raises(UserError, match="precision=bf16"):
        spec.check_forecastable(Config(precision="bf16"))
    assert spec.check_forecastable(Config(batch_size=8, threads=2)) == []
    assert "outside the calibrated range" in spec.check_forecastable(Config(batch_size=128))[0]


def test_mvn_potential_equals_scipy():
    import pytensor.tensor as pt
    from scipy.stats import multivariate_normal

    from tqsim.models.pymc_backend import mvn_logp

    rng = np.random.default_rng(0)
    A = rng.normal(size=(3, 5, 5))
    cov = A @ np.swapaxes(A, 1, 2) + 0.5 * np.eye(5)
    r = rng.normal(size=(3, 5))
    want = sum(multivariate_normal(np.zeros(5), cov[b]).logpdf(r[b]) for b in range(3))
    assert mvn_logp(pt.as_tensor(r), pt.as_tensor(cov), 15).eval() == pytest.approx(want, rel=1e-10)


def test_fit_on_one_thread_level_converges(tmp_path):
    """A calibration with one threads level (the README's user-workload example) fits cleanly: the factor
    drops out instead of leaving a slope with a zero gradient (it failed with 'All initialization points
    failed', or aborted). With the production draws, so that r-hat is held to the production policy (at 200 draws
    its own noise reached 1.055)."""
    camp = load_campaign(write_campaign(simulate_campaign(grid((1, 4, 16), (1,)), passes=5, seed=3), tmp_path))
    fm = fit_campaign(camp, seed=0)
    assert fm.diagnostics["divergences"] == 0 and fm.diagnostics["rhat_max"] < 1.01


def test_save_load_round_trip_with_provenance(tmp_path):
    home, fm, _ = example_fit()
    path = save(fm, tmp_path / "m.nc")
    back = load(path, workload="sim")
    assert back.spec == fm.spec and back.diagnostics["family"] == "quantile"
    assert set(back.quality_levels) == {"fp32-torch-cpu"}
    assert back.n_instances == 540 and len(back.configs) == 8
    for group in ("posterior", "observed_data", "constant_data"):
        assert group in back.idata.groups()
    assert back.idata.tqsim.attrs["tqsim_version"]
    np.testing.assert_allclose(back.summaries.shape, fm.summaries.shape)
    np.testing.assert_array_equal(back.summaries.level_cfg, fm.summaries.level_cfg)
    assert back.posterior_draws()["config_level"].shape[1] == 8


def test_load_refuses_other_workload_missing_file_and_old_schema(tmp_path):
    home, fm, _ = example_fit()
    path = save(fm, tmp_path / "m.nc")
    with pytest.raises(UserError, match="not 'other'"):
        load(path, workload="other")
    with pytest.raises(UserError, match="tqsim fit"):
        load(tmp_path / "missing.nc")
    import arviz as az
    idata = az.from_netcdf(str(path))
    idata.tqsim.attrs["model_schema_version"] = 3
    idata.to_netcdf(str(tmp_path / "old.nc"))
    with pytest.raises(UserError, match="schema version 3"):
        load(tmp_path / "old.nc")


def test_ground_truth_recovered_and_fit_is_clean():
    """A real fit (nutpie) on the simulated law: clean diagnostics, configuration levels that reproduce
    their own summaries (a calibrated configuration is barely shrunk) and whose differences match the
    law's within the noise of 8 passes (the calibration's own session offset is common to all)."""
    _, fm, law = example_fit()
    d = fm.diagnostics
    assert d["rhat_max"] <= 1.01 and d["divergences"] == 0
    est = fm.posterior_draws()["config_level"].mean(axis=0)
    s = fm.summaries
    raw = np.array([s.level[s.level_cfg == c].mean() for c in range(len(fm.configs))])
    true = np.array([law.config_mean(Config(c["batch_size"], c["threads"])) for c in fm.configs])
    assert np.max(np.abs(est - raw)) < 0.025
    assert np.max(np.abs((est - est.mean()) - (true - true.mean()))) < 0.08


def test_calibrated_conditional_reproduces_its_own_summary_and_unseen_is_wider():
    from tqsim.models.conditional import conditional

    _, fm, _ = example_fit()
    cond = conditional(fm, 200)
    rng = np.random.default_rng(0)
    names = fm.spec.blocks
    seen, unseen = Config(4, 2), Config(8, 2)
    j = [c.id for c in fm.summaries.configs].index(seen.id)
    own = cond.shapes(seen, rng)
    for name in ("within:0.5", "within:0.9", "within:0.99"):      # shrunk toward its neighbours by less than its se
        row = names.index(name)
        tol = max(0.02, fm.summaries.shape_se[row, j])
        assert own[name].mean() == pytest.approx(fm.summaries.shape[row, j], abs=tol)
    new = cond.shapes(unseen, rng)
    assert new["within:0.99"].std() > own["within:0.99"].std()
    # the level's conditional variance (what the GP does not know beyond the draw's trend and scales): an
    # interior calibrated size (batch 4 is the curve's end once batch 1 has its own offset, spec.fast_path)
    var = {b: cond.level_moments([Config(b, 2)])[1][:, 0, 0].mean() for b in (2, 8, 16)}
    assert var[8] > var[16]
    assert var[2] > 2 * var[8]       # below batch 4 only batch 1 speaks, and it may be off the curve


def test_session_effects_are_learned_from_several_sessions(tmp_path):
    law = Law(session_sd=0.15)
    camp = load_campaign(write_campaign(simulate_campaign(grid((1, 8, 64), (1, 2)), passes=12, seed=5, law=law,
                                                          sessions=4), tmp_path))
    fm = fit_campaign(camp, draws=300, tune=300, seed=0)
    s = fm.summaries
    # the empirical session deviations (each config's session level minus its mean), averaged over configs
    emp = np.zeros(4)
    for c in range(len(s.configs)):
        m = s.level_cfg == c
        emp[s.level_session[m]] += s.level[m] - s.level[m].mean()
    post = fm.posterior_draws()["session_effect"].mean(axis=0)
    assert np.corrcoef(emp, post)[0, 1] > 0.95
    assert fm.diagnostics["n_sessions"] == 4 and fm.diagnostics["divergences"] == 0


@pytest.mark.parametrize("moves", [0.0, 0.08])
def test_a_configurations_own_move_between_sessions_is_learned_and_carried_to_a_new_session(tmp_path, moves):
    """Sessions that move configurations unalike (σ_sc) give a new session's forecast that much more spread;
    sessions that move them alike leave σ_sc near 0 and the forecast as before."""
    from tqsim.models.conditional import session_offset

    law = Law(session_sd=0.05, session_config_sd=moves, round_sd=0.02, pass_sd=0.02)
    camp = load_campaign(write_campaign(simulate_campaign(grid((1, 4, 16, 64), (1, 2)), passes=12, seed=3,
                                                          law=law, sessions=4), tmp_path))
    fm = fit_campaign(camp, draws=300, tune=500, seed=0)
    post = fm.posterior_draws()
    lo, med, hi = np.quantile(post["session_config_sd"], [0.05, 0.5, 0.95])
    assert fm.diagnostics["divergences"] == 0
    # what this campaign's moves were: the two-way residual sd of its (config, session) levels, less their noise
    s = fm.summaries
    M = np.zeros((len(s.configs), s.sessions.size))
    M[s.level_cfg, s.level_session] = s.level
    r = M - M.mean(1, keepdims=True) - M.mean(0, keepdims=True) + M.mean()
    realised = math.sqrt(max((r ** 2).sum() / ((M.shape[0] - 1) * (M.shape[1] - 1)) - np.median(s.level_se) ** 2, 0))
    if moves:
        assert lo < realised < hi and abs(med / realised - 1) < 0.2 and med > 0.04
    else:
        assert realised < 0.01 and med < 0.02
    # a new session's level spread carries it: σ_session²(1 + 1/S) + σ_sc²
    sd = session_offset(fm, post, np.random.default_rng(0)).std()
    expected = np.sqrt(np.median(post["session_sd"]) ** 2 * 1.25 + med ** 2)
    assert abs(sd / expected - 1) < 0.25


def test_interrupted_sampling_raises_and_never_returns_a_model(campaign, monkeypatch):
    """nutpie returns the draws it had when interrupted; a fit with fewer draws than asked is an interrupt
    (the CLI exits 130 and leaves the old model file untouched), never a model."""
    import arviz as az

    from tqsim.models import pymc_backend

    monkeypatch.setattr(pymc_backend, "sample", lambda model, start, **kw: (
        az.from_dict(posterior={"shape_sd": np.zeros((2, 7, 3))}), 1.0))
    with pytest.raises(KeyboardInterrupt):
        fit_campaign(campaign, draws=100, tune=50)


def test_shortfall_names_only_what_failed():
    from tqsim.models.fit import shortfall

    assert shortfall({"divergences": 1, "rhat_max": 1.007, "ess_bulk_min": 210}) == "1 divergence"
    assert shortfall({"divergences": 0, "rhat_max": 1.02, "ess_bulk_min": 80}) == "r-hat max 1.020 > 1.01, bulk ESS min 80 < 100"


def test_unknown_family_refused(campaign):
    with pytest.raises(UserError, match="drop --family"):
        fit_campaign(campaign, family="mixture")


def test_slow_share_sd_is_zero_for_binomial_passes_and_recovers_a_latent_spread():
    from tqsim.forecast import within_pass_u
    from tqsim.models.summaries import slow_share_sd

    rng = np.random.default_rng(0)
    boot = rng.integers(0, 200, (60, 200))
    iid = rng.normal(size=(200, 540))
    est, se = slow_share_sd(iid, boot)
    assert est < 0.15 and se > 0
    # passes whose slow share varies (logit sd 0.8): simulated by the forecast's own sampler
    u = within_pass_u(np.array([0.8]), 1, 200, 540, rng)[0]
    est, se = slow_share_sd(u, boot)
    assert abs(est - 0.8) < 3 * se + 0.1
    assert abs((u > 0.9).mean() - 0.1) < 0.01      # the pooled share stays 0.1: the quantile function is kept
