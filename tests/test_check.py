"""`tqsim check` and `tqsim predict --now` on a real calibration of the README's user workload."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

from tests.conftest import ENV, ROOT, WORKLOAD


def tqsim(*args, home):
    return subprocess.run([sys.executable, "-m", "tqsim", *map(str, args), "--home", str(home)], capture_output=True,
                          text=True, env=ENV, cwd=ROOT)


def test_check_then_predict_now(fitted_home, tmp_path):
    home = tmp_path / "home"
    shutil.copytree(fitted_home, home)
    p = tqsim("check", "--workload", WORKLOAD, "--json", home=home)
    assert p.returncode == 0, p.stderr
    out = json.loads(p.stdout)
    r = out["relative_latency"]
    assert r["lo"] <= r["median"] <= r["hi"] and -0.9 < r["median"] < 5
    assert out["drift_measured"] is False and len(out["anchors"]) == 1     # one threads level: one anchor
    assert out["anchors"][0]["passes"] >= 3
    record = json.loads((home / "checks").rglob("*.json").__next__().read_text())
    assert len(record["checks"]) == 1 and record["checks"][0]["anchors"][0]["levels"]
    now = tqsim("predict", "--workload", WORKLOAD, "--set", "batch_size=8", "--now", "--json", home=home)
    assert now.returncode == 0, now.stderr
    conditioned = json.loads(now.stdout)
    assert conditioned["session"].startswith("conditioned on the check")
    new = json.loads(tqsim("predict", "--workload", WORKLOAD, "--set", "batch_size=8", "--json", home=home).stdout)
    # knowing the machine's state narrows the p50 interval (the drift between sessions is no longer drawn)
    width = lambda r: r["latency_s"]["p50"]["hi"] / r["latency_s"]["p50"]["lo"]  # noqa: E731
    assert width(conditioned) < width(new)


def test_check_refuses_another_machine_unless_forced(fitted_home, tmp_path):
    from tqsim.data.io import calibration_files, read_calibration, write_atomic

    home = tmp_path / "home"
    shutil.copytree(fitted_home, home)
    for f in calibration_files(next((home / "calibration").glob("*/*"))):
        ds = read_calibration(f)
        fp = json.loads(ds.attrs["fingerprint"])
        fp["cpu_model"] = "Imaginary CPU 9000"
        ds.attrs["fingerprint"] = json.dumps(fp)
        write_atomic(ds, f)
    p = tqsim("check", "--workload", WORKLOAD, home=home)
    assert p.returncode == 2 and "Imaginary CPU 9000" in p.stderr and "--force" in p.stderr
    assert tqsim("check", "--workload", WORKLOAD, "--force", home=home).returncode == 0


def test_check_before_any_fit_names_the_command(tmp_path):
    from tqsim.testing import grid, simulate_campaign, write_campaign

    write_campaign(simulate_campaign(grid((1, 4), (1,)), passes=3, seed=0), tmp_path)
    p = tqsim("check", home=tmp_path)
    assert p.returncode == 2 and "tqsim fit" in p.stderr
    empty = tmp_path / "empty"
    p = tqsim("check", home=empty)
    assert p.returncode == 2 and "tqsim calibrate" in p.stderr


def test_sessions_and_gap_mistakes_exit_2(tmp_path):
    for args in (["--sessions", "0"], ["--gap", "-5s"], ["--gap", "soon"], ["--sessions", "9", "--passes", "3"]):
        p = tqsim("calibrate", "--grid", "batch_size=1", *args, home=tmp_path)
        assert p.returncode == 2, (args, p.stderr)
