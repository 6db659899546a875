"""What the posterior says about any configuration, calibrated or not: Gaussian-process conditionals.

Given one posterior draw (trends, GP scales, session effects), every configuration-level quantity —
the level μ_c and each shape quantile — is Gaussian, conditionally on the summaries the fit saw
(their values and standard errors). For a calibrated configuration this is its own summary, shrunk
a little toward its neighbours by its se; for a configuration never run it is the trend plus the
kriged deviations of its neighbours, with the GP's conditional variance. Draws are exact
(Rao-Blackwellised): the deviations were integrated out in the fit and are drawn back here.
"""

from __future__ import annotations

import math

import numpy as np

from tqsim.factors import Config
from tqsim.models.pymc_backend import (MISSING_SE, level_kernel, level_prior_moments, noise_sd, shape_inputs,
                                       shape_prior_moments)


class Conditional:
    """Per posterior draw, the conditionals of the level and the shape summaries of any configuration."""

    def __init__(self, fm, n_draws: int | None = 200):
        spec, summ = fm.spec, fm.summaries
        self.fm, self.spec, self.summ = fm, spec, summ
        self.post = post = fm.posterior_draws(n_draws)
        self.D = D = next(iter(post.values())).shape[0]
        self.calibrated = summ.configs
        # ---- level: observations per (config, session) ------------------------------------------
        ci = summ.level_cfg
        obs_cfg = [summ.configs[i] for i in ci]
        self.level_obs_cfg = obs_cfg
        y = np.broadcast_to(summ.level, (D, ci.size)).copy()
        if "session_effect" in post:
            y -= post["session_effect"][:, summ.level_session]
        cov = self._level_kernel(obs_cfg, obs_cfg) + np.diag(noise_sd(summ.level_se) ** 2)[None] + \
            session_config_sd(post)[:, None, None] ** 2 * np.eye(ci.size)[None]
        m, S = level_prior_moments(spec, summ, obs_cfg, obs_cfg)
        trend, cov = m[None], cov + S[None]
        self._lev_cov = cov
        self._lev_alpha = np.linalg.solve(cov, (y - trend)[..., None])[..., 0]  # [D, n]
        L_obs = np.array([math.log(c.batch_size) for c in obs_cfg])
        self.extrapolation_sd = {end: float(v) for end, v in
                                 self._discrepancy(y - trend, cov, L_obs, np.ones(ci.size, bool)).items()}
        # ---- shapes: one GP per live summary -----------------------------------------------------
        ys, ses, live = shape_inputs(summ)
        self.live = live
        self.blocks = [spec.blocks[i] for i in live]
        if live.size:
            m, S = shape_prior_moments(spec, summ, summ.configs, summ.configs)
            Kc = spec.correlation(summ.configs, summ.configs)
            st2 = post["shape_sd"] ** 2                                               # [D, B]
            cov_s = S[live][None] + st2[:, :, None, None] * Kc[None, None] + \
                (ses[:, :, None] ** 2 * np.eye(len(summ.configs)))[None]
            self._shp_cov = cov_s
            self._shp_alpha = np.linalg.solve(cov_s, (ys - m[live])[None, ..., None])[..., 0]   # [D, B, C]
            L_cfg = np.array([math.log(c.batch_size) for c in summ.configs])
            r = np.broadcast_to((ys - m[live])[None], (D, *ys.shape))
            self.shape_extrapolation_sd = self._discrepancy(r, cov_s, L_cfg, ses < MISSING_SE)     # [B] per end

    def _discrepancy(self, r: np.ndarray, cov: np.ndarray, L: np.ndarray, observed: np.ndarray) -> dict:
        """Per end of the calibrated batch sizes, the error per unit of log batch size that the model's own
        variance does not explain when that end's batch size is left out and predicted from the other sizes.

        ``r`` ``[D, ..., n]`` residuals from the trend's prior mean, ``cov`` ``[D, ..., n, n]`` their marginal
        covariance, ``L`` ``[n]`` log batch sizes, ``observed`` ``[..., n]`` which entries may be scored. A
        trend fitted inside a range says nothing of how the cost bends beyond it (MiniLM's is convex below
        batch 16 and straight above; digits-transformer's bends up above 64), so the conditional variance
        alone is overconfident there (docs/method.md, "Beyond the calibrated batch sizes")."""
        sizes = np.unique(L)
        zero = np.zeros(r.shape[1:-1])
        if sizes.size < 3 or not self.spec.extrapolation_discrepancy:
            return {"lo": zero, "hi": zero}
        rates = {}
        for end, left, edge in (("lo", sizes[0], sizes[1]), ("hi", sizes[-1], sizes[-2])):
            out, keep = np.flatnonzero(L == left), np.flatnonzero(L != left)
            c_kk = cov[..., keep[:, None], keep[None, :]]
            c_ok = cov[..., out[:, None], keep[None, :]]
            w = np.linalg.solve(c_kk, np.swapaxes(c_ok, -1, -2))                          # [D, ..., keep, out]
            mean = np.einsum("...ko,...k->...o", w, r[..., keep])
            var = cov[..., out, out] - np.einsum("...ok,...ko->...o", c_ok, w)          # predictive variance
            seen = np.broadcast_to(observed[..., out], mean.shape)
            n = np.maximum(seen.sum(axis=(0, -1)), 1)
            excess = (np.where(seen, (r[..., out] - mean) ** 2 - var, 0.0)).sum(axis=(0, -1)) / n
            rates[end] = np.sqrt(np.maximum(excess, 0.0)) / abs(left - edge)
        return rates

    def loo_inflation(self) -> dict[str, float]:
        """Per summary (``level`` and each live shape block), the mean squared standardised error of predicting each
        calibrated configuration from the others (leave one configuration out; Rasmussen & Williams 2006 §5.4.2,
        in closed form), floored at 1. Above 1 the GP's variance is too small for what its interpolation misses
        (a jump between neighbouring batch sizes); :mod:`tqsim.models.design` scales its variance by it."""
        ci = self.summ.level_cfg
        out = {"level": _loo_z2(self._lev_cov, self._lev_alpha, ci, np.ones(ci.size, bool))}
        if self.live.size:
            _, ses, _ = shape_inputs(self.summ)
            C = len(self.summ.configs)
            for b, name in enumerate(self.blocks):
                out[name] = _loo_z2(self._shp_cov[:, b], self._shp_alpha[:, b], np.arange(C), ses[b] < MISSING_SE)
        return out

    # ---- the level ---------------------------------------------------------------------------
    def _level_kernel(self, a: list[Config], b: list[Config]) -> np.ndarray:
        return level_kernel(self.spec, a, b, self.post["level_sd"], self.post.get("fast_path_sd", 0.0))

    def _beyond(self, config: Config, rates: dict) -> np.ndarray:
        lo, hi = (math.log(b) for b in self.spec.batch_range)
        L = math.log(config.batch_size)
        return max(L - hi, 0.0) * rates["hi"] + max(lo - L, 0.0) * rates["lo"]

    def beyond_sd(self, configs: list[Config]) -> np.ndarray:
        """``[len(configs)]``: the extra level sd of configurations outside the calibrated batch sizes."""
        return np.array([self._beyond(c, self.extrapolation_sd) for c in configs], dtype=float)

    def level_moments(self, configs: list[Config], beyond: bool = True) -> tuple[np.ndarray, np.ndarray]:
        """``([D, m], [D, m, m])``: the conditional mean and covariance of the configurations' levels, the
        extrapolation discrepancy added to the diagonal when ``beyond`` (assumed independent per configuration)."""
        spec = self.spec
        k = self._level_kernel(configs, self.level_obs_cfg)                                 # [D, m, n]
        m, S_xo = level_prior_moments(spec, self.summ, configs, self.level_obs_cfg)
        _, S_xx = level_prior_moments(spec, self.summ, configs, configs)
        k = k + S_xo[None]
        prior = self._level_kernel(configs, configs) + S_xx[None]
        mean = m[None] + np.einsum("dmn,dn->dm", k, self._lev_alpha)
        v = np.linalg.solve(self._lev_cov, np.swapaxes(k, 1, 2))                   # [D, n, m]
        cov = prior - np.einsum("dmn,dnk->dmk", k, v)
        if beyond:
            cov = cov + np.diag(self.beyond_sd(configs) ** 2)[None]
        return mean, cov

    def level(self, configs: list[Config], noise: bool, rng: np.random.Generator | None = None) -> np.ndarray:
        """``[D, len(configs)]``: each configuration's level (its calibration-session average), with the
        GP's conditional noise (independent per configuration) when ``noise``, else its conditional mean."""
        mean, cov = self.level_moments(configs)
        if not noise:
            return mean
        var = np.maximum(np.diagonal(cov, axis1=1, axis2=2), 0.0)
        return mean + np.sqrt(var) * rng.standard_normal(mean.shape)

    # ---- shapes ------------------------------------------------------------------------------
    def shape_moments(self, configs: list[Config], beyond: bool = True) -> tuple[np.ndarray, np.ndarray]:
        """``([D, B, m], [D, B, m, m])``: the conditional mean and covariance of every live shape summary
        (``self.blocks``) of the configurations, the extrapolation discrepancy on the diagonal when ``beyond``."""
        spec, post, summ = self.spec, self.post, self.summ
        m_x, S_xc = shape_prior_moments(spec, summ, configs, summ.configs)                      # [B,m], [B,m,C]
        _, S_xx = shape_prior_moments(spec, summ, configs, configs)                             # [B,m,m]
        kc = spec.correlation(configs, summ.configs)                                            # [m, C]
        tau2 = post["shape_sd"] ** 2                                                             # [D, B]
        k = S_xc[self.live][None] + tau2[:, :, None, None] * kc[None, None]                     # [D, B, m, C]
        mean = m_x[self.live][None] + np.einsum("dbmc,dbc->dbm", k, self._shp_alpha)
        v = np.linalg.solve(self._shp_cov, np.swapaxes(k, -1, -2))                              # [D, B, C, m]
        prior = S_xx[self.live][None] + tau2[:, :, None, None] * spec.correlation(configs, configs)[None, None]
        cov = prior - np.einsum("dbmc,dbck->dbmk", k, v)
        if beyond:
            extra = np.stack([self._beyond(c, self.shape_extrapolation_sd) for c in configs], axis=-1)  # [B, m]
            idx = np.arange(len(configs))
            cov[..., idx, idx] += extra[None] ** 2
        return mean, cov

    def shapes(self, config: Config, rng: np.random.Generator) -> dict[str, np.ndarray]:
        """Per live summary name, ``[D]`` draws for ``config`` (conditional mean + conditional noise)."""
        if not self.live.size:
            return {}
        mean, cov = self.shape_moments([config])
        var = np.maximum(cov[..., 0, 0], 0.0)
        draws = mean[..., 0] + np.sqrt(var) * rng.standard_normal(var.shape)
        return {name: draws[:, i] for i, name in enumerate(self.blocks)}

    def joint(self, configs: list[Config], rng: np.random.Generator) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        """Joint draws for several configurations: levels ``[D, m]`` and, per live summary, ``[D, m]``.
        Contrasts between configurations (``tqsim explain``) need them: configurations near each other share
        most of their uncertainty, which independent draws would count twice."""
        mean, cov = self.level_moments(configs)
        mu = mean + np.einsum("dmk,dk->dm", _chol(cov), rng.standard_normal(mean.shape))
        if not self.live.size:
            return mu, {}
        mean, cov = self.shape_moments(configs)
        draws = mean + np.einsum("dbmk,dbk->dbm", _chol(cov), rng.standard_normal(mean.shape))
        return mu, {name: draws[:, i] for i, name in enumerate(self.blocks)}


