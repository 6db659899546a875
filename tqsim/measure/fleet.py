"""A calibration campaign on a fleet of machines (Dask distributed; docs/design.md, "Fleets").

Each pass is a Dask task routed by the worker resource ``system:<name>`` to a worker of that system. The
worker measures it with the same :class:`~tqsim.measure.campaign.PassMeter` a local campaign uses, holding the
``distributed.Lock`` named by its host name (one timing task per host: two workers on one machine never time
together) and sends the pass back; the client writes it through the same
:class:`~tqsim.measure.campaign.CampaignFiles`, so the workspace is the client's alone (no shared filesystem),
rounds and sessions are kept per system exactly as a local campaign keeps them, and a worker lost mid-pass loses
only that pass: the scheduler gives the task to another worker of the system, or the client submits it again.
"""

from __future__ import annotations

import contextlib
import dataclasses
import socket
import threading
import time
import warnings
from typing import Any, Callable, Iterator

from tqsim import interrupts
from tqsim.cluster import system_resource, workers_by_system
from tqsim.data.io import remove_stale_temporaries
from tqsim.data.lock import calibration_lock
from tqsim.data.workspace import Workspace, safe_name
from tqsim.errors import UserError
from tqsim.factors import Config
from tqsim.measure.campaign import CampaignFiles, CampaignResult, Measured, PassMeter, Progress, RecordStart
from tqsim.measure.fingerprint import fingerprint_mismatch
from tqsim.measure.inventory import system_fingerprint
from tqsim.measure.plan import Plan

WORKER_GRACE_S = 30.0   # a system left without any worker this long is given up (a nanny restarts one in seconds)
WATCH_S = 1.0           # how often the client asks the scheduler which workers are there
TICK_S = 0.05           # the shortest wait for a pass in flight (local state: no message sent)
LOCK_PREFIX = "tqsim-timing-"
MAX_KILLED = 1          # a pass whose task Dask gave up (KilledWorker) is submitted again this many times

# ---------------------------------------------------------------------------------------------------------------
# the worker's side: tasks run in the worker's process, which keeps the workload and its runners between passes

_METERS: dict[tuple, PassMeter] = {}
_METERS_GUARD = threading.Lock()
_FINGERPRINT: dict = {}


def host_lock_name(host: str | None = None) -> str:
    """The ``distributed.Lock`` every timing task on ``host`` holds: one timing task per host at a time."""
    return LOCK_PREFIX + (host or socket.gethostname())


@contextlib.contextmanager
def _host_turn() -> Iterator[None]:
    """Hold this host's lock for the whole task: building a model or timing a pass here would disturb another
    worker's pass on the same machine. A dead holder's lease expires (``distributed.scheduler.locks.lease-timeout``)."""
    from distributed import Lock

    lock = Lock(host_lock_name())
    lock.acquire()
    try:
        yield
    finally:
        lock.release()


def worker_fingerprint() -> dict:
    """This worker's machine, read once per process (``client.run`` asks every worker before anything is measured)."""
    from tqsim.measure.fingerprint import fingerprint

    if not _FINGERPRINT:
        _FINGERPRINT.update(fingerprint())
    return dict(_FINGERPRINT)


def _meter(spec: str, data: str | None) -> PassMeter:
    from tqsim.measure.backends import prepare
    from tqsim.workloads.registry import resolve_workload

    with _METERS_GUARD:
        meter = _METERS.get((spec, data))
        if meter is None:
            meter = _METERS[(spec, data)] = PassMeter(resolve_workload(spec, data), prepare)
        return meter


def describe_on_worker(spec: str, data: str | None, plan: Plan) -> dict:
    """Build the workload on this worker and check every level of ``plan`` here, before anything is measured:
    what the client needs to open the files (name, digest, metric) and the warnings this machine gives."""
    from tqsim.measure.backends import check_supported
    from tqsim.measure.campaign import validate_plan

    with _host_turn():
        workload = _meter(spec, data).workload
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            validate_plan(plan, workload, lambda config: check_supported(config, workload))
    return {"name": workload.name, "digest": workload.digest, "metric": workload.metric_name,
            "warnings": [str(w.message) for w in caught if issubclass(w.category, UserWarning)]}


