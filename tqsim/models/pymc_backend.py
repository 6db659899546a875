"""Compile a :class:`~tqsim.models.spec.ModelSpec` and its summaries to PyMC, and sample it.

Every configuration-level quantity is a Gaussian process over the factors observed with a known
standard error, so the configuration deviations are integrated out exactly (a multivariate normal
per summary): the sampler sees only the trends, the GP scales, the session scale and the session
effects — a few dozen parameters whatever the number of passes, and no funnel. Parameter names are
the names in the saved posterior; :mod:`tqsim.models.conditional` reads them back.
"""

from __future__ import annotations

import math
import time
import warnings
from typing import Any, Callable

import numpy as np

from tqsim.models.spec import ModelSpec
from tqsim.models.summaries import Summaries

MAX_TREE_DEPTH = 7
MISSING_SE = 1e3     # an unobserved summary enters as a value with this se: it informs nothing
# every summary is also off by a small discrepancy beyond its bootstrap se; without it the trends must
# thread summaries known to ±0.2 % as a GP scale shrinks, a funnel (docs/method.md, "Summaries: what the fit sees")
DISCREPANCY = 0.01


def noise_sd(se: np.ndarray) -> np.ndarray:
    return np.sqrt(np.asarray(se, float) ** 2 + DISCREPANCY ** 2)


def shape_priors(summ: Summaries) -> dict[str, np.ndarray]:
    """Per shape summary: the prior centre and scale of its trend, and the centre of its GP scale
    (Bambi's data-scaled defaults: the spread of that summary over the calibrated configurations)."""
    y = summ.shape
    obs = np.isfinite(y)
    mean = np.array([np.mean(r[o]) if o.any() else 0.0 for r, o in zip(y, obs)])
    sd = np.array([np.std(r[o]) if o.sum() > 1 else 0.05 for r, o in zip(y, obs)])
    return {"centre": mean, "scale": np.maximum(sd, 0.02), "gp": np.maximum(sd, 2 * DISCREPANCY)}


def shape_inputs(summ: Summaries) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The observed shape summaries with unobserved entries filled in (value: the block mean; se: huge),
    and the list of blocks with at least one observation."""
    y = summ.shape.copy()
    se = summ.shape_se.copy()
    live = np.flatnonzero(np.isfinite(y).any(axis=1))
    centre = shape_priors(summ)["centre"]
    miss = ~np.isfinite(y) | ~np.isfinite(se)
    y[miss] = np.broadcast_to(centre[:, None], y.shape)[miss]
    se = noise_sd(se)
    se[miss] = MISSING_SE
    return y[live], se[live], live


def shape_prior_moments(spec: ModelSpec, summ: Summaries, a: list, b: list) -> tuple[np.ndarray, np.ndarray]:
    """Prior mean ``[block, len(a)]`` and the trend's prior covariance ``[block, len(a), len(b)]`` of
    every shape summary: intercept ~ N(centre, (2·scale + 0.05)²), slopes ~ N(0, scale²)."""
    sp = shape_priors(summ)
    Xa, _ = spec.basis(a, 1.0, 1.0)
    Xb, _ = spec.basis(b, 1.0, 1.0)
    var = np.concatenate([(2 * sp["scale"] + 0.05)[:, None] ** 2,
                          np.repeat(sp["scale"][:, None] ** 2, Xa.shape[1] - 1, 1)], axis=1)   # [block, term]
    mean = np.broadcast_to(sp["centre"][:, None], (var.shape[0], len(a))).copy()
    return mean, np.einsum("ct,bt,dt->bcd", Xa, var, Xb)


def level_prior_moments(spec: ModelSpec, summ: Summaries, a: list, b: list) -> tuple[np.ndarray, np.ndarray]:
    """Prior mean ``[len(a)]`` and covariance ``[len(a), len(b)]`` of the level trend."""
    pr = spec.priors["level_trend"]
    Xa, sd = spec.basis(a, pr["intercept_sd"], pr["slope_sd"], level=True)
    Xb, _ = spec.basis(b, pr["intercept_sd"], pr["slope_sd"], level=True)
    return np.full(len(a), float(np.median(summ.level))), (Xa * sd ** 2) @ Xb.T


def level_kernel(spec: ModelSpec, a: list, b: list, level_sd, fast_path_sd):
    """The sampled part of the levels' prior covariance ``[..., len(a), len(b)]``: the GP over the factors and
    batch 1's own offset (``spec.fast_path``). The scales are scalars (PyMC) or arrays of draws (numpy)."""
    def per_draw(scale):
        return scale[..., None, None] if isinstance(scale, np.ndarray) else scale

    fa, fb = spec.fast_path_column(a), spec.fast_path_column(b)
    return per_draw(level_sd) ** 2 * spec.correlation(a, b) + per_draw(fast_path_sd) ** 2 * np.outer(fa, fb)


