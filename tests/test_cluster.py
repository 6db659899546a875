"""`tqsim calibrate --cluster` on a real Dask cluster on loopback: a `dask scheduler` and `dask worker`s declaring
systems (`--resources 'system:NAME=1'`), as the README starts them; the CLI as a user runs it; workers killed."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("distributed")

from tests.cli_runner import run_cli  # noqa: E402
from tests.conftest import ENV, ROOT  # noqa: E402
from tqsim.data.io import calibration_files, read_calibration  # noqa: E402
from tqsim.data.schema import batch_latency  # noqa: E402

# every process of the fleet imports this checkout's tqsim (the scheduler unpickles the tasks too); a dead worker's
# hold on its host's timing lock lapses in 3 s instead of 30
FLEET_ENV = dict(ENV, PYTHONPATH=os.pathsep.join([str(ROOT), *filter(None, [ENV.get("PYTHONPATH")])]),
                 DASK_DISTRIBUTED__SCHEDULER__LOCKS__LEASE_TIMEOUT="3s",
                 DASK_DISTRIBUTED__SCHEDULER__LOCKS__LEASE_VALIDATION_INTERVAL="1s")
DASK = str(Path(sys.executable).with_name("dask"))
CAL = ["calibrate", "--workload", "digits-mlp", "--grid", "batch_size=1,4", "--warmup", "1"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Fleet:
    """A scheduler and workers in their own process groups (a kill takes a nanny and its worker together)."""

    def __init__(self):
        self.address = f"tcp://127.0.0.1:{_free_port()}"
        self.procs: list[subprocess.Popen] = []
        self.scheduler = self._start([DASK, "scheduler", "--host", "127.0.0.1", "--port",
                                      self.address.rsplit(":", 1)[1], "--no-dashboard"])

    def _start(self, cmd: list[str]) -> subprocess.Popen:
        proc = subprocess.Popen(cmd, env=FLEET_ENV, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                start_new_session=True)
        self.procs.append(proc)
        return proc

    def worker(self, system: str) -> subprocess.Popen:
        return self._start([DASK, "worker", self.address, "--nworkers", "1", "--nthreads", "1", "--no-dashboard",
                            "--resources", f"system:{system}=1"])

    def wait_for(self, counts: dict[str, int], timeout: float = 60) -> None:
        """Until the scheduler lists exactly ``counts`` workers of each named system."""
        from distributed import Client

        from tqsim.cluster import workers_by_system

        deadline = time.time() + timeout
        with Client(self.address, timeout=timeout) as client:
            while {s: len(workers_by_system(client).get(s, [])) for s in counts} != counts:
                assert time.time() < deadline, f"workers {counts} never joined {self.address}"
                time.sleep(0.2)

    @staticmethod
    def kill(proc: subprocess.Popen) -> None:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(30)

    def close(self) -> None:
        for proc in reversed(self.procs):
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(30)


@pytest.fixture(scope="module")
def fleet():
    f = Fleet()
    try:
        f.worker("alpha")
        f.worker("beta")
        f.wait_for({"alpha": 1, "beta": 1})
        yield f
    finally:
        f.close()


def tqsim(*args, home: Path, timeout: float = 240) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "tqsim", *map(str, args), "--home", str(home)], capture_output=True,
                          text=True, env=FLEET_ENV, cwd=ROOT, timeout=timeout)


def passes_on_disk(folder: Path) -> dict[str, np.ndarray]:
    """Each configuration's latencies, (pass, instance)."""
    return {p.stem: read_calibration(p)["latency_s"].values for p in calibration_files(folder)} \
        if folder.is_dir() else {}