def _quiet_worker(worker) -> None:
    """Stop the worker's statistical profiler: every 10 ms it takes the GIL to sample each thread's stack, in
    the middle of a timed pass. Stopped on the worker's own event loop (tornado callbacks are not thread-safe)."""
    for name in ("profile", "profile-cycle"):
        callback = worker.periodic_callbacks.get(name)
        if callback is not None:
            worker.loop.add_callback(callback.stop)


def measure_on_worker(spec: str, data: str | None, config: Config, start: RecordStart | None) -> dict:
    """One pass of ``config`` (its first also starts the record, with this worker's fingerprint in it)."""
    from distributed import get_worker

    _quiet_worker(get_worker())     # cheap, and a restarted profiler (a worker reconfigured) is stopped again
    with _host_turn():
        fp = worker_fingerprint()
        measured = _meter(spec, data).measure(config, dataclasses.replace(start, fingerprint=fp) if start else None)
    return {"measured": measured, "fingerprint": fp, "worker": get_worker().address}


# ---------------------------------------------------------------------------------------------------------------
# the client's side


@dataclasses.dataclass
class _WorkloadInfo:
    """What ``CampaignFiles`` reads of the workload (the client never builds it): told by a worker."""

    name: str
    digest: str


@dataclasses.dataclass
class FleetResult:
    workload: str
    metric: str
    session: int
    elapsed_s: float
    systems: dict[str, CampaignResult]
    warnings: list[str]


def choose_systems(client: Any, address: str, wanted: list[str]) -> dict[str, list[str]]:
    """The systems to calibrate and their workers: every declared one, or the ``wanted`` ones (each must be)."""
    declared = workers_by_system(client)
    for name in declared:
        if safe_name(name) != name:
            raise UserError(f"a worker declares system '{name}', which is not usable as a folder name; declare it "
                            f"as e.g. --resources 'system:{safe_name(name)}=1'.")
    if not wanted:
        if not declared:
            raise UserError(f"no worker of {address} declares a system; start each with "
                            "`dask worker ADDRESS --nthreads 1 --resources 'system:NAME=1'`.")
        return dict(sorted(declared.items()))
    missing = [s for s in wanted if s not in declared]
    if missing:
        known = f" (declared: {', '.join(sorted(declared))})" if declared else ""
        raise UserError(f"no worker of {address} declares system '{missing[0]}'{known}; start one with "
                        f"`dask worker {address} --nthreads 1 --resources '{system_resource(missing[0])}=1'`.")
    return {s: declared[s] for s in wanted}


def _remote(error: BaseException) -> BaseException:
    """A task's failure as the user can fix it: a scheduler or worker that cannot load tqsim's tasks runs another
    environment (the scheduler unpickles every task); anything else as it was raised (a UserError stays one)."""
    text = str(error)
    if (isinstance(error, RuntimeError) and "deserializ" in text) or \
            (isinstance(error, ImportError) and "tqsim" in text):
        return UserError("the Dask scheduler or a worker cannot load tqsim's tasks (another environment): start "
                         "`dask scheduler` and every `dask worker` where this tqsim is installed (pip install "
                         "'tqsim[cluster]').")
    return error


def _refusal(system: str, worker: str, mismatch: str) -> str:
    return (f"worker {worker} declares system '{system}' but is another machine ({mismatch}); give it a system name "
            f"of its own (--resources 'system:OTHER=1'), or pass --force to measure it as '{system}'.")


