"""tqsim: latency and tail quality of deep-learning inference under a deadline.

The Python API (docs/api.md) is exported lazily, so that ``import tqsim`` stays cheap (no torch, PyMC or
xarray until a call needs them): ``tqsim.Workspace``, ``tqsim.Fit``, ``tqsim.Calibration``,
``tqsim.Forecast``, ``tqsim.Workload``, ``tqsim.UserError``.
"""

import importlib as _importlib
import warnings as _warnings

__version__ = "0.2.0"

# ArviZ announces its coming refactor on every import; tqsim pins arviz < 1.0, so the notice is noise
_warnings.filterwarnings("ignore", message="ArviZ is undergoing a major refactor", category=FutureWarning)

# name -> the module that defines it, imported on first access (PEP 562)
_EXPORTS = {"Workspace": "tqsim.api", "Fit": "tqsim.api", "Calibration": "tqsim.api",
            "Forecast": "tqsim.forecast", "Workload": "tqsim.workloads.base", "UserError": "tqsim.errors"}

__all__ = ["__version__", *_EXPORTS]


def __getattr__(name: str):
    if name in _EXPORTS:
        value = getattr(_importlib.import_module(_EXPORTS[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'tqsim' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))
