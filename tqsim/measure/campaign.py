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
        files = CampaignFiles(plan, folder, system, workload, fresh=fresh, stop_when=stop_when)
        fp = fingerprint if fingerprint is not None else {}
        progress.start(files.missing())
        meter = PassMeter(workload, prepare, activate, clock)
        try:
            while batch := files.round():
                for config in batch:
                    measured = meter.measure(config, files.start(config, fp))
                    interrupts.check()  # a Ctrl-C swallowed during the pass stops here, before the write
                    files.add(config, measured)
                    progress.advance(config.id)
                files.next_round()
        finally:
            meter.close()
        return files.result(fp.get("cpu_count"))


@dataclasses.dataclass(frozen=True)
class RecordStart:
    """What a configuration's first pass needs to start its record: the file's system, fingerprint, warm-up, seed."""

    system: str
    fingerprint: dict
    warmup: int
    seed: int


@dataclasses.dataclass
class Measured:
    """One timed pass as the machine that ran it saw it; a configuration's first pass also brings the record
    it starts (quality pass, warm-up). Plain data, so a fleet's worker can send it to the client that writes."""

    ns: np.ndarray
    started: float
    load: dict
    record: ConfigRecord | None = None


class PassMeter:
    """Times passes of one workload on this machine, wherever the files are written (here, or by a fleet's
    client). Runners are kept between passes, except a compiled one, closed after its pass as always."""

    def __init__(self, workload: Any, prepare: Callable, activate: Callable[[Config], None] = set_torch_threads,
                 clock: Clock = time.perf_counter_ns):
        self.workload, self.prepare, self.activate, self.clock = workload, prepare, activate, clock
        self._runners: dict[Config, Any] = {}

    def measure(self, config: Config, start: RecordStart | None = None) -> Measured:
        """One pass of ``config``; with ``start``, first its record's quality pass and warm-up passes."""
        runner = self._runners.get(config)
        if runner is None:
            runner = self.prepare(self.workload, config)
            if not config.compile:
                self._runners[config] = runner
        try:
            self.activate(config)
            record = _new_record(config, self.workload, runner, start, self.clock) if start is not None else None
            started = time.time()
            before = load.read()
            ns = time_pass(runner, self.clock)
            return Measured(ns, started, load.between(before, load.read()), record)
        finally:
            if config.compile:
                runner.close()

    def close(self) -> None:
        for runner in self._runners.values():
            runner.close()
        self._runners.clear()


