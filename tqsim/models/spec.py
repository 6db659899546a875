"""What the latency model is, apart from how it is sampled (Bambi's split): a plain, printable spec.

The spec holds the terms, the residual family, the feature scaling and the priors (scaled to the
data), and turns a campaign into the flat arrays the backend needs (:func:`build_design`). It never
imports PyMC. Definitions and choices: docs/method.md ("Bayesian engine").
"""

from __future__ import annotations

import dataclasses
import json
import math
from typing import Any

import numpy as np
import xarray as xr

from tqsim.errors import UserError
from tqsim.factors import DEFAULTS, FACTORS, QUALITY_FACTORS, Config

FAMILIES = ("student", "mixture")
CATEGORICAL = ("precision", "backend", "device", "compile")
# configurations beyond the smooth mean's coefficients needed before σ_cfg is informed enough for the
# centred parameterisation (below it the centred form showed a funnel: 57 divergences on 8 configs)
CENTRED_MIN_DF = 0


@dataclasses.dataclass
class ModelSpec:
    """The hierarchical model of log batch latency (see ``__str__`` for the formula)."""

    family: str = "mixture"
    terms: list[str] = dataclasses.field(default_factory=list)       # columns of the config design matrix
    centre: dict[str, float] = dataclasses.field(default_factory=dict)  # of log batch size, log threads
    scale: dict[str, float] = dataclasses.field(default_factory=dict)
    levels: dict[str, list] = dataclasses.field(default_factory=dict)   # categorical: levels seen, [0] = reference
    batch_range: tuple[int, int] = (1, 1)
    thread_range: tuple[int, int] = (1, 1)
    size_term: bool = False
    size_centre: float = 0.0
    size_scale: float = 1.0
    batches_per_pass: int = 24          # subsample: the first and this many other full batches per pass
    # "ar1": latent round effects summing to zero (forecasts add back the uncertainty of their mean);
    # "ar1-marginal" (with pass_effects): integrated out of the pass levels' likelihood, unconstrained
    round_model: str = "ar1"
    priors: dict[str, Any] = dataclasses.field(default_factory=dict)
    subsample_seed: int = 0
    config_parameterisation: str = "centred"   # "non-centred" when few configs beyond the smooth terms
    # "affine": overhead + work·batch^κ (needs 3+ batch sizes); "loglinear": a polynomial in log batch size
    mean_form: str = "affine"
    # the work term is written about the largest calibrated batch (ℓ - pivot), where work dominates:
    # about the centre, w0 and κ correlated -0.88 (and o0 +0.87), and NUTS mixed slowly (ESS ~100)
    work_pivot: float = 0.0
    # each (config, pass) its own level beyond the shared round effect, MEASURED: the median of the
    # pass's full batches (first and partial excluded) is the observed level of the cell, modelled as
    # N(μ_c + r[round], sqrt(σ_pass² + se²)) with its sampling error se; the batches are then modelled
    # around that level (+ δ_c, the fast mode's offset from the median). As latent effects inside the
    # mixture, 2 of 4 real fits sampled bimodally (a pass's level traded against its slow hits)
    pass_effects: bool = True
    # config deviations from the smooth mean are correlated between nearby configs (squared-exponential
    # in log batch size and log threads, none across categorical levels) plus an independent share
    corr_length_L: float = math.log(4.0)
    corr_length_T: float = math.log(2.0)
    corr_share: float = 0.0   # 0 = independent deviations (default: 0.8 measured worse on real runs, see docs)

    # ---- presentation ------------------------------------------------------------------------
    def __str__(self) -> str:
        def linear(first: str, coef: str) -> str:
            return " + ".join([first] + [f"{coef}[{t}]" for t in self.terms])

        if self.mean_form == "affine":
            mean = (f"log(exp({linear('o0', 'α')}) + exp({linear('w0 + κ·(ℓ - ℓ_max)', 'β')})),  "
                    f"ℓ = log batch_size - {self.centre.get('L', 0):.3g}, ℓ_max = {self.work_pivot:.3g}   "
                    "(overhead + work·batch^κ)")
        else:
            mean = linear("β0", "β")
        resid = ("StudentT(ν, 0, σ_c),  log σ_c = s0 + s·[Lz, Tz]" if self.family == "student" else
                 "(1-w_c)·N(0, σ_c) + w_c·N(log(e^m + e^d) - m, σ_slow)   (slow hit: + an additive delay e^d),"
                 "  logit w_c = a0 + a·[Lz, Tz] + σ_w·v_c,  log σ_c = s0 + s·[Lz, Tz]")
        lines = [
            "log batch latency[c, pass, batch] = log(e^m + [batch = 0]·e^f_c)  (first batch: + a cold-start cost)",
            ("  m = λ[c, pass] + δ_c" if self.pass_effects else "  m = μ_c + r[round(pass)]")
            + "   (full batches; a last, partial batch of k: + smooth(k) - smooth(batch_size))",
            *(["    λ[c, pass] = median log latency of the pass's full batches after the first (measured)"
               " ~ N(μ_c + r[round(pass)], sqrt(σ_pass² + se²))",
               f"    δ_c ~ N(δ0 + δ·[Lz, Tz], {self.priors.get('fast_offset', {}).get('sd', 'σ_δ')})   "
               "(the fast mode's centre vs the pass median; centred, sd fixed)"]
              if self.pass_effects else []),
            f"    μ_c ~ N({mean}, σ_cfg)   (config mean, centred; deviations K: "
            f"{self.corr_share:g}·SE(ΔlogBS/{self.corr_length_L:.2g}, ΔlogTh/{self.corr_length_T:.2g}) + "
            f"{1 - self.corr_share:g}·I)",
            ("    r ~ AR(1)(φ, σ_round) over rounds (shared by configs; integrated out of the levels' likelihood)"
             if self.round_model == "ar1-marginal" else
             "    r ~ AR(1)(φ, σ_round) over rounds (centred, summing to zero; shared by configs)"),
            "    f_c = f0 + f1·Lz + σ_f·z_c   (log seconds of the first batch's extra cost, non-centred)",
            "  first batch: + N(0, σ_first,c),  log σ_first,c = g0 + g·[Lz, Tz]   (outside the residual family)",
        ]
        if self.size_term:
            lines.append("  + γ_size·mean standardised instance size of the batch")
        lines.append(f"  + ε,  ε ~ {resid}")
        lines.append(f"Lz = (log batch_size - {self.centre.get('L', 0):.3g}) / {self.scale.get('L', 1):.3g}, "
                     f"Tz = (log threads - {self.centre.get('T', 0):.3g}) / {self.scale.get('T', 1):.3g}")
        lines.append(f"categorical levels (first = reference): {self.levels}")
        lines.append(f"subsample: the first and {self.batches_per_pass} random full batches per pass; the last, "
                     "partial batch is shifted along the smooth surface in forecasts")
        lines.append(f"priors: {self.priors}")
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
    def features(self, configs: list[Config]) -> np.ndarray:
        """Design matrix ``[config, term]`` of the configuration mean."""
        L = np.array([math.log(c.batch_size) for c in configs])
        T = np.array([math.log(c.threads) for c in configs])
        Lz = (L - self.centre["L"]) / self.scale["L"]
        Tz = (T - self.centre["T"]) / self.scale["T"]
        cols = []
        for term in self.terms:
            if term == "Lz":
                cols.append(Lz)
            elif term == "Tz":
                cols.append(Tz)
            elif term == "Lz^2":
                cols.append(Lz ** 2)
            elif term == "Lz:Tz":
                cols.append(Lz * Tz)
            else:
                factor, _, level = term.partition("=")
                cols.append(np.array([str(getattr(c, factor)) == level for c in configs], dtype=float))
        return np.stack(cols, axis=1) if cols else np.zeros((len(configs), 0))

    def log_batch(self, configs: list[Config]) -> np.ndarray:
        """``ℓ = log batch_size - centre``: the work term's input."""
        return np.array([math.log(c.batch_size) for c in configs]) - self.centre["L"]

    def smooth_mean(self, p: dict, X, ell, xp=np):
        """The smooth configuration mean from parameters ``p`` (numpy draws or PyMC variables).

        ``X`` is ``[config, term]`` with coefficients ``[term]`` (PyMC) or ``[term]`` with
        coefficients ``[draw, term]`` (numpy); ``xp.dot(X, coef.T)`` serves both.
        """
        if self.mean_form == "affine":
            return xp.logaddexp(p["overhead0"] + xp.dot(X, p["overhead_coef"].T),
                                p["work0"] + p["work_exponent"] * (ell - self.work_pivot)
                                + xp.dot(X, p["work_coef"].T))
        return p["beta0"] + xp.dot(X, p["beta"].T)

    def partial_shift(self, p: dict, config: Config, k: int) -> np.ndarray:
        """Log-latency change of a last, partial batch of ``k`` instances against a full one: the
        smooth surface's own change from ``batch_size`` to ``k`` (an overhead-bound model's partial
        batch costs almost a full one, a work-bound model's much less)."""
        part = dataclasses.replace(config, batch_size=int(k))
        return (self.smooth_mean(p, self.features([part])[0], self.log_batch([part])[0])
                - self.smooth_mean(p, self.features([config])[0], self.log_batch([config])[0]))

    def scaled(self, configs: list[Config]) -> np.ndarray:
        """``[config, 2]``: (Lz, Tz), the inputs of the residual scale and the slow-mode weight."""
        L = np.array([math.log(c.batch_size) for c in configs])
        T = np.array([math.log(c.threads) for c in configs])
        return np.stack([(L - self.centre["L"]) / self.scale["L"], (T - self.centre["T"]) / self.scale["T"]], 1)

    def correlation(self, a: list[Config], b: list[Config]) -> np.ndarray:
        """Prior correlation ``[len(a), len(b)]`` of configuration deviations (identity share on equal ids)."""
        La = np.array([math.log(c.batch_size) for c in a])[:, None]
        Lb = np.array([math.log(c.batch_size) for c in b])[None, :]
        Ta = np.array([math.log(c.threads) for c in a])[:, None]
        Tb = np.array([math.log(c.threads) for c in b])[None, :]
        same = np.array([[all(str(getattr(x, f)) == str(getattr(y, f)) for f in CATEGORICAL) for y in b] for x in a])
        se = np.exp(-0.5 * (((La - Lb) / self.corr_length_L) ** 2 + ((Ta - Tb) / self.corr_length_T) ** 2))
        ident = np.array([[x.id == y.id for y in b] for x in a], dtype=float)
        return self.corr_share * se * same + (1 - self.corr_share) * ident

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


