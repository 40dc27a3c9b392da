"""Head pose and expression from dlib's 68 facial landmarks: pure geometry, no detector.

Pose comes from fitting a rigid 3-D face template to the nose and eye-corner landmarks under a
scaled orthographic camera (the face is small against its distance from the camera);
expression is measured in the fitted face frame, so turning the head or moving the camera
does not change it.

Coordinates: image ``x`` to the right, ``y`` down; the template's ``z`` points into the
scene, so the nose tip has the smallest ``z``. The rotation from template to camera is
``R = R_roll @ R_pitch @ R_yaw`` with

- ``yaw`` > 0: the nose points towards the image's right (rotation about the vertical axis);
- ``pitch`` > 0: the nose points down, chin towards the chest;
- ``roll`` > 0: the face turns clockwise as displayed.

The template was learned from UTKFace's landmarks by rigid factorisation
(``benchmarks/face_template.py``): left-right symmetric, origin at the nose root, the
distance between the eye centres is 1. Its depth comes from the pose variation in the data;
pitch 0 is the average face of UTKFace, which is close to frontal.

References: 68-point markup of iBUG 300-W (Sagonas et al., 2013); eye aspect ratio
(Soukupova & Cech, 2016); factorisation (Tomasi & Kanade, 1992).
"""

from __future__ import annotations

import numpy as np
import pandas as pd

__all__ = [
    "FACE_TEMPLATE",
    "LANDMARK_TARGETS",
    "N_LANDMARKS",
    "fit_pose",
    "landmark_targets",
    "project_template",
]

N_LANDMARKS = 68
#: The per-face targets of :func:`landmark_targets`, in column order.
LANDMARK_TARGETS = ("yaw", "pitch", "roll", "mouth_open", "mouth_width", "eye_open")

# Landmarks used for the pose: the nose (27-35) and the eye corners, which move least with
# expression (eyelids blink and squint, brows rise, the jaw line is a silhouette that
# slides round the face as it turns).
_RIGID = np.array([*range(27, 36), 36, 39, 42, 45])
_MOUTH_CORNERS = (48, 54)
_INNER_LIP_PAIRS = ((61, 67), (62, 66), (63, 65))
# Per eye: its two corners and its two upper/lower eyelid pairs.
_EYES = (((36, 39), ((37, 41), (38, 40))), ((42, 45), ((43, 47), (44, 46))))

#: Mean 3-D face, shape (68, 3), in inter-ocular units (see the module notes).
FACE_TEMPLATE = np.array(
    [
        [-1.115, 0.043, 0.518],
        [-1.105, 0.322, 0.497],
        [-1.074, 0.599, 0.485],
        [-1.022, 0.872, 0.479],
        [-0.919, 1.127, 0.447],
        [-0.748, 1.349, 0.383],
        [-0.531, 1.529, 0.298],
        [-0.284, 1.667, 0.205],
        [0.000, 1.703, 0.172],
        [0.284, 1.667, 0.205],
        [0.531, 1.529, 0.298],
        [0.748, 1.349, 0.383],
        [0.919, 1.127, 0.447],
        [1.022, 0.872, 0.479],
        [1.074, 0.599, 0.485],
        [1.105, 0.322, 0.497],
        [1.115, 0.043, 0.518],
        [-0.921, -0.170, 0.235],
        [-0.780, -0.291, 0.155],
        [-0.582, -0.325, 0.088],
        [-0.378, -0.299, 0.035],
        [-0.187, -0.225, 0.000],
        [0.187, -0.225, 0.000],
        [0.378, -0.299, 0.035],
        [0.582, -0.325, 0.088],
        [0.780, -0.291, 0.155],
        [0.921, -0.170, 0.235],
        [0.000, 0.000, 0.000],
        [0.000, 0.181, -0.045],
        [0.000, 0.360, -0.098],
        [0.000, 0.544, -0.147],
        [-0.230, 0.665, -0.002],
        [-0.118, 0.701, -0.029],
        [0.000, 0.734, -0.044],
        [0.118, 0.701, -0.029],
        [0.230, 0.665, -0.002],
        [-0.695, 0.028, 0.180],
        [-0.571, -0.040, 0.148],
        [-0.424, -0.037, 0.135],
        [-0.296, 0.055, 0.129],
        [-0.434, 0.077, 0.131],
        [-0.580, 0.075, 0.146],
        [0.296, 0.055, 0.129],
        [0.424, -0.037, 0.135],
        [0.571, -0.040, 0.148],
        [0.695, 0.028, 0.180],
        [0.580, 0.075, 0.146],
        [0.434, 0.077, 0.131],
        [-0.455, 0.989, 0.176],
        [-0.287, 0.930, 0.071],
        [-0.120, 0.900, 0.010],
        [0.000, 0.926, 0.004],
        [0.120, 0.900, 0.010],
        [0.287, 0.930, 0.071],
        [0.455, 0.989, 0.176],
        [0.295, 1.144, 0.102],
        [0.130, 1.211, 0.048],
        [0.000, 1.223, 0.041],
        [-0.130, 1.211, 0.048],
        [-0.295, 1.144, 0.102],
        [-0.388, 0.999, 0.163],
        [-0.122, 0.991, 0.023],
        [0.000, 1.003, 0.016],
        [0.122, 0.991, 0.023],
        [0.388, 0.999, 0.163],
        [0.124, 1.072, 0.045],
        [0.000, 1.085, 0.039],
        [-0.124, 1.072, 0.045],
    ]
)
FACE_TEMPLATE.setflags(write=False)


