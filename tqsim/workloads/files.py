"""Model files as workloads: an ONNX or TorchScript file plus a data file, or a TOML naming them.

``tqsim calibrate --workload model.onnx --data eval.npz`` measures a model the user exported
without writing Python: the data file (``.npz`` or ``.parquet``) holds ``labels`` and one array per
model input, named as the input (a single-input model may use ``inputs``). A TOML description
(docs/schema.md, "Model files as workloads") records the same choice so it can be repeated.

Importing this module is cheap (no torch, no onnxruntime): the plan reads :func:`model_kind` to pick
the default backend, and the heavy libraries are imported only when a file is loaded.
"""

from __future__ import annotations

import dataclasses
import hashlib
import tomllib
from pathlib import Path
from typing import Any

import numpy as np

from tqsim.data.workspace import described, safe_name, workload_name_of
from tqsim.errors import UserError
from tqsim.workloads.base import Workload

MODEL_KINDS = {".onnx": "onnx", ".pt": "torchscript"}
DATA_SUFFIXES = (".npz", ".parquet")
DESCRIPTION_KEYS = {"model": str, "data": str, "metric": str, "inputs": list, "task": str, "name": str}
LABELS, SINGLE_INPUT = "labels", "inputs"


def is_file_spec(spec: str | None) -> bool:
    """Whether a ``--workload`` spec names a model file or a TOML description (not a built-in or factory)."""
    return spec is not None and Path(str(spec)).suffix.lower() in (*MODEL_KINDS, ".toml")


def model_kind(spec: str | None) -> str | None:
    """``"onnx"``/``"torchscript"`` for a model-file spec (read through a TOML), else None. Never raises:
    a broken TOML is reported when the workload is loaded."""
    if not is_file_spec(spec):
        return None
    path = Path(str(spec))
    if path.suffix.lower() == ".toml":
        model = described(path, "model")
        if not isinstance(model, str):
            return None
        path = Path(model)
    return MODEL_KINDS.get(path.suffix.lower())


@dataclasses.dataclass(eq=False)
class OnnxFile:
    """An ONNX model file as it is: the onnxruntime backend runs ``path``; nothing is exported.

    ``input_dtypes`` are the NumPy types the inputs take; ``batch_dims`` the first dimension of each
    input: an int where it is fixed, None where it is dynamic (a ``dim_param`` or unnamed).
    """

    path: Path
    input_names: list[str]
    input_dtypes: list[np.dtype]
    batch_dims: list[int | None]

    @property
    def precision(self) -> str:
        """fp16 when a floating input is float16, else fp32: an ONNX file runs in the precision it was exported in."""
        return "fp16" if any(d == np.float16 for d in self.input_dtypes) else "fp32"

    def refuse_unsupported(self, config: Any, n_instances: int) -> None:
        """Refuse, naming the fix, a configuration this file cannot run (called before anything is measured)."""
        name = self.path.name
        if config.backend != "onnxruntime":
            raise UserError(f"{name} is an ONNX file and runs in onnxruntime; drop backend={config.backend} "
                            "(onnxruntime is the default for an .onnx workload).")
        if config.precision != self.precision:
            raise UserError(f"{name} takes {self.precision} inputs, so it runs in {self.precision} only; use "
                            f"--grid precision={self.precision} (or export the model in {config.precision}).")
        for input_name, fixed in zip(self.input_names, self.batch_dims):
            if fixed is None:
                continue
            if fixed != config.batch_size:
                raise UserError(f"{name} has a fixed batch of {fixed} (input {input_name}), so batch_size="
                                f"{config.batch_size} cannot run; re-export it with a dynamic batch axis, e.g. "
                                f"torch.onnx.export(..., dynamic_axes={{'{input_name}': {{0: 'batch'}}}}).")
            if n_instances % fixed:
                raise UserError(f"{name} has a fixed batch of {fixed} (input {input_name}) but the last batch of "
                                f"the {n_instances} instances holds {n_instances % fixed}; re-export it with a "
                                "dynamic batch axis, or give a multiple of the batch in the data file.")


