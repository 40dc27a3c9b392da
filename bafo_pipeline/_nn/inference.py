"""Running a fitted network for inference: device copy, memory layout and numeric precision."""

from __future__ import annotations

import copy
import weakref
from typing import NamedTuple

import torch

from .._utils.device import native_bfloat16
from .network import BAFONetwork

PRECISIONS = ("auto", "float32", "bfloat16")


class InferenceSettings(NamedTuple):
    """Where and how a fitted estimator encodes: its device, and ``"bfloat16"`` or ``"float32"``."""

    device: torch.device
    precision: str


# "auto" takes bfloat16 only where it was measured to move the latents by at most this share of their
# spread (RMS), the bound the project holds bfloat16 inference to (tests/test_engine.py, test_export.py).
AUTO_BFLOAT16_TOLERANCE = 0.02


def uses_bfloat16(
    precision: str, device: torch.device, network: BAFONetwork, measured_error: float | None = None
) -> bool:
    """Resolve ``precision`` for one network on one device.

    ``"auto"`` picks bfloat16 only for convolutional networks on hardware that
    runs it natively, where it doubles the speed, and only when
    ``measured_error`` (the RMS change bfloat16 made to the fitted model's
    latents, as a share of their spread) is known and within
    :data:`AUTO_BFLOAT16_TOLERANCE`. A concealment map can amplify rounding
    (an erasure with a large spectral norm), so the check is made on the
    concealed latents at fit time. The small MLPs of tabular models gain
    nothing from bfloat16 and stay in float32.
    """
    return bfloat16_for(precision, device, convolutional=network.config.kind == "conv", measured_error=measured_error)


def bfloat16_for(precision: str, device: torch.device, *, convolutional: bool,
                 measured_error: float | None = None) -> bool:
    """:func:`uses_bfloat16` for a network known by its kind only (a folded encoder away from its estimator)."""
    if precision == "float32":
        return False
    if precision == "bfloat16":
        return True
    return (
        convolutional
        and native_bfloat16(device)
        and measured_error is not None
        and measured_error <= AUTO_BFLOAT16_TOLERANCE
    )


# Inference copies per fitted network, dropped with it. Kept outside the estimator so that
# transform leaves the estimator's __dict__ unchanged (a scikit-learn convention).
_COPIES: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def inference_network(network: BAFONetwork, device: torch.device) -> BAFONetwork:
    """``network`` ready for inference on ``device``.

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
    return copies[key]
