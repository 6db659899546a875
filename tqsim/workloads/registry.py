"""Find a workload by name: the built-ins, or a user factory ``path/to/file.py:factory`` / ``module:factory``.

Importing this module is cheap (no torch): ``list_workloads`` answers from static metadata, and a
built-in's module (which trains or loads its network) is imported only when it is asked for.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import sys
from pathlib import Path
from typing import Any

from tqsim.data.workspace import safe_name, workload_name_of
from tqsim.errors import UserError
from tqsim.workloads.base import METRICS, Workload

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


def get_workload(spec: str) -> Workload:
    """A built-in by name, or the :class:`Workload` returned by a user factory (named after the spec)."""
    spec = str(spec).strip()
    if spec in BUILTINS:
        module, factory = BUILTINS[spec][:2]
        return check_workload(getattr(importlib.import_module(module), factory)(), spec)
    if ":" not in spec:
        raise UserError(f"unknown workload '{spec}'; built-ins are: {', '.join(BUILTINS)} "
                        "(or give your own as path/to/file.py:factory or module:factory).")
    where, _, attr = spec.rpartition(":")
    if not where or not attr:
        raise UserError(f"workload '{spec}' must look like path/to/file.py:factory or module:factory.")
    module = _load_module(where, spec)
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
    if not workload.digest and hasattr(workload.model, "state_dict"):
        from tqsim.workloads.training import state_digest

        workload.digest = state_digest(workload.model)  # so a calibration notices retrained weights
    return workload


def check_workload(w: Workload, spec: str) -> Workload:
    """Refuse a workload whose parts disagree, naming the part; cheap, no forward call."""
    import numpy as np

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
    if w.metric not in METRICS:
        raise UserError(f"workload {spec}: unknown metric '{w.metric}'; choose one of: {', '.join(METRICS)}.")
    if not callable(getattr(w.model, "forward", None)) and not callable(w.model):
        raise UserError(f"workload {spec}: model is {_describe(w.model)}; give a torch.nn.Module.")
    return w


def _load_module(where: str, spec: str):
    is_file = where.endswith(".py") or "/" in where or "\\" in where
    if not is_file:
        if os.getcwd() not in sys.path:  # like uvicorn/gunicorn: modules beside you import without install
            sys.path.insert(0, os.getcwd())
        try:
            return importlib.import_module(where)
        except ModuleNotFoundError as exc:
            if exc.name and where.startswith(exc.name):
                raise UserError(f"cannot import module '{where}' for workload {spec}; check the name, or give a "
                                "file path like path/to/file.py:factory.") from exc
            raise UserError(f"importing '{where}' failed: {exc} (install the missing package).") from exc
        except Exception as exc:
            raise UserError(f"importing '{where}' failed: {type(exc).__name__}: {exc} "
                            "(rerun with --debug for the traceback).") from exc
    path = Path(where).expanduser()
    if not path.is_file():
        raise UserError(f"workload file '{where}' not found (from {spec}); give an existing path, "
                        "e.g. examples/my_workload.py:make.")
    name = f"tqsim_user_workload_{safe_name(path.stem)}"
    module_spec = importlib.util.spec_from_file_location(name, path)
    if module_spec is None or module_spec.loader is None:
        raise UserError(f"workload file '{where}' is not a Python file (from {spec}); give a .py file, "
                        "e.g. examples/my_workload.py:make.")
    module = importlib.util.module_from_spec(module_spec)
    sys.modules[name] = module  # dataclasses and pickling look the module up by name
    try:
        module_spec.loader.exec_module(module)
    except Exception as exc:
        sys.modules.pop(name, None)
        raise UserError(f"loading workload file '{where}' failed: {type(exc).__name__}: {exc} "
                        "(rerun with --debug for the traceback).") from exc
    return module


def _describe(obj: Any) -> str:
    if obj is None:
        return "None"
    text = repr(obj)
    return f"a {type(obj).__name__} ({text[:60] + '…' if len(text) > 60 else text})"
