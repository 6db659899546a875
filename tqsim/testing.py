"""A simulated system with a KNOWN latency law, for tests and benchmarks.

It writes the same calibration files the harness writes (docs/schema.md) and exposes the law, so a test
can compute the true p99 or the true Q@T of any configuration and hold the Bayesian engine to it.

The law, for configuration ``c`` measured in round ``t``, batch ``j`` of a pass (log seconds)::

    log latency = mean(c) + round_t + position_j + size_j + residual

* ``mean(c) = intercept + bs_slope·L + bs_curv·L² + th_slope·T + bs_th·L·T + shifts(precision,
  backend, device, compile)`` with ``L = log(batch_size)``, ``T = log(threads)``: cost grows with
  the batch, falls sub-linearly with threads (more so for large batches).
* ``session``: a level shift ``N(0, session_sd)`` shared by every pass of one session (a
  ``tqsim calibrate`` invocation): the machine's speed moving between runs minutes apart.
  Each configuration also moves by its own ``N(0, session_config_sd)`` in each session of a campaign
  (a session does not slow every configuration by one factor).
* ``round_t``: AR(1) over rounds, stationary sd ``round_sd``, lag-1 correlation ``round_phi``,
  shared by every configuration measured in that round (the machine-wide episodes of docs/method.md),
  plus the configuration's own pass level ``N(0, pass_sd)`` (real pass medians correlate only
  ~0.45 across the configurations of a round).
* ``position_j``: batch 0 of a pass pays an extra ``first_cost_s`` seconds (added, not scaled:
  ``log(e^m + first_cost_s)``); the last, partial batch of ``m < bs`` instances gets
  ``partial_slope·log(m / bs)`` (faster).
* ``size_j``: ``size_effect`` × mean standardised instance size of the batch (when sizes differ).
* ``residual``: a two-component mixture, fast ``N(0, fast_sd)``; a slow hit adds ``slow_delay_s``
  seconds (``log(e^m + slow_delay_s) + N(0, slow_sd)``), with slow weight
  ``logistic(slow_logit + slow_logit_bs·L)``; with ``periodic=True`` the slow hits of a pass are
  evenly spaced (random phase), so a pass holds an almost fixed number of them.
"""

from __future__ import annotations

import dataclasses
import functools
import datetime as _dt
import json
import math
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
import xarray as xr

import tqsim
from tqsim.data.schema import SCHEMA_VERSION
from tqsim.factors import QUALITY_FACTORS, Config


