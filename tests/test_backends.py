"""Backends: batch layout, precisions, threads, refusals, onnxruntime and CUDA paths."""

from __future__ import annotations

import importlib.util
import os

import numpy as np
import pytest
import torch

from tqsim.errors import UserError
from tqsim.factors import Config
from tqsim.measure import backends
from tqsim.measure.backends import check_supported, prepare
from tqsim.workloads import Workload, get_workload

HAS_ORT = importlib.util.find_spec("onnxruntime") is not None and importlib.util.find_spec("onnxscript") is not None


@pytest.fixture(scope="module")
def cnn() -> Workload:
    return get_workload("digits-cnn")


@pytest.fixture(scope="module")
def mlp() -> Workload:
    return get_workload("digits-mlp")


@pytest.fixture(autouse=True)
def _restore_threads():
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


def run_all(runner) -> np.ndarray:
    return np.concatenate([runner.predicted_classes(runner.forward(args)) for args in runner.batches])


def test_batch_layout_with_a_partial_last_batch(mlp):
    runner = prepare(mlp, Config(batch_size=32))
    assert len(runner.batches) == 17  # 16 full batches of 32 and one of 28
    assert [args[0].shape[0] for args in runner.batches] == [32] * 16 + [28]
    boi = runner.batch_of_instance
    assert boi.shape == (540,) and boi.dtype.kind == "i"
    assert np.all(np.diff(boi) >= 0) and boi[0] == 0 and boi[-1] == 16
    assert np.bincount(boi).tolist() == [32] * 16 + [28]
    out = runner.forward(runner.batches[-1])
    runner.synchronize()
    assert runner.predicted_classes(out).shape == (28,)
    assert not out.requires_grad
    runner.close()
    assert runner.batches == []
    with pytest.raises(RuntimeError, match="closed"):
        runner.forward(())


def test_batch_larger_than_the_evaluation_set(mlp):
    runner = prepare(mlp, Config(batch_size=1000))
    assert len(runner.batches) == 1 and runner.batches[0][0].shape[0] == 540
    assert np.all(runner.batch_of_instance == 0)


def test_bf16_casts_inputs_and_stays_accurate_without_touching_the_workload(cnn):
    runner = prepare(cnn, Config(batch_size=64, precision="bf16"))
    assert runner.batches[0][0].dtype == torch.bfloat16
    accuracy = float(np.mean(run_all(runner) == cnn.labels))
    assert accuracy >= 0.95
    assert next(cnn.model.parameters()).dtype == torch.float32  # the workload keeps its fp32 model


def test_fp16_on_cpu_runs_or_is_refused_clearly(mlp):
    try:
        runner = prepare(mlp, Config(batch_size=64, precision="fp16"))
    except UserError as exc:
        assert "fp16" in str(exc) and "drop" in str(exc)
        return
    assert float(np.mean(run_all(runner) == mlp.labels)) >= 0.95


def test_a_precision_the_model_cannot_run_is_refused_before_timing():
    class NoHalf(torch.nn.Module):
        def forward(self, x):
            if x.dtype == torch.float16:
                raise RuntimeError('"addmm" not implemented for \'Half\'')
            return x

    w = Workload(name="nohalf", task="t", model=NoHalf(), inputs=torch.zeros(4, 3), labels=np.zeros(4, dtype=int))
    with pytest.raises(UserError, match="does not run in fp16 on cpu.*drop that precision"):
        prepare(w, Config(precision="fp16"))


def test_numpy_inputs_become_tensors_of_the_precision():
    torch.manual_seed(0)
    w = Workload(name="np", task="t", model=torch.nn.Linear(3, 2).eval(), inputs=np.random.rand(5, 3),
                 labels=np.zeros(5, dtype=int))
    runner = prepare(w, Config(batch_size=2))
    assert [a[0].dtype for a in runner.batches] == [torch.float32] * 3
    assert run_all(runner).shape == (5,)


