"""Execution backends: turn (workload, configuration) into a :class:`Runner` the timing loop calls.

Everything that is not the forward call itself — collation, casting to the precision, moving to
the device, compiling, exporting to ONNX — happens here, once, before any timing, so a timed call
measures only the network. ``check_supported`` refuses a configuration this system cannot run
before anything is trained or measured.
"""

from __future__ import annotations

import contextlib
import copy
import importlib.util
import logging
import os
import shutil
import sys
import warnings
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np
import torch

from tqsim.errors import UserError
from tqsim.factors import Config
from tqsim.workloads.base import Workload

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


@dataclass
class Runner:
    """A configuration ready to time: fixed batches and one forward call per batch.

    ``batches[b]`` are the positional arguments of forward call ``b``, already collated, cast and on
    the device; ``batch_of_instance[i]`` is the batch holding instance ``i`` (non-decreasing; the
    last batch may be partial). ``forward`` runs without autograd; ``synchronize`` waits for the
    device so a wall-clock read after it covers the whole call.
    """

    batches: list[tuple]
    batch_of_instance: np.ndarray
    config: Config
    workload: Workload
    _call: Callable[[tuple], Any] = field(repr=False)
    _on_close: list[Callable[[], None]] = field(default_factory=list, repr=False)

    _raw: Callable[[tuple], Any] | None = field(default=None, repr=False)

    def forward(self, args: tuple) -> Any:
        return self._call(args)

    def pass_context(self):
        """Entered once around a timed pass, so no per-call context switch lands inside the timed region."""
        return torch.inference_mode() if self.config.backend == "torch" else contextlib.nullcontext()

    def raw_forward(self, args: tuple) -> Any:
        """The bare forward call, valid inside :meth:`pass_context` (the timing loop's fast path)."""
        return (self._raw or self._call)(args)

    def synchronize(self) -> None:
        if self.config.device == "cuda":
            torch.cuda.synchronize()

    def predicted_classes(self, output: Any) -> np.ndarray:
        if isinstance(output, np.ndarray):
            output = torch.from_numpy(output)
        return np.asarray(self.workload.predicted_classes(output))

    def close(self) -> None:
        """Drop the batches, the model copy and any compiled or ONNX state."""
        for fn in self._on_close:
            fn()
        self._on_close.clear()
        self.batches = []
        self._call = self._raw = _closed  # releases the model copy / ONNX session the old callables held


def _closed(args: tuple) -> Any:
    raise RuntimeError("this runner was closed; prepare() a new one")


def check_supported(config: Config) -> None:
    """Refuse, naming the fix, a configuration this system or backend cannot run. Cheap: no model.

    Threads above the core count are allowed (oversubscription is a legitimate experiment) but
    warned about with ``warnings.warn`` for the caller to print.
    """
    cores = os.cpu_count() or 1
    if config.threads > cores:
        warnings.warn(f"threads={config.threads} exceeds the {cores} cores of this machine; the threads "
                      "will share cores and latencies will show it.", stacklevel=2)
    if config.device == "cuda":
        if not torch.cuda.is_available():
            raise UserError("no CUDA device on this system; drop device=cuda (or run on a machine with a GPU).")
        if config.precision == "bf16" and not torch.cuda.is_bf16_supported():
            raise UserError(f"the GPU {torch.cuda.get_device_name()} does not support bf16; use precision=fp16 "
                            "or fp32.")
    if config.backend == "onnxruntime":
        if importlib.util.find_spec("onnxruntime") is None or importlib.util.find_spec("onnxscript") is None:
            raise UserError("backend onnxruntime needs `pip install 'tqsim[onnx]'` (onnxruntime, onnx, onnxscript).")
        if config.precision != "fp32":
            raise UserError(f"backend onnxruntime runs fp32 only here; drop precision={config.precision} "
                            "or use backend=torch.")
        if config.device != "cpu":
            raise UserError("backend onnxruntime runs on the CPU only here; use device=cpu, or backend=torch on cuda.")
        if config.compile:
            raise UserError("compile applies to backend=torch; drop compile=on for backend=onnxruntime.")
    elif config.backend != "torch":
        raise UserError(f"unknown backend '{config.backend}'; choose torch or onnxruntime.")
    if config.compile and config.device == "cpu" and not (os.environ.get("CXX") or shutil.which("g++")
                                                          or shutil.which("clang++")):
        raise UserError("compile=on on the CPU needs a C++ compiler (g++ or clang++, or set CXX); install one "
                        "or drop compile=on.")


