"""Describe the machine a benchmark ran on, and print (and keep) a benchmark's JSON result."""

from __future__ import annotations

import json
import os
import platform
from datetime import datetime, timezone
from pathlib import Path

# /proc/cpuinfo flags that decide which kernels the encoder gets.
CPU_FEATURES = {
    "avx2": "avx2",
    "fma": "fma",
    "avx512f": "avx512f",
    "avx512_vnni": "avx512_vnni",
    "avx512_bf16": "avx512_bf16",
    "amx_bf16": "amx_bf16",
    "amx_int8": "amx_int8",
}

# Environment variables that cap the instruction set (how an AVX2-only CPU is emulated on a newer one).
ISA_CAPS = ("ATEN_CPU_CAPABILITY", "ONEDNN_MAX_CPU_ISA", "DNNL_MAX_CPU_ISA")


def cpu_features() -> dict:
    """The real CPU's flags (AVX2 / AVX512 / AVX512-BF16 / AMX ...), whatever emulation is active."""
    flags: set[str] = set()
    try:
        with open("/proc/cpuinfo") as handle:
            line = next((line for line in handle if line.startswith("flags")), "")
        flags = set(line.split(":", 1)[1].split()) if ":" in line else set()
    except OSError:
        pass
    return {name: flag in flags for name, flag in CPU_FEATURES.items()}


def isa_emulation() -> dict:
    """The instruction-set caps in force and what the libraries report under them.

    ``ATEN_CPU_CAPABILITY`` caps PyTorch's own kernels, ``ONEDNN_MAX_CPU_ISA``
    oneDNN's (convolutions); ONNX Runtime has no such switch and picks its
    kernels from the real CPU.
    """
    import torch

    result = {name: os.environ.get(name) for name in ISA_CAPS}
    result["torch_cpu_capability"] = torch.backends.cpu.get_cpu_capability()
    # What precision="auto" consults (oneDNN's view, which ONEDNN_MAX_CPU_ISA caps).
    checker = getattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", None)
    try:
        native = bool(torch.backends.mkldnn.is_available() and checker is not None and checker())
    except RuntimeError:
        native = False
    result["native_bfloat16_as_seen_by_torch"] = native
    try:
        import onnxruntime

        result["onnxruntime"] = f"{onnxruntime.__version__} (kernels chosen from the real CPU: no ISA cap)"
    except ImportError:
        result["onnxruntime"] = None
    result["emulating"] = any(result[name] for name in ISA_CAPS)
    return result


def scheduler() -> dict:
    """Whether Linux groups CPU time by session (autogroup), and this session's group and its nice value.

    With autogroup on, a process's nice value counts only within its session: another session's
    ``nice -n 19`` job still takes its equal share of the cores. A timing run can then raise its own
    group (``echo -20 > /proc/self/autogroup``) so that such jobs yield to it as their nice value meant.
    """
    def read(path: str) -> str | None:
        try:
            with open(path) as handle:
                return handle.read().strip()
        except OSError:
            return None

    enabled = read("/proc/sys/kernel/sched_autogroup_enabled")
    return {"autogroup_enabled": None if enabled is None else enabled == "1", "autogroup": read("/proc/self/autogroup")}


def machine() -> dict:
    """CPU model, features, count, load, ISA emulation, GPU (if any) and library versions."""
    import torch

    cpu_model = platform.processor() or "unknown"
    try:
        with open("/proc/cpuinfo") as handle:
            cpu_model = next(line.split(":", 1)[1].strip() for line in handle if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    load = os.getloadavg() if hasattr(os, "getloadavg") else None
    return {
        "platform": platform.platform(),
        "cpu_model": cpu_model,
        "cpu_features": cpu_features(),
        "isa_emulation": isa_emulation(),
        "cpu_count": os.cpu_count(),
        "load_average_1min": None if load is None else round(load[0], 2),
        "load_average_1_5_15min": None if load is None else [round(value, 2) for value in load],
        "scheduler": scheduler(),
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }


def emit(result: dict, out: str | os.PathLike | None) -> dict:
    """Print ``result`` as JSON and, with ``out``, also write it there; returns ``result``."""
    text = json.dumps(result, indent=2)
    print(text)
    if out is not None:
        Path(out).write_text(text + "\n", encoding="utf-8")
    return result
