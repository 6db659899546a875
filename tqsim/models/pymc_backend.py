"""Compile a :class:`~tqsim.models.spec.ModelSpec` to PyMC and sample it (nutpie, PyMC NUTS or ADVI).

Parameter names here are the names in the saved posterior; :mod:`tqsim.forecast` reads them back.
"""

from __future__ import annotations

import math
import time
import warnings
from typing import Any, Callable

import numpy as np

from tqsim.models.spec import Design, ModelSpec


def build_model(spec: ModelSpec, design: Design):
    """The PyMC model; data enter through ``pm.Data`` containers."""
    import pymc as pm
    import pytensor.tensor as pt

    pr = spec.priors
    C, P = design.X.shape
    R = design.rounds.size
    coords = {"config": [c.id for c in design.configs], "config_": [c.id for c in design.configs], "term": list(spec.terms), "round": design.rounds.tolist(),
              "scale_input": ["Lz", "Tz"]}
    with pm.Model(coords=coords) as model:
        X = pm.Data("X", design.X, dims=("config", "term"))
        Z = pm.Data("Z", design.Z, dims=("config", "scale_input"))

        ell = pm.Data("ell", design.ell, dims="config")
        if spec.mean_form == "affine":
            # overhead + work·batch^κ: a fixed per-call cost (dispatch, allocation) plus work that grows
            # with the batch; both parts shift with threads and the categorical levels
            # sampled in coordinates whitened by the least-squares fit through the config medians (a
            # fixed dense mass matrix for this block): sampled directly, o0, w0 and κ correlated up to
            # 0.87 and NUTS took 17 leapfrog steps per draw with r-hat 1.02. The map is linear, so the
            # priors below are exactly the priors on o0, w0, κ and the coefficients.
            v_hat, chol = _smooth_least_squares(spec, design, _config_medians(design))
            z = pm.Flat("smooth_z", shape=v_hat.size)
            params = {k: pm.Deterministic(k, v, dims="term" if k.endswith("_coef") else None)
                      for k, v in _unpack_smooth(v_hat + pt.dot(chol, z), P).items()}
            for name, (mu, sd) in {"overhead0": (pr["intercept"]["mu"], pr["intercept"]["sigma"]),
                                   "work0": (pr["intercept"]["mu"], pr["intercept"]["sigma"]),
                                   "work_exponent": (pr["work_exponent"]["mu"], pr["work_exponent"]["sigma"]),
                                   "overhead_coef": (0.0, pr["slopes"]["sigma"]),
                                   "work_coef": (0.0, pr["slopes"]["sigma"])}.items():
                pm.Potential(f"{name}_prior", pm.logp(pm.Normal.dist(mu, sd), params[name]).sum())
        else:
            params = {"beta0": pm.Normal("beta0", pr["intercept"]["mu"], pr["intercept"]["sigma"]),
                      "beta": pm.Normal("beta", 0.0, pr["slopes"]["sigma"], dims="term")}
        # config means: every config has hundreds of batches, so the data inform each mean well ->
        # centred parameterisation, written on the mean itself (m_c ~ N(smooth_c, σ_cfg)) so that the
        # data pin m_c directly and the smooth surface is a regression on well-known means (docs/method.md).
        config_sd = pm.LogNormal("config_sd", pr["config_sd"]["lognormal_mu"], pr["config_sd"]["lognormal_sigma"])
        smooth = pm.Deterministic("config_smooth", spec.smooth_mean(params, X, ell, xp=pt), dims="config")
        if spec.config_parameterisation == "centred" and spec.corr_share == 0:
            mean_c = pm.Normal("config_mean", smooth, config_sd, dims="config")
        elif spec.config_parameterisation == "centred":
            K = pm.Data("K", design.K, dims=("config", "config_"))
            mean_c = pm.MvNormal("config_mean", mu=smooth, cov=config_sd ** 2 * K + 1e-9 * pt.eye(C),
                                 dims="config")
        else:  # few configs beyond the smooth terms: σ_cfg is weakly identified -> non-centred
            z_c = pm.Normal("config_z", 0.0, 1.0, dims="config")
            mean_c = pm.Deterministic("config_mean", smooth + config_sd * z_c, dims="config")
        pm.Deterministic("config_effect", mean_c - smooth, dims="config")
        # shared machine effect: a stationary AR(1) over rounds, shared by the configs of a round
        round_sd = pm.Gamma("round_sd", pr["round_sd"]["gamma_alpha"], pr["round_sd"]["gamma_beta"])
        phi01 = pm.Beta("round_phi01", pr["round_phi"]["beta_a"], pr["round_phi"]["beta_b"])
        phi = pm.Deterministic("round_phi", 2.0 * phi01 - 1.0)
        if spec.round_model == "ar1":
            # latent and centred, constrained to sum to zero over the calibration's rounds so that it does
            # not trade off with every config mean at once; forecasts add back that mean's uncertainty
            r = _latent_rounds(round_sd, phi, R)
        # the first batch of a pass pays a cold-start cost that is ADDED in seconds (measured here:
        # +0.8 ms on digits-cnn and +0.4 ms on digits-mlp at every batch size from 1 to 128), so its
        # log shift shrinks as the batch grows; each config deviates a little (non-centred: one first
        # batch per pass gives each deviation only ~20 observations)
        f0 = pm.Normal("first_cost0", pr["first_cost"]["mu"], pr["first_cost"]["sigma"])
        f1 = pm.Normal("first_cost_bs", 0.0, 0.5)
        first_sd = pm.HalfNormal("first_cost_sd", 0.5)
        first_z = pm.Normal("first_cost_z", 0.0, 1.0, dims="config")
        first_c = pm.Deterministic("first_cost", f0 + f1 * Z[:, 0] + first_sd * first_z, dims="config")
        if spec.pass_effects:
            # each pass's level is measured (its full batches' median, ModelSpec.pass_effects): the
            # config means, round effects and the config's own pass-to-pass sd are fitted to those
            # levels; the batches are modelled around their pass's level plus the fast mode's offset
            pass_sd = pm.Gamma("pass_sd", pr["round_sd"]["gamma_alpha"], pr["round_sd"]["gamma_beta"])
            s2 = pass_sd ** 2 + design.cell_se ** 2
            if spec.round_model == "ar1":
                pm.Normal("pass_level", mean_c[design.cell_cfg] + r[design.cell_rnd], pt.sqrt(s2),
                          observed=design.cell_level)
            else:
                # "ar1-marginal": the round effects integrated out. Latent and centred, they made a funnel
                # as σ_round → 0 (18 divergences on a main-job calibration, where the 8 configs of a
                # round inform its effect about as much as the prior does)
                pm.Potential("pass_level", _marginal_levels_logp(design.cell_level - mean_c[design.cell_cfg],
                                                                 s2, design.cell_rnd, R, round_sd, phi))
            # δ_c: a trend in batch size and threads plus a per-config deviation of FIXED prior scale
            # (priors["fast_offset"]): the deviations were 0.1-0.7 % on real fits, and a fitted scale diverged
            # in either parameterisation (39 divergences non-centred, where the data pin each offset;
            # 5 centred, in the funnel at 0). Centred: the data pin each δ_c.
            o0 = pm.Normal("fast_offset0", 0.0, 0.5)
            o1 = pm.Normal("fast_offset_slope", 0.0, 0.5, dims="scale_input")
            offset = pm.Normal("fast_offset", o0 + pt.dot(Z, o1), pr["fast_offset"]["sd"], dims="config")
            level = lambda i: design.cell_level[design.cp[i]] + offset[design.cfg[i]]  # noqa: E731
        else:
            level = lambda i: mean_c[design.cfg[i]] + r[design.rnd[i]]  # noqa: E731
        g_size = pm.Normal("size_effect", 0.0, pr["position"]["sigma"]) if spec.size_term else 0.0

        def row_mean(i):
            """The location of rows ``i`` (the first batches and the others are modelled apart)."""
            return level(i) + design.size[i] * g_size

        # the first batch (~4 % of the rows) adds a cold-start cost in seconds and has its own noise,
        # outside the residual family: its cost varies from pass to pass (log sd 0.1-0.2 here), and
        # inside the mixture that spread was read as slow hits, widening the slow mode that sets
        # every p99 where the first batch is > 1 %. Its scale moves with batch size and threads: with
        # 2 threads on 2 vCPUs a first batch now and then waits milliseconds for the second thread
        # (log sd 0.4-0.75 against 0.15-0.2). (A Student-t here took ν ≈ 1 from those stalls and
        # forecast batch-128 p99s 90x too high.)
        fi = np.flatnonzero(design.first > 0)
        if fi.size:
            fs0 = pm.Normal("first_log_sigma0", math.log(0.15), 1.0)
            fs = pm.Normal("first_log_sigma_slope", 0.0, 0.5, dims="scale_input")
            first_sigma = pm.Deterministic("first_sigma", pt.exp(fs0 + pt.dot(Z, fs)), dims="config")
            pm.Normal("y_first", pt.logaddexp(row_mean(fi), first_c[design.cfg[fi]]), first_sigma[design.cfg[fi]],
                      observed=design.y[fi])
        rows = np.flatnonzero(design.first == 0)
        mu, cfg = row_mean(rows), design.cfg[rows]
        s0 = pm.Normal("log_sigma0", pr["log_sigma"]["mu"], pr["log_sigma"]["sigma"])
        s = pm.Normal("log_sigma_slope", 0.0, 0.5, dims="scale_input")
        log_sigma_c = s0 + pt.dot(Z, s)
        if spec.family == "student":
            nu = pm.Gamma("nu", pr["nu"]["gamma_alpha"], pr["nu"]["gamma_beta"])
            pm.StudentT("y", nu=nu, mu=mu, sigma=pt.exp(log_sigma_c)[cfg], observed=design.y[rows])
        else:
            # a slow hit ADDS a delay (a timer tick, a preemption) rather than scaling the call, so the
            # slow component sits at log(e^mu + e^d): ordered above the fast one by construction
            # d = floor + excess: a smooth floor (logaddexp) left a flat direction when the data
            # press against it, and the sampler wandered along it (bulk ESS 30)
            excess = pm.HalfNormal("slow_delay_excess", pr["slow_delay"]["sigma"])
            d = pm.Deterministic("slow_delay", pr["slow_delay"]["floor"] + excess)
            slow_sd = pm.HalfNormal("slow_sd", pr["slow_sd"]["halfnormal_sigma"])
            a0 = pm.Normal("slow_logit0", pr["slow_logit"]["mu"], pr["slow_logit"]["sigma"])
            a = pm.Normal("slow_logit_slope", 0.0, 1.0, dims="scale_input")
            # configs differ in how often they are hit beyond the trend (threads on a busy core, ...)
            w_sd = pm.HalfNormal("slow_logit_sd", 1.0)
            w_z = pm.Normal("slow_logit_z", 0.0, 1.0, dims="config")
            logit_c = pm.Deterministic("slow_logit", a0 + pt.dot(Z, a) + w_sd * w_z, dims="config")
            # per-config terms (precision, log weight - log scale) are computed per config, then gathered
            # per row, so that no exp or softplus runs per row
            log_slow_sd = pt.log(slow_sd)
            pm.CustomDist("y", mu, pt.exp(-log_sigma_c)[cfg], (-pt.softplus(logit_c) - log_sigma_c)[cfg],
                          (-pt.softplus(-logit_c) - log_slow_sd)[cfg], d, pt.exp(-log_slow_sd),
                          logp=_mixture_logp, observed=design.y[rows])
    return model


