"""What a what-if reads from the workspace: service models per (threads, variant) and per-instance scores per
variant, a variant being the levels of precision, backend and device (:class:`~tqsim.factors.Variant`).

Service models are :class:`EmpiricalService` (calibrated forward times, no fit needed) wrapped in
the serving overheads of ``serving.json`` when it exists. A Bayesian forecast plugs in through
``forecast=`` — a callable ``draw_batch_latency(batch_size, threads, n, rng)`` — and is then used
for every (threads, variant), which lets the planner consider thread counts never calibrated.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from tqsim.data.schema import batch_starts
from tqsim.errors import UserError
from tqsim.factors import DEFAULTS, QUALITY_FACTORS, Variant, parse_level
from tqsim.parallel import SERIAL, reporting
from tqsim.quality import INTERVAL
from tqsim.whatif.objective import Objective
from tqsim.whatif.overheads import load_overheads
from tqsim.whatif.service import EmpiricalService, ForecastService, ServiceModel, WithOverheads


@dataclasses.dataclass
class WorkspaceInputs:
    """Lazily built, cached service models and per-instance score vectors of one ``<system>/<workload>``."""

    folder: Path
    system: str
    workload: str
    overheads: bool = True
    forecast: Callable | None = None
    model_path: Path | None = None  # a fitted model: service times from its posterior predictive
    stack: str = "tqsim"            # whose serving overheads (serving.json): tqsim's own server, or an imported stack
    notes: list = dataclasses.field(default_factory=list)
    _cache: dict = dataclasses.field(default_factory=dict)

    @classmethod
    def open(cls, home, system: str | None, workload: str | None, **kw) -> "WorkspaceInputs":
        from tqsim.data.workspace import Workspace

        ws = Workspace.at(home)
        system = ws.resolve_system(system)
        workload = ws.resolve_workload(system, workload)
        if kw.pop("service", "empirical") == "forecast":
            path = ws.model_path(system, workload)
            if not path.exists():
                raise UserError(f"no fitted model at {path}; run `tqsim fit` first, or use --service empirical.")
            kw["model_path"] = path
        return cls(ws.calibration_dir(system, workload), system, workload, **kw)

    def _attrs(self) -> list[dict]:
        """Every calibration file's attributes, each file read through the schema check (a truncated,
        empty or foreign file is refused naming the file, never an internal error)."""
        if "attrs" not in self._cache:
            from tqsim.data.io import calibration_files, read_calibration

            self._cache["attrs"] = [dict(read_calibration(p, self.workload).attrs, path=p)
                                    for p in calibration_files(self.folder)]
        return self._cache["attrs"]

    def variants(self) -> list[Variant]:
        """The calibrated (precision, backend, device) levels, each with its own service times and scores."""
        return sorted({_variant(a) for a in self._attrs()})

    def precisions(self) -> list[str]:
        return sorted({v.precision for v in self.variants()})

    def threads(self) -> list[int]:
        return sorted({int(a["threads"]) for a in self._attrs()})

    def batch_sizes(self, threads: int, precision: str, backend: str = "torch", device: str = "cpu") -> list[int]:
        variant = Variant(precision, backend, device)
        return sorted({int(a["batch_size"]) for a in self._attrs()
                       if int(a["threads"]) == threads and _variant(a) == variant})

    def _base(self, threads: int, variant: Variant) -> ServiceModel:
        """The service model of one (threads, variant), read once whatever the replicas: the planner asks for
        every candidate, and reading the calibration again for each was most of a plan's time."""
        key = ("base", threads, variant)
        if isinstance(self._cache.get(key), UserError):
            raise self._cache[key]
        if key in self._cache:
            return self._cache[key]
        if self.forecast is None and self.model_path is not None:
            self.forecast = {}
        if isinstance(self.forecast, dict):  # one callable per variant, from the fitted model
            if variant not in self.forecast:
                self.forecast[variant] = posterior_latency_fn(self._fitted(), *variant)
            base: ServiceModel = ForecastService(self.forecast[variant], threads, variant.precision)
        elif self.forecast is not None:
            base = ForecastService(self.forecast, threads, variant.precision)
        else:
            try:
                base = EmpiricalService.from_calibration_dir(self.folder, threads, *variant)
            except UserError as missing:     # asked again for each candidate of these threads: answered once
                self._cache[key] = missing
                raise
        self._cache[key] = base
        return base

    def service(self, threads: int, precision: str = "fp32", replicas: int = 1, backend: str = "torch",
                device: str = "cpu") -> ServiceModel:
        variant = Variant(precision, backend, device)
        key = (threads, variant, replicas)
        if key in self._cache:
            return self._cache[key]
        base = self._base(threads, variant)
        svc = base
        if self.overheads:
            oh, note = load_overheads(self.folder, replicas, threads, self.stack)
            if oh is not None:
                svc = WithOverheads(base, oh)
                if (backend, device) != ("torch", "cpu"):  # what `tqsim calibrate --serving` runs
                    note += (f", measured on torch/cpu: used as the nearest for {backend}/{device}, whose own "
                             "serving costs may differ")
            if note not in self.notes:
                self.notes.append(note)
        self._cache[key] = svc
        return svc

    def _fitted(self):
        if "fitted" not in self._cache:
            from tqsim.models.store import load

            self._cache["fitted"] = load(self.model_path)
        return self._cache["fitted"]

    def scores(self, precision: str = "fp32", backend: str = "torch", device: str = "cpu") -> np.ndarray:
        """Per-instance scores (in [0, 1]) measured at this variant: precision, backend and device change what
        the network computes, hence its quality."""
        variant = Variant(precision, backend, device)
        key = ("scores", variant)
        if key not in self._cache:
            from tqsim.data.io import read_calibration
            from tqsim.data.schema import instance_scores

            paths = [a["path"] for a in self._attrs() if _variant(a) == variant]
            if not paths:
                raise UserError(f"{variant.label()} was never calibrated, so its quality is unknown; calibrate it: "
                                f"`tqsim calibrate {_grid({f: [x] for f, x in variant._asdict().items()})}`.")
            self._cache[key] = instance_scores(read_calibration(paths[0])).values
        return self._cache[key]


