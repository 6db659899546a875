"""Faults a user meets: kills during calibrate and fit, two calibrations at once, corrupt files in front
of every command. Real subprocesses of the real CLI (the README's user workload calibrates in seconds);
kill times are drawn from a seeded generator. `benchmarks/faults.py` runs more kill points for RESULTS.

Invariants: nothing finished is lost (every pass on disk before a kill is on disk, unchanged, after
the resume), no half-written file exists under a real name, a killed fit leaves the old model's bytes,
and every user-facing failure exits 2 — never an internal error (1).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from tests.cli_runner import run_cli

from tests.conftest import ENV, ROOT, WORKLOAD
# kill points per command: one or two here; benchmarks/faults.py sets more
REPEATS = int(os.environ.get("TQSIM_FAULT_REPEATS", "1"))


def default_sigint() -> None:
    """A background job of a non-interactive shell inherits SIGINT ignored (POSIX), and Python then keeps
    ignoring it; a user's terminal delivers it, so the child gets the default back."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def tqsim_proc(*args, home: Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "tqsim", *args, "--home", str(home)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=ENV, cwd=ROOT, preexec_fn=default_sigint)


def calibration_state(folder: Path) -> dict:
    """Every real file's passes (latencies, rounds) — each must read through the schema check."""
    from tqsim.data.io import calibration_files, read_calibration

    return {p.name: (read_calibration(p)["latency_s"].values.copy(), read_calibration(p)["round"].values.copy())
            for p in calibration_files(folder)}


def wait_for_files(folder: Path, timeout: float = 90.0) -> None:
    t0 = time.time()
    while not (folder.is_dir() and any(p for p in folder.rglob("*.nc") if not p.name.startswith("."))):
        if time.time() - t0 > timeout:
            raise AssertionError("the calibration never wrote a file")
        time.sleep(0.05)


# long enough that a kill within a second of the first file, or a second command's start, lands mid-campaign
PASSES = 60
CAL = ["calibrate", "--workload", WORKLOAD, "--grid", "batch_size=1,4", "--passes", str(PASSES), "--warmup", "0"]


@pytest.mark.parametrize("sig, seed", [(sg, seed) for seed in range(REPEATS) for sg in (signal.SIGKILL, signal.SIGINT)])
def test_killed_calibration_loses_nothing_finished_and_resumes(tmp_path, sig, seed):
    folder = tmp_path / "calibration"
    proc = tqsim_proc(*CAL, home=tmp_path)
    wait_for_files(folder, 120)
    time.sleep(float(np.random.default_rng([seed, int(sig)]).uniform(0.0, 1.0)))
    proc.send_signal(sig)
    code = proc.wait(60)
    sub = next(folder.iterdir())
    before = calibration_state(next(sub.iterdir()))
    if sig == signal.SIGINT:
        assert code in (130, 0), proc.stderr.read()
    assert before, "nothing was measured before the kill"
    done = subprocess.run([sys.executable, "-m", "tqsim", *CAL, "--home", str(tmp_path)], capture_output=True,
                          text=True, env=ENV, cwd=ROOT)
    assert done.returncode == 0, done.stderr
    after = calibration_state(next(sub.iterdir()))
    for name, (lat, rounds) in before.items():
        n = lat.shape[0]
        np.testing.assert_array_equal(after[name][0][:n], lat)       # nothing finished lost or rewritten
        assert after[name][0].shape[0] == PASSES                       # nothing measured twice
        assert len(set(after[name][1].tolist())) == PASSES
    assert not list(next(sub.iterdir()).glob(".*.tmp-*"))              # no stale temporary file left


