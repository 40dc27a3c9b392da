"""The group-sum attack: what a concealment fitted on the very rows it exports gives away about them.

A concealment step fitted on a set of rows and then applied to those same rows equalises exact
sample statistics over them: LEACE gives every class of every attribute the same mean over its
training rows, label-conditional transport gives every cell the pooled mean. An attacker who knows
the labels of most of those rows therefore knows, for each class, the sum of the *other* rows'
latents: minus the sum of its known rows' deviations from the mean. A row of that class projects onto
that vector by about ``sqrt(d / k)`` within-class standard deviations (``d`` dimensions, ``k`` unknown
rows of the class) more than the rest do, however well its latent hides the class from any probe.

The audit runs it on a labelled training export (the rows a concealment was fitted on, as ``bafo run``
shares them): the rows are split into :data:`GROUP_SUM_FOLDS` folds, and each fold is attacked with the
labels of every other fold known. On rows the concealment was not fitted on, it reads nothing
(benchmarks/in_sample_attack.py, docs/TRAINED_CONCEALMENT.md §13).
"""

from __future__ import annotations

import numpy as np
from sklearn.model_selection import KFold

from .permutation import adjusted_balanced_accuracy_rows
from .resampling import permutation_p_value

__all__ = ["GROUP_SUM_FOLDS", "group_sum_attack", "group_sum_permutation_test", "group_sum_scores"]

#: The attacker knows the labels of all but one of this many folds of the training export (90 %).
GROUP_SUM_FOLDS = 10


def group_sum_scores(latents: np.ndarray, classes: np.ndarray, n_classes: int, known: np.ndarray) -> np.ndarray:
    """Each unknown row's projection onto every class's "unknown sum" direction.

    Parameters
    ----------
    latents : ndarray of shape (n_samples, n_features)
        Every row the statistics were (or might have been) fitted on, as exported.
    classes : ndarray of shape (n_samples,)
        Each row's class, coded ``0 .. n_classes - 1``; only the known rows' are read.
    n_classes : int
    known : ndarray of bool, shape (n_samples,)
        The rows whose class the attacker knows.

    Returns
    -------
    scores : ndarray of shape (n_unknown, n_classes)
        In within-sample standard deviations (the rows whitened together); ``-inf`` for a class none
        of the known rows has. The attack guesses the largest.
    """
    known = np.asarray(known, dtype=bool)
    return _scores(_whitened(np.asarray(latents, dtype=np.float64)), np.asarray(classes, dtype=np.int64),
                   n_classes, known)


def group_sum_attack(
    latents: np.ndarray, classes: np.ndarray, n_classes: int, *, n_folds: int = GROUP_SUM_FOLDS,
    random_state: int = 0,
) -> dict[str, np.ndarray]:
    """Attack every row with the labels of the other folds; the scores the leakage audit summarises.

    Parameters
    ----------
    latents : ndarray of shape (n_samples, n_features)
        The rows as exported.
    classes : ndarray of shape (n_samples,)
        Each row's class, coded ``0 .. n_classes - 1``.
    n_classes : int
    n_folds : int, default=GROUP_SUM_FOLDS
        The attacker knows the labels of ``(n_folds - 1) / n_folds`` of the rows at a time.
    random_state : int, default=0
        Seeds the folds.

    Returns
    -------
    dict
        ``y`` (every row's class), ``P`` (per row, the softmax over classes of its
        :func:`group_sum_scores`: a score, not a calibrated probability) and ``prior`` (uniform: the
        attack decides by the largest projection, whatever the class sizes), in the form of the
        audit's probe outputs.
    """
    classes = np.asarray(classes, dtype=np.int64)
    scores = _fold_scores(_whitened(np.asarray(latents, dtype=np.float64)), classes, n_classes,
                          _folds(len(classes), n_folds, random_state))
    scores -= scores.max(axis=1, keepdims=True)
    P = np.exp(scores)
    return {"y": classes, "P": P / P.sum(axis=1, keepdims=True), "prior": np.full(n_classes, 1.0 / n_classes)}


def group_sum_permutation_test(
    latents: np.ndarray, classes: np.ndarray, n_classes: int, *, n_permutations: int, rng: np.random.Generator,
    n_folds: int = GROUP_SUM_FOLDS, random_state: int = 0,
) -> float:
    """Monte Carlo p-value of "the rows' classes cannot be read from their sums": the whole attack rerun on
    permuted classes.

    Each row's guess depends on the other rows' classes, so holding the guesses fixed while permuting the
    classes (the data-rich attacker's test) is not exact here; permuting every row's class and attacking
    again is, when the latents are independent of the classes.

    Parameters
    ----------
    latents, classes, n_classes, n_folds, random_state
        As for :func:`group_sum_attack`.
    n_permutations : int
    rng : numpy Generator

    Returns
    -------
    p_value : float
    """
    classes = np.asarray(classes, dtype=np.int64)
    whitened = _whitened(np.asarray(latents, dtype=np.float64))
    folds = _folds(len(classes), n_folds, random_state)

    def score(labels):
        decisions = _fold_scores(whitened, labels, n_classes, folds).argmax(axis=1)
        return adjusted_balanced_accuracy_rows(labels[None], decisions[None], n_classes)[0]

    null = np.array([score(rng.permutation(classes)) for _ in range(n_permutations)])
    return permutation_p_value(score(classes), null)


def _folds(n: int, n_folds: int, random_state: int) -> list[np.ndarray]:
    """The unknown rows of each fold, in index order."""
    splitter = KFold(min(n_folds, n), shuffle=True, random_state=random_state)
    return [np.sort(unknown) for _, unknown in splitter.split(np.zeros((n, 1)))]


def _fold_scores(whitened: np.ndarray, classes: np.ndarray, n_classes: int, folds: list[np.ndarray]) -> np.ndarray:
    scores = np.zeros((len(classes), n_classes))
    for unknown in folds:
        known = np.ones(len(classes), dtype=bool)
        known[unknown] = False
        scores[unknown] = _scores(whitened, classes, n_classes, known)
    return scores


def _scores(whitened: np.ndarray, classes: np.ndarray, n_classes: int, known: np.ndarray) -> np.ndarray:
    sums = -(np.eye(n_classes)[classes[known]].T @ whitened[known])
    norms = np.linalg.norm(sums, axis=1, keepdims=True)
    directions = np.divide(sums, norms, out=np.zeros_like(sums), where=norms > 0)
    scores = whitened[~known] @ directions.T
    # A class without known rows cannot be guessed. (A zero sum of known rows is no such class: latents
    # without variance leave every sum zero, and then every class scores 0: nothing to read.)
    scores[:, np.bincount(classes[known], minlength=n_classes) == 0] = -np.inf
    return scores


def _whitened(latents: np.ndarray) -> np.ndarray:
    """Centred rows in the basis where their covariance is the identity (directions without variance dropped)."""
    centred = latents - latents.mean(axis=0)
    values, vectors = np.linalg.eigh(np.atleast_2d(np.cov(centred.T)))
    kept = values > 1e-9 * max(values.max(), np.finfo(float).tiny)
    return centred @ (vectors[:, kept] / np.sqrt(values[kept]))
