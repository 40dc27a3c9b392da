"""Held-out scores, computed for many resamples of one test fold at once.

Every function takes ``W``, an array of shape ``(B, m)`` of non-negative sample
weights over the ``m`` test samples, and returns ``B`` scores. ``W = ones((1, m))``
gives the ordinary score; bootstrap resampling counts give bootstrap replicates,
so a thousand replicates cost a few matrix products instead of a thousand calls.
The unit-weight values equal scikit-learn's (``balanced_accuracy_score``,
``roc_auc_score(multi_class="ovr", average="macro")``, ...), which the tests check.
"""

from __future__ import annotations

import numpy as np

__all__ = [
    "PROBA_FLOOR",
    "classification_scores",
    "regression_scores",
    "permuted_adjusted_balanced_accuracy",
    "permuted_r2",
    "balanced_predictions",
]

# Probabilities are clipped here before taking logs: a probe that is certain and
# wrong would otherwise cost infinitely many bits.
PROBA_FLOOR = 1e-7


def balanced_predictions(P: np.ndarray, prior: np.ndarray) -> np.ndarray:
    """Decisions ``argmax_k P[:, k] / prior[k]``.

    For calibrated probabilities this rule maximises balanced accuracy (each class
    is weighted by the inverse of its frequency), so it is the attacker's best
    decision when balanced accuracy is the score. Plain argmax would favour the
    majority class and understate what minority-class rows reveal.
    """
    return np.argmax(P / prior[None, :], axis=1)


