"""The probe ladder's pieces: the torch MLP and the probe factory."""

import numpy as np
import pytest
import torch
from threadpoolctl import threadpool_limits

from sklearn.base import clone, is_classifier, is_regressor
from sklearn.exceptions import NotFittedError
from sklearn.metrics import balanced_accuracy_score
from sklearn.model_selection import cross_val_predict

from bafo_pipeline.audits import PROBES, TorchMLPProbe, make_probe


@pytest.fixture(autouse=True)
def one_thread():
    # As audit_leakage does: tiny fits under a shared machine's OpenMP contention crawl.
    with threadpool_limits(1):
        yield


def test_mlp_stops_early_and_keeps_its_best_epoch():
    rng = np.random.default_rng(0)
    X = rng.normal(size=(400, 5))
    y = rng.integers(0, 3, 400)  # pure noise: validation loss stops improving at once
    probe = TorchMLPProbe(max_epochs=200, patience=4, device="cpu").fit(X, y)
    assert probe.n_epochs_ < 200
    assert probe.n_epochs_ == probe.best_epoch_ + 4
    P = probe.predict_proba(X)
    assert P.shape == (400, 3) and np.allclose(P.sum(axis=1), 1.0, atol=1e-5)


def test_mlp_regression_learns_a_smooth_target():
    rng = np.random.default_rng(1)
    X = rng.normal(size=(800, 3))
    y = 40 + 10 * np.sin(X[:, 0]) + 5 * X[:, 1] ** 2
    probe = TorchMLPProbe(task="regression", device="cpu").fit(X[:600], y[:600])
    residual = np.mean((probe.predict(X[600:]) - y[600:]) ** 2)
    assert residual < 0.2 * np.var(y[600:])


def test_mlp_leaves_the_global_torch_seed_alone():
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    TorchMLPProbe(max_epochs=2, device="cpu").fit(
        np.random.default_rng(2).normal(size=(100, 2)), np.arange(100) % 2
    )
    assert torch.equal(torch.rand(3), expected)


def test_make_probe():
    for name in PROBES:
        for task in ("classification", "regression"):
            assert hasattr(make_probe(name, task, random_state=0), "fit")
    with pytest.raises(ValueError, match="unknown probe 'svm'"):
        make_probe("svm", "classification", random_state=0)


def _classification_data(n=300, seed=0):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, 4)).astype(np.float32)
    return X, np.where(X[:, 0] + X[:, 1] ** 2 > 1, "a", np.where(X[:, 2] > 0, "b", "c"))


def test_mlp_is_a_cloneable_estimator_whose_refit_reproduces_it():
    X, y = _classification_data()
    probe = TorchMLPProbe(hidden=[16, 8], max_epochs=20, random_state=4, device="cpu")
    assert is_classifier(probe) and not is_regressor(probe)
    assert is_regressor(TorchMLPProbe(task="regression"))
    fitted = probe.fit(X, y)
    twin = clone(fitted)
    assert twin.get_params() == probe.get_params() and twin.get_params()["hidden"] == [16, 8]  # verbatim
    assert not hasattr(twin, "net_") and not hasattr(twin, "classes_")  # unfitted
    np.testing.assert_array_equal(twin.fit(X, y).predict_proba(X), fitted.predict_proba(X))  # same seed
    other = clone(probe).set_params(random_state=5).fit(X, y)
    assert not np.array_equal(other.predict_proba(X), fitted.predict_proba(X))
    assert list(fitted.classes_) == ["a", "b", "c"] and fitted.n_features_in_ == 4
    assert fitted.score(X, y) == np.mean(fitted.predict(X) == y)


def test_mlp_works_inside_scikit_learn_model_selection():
    X, y = _classification_data(240)
    proba = cross_val_predict(
        TorchMLPProbe(hidden=(32,), max_epochs=50, device="cpu"), X, y, cv=3, method="predict_proba"
    )
    assert proba.shape == (240, 3) and np.allclose(proba.sum(axis=1), 1.0, atol=1e-5)
    assert balanced_accuracy_score(y, np.array(["a", "b", "c"])[proba.argmax(axis=1)]) > 0.5  # chance: 1/3


