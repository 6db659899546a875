"""Built-in workloads on scikit-learn's bundled 8×8 digits: a small CNN and an MLP.

The evaluation set is a fixed, stratified 30 % held-out split (540 instances), so every system and
every release of tqsim scores the same instances.
"""

from __future__ import annotations

import functools

import numpy as np
import torch
from torch import nn

from tqsim.workloads.base import Workload
from tqsim.workloads.training import fit, trained

N_TEST = 540


@functools.lru_cache(maxsize=1)
def digits_split() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(x_train, x_test, y_train, y_test): pixel intensities 0..16 as int64, labels as int64."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    data = load_digits()
    x, y = data.data.astype(np.int64), data.target.astype(np.int64)
    x_tr, x_te, y_tr, y_te = train_test_split(x, y, test_size=0.3, random_state=0, stratify=y)
    for a in (x_tr, x_te, y_tr, y_te):
        a.setflags(write=False)
    return x_tr, x_te, y_tr, y_te


def images(x: np.ndarray) -> torch.Tensor:
    """Pixel rows → float (N, 1, 8, 8) in [0, 1]."""
    return torch.tensor(x, dtype=torch.float32).div_(16.0).reshape(-1, 1, 8, 8)


class DigitsCNN(nn.Module):
    """Two 3×3 conv layers, one pooling, two dense layers: ~40 k parameters."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, 16, 3, padding=1), nn.ReLU(),
            nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(),
            nn.MaxPool2d(2),
        )
        self.head = nn.Sequential(nn.Flatten(), nn.Dropout(0.25), nn.Linear(32 * 4 * 4, 64), nn.ReLU(),
                                  nn.Linear(64, 10))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


class DigitsMLP(nn.Module):
    """64 → 128 → 64 → 10 on the flattened image."""

    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Flatten(), nn.Linear(64, 128), nn.ReLU(), nn.Dropout(0.1),
                                 nn.Linear(128, 64), nn.ReLU(), nn.Linear(64, 10))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


CNN_RECIPE = {"epochs": 20, "batch_size": 64, "lr": 3e-3, "weight_decay": 1e-4, "seed": 0}
MLP_RECIPE = {"epochs": 60, "batch_size": 64, "lr": 3e-3, "weight_decay": 1e-4, "seed": 0}


def _image_workload(name: str, task: str, build, recipe: dict) -> Workload:
    x_tr, x_te, y_tr, _ = digits_split()
    train_x = images(x_tr)
    train_args = {k: v for k, v in recipe.items() if k != "seed"}
    model, digest = trained(name, build, recipe,
                            lambda m: fit(m, lambda idx: (train_x[idx],), y_tr, seed=recipe["seed"], **train_args))
    return Workload(name=name, task=task, model=model, inputs=images(x_te), labels=digits_split()[3].copy(),
                    metric="accuracy", digest=digest)


def digits_cnn() -> Workload:
    return _image_workload("digits-cnn", "classify 8×8 digit images (CNN)", DigitsCNN, CNN_RECIPE)


def digits_mlp() -> Workload:
    return _image_workload("digits-mlp", "classify 8×8 digit images (MLP)", DigitsMLP, MLP_RECIPE)
