"""What the latency model is, apart from how it is sampled (Bambi's split): a plain, printable spec.

The spec holds the factor features, the mean surfaces, the correlation of configurations over the
factors, and the priors scaled to the data. It never imports PyMC. Definitions and choices:
docs/method.md ("Bayesian engine").
"""

from __future__ import annotations

import dataclasses
import json
import math
from typing import Any

import numpy as np
import xarray as xr

from tqsim.errors import UserError
from tqsim.factors import DEFAULTS, QUALITY_FACTORS, Config
from tqsim.models.summaries import block_names

CATEGORICAL = ("precision", "backend", "device", "compile")
# the machine's speed moves between sessions by a log-sd of about this much; the prior's centre
# when a workspace holds one session (measured: docs/method.md, "Sessions"; benchmarks/session_drift.py)
SESSION_SD_PRIOR = 0.07
# how far batch 1 sits off the cost curve of the larger batches (log): digits-cnn −0.7 (a fast path),
# digits-transformer +0.3, digits-mlp −0.1 (docs/method.md, "The model")
FAST_PATH_SD_PRIOR = 0.3
# how far one configuration's level moves between sessions beyond the session's shared shift (log); learned
# with two or more sessions: 0.007-0.077 on six three-session campaigns (docs/method.md, "Sessions")
SESSION_CONFIG_SD_PRIOR = 0.03