def _loo_z2(cov: np.ndarray, alpha: np.ndarray, group: np.ndarray, observed: np.ndarray) -> float:
    """Mean over draws and configurations of ``r_Gᵀ V_G⁻¹ r_G / |G|``, the standardised error of predicting the
    observations ``G`` of one configuration from all the others: with ``P = cov⁻¹``, ``V_G = (P_GG)⁻¹`` and
    ``r_G = V_G α_G`` (``cov`` ``[D, n, n]``, ``alpha`` ``[D, n]``, ``group`` the configuration of each observation)."""
    P = np.linalg.inv(cov)
    z2, count = 0.0, 0
    for g in np.unique(group[observed]):
        idx = np.flatnonzero((group == g) & observed)
        if idx.size == 0 or idx.size == observed.sum():
            continue
        a = alpha[:, idx]
        z2 += float(np.einsum("dg,dg->d", a, np.linalg.solve(P[:, idx[:, None], idx[None, :]], a[..., None])[..., 0])
                    .mean()) / idx.size
        count += 1
    return max(z2 / count, 1.0) if count else 1.0


def _chol(cov: np.ndarray) -> np.ndarray:
    """A Cholesky factor of each covariance in a stack, with a jitter that keeps near-singular ones valid."""
    m = cov.shape[-1]
    scale = np.maximum(np.abs(np.diagonal(cov, axis1=-2, axis2=-1)).max(-1), 1e-12)[..., None, None]
    cov = 0.5 * (cov + np.swapaxes(cov, -1, -2))
    try:
        return np.linalg.cholesky(cov + 1e-9 * scale * np.eye(m))
    except np.linalg.LinAlgError:  # rounding left an eigenvalue below zero: clip it
        w, v = np.linalg.eigh(cov)
        return v * np.sqrt(np.maximum(w, 0.0))[..., None, :]


