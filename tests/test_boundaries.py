"""Import boundaries (docs/design.md, layout) and a fast `tqsim --help`, checked in fresh subprocesses."""

import subprocess
import sys
import time

import pytest

PROBE = "import sys, importlib; importlib.import_module({mod!r}); print(sorted(m for m in {heavy!r} if m in sys.modules))"


@pytest.mark.parametrize("module", ["tqsim.quality", "tqsim.empirical", "tqsim.models", "tqsim.forecast",
                                    "tqsim.validate", "tqsim.whatif", "tqsim.testing"])
def test_statistics_never_import_torch(module):
    out = subprocess.run([sys.executable, "-c", PROBE.format(mod=module, heavy=["torch", "onnxruntime"])],
                         capture_output=True, text=True, check=True).stdout.strip()
    assert out == "[]"


@pytest.mark.parametrize("module", ["tqsim.measure.campaign", "tqsim.measure.run", "tqsim.measure.backends"])
def test_harness_never_imports_pymc(module):
    out = subprocess.run([sys.executable, "-c", PROBE.format(mod=module, heavy=["pymc", "pytensor"])],
                         capture_output=True, text=True, check=True).stdout.strip()
    assert out == "[]"


def test_cli_start_up_imports_nothing_heavy_and_help_is_fast():
    out = subprocess.run([sys.executable, "-c", PROBE.format(
        mod="tqsim.cli", heavy=["torch", "pymc", "pytensor", "arviz", "xarray", "onnxruntime", "matplotlib"])],
        capture_output=True, text=True, check=True).stdout.strip()
    assert out == "[]"
    t0 = time.perf_counter()
    res = subprocess.run([sys.executable, "-m", "tqsim", "--help"], capture_output=True, text=True)
    elapsed = time.perf_counter() - t0
    assert res.returncode == 0 and "calibrate" in res.stdout
    assert elapsed < 3.0  # generous for a loaded CI box; typically ~0.3 s
