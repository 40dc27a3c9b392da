"""The real dlib landmark path on synthetic faces of known tilt and smile, the cache, the missing extra."""

import importlib.util
import os
import shutil

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from bafo_pipeline.data import make_synthetic_faces
from bafo_pipeline.data import landmarks as lm
from bafo_pipeline.data.landmarks import (
    LANDMARK_TARGETS,
    LANDMARKS_EXTRA_HINT,
    LandmarkDetector,
    dataset_landmarks,
    landmark_table,
    require_landmark_model,
    split_landmark_targets,
)


@pytest.fixture(scope="module")
def faces():
    # 128 px is large enough for dlib's detector with one upsampling (it needs ~80 px faces).
    return make_synthetic_faces(80, 128, random_state=3)


@pytest.fixture(scope="module")
def measured(faces):
    return landmark_table(list(faces.images), upsample=1, n_jobs=2)


def test_dlib_finds_the_drawn_tilt_and_smile(faces, measured):
    detected = (measured["detection"] == "detector").to_numpy()
    assert detected.mean() > 0.4  # dlib's detector finds most of these cartoon faces
    truth = faces.attributes[detected]
    found = measured[detected]
    # Roll follows the drawn tilt (same sign convention: clockwise as displayed).
    assert np.corrcoef(truth["tilt"], found["roll"])[0, 1] > 0.9
    slope = np.polyfit(truth["tilt"], found["roll"], 1)[0]
    assert 0.7 < slope < 1.2
    # A smile opens and widens the mouth.
    smile = truth["smile"].to_numpy() == 1
    assert found["mouth_open"][smile].median() > found["mouth_open"][~smile].median() + 0.1
    assert found["mouth_width"][smile].median() > found["mouth_width"][~smile].median() + 0.1
    open_ = found["mouth_open"].to_numpy()
    auc = (open_[smile][:, None] > open_[~smile][None, :]).mean()
    assert auc > 0.9
    # Faces are drawn frontal: little yaw, and a good template fit.
    assert found["yaw"].abs().median() < 10
    assert found["fit_error"].median() < 0.06


def test_table_columns_and_keys(faces, measured):
    assert list(measured.columns) == ["content_hash", *LANDMARK_TARGETS, "fit_error", "detection", "detector_score"]
    assert measured["content_hash"].is_unique
    fallback = measured["detection"] == "fixed_box"
    assert measured.loc[fallback, "detector_score"].isna().all()
    assert measured.loc[~fallback, "detector_score"].notna().all()
    assert measured[list(LANDMARK_TARGETS)].notna().all().all()  # the fixed box always gives landmarks


def test_no_fallback_leaves_undetected_faces_empty():
    blank = np.full((120, 120, 3), 128, np.uint8)
    points, detection, score = LandmarkDetector(fallback_box=None)(blank)
    assert detection == "fixed_box" and np.isnan(points).all() and np.isnan(score)
    points, detection, _ = LandmarkDetector()(blank)
    assert detection == "fixed_box" and np.isfinite(points).all()
    # The landmarks sit in the fixed box of an aligned crop (the mean face placed in it).
    left, top, right, bottom = np.array(lm.ALIGNED_CROP_BOX) * 120
    assert np.allclose(points.mean(axis=0), [(left + right) / 2, (top + bottom) / 2], atol=12)
    assert 0.5 < np.ptp(points[:, 0]) / (right - left) < 1.0


def _write_images(faces, folder, n):
    paths = []
    for i in range(n):
        path = folder / f"{i:03d}.png"
        Image.fromarray(faces.images[i]).save(path)
        paths.append(path)
    return paths


class CountingDetector(LandmarkDetector):
    calls = 0

    def __call__(self, image):
        CountingDetector.calls += 1
        return super().__call__(image)


@pytest.fixture
def counting(monkeypatch):
    CountingDetector.calls = 0
    monkeypatch.setattr(lm, "LandmarkDetector", CountingDetector)
    return CountingDetector


def test_cache_hit_miss_and_content_keys(faces, tmp_path, counting):
    folder = tmp_path / "images"
    folder.mkdir()
    paths = _write_images(faces, folder, 6)
    cache = tmp_path / "cache" / "landmarks.parquet"
    options = {"cache": cache, "upsample": 1, "n_jobs": 1, "image_size": 128}

    first = landmark_table(paths[:4], **options)
    assert counting.calls == 4 and cache.exists()
    assert not [p for p in cache.parent.iterdir() if p.name != cache.name]  # no temporary file left

    again = landmark_table(paths[:4], **options)  # hit: nothing recomputed, same values
    assert counting.calls == 4
    pd.testing.assert_frame_equal(again, first)

    more = landmark_table(paths, **options)  # two misses among hits
    assert counting.calls == 6
    pd.testing.assert_frame_equal(more.iloc[:4].reset_index(drop=True), first)

    renamed = folder / "copy_of_002.png"  # same bytes, other name: a hit
    shutil.copy(paths[2], renamed)
    copy = landmark_table([renamed], **options)
    assert counting.calls == 6
    pd.testing.assert_frame_equal(copy, first.iloc[[2]].reset_index(drop=True))

    Image.fromarray(faces.images[10]).save(paths[0])  # new content under an old name: a miss
    changed = landmark_table([paths[0]], **options)
    assert counting.calls == 7
    assert changed["content_hash"][0] != first["content_hash"][0]

    landmark_table(paths[:2], **{**options, "upsample": 0})  # other settings: the cache is not reused
    assert counting.calls == 9
    stored = pd.read_parquet(cache)
    assert len(stored) == 2  # rewritten for the new settings


