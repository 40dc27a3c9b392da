"""One network from pixels to concealed latents: the encoder's mean path with the concealment folded in.

A concealment step that can join the network describes itself as a chain of
layers (its ``as_layers()``, see :mod:`bafo_pipeline.transformers._steps`):
:class:`AffineMap` s and elementwise activations (``nn.SiLU``), in float64. A
linear erasure is one affine map; a refiner is its standardisation, then its
MLP encoder's layers (:func:`mlp_mean_layers`). :func:`fold_encoder` multiplies
every run of affine maps between two activations into one linear layer, the
first run into the conv encoder's head, so inference runs one network instead
of the encoder, then NumPy, then a second estimator. Only the posterior mean is
kept (the log-variance half of each head is not computed). The convolutions
are copied as they are (pixels are still scaled to [0, 1] first), so under
bfloat16 they round exactly as the unfolded encoder does.

The result equals the unfolded chain up to float32 rounding: the folded weights
are exact in float64 and rounded once, the unfolded chain rounds after every
step (``tests/test_engine.py`` compares both with a float64 reference).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from .network import BAFONetwork

__all__ = ["AffineMap", "ConcealedEncoder", "Layer", "fold_encoder", "mlp_mean_layers"]


@dataclass(frozen=True)
class AffineMap:
    """``y = x @ matrix + offset`` on row vectors, in float64.

    Parameters
    ----------
    matrix : ndarray of shape (n_in, n_out)
    offset : ndarray of shape (n_out,)
    """

    matrix: np.ndarray
    offset: np.ndarray

    def __post_init__(self) -> None:
        object.__setattr__(self, "matrix", np.asarray(self.matrix, dtype=np.float64))
        object.__setattr__(self, "offset", np.asarray(self.offset, dtype=np.float64))
        if self.matrix.ndim != 2 or self.offset.shape != (self.matrix.shape[1],):
            raise ValueError(f"an affine map needs a 2-D matrix and an offset of its width, got "
                             f"{self.matrix.shape} and {self.offset.shape}")

    @classmethod
    def of_linear(cls, layer: nn.Linear, n_out: int | None = None) -> "AffineMap":
        """A linear layer as a map (its first ``n_out`` outputs only, when given)."""
        weight = layer.weight.detach().double().cpu().numpy()[:n_out]
        bias = layer.bias.detach().double().cpu().numpy()[:n_out]
        return cls(weight.T, bias)

    @classmethod
    def standardisation(cls, mean: np.ndarray, scale: np.ndarray) -> "AffineMap":
        """``(x - mean) / scale``."""
        inverse = 1.0 / np.asarray(scale, dtype=np.float64)
        return cls(np.diag(inverse), -np.asarray(mean, dtype=np.float64) * inverse)

    def then(self, other: "AffineMap") -> "AffineMap":
        """This map followed by ``other``."""
        return AffineMap(self.matrix @ other.matrix, self.offset @ other.matrix + other.offset)

    def as_linear(self) -> nn.Linear:
        """The map as a float32 ``nn.Linear`` (the one rounding of the folded weights)."""
        n_in, n_out = self.matrix.shape
        layer = _without_parameters(nn.Linear, n_in, n_out)
        layer.weight = nn.Parameter(torch.from_numpy(self.matrix.T.copy()).float())
        layer.bias = nn.Parameter(torch.from_numpy(self.offset.copy()).float())
        return layer


#: What a concealment step folds into: affine maps and elementwise activations, in order.
Layer = AffineMap | nn.SiLU


class ConcealedEncoder(nn.Module):
    """Pixels in [0, 1] ``(n, C, H, W)`` → latents: conv features, a linear head, an optional tail.

    Parameters
    ----------
    features : nn.Sequential
        The encoder's convolutions and activations.
    head : nn.Linear
        Flattened features → latent (the affine maps up to the first activation folded in).
    tail : nn.Sequential, optional
        The layers after the first activation of the concealment (refiners' MLPs).
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
        linears = [module for module in (self.tail or []) if isinstance(module, nn.Linear)]
        return (linears[-1] if linears else self.head).out_features

    def architecture(self) -> dict:
        """The layers' shapes, without weights: with :meth:`state_dict`, what :meth:`from_architecture` rebuilds from.

        ``{"features": [...], "head": [n_in, n_out], "tail": [...] or None}``, where a
        feature is ``["conv", in_channels, out_channels, kernel, stride, padding]`` or
        ``["silu"]`` and a tail layer ``["linear", n_in, n_out]`` or ``["silu"]``.
        """

        def describe(module: nn.Module) -> list:
            if isinstance(module, nn.Conv2d):
                return ["conv", module.in_channels, module.out_channels, list(module.kernel_size),
                        list(module.stride), list(module.padding)]
            if isinstance(module, nn.Linear):
                return ["linear", module.in_features, module.out_features]
            if isinstance(module, nn.SiLU):
                return ["silu"]
            raise TypeError(f"no inference rule for layer {type(module).__name__}")

        return {
            "features": [describe(module) for module in self.features],
            "head": [self.head.in_features, self.head.out_features],
            "tail": None if self.tail is None else [describe(module) for module in self.tail],
        }

    @classmethod
    def from_architecture(cls, architecture: dict, state: dict[str, torch.Tensor]) -> "ConcealedEncoder":
        """The encoder :meth:`architecture` and :meth:`state_dict` describe, its weights ``state``'s tensors (float32,
        CPU, eval mode): the same network, bit for bit."""

        def build(spec: list) -> nn.Module:
            kind, *shape = spec
            if kind == "conv":
                n_in, n_out, kernel, stride, padding = shape
                return _without_parameters(nn.Conv2d, n_in, n_out, tuple(kernel), tuple(stride), tuple(padding))
            if kind == "linear":
                return _without_parameters(nn.Linear, *shape)
            if kind == "silu":
                return nn.SiLU()
            raise ValueError(f"unknown layer kind {kind!r} in an encoder architecture")

        features = nn.Sequential(*(build(spec) for spec in architecture["features"]))
        head = _without_parameters(nn.Linear, *architecture["head"])
        tail = architecture.get("tail")
        encoder = cls(features, head, None if tail is None else nn.Sequential(*(build(spec) for spec in tail)))
        encoder.load_state_dict(state, assign=True)  # strict: a missing or extra weight is an error
        return encoder.eval()

    def layers(self) -> list[tuple[str, nn.Module | None]]:
        """``("conv"|"linear"|"silu"|"flatten", module)`` in execution order (for other runtimes to rebuild the graph)."""
        out: list[tuple[str, nn.Module | None]] = []
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


def fold_encoder(network: BAFONetwork, layers: Sequence[Layer] = ()) -> ConcealedEncoder:
    """Fold a conv network's mean path and the ``layers`` that follow it into one :class:`ConcealedEncoder`.

    Parameters
    ----------
    network : BAFONetwork
        A conv network (its encoder is used).
    layers : sequence of AffineMap or nn.SiLU
        What runs after the posterior mean, in order (the concatenated
        ``as_layers()`` of fitted concealment steps; empty for raw means).

    Returns
    -------
    ConcealedEncoder
        In eval mode, float32, on the CPU.
    """
    if network.config.kind != "conv":
        raise ValueError("only convolutional (image) networks are folded; tabular models run as they are")
    encoder = network.encoder
    # ``open_map``: the affine maps since the last activation, not yet emitted as a layer.
    open_map: AffineMap | None = AffineMap.of_linear(encoder.head, network.config.latent_dim)
    emitted: list[nn.Module] = []
    for layer in layers:
        if isinstance(layer, AffineMap):
            open_map = layer if open_map is None else open_map.then(layer)
        elif isinstance(layer, nn.SiLU):
            if open_map is not None:
                emitted.append(open_map.as_linear())
                open_map = None
            emitted.append(nn.SiLU())
        else:
            raise TypeError(f"a concealment layer must be an AffineMap or nn.SiLU, got {type(layer).__name__}")
    if open_map is not None:
        emitted.append(open_map.as_linear())
    head, tail = emitted[0], emitted[1:]
    return ConcealedEncoder(_copy_features(encoder.features), head, nn.Sequential(*tail) if tail else None).eval()


def mlp_mean_layers(network: BAFONetwork) -> list[Layer]:
    """An MLP network's encoder up to its posterior mean, as layers (the log-variance outputs dropped)."""
    if network.config.kind != "mlp":
        raise ValueError("mlp_mean_layers reads an MLP (tabular) network")
    modules = list(network.encoder.net)
    last = max(i for i, module in enumerate(modules) if isinstance(module, nn.Linear))
    out: list[Layer] = []
    for i, module in enumerate(modules):
        if isinstance(module, nn.Linear):
            out.append(AffineMap.of_linear(module, network.config.latent_dim if i == last else None))
        elif isinstance(module, nn.SiLU):
            out.append(nn.SiLU())
        else:
            raise TypeError(f"no inference rule for MLP layer {type(module).__name__}")
    return out


def _copy_features(features: nn.Sequential) -> nn.Sequential:
    layers: list[nn.Module] = []
    for module in features:
        if isinstance(module, nn.Conv2d):
            copy = _without_parameters(nn.Conv2d, module.in_channels, module.out_channels, module.kernel_size,
                                        module.stride, module.padding)
            copy.load_state_dict({k: v.detach().cpu().clone() for k, v in module.state_dict().items()}, assign=True)
            layers.append(copy)
        elif isinstance(module, nn.SiLU):
            layers.append(nn.SiLU())
        else:
            raise TypeError(f"no inference rule for encoder layer {type(module).__name__}")
    return nn.Sequential(*layers)


def _without_parameters(module_class: type[nn.Module], *args) -> nn.Module:
    """``module_class(*args)`` on the meta device, its parameters to be assigned: no random init, the global
    RNG untouched. (``torch.nn.utils.skip_init`` does the same, but its ``to_empty`` imports sympy on first
    use: half a second of every fresh process that encodes, such as each actor of a Ray export.)"""
    return module_class(*args, device="meta")