def _latent_rounds(round_sd, phi, R: int):
    """Round effects as free values summing to zero, with the stationary AR(1) density as a potential."""
    import pymc as pm
    import pytensor.tensor as pt

    if R == 1:
        return pm.Deterministic("round_effect", pt.zeros(1), dims="round")
    r_free = pm.Flat("round_free", shape=R - 1)
    r = pm.Deterministic("round_effect", pt.concatenate([r_free, -r_free.sum(keepdims=True)]), dims="round")
    innov = round_sd * pt.sqrt(1.0 - phi ** 2)
    pm.Potential("round_ar1", pm.logp(pm.Normal.dist(0.0, round_sd), r[0])
                 + pm.logp(pm.Normal.dist(phi * r[:-1], innov), r[1:]).sum())
    return r


def _marginal_levels_logp(u, s2, rnd: np.ndarray, R: int, round_sd, phi):
    """log N(u | 0, diag(s2) + B Σ Bᵀ): cell residuals ``u`` with independent variances ``s2`` plus a
    shared round effect ``r ~ AR(1)`` (Σ_ts = σ² φ^|t-s|; ``B`` maps cells to rounds), by Woodbury with
    the AR(1)'s tridiagonal precision Q: ``M = Q + BᵀD⁻¹B`` is R × R, so a gradient costs O(R³), not O(cells³)."""
    import pytensor.tensor as pt
    from pytensor.tensor.slinalg import cholesky, solve_triangular

    B = np.zeros((rnd.size, R))
    B[np.arange(rnd.size), rnd] = 1.0
    inv = 1.0 / s2
    w = pt.dot(B.T, inv)                       # per round: Σ 1/s²
    a = pt.dot(B.T, u * inv)                   # per round: Σ u/s²
    if R == 1:
        q_diag, q_off = 1.0 / round_sd ** 2, 0.0
    else:  # Q·σ²(1-φ²): diagonal 1, 1+φ², ..., 1+φ², 1; off-diagonal -φ
        inner = np.ones(R)
        inner[[0, -1]] = 0.0
        q_diag = (1.0 + inner * phi ** 2) / (round_sd ** 2 * (1.0 - phi ** 2))
        q_off = -phi / (round_sd ** 2 * (1.0 - phi ** 2))
    M = pt.diag(q_diag + w) + q_off * (np.eye(R, k=1) + np.eye(R, k=-1))
    L = cholesky(M)
    v = solve_triangular(L, a, lower=True)
    quad = pt.sum(u * u * inv) - pt.sum(v * v)
    logdet = (-pt.sum(pt.log(inv)) + R * pt.log(round_sd ** 2) + (R - 1) * pt.log(1.0 - phi ** 2)
              + 2.0 * pt.sum(pt.log(pt.diag(L))))
    return -0.5 * (quad + logdet + rnd.size * math.log(2 * math.pi))


