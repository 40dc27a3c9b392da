"""What ``covariance_dims`` buys and costs on synthetic faces, where non-sensitive attributes are known.

One encoder is trained on synthetic faces (whose sensitive and non-sensitive cues are
independent by construction); each concealment variant is fitted on its training
latents. A data-rich attacker (the audit's MLP and gradient-boosting probes, trained
on all training latents, scored on the held-out ones) measures both what leaks of the
sensitive attributes and what downstream models can still learn of the non-sensitive
ones; PSNR is the held-out reconstruction with the true labels. Prints JSON.

    python benchmarks/covariance_erasure.py [--faces 8000] [--epochs 8] [--variants none,linear,cov4,cov8,full,full-cov4]

The ``*-dec6`` variants fine-tune the decoder on the concealed latents (``decoder_epochs=6``):
same latents, so the same leakage and utility; only the reconstruction changes.
"""

from __future__ import annotations

import argparse
import copy
import sys
import time
from pathlib import Path

import numpy as np
import torch
from sklearn.metrics import balanced_accuracy_score, r2_score

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _machine import emit, machine  # noqa: E402

SENSITIVE = ("gender", "ethnicity", "age")
NON_SENSITIVE = ("smile", "glasses", "hair_style", "background", "tilt")
CONTINUOUS = ("age", "background", "tilt")
VARIANTS = {  # name -> estimator parameters
    "none": {"concealment": "none"},
    "linear": {"concealment": "linear", "decoder_epochs": 0},
    "cov4": {"concealment": "linear", "covariance_dims": 4, "decoder_epochs": 0},
    "cov8": {"concealment": "linear", "covariance_dims": 8, "decoder_epochs": 0},
    "full": {"concealment": "full", "decoder_epochs": 0},
    "full-cov4": {"concealment": "full", "covariance_dims": 4, "decoder_epochs": 0},
    "linear-dec6": {"concealment": "linear", "decoder_epochs": 6},
    "full-dec6": {"concealment": "full", "decoder_epochs": 6},
}


def best_probe_score(Z_train, Z_test, y_train, y_test, continuous: bool) -> dict:
    """The better of the MLP and GBDT probes: R² for continuous targets, balanced accuracy otherwise."""
    from bafo_pipeline.audits import make_probe

    scores = {}
    for name in ("mlp", "gbdt"):
        probe = make_probe(name, "regression" if continuous else "classification", random_state=0, device="cpu")
        probe.fit(Z_train, y_train.astype(float) if continuous else y_train)
        predicted = probe.predict(Z_test)
        scores[name] = float(r2_score(y_test, predicted) if continuous else balanced_accuracy_score(y_test, predicted))
    return {"best": max(scores.values()), "by_probe": scores}


def psnr(images: np.ndarray, decoded: np.ndarray) -> float:
    mse = ((images.astype(float) - decoded.astype(float)) ** 2).reshape(len(images), -1).mean(axis=1)
    return float((10 * np.log10(255.0**2 / np.maximum(mse, 1e-12))).mean())


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--faces", type=int, default=8000)
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--variants", default="none,linear,cov4,cov8,full,full-cov4")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", help="Also write the JSON here.")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    from bafo_pipeline import BAFOTransformer, make_synthetic_faces

    started = time.perf_counter()
    faces = make_synthetic_faces(args.faces, random_state=11)
    train, test = faces.split(0.25)
    base = BAFOTransformer(epochs=args.epochs, concealment="none", precision="float32", device="cpu", random_state=0)
    base.fit(train.images, sensitive_features=train.sensitive_features)
    results = {}
    for name in args.variants.split(","):
        model = copy.deepcopy(base).set_params(**VARIANTS[name])
        t0 = time.perf_counter()
        if model.concealment != "none":
            model.fit_concealment(train.images, sensitive_features=train.sensitive_features)
        fit_seconds = time.perf_counter() - t0
        Z_train, Z_test = model.transform(train.images), model.transform(test.images)
        decoded = model.inverse_transform(Z_test, sensitive_features=test.sensitive_features)
        scores = {
            attr: best_probe_score(Z_train, Z_test, train.attributes[attr].to_numpy(), test.attributes[attr].to_numpy(),
                                   attr in CONTINUOUS)
            for attr in SENSITIVE + NON_SENSITIVE
        }
        results[name] = {
            "params": VARIANTS[name],
            "psnr_db": psnr(test.images, decoded),
            "leakage": {a: scores[a] for a in SENSITIVE},
            "utility": {a: scores[a] for a in NON_SENSITIVE},
            "fit_concealment_seconds": fit_seconds,
        }
        print(name, {k: round(v["best"], 3) for k, v in scores.items()}, f"psnr {results[name]['psnr_db']:.2f}",
              file=sys.stderr, flush=True)
    result = {
        "benchmark": "covariance_erasure",
        "metrics": "best of MLP and GBDT probes trained on all training latents: balanced accuracy "
                   "(categorical; chance 1/classes) or R² (age, background, tilt; chance 0)",
        "settings": {"faces": args.faces, "test_fraction": 0.25, "epochs": args.epochs, "latent_dim": base.latent_dim},
        "variants": results,
        "wall_seconds": time.perf_counter() - started,
        "machine": machine(),
    }
    return emit(result, args.out)


if __name__ == "__main__":
    main()