@dataclasses.dataclass(frozen=True)
class Law:
    """True parameters of the simulated system (log seconds unless noted)."""

    intercept: float = math.log(70e-6)
    bs_slope: float = 0.45
    bs_curv: float = 0.04
    th_slope: float = -0.08
    bs_th: float = -0.10
    precision_shift: tuple[tuple[str, float], ...] = (("fp32", 0.0), ("bf16", 0.6), ("fp16", 0.4))
    backend_shift: tuple[tuple[str, float], ...] = (("torch", 0.0), ("onnxruntime", -0.15))
    device_shift: tuple[tuple[str, float], ...] = (("cpu", 0.0), ("cuda", -1.0))
    compile_shift: float = -0.1
    session_sd: float = 0.08
    session_config_sd: float = 0.0
    round_sd: float = 0.05
    round_phi: float = 0.6
    pass_sd: float = 0.05
    first_cost_s: float = 150e-6
    partial_slope: float = 0.5
    size_effect: float = 0.0
    fast_sd: float = 0.05
    slow_delay_s: float = 120e-6
    slow_sd: float = 0.2
    slow_logit: float = -3.0
    slow_logit_bs: float = -0.2
    periodic: bool = False
    accuracy: tuple[tuple[str, float], ...] = (("fp32", 0.97), ("bf16", 0.96), ("fp16", 0.965))
    quality_seed: int = 1234

    # ---- the law, exactly -------------------------------------------------------------------
    def config_mean(self, config: Config) -> float:
        """True mean log latency of a full, non-first batch of ``config`` in an average round."""
        L, T = math.log(config.batch_size), math.log(config.threads)
        mu = (self.intercept + self.bs_slope * L + self.bs_curv * L * L + self.th_slope * T + self.bs_th * L * T)
        mu += dict(self.precision_shift).get(config.precision, 0.0)
        mu += dict(self.backend_shift).get(config.backend, 0.0)
        mu += dict(self.device_shift).get(config.device, 0.0)
        return mu + (self.compile_shift if config.compile else 0.0)

    def slow_weight(self, config: Config) -> float:
        z = self.slow_logit + self.slow_logit_bs * math.log(config.batch_size)
        return 1.0 / (1.0 + math.exp(-z))

    def correct(self, config: Config, n_instances: int) -> np.ndarray:
        """Per-instance correctness for the config's quality-relevant levels (fixed across campaigns)."""
        levels = "-".join(str(getattr(config, f)) for f in QUALITY_FACTORS)
        rng = np.random.default_rng([self.quality_seed, n_instances, _stable_hash(levels)])
        base = np.random.default_rng([self.quality_seed, n_instances]).random(n_instances)
        acc = dict(self.accuracy).get(config.precision, 0.95)
        # shared difficulty plus a little level-specific flipping: levels agree on most instances
        flip = rng.random(n_instances) < 0.01
        return (base < acc) ^ flip

    def simulate_passes(self, config: Config, n_passes: int, n_instances: int, rng: np.random.Generator,
                        round_effects: np.ndarray | None = None,
                        instance_size: np.ndarray | None = None) -> np.ndarray:
        """Instance latencies ``[pass, instance]`` (seconds) for ``n_passes`` passes of ``config``.

        ``round_effects`` (n_passes,) gives each pass's shared machine effect (session + round); when
        omitted, a run in a new session: a session effect plus an AR(1) path.
        """
        bs = config.batch_size
        batch = np.arange(n_instances) // bs
        nb = int(batch[-1]) + 1
        if round_effects is None:
            round_effects = (ar1_path(n_passes, self.round_sd, self.round_phi, rng)
                             + rng.normal(0.0, self.session_sd))
        log_t = np.full((n_passes, nb), self.config_mean(config))
        log_t += np.asarray(round_effects, dtype=float)[:, None] + rng.normal(0.0, self.pass_sd, (n_passes, 1))
        if self.first_cost_s > 0:
            log_t[:, 0] = np.logaddexp(log_t[:, 0], math.log(self.first_cost_s))
        last = n_instances - (nb - 1) * bs
        if last < bs:
            log_t[:, -1] += self.partial_slope * math.log(last / bs)
        if instance_size is not None and self.size_effect:
            z = (instance_size - instance_size.mean()) / (instance_size.std() or 1.0)
            log_t += self.size_effect * np.bincount(batch, weights=z, minlength=nb) / np.bincount(batch)
        w = self.slow_weight(config)
        if self.periodic:
            spacing = 1.0 / max(w, 1e-9)
            phase = rng.random((n_passes, 1)) * spacing
            idx = np.arange(nb)[None, :]
            slow = np.floor((idx + 1 + phase) / spacing) > np.floor((idx + phase) / spacing)
        else:
            slow = rng.random((n_passes, nb)) < w
        hit = np.logaddexp(log_t, math.log(self.slow_delay_s)) - log_t
        resid = np.where(slow, hit + rng.normal(0.0, self.slow_sd, (n_passes, nb)),
                         rng.normal(0.0, self.fast_sd, (n_passes, nb)))
        return np.exp(log_t + resid)[:, batch]

    def truth(self, config: Config, n_instances: int, thresholds_s: Sequence[float] = (), *, n_runs: int = 200,
              passes_per_run: int = 20, seed: int = 0, tail_q: float = 0.01) -> dict:
        """Monte Carlo truth for ``config``: pooled latency quantiles and Q@T over many runs.

        Each run is ``passes_per_run`` passes in a new session (its own session effect and AR(1)
        path). Returns the
        long-run latency quantiles (``p50``...), and per threshold the mean Q@T and the expected
        per-run tail quality and minimum (for the given number of passes per run).
        """
        from tqsim.quality import quality_at_deadline

        rng = np.random.default_rng(seed)
        lat = np.stack([self.simulate_passes(config, passes_per_run, n_instances, rng) for _ in range(n_runs)])
        pooled = lat.reshape(n_runs, -1)
        out = {name: float(np.quantile(pooled, q)) for name, q in (("p50", .5), ("p90", .9), ("p99", .99),
                                                                     ("p99.9", .999))}
        out["per_run"] = {name: np.quantile(pooled, q, axis=1) for name, q in
                          (("p50", .5), ("p90", .9), ("p99", .99), ("p99.9", .999))}
        if len(thresholds_s):
            qat = quality_at_deadline(lat, np.asarray(thresholds_s, float), score=self.correct(config, n_instances))
            out["mean_q"] = qat.mean(axis=(0, 1))
            out["tail_q"] = np.quantile(qat, tail_q, axis=1).mean(axis=0)
            out["min_q"] = qat.min(axis=1).mean(axis=0)
            out["per_run_tail_q"] = np.quantile(qat, tail_q, axis=1)
        return out


