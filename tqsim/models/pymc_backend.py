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
              "scale_input": ["Lz", "Tz"], "obs": np.arange(design.y.size)}
    with pm.Model(coords=coords) as model:
        X = pm.Data("X", design.X, dims=("config", "term"))
        Z = pm.Data("Z", design.Z, dims=("config", "scale_input"))
        cfg = pm.Data("cfg", design.cfg, dims="obs")
        rnd = pm.Data("rnd", design.rnd, dims="obs")
        first = pm.Data("first", design.first, dims="obs")
        partial = pm.Data("partial", design.partial, dims="obs")
        size = pm.Data("size", design.size, dims="obs")

        beta0 = pm.Normal("beta0", pr["intercept"]["mu"], pr["intercept"]["sigma"])
        beta = pm.Normal("beta", 0.0, pr["slopes"]["sigma"], dims="term")
        # config means: every config has hundreds of batches, so the data inform each mean well ->
        # centred parameterisation, written on the mean itself (m_c ~ N(β0 + X·β, σ_cfg)) so that the
        # data pin m_c directly and β is a regression on 24-odd well-known means (docs/method.md ("Bayesian engine")).
        config_sd = pm.LogNormal("config_sd", pr["config_sd"]["lognormal_mu"], pr["config_sd"]["lognormal_sigma"])
        smooth = beta0 + pt.dot(X, beta)
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
        # shared machine effect: stationary AR(1) over rounds, centred (each round holds every config),
        # constrained to sum to zero over the calibration's rounds so that it does not trade off with
        # every config mean at once; forecasts add back the uncertainty of that mean (forecast.py).
        round_sd = pm.Gamma("round_sd", pr["round_sd"]["gamma_alpha"], pr["round_sd"]["gamma_beta"])
        phi01 = pm.Beta("round_phi01", pr["round_phi"]["beta_a"], pr["round_phi"]["beta_b"])
        phi = pm.Deterministic("round_phi", 2.0 * phi01 - 1.0)
        if R > 1:
            r_free = pm.Flat("round_free", shape=R - 1)
            r = pm.Deterministic("round_effect", pt.concatenate([r_free, -r_free.sum(keepdims=True)]), dims="round")
            innov = round_sd * pt.sqrt(1.0 - phi ** 2)
            ar_logp = (pm.logp(pm.Normal.dist(0.0, round_sd), r[0])
                       + pm.logp(pm.Normal.dist(phi * r[:-1], innov), r[1:]).sum())
            pm.Potential("round_ar1", ar_logp)
        else:
            r = pm.Deterministic("round_effect", pt.zeros(1), dims="round")

        g_first = pm.Normal("first_batch", 0.0, pr["position"]["sigma"])
        g_first_bs = pm.Normal("first_batch_bs", 0.0, pr["position"]["sigma"])
        # the first-batch penalty is not linear in log batch size on real machines (cold caches after
        # a switch cost most at mid-size batches): each config deviates from the trend; non-centred,
        # since one first batch per pass gives each deviation only ~20 observations
        first_sd = pm.HalfNormal("first_batch_sd", 0.5)
        first_z = pm.Normal("first_batch_z", 0.0, 1.0, dims="config")
        first_c = pm.Deterministic("first_batch_config", g_first + g_first_bs * Z[:, 0] + first_sd * first_z,
                                   dims="config")
        g_partial = pm.Normal("partial_batch", 0.0, pr["position"]["sigma"])
        mu = (mean_c[cfg] + r[rnd] + first * first_c[cfg] + partial * g_partial)
        if spec.size_term:
            g_size = pm.Normal("size_effect", 0.0, pr["position"]["sigma"])
            mu = mu + size * g_size
        s0 = pm.Normal("log_sigma0", pr["log_sigma"]["mu"], pr["log_sigma"]["sigma"])
        s = pm.Normal("log_sigma_slope", 0.0, 0.5, dims="scale_input")
        sigma = pt.exp(s0 + pt.dot(Z, s))[cfg]
        if spec.family == "student":
            nu = pm.Gamma("nu", pr["nu"]["gamma_alpha"], pr["nu"]["gamma_beta"])
            pm.StudentT("y", nu=nu, mu=mu, sigma=sigma, observed=design.y, dims="obs")
        else:
            delta = pm.LogNormal("slow_shift", pr["slow_shift"]["lognormal_mu"], pr["slow_shift"]["lognormal_sigma"])
            slow_sd = pm.HalfNormal("slow_sd", pr["slow_sd"]["halfnormal_sigma"])
            a0 = pm.Normal("slow_logit0", pr["slow_logit"]["mu"], pr["slow_logit"]["sigma"])
            a = pm.Normal("slow_logit_slope", 0.0, 1.0, dims="scale_input")
            w = pm.math.sigmoid(a0 + pt.dot(Z, a))[cfg]
            weights = pt.stack([1.0 - w, w], axis=-1)
            mus = pt.stack([mu, mu + delta], axis=-1)
            sigmas = pt.stack([sigma, pt.ones_like(sigma) * slow_sd], axis=-1)
            pm.NormalMixture("y", w=weights, mu=mus, sigma=sigmas, observed=design.y, dims="obs")
    return model


