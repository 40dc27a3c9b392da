"""LinearErasure: LEACE's linear guarantee, and covariance_dims against probes that read spread differences."""

import numpy as np
import pandas as pd
import pytest
from sklearn.linear_model import LinearRegression, LogisticRegression
from sklearn.metrics import balanced_accuracy_score
from sklearn.preprocessing import PolynomialFeatures

from bafo_pipeline import BAFOTransformer, LinearErasure, load_model, save_model


def _heteroscedastic(n=4000, seed=0):
    """Gender shifts column 0's mean and triples column 1's spread; columns 2-5 are content unrelated to it."""
    rng = np.random.default_rng(seed)
    gender = rng.integers(0, 2, n)
    X = rng.normal(size=(n, 6))
    X[:, 0] += 1.5 * gender
    X[:, 1] *= np.where(gender == 1, 3.0, 1.0)
    X[:, 2:] = X[:, 2:] @ rng.normal(size=(4, 4))  # correlated content
    # Gender alone: every extra attribute makes LEACE remove more directions (rank of the concept matrix).
    return X, pd.DataFrame({"gender": np.where(gender == 1, "f", "m")})


def _quadratic_probe_accuracy(Z, S) -> float:
    half = len(Z) // 2
    features = PolynomialFeatures(2, include_bias=False).fit_transform(Z)
    probe = LogisticRegression(max_iter=5000).fit(features[:half], S["gender"][:half])
    return balanced_accuracy_score(S["gender"][half:], probe.predict(features[half:]))


def _max_cross_covariance(eraser, Z, S) -> float:
    concepts, _ = eraser._concepts(S)
    return float(np.abs((Z - Z.mean(0)).T @ (concepts - concepts.mean(0)) / len(Z)).max())


def test_leace_leaves_no_cross_covariance_but_spread_differences_survive():
    X, S = _heteroscedastic()
    eraser = LinearErasure().fit(X, sensitive_features=S)
    Z = eraser.transform(X)
    assert _max_cross_covariance(eraser, Z, S) < 1e-10
    assert _quadratic_probe_accuracy(Z, S) > 0.7  # column 1's variance still tells gender


def test_covariance_dims_removes_the_spread_difference_and_keeps_the_content():
    X, S = _heteroscedastic()
    eraser = LinearErasure(covariance_dims=1).fit(X, sensitive_features=S)
    Z = eraser.transform(X)
    assert _max_cross_covariance(eraser, Z, S) < 1e-10  # still blind to linear probes
    assert _quadratic_probe_accuracy(Z, S) < 0.56
    content = LinearRegression().fit(Z, X[:, 2:])
    assert content.score(Z, X[:, 2:]) > 0.99  # the unrelated columns pass through


def test_covariance_erasure_is_one_affine_map_and_tolerates_too_many_dims():
    X, S = _heteroscedastic(n=600)
    eraser = LinearErasure(covariance_dims=2).fit(X, sensitive_features=S)
    a, b = X[:5], X[5:10]
    np.testing.assert_allclose(eraser.transform(0.3 * a + 0.7 * b), 0.3 * eraser.transform(a) + 0.7 * eraser.transform(b))
    S = S.assign(age=np.random.default_rng(1).uniform(10, 80, len(S)))  # 1 + 1 + 3 bins: LEACE takes 5 of 6
    everything = LinearErasure(covariance_dims=50).fit(X, sensitive_features=S).transform(X)
    assert np.isfinite(everything).all() and np.allclose(everything, everything.mean(0), atol=1e-6)


def test_estimator_passes_covariance_dims_to_its_first_erasure_and_saves_it(tmp_path):
    X, S = _heteroscedastic(n=400)
    model = BAFOTransformer(latent_dim=4, epochs=2, concealment="linear", covariance_dims=1, random_state=0)
    model.fit(X.astype(np.float32), sensitive_features=S)
    assert model.erasure_.covariance_dims == 1
    save_model(model, tmp_path / "model")
    loaded = load_model(tmp_path / "model")
    assert loaded.covariance_dims == 1
    np.testing.assert_allclose(loaded.transform(X.astype(np.float32)), model.transform(X.astype(np.float32)), atol=1e-6)


@pytest.mark.parametrize("bad", [-1, 1.5])
def test_covariance_dims_must_be_a_non_negative_int(bad):
    X, S = _heteroscedastic(n=100)
    with pytest.raises(ValueError, match="covariance_dims"):
        LinearErasure(covariance_dims=bad).fit(X, sensitive_features=S)


def test_erasing_already_erased_data_changes_nothing():
    # Rounding noise in the cross-covariance must not count as a direction to remove.
    X, S = _heteroscedastic(n=1000)
    Z = LinearErasure().fit(X, sensitive_features=S).transform(X)
    again = LinearErasure().fit(Z, sensitive_features=S)
    np.testing.assert_allclose(again.transform(Z), Z, atol=1e-9)
    np.testing.assert_allclose(again.projection_, 0, atol=1e-9)
