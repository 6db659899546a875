"""Import boundaries (docs/design.md, layout) and a fast `tqsim --help`: heavy libraries checked in fresh
subprocesses, the direction between tqsim's own layers read from the source."""

import ast
import subprocess
import sys
import time
from pathlib import Path

import pytest

TQSIM = Path(__file__).resolve().parent.parent / "tqsim"

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


def imported_modules(path: Path, source: str | None = None) -> set[str]:
    """Every module a file imports, at any depth (function-level imports included), as absolute names."""
    package = path.relative_to(TQSIM.parent).with_suffix("").parts[:-1]
    tree = ast.parse(path.read_text(encoding="utf-8") if source is None else source, str(path))
    out: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            parts = list(package[:len(package) - node.level + 1]) if node.level else []
            base = ".".join(parts + ([node.module] if node.module else []))
            out.add(base)
            out.update(f"{base}.{a.name}" for a in node.names)  # `from tqsim import whatif`
    return out


# measure produces data, data/ stores it, models and whatif read it; the serving calibration, which
# needs both sides, sits above them (tqsim/serving_calibration.py).
LAYERS = {
    "measure": ("tqsim.whatif", "tqsim.models", "tqsim.forecast", "tqsim.serving_calibration"),
    "whatif": ("tqsim.measure", "tqsim.serving_calibration"),
    "data": ("tqsim.measure", "tqsim.whatif", "tqsim.models", "tqsim.forecast", "tqsim.serving_calibration"),
}


@pytest.mark.parametrize("layer", sorted(LAYERS))
def test_layers_import_in_the_pipeline_direction_only(layer):
    def forbidden(m: str) -> bool:
        return any(m == p or m.startswith(p + ".") for p in LAYERS[layer])

    files = sorted((TQSIM / layer).rglob("*.py"))
    assert files
    bad = []
    for f in files:
        mods = imported_modules(f)
        bad += [f"{f.relative_to(TQSIM.parent)} imports {m}" for m in sorted(mods)
                if forbidden(m) and not (m.rsplit(".", 1)[0] in mods and forbidden(m.rsplit(".", 1)[0]))]
    assert not bad, "\n".join(bad)


def test_import_scan_sees_function_level_relative_and_from_package_imports():
    assert "tqsim.measure.backends" in imported_modules(TQSIM / "measure" / "server.py")  # inside __init__
    src = "def f():\n    from tqsim import whatif\n    from .. import forecast\n    from .server import now\n"
    got = imported_modules(TQSIM / "measure" / "x.py", src)
    assert {"tqsim.whatif", "tqsim.forecast", "tqsim.measure.server"} <= got