class _Lane:
    """One system's campaign: its files, the rest of its round in progress, and its passes in flight (at most one
    per host of the system, so a round keeps its order on a system of one machine)."""

    def __init__(self, system: str, files: CampaignFiles, progress: Progress, reference: dict | None, force: bool,
                 spec: str, data: str | None):
        self.system, self.files, self.progress, self.reference, self.force = system, files, progress, reference, force
        self.spec, self.data = spec, data
        self.queue: list[Config] = files.round()
        self.inflight: dict[Any, Config] = {}
        self.alone_since: float | None = None
        self.problem: str | None = None
        self.width = 1
        self.killed: dict[Config, int] = {}

    @property
    def active(self) -> bool:
        return self.problem is None and bool(self.queue or self.inflight)

    def fill(self, client: Any) -> None:
        while self.problem is None and self.queue and len(self.inflight) < self.width:
            config = self.queue.pop(0)
            future = client.submit(measure_on_worker, self.spec, self.data, config, self.files.start(config, {}),
                                   resources={system_resource(self.system): 1}, pure=False,
                                   key=f"tqsim-pass-{self.system}-{config.id}-{time.time_ns()}")
            self.inflight[future] = config

    def receive(self, future: Any) -> None:
        """Write a finished pass; give a lost one back to the queue; refuse a pass from another machine."""
        from distributed import KilledWorker

        config = self.inflight.pop(future)
        if future.status != "finished":
            error = future.exception() if future.status == "error" else None
            if error is not None and not isinstance(error, KilledWorker):
                raise _remote(error) from None
            if error is not None:   # the scheduler gave up after its workers died under it (allowed-failures)
                self.killed[config] = self.killed.get(config, 0) + 1
                if self.killed[config] > MAX_KILLED:
                    raise UserError(f"every worker of system '{self.system}' that measured {config.id} died during "
                                    "its pass (out of memory?); drop that level, or give the workers more memory.")
            self.queue.insert(0, config)   # measured again, on any worker of the system
            return
        out = future.result()
        if self.reference is None:
            self.reference = out["fingerprint"]
        mismatch = fingerprint_mismatch(self.reference, out["fingerprint"])
        if mismatch and not self.force:
            self.stop(_refusal(self.system, out["worker"], mismatch))
            return
        measured: Measured = out["measured"]
        interrupts.check()  # a Ctrl-C swallowed while waiting stops here, before the write
        self.files.add(config, measured)
        self.progress.advance(config.id)
        if not self.queue and not self.inflight:
            self.files.next_round()
            self.queue = self.files.round()

    def watch(self, workers: list[str], address: str) -> None:
        """Follow the system's workers: a pass in flight per host; given up when none has declared it for
        ``WORKER_GRACE_S`` (until then the scheduler holds its pass in flight for the next worker of the system)."""
        self.width = max(_hosts(workers), 1)
        if workers or not self.active:
            self.alone_since = None
            return
        self.alone_since = self.alone_since or time.monotonic()
        if time.monotonic() - self.alone_since > WORKER_GRACE_S:
            self.stop(f"system '{self.system}' lost its last worker ({WORKER_GRACE_S:.0f} s ago) with "
                      f"{self.files.missing()} passes to go; start one (`dask worker {address} --nthreads 1 "
                      f"--resources '{system_resource(self.system)}=1'`) and run the same command again: it measures "
                      "only what is missing.")

    def stop(self, problem: str) -> None:
        self.problem = problem
        self.cancel()
        self.queue.clear()

    def cancel(self) -> None:
        for future in self.inflight:
            future.cancel()
        self.inflight.clear()


def _until_one_finishes(futures: list, timeout: float) -> None:
    """Block until a pass in flight finishes (at once, not at the next tick: a polling sleep cost ~25 ms a pass)
    or ``timeout`` runs out (the client then looks at the workers again)."""
    from distributed import wait

    if not futures:
        time.sleep(TICK_S)
        return
    try:
        wait(futures, timeout=max(timeout, TICK_S), return_when="FIRST_COMPLETED")
    except TimeoutError:
        pass


def _hosts(addresses: list[str]) -> int:
    """Distinct machines among workers' addresses (``tcp://HOST:PORT``): how many passes a system runs at once."""
    return len({a.split("://")[-1].rsplit(":", 1)[0] for a in addresses})


