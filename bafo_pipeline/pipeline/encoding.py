"""The two things the distributed export asks of a fitted estimator: its inference settings and latents.

Kept in one place so that the export depends on the estimator through this small surface.
The estimator does not have a public batch-encoding method yet (the package re-layering adds
one); until then these wrappers are the only callers of its private helpers in this package.
"""

from __future__ import annotations

import numpy as np
import torch

__all__ = ["encode_images", "inference_settings"]


def inference_settings(estimator) -> tuple[torch.device, str]:
    """``(device, precision)`` the estimator encodes with: precision is ``"bfloat16"`` or ``"float32"``."""
    _, device, bf16 = estimator._inference_network()
    return device, "bfloat16" if bf16 else "float32"


def encode_images(estimator, images: np.ndarray | torch.Tensor) -> np.ndarray:
    """Concealed latents of uint8 NCHW images already at the model's size (float32, one row per image)."""
    return estimator._latents_of_images(images)
