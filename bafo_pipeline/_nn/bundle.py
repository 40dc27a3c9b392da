"""A fitted image encoder away from its estimator: a small picklable bundle, and the encoder built from it.

A Ray actor that only encodes needs none of the estimator: not scikit-learn (about a
second of imports in a fresh worker process), not the training code, not the
concealment steps' estimators. :class:`EncoderBundle` holds what
:meth:`BAFOTransformer.encode_images <bafo_pipeline.BAFOTransformer.encode_images>`
runs (the folded, concealed :class:`~bafo_pipeline._nn.folding.ConcealedEncoder` as its
architecture and weights, the input size, the precision setting and its measured
bfloat16 error) plus what an export records about the model; :meth:`EncoderBundle.encoder`
rebuilds the network with torch alone, as a :class:`ImageEncoder`. The weights are the
folded float32 weights the estimator itself encodes with, so the latents are bit for bit
the estimator's at the same precision. The driver makes the bundle
(:meth:`BAFOTransformer.encoder_bundle <bafo_pipeline.BAFOTransformer.encoder_bundle>`).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from .._utils.device import resolve_device
from .engine import TorchEncoder
from .folding import ConcealedEncoder
from .inference import InferenceSettings, bfloat16_for

__all__ = ["EncoderBundle", "ImageEncoder"]


@dataclass(frozen=True)
class EncoderBundle:
    """What encoding images with a fitted model needs, and nothing else: picklable, torch and NumPy only.

    Parameters
    ----------
    architecture : dict
        The folded encoder's layers (:meth:`ConcealedEncoder.architecture`).
    weights : dict of str to Tensor
        Its state dict (float32, CPU).
    image_shape : tuple of int
        ``(height, width, channels)`` the images are decoded to.
    precision : {"auto", "float32", "bfloat16"}
        The estimator's setting, resolved on the device the encoder is built for.
    bfloat16_error : float or None
        How far bfloat16 moved the fitted model's latents (what ``"auto"`` is decided on).
    metadata : dict
        What an export records about the model: ``concealment`` and ``attribute_schema``.
    """

    architecture: dict
    weights: dict[str, torch.Tensor]
    image_shape: tuple[int, int, int]
    precision: str
    bfloat16_error: float | None = None
    metadata: dict = field(default_factory=dict)

    @classmethod
    def of(cls, encoder: ConcealedEncoder, *, image_shape, precision: str, bfloat16_error: float | None,
           metadata: dict) -> "EncoderBundle":
        """The bundle of a folded encoder (its weights copied: the bundle shares nothing with the estimator)."""
        weights = {name: tensor.detach().cpu().clone() for name, tensor in encoder.state_dict().items()}
        return cls(encoder.architecture(), weights, tuple(int(v) for v in image_shape), precision,
                   None if bfloat16_error is None else float(bfloat16_error), dict(metadata))

    def encoder(self, device: str | torch.device = "auto") -> "ImageEncoder":
        """The network rebuilt on ``device`` (``"auto"``: CUDA when available), ready to encode."""
        return ImageEncoder(self, resolve_device(device))


class ImageEncoder:
    """Latents of decoded images, from an :class:`EncoderBundle`: what an export calls instead of the estimator.

    It answers what :func:`~bafo_pipeline.pipeline.export.export_latents` asks of a model:
    :meth:`encode_images`, :meth:`inference_settings`, ``latent_dim``, ``image_shape``
    and ``metadata``.
    """

    def __init__(self, bundle: EncoderBundle, device: torch.device) -> None:
        network = ConcealedEncoder.from_architecture(bundle.architecture, bundle.weights)
        bfloat16 = bfloat16_for(bundle.precision, device, convolutional=True, measured_error=bundle.bfloat16_error)
        self._encode = TorchEncoder(network, device, bfloat16)
        self._settings = InferenceSettings(device, "bfloat16" if bfloat16 else "float32")
        self.latent_dim = network.latent_dim
        self.image_shape = bundle.image_shape
        self.metadata = dict(bundle.metadata)

    def inference_settings(self) -> InferenceSettings:
        """The device this encoder runs on and its arithmetic (``"bfloat16"`` or ``"float32"``)."""
        return self._settings

    def encode_images(self, images: np.ndarray | torch.Tensor) -> np.ndarray:
        """Latents of uint8 images ``(n, C, H, W)``, as the estimator's ``encode_images`` gives them.

        Parameters
        ----------
        images : ndarray or Tensor of shape (n, C, H, W), uint8

        Returns
        -------
        Z : ndarray of shape (n, latent_dim), float32
        """
        height, width, channels = self.image_shape
        if images.dtype not in (np.uint8, torch.uint8) or tuple(images.shape[1:]) != (channels, height, width):
            raise ValueError(
                f"expected uint8 images of shape (n, {channels}, {height}, {width}), "
                f"got {images.dtype} {tuple(images.shape)}"
            )
        return self._encode(images)