def conditional(fm, n_draws: int | None = 200) -> Conditional:
    """The model's conditionals, computed once per fitted model and draw count."""
    key = ("conditional", n_draws)
    if key not in fm.cache_:
        fm.cache_[key] = Conditional(fm, n_draws)
    return fm.cache_[key]


def config_level_draws(fm) -> np.ndarray:
    """``[all draws, config]``: the calibrated configurations' levels, for the saved posterior."""
    cond = Conditional(fm, None)
    return cond.level(fm.summaries.configs, noise=True, rng=np.random.default_rng(0))


def session_config_sd(post: dict) -> np.ndarray:
    """``[D]``: σ_sc, how far one configuration's level moves in a session beyond the session's shared shift
    (0 for fits of one session, and for models fitted before it existed)."""
    return np.broadcast_to(np.asarray(post.get("session_config_sd", 0.0), float), post["session_sd"].shape)


def session_offset(fm, post: dict, rng: np.random.Generator) -> np.ndarray:
    """``[D]``: a run in a new session, relative to the calibration's sessions' average level: the new
    session's effect minus the mean of the S calibrated ones, and the configuration's own move in it,
    ``N(0, σ²(1 + 1/S) + σ_sc²)``."""
    S = max(int(fm.summaries.sessions.size), 1)
    sd = np.sqrt(post["session_sd"] ** 2 * (1 + 1 / S) + session_config_sd(post) ** 2)
    return sd * rng.standard_normal(sd.shape)