def load_file_workload(spec: str, data: str | None = None) -> Workload:
    """The workload of a model file (``.onnx``/``.pt``) or TOML description and its data file."""
    spec = str(spec).strip()
    description: dict[str, Any] = {}
    if Path(spec).suffix.lower() == ".toml":
        description = read_description(spec)
        base = Path(spec).expanduser().resolve().parent
        model_path = base / description["model"]
        if data is None and "data" in description:
            data = str(base / description["data"])
    else:
        model_path = Path(spec).expanduser()
    if data is None:
        raise UserError(f"the model file workload {spec} needs its evaluation data: add --data eval.npz (or .parquet) "
                        "holding `labels` and one array per model input.")
    model_path = _existing(model_path, "model file", "give the path of an .onnx or TorchScript .pt file")
    kind = MODEL_KINDS.get(model_path.suffix.lower())
    if kind is None:
        raise UserError(f"{model_path} is neither an ONNX (.onnx) nor a TorchScript (.pt) file; export the model "
                        "with torch.onnx.export or save it with torch.jit.save.")
    data_path = _existing(Path(data).expanduser(), "data file", "give an .npz or .parquet file")
    model, names = _load_onnx(model_path) if kind == "onnx" else _load_torchscript(model_path)
    arrays = read_data(data_path)
    keys, inputs, labels = _match_inputs(names, arrays, description.get("inputs"), model_path, data_path)
    if kind == "onnx":
        inputs = [_cast(a, dt, key, data_path) for a, dt, key in zip(inputs, model.input_dtypes, keys)]
    else:
        inputs = [a.astype(np.float32) if a.dtype == np.float64 else a for a in inputs]
    model_bytes = model_path.read_bytes()
    metric = description.get("metric", "accuracy")
    source = {"spec": str(Path(spec).expanduser().resolve()), "kind": kind, "model": str(model_path.resolve()),
              "data": str(data_path.resolve()), "data_sha256": hashlib.sha256(data_path.read_bytes()).hexdigest()}
    name = safe_name(workload_name_of(spec))
    task = description.get("task") or f"{model_path.name} ({'ONNX' if kind == 'onnx' else 'TorchScript'}) on " \
                                      f"{data_path.name}"
    return Workload(name=name, task=task, model=model, inputs=Columns(inputs), labels=labels, metric=metric,
                    collate=Columns.collate, predict=first_output_classes,
                    digest=hashlib.sha256(model_bytes).hexdigest()[:16],
                    float_inputs=tuple(i for i, a in enumerate(inputs) if np.issubdtype(a.dtype, np.floating)),
                    source=source)