def _variant(attrs: dict) -> Variant:
    return Variant(*(str(attrs[f]) for f in QUALITY_FACTORS))


def _grid(levels: dict[str, list]) -> str:
    """The ``--grid`` options that calibrate these levels, e.g. ``--grid backend=onnxruntime``."""
    return " ".join(f"--grid {f}={','.join(v)}" for f, v in levels.items())


def _choose_variants(src: WorkspaceInputs, asked: dict[str, Sequence[str]], one: bool = False) -> list[Variant]:
    """The calibrated variants whose levels are among those ``asked`` per factor (precision, backend, device;
    a factor not asked: every calibrated level). A level never calibrated is refused naming the calibrated ones
    and the fix. ``one`` (a what-if): a factor not asked takes its default (fp32, torch, cpu) when calibrated,
    else its only calibrated level; several others are refused, since a what-if simulates one variant."""
    have = src.variants()
    chosen, wanted = have, {}
    for factor in QUALITY_FACTORS:
        calibrated = sorted({getattr(v, factor) for v in have})
        levels = [parse_level(factor, x) for x in asked.get(factor) or []]
        if levels:
            wanted[factor] = levels
        missing = [x for x in levels if x not in calibrated]
        if missing:
            raise UserError(f"{factor} {', '.join(missing)} was never calibrated (calibrated: {', '.join(calibrated)}"
                            f"); calibrate it: `tqsim calibrate {_grid({factor: missing})}`.")
        left = sorted({getattr(v, factor) for v in chosen})
        if one and not levels:
            levels = [DEFAULTS[factor]] if DEFAULTS[factor] in left else left
            if len(levels) > 1:
                raise UserError(f"{factor} was calibrated at {', '.join(left)}, not at {DEFAULTS[factor]}: choose "
                                f"one with --{factor}, or calibrate {DEFAULTS[factor]}: `tqsim calibrate "
                                f"{_grid({factor: [DEFAULTS[factor]]})}`.")
        chosen = [v for v in chosen if not levels or getattr(v, factor) in levels]
    if not chosen:
        grid = _grid(wanted)
        raise UserError(f"{grid.replace('--grid ', '')} was never calibrated together (calibrated: "
                        f"{', '.join(v.label() for v in have)}); calibrate it: `tqsim calibrate {grid}`.")
    return chosen


