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
    model = BAFOTransformer(latent_dim=4, epochs=2, batch_size=256, concealment="linear", covariance_dims=1, random_state=0)
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


# ------------------------------------------------------------ input forms and dtypes


def test_float32_statistics_are_float64_and_the_output_stays_float32():
    X, S = _heteroscedastic(n=2000)
    X32 = X.astype(np.float32)
    eraser = LinearErasure().fit(X32, sensitive_features=S)
    reference = LinearErasure().fit(X32.astype(np.float64), sensitive_features=S)
    assert eraser.projection_.dtype == np.float64
    np.testing.assert_array_equal(eraser.projection_, reference.projection_)  # same statistics, bit for bit
    assert np.linalg.norm(eraser.projection_, 2) <= LinearErasure.FLOAT32_AMPLIFICATION  # well conditioned
    Z = eraser.transform(X32)
    assert Z.dtype == np.float32
    # Erased in float32 arithmetic (no float64 copy of X) ...
    expected = X32 - (X32 - eraser.mean_.astype(np.float32)) @ eraser.projection_.astype(np.float32)
    np.testing.assert_array_equal(Z, expected)
    # ... and as exact as a float32 result can be: within float32 rounding of the float64 erasure.
    Z64 = reference.transform(X32.astype(np.float64))
    scale = np.abs(X).max()
    assert np.abs(Z - Z64).max() < 1e-5 * scale
    assert _max_cross_covariance(eraser, Z.astype(np.float64), S) < 1e-6 * scale


def test_float32_input_is_erased_in_float64_where_float32_would_amplify_rounding():
    rng = np.random.default_rng(3)
    gender = rng.integers(0, 2, 2000)
    X = rng.normal(size=(2000, 4))
    X[:, 3] = X[:, 0] + 1e-3 * gender + 1e-5 * rng.normal(size=len(X))  # gender only in a near-flat direction
    S = pd.DataFrame({"gender": np.where(gender == 1, "f", "m")})
    X32 = X.astype(np.float32)
    eraser = LinearErasure().fit(X32, sensitive_features=S)
    assert np.linalg.norm(eraser.projection_, 2) > LinearErasure.FLOAT32_AMPLIFICATION  # a near-singular direction
    Z = eraser.transform(X32)
    assert Z.dtype == np.float32
    expected = (X32 - (X32 - eraser.mean_) @ eraser.projection_).astype(np.float32)
    np.testing.assert_array_equal(Z, expected)
    # Why: float32 arithmetic would have left far more of the attribute than float32 rounding does.
    in_float32 = X32 - (X32 - eraser.mean_.astype(np.float32)) @ eraser.projection_.astype(np.float32)
    leak = _max_cross_covariance(eraser, in_float32.astype(np.float64), S)
    assert leak > 10 * _max_cross_covariance(eraser, Z.astype(np.float64), S)


def test_other_dtypes_are_erased_in_float64():
    X, S = _heteroscedastic(n=300)
    integers = np.rint(10 * X).astype(np.int64)
    eraser = LinearErasure().fit(integers, sensitive_features=S)
    Z = eraser.transform(integers)
    assert Z.dtype == np.float64
    np.testing.assert_allclose(Z, LinearErasure().fit(integers.astype(float), sensitive_features=S).transform(integers.astype(float)))


def test_sensitive_features_as_numpy_polars_and_mappings():
    pl = pytest.importorskip("polars")
    X, S = _heteroscedastic(n=500)
    S = S.assign(age=np.random.default_rng(2).uniform(10, 80, len(S)))
    reference = LinearErasure().fit(X, sensitive_features=S).projection_
    as_numpy = np.empty((len(S), 2), dtype=object)
    as_numpy[:, 0], as_numpy[:, 1] = S["gender"], S["age"]
    for features in (pl.from_pandas(S), {"gender": S["gender"].to_numpy(), "age": S["age"].to_list()}, as_numpy):
        np.testing.assert_array_equal(LinearErasure().fit(X, sensitive_features=features).projection_, reference)
    one_column = LinearErasure().fit(X, sensitive_features=(S["gender"] == "f").to_numpy())
    assert one_column.schema_.names == ["sensitive_0"] and one_column.schema_["sensitive_0"].kind == "binary"
    with pytest.raises(ValueError, match="sensitive_features has 500 rows but X has 499 samples"):
        LinearErasure().fit(X[:-1], sensitive_features=pl.from_pandas(S))