def read_description(path: str | Path) -> dict[str, Any]:
    """A TOML workload description; unknown keys and wrong types are refused naming the key."""
    p = _existing(Path(path).expanduser(), "workload description", "give an existing .toml file")
    try:
        desc = tomllib.loads(p.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as exc:
        raise UserError(f"{p}: TOML syntax error: {exc}.") from None
    except (UnicodeDecodeError, OSError) as exc:
        raise UserError(f"{p}: not a readable TOML text file ({type(exc).__name__}).") from None
    unknown = sorted(set(desc) - set(DESCRIPTION_KEYS))
    if unknown:
        raise UserError(f"{p}: unknown key(s) {unknown}; allowed: {sorted(DESCRIPTION_KEYS)} "
                        "(docs/schema.md, \"Model files as workloads\").")
    for key, kind in DESCRIPTION_KEYS.items():
        if key in desc and not isinstance(desc[key], kind):
            raise UserError(f"{p}: {key} = {desc[key]!r} must be a {'list of strings' if kind is list else 'string'}, "
                            f"e.g. {_EXAMPLE[key]}.")
    if "model" not in desc:
        raise UserError(f"{p}: no `model` key; add e.g. {_EXAMPLE['model']} (a path relative to the TOML).")
    inputs = desc.get("inputs")
    if inputs is not None and (not inputs or not all(isinstance(s, str) for s in inputs)):
        raise UserError(f"{p}: inputs = {inputs!r} must be a non-empty list of strings, e.g. {_EXAMPLE['inputs']}.")
    return desc


_EXAMPLE = {"model": 'model = "model.onnx"', "data": 'data = "eval.npz"', "metric": 'metric = "accuracy"',
            "inputs": 'inputs = ["input_ids", "attention_mask"]', "task": 'task = "classify reviews"',
            "name": 'name = "reviews"'}


def read_data(path: Path) -> dict[str, np.ndarray]:
    """The arrays of an ``.npz`` (one per key) or ``.parquet`` file (one per column; a cell may be a list)."""
    suffix = path.suffix.lower()
    if suffix not in DATA_SUFFIXES:
        raise UserError(f"data file {path}: expected .npz or .parquet (got '{suffix or 'no suffix'}'); save the "
                        "arrays with numpy.savez or as a Parquet table.")
    try:
        if suffix == ".npz":
            with np.load(path, allow_pickle=False) as npz:
                return {k: npz[k] for k in npz.files}
        import pyarrow.parquet as pq

        table = pq.read_table(path)
    except ImportError:
        raise UserError("reading .parquet needs pyarrow: `pip install 'tqsim[onnx]'`, or save the data as .npz.") from None
    except Exception as exc:
        raise UserError(f"data file {path} is unreadable ({type(exc).__name__}: {str(exc)[:120]}); give an .npz "
                        "(numpy.savez) or a Parquet table.") from None
    out = {}
    for name in table.column_names:
        values = np.asarray(table.column(name).to_pylist())
        if values.dtype == object:
            raise UserError(f"data file {path}: column '{name}' has missing cells or cells of different lengths; "
                            "pad every instance to the same shape.")
        out[name] = values
    return out


class Columns:
    """Named-free input arrays in the model's input order; ``len`` is the number of instances."""

    def __init__(self, arrays: list[np.ndarray]):
        self.arrays = arrays

    def __len__(self) -> int:
        return len(self.arrays[0])

    @staticmethod
    def collate(columns: "Columns", index: np.ndarray) -> tuple:
        return tuple(a[index] for a in columns.arrays)


def first_output_classes(output: Any) -> np.ndarray:
    """Classes from the first model output: its argmax over the last axis, or itself if already 1-D integers."""
    if isinstance(output, dict):
        output = next(iter(output.values()))
    if isinstance(output, (tuple, list)):
        output = output[0]
    if hasattr(output, "detach"):
        output = output.detach().cpu()
        output = (output.float() if output.is_floating_point() else output).numpy()
    output = np.asarray(output)
    if output.ndim == 1 and np.issubdtype(output.dtype, np.integer):
        return output
    return output.argmax(axis=-1)


def _existing(path: Path, what: str, fix: str) -> Path:
    if not path.exists():
        raise UserError(f"{what} {path} does not exist; {fix}.")
    if not path.is_file():
        raise UserError(f"{what} {path} is not a file; {fix}.")
    return path


def _load_onnx(path: Path) -> tuple[OnnxFile, list[str]]:
    try:
        import onnx
        from onnx.helper import tensor_dtype_to_np_dtype
    except ImportError:
        raise UserError("an .onnx workload needs `pip install 'tqsim[onnx]'` (onnxruntime, onnx).") from None
    try:
        proto = onnx.load(str(path), load_external_data=False)
    except Exception as exc:
        raise UserError(f"{path} is not an ONNX model ({type(exc).__name__}); export one with torch.onnx.export.") \
            from None
    graph = proto.graph
    initializers = {i.name for i in graph.initializer}
    graph_inputs = [i for i in graph.input if i.name not in initializers]
    if not graph.output or not graph_inputs or proto.ir_version == 0:
        raise UserError(f"{path} is not an ONNX model (no graph inputs or outputs); export one with "
                        "torch.onnx.export.")
    names, dtypes, batch = [], [], []
    for i in graph_inputs:
        tensor = i.type.tensor_type
        try:
            dtypes.append(np.dtype(tensor_dtype_to_np_dtype(tensor.elem_type)))
        except (KeyError, TypeError, ValueError):
            raise UserError(f"{path}: input {i.name} is not a tensor of a NumPy type; tqsim feeds tensors only.") \
                from None
        dims = list(tensor.shape.dim)
        batch.append(dims[0].dim_value if dims and dims[0].HasField("dim_value") else None)
        names.append(i.name)
    return OnnxFile(path.resolve(), names, dtypes, batch), names


def _load_torchscript(path: Path) -> tuple[Any, list[str]]:
    import torch

    try:
        model = torch.jit.load(str(path), map_location="cpu")
    except Exception as exc:
        raise UserError(f"{path} is not a TorchScript file ({type(exc).__name__}); save the model with "
                        "torch.jit.save(torch.jit.script(model), path) (a state_dict cannot be run).") from None
    model.eval()
    names = [a.name for a in model.forward.schema.arguments[1:]]  # [0] is self
    return model, names


def _match_inputs(names: list[str], arrays: dict[str, np.ndarray], declared: list[str] | None,
                  model_path: Path, data_path: Path) -> tuple[list[str], list[np.ndarray], np.ndarray]:
    """The data keys and arrays in the model's input order, and the labels; mismatched keys named both ways."""
    if LABELS not in arrays:
        raise UserError(f"data file {data_path} has no `{LABELS}` array; add one label per instance.")
    labels = np.asarray(arrays[LABELS])
    if declared is not None:
        if len(declared) != len(names):
            raise UserError(f"the description lists {len(declared)} inputs {declared} but {model_path.name} takes "
                            f"{len(names)} ({', '.join(names)}); list one data key per model input, in order.")
        wanted = list(declared)
    elif len(names) == 1 and names[0] not in arrays and SINGLE_INPUT in arrays:
        wanted = [SINGLE_INPUT]
    else:
        wanted = list(names)
    missing = [k for k in wanted if k not in arrays]
    extra = [k for k in arrays if k != LABELS and k not in wanted]
    if missing or extra:
        parts = ([f"missing {', '.join(missing)}"] if missing else []) + ([f"extra {', '.join(extra)}"] if extra else [])
        raise UserError(f"data file {data_path} does not match the inputs of {model_path.name} "
                        f"({', '.join(names)}): {'; '.join(parts)}; name one array per model input "
                        f"(a single-input model may use `{SINGLE_INPUT}`) plus `{LABELS}`.")
    inputs = [np.asarray(arrays[k]) for k in wanted]
    for key, a in zip(wanted, inputs):
        if a.ndim == 0 or len(a) != len(labels):
            raise UserError(f"data file {data_path}: `{key}` holds {len(a) if a.ndim else 0} instances but `{LABELS}` "
                            f"{len(labels)}; give one label per instance.")
    return wanted, inputs, labels


def _cast(a: np.ndarray, dtype: np.dtype, key: str, data_path: Path) -> np.ndarray:
    if a.dtype == dtype:
        return a
    if not np.can_cast(a.dtype, dtype, casting="same_kind"):
        raise UserError(f"data file {data_path}: `{key}` is {a.dtype} but the model takes {dtype}; store it as {dtype}.")
    return a.astype(dtype)