def test_threads_are_set_and_verified(mlp, monkeypatch):
    prepare(mlp, Config(threads=2))
    assert torch.get_num_threads() == 2
    prepare(mlp, Config(threads=1))
    assert torch.get_num_threads() == 1
    monkeypatch.setattr(torch, "get_num_threads", lambda: 7)
    with pytest.raises(UserError, match="7 threads although 2"):
        prepare(mlp, Config(threads=2))


def test_more_threads_than_cores_warns():
    with pytest.warns(UserWarning, match="exceeds the .* cores"):
        check_supported(Config(threads=(os.cpu_count() or 1) + 1))


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_cuda_without_a_gpu_is_refused():
    with pytest.raises(UserError, match="no CUDA device on this system; drop device=cuda"):
        check_supported(Config(device="cuda"))


@pytest.mark.parametrize("config, fragment", [
    (Config(backend="onnxruntime", precision="bf16"), "fp32 only"),
    (Config(backend="onnxruntime", compile=True), "compile applies to backend=torch"),
    (Config(backend="tensorrt"), "unknown backend"),
])
def test_unsupported_combinations_are_refused(config, fragment):
    if config.backend == "onnxruntime" and not HAS_ORT:
        fragment = "pip install"
    with pytest.raises(UserError, match=fragment):
        check_supported(config)


def test_missing_onnxruntime_names_the_install(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "onnxruntime" else real(name, *a))
    with pytest.raises(UserError, match=r"pip install 'tqsim\[onnx\]'"):
        check_supported(Config(backend="onnxruntime"))


def test_compile_without_a_compiler_is_refused(monkeypatch):
    monkeypatch.delenv("CXX", raising=False)
    monkeypatch.setattr(backends.shutil, "which", lambda name: None)
    with pytest.raises(UserError, match="C\\+\\+ compiler"):
        check_supported(Config(compile=True))


@pytest.mark.skipif(not HAS_ORT, reason="onnxruntime not installed (pip install 'tqsim[onnx]')")
@pytest.mark.parametrize("name", ["digits-mlp", "digits-transformer"])
def test_onnxruntime_matches_torch(name):
    w = get_workload(name)
    runner = prepare(w, Config(batch_size=7, threads=2, backend="onnxruntime"))
    assert isinstance(runner.batches[0][0], np.ndarray) and len(runner.batches) == 78  # 77 × 7 + 1
    out = runner.forward(runner.batches[-1])
    assert isinstance(out, np.ndarray) and out.shape == (1, 10)
    assert np.array_equal(run_all(runner), run_all(prepare(w, Config(batch_size=7))))
    runner.close()


@pytest.mark.skipif(not HAS_ORT, reason="onnxruntime not installed (pip install 'tqsim[onnx]')")
def test_a_model_onnx_cannot_export_is_refused_naming_the_fix():
    class DataDependent(torch.nn.Module):
        def forward(self, x):
            return x * 2 if x.sum() > 0 else x

    w = Workload(name="dd", task="t", model=DataDependent(), inputs=torch.rand(6, 3), labels=np.zeros(6, dtype=int))
    with pytest.raises(UserError, match="exporting dd to ONNX failed.*use backend=torch"):
        prepare(w, Config(batch_size=2, backend="onnxruntime"))


@pytest.mark.slow
def test_compile_compiles_every_shape_before_timing(mlp):
    import torch._dynamo.utils as dynamo_utils

    runner = prepare(mlp, Config(batch_size=32, compile=True))
    graphs = dict(dynamo_utils.counters["stats"]).get("unique_graphs")
    run_all(runner)  # no compilation inside what would be timed
    assert dict(dynamo_utils.counters["stats"]).get("unique_graphs") == graphs
    assert float(np.mean(run_all(runner) == mlp.labels)) >= 0.95
    runner.close()


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("precision", ["fp32", "fp16", "bf16"])
def test_cuda_runs_and_stays_accurate(cnn, precision):
    runner = prepare(cnn, Config(batch_size=32, device="cuda", precision=precision))
    assert runner.batches[0][0].is_cuda
    out = runner.forward(runner.batches[0])
    runner.synchronize()
    assert out.is_cuda
    assert float(np.mean(run_all(runner) == cnn.labels)) >= 0.95
    runner.close()