def _rotation(yaw: float, pitch: float, roll: float) -> np.ndarray:
    """``R_roll @ R_pitch @ R_yaw`` for angles in degrees (conventions in the module notes)."""
    y, p, r = np.radians([yaw, pitch, roll])
    r_yaw = np.array([[np.cos(y), 0, -np.sin(y)], [0, 1, 0], [np.sin(y), 0, np.cos(y)]])
    r_pitch = np.array([[1, 0, 0], [0, np.cos(p), -np.sin(p)], [0, np.sin(p), np.cos(p)]])
    r_roll = np.array([[np.cos(r), -np.sin(r), 0], [np.sin(r), np.cos(r), 0], [0, 0, 1]])
    return r_roll @ r_pitch @ r_yaw


def project_template(
    yaw: float = 0.0,
    pitch: float = 0.0,
    roll: float = 0.0,
    *,
    scale: float = 1.0,
    offset: tuple[float, float] = (0.0, 0.0),
    shape: np.ndarray | None = None,
) -> np.ndarray:
    """The 2-D landmarks of a face shape seen in a given pose (scaled orthographic camera).

    Parameters
    ----------
    yaw, pitch, roll : float, default=0
        Degrees, conventions as in the module notes.
    scale : float, default=1
        Pixels per template unit (the inter-ocular distance in pixels).
    offset : (float, float), default=(0, 0)
        Image position of the template's origin (the nose root).
    shape : ndarray of shape (68, 3), optional
        A 3-D face (e.g. the template with the mouth opened); default
        :data:`FACE_TEMPLATE`.

    Returns
    -------
    ndarray of shape (68, 2)
    """
    shape = FACE_TEMPLATE if shape is None else np.asarray(shape, dtype=np.float64)
    if shape.shape != (N_LANDMARKS, 3):
        raise ValueError(f"shape must be ({N_LANDMARKS}, 3), got {shape.shape}")
    camera = shape @ _rotation(yaw, pitch, roll).T
    return scale * camera[:, :2] + np.asarray(offset, dtype=np.float64)


def _check_points(points) -> np.ndarray:
    points = np.asarray(points, dtype=np.float64)
    if points.ndim == 2:
        points = points[None]
    if points.ndim != 3 or points.shape[1:] != (N_LANDMARKS, 2):
        raise ValueError(f"points must have shape (n, {N_LANDMARKS}, 2), got {points.shape}")
    return points


