"""One network from pixels to concealed latents: the encoder's mean path with the concealment folded in.

The concealment of a fitted :class:`~bafo_pipeline.BAFOTransformer` is a chain
of affine maps around one small MLP (``"full"``: erasure, the refiner's
standardisation, its MLP encoder, the final erasure; ``"linear"``: one
erasure). Every affine map next to a linear layer is multiplied into that
layer here, in float64, so inference runs one network instead of the encoder,
then NumPy, then a second estimator. Only the posterior mean is kept (the
log-variance half of the head is not computed). The convolutions are copied
as they are (pixels are still scaled to [0, 1] first), so under bfloat16 they
round exactly as the unfolded encoder does.

The result equals the unfolded chain up to float32 rounding (about 1e-6 of
the latents' spread; ``tests/test_engine.py``).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from ..model import BAFONetwork


@dataclass(frozen=True)
class AffineMap:
    """``y = x @ matrix + offset`` on row vectors, in float64."""

    matrix: np.ndarray
    offset: np.ndarray

    @classmethod
    def erasure(cls, eraser) -> "AffineMap":
        """A fitted LinearErasure: ``x - (x - mean_) @ projection_``."""
        projection = np.asarray(eraser.projection_, dtype=np.float64)
        return cls(np.eye(len(projection)) - projection, np.asarray(eraser.mean_, dtype=np.float64) @ projection)

    @classmethod
    def standardisation(cls, mean: np.ndarray, scale: np.ndarray) -> "AffineMap":
        """``(x - mean) / scale``."""
        inverse = 1.0 / np.asarray(scale, dtype=np.float64)
        return cls(np.diag(inverse), -np.asarray(mean, dtype=np.float64) * inverse)

    def then(self, other: "AffineMap") -> "AffineMap":
        """This map followed by ``other``."""
        return AffineMap(self.matrix @ other.matrix, self.offset @ other.matrix + other.offset)


class ConcealedEncoder(nn.Module):
    """Pixels in [0, 1] ``(n, C, H, W)`` → latents: conv features, a linear head, an optional MLP tail.

    Parameters
    ----------
    features : nn.Sequential
        The encoder's convolutions and activations.
    head : nn.Linear
        Flattened features → latent (affine maps folded in).
    tail : nn.Sequential, optional
        The refiner's MLP (affine maps folded into its first and last layers).
    """

    def __init__(self, features: nn.Sequential, head: nn.Linear, tail: nn.Sequential | None = None):
        super().__init__()
        self.features = features
        self.head = head
        self.tail = tail

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        features = self.features(pixels).flatten(1)
        # Head and tail stay float32 under bf16 autocast, as in the unfolded encoder.
        with torch.autocast(device_type=features.device.type, enabled=False):
            latents = self.head(features.float())
            return latents if self.tail is None else self.tail(latents)

    @property
    def latent_dim(self) -> int:
        """Width of the output."""
        return (self.tail[-1] if self.tail is not None else self.head).out_features

    def layers(self) -> list[tuple[str, nn.Module]]:
        """``("conv"|"linear"|"silu", module)`` in execution order (for other runtimes to rebuild the graph)."""
        out: list[tuple[str, nn.Module]] = []
        for module in [*self.features, "flatten", self.head, *(self.tail if self.tail is not None else [])]:
            if isinstance(module, str):
                out.append((module, None))
            elif isinstance(module, nn.Conv2d):
                out.append(("conv", module))
            elif isinstance(module, nn.Linear):
                out.append(("linear", module))
            elif isinstance(module, nn.SiLU):
                out.append(("silu", module))
            else:
                raise TypeError(f"no inference rule for layer {type(module).__name__}")
        return out


def concealed_encoder(
    network: BAFONetwork, *, erasure=None, refiner=None, final_erasure=None
) -> ConcealedEncoder:
    """Fold a conv network's mean path and its fitted concealment steps into one :class:`ConcealedEncoder`.

    Parameters
    ----------
    network : BAFONetwork
        A conv network (its encoder is used).
    erasure : LinearErasure, optional
        The first erasure (``concealment`` ``"linear"`` or ``"full"``).
    refiner : BAFOTransformer, optional
        The tabular refiner of ``"full"``; needs ``final_erasure`` too.
    final_erasure : LinearErasure, optional

    Returns
    -------
    ConcealedEncoder
        In eval mode, float32, on the CPU.
    """
    if network.config.kind != "conv":
        raise ValueError("only convolutional (image) networks are folded; tabular models run as they are")
    if (refiner is None) != (final_erasure is None) or (refiner is not None and erasure is None):
        raise ValueError("the refiner comes with both erasures")
    encoder = network.encoder
    latent_dim = network.config.latent_dim
    features = _copy_features(encoder.features)
    head_weight = encoder.head.weight.detach().double().cpu().numpy()[:latent_dim]
    head = AffineMap(head_weight.T, encoder.head.bias.detach().double().cpu().numpy()[:latent_dim])
    tail = None
    if refiner is None and erasure is not None:
        head = head.then(AffineMap.erasure(erasure))
    elif refiner is not None:
        into_refiner = AffineMap.erasure(erasure).then(
            AffineMap.standardisation(refiner.feature_mean_, refiner.feature_scale_)
        )
        tail = _folded_mlp(refiner.network_, into_refiner, AffineMap.erasure(final_erasure))
    return ConcealedEncoder(features, _linear(head), tail).eval()


def _copy_features(features: nn.Sequential) -> nn.Sequential:
    layers = []
    for module in features:
        if isinstance(module, nn.Conv2d):
            copy = nn.Conv2d(module.in_channels, module.out_channels, module.kernel_size, module.stride, module.padding)
            copy.load_state_dict({k: v.detach().cpu() for k, v in module.state_dict().items()})
            layers.append(copy)
        elif isinstance(module, nn.SiLU):
            layers.append(nn.SiLU())
        else:
            raise TypeError(f"no inference rule for encoder layer {type(module).__name__}")
    return nn.Sequential(*layers)


def _folded_mlp(network: BAFONetwork, before: AffineMap, after: AffineMap) -> nn.Sequential:
    """The refiner's MLP encoder (mean outputs only) with ``before`` folded into its first layer, ``after`` into its last."""
    layers = list(network.encoder.net)
    linears = [i for i, module in enumerate(layers) if isinstance(module, nn.Linear)]
    out: list[nn.Module] = []
    latent_dim = network.config.latent_dim
    for i, module in enumerate(layers):
        if isinstance(module, nn.SiLU):
            out.append(nn.SiLU())
            continue
        if not isinstance(module, nn.Linear):
            raise TypeError(f"no inference rule for refiner layer {type(module).__name__}")
        weight = module.weight.detach().double().cpu().numpy()
        bias = module.bias.detach().double().cpu().numpy()
        if i == linears[-1]:
            weight, bias = weight[:latent_dim], bias[:latent_dim]
        affine = AffineMap(weight.T, bias)
        if i == linears[0]:
            affine = before.then(affine)
        if i == linears[-1]:
            affine = affine.then(after)
        out.append(_linear(affine))
    return nn.Sequential(*out)


def _linear(affine: AffineMap) -> nn.Linear:
    n_in, n_out = affine.matrix.shape
    layer = nn.Linear(n_in, n_out)
    with torch.no_grad():
        layer.weight.copy_(torch.from_numpy(affine.matrix.T.copy()).float())
        layer.bias.copy_(torch.from_numpy(affine.offset.copy()).float())
    return layer
