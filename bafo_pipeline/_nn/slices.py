"""Encoding a batch in cache-sized slices on the CPU."""

from __future__ import annotations

from typing import Callable

import numpy as np

__all__ = ["CPU_SLICE", "in_slices"]

# CPU runtimes encode this many images at a time: a slice's activations stay in the caches
# (torch float32: ~2,900 instead of ~2,300 img/s per core than 512 at a time; ONNX Runtime: +3%).
CPU_SLICE = 64


def in_slices(encode: Callable, images, latent_dim: int) -> np.ndarray:
    """``encode`` applied to consecutive slices of ``CPU_SLICE`` images, concatenated (float32)."""
    parts = [encode(images[start : start + CPU_SLICE]) for start in range(0, len(images), CPU_SLICE)]
    return np.concatenate(parts) if parts else np.zeros((0, latent_dim), np.float32)
