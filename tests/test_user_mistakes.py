"""Each user mistake found by hand (issue 13) exits 2 with a message naming the fix, or is refused
instead of being silently changed. In-process CLI calls on a simulated, fitted workspace."""

from __future__ import annotations

import os
import shutil

import pytest

from tests.cli_runner import run_cli
from tqsim.testing import example_fit


@pytest.fixture(scope="module")
def home(tmp_path_factory):
    src, _, _ = example_fit()
    dst = tmp_path_factory.mktemp("mistakes") / "home"
    shutil.copytree(src, dst)
    return dst


def write(path, text: str | bytes):
    path.write_bytes(text if isinstance(text, bytes) else text.encode())
    return path


@pytest.mark.parametrize("body, needle", [
    ('passes = "abc"', "whole number"), ("passes = [1, 2]", "whole number"), ("passes = nan", "whole number"),
    ("passes = 1e400", "whole number"), ('seed = "x"', "whole number"), ("passes = 2.7", "whole number"),
    ("[grid]\nbatch_size = [[1]]", "list of levels"), ("seed = -1", "≥ 0"),
])
def test_plan_values_of_the_wrong_type_exit_2(tmp_path, capsys, monkeypatch, body, needle):
    plan = write(tmp_path / "plan.toml", body)
    code, out, err = run_cli(["calibrate", plan, "--home", tmp_path], capsys, monkeypatch)
    assert code == 2 and needle in err, err


def test_binary_plan_and_folder_plan_exit_2(tmp_path, capsys, monkeypatch):
    plan = write(tmp_path / "plan.toml", bytes(range(256)))
    assert run_cli(["calibrate", plan, "--home", tmp_path], capsys, monkeypatch)[0] == 2
    code, out, err = run_cli(["calibrate", tmp_path, "--home", tmp_path], capsys, monkeypatch)
    assert code == 2 and "not a file" in err


@pytest.mark.parametrize("args, needle", [
    (["calibrate", "--seed", "-1", "--grid", "batch_size=1"], "≥ 0"),
    (["calibrate", "--passes", "100000", "--grid", "batch_size=1"], "10,000"),
    (["calibrate", "--workload", "sys:exit", "--grid", "batch_size=1"], "SystemExit"),
    (["calibrate", "--workload", "/etc/passwd:x", "--grid", "batch_size=1"], "not a Python file"),
    (["predict", "--set", "batch_size=8", "--set", "threads=1", "--passes", "0"], "--passes 0"),
    (["predict", "--set", "batch_size=8", "--set", "threads=1", "--tail-q", "2"], "--tail-q 2"),
    (["predict", "--set", "batch_size=2,4", "--set", "threads=1"], "one value per factor"),
    (["predict", "--set", "batch_size=2", "--set", "batch_size=4", "--set", "threads=1"], "one value per factor"),
    (["predict", "--set", "batch_size=1000000", "--set", "threads=1"], "larger than the evaluation set"),
    (["whatif", "--rate", "1e309", "--threshold", "20ms"], "finite"),
    (["whatif", "--rate", "100", "--threshold", "20ms", "--plot", "x.txt"], ".png"),
    (["plan", "--objective", "tail_quality>=0.9@20ms", "--rate", "50", "--cores", "2", "--precision", "fp64"],
     "unknown precision"),
])
def test_mistakes_exit_2_naming_the_fix(home, capsys, monkeypatch, args, needle):
    code, out, err = run_cli([*args, "--home", home], capsys, monkeypatch)
    assert code == 2 and needle in err, err


def test_plot_into_an_unwritable_folder_exits_2_before_any_work(home, tmp_path, capsys, monkeypatch):
    locked = tmp_path / "locked"
    locked.mkdir()
    os.chmod(locked, 0o500)
    try:
        if os.access(locked, os.W_OK):
            pytest.skip("running as a user who can write anywhere")
        for args in (["quality", "--plot", locked / "q.png"],
                     ["whatif", "--rate", "100", "--threshold", "20ms", "--plot", locked / "w.png"]):
            code, out, err = run_cli([*args, "--home", home], capsys, monkeypatch)
            assert code == 2 and "cannot write" in err, err
    finally:
        os.chmod(locked, 0o700)


@pytest.mark.parametrize("trace, needle", [("", "no timestamps"), ("0.5\n", "two distinct"),
                                           (None, "is not a file")])
def test_bad_traces_exit_2_without_numpy_warnings(home, tmp_path, capsys, monkeypatch, trace, needle):
    path = tmp_path if trace is None else write(tmp_path / "trace.txt", trace)
    code, out, err = run_cli(["whatif", "--trace", path, "--threshold", "20ms", "--home", home], capsys, monkeypatch)
    assert code == 2 and needle in err and "Warning" not in err, err


def test_fit_into_an_unwritable_models_folder_is_refused_before_sampling(home, tmp_path, capsys, monkeypatch):
    mine = tmp_path / "home"
    shutil.copytree(home, mine)
    models = mine / "models"
    os.chmod(models, 0o500)
    try:
        if os.access(models, os.W_OK):
            pytest.skip("running as a user who can write anywhere")
        code, out, err = run_cli(["fit", "--home", mine], capsys, monkeypatch)
        assert code == 2 and "cannot write" in err and "sampling" not in err, err
    finally:
        os.chmod(models, 0o700)


def test_stale_temporaries_of_dead_writers_are_removed(tmp_path):
    from tqsim.data.io import write_text_atomic

    stale = write(tmp_path / ".f.json.tmp-999999999", "half")       # no process has this pid
    write_text_atomic(tmp_path / "f.json", "{}")
    assert not stale.exists() and (tmp_path / "f.json").read_text() == "{}"


def test_the_report_shows_the_fingerprint(home, tmp_path, capsys, monkeypatch):
    from tqsim.data.io import load_campaign

    camp = load_campaign(next((home / "calibration").glob("*/*")))
    assert "fingerprint" in camp.attrs
