"""Landmark geometry: known poses and mouth openings of the 3-D template come back out."""

import numpy as np
import pytest

from bafo_pipeline.data.face_geometry import (
    FACE_TEMPLATE,
    LANDMARK_TARGETS,
    fit_pose,
    landmark_targets,
    project_template,
)

POSES = [(0, 0, 0), (30, 0, 0), (-35, 0, 0), (0, 20, 0), (0, -15, 0), (0, 0, 12), (0, 0, -25), (-20, 10, 5), (25, -12, -18)]
INNER_LOWER_LIP = [65, 66, 67]
OUTER_LOWER_LIP_AND_CHIN = [5, 6, 7, 8, 9, 10, 11, 55, 56, 57, 58, 59]


def opened(gap: float) -> np.ndarray:
    """The template with the jaw dropped by ``gap`` inter-ocular units."""
    shape = FACE_TEMPLATE.copy()
    shape[INNER_LOWER_LIP + OUTER_LOWER_LIP_AND_CHIN, 1] += gap
    return shape


def test_template_is_a_symmetric_face_at_unit_eye_distance():
    eyes = FACE_TEMPLATE[36:42].mean(axis=0), FACE_TEMPLATE[42:48].mean(axis=0)
    assert np.linalg.norm(eyes[1] - eyes[0]) == pytest.approx(1.0, abs=2e-3)
    # The nose tip is nearer the camera (smaller z) than the eye corners and the jaw.
    assert FACE_TEMPLATE[30, 2] < FACE_TEMPLATE[[36, 39, 42, 45], 2].min()
    assert FACE_TEMPLATE[30, 2] < FACE_TEMPLATE[[0, 16], 2].min() - 0.3
    # Mirror pairs: outer eye corners, mouth corners, jaw ends.
    for left, right in [(36, 45), (48, 54), (0, 16)]:
        assert FACE_TEMPLATE[left, 0] == pytest.approx(-FACE_TEMPLATE[right, 0])
        assert FACE_TEMPLATE[left, 1:] == pytest.approx(FACE_TEMPLATE[right, 1:])


@pytest.mark.parametrize("yaw, pitch, roll", POSES)
def test_known_pose_is_recovered_at_any_scale_and_position(yaw, pitch, roll):
    points = project_template(yaw, pitch, roll, scale=73.0, offset=(101.0, 87.0))
    pose = fit_pose(points)
    assert pose["yaw"][0] == pytest.approx(yaw, abs=1e-6)
    assert pose["pitch"][0] == pytest.approx(pitch, abs=1e-6)
    assert pose["roll"][0] == pytest.approx(roll, abs=1e-6)
    assert pose["scale"][0] == pytest.approx(73.0)
    assert pose["fit_error"][0] == pytest.approx(0.0, abs=1e-9)


def test_signs_follow_the_image():
    # yaw > 0: the nose tip moves to the image's right of the eyes' midpoint.
    right = project_template(30)
    assert right[30, 0] > right[[39, 42], 0].mean()
    # pitch > 0: the nose tip drops towards the mouth.
    frontal, down = project_template(), project_template(0, 20)
    ratio = lambda p: (p[30, 1] - p[27, 1]) / (p[51, 1] - p[27, 1])  # noqa: E731
    assert ratio(down) > ratio(frontal)
    # roll > 0: clockwise as displayed (y points down): the left eye (image right) drops.
    tilted = project_template(0, 0, 15)
    assert tilted[42:48, 1].mean() > tilted[36:42, 1].mean()


@pytest.mark.parametrize("yaw, pitch, roll", [(0, 0, 0), (30, 0, 0), (-25, 10, 15)])
@pytest.mark.parametrize("gap", [0.1, 0.3])
def test_mouth_opening_is_measured_in_eye_distances_whatever_the_pose(yaw, pitch, roll, gap):
    closed = landmark_targets(project_template(yaw, pitch, roll, scale=60.0))
    open_ = landmark_targets(project_template(yaw, pitch, roll, scale=140.0, shape=opened(gap)))
    # Pose comes from the nose and eye corners only: dropping the jaw does not move it.
    for angle in ("yaw", "pitch", "roll"):
        assert open_[angle][0] == pytest.approx(closed[angle][0], abs=1e-6)
    assert open_["mouth_open"][0] - closed["mouth_open"][0] == pytest.approx(gap, rel=0.03)
    assert open_["mouth_width"][0] == pytest.approx(closed["mouth_width"][0], rel=1e-6)


def test_expression_does_not_change_with_pose_or_size():
    frontal = landmark_targets(project_template(scale=50.0))
    turned = landmark_targets(project_template(35, -10, 20, scale=180.0, offset=(-3.0, 400.0)))
    for name in ("mouth_width", "eye_open"):
        assert turned[name][0] == pytest.approx(frontal[name][0], rel=0.02)
    assert frontal["mouth_width"][0] == pytest.approx(FACE_TEMPLATE[54, 0] - FACE_TEMPLATE[48, 0], rel=1e-6)


def test_wider_mouth_and_closed_eyes():
    shape = FACE_TEMPLATE.copy()
    shape[[48, 60], 0] -= 0.1  # corners pulled out, as in a smile
    shape[[54, 64], 0] += 0.1
    shape[[37, 38, 43, 44]] = shape[[41, 40, 47, 46]]  # upper lids down on the lower ones
    base = landmark_targets(project_template(10, 0, 0))
    changed = landmark_targets(project_template(10, 0, 0, shape=shape))
    assert changed["mouth_width"][0] - base["mouth_width"][0] == pytest.approx(0.2, rel=0.02)
    assert changed["eye_open"][0] == pytest.approx(0.0, abs=1e-6)
    assert base["eye_open"][0] > 0.2


def test_batches_noise_and_missing_points():
    rng = np.random.default_rng(0)
    poses = rng.uniform(-30, 30, size=(50, 3))
    points = np.stack([project_template(*p, scale=100.0) for p in poses])
    points += rng.normal(scale=0.5, size=points.shape)  # half a pixel of landmark noise
    points[7] = np.nan
    targets = landmark_targets(points)
    assert list(targets.columns) == [*LANDMARK_TARGETS, "fit_error"]
    assert targets.iloc[7].isna().all()
    good = np.delete(np.arange(50), 7)
    for k, name in enumerate(("yaw", "pitch", "roll")):
        error = targets[name].to_numpy()[good] - poses[good, k]
        assert np.abs(error).max() < 6.0, name
        assert np.corrcoef(targets[name].to_numpy()[good], poses[good, k])[0, 1] > 0.98, name
    assert targets["fit_error"].to_numpy()[good].max() < 0.03


def test_bad_shapes_are_refused():
    with pytest.raises(ValueError, match=r"\(n, 68, 2\)"):
        landmark_targets(np.zeros((3, 5, 2)))
    with pytest.raises(ValueError, match=r"\(68, 3\)"):
        project_template(shape=np.zeros((5, 3)))
