"""Learn the 3-D face template of bafo_pipeline.data.face_geometry from 2-D landmarks.

Rigid factorisation (Tomasi & Kanade, 1992) with the orthographic metric upgrade: the
centred 2-D landmarks of many faces, seen in different poses, are stacked into a
``2N x 68`` matrix whose best rank-3 approximation is (pose rows) x (3-D mean shape),
up to a 3x3 matrix that the "rows are orthogonal and of equal length" constraints fix
(up to a rotation and a mirror image). The shape is then turned to face the camera (the
average face of the data defines pitch 0), put nose-in-front, made left-right symmetric
and scaled to an inter-ocular distance of 1. No external 3-D model is used.

Input: a landmark cache written by ``bafo_pipeline.data.landmarks.landmark_table``
(e.g. of the UTKFace folder). Output: JSON with the template (68 x 3, rounded) and the
fit diagnostics; ``--python`` prints the literal pasted into face_geometry.py.

    python benchmarks/face_template.py --points /work/cache/utkface_landmark_points.parquet
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _machine import machine  # noqa: E402

N = 68
# dlib's 68-point mirror pairs (0-based); the nose bridge 27-30, 33, 51, 57, 62, 66 and
# the chin 8 map onto themselves.
MIRROR = np.arange(N)
for a, b in [
    *[(i, 16 - i) for i in range(8)],
    (17, 26), (18, 25), (19, 24), (20, 23), (21, 22),
    (31, 35), (32, 34),
    (36, 45), (37, 44), (38, 43), (39, 42), (40, 47), (41, 46),
    (48, 54), (49, 53), (50, 52), (55, 59), (56, 58),
    (60, 64), (61, 63), (65, 67),
]:
    MIRROR[a], MIRROR[b] = b, a


def _gram_coefficients(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Coefficients of ``a Q b^T`` in the 6 unknowns of a symmetric 3x3 ``Q``."""
    return np.stack(
        [
            a[:, 0] * b[:, 0],
            a[:, 0] * b[:, 1] + a[:, 1] * b[:, 0],
            a[:, 0] * b[:, 2] + a[:, 2] * b[:, 0],
            a[:, 1] * b[:, 1],
            a[:, 1] * b[:, 2] + a[:, 2] * b[:, 1],
            a[:, 2] * b[:, 2],
        ],
        axis=1,
    )


def factorise(points: np.ndarray) -> tuple[np.ndarray, dict]:
    """3-D shape (3, 68) from 2-D landmarks (n, 68, 2) by rigid factorisation."""
    centred = points - points.mean(axis=1, keepdims=True)
    scale = np.sqrt((centred**2).sum(axis=(1, 2)) / N)
    centred = centred / scale[:, None, None]  # every face the same size: equal weight
    W = centred.transpose(0, 2, 1).reshape(-1, N)  # rows: x of face 0, y of face 0, x of face 1 ...
    U, sv, Vt = np.linalg.svd(W, full_matrices=False)
    motion = U[:, :3] * sv[:3]
    shape = Vt[:3]
    m, n = motion[0::2], motion[1::2]
    G = np.vstack([_gram_coefficients(m, m) - _gram_coefficients(n, n), _gram_coefficients(m, n)])
    q = np.linalg.svd(G, full_matrices=False)[2][-1]  # the null direction of the metric constraints
    Q = np.array([[q[0], q[1], q[2]], [q[1], q[3], q[4]], [q[2], q[4], q[5]]])
    if np.trace(Q) < 0:
        Q = -Q
    evals, evecs = np.linalg.eigh(Q)
    if evals.min() <= 0:
        raise RuntimeError(f"metric upgrade failed: Q has eigenvalues {evals}")
    A = evecs * np.sqrt(evals)
    diagnostics = {
        "singular_values_share": (sv[:6] ** 2 / (sv**2).sum()).round(5).tolist(),
        "metric_eigenvalues": evals.tolist(),
    }
    return np.linalg.solve(A, shape), diagnostics


def canonical(shape: np.ndarray, mean_2d: np.ndarray) -> np.ndarray:
    """Turn ``shape`` so that it projects onto the average 2-D face; nose towards the camera."""
    S = shape - shape.mean(axis=1, keepdims=True)
    target = (mean_2d - mean_2d.mean(axis=0)).T  # (2, 68)
    M = target @ np.linalg.pinv(S)
    U, _, Vt = np.linalg.svd(M, full_matrices=False)
    R2 = U @ Vt
    R = np.vstack([R2, np.cross(R2[0], R2[1])])
    S = R @ S
    eye_corners = S[2, [36, 39, 42, 45]].mean()
    if S[2, 30] > eye_corners:  # camera z points into the scene: the nose tip must be nearer
        S[2] = -S[2]
    return S


def symmetric(shape: np.ndarray) -> np.ndarray:
    """Average the shape with its mirror image (x -> -x, points swapped); midline at x = 0."""
    S = shape.copy()
    S[0] -= S[0, MIRROR == np.arange(N)].mean()
    mirrored = S[:, MIRROR] * np.array([[-1.0], [1.0], [1.0]])
    return (S + mirrored) / 2


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--points", required=True, help="landmark cache (Parquet) of landmark_table")
    parser.add_argument("--python", action="store_true", help="print the template as a Python literal")
    args = parser.parse_args()

    table = pd.read_parquet(args.points)
    table = table[table["detection"] == "detector"]
    columns = [f"{axis}{i:02d}" for i in range(N) for axis in ("x", "y")]
    points = table[columns].to_numpy(np.float64).reshape(-1, N, 2)
    shape, diagnostics = factorise(points)
    centred = points - points.mean(axis=1, keepdims=True)
    centred /= np.sqrt((centred**2).sum(axis=(1, 2)) / N)[:, None, None]
    S = symmetric(canonical(shape, centred.mean(axis=0)))
    eye_right, eye_left = S[:, 36:42].mean(axis=1), S[:, 42:48].mean(axis=1)
    S = (S - S[:, [27]]) / np.linalg.norm(eye_left - eye_right)  # origin at the nose root
    template = S.T.round(3)
    result = {
        "benchmark": "face_template",
        "command": " ".join(["python", *sys.argv]),
        "machine": machine(),
        "n_faces": int(len(points)),
        "diagnostics": diagnostics,
        "nose_tip_depth_before_eye_corners": float(template[[36, 39, 42, 45], 2].mean() - template[30, 2]),
        "template": template.tolist(),
    }
    if args.python:
        rows = ",\n".join(f"    [{x:.3f}, {y:.3f}, {z:.3f}]" for x, y, z in template)
        print(f"_TEMPLATE = np.array(\n  [\n{rows},\n  ]\n)")
    else:
        print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