def posterior_latency_fn(fitted, precision: str = "fp32", backend: str = "torch", device: str = "cpu",
                         n_draws: int = 40, n_passes: int = 6):
    """``draw_batch_latency(batch_size, threads, n, rng)`` from a fitted model (:mod:`tqsim.forecast`).

    Per (batch size, threads) it simulates ``n_passes`` passes for ``n_draws`` posterior draws once
    (cached), keeps full batches after the first of each pass, and answers a call by picking one
    posterior draw with ``rng.integers`` and resampling that draw's batch latencies. Within a draw the
    passes are pooled, so the machine effect varies per batch rather than per window (a simplification).
    Times above 100× their draw's median are capped (counted in ``draw_batch_latency.capped``).
    """
    from tqsim.factors import Config
    from tqsim.forecast import simulate_latency
    from tqsim.data.schema import batch_layout

    pools: dict = {}

    def draw_batch_latency(batch_size: int, threads: int, n: int, rng: np.random.Generator) -> np.ndarray:
        key = (batch_size, threads)
        if key not in pools:
            lat, _ = simulate_latency(fitted, Config(batch_size, threads, precision, backend, device),
                                      n_passes=n_passes, n_draws=n_draws, seed=batch_size * 1000 + threads)
            batch = batch_layout(lat.shape[-1], batch_size)
            first = batch_starts(batch)
            sizes = np.diff(np.r_[first, batch.size])
            keep = first[1:][sizes[1:] == batch_size] if first.size > 2 else first
            pool = lat[:, :, keep].reshape(lat.shape[0], -1)
            # A heavy-tailed residual can draw absurd times (hours, from a quick ADVI fit): one such
            # batch would block a simulated replica for the whole run. Cap at 100× the draw's median.
            cap = 100 * np.median(pool, axis=1, keepdims=True)
            # two threads of a pool may build the same (identical) pool: only the one stored counts its caps
            capped = np.minimum(pool, cap)
            if pools.setdefault(key, capped) is capped:
                draw_batch_latency.capped += int((pool > cap).sum())
        pool = pools[key]
        d = int(rng.integers(pool.shape[0]))
        return pool[d, rng.integers(0, pool.shape[1], n)]

    draw_batch_latency.capped = 0
    return draw_batch_latency


def _open(home, system, workload, overheads, forecast, service, stack) -> WorkspaceInputs:
    if service not in ("empirical", "forecast"):
        raise UserError(f"--service {service}: choose empirical (calibrated times, no fit) or forecast (fitted model).")
    src = WorkspaceInputs.open(home, system, workload, overheads=overheads, forecast=forecast, service=service,
                               stack=stack)
    if overheads and stack != "tqsim":
        from tqsim.data.serving_store import stacks
        from tqsim.serve import STACKS

        known = stacks(src.folder)
        how = (f"import its logs with `tqsim calibrate --serving-log FILE --setup '...,stack={stack}'` or measure it "
               f"with `--serving 'target=URL,...,stack={stack}'`")
        if stack not in known and stack not in STACKS:
            raise UserError(f"--stack {stack}: no serving calibration of that stack in {src.folder} (calibrated: "
                            f"{', '.join(known) or 'none'}; tqsim serves: {', '.join(STACKS)}); {how}.")
        if stack not in known:  # a stack tqsim can serve, not yet measured: say what stands in for it
            src.stack = "tqsim"
            src.notes.append(f"stack {stack} has no serving calibration here; tqsim's own server's overheads stand "
                             f"in for it: {how}.")
    return src


