"""`tqsim calibrate` as a user runs it: real models, real files, real SIGKILL, and every bad input."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tqsim.data.io import calibration_files, read_calibration

ROOT = Path(__file__).resolve().parents[1]


def tqsim(*args, home=None, timeout=300):
    cmd = [sys.executable, "-m", "tqsim", *args] + (["--home", str(home)] if home else [])
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=ROOT)


def test_calibrate_writes_a_workspace_that_systems_lists(tmp_path):
    res = tqsim("calibrate", "--workload", "digits-mlp", "--grid", "batch_size=32,64", "--passes", "3",
                "--warmup", "1", "--system", "ci", "--json", home=tmp_path)
    assert res.returncode == 0, res.stderr
    out = json.loads(res.stdout)
    assert out["measured_passes"] == 6 and out["system"] == "ci"
    assert {c["config_id"] for c in out["configs"]} == {"bs32-th1-fp32-torch-cpu", "bs64-th1-fp32-torch-cpu"}
    assert all(0 < c["latency_s"]["p50"] <= c["latency_s"]["p99"] for c in out["configs"])
    assert all(c["quality"] > 0.9 for c in out["configs"])
    ds = read_calibration(tmp_path / "calibration/ci/digits-mlp/bs32-th1-fp32-torch-cpu.nc")
    fp = json.loads(ds.attrs["fingerprint"])
    assert fp["cpu_count"] == os.cpu_count() and fp["torch"]
    listing = json.loads(tqsim("systems", "--json", home=tmp_path).stdout)
    assert listing["systems"][0]["workloads"][0]["configs"] == ["bs32-th1-fp32-torch-cpu", "bs64-th1-fp32-torch-cpu"]


def test_sigkill_mid_campaign_keeps_finished_passes_and_resume_measures_only_the_rest(tmp_path):
    args = [sys.executable, "-m", "tqsim", "calibrate", "--workload", "digits-mlp", "--grid", "batch_size=1,2",
            "--passes", "40", "--warmup", "0", "--system", "ci", "--home", str(tmp_path), "--json"]
    proc = subprocess.Popen(args, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    folder = tmp_path / "calibration/ci/digits-mlp"
    deadline = time.time() + 240
    try:
        while time.time() < deadline:
            files = calibration_files(folder) if folder.exists() else []
            if len(files) == 2 and min(read_calibration(f).sizes["pass"] for f in files) >= 3:
                break
            time.sleep(0.05)
        assert proc.poll() is None, "campaign ended before it could be killed; make it longer"
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    finally:
        if proc.poll() is None:
            proc.kill()
    before = {f.stem: read_calibration(f).sizes["pass"] for f in calibration_files(folder)}
    assert all(3 <= n < 40 for n in before.values())
    res = subprocess.run(args, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    out = json.loads(res.stdout)
    assert out["measured_passes"] == sum(40 - n for n in before.values())
    for f in calibration_files(folder):
        ds = read_calibration(f)
        assert ds.sizes["pass"] == 40
        rounds = ds["round"].values
        assert (rounds[:-1] < rounds[1:]).all()  # one pass per round, never measured twice


def test_sigint_keeps_every_finished_pass(tmp_path):
    args = [sys.executable, "-m", "tqsim", "calibrate", "--workload", "digits-mlp", "--grid", "batch_size=1",
            "--passes", "300", "--warmup", "0", "--system", "ci", "--home", str(tmp_path)]
    # A background job inherits SIGINT ignored; a user's Ctrl-C reaches a foreground process.
    proc = subprocess.Popen(args, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    path = tmp_path / "calibration/ci/digits-mlp/bs1-th1-fp32-torch-cpu.nc"
    deadline = time.time() + 240
    while time.time() < deadline and not (path.exists() and read_calibration(path).sizes["pass"] >= 2):
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130
    assert "resume" in err
    assert 2 <= read_calibration(path).sizes["pass"] < 300


@pytest.mark.parametrize("args, message", [
    (["--workload", "no-such-model"], "unknown workload"),
    (["--grid", "colour=red"], "unknown factor 'colour'"),
    (["--grid", "precision=fp8"], "unknown precision 'fp8'"),
    (["--grid", "batch_size=0"], "batch_size=0"),
    (["--grid", "batch_size=-3"], "batch_size"),
    (["--grid", "batch_size=100000", "--workload", "digits-mlp"], "larger than the evaluation set"),
    (["--passes", "0", "--grid", "batch_size=8"], "--passes 0"),
    (["--grid", "device=cuda"], "CUDA"),
    (["--workload", "does/not/exist.py:make"], "does/not/exist.py"),
    (["--workload", "examples/my_workload.py:no_such_factory"], "no_such_factory"),
    (["--serving", "replicas=two"], "whole number"),
    (["--serving", "replicas=0"], "replicas=0: must be a whole number ≥ 1"),  # refused before any run
    (["--serving", "max_wait=-1ms"], "max_wait '-1ms' is not a duration"),
    (["--until-converged", "--rjsd", "2"], "--rjsd 2"),
])
def test_bad_input_exits_2_with_one_or_two_lines_and_writes_nothing(tmp_path, args, message):
    if "device=cuda" in args:
        pytest.importorskip("torch")
        import torch

        if torch.cuda.is_available():
            pytest.skip("a GPU is present")
    res = tqsim("calibrate", *args, home=tmp_path)
    assert res.returncode == 2, res.stderr
    assert message in res.stderr
    assert 1 <= len(res.stderr.strip().splitlines()) <= 2
    assert "Traceback" not in res.stderr
    assert not list(tmp_path.rglob("*.nc"))


@pytest.mark.parametrize("text, message", [
    ("workload = 'digits-mlp'\n[grid\nbatch_size = [1]\n", "TOML syntax error"),
    ("workload = 'digits-mlp'\ncolour = 'red'\n", "unknown key"),
])
def test_bad_plan_files(tmp_path, text, message):
    plan = tmp_path / "plan.toml"
    plan.write_text(text)
    res = tqsim("calibrate", str(plan), home=tmp_path)
    assert res.returncode == 2 and message in res.stderr and "Traceback" not in res.stderr


def test_unwritable_home_is_refused(tmp_path):
    if os.geteuid() == 0:
        home = Path("/proc/tqsim-home")  # not writable even for root
    else:
        home = tmp_path / "ro"
        home.mkdir()
        home.chmod(0o500)
    res = tqsim("calibrate", "--grid", "batch_size=8", "--workload", "digits-mlp", home=home)
    assert res.returncode == 2 and "--home" in res.stderr


def test_user_workload_returning_the_wrong_thing(tmp_path):
    bad = tmp_path / "bad_workload.py"
    bad.write_text("def make():\n    return 42\n")
    res = tqsim("calibrate", "--workload", f"{bad}:make", "--grid", "batch_size=8", home=tmp_path)
    assert res.returncode == 2 and "Workload" in res.stderr and "int" in res.stderr


def test_user_workload_example_from_the_readme_calibrates(tmp_path):
    res = tqsim("calibrate", "--workload", "examples/my_workload.py:make", "--grid", "batch_size=16",
                "--passes", "2", "--warmup", "0", "--json", home=tmp_path)
    assert res.returncode == 0, res.stderr
    assert json.loads(res.stdout)["configs"][0]["passes"] == 2


def test_serving_calibration_from_the_cli_feeds_whatif(tmp_path):
    """`calibrate --serving` as a user runs it after a forward calibration: a probe picks the rates,
    every run is summarised, the overheads land in serving.json, and `whatif` then uses them."""
    res = tqsim("calibrate", "--workload", "digits-mlp", "--grid", "batch_size=1,2,4", "--passes", "3",
                "--warmup", "0", "--system", "ci", home=tmp_path)
    assert res.returncode == 0, res.stderr
    res = tqsim("calibrate", "--serving", "replicas=1,max_batch=4,max_wait=0.5ms,duration=0.5s,repeats=2",
                home=tmp_path)
    assert res.returncode == 0, res.stderr
    assert "serving overheads stored in" in res.stdout and res.stdout.count("req/s: p99") == 4
    entry = json.loads((tmp_path / "calibration/ci/digits-mlp/serving.json").read_text())["setups"]["r1-th1"]
    assert len(entry["rates_rps"]) == 2 and entry["rates_rps"][0] < entry["rates_rps"][1]
    assert 0 <= entry["stall_prob"] < 0.2 and entry["scale"] > 0
    res = tqsim("whatif", "--rate", "200", "--max-batch", "4", "--max-wait", "0.5ms", "-t", "50ms", "--json",
                home=tmp_path)
    assert res.returncode == 0, res.stderr
    out = json.loads(res.stdout)
    assert any("serving overheads of r1-th1" in n for n in out["notes"])
    assert out["results"][0]["latency_s"]["p99"]["mean"] > 0
