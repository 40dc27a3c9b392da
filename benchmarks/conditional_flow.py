"""A conditional normalizing flow after ``bafo run``'s transport: a research variant (TRAINED_CONCEALMENT §19).

The per-cell shape steps of ``sliced_matching`` fit every attribute cell's maps on that cell's rows
alone (about 290 calibration rows per cell on UTKFace), and the data-rich attacker reads their
estimation noise (§18). Here one flow is fitted on *all* calibration rows: a stack of affine coupling
layers (RealNVP, Dinh et al. 2017) whose scale and shift networks see the row's attributes (gender,
ethnicity and age bin, one-hot) beside the coordinates, trained by maximum likelihood to send every
cell's distribution in the leading whitened directions to the same standard normal. What the cells
share is learned once from every row, in the spirit of Fair Normalizing Flows (Balunović et al., ICLR
2022); each row's map is invertible given its attributes.

``calibration_rows.VARIANTS`` registers it (``flow-*``), so ``benchmarks/transport_utility_loss.py
--variants`` measures it beside the library's transport.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
from sliced_matching import ShapeMatchingAfterTransport  # noqa: E402


class _Coupling(nn.Module):
    """``x[~mask]`` scaled and shifted by functions of ``x[mask]`` and the attributes."""

    def __init__(self, mask: torch.Tensor, n_conditions: int, hidden: int):
        super().__init__()
        self.register_buffer("mask", mask)
        width = int(mask.numel())
        self.net = nn.Sequential(nn.Linear(width + n_conditions, hidden), nn.Tanh(),
                                 nn.Linear(hidden, hidden), nn.Tanh(), nn.Linear(hidden, 2 * width))
        nn.init.zeros_(self.net[-1].weight)  # starts as the identity
        nn.init.zeros_(self.net[-1].bias)

    def _scale_shift(self, x: torch.Tensor, condition: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        log_scale, shift = self.net(torch.cat([x * self.mask, condition], dim=1)).chunk(2, dim=1)
        free = 1 - self.mask
        return torch.tanh(log_scale) * free, shift * free  # bounded scales keep the map well conditioned

    def forward(self, x: torch.Tensor, condition: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        log_scale, shift = self._scale_shift(x, condition)
        return x * torch.exp(log_scale) + shift, log_scale.sum(dim=1)

    def inverse(self, z: torch.Tensor, condition: torch.Tensor) -> torch.Tensor:
        log_scale, shift = self._scale_shift(z, condition)  # the masked half is unchanged by forward
        return (z - shift) * torch.exp(-log_scale)


class ConditionalFlowMatching(ShapeMatchingAfterTransport):
    """The library's transport, then one attribute-conditional flow sending every cell to a standard normal.

    Parameters
    ----------
    components : int, default=4
        Leading principal directions (of the transported calibration rows) the flow moves.
    n_layers : int, default=6
        Affine coupling layers (alternating halves of the coordinates).
    hidden : int, default=32
        Width of each coupling layer's two hidden layers.
    epochs : int, default=60
        Passes over the calibration rows (minibatches of 256, Adam at ``learning_rate``).
    learning_rate : float, default=1e-3
    weight_decay : float, default=1e-4
    shrinkage : float, default=40.0
        The transport's covariance shrinkage (``bafo run``'s).
    seed : int, default=0
        Seed of the initial weights and of the minibatch order.
    conditions : tuple of str, default=("gender", "ethnicity", "age")
        The attributes the flow sees (age as its quartile bin); the transport before it uses all three.
    """

    def __init__(self, components: int = 4, n_layers: int = 6, hidden: int = 32, epochs: int = 60,
                 learning_rate: float = 1e-3, weight_decay: float = 1e-4, shrinkage: float = 40.0, seed: int = 0,
                 conditions: tuple[str, ...] = ("gender", "ethnicity", "age")):
        self.components = components
        self.n_layers = n_layers
        self.hidden = hidden
        self.epochs = epochs
        self.learning_rate = learning_rate
        self.weight_decay = weight_decay
        self.shrinkage = shrinkage
        self.seed = seed
        self.conditions = conditions

    def _conditions(self, cells: np.ndarray) -> torch.Tensor:
        """One-hot gender, ethnicity and age bin of every row (those in ``conditions``), from its cell number."""
        parts = self._cell_parts(cells)
        columns = [(parts[name][:, None] == self.levels_[name][None, :]).astype(np.float64) for name in self.conditions]
        return torch.from_numpy(np.hstack(columns))

    def _fit_shape(self, X: np.ndarray, cells: np.ndarray) -> None:
        self.levels_ = {name: np.unique(codes) for name, codes in self._cell_parts(self.cells_).items()}
        torch.manual_seed(self.seed)
        condition = self._conditions(cells)
        width = X.shape[1]
        halves = torch.arange(width) % 2 == 0
        self.flow_ = nn.ModuleList(
            _Coupling((halves if layer % 2 == 0 else ~halves).double(), condition.shape[1], self.hidden)
            for layer in range(self.n_layers)).double()
        optimizer = torch.optim.Adam(self.flow_.parameters(), lr=self.learning_rate, weight_decay=self.weight_decay)
        data = torch.from_numpy(np.ascontiguousarray(X, dtype=np.float64))
        order = torch.Generator().manual_seed(self.seed)
        for _ in range(self.epochs):
            for batch in torch.randperm(len(data), generator=order).split(256):
                z, log_det = self._forward(data[batch], condition[batch])
                loss = (0.5 * (z ** 2).sum(dim=1) - log_det).mean()  # negative log-likelihood under N(0, I)
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
        self.flow_.eval()

    def _forward(self, x: torch.Tensor, condition: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        log_det = torch.zeros(len(x), dtype=x.dtype)
        for layer in self.flow_:
            x, layer_log_det = layer(x, condition)
            log_det = log_det + layer_log_det
        return x, log_det

    def _shape(self, X: np.ndarray, cells: np.ndarray, *, inverse: bool) -> np.ndarray:
        """Every row through the flow given its attributes (or back)."""
        condition = self._conditions(cells)
        values = torch.from_numpy(np.ascontiguousarray(X, dtype=np.float64))
        with torch.no_grad():
            if inverse:
                for layer in reversed(self.flow_):
                    values = layer.inverse(values, condition)
            else:
                values, _ = self._forward(values, condition)
        return values.numpy()