def in_known_sessions(post: dict, shifts: np.ndarray, sessions: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """``[D, passes]``: the level offset of each pass of a run whose sessions' shared shifts are known (``shifts``
    ``[D, U]`` per session of ``np.unique(sessions)``: fitted, or read from anchors) but whose own level in them was
    not observed: the shift plus this configuration's own move, one ``N(0, σ_sc²)`` per session."""
    uniq, which = np.unique(np.asarray(sessions), return_inverse=True)
    moves = session_config_sd(post)[:, None] * rng.standard_normal((shifts.shape[0], uniq.size))
    return (shifts + moves)[:, which]


# a new session's tail: its stretch ε (log) ~ N(0, σ²), σ² from a scaled-inverse-χ² posterior that weighs the
# variance measured between the calibration's sessions (Summaries.tail_session_var, its dof) against a prior σ₀
# worth TAIL_PRIOR_DOF degrees of freedom (Gelman et al., Bayesian Data Analysis, 3rd ed., §3.3); docs/method.md,
# "Sessions". σ₀: five two-session campaigns of 3 December measured 0.00, 0.00, 0.03, 0.16 and 0.76 (median 0.03);
# with one session the stretch is assumed, and the forecast says so.
TAIL_PRIOR_SD = 0.05
TAIL_PRIOR_DOF = 2


def tail_stretch_draws(summ, D: int, rng: np.random.Generator) -> np.ndarray:
    """``[D]``: how much further (log factor) a run in a new session reaches beyond its median than the calibration
    did: ``log log(p99/p50)`` moves by ε between sessions of one configuration."""
    var, dof = float(summ.tail_session_var), int(summ.tail_session_dof)
    if not math.isfinite(var):
        var, dof = 0.0, 0
    nu = TAIL_PRIOR_DOF + dof
    s2 = (TAIL_PRIOR_DOF * TAIL_PRIOR_SD ** 2 + dof * var) / nu
    return np.sqrt(nu * s2 / rng.chisquare(nu, D)) * rng.standard_normal(D)
