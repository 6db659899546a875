"""Deterministic training of the built-in networks, with a weights cache keyed by the recipe.

Built-ins are trained on first use instead of shipped, so nothing is downloaded. Training runs on
one thread with a fixed seed, so the same recipe gives the same weights (and the same digest) on
the same machine; the cache key hashes the recipe *and* the source of the network class, so
editing either retrains instead of loading stale weights.
"""

from __future__ import annotations

import hashlib
import inspect
import json
import os
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from tqsim.data.io import replacing

RECIPE_VERSION = 1


def cache_dir() -> Path:
    """``$TQSIM_CACHE/weights`` or ``~/.cache/tqsim/weights``."""
    root = os.environ.get("TQSIM_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "tqsim")
    return Path(root).expanduser() / "weights"


def recipe_hash(name: str, model: torch.nn.Module, recipe: dict[str, Any]) -> str:
    try:
        source = inspect.getsource(type(model))
    except (OSError, TypeError):  # defined interactively: fall back to the architecture's printout
        source = repr(model)
    text = json.dumps({"name": name, "recipe": recipe, "version": RECIPE_VERSION, "source": source},
                      sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def state_digest(model: torch.nn.Module) -> str:
    """sha256 of the weights (names, dtypes, shapes, bytes): tells a calibration the model changed."""
    h = hashlib.sha256()
    for key, tensor in sorted(model.state_dict().items()):
        t = tensor.detach().cpu().contiguous()
        h.update(f"{key}:{t.dtype}:{tuple(t.shape)}".encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()[:16]


def _atomic_save(state: dict, path: Path) -> None:
    with replacing(path) as tmp:
        torch.save(state, tmp)


def fit(model: torch.nn.Module, batch_args: Callable[[np.ndarray], tuple], labels: np.ndarray, *,
        epochs: int, batch_size: int, lr: float, seed: int, weight_decay: float = 0.0) -> None:
    """Adam + cross-entropy with a cosine schedule; shuffling from a seeded generator."""
    gen = torch.Generator().manual_seed(seed)
    y = torch.tensor(np.asarray(labels), dtype=torch.long)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
    steps = epochs * -(-len(y) // batch_size)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps)
    model.train()
    for _ in range(epochs):
        order = torch.randperm(len(y), generator=gen).numpy()
        for start in range(0, len(y), batch_size):
            idx = order[start:start + batch_size]
            loss = torch.nn.functional.cross_entropy(model(*batch_args(idx)), y[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
    model.eval()


def trained(name: str, build: Callable[[], torch.nn.Module], recipe: dict[str, Any],
            train: Callable[[torch.nn.Module], None]) -> tuple[torch.nn.Module, str]:
    """Build the network under the recipe's seed, then load its weights from the cache or train them.

    Training runs on one thread (so it is reproducible) inside a forked RNG (so the caller's random
    state is untouched). Returns the model in eval mode with gradients off, and its digest.
    """
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(recipe["seed"])
        model = build()
        path = cache_dir() / f"{name}-{recipe_hash(name, model, recipe)}.pt"
        loaded = False
        if path.is_file():
            try:
                model.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
                loaded = True
            except Exception:  # a truncated or foreign file: retrain from the same seed rather than fail
                torch.manual_seed(recipe["seed"])
                model = build()
        if not loaded:
            threads = torch.get_num_threads()
            torch.set_num_threads(1)
            try:
                train(model)
            finally:
                torch.set_num_threads(threads)
            _atomic_save(model.state_dict(), path)
    model.eval()
    model.requires_grad_(False)
    return model, state_digest(model)