def mvn_logp(r, cov, n_obs):
    """log N(r | 0, cov) for a batch ``[B, C]`` of residuals with covariances ``[B, C, C]``."""
    import pytensor.tensor as pt
    from pytensor.tensor.slinalg import cholesky, solve_triangular

    L = cholesky(cov)
    z = solve_triangular(L, r[..., None], lower=True)[..., 0]
    logdet = pt.log(pt.diagonal(L, axis1=-2, axis2=-1)).sum()
    return -0.5 * (z ** 2).sum() - logdet - 0.5 * n_obs * math.log(2 * math.pi)


def build_model(spec: ModelSpec, summ: Summaries):
    """The PyMC model of the summaries."""
    import pymc as pm
    import pytensor.tensor as pt

    pr = spec.priors
    configs = summ.configs
    C, S = len(configs), summ.sessions.size
    K = spec.correlation(configs, configs)
    y_shape, se_shape, live = shape_inputs(summ)
    blocks = [spec.blocks[i] for i in live]
    sp = shape_priors(summ)
    coords = {"config": [c.id for c in configs], "session": summ.sessions.tolist(), "block": blocks}
    with pm.Model(coords=coords) as model:
        # ---- the configuration level: trend + GP, observed per (config, session) -----------------
        level_sd = pm.LogNormal("level_sd", pr["level_sd"]["lognormal_mu"], pr["level_sd"]["lognormal_sigma"])
        session_sd = pm.LogNormal("session_sd", pr["session_sd"]["lognormal_mu"], pr["session_sd"]["lognormal_sigma"])
        # batch 1's offset from the cost curve: a scale near 0 is "no fast path", so the data choose (docs/method.md)
        fast_path_sd = (pm.HalfNormal("fast_path_sd", pr["fast_path_sd"]["halfnormal_sigma"]) if spec.fast_path
                        else pt.zeros(()))
        obs_level = summ.level
        ci = summ.level_cfg
        noise = np.diag(noise_sd(summ.level_se) ** 2)
        if S > 1:
            d = pm.ZeroSumNormal("session_effect", sigma=session_sd, dims="session")
            obs_level = obs_level - d[summ.level_session]
            # a session does not move every configuration alike (digits-transformer's batch 128 moved +31 % where
            # its batch 1-64 moved 0-11 %): each (configuration, session) level also deviates on its own
            # (docs/method.md, "Sessions")
            sc_sd = pm.LogNormal("session_config_sd", pr["session_config_sd"]["lognormal_mu"],
                                 pr["session_config_sd"]["lognormal_sigma"])
            noise = noise + sc_sd ** 2 * pt.eye(ci.size)
        trend, cov_t = level_prior_moments(spec, summ, configs, configs)
        obs_cfg = [configs[i] for i in ci]
        cov = cov_t[np.ix_(ci, ci)] + level_kernel(spec, obs_cfg, obs_cfg, level_sd, fast_path_sd) + noise
        pm.Potential("level_obs", mvn_logp((obs_level - trend[ci])[None, :], cov[None], ci.size))
        # ---- the shape summaries: one trend + GP each, all at once -----------------------------
        # the trend coefficients are Gaussian too and integrated out with the deviations (a GP with
        # explicit basis functions, Rasmussen & Williams 2006 §2.7): only one scale per summary is
        # sampled, which removed the funnel between a small scale and the trend (2-6 divergences per fit)
        B = len(live)
        if B:
            mean_s, cov_s0 = shape_prior_moments(spec, summ, configs, configs)
            # a zero-avoiding Gamma(2) scale (Chung et al. 2013)
            tau = pm.Gamma("shape_sd", alpha=2.0, beta=2.0 / sp["gp"][live], dims="block")
            cov_s = cov_s0[live] + tau[:, None, None] ** 2 * K[None] + se_shape[:, :, None] ** 2 * np.eye(C)[None]
            n_obs = int(np.isfinite(summ.shape[live]).sum())
            pm.Potential("shape_obs", mvn_logp(y_shape - mean_s[live], cov_s, n_obs))
    return model


