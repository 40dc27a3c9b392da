"""The vectorised held-out metrics equal scikit-learn's, and resampling behaves."""

import numpy as np
import pytest
from sklearn.metrics import (
    balanced_accuracy_score,
    log_loss,
    mean_absolute_error,
    r2_score,
    roc_auc_score,
)

from bafo_pipeline.audits import metrics as M
from bafo_pipeline.audits.resampling import (
    bootstrap_weights,
    percentile_interval,
    permutation_p_value,
    permutations,
)


def _classification_case(k, m=300, seed=0):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, k, m)
    P = rng.dirichlet(np.ones(k), m) * 0.5
    P[np.arange(m), y] += 0.5 * rng.uniform(size=m)  # some signal
    P /= P.sum(axis=1, keepdims=True)
    prior = np.bincount(y, minlength=k) / m
    return y, P, prior


@pytest.mark.parametrize("k", [2, 3, 5])
def test_classification_scores_match_sklearn(k):
    y, P, prior = _classification_case(k)
    s = M.classification_scores(y, P, prior, np.ones((1, len(y))))
    decisions = M.balanced_predictions(P, prior)
    assert s["balanced_accuracy"][0] == pytest.approx(balanced_accuracy_score(y, decisions))
    assert s["adjusted_balanced_accuracy"][0] == pytest.approx(
        balanced_accuracy_score(y, decisions, adjusted=True)
    )
    assert s["accuracy"][0] == pytest.approx(np.mean(P.argmax(1) == y))
    auc = roc_auc_score(y, P[:, 1]) if k == 2 else roc_auc_score(y, P, multi_class="ovr", average="macro")
    assert s["roc_auc"][0] == pytest.approx(auc)
    prior_ce = log_loss(y, np.tile(prior, (len(y), 1)), labels=range(k))
    probe_ce = log_loss(y, P, labels=range(k))
    assert s["information_bits"][0] == pytest.approx((prior_ce - probe_ce) / np.log(2))


def test_auc_handles_ties_like_sklearn():
    rng = np.random.default_rng(1)
    y = rng.integers(0, 3, 400)
    P = np.round(rng.dirichlet(np.ones(3), 400), 1)  # many ties
    P /= P.sum(axis=1, keepdims=True)
    s = M.classification_scores(y, P, np.full(3, 1 / 3), np.ones((1, 400)))
    assert s["roc_auc"][0] == pytest.approx(roc_auc_score(y, P, multi_class="ovr"))
    constant = np.full((400, 3), 1 / 3)
    assert M.classification_scores(y, constant, np.full(3, 1 / 3), np.ones((1, 400)))["roc_auc"][0] == 0.5


def test_weights_equal_repeated_rows():
    # A bootstrap replicate as weights must score exactly like the resampled rows.
    y, P, prior = _classification_case(4, m=200, seed=3)
    W = bootstrap_weights(200, 3, np.random.default_rng(0))
    scores = M.classification_scores(y, P, prior, W)
    for b in range(3):
        rows = np.repeat(np.arange(200), W[b].astype(int))
        ref = M.classification_scores(y[rows], P[rows], prior, np.ones((1, len(rows))))
        for name, values in scores.items():
            assert values[b] == pytest.approx(ref[name][0], rel=1e-5), name


def test_regression_scores():
    rng = np.random.default_rng(0)
    y = rng.normal(40, 15, 500)
    pred = y + rng.normal(0, 10, 500)
    median = np.full(500, np.median(y[:250]))
    s = M.regression_scores(y, pred, median, np.ones((1, 500)))
    assert s["mae"][0] == pytest.approx(mean_absolute_error(y, pred))
    assert s["r2"][0] == pytest.approx(1 - np.sum((y - pred) ** 2) / np.sum((y - median) ** 2))
    # Against the test mean as baseline it is the usual R².
    mean = np.full(500, y.mean())
    assert M.regression_scores(y, pred, mean, np.ones((1, 500)))["r2"][0] == pytest.approx(r2_score(y, pred))
    assert M.regression_scores(y, median, median, np.ones((1, 500)))["r2"][0] == 0.0


def test_permuted_statistics_match_direct_computation():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 3, 150)
    pred = rng.integers(0, 3, 150)
    perms = permutations(150, 4, rng)
    null = M.permuted_adjusted_balanced_accuracy(y, pred, 3, perms)
    for b in range(4):
        assert null[b] == pytest.approx(balanced_accuracy_score(y[perms[b]], pred, adjusted=True))
    yc = rng.normal(size=150)
    pc = yc + rng.normal(size=150)
    base = np.full(150, 0.1)
    null = M.permuted_r2(yc, pc, base, perms)
    for b in range(4):
        yp = yc[perms[b]]
        assert null[b] == pytest.approx(1 - np.sum((yp - pc) ** 2) / np.sum((yp - base) ** 2))


def test_resampling_helpers():
    rng = np.random.default_rng(0)
    W = bootstrap_weights(50, 20, rng)
    assert W.shape == (20, 50) and (W.sum(axis=1) == 50).all()
    perms = permutations(30, 5, rng)
    assert (np.sort(perms, axis=1) == np.arange(30)).all()
    assert permutation_p_value(1.0, np.zeros(99)) == pytest.approx(0.01)
    assert permutation_p_value(0.0, np.ones(99)) == 1.0
    lo, hi = percentile_interval(np.r_[np.arange(101.0), np.nan], 0.9)
    assert (lo, hi) == pytest.approx((5.0, 95.0))
