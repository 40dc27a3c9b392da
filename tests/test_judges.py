"""FaceJudge (benchmarks/judges.py): learns attributes from synthetic faces, predicts in the right form, rejects bad input."""

import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from bafo_pipeline.data.synthetic import make_synthetic_faces

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from judges import FaceJudge, _augment, _blur  # noqa: E402

SIZE = 32


@pytest.fixture(scope="module")
def faces():
    return make_synthetic_faces(480, image_size=SIZE, random_state=0).split(test_fraction=0.25, seed=0)


@pytest.fixture(scope="module")
def judge(faces):
    train, _ = faces
    # No augmentation: on 360 tiny faces and 8 epochs it slows learning (it is exercised below).
    return FaceJudge(epochs=8, widths=(8, 16, 32), batch_size=32, learning_rate=1e-2, augment=False, random_state=0).fit(
        train.images, train.sensitive_features
    )


def test_learns_gender_well_above_chance(judge, faces):
    _, test = faces
    scores = judge.evaluate(test.images, test.sensitive_features)
    majority = test.attributes["gender"].value_counts(normalize=True).max()
    assert scores["gender"]["accuracy"] > max(0.75, majority + 0.2)
    assert scores["gender"]["balanced_accuracy"] > 0.75
    # Age is learned too: better than always answering the training median.
    baseline = np.sqrt(np.mean((test.attributes["age"] - np.median(faces[0].attributes["age"])) ** 2))
    assert scores["age"]["rmse"] < 0.9 * baseline
    assert scores["age"]["mae"] <= scores["age"]["rmse"]


def test_predict_columns_kinds_and_ranges(judge, faces):
    train, test = faces
    predicted = judge.predict(test.images)
    assert list(predicted.columns) == ["age", "gender", "ethnicity"]
    assert len(predicted) == len(test)
    assert judge.kinds_ == {"age": "continuous", "gender": "categorical", "ethnicity": "categorical"}
    assert set(predicted["gender"]) <= {"male", "female"}
    assert set(predicted["ethnicity"]) <= set(train.attributes["ethnicity"])
    low, high = train.attributes["age"].min(), train.attributes["age"].max()
    assert predicted["age"].between(low, high).all()

    proba = judge.predict_proba(test.images)
    assert set(proba) == {"gender", "ethnicity"}
    np.testing.assert_allclose(proba["gender"].sum(axis=1), 1.0, rtol=1e-5)
    # predict's class is the most probable one.
    assert (proba["gender"].idxmax(axis=1).to_numpy() == predicted["gender"].to_numpy()).all()


def test_float_images_match_uint8_and_predictions_are_deterministic(judge, faces):
    _, test = faces
    images = test.images[:16]
    first = judge.predict(images)
    pd.testing.assert_frame_equal(first, judge.predict(images))
    pd.testing.assert_frame_equal(first, judge.predict(images.astype(np.float32) / 255.0))


def test_augmentation_flips_blurs_and_is_reproducible():
    rng = np.random.default_rng(0)
    x = torch.from_numpy(rng.random((64, 3, 56, 56), dtype=np.float32))
    first = _augment(x, torch.Generator().manual_seed(1))
    again = _augment(x, torch.Generator().manual_seed(1))
    assert first.shape == x.shape
    torch.testing.assert_close(first, again)
    assert not torch.equal(first, _augment(x, torch.Generator().manual_seed(2)))
    # Blur removes pixel-to-pixel variation, keeps the mean and stays in range.
    blurred = _blur(x, 1.5)
    assert blurred.diff(dim=3).abs().mean() < 0.3 * x.diff(dim=3).abs().mean()
    torch.testing.assert_close(blurred.mean(), x.mean(), atol=1e-3, rtol=0)
    assert blurred.min() >= 0 and blurred.max() <= 1
    # Some images are changed (blurred or flipped), none is replaced by noise.
    changed = (first - x).abs().flatten(1).amax(1) > 1e-6
    assert changed.any()
    assert (first.mean(dim=(1, 2, 3)) - x.mean(dim=(1, 2, 3))).abs().max() < 0.05


def test_same_seed_same_judge(faces):
    train, test = faces
    small = train.subset(np.arange(64))

    def make():
        return FaceJudge(epochs=1, widths=(4, 8), batch_size=16, random_state=3).fit(small.images, small.sensitive_features)

    pd.testing.assert_frame_equal(make().predict(test.images[:8]), make().predict(test.images[:8]))


def test_targets_and_kinds_follow_the_data(faces):
    train, _ = faces
    small = train.subset(np.arange(64))
    labels = small.attributes[["smile", "age"]]
    judge = FaceJudge(targets=("smile", "age"), epochs=1, widths=(4, 8), batch_size=16, random_state=0)
    judge.fit(small.images, labels)
    assert judge.kinds_ == {"smile": "categorical", "age": "continuous"}
    assert list(judge.predict(small.images[:4]).columns) == ["smile", "age"]
    assert set(judge.evaluate(small.images, labels)["smile"]) == {"accuracy", "balanced_accuracy", "n"}


@pytest.mark.parametrize(
    "images, labels, message",
    [
        (np.zeros((8, SIZE, SIZE), np.uint8), None, "NHWC"),
        (np.zeros((8, SIZE, SIZE, 3), np.int32), None, "uint8"),
        (np.full((8, SIZE, SIZE, 3), 2.0, np.float32), None, r"row 0: float pixels"),
        (None, pd.DataFrame({"gender": ["male"] * 8}), "single class"),
        (None, pd.DataFrame({"gender": ["male", "female"] * 3}), "6 rows but X has 8"),
        (None, pd.DataFrame({"gender": ["male", None] * 4}), "missing value in row 1"),
        (None, pd.DataFrame({"colour": ["a", "b"] * 4}), "no targets"),
    ],
)
def test_bad_input_is_named(images, labels, message):
    images = np.zeros((8, SIZE, SIZE, 3), np.uint8) if images is None else images
    labels = pd.DataFrame({"gender": ["male", "female"] * 4}) if labels is None else labels
    with pytest.raises(ValueError, match=message):
        FaceJudge(epochs=1, widths=(4,)).fit(images, labels)


def test_predict_checks_image_shape(judge):
    with pytest.raises(ValueError, match="expected images of shape"):
        judge.predict(np.zeros((2, SIZE + 8, SIZE + 8, 3), np.uint8))