def _ratio(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(den > 0, num / np.where(den > 0, den, 1.0), np.nan)


def _balanced_accuracy(
    y: np.ndarray, pred: np.ndarray, k: int, W: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    onehot = (y[:, None] == np.arange(k)[None, :]).astype(np.float64)
    totals = W @ onehot
    hits = W @ (onehot * (pred == y)[:, None])
    recall = _ratio(hits, totals)
    present = totals > 0
    n_present = present.sum(axis=1)
    bacc = np.nansum(recall, axis=1) / np.maximum(n_present, 1)
    chance = 1.0 / np.maximum(n_present, 1)
    with np.errstate(invalid="ignore", divide="ignore"):
        adjusted = np.where(n_present > 1, (bacc - chance) / (1.0 - chance), np.nan)
    return bacc, adjusted


def _auc(score: np.ndarray, positive: np.ndarray, W: np.ndarray) -> np.ndarray:
    """Weighted Mann-Whitney AUC; tied scores count one half."""
    if score.min() == score.max():  # a constant score ranks nothing
        defined = (W @ positive.astype(W.dtype) > 0) & (W @ (~positive).astype(W.dtype) > 0)
        return np.where(defined, 0.5, np.nan)
    order = np.argsort(score, kind="mergesort")
    s = score[order]
    pos = positive[order]
    Ws = W[:, order]
    pos_w = Ws * pos
    neg_w = Ws - pos_w
    starts = np.flatnonzero(np.r_[True, s[1:] != s[:-1]])
    if len(starts) < len(s):  # ties: pool the weights of equal scores
        pos_w = np.add.reduceat(pos_w, starts, axis=1)
        neg_w = np.add.reduceat(neg_w, starts, axis=1)
    below = np.cumsum(neg_w, axis=1)
    below -= neg_w
    below += 0.5 * neg_w
    num = np.einsum("bm,bm->b", pos_w, below, dtype=np.float64)
    return _ratio(num, pos_w.sum(axis=1, dtype=np.float64) * neg_w.sum(axis=1, dtype=np.float64))


def classification_scores(
    y: np.ndarray, P: np.ndarray, prior: np.ndarray, W: np.ndarray
) -> dict[str, np.ndarray]:
    """Scores of class probabilities ``P`` against true codes ``y``.

    Parameters
    ----------
    y : ndarray of shape (m,), int
        True class codes ``0..K-1``.
    P : ndarray of shape (m, K)
        The probe's held-out class probabilities.
    prior : ndarray of shape (K,)
        Class frequencies of the probe's training fold (the prior baseline).
    W : ndarray of shape (B, m)
        Sample weights, one row per resample.

    Returns
    -------
    dict of str to ndarray of shape (B,)
        ``balanced_accuracy`` and ``adjusted_balanced_accuracy`` (decisions by
        :func:`balanced_predictions`), ``accuracy`` (plain argmax),
        ``roc_auc`` (macro one-vs-rest), ``information_bits`` (prior cross-entropy
        minus the probe's, in bits per sample).
    """
    k = P.shape[1]
    total = W.sum(axis=1)
    bacc, adjusted = _balanced_accuracy(y, balanced_predictions(P, prior), k, W)
    accuracy = (W @ (np.argmax(P, axis=1) == y).astype(np.float64)) / total
    Pc = np.clip(P, PROBA_FLOOR, 1.0)
    Pc = Pc / Pc.sum(axis=1, keepdims=True)
    gain = np.log2(Pc[np.arange(len(y)), y]) - np.log2(prior[y])
    info = (W @ gain) / total
    if k == 2:
        auc = _auc(P[:, 1], y == 1, W)
    else:
        per_class = np.stack([_auc(P[:, c], y == c, W) for c in range(k)], axis=1)
        with np.errstate(invalid="ignore"):
            valid = ~np.isnan(per_class)
            auc = np.where(
                valid.any(axis=1), np.nansum(per_class, axis=1) / np.maximum(valid.sum(axis=1), 1), np.nan
            )
    return {
        "balanced_accuracy": bacc,
        "adjusted_balanced_accuracy": adjusted,
        "accuracy": accuracy,
        "roc_auc": auc,
        "information_bits": info,
    }


def regression_scores(
    y: np.ndarray, pred: np.ndarray, baseline: np.ndarray, W: np.ndarray
) -> dict[str, np.ndarray]:
    """Scores of continuous predictions against a baseline prediction.

    Parameters
    ----------
    y, pred, baseline : ndarray of shape (m,)
        Truth, the probe's held-out prediction, and the baseline's (the mean of
        the probe's training fold).
    W : ndarray of shape (B, m)

    Returns
    -------
    dict of str to ndarray of shape (B,)
        ``mae`` and ``r2``, the coefficient of determination against the baseline:
        ``1 - SSE(probe) / SSE(training mean)`` (0 = no better than the mean).
    """
    total = W.sum(axis=1)
    mae = (W @ np.abs(y - pred)) / total
    r2 = 1.0 - _ratio(W @ (y - pred) ** 2, W @ (y - baseline) ** 2)
    return {"mae": mae, "r2": r2}


def permuted_adjusted_balanced_accuracy(
    y: np.ndarray, pred: np.ndarray, k: int, perms: np.ndarray
) -> np.ndarray:
    """Chance-adjusted balanced accuracy of fixed decisions against permuted labels.

    Parameters
    ----------
    y : ndarray of shape (m,)
        True codes.
    pred : ndarray of shape (m,)
        Decisions (fixed).
    k : int
        Number of classes.
    perms : ndarray of shape (B, m)
        Row ``b`` is a permutation of ``0..m-1``; labels ``y[perms[b]]`` are scored.
    """
    B = perms.shape[0]
    Yp = y[perms]
    codes = np.where(Yp == pred[None, :], Yp, k) + (np.arange(B) * (k + 1))[:, None]
    hits = np.bincount(codes.ravel(), minlength=B * (k + 1)).reshape(B, k + 1)[:, :k]
    totals = np.bincount(y, minlength=k).astype(np.float64)
    present = totals > 0
    bacc = (hits[:, present] / totals[present]).mean(axis=1)
    chance = 1.0 / present.sum()
    return (bacc - chance) / (1.0 - chance)


def permuted_r2(y: np.ndarray, pred: np.ndarray, baseline: np.ndarray, perms: np.ndarray) -> np.ndarray:
    """R² against the baseline of fixed predictions against permuted targets."""
    Yp = y[perms]
    sse = ((Yp - pred[None, :]) ** 2).sum(axis=1)
    # The baseline is constant within a fold, so its error does not change under permutation.
    return 1.0 - sse / ((y - baseline) ** 2).sum()