def test_given_content_hashes_key_the_cache(faces, tmp_path, counting):
    cache = tmp_path / "landmarks.parquet"
    images = list(faces.images[:3])
    out = landmark_table(images, content_hashes=["a", "b", "a"], cache=cache, upsample=1, n_jobs=1)
    assert counting.calls == 2  # "a" is computed once
    assert out["content_hash"].tolist() == ["a", "b", "a"]
    assert out.iloc[0, 1:].equals(out.iloc[2, 1:])


def test_dataset_landmarks_uses_the_dataset_hashes(faces, counting):
    subset = faces.subset(np.arange(3))
    out = dataset_landmarks(subset, upsample=1, n_jobs=1)
    assert out["content_hash"].tolist() == list(subset.content_hash)
    assert counting.calls == 3


def test_unreadable_files_are_marked_or_refused(faces, tmp_path):
    good = _write_images(faces, tmp_path, 1)[0]
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"not an image")
    missing = tmp_path / "missing.jpg"
    out = landmark_table([good, broken, missing], upsample=1, n_jobs=1, cache=tmp_path / "c.parquet")
    assert out["detection"].tolist()[1:] == ["unreadable", "unreadable"]
    assert out.loc[1:, list(LANDMARK_TARGETS)].isna().all().all()
    assert out.loc[0, list(LANDMARK_TARGETS)].notna().all()
    with pytest.raises(ValueError, match="broken.jpg"):
        landmark_table([good, broken], upsample=1, n_jobs=1, strict=True)
    with pytest.raises(ValueError, match="missing.jpg"):
        landmark_table([missing], n_jobs=1, strict=True)
    # Unhashable files are never written to the cache (their key would carry nothing real).
    stored = pd.read_parquet(tmp_path / "c.parquet")
    assert len(stored) == 2 and not stored["content_hash"].str.startswith("unreadable").any()


def test_split_targets_are_the_target_columns_and_report_unreadable_images(faces, tmp_path):
    from dataclasses import replace

    good = _write_images(faces, tmp_path, 2)
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"not an image")
    split = replace(faces.subset([0, 1, 2]), sources=[str(p) for p in (*good, broken)])
    counts = []
    measure = split_landmark_targets(tmp_path / "c.parquet", on_unreadable=counts.append)
    targets = measure(split)
    assert list(targets.columns) == list(LANDMARK_TARGETS) and len(targets) == 3
    pd.testing.assert_frame_equal(targets, dataset_landmarks(split)[list(LANDMARK_TARGETS)])
    assert counts == [1] and targets.iloc[2].isna().all() and targets.iloc[:2].notna().all().all()
    split_landmark_targets(on_unreadable=counts.append)(faces.subset([0, 1]))
    assert counts == [1]  # nothing unreadable: no call


def test_bad_arguments():
    image = np.zeros((64, 64, 3), np.uint8)
    with pytest.raises(ValueError, match="2 content hashes"):
        landmark_table([image], content_hashes=["a", "b"])
    with pytest.raises(ValueError, match="fallback_box"):
        LandmarkDetector(fallback_box=(0.5, 0.5, 0.2, 0.9))


@pytest.mark.parametrize("absent", ["dlib", "face_recognition_models"])
def test_missing_extra_names_it(monkeypatch, absent):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == absent else real(name, *a))
    with pytest.raises(ImportError) as error:
        require_landmark_model()
    assert LANDMARKS_EXTRA_HINT in str(error.value) and absent in str(error.value)
    with pytest.raises(ImportError, match="bafo-pipeline\\[landmarks\\]"):
        landmark_table([np.zeros((64, 64, 3), np.uint8)])


def test_model_file_found_without_importing_the_package():
    path = require_landmark_model()
    assert os.path.basename(path) == "shape_predictor_68_face_landmarks.dat"
    assert os.path.getsize(path) > 50_000_000


def test_detect_false_always_uses_the_box(faces):
    out = landmark_table(list(faces.images[:4]), detect=False, n_jobs=1)
    assert (out["detection"] == "fixed_box").all() and out["detector_score"].isna().all()
    with pytest.raises(ValueError, match="fallback_box"):
        LandmarkDetector(detect=False, fallback_box=None)


def test_bad_arrays_are_refused():
    with pytest.raises(ValueError, match="uint8"):
        landmark_table([np.zeros((64, 64, 3), np.float32)], n_jobs=1)
    with pytest.raises(ValueError, match=r"\(h, w, 3\)"):
        landmark_table([np.zeros((64, 64), np.uint8)], n_jobs=1)
