"""`tqsim quality` end to end (issue 3): table, --json, --plot, --files, and bad input -> exit 2."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from quality_fixtures import calibration_dataset, write_workspace
from tests.cli_runner import run_cli
from tqsim.data.io import write_atomic
from tqsim.factors import Config


def run(args, monkeypatch, capsys):
    """``tqsim quality *args`` in-process; returns (exit code, stdout, stderr)."""
    return run_cli(["quality", *args], capsys, monkeypatch)


@pytest.fixture(scope="module")
def home(tmp_path_factory):
    h = tmp_path_factory.mktemp("ws")
    write_workspace(h)
    return h


def test_table(home, monkeypatch, capsys):
    code, out, err = run(["--home", home], monkeypatch, capsys)
    assert code == 0, err
    assert "bs1-th1-fp32-torch-cpu" in out and "TQ_0.01" in out and "MLPerf" in out


def test_json_contract(home, monkeypatch, capsys, tmp_path):
    png = tmp_path / "q.png"
    code, out, err = run(["--home", home, "--json", "-t", "p90", "-t", "2ms", "--tail-q", "0.05", "--plot", png],
                         monkeypatch, capsys)
    assert code == 0, err
    obj = json.loads(out)
    assert {"system", "workload", "configs"} <= set(obj) and obj["workload"] == "toy"
    c = obj["configs"][0]
    assert {"config", "passes", "latency_s", "quality"} <= set(c)
    assert set(c["latency_s"]) == {"p50", "p90", "p99", "p99.9"}
    assert c["config"]["batch_size"] in (1, 4) and c["passes"] == 20
    q = c["quality"]
    assert {"metric", "no_deadline", "thresholds"} <= set(q)
    assert [t["threshold"] for t in q["thresholds"]] == ["p90", "2ms"]
    assert q["thresholds"][1]["threshold_s"] == pytest.approx(2e-3)
    assert all(t["tail_q"] == 0.05 and t["tail"] <= t["mean"] + 1e-12 for t in q["thresholds"])
    assert c["mlperf"]["p90"]["min_queries"] == 64
    assert png.exists() and png.stat().st_size > 1000


def test_files_and_folder(home, monkeypatch, capsys, tmp_path):
    folder = home / "calibration" / "box" / "toy"
    code, out, _ = run(["--files", folder / "bs4-th1-fp32-torch-cpu.nc", "--json"], monkeypatch, capsys)
    assert code == 0 and len(json.loads(out)["configs"]) == 1
    code, out, _ = run(["--files", folder, "--json"], monkeypatch, capsys)
    assert code == 0 and len(json.loads(out)["configs"]) == 2


@pytest.mark.parametrize("args,needle", [
    (["-t", "soon"], "not understood"),
    (["-t", "-5ms"], "positive"),
    (["-t", "p100"], "between 0 and 100"),
    (["--tail-q", "1.5"], "tail quantile"),
    (["--tail-q", "0"], "tail quantile"),
])
def test_bad_input_exit_2_nothing_written(home, monkeypatch, capsys, tmp_path, args, needle):
    png = tmp_path / "never.png"
    code, out, err = run(["--home", home, "--plot", png, *args], monkeypatch, capsys)
    assert code == 2 and needle in err and out == ""
    assert len(err.strip().splitlines()) <= 2
    assert not png.exists()


def test_one_pass_refused(monkeypatch, capsys, tmp_path):
    write_atomic(calibration_dataset(Config(1), n_passes=1), tmp_path / "one.nc")
    code, _, err = run(["--files", tmp_path / "one.nc"], monkeypatch, capsys)
    assert code == 2 and "at least 2" in err


def test_empty_workspace_names_calibrate(monkeypatch, capsys, tmp_path):
    code, _, err = run(["--home", tmp_path], monkeypatch, capsys)
    assert code == 2 and "tqsim calibrate" in err


def test_subprocess_exit_code(tmp_path):
    r = subprocess.run([sys.executable, "-m", "tqsim", "quality", "--home", str(tmp_path), "-t", "bogus"],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and "bogus" in r.stderr and "Traceback" not in r.stderr