@dataclasses.dataclass
class ModelSpec:
    """The model of per-configuration summaries (see ``__str__`` for the formula)."""

    terms: list[str] = dataclasses.field(default_factory=list)        # trend columns over the factors
    centre: dict[str, float] = dataclasses.field(default_factory=dict)  # of log batch size, log threads
    scale: dict[str, float] = dataclasses.field(default_factory=dict)
    levels: dict[str, list] = dataclasses.field(default_factory=dict)   # categorical: levels seen, [0] = reference
    batch_range: tuple[int, int] = (1, 1)
    thread_range: tuple[int, int] = (1, 1)
    # configurations deviate from each trend as a Gaussian process over (log batch size, log threads),
    # uncorrelated across categorical levels, plus an independent share ("nugget")
    corr_length_L: float = math.log(4.0)
    corr_length_T: float = math.log(2.0)
    nugget: float = 0.1
    kernel: str = "se"          # "se" (squared exponential) or "matern32"
    level_curvature: bool = False  # the level trend also gets Lz² (convex cost in log batch size)
    # beyond the calibrated batch sizes Lz² is "quadratic" (grows on) or "linear" (continues along its tangent)
    curvature_extrapolation: str = "quadratic"
    # beyond them the level also gets the leave-one-batch-size-out discrepancy (conditional.py)
    extrapolation_discrepancy: bool = True
    # batch 1 may run its own kernels (a matrix-vector path) and sit off the batched cost curve by an offset
    # whose scale the fit learns; set when batch 1 and three other batch sizes were calibrated
    fast_path: bool = False
    blocks: list[str] = dataclasses.field(default_factory=list)       # names of the shape summaries
    n_sessions: int = 1
    size_mean: float = 0.0
    size_sd: float = 0.0
    priors: dict[str, Any] = dataclasses.field(default_factory=dict)
    family: str = "quantile"    # the name the reports show: per-configuration quantile functions

    # ---- presentation ------------------------------------------------------------------------
    def __str__(self) -> str:
        lines = [
            "Per configuration c, session s, pass p, batch j (log seconds):",
            "  log latency[c,s,p,j] = μ_c + d_s + Pass_c(u_p) + Within_c(u_pj) + γ_c·size_j"
            "   (first batch: First_c(u_p) instead of Within_c)",
            "  μ_c ~ trend b0 + b·x + GP,   measured: the median pass level of (c, s) = μ_c + d_s + N(0, se²)",
            "  d_s ~ ZeroSumNormal(σ_session); a run in another session adds N(0, σ_session²·(1 + 1/S) + σ_sc²),"
            f" S = {self.n_sessions}",
            "  with S ≥ 2 each (c, s) level also deviates by N(0, σ_sc²), σ_sc ~ LogNormal(log 0.03, 0.75): "
            "sessions move configurations unalike",
            "  Pass_c, Within_c, First_c: quantile functions; Within_c = the body's below 1 − π_c, the stalls' "
            "(calls beyond 2× their pass level) above, π_c the stall share",
            "  each quantile q_c(u), logit π_c and the size slope γ_c ~ "
            "trend b0 + b·x + GP, measured with its bootstrap se; every trend's b0, b integrated out",
            f"  GP: τ²·((1 − {self.nugget:g})·exp(−ΔL²/2·{self.corr_length_L:.2g}² − ΔT²/2·{self.corr_length_T:.2g}²)"
            f"·[same categorical levels] + {self.nugget:g}·[same config])",
            f"  x = {self.terms};  Lz = (log batch_size − {self.centre.get('L', 0):.3g}) / {self.scale.get('L', 1):.3g},"
            f" Tz = (log threads − {self.centre.get('T', 0):.3g}) / {self.scale.get('T', 1):.3g}",
            f"  categorical levels (first = reference): {self.levels}",
            f"  summaries: {len(self.blocks)} quantiles/slopes per configuration; priors: {self.priors}",
        ]
        if self.fast_path:
            lines.insert(3, "  batch 1's μ_c also adds an offset ~ N(0, σ_fast²), σ_fast ~ HalfNormal: "
                            "its own kernels, off the cost curve of the larger batches")
        return "\n".join(lines)

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self))

    @classmethod
    def from_json(cls, text: str) -> "ModelSpec":
        d = json.loads(text)
        d["batch_range"] = tuple(d["batch_range"])
        d["thread_range"] = tuple(d["thread_range"])
        return cls(**d)

    # ---- features ----------------------------------------------------------------------------
    def _lz_tz(self, configs: list[Config]) -> tuple[np.ndarray, np.ndarray]:
        L = np.array([math.log(c.batch_size) for c in configs])
        T = np.array([math.log(c.threads) for c in configs])
        return (L - self.centre["L"]) / self.scale["L"], (T - self.centre["T"]) / self.scale["T"]

    def _columns(self, configs: list[Config], terms: list[str]) -> np.ndarray:
        Lz, Tz = self._lz_tz(configs)
        cols = []
        for term in terms:
            if term == "Lz":
                cols.append(Lz)
            elif term == "Tz":
                cols.append(Tz)
            elif term == "Lz:Tz":
                cols.append(Lz * Tz)
            else:
                factor, _, level = term.partition("=")
                cols.append(np.array([str(getattr(c, factor)) == level for c in configs], dtype=float))
        return np.stack(cols, axis=1) if cols else np.zeros((len(configs), 0))

    def features(self, configs: list[Config]) -> np.ndarray:
        """``[config, term]``: the trend columns of the shape summaries (and of a log-linear level)."""
        return self._columns(configs, self.terms)

    def fast_path_column(self, configs: list[Config]) -> np.ndarray:
        """``[config]``: 1 where the level carries batch 1's own offset (zeros when the spec has none)."""
        return np.array([float(self.fast_path and c.batch_size == 1) for c in configs])

    def basis(self, configs: list[Config], intercept_sd: float, slope_sd: float,
              level: bool = False) -> tuple[np.ndarray, np.ndarray]:
        """A trend's basis ``[config, 1 + term]`` and the prior sd of its coefficients (Gaussian, so they
        are integrated out with the GP deviations: Rasmussen & Williams 2006, §2.7)."""
        X = np.c_[np.ones(len(configs)), self.features(configs)]
        if level and self.level_curvature and "Lz" in self.terms:
            X = np.c_[X, self._curvature(self._lz_tz(configs)[0])]
        return X, np.r_[intercept_sd, np.full(X.shape[1] - 1, slope_sd)]

    def _curvature(self, lz: np.ndarray) -> np.ndarray:
        """The level's Lz² column; with ``curvature_extrapolation == "linear"`` it continues along its
        tangent outside the calibrated batch sizes, so a curvature learnt inside is not carried beyond."""
        if self.curvature_extrapolation != "linear":
            return lz ** 2
        lo, hi = ((math.log(b) - self.centre["L"]) / self.scale["L"] for b in self.batch_range)
        edge = np.clip(lz, lo, hi)
        return edge ** 2 + 2 * edge * (lz - edge)

    def correlation(self, a: list[Config], b: list[Config]) -> np.ndarray:
        """Prior correlation ``[len(a), len(b)]`` of configuration deviations from a trend."""
        La = np.array([math.log(c.batch_size) for c in a])[:, None]
        Lb = np.array([math.log(c.batch_size) for c in b])[None, :]
        Ta = np.array([math.log(c.threads) for c in a])[:, None]
        Tb = np.array([math.log(c.threads) for c in b])[None, :]
        same = np.array([[all(str(getattr(x, f)) == str(getattr(y, f)) for f in CATEGORICAL) for y in b]
                         for x in a], dtype=float).reshape(len(a), len(b))
        d2 = ((La - Lb) / self.corr_length_L) ** 2 + ((Ta - Tb) / self.corr_length_T) ** 2
        if self.kernel == "matern32":
            r = np.sqrt(3.0 * d2)
            se = (1.0 + r) * np.exp(-r)
        else:
            se = np.exp(-0.5 * d2)
        ident = np.array([[x.id == y.id for y in b] for x in a], dtype=float).reshape(len(a), len(b))
        return (1 - self.nugget) * se * same + self.nugget * ident

    def check_forecastable(self, config: Config) -> list[str]:
        """Refuse levels never calibrated; return warnings for extrapolation in batch size or threads."""
        for factor in CATEGORICAL:
            level = str(getattr(config, factor))
            seen = [str(v) for v in self.levels.get(factor, [])]
            if level not in seen:
                kind = "quality-relevant " if factor in QUALITY_FACTORS else ""
                raise UserError(f"{factor}={level} was never calibrated (calibrated: {', '.join(seen)}); "
                                f"this {kind}level cannot be forecast — calibrate a configuration with "
                                f"--grid {factor}={level} first.")
        warnings = []
        lo, hi = self.batch_range
        if not lo <= config.batch_size <= hi:
            warnings.append(f"batch_size={config.batch_size} is outside the calibrated range {lo}–{hi}; "
                            "the forecast extrapolates.")
        lo, hi = self.thread_range
        if not lo <= config.threads <= hi:
            warnings.append(f"threads={config.threads} is outside the calibrated range {lo}–{hi}; "
                            "the forecast extrapolates.")
        return warnings


