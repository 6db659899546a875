"""`tqsim fit / predict / validate` as a user runs them (CliRunner through tqsim.cli.main's error path)."""

import json
import shutil
import sys

import pytest

from tqsim.testing import example_fit, grid, simulate_campaign, write_campaign


from tests.cli_runner import run_cli as run  # noqa: E402


def test_predict_json_and_table(capsys, monkeypatch):
    home, _, _ = example_fit()
    code, out, err = run(["predict", "--home", str(home), "--set", "batch_size=8", "--set", "threads=2",
                          "--threshold", "p99", "--threshold", "300us", "--passes", "10", "--draws", "40", "--json"],
                         capsys, monkeypatch)
    assert code == 0, err
    obj = json.loads(out)
    assert obj["config"]["batch_size"] == 8 and obj["calibrated"] is False
    assert [t["threshold_s"] for t in obj["quality"]["thresholds"]][1] == pytest.approx(300e-6)
    code, out, err = run(["predict", "--home", str(home), "--set", "batch_size=8", "--set", "threads=2",
                          "--passes", "10", "--draws", "40"], capsys, monkeypatch)
    assert code == 0 and "p99" in out and "never run" in out


def test_validate_json(capsys, monkeypatch):
    home, _, _ = example_fit()
    code, out, err = run(["validate", "--home", str(home), "--heldout", str(home / "heldout"), "--draws", "40",
                          "--json"], capsys, monkeypatch)
    assert code == 0, err
    assert len(json.loads(out)["configs"]) == 2


def test_validate_table_fits_80_columns_and_names_the_shared_levels(capsys, monkeypatch):
    home, fm, _ = example_fit()
    monkeypatch.setenv("COLUMNS", "80")
    code, out, err = run(["validate", "--home", str(home), "--heldout", str(home / "heldout"), "--draws", "40"],
                         capsys, monkeypatch)
    assert code == 0, err
    assert max(map(len, out.splitlines())) <= 80 and "…" not in out
    assert "bs8-th" in out and "bs32-th" in out and "coverage" in out


@pytest.mark.parametrize("args, message", [
    (["--set", "batch_size=8"], "threads"),
    (["--set", "batch_size=8", "--set", "threads=1", "--set", "flavour=x"], "unknown factor"),
    (["--set", "batch_size=8", "--set", "threads=1", "--set", "precision=fp16"], "precision=fp16"),
])
def test_predict_bad_input_exits_2(args, message, capsys, monkeypatch):
    home, _, _ = example_fit()
    code, out, err = run(["predict", "--home", str(home), *args], capsys, monkeypatch)
    assert code == 2 and message in err and out == ""
    assert len(err.strip().splitlines()) <= 3


def test_predict_before_fit_and_fit_on_one_config(tmp_path, capsys, monkeypatch):
    write_campaign(simulate_campaign(grid((1,), (1,)), passes=2, seed=0), tmp_path)
    code, _, err = run(["predict", "--home", str(tmp_path), "--set", "batch_size=8"], capsys, monkeypatch)
    assert code == 2 and "tqsim fit" in err
    code, _, err = run(["fit", "--home", str(tmp_path), "--sampler", "advi"], capsys, monkeypatch)
    assert code == 2 and "at least two" in err


def test_model_of_other_workload_refused(tmp_path, capsys, monkeypatch):
    home, _, _ = example_fit()
    write_campaign(simulate_campaign(grid((1, 4), (1,)), passes=2, seed=0, workload="other"), tmp_path)
    (tmp_path / "models" / "simbox").mkdir(parents=True)
    shutil.copy(home / "models" / "simbox" / "sim.nc", tmp_path / "models" / "simbox" / "other.nc")
    code, _, err = run(["predict", "--home", str(tmp_path), "--set", "batch_size=2"], capsys, monkeypatch)
    assert code == 2 and "workload 'sim'" in err


def test_fit_command_advi_writes_model(tmp_path, capsys, monkeypatch):
    write_campaign(simulate_campaign(grid((1, 16), (1,)), passes=3, seed=0), tmp_path)
    code, out, err = run(["fit", "--home", str(tmp_path), "--sampler", "advi", "--draws", "50", "--tune", "50",
                          "--json"], capsys, monkeypatch)
    assert code == 0, err
    obj = json.loads(out)
    assert obj["family"] == "quantile" and obj["diagnostics"]["sampler"] == "advi"
    assert (tmp_path / "models" / "simbox" / "sim.nc").exists()
