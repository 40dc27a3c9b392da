"""The ladder of probes: the prior baseline, linear, and four non-linear attackers (MLP, boosted trees, a quadratic
one and nearest neighbours, which also probe the side channels)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
from sklearn.base import BaseEstimator, RegressorMixin, TransformerMixin
from sklearn.decomposition import PCA
from sklearn.discriminant_analysis import QuadraticDiscriminantAnalysis
from sklearn.dummy import DummyClassifier, DummyRegressor
from sklearn.ensemble import HistGradientBoostingClassifier, HistGradientBoostingRegressor
from sklearn.linear_model import LogisticRegression, RidgeCV
from sklearn.neighbors import KNeighborsClassifier, KNeighborsRegressor
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import PolynomialFeatures, StandardScaler
from sklearn.utils.validation import check_is_fitted, validate_data

from .mlp import TorchMLPProbe

__all__ = ["PROBES", "PROBE_DESCRIPTIONS", "UTILITY_PROBES", "make_probe"]

#: The default ladder of attackers for embeddings. ``quadratic`` reads differences in spread, which a concealment
#: that matches each group's mean (a linear eraser) leaves and one that matches each group's covariance (the
#: transport) must remove to every last estimation error. ``knn`` reads what is left after means and spreads
#: match: the shape of each group's distribution (docs/TRAINED_CONCEALMENT.md §17). Also every name :func:`make_probe`
#: builds (``knn`` is also the side channels' neighbour attacker).
PROBES = ("prior", "linear", "mlp", "gbdt", "quadratic", "knn")
#: The default ladder of what the latents keep (:func:`~bafo_pipeline.audits.utility.audit_utility`): the models a
#: downstream user would fit.
UTILITY_PROBES = ("prior", "linear", "mlp", "gbdt")
KNN_NEIGHBOURS = 15
#: The quadratic regression probe expands at most this many leading principal components into degree-2 features.
QUADRATIC_MAX_COMPONENTS = 64
QUADRATIC_RIDGE_ALPHAS = tuple(np.logspace(-1, 5, 13).tolist())

PROBE_DESCRIPTIONS = {
    "prior": "training-fold class frequencies / training-fold median (the chance baseline)",
    "linear": "standardised logistic regression (C=1) / RidgeCV for continuous attributes",
    "mlp": "torch MLP, 2x128 ReLU, AdamW, early stopping on an inner 15% split (patience 5 epochs)",
    "gbdt": (
        "histogram gradient boosting, learning rate 0.2, <=100 iterations, "
        "early stopping on an inner 10% split"
    ),
    "knn": f"{KNN_NEIGHBOURS} nearest neighbours on standardised values (reads a row's label off its neighbours)",
    "adjacency": "neighbouring rows in the channel's order share the label (side channels; no fitting)",
    "quadratic": (
        "one Gaussian per class with its own covariance (QDA, Ledoit-Wolf shrinkage) / "
        "ridge (penalty by generalized cross-validation) on degree-2 features of the first "
        f"{QUADRATIC_MAX_COMPONENTS} principal components for continuous attributes"
    ),
}


def make_probe(
    name: str,
    task: str,
    *,
    random_state: int,
    device: str = "auto",
    mlp_params: Mapping[str, Any] | None = None,
    gbdt_params: Mapping[str, Any] | None = None,
):
    """A fresh, unfitted probe.

    Parameters
    ----------
    name : {"prior", "linear", "mlp", "gbdt", "quadratic", "knn"}
    task : {"classification", "regression"}
    random_state : int
    device : str
        Device of the MLP (``"auto"``: CUDA when present).
    mlp_params, gbdt_params : mapping, optional
        Overrides of :class:`TorchMLPProbe` / HistGradientBoosting parameters.

    Returns
    -------
    estimator
        With ``fit``, and ``predict_proba`` (classification) or ``predict``.
    """
    classify = task == "classification"
    if name == "prior":
        return DummyClassifier(strategy="prior") if classify else DummyRegressor(strategy="median")
    if name == "linear":
        if classify:
            return make_pipeline(StandardScaler(), LogisticRegression(C=1.0, max_iter=2000))
        return make_pipeline(StandardScaler(), RidgeCV(alphas=np.logspace(-3, 4, 15)))
    if name == "mlp":
        params = {"device": device, "random_state": random_state, **dict(mlp_params or {})}
        return TorchMLPProbe(task=task, **params)
    if name == "gbdt":
        params = {
            "max_iter": 100,
            "learning_rate": 0.2,
            "early_stopping": True,
            "validation_fraction": 0.1,
            "n_iter_no_change": 5,
            "random_state": random_state,
            **dict(gbdt_params or {}),
        }
        cls = HistGradientBoostingClassifier if classify else HistGradientBoostingRegressor
        return cls(**params)
    if name == "knn":
        neighbours = KNeighborsClassifier if classify else KNeighborsRegressor
        return make_pipeline(StandardScaler(), neighbours(n_neighbors=KNN_NEIGHBOURS))
    if name == "quadratic":
        if classify:
            return make_pipeline(StandardScaler(), QuadraticDiscriminantAnalysis(solver="eigen", shrinkage="auto"))
        return make_pipeline(StandardScaler(), LeadingComponents(QUADRATIC_MAX_COMPONENTS),
                             PolynomialFeatures(2, include_bias=False), StandardScaler(),
                             GramRidgeCV(alphas=QUADRATIC_RIDGE_ALPHAS))
    raise ValueError(f"unknown probe {name!r}; choose from {PROBES}")


class LeadingComponents(TransformerMixin, BaseEstimator):
    """The first ``max_components`` principal components, or all of them for narrower inputs (a rotation).

    Bounds the width of a degree-2 expansion: 64 components give 2,144 features, whatever the embedding's width.

    Parameters
    ----------
    max_components : int, default=64
        The most components kept.

    Attributes
    ----------
    pca_ : PCA
        The fitted principal components.
    """

    def __init__(self, max_components: int = QUADRATIC_MAX_COMPONENTS):
        self.max_components = max_components

    def fit(self, X, y=None) -> "LeadingComponents":
        X = np.asarray(X, dtype=float)
        self.pca_ = PCA(n_components=min(self.max_components, *X.shape)).fit(X)
        return self

    def transform(self, X) -> np.ndarray:
        return self.pca_.transform(np.asarray(X, dtype=float))


class GramRidgeCV(RegressorMixin, BaseEstimator):
    """Ridge regression whose penalty is chosen by generalized cross-validation, from the features' Gram matrix.

    Generalized cross-validation (Golub, Heath & Wahba, 1979) is leave-one-out error with every row given the
    mean leverage: ``mean((y - y_hat)^2) / (1 - trace(H) / n)^2``. It needs only the eigenvalues of the
    ``p x p`` matrix ``X'X``, not the ``n x p`` rotated design that scikit-learn's ``RidgeCV`` (exact
    leave-one-out) forms, which for the quadratic probe's tall designs (some 16,000 rows by 1,224-2,144
    degree-2 features) is most of its cost. The intercept is not penalised. For ``n < p`` use ``RidgeCV``.
    The Gram matrix is centred by subtraction, which loses precision for features whose mean is many
    orders of magnitude above their spread: standardise them first, as the quadratic probe does.

    Parameters
    ----------
    alphas : sequence of float, default=QUADRATIC_RIDGE_ALPHAS
        The penalties to choose from (positive).

    Attributes
    ----------
    alpha_ : float
        The penalty with the lowest generalized cross-validation error.
    coef_ : ndarray of shape (n_features,)
    intercept_ : float
    best_score_ : float
        That error, negated (higher is better, as in ``RidgeCV``).
    """

    def __init__(self, alphas=QUADRATIC_RIDGE_ALPHAS):
        self.alphas = alphas

    def fit(self, X, y) -> "GramRidgeCV":
        X, y = validate_data(self, X, y, dtype=np.float64, y_numeric=True)
        alphas = np.asarray(self.alphas, dtype=float).ravel()
        if not alphas.size or np.any(alphas <= 0):
            raise ValueError(f"alphas must be positive, got {self.alphas!r}")
        n_samples = len(y)
        x_mean, y_mean = X.mean(axis=0), float(y.mean())
        target = y - y_mean
        # X'X - n m m': the centred Gram matrix without a centred copy of X (see the docstring on precision).
        gram = X.T @ X - n_samples * np.outer(x_mean, x_mean)
        eigenvalues, eigenvectors = np.linalg.eigh(gram)
        eigenvalues = np.clip(eigenvalues, 0.0, None)
        inverse = 1.0 / (eigenvalues[:, None] + alphas)  # one column per penalty
        projections = eigenvectors.T @ (X.T @ target)  # X'y, with X centred (the target is)
        coefs = eigenvectors @ (projections[:, None] * inverse)  # one column of coefficients per penalty
        residuals = target[:, None] - (X @ coefs - x_mean @ coefs)
        degrees_of_freedom = 1.0 + (eigenvalues[:, None] * inverse).sum(axis=0)  # the intercept's one too
        with np.errstate(divide="ignore", invalid="ignore"):  # a penalty that fits every row scores inf
            errors = np.mean(residuals**2, axis=0) / (1.0 - degrees_of_freedom / n_samples) ** 2
        errors = np.where(degrees_of_freedom < n_samples, errors, np.inf)
        best = int(np.argmin(errors))
        self.alpha_, self.best_score_ = float(alphas[best]), -float(errors[best])
        self.coef_ = coefs[:, best]
        self.intercept_ = y_mean - float(x_mean @ self.coef_)
        return self

    def predict(self, X) -> np.ndarray:
        check_is_fitted(self)
        X = validate_data(self, X, dtype=np.float64, reset=False)
        return X @ self.coef_ + self.intercept_
