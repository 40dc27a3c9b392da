"""The synthetic faces: contract, determinism, independence and learnability."""

from __future__ import annotations

import hashlib

import numpy as np
import pandas as pd
import pytest
from scipy.stats import chi2_contingency
from sklearn.linear_model import Ridge, RidgeClassifier
from sklearn.metrics import balanced_accuracy_score, r2_score
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from threadpoolctl import threadpool_limits

from bafo_pipeline.data import synthetic
from bafo_pipeline.data.dataset import FaceDataset
from bafo_pipeline.data.synthetic import (
    ETHNICITIES,
    HAIR_STYLES,
    SYNTHETIC_NON_SENSITIVE,
    SYNTHETIC_SENSITIVE,
    make_synthetic_faces,
)

COLUMNS = ["age", "gender", "ethnicity", "smile", "background", "tilt", "hair_style", "glasses"]


@pytest.fixture(scope="module")
def faces() -> FaceDataset:
    return make_synthetic_faces(2000, random_state=0)


def _pixels(images: np.ndarray, factor: int = 4) -> np.ndarray:
    """Block-mean downsampled pixels, one row per image."""
    n, size = images.shape[:2]
    small = size // factor
    cropped = images[:, : small * factor, : small * factor].astype(np.float32) / 255.0
    return cropped.reshape(n, small, factor, small, factor, 3).mean(axis=(2, 4)).reshape(n, -1)


def test_contract(faces):
    assert isinstance(faces, FaceDataset)
    assert faces.images.shape == (2000, 56, 56, 3)
    assert faces.images.dtype == np.uint8
    assert list(faces.attributes.columns) == COLUMNS
    assert isinstance(faces.attributes.index, pd.RangeIndex)
    assert faces.sensitive == SYNTHETIC_SENSITIVE == ("age", "gender", "ethnicity")
    assert set(SYNTHETIC_SENSITIVE) | set(SYNTHETIC_NON_SENSITIVE) == set(COLUMNS)
    assert faces.sources is None
    assert faces.report.n_loaded == 2000
    assert len(set(faces.content_hash)) == 2000
    for i in (0, 1234, 1999):
        assert faces.content_hash[i] == hashlib.sha1(faces.images[i].tobytes()).hexdigest()


def test_same_seed_same_data_other_seed_other_data():
    first = make_synthetic_faces(40, 32, random_state=7)
    again = make_synthetic_faces(40, 32, random_state=7)
    other = make_synthetic_faces(40, 32, random_state=8)
    np.testing.assert_array_equal(first.images, again.images)
    pd.testing.assert_frame_equal(first.attributes, again.attributes)
    np.testing.assert_array_equal(first.content_hash, again.content_hash)
    assert not np.array_equal(first.images, other.images)
    assert not first.attributes.equals(other.attributes)
    assert not set(first.content_hash) & set(other.content_hash)


def test_attribute_ranges_and_proportions(faces):
    a = faces.attributes
    assert a["age"].between(1, 80).all() and a["age"].std() > 10
    assert a["background"].between(0, 1).all()
    assert a["tilt"].between(-15, 15).all() and a["tilt"].abs().max() > 14
    assert set(a["smile"]) == {0, 1} and set(a["glasses"]) == {0, 1}
    assert set(a["gender"]) == {"male", "female"}
    assert set(a["ethnicity"]) == set(ETHNICITIES)
    assert set(a["hair_style"]) == set(HAIR_STYLES)
    assert 0.45 < (a["gender"] == "male").mean() < 0.6
    shares = a["ethnicity"].value_counts(normalize=True)
    assert shares.idxmax() == "white" and shares.idxmin() == "others"
    assert shares["others"] < 0.12 < 0.3 < shares["white"]


def _binned(column: pd.Series) -> pd.Series:
    if column.dtype.kind == "f":
        return pd.qcut(column, 4, labels=False)
    return column


@pytest.mark.parametrize("sensitive", SYNTHETIC_SENSITIVE)
def test_non_sensitive_independent_of_sensitive(faces, sensitive):
    a = faces.attributes
    for other in SYNTHETIC_NON_SENSITIVE:
        table = pd.crosstab(_binned(a[sensitive]), _binned(a[other]))
        p_value = chi2_contingency(table).pvalue
        assert p_value > 1e-3, f"{other} depends on {sensitive} (chi-square p={p_value:.2g})"