def _mixture_logp(y, mu, inv_sigma, c_fast, c_slow, delay, inv_slow_sd):
    """Pointwise log density of the two-component mixture: fast ``N(mu, σ)`` and slow
    ``N(log(e^mu + e^delay), σ_slow)`` with weights ``1-w`` and ``w``; ``c_fast = log(1-w) - log σ``,
    ``c_slow = log w - log σ_slow``.

    (A delay with its own spread, ``e^mu + e^(d+σ_d·ξ)``, is the more physical law, but its
    delta-method likelihood sampled bimodally on real data: r-hat 1.83.)"""
    import pytensor.tensor as pt

    z_f = (y - mu) * inv_sigma
    z_s = (y - pt.logaddexp(mu, delay)) * inv_slow_sd
    return pt.logaddexp(c_fast - 0.5 * z_f * z_f, c_slow - 0.5 * z_s * z_s) - 0.5 * math.log(2 * math.pi)


def initial_point(spec: ModelSpec, design: Design, seed: int = 0) -> dict[str, Any]:
    """Data-driven start: config means by least squares, round effects from medians, and the mixture
    components from scikit-learn's ``GaussianMixture`` on within-pass residuals (DESIGN §9: PyMC's
    default start got stuck on 2 of 3 seeds; this start converged on 10 of 10)."""
    y, cfg, rnd = design.y, design.cfg, design.rnd
    C, P = design.X.shape
    R = design.rounds.size
    body = design.first == 0
    med_c = _config_medians(design)
    resid = y - med_c[cfg]
    r0 = np.array([np.median(resid[(rnd == t) & body]) if ((rnd == t) & body).any() else 0.0 for t in range(R)])
    r0 -= r0.mean()
    resid = resid - r0[rnd]
    start: dict[str, Any] = dict(_smooth_start(spec, design, med_c))
    if spec.pass_effects:  # residuals around each pass's measured level
        resid = y - design.cell_level[design.cp]
        # the fast centre sits below a pass's median when some batches are slow: start at the 40th
        # percentile (a start where every gradient component is nonzero: nutpie scales its first
        # mass matrix by 1/|gradient| and refuses a zero)
        off = float(np.percentile(resid[body], 40))
        start.update({"pass_sd": 0.1, "fast_offset0": off, "fast_offset_slope": np.full(2, 1e-3),
                      "fast_offset": np.full(C, off)})
        resid = resid - off
    start.update({
        "config_mean": med_c.astype(float), "config_sd": 0.05,
        "round_sd": max(float(np.std(r0)), 0.01), "round_phi01": 0.6,
        "first_cost_bs": 0.0, "first_cost_sd": 0.1, "first_cost_z": np.zeros(C),
        "log_sigma_slope": np.zeros(2), "first_log_sigma0": math.log(0.15), "first_log_sigma_slope": np.full(2, 1e-3),
    })
    # first batch: the median extra seconds over the config's typical batch
    is_first = design.first == 1
    extra = [np.median(np.exp(y[is_first & (cfg == c)])) - math.exp(med_c[c]) for c in range(C)
             if (is_first & (cfg == c)).any()]
    extra = [e for e in extra if e > 0]
    start["first_cost0"] = math.log(np.median(extra)) if extra else float(np.median(y)) - 1.0
    if spec.size_term:
        start["size_effect"] = 0.0
    if spec.round_model == "ar1" and R > 1:
        start["round_free"] = r0[:-1]
    if spec.config_parameterisation != "centred":
        start.pop("config_mean")
        start["config_z"] = np.zeros(C)
    rb = resid[body]
    if spec.family == "student":
        mad = float(np.median(np.abs(rb - np.median(rb)))) * 1.4826
        start.update({"log_sigma0": math.log(max(mad, 1e-3)), "nu": 4.0})
        return start
    from sklearn.mixture import GaussianMixture

    gm = GaussianMixture(2, random_state=seed, n_init=2).fit(rb.reshape(-1, 1))
    means = gm.means_.ravel()
    sds = np.sqrt(gm.covariances_.ravel())
    order = np.argsort(means)
    fast, slow = order
    w = float(gm.weights_[slow])
    if not 0.002 < w < 0.5 or means[slow] - means[fast] < 0.02:  # degenerate: start from a small slow mode
        mad = float(np.median(np.abs(rb - np.median(rb)))) * 1.4826
        means = np.array([np.median(rb), np.median(rb) + 0.5])
        sds = np.array([max(mad, 1e-3), 0.3])
        fast, slow, w = 0, 1, 0.03
    # the slow mode's log shift at the typical batch, turned into an additive delay
    typical = float(np.median(y[body]))
    shift = float(max(means[slow] - means[fast], 0.02))
    start.update({
        "log_sigma0": math.log(max(float(sds[fast]), 1e-3)),
        "slow_delay_excess": max(typical + math.log(math.expm1(shift)) - spec.priors["slow_delay"]["floor"], 0.1),
        "slow_sd": float(max(sds[slow], 1e-3)),
        "slow_logit0": math.log(w / (1 - w)), "slow_logit_slope": np.zeros(2),
        "slow_logit_sd": 0.3, "slow_logit_z": np.zeros(C),
    })
    return start


