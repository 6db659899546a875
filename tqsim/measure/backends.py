"""Execution backends: turn (workload, configuration) into a :class:`Runner` the timing loop calls.

Everything that is not the forward call itself — collation, casting to the precision, moving to
the device, compiling, exporting to ONNX (or opening the user's own ONNX file) — happens here, once,
before any timing, so a timed call measures only the network. ``check_supported`` refuses a
configuration this system (or, given one, the workload) cannot run before anything is measured.
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
from tqsim.workloads.files import OnnxFile

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
        if self.config.device == "cuda" and self.config.backend == "torch":  # onnxruntime returns host arrays
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


def check_supported(config: Config, workload: Workload | None = None) -> None:
    """Refuse, naming the fix, a configuration this system or backend cannot run. Cheap: no forward call.

    Without ``workload`` only the system is checked (before a workload is built); with it, also what
    that model can run (an ONNX file's precision and batch axis, a TorchScript model's backend).
    Threads above the core count are allowed (oversubscription is a legitimate experiment) but
    warned about with ``warnings.warn`` for the caller to print.
    """
    cores = os.cpu_count() or 1
    if config.threads > cores:
        warnings.warn(f"threads={config.threads} exceeds the {cores} cores of this machine; the threads "
                      "will share cores and latencies will show it.", stacklevel=2)
    if config.device == "cuda" and config.backend == "torch":
        if not torch.cuda.is_available():
            raise UserError("no CUDA device on this system; drop device=cuda (or run on a machine with a GPU).")
        if config.precision == "bf16" and not torch.cuda.is_bf16_supported():
            raise UserError(f"the GPU {torch.cuda.get_device_name()} does not support bf16; use precision=fp16 "
                            "or fp32.")
    if config.backend == "onnxruntime":
        if importlib.util.find_spec("onnxruntime") is None or importlib.util.find_spec("onnxscript") is None:
            raise UserError("backend onnxruntime needs `pip install 'tqsim[onnx]'` (onnxruntime, onnx, onnxscript).")
        if config.precision == "bf16":
            raise UserError("backend onnxruntime runs fp32 only here (fp16 for an .onnx file with fp16 inputs); "
                            "drop precision=bf16 or use backend=torch.")
        if config.device == "cuda":
            import onnxruntime as ort

            if "CUDAExecutionProvider" not in ort.get_available_providers():
                raise UserError("this onnxruntime has no CUDA execution provider; use device=cpu, or install "
                                "onnxruntime-gpu.")
        if config.compile:
            raise UserError("compile applies to backend=torch; drop compile=on for backend=onnxruntime.")
    elif config.backend != "torch":
        raise UserError(f"unknown backend '{config.backend}'; choose torch or onnxruntime.")
    if config.compile and config.device == "cpu" and not (os.environ.get("CXX") or shutil.which("g++")
                                                          or shutil.which("clang++")):
        raise UserError("compile=on on the CPU needs a C++ compiler (g++ or clang++, or set CXX); install one "
                        "or drop compile=on.")
    if workload is not None:
        _check_workload_supports(config, workload)


def _check_workload_supports(config: Config, workload: Workload) -> None:
    if isinstance(workload.model, OnnxFile):
        workload.model.refuse_unsupported(config, workload.n_instances)
        return
    if config.backend == "onnxruntime":
        if isinstance(workload.model, torch.jit.ScriptModule):
            raise UserError(f"{workload.name} is a TorchScript model, which cannot be exported to ONNX here; use "
                            "backend=torch (the default), or export the model to .onnx and measure that file.")
        if config.precision != "fp32":
            raise UserError(f"backend onnxruntime runs {workload.name} exported in fp32 only; drop "
                            f"precision={config.precision} or use backend=torch.")


def prepare(workload: Workload, config: Config) -> Runner:
    """Build the runner for ``config``: set threads, cast, move, collate every batch, compile/export."""
    check_supported(config, workload)
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


def _export_example(workload: Workload, groups: list[np.ndarray], collated: list[tuple]) -> tuple:
    """An example of at least two instances and the longest inputs, so no dynamic dim is traced at 1."""
    example_idx = np.argsort([-sum(a.numel() for a in b if isinstance(a, torch.Tensor)) for b in collated])[0]
    if len(groups[example_idx]) < 2 and workload.n_instances >= 2:
        return _collate(workload, np.arange(min(workload.n_instances, 4)))
    return collated[example_idx]


def onnx_session(model: bytes | str, config: Config):
    """An onnxruntime session for ``config``: its threads as intra-op threads, one op at a time, on the
    CPU provider or (device=cuda) the CUDA one; refused, naming the fix, if onnxruntime does otherwise."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = config.threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.log_severity_level = 3
    provider = "CUDAExecutionProvider" if config.device == "cuda" else "CPUExecutionProvider"
    try:
        # on cuda, ops the CUDA provider lacks fall back to the CPU, as onnxruntime users expect
        fallback = ["CPUExecutionProvider"] if provider != "CPUExecutionProvider" else []
        session = ort.InferenceSession(model, options, providers=[provider, *fallback])
    except Exception as exc:
        where = model if isinstance(model, str) else "the exported model"
        first = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else type(exc).__name__
        raise UserError(f"onnxruntime cannot load {where} ({first}); check that the file opens in onnxruntime "
                        "(a newer opset may need a newer onnxruntime).") from None
    if session.get_providers()[0] != provider:
        raise UserError(f"onnxruntime runs on {session.get_providers()[0]} although {provider} was asked for; "
                        "use device=cpu, or fix the onnxruntime-gpu install.")
    got = session.get_session_options().intra_op_num_threads
    if got != config.threads:
        raise UserError(f"onnxruntime kept {got} threads although {config.threads} were asked for; "
                        "choose another threads level.")
    return session


def _prepare_onnxruntime(workload: Workload, config: Config, groups: list[np.ndarray],
                         batch_of_instance: np.ndarray) -> Runner:
    """The user's own ONNX file as it is, or the torch model exported once; one session per configuration."""
    collated = [_collate(workload, idx) for idx in groups]
    if isinstance(workload.model, OnnxFile):
        session = onnx_session(str(workload.model.path), config)
        names = workload.model.input_names  # the data were matched to these names when the file was loaded
    else:
        session = onnx_session(_onnx_model(workload, _export_example(workload, groups, collated)), config)
        names = [i.name for i in session.get_inputs()]
    if len(names) != len(collated[0]):
        raise UserError(f"the ONNX export of {workload.name} takes {len(names)} inputs for {len(collated[0])} "
                        "collated arguments (constant arguments are folded away); use backend=torch.")
    batches = [tuple(np.ascontiguousarray(a.numpy()) if isinstance(a, torch.Tensor) else a for a in b)
               for b in collated]
    output_names = [session.get_outputs()[0].name]

    def call(args: tuple) -> Any:
        return session.run(output_names, dict(zip(names, args)))[0]

    return Runner(batches, batch_of_instance, config, workload, call)
