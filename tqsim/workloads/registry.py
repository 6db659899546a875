"""Find a workload by name: the built-ins, a model file or TOML description (tqsim/workloads/files.py),
or a user factory ``path/to/file.py:factory`` / ``module:factory``.

Importing this module is cheap (no torch): ``list_workloads`` answers from static metadata, and a
built-in's module (which trains or loads its network) is imported only when it is asked for.
"""

from __future__ import annotations

import importlib
from typing import Any

from tqsim.data.workspace import safe_name, workload_name_of
from tqsim.errors import UserError
from tqsim.workloads.base import Workload
from tqsim.workloads.user_code import load_user_module

# name -> (module, factory, task, instances, metric). Instances and metric are stated here so that
# listing never trains; a test checks they match what the factory returns.
BUILTINS: dict[str, tuple[str, str, str, int, str]] = {
    "digits-cnn": ("tqsim.workloads.digits", "digits_cnn", "classify 8×8 digit images (CNN)", 540, "accuracy"),
    "digits-mlp": ("tqsim.workloads.digits", "digits_mlp", "classify 8×8 digit images (MLP)", 540, "accuracy"),
    "digits-transformer": ("tqsim.workloads.transformer", "digits_transformer",
                           "classify digits from variable-length ink-token sequences (transformer)", 540,
                           "accuracy"),
    "minilm-kaomoji": ("tqsim.workloads.kaomoji", "minilm_kaomoji",
                       "classify kaomoji emoticons into 10 categories (pretrained MiniLM encoder, variable-length "
                       "text)", 256, "accuracy"),
}


def list_workloads() -> list[dict[str, Any]]:
    """The built-ins as ``{name, task, instances, metric}``, without building any of them."""
    return [{"name": name, "task": task, "instances": n, "metric": metric}
            for name, (_, _, task, n, metric) in BUILTINS.items()]


def get_workload(spec: str, data: str | None = None) -> Workload:
    """A built-in by name, a model file (``.onnx``/``.pt``, with its ``data`` file) or TOML description,
    or the :class:`Workload` returned by a user factory (named after the spec)."""
    from tqsim.workloads.files import is_file_spec, load_file_workload

    spec = str(spec).strip()
    if is_file_spec(spec):
        return check_workload(load_file_workload(spec, data), spec)
    if data is not None:
        raise UserError(f"--data goes with a model file workload (.onnx, .pt or a .toml description), not {spec}; "
                        "drop --data, or give --workload model.onnx.")
    if spec in BUILTINS:
        module, factory = BUILTINS[spec][:2]
        return check_workload(getattr(importlib.import_module(module), factory)(), spec)
    if ":" not in spec:
        raise UserError(f"unknown workload '{spec}'; built-ins are: {', '.join(BUILTINS)} "
                        "(or give your own as model.onnx/model.pt with --data, path/to/file.py:factory or "
                        "module:factory).")
    where, _, attr = spec.rpartition(":")
    if not where or not attr:
        raise UserError(f"workload '{spec}' must look like path/to/file.py:factory or module:factory.")
    module = load_user_module(where, spec)
    factory = getattr(module, attr, None)
    if factory is None:
        found = sorted(n for n, v in vars(module).items() if callable(v) and not n.startswith("_")
                       and getattr(v, "__module__", None) == module.__name__)
        hint = f" (callables there: {', '.join(found)})" if found else ""
        raise UserError(f"'{where}' has no factory '{attr}'{hint}; name a function that returns a tqsim Workload.")
    if not callable(factory):
        raise UserError(f"'{attr}' in '{where}' is a {type(factory).__name__}, not a function; "
                        "name a function that returns a tqsim Workload.")
    try:
        workload = factory()
    except UserError:
        raise
    except SystemExit as exc:  # `--workload sys:exit` once ended the calibration with exit 0, nothing measured
        raise UserError(f"the workload factory {spec} exited (SystemExit {exc.code}) instead of returning a "
                        "Workload; name a function that returns tqsim.workloads.Workload.") from None
    except Exception as exc:
        raise UserError(f"the workload factory {spec} failed: {type(exc).__name__}: {exc} "
                        "(rerun with --debug for the traceback).") from exc
    if not isinstance(workload, Workload):
        raise UserError(f"the factory {spec} returned {_describe(workload)}, not a tqsim Workload; "
                        "return tqsim.workloads.Workload(name=..., task=..., model=..., inputs=..., labels=...).")
    workload.name = safe_name(workload_name_of(spec))
    check_workload(workload, spec)
    return _with_digest(workload)


def resolve_workload(workload: str | Workload, data: str | None = None) -> Workload:
    """A spec through :func:`get_workload` (``data``: a model file's data file), or a :class:`Workload`
    object (the Python API's) checked as a factory's would be; the object is copied under a path-safe
    name, never changed."""
    if not isinstance(workload, Workload):
        return get_workload(workload, data)
    if data is not None:
        raise UserError("data goes with a model file spec (model.onnx), not a Workload object, which holds its "
                        "inputs and labels already; drop data.")
    import dataclasses

    if not isinstance(workload.name, str) or not workload.name.strip():
        raise UserError(f"the Workload's name {workload.name!r} is empty; give it a name, e.g. Workload(name=\"mine\", ...).")
    copy = dataclasses.replace(workload, name=safe_name(workload.name))
    return _with_digest(check_workload(copy, workload.name))


def _with_digest(workload: Workload) -> Workload:
    if not workload.digest and hasattr(workload.model, "state_dict"):
        from tqsim.workloads.training import state_digest

        workload.digest = state_digest(workload.model)  # so a calibration notices retrained weights
    return workload


def check_workload(w: Workload, spec: str) -> Workload:
    """Refuse a workload whose parts disagree, naming the part; cheap, no forward call."""
    import numpy as np

    from tqsim.workloads.files import OnnxFile

    w.labels = np.asarray(w.labels)
    if w.labels.ndim != 1 or len(w.labels) == 0:
        raise UserError(f"workload {spec}: labels must be a non-empty 1-D array (got shape {w.labels.shape}).")
    try:
        n_inputs = len(w.inputs)
    except TypeError:
        raise UserError(f"workload {spec}: inputs ({type(w.inputs).__name__}) must have a length, one entry "
                        "per instance.") from None
    if n_inputs != len(w.labels):
        raise UserError(f"workload {spec}: {n_inputs} inputs but {len(w.labels)} labels; give one label per "
                        "input instance.")
    if w.instance_size is not None:
        w.instance_size = np.asarray(w.instance_size)
        if w.instance_size.shape != w.labels.shape:
            raise UserError(f"workload {spec}: instance_size has {w.instance_size.size} entries for "
                            f"{len(w.labels)} instances; give one size per instance or None.")
    from tqsim.workloads.metrics import resolve_metric

    try:  # an unknown name or an unimportable metric function is refused before anything is measured
        resolve_metric(w.metric)
    except UserError as exc:
        raise UserError(f"workload {spec}: {exc}") from None
    if not isinstance(w.model, OnnxFile) and not callable(getattr(w.model, "forward", None)) and not callable(w.model):
        raise UserError(f"workload {spec}: model is {_describe(w.model)}; give a torch.nn.Module.")
    return w


def _describe(obj: Any) -> str:
    if obj is None:
        return "None"
    text = repr(obj)
    return f"a {type(obj).__name__} ({text[:60] + '…' if len(text) > 60 else text})"
