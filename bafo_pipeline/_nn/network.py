"""The BAFO network: an encoder to a Gaussian posterior, a decoder conditioned on attributes, the loss.

The decoder receives the encoded sensitive attributes concatenated to the
sampled latent (the paper's design); with ``condition_every_layer=True`` it
receives them again at every stage (as Fader Networks do), so it never needs
to find them in the latent. Two families share this interface: convolutional
networks for images and MLPs for tabular features or embeddings.
"""

from __future__ import annotations

import numbers
from collections.abc import Callable
from dataclasses import asdict, dataclass

import torch
from torch import nn
from torch.nn import functional as F


#: Largest network built (4 GiB of float32 weights): a shape past it is refused before anything is
#: allocated (a 100000 x 100000 image would otherwise ask for terabytes).
MAX_PARAMETERS = 2**30


@dataclass(frozen=True)
class NetworkConfig:
    """Shape of a BAFO network.

    Parameters
    ----------
    kind : {"conv", "mlp"}
        ``conv`` for images of shape ``(channels, height, width)``; ``mlp`` for
        flat feature vectors of length ``input_dim``.
    input_shape : tuple of int
        ``(channels, height, width)`` for conv; ``(input_dim,)`` for mlp.
    condition_dim : int
        Width of the encoded attribute vector.
    latent_dim : int
    widths : tuple of int
        Conv: channels per stride-2 stage (height and width must be divisible by
        ``2 ** len(widths)``). MLP: hidden layer sizes.
    condition_every_layer : bool
        Feed the attributes to every decoder stage, not only its input.
    """

    kind: str
    input_shape: tuple[int, ...]
    condition_dim: int
    latent_dim: int = 48
    widths: tuple[int, ...] = (32, 64, 128)
    condition_every_layer: bool = False

    def __post_init__(self) -> None:
        # Shapes come from config files too: whole numbers only (NumPy ones become ints).
        for name in ("input_shape", "widths"):
            values = getattr(self, name)
            if not isinstance(values, (tuple, list)) or not all(_is_whole(v) for v in values):
                raise ValueError(f"{name} must be a tuple of whole numbers, got {values!r}")
            object.__setattr__(self, name, tuple(int(v) for v in values))
        for name in ("latent_dim", "condition_dim"):
            if not _is_whole(getattr(self, name)):
                raise ValueError(f"{name} must be a whole number, got {getattr(self, name)!r}")
            object.__setattr__(self, name, int(getattr(self, name)))
        if self.kind not in ("conv", "mlp"):
            raise ValueError(f"network kind must be 'conv' or 'mlp', got {self.kind!r}")
        if self.latent_dim < 1 or not self.widths or min(self.widths) < 1:
            raise ValueError(f"latent_dim and widths must be positive, got {self.latent_dim}, {self.widths}")
        if self.condition_dim < 0:
            raise ValueError(f"condition_dim must be >= 0, got {self.condition_dim}")
        if self.kind == "mlp" and (len(self.input_shape) != 1 or self.input_shape[0] < 1):
            raise ValueError(f"an mlp network needs input_shape (n_features,), got {self.input_shape}")
        if self.kind == "conv":
            if len(self.input_shape) != 3:
                raise ValueError(f"a conv network needs input_shape (channels, height, width), got {self.input_shape}")
            factor = 2 ** len(self.widths)
            _, height, width = self.input_shape
            if height % factor or width % factor:
                raise ValueError(
                    f"image size {height}x{width} must be divisible by {factor} "
                    f"(2 ** number of conv stages, widths={self.widths})"
                )

        n_parameters = self.parameter_count()
        if n_parameters > MAX_PARAMETERS:
            raise ValueError(
                f"a network of input shape {self.input_shape}, widths {self.widths} and latent_dim "
                f"{self.latent_dim} has {n_parameters:.3g} parameters ({4 * n_parameters / 2**30:.3g} GiB in "
                f"float32), over the {MAX_PARAMETERS:.3g} this package builds; use smaller images or widths"
            )

    def parameter_count(self) -> int:
        """How many parameters the network of this shape has (computed, nothing is allocated)."""
        latent_in = self.latent_dim + self.condition_dim
        if self.kind == "mlp":
            encoder = _linear_parameters([self.input_shape[0], *self.widths, 2 * self.latent_dim])
            extra = self.condition_dim if self.condition_every_layer else 0
            sizes = [latent_in, *reversed(self.widths), self.input_shape[0]]
            decoder = sum((n_in + (extra if i else 0) + 1) * n_out for i, (n_in, n_out) in enumerate(zip(sizes, sizes[1:])))
            return encoder + decoder
        channels, height, width = self.input_shape
        cells = self.widths[-1] * (height // 2 ** len(self.widths)) * (width // 2 ** len(self.widths))
        stages = [channels, *self.widths]
        convolutions = sum((16 * w_in + 1) * w_out for w_in, w_out in zip(stages, stages[1:]))
        stage_condition = self.condition_dim if self.condition_every_layer else 0
        transposed = sum((16 * (w_out + stage_condition) + 1) * w_in for w_in, w_out in zip(stages, stages[1:]))
        return convolutions + (cells + 1) * 2 * self.latent_dim + (latent_in + 1) * cells + transposed

    def to_dict(self) -> dict:
        """JSON-ready form."""
        data = asdict(self)
        data["input_shape"] = list(self.input_shape)
        data["widths"] = list(self.widths)
        return data

    @classmethod
    def from_dict(cls, data: dict) -> "NetworkConfig":
        """Inverse of :meth:`to_dict`."""
        data = dict(data)
        data["input_shape"] = tuple(data["input_shape"])
        data["widths"] = tuple(data["widths"])
        return cls(**data)


def _is_whole(value) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _linear_parameters(sizes: list[int]) -> int:
    return sum((n_in + 1) * n_out for n_in, n_out in zip(sizes, sizes[1:]))


def _act() -> nn.Module:
    return nn.SiLU()


class ConvEncoder(nn.Module):
    """Stride-2 conv stages, then a linear map to posterior mean and log-variance."""

    def __init__(self, config: NetworkConfig):
        super().__init__()
        channels, height, width = config.input_shape
        layers: list[nn.Module] = []
        previous = channels
        for stage_width in config.widths:
            layers += [nn.Conv2d(previous, stage_width, 4, stride=2, padding=1), _act()]
            previous = stage_width
        self.features = nn.Sequential(*layers)
        factor = 2 ** len(config.widths)
        self.head = nn.Linear(previous * (height // factor) * (width // factor), 2 * config.latent_dim)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        features = self.features(x).flatten(1)
        # The head stays float32 under bf16 autocast: the latent is the product, and bf16
        # would round it to about three significant digits. It costs ~5% of the encoder.
        with torch.autocast(device_type=features.device.type, enabled=False):
            mean, logvar = self.head(features.float()).chunk(2, dim=1)
        return mean, logvar


class ConvDecoder(nn.Module):
    """Linear map of ``[latent, condition]`` to a feature map, then stride-2 transposed convs to pixels in [0, 1].

    With ``condition_every_layer`` the condition is also tiled over the feature
    map entering every transposed conv.
    """

    def __init__(self, config: NetworkConfig):
        super().__init__()
        channels, height, width = config.input_shape
        factor = 2 ** len(config.widths)
        self.start_shape = (config.widths[-1], height // factor, width // factor)
        self.stem = nn.Linear(config.latent_dim + config.condition_dim, int(torch.tensor(self.start_shape).prod()))
        self.stage_condition = config.condition_dim if config.condition_every_layer else 0
        inputs = list(reversed(config.widths))
        outputs = inputs[1:] + [channels]
        self.stages = nn.ModuleList(
            nn.ConvTranspose2d(w_in + self.stage_condition, w_out, 4, stride=2, padding=1)
            for w_in, w_out in zip(inputs, outputs)
        )

    def forward(self, z: torch.Tensor, condition: torch.Tensor) -> torch.Tensor:
        h = F.silu(self.stem(torch.cat([z, condition], dim=1))).view(-1, *self.start_shape)
        for i, stage in enumerate(self.stages):
            if self.stage_condition:
                maps = condition[:, :, None, None].expand(-1, -1, h.shape[2], h.shape[3]).to(h.dtype)
                h = torch.cat([h, maps], dim=1)
            h = stage(h)
            if i < len(self.stages) - 1:
                h = F.silu(h)
        return torch.sigmoid(h)


def _mlp(sizes: list[int]) -> nn.Sequential:
    layers: list[nn.Module] = []
    for i, (n_in, n_out) in enumerate(zip(sizes[:-1], sizes[1:])):
        layers.append(nn.Linear(n_in, n_out))
        if i < len(sizes) - 2:
            layers.append(_act())
    return nn.Sequential(*layers)


class MLPEncoder(nn.Module):
    """MLP from a feature vector to posterior mean and log-variance."""

    def __init__(self, config: NetworkConfig):
        super().__init__()
        self.net = _mlp([config.input_shape[0], *config.widths, 2 * config.latent_dim])

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        mean, logvar = self.net(x).chunk(2, dim=1)
        return mean, logvar


class MLPDecoder(nn.Module):
    """MLP from ``[latent, condition]`` to a feature vector (unbounded: features are standardised)."""

    def __init__(self, config: NetworkConfig):
        super().__init__()
        self.every_layer = config.condition_every_layer
        extra = config.condition_dim if self.every_layer else 0
        sizes = [config.latent_dim + config.condition_dim, *reversed(config.widths), config.input_shape[0]]
        self.layers = nn.ModuleList(
            nn.Linear(n_in + (extra if i > 0 else 0), n_out) for i, (n_in, n_out) in enumerate(zip(sizes[:-1], sizes[1:]))
        )

    def forward(self, z: torch.Tensor, condition: torch.Tensor) -> torch.Tensor:
        h = torch.cat([z, condition], dim=1)
        for i, layer in enumerate(self.layers):
            if i > 0 and self.every_layer:
                h = torch.cat([h, condition], dim=1)
            h = layer(h)
            if i < len(self.layers) - 1:
                h = F.silu(h)
        return h


class BAFONetwork(nn.Module):
    """Encoder and attribute-conditioned decoder.

    Parameters
    ----------
    config : NetworkConfig
    """

    def __init__(self, config: NetworkConfig):
        super().__init__()
        self.config = config
        if config.kind == "conv":
            self.encoder: nn.Module = ConvEncoder(config)
            self.decoder: nn.Module = ConvDecoder(config)
        else:
            self.encoder = MLPEncoder(config)
            self.decoder = MLPDecoder(config)

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Posterior mean and log-variance (log-variance clamped for stability)."""
        mean, logvar = self.encoder(x)
        return mean, logvar.clamp(-12.0, 8.0)

    def decode(self, z: torch.Tensor, condition: torch.Tensor) -> torch.Tensor:
        """Reconstruct from a latent and an encoded attribute vector."""
        return self.decoder(z, condition)

    def forward(
        self,
        x: torch.Tensor,
        condition: torch.Tensor,
        generator: torch.Generator | None = None,
        latent_hook: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Encode, sample with the reparameterisation trick, decode with ``condition``.

        ``latent_hook(z, condition)``, when given, replaces the sampled latent
        before it reaches the decoder (training hooks of concealment steps).

        Returns
        -------
        reconstruction, mean, logvar : Tensor
        """
        mean, logvar = self.encode(x)
        noise = torch.randn(mean.shape, generator=generator, device=mean.device, dtype=mean.dtype)
        z = mean + noise * torch.exp(0.5 * logvar)
        if latent_hook is not None:
            z = latent_hook(z, condition)
        return self.decode(z, condition), mean, logvar


def vae_loss_terms(
    x: torch.Tensor, reconstruction: torch.Tensor, mean: torch.Tensor, logvar: torch.Tensor
) -> dict[str, torch.Tensor]:
    """Per-sample loss terms (summed over pixels/dimensions).

    Returns
    -------
    dict
        ``reconstruction``: squared error; ``kl_mean``: the KL term from the
        posterior mean; ``kl_variance``: the KL term from the posterior variance
        (the one the paper suggests penalising harder). Their sum with the
        mean term is the usual Gaussian KL.
    """
    reconstruction_error = (reconstruction.float() - x.float()).pow(2).flatten(1).sum(1)
    mean, logvar = mean.float(), logvar.float()
    kl_mean = 0.5 * mean.pow(2).sum(1)
    kl_variance = 0.5 * (logvar.exp() - logvar - 1.0).sum(1)
    return {"reconstruction": reconstruction_error, "kl_mean": kl_mean, "kl_variance": kl_variance}
