"""Quality metrics: what turns a model's outputs on the evaluation set into per-instance scores in [0, 1].

Every metric scores each instance (accuracy and ``top_k:K`` 0 or 1, a user callable any fraction);
the quality of a pass is the mean score with late instances scoring 0 (docs/method.md, "Quality
metrics"). ``macro_f1`` is the one metric that is not a mean of scores: it is computed from the
stored predictions and labels, and its per-instance score is plain correctness.
"""

from __future__ import annotations

import dataclasses
import functools
import sys
from typing import Any, Callable

import numpy as np

from tqsim.errors import UserError

BUILTIN_METRICS = ("accuracy", "top_k:K", "macro_f1")
HINT = ("choose accuracy, top_k:K (e.g. top_k:5), macro_f1, or your own function as module:function or "
        "path/to/file.py:function")


@dataclasses.dataclass(frozen=True)
class Metric:
    """A resolved metric: ``name`` is what calibration files record (``quality_metric``)."""

    name: str
    _score: Callable[[Any, np.ndarray, np.ndarray], np.ndarray] = dataclasses.field(repr=False)
    needs_outputs: bool = True

    def score(self, output: Any, labels: np.ndarray, prediction: np.ndarray) -> np.ndarray:
        """Per-instance scores of one batch (float, in [0, 1]); refuses anything else, naming the metric."""
        got = self._score(output, np.asarray(labels), np.asarray(prediction))
        return check_scores(got, len(labels), self.name)


def output_array(output: Any) -> np.ndarray:
    """A forward call's output as a float NumPy array: tensors, ONNX arrays, ``.logits`` objects, tuples."""
    if hasattr(output, "logits"):  # transformers' ModelOutput
        output = output.logits
    elif isinstance(output, (tuple, list)) and output and not np.isscalar(output[0]):
        output = output[0]
    if hasattr(output, "detach"):  # torch: bf16/fp16 and CUDA tensors as fp32 on the CPU
        output = output.detach().float().cpu().numpy()
    return np.asarray(output, dtype=np.float64)


def top_k_scores(outputs: np.ndarray, labels: np.ndarray, k: int) -> np.ndarray:
    """1.0 where the label is among the ``k`` largest outputs of its row, else 0.0.

    Ties count in the label's favour: the label is in the top k when fewer than k outputs are
    strictly larger than its own (so an all-equal row is a hit, whichever class argmax would pick).
    """
    outputs = np.asarray(outputs, dtype=np.float64)
    labels = np.asarray(labels)
    name = f"top_k:{k}"
    if outputs.ndim != 2 or outputs.shape[0] != labels.shape[0]:
        raise UserError(f"metric {name} needs outputs of shape (instances, classes), got {outputs.shape} for "
                        f"{labels.shape[0]} labels; return one row of class scores per instance.")
    n_classes = outputs.shape[1]
    if k > n_classes:
        raise UserError(f"metric {name}: the model has only {n_classes} outputs per instance; choose K ≤ "
                        f"{n_classes}.")
    if not np.issubdtype(labels.dtype, np.integer) or labels.min(initial=0) < 0 or labels.max(initial=0) >= n_classes:
        raise UserError(f"metric {name} needs integer class labels in 0..{n_classes - 1}; check the labels.")
    own = outputs[np.arange(labels.size), labels]
    above = (outputs > own[:, None]).sum(axis=1)
    return (above < k).astype(np.float64)


def check_scores(scores: Any, n: int, name: str) -> np.ndarray:
    """Refuse per-instance scores of the wrong shape, NaN, or outside [0, 1], naming the metric."""
    try:
        arr = np.asarray(scores, dtype=np.float64)
    except (TypeError, ValueError):
        raise UserError(f"metric {name} returned {type(scores).__name__}, not numbers; return a NumPy array of "
                        f"{n} per-instance scores in [0, 1].") from None
    if arr.shape != (n,):
        raise UserError(f"metric {name} returned shape {arr.shape} for {n} instances; return one score per "
                        f"instance, shape ({n},).")
    if np.isnan(arr).any():
        raise UserError(f"metric {name} returned {int(np.isnan(arr).sum())} NaN score(s); return a score in "
                        "[0, 1] for every instance.")
    bad = (arr < 0) | (arr > 1)
    if bad.any():
        raise UserError(f"metric {name} returned scores outside [0, 1] (e.g. {arr[bad][0]:g}); return per-instance "
                        "scores in [0, 1] (1 = fully right).")
    return arr


def resolve_metric(metric: str | Callable) -> Metric:
    """The :class:`Metric` a workload names: a built-in, ``top_k:K``, a function, or ``module:function``."""
    if callable(metric):
        return _callable_metric(metric, _callable_name(metric))
    if not isinstance(metric, str):
        raise UserError(f"metric {metric!r} is a {type(metric).__name__}; {HINT}.")
    return _resolve_text(metric.strip())


@functools.lru_cache(maxsize=64)
def _resolve_text(text: str) -> Metric:
    """Resolved once per name, so a metric file is imported once per process, not once per configuration."""
    if text == "accuracy":
        return Metric("accuracy", lambda out, labels, pred: (pred == labels).astype(np.float64), needs_outputs=False)
    if text == "macro_f1":  # the score is correctness; the F1 itself comes from the stored predictions
        return Metric("macro_f1", lambda out, labels, pred: (pred == labels).astype(np.float64), needs_outputs=False)
    if text.startswith("top_k"):
        k_text = text.partition(":")[2]
        if not k_text.isdigit() or int(k_text) < 1:
            raise UserError(f"metric '{text}': write top_k:K with K a positive whole number, e.g. top_k:5.")
        k = int(k_text)
        return Metric(f"top_k:{k}", lambda out, labels, pred: top_k_scores(output_array(out), labels, k))
    spec = text.removeprefix("callable:")
    where, _, attr = spec.rpartition(":")
    if not where or not attr:
        raise UserError(f"unknown metric '{text}'; {HINT}.")
    from tqsim.workloads.user_code import load_user_module

    fn = getattr(load_user_module(where, spec, "metric"), attr, None)
    if not callable(fn):
        raise UserError(f"metric '{text}': '{where}' has no function '{attr}'; name a function "
                        "fn(outputs, labels) -> per-instance scores in [0, 1].")
    return _callable_metric(fn, f"callable:{spec}")


def _callable_metric(fn: Callable, name: str) -> Metric:
    def score(out: Any, labels: np.ndarray, pred: np.ndarray) -> np.ndarray:
        try:
            return fn(output_array(out), labels)
        except UserError:
            raise
        except Exception as exc:
            raise UserError(f"metric {name} failed: {type(exc).__name__}: {exc} (rerun with --debug for the "
                            "traceback).") from exc
    return Metric(name, score)


def _callable_name(fn: Callable) -> str:
    """``callable:module:function``; a function of a workload file loaded by path is named by that path."""
    module = getattr(fn, "__module__", None) or "?"
    where = getattr(sys.modules.get(module), "__file__", None) if module.startswith("tqsim_user_workload_") else None
    return f"callable:{where or module}:{getattr(fn, '__qualname__', type(fn).__name__)}"
