"""Landmark targets of a UTKFace folder, and how much of each the sensitive attributes explain.

Computes head pose and expression targets (bafo_pipeline.data.landmarks) for every image
of the folder (cached by content hash), optionally writes them to a Parquet file
(``--out``: content hash, file name, targets, quality columns; file names spell out the
labels, so keep that file private), and prints JSON describing the targets on the
de-duplicated data set (the loader's default, conflicting duplicates dropped):

- a mirror check: the targets of 1000 mirrored images against the originals' (yaw and roll
  change sign), which bounds how reliably each target is measured;
- a fixed-box check: 1000 images where the detector found a face, measured again from the
  fixed box of an aligned crop (the fallback for faces the detector misses);
- a synthetic check: 400 synthetic faces of known tilt and smile, drawn at 128 px;
- how landmarks were found (detector or the aligned-crop fixed box), overall and per group;
- per target: its spread, its correlation with age, the female-male difference (in
  standard deviations), and the share of its variance (R², 5-fold cross-fitted, so
  out-of-sample) explained by each sensitive attribute alone and by all three together,
  linearly (one-hot, age in decile bands: the residualisation of
  bafo_pipeline.audits.utility) and by gradient boosting (age as a number).

    python benchmarks/landmark_labels.py --utkface ../shared/data/utkface/UTKFace \\
        --cache .cache/utkface_landmark_points.parquet --out .cache/utkface_landmarks.parquet
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.ensemble import HistGradientBoostingRegressor
from sklearn.model_selection import KFold, cross_val_predict

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _machine import machine  # noqa: E402

from bafo_pipeline.audits.utility import residualize_targets  # noqa: E402
from bafo_pipeline.data import scan_utkface  # noqa: E402
from bafo_pipeline.data.landmarks import LANDMARK_TARGETS, landmark_table  # noqa: E402
from bafo_pipeline._utils import atomic_write_path  # noqa: E402

SENSITIVE = ("age", "gender", "ethnicity")
AGE_BANDS = (0, 3, 13, 20, 30, 45, 60, 200)


def _r2(y: np.ndarray, predicted: np.ndarray) -> float:
    return float(1.0 - np.mean((y - predicted) ** 2) / np.var(y))


def explained(targets: pd.DataFrame, sensitive: pd.DataFrame, seed: int) -> dict:
    """Out-of-sample R² of each target from the sensitive attributes (linear per attribute and all; GBDT all)."""
    out: dict = {name: {} for name in targets.columns}
    for columns in [["age"], ["gender"], ["ethnicity"], list(SENSITIVE)]:
        residuals, _ = residualize_targets(targets, sensitive[columns], random_state=seed)
        key = "+".join(columns) if len(columns) > 1 else columns[0]
        for name in targets.columns:
            out[name][f"linear_r2[{key}]"] = _r2(targets[name].to_numpy(), targets[name].to_numpy() - residuals[name].to_numpy())
    X = pd.DataFrame(
        {
            "age": sensitive["age"].astype(float),
            "gender": (sensitive["gender"] == "female").astype(float),
            **{f"eth_{e}": (sensitive["ethnicity"] == e).astype(float) for e in sorted(sensitive["ethnicity"].unique())},
        }
    ).to_numpy()
    folds = KFold(5, shuffle=True, random_state=seed)
    for name in targets.columns:
        y = targets[name].to_numpy()
        model = HistGradientBoostingRegressor(max_iter=200, learning_rate=0.1, random_state=seed)
        out[name]["gbdt_r2[age+gender+ethnicity]"] = _r2(y, cross_val_predict(model, X, y, cv=folds))
    return out


def describe(targets: pd.DataFrame, sensitive: pd.DataFrame) -> dict:
    out = {}
    female = (sensitive["gender"] == "female").to_numpy()
    for name in targets.columns:
        y = targets[name].to_numpy()
        sd = y.std()
        out[name] = {
            "mean": float(y.mean()),
            "sd": float(sd),
            "percentiles_1_50_99": np.percentile(y, [1, 50, 99]).round(4).tolist(),
            "pearson_r_age": float(np.corrcoef(y, sensitive["age"].astype(float))[0, 1]),
            "female_minus_male_sd": float((y[female].mean() - y[~female].mean()) / sd),
            "mean_by_ethnicity": {e: float(y[(sensitive["ethnicity"] == e).to_numpy()].mean()) for e in sorted(sensitive["ethnicity"].unique())},
            "mean_by_age_band": {
                f"{lo}-{hi - 1}": float(y[((sensitive["age"] >= lo) & (sensitive["age"] < hi)).to_numpy()].mean())
                for lo, hi in zip(AGE_BANDS[:-1], AGE_BANDS[1:])
            },
        }
    return out


def mirror_check(paths: list[str], targets: pd.DataFrame, n: int, seed: int) -> dict:
    """Targets of mirrored images against the originals': a test-retest check of the whole path.

    Mirroring flips the sign of yaw and roll and leaves the rest; the detector and the
    landmark model see a new image, so the agreement bounds how reliable each target is.
    """
    from bafo_pipeline.data import decode_image

    rng = np.random.default_rng(seed)
    pick = rng.choice(len(paths), size=min(n, len(paths)), replace=False)
    mirrored = [decode_image(paths[i], (200, 200))[:, ::-1] for i in pick]
    again = landmark_table(mirrored, n_jobs=2)
    out = {"n": int(len(pick))}
    for name in LANDMARK_TARGETS:
        sign = -1.0 if name in ("yaw", "roll") else 1.0
        a, b = targets[name].to_numpy()[pick], sign * again[name].to_numpy()
        out[name] = {
            "pearson_r": float(np.corrcoef(a, b)[0, 1]),
            "mean_abs_difference_in_sd": float(np.mean(np.abs(a - b)) / targets[name].std()),
        }
    return out


def fixed_box_check(paths: list[str], targets: pd.DataFrame, n: int, seed: int) -> dict:
    """Targets from the fixed box against the detector's, on images where the detector found a face.

    Says how far the fallback used for the faces the detector misses can be trusted.
    """
    detected = np.flatnonzero((targets["detection"] == "detector").to_numpy())
    pick = np.random.default_rng(seed + 1).choice(detected, size=min(n, len(detected)), replace=False)
    boxed = landmark_table([paths[i] for i in pick], detect=False, n_jobs=2)
    out = {"n": int(len(pick))}
    for name in LANDMARK_TARGETS:
        a, b = targets[name].to_numpy()[pick], boxed[name].to_numpy()
        out[name] = {
            "pearson_r": float(np.corrcoef(a, b)[0, 1]),
            "mean_abs_difference_in_sd": float(np.mean(np.abs(a - b)) / targets[name].std()),
        }
    out["fit_error_median"] = float(boxed["fit_error"].median())
    return out


def synthetic_check(n: int, seed: int) -> dict:
    """Targets of synthetic faces (128 px, dlib upsampling once) against their drawn tilt and smile."""
    from bafo_pipeline.data import make_synthetic_faces

    faces = make_synthetic_faces(n, 128, random_state=seed)
    found = landmark_table(list(faces.images), upsample=1, n_jobs=2)
    detected = (found["detection"] == "detector").to_numpy()
    truth, found = faces.attributes[detected], found[detected]
    smile = truth["smile"].to_numpy() == 1
    out = {
        "n": n,
        "detector_share": float(detected.mean()),
        "roll_vs_tilt": {
            "pearson_r": float(np.corrcoef(truth["tilt"], found["roll"])[0, 1]),
            "slope": float(np.polyfit(truth["tilt"], found["roll"], 1)[0]),
        },
        "yaw_abs_median_deg": float(found["yaw"].abs().median()),
    }
    for name in ("mouth_open", "mouth_width", "eye_open"):
        values = found[name].to_numpy()
        out[name] = {
            "median_smile": float(np.median(values[smile])),
            "median_no_smile": float(np.median(values[~smile])),
            "auc_smile": float((values[smile][:, None] > values[~smile][None, :]).mean()),
        }
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--utkface", required=True)
    parser.add_argument("--cache", default=".cache/utkface_landmark_points.parquet", help="landmark cache (Parquet)")
    parser.add_argument("--out", help="write content hash, file name, targets and quality columns here (Parquet)")
    parser.add_argument("--n-jobs", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--mirror-check", type=int, default=1000, help="images re-measured mirrored (0: skip)")
    parser.add_argument("--fixed-box-check", type=int, default=1000, help="detected images re-measured with the fixed box (0: skip)")
    parser.add_argument("--synthetic-check", type=int, default=400, help="synthetic faces of known tilt and smile (0: skip)")
    args = parser.parse_args()

    started = time.perf_counter()
    table, report = scan_utkface(args.utkface, dedupe="none")
    landmarks = landmark_table(
        list(table["path"]), content_hashes=list(table["content_hash"]), cache=args.cache, n_jobs=args.n_jobs, verbose=True
    )
    landmark_seconds = time.perf_counter() - started
    every_file = pd.concat(
        [landmarks[["content_hash"]], table["path"].map(os.path.basename).rename("file_name"), landmarks.drop(columns="content_hash")],
        axis=1,
    )
    if args.out:
        with atomic_write_path(args.out, overwrite=True) as tmp:
            every_file.to_parquet(tmp, index=False)

    kept, _ = scan_utkface(args.utkface)  # de-duplicated as the loader does (conflicting labels dropped)
    data = every_file.drop_duplicates("content_hash").set_index("content_hash").loc[kept["content_hash"]].reset_index()
    sensitive = kept[list(SENSITIVE)].reset_index(drop=True)
    usable = (data["detection"] != "unreadable").to_numpy()
    targets = data.loc[usable, list(LANDMARK_TARGETS)].reset_index(drop=True)
    sensitive_usable = sensitive[usable].reset_index(drop=True)

    fixed = (data["detection"] == "fixed_box").to_numpy()
    age_band = pd.cut(sensitive["age"], AGE_BANDS, right=False, labels=[f"{lo}-{hi - 1}" for lo, hi in zip(AGE_BANDS[:-1], AGE_BANDS[1:])])
    detection = {
        "files": int(len(every_file)),
        "files_by_detection": every_file["detection"].value_counts().to_dict(),
        "deduplicated_images": int(len(data)),
        "fixed_box_share": float(fixed.mean()),
        "fixed_box_share_by_gender": pd.Series(fixed).groupby(sensitive["gender"]).mean().to_dict(),
        "fixed_box_share_by_ethnicity": pd.Series(fixed).groupby(sensitive["ethnicity"]).mean().to_dict(),
        "fixed_box_share_by_age_band": pd.Series(fixed).groupby(age_band, observed=True).mean().to_dict(),
        "fit_error_median_by_detection": data.groupby("detection", observed=True)["fit_error"].median().to_dict(),
    }
    per_target = describe(targets, sensitive_usable)
    for name, values in explained(targets, sensitive_usable, args.seed).items():
        per_target[name].update(values)
    result = {
        "benchmark": "landmark_labels",
        "command": " ".join(["python", *sys.argv]),
        "machine": machine(),
        "landmark_seconds_incl_cache": landmark_seconds,
        "detection": detection,
        "targets": per_target,
        "fixed_box_check": fixed_box_check(list(table["path"]), landmarks, args.fixed_box_check, args.seed)
        if args.fixed_box_check
        else None,
        "synthetic_check": synthetic_check(args.synthetic_check, args.seed) if args.synthetic_check else None,
        "mirror_check": mirror_check(list(table["path"]), landmarks, args.mirror_check, args.seed) if args.mirror_check else None,
    }
    print(json.dumps(result, indent=1, default=float))


if __name__ == "__main__":
    main()