def test_independence_in_plain_numbers(faces):
    a = faces.attributes
    smile_rate = a.groupby("gender")["smile"].mean()
    assert abs(smile_rate["male"] - smile_rate["female"]) < 0.06
    assert abs(np.corrcoef(a["tilt"], a["age"])[0, 1]) < 0.08
    assert abs(np.corrcoef(a["background"], a["age"])[0, 1]) < 0.08


def test_attributes_are_learnable_from_pixels(faces):
    x = _pixels(faces.images)
    a = faces.attributes
    train, test = slice(0, 1000), slice(1000, None)
    floors = {"gender": 0.9, "smile": 0.9, "ethnicity": 0.65, "glasses": 0.9, "hair_style": 0.85}
    r2_floors = {"age": 0.65, "background": 0.9, "tilt": 0.75}
    # One BLAS thread: on a busy machine threads only fight each other.
    with threadpool_limits(1):
        scores = {}
        for column in floors:
            y = a[column].to_numpy()
            model = make_pipeline(StandardScaler(), RidgeClassifier(10.0, class_weight="balanced"))
            model.fit(x[train], y[train])
            scores[column] = balanced_accuracy_score(y[test], model.predict(x[test]))
        for column in r2_floors:
            y = a[column].to_numpy()
            model = make_pipeline(StandardScaler(), Ridge(alpha=10.0)).fit(x[train], y[train])
            scores[column] = r2_score(y[test], model.predict(x[test]))
        # Control: the same model on labels cut loose from the images is at chance.
        shuffled = np.random.default_rng(0).permutation(a["gender"].to_numpy())
        model = make_pipeline(StandardScaler(), RidgeClassifier(10.0))
        model.fit(x[train], shuffled[train])
        control = balanced_accuracy_score(shuffled[test], model.predict(x[test]))
    for column, floor in {**floors, **r2_floors}.items():
        assert scores[column] >= floor, f"{column}: {scores[column]:.3f} < {floor}"
    assert control < 0.6


def test_background_attribute_is_backdrop_brightness(faces):
    corners = faces.images[:, :4, :4].reshape(len(faces), -1).mean(axis=1)
    assert np.corrcoef(corners, faces.attributes["background"])[0, 1] > 0.95


@pytest.mark.parametrize("size", [32, 33, 57])
def test_any_size_draws_the_same_faces(size):
    big = make_synthetic_faces(24, size * 3, random_state=3)
    small = make_synthetic_faces(24, size, random_state=3)
    assert small.images.shape == (24, size, size, 3)
    pd.testing.assert_frame_equal(small.attributes, big.attributes)
    shrunk = big.images.astype(np.float32).reshape(24, size, 3, size, 3, 3).mean(axis=(2, 4))
    same = np.abs(shrunk - small.images).mean()
    shifted = np.abs(shrunk - np.roll(small.images, 1, axis=0)).mean()
    assert same < 8 and shifted > 3 * same


@pytest.mark.parametrize("size", [32, 56])
def test_windowed_painting_matches_whole_frame(size):
    # The renderer paints each part only near where it can be; it must never crop one.
    rng = np.random.default_rng(11)
    attributes, codes = synthetic._draw_attributes(rng, 120)
    attributes["tilt"] = np.resize([-15.0, 15.0, 0.0], 120)
    params = synthetic._draw_render_params(rng, attributes, codes)
    noise = rng.integers(0, 256, (3, 120, size, size), dtype=np.uint8)
    whole = synthetic._render(params, size, noise, windowed=False)
    # One face at a time, so each window is as tight as it gets. Vectorised and
    # scalar maths can differ in the last bit, so one level of rounding is allowed;
    # a cropped part shows as far more.
    for i in range(120):
        one = {name: value[i : i + 1] for name, value in params.items()}
        windowed = synthetic._render(one, size, noise[:, i : i + 1])
        difference = np.abs(windowed[0].astype(int) - whole[i])
        assert difference.max() <= 1, f"face {i}: {difference.max()} levels apart"


@pytest.mark.parametrize(
    "kwargs, error, message",
    [
        ({"n_samples": 0}, ValueError, "n_samples must be at least 1"),
        ({"n_samples": 2.5}, TypeError, "n_samples must be an integer"),
        ({"n_samples": True}, TypeError, "n_samples must be an integer"),
        ({"image_size": 31}, ValueError, "image_size must be at least 32"),
        ({"image_size": "56"}, TypeError, "image_size must be an integer"),
    ],
)
def test_bad_arguments_are_named(kwargs, error, message):
    with pytest.raises(error, match=message):
        make_synthetic_faces(**{"n_samples": 4, **kwargs})
