"""Why the demo's unconcealed encoder loses smile and glasses, and which settings keep them.

Trains the unconcealed encoder (``concealment="none"``) of ``bafo run``'s demo on its data
(synthetic faces, 3000 drawn, split by content hash, 15% held out) under each variant of
the training settings, and measures on the held-out split what ``bafo run`` prints as
"kept": per non-sensitive attribute, the linear probe's chance-adjusted score (5-fold
cross-validated, the audit's machinery), next to pixel PCA-64's. Also: the share of
pixels' score kept (the goal: >= 0.8 on every attribute), held-out PSNR of the
reconstruction with the true labels, what a linear probe reads of the sensitive attributes
(the unconcealed encoder is not meant to hide them), training seconds and optimiser steps.

    python benchmarks/base_model_utility.py --variants baseline,beta0.1,batch64 [--seeds 0,1]

Prints JSON (one record per variant and seed); ``--list`` shows the variants.
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

from bafo_pipeline.audits import audit_leakage  # noqa: E402
from bafo_pipeline.data import SYNTHETIC_NON_SENSITIVE, make_synthetic_faces  # noqa: E402
from bafo_pipeline.transformers import BAFOTransformer  # noqa: E402

# The settings of `bafo run` before this study (explicit, so variants do not move with the defaults).
DEMO = {"epochs": 10, "batch_size": 256, "learning_rate": 1e-3, "kl_weight": 1.0, "latent_dim": 48}
VARIANTS: dict[str, dict] = {
    "baseline": {},
    "epochs30": {"epochs": 30},
    "batch64": {"batch_size": 64},
    "batch32": {"batch_size": 32},
    "lr3e-3": {"learning_rate": 3e-3},
    "beta0.3": {"kl_weight": 0.3},
    "beta0.1": {"kl_weight": 0.1},
    "beta0.03": {"kl_weight": 0.03},
    "beta0.01": {"kl_weight": 0.01},
    "latent96": {"latent_dim": 96},
    "latent24": {"latent_dim": 24},
    "wide": {"widths": (64, 128, 256)},
    "samples6000": {"samples": 6000},
    "image64": {"image_size": 64},
    "batch64-epochs20": {"batch_size": 64, "epochs": 20},
    "batch64-beta0.1": {"batch_size": 64, "kl_weight": 0.1},
    "batch64-beta0.3": {"batch_size": 64, "kl_weight": 0.3},
    "batch64-epochs20-beta0.3": {"batch_size": 64, "epochs": 20, "kl_weight": 0.3},
    "batch64-epochs20-beta0.1": {"batch_size": 64, "epochs": 20, "kl_weight": 0.1},
    "batch32-epochs20": {"batch_size": 32, "epochs": 20},
    "epochs30-beta0.1": {"epochs": 30, "kl_weight": 0.1},
    "batch64-epochs15-beta0.1": {"batch_size": 64, "epochs": 15, "kl_weight": 0.1},
    "batch64-epochs30": {"batch_size": 64, "epochs": 30},
    "batch32-epochs30": {"batch_size": 32, "epochs": 30},
    "batch16": {"batch_size": 16},
    "batch16-epochs20": {"batch_size": 16, "epochs": 20},
    "batch32-lr2e-3": {"batch_size": 32, "learning_rate": 2e-3},
    "batch32-epochs20-beta0.3": {"batch_size": 32, "epochs": 20, "kl_weight": 0.3},
    "batch32-epochs20-wide": {"batch_size": 32, "epochs": 20, "widths": (64, 128, 256)},
    "batch32-epochs30-lr2e-3": {"batch_size": 32, "epochs": 30, "learning_rate": 2e-3},
    "batch32-epochs40": {"batch_size": 32, "epochs": 40},
    "batch32-epochs15-samples6000": {"batch_size": 32, "epochs": 15, "samples": 6000},
    "batch32-epochs20-lr2e-3": {"batch_size": 32, "epochs": 20, "learning_rate": 2e-3},
    "batch64-epochs30-lr2e-3": {"batch_size": 64, "epochs": 30, "learning_rate": 2e-3},
    "batch32-epochs30-lr3e-3": {"batch_size": 32, "epochs": 30, "learning_rate": 3e-3},
}


def kept(representations: dict, labels, seed: int, probes=("prior", "linear")) -> dict:
    """``bafo run``'s "kept" measure: linear probe, chance-adjusted, 5-fold CV on the held-out split.

    With more probes: the best of them (what a non-linear downstream model gets).
    """
    table = audit_leakage(
        representations, labels, attributes=list(labels.columns), probes=probes, bands={},
        n_bootstrap=0, n_permutations=0, random_state=seed, device="cpu",
    ).worst_case(with_verdict=False)
    return {(r.representation, r.attribute): float(r.leakage) for r in table.itertuples()}


def psnr(images: np.ndarray, decoded: np.ndarray) -> float:
    scale = 255.0 if decoded.dtype == np.uint8 else 1.0
    mse = np.mean((images.astype(np.float64) / 255.0 - decoded.astype(np.float64) / scale) ** 2)
    return float(10 * np.log10(1.0 / mse))


def run_variant(name: str, seed: int, threads: int, nonlinear: bool = False) -> dict:
    params = {**DEMO, **VARIANTS[name]}
    samples = params.pop("samples", 3000)
    image_size = params.pop("image_size", 56)
    faces = make_synthetic_faces(samples, image_size, random_state=seed)
    train, test = faces.split(test_fraction=0.15, seed=seed)
    torch.set_num_threads(threads)
    started = time.perf_counter()
    model = BAFOTransformer(concealment="none", decoder_epochs=0, random_state=seed, device="cpu", **params)
    model.fit(train.images, sensitive_features=train.sensitive_features)
    seconds = time.perf_counter() - started
    encoded = model.transform(test.images)
    decoded = model.inverse_transform(encoded, sensitive_features=test.sensitive_features)
    decoded = decoded.reshape(test.images.shape) if decoded.shape != test.images.shape else decoded

    flat = lambda d: d.images.reshape(len(d), -1).astype(np.float32) / 255.0  # noqa: E731
    pixels = PCA(64, random_state=seed).fit(flat(train)).transform(flat(test))
    labels = test.attributes.reset_index(drop=True)
    non_sensitive = kept({"pixels": pixels, "encoder": encoded}, labels[list(SYNTHETIC_NON_SENSITIVE)], seed)
    sensitive = kept({"encoder": encoded}, labels[list(test.sensitive)], seed)
    pixel_scores = {a: non_sensitive[("pixels", a)] for a in SYNTHETIC_NON_SENSITIVE}
    encoder_scores = {a: non_sensitive[("encoder", a)] for a in SYNTHETIC_NON_SENSITIVE}
    share = {a: encoder_scores[a] / pixel_scores[a] for a in SYNTHETIC_NON_SENSITIVE}
    n_train = int(round(len(train) * (1 - model.validation_fraction)))
    extra = {}
    if nonlinear:
        best = kept({"encoder": encoded}, labels[list(SYNTHETIC_NON_SENSITIVE)], seed, ("prior", "linear", "mlp", "gbdt"))
        extra["kept_best_of_linear_mlp_gbdt"] = {a: round(v, 3) for (_, a), v in best.items()}
    return {
        "variant": name,
        "seed": seed,
        "settings": {**params, "samples": samples, "image_size": image_size},
        "optimiser_steps": int(params["epochs"] * np.ceil(n_train / params["batch_size"])),
        "train_seconds": round(seconds, 1),
        "final_train_loss": round(float(model.history_[-1]["loss"]), 2),
        "final_validation_loss": round(float(model.history_[-1].get("validation_loss", np.nan)), 2),
        "heldout_psnr_db": round(psnr(test.images, decoded), 2),
        "kept_linear": {a: round(v, 3) for a, v in encoder_scores.items()},
        "pixels_linear": {a: round(v, 3) for a, v in pixel_scores.items()},
        "share_of_pixels": {a: round(v, 3) for a, v in share.items()},
        "min_share_of_pixels": round(min(share.values()), 3),
        "sensitive_linear": {a: round(v, 3) for (_, a), v in sensitive.items()},
        **extra,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--variants", default="baseline", help="comma-separated names (see --list)")
    parser.add_argument("--seeds", default="0", help="comma-separated data/model seeds")
    parser.add_argument("--threads", type=int, default=2, help="torch threads for training")
    parser.add_argument("--nonlinear", action="store_true", help="also the best of linear, MLP and GBDT probes")
    parser.add_argument("--list", action="store_true")
    args = parser.parse_args()
    if args.list:
        print(json.dumps({k: {**DEMO, **v} for k, v in VARIANTS.items()}, indent=1))
        return
    names = [v for v in args.variants.split(",") if v]
    unknown = [v for v in names if v not in VARIANTS]
    if unknown:
        raise SystemExit(f"unknown variants {unknown}; --list shows them")
    results = []
    for name in names:
        for seed in (int(s) for s in args.seeds.split(",")):
            results.append(run_variant(name, seed, args.threads, args.nonlinear))
            print(json.dumps(results[-1]), file=sys.stderr, flush=True)
    print(json.dumps({"benchmark": "base_model_utility", "command": " ".join(["python", *sys.argv]),
                      "machine": machine(), "results": results}, indent=1))


if __name__ == "__main__":
    main()
