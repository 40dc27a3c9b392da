"""The image encoder used for inference: a folded network (concealment included), made once and reused.

Image models encode through a :class:`~bafo_pipeline._nn.folding.ConcealedEncoder`:
one network from pixels to concealed latents. On the CPU it runs in slices of
:data:`~bafo_pipeline._nn.slices.CPU_SLICE` images, in channels_last memory,
with bfloat16 convolutions where the estimator's ``precision`` resolves to
bfloat16 (native AVX512-BF16/AMX CPUs, CUDA) and float32 elsewhere. Measured
alternatives (ONNX Runtime, torch.compile, int8 quantisation) and why they
lost: docs/PERFORMANCE.md.
"""

from __future__ import annotations

import threading
import weakref
from collections.abc import Callable, Hashable, Sequence

import numpy as np
import torch

from .folding import ConcealedEncoder
from .inputs import network_input
from .network import BAFONetwork
from .slices import CPU_SLICE, in_slices

__all__ = ["TorchEncoder", "cached_encoder"]


class TorchEncoder:
    """Latents of uint8 images with a folded network in torch (channels_last, optional bf16 autocast).

    Parameters
    ----------
    encoder : ConcealedEncoder
    device : torch.device
    bfloat16 : bool
        Run the convolutions under bfloat16 autocast (the linear layers stay float32).
    after : sequence of callable, optional
        Functions of latents applied after the network, in order: the
        ``transform`` of concealment steps that could not be folded.
    """

    def __init__(
        self, encoder: ConcealedEncoder, device: torch.device, bfloat16: bool, after: Sequence[Callable] = ()
    ):
        self._encoder = encoder.to(device).to(memory_format=torch.channels_last).eval()
        self._device = device
        self.bfloat16 = bfloat16
        self._after = tuple(after)

    def __call__(self, images: np.ndarray | torch.Tensor) -> np.ndarray:
        """Latents of uint8 images ``(n, C, H, W)`` (array or tensor, any strides, any device), float32."""
        if self._device.type != "cpu":
            latents = self._encode(images)
        else:
            if not isinstance(images, torch.Tensor):
                if any(stride < 0 for stride in images.strides) or not images.flags.writeable:
                    images = np.array(images)  # torch views neither negative strides nor read-only memory (it warns)
                images = torch.from_numpy(images)
            latents = in_slices(self._encode_full_slice, images, self._encoder.latent_dim)
        for function in self._after:
            latents = function(latents)
        return np.asarray(latents).astype(np.float32, copy=False)

    def _encode_full_slice(self, images: torch.Tensor) -> np.ndarray:
        # A short last slice is padded to a full one: the kernels then never see another batch size,
        # so a row's latent is bit for bit the same whatever batch it came in.
        n = len(images)
        if n < CPU_SLICE:
            images = torch.cat([images, images.new_zeros((CPU_SLICE - n, *images.shape[1:]))])
        return self._encode(images)[:n]

    def _encode(self, images) -> np.ndarray:
        pixels = network_input(images, self._device)
        with torch.inference_mode(), torch.autocast(self._device.type, dtype=torch.bfloat16, enabled=self.bfloat16):
            return self._encoder(pixels).float().cpu().numpy()


# Encoders per fitted network, dropped with it (the entries hold folded copies, never the network).
_ENCODERS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
_LOCK = threading.Lock()  # exports encode from two threads at once: build each encoder once


def cached_encoder(
    network: BAFONetwork, key: Hashable, depends_on: Sequence[object], build: Callable[[], TorchEncoder]
) -> TorchEncoder:
    """The encoder ``build()`` makes for ``network`` under ``key``, made once and reused.

    Parameters
    ----------
    network : BAFONetwork
        The fitted network; its encoders are dropped with it.
    key : hashable
        What tells its encoders apart (device, precision, raw or concealed).
    depends_on : sequence
        The objects folded in (the fitted concealment steps): a cached encoder
        is reused only while they are the very same objects, so refitting
        them (``fit_concealment``) builds a new one.
    build : callable
        Makes the encoder when none fits.
    """
    depends_on = tuple(depends_on)
    with _LOCK:
        encoders = _ENCODERS.setdefault(network, {})
        cached = encoders.get(key)
        if cached is not None and len(cached[0]) == len(depends_on) and all(a is b for a, b in zip(cached[0], depends_on)):
            return cached[1]
        encoder = build()
        encoders[key] = (depends_on, encoder)
        return encoder