def campaign_configs(campaign: xr.Dataset) -> list[Config]:
    out = []
    for i in range(campaign.sizes["config"]):
        values = {f: campaign[f].values[i].item() for f in FACTORS if f in campaign.coords}
        values["compile"] = bool(values.get("compile", False))
        out.append(Config.from_mapping(values))
    return out


def make_spec(campaign: xr.Dataset, family: str = "mixture", batches_per_pass: int | None = None,
              seed: int = 0) -> ModelSpec:
    """A spec whose terms and priors fit this campaign (terms the design cannot identify are left out).

    ``batches_per_pass`` defaults to :func:`default_batches_per_pass`."""
    if family not in FAMILIES:
        raise UserError(f"unknown family '{family}'; choose one of: auto, {', '.join(FAMILIES)}.")
    configs = campaign_configs(campaign)
    if len(configs) < 2:
        raise UserError(f"a fit needs at least two calibrated configurations, found {len(configs)}; "
                        "calibrate more with `tqsim calibrate --grid batch_size=1,8,32`.")
    L = np.array([math.log(c.batch_size) for c in configs])
    T = np.array([math.log(c.threads) for c in configs])
    n_bs, n_th = len(set(L)), len(set(T))
    centre = {"L": float(L.mean()), "T": float(T.mean())}
    scale = {"L": float(L.std()) or 1.0, "T": float(T.std()) or 1.0}
    # overhead + work·batch^κ needs three batch sizes to tell the parts apart; below that, log-linear
    mean_form = "affine" if n_bs >= 3 else "loglinear"
    terms = []
    if n_bs >= 2 and mean_form == "loglinear":
        terms.append("Lz")
    if n_th >= 2:
        terms.append("Tz")
    if n_bs >= 2 and n_th >= 2 and mean_form == "loglinear":
        terms.append("Lz:Tz")
    levels: dict[str, list] = {}
    for factor in CATEGORICAL:
        seen = sorted({str(getattr(c, factor)) for c in configs})
        ref = str(DEFAULTS[factor]) if str(DEFAULTS[factor]) in seen else seen[0]
        levels[factor] = [ref] + [s for s in seen if s != ref]
        terms += [f"{factor}={s}" for s in levels[factor][1:]]
    n_inst = int(campaign.sizes["instance"])
    if batches_per_pass is None:
        batches_per_pass = default_batches_per_pass(campaign)
    pass_effects = all(n_inst // c.batch_size - 1 >= 2 for c in configs)
    size_term = "instance_size" in campaign
    sizes = campaign["instance_size"].values.reshape(-1) if size_term else np.zeros(1)
    sizes = sizes[np.isfinite(sizes)]
    y_med = float(np.nanmedian(np.log(campaign["latency_s"].values)))
    fastest = float(np.nanmin(np.nanmedian(np.log(campaign["latency_s"].values), axis=(1, 2))))
    priors = {
        "intercept": {"mu": round(y_med, 4), "sigma": 2.0},
        "slopes": {"sigma": 1.0},
        "work_exponent": {"mu": 1.0, "sigma": 0.25},
        "first_cost": {"mu": round(y_med - 1.0, 4), "sigma": 2.0},
        # prior sd of a config's fast-mode offset around its trend (log units; measured 0.001-0.007)
        "fast_offset": {"sd": 0.01},
        # a slow hit adds at least a fifth of the fastest config's typical call. (A floor at the whole
        # call was needed while pass levels were latent: below it the slow mode took digits-mlp's
        # +11 µs shoulder and pass levels went bimodal. With measured levels that full floor forced
        # the shoulder into a wide slow mode: batch-1 p99 2.4x too high.)
        "slow_delay": {"floor": round(fastest - math.log(5.0), 4), "sigma": 2.0},
        "config_sd": {"lognormal_mu": math.log(0.05), "lognormal_sigma": 0.5},
        "round_sd": {"gamma_alpha": 2.0, "gamma_beta": 20.0},
        "round_phi": {"beta_a": 2.0, "beta_b": 2.0},
        "position": {"sigma": 1.0},
        "log_sigma": {"mu": math.log(0.05), "sigma": 1.5},
        "slow_sd": {"halfnormal_sigma": 1.0},
        "slow_logit": {"mu": -3.0, "sigma": 2.0},
        "nu": {"gamma_alpha": 2.0, "gamma_beta": 0.1},
    }
    return ModelSpec(
        family=family, terms=terms, centre=centre, scale=scale, levels=levels,
        batch_range=(int(min(c.batch_size for c in configs)), int(max(c.batch_size for c in configs))),
        thread_range=(int(min(c.threads for c in configs)), int(max(c.threads for c in configs))),
        size_term=bool(size_term and sizes.size and sizes.std() > 0),
        size_centre=float(sizes.mean()) if sizes.size else 0.0, size_scale=float(sizes.std() or 1.0),
        batches_per_pass=batches_per_pass, priors=priors, subsample_seed=seed,
        config_parameterisation="centred" if len(configs) - len(terms) - 1 >= CENTRED_MIN_DF else "non-centred",
        mean_form=mean_form, pass_effects=pass_effects, round_model="ar1-marginal" if pass_effects else "ar1",
        work_pivot=float(L.max() - centre["L"]),
    )


# the random batches kept per pass: 24, fewer on large campaigns so that the fit sees about this many
# rows. A gradient costs ~0.2 µs per row, and beyond a few hundred batches per config the rows add
# little: each pass's level is measured from all its batches; the rows inform the spread and slow hits.
ROW_BUDGET = 6000
BATCHES_PER_PASS = (8, 24)


def default_batches_per_pass(campaign: xr.Dataset) -> int:
    """Random batches kept per (config, pass) so that the subsample stays near :data:`ROW_BUDGET` rows."""
    cells = int(np.isfinite(campaign["latency_s"].values).any(axis=-1).sum())
    return int(np.clip(ROW_BUDGET // max(cells, 1), *BATCHES_PER_PASS))


@dataclasses.dataclass
class Design:
    """The flat arrays a backend needs: one row per observed (subsampled) batch."""

    y: np.ndarray             # log seconds
    cfg: np.ndarray           # config index
    rnd: np.ndarray           # round index (0..R-1, in round order)
    first: np.ndarray         # 1.0 on the first batch of a pass
    size: np.ndarray          # mean standardised instance size of the batch (0 without sizes)
    X: np.ndarray             # [config, term]
    K: np.ndarray             # [config, config] prior correlation of config deviations
    Z: np.ndarray             # [config, 2] (Lz, Tz)
    ell: np.ndarray           # [config] log batch size minus its centre
    cp: np.ndarray            # (config, pass) cell of the row
    rounds: np.ndarray        # the round labels, in order
    configs: list[Config]
    n_batches_total: int      # before subsampling
    # per (config, pass) cell: the measured level (median log latency of its full batches, first
    # excluded), its sampling sd, and the cell's config and round index
    cell_level: np.ndarray = dataclasses.field(default_factory=lambda: np.zeros(0))
    cell_se: np.ndarray = dataclasses.field(default_factory=lambda: np.zeros(0))
    cell_cfg: np.ndarray = dataclasses.field(default_factory=lambda: np.zeros(0, np.int64))
    cell_rnd: np.ndarray = dataclasses.field(default_factory=lambda: np.zeros(0, np.int64))


def batch_layout(n_instances: int, batch_size: int) -> np.ndarray:
    """Batch index of each instance: fixed order, last batch partial (DESIGN §4)."""
    return np.arange(n_instances) // int(batch_size)


def build_design(campaign: xr.Dataset, spec: ModelSpec) -> Design:
    configs = campaign_configs(campaign)
    rng = np.random.default_rng(spec.subsample_seed)
    rounds = np.unique(campaign["round"].values[np.isfinite(campaign["round"].values)]).astype(np.int64)
    round_index = {int(r): i for i, r in enumerate(rounds)}
    lat = campaign["latency_s"].values  # [config, pass, instance]
    has_size = spec.size_term and "instance_size" in campaign
    cols: dict[str, list] = {k: [] for k in ("y", "cfg", "rnd", "first", "size", "cp")}
    cells: dict[str, list] = {k: [] for k in ("level", "se", "cfg", "rnd")}
    total = 0
    for c, cfg in enumerate(configs):
        batch = campaign["batch"].values[c].astype(np.int64)
        starts = np.flatnonzero(np.r_[True, np.diff(batch) != 0])
        counts = np.diff(np.r_[starts, batch.size])
        nb = starts.size
        if has_size:
            z = (campaign["instance_size"].values[c] - spec.size_centre) / spec.size_scale
            bsize = np.bincount(np.repeat(np.arange(nb), counts), weights=z, minlength=nb) / counts
        else:
            bsize = np.zeros(nb)
        body = np.flatnonzero((np.arange(nb) > 0) & (counts == cfg.batch_size))
        levels = []
        for p in range(lat.shape[1]):
            row = lat[c, p, starts]
            if not np.isfinite(row).all():
                continue
            total += nb
            levels.append((np.log(row[body]), int(campaign["round"].values[c, p])))
            # the first batch and a random subset of the full ones; the last, partial batch is left
            # out (forecasts shift it along the smooth surface: ModelSpec.partial_shift)
            others = np.setdiff1d(np.flatnonzero(counts == cfg.batch_size), [0])
            if others.size > spec.batches_per_pass:
                others = rng.choice(others, spec.batches_per_pass, replace=False)
            idx = np.sort(np.r_[0, others]).astype(np.int64)
            cols["y"].append(np.log(row[idx]))
            cols["cfg"].append(np.full(idx.size, c))
            cols["rnd"].append(np.full(idx.size, round_index[int(campaign["round"].values[c, p])]))
            cols["first"].append((idx == 0).astype(float))
            cols["size"].append(bsize[idx])
            cols["cp"].append(np.full(idx.size, len(cols["cp"])))
        if body.size:
            # se of a median: 1.2533·σ/√n, with σ the config's pooled within-pass robust sd
            med = np.array([np.median(v) for v, _ in levels])
            sd = 1.4826 * np.median(np.abs(np.concatenate([v - m for (v, _), m in zip(levels, med)])))
            cells["level"].append(med)
            cells["se"].append(np.full(med.size, 1.2533 * max(sd, 1e-3) / math.sqrt(body.size)))
            cells["cfg"].append(np.full(med.size, c))
            cells["rnd"].append(np.array([round_index[r] for _, r in levels]))
    arrays = {k: np.concatenate(v) for k, v in cols.items()}
    cell = {k: np.concatenate(v) if v else np.zeros(0) for k, v in cells.items()}
    if spec.pass_effects and cell["level"].size != int(arrays["cp"].max()) + 1:
        raise UserError("a configuration has fewer than two full batches after the first in a pass, so its "
                        "pass level cannot be measured; fit without it or calibrate smaller batch sizes.")
    return Design(y=arrays["y"], cfg=arrays["cfg"].astype(np.int64), rnd=arrays["rnd"].astype(np.int64),
                  first=arrays["first"], size=arrays["size"],
                  X=spec.features(configs), K=spec.correlation(configs, configs), Z=spec.scaled(configs),
                  ell=spec.log_batch(configs), cp=arrays["cp"].astype(np.int64), rounds=rounds, configs=configs,
                  n_batches_total=total, cell_level=cell["level"], cell_se=cell["se"],
                  cell_cfg=cell["cfg"].astype(np.int64), cell_rnd=cell["rnd"].astype(np.int64))
