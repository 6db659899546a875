"""The Python API (docs/api.md): its worked example runs as written, a Workload object calibrates, and the
typed results agree with the JSON contract."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import tqsim
from tqsim.errors import UserError
from tqsim.workloads import Workload

ROOT = Path(__file__).resolve().parents[1]


def first_python_block(markdown: str) -> str:
    match = re.search(r"^```python\n(.*?)^```", markdown, flags=re.S | re.M)
    assert match, "docs/api.md has no ```python block"
    return match.group(1)


@pytest.fixture(scope="module")
def example() -> dict:
    """docs/api.md's worked example, executed as written; its variables for the tests to inspect."""
    namespace: dict = {"__name__": "docs_api_example"}
    code = first_python_block((ROOT / "docs" / "api.md").read_text(encoding="utf-8"))
    exec(compile(code, str(ROOT / "docs" / "api.md"), "exec"), namespace)
    return namespace


def test_the_docs_example_runs_and_forecasts_a_configuration_never_run(example):
    cal, fit, fc = example["cal"], example["fit"], example["fc"]
    assert cal.measured_passes == 4 * 4 and sorted(c["passes"] for c in cal.configs) == [4] * 4
    assert cal.session == cal.sessions[-1] and cal.workload == "digits-mlp" and cal.system == "laptop"
    assert "bs8-th2-fp32-torch-cpu" not in fit.configs and fc.config.id == "bs8-th2-fp32-torch-cpu"
    assert not fc.calibrated and fc.workload == "digits-mlp"
    q = fc.quality[0]
    assert q.threshold_s == pytest.approx(1e-3) and 0 <= q.tail.lo <= q.tail.median <= q.tail.hi <= 1
    assert fc.to_dict() == fc.as_dict()


def test_to_xarray_has_the_runs_dims_and_agrees_with_the_json_summaries(example):
    fc = example["fc"]
    ds = example["ds"]
    D, P, N = fc.latency_s.shape
    assert dict(ds.latency_s.sizes) == {"draw": D, "pass": P, "instance": N} == {"draw": 200, "pass": 100,
                                                                                   "instance": 540}
    assert dict(ds.qat.sizes) == {"draw": D, "pass": P, "threshold": 2}
    assert list(ds.threshold.values) == ["1ms", "p99"]
    out = fc.to_dict()
    np.testing.assert_allclose(ds.threshold_s.values, [t["threshold_s"] for t in out["quality"]["thresholds"]])
    # the percentiles of the json object are those of the dataset's runs, recomputed from the raw draws
    per_draw = np.percentile(ds.latency_s.values.reshape(D, -1), 99, axis=1)
    assert out["latency_s"]["p99"]["mean"] == pytest.approx(per_draw.mean(), rel=1e-12)
    assert out["latency_s"]["p99"]["hi"] == pytest.approx(np.quantile(per_draw, 0.95), rel=1e-12)
    for name, iv in out["latency_s"].items():
        assert ds.latency.sel(percentile=name).values.tolist() == [iv["mean"], iv["median"], iv["lo"], iv["hi"]]
    for k, t in enumerate(out["quality"]["thresholds"]):
        assert ds.quality_tail.isel(threshold=k).values.tolist() == [t["tail"], t["tail_median"], t["tail_lo"],
                                                                     t["tail_hi"]]
        assert float(ds.qat.isel(threshold=k).mean()) == pytest.approx(t["mean"], rel=1e-12)
    assert ds.attrs["config_id"] == fc.config.id and ds.attrs["calibrated"] == 0
    assert ds.attrs["tail_q"] == fc.tail_q and ds.latency_s.attrs["units"] == "s"


def tiny_workload(name: str = "tiny model") -> Workload:
    """A real (torch) two-class linear model on 12 instances, built in the test: no factory, no file."""
    import torch

    torch.manual_seed(0)
    model = torch.nn.Linear(3, 2).eval()
    inputs = torch.randn(12, 3)
    labels = np.array([0, 1] * 6)
    return Workload(name=name, task="tiny", model=model, inputs=inputs, labels=labels)


def test_a_workload_object_calibrates(tmp_path):
    import torch

    wl = tiny_workload()
    ws = tqsim.Workspace(tmp_path, system="box")
    cal = ws.calibrate(wl, grid={"batch_size": [1, 4]}, passes=2, warmup=0)
    assert wl.name == "tiny model"  # the user's object is not renamed; its stored name is path-safe
    assert cal.workload == "tiny_model" and cal.measured_passes == 4 and cal.plan["workload"] == "tiny_model"
    assert sorted(p.name for p in cal.folder.glob("*.nc")) == ["bs1-th1-fp32-torch-cpu.nc", "bs4-th1-fp32-torch-cpu.nc"]
    assert cal.folder == tmp_path / "calibration" / "box" / "tiny_model"
    with torch.no_grad():
        accuracy = float((wl.model(wl.inputs).argmax(-1).numpy() == wl.labels).mean())
    assert [c["quality"] for c in cal.configs] == [pytest.approx(accuracy)] * 2
    # resuming with the same object measures only what is missing
    again = ws.calibrate(wl, grid={"batch_size": [1, 4]}, passes=3, warmup=0)
    assert again.measured_passes == 2 and [c["passes"] for c in again.configs] == [3, 3]
    assert ws.workloads() == ["tiny_model"]


def test_sessions_with_an_object_are_refused_naming_the_spec_and_write_nothing(tmp_path):
    ws = tqsim.Workspace(tmp_path / "home")
    with pytest.raises(UserError, match=r"fresh process.*spec.*file\.py:factory.*sessions=1"):
        ws.calibrate(tiny_workload(), grid={"batch_size": [1]}, passes=4, sessions=2)
    assert not (tmp_path / "home").exists()


@pytest.mark.parametrize("grid, fragment", [({"batchsize": [1]}, "unknown factor 'batchsize'"),
                                            ("batch_size=1", "levels per factor")])
def test_api_mistakes_are_user_errors_naming_the_fix(tmp_path, grid, fragment):
    with pytest.raises(UserError, match=re.escape(fragment)):
        tqsim.Workspace(tmp_path).calibrate(tiny_workload(), grid=grid, passes=2)
    assert not (tmp_path / "calibration").exists()


def test_import_tqsim_and_the_api_stay_light():
    probe = ("import sys, tqsim; tqsim.Workspace; tqsim.Fit; tqsim.Calibration; "
             "print(sorted(m for m in ('torch', 'pymc', 'pytensor', 'jax', 'xarray', 'arviz') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True, cwd=ROOT)
    assert out.stdout.strip() == "[]"