def prepare(workload: Workload, config: Config) -> Runner:
    """Build the runner for ``config``: set threads, cast, move, collate every batch, compile/export."""
    check_supported(config)
    _set_threads(config.threads)
    index = np.arange(workload.n_instances)
    batch_of_instance = index // config.batch_size
    groups = [index[i:i + config.batch_size] for i in range(0, workload.n_instances, config.batch_size)]
    if config.backend == "onnxruntime":
        return _prepare_onnxruntime(workload, config, groups, batch_of_instance)
    return _prepare_torch(workload, config, groups, batch_of_instance)


def _set_threads(threads: int) -> None:
    torch.set_num_threads(threads)
    if torch.get_num_threads() != threads:
        raise UserError(f"torch runs {torch.get_num_threads()} threads although {threads} were asked for (an "
                        "OMP_NUM_THREADS/MKL setting may cap it); unset it or choose another threads level.")


def _collate(workload: Workload, idx: np.ndarray) -> tuple:
    """The forward arguments of one batch, NumPy arrays as tensors (user workloads often hold NumPy)."""
    args = workload.collate(workload.inputs, idx)
    args = tuple(args) if isinstance(args, (tuple, list)) else (args,)
    return tuple(torch.from_numpy(np.ascontiguousarray(a)) if isinstance(a, np.ndarray) else a for a in args)


def _prepare_torch(workload: Workload, config: Config, groups: list[np.ndarray],
                   batch_of_instance: np.ndarray) -> Runner:
    dtype, device = DTYPES[config.precision], torch.device(config.device)
    model = workload.model
    if dtype != torch.float32 or config.device != "cpu":
        model = copy.deepcopy(model).to(device=device, dtype=dtype)  # never change the workload's own model
    model.eval()
    floats = set(workload.float_inputs)

    def place(i: int, a: Any) -> Any:
        if not isinstance(a, torch.Tensor):
            return a
        return a.to(device=device, dtype=dtype if i in floats and a.is_floating_point() else a.dtype)

    batches = [tuple(place(i, a) for i, a in enumerate(_collate(workload, idx))) for idx in groups]
    on_close: list[Callable[[], None]] = []
    fn = model
    if config.precision != "fp32":
        _check_precision_runs(model, batches[0], workload, config)
    if config.compile:
        torch._dynamo.reset()  # otherwise the 9th batch size/thread count silently runs uncompiled
        fixed_shapes = len({_shapes(b) for b in batches[:-1]}) <= 1
        fn = torch.compile(model, dynamic=False if fixed_shapes else None)
        on_close.append(torch._dynamo.reset)
        with torch.inference_mode():  # compile every distinct shape now, never inside a timed call
            seen = set()
            for b in batches:
                if _shapes(b) not in seen:
                    seen.add(_shapes(b))
                    fn(*b)
    if config.device == "cuda":
        torch.cuda.synchronize()  # pending copies and compilation must not land in the first timed call

    def call(args: tuple) -> Any:
        with torch.inference_mode():
            return fn(*args)

    def raw(args: tuple) -> Any:
        return fn(*args)

    return Runner(batches, batch_of_instance, config, workload, call, on_close, raw)


def _shapes(args: tuple) -> tuple:
    return tuple(tuple(a.shape) if isinstance(a, torch.Tensor) else None for a in args)