def initial_point(spec: ModelSpec, design: Design, seed: int = 0) -> dict[str, Any]:
    """Data-driven start: config means by least squares, round effects from medians, and the mixture
    components from scikit-learn's ``GaussianMixture`` on within-pass residuals (DESIGN §9: PyMC's
    default start got stuck on 2 of 3 seeds; this start converged on 10 of 10)."""
    y, cfg, rnd = design.y, design.cfg, design.rnd
    C, P = design.X.shape
    R = design.rounds.size
    body = design.first == 0
    body &= design.partial == 0
    med_c = np.array([np.median(y[(cfg == c) & body]) if ((cfg == c) & body).any() else np.median(y[cfg == c])
                      for c in range(C)])
    resid = y - med_c[cfg]
    r0 = np.array([np.median(resid[(rnd == t) & body]) if ((rnd == t) & body).any() else 0.0 for t in range(R)])
    r0 -= r0.mean()
    resid = resid - r0[rnd]
    A = np.c_[np.ones(C), design.X]
    coef, *_ = np.linalg.lstsq(A, med_c, rcond=None)
    fitted = A @ coef
    start: dict[str, Any] = {
        "beta0": float(coef[0]), "beta": coef[1:].astype(float), "config_mean": med_c.astype(float),
        "config_sd": max(float(np.std(med_c - fitted)), 0.02), "round_free": r0[:-1],
        "round_sd": max(float(np.std(r0)), 0.01), "round_phi01": 0.6,
        "first_batch": float(np.median(resid[design.first == 1])) if (design.first == 1).any() else 0.2,
        "first_batch_bs": 0.0, "first_batch_sd": 0.1, "first_batch_z": np.zeros(C), "partial_batch": 0.5,
        "log_sigma_slope": np.zeros(2),
    }
    if spec.size_term:
        start["size_effect"] = 0.0
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
    start.update({
        "beta0": float(coef[0] + means[fast]), "log_sigma0": math.log(max(float(sds[fast]), 1e-3)),
        "slow_shift": float(means[slow] - means[fast]), "slow_sd": float(max(sds[slow], 1e-3)),
        "slow_logit0": math.log(w / (1 - w)), "slow_logit_slope": np.zeros(2),
    })
    return start


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
                                                 jitter_rvs=set())
            log(f"compiled the model in {time.perf_counter() - t0:.1f} s; sampling {chains} chains with nutpie")
            idata = nutpie.sample(compiled, draws=draws, tune=tune, chains=chains, cores=min(chains, 2), seed=seed,
                                  progress_bar=progress, save_warmup=False, target_accept=0.9)
        elif sampler == "nuts":
            with model:
                idata = pm.sample(draws=draws, tune=tune, chains=chains, cores=min(chains, 2), random_seed=seed,
                                  initvals=start, progressbar=progress, compute_convergence_checks=False,
                                  init="adapt_diag")
        elif sampler == "advi":
            with model:
                approx = pm.fit(n=max(40 * tune, 10000), method="advi", random_seed=seed, progressbar=progress,
                                start=start, obj_optimizer=pm.adam(learning_rate=0.02),
                                callbacks=[pm.callbacks.CheckParametersConvergence(tolerance=1e-3, diff="relative")])
                idata = approx.sample(draws * chains, random_seed=seed)
        else:
            from tqsim.errors import UserError

            raise UserError(f"unknown sampler '{sampler}'; choose one of: nutpie, nuts, advi.")
    return idata, time.perf_counter() - t0


def log_likelihood(model, idata):
    """Pointwise log-likelihood of ``y`` (for PSIS-LOO), computed from the posterior draws."""
    import pymc as pm

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return pm.compute_log_likelihood(idata, model=model, var_names=["y"], extend_inferencedata=False,
                                         progressbar=False)
