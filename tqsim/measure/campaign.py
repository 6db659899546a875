"""A calibration campaign: rounds of one pass per configuration in a seeded shuffled order.

Rounds interleave configurations so that machine-wide slow episodes (seconds long, docs/method.md)
hit every configuration alike and show up as a shared round effect instead of a factor effect.
Each configuration's file is rewritten atomically right after its pass, so a kill (even SIGKILL)
loses at most the pass in flight; a re-run reads the files and measures only what is missing.
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path
from typing import Any, Callable, Iterable

import numpy as np

from tqsim import interrupts
from tqsim.data.io import calibration_files, read_calibration, remove_stale_temporaries, write_atomic
from tqsim.data.lock import calibration_lock
from tqsim.data.workspace import Workspace
from tqsim.errors import UserError
from tqsim.factors import Config
from tqsim.measure import load
from tqsim.measure.plan import Plan
from tqsim.measure.record import ConfigRecord
from tqsim.measure.timing import PRIMING_CALLS, Clock, time_pass


@dataclasses.dataclass
class Progress:
    """Callbacks the CLI uses to draw a progress bar; the library itself prints nothing."""

    start: Callable[[int], None] = lambda total: None
    advance: Callable[[str], None] = lambda label: None


@dataclasses.dataclass
class CampaignResult:
    folder: Path
    records: list[ConfigRecord]
    measured_passes: int
    elapsed_s: float
    session: int = 0
    busy: str | None = None     # a warning when other programs shared the machine during this session


def set_torch_threads(config: Config) -> None:
    """Set and verify intra-op threads for the configuration about to be timed."""
    import torch

    torch.set_num_threads(config.threads)
    if torch.get_num_threads() != config.threads:
        raise UserError(f"torch refused threads={config.threads} (got {torch.get_num_threads()}); "
                        "unset OMP_NUM_THREADS/MKL_NUM_THREADS or choose another level.")


def _check_compatible(rec: ConfigRecord, path: Path, workload: Any, system: str) -> None:
    if rec.workload != workload.name or rec.system != system:
        raise UserError(f"{path} belongs to {rec.workload} on {rec.system}; refusing to mix it in. "
                        "Use another --home, or --fresh to start this campaign over.")
    if workload.digest and rec.model_digest and rec.model_digest != workload.digest:
        raise UserError(f"{path} was measured with a different model (weights {rec.model_digest} ≠ "
                        f"{workload.digest}); re-run with --fresh to start over, or use another --home.")


def validate_plan(plan: Plan, workload: Any, check_supported: Callable[[Config], None]) -> None:
    """Check every level before anything is measured (``check_supported`` warns about oversubscribed threads)."""
    n = workload.n_instances
    for config in plan.configs:
        if config.batch_size > n:
            raise UserError(f"batch_size={config.batch_size} is larger than the evaluation set of "
                            f"{workload.name} ({n} instances); use at most {n}.")
        check_supported(config)


def run_campaign(plan: Plan, workspace: Workspace, system: str, *, workload: Any, prepare: Callable,
                 check_supported: Callable[[Config], None] = lambda c: None,
                 activate: Callable[[Config], None] = set_torch_threads, fingerprint: dict | None = None,
                 fresh: bool = False, clock: Clock = time.perf_counter_ns, progress: Progress | None = None,
                 stop_when: Callable[[ConfigRecord], bool] | None = None) -> CampaignResult:
    """Measure ``plan`` on this system into ``workspace``; resume from the files already there.

    ``prepare(workload, config)`` returns a runner (``batches``, ``forward``, ``synchronize``,
    ``predicted_classes``, ``close``); it and ``clock`` are injectable for tests.
    ``stop_when(record)`` ends a configuration early (adaptive calibration); ``plan.passes`` is
    then the cap.
    """
    progress = progress or Progress()
    workspace.check_writable()
    validate_plan(plan, workload, check_supported)
    folder = workspace.calibration_dir(system, workload.name)
    workspace.check_writable(folder)  # a resume into a read-only folder: refused before anything runs
    with calibration_lock(folder):
        remove_stale_temporaries(folder)
        return _run_locked(plan, folder, system, workload=workload, prepare=prepare, activate=activate,
                           fingerprint=fingerprint, fresh=fresh, clock=clock, progress=progress, stop_when=stop_when)


def _run_locked(plan: Plan, folder: Path, system: str, *, workload: Any, prepare: Callable, activate: Callable,
                fingerprint: dict | None, fresh: bool, clock: Clock, progress: Progress,
                stop_when: Callable[[ConfigRecord], bool] | None) -> CampaignResult:
    records: dict[Config, ConfigRecord | None] = {}
    for config in plan.configs:
        path = folder / f"{config.id}.nc"
        if path.exists() and fresh:
            path.unlink()
        if path.exists():
            rec = ConfigRecord.from_dataset(read_calibration(path))
            _check_compatible(rec, path, workload, system)
            records[config] = rec
        else:
            records[config] = None
    # rounds continue the numbering of every file in the folder, so that a round means one sweep in every
    # configuration's file; a session is this invocation, named by its start (µs since the epoch), so
    # that its id is the same in every file it wrote and differs from every other session's, in any workspace
    round_id = 1 + max((max(rec.rounds, default=-1) for rec in records.values() if rec is not None), default=-1)
    for p in calibration_files(folder):
        if p.stem not in {c.id for c in plan.configs}:
            round_id = max(round_id, int(np.max(read_calibration(p)["round"].values, initial=-1)) + 1)
    session = time.time_ns() // 1000

    def needs_more(config: Config) -> bool:
        rec = records[config]
        if rec is None:
            return True
        if rec.n_passes >= plan.passes:
            return False
        return not (stop_when is not None and rec.n_passes >= 2 and stop_when(rec))

    todo = sum(plan.passes - (records[c].n_passes if records[c] else 0) for c in plan.configs)
    progress.start(max(todo, 0))
    runners: dict[Config, Any] = {}
    session_loads: list[dict] = []
    measured = 0
    t_start = time.perf_counter()
    fp = fingerprint if fingerprint is not None else {}
    try:
        while True:
            pending = [c for c in plan.configs if needs_more(c)]
            if not pending:
                break
            order = np.random.default_rng([plan.seed, round_id]).permutation(len(pending))
            for k in order:
                config = pending[k]
                runner = runners.get(config)
                if runner is None:
                    runner = prepare(workload, config)
                    if not config.compile:
                        runners[config] = runner
                activate(config)
                rec = records[config]
                if rec is None:
                    rec = _new_record(config, workload, system, runner, fp, plan, clock)
                    records[config] = rec
                started = time.time()
                before = load.read()
                ns = time_pass(runner, clock)
                reading = load.between(before, load.read())
                interrupts.check()  # a Ctrl-C swallowed during the pass stops here, before the write
                session_loads.append(reading)
                rec.add_pass(ns, round_id, started, session, reading)
                write_atomic(rec.to_dataset(), folder / f"{config.id}.nc")
                measured += 1
                progress.advance(config.id)
                if config.compile:
                    runner.close()
            round_id += 1
    finally:
        for runner in runners.values():
            runner.close()
    final = [records[c] for c in plan.configs if records[c] is not None]
    busy = load.busy_note([d["other_cpu"] for d in session_loads], [d["steal"] for d in session_loads],
                          (fp or {}).get("cpu_count")) if session_loads else None
    return CampaignResult(folder, final, measured, time.perf_counter() - t_start, session, busy)


def _new_record(config: Config, workload: Any, system: str, runner: Any, fp: dict, plan: Plan,
                clock: Clock) -> ConfigRecord:
    """First visit of a configuration: the untimed quality pass, then the warm-up passes (kept apart).

    The quality pass scores each batch through the workload's metric as it goes (``top_k`` and a
    callable need the outputs, not only the predicted classes), so no output is kept after its batch.
    """
    from tqsim.workloads.metrics import resolve_metric

    metric = resolve_metric(workload.metric)
    labels = np.asarray(workload.labels)
    predictions, scores, start = [], [], 0
    for args in runner.batches:
        output = runner.forward(args)
        pred = np.asarray(runner.predicted_classes(output)).reshape(-1)
        batch_labels = labels[start:start + pred.shape[0]]
        if pred.shape[0] == batch_labels.shape[0]:
            scores.append(metric.score(output, batch_labels, pred))
        predictions.append(pred)
        start += pred.shape[0]
    prediction = np.concatenate(predictions)
    if prediction.shape[0] != workload.n_instances:
        raise UserError(f"workload {workload.name}: the model predicted {prediction.shape[0]} classes for "
                        f"{workload.n_instances} instances; its predict() must return one class per instance.")
    rec = ConfigRecord(config=config, workload=workload.name, system=system, metric=metric.name,
                       batch_of_instance=np.asarray(runner.batch_of_instance), prediction=prediction,
                       label=labels, score=np.concatenate(scores), fingerprint=fp, model_digest=workload.digest,
                       instance_size=workload.instance_size,
                       extra_attrs={"warmup_passes": plan.warmup, "priming_calls": PRIMING_CALLS, "seed": plan.seed,
                                    "task": workload.task, **_source_attr(workload)})
    for _ in range(plan.warmup):
        rec.warmup_ns.append(time_pass(runner, clock))
    return rec


def _source_attr(workload: Any) -> dict:
    """Where a model-file workload came from (files, digests), so `tqsim check` can rebuild it unaided."""
    import json

    source = getattr(workload, "source", None)
    return {SOURCE_ATTR: json.dumps(source, sort_keys=True)} if source else {}


SOURCE_ATTR = "workload_source"


def summarise(records: Iterable[ConfigRecord]) -> list[dict]:
    """Per-configuration passes, latency percentiles, quality and outlier count, for the closing table."""
    from tqsim.measure.timing import flag_outliers
    from tqsim.quality import no_deadline_quality

    rows = []
    for rec in records:
        lat = rec.batch_latency_s()
        flat = lat.reshape(-1)
        rows.append({
            "config": rec.config.as_dict(), "config_id": rec.config.id, "passes": rec.n_passes,
            "latency_s": {"p50": float(np.percentile(flat, 50)), "p99": float(np.percentile(flat, 99))},
            "quality": no_deadline_quality(score=rec.score, prediction=rec.prediction, label=rec.label,
                                           metric=rec.metric),
            "metric": rec.metric,
            "outliers": int(flag_outliers(flat).sum()), "calls": int(flat.size),
            "inferences": int(rec.n_passes * rec.batch_of_instance.size),
        })
    return rows