def initial_point(spec: ModelSpec, summ: Summaries) -> dict[str, Any]:
    """A start where every gradient component is non-zero (nutpie scales its first mass matrix by
    1/|gradient| and refuses a zero; one factor level left a slope with an exactly zero gradient)."""
    _, _, live = shape_inputs(summ)
    sp = shape_priors(summ)
    # the session scale starts off its prior's mode: with one session nothing else moves it
    start: dict[str, Any] = {"level_sd": 0.05, "session_sd": 1.1 * math.exp(spec.priors["session_sd"]["lognormal_mu"])}
    if spec.fast_path:
        start["fast_path_sd"] = 0.5 * spec.priors["fast_path_sd"]["halfnormal_sigma"]
    if summ.sessions.size > 1:
        start["session_effect"] = np.linspace(-1e-3, 1e-3, summ.sessions.size)
        start["session_config_sd"] = math.exp(spec.priors["session_config_sd"]["lognormal_mu"])
    if live.size:
        start["shape_sd"] = sp["gp"][live] / 2
    return start


def sample(model, start: dict[str, Any], *, sampler: str, draws: int, tune: int, chains: int, seed: int,
           progress: bool = False, log: Callable[[str], None] | None = None):
    """Sample the posterior; returns (InferenceData, seconds)."""
    import pymc as pm

    log = log or (lambda msg: None)
    t0 = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if sampler == "nutpie":
            import nutpie

            backend = _nutpie_backend()
            log(f"compiling the model for nutpie ({backend.get('backend', 'numba')})")
            names = {v.name for v in model.free_RVs}
            compiled = nutpie.compile_pymc_model(model, initial_points={k: v for k, v in start.items() if k in names},
                                                 jitter_rvs=set(), **backend)
            log(f"sampling {chains} chains × ({tune} tuning + {draws} draws)")
            # JAX-compiled logp called from two sampler threads at once can deadlock: on a real 18-configuration
            # campaign every sampler thread waited in jax's Array._value forever, at 1 % CPU, on every try;
            # one thread at a time never did (docs/method.md, "Sampling")
            cores = 1 if backend.get("backend") == "jax" else min(chains, 2)
            idata = nutpie.sample(compiled, draws=draws, tune=tune, chains=chains, cores=cores, seed=seed,
                                  progress_bar=progress, save_warmup=False, target_accept=0.9,
                                  low_rank_modified_mass_matrix=True, maxdepth=MAX_TREE_DEPTH)
        elif sampler == "nuts":
            with model:
                idata = pm.sample(draws=draws, tune=tune, chains=chains, cores=min(chains, 2), random_seed=seed,
                                  initvals=start, progressbar=progress, compute_convergence_checks=False,
                                  init="adapt_diag", target_accept=0.9)
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


def _nutpie_backend() -> dict:
    """JAX when installed: XLA compiles this model in a few seconds where numba takes far longer."""
    try:
        import jax  # noqa: F401
    except ImportError:
        return {}
    return {"backend": "jax", "gradient_backend": "jax"}