def _config_medians(design: Design) -> np.ndarray:
    """Each config's median log latency over its full batches after the first."""
    body = design.first == 0
    return np.array([np.median(design.y[(design.cfg == c) & body]) if ((design.cfg == c) & body).any()
                     else np.median(design.y[design.cfg == c]) for c in range(design.X.shape[0])])


def _unpack_smooth(v, P: int) -> dict:
    return {"overhead0": v[0], "work0": v[1], "work_exponent": v[2], "overhead_coef": v[3:3 + P],
            "work_coef": v[3 + P:]}


def _smooth_least_squares(spec: ModelSpec, design: Design, med_c: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The overhead + work surface fitted by least squares through the config medians: the estimate
    ``[o0, w0, κ, α, β]`` and the Cholesky factor of its approximate covariance (σ̂²(JᵀJ)⁻¹)."""
    from scipy.optimize import least_squares

    X, ell = design.X, design.ell
    P = X.shape[1]
    v0 = np.r_[med_c.min(), med_c.max(), 1.0, np.zeros(2 * P)]
    # a weak pull toward the priors keeps the parts apart when the data cannot
    prior = lambda v: np.r_[0.3 * (v[2] - 1.0), 0.1 * v[3:]]  # noqa: E731
    fit = least_squares(lambda v: np.r_[spec.smooth_mean(_unpack_smooth(v, P), X, ell) - med_c, prior(v)], v0)
    resid = fit.fun[:len(med_c)]
    sigma = max(float(np.sqrt(np.mean(resid ** 2))), 0.02)
    cov = sigma ** 2 * np.linalg.pinv(fit.jac.T @ fit.jac)
    return fit.x, np.linalg.cholesky(cov + 1e-12 * np.eye(len(fit.x)))


def _smooth_start(spec: ModelSpec, design: Design, med_c: np.ndarray) -> dict[str, Any]:
    """Start for the smooth surface: the least-squares fit (at ``smooth_z = 0`` for the affine form)."""
    X = design.X
    if spec.mean_form != "affine":
        coef, *_ = np.linalg.lstsq(np.c_[np.ones(len(med_c)), X], med_c, rcond=None)
        return {"beta0": float(coef[0]), "beta": coef[1:].astype(float)}
    return {"smooth_z": np.full(3 + 2 * X.shape[1], 1e-3)}  # nutpie refuses a zero gradient component


MAX_TREE_DEPTH = 7


def sample(model, start: dict[str, Any], *, sampler: str, draws: int, tune: int, chains: int, seed: int,
           progress: bool = True, log: Callable[[str], None] | None = None):
    """Sample; returns (InferenceData, seconds). ``sampler``: nutpie | nuts | advi."""
    import pymc as pm

    log = log or (lambda msg: None)
    t0 = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if sampler == "nutpie":
            import nutpie

            names = {v.name for v in model.free_RVs}
            compiled = nutpie.compile_pymc_model(model, initial_points={k: v for k, v in start.items() if k in names},
                                                 jitter_rvs=set(), **_nutpie_backend())
            log(f"compiled the model in {time.perf_counter() - t0:.1f} s; sampling {chains} chains with nutpie")
            # a low-rank mass matrix: the config means share one direction (the calibration's average
            # machine state, with the round effects integrated out) that a diagonal one cannot follow
            # (ESS 37, r-hat 1.04); it also halved real mixture fits' steps per draw (43 -> 17). Trees
            # capped at depth 7: from the start point the first warm-up draws ran to 1,023 steps and took
            # 40 % of all gradients (docs/method.md, "Sampling")
            idata = nutpie.sample(compiled, draws=draws, tune=tune, chains=chains, cores=min(chains, 2), seed=seed,
                                  progress_bar=progress, save_warmup=False, target_accept=0.9,
                                  low_rank_modified_mass_matrix=True, maxdepth=MAX_TREE_DEPTH)
        elif sampler == "nuts":
            with model:
                idata = pm.sample(draws=draws, tune=tune, chains=chains, cores=min(chains, 2), random_seed=seed,
                                  initvals=start, progressbar=progress, compute_convergence_checks=False,
                                  init="adapt_diag")
        elif sampler == "advi":
            with model:
                # start narrow (sd 0.05 on the unconstrained scale, not PyMC's 0.69): from a wide start the
                # stochastic gradients threw the mixture into a 97 %-slow, σ = 1.4 optimum
                approx = pm.fit(n=max(40 * tune, 10000), method="advi", random_seed=seed, progressbar=progress,
                                start=start, start_sigma={v.name: 0.05 for v in model.value_vars},
                                obj_optimizer=pm.adam(learning_rate=0.02),
                                callbacks=[pm.callbacks.CheckParametersConvergence(tolerance=1e-3, diff="relative")])
                idata = approx.sample(draws * chains, random_seed=seed)
        else:
            from tqsim.errors import UserError

            raise UserError(f"unknown sampler '{sampler}'; choose one of: nutpie, nuts, advi.")
    return idata, time.perf_counter() - t0


def _nutpie_backend() -> dict:
    """JAX when installed: XLA compiles this model in ~3 s where numba takes 25-50 s, and samples
    at the same speed (measured on digits-mlp, 3,400 rows: 3.4 s + 61 s against 51 s + 50 s)."""
    try:
        import jax  # noqa: F401
    except ImportError:
        return {}
    return {"backend": "jax", "gradient_backend": "jax"}


def log_likelihood(model, idata):
    """Pointwise log-likelihood of ``y`` (for PSIS-LOO), computed from the posterior draws."""
    import pymc as pm

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return pm.compute_log_likelihood(idata, model=model, var_names=["y"], extend_inferencedata=False,
                                         progressbar=False)
