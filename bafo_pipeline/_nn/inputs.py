"""What a network takes as input: the one conversion of uint8 images (and float features) into a float batch."""

from __future__ import annotations

import numpy as np
import torch

__all__ = ["network_input"]


def network_input(batch: np.ndarray | torch.Tensor, device: torch.device) -> torch.Tensor:
    """A batch on ``device`` as float32: uint8 images scaled to [0, 1] in channels_last memory; features as they are.

    Used by training and inference alike. ``batch`` may be a NumPy array or a
    tensor (already on ``device`` or not), of any strides (an NCHW view of
    NHWC pixels is converted without an intermediate copy).
    """
    if not isinstance(batch, torch.Tensor):
        if any(stride < 0 for stride in batch.strides):  # torch cannot view negative strides
            batch = np.ascontiguousarray(batch)
        batch = torch.from_numpy(batch)
    x = batch.to(device, non_blocking=True)
    if x.dtype != torch.uint8:
        return x.float()
    return x.to(dtype=torch.float32, memory_format=torch.channels_last).div_(255.0)
