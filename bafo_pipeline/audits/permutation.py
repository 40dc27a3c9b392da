"""Permutation tests of "no leakage" that stay valid under cross-validation.

Two tests, both exact under the null hypothesis that the attribute is independent
of the representation:

* :func:`refit_linear_test` permutes labels within every fold and *refits* a
  closed-form linear probe (a linear discriminant on whitened features for
  categories, ridge regression for continuous attributes) for each permutation,
  so the null distribution includes the refitting, as in Ojala & Garriga (2010).
  Closed forms make a thousand refits cost a few matrix products.
* :func:`per_fold_test` keeps a probe's held-out predictions fixed and permutes
  the labels of each test fold; each fold's test is exact because its probe never
  saw those labels. Folds share training data, so their scores are correlated and
  pooling them under independent permutations would be anti-conservative; the fold
  p-values are combined with a Bonferroni correction instead.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from sklearn.covariance import ledoit_wolf_shrinkage

from .metrics import balanced_predictions, permuted_adjusted_balanced_accuracy, permuted_r2
from .resampling import chunks, permutation_p_value, permutations

__all__ = ["adjusted_balanced_accuracy_rows", "per_fold_test", "refit_linear_test"]

_RIDGE_ALPHA = 1.0
#: How many times the permutations a fold's test draws when its first draw leaves the p-value at its floor.
FLOOR_EXTENSION = 20


def adjusted_balanced_accuracy_rows(Y: np.ndarray, D: np.ndarray, k: int) -> np.ndarray:
    """Chance-adjusted balanced accuracy of each row of decisions ``D`` against labels ``Y``."""
    B = Y.shape[0]
    offsets = (np.arange(B) * (k + 1))[:, None]
    hits = np.bincount((np.where(Y == D, Y, k) + offsets).ravel(), minlength=B * (k + 1)).reshape(B, k + 1)[
        :, :k
    ]
    totals = np.bincount((Y + offsets).ravel(), minlength=B * (k + 1)).reshape(B, k + 1)[:, :k]
    present = totals > 0
    with np.errstate(invalid="ignore", divide="ignore"):
        recall = np.where(present, hits / np.maximum(totals, 1), 0.0)
    n_present = present.sum(axis=1)
    bacc = recall.sum(axis=1) / n_present
    chance = 1.0 / n_present
    return (bacc - chance) / (1.0 - chance)


def _within_fold_permutations(folds: Sequence[np.ndarray], n: int, size: int, rng) -> np.ndarray:
    idx = np.empty((size, n), dtype=np.int64)
    for test in folds:
        idx[:, test] = test[permutations(len(test), size, rng)]
    return idx


def _whiten(X: np.ndarray) -> np.ndarray:
    # Label-free, so using every row (test folds included) keeps the test exact. The covariance is shrunk
    # towards a multiple of the identity (Ledoit-Wolf): with as many dimensions as rows, whitening by the
    # sample covariance puts every row at the same distance from every class mean, and the statistic is 0
    # for any labelling (p = 1 however strong the signal).
    Xc = X - X.mean(axis=0)
    covariance = np.cov(Xc, rowvar=False).reshape(X.shape[1], X.shape[1])
    if X.shape[1] > 1:
        shrinkage = ledoit_wolf_shrinkage(Xc, assume_centered=True)
        covariance = (1 - shrinkage) * covariance + shrinkage * np.trace(covariance) / X.shape[1] * np.eye(X.shape[1])
    vals, vecs = np.linalg.eigh(covariance)
    keep = vals > max(vals.max(), 1e-12) * 1e-9
    return (Xc @ (vecs[:, keep] / np.sqrt(vals[keep]))).astype(np.float32)


def _lda_statistic(Xw: np.ndarray, Y: np.ndarray, folds: Sequence[np.ndarray], k: int) -> np.ndarray:
    """Fold-mean adjusted balanced accuracy of nearest-class-mean decisions in whitened space.

    ``Y`` has shape (B, n): one labelling per row, each a within-fold permutation.
    """
    B = Y.shape[0]
    d = Xw.shape[1]
    # Class sums of each fold under each labelling, (B, folds, k, d).
    sums = np.zeros((B, len(folds), k, d), dtype=np.float32)
    counts = np.zeros((len(folds), k))
    classes = np.arange(k)[None, :, None]
    for j, test in enumerate(folds):
        onehot = (Y[:, None, test] == classes).astype(np.float32)  # (B, k, m)
        sums[:, j] = (onehot.reshape(B * k, -1) @ Xw[test]).reshape(B, k, d)
        counts[j] = onehot[0].sum(axis=1)
    total_sums, total_counts = sums.sum(axis=1), counts.sum(axis=0)
    stat = np.zeros(B)
    for j, test in enumerate(folds):
        means = (total_sums - sums[:, j]) / (total_counts - counts[j])[None, :, None]
        scores = (means.reshape(B * k, d) @ Xw[test].T).reshape(B, k, -1)
        scores -= 0.5 * np.einsum("bcd,bcd->bc", means, means)[:, :, None]
        # argmax over classes, one contiguous pass per class (faster than argmax(axis=1)).
        best, decision = scores[:, 0].copy(), np.zeros(scores[:, 0].shape, dtype=np.int64)
        for c in range(1, k):
            np.putmask(decision, scores[:, c] > best, c)
            np.maximum(best, scores[:, c], out=best)
        stat += adjusted_balanced_accuracy_rows(Y[:, test], decision, k)
    return stat / len(folds)


def _ridge_statistic(X: np.ndarray, Y: np.ndarray, folds: Sequence[np.ndarray]) -> np.ndarray:
    """Fold-mean R² (against the training mean) of ridge regression refitted per labelling.

    ``Y`` has shape (B, n), each row a within-fold permutation of the targets, so
    each fold keeps its values and training means do not change.
    """
    # X_jᵀ y_j per fold and labelling; a training set's cross-product is a sum of these.
    partial = [Y[:, test].astype(np.float32) @ X[test].astype(np.float32) for test in folds]
    total = np.sum(partial, axis=0, dtype=np.float64)
    y0 = Y[0]
    stat = np.zeros(Y.shape[0])
    in_test = np.zeros(X.shape[0], dtype=bool)
    for j, test in enumerate(folds):
        in_test[:] = False
        in_test[test] = True
        train = np.flatnonzero(~in_test)
        x_mean, y_mean = X[train].mean(axis=0), y0[train].mean()
        Xc = X[train] - x_mean
        cross = total - partial[j] - len(train) * y_mean * x_mean  # centred Xᵀy, (B, d)
        w = np.linalg.solve(Xc.T @ Xc + _RIDGE_ALPHA * np.eye(X.shape[1]), cross.T)  # (d, B)
        pred = ((X[test] - x_mean) @ w).T + y_mean  # (B, m)
        y_test = Y[:, test]
        stat += 1.0 - ((y_test - pred) ** 2).sum(axis=1) / ((y0[test] - y_mean) ** 2).sum()
    return stat / len(folds)


def refit_linear_test(
    X: np.ndarray,
    y: np.ndarray,
    folds: Sequence[np.ndarray],
    *,
    categorical: bool,
    n_classes: int,
    n_permutations: int,
    rng: np.random.Generator,
) -> tuple[float, float]:
    """Permutation test with a closed-form linear probe refitted for every permutation.

    Parameters
    ----------
    X : ndarray of shape (n, d)
        Representation rows of the attribute.
    y : ndarray of shape (n,)
        Class codes or continuous values.
    folds : sequence of ndarray
        Test-fold positions (the audit's folds).
    categorical : bool
    n_classes : int
    n_permutations : int
    rng : numpy Generator

    Returns
    -------
    statistic : float
        Fold-mean leakage of the closed-form probe on the real labels.
    p_value : float
    """
    X = np.asarray(X, dtype=np.float64)
    if categorical:
        Xw = _whiten(X)
        Y0 = y.astype(np.int64)[None, :]

        def statistic(Y):
            return _lda_statistic(Xw, Y, folds, n_classes)
    else:
        Xs = (X - X.mean(axis=0)) / np.where(X.std(axis=0) > 0, X.std(axis=0), 1.0)
        Y0 = y.astype(np.float64)[None, :]

        def statistic(Y):
            return _ridge_statistic(Xs, Y, folds)

    observed = float(statistic(Y0)[0])
    # Keep each chunk's labellings and class scores to some tens of MB.
    per_permutation = 8 * len(y) + 4 * max(n_classes, 1) * len(y)
    size = int(max(1, min(n_permutations, 40_000_000 // per_permutation)))
    null = []
    for start in range(0, n_permutations, size):
        idx = _within_fold_permutations(folds, len(y), min(size, n_permutations - start), rng)
        null.append(statistic(Y0[0][idx]))
    return observed, permutation_p_value(observed, np.concatenate(null)) if null else float("nan")


def per_fold_test(
    outputs: Sequence[dict[str, np.ndarray]],
    *,
    categorical: bool,
    n_permutations: int,
    rng: np.random.Generator,
) -> float:
    """Bonferroni-combined p-value of exact per-fold permutation tests on fixed predictions.

    A fold whose observed score beats all ``n_permutations`` permuted ones is
    tested again with ``FLOOR_EXTENSION`` times as many: otherwise its p-value
    could not fall below ``1 / (n_permutations + 1)``, and after the Bonferroni
    corrections over folds and probes (5 x 5 / 501 = 0.0499 at the audit's
    defaults, 0.11 with a training export's probes beside them) a probe reading
    an attribute perfectly could never be significant. The two-stage p-value
    stays valid: it can only be at most ``alpha`` where the first stage's
    was, or, for ``alpha`` below the first stage's floor, where the whole
    sample's was.
    """
    p_values = []
    for out in outputs:
        m = len(out["y"])
        if categorical:
            decisions = balanced_predictions(out["P"], out["prior"])
            k = out["P"].shape[1]

            def score(perms, out=out, decisions=decisions, k=k):
                return permuted_adjusted_balanced_accuracy(out["y"], decisions, k, perms)
        else:

            def score(perms, out=out):
                return permuted_r2(out["y"], out["pred"], out["baseline"], perms)

        observed = score(np.arange(m)[None])[0]
        null = np.concatenate([score(permutations(m, size, rng)) for size in chunks(n_permutations, m)])
        p_value = permutation_p_value(observed, null)
        if p_value < 1.5 / (null.size + 1):  # no permuted score reached the observed one: the floor
            more = (FLOOR_EXTENSION - 1) * n_permutations
            null = np.concatenate([null, *(score(permutations(m, size, rng)) for size in chunks(more, m))])
            p_value = permutation_p_value(observed, null)
        p_values.append(p_value)
    return float(min(1.0, len(p_values) * min(p_values)))