def _stable_hash(text: str) -> int:
    return int.from_bytes(text.encode()[:8].ljust(8, b"\0"), "little") % (2**31)


def ar1_path(n: int, sd: float, phi: float, rng: np.random.Generator) -> np.ndarray:
    """A stationary AR(1) path of length ``n`` with marginal sd ``sd`` and lag-1 correlation ``phi``."""
    out = np.empty(n)
    innov = sd * math.sqrt(max(1.0 - phi * phi, 1e-12))
    prev = rng.normal(0.0, sd)
    for i in range(n):
        out[i] = prev if i == 0 else phi * out[i - 1] + rng.normal(0.0, innov)
    return out


DEFAULT_GRID = [Config(batch_size=b, threads=t) for b in (1, 2, 4, 8, 16, 32, 64, 128) for t in (1, 2)]


def grid(batch_sizes: Iterable[int] = (1, 4, 16, 64), threads: Iterable[int] = (1, 2),
         precisions: Iterable[str] = ("fp32",)) -> list[Config]:
    return [Config(batch_size=b, threads=t, precision=p) for p in precisions for b in batch_sizes for t in threads]


def simulate_campaign(configs: Sequence[Config], passes: int = 20, seed: int = 0, n_instances: int = 540,
                      law: Law | None = None, *, workload: str = "sim", system: str = "simbox",
                      first_round: int = 0, instance_sizes: bool = False, sessions: int = 1,
                      session_ids: Sequence[int] | None = None) -> list[xr.Dataset]:
    """One dataset per configuration, measured in ``passes`` interleaved rounds split over ``sessions``
    sessions (the harness's campaign).

    Every configuration measured in round ``t`` shares that round's machine effect, and every pass of
    a session that session's effect. The datasets pass :func:`tqsim.data.schema.check_calibration`.
    """
    law = law or Law()
    rng = np.random.default_rng(seed)
    rounds = ar1_path(passes, law.round_sd, law.round_phi, rng)
    which = np.minimum(np.arange(passes) * sessions // max(passes, 1), sessions - 1)
    ids = np.asarray(session_ids if session_ids is not None else
                     [int(1.8e15) + seed * 1000 + k for k in range(sessions)], dtype=np.int64)
    rounds = rounds + rng.normal(0.0, law.session_sd, sessions)[which]
    sizes = rng.gamma(4.0, 1.0, n_instances) if instance_sizes else None
    created = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
    fingerprint = json.dumps({"cpu": "simulated", "cores": 2, "simulated": True})
    out = []
    moves = rng.normal(0.0, law.session_config_sd, (len(configs), sessions)) if law.session_config_sd else None
    for k, cfg in enumerate(configs):
        own = rounds + moves[k][which] if moves is not None else rounds
        lat = law.simulate_passes(cfg, passes, n_instances, rng, round_effects=own, instance_size=sizes)
        batch = np.arange(n_instances) // cfg.batch_size
        started = 1.8e9 + np.arange(passes) * 60.0 + k * 1.5
        ds = xr.Dataset(
            {
                "latency_s": (("pass", "instance"), lat),
                "batch": (("instance",), batch.astype(np.int64)),
                "correct": (("instance",), law.correct(cfg, n_instances)),
                "round": (("pass",), np.arange(first_round, first_round + passes, dtype=np.int64)),
                "pass_started_at": (("pass",), started),
                "session": (("pass",), ids[which]),
            },
            coords={"pass": np.arange(passes), "instance": np.arange(n_instances)},
        )
        if sizes is not None:
            ds["instance_size"] = (("instance",), sizes)
        ds.attrs.update({
            "workload": workload, "system": system, "fingerprint": fingerprint, "quality_metric": "accuracy",
            "tqsim_version": tqsim.__version__, "created_at": created, "units": "s",
            "schema_version": SCHEMA_VERSION, "simulated": 1,
        })
        for f, v in cfg.as_dict().items():
            ds.attrs[f] = int(v) if isinstance(v, bool) else v
        out.append(ds)
    return out


def write_campaign(datasets: Sequence[xr.Dataset], home: str | Path, *, folder: str | Path | None = None) -> Path:
    """Write datasets as ``calibration/<system>/<workload>/<config-id>.nc`` under ``home`` (or into ``folder``)."""
    from tqsim.data.io import write_atomic
    from tqsim.data.workspace import Workspace

    if not datasets:
        raise ValueError("no datasets to write")
    first = datasets[0]
    target = Path(folder) if folder is not None else Workspace.at(home).calibration_dir(
        first.attrs["system"], first.attrs["workload"])
    for ds in datasets:
        cfg = Config(**{f: (bool(ds.attrs[f]) if f == "compile" else ds.attrs[f])
                        for f in Config.__dataclass_fields__})
        write_atomic(ds, target / f"{cfg.id}.nc")
    return target


@functools.lru_cache(maxsize=8)
def example_fit(sampler: str = "nutpie", seed: int = 0, passes: int = 8,
                batch_sizes: tuple[int, ...] = (1, 4, 16, 64), threads: tuple[int, ...] = (1, 2),
                draws: int = 1000, tune: int = 1000, sessions: int = 1):
    """A fitted model of a simulated campaign, cached per process so several test modules share it (the
    sampler's production settings: with 600 draws a chain, r-hat's own noise put a clean fit at 1.011).

    Returns ``(home, fitted_model, law)``; ``home`` is a temporary workspace holding the calibration
    (``calibration/simbox/sim``) and the model file, and ``home/heldout`` holds batch 8 and 32
    measured at another time.
    """
    import tempfile

    from tqsim.data.io import load_campaign
    from tqsim.data.workspace import Workspace
    from tqsim.models import fit_campaign, save

    law = Law()
    home = Path(tempfile.mkdtemp(prefix="tqsim-example-"))
    folder = write_campaign(simulate_campaign(grid(batch_sizes, threads), passes=passes, seed=seed, law=law,
                                              sessions=sessions), home)
    write_campaign(simulate_campaign([Config(8, 1), Config(32, 2)], passes=10, seed=seed + 1000, law=law,
                                     first_round=1000), home, folder=home / "heldout")
    fm = fit_campaign(load_campaign(folder), sampler=sampler, draws=draws, tune=tune, seed=seed)
    save(fm, Workspace.at(home).model_path("simbox", "sim"))
    return home, fm, law


def simulate_request_log(service, setup, rate_rps: float, duration_s: float, seed: int = 0, *,
                         n_instances: int = 540, with_batches: bool = False):
    """A request log (:class:`~tqsim.data.request_log.RequestLog`) of a simulated serving run with known
    overheads: ``service`` (e.g. ``WithOverheads(forward, truth)``) served Poisson arrivals at ``rate_rps``.
    Instances are drawn at random, as LoadGen does; ``with_batches`` adds the batch ids and sizes."""
    from tqsim.data.request_log import RequestLog
    from tqsim.whatif.simulator import poisson_arrivals, simulate_run

    rng = np.random.default_rng(seed)
    svc = service.at_rate(rate_rps) if hasattr(service, "at_rate") else service
    arr = poisson_arrivals(rate_rps, int(rate_rps * duration_s), rng)
    run = simulate_run(svc.draw(rng), setup, arr, rng, window=n_instances)
    extra = {}
    if with_batches:
        ids = np.repeat(np.arange(run.batch_sizes.size), run.batch_sizes)
        extra = dict(batch_id=ids, batch_size=run.batch_sizes[ids])
    return RequestLog.from_arrays(run.arrival_s, run.done_s, sample_index=rng.integers(0, n_instances, arr.size),
                                  source=f"simulated {rate_rps:g} req/s", driver="simulated", **extra)