def test_mlp_checks_its_parameters_and_inputs():
    X, y = _classification_data(60)
    assert not hasattr(TorchMLPProbe(task="regression"), "predict_proba")  # only classifiers have it
    with pytest.raises(ValueError, match="'task' parameter of TorchMLPProbe must be a str among"):
        TorchMLPProbe(task="ranking").fit(X, y)
    with pytest.raises(ValueError, match="hidden must hold positive layer widths"):
        TorchMLPProbe(hidden=(16, 0)).fit(X, y)
    with pytest.raises(ValueError, match="Unknown label type"):
        TorchMLPProbe(max_epochs=2).fit(X, np.linspace(0, 1, 60))  # a continuous target is no classes
    fitted = TorchMLPProbe(max_epochs=2, device="cpu").fit(X, y)
    with pytest.raises(ValueError, match="X has 3 features, but TorchMLPProbe is expecting 4"):
        fitted.predict(X[:, :3])
    with pytest.raises(NotFittedError):
        TorchMLPProbe().predict(X)


def test_quadratic_probe_reads_a_difference_in_spread_that_the_linear_probe_cannot():
    """Two classes with one mean and a different spread along one direction: invisible to a linear probe."""
    rng = np.random.default_rng(3)
    n, dims = 2000, 12
    y = rng.integers(0, 2, n)
    X = rng.normal(size=(n, dims))
    X[:, 3] *= np.where(y == 1, 3.0, 1.0)  # the best possible balanced accuracy is about 0.74
    train, test = slice(0, 1500), slice(1500, None)

    def held_out_score(name):
        probe = make_probe(name, "classification", random_state=0).fit(X[train], y[train])
        return balanced_accuracy_score(y[test], probe.predict(X[test]))

    assert held_out_score("linear") < 0.58
    assert held_out_score("quadratic") > 0.68
    # a small class (fewer rows than dimensions) is shrunk, not refused
    few = np.r_[y[:300], np.full(8, 2)]
    probe = make_probe("quadratic", "classification", random_state=0).fit(X[:308], few)
    assert probe.predict_proba(X[:5]).shape == (5, 3)


def test_quadratic_regression_probe_reads_a_squared_signal():
    rng = np.random.default_rng(4)
    X = rng.normal(size=(1500, 8))
    y = 30 + 8 * X[:, 0] ** 2 - 5 * X[:, 1] * X[:, 2] + rng.normal(size=1500)
    quadratic = make_probe("quadratic", "regression", random_state=0).fit(X[:1000], y[:1000])
    linear = make_probe("linear", "regression", random_state=0).fit(X[:1000], y[:1000])
    assert quadratic.score(X[1000:], y[1000:]) > 0.9
    assert linear.score(X[1000:], y[1000:]) < 0.1


def test_quadratic_regression_probe_expands_a_bounded_number_of_leading_components():
    """A wide embedding is cut to its leading components before the degree-2 expansion; a narrow one is kept whole."""
    rng = np.random.default_rng(5)
    wide = rng.normal(size=(300, 200)) * np.linspace(3.0, 0.1, 200)  # the leading columns carry most variance
    y = wide[:, 0] ** 2 + rng.normal(size=300)
    probe = make_probe("quadratic", "regression", random_state=0).fit(wide, y)
    components = probe.named_steps["leadingcomponents"].pca_
    assert components.n_components_ == 64
    assert probe.named_steps["polynomialfeatures"].n_output_features_ == 64 + 64 * 65 // 2
    narrow = make_probe("quadratic", "regression", random_state=0).fit(wide[:, :10], y)
    assert narrow.named_steps["leadingcomponents"].pca_.n_components_ == 10


