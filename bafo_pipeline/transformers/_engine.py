"""Which runtime encodes images to (concealed) latents, and running it.

``engine="auto"`` resolves, for a conv network:

- on CUDA, or on a CPU with native bfloat16 (AVX512-BF16, AMX) when
  ``precision`` allows it: torch, bfloat16 convolutions (float32 head);
- elsewhere (a CPU without native bf16, e.g. AVX2-only): ONNX Runtime in
  float32 when the ``onnx`` extra is installed, else torch in float32.

Both runtimes run the :class:`~._folding.ConcealedEncoder` (concealment folded
into the network). The engine and precision used are recorded in every
exported Parquet file.
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch

from ..model import BAFONetwork
from ._folding import ConcealedEncoder, concealed_encoder
from ._inference import uses_bfloat16
from ._onnx_engine import OnnxRuntimeEncoder, default_threads, onnx_model, onnxruntime_available

ENGINES = ("auto", "torch", "onnxruntime")


@dataclass(frozen=True)
class EngineChoice:
    """A resolved ``(engine, precision)``: ``engine`` in {"torch", "onnxruntime"}, ``precision`` in {"float32", "bfloat16"}."""

    engine: str
    precision: str


def resolve_engine(engine: str, precision: str, device: torch.device, network: BAFONetwork) -> EngineChoice:
    """Resolve the ``engine`` and ``precision`` settings for one network on one device.

    Raises
    ------
    ValueError
        For an unknown engine, or ONNX Runtime asked for where it cannot run
        (a GPU, a tabular network, bfloat16).
    ImportError
        When ``engine="onnxruntime"`` is asked for and the ``onnx`` extra is not installed.
    """
    if engine not in ENGINES:
        raise ValueError(f"engine must be one of {ENGINES}, got {engine!r}")
    bf16 = uses_bfloat16(precision, device, network)
    numeric = "bfloat16" if bf16 else "float32"
    if engine == "torch":
        return EngineChoice("torch", numeric)
    if engine == "onnxruntime":
        if device.type != "cpu" or network.config.kind != "conv" or bf16:
            raise ValueError(
                "engine='onnxruntime' runs conv (image) networks in float32 on the CPU; "
                f"got device={device.type!r}, network kind={network.config.kind!r}, precision={numeric!r}"
            )
        if not onnxruntime_available():
            raise ImportError("engine='onnxruntime' needs the onnx extra: pip install 'bafo-pipeline[onnx]'")
        return EngineChoice("onnxruntime", "float32")
    cpu_float32_conv = device.type == "cpu" and network.config.kind == "conv" and not bf16
    if cpu_float32_conv and onnxruntime_available():
        return EngineChoice("onnxruntime", "float32")
    return EngineChoice("torch", numeric)


class TorchEncoder:
    """Latents of uint8 images with the folded network in torch (channels_last, optional bf16 autocast)."""

    def __init__(self, encoder: ConcealedEncoder, device: torch.device, bfloat16: bool):
        self._encoder = encoder.to(device).to(memory_format=torch.channels_last).eval()
        self._device = device
        self._bfloat16 = bfloat16

    def __call__(self, images: np.ndarray | torch.Tensor) -> np.ndarray:
        """Latents of uint8 images ``(n, C, H, W)`` (array or tensor, any strides, any device)."""
        if not isinstance(images, torch.Tensor):
            if any(stride < 0 for stride in images.strides):
                images = np.ascontiguousarray(images)
            images = torch.from_numpy(images)
        pixels = images.to(self._device, non_blocking=True)
        pixels = pixels.to(dtype=torch.float32, memory_format=torch.channels_last).div_(255.0)
        with torch.inference_mode(), torch.autocast(self._device.type, dtype=torch.bfloat16, enabled=self._bfloat16):
            return self._encoder(pixels).float().cpu().numpy()


@dataclass(frozen=True)
class ImageEncoder:
    """A ready runtime: ``encode(images) -> latents`` and what it is (for provenance)."""

    engine: str
    precision: str
    encode: Callable[[np.ndarray | torch.Tensor], np.ndarray]


# Built runtimes per fitted network, dropped with it; each entry remembers the concealment
# steps it folded, so refitting them (fit_concealment) rebuilds it.
_RUNTIMES: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def image_encoder(
    network: BAFONetwork,
    steps: tuple,
    image_shape: tuple[int, int, int],
    device: torch.device,
    choice: EngineChoice,
) -> ImageEncoder:
    """The runtime for ``network`` followed by the concealment ``steps`` (``(erasure, refiner, final_erasure)``,
    ``None`` where absent), made once and reused while the network and steps stay the same.

    ``image_shape`` is ``(height, width, channels)``.
    """
    threads = default_threads() if choice.engine == "onnxruntime" else 0
    key = (choice, str(device), threads)
    runtimes = _RUNTIMES.setdefault(network, {})
    cached = runtimes.get(key)
    if cached is not None and len(cached[0]) == len(steps) and all(a is b for a, b in zip(cached[0], steps)):
        return cached[1]
    erasure, refiner, final_erasure = steps
    folded = concealed_encoder(network, erasure=erasure, refiner=refiner, final_erasure=final_erasure)
    if choice.engine == "onnxruntime":
        encode = OnnxRuntimeEncoder(onnx_model(folded, image_shape), threads)
    else:
        encode = TorchEncoder(folded, device, choice.precision == "bfloat16")
    runtime = ImageEncoder(choice.engine, choice.precision, encode)
    runtimes[key] = (steps, runtime)
    return runtime