def test_two_systems_calibrate_from_one_command_and_systems_lists_both(fleet, tmp_path):
    res = tqsim(*CAL, "--passes", "3", "--cluster", fleet.address, "--json", home=tmp_path)
    assert res.returncode == 0, res.stderr
    out = json.loads(res.stdout)
    assert out["measured_passes"] == 12 and [s["system"] for s in out["systems"]] == ["alpha", "beta"]
    assert all(c["passes"] == 3 and c["quality"] > 0.9 for s in out["systems"] for c in s["configs"])
    spans = []
    for system in ("alpha", "beta"):
        files = calibration_files(tmp_path / "calibration" / system / "digits-mlp")
        assert [f.stem for f in files] == ["bs1-th1-fp32-torch-cpu", "bs4-th1-fp32-torch-cpu"]
        for f in files:
            ds = read_calibration(f)
            assert ds["round"].values.tolist() == [0, 1, 2] and ds.sizes["warmup_pass"] == 1
            assert set(ds["session"].values.tolist()) == set(out["sessions"])      # one session, every file
            assert json.loads(ds.attrs["fingerprint"])["hostname"] == socket.gethostname()
            ends = ds["pass_started_at"].values + batch_latency(ds).values.sum(axis=1)
            spans += list(zip(ds["pass_started_at"].values, ends))
    spans.sort()
    # one timing task per host: the two systems' workers share this machine, so no two passes overlap in time
    assert all(a_end <= b_start for (_, a_end), (b_start, _) in zip(spans, spans[1:]))
    listing = json.loads(tqsim("systems", "--json", home=tmp_path).stdout)
    assert [s["system"] for s in listing["systems"]] == ["alpha", "beta"]
    assert all(s["fingerprint"]["cpu_count"] == os.cpu_count() for s in listing["systems"])
    # a worker that timed passes no longer runs Dask's statistical profiler (it takes the GIL every 10 ms)
    from distributed import Client

    with Client(fleet.address, timeout=30) as client:
        running = client.run(lambda dask_worker: dask_worker.periodic_callbacks["profile"].is_running())
    assert running and not any(running.values())


def test_cluster_local_measures_this_machine_as_one_system(tmp_path):
    res = tqsim(*CAL, "--passes", "2", "--cluster", "local", "--system", "solo", "--json", home=tmp_path)
    assert res.returncode == 0, res.stderr
    assert json.loads(res.stdout)["systems"][0]["system"] == "solo"
    assert {k: len(v) for k, v in passes_on_disk(tmp_path / "calibration/solo/digits-mlp").items()} == \
        {"bs1-th1-fp32-torch-cpu": 2, "bs4-th1-fp32-torch-cpu": 2}


@pytest.mark.parametrize("args, message", [
    (["--system", "gamma"], "--resources 'system:gamma=1'"),
    (["--system", "alpha,gamma"], "system 'gamma'"),
    (["--sessions", "2"], "--sessions 2 with --cluster"),
])
def test_a_system_no_worker_declares_is_refused_naming_the_flag(fleet, tmp_path, capsys, monkeypatch, args, message):
    code, out, err = run_cli([*CAL, "--cluster", fleet.address, *args, "--home", tmp_path], capsys, monkeypatch)
    assert code == 2 and message in err, err
    assert len(err.strip().splitlines()) <= 2 and not list(tmp_path.rglob("*.nc"))


def test_an_unreachable_scheduler_is_refused_within_10_s(tmp_path, capsys, monkeypatch):
    t0 = time.time()
    code, out, err = run_cli([*CAL, "--cluster", f"tcp://127.0.0.1:{_free_port()}", "--home", tmp_path], capsys,
                             monkeypatch)
    assert code == 2 and "no Dask scheduler answered" in err and time.time() - t0 < 10
    code, out, err = run_cli([*CAL, "--cluster", "127.0.0.1:8786", "--home", tmp_path], capsys, monkeypatch)
    assert code == 2 and "tcp://HOST:PORT" in err


def test_without_the_cluster_extra_the_install_command_is_named(tmp_path, capsys, monkeypatch):
    from tqsim.cluster import INSTALL_HINT

    monkeypatch.setitem(sys.modules, "distributed", None)  # `import distributed` now raises ImportError
    code, out, err = run_cli([*CAL, "--cluster", "local", "--home", tmp_path], capsys, monkeypatch)
    assert code == 2 and INSTALL_HINT in err and not list(tmp_path.rglob("*.nc"))


