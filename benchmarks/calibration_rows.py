"""How many calibration rows ``bafo run``'s transport needs, and whether another estimator needs fewer.

``bafo run`` fits its ``ConditionalTransport`` on calibration rows it does not share (half of the
training split by default), so every shared row is moved by maps estimated on other rows, and the
maps' estimation error is the same for every row of a cell: the data-rich attacker learns it from
the shared training rows and reads it on the held-out rows (docs/TRAINED_CONCEALMENT.md §13).
This script measures that leakage against the calibration rows' number and against the
estimator, with the shared rows and the attacker held fixed.

``--data demo``: per seed, ``bafo run``'s encoder (its settings, concealment ``none``) is trained on
the demo's training split; it encodes the training rows, the held-out rows and ``--extra`` further
synthetic faces from the same generator (another seed, never seen by the encoder). Per split draw
the training rows are halved at random into calibration and shared rows. Each setting fits the
transport on its calibration rows and moves the shared training rows and the held-out rows:

- ``half``: the calibration half (what ``bafo run`` does);
- ``extra-N``: N of the extra faces instead (the same shared rows and attacker);
- ``half+V``: estimator variant V on the calibration half (:data:`VARIANTS`).

The audit then scores the held-out rows: the data-rich attacker (each probe fitted on the shared
training rows) and the cross-validated one (held-out rows only), chance-adjusted, with bootstrap
intervals; and the share of the unconcealed latents' score each non-sensitive attribute keeps
(best probe, held-out rows), with the score itself (chance-adjusted), which compares encoders.

``--data utkface``: the transport fitted on a share of the UTKFace training split (``--fractions``;
the unconcealed encoder that ``benchmarks/trained_concealment.py`` caches), the data-rich attacker
fitted on the same training rows at every share (``--attacker fixed``: those outside the largest
share) or on every training row outside the share (``shared``: what ``bafo run`` would share); the
leakage only (the utility targets need the landmark file). Prints JSON::

    python benchmarks/calibration_rows.py --seeds 0,1,2 --splits 0,1 --cache CACHE
    python benchmarks/calibration_rows.py --data utkface --fractions 0.1,0.3,0.5,0.7 --splits 0,1
    python benchmarks/calibration_rows.py --data utkface --attacker shared --cache CACHE
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _cells import cell_codes, class_categories  # noqa: E402
from _demo_latents import demo_encoder_latents  # noqa: E402
from _machine import machine  # noqa: E402
from demo_concealments import RUN_DEFAULTS  # noqa: E402  (bafo run's defaults)
from conditional_flow import ConditionalFlowMatching  # noqa: E402
from noisy_transport import NoisyTransport, TransportThenKeyedNoise  # noqa: E402
from sliced_matching import RadialCellMatching, SlicedCellMatching  # noqa: E402

from bafo_pipeline.attributes import quantile_bin_edges  # noqa: E402
from bafo_pipeline.audits import PROBES, audit_leakage  # noqa: E402
from bafo_pipeline.audits.utility import audit_utility  # noqa: E402
from bafo_pipeline.transformers import ConditionalTransport  # noqa: E402

#: The library's covariance shrinkage when this file's estimator variants were built and measured (§12-14); the
#: library's default is 40 since §15. The variants keep 10 so that their results stay what they were.
VARIANT_SHRINKAGE = 10.0
SENSITIVE = ["age", "gender", "ethnicity"]
NULL_DRAWS = 20  # label permutations behind the subspace variant's parallel analysis
#: The conditional flow of §19 in every direction, conditioned on gender alone (the transport before it has
#: matched every cell's moments).
FLOW_GENDER = {"components": 48, "conditions": ("gender",), "n_layers": 12, "epochs": 150}


# ----------------------------------------------------------------- estimator variants (research, not in the library)
def _spd_log(matrix: np.ndarray) -> np.ndarray:
    values, vectors = np.linalg.eigh((matrix + matrix.T) / 2)
    return (vectors * np.log(np.clip(values, 1e-9 * values.max(), None))) @ vectors.T


def _spd_exp(matrix: np.ndarray) -> np.ndarray:
    values, vectors = np.linalg.eigh((matrix + matrix.T) / 2)
    return (vectors * np.exp(values)) @ vectors.T


class CellCovarianceTransport:
    """``bafo run``'s transport rebuilt from public parts, with each cell's covariance from :meth:`cell_covariance`.

    The library's smooth mean is removed by a ``ConditionalTransport`` that moves nothing else (one cell per class
    combination, every cell's mean and covariance pulled fully to the pooled ones); then each cell of
    :func:`transport_cells` (age bins from the fitted rows' quartiles) goes by the Gaussian map from its own mean and
    :meth:`cell_covariance` to the pooled ones. The default :meth:`cell_covariance` is the library's (the cell's
    sample covariance shrunk towards the pooled one by ``shrinkage`` rows), so this class moves rows as
    ``ConditionalTransport(shrinkage=shrinkage)`` does; the variants below override it. A row whose cell had no
    fitted rows is moved by the nearest age bin's map of its classes, as the library does.

    ``target="barycenter"`` maps every cell onto the cells' Wasserstein barycenter (weighted by their rows)
    instead of the pooled covariance: the common covariance that moves the rows least in total.
    """

    def __init__(self, shrinkage: float = VARIANT_SHRINKAGE, target: str = "pooled"):
        self.shrinkage = shrinkage
        self.target = target

    def fit(self, Z: np.ndarray, *, sensitive_features: pd.DataFrame) -> CellCovarianceTransport:
        attributes = sensitive_features.reset_index(drop=True)
        self.smooth_mean_ = smooth_mean_only().fit(Z, sensitive_features=attributes)
        Z = self.smooth_mean_.transform(Z, sensitive_features=attributes)
        self.age_edges_ = quantile_bin_edges(attributes["age"].to_numpy(float), 4)
        self.categories_ = class_categories(attributes)
        codes = cell_codes(attributes, self.age_edges_, self.categories_)
        self.cell_codes_, position = np.unique(codes, axis=0, return_inverse=True)
        position = position.ravel()
        n_cells = len(self.cell_codes_)
        self.mean_ = Z.mean(axis=0)
        self.pooled_ = np.atleast_2d(np.cov(Z.T))
        self.cell_means_ = np.stack([Z[position == index].mean(axis=0) for index in range(n_cells)])
        self.prepare(Z - self.cell_means_[position], position)
        counts = np.bincount(position, minlength=n_cells)
        covariances = np.stack([
            self.cell_covariance(index, np.atleast_2d(np.cov(Z[position == index].T)) if counts[index] > 1 else None,
                                 counts[index])
            for index in range(n_cells)])
        if self.target == "pooled":
            self.target_ = self.pooled_
        elif self.target == "barycenter":
            self.target_ = wasserstein_barycenter(covariances, counts / counts.sum())
        else:
            raise ValueError(f"target must be 'pooled' or 'barycenter', got {self.target!r}")
        self.transports_ = np.stack([_gaussian_map(covariance, self.target_) for covariance in covariances])
        return self

    def transform(self, Z: np.ndarray, *, sensitive_features: pd.DataFrame) -> np.ndarray:
        attributes = sensitive_features.reset_index(drop=True)
        Z = self.smooth_mean_.transform(Z, sensitive_features=attributes)
        position = self._fitted_cells(cell_codes(attributes, self.age_edges_, self.categories_))
        deviations = Z - self.cell_means_[position]
        return self.mean_ + np.einsum("nij,nj->ni", self.transports_[position], deviations)

    def prepare(self, residuals: np.ndarray, position: np.ndarray) -> None:
        """Whatever :meth:`cell_covariance` needs from every row's deviation from its cell mean."""

    def cell_covariance(self, index: int, own: np.ndarray | None, rows: int) -> np.ndarray:
        """The covariance cell ``index`` is moved from, given its sample covariance (None for one row)."""
        own = self.pooled_ if own is None else own
        return (rows * own + self.shrinkage * self.pooled_) / (rows + self.shrinkage)

    def _fitted_cells(self, codes: np.ndarray) -> np.ndarray:
        """Each row's cell: its own, or the nearest age bin's of its classes (``smooth_mean_`` has already
        refused rows whose classes had no fitted rows)."""
        unique, inverse = np.unique(codes, axis=0, return_inverse=True)
        cells = np.empty(len(unique), dtype=np.int64)
        for index, code in enumerate(unique):
            same_classes = np.flatnonzero((self.cell_codes_[:, :2] == code[:2]).all(axis=1))
            cells[index] = same_classes[np.argmin(np.abs(self.cell_codes_[same_classes, 2] - code[2]))]
        return cells[inverse.ravel()]


