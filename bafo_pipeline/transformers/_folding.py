"""One network from pixels to concealed latents: the encoder's mean path with the concealment folded in.

The concealment of a fitted :class:`~bafo_pipeline.BAFOTransformer` is a chain
of affine maps and small MLPs (``"full"``: erasure, the refiner's
standardisation and MLP encoder, the final erasure; ``"linear"``: one
erasure; any list of such steps folds the same way). Every affine map next to
a linear layer is multiplied into that layer here, in float64, so inference
runs one network instead of the encoder, then NumPy, then a second estimator.
A step of another kind cannot be folded (:class:`NotFoldable`). Only the posterior mean is kept (the
log-variance half of the head is not computed). The convolutions are copied
as they are (pixels are still scaled to [0, 1] first), so under bfloat16 they
round exactly as the unfolded encoder does.

The result equals the unfolded chain up to float32 rounding (about 1e-6 of
the latents' spread; ``tests/test_engine.py``).
"""

from __future__ import annotations

from collections.abc import Sequence
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
        The refiners' MLP layers, the affine steps folded into their first and last layers.
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


class NotFoldable(TypeError):
    """A concealment step that is neither an affine map nor an MLP refiner: it cannot join the network."""


def concealed_encoder(network: BAFONetwork, steps: Sequence = ()) -> ConcealedEncoder:
    """Fold a conv network's mean path and its fitted concealment ``steps`` into one :class:`ConcealedEncoder`.

    Parameters
    ----------
    network : BAFONetwork
        A conv network (its encoder is used).
    steps : sequence
        Fitted concealment steps, applied in order: affine erasures (anything
        with ``mean_`` and ``projection_``, such as :class:`LinearErasure`)
        and MLP refiners (a tabular :class:`BAFOTransformer`, or a step
        holding one as ``model_``).

    Returns
    -------
    ConcealedEncoder
        In eval mode, float32, on the CPU.

    Raises
    ------
    NotFoldable
        For any other kind of step (the caller then runs the steps one by one).
    """
    if network.config.kind != "conv":
        raise ValueError("only convolutional (image) networks are folded; tabular models run as they are")
    encoder = network.encoder
    latent_dim = network.config.latent_dim
    head_weight = encoder.head.weight.detach().double().cpu().numpy()[:latent_dim]
    # ``open_layer``: the last linear layer, not yet emitted; ``pending``: the affine steps after it.
    open_layer = AffineMap(head_weight.T, encoder.head.bias.detach().double().cpu().numpy()[:latent_dim])
    pending: AffineMap | None = None
    emitted: list[nn.Module] = []
    for step in steps:
        if hasattr(step, "projection_") and hasattr(step, "mean_"):
            affine = AffineMap.erasure(step)
            pending = affine if pending is None else pending.then(affine)
            continue
        refiner = _mlp_refiner(step)
        before = AffineMap.standardisation(refiner.feature_mean_, refiner.feature_scale_)
        emitted.append(_linear(open_layer))
        layers, open_layer = _mlp_layers(refiner.network_, before if pending is None else pending.then(before))
        emitted += layers
        pending = None
    last = _linear(open_layer if pending is None else open_layer.then(pending))
    head, tail = (last, None) if not emitted else (emitted[0], nn.Sequential(*emitted[1:], last))
    return ConcealedEncoder(_copy_features(encoder.features), head, tail).eval()


def _mlp_refiner(step):
    """The tabular BAFOTransformer a refiner step runs (the step itself, or its ``model_``)."""
    model = getattr(step, "model_", step)
    network = getattr(model, "network_", None)
    if network is None or network.config.kind != "mlp" or not hasattr(model, "feature_mean_"):
        raise NotFoldable(f"a {type(step).__name__} step cannot be folded into the encoder")
    return model


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


def _mlp_layers(network: BAFONetwork, before: AffineMap) -> tuple[list[nn.Module], AffineMap]:
    """A refiner's MLP encoder: its layers with ``before`` folded into the first, and its last
    layer (mean outputs only) as an affine map, left open for the steps after it."""
    layers = list(network.encoder.net)
    linears = [i for i, module in enumerate(layers) if isinstance(module, nn.Linear)]
    out: list[nn.Module] = []
    latent_dim = network.config.latent_dim
    for i, module in enumerate(layers):
        if isinstance(module, nn.SiLU):
            out.append(nn.SiLU())
            continue
        if not isinstance(module, nn.Linear):
            raise NotFoldable(f"no inference rule for refiner layer {type(module).__name__}")
        weight = module.weight.detach().double().cpu().numpy()
        bias = module.bias.detach().double().cpu().numpy()
        if i == linears[-1]:
            weight, bias = weight[:latent_dim], bias[:latent_dim]
        affine = AffineMap(weight.T, bias)
        if i == linears[0]:
            affine = before.then(affine)
        if i == linears[-1]:
            return out, affine
        out.append(_linear(affine))
    raise NotFoldable("a refiner network without layers")


def _linear(affine: AffineMap) -> nn.Linear:
    n_in, n_out = affine.matrix.shape
    layer = nn.Linear(n_in, n_out)
    with torch.no_grad():
        layer.weight.copy_(torch.from_numpy(affine.matrix.T.copy()).float())
        layer.bias.copy_(torch.from_numpy(affine.offset.copy()).float())
    return layer