@dataclasses.dataclass
class Sweep:
    """What `tqsim whatif` computed: one ``whatif`` result (docs/design.md) per (rate, replicas, threshold)."""

    system: str
    workload: str
    service_model: str
    results: list[dict]
    notes: list[str]

    def as_dict(self) -> dict:
        return {"system": self.system, "workload": self.workload, "interval": INTERVAL, "notes": self.notes,
                "service_model": self.service_model, "results": self.results}


def whatif_sweep(*, home=None, system=None, workload=None, rates: Sequence[float] = (300.0,),
                 replicas: Sequence[int] = (1,), threads: int = 1, max_batch: int = 1, max_wait_s: float = 0.0,
                 thresholds_s: Sequence[float] = (0.02,), precision: str | None = None, backend: str | None = None,
                 device: str | None = None, trace=None, draws: int = 40,
                 windows: int = 100, tail_q: float = 0.01, overheads: bool = True, forecast=None,
                 service: str = "empirical", seed: int = 0, progress: Callable[[str], None] | None = None,
                 pool=None, stack: str = "tqsim") -> Sweep:
    """The ``tqsim whatif`` computation over every (replicas, rate) of one calibrated variant (precision, backend,
    device: :func:`_choose_variants`), with the serving overheads of ``stack``; seconds and numbers in, a
    :class:`Sweep` out.
    The simulations run on ``pool`` (:mod:`tqsim.parallel`; default: this thread), each seeded by its rate and
    replicas, so the sweep is the same on any pool."""
    from tqsim.whatif.simulator import ServingSetup, read_trace, simulate_job

    rate_list = list(rates) if trace is None else [None]
    rep_list = [int(r) for r in replicas]
    thr = [float(t) for t in thresholds_s]
    if not rate_list:
        raise UserError("give at least one rate, e.g. --rate 300 or --rate 100,200,400.")
    if not rep_list or min(rep_list) < 1:
        raise UserError(f"replicas {rep_list}: give whole numbers ≥ 1, e.g. --replicas 1,2.")
    if not thr:
        raise UserError("give a deadline with --threshold, e.g. --threshold 20ms.")
    if not 0 < tail_q < 1:
        raise UserError(f"tail-q={tail_q}: must lie strictly between 0 and 1.")
    wait = float(max_wait_s)
    for r in rate_list:
        if r is not None and not r > 0:
            raise UserError(f"rate={r:g}: must be a positive number of requests per second.")
    src = _open(home, system, workload, overheads, forecast, service, stack)
    asked = {"precision": precision, "backend": backend, "device": device}
    variant = _choose_variants(src, {f: [level] for f, level in asked.items() if level}, one=True)[0]
    arrivals = read_trace(trace) if trace is not None else None
    shared: dict = {"services": {}, "scores": {variant: src.scores(*variant)}}
    jobs = []
    for reps in rep_list:
        setup = ServingSetup(int(reps), int(threads), int(max_batch), wait, *variant)
        svc = shared["services"][reps] = src.service(threads, variant.precision, reps, variant.backend, variant.device)
        fastest = svc.min_service_s()
        if min(thr) < fastest:
            raise UserError(f"threshold {min(thr) * 1e3:g} ms is below the fastest possible service time "
                            f"({fastest * 1e3:.3g} ms for one request on an idle replica): every request misses.")
        for i, rate in enumerate(rate_list):
            jobs.append((reps, variant, setup, dict(thresholds_s=thr, rate_rps=rate, arrivals_s=arrivals,
                                                      n_windows=windows, draws=draws, tail_q=tail_q,
                                                      seed=seed + 1000 * i + reps)))
    done = reporting(progress, len(jobs), lambda i: f"{jobs[i][0]} replica(s), " + (
        f"{jobs[i][3]['rate_rps']:g} req/s" if arrivals is None else "trace"))
    results = [r for wi in (pool or SERIAL).map(simulate_job, jobs, shared, done) for r in wi.results()]
    calibrated = src.batch_sizes(threads, *variant)
    notes = list(src.notes)
    capped = sum(getattr(f, "capped", 0) for f in (src.forecast or {}).values()) if isinstance(src.forecast, dict) else 0
    if capped:
        notes.append(f"{capped} posterior-predictive batch times above 100× their draw's median were capped; "
                     "check the fit (`tqsim fit` diagnostics) before trusting tails.")
    for note in dict.fromkeys(svc.oh.beyond_fitted(rate_list) for svc in shared["services"].values()
                              if isinstance(svc, WithOverheads)):
        if note:
            notes.append(note)
    fe = max((getattr(svc, "frontend_s", 0.0) for svc in shared["services"].values()), default=0.0)
    if fe > 0:  # the replicas' utilisation does not show a front end that saturates first
        notes.append("the stack's serial front end (fitted from its request logs) is busy " + ", ".join(
            f"{min(rate * fe, 1.0):.0%} at {rate:g}/s" for rate in rate_list if rate) + f" ({fe * 1e3:.2g} ms a "
            f"request): it saturates at {1 / fe:.0f} req/s whatever the replicas.")
    sat = sorted({(r["rate_rps"], r["replicas"]) for r in results if r["saturated"]})
    if sat:
        notes.append("saturated (replicas ≥ 97% busy, the queue grows without bound; latencies grow with the "
                     "simulated duration): " + ", ".join(f"{rate:g}/s × {reps} replica(s)" for rate, reps in sat))
    if src.forecast is None and calibrated and max_batch > max(calibrated):
        notes.append(f"batch sizes above {max(calibrated)} were never calibrated; their service time is "
                     "extrapolated log-linearly (calibrate them for a trustworthy answer).")
    return Sweep(src.system, src.workload, "empirical" if src.forecast is None else "forecast", results, notes)