def smooth_mean_only() -> ConditionalTransport:
    """A ``ConditionalTransport`` that removes only its smooth mean: no age bins, and every cell's mean and
    covariance pulled fully to the pooled ones, so its maps are the identity (to about 1e-12)."""
    return ConditionalTransport(continuous_bins=0, shrinkage=1e15, mean_shrinkage=1.0)


class AdditiveCovarianceTransport(CellCovarianceTransport):
    """Each cell's covariance shrunk towards a log-additive model of its classes, not towards the pooled one.

    The model: ``log S_c = log W + sum_a (log S_a,k - log W)``, with ``W`` the pooled within-cell covariance and
    ``S_a,k`` the within-cell covariance of every row of class ``k`` of attribute ``a`` (age: its bin), each
    estimated on many more rows than one cell has.
    """

    def prepare(self, residuals: np.ndarray, position: np.ndarray) -> None:
        log_within = _spd_log(residuals.T @ residuals / (len(residuals) - len(self.cell_codes_)))
        row_codes = self.cell_codes_[position]
        self.effects_ = []
        for j in range(row_codes.shape[1]):
            per_class = {}
            for code in np.unique(row_codes[:, j]):
                rows = row_codes[:, j] == code
                scatter = residuals[rows].T @ residuals[rows] / max(rows.sum() - len(np.unique(position[rows])), 1)
                per_class[code] = _spd_log(scatter) - log_within
            self.effects_.append(per_class)
        self.log_within_ = log_within

    def cell_covariance(self, index: int, own: np.ndarray | None, rows: int) -> np.ndarray:
        codes = self.cell_codes_[index]
        model = _spd_exp(self.log_within_ + sum(self.effects_[j][code] for j, code in enumerate(codes)))
        own = model if own is None else own
        return (rows * own + self.shrinkage * model) / (rows + self.shrinkage)


def spiked_covariance(sample: np.ndarray, reference: np.ndarray, rows: int) -> np.ndarray:
    """A cell's covariance with only its detectable spikes kept: eigenvalue shrinkage relative to ``reference``.

    In coordinates whitened by ``reference``, a sample covariance of ``rows`` rows in ``d`` dimensions spreads
    its eigenvalues over the Marchenko-Pastur bulk even when the cell equals the reference; only eigenvalues
    beyond the bulk's edge ``(1 + sqrt(d / rows))^2`` are signal. Each is debiased to its population value and
    shrunk by its eigenvector's expected overlap (Donoho, Gavish and Johnstone's Frobenius-optimal shrinker);
    every other eigenvalue becomes the reference's.
    """
    gamma = sample.shape[0] / max(rows - 1, 1)
    root, inverse_root = _sqrt_and_inverse(reference)
    values, vectors = np.linalg.eigh(inverse_root @ sample @ inverse_root)
    shrunk = np.ones_like(values)
    for index, value in enumerate(values):
        if value > (1 + np.sqrt(gamma)) ** 2:
            b = value + 1 - gamma
            spike = (b + np.sqrt(max(b * b - 4 * value, 0.0))) / 2
            overlap = (1 - gamma / (spike - 1) ** 2) / (1 + gamma / (spike - 1))
            shrunk[index] = 1 + (spike - 1) * max(overlap, 0.0)
    return root @ ((vectors * shrunk) @ vectors.T) @ root


class SpikedCovarianceTransport(CellCovarianceTransport):
    """Each cell's covariance estimated by :func:`spiked_covariance` against the pooled within-cell covariance."""

    def prepare(self, residuals: np.ndarray, position: np.ndarray) -> None:
        self.within_ = residuals.T @ residuals / (len(residuals) - len(self.cell_codes_))

    def cell_covariance(self, index: int, own: np.ndarray | None, rows: int) -> np.ndarray:
        return spiked_covariance(self.within_ if own is None else own, self.within_, rows)