def test_two_calibrations_at_once_the_second_is_refused_and_nothing_is_lost(tmp_path):
    first = tqsim_proc(*CAL, home=tmp_path)
    wait_for_files(tmp_path / "calibration", 120)
    second = subprocess.run([sys.executable, "-m", "tqsim", *CAL, "--home", str(tmp_path)], capture_output=True,
                            text=True, env=ENV, cwd=ROOT)
    assert second.returncode == 2 and "another calibration" in second.stderr and "pid" in second.stderr
    assert first.wait(600) == 0                                    # a loaded machine is slow, not wrong
    sub = next((tmp_path / "calibration").iterdir())
    state = calibration_state(next(sub.iterdir()))
    assert all(lat.shape[0] == PASSES for lat, _ in state.values())


def test_the_readme_user_workload_calibrates_and_fits_cleanly(fitted_home):
    """One threads level once failed every fit ('All initialization points failed'): the factor drops out."""
    from tqsim.models import load

    fm = load(next((fitted_home / "models").rglob("*.nc")))
    assert fm.diagnostics["divergences"] == 0 and fm.diagnostics["rhat_max"] < 1.05
    assert fm.spec.terms == ["Lz"]


@pytest.mark.parametrize("sig, seed", [(sg, seed) for seed in range(REPEATS) for sg in (signal.SIGINT, signal.SIGKILL)])
def test_a_killed_fit_leaves_the_old_model(fitted_home, sig, seed):
    model = next((fitted_home / "models").rglob("*.nc"))
    old = model.read_bytes()
    proc = tqsim_proc("fit", "--workload", WORKLOAD, "--draws", "20000", "--tune", "2000", home=fitted_home)
    # anywhere from loading the calibration to deep in sampling
    time.sleep(float(np.random.default_rng([seed, int(sig)]).uniform(0.5, 8.0)))
    proc.send_signal(sig)
    code = proc.wait(120)
    if sig == signal.SIGINT:
        assert code == 130, proc.stderr.read()
    assert model.read_bytes() == old          # byte for byte
    for tmp in model.parent.glob(".*.tmp-*"):  # a SIGKILL may leave a hidden temporary file, never a real one
        assert tmp.name.startswith(".")