def test_a_worker_on_another_machine_than_its_system_was_calibrated_on_is_refused_unless_forced(fleet, tmp_path):
    from tqsim.data.io import write_atomic
    from tqsim.testing import grid, simulate_campaign, write_campaign

    elsewhere = {"hostname": "old-box", "cpu_model": "Imaginary CPU 9000", "cpu_count": 64, "memory_bytes": 2**40}
    datasets = simulate_campaign(grid((1,), (1,)), passes=2, system="alpha")
    folder = write_campaign(datasets, tmp_path)
    for f in calibration_files(folder):
        ds = read_calibration(f)
        ds.attrs["fingerprint"] = json.dumps(elsewhere)
        write_atomic(ds, f)
    res = tqsim(*CAL, "--passes", "1", "--cluster", fleet.address, "--system", "alpha", home=tmp_path)
    assert res.returncode == 2, res.stderr
    assert "Imaginary CPU 9000 × 64" in res.stderr and f"× {os.cpu_count()}" in res.stderr and "--force" in res.stderr
    assert not (tmp_path / "calibration" / "alpha" / "digits-mlp").exists()
    res = tqsim(*CAL, "--passes", "1", "--cluster", fleet.address, "--system", "alpha", "--force", "--json",
                home=tmp_path)
    assert res.returncode == 0, res.stderr
    assert json.loads(res.stdout)["measured_passes"] == 2


def test_a_worker_killed_mid_campaign_loses_only_its_pass_and_a_rerun_measures_nothing_twice(fleet, tmp_path):
    """Its nanny and worker killed together: the system has no worker until another joins; the pass in flight
    goes to that one; every pass written before the kill is kept unchanged, and none is measured twice."""
    first = fleet.worker("gamma")
    fleet.wait_for({"gamma": 1})
    args = [*CAL, "--passes", "12", "--cluster", fleet.address, "--system", "gamma", "--json"]
    proc = subprocess.Popen([sys.executable, "-m", "tqsim", *args, "--home", str(tmp_path)], env=FLEET_ENV, cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    folder = tmp_path / "calibration" / "gamma" / "digits-mlp"
    try:
        deadline = time.time() + 120
        while not (len(on := passes_on_disk(folder)) == 2 and min(len(v) for v in on.values()) >= 2):
            assert time.time() < deadline and proc.poll() is None, proc.stderr and proc.stderr.read()
            time.sleep(0.05)
        fleet.kill(first)
        before = passes_on_disk(folder)
        assert all(len(v) < 12 for v in before.values()), "the campaign ended before the kill; make it longer"
        fleet.worker("gamma")
        out, err = proc.communicate(timeout=180)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, err
    after = passes_on_disk(folder)
    for name, lat in before.items():
        np.testing.assert_array_equal(after[name][:len(lat)], lat)          # nothing finished lost or rewritten
    for f in calibration_files(folder):
        rounds = read_calibration(f)["round"].values
        assert len(rounds) == 12 and (np.diff(rounds) == 1).all()          # one pass a round, none twice
    res = tqsim(*args, home=tmp_path)
    assert res.returncode == 0, res.stderr
    assert json.loads(res.stdout)["measured_passes"] == 0


@pytest.mark.slow
def test_a_system_whose_last_worker_left_is_given_up_and_the_same_command_finishes_it(fleet, tmp_path, monkeypatch):
    """No worker of the system comes back within the grace: the command ends (exit 2, naming the worker command);
    the same command with a worker again measures exactly what is missing."""
    import threading

    from tqsim.errors import UserError
    from tqsim.measure import fleet as fleet_module
    from tqsim.measure.run import calibrate

    monkeypatch.setattr(fleet_module, "WORKER_GRACE_S", 3.0)
    worker = fleet.worker("delta")
    fleet.wait_for({"delta": 1})
    folder = tmp_path / "calibration" / "delta" / "digits-mlp"

    def kill_after_two_rounds():
        while not (len(on := passes_on_disk(folder)) == 2 and min(len(v) for v in on.values()) >= 2):
            time.sleep(0.05)
        fleet.kill(worker)

    threading.Thread(target=kill_after_two_rounds, daemon=True).start()
    run = dict(workload="digits-mlp", passes=12, warmup=1, home=tmp_path, system="delta", cluster=fleet.address,
               show_progress=False)
    with pytest.raises(UserError, match="lost its last worker.*system:delta=1"):
        calibrate(None, ["batch_size=1,4"], **run)
    before = passes_on_disk(folder)
    assert all(len(v) < 12 for v in before.values())
    fleet.worker("delta")
    fleet.wait_for({"delta": 1})
    out = calibrate(None, ["batch_size=1,4"], **run)
    assert out["measured_passes"] == sum(12 - len(v) for v in before.values())
    for f in calibration_files(folder):
        rounds = read_calibration(f)["round"].values
        assert len(rounds) == 12 and len(set(rounds.tolist())) == 12
