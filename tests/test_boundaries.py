"""Import boundaries (docs/design.md, layout) and a fast `tqsim --help`: heavy libraries checked in fresh
subprocesses; the direction between tqsim's own layers, and the absence of cycles, read from the source."""

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

    graph = import_graph()
    mine = [m for m in graph if m == f"tqsim.{layer}" or m.startswith(f"tqsim.{layer}.")]
    assert mine
    bad = [f"{m} imports {d}" for m in mine for d in sorted(graph[m]) if forbidden(d)]
    assert not bad, "\n".join(bad)


def import_graph(root: Path = Path(__file__).resolve().parents[1]) -> dict[str, set[str]]:
    """Each module of ``tqsim`` → the ``tqsim`` modules it imports anywhere (top level or inside a function)."""
    files = {}
    for path in sorted((root / "tqsim").rglob("*.py")):
        parts = path.relative_to(root).with_suffix("").parts
        files[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    graph = {}
    for name, path in files.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        deps = set()
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:  # relative: from the package, `level - 1` packages up
                    up = package.split(".")[:len(package.split(".")) - node.level + 1]
                    base = ".".join(up + ([node.module] if node.module else []))
                # `from tqsim.x import y`: module tqsim.x.y when there is one, else tqsim.x
                targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in files else base for a in node.names]
            else:
                continue
            for t in targets:
                while t and t not in files:  # an attribute, or outside tqsim (then nothing)
                    t = t.rpartition(".")[0]
                if t and t != name:
                    deps.add(t)
        graph[name] = deps
    return graph


def cycles(graph: dict[str, set[str]]) -> list[str]:
    """One cycle ``a → b → a`` per strongly connected group of modules (Tarjan), each the shortest from its
    alphabetically first module."""
    index, low, stack, on_stack, groups = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            group = set()
            while v not in group:
                group.add(stack.pop())
            on_stack.difference_update(group)
            if len(group) > 1:
                groups.append(group)

    for v in sorted(graph):
        if v not in index:
            visit(v)
    out = []
    for group in groups:
        start = min(group)
        parent, queue, end = {start: None}, [start], None
        while end is None:
            u = queue.pop(0)
            for w in sorted(graph[u] & group):
                if w == start:
                    end = u
                    break
                if w not in parent:
                    parent[w] = u
                    queue.append(w)
        path = [end]
        while path[-1] != start:
            path.append(parent[path[-1]])
        out.append(" → ".join([*reversed(path), start]))
    return sorted(out)


def test_cycle_finder_finds_a_cycle_and_reads_function_level_imports():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a", "d"}, "d": set(), "e": {"d"}}) == ["a → b → c → a"]
    assert cycles({"a": {"b"}, "b": set()}) == []
    graph = import_graph()
    assert "tqsim.report.types" in graph["tqsim.report.build"]      # top level
    assert "tqsim.drift" in graph["tqsim.forecast"]                 # inside simulate_calls
    assert "tqsim.cli.commands_report" in graph["tqsim.cli"]        # `from tqsim.cli import commands_report`
    assert "tqsim.measure.backends" in graph["tqsim.measure.server"]  # inside a method
    assert "tqsim.report.build" in graph["tqsim.cli.commands_report"]


def test_no_import_cycle_inside_tqsim():
    found = cycles(import_graph())
    assert not found, "import cycles: " + "; ".join(found)