CORRUPTIONS = {
    "truncated": lambda p: p.write_bytes(p.read_bytes()[: p.stat().st_size // 2]),
    "empty": lambda p: p.write_bytes(b""),
    "random bytes": lambda p: p.write_bytes(np.random.default_rng(0).bytes(4096)),
}
COMMANDS = [["systems"], ["quality"], ["fit", "--sampler", "advi", "--draws", "20"], ["predict", "--set", "batch_size=2"],
            ["whatif", "--rate", "100", "--threshold", "50ms"],
            ["plan", "--objective", "tail_quality>=0.5@50ms", "--rate", "50", "--cores", "2"]]


@pytest.fixture()
def sim_home(tmp_path):
    from tqsim.testing import grid, simulate_campaign, write_campaign

    write_campaign(simulate_campaign(grid((1, 4), (1,)), passes=3, seed=0), tmp_path)
    return tmp_path


@pytest.mark.parametrize("kind", list(CORRUPTIONS))
def test_a_corrupt_calibration_file_is_a_user_error_for_every_command(sim_home, kind, capsys, monkeypatch):
    victim = next((sim_home / "calibration").rglob("bs4-*.nc"))
    CORRUPTIONS[kind](victim)
    for args in COMMANDS:
        code, out, err = run_cli([*args, "--home", sim_home], capsys, monkeypatch)
        assert code == 2, (args, err)
        if args[0] not in ("systems", "predict"):   # predict stops earlier: no model was fitted here
            assert victim.name in err, (args, err)


@pytest.mark.parametrize("kind", list(CORRUPTIONS))
def test_resuming_over_a_corrupt_file_is_refused_naming_it(fitted_home, tmp_path, kind):
    import shutil

    home = tmp_path / "home"
    shutil.copytree(fitted_home, home)
    victim = next((home / "calibration").rglob("bs4-*.nc"))
    CORRUPTIONS[kind](victim)
    p = subprocess.run([sys.executable, "-m", "tqsim", "calibrate", "--workload", WORKLOAD, "--grid", "batch_size=1,4,16",
                        "--passes", "9", "--warmup", "0", "--home", str(home)], capture_output=True, text=True, env=ENV,
                       cwd=ROOT)
    assert p.returncode == 2 and victim.name in p.stderr, p.stderr


def test_a_text_factor_attribute_is_refused_naming_the_file(sim_home, capsys, monkeypatch):
    from tqsim.data.io import read_calibration, write_atomic

    victim = next((sim_home / "calibration").rglob("bs4-*.nc"))
    ds = read_calibration(victim)
    ds.attrs["batch_size"] = "four"
    write_atomic(ds, victim)
    for args in COMMANDS[1:]:
        code, out, err = run_cli([*args, "--home", sim_home], capsys, monkeypatch)
        assert code == 2 and ("batch_size" in err or args[0] == "predict"), (args, err)


@pytest.mark.parametrize("what", ["model", "check"])
def test_a_corrupt_model_or_check_file_is_a_user_error(tmp_path, what, capsys, monkeypatch):
    import shutil

    from tqsim.testing import example_fit

    src, _, _ = example_fit()
    home = tmp_path / "home"
    shutil.copytree(src, home)
    if what == "model":
        model = next((home / "models").rglob("*.nc"))
        model.write_bytes(model.read_bytes()[:1000])
        cmds = [["predict", "--set", "batch_size=8", "--set", "threads=1"], ["validate", "--heldout", home / "heldout"]]
    else:
        path = home / "checks" / "simbox" / "sim.json"
        path.parent.mkdir(parents=True)
        path.write_text("{not json")
        cmds = [["predict", "--now", "--set", "batch_size=8", "--set", "threads=1"]]
    for args in cmds:
        code, out, err = run_cli([*args, "--home", home], capsys, monkeypatch)
        assert code == 2, (args, err)


def test_predict_now_before_any_check_names_the_command(capsys, monkeypatch):
    from tqsim.testing import example_fit

    home, _, _ = example_fit()
    code, out, err = run_cli(["predict", "--now", "--set", "batch_size=8", "--set", "threads=1", "--home", home],
                             capsys, monkeypatch)
    assert code == 2 and "tqsim check" in err


@pytest.mark.parametrize("seed", range(REPEATS))
def test_a_killed_report_leaves_only_complete_files(fitted_home, tmp_path, seed):
    out = tmp_path / "report"
    proc = tqsim_proc("report", "--workload", WORKLOAD, "--out", str(out), home=fitted_home)
    time.sleep(float(np.random.default_rng([seed, 9]).uniform(2.0, 8.0)))
    proc.send_signal(signal.SIGKILL)
    proc.wait(60)
    for f in out.rglob("*") if out.exists() else []:
        if f.is_dir() or f.name.startswith("."):
            continue
        data = f.read_bytes()
        if f.suffix == ".png":
            assert data[:8] == b"\x89PNG\r\n\x1a\n" and data[-8:-4] == b"IEND", f
        elif f.suffix == ".html":
            assert data.rstrip().endswith(b"</html>"), f


def test_an_interrupt_swallowed_by_a_finaliser_still_stops_the_command():
    """Ctrl-C inside a gc callback (JAX has one) is dropped by Python; a killed fit once ran on to exit 0."""
    code = ("import signal\nfrom tqsim import interrupts\ninterrupts.install()\n"
            "class A:\n    def __del__(self):\n        signal.raise_signal(signal.SIGINT)\n"
            "a = A(); del a\nprint('swallowed')\n"
            "try:\n    interrupts.check()\nexcept KeyboardInterrupt:\n    print('stopped')\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=ENV, cwd=ROOT, timeout=60,
                         preexec_fn=default_sigint)
    assert out.stdout.split() == ["swallowed", "stopped"], out.stderr
