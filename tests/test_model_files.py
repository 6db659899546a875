"""Model files as workloads (issue 18, part 1): an .onnx or TorchScript .pt file and an .npz/.parquet of
inputs and labels calibrate with no Python written; every bad input exits 2 naming the fix, writing nothing."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys

import numpy as np
import pytest

from tests.cli_runner import run_cli
from tests.conftest import ENV, ROOT

torch = pytest.importorskip("torch")
pytest.importorskip("onnxruntime")
pytest.importorskip("onnx")

N, WRONG = 40, 10  # instances; labels changed on the first WRONG so the known correct fraction is 0.75
KNOWN = (N - WRONG) / N


class TwoInputs(torch.nn.Module):
    """A model with two named inputs of different types (features and token ids)."""

    def __init__(self):
        super().__init__()
        self.embed = torch.nn.Embedding(10, 4)
        self.head = torch.nn.Linear(4, 3)

    def forward(self, features, token_ids):
        return self.head(features + self.embed(token_ids).mean(1))


def _export(model, args, path, names, dynamic=True):
    axes = {n: {0: "batch"} for n in names} if dynamic else None
    torch.onnx.export(model, args, str(path), dynamo=False, input_names=names, output_names=["logits"],
                      dynamic_axes=axes)


def _labels(pred: np.ndarray) -> np.ndarray:
    labels = pred.copy()
    labels[:WRONG] = (labels[:WRONG] + 1) % 3
    return labels


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """Tiny models exported here (legacy exporter: offline and fast) and data with a known correct fraction."""
    d = tmp_path_factory.mktemp("files")
    torch.manual_seed(0)
    mlp = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 3)).eval()
    x = torch.randn(N, 4)
    with torch.no_grad():
        pred = mlp(x).argmax(-1).numpy()
    _export(mlp, (x[:2],), d / "mlp.onnx", ["x"])
    _export(mlp, (x[:4],), d / "fixed.onnx", ["x"], dynamic=False)
    torch.jit.save(torch.jit.trace(mlp, x[:2]), str(d / "mlp.pt"))
    torch.save(mlp.state_dict(), d / "weights.pt")
    labels = _labels(pred)
    np.savez(d / "mlp.npz", x=x.numpy().astype(np.float64), labels=labels)   # float64 cast to the model's float32
    np.savez(d / "single.npz", inputs=x.numpy(), labels=labels)              # single input under `inputs`
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"x": [row.tolist() for row in x.numpy()], "labels": labels}), d / "mlp.parquet")

    two = TwoInputs().eval()
    feats, ids = torch.randn(N, 4), torch.randint(0, 10, (N, 5))
    with torch.no_grad():
        pred2 = two(feats, ids).argmax(-1).numpy()
    _export(two, (feats[:2], ids[:2]), d / "two.onnx", ["features", "token_ids"])
    np.savez(d / "two.npz", features=feats.numpy(), token_ids=ids.numpy(), labels=_labels(pred2))
    np.savez(d / "renamed.npz", f=feats.numpy(), t=ids.numpy(), labels=_labels(pred2))
    (d / "two.toml").write_text('model = "two.onnx"\ndata = "renamed.npz"\ninputs = ["f", "t"]\n'
                                'name = "two-described"\ntask = "two inputs"\nmetric = "accuracy"\n')
    return {"dir": d, "mlp": mlp, "x": x, "pred": pred, "two": two, "pred2": pred2}


def _ncs(home):
    return sorted(home.rglob("*.nc"))


def _calibrate(args, home, capsys, monkeypatch):
    code, out, err = run_cli(["calibrate", *map(str, args), "--grid", "batch_size=1,4", "--grid", "threads=1",
                              "--passes", "2", "--warmup", "0", "--home", home, "--json"], capsys, monkeypatch)
    return code, (json.loads(out) if code == 0 else None), err


def _predictions(workload, config):
    from tqsim.measure.backends import prepare

    runner = prepare(workload, config)
    try:
        return np.concatenate([runner.predicted_classes(runner.forward(b)) for b in runner.batches])
    finally:
        runner.close()


def test_onnx_file_loads_and_predicts_as_the_torch_model(files):
    from tqsim.factors import Config
    from tqsim.workloads import get_workload

    d = files["dir"]
    wl = get_workload(str(d / "mlp.onnx"), str(d / "mlp.npz"))
    assert wl.name == "mlp" and wl.n_instances == N and wl.inputs.arrays[0].dtype == np.float32
    assert wl.digest == hashlib.sha256((d / "mlp.onnx").read_bytes()).hexdigest()[:16]
    assert wl.source["data"] == str((d / "mlp.npz").resolve())
    pred = _predictions(wl, Config(batch_size=3, threads=1, backend="onnxruntime"))
    np.testing.assert_array_equal(pred, files["pred"])
    assert (pred == wl.labels).mean() == KNOWN


def test_torchscript_file_runs_in_torch_with_precision(files):
    from tqsim.factors import Config
    from tqsim.workloads import get_workload

    d = files["dir"]
    wl = get_workload(str(d / "mlp.pt"), str(d / "single.npz"))  # traced forward(input): the `inputs` key fits
    assert wl.name == "mlp" and isinstance(wl.model, torch.jit.ScriptModule)
    np.testing.assert_array_equal(_predictions(wl, Config(batch_size=4, threads=1)), files["pred"])
    bf16 = _predictions(wl, Config(batch_size=4, threads=1, precision="bf16"))
    assert bf16.shape == (N,) and (bf16 == files["pred"]).mean() > 0.8  # cast, not refused


def test_threads_are_the_sessions_intra_op_threads_and_cuda_needs_its_provider(files):
    import onnxruntime as ort

    from tqsim.errors import UserError
    from tqsim.factors import Config
    from tqsim.measure.backends import check_supported, onnx_session

    session = onnx_session(str(files["dir"] / "mlp.onnx"), Config(threads=2, backend="onnxruntime"))
    assert session.get_session_options().intra_op_num_threads == 2
    assert session.get_providers() == ["CPUExecutionProvider"]
    if "CUDAExecutionProvider" not in ort.get_available_providers():
        with pytest.raises(UserError, match="no CUDA execution provider; use device=cpu"):
            check_supported(Config(backend="onnxruntime", device="cuda"))


@pytest.mark.gpu
def test_onnx_file_runs_on_the_cuda_provider(files):
    import onnxruntime as ort

    if "CUDAExecutionProvider" not in ort.get_available_providers():
        pytest.skip("this onnxruntime has no CUDA execution provider (onnxruntime-gpu)")
    from tqsim.factors import Config
    from tqsim.workloads import get_workload

    d = files["dir"]
    wl = get_workload(str(d / "mlp.onnx"), str(d / "mlp.npz"))
    pred = _predictions(wl, Config(batch_size=8, threads=1, backend="onnxruntime", device="cuda"))
    np.testing.assert_array_equal(pred, files["pred"])


def test_parquet_holds_the_same_instances_as_npz(files):
    from tqsim.workloads import get_workload

    d = files["dir"]
    a = get_workload(str(d / "mlp.onnx"), str(d / "mlp.parquet"))
    b = get_workload(str(d / "mlp.onnx"), str(d / "mlp.npz"))
    np.testing.assert_array_equal(a.labels, b.labels)
    np.testing.assert_allclose(a.inputs.arrays[0], b.inputs.arrays[0], rtol=1e-6)


def test_cli_calibration_of_an_onnx_file_records_its_correctness_and_source(files, tmp_path, capsys, monkeypatch):
    d = files["dir"]
    code, out, err = _calibrate(["--workload", d / "mlp.onnx", "--data", d / "mlp.npz"], tmp_path, capsys,
                                monkeypatch)
    assert code == 0, err
    assert out["workload"] == "mlp" and [c["quality"] for c in out["configs"]] == [KNOWN, KNOWN]
    from tqsim.data.io import read_calibration

    paths = _ncs(tmp_path)
    assert [p.stem for p in paths] == ["bs1-th1-fp32-onnxruntime-cpu", "bs4-th1-fp32-onnxruntime-cpu"]
    ds = read_calibration(paths[1])
    assert ds.attrs["backend"] == "onnxruntime"
    assert ds.attrs["model_digest"] == hashlib.sha256((d / "mlp.onnx").read_bytes()).hexdigest()[:16]
    assert float((ds["prediction"].values == ds["label"].values).mean()) == KNOWN
    source = json.loads(ds.attrs["workload_source"])
    assert source["model"] == str((d / "mlp.onnx").resolve()) and source["kind"] == "onnx"
    # `tqsim check` rebuilds the workload from what the file recorded, no --data retyped
    from tqsim.workloads import get_workload

    assert get_workload(source["spec"], source["data"]).digest == ds.attrs["model_digest"]


def test_multi_input_model_through_a_toml_description(files, tmp_path, capsys, monkeypatch):
    d = files["dir"]
    code, out, err = _calibrate(["--workload", d / "two.toml"], tmp_path, capsys, monkeypatch)
    assert code == 0, err
    assert out["workload"] == "two-described" and [c["quality"] for c in out["configs"]] == [KNOWN, KNOWN]
    from tqsim.factors import Config
    from tqsim.workloads import get_workload

    wl = get_workload(str(d / "two.onnx"), str(d / "two.npz"))  # named like the inputs: no description needed
    assert wl.task.startswith("two.onnx") and wl.float_inputs == (0,)
    np.testing.assert_array_equal(_predictions(wl, Config(batch_size=4, backend="onnxruntime")), files["pred2"])


def test_a_changed_model_file_is_noticed_on_resume(files, tmp_path, capsys, monkeypatch):
    d, work = files["dir"], tmp_path / "work"
    work.mkdir()
    (work / "m.onnx").write_bytes((d / "mlp.onnx").read_bytes())
    assert _calibrate(["--workload", work / "m.onnx", "--data", d / "mlp.npz"], tmp_path, capsys, monkeypatch)[0] == 0
    torch.manual_seed(1)
    other = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 3)).eval()
    _export(other, (files["x"][:2],), work / "m.onnx", ["x"])
    code, _, err = _calibrate(["--workload", work / "m.onnx", "--data", d / "mlp.npz"], tmp_path, capsys,
                              monkeypatch)
    assert code == 2 and "different model" in err and "--fresh" in err


def _write(path, content):
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    return path


def _bad_cases(d, tmp):
    """(arguments, a phrase of the message) for each user mistake; built lazily, needing the fixture's files."""
    np.savez(tmp / "wrong_keys.npz", features=np.zeros((N, 4), np.float32), ids=np.zeros((N, 5)), labels=np.zeros(N))
    np.savez(tmp / "short.npz", x=np.zeros((N, 4), np.float32), labels=np.zeros(N - 3))
    np.savez(tmp / "nolabels.npz", x=np.zeros((N, 4), np.float32))
    np.savez(tmp / "float_ids.npz", features=np.zeros((N, 4), np.float32), token_ids=np.full((N, 5), 0.5),
             labels=np.zeros(N))
    _write(tmp / "garbage.npz", b"not an npz")
    _write(tmp / "bad.onnx", bytes(range(256)) * 4)
    _write(tmp / "data.csv", "x,labels\n")
    _write(tmp / "unknown.toml", 'model = "x.onnx"\nepochs = 3\n')
    _write(tmp / "typed.toml", f'model = "{d / "mlp.onnx"}"\ninputs = "x"\n')
    _write(tmp / "nomodel.toml", 'data = "d.npz"\n')
    _write(tmp / "nodata.toml", f'model = "{d / "mlp.onnx"}"\n')
    _write(tmp / "count.toml", f'model = "{d / "two.onnx"}"\ndata = "{d / "two.npz"}"\ninputs = ["features"]\n')
    onnx, npz = d / "mlp.onnx", d / "mlp.npz"
    return [
        (["--workload", tmp / "missing.onnx", "--data", npz], "does not exist"),
        (["--workload", tmp / "bad.onnx", "--data", npz], "torch.onnx.export"),
        (["--workload", d / "weights.pt", "--data", npz], "torch.jit.save"),
        (["--workload", onnx, "--data", tmp / "missing.npz"], "does not exist"),
        (["--workload", onnx, "--data", tmp / "garbage.npz"], "unreadable"),
        (["--workload", onnx, "--data", tmp / "data.csv"], ".npz or .parquet"),
        (["--workload", d / "two.onnx", "--data", tmp / "wrong_keys.npz"], "missing token_ids; extra ids"),
        (["--workload", onnx, "--data", tmp / "short.npz"], "one label per instance"),
        (["--workload", onnx, "--data", tmp / "nolabels.npz"], "no `labels` array"),
        (["--workload", d / "two.onnx", "--data", tmp / "float_ids.npz"], "store it as int64"),
        (["--workload", "digits-mlp", "--data", npz], "--data goes with a model file"),
        (["--data", npz], "--data goes with a model file"),
        (["--workload", onnx], "add --data"),
        (["--workload", tmp / "nodata.toml"], "add --data"),
        (["--workload", tmp / "unknown.toml"], "unknown key(s) ['epochs']"),
        (["--workload", tmp / "typed.toml"], "inputs = 'x' must be a list of strings"),
        (["--workload", tmp / "nomodel.toml"], "no `model` key"),
        (["--workload", tmp / "count.toml"], "list one data key per model input"),
        (["--workload", onnx, "--data", npz, "--grid", "backend=torch"], "runs in onnxruntime; drop backend=torch"),
        (["--workload", onnx, "--data", npz, "--grid", "precision=fp16"], "--grid precision=fp32"),
        (["--workload", d / "fixed.onnx", "--data", npz], "dynamic batch axis"),
        (["--workload", d / "mlp.pt", "--data", d / "single.npz", "--grid", "backend=onnxruntime"],
         "export the model to .onnx"),
    ]