def wasserstein_barycenter(covariances: np.ndarray, weights: np.ndarray, tol: float = 1e-10,
                           max_iter: int = 200) -> np.ndarray:
    """The 2-Wasserstein barycenter of centred Gaussians: ``S = sum_k w_k (S^1/2 C_k S^1/2)^1/2``.

    Found by the fixed-point iteration of Alvarez-Esteban et al. (2016), started from the weighted mean.

    Parameters
    ----------
    covariances : ndarray of shape (n_cells, d, d)
        Positive definite covariances.
    weights : ndarray of shape (n_cells,)
        Non-negative weights summing to 1.
    tol : float, default=1e-10
        Stop when no entry moves by more than ``tol`` times the largest entry.
    max_iter : int, default=200
        At most this many iterations (it converges in about 15 on 48-dimensional latents).

    Returns
    -------
    ndarray of shape (d, d)
    """
    barycenter = np.einsum("k,kij->ij", weights, covariances)
    for _ in range(max_iter):
        root, inverse_root = _sqrt_and_inverse(barycenter)
        middle = sum(w * _sqrt_and_inverse(root @ c @ root)[0] for w, c in zip(weights, covariances))
        updated = inverse_root @ middle @ middle @ inverse_root
        updated = (updated + updated.T) / 2
        converged = np.abs(updated - barycenter).max() <= tol * np.abs(barycenter).max()
        barycenter = updated
        if converged:
            break
    return barycenter


def _gaussian_map(source: np.ndarray, target: np.ndarray) -> np.ndarray:
    """The optimal-transport map between centred Gaussians of covariance ``source`` and ``target``."""
    root, inverse_root = _sqrt_and_inverse(source)
    middle, _ = _sqrt_and_inverse(root @ target @ root)
    return inverse_root @ middle @ inverse_root


