"""The serving stacks tqsim can drive, and how a plan's set-up reads in each one's own knobs.

tqsim's batcher and LitServe's differ in one rule worth knowing when comparing them: LitServe's
``batch_timeout`` runs from when a worker starts collecting a batch (it then waits for up to that long, polling
its queue every millisecond), tqsim's ``max_wait`` from the oldest request's arrival.
"""

from __future__ import annotations

import importlib.util
from typing import Any

from tqsim.errors import UserError

STACKS = {"litserve": "LitServe (Lightning AI): its dynamic batching and worker processes"}


def require_stack(stack: str) -> None:
    """Refuse a stack tqsim does not know, or one whose package is not installed, naming the fix."""
    if stack not in STACKS:
        raise UserError(f"unknown serving stack '{stack}'; supported: {', '.join(STACKS)}.")
    if importlib.util.find_spec(stack) is None:
        raise UserError(f"--stack {stack} needs {stack}: pip install 'tqsim[{stack}]'.")


def stack_config(setup: Any, stack: str, workload: str = "digits-cnn", port: int = 8000,
                 batch_timer: str | None = None) -> dict:
    """The configuration that applies ``setup`` (replicas, threads, max_batch, max_wait_s, precision) to
    ``stack``: the ``tqsim serve`` command that serves ``workload`` so, and the stack's own arguments.
    ``batch_timer``: the rule the plan simulated (the stack's serving calibration), "cycle" for LitServe's own."""
    if stack not in STACKS:
        raise UserError(f"unknown serving stack '{stack}'; supported: {', '.join(STACKS)}.")
    wait_ms = f"{setup.max_wait_s * 1e3:g}ms"
    command = (f"tqsim serve --stack {stack} --workload {workload} --max-batch {setup.max_batch} --max-wait {wait_ms} "
               f"--replicas {setup.replicas} --threads {setup.threads} --port {port}")
    notes = [] if batch_timer == "cycle" else [
        "LitServe's batch_timeout counts from when a worker starts collecting a batch, not from the oldest request's "
        "arrival: the plan simulates that only with the stack's own serving calibration (`tqsim calibrate --serving "
        "'target=...,stack=litserve'`, whose fit then reports `batch timer: cycle`)."]
    if setup.precision != "fp32":
        notes.append(f"LitServe has no precision setting: cast the model to {setup.precision} in LitAPI.setup "
                     "(tqsim serve serves fp32).")
    litapi = {"max_batch_size": setup.max_batch, "batch_timeout": setup.max_wait_s}
    litserver = {"accelerator": "cpu", "workers_per_device": setup.replicas}
    kw = lambda d: ", ".join(f"{k}={v!r}" for k, v in d.items())  # noqa: E731
    code = (f"api = YourLitAPI({kw(litapi)}); server = LitServer(api, {kw(litserver)}); "
            f"torch.set_num_threads({setup.threads}) in YourLitAPI.setup")
    return {"stack": stack, "command": command, "litapi": litapi, "litserver": litserver,
            "torch_threads": setup.threads, "code": code, "notes": notes}