_PRECISION_OK: dict[tuple, bool] = {}


def _check_precision_runs(model: Any, args: tuple, workload: Workload, config: Config) -> None:
    """One untimed forward in the precision (once per process): CPUs lack some fp16/bf16 kernels."""
    key = (workload.name, workload.digest, config.precision, config.device)
    if key in _PRECISION_OK:
        return
    try:
        with torch.inference_mode():
            model(*args)
    except (RuntimeError, NotImplementedError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise UserError(f"{workload.name} does not run in {config.precision} on {config.device} here ({first}); "
                        "drop that precision level.") from exc
    _PRECISION_OK[key] = True


_ONNX_CACHE: dict[tuple, bytes] = {}


def _onnx_model(workload: Workload, example: tuple) -> bytes:
    """Export once per workload (dims that vary between batches are left dynamic) and keep the bytes."""
    key = (workload.name, workload.digest or id(workload.model), tuple(
        (a.dtype, a.dim()) if isinstance(a, torch.Tensor) else type(a) for a in example))
    if key not in _ONNX_CACHE:
        auto = torch.export.Dim.AUTO
        dynamic = tuple({d: auto for d in range(a.dim())} if isinstance(a, torch.Tensor) else None for a in example)
        onnx_log = logging.getLogger("torch.onnx")
        level = onnx_log.level
        onnx_log.setLevel(logging.ERROR)  # the exporter's chatter (missing torchvision ops) is not the user's concern
        try:
            with warnings.catch_warnings(), contextlib.redirect_stdout(sys.stderr):
                warnings.simplefilter("ignore")
                program = torch.onnx.export(workload.model.eval(), example, None, dynamo=True,
                                            dynamic_shapes=dynamic, verbose=False)
        except Exception as exc:
            raise UserError(f"exporting {workload.name} to ONNX failed ({type(exc).__name__}: "
                            f"{str(exc).strip().splitlines()[0] if str(exc).strip() else ''}); "
                            "use backend=torch for this workload.") from exc
        finally:
            onnx_log.setLevel(level)
        _ONNX_CACHE[key] = program.model_proto.SerializeToString()
    return _ONNX_CACHE[key]


def _prepare_onnxruntime(workload: Workload, config: Config, groups: list[np.ndarray],
                         batch_of_instance: np.ndarray) -> Runner:
    import onnxruntime as ort

    collated = [_collate(workload, idx) for idx in groups]
    # An example of at least two instances and the longest inputs, so no dynamic dim is traced at 1.
    example_idx = np.argsort([-sum(a.numel() for a in b if isinstance(a, torch.Tensor)) for b in collated])[0]
    example = collated[example_idx]
    if len(groups[example_idx]) < 2 and workload.n_instances >= 2:
        example = _collate(workload, np.arange(min(workload.n_instances, 4)))
    options = ort.SessionOptions()
    options.intra_op_num_threads = config.threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.log_severity_level = 3
    session = ort.InferenceSession(_onnx_model(workload, example), options, providers=["CPUExecutionProvider"])
    got = session.get_session_options().intra_op_num_threads
    if got != config.threads:
        raise UserError(f"onnxruntime kept {got} threads although {config.threads} were asked for; "
                        "choose another threads level.")
    names = [i.name for i in session.get_inputs()]
    if len(names) != len(example):
        raise UserError(f"the ONNX export of {workload.name} takes {len(names)} inputs for {len(example)} "
                        "collated arguments (constant arguments are folded away); use backend=torch.")
    batches = [tuple(np.ascontiguousarray(a.numpy()) if isinstance(a, torch.Tensor) else a for a in b)
               for b in collated]
    output_names = [session.get_outputs()[0].name]

    def call(args: tuple) -> Any:
        return session.run(output_names, dict(zip(names, args)))[0]

    return Runner(batches, batch_of_instance, config, workload, call)