@pytest.mark.parametrize("shape", [(400, 30), (60, 90)])
def test_gram_ridge_fits_each_penalty_as_ridge_and_scores_it_by_generalized_cross_validation(shape):
    """Coefficients as scikit-learn's Ridge at the chosen penalty; the score is GCV from the explicit hat matrix."""
    from sklearn.linear_model import Ridge

    from bafo_pipeline.audits.probes import QUADRATIC_RIDGE_ALPHAS, GramRidgeCV

    rng = np.random.default_rng(6)
    X = rng.normal(size=shape) * rng.uniform(0.1, 3.0, size=shape[1]) + rng.normal(size=shape[1])
    y = 5 + X[:, :5] @ rng.normal(size=5) + 3 * rng.normal(size=shape[0])
    gram = GramRidgeCV().fit(X, y)
    ridge = Ridge(alpha=gram.alpha_).fit(X, y)
    np.testing.assert_allclose(gram.coef_, ridge.coef_, rtol=1e-6, atol=1e-10)
    np.testing.assert_allclose(gram.predict(X), ridge.predict(X), rtol=1e-8)

    def gcv(alpha):
        centred = X - X.mean(axis=0)
        hat = centred @ np.linalg.solve(centred.T @ centred + alpha * np.eye(shape[1]), centred.T) + 1 / len(y)
        fitted = Ridge(alpha=alpha).fit(X, y).predict(X)
        return np.mean((y - fitted) ** 2) / (1 - np.trace(hat) / len(y)) ** 2

    scores = [gcv(alpha) for alpha in QUADRATIC_RIDGE_ALPHAS]
    assert gram.alpha_ == QUADRATIC_RIDGE_ALPHAS[int(np.argmin(scores))]
    assert -gram.best_score_ == pytest.approx(min(scores), rel=1e-8)


def test_gram_ridge_chooses_as_ridge_cv_where_rows_have_like_leverage():
    """On a tall design GCV and RidgeCV's exact leave-one-out choose the same penalty."""
    from sklearn.linear_model import RidgeCV

    from bafo_pipeline.audits.probes import QUADRATIC_RIDGE_ALPHAS, GramRidgeCV

    rng = np.random.default_rng(8)
    for signal in (0.05, 0.3, 1.0):
        X = rng.normal(size=(2000, 120))
        y = signal * X[:, :40].sum(axis=1) + rng.normal(size=2000)
        assert GramRidgeCV().fit(X, y).alpha_ == RidgeCV(alphas=QUADRATIC_RIDGE_ALPHAS).fit(X, y).alpha_


def test_gram_ridge_picks_a_small_penalty_for_a_clean_signal_and_refuses_bad_penalties():
    from bafo_pipeline.audits.probes import GramRidgeCV

    rng = np.random.default_rng(7)
    X = rng.normal(size=(500, 10))
    clean = GramRidgeCV(alphas=(0.1, 1e4)).fit(X, X[:, 0] + 0.01 * rng.normal(size=500))
    noise = GramRidgeCV(alphas=(0.1, 1e4)).fit(X, rng.normal(size=500))
    assert clean.alpha_ == 0.1 and noise.alpha_ == 1e4
    with pytest.raises(ValueError, match="positive"):
        GramRidgeCV(alphas=(0.0, 1.0)).fit(X, X[:, 0])


def test_gram_ridge_passes_the_estimator_checks():
    from sklearn.utils.estimator_checks import check_estimator

    from bafo_pipeline.audits.probes import GramRidgeCV

    failed = [c for c in check_estimator(GramRidgeCV(), on_fail=None) if c["status"] == "failed"]
    assert failed == []


def test_the_attack_ladder_has_the_quadratic_probe_and_the_utility_ladder_does_not():
    from bafo_pipeline.audits import UTILITY_PROBES

    assert "quadratic" in PROBES and "quadratic" not in UTILITY_PROBES
    assert "knn" in PROBES and "knn" not in UTILITY_PROBES
    assert set(UTILITY_PROBES) < set(PROBES)


def test_the_neighbour_probe_reads_a_difference_in_shape_that_equal_means_and_spreads_hide():
    """Both classes have mean 0 and covariance a^2 I: one sits on the square's corners, the other on its
    edges' midpoints. Only a local attacker tells them apart."""
    rng = np.random.default_rng(9)
    n, a = 1600, 2.0
    corners = rng.choice([-a, a], size=(n // 2, 2))
    axis = rng.integers(0, 2, size=n // 2)
    edges = np.zeros((n // 2, 2))
    edges[np.arange(n // 2), axis] = rng.choice([-a, a], size=n // 2) * np.sqrt(2.0)
    X = np.vstack([corners, edges]) + 0.15 * rng.normal(size=(n, 2))
    y = np.repeat([0, 1], n // 2)
    order = rng.permutation(n)
    X, y = X[order], y[order]
    scores = {}
    for name in ("linear", "quadratic", "knn"):
        predicted = cross_val_predict(make_probe(name, "classification", random_state=0), X, y, cv=5)
        scores[name] = balanced_accuracy_score(y, predicted)
    assert scores["knn"] > 0.95
    assert scores["linear"] < 0.58 and scores["quadratic"] < 0.58
