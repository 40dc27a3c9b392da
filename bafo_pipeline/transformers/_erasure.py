"""LinearErasure: closed-form LEACE, so no linear model can recover the sensitive attributes."""

from __future__ import annotations

from numbers import Integral, Real

import numpy as np
import pandas as pd
from sklearn.base import BaseEstimator, OneToOneFeatureMixin, TransformerMixin
from sklearn.utils.validation import check_is_fitted, validate_data

from .._nn.folding import AffineMap
from .._utils.params import Interval, checks_parameters
from ..attributes import AttributeSchema, as_sensitive_frame, quantile_bin_edges


class LinearErasure(OneToOneFeatureMixin, TransformerMixin, BaseEstimator):
    """Remove all linearly available information about sensitive attributes.

    LEACE (LEAst-squares Concept Erasure; Belrose et al., 2023): the smallest
    change to ``X`` (in the Mahalanobis sense) after which the cross-covariance
    between ``X`` and every encoded attribute is zero, so no linear predictor
    does better than a constant. It needs the attributes only at ``fit``;
    ``transform`` is one affine map.

    Guarantee and limits: *linear* probes are reduced to chance on the fit
    distribution. Non-linear probes (an MLP, boosted trees) may still recover
    the attributes, mostly from how the groups' *spreads* differ once their
    means agree; ``covariance_dims`` removes the directions where they differ
    most. Audit the result either way.

    Parameters
    ----------
    attribute_kinds : dict of str to str, optional
        Override inferred attribute kinds (see :class:`AttributeSchema`).
    continuous_bins : int, default=4
        Also erase quantile bins of each continuous attribute (age), not only
        its linear trend, so a linear probe cannot read age bands either.
        0 erases the linear trend alone.
    covariance_dims : int, default=0
        After the linear erasure, also remove the ``covariance_dims``
        directions in which the attribute groups' covariances differ most
        from the pooled one (top eigenvectors of
        ``sum_g p_g (C_g - I)^2`` in whitened coordinates, groups being each
        attribute's classes and each continuous attribute's quantile bins).
        Still one affine map, still blind to linear probes; weakens non-linear ones at the cost of
        ``covariance_dims`` more dimensions, which may also carry
        non-sensitive information (see docs/COVARIANCE_ERASURE.md).
    tolerance : float, default=1e-10
        Relative threshold below which covariance eigenvalues (and singular
        values of the whitened cross-covariance) count as zero. Keep it tiny:
        directions of very small variance (collapsed latent dimensions) can
        still carry the attribute, and a standardising probe will find them.

    Attributes
    ----------
    mean_ : ndarray of shape (n_features,)
    projection_ : ndarray of shape (n_features, n_features)
        ``X_erased = X - (X - mean_) @ projection_``.
    schema_ : AttributeSchema
    n_features_in_ : int

    References
    ----------
    N. Belrose, D. Schneider-Joseph, S. Ravfogel, R. Cotterell, E. Raff,
    S. Biderman. "LEACE: Perfect linear concept erasure in closed form."
    NeurIPS 2023.
    """

    __metadata_request__fit = {"sensitive_features": True}

    _parameter_rules: dict = {
        "attribute_kinds": [dict, None],
        "continuous_bins": [Interval(Integral, 0, None, closed="left")],
        "covariance_dims": [Interval(Integral, 0, None, closed="left")],
        "tolerance": [Interval(Real, 0, None, closed="left")],
    }

    def __init__(
        self,
        *,
        attribute_kinds: dict | None = None,
        continuous_bins: int = 4,
        covariance_dims: int = 0,
        tolerance: float = 1e-10,
    ):
        self.attribute_kinds = attribute_kinds
        self.continuous_bins = continuous_bins
        self.covariance_dims = covariance_dims
        self.tolerance = tolerance

    @checks_parameters
    def fit(self, X, y=None, *, sensitive_features=None):
        """Fit the eraser.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)
            The statistics (mean, covariances, projection) are computed in
            float64 whatever the input dtype.
        y : None
            Ignored.
        sensitive_features : DataFrame of shape (n_samples, n_attributes)
            The attributes to erase: a pandas or polars DataFrame, a mapping of
            column name to values, or a numpy array (anything
            :func:`~bafo_pipeline.attributes.as_sensitive_frame` accepts).

        Returns
        -------
        self : LinearErasure
        """
        X = validate_data(self, X, dtype=[np.float64, np.float32], ensure_min_samples=2)
        if sensitive_features is None:
            raise ValueError("LinearErasure needs sensitive_features at fit time (with metadata routing in pipelines)")
        frame = as_sensitive_frame(sensitive_features, n_rows=len(X))
        self.schema_ = AttributeSchema.infer(frame, kinds=self.attribute_kinds)
        concepts, groups = self._concepts(frame, with_groups=bool(self.covariance_dims))
        X = X.astype(np.float64, copy=False)  # statistics in float64 whatever the input
        self.mean_ = X.mean(axis=0)
        Xc = X - self.mean_
        Zc = concepts - concepts.mean(axis=0)
        keep = np.eye(X.shape[1]) - self._leace(Xc, Zc)  # X_erased - mean_ = Xc @ keep
        if self.covariance_dims:
            # A linear map of data uncorrelated with the concepts stays uncorrelated: no second LEACE needed.
            keep = keep @ self._covariance_erasure(Xc @ keep, groups)
        self.projection_ = np.eye(X.shape[1]) - keep
        return self

    def _whitening(self, Xc: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``(whiten, unwhiten)`` for centered rows ``Xc``, on the span of their non-negligible variance."""
        eigenvalues, eigenvectors = np.linalg.eigh(Xc.T @ Xc / len(Xc))
        keep = eigenvalues > self.tolerance * max(eigenvalues.max(), np.finfo(float).tiny)
        vectors, values = eigenvectors[:, keep], eigenvalues[keep]
        return (vectors / np.sqrt(values)) @ vectors.T, (vectors * np.sqrt(values)) @ vectors.T

    def _leace(self, Xc: np.ndarray, Zc: np.ndarray) -> np.ndarray:
        """The LEACE projection (to subtract) for centered data ``Xc`` and centered concepts ``Zc``."""
        whiten, unwhiten = self._whitening(Xc)
        u, s, _ = np.linalg.svd(whiten @ (Xc.T @ Zc / len(Xc)), full_matrices=False)
        # Relative to the concepts' scale, not to the largest singular value: data that is already
        # erased has only rounding noise here, and none of it may count as a direction to remove.
        concept_scale = np.sqrt((np.einsum("ij,ij->j", Zc, Zc) / len(Zc)).max(initial=0.0))
        u = u[:, s > self.tolerance * max(concept_scale, np.finfo(float).tiny)]
        return (unwhiten @ (u @ u.T) @ whiten).T

    def _covariance_erasure(self, Xc: np.ndarray, groups: list[np.ndarray]) -> np.ndarray:
        """The map (right-multiplied) that removes the directions where group covariances differ most."""
        whiten, unwhiten = self._whitening(Xc)
        W = Xc @ whiten  # whitened: pooled covariance = identity on its span
        span = whiten @ unwhiten  # projector onto that span
        spread = np.zeros((W.shape[1], W.shape[1]))
        for labels in groups:
            for value in np.unique(labels):
                members = W[labels == value]
                if len(members) < 2:
                    continue
                deviation = members.T @ members / len(members) - span
                spread += len(members) / len(W) * deviation @ deviation
        eigenvalues, eigenvectors = np.linalg.eigh(spread)
        top = eigenvectors[:, np.argsort(eigenvalues)[::-1][: self.covariance_dims]]
        return whiten @ (span - top @ top.T) @ unwhiten + (np.eye(len(span)) - whiten @ unwhiten)

    def _concepts(self, frame: pd.DataFrame, *, with_groups: bool = True) -> tuple[np.ndarray, list[np.ndarray]]:
        """The concept matrix LEACE decorrelates, and each attribute's groups (classes or quantile bins).

        The groups serve only the covariance erasure; ``with_groups=False`` skips them.
        """
        encoded = self.schema_.encode(frame)
        groups, bins = [], []
        for attribute in self.schema_.attributes:
            if attribute.kind != "continuous":
                if with_groups:
                    groups.append(frame[attribute.name].astype(str).to_numpy())
            elif self.continuous_bins:
                values = frame[attribute.name].to_numpy(dtype=float)
                edges = quantile_bin_edges(values, self.continuous_bins)
                bins.append((np.searchsorted(edges, values, side="right"), len(edges) + 1))
                groups.append(bins[-1][0])
        # One matrix: the encoded attributes, then a one-hot block per continuous attribute's bins.
        concepts = np.zeros((len(encoded), encoded.shape[1] + sum(width for _, width in bins)))
        concepts[:, : encoded.shape[1]] = encoded
        offset, rows = encoded.shape[1], np.arange(len(encoded))
        for labels, width in bins:
            concepts[rows, offset + labels] = 1.0
            offset += width
        return concepts, groups

    def transform(self, X) -> np.ndarray:
        """Erase: ``X - (X - mean_) @ projection_``. Needs no sensitive attributes.

        float64 input is erased in float64. float32 input stays float32: it is erased
        in float32 arithmetic when the projection cannot amplify float32 rounding by
        more than :attr:`FLOAT32_AMPLIFICATION` (spectral norm of ``projection_``),
        so the result is as exact as a float32 output can be; otherwise (near-singular
        directions of ``X`` carrying the attributes) in float64, then cast back.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)

        Returns
        -------
        X_erased : ndarray of shape (n_samples, n_features)
            Of the dtype of ``X`` (float64 for other dtypes).
        """
        check_is_fitted(self)
        X = validate_data(self, X, dtype=[np.float64, np.float32], reset=False)
        if X.dtype == np.float32 and self._float32_is_precise():
            return X - (X - self.mean_.astype(np.float32)) @ self.projection_.astype(np.float32)
        erased = X - (X - self.mean_) @ self.projection_
        return erased.astype(X.dtype, copy=False)

    def as_layers(self) -> list[AffineMap]:
        """The fitted erasure as one affine map, for folding into an image encoder.

        ``X - (X - mean_) @ projection_`` is ``X @ (I - projection_) + mean_ @ projection_``;
        a :class:`~bafo_pipeline.BAFOTransformer` multiplies it into the layer before
        it, so inference needs no separate erasure pass.

        Returns
        -------
        list of AffineMap
            One map, in float64.
        """
        check_is_fitted(self)
        return [AffineMap(np.eye(len(self.projection_)) - self.projection_, self.mean_ @ self.projection_)]

    FLOAT32_AMPLIFICATION = 10.0
    """The largest spectral norm of ``projection_`` at which float32 input is erased in float32."""

    def _float32_is_precise(self) -> bool:
        return bool(np.linalg.norm(self.projection_, 2) <= self.FLOAT32_AMPLIFICATION)

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.transformer_tags.preserves_dtype = ["float64", "float32"]
        return tags
