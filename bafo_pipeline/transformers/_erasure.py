"""LinearErasure: closed-form LEACE, so no linear model can recover the sensitive attributes."""

from __future__ import annotations

from numbers import Integral, Real

import numpy as np
import pandas as pd
from sklearn.base import BaseEstimator, OneToOneFeatureMixin, TransformerMixin, _fit_context
from sklearn.utils._param_validation import Interval
from sklearn.utils.validation import check_is_fitted, validate_data

from ..attributes import AttributeSchema


class LinearErasure(OneToOneFeatureMixin, TransformerMixin, BaseEstimator):
    """Remove all linearly available information about sensitive attributes.

    LEACE (LEAst-squares Concept Erasure; Belrose et al., 2023): the smallest
    change to ``X`` (in the Mahalanobis sense) after which the cross-covariance
    between ``X`` and every encoded attribute is zero, so no linear predictor
    does better than a constant. It needs the attributes only at ``fit``;
    ``transform`` is one affine map.

    Guarantee and limits: *linear* probes are reduced to chance on the fit
    distribution. Non-linear probes (an MLP, boosted trees) may still recover
    the attributes; combine with training-time pressure (``independence_weight``
    of :class:`BAFOTransformer`) and audit the result.

    Parameters
    ----------
    attribute_kinds : dict of str to str, optional
        Override inferred attribute kinds (see :class:`AttributeSchema`).
    continuous_bins : int, default=4
        Also erase quantile bins of each continuous attribute (age), not only
        its linear trend, so a linear probe cannot read age bands either.
        0 erases the linear trend alone.
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

    _parameter_constraints: dict = {
        "attribute_kinds": [dict, None],
        "continuous_bins": [Interval(Integral, 0, None, closed="left")],
        "tolerance": [Interval(Real, 0, None, closed="left")],
    }

    def __init__(self, *, attribute_kinds: dict | None = None, continuous_bins: int = 4, tolerance: float = 1e-10):
        self.attribute_kinds = attribute_kinds
        self.continuous_bins = continuous_bins
        self.tolerance = tolerance

    @_fit_context(prefer_skip_nested_validation=True)
    def fit(self, X, y=None, *, sensitive_features=None):
        """Fit the eraser.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)
        y : None
            Ignored.
        sensitive_features : DataFrame of shape (n_samples, n_attributes)
            The attributes to erase.

        Returns
        -------
        self : LinearErasure
        """
        X = validate_data(self, X, dtype=np.float64, ensure_min_samples=2)
        if sensitive_features is None:
            raise ValueError("LinearErasure needs sensitive_features at fit time (with metadata routing in pipelines)")
        frame = sensitive_features if isinstance(sensitive_features, pd.DataFrame) else pd.DataFrame(sensitive_features)
        if len(frame) != len(X):
            raise ValueError(f"sensitive_features has {len(frame)} rows but X has {len(X)}")
        self.schema_ = AttributeSchema.infer(frame.reset_index(drop=True), kinds=self.attribute_kinds)
        Z = self._concept_matrix(frame.reset_index(drop=True))
        self.mean_ = X.mean(axis=0)
        Xc = X - self.mean_
        Zc = Z - Z.mean(axis=0)
        n = len(X)
        sigma_xx = Xc.T @ Xc / n
        sigma_xz = Xc.T @ Zc / n
        eigenvalues, eigenvectors = np.linalg.eigh(sigma_xx)
        keep = eigenvalues > self.tolerance * max(eigenvalues.max(), np.finfo(float).tiny)
        vectors, values = eigenvectors[:, keep], eigenvalues[keep]
        whiten = (vectors / np.sqrt(values)) @ vectors.T
        unwhiten = (vectors * np.sqrt(values)) @ vectors.T
        u, s, _ = np.linalg.svd(whiten @ sigma_xz, full_matrices=False)
        u = u[:, s > self.tolerance * max(s.max(initial=0.0), np.finfo(float).tiny)]
        oblique = unwhiten @ (u @ u.T) @ whiten
        self.projection_ = oblique.T
        return self

    def _concept_matrix(self, frame: pd.DataFrame) -> np.ndarray:
        blocks = [self.schema_.encode(frame).astype(np.float64)]
        if self.continuous_bins:
            for attribute in self.schema_.attributes:
                if attribute.kind == "continuous":
                    values = frame[attribute.name].to_numpy(dtype=float)
                    edges = np.unique(np.quantile(values, np.linspace(0, 1, self.continuous_bins + 1)[1:-1]))
                    bins = np.searchsorted(edges, values, side="right")
                    blocks.append(np.eye(len(edges) + 1)[bins])
        return np.concatenate(blocks, axis=1)

    def transform(self, X) -> np.ndarray:
        """Erase: ``X - (X - mean_) @ projection_``. Needs no sensitive attributes.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)

        Returns
        -------
        X_erased : ndarray of shape (n_samples, n_features)
        """
        check_is_fitted(self)
        X = validate_data(self, X, dtype=[np.float64, np.float32], reset=False)
        erased = X - (X - self.mean_) @ self.projection_
        return erased.astype(X.dtype, copy=False)

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.transformer_tags.preserves_dtype = ["float64", "float32"]
        return tags