def _gather(client: Any, futures: dict, address: str) -> dict:
    """Results of one task per system, giving up a system that keeps no worker for ``WORKER_GRACE_S``."""
    alone: dict[str, float] = {}
    last_watch = time.monotonic()
    while not all(f.done() for f in futures.values()):
        time.sleep(TICK_S)
        if time.monotonic() - last_watch < WATCH_S:
            continue
        last_watch = time.monotonic()
        declared = workers_by_system(client)
        for system, future in futures.items():
            if future.done() or declared.get(system):
                alone.pop(system, None)
            elif time.monotonic() - alone.setdefault(system, time.monotonic()) > WORKER_GRACE_S:
                raise UserError(f"system '{system}' has no worker any more; start one (`dask worker {address} "
                                f"--nthreads 1 --resources '{system_resource(system)}=1'`) and run the command again.")
    try:
        return {s: f.result() for s, f in futures.items()}
    except (RuntimeError, ImportError) as exc:
        raise _remote(exc) from None


def calibrate_fleet(client: Any, address: str, plan: Plan, spec: str, *, data: str | None, workspace: Workspace,
                    systems: list[str], fresh: bool = False, force: bool = False,
                    stop_when: Callable | None = None, progress: Callable[[str], Progress] = lambda s: Progress()
                    ) -> FleetResult:
    """Measure ``plan`` of workload ``spec`` on every system the cluster's workers declare (or on ``systems``)
    into ``workspace``, resuming from its files; ``progress(system)`` gives each system's progress callbacks.

    Refused before anything is measured: a system no worker declares, a worker whose machine differs from its
    system's calibration (unless ``force``), the workload or a level a worker cannot run. Systems whose every worker
    left for good are reported at the end (the others finish), as a :class:`UserError` naming the fix."""
    chosen = choose_systems(client, address, systems)
    workspace.check_writable()
    try:
        fingerprints = client.run(worker_fingerprint, workers=[w for ws in chosen.values() for w in ws])
    except (RuntimeError, ImportError) as exc:
        raise _remote(exc) from None
    references = {s: system_fingerprint(workspace, s) for s in chosen}
    for system, workers in chosen.items():
        for worker in workers:
            if references[system] is None:
                references[system] = fingerprints[worker]
            mismatch = fingerprint_mismatch(references[system], fingerprints[worker])
            if mismatch and not force:
                raise UserError(_refusal(system, worker, mismatch))
    described = _gather(client, {s: client.submit(describe_on_worker, spec, data, plan, pure=False,
                                                  resources={system_resource(s): 1}) for s in chosen}, address)
    notes = list(dict.fromkeys(f"system {s}: {n}" for s, d in described.items() for n in d["warnings"]))
    t0, session = time.perf_counter(), time.time_ns() // 1000
    with contextlib.ExitStack() as stack:
        lanes = []
        for system in chosen:
            info = _WorkloadInfo(described[system]["name"], described[system]["digest"])
            folder = workspace.calibration_dir(system, info.name)
            workspace.check_writable(folder)
            stack.enter_context(calibration_lock(folder))
            remove_stale_temporaries(folder)
            files = CampaignFiles(plan, folder, system, info, fresh=fresh, stop_when=stop_when, session=session)
            lanes.append(_Lane(system, files, progress(system), references[system], force, spec, data))
        for lane in lanes:
            lane.progress.start(lane.files.missing())
        try:
            last_watch = -WATCH_S
            while any(lane.active for lane in lanes):
                if time.monotonic() - last_watch >= WATCH_S:
                    last_watch = time.monotonic()
                    declared = workers_by_system(client)
                    for lane in lanes:
                        lane.watch(declared.get(lane.system, []), address)
                for lane in lanes:
                    lane.fill(client)
                done = [(lane, f) for lane in lanes for f in lane.inflight if f.status != "pending"]
                if not done:
                    _until_one_finishes([f for lane in lanes for f in lane.inflight],
                                        WATCH_S - (time.monotonic() - last_watch))
                for lane, future in done:
                    if future in lane.inflight:   # a refusal may have stopped the lane meanwhile
                        lane.receive(future)
        finally:
            for lane in lanes:
                lane.cancel()
    results = {lane.system: lane.files.result((fingerprints.get(chosen[lane.system][0]) or {}).get("cpu_count"))
               for lane in lanes}
    problems = [lane.problem for lane in lanes if lane.problem]
    if problems:
        raise UserError(" ".join(problems))
    first = next(iter(described.values()))
    return FleetResult(first["name"], first["metric"], session, time.perf_counter() - t0, results, notes)
