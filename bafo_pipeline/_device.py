"""Choosing the torch device: shared by training, inference and the audit's MLP probe."""

from __future__ import annotations

import torch


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
