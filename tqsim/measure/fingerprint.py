"""The system fingerprint stored in every calibration file: enough to tell two systems apart, and the one
comparison of two fingerprints that `tqsim check` and a fleet's calibration refuse a changed machine by."""

from __future__ import annotations

import math
import os
import platform
import socket
import sys
from importlib import metadata


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _memory_bytes() -> int | None:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return None


def _version(dist: str) -> str | None:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def fingerprint() -> dict:
    """CPU, cores, memory, OS, Python and library versions, GPU and driver if any."""
    info = {
        "hostname": socket.gethostname(),
        "cpu_model": _cpu_model(),
        "cpu_count": os.cpu_count(),
        "cpu_affinity": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "memory_bytes": _memory_bytes(),
        "os": platform.platform(),
        "machine": platform.machine(),
        "python": sys.version.split()[0],
        "numpy": _version("numpy"),
        "torch": _version("torch"),
        "onnxruntime": _version("onnxruntime"),
        "tqsim": _version("tqsim"),
        "env": {k: os.environ[k] for k in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_CORETYPE")
                if k in os.environ},
    }
    try:
        import torch

        info["torch_mkl"] = bool(torch.backends.mkl.is_available())
        info["torch_mkldnn"] = bool(torch.backends.mkldnn.is_available())
        info["torch_parallel"] = torch.__config__.parallel_info().splitlines()[0:3]
        if torch.cuda.is_available():
            info["gpu"] = torch.cuda.get_device_name(0)
            info["cuda"] = torch.version.cuda
            info["gpu_count"] = torch.cuda.device_count()
            try:
                import subprocess

                info["driver"] = subprocess.run(
                    ["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                    capture_output=True, text=True, timeout=10).stdout.strip() or None
            except (OSError, subprocess.SubprocessError):
                info["driver"] = None
    except ImportError:
        pass
    return info


MACHINE_KEYS = ("cpu_model", "cpu_count", "memory_bytes", "gpu")


def describe_machine(fp: dict) -> str:
    """A fingerprint in a few words: ``CPU model × cores, memory GiB`` (and the GPU, when there is one)."""
    mem = fp.get("memory_bytes")
    mem = f", {mem / 2**30:.0f} GiB" if isinstance(mem, (int, float)) and math.isfinite(mem) else ""
    gpu = f", {fp['gpu']}" if fp.get("gpu") else ""
    return f"{fp.get('cpu_model', '?')} × {fp.get('cpu_count', '?')}{mem}{gpu}"


def fingerprint_mismatch(calibrated: dict, now: dict) -> str | None:
    """Name both machines when the CPU, core count, memory or GPU differ (another machine than calibrated)."""
    diff = [k for k in MACHINE_KEYS if k in calibrated and k in now and calibrated[k] != now[k]]
    if not diff:
        return None
    return f"calibrated on {describe_machine(calibrated)}, now on {describe_machine(now)}"
