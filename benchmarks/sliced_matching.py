"""Per-cell shape matching after ``bafo run``'s transport: research variants (TRAINED_CONCEALMENT §18-19).

``ConditionalTransport`` gives every attribute cell the pooled mean and covariance; what is left is the
shape of each cell's distribution, which a nearest-neighbour attacker reads (§17). :class:`SlicedCellMatching`
matches each cell's *whole* distribution to the pooled one in the leading principal directions, by
iterative distribution transfer (Pitié, Kokaram and Dahyot, 2005): in each of ``n_iter`` random
rotations of the whitened leading subspace, every coordinate of every cell goes through the monotone
map that sends the cell's quantiles to the pooled quantiles (piecewise linear between ``n_knots``
quantile levels, a constant shift beyond them). Each map is monotone, so the whole step inverts
exactly given the attributes; the directions outside the leading ones are left as the transport
left them.

:class:`RadialCellMatching` matches only each cell's distribution of whitened radii (how far its rows lie from
the centre, the elliptical part of a shape) with one monotone map per cell: no random rotations, and a
few parameters per cell instead of the sliced step's thousands.

``calibration_rows.VARIANTS`` registers both (``sliced-*``, ``radial-*``), so ``benchmarks/transport_utility_loss.py
--variants`` measures them beside the library's transport.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _cells import CLASSES, cell_codes, class_categories  # noqa: E402

from bafo_pipeline.attributes import quantile_bin_edges  # noqa: E402
from bafo_pipeline.transformers import ConditionalTransport  # noqa: E402


def monotone_map(values: np.ndarray, source_knots: np.ndarray, target_knots: np.ndarray) -> np.ndarray:
    """Send ``source_knots`` to ``target_knots`` (both increasing): linear between them, a shift beyond.

    Parameters
    ----------
    values : ndarray of shape (n,)
    source_knots, target_knots : ndarray of shape (k,)

    Returns
    -------
    ndarray of shape (n,)
        Increasing in ``values``; ``monotone_map(monotone_map(v, s, t), t, s)`` gives ``v`` back.
    """
    moved = np.interp(values, source_knots, target_knots)
    below, above = values < source_knots[0], values > source_knots[-1]
    moved[below] = values[below] + (target_knots[0] - source_knots[0])
    moved[above] = values[above] + (target_knots[-1] - source_knots[-1])
    return moved


class ShapeMatchingAfterTransport:
    """The library's transport, then a per-cell map of the whitened leading directions (subclasses fit the map).

    Every row is moved by its cell's maps only in the ``components`` leading principal directions of the
    transported calibration rows (whitened by their pooled scales); the other directions keep what the
    transport left. Subclasses implement ``_fit_shape(X, cells)`` and ``_shape(X, cells, inverse=...)``.
    """

    def fit(self, Z: np.ndarray, *, sensitive_features: pd.DataFrame):
        """Fit the transport, then the shape maps of every cell on the rows it moved."""
        attributes = sensitive_features.reset_index(drop=True)
        self.transport_ = ConditionalTransport(shrinkage=self.shrinkage).fit(Z, sensitive_features=attributes)
        moved = self.transport_.transform(Z, sensitive_features=attributes)
        self.age_edges_ = quantile_bin_edges(attributes["age"].to_numpy(float), 4)
        self.categories_ = class_categories(attributes)
        cells = self._cells(attributes)
        self.cells_ = np.unique(cells)
        self.mean_ = moved.mean(axis=0)
        values, vectors = np.linalg.eigh(np.cov(moved.T))
        leading = np.argsort(values)[::-1][: self.components]
        self.directions_, self.scales_ = vectors[:, leading], np.sqrt(values[leading])
        self._fit_shape((moved - self.mean_) @ self.directions_ / self.scales_, cells)
        return self

    def transform(self, Z: np.ndarray, *, sensitive_features: pd.DataFrame) -> np.ndarray:
        """Transport, then every cell's shape maps."""
        attributes = sensitive_features.reset_index(drop=True)
        return self._move(self.transport_.transform(Z, sensitive_features=attributes), attributes, inverse=False)

    def inverse_transform(self, Z: np.ndarray, *, sensitive_features: pd.DataFrame) -> np.ndarray:
        """Undo the shape maps, then the transport."""
        attributes = sensitive_features.reset_index(drop=True)
        back = self._move(Z, attributes, inverse=True)
        return self.transport_.inverse_transform(back, sensitive_features=attributes)

    def _move(self, moved: np.ndarray, attributes: pd.DataFrame, *, inverse: bool) -> np.ndarray:
        cells = self._cells(attributes)
        unknown = ~np.isin(cells, self.cells_)
        if unknown.any():
            raise ValueError(f"rows {np.flatnonzero(unknown)[:5] + 1} (1-based) are in cells no fitted row had")
        centred = moved - self.mean_
        X = self._shape(centred @ self.directions_ / self.scales_, cells, inverse=inverse)
        rest = centred - centred @ self.directions_ @ self.directions_.T
        return self.mean_ + rest + (X * self.scales_) @ self.directions_.T

    def _cells(self, attributes: pd.DataFrame) -> np.ndarray:
        """Each row's (gender, ethnicity, age quartile) as one number."""
        codes = cell_codes(attributes, self.age_edges_, self.categories_)
        for column, name in enumerate(CLASSES):
            unknown = np.flatnonzero(codes[:, column] < 0)
            if unknown.size:
                raise ValueError(f"row {unknown[0] + 1} (1-based): {name} has a class no fitted row had")
        return (codes[:, 0] * 100 + codes[:, 1]) * 10 + codes[:, 2]

    @staticmethod
    def _cell_parts(cells: np.ndarray) -> dict[str, np.ndarray]:
        """The codes :meth:`_cells` packed into each cell number: gender, ethnicity and age bin."""
        return {"gender": cells // 1000, "ethnicity": (cells // 10) % 100, "age": cells % 10}


class SlicedCellMatching(ShapeMatchingAfterTransport):
    """The library's transport, then each cell's distribution matched to the pooled one in the leading directions.

    Parameters
    ----------
    components : int, default=8
        Leading principal directions (of the transported calibration rows) whose joint distribution is matched.
    n_iter : int, default=100
        Random rotations of the whitened leading subspace, each followed by per-coordinate quantile maps.
    n_knots : int, default=5
        Quantile levels of each map, evenly spaced from ``edge`` to ``1 - edge``.
    edge : float, default=0.05
    step_size : float in (0, 1], default=1.0
        How far each map moves a cell's quantiles towards the pooled ones (1: all the way). Smaller steps
        with more rotations move the rows less for the same match (a sliced-Wasserstein flow).
    shrinkage : float, default=40.0
        The transport's covariance shrinkage (``bafo run``'s).
    seed : int, default=0
        Seed of the rotations.
    """

    def __init__(self, components: int = 8, n_iter: int = 100, n_knots: int = 5, edge: float = 0.05,
                 step_size: float = 1.0, shrinkage: float = 40.0, seed: int = 0):
        self.components = components
        self.n_iter = n_iter
        self.n_knots = n_knots
        self.edge = edge
        self.step_size = step_size
        self.shrinkage = shrinkage
        self.seed = seed

    def _fit_shape(self, X: np.ndarray, cells: np.ndarray) -> None:
        levels = np.linspace(self.edge, 1 - self.edge, self.n_knots)
        rng = np.random.default_rng(self.seed)
        self.rotations_, self.target_knots_, self.cell_knots_ = [], [], []
        for _ in range(self.n_iter):
            rotation, _ = np.linalg.qr(rng.normal(size=(X.shape[1], X.shape[1])))
            projected = X @ rotation
            knots = np.stack([np.quantile(projected[cells == cell], levels, axis=0) for cell in self.cells_])
            targets = knots + self.step_size * (np.quantile(projected, levels, axis=0) - knots)
            X = self._apply(projected, cells, knots, targets) @ rotation.T
            self.rotations_.append(rotation)
            self.target_knots_.append(targets)
            self.cell_knots_.append(knots)

    def _shape(self, X: np.ndarray, cells: np.ndarray, *, inverse: bool) -> np.ndarray:
        """Every rotation's quantile maps in order (in reverse order, undone, when ``inverse``)."""
        steps = range(self.n_iter)
        for t in reversed(steps) if inverse else steps:
            rotation, targets, knots = self.rotations_[t], self.target_knots_[t], self.cell_knots_[t]
            X = self._apply(X @ rotation, cells, knots, targets, inverse=inverse) @ rotation.T
        return X

    def _apply(self, projected: np.ndarray, cells: np.ndarray, knots: np.ndarray, targets: np.ndarray, *,
               inverse: bool = False) -> np.ndarray:
        """Every cell's coordinates through its quantile maps, ``knots`` to ``targets`` (or back)."""
        out = projected.copy()
        for index, cell in enumerate(self.cells_):
            rows = cells == cell
            if not rows.any():
                continue
            for j in range(projected.shape[1]):
                source, target = knots[index, :, j], targets[index, :, j]
                out[rows, j] = monotone_map(projected[rows, j], *((target, source) if inverse else (source, target)))
        return out


class RadialCellMatching(ShapeMatchingAfterTransport):
    """The library's transport, then each cell's distribution of whitened radii matched to the pooled one.

    Each row of the leading whitened subspace keeps its direction; its distance from the centre goes
    through its cell's monotone map (on the log scale, so that it stays positive) from the cell's radius
    quantiles to the pooled ones. One map per cell, no randomness: it removes differences in how a
    cell's rows spread around the centre (heavier or lighter tails, a shell against a ball) that equal
    means and covariances leave, and nothing that depends on direction.

    Parameters
    ----------
    components : int, default=8
        Leading principal directions (of the transported calibration rows) in which radii are measured.
    n_knots : int, default=5
        Quantile levels of each map, evenly spaced from ``edge`` to ``1 - edge``.
    edge : float, default=0.05
    shrinkage : float, default=40.0
        The transport's covariance shrinkage (``bafo run``'s).
    """

    def __init__(self, components: int = 8, n_knots: int = 5, edge: float = 0.05, shrinkage: float = 40.0):
        self.components = components
        self.n_knots = n_knots
        self.edge = edge
        self.shrinkage = shrinkage

    def _fit_shape(self, X: np.ndarray, cells: np.ndarray) -> None:
        levels = np.linspace(self.edge, 1 - self.edge, self.n_knots)
        log_radius = np.log(np.linalg.norm(X, axis=1))
        self.target_knots_ = np.quantile(log_radius, levels)
        self.cell_knots_ = np.stack([np.quantile(log_radius[cells == cell], levels) for cell in self.cells_])

    def _shape(self, X: np.ndarray, cells: np.ndarray, *, inverse: bool) -> np.ndarray:
        """Every row's radius through its cell's map (or back), its direction kept."""
        radius = np.linalg.norm(X, axis=1)
        log_radius = np.log(np.maximum(radius, np.finfo(float).tiny))
        moved = log_radius.copy()
        for index, cell in enumerate(self.cells_):
            rows = cells == cell
            knots = (self.cell_knots_[index], self.target_knots_)
            moved[rows] = monotone_map(log_radius[rows], *(knots[::-1] if inverse else knots))
        return X * np.exp(moved - log_radius)[:, None]
