"""The group-sum attack (audits/group_sums.py): it reads rows whose class means were fixed on them, and only those."""

import numpy as np
import pytest
from sklearn.metrics import balanced_accuracy_score

from bafo_pipeline.audits.group_sums import group_sum_attack, group_sum_permutation_test, group_sum_scores


def _centred_by_class(Z, classes):
    out = Z - Z.mean(axis=0)
    for value in np.unique(classes):
        out[classes == value] -= out[classes == value].mean(axis=0)
    return out


@pytest.fixture(scope="module")
def noise():
    rng = np.random.default_rng(0)
    return rng.normal(size=(1200, 32)), rng.integers(0, 4, 1200)


def test_it_reads_the_classes_of_rows_whose_class_means_were_equalised_on_them(noise):
    Z, y = noise
    read = group_sum_attack(_centred_by_class(Z, y), y, 4)
    assert balanced_accuracy_score(y, read["P"].argmax(axis=1)) > 0.45  # chance 0.25; about sqrt(32 / 30) sd apart
    assert np.allclose(read["P"].sum(axis=1), 1) and np.allclose(read["prior"], 0.25)
    raw = group_sum_attack(Z, y, 4)
    assert abs(balanced_accuracy_score(y, raw["P"].argmax(axis=1)) - 0.25) < 0.05
    # equalised by another grouping, the classes stay hidden
    other = _centred_by_class(Z, np.random.default_rng(1).permutation(y))
    assert abs(balanced_accuracy_score(y, group_sum_attack(other, y, 4)["P"].argmax(axis=1)) - 0.25) < 0.05


def test_a_class_none_of_the_known_rows_has_is_never_guessed(noise):
    Z, y = noise
    known = y != 3
    scores = group_sum_scores(_centred_by_class(Z, y), y, 4, known)
    assert scores.shape == (int((~known).sum()), 4) and np.isneginf(scores[:, 3]).all()


def test_latents_without_variance_give_the_attack_nothing_to_read(noise):
    """A concealment that erased every direction leaves constant rows: every class scores the same (no NaN)."""
    _, y = noise
    constant = np.full((len(y), 4), 0.3)
    read = group_sum_attack(constant, y, 4)
    np.testing.assert_allclose(read["P"], 0.25)
    assert np.isfinite(group_sum_scores(constant, y, 4, y != 3)[:, :3]).all()


def test_the_permutation_test_holds_its_level_and_finds_the_fitted_means(noise):
    rng = np.random.default_rng(2)
    p_values = np.array([
        group_sum_permutation_test(rng.normal(size=(300, 5)), rng.integers(0, 2, 300), 2, n_permutations=50,
                                   rng=rng, random_state=run)
        for run in range(200)
    ])
    assert 0.01 <= (p_values < 0.05).mean() <= 0.1  # exact: 0.05 expected
    Z, y = noise
    assert group_sum_permutation_test(_centred_by_class(Z, y), y, 4, n_permutations=50, rng=rng) == 1 / 51
