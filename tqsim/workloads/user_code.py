"""Import the user's own code named by a spec (``module:attr`` or ``path/to/file.py:attr``): a workload
factory or a metric function. One loader, so both kinds of spec fail with the same messages."""

from __future__ import annotations

import importlib
import importlib.util
import os
import sys
from pathlib import Path

from tqsim.data.workspace import safe_name
from tqsim.errors import UserError


def load_user_module(where: str, spec: str, kind: str = "workload"):
    """Import ``where`` (a module name, or a .py path) for ``spec``; ``kind`` names what it provides."""
    is_file = where.endswith(".py") or "/" in where or "\\" in where
    if not is_file:
        if os.getcwd() not in sys.path:  # like uvicorn/gunicorn: modules beside you import without install
            sys.path.insert(0, os.getcwd())
        try:
            return importlib.import_module(where)
        except ModuleNotFoundError as exc:
            if exc.name and where.startswith(exc.name):
                raise UserError(f"cannot import module '{where}' for {kind} {spec}; check the name, or give a "
                                "file path like path/to/file.py:function.") from exc
            raise UserError(f"importing '{where}' failed: {exc} (install the missing package).") from exc
        except Exception as exc:
            raise UserError(f"importing '{where}' failed: {type(exc).__name__}: {exc} "
                            "(rerun with --debug for the traceback).") from exc
    path = Path(where).expanduser()
    if not path.is_file():
        raise UserError(f"{kind} file '{where}' not found (from {spec}); give an existing path, "
                        "e.g. examples/my_workload.py:make.")
    name = f"tqsim_user_workload_{safe_name(path.stem)}"
    module_spec = importlib.util.spec_from_file_location(name, path)
    if module_spec is None or module_spec.loader is None:
        raise UserError(f"{kind} file '{where}' is not a Python file (from {spec}); give a .py file, "
                        "e.g. examples/my_workload.py:make.")
    module = importlib.util.module_from_spec(module_spec)
    sys.modules[name] = module  # dataclasses and pickling look the module up by name
    try:
        module_spec.loader.exec_module(module)
    except Exception as exc:
        sys.modules.pop(name, None)
        raise UserError(f"loading {kind} file '{where}' failed: {type(exc).__name__}: {exc} "
                        "(rerun with --debug for the traceback).") from exc
    return module
