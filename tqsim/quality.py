"""Quality at a deadline (Q@T) and tail quality: NumPy core over any leading axes, xarray wrappers.

Q@T of one pass at threshold τ: every instance whose latency exceeds τ counts as wrong and stays in
the denominator (DESIGN §1). Definitions and references: docs/method.md.
"""

from __future__ import annotations

import numpy as np


def quality_at_deadline(latency_s: np.ndarray, thresholds_s: np.ndarray, *, correct: np.ndarray | None = None,
                        prediction: np.ndarray | None = None, label: np.ndarray | None = None,
                        metric: str = "accuracy") -> np.ndarray:
    """Q@T per pass and threshold.

    ``latency_s``: (..., pass, instance). ``thresholds_s``: (k,) or broadcastable to (..., k).
    Returns (..., pass, k). ``accuracy`` needs ``correct`` (instance,); ``macro_f1`` needs
    ``prediction`` and ``label`` (instance,) — a late instance is predicted as no class at all.
    """
    lat = np.asarray(latency_s, dtype=float)
    tau = np.asarray(thresholds_s, dtype=float)
    tau = tau[..., None, None, :] if tau.ndim >= 1 else tau[None, None, None]
    valid = lat[..., None] <= tau  # (..., pass, instance, k)
    if metric == "accuracy":
        if correct is None:
            correct = np.asarray(prediction) == np.asarray(label)
        ok = np.asarray(correct, dtype=bool)[:, None]
        return (valid & ok).mean(axis=-2)
    if metric == "macro_f1":
        return _macro_f1(valid, np.asarray(prediction), np.asarray(label))
    raise ValueError(f"unknown metric {metric!r}")


def _macro_f1(valid: np.ndarray, prediction: np.ndarray, label: np.ndarray) -> np.ndarray:
    classes = np.unique(label)
    hit = (prediction == label)
    pred_oh = (prediction[:, None] == classes[None, :]).astype(float)  # (instance, class)
    tp_oh = pred_oh * hit[:, None]
    v = valid.astype(float)
    tp = np.einsum("...nk,nc->...kc", v, tp_oh)
    pred_c = np.einsum("...nk,nc->...kc", v, pred_oh)
    support = (label[:, None] == classes[None, :]).sum(axis=0).astype(float)
    fp = pred_c - tp
    fn = support - tp
    denom = 2 * tp + fp + fn
    f1 = np.where(denom > 0, 2 * tp / np.where(denom > 0, denom, 1), 0.0)
    return f1.mean(axis=-1)


def no_deadline_quality(*, correct=None, prediction=None, label=None, metric: str = "accuracy") -> float:
    """Quality when nothing is late."""
    lat = np.zeros((1, len(correct if correct is not None else label)))
    return float(quality_at_deadline(lat, np.array([1.0]), correct=correct, prediction=prediction, label=label,
                                     metric=metric)[0, 0])