def _sqrt_and_inverse(matrix: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    values, vectors = np.linalg.eigh((matrix + matrix.T) / 2)
    values = np.clip(values, 1e-9 * max(values.max(), np.finfo(float).tiny), None)
    return (vectors * np.sqrt(values)) @ vectors.T, (vectors / np.sqrt(values)) @ vectors.T


def transport_cells(attributes: pd.DataFrame) -> np.ndarray:
    """The default transport's cells: gender x ethnicity x age quartile, as one number per row."""
    edges = quantile_bin_edges(attributes["age"].to_numpy(float), 4)
    codes = cell_codes(attributes, edges, class_categories(attributes))
    return np.unique(codes, axis=0, return_inverse=True)[1].ravel()


def between_cell_spectrum(Z: np.ndarray, cells: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Eigenvalues (descending) and eigenvectors of the cells' whitened, count-scaled mean deviations' scatter.

    In units where a cell mean's sampling noise is 1 per direction; also the within-cell whitening and its inverse.
    """
    n_cells = cells.max() + 1
    counts = np.bincount(cells, minlength=n_cells)
    means = np.stack([Z[cells == cell].mean(axis=0) for cell in range(n_cells)])
    residuals = Z - means[cells]
    values, vectors = np.linalg.eigh(residuals.T @ residuals / (len(Z) - n_cells))
    whiten, unwhiten = (vectors / np.sqrt(values)) @ vectors.T, (vectors * np.sqrt(values)) @ vectors.T
    deviations = (means - Z.mean(axis=0)) @ whiten * np.sqrt(counts)[:, None]
    spectrum, directions = np.linalg.eigh(deviations.T @ deviations / n_cells)
    order = np.argsort(spectrum)[::-1]
    return spectrum[order], directions[:, order], whiten, unwhiten


class SubspaceTransport:
    """The transport applied only in the leading whitened between-cell directions; the rest left as it is.

    ``dims="parallel"``: the directions whose eigenvalue beats the same rank's 95th percentile over label
    permutations (Horn's parallel analysis); an int: that many.
    """

    def __init__(self, dims: int | str = "parallel"):
        self.dims = dims

    def fit(self, Z: np.ndarray, *, sensitive_features: pd.DataFrame) -> SubspaceTransport:
        attributes = sensitive_features.reset_index(drop=True)
        cells = transport_cells(attributes)
        spectrum, directions, whiten, unwhiten = between_cell_spectrum(Z, cells)
        if self.dims == "parallel":
            rng = np.random.default_rng(0)
            null = np.array([between_cell_spectrum(Z, rng.permutation(cells))[0] for _ in range(NULL_DRAWS)])
            beaten = spectrum > np.percentile(null, 95, axis=0)
            self.dims_ = int(np.argmin(beaten)) if not beaten.all() else len(spectrum)
        else:
            self.dims_ = int(self.dims)
        self.dims_ = max(self.dims_, 1)
        self.mean_, self.rotate_, self.unrotate_ = Z.mean(axis=0), whiten @ directions, directions.T @ unwhiten
        inside = ((Z - self.mean_) @ self.rotate_)[:, : self.dims_]
        self.transport_ = ConditionalTransport(shrinkage=VARIANT_SHRINKAGE).fit(inside, sensitive_features=attributes)
        return self

    def transform(self, Z: np.ndarray, *, sensitive_features: pd.DataFrame) -> np.ndarray:
        rotated = (Z - self.mean_) @ self.rotate_
        rotated[:, : self.dims_] = self.transport_.transform(
            rotated[:, : self.dims_], sensitive_features=sensitive_features.reset_index(drop=True))
        return rotated @ self.unrotate_ + self.mean_


class PrincipalTransport:
    """The transport in the leading principal components (label-free, ``variance`` of the total), and
    the remaining components treated by ``rest``.

    ``rest=None`` sets them to their mean, so they carry no label and no estimation error either;
    ``"block"`` transports them by a transport of their own (a block-diagonal covariance map, without
    the blocks' cross-covariances); ``"means"`` moves only their cell means; ``"per-dim"`` transports each
    of them on its own (cell mean and spread per direction).

    The encoder leaves many latent directions with almost no variance (on the demo 27 of 48 hold 1% of
    it together), but a probe that standardises its features reads label differences there as
    well as anywhere, and the maps' estimation error grows with the dimensions they are fitted in.
    """

    def __init__(self, variance: float = 0.99, rest: str | None = None):
        self.variance, self.rest = variance, rest

    def fit(self, Z: np.ndarray, *, sensitive_features: pd.DataFrame) -> PrincipalTransport:
        attributes = sensitive_features.reset_index(drop=True)
        self.mean_ = Z.mean(axis=0)
        values, vectors = np.linalg.eigh(np.cov((Z - self.mean_).T))
        order = np.argsort(values)[::-1]
        values, self.components_ = values[order], vectors[:, order]
        self.dims_ = int(np.searchsorted(np.cumsum(values) / values.sum(), self.variance) + 1)
        rotated = (Z - self.mean_) @ self.components_
        self.blocks_ = [slice(0, self.dims_), *self._rest_blocks(Z.shape[1])]
        rest_options = {"shrinkage": 1e9} if self.rest == "means" else {}  # 1e9: each cell keeps its covariance
        self.transports_ = [ConditionalTransport(**{"shrinkage": VARIANT_SHRINKAGE, **(rest_options if index else {})}).fit(
            rotated[:, block], sensitive_features=attributes) for index, block in enumerate(self.blocks_)]
        return self

    def _rest_blocks(self, n_features: int) -> list[slice]:
        """The blocks the low-variance components are transported in (none: they are set to their mean)."""
        if self.rest is None:
            return []
        if self.rest in ("block", "means"):
            return [slice(self.dims_, n_features)]
        if self.rest == "per-dim":
            return [slice(j, j + 1) for j in range(self.dims_, n_features)]
        raise ValueError(f"unknown rest {self.rest!r}")

    def transform(self, Z: np.ndarray, *, sensitive_features: pd.DataFrame) -> np.ndarray:
        attributes = sensitive_features.reset_index(drop=True)
        rotated = (Z - self.mean_) @ self.components_
        moved = np.zeros_like(rotated)
        for block, transport in zip(self.blocks_, self.transports_):
            moved[:, block] = transport.transform(rotated[:, block], sensitive_features=attributes)
        return moved @ self.components_.T + self.mean_


class MarginalTransport:
    """One attribute at a time: a transport per column of ``sensitive_features`` (its classes, or its quartile
    bins with its smooth mean), fitted on the rows the earlier ones moved, in ``rounds`` passes over the columns.

    Each map is estimated on every row of a class (about 640 per gender on the demo's calibration half, not
    about 32 per joint cell), so it carries far less estimation error; the price is that only each
    attribute's own classes are matched, so what the attributes do together (a gender difference that
    differs by ethnicity) is left for later passes to reduce, if they can. Invertible given the labels.
    """

    def __init__(self, rounds: int = 3):
        self.rounds = rounds

    def fit(self, Z: np.ndarray, *, sensitive_features: pd.DataFrame) -> MarginalTransport:
        attributes = sensitive_features.reset_index(drop=True)
        self.steps_ = []
        moved = Z
        for _ in range(self.rounds):
            for name in attributes.columns:
                step = ConditionalTransport(shrinkage=VARIANT_SHRINKAGE).fit(moved, sensitive_features=attributes[[name]])
                moved = step.transform(moved, sensitive_features=attributes[[name]])
                self.steps_.append((name, step))
        return self

    def transform(self, Z: np.ndarray, *, sensitive_features: pd.DataFrame) -> np.ndarray:
        attributes = sensitive_features.reset_index(drop=True)
        for name, step in self.steps_:
            Z = step.transform(Z, sensitive_features=attributes[[name]])
        return Z


#: Pseudo-row counts :func:`likelihood_shrinkage` chooses from.
SHRINKAGE_GRID = (1, 2, 5, 10, 20, 40, 80, 160, 320, 640, 1280)


def likelihood_shrinkage(Z: np.ndarray, cells: np.ndarray, grid: tuple = SHRINKAGE_GRID, folds: int = 5,
                         seed: int = 0) -> float:
    """The covariance pseudo-row count under which each cell's held-out rows are most likely.

    Per fold, each cell's mean and sample covariance are fitted on the other folds' rows of the cell and shrunk
    towards the pooled covariance of those folds as the library shrinks them (``(n S_c + k P) / (n + k)``); the
    held-out rows are scored by their Gaussian log-likelihood, summed over cells and folds.

    Parameters
    ----------
    Z : ndarray of shape (n, d)
        Latents with the smooth mean removed.
    cells : ndarray of shape (n,)
        Each row's cell.
    grid : tuple of float
        The pseudo-row counts tried.
    folds : int
        Cross-validation folds (rows assigned at random).
    seed : int
        Seed of the fold assignment.

    Returns
    -------
    float
        The count in ``grid`` with the highest held-out likelihood.
    """
    fold_of = np.random.default_rng(seed).integers(0, folds, len(Z))
    scores = np.zeros(len(grid))
    for fold in range(folds):
        fitted, held_out = fold_of != fold, fold_of == fold
        pooled = np.atleast_2d(np.cov(Z[fitted].T))
        for cell in np.unique(cells[fitted]):
            rows = Z[fitted & (cells == cell)]
            tested = Z[held_out & (cells == cell)] - rows.mean(axis=0)
            if not len(tested):
                continue
            own = np.atleast_2d(np.cov(rows.T)) if len(rows) > 1 else pooled
            for index, pseudo_rows in enumerate(grid):
                covariance = (len(rows) * own + pseudo_rows * pooled) / (len(rows) + pseudo_rows)
                _, log_determinant = np.linalg.slogdet(covariance)
                mahalanobis = np.einsum("ij,ij->", tested @ np.linalg.inv(covariance), tested)
                scores[index] -= 0.5 * (len(tested) * log_determinant + mahalanobis)
    return float(grid[int(np.argmax(scores))])


class LikelihoodShrinkageTransport:
    """The library's transport with its covariance shrinkage chosen by :func:`likelihood_shrinkage` on the fitted rows.

    The rule a statistician would reach for first: pool each cell's covariance as much as its held-out rows say.
    (The smooth mean it removes first is fitted on every row, held-out folds included: a slight optimism.)

    Attributes
    ----------
    shrinkage_ : float
        The chosen pseudo-row count.
    transport_ : ConditionalTransport
        The library's transport at that shrinkage, fitted on every row.
    """

    def fit(self, Z: np.ndarray, *, sensitive_features: pd.DataFrame) -> LikelihoodShrinkageTransport:
        attributes = sensitive_features.reset_index(drop=True)
        residuals = smooth_mean_only().fit(Z, sensitive_features=attributes).transform(Z, sensitive_features=attributes)
        self.shrinkage_ = likelihood_shrinkage(residuals, transport_cells(attributes))
        self.transport_ = ConditionalTransport(shrinkage=self.shrinkage_).fit(Z, sensitive_features=attributes)
        return self

    def transform(self, Z: np.ndarray, *, sensitive_features: pd.DataFrame) -> np.ndarray:
        return self.transport_.transform(Z, sensitive_features=sensitive_features)


class MarginalThenCells:
    """:class:`MarginalTransport` (one pass), then the library's transport of the joint cells at ``shrinkage``.

    The marginal maps match each attribute's classes on many rows each; what they leave, the attributes' joint
    differences, is left to cell maps that can be shrunk hard towards the pooled covariance, which after the
    marginal pass is already every class's.

    Parameters
    ----------
    shrinkage : float, default=40.0
        Pseudo-rows of the cell maps' covariance shrinkage.
    target : {"pooled", "barycenter"}, default="pooled"
        What the cell maps move every cell onto: the pooled covariance (the library's
        ``ConditionalTransport``) or the cells' Wasserstein barycenter (:class:`CellCovarianceTransport`).

    Attributes
    ----------
    marginal_ : MarginalTransport
        The marginal pass.
    cells_ : ConditionalTransport or CellCovarianceTransport
        The cell maps, fitted on the rows the marginal pass moved.
    """

    def __init__(self, shrinkage: float = 40.0, target: str = "pooled"):
        self.shrinkage = shrinkage
        self.target = target

    def fit(self, Z: np.ndarray, *, sensitive_features: pd.DataFrame) -> MarginalThenCells:
        self.marginal_ = MarginalTransport(1).fit(Z, sensitive_features=sensitive_features)
        moved = self.marginal_.transform(Z, sensitive_features=sensitive_features)
        cells = (ConditionalTransport(shrinkage=self.shrinkage) if self.target == "pooled"
                 else CellCovarianceTransport(shrinkage=self.shrinkage, target=self.target))
        self.cells_ = cells.fit(moved, sensitive_features=sensitive_features)
        return self

    def transform(self, Z: np.ndarray, *, sensitive_features: pd.DataFrame) -> np.ndarray:
        moved = self.marginal_.transform(Z, sensitive_features=sensitive_features)
        return self.cells_.transform(moved, sensitive_features=sensitive_features)


class CellsThenHeldOutMarginal:
    """The library's cell maps fitted on part of the rows, then a marginal pass fitted on the rest, moved by them.

    What a quadratic probe reads in the cell maps' output is each class's covariance (and mean) as the maps leave it:
    the sum over the class's cells of their maps' estimation errors, and the part of each cell's difference the
    shrinkage keeps. Rows the cell maps were fitted on show none of it (the maps fit them exactly), so the marginal
    pass is fitted on ``held_out`` of the rows, which the cell maps never saw: there, each class's covariance is what
    every new row of that class will get, estimated on hundreds of rows per class, and the marginal maps move it to
    the pooled one.

    Parameters
    ----------
    held_out : float, default=0.3
        Share of the rows (drawn at random, ``random_state``) the marginal pass is fitted on.
    shrinkage : float, default=10.0
        Pseudo-rows of the cell maps' covariance shrinkage.
    rounds : int, default=1
        Passes of the marginal transport over the attributes.
    random_state : int, default=0

    Attributes
    ----------
    cells_ : ConditionalTransport
        The cell maps, fitted on the other rows.
    marginal_ : MarginalTransport
        The marginal pass, fitted on the held-out rows after the cell maps moved them.
    held_out_rows_ : ndarray of bool
        Which of the fitted rows the marginal pass was fitted on.
    """

    def __init__(self, held_out: float = 0.3, shrinkage: float = VARIANT_SHRINKAGE, rounds: int = 1, random_state: int = 0):
        self.held_out = held_out
        self.shrinkage = shrinkage
        self.rounds = rounds
        self.random_state = random_state

    def fit(self, Z: np.ndarray, *, sensitive_features: pd.DataFrame) -> CellsThenHeldOutMarginal:
        attributes = sensitive_features.reset_index(drop=True)
        self.held_out_rows_ = np.random.default_rng(self.random_state).random(len(Z)) < self.held_out
        cells = ~self.held_out_rows_
        self.cells_ = ConditionalTransport(shrinkage=self.shrinkage).fit(
            Z[cells], sensitive_features=attributes[cells].reset_index(drop=True))
        held_out = attributes[self.held_out_rows_].reset_index(drop=True)
        moved = self.cells_.transform(Z[self.held_out_rows_], sensitive_features=held_out)
        self.marginal_ = MarginalTransport(self.rounds).fit(moved, sensitive_features=held_out)
        return self

    def transform(self, Z: np.ndarray, *, sensitive_features: pd.DataFrame) -> np.ndarray:
        attributes = sensitive_features.reset_index(drop=True)
        moved = self.cells_.transform(Z, sensitive_features=attributes)
        return self.marginal_.transform(moved, sensitive_features=attributes)


def what_it_chose(step) -> dict:
    """What a fitted variant chose for itself, for the JSON: the subspace and principal-component variants'
    dimensions (``dims``), the likelihood variant's shrinkage (``chosen_shrinkage``); empty for the others."""
    chosen = {}
    if hasattr(step, "dims_"):
        chosen["dims"] = step.dims_
    if hasattr(step, "shrinkage_"):
        chosen["chosen_shrinkage"] = step.shrinkage_
    return chosen


#: Estimator variants measured on the calibration half (``half+NAME``).
VARIANTS = {
    "bins2": lambda: ConditionalTransport(continuous_bins=2, shrinkage=VARIANT_SHRINKAGE),
    "bins3": lambda: ConditionalTransport(continuous_bins=3, shrinkage=VARIANT_SHRINKAGE),
    "cov2": lambda: ConditionalTransport(shrinkage=2),
    "cov5": lambda: ConditionalTransport(shrinkage=5),
    "cov20": lambda: ConditionalTransport(shrinkage=20),
    "cov10": lambda: ConditionalTransport(shrinkage=10),
    "cov40": lambda: ConditionalTransport(shrinkage=40),
    "means-only": lambda: ConditionalTransport(shrinkage=1e9),  # every cell keeps its covariance
    "no-cell-means": lambda: ConditionalTransport(mean_shrinkage=1.0, shrinkage=VARIANT_SHRINKAGE),  # cell means left to the smooth mean
    "subspace-parallel": lambda: SubspaceTransport("parallel"),
    "subspace-8": lambda: SubspaceTransport(8),
    "additive-cov10": lambda: AdditiveCovarianceTransport(),
    "additive-cov40": lambda: AdditiveCovarianceTransport(shrinkage=40),
    "additive-cov-only": lambda: AdditiveCovarianceTransport(shrinkage=1e9),
    "spiked-cov": lambda: SpikedCovarianceTransport(),
    "barycenter": lambda: CellCovarianceTransport(target="barycenter"),
    "barycenter-cov40": lambda: CellCovarianceTransport(shrinkage=40, target="barycenter"),
    "cov80": lambda: ConditionalTransport(shrinkage=80),
    "cov160": lambda: ConditionalTransport(shrinkage=160),
    "cov640": lambda: ConditionalTransport(shrinkage=640),
    "cov2560": lambda: ConditionalTransport(shrinkage=2560),
    "pca99": lambda: PrincipalTransport(0.99),
    "pca95": lambda: PrincipalTransport(0.95),
    "pca99-block": lambda: PrincipalTransport(0.99, rest="block"),
    "pca99-means": lambda: PrincipalTransport(0.99, rest="means"),
    "pca99-per-dim": lambda: PrincipalTransport(0.99, rest="per-dim"),
    "marginal-1": lambda: MarginalTransport(1),
    "marginal-3": lambda: MarginalTransport(3),
    "marginal-10": lambda: MarginalTransport(10),
    "marginal-1-then-cov40": lambda: MarginalThenCells(40),
    "marginal-1-then-cov160": lambda: MarginalThenCells(160),
    "marginal-1-then-barycenter": lambda: MarginalThenCells(10, target="barycenter"),
    "marginal-1-then-barycenter-cov40": lambda: MarginalThenCells(40, target="barycenter"),
    "cov-likelihood": LikelihoodShrinkageTransport,
    "cells-then-held-out-marginal": lambda: CellsThenHeldOutMarginal(0.3),
    "cells-then-held-out-marginal-0.5": lambda: CellsThenHeldOutMarginal(0.5),
    "cells-then-held-out-marginal-3": lambda: CellsThenHeldOutMarginal(0.3, rounds=3),
    "cov40-then-held-out-marginal": lambda: CellsThenHeldOutMarginal(0.3, shrinkage=40),
    # bafo run's transport (shrinkage 40), then each cell's whole distribution matched in the leading directions (§18)
    "sliced-8": lambda: SlicedCellMatching(components=8),
    "sliced-4": lambda: SlicedCellMatching(components=4),
    "sliced-4-seed1": lambda: SlicedCellMatching(components=4, seed=1),  # other random rotations
    "sliced-4-seed2": lambda: SlicedCellMatching(components=4, seed=2),
    "sliced-16-30": lambda: SlicedCellMatching(components=16, n_iter=30, n_knots=9),
    "sliced-4-iter10": lambda: SlicedCellMatching(components=4, n_iter=10),  # fewer rotations: fewer maps fitted to noise
    "sliced-4-iter25": lambda: SlicedCellMatching(components=4, n_iter=25),
    "sliced-8-iter10": lambda: SlicedCellMatching(components=8, n_iter=10),
    "sliced-8-iter25": lambda: SlicedCellMatching(components=8, n_iter=25),
    "radial-4": lambda: RadialCellMatching(components=4),  # each cell's whitened radii only: one map per cell
    "radial-8": lambda: RadialCellMatching(components=8),
    "radial-16": lambda: RadialCellMatching(components=16),
    "radial-48": lambda: RadialCellMatching(components=48),
    "flow-4": lambda: ConditionalFlowMatching(components=4),  # one flow for every cell, conditioned on the attributes
    "flow-8": lambda: ConditionalFlowMatching(components=8),
    "flow-16": lambda: ConditionalFlowMatching(components=16),
    "flow-4-e150": lambda: ConditionalFlowMatching(components=4, epochs=150),
    "flow-gender": lambda: ConditionalFlowMatching(**FLOW_GENDER),
    "flow-gender-seed1": lambda: ConditionalFlowMatching(**FLOW_GENDER, seed=1),
    "flow-gender-seed2": lambda: ConditionalFlowMatching(**FLOW_GENDER, seed=2),
    "noise-0.2": lambda: NoisyTransport(scale=0.2),  # fresh noise shaped like the pooled latents, after the transport
    "noise-0.25": lambda: NoisyTransport(scale=0.25),
    "noise-0.3": lambda: NoisyTransport(scale=0.3),
    "noise-0.3-seed1": lambda: NoisyTransport(scale=0.3, seed=1),  # another draw of the noise
    "noise-0.5": lambda: NoisyTransport(scale=0.5),
    "keyed-noise-0.25": lambda: TransportThenKeyedNoise(scale=0.25),  # the library's KeyedNoise (bafo run --noise-scale)
    "keyed-noise-0.3": lambda: TransportThenKeyedNoise(scale=0.3),
}


def make_step(setting: str):
    """The transport a setting fits: the library's default, or ``half+VARIANT``'s variant."""
    _, _, variant = setting.partition("+")
    if variant and variant not in VARIANTS:
        raise SystemExit(f"unknown variant {variant!r}; known: {', '.join(VARIANTS)}")
    return VARIANTS[variant]() if variant else ConditionalTransport()


# ---------------------------------------------------------------- data
def demo_latents(seed: int, samples: int, extra: int, cache: Path | None, encoder_options: dict | None = None) -> dict:
    """:func:`_demo_latents.demo_encoder_latents` of the training and held-out rows and of ``extra`` further
    synthetic faces, with every row's attributes (sensitive and not)."""
    options = "".join(f"_{key}{value}" for key, value in sorted((encoder_options or {}).items()))
    path = cache / f"calibration_rows_demo_seed{seed}_samples{samples}_extra{extra}{options}.npz" if cache else None
    parts = demo_encoder_latents(seed, samples, extra=extra, encoder_options=encoder_options, cache_path=path)
    return {name: (latents.astype(float), attributes) for name, (latents, attributes) in parts.items()}


def utkface_data(seed: int, utkface: str, models: str, cache: Path | None) -> tuple[np.ndarray, pd.DataFrame, np.ndarray]:
    """:func:`in_sample_attack.utkface_latents` (latents, attributes, which rows are training rows), kept in ``cache``."""
    latents_path = cache / f"calibration_rows_utkface_seed{seed}.npz" if cache else None
    attributes_path = latents_path.with_suffix(".parquet") if latents_path else None
    if latents_path is not None and latents_path.exists() and attributes_path.exists():
        saved = np.load(latents_path)
        return saved["latents"], pd.read_parquet(attributes_path), saved["is_train"]
    from in_sample_attack import utkface_latents

    latents, attributes, is_train = utkface_latents(seed, utkface, models)
    if latents_path is not None:
        latents_path.parent.mkdir(parents=True, exist_ok=True)
        np.savez(latents_path, latents=latents, is_train=is_train)
        attributes.to_parquet(attributes_path)
    return latents, attributes, is_train


# ---------------------------------------------------------------- scoring
def worst_cases(result) -> dict:
    """Per representation and attribute: the largest chance-adjusted score over probes and attackers, with its
    interval, probe and attacker."""
    leak = result.metric("leakage")
    leak = leak[leak["probe"] != "prior"]
    out: dict = {}
    for (representation, attribute), rows in leak.groupby(["representation", "attribute"]):
        top = rows.loc[rows["mean"].idxmax()]
        out.setdefault(representation, {})[attribute] = {
            "leakage": round(float(top["mean"]), 3), "ci": [round(float(top["ci_low"]), 3), round(float(top["ci_high"]), 3)],
            "probe": top["probe"], "attacker": top["attacker"]}
    return out


def leakage_by_probe(result) -> dict:
    """Per representation, attribute and attack probe: its larger chance-adjusted score over the two attackers."""
    leak = result.metric("leakage")
    leak = leak[leak["probe"] != "prior"]
    best = leak.groupby(["representation", "attribute", "probe"])["mean"].max()
    out: dict = {}
    for (representation, attribute, probe), value in best.items():
        out.setdefault(representation, {}).setdefault(attribute, {})[probe] = round(float(value), 3)
    return out


def demo_run(data: dict, settings: list[str], split: int, seed: int, n_bootstrap: int,
             probes: tuple[str, ...] = PROBES) -> dict:
    """Every setting's worst case per attribute, and kept share and score per non-sensitive attribute, for one
    split draw (``"settings"``); and the unconcealed latents' scores, which the kept shares divide by
    (``"unconcealed_score"``)."""
    (train, train_attributes), (test, test_attributes) = data["train"], data["test"]
    rng = np.random.default_rng([seed, split])
    calibration = rng.random(len(train)) < 0.5
    shared, shared_attributes = train[~calibration], train_attributes.loc[~calibration, SENSITIVE].reset_index(drop=True)
    moved_test, moved_shared, chosen = {}, {}, {}
    for setting in settings:
        if setting.startswith("extra-"):
            extra, extra_attributes = data["extra"]
            rows = rng.permutation(len(extra))[: int(setting.removeprefix("extra-"))]
            fit_latents, fit_attributes = extra[rows], extra_attributes.loc[rows, SENSITIVE]
        else:
            fit_latents, fit_attributes = train[calibration], train_attributes.loc[calibration, SENSITIVE]
        step = make_step(setting).fit(fit_latents, sensitive_features=fit_attributes.reset_index(drop=True))
        moved_test[setting] = step.transform(test, sensitive_features=test_attributes[SENSITIVE])
        moved_shared[setting] = step.transform(shared, sensitive_features=shared_attributes)
        chosen[setting] = what_it_chose(step)
    leakage = audit_leakage(moved_test, test_attributes[SENSITIVE], fit_representations=moved_shared,
                            fit_labels=shared_attributes, n_bootstrap=n_bootstrap, n_permutations=0,
                            random_state=seed, probes=probes)
    by_probe = leakage_by_probe(leakage)
    targets = test_attributes.drop(columns=SENSITIVE)
    utility = audit_utility({"unconcealed": test, **moved_test}, targets, references=["unconcealed"],
                            n_bootstrap=0, random_state=seed)
    shares = utility.shares()
    kept = shares.pivot(index="representation", columns="target", values="share_of[unconcealed]")
    score = shares.pivot(index="representation", columns="target", values="score")
    worst = worst_cases(leakage)

    def rounded(row: pd.Series) -> dict:
        return {target: round(float(value), 3) for target, value in row.items()}

    return {"settings": {setting: {"calibration_rows": int(calibration.sum()) if not setting.startswith("extra-")
                                   else int(setting.removeprefix("extra-")),
                                   "worst_case": worst[setting],
                                   "leakage_by_probe": by_probe[setting],
                                   "kept_share": rounded(kept.loc[setting]),
                                   "score": rounded(score.loc[setting]),
                                   **chosen[setting]}
                         for setting in settings},
            "unconcealed_score": rounded(score.loc["unconcealed"])}


def utkface_run(latents: np.ndarray, attributes: pd.DataFrame, is_train: np.ndarray, fractions: list[float],
                split: int, n_bootstrap: int, attacker: str) -> dict:
    """The transport fitted on each share of the UTKFace training split.

    ``attacker="fixed"``: the data-rich probes are fitted on the same training rows at every share (those outside
    the largest), so only the maps change; ``"shared"``: on every training row outside the share (what ``bafo
    run`` shares), so a larger share also leaves the attacker fewer rows. The unconcealed latents are audited
    beside them, with the fixed attacker's rows (``"fixed"``) or every training row (``"shared"``).
    """
    train, test = latents[is_train], latents[~is_train]
    train_attributes = attributes[is_train].reset_index(drop=True)[SENSITIVE]
    test_attributes = attributes[~is_train].reset_index(drop=True)[SENSITIVE]
    draw = np.random.default_rng(split).random(len(train))
    fixed_rows = draw >= max(fractions)
    out = {}
    for name, fraction in [(f"{f:g}", f) for f in fractions] + [("unconcealed", None)]:
        if fraction is None:
            rows = fixed_rows if attacker == "fixed" else np.ones(len(train), bool)
            moved_test, moved_rows = test, train[rows]
        else:
            calibration = draw < fraction
            rows = fixed_rows if attacker == "fixed" else ~calibration
            step = ConditionalTransport().fit(train[calibration],
                                              sensitive_features=train_attributes[calibration].reset_index(drop=True))
            moved_test = step.transform(test, sensitive_features=test_attributes)
            moved_rows = step.transform(train[rows], sensitive_features=train_attributes[rows].reset_index(drop=True))
        result = audit_leakage({name: moved_test}, test_attributes, fit_representations={name: moved_rows},
                               fit_labels=train_attributes[rows].reset_index(drop=True), n_bootstrap=n_bootstrap,
                               n_permutations=0, random_state=split)
        out[name] = {"calibration_rows": int((draw < fraction).sum()) if fraction is not None else 0,
                     "attacker_rows": int(rows.sum()), "worst_case": worst_cases(result)[name]}
    return out


def summary(results: list[dict]) -> dict:
    """Per setting: each attribute's worst-case leakage and each target's kept share, averaged over runs, and the
    average of each run's worst attribute and lowest kept share."""
    out: dict = {}
    for setting in dict.fromkeys(name for run in results for name in run["settings"]):
        runs = [run["settings"][setting] for run in results if setting in run["settings"]]
        row = {"runs": len(runs), "calibration_rows": float(np.mean([r["calibration_rows"] for r in runs]))}
        for attribute in runs[0]["worst_case"]:
            row[attribute] = round(float(np.mean([r["worst_case"][attribute]["leakage"] for r in runs])), 3)
        row["worst"] = round(float(np.mean([max(v["leakage"] for v in r["worst_case"].values()) for r in runs])), 3)
        if "kept_share" in runs[0]:
            for target in runs[0]["kept_share"]:
                row[f"kept_{target}"] = round(float(np.mean([r["kept_share"][target] for r in runs])), 3)
            row["lowest_kept"] = round(float(np.mean([min(r["kept_share"].values()) for r in runs])), 3)
        if "leakage_by_probe" in runs[0]:  # each probe's worst attribute: which probe sets the worst case
            probes = dict.fromkeys(p for r in runs for per_attribute in r["leakage_by_probe"].values() for p in per_attribute)
            row["worst_by_probe"] = {
                probe: round(float(np.mean([max(v.get(probe, -np.inf) for v in r["leakage_by_probe"].values())
                                            for r in runs])), 3)
                for probe in probes}
        if "score" in runs[0]:  # absolute scores, to compare encoders of different sizes (older JSONs lack them)
            for target in runs[0]["score"]:
                row[f"score_{target}"] = round(float(np.mean([r["score"][target] for r in runs])), 3)
        out[setting] = row
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", choices=("demo", "utkface"), default="demo")
    parser.add_argument("--seeds", default="0,1,2", help="demo: encoder seeds; utkface: the cached encoder's seed")
    parser.add_argument("--splits", default="0,1", help="random draws of the calibration rows")
    parser.add_argument("--samples", type=int, default=3000, help="bafo run's --synthetic-samples")
    parser.add_argument("--extra", type=int, default=10000, help="demo: further synthetic faces encoded")
    parser.add_argument("--encoder-options", type=json.loads, default={},
                        help='demo: BAFOTransformer options on top of bafo run\'s, as JSON, e.g. \'{"adversary_weight": 0.3}\'')
    parser.add_argument("--settings", default="half,extra-1274,extra-2500,extra-5000,extra-10000,"
                        + ",".join(f"half+{name}" for name in VARIANTS))
    parser.add_argument("--fractions", default="0.1,0.3,0.5,0.7", help="utkface: calibration shares")
    parser.add_argument("--attacker", choices=("fixed", "shared"), default="fixed",
                        help="utkface: the data-rich probes' rows, the same at every share or every shared row")
    parser.add_argument("--utkface", default="../shared/data/utkface/UTKFace")
    parser.add_argument("--models", default="/work/cache/models/trained_concealment",
                        help="--data utkface: trained_concealment's model cache holding the 'none' encoder")
    parser.add_argument("--bootstrap", type=int, default=200, help="bootstrap replicates of each interval")
    parser.add_argument("--cache", type=Path, help="keep the encoders' latents here between runs")
    parser.add_argument("--commit", help="the package version measured (recorded in the JSON)")
    parser.add_argument("--probes", default=",".join(PROBES),
                        help="demo: the attack probes (e.g. add 'quadratic', which reads differences in spread)")
    args = parser.parse_args()
    extra_needed = max((int(s.removeprefix("extra-")) for s in args.settings.split(",") if s.startswith("extra-")),
                       default=0)
    if args.data == "demo" and extra_needed > args.extra:
        parser.error(f"a setting uses {extra_needed} extra faces but --extra is {args.extra}")
    warnings.filterwarnings("ignore", module="bafo_pipeline")  # the audit's small-class notes, once per run
    results, started = [], time.perf_counter()
    for seed in map(int, args.seeds.split(",")):
        if args.data == "demo":
            data = demo_latents(seed, args.samples, args.extra, args.cache, args.encoder_options)
        else:
            latents, attributes, is_train = utkface_data(seed, args.utkface, args.models, args.cache)
        for split in map(int, args.splits.split(",")):
            run_started = time.perf_counter()
            run = (demo_run(data, args.settings.split(","), split, seed, args.bootstrap, tuple(args.probes.split(",")))
                   if args.data == "demo"
                   else {"settings": utkface_run(latents, attributes, is_train,
                                                 [float(f) for f in args.fractions.split(",")],
                                                 split, args.bootstrap, args.attacker)})
            results.append({"seed": seed, "split": split, "seconds": round(time.perf_counter() - run_started, 1),
                            **run})
            print(json.dumps(results[-1]), file=sys.stderr, flush=True)
    print(json.dumps({
        "benchmark": "calibration_rows",
        "command": " ".join(["python", *sys.argv]),
        "machine": machine(),
        "commit": args.commit,
        "settings": ({**RUN_DEFAULTS, **args.encoder_options, "samples": args.samples, "extra": args.extra}
                     if args.data == "demo" else
                     {"data": "utkface", "encoder": "trained_concealment's 'none' (4 epochs)",
                      "attacker": args.attacker})
        | {"bootstrap": args.bootstrap, "probes": args.probes.split(",")},
        "seconds": round(time.perf_counter() - started, 1),
        "summary": summary(results),
        "results": results,
    }, indent=1))


if __name__ == "__main__":
    main()
