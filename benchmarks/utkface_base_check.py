"""A short UTKFace check of the encoder's training settings: it trains, it reconstructs, what it keeps.

Trains the unconcealed encoder (``concealment="none"``) on UTKFace's training split (content-hash
split, 15% held out) with each setting for the same number of epochs (the same images seen),
and reports per setting: training and validation loss per epoch, held-out PSNR of the
reconstruction with the true labels, seconds, and on the held-out split the landmark targets'
utility (bafo_pipeline.audits.utility: linear and GBDT probes, R², residuals fitted on the
training split) for pixel PCA-64 and the encoder, with the encoder's share of pixels'.
Landmarks come from the cache of ``benchmarks/landmark_labels.py``.

    python benchmarks/utkface_base_check.py --utkface ../shared/data/utkface/UTKFace \\
        --cache .cache/utkface_landmark_points.parquet --epochs 3
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch
from sklearn.decomposition import PCA

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _machine import machine  # noqa: E402

from bafo_pipeline.audits.utility import audit_utility  # noqa: E402
from bafo_pipeline.data import load_utkface  # noqa: E402
from bafo_pipeline.data.landmarks import LANDMARK_TARGETS, dataset_landmarks  # noqa: E402
from bafo_pipeline.transformers import BAFOTransformer  # noqa: E402

SETTINGS = {
    "before (batch 256, lr 1e-3)": {"batch_size": 256, "learning_rate": 1e-3},
    "after (batch 32, lr 2e-3)": {"batch_size": 32, "learning_rate": 2e-3},
}


def psnr(images: np.ndarray, decoded: np.ndarray) -> float:
    scale = 255.0 if decoded.dtype == np.uint8 else 1.0
    mse = np.mean((images.astype(np.float64) / 255.0 - decoded.astype(np.float64) / scale) ** 2)
    return float(10 * np.log10(1.0 / mse))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--utkface", required=True)
    parser.add_argument("--cache", required=True, help="landmark cache (Parquet)")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--limit", type=int, default=None)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    faces = load_utkface(args.utkface, limit=args.limit)
    landmarks = dataset_landmarks(faces, cache=args.cache)
    train, test = faces.split(test_fraction=0.15, seed=args.seed)
    from bafo_pipeline.data import hash_split

    is_test = hash_split(faces.content_hash, test_fraction=0.15, seed=args.seed)
    targets_train = landmarks.loc[~is_test, list(LANDMARK_TARGETS)].reset_index(drop=True)
    targets_test = landmarks.loc[is_test, list(LANDMARK_TARGETS)].reset_index(drop=True)
    flat = lambda d: d.images.reshape(len(d), -1).astype(np.float32) / 255.0  # noqa: E731
    pixels = PCA(64, random_state=args.seed).fit(flat(train)).transform(flat(test))

    results = {}
    for name, params in SETTINGS.items():
        torch.manual_seed(args.seed)
        started = time.perf_counter()
        model = BAFOTransformer(
            concealment="none", decoder_epochs=0, epochs=args.epochs, random_state=args.seed, **params
        ).fit(train.images, sensitive_features=train.sensitive_features)
        seconds = time.perf_counter() - started
        encoded = model.transform(test.images)
        decoded = model.inverse_transform(encoded, sensitive_features=test.sensitive_features)
        utility = audit_utility(
            {"pixels (PCA 64)": pixels, "encoder": encoded},
            targets_test,
            references=["pixels (PCA 64)"],
            sensitive=test.sensitive_features.reset_index(drop=True),
            fit_targets=targets_train,
            fit_sensitive=train.sensitive_features.reset_index(drop=True),
            probes=("prior", "linear", "gbdt"),
            n_bootstrap=200,
            random_state=args.seed,
        )
        shares = utility.shares("best")
        results[name] = {
            "settings": params,
            "train_seconds": round(seconds, 1),
            "loss_per_epoch": [round(float(r["loss"]), 1) for r in model.history_],
            "validation_loss_per_epoch": [round(float(r.get("validation_loss", np.nan)), 1) for r in model.history_],
            "heldout_psnr_db": round(psnr(test.images, decoded), 2),
            "utility_best_probe": [
                {k: (round(v, 3) if isinstance(v, float) else v) for k, v in row.items()}
                for row in shares.to_dict("records")
            ],
        }
        print(name, json.dumps(results[name]), file=sys.stderr, flush=True)
    print(json.dumps({
        "benchmark": "utkface_base_check",
        "command": " ".join(["python", *sys.argv]),
        "machine": machine(),
        "n_train": len(train),
        "n_test": len(test),
        "epochs": args.epochs,
        "explained_by_sensitive_on_train": utility.explained,
        "results": results,
    }, indent=1))


if __name__ == "__main__":
    main()