CASES = 22


@pytest.mark.parametrize("case", range(CASES))
def test_each_bad_input_exits_2_naming_the_fix_and_writes_nothing(files, tmp_path, capsys, monkeypatch, case):
    cases = _bad_cases(files["dir"], tmp_path)
    assert len(cases) == CASES
    args, needle = cases[case]
    home = tmp_path / "home"
    code, _, err = _calibrate(args, home, capsys, monkeypatch)
    assert code == 2 and needle in " ".join(err.split()), err
    assert _ncs(home) == []


@pytest.mark.slow
def test_onnx_file_calibrate_fit_predict_check_with_no_python(files, tmp_path):
    """What a new user types: calibrate an exported .onnx and an .npz, fit, forecast, check the machine."""
    d, home = files["dir"], tmp_path / "home"

    def tqsim(*args):
        p = subprocess.run([sys.executable, "-m", "tqsim", *map(str, args), "--home", str(home), "--json"],
                           capture_output=True, text=True, env=ENV, cwd=ROOT)
        assert p.returncode == 0, p.stderr
        return json.loads(p.stdout)

    cal = tqsim("calibrate", "--workload", d / "mlp.onnx", "--data", d / "mlp.npz", "--grid", "batch_size=1,4,16",
                "--passes", "6", "--warmup", "0")
    assert {c["config"]["backend"] for c in cal["configs"]} == {"onnxruntime"}
    tqsim("fit", "--draws", "300", "--tune", "300")
    fc = tqsim("predict", "--set", "batch_size=8", "--set", "threads=1")
    assert fc["workload"] == "mlp" and fc["config_id"] == "bs8-th1-fp32-onnxruntime-cpu"
    p50 = fc["latency_s"]["p50"]
    assert 0 < p50["lo"] <= p50["median"] <= p50["hi"] < 1.0
    check = tqsim("check")  # rebuilds the file workload from the calibration's record: no --data
    assert check["workload"] == "mlp" and check["anchors"][0]["config_id"].endswith("onnxruntime-cpu")
