"""Running a fitted network for inference: device copy, memory layout and numeric precision."""

from __future__ import annotations

import copy
import weakref
from contextlib import AbstractContextManager

import numpy as np
import torch

from ..model import BAFONetwork

PRECISIONS = ("auto", "float32", "bfloat16")


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


def uses_bfloat16(precision: str, device: torch.device, network: BAFONetwork) -> bool:
    """Resolve ``precision`` for one network on one device.

    ``"auto"`` picks bfloat16 only for convolutional networks on hardware that
    runs it natively: that is where it doubles the speed. The small MLPs of
    tabular models gain nothing from it and stay in float32.
    """
    if precision == "float32":
        return False
    if precision == "bfloat16":
        return True
    return network.config.kind == "conv" and native_bfloat16(device)


def autocast(device: torch.device, enabled: bool) -> AbstractContextManager:
    """bfloat16 autocast on ``device`` when ``enabled``; the encoder's head stays float32 either way."""
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=enabled)


# Inference copies per fitted network, dropped with it. Kept outside the estimator so that
# transform leaves the estimator's __dict__ unchanged (a scikit-learn convention).
_COPIES: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def inference_network(network: BAFONetwork, device: torch.device, precision: str) -> tuple[BAFONetwork, bool]:
    """``(copy, bfloat16)``: ``network`` ready for inference on ``device``, and whether to autocast.

    The copy is in eval mode, on ``device``, and in channels_last memory for a
    conv network; it is made once per (network, device) and reused, so batch
    after batch of an export costs no copy. A copy, so that the estimator's own
    network stays a plain, contiguous CPU module (what pickling and
    ``save_model`` expect). Fitting replaces the network, which retires its copies.
    """
    copies = _COPIES.setdefault(network, {})
    key = str(device)
    if key not in copies:
        clone = copy.deepcopy(network).to(device).eval()
        if network.config.kind == "conv":
            clone = clone.to(memory_format=torch.channels_last)
        copies[key] = clone
    clone = copies[key]
    return clone, uses_bfloat16(precision, device, clone)


def model_input(batch: np.ndarray | torch.Tensor, device: torch.device) -> torch.Tensor:
    """A batch on ``device`` as float32: uint8 images scaled to [0, 1] in channels_last memory; features as they are.

    ``batch`` may be a NumPy array or a tensor, of any strides (an NCHW view of
    NHWC pixels is converted without an intermediate copy).
    """
    if not isinstance(batch, torch.Tensor):
        if any(stride < 0 for stride in batch.strides):  # torch cannot view negative strides
            batch = np.ascontiguousarray(batch)
        batch = torch.from_numpy(batch)
    x = batch
    x = x.to(device, non_blocking=True)
    if x.dtype != torch.uint8:
        return x.float()
    return x.to(dtype=torch.float32, memory_format=torch.channels_last).div_(255.0)
