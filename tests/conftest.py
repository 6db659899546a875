import os
import subprocess
import sys
from pathlib import Path

import pytest

os.environ.setdefault("PYTENSOR_FLAGS", "blas__ldflags=")

ROOT = Path(__file__).resolve().parents[1]
# the README's user workload: a real model that calibrates in seconds
WORKLOAD = f"{ROOT / 'examples' / 'my_workload.py'}:make"
ENV = dict(os.environ, PYTENSOR_FLAGS=os.environ.get("PYTENSOR_FLAGS", "blas__ldflags="))


@pytest.fixture(scope="session")
def fitted_home(tmp_path_factory):
    """A real calibration of the README's user workload (one threads level) and its fit, by the CLI."""
    home = tmp_path_factory.mktemp("fitted")
    for args in (["calibrate", "--workload", WORKLOAD, "--grid", "batch_size=1,4,16", "--passes", "8", "--warmup", "0"],
                 ["fit", "--workload", WORKLOAD, "--draws", "300", "--tune", "300"]):
        p = subprocess.run([sys.executable, "-m", "tqsim", *args, "--home", str(home)], capture_output=True,
                           text=True, env=ENV, cwd=ROOT)
        assert p.returncode == 0, p.stderr
    return home