def fit_pose(points) -> dict[str, np.ndarray]:
    """Fit the template to each face's nose and eye-corner landmarks.

    The affine least-squares map from the template's rigid points to the image is
    projected onto the nearest scaled rotation (its singular values averaged).

    Parameters
    ----------
    points : array-like of shape (n, 68, 2) or (68, 2)
        Landmark ``(x, y)`` pixel coordinates, dlib's order.

    Returns
    -------
    dict of ndarray
        ``yaw``, ``pitch``, ``roll`` (degrees, shape (n,)), ``scale`` (pixels per template
        unit), ``rotation`` (n, 3, 3) and ``fit_error`` (RMS distance of the rigid points
        from the fitted template, in template units). NaN for faces with missing points.
    """
    points = _check_points(points)
    n = len(points)
    ok = np.isfinite(points).all(axis=(1, 2))
    out = {k: np.full(n, np.nan) for k in ("yaw", "pitch", "roll", "scale", "fit_error")}
    out["rotation"] = np.full((n, 3, 3), np.nan)
    if not ok.any():
        return out
    image = points[ok][:, _RIGID]
    image = image - image.mean(axis=1, keepdims=True)
    model = FACE_TEMPLATE[_RIGID] - FACE_TEMPLATE[_RIGID].mean(axis=0)
    affine = np.einsum("nki,kj->nij", image, model) @ np.linalg.inv(model.T @ model)  # (m, 2, 3)
    U, singular, Vt = np.linalg.svd(affine, full_matrices=False)
    rows = U @ Vt
    scale = singular.mean(axis=1)
    rotation = np.concatenate([rows, np.cross(rows[:, 0], rows[:, 1])[:, None]], axis=1)
    residual = image - scale[:, None, None] * np.einsum("kj,nij->nki", model, rows)
    out["fit_error"][ok] = np.sqrt((residual**2).sum(axis=2).mean(axis=1)) / scale
    out["scale"][ok] = scale
    out["rotation"][ok] = rotation
    out["pitch"][ok] = np.degrees(np.arcsin(np.clip(rotation[:, 2, 1], -1.0, 1.0)))
    out["yaw"][ok] = np.degrees(np.arctan2(rotation[:, 2, 0], rotation[:, 2, 2]))
    out["roll"][ok] = np.degrees(np.arctan2(-rotation[:, 0, 1], rotation[:, 1, 1]))
    return out


def _distance(points: np.ndarray, a: int, b: int) -> np.ndarray:
    return np.linalg.norm(points[:, a] - points[:, b], axis=1)


def landmark_targets(points) -> pd.DataFrame:
    """Head pose and expression of each face from its 68 landmarks.

    Lengths are measured in the fitted face frame: a horizontal length is divided by
    the scale and by the foreshortening of the template's x axis, a vertical one by that
    of its y axis, so neither face size nor head pose changes them.

    Parameters
    ----------
    points : array-like of shape (n, 68, 2) or (68, 2)
        Landmark ``(x, y)`` pixel coordinates, dlib's order; rows with a NaN give NaN.

    Returns
    -------
    DataFrame
        Columns :data:`LANDMARK_TARGETS` and ``fit_error``:

        - ``yaw``, ``pitch``, ``roll``: degrees (:func:`fit_pose`);
        - ``mouth_open``: mean gap between the inner lips (3 pairs), inter-ocular units;
        - ``mouth_width``: distance between the mouth corners, inter-ocular units;
        - ``eye_open``: eye aspect ratio, mean lid gap over eye width, both eyes averaged
          (about 0.3 open, under 0.15 closed);
        - ``fit_error``: see :func:`fit_pose` (a quality flag, not a target).
    """
    points = _check_points(points)
    pose = fit_pose(points)
    rotation = pose["rotation"]
    along_x = pose["scale"] * np.linalg.norm(rotation[:, :2, 0], axis=1)  # pixels per unit along the face's x
    along_y = pose["scale"] * np.linalg.norm(rotation[:, :2, 1], axis=1)
    mouth_width = _distance(points, *_MOUTH_CORNERS) / along_x
    mouth_open = np.mean([_distance(points, a, b) for a, b in _INNER_LIP_PAIRS], axis=0) / along_y
    eye_ratios = []
    for corners, lids in _EYES:
        gap = np.mean([_distance(points, a, b) for a, b in lids], axis=0) / along_y
        eye_ratios.append(gap / (_distance(points, *corners) / along_x))
    return pd.DataFrame(
        {
            "yaw": pose["yaw"],
            "pitch": pose["pitch"],
            "roll": pose["roll"],
            "mouth_open": mouth_open,
            "mouth_width": mouth_width,
            "eye_open": np.mean(eye_ratios, axis=0),
            "fit_error": pose["fit_error"],
        }
    )
