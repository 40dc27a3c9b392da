"""Devices and their arithmetic: which torch device to use, whether it does bfloat16 natively, autocast."""

from __future__ import annotations

from contextlib import AbstractContextManager

import torch

__all__ = ["autocast", "native_bfloat16", "resolve_device"]


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """``"auto"`` → CUDA when available, else CPU; anything else as torch reads it.

    Raises
    ------
    RuntimeError
        When CUDA is asked for explicitly but is not available.
    """
    if str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    resolved = torch.device(device)
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(f"device {device!r} was asked for, but CUDA is not available; use device='auto' or 'cpu'")
    return resolved


def native_bfloat16(device: torch.device) -> bool:
    """Whether ``device`` computes bfloat16 convolutions natively (and so faster than float32).

    True for CUDA GPUs with bf16 support and for CPUs with AVX512-BF16 or AMX
    (as oneDNN reports them); False elsewhere, where bf16 would be emulated.
    """
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    if device.type == "cpu":
        checker = getattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", None)
        try:
            return bool(torch.backends.mkldnn.is_available() and checker is not None and checker())
        except RuntimeError:
            return False
    return False


def autocast(device: torch.device, enabled: bool) -> AbstractContextManager:
    """bfloat16 autocast on ``device`` when ``enabled`` (the one autocast of the package).

    Training enables it on CUDA only; inference wherever the ``precision``
    setting resolves to bfloat16. Layers that must stay float32 (the encoder's
    head) switch it off locally.
    """
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=enabled)