def plan_from_workspace(objective: Objective, rate: float, cores: int, *, home=None, system=None, workload=None,
                        confidence: float = 0.9, max_batches: Sequence[int] | None = None,
                        max_waits_s: Sequence[float] | None = None, precisions: Sequence[str] | None = None,
                        backends: Sequence[str] | None = None, devices: Sequence[str] | None = None,
                        cost: str = "cores", draws: int = 30, windows: int = 100, overheads: bool = True, forecast=None,
                        service: str = "empirical", seed: int = 0, progress: Callable[[str], None] | None = None,
                        pool=None, stack: str = "tqsim"):
    """The ``tqsim plan`` computation over every calibrated variant among those asked (none asked: all), the
    cheapest by ``cost`` (``"cores"`` or ``"gpus"``), with the serving overheads of ``stack``: a
    :class:`~tqsim.whatif.planner.Plan` whose notes say what it assumed; its simulations run on ``pool``
    (:mod:`tqsim.parallel`; default: this thread)."""
    from tqsim.whatif.planner import MAX_BATCHES, MAX_WAITS_S, plan

    src = _open(home, system, workload, overheads, forecast, service, stack)
    space = {"max_batches": list(max_batches) if max_batches else MAX_BATCHES,
             "max_waits_s": list(max_waits_s) if max_waits_s else MAX_WAITS_S,
             "variants": _choose_variants(src, {"precision": precisions, "backend": backends, "device": devices})}
    result = plan(objective, float(rate), cores, src.service, src.scores, confidence=confidence, draws=draws,
                  n_windows=windows, seed=seed, progress=progress, pool=pool, cost=cost, **space)
    result.notes, result.workload = list(src.notes) + result.notes, src.workload
    return result