class CampaignFiles:
    """One ``<system>/<workload>`` campaign as its files hold it: which passes are missing, the numbering of
    rounds and of this session, and each configuration's file rewritten atomically after each of its passes.
    The caller holds the folder's calibration lock; the local loop and a fleet's client both write through here.

    ``workload`` needs only ``name`` and ``digest`` (a fleet's client never builds the model); ``session`` names
    this invocation (default: now, in µs since the epoch), the same in every file it writes."""

    def __init__(self, plan: Plan, folder: Path, system: str, workload: Any, *, fresh: bool = False,
                 stop_when: Callable[[ConfigRecord], bool] | None = None, session: int | None = None):
        self.plan, self.folder, self.system, self.stop_when = plan, folder, system, stop_when
        self.records: dict[Config, ConfigRecord | None] = {}
        for config in plan.configs:
            path = folder / f"{config.id}.nc"
            if path.exists() and fresh:
                path.unlink()
            if path.exists():
                rec = ConfigRecord.from_dataset(read_calibration(path))
                _check_compatible(rec, path, workload, system)
                self.records[config] = rec
            else:
                self.records[config] = None
        # rounds continue the numbering of every file in the folder, so that a round means one sweep in every
        # configuration's file; a session is this invocation, named by its start (µs since the epoch), so
        # that its id is the same in every file it wrote and differs from every other session's, in any workspace
        self.round_id = 1 + max((max(rec.rounds, default=-1) for rec in self.records.values() if rec is not None),
                                default=-1)
        for p in calibration_files(folder):
            if p.stem not in {c.id for c in plan.configs}:
                self.round_id = max(self.round_id, int(np.max(read_calibration(p)["round"].values, initial=-1)) + 1)
        self.session = session if session is not None else time.time_ns() // 1000
        self.loads: list[dict] = []  # this session's passes' load readings
        self.t_start = time.perf_counter()

    def _needs_more(self, config: Config) -> bool:
        rec = self.records[config]
        if rec is None:
            return True
        if rec.n_passes >= self.plan.passes:
            return False
        return not (self.stop_when is not None and rec.n_passes >= 2 and self.stop_when(rec))

    def missing(self) -> int:
        """Passes still to measure (at most: ``stop_when`` may end configurations earlier)."""
        return max(sum(self.plan.passes - (rec.n_passes if rec else 0) for rec in self.records.values()), 0)

    def round(self) -> list[Config]:
        """The configurations this round still measures, in its seeded shuffled order (empty: done)."""
        pending = [c for c in self.plan.configs if self._needs_more(c)]
        order = np.random.default_rng([self.plan.seed, self.round_id]).permutation(len(pending))
        return [pending[k] for k in order]

    def next_round(self) -> None:
        self.round_id += 1

    def start(self, config: Config, fingerprint: dict) -> RecordStart | None:
        """What the pass of ``config`` must also measure when it is the configuration's first (else None)."""
        if self.records[config] is not None:
            return None
        return RecordStart(self.system, fingerprint, self.plan.warmup, self.plan.seed)

    def add(self, config: Config, measured: Measured) -> None:
        """Append the pass to its configuration's record (starting it on the first) and rewrite its file."""
        if self.records[config] is None:
            if measured.record is None:
                raise RuntimeError(f"the first pass of {config.id} came without its record")
            self.records[config] = measured.record
        rec = self.records[config]
        rec.add_pass(measured.ns, self.round_id, measured.started, self.session, measured.load)
        write_atomic(rec.to_dataset(), self.folder / f"{config.id}.nc")
        self.loads.append(measured.load)

    def result(self, cpu_count: int | None) -> CampaignResult:
        final = [self.records[c] for c in self.plan.configs if self.records[c] is not None]
        busy = load.busy_note([d["other_cpu"] for d in self.loads], [d["steal"] for d in self.loads],
                              cpu_count) if self.loads else None
        return CampaignResult(self.folder, final, len(self.loads), time.perf_counter() - self.t_start,
                              self.session, busy)


def _new_record(config: Config, workload: Any, runner: Any, start: RecordStart, clock: Clock) -> ConfigRecord:
    """First visit of a configuration: the untimed quality pass, then the warm-up passes (kept apart).

    The quality pass scores each batch through the workload's metric as it goes (``top_k`` and a
    callable need the outputs, not only the predicted classes), so no output is kept after its batch.
    """
    from tqsim.workloads.metrics import resolve_metric

    metric = resolve_metric(workload.metric)
    labels = np.asarray(workload.labels)
    predictions, scores, begin = [], [], 0
    for args in runner.batches:
        output = runner.forward(args)
        pred = np.asarray(runner.predicted_classes(output)).reshape(-1)
        batch_labels = labels[begin:begin + pred.shape[0]]
        if pred.shape[0] == batch_labels.shape[0]:
            scores.append(metric.score(output, batch_labels, pred))
        predictions.append(pred)
        begin += pred.shape[0]
    prediction = np.concatenate(predictions)
    if prediction.shape[0] != workload.n_instances:
        raise UserError(f"workload {workload.name}: the model predicted {prediction.shape[0]} classes for "
                        f"{workload.n_instances} instances; its predict() must return one class per instance.")
    rec = ConfigRecord(config=config, workload=workload.name, system=start.system, metric=metric.name,
                       batch_of_instance=np.asarray(runner.batch_of_instance), prediction=prediction,
                       label=labels, score=np.concatenate(scores), fingerprint=start.fingerprint,
                       model_digest=workload.digest, instance_size=workload.instance_size,
                       extra_attrs={"warmup_passes": start.warmup, "priming_calls": PRIMING_CALLS,
                                    "seed": start.seed, "task": workload.task, **_source_attr(workload)})
    for _ in range(start.warmup):
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

