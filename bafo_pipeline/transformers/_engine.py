"""The image encoder used for inference: the folded network (concealment included), made once and reused.

Every image model encodes through a :class:`~._folding.ConcealedEncoder`: one
network from pixels to concealed latents. On the CPU it runs in slices of
``CPU_SLICE`` images, in channels_last memory, with bfloat16 convolutions where
``precision`` resolves to bfloat16 (native AVX512-BF16/AMX CPUs, CUDA) and
float32 elsewhere. Measured alternatives (ONNX Runtime, torch.compile, int8
quantisation) and why they lost: docs/PERFORMANCE.md.
"""

from __future__ import annotations

import weakref

import numpy as np
import torch

from ..model import BAFONetwork
from ._folding import ConcealedEncoder, NotFoldable, concealed_encoder
from ._slices import CPU_SLICE, in_slices


class TorchEncoder:
    """Latents of uint8 images with a folded network in torch (channels_last, optional bf16 autocast).

    Parameters
    ----------
    encoder : ConcealedEncoder
    device : torch.device
    bfloat16 : bool
        Run the convolutions under bfloat16 autocast (the linear layers stay float32).
    unfolded_steps : sequence, optional
        Concealment steps that could not be folded, applied after the network with their ``transform``.
    """

    def __init__(self, encoder: ConcealedEncoder, device: torch.device, bfloat16: bool, unfolded_steps=()):
        self._encoder = encoder.to(device).to(memory_format=torch.channels_last).eval()
        self._device = device
        self.bfloat16 = bfloat16
        self._unfolded_steps = tuple(unfolded_steps)

    def __call__(self, images: np.ndarray | torch.Tensor) -> np.ndarray:
        """Latents of uint8 images ``(n, C, H, W)`` (array or tensor, any strides, any device), float32."""
        if not isinstance(images, torch.Tensor):
            if any(stride < 0 for stride in images.strides):
                images = np.ascontiguousarray(images)
            images = torch.from_numpy(images)
        if self._device.type != "cpu":
            latents = self._encode(images)
        else:
            latents = in_slices(self._encode_full_slice, images, self._encoder.latent_dim)
        for step in self._unfolded_steps:
            latents = step.transform(latents)
        return np.asarray(latents).astype(np.float32, copy=False)

    def _encode_full_slice(self, images: torch.Tensor) -> np.ndarray:
        # A short last slice is padded to a full one: the kernels then never see another batch size,
        # so a row's latent is bit for bit the same whatever batch it came in.
        n = len(images)
        if n < CPU_SLICE:
            images = torch.cat([images, images.new_zeros((CPU_SLICE - n, *images.shape[1:]))])
        return self._encode(images)[:n]

    def _encode(self, images: torch.Tensor) -> np.ndarray:
        pixels = images.to(self._device, non_blocking=True)
        pixels = pixels.to(dtype=torch.float32, memory_format=torch.channels_last).div_(255.0)
        with torch.inference_mode(), torch.autocast(self._device.type, dtype=torch.bfloat16, enabled=self.bfloat16):
            return self._encoder(pixels).float().cpu().numpy()


# Encoders per fitted network, dropped with it; each entry remembers the concealment steps it
# folded, so refitting them (fit_concealment) makes a new one.
_ENCODERS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def image_encoder(network: BAFONetwork, steps, device: torch.device, bfloat16: bool) -> TorchEncoder:
    """The encoder for ``network`` followed by the fitted concealment ``steps`` (in order; empty for raw
    posterior means), made once per device and precision and reused while the network and steps stay the same.

    Steps are folded into the network where they can be (see :func:`~._folding.concealed_encoder`);
    if one cannot, all of them run after the network, one by one.
    """
    steps = tuple(steps)
    encoders = _ENCODERS.setdefault(network, {})
    key = (str(device), bfloat16, bool(steps))  # raw and concealed encoders side by side
    cached = encoders.get(key)
    if cached is not None and len(cached[0]) == len(steps) and all(a is b for a, b in zip(cached[0], steps)):
        return cached[1]
    try:
        encoder = TorchEncoder(concealed_encoder(network, steps), device, bfloat16)
    except NotFoldable:
        encoder = TorchEncoder(concealed_encoder(network), device, bfloat16, unfolded_steps=steps)
    encoders[key] = (steps, encoder)
    return encoder