def make_spec(configs: list[Config], summaries=None) -> ModelSpec:
    """A spec whose terms fit these configurations: a factor calibrated at one level is no dimension
    of the model (its slope would be unidentified: a zero gradient at every start point)."""
    if len(configs) < 2:
        raise UserError(f"a fit needs at least two calibrated configurations, found {len(configs)}; "
                        "calibrate more with `tqsim calibrate --grid batch_size=1,8,32`.")
    L = np.array([math.log(c.batch_size) for c in configs])
    T = np.array([math.log(c.threads) for c in configs])
    n_bs, n_th = len(set(L)), len(set(T))
    centre = {"L": float(L.mean()), "T": float(T.mean())}
    scale = {"L": float(L.std()) or 1.0, "T": float(T.std()) or 1.0}
    terms = (["Lz"] if n_bs >= 2 else []) + (["Tz"] if n_th >= 2 else []) + (["Lz:Tz"] if n_bs >= 2 and n_th >= 2 else [])
    levels: dict[str, list] = {}
    for factor in CATEGORICAL:
        seen = sorted({str(getattr(c, factor)) for c in configs})
        ref = str(DEFAULTS[factor]) if str(DEFAULTS[factor]) in seen else seen[0]
        levels[factor] = [ref] + [s for s in seen if s != ref]
        dummies = [f"{factor}={s}" for s in levels[factor][1:]]
        terms += dummies
    n_sessions = int(summaries.sessions.size) if summaries is not None else 1
    # a convex cost in log batch size (overhead, then work): docs/method.md, "The model"
    size_mean = float(summaries.size_mean) if summaries is not None else 0.0
    size_sd = float(summaries.size_sd) if summaries is not None else 0.0
    priors = {
        "level_sd": {"lognormal_mu": math.log(0.05), "lognormal_sigma": 0.5},
        "level_trend": {"intercept_sd": 3.0, "slope_sd": 1.0},
        "session_sd": {"lognormal_mu": math.log(SESSION_SD_PRIOR), "lognormal_sigma": 0.6},
        "fast_path_sd": {"halfnormal_sigma": FAST_PATH_SD_PRIOR},
        "session_config_sd": {"lognormal_mu": math.log(SESSION_CONFIG_SD_PRIOR), "lognormal_sigma": 0.75},
    }
    return ModelSpec(
        terms=terms, centre=centre, scale=scale, levels=levels,
        batch_range=(int(min(c.batch_size for c in configs)), int(max(c.batch_size for c in configs))),
        thread_range=(int(min(c.threads for c in configs)), int(max(c.threads for c in configs))),
        blocks=block_names(), n_sessions=n_sessions, level_curvature=n_bs >= 3, size_mean=size_mean,
        size_sd=size_sd, priors=priors, fast_path=any(c.batch_size == 1 for c in configs) and n_bs >= 4,
    )
