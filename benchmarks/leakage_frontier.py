"""The leakage/reconstruction frontier of BAFO's concealment settings on one trained encoder.

Issue 6's measurement. For each concealment variant (``none``: the paper's conditional
VAE posterior mean; ``linear``: closed-form LEACE; ``full``: LEACE, an adversarially
trained refiner, LEACE again, at several adversary weights) the script refits only the
concealment steps on the training split (``fit_concealment``), encodes the held-out
split, audits it with the full probe ladder (linear, MLP, boosted trees, quadratic; 5 folds) for
gender, ethnicity, age and age bands, reconstructs the held-out images with their true
labels through ``inverse_transform`` and scores PSNR against the ``none`` variant.

It writes the numbers to a JSON file (machine, versions and wall time of every step
named), a Pareto plot, and a markdown page rendered from that JSON, so no number is
copied by hand::

    python benchmarks/leakage_frontier.py --model artifacts/utk48 --utkface /path/to/UTKFace
    python benchmarks/leakage_frontier.py --synthetic 600 --json /tmp/f.json \\
        --figure /tmp/f.png --markdown /tmp/f.md          # smoke run, trains a tiny model
    python benchmarks/leakage_frontier.py --render-only   # re-render figure and page from the JSON
    python benchmarks/leakage_frontier.py --merge-from other.json  # add a side-by-side run's variants

Variant syntax (``--variants``, comma-separated): ``none``, ``linear``, ``full:W`` (refiner
adversary weight W, ``--refine-epochs`` epochs), ``full:W:epochs=E``, ``full:W:kl=K`` (refiner
KL weight) and ``full:W:dim=D`` (refiner latent size), combinable; ``cov=C`` (covariance
erasure) and ``dec=E`` (decoder fine-tuning) on ``linear`` and ``full``. Every one of these
is the estimator's own concealment, given as a list of steps (``LinearErasure``,
``LatentRefiner``, ``LinearErasure``; see :func:`concealment_of`). And ``residual`` /
``residual:W``: subtract the labels' least-squares prediction of the latent instead of
erasing directions (exactly invertible at decode time, but ``transform`` then needs the
labels; it is composed here). And ``transport`` / ``transport:cal=F``: the estimator's
``"transport"`` concealment (``ConditionalTransport``, which also needs the labels at transform
time), fitted as ``bafo run`` fits it: on the calibration share ``F`` of the training split
(default ``bafo run``'s 0.7, chosen by content hash as ``bafo run`` chooses it), which is never
shared, so its data-rich attacker is trained on the remaining, shared training rows only.
``--append`` adds variants to an existing JSON (same data, model and audit folds) without
redoing the rest.

Every LEACE-based variant is also decoded a second way, with the erased component's
label-predictable part added back before the decoder from richer label features than the
estimator's own ``erased_label_map_`` uses: same latents, same leakage, another decode-side repair.
"""

from __future__ import annotations

import argparse
import copy
import datetime as dt
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

from bafo_pipeline.attributes import DEFAULT_SENSITIVE
from bafo_pipeline.audits import PROBES
from bafo_pipeline.data.splits import hash_split
from bafo_pipeline.pipeline.workflow import CALIBRATION_FRACTION

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_JSON = ROOT / "docs" / "results" / "leakage_frontier.json"
DEFAULT_FIGURE = ROOT / "docs" / "figures" / "frontier.png"
DEFAULT_MARKDOWN = ROOT / "docs" / "FRONTIER.md"
DEFAULT_VARIANTS = "none,linear,full:0,full:0.1,full:0.3,full:1.0"
ATTRIBUTES = DEFAULT_SENSITIVE
# The audit's ladder without the prior (which reads nothing). Pages measured before a probe joined
# the ladder render from the probes their JSON names (`protocol.probes`).
ATTACK_PROBES = tuple(p for p in PROBES if p != "prior")
LADDER_BEFORE_QUADRATIC = ("linear", "mlp", "gbdt")
PROBE_SHORT_NAMES = {"linear": "lin", "mlp": "MLP", "gbdt": "GBDT", "quadratic": "quad", "knn": "kNN"}
PROBE_LONG_NAMES = {"linear": "linear", "mlp": "MLP", "gbdt": "boosted trees", "quadratic": "quadratic",
                    "knn": "nearest-neighbour"}
# Issue 6's goal, in the audit's natural units (worst case over the attack probes).
GOAL = {
    "gender_max_bacc": 0.60,
    "ethnicity_max_bacc": 0.30,
    "age_min_mae": 13.5,
    "max_psnr_loss_db": 1.0,
}
CHANCE = {"gender": 0.5, "ethnicity": 0.2}
# Issue 12's stricter goals (UTKFace held-out split): per attacker, (attribute, "<=" or ">=", bound).
ISSUE12_GOALS = {
    "data_rich": (("gender", "<=", 0.58), ("ethnicity", "<=", 0.27), ("age", ">=", 14.5)),
    "audit": (("gender", "<=", 0.56), ("ethnicity", "<=", 0.25), ("age", ">=", 15.0)),
}
# Utility: the targets each variant is judged on (issue 12), and the representations shares are of.
PIXELS = "pixels (PCA 64)"
UTILITY_JUDGED = {
    # head yaw, and the part of the expression measures the sensitive attributes do not explain
    "utkface": ("yaw", "mouth_open_residual", "mouth_width_residual", "eye_open_residual"),
    "synthetic": ("smile", "background", "tilt", "hair_style", "glasses"),
}
UTILITY_GOAL_SHARE_OF_NONE = 0.9
DEFAULT_LANDMARKS = "/work/cache/utkface_landmarks.parquet"
# The trained encoder's settings the page names (with the estimator's default where they differ).
MODEL_PARAMS_SHOWN = ("latent_dim", "kl_weight", "epochs", "batch_size", "learning_rate")


# ----------------------------------------------------------------- variants
def parse_variant(spec: str, refine_epochs: int) -> dict:
    """``"full:0.3:kl=4"`` -> ``{"name": ..., "concealment": "full", "adversary_weight": 0.3, ...}``.

    ``linear:cov=8`` and ``full:0.3:cov=8`` set the estimator's ``covariance_dims``;
    ``dec=6`` its ``decoder_epochs``.
    """
    parts = [p.strip() for p in spec.split(":") if p.strip()]
    if not parts or parts[0] not in ("none", "linear", "full", "residual", "transport"):
        raise ValueError(f"variant {spec!r}: must start with none, linear, full, residual or transport")
    kind = parts[0]
    if kind == "transport":
        return parse_transport(spec, parts[1:])
    estimator_options = {"cov": 0, "dec": 0}
    for part in [p for p in parts[1:] if p.partition("=")[0] in estimator_options]:
        estimator_options[part.partition("=")[0]] = int(part.partition("=")[2])
    parts = [p for p in parts if p.partition("=")[0] not in estimator_options]
    covariance_dims, decoder_epochs = estimator_options["cov"], estimator_options["dec"]
    if (covariance_dims or decoder_epochs) and kind not in ("linear", "full"):
        raise ValueError(f"variant {spec!r}: cov= and dec= apply to linear and full only")
    suffix = (f", cov {covariance_dims}" if covariance_dims else "") + (f", dec {decoder_epochs}" if decoder_epochs else "")
    if kind in ("none", "linear"):
        if len(parts) > 1:
            raise ValueError(f"variant {spec!r}: only 'full' and 'residual' take options")
        return {"name": kind + suffix, "spec": spec, "concealment": kind, "labels_at_transform": False,
                "covariance_dims": covariance_dims, "decoder_epochs": decoder_epochs}
    if kind == "full" and len(parts) < 2:
        raise ValueError(f"variant {spec!r}: give the refiner adversary weight, e.g. full:0.3")
    variant = {
        "concealment": kind,
        "spec": spec,
        "adversary_weight": float(parts[1]) if len(parts) > 1 else None,
        "refine_epochs": refine_epochs,
        "refine_kl_weight": None,
        "refine_latent_dim": None,
        "labels_at_transform": kind == "residual",
        "covariance_dims": covariance_dims,
        "decoder_epochs": decoder_epochs,
    }
    for option in parts[2:]:
        key, _, value = option.partition("=")
        if key == "epochs":
            variant["refine_epochs"] = int(value)
        elif key == "kl":
            variant["refine_kl_weight"] = float(value)
        elif key == "dim":
            variant["refine_latent_dim"] = int(value)
        else:
            raise ValueError(f"variant {spec!r}: unknown option {option!r} (epochs=, kl=, dim=)")
    if (covariance_dims or decoder_epochs) and (
        variant["refine_kl_weight"] is not None or variant["refine_latent_dim"] is not None
    ):
        raise ValueError(f"variant {spec!r}: cov= and dec= combine with the estimator's own options only")
    if variant["adversary_weight"] is None:
        variant["name"] = kind
        return variant
    name = f"{kind} adv {variant['adversary_weight']:g}"
    if variant["refine_epochs"] != refine_epochs:
        name += f", {variant['refine_epochs']} ep"
    if variant["refine_kl_weight"] is not None:
        name += f", KL {variant['refine_kl_weight']:g}"
    if variant["refine_latent_dim"] is not None:
        name += f", dim {variant['refine_latent_dim']}"
    variant["name"] = name + suffix
    return variant


def parse_transport(spec: str, options: list[str]) -> dict:
    """``"transport:cal=0.5"`` -> the transport variant fitted on that calibration share of the training split."""
    fraction = CALIBRATION_FRACTION
    for option in options:
        key, _, value = option.partition("=")
        if key != "cal":
            raise ValueError(f"variant {spec!r}: unknown option {option!r} (cal=)")
        fraction = float(value)
    if not 0.0 < fraction < 1.0:
        raise ValueError(f"variant {spec!r}: cal= must be in (0, 1): the calibration rows are not shared")
    name = "transport" if fraction == CALIBRATION_FRACTION else f"transport, cal {fraction:g}"
    return {"name": name, "spec": spec, "concealment": "transport", "labels_at_transform": True,
            "calibration_fraction": fraction, "covariance_dims": 0, "decoder_epochs": 0}


def is_preset(variant: dict) -> bool:
    """True when one of the estimator's named presets (with its own knobs) implements the variant."""
    return variant["concealment"] in ("none", "linear", "transport") or (
        variant["concealment"] == "full"
        and variant["refine_kl_weight"] is None
        and variant["refine_latent_dim"] is None
    )


def concealment_of(variant: dict, params: dict) -> list:
    """The variant as the estimator's ``concealment``: a list of steps (``[]`` for ``none``).

    ``params`` are the trained model's parameters: the refiner trains with its batch size,
    learning rate, adversary steps and validation share, as the ``"full"`` preset does.
    """
    from bafo_pipeline import ConditionalTransport, LatentRefiner, LinearErasure

    if variant["concealment"] == "none":
        return []
    if variant["concealment"] == "transport":
        return [ConditionalTransport()]
    first = LinearErasure(covariance_dims=variant.get("covariance_dims", 0))
    if variant["concealment"] == "linear":
        return [first]
    refiner = LatentRefiner(
        epochs=variant["refine_epochs"],
        adversary_weight=variant["adversary_weight"],
        kl_weight=1.0 if variant["refine_kl_weight"] is None else variant["refine_kl_weight"],
        latent_dim=variant["refine_latent_dim"],
        batch_size=params["batch_size"],
        learning_rate=params["learning_rate"],
        adversary_steps=params["adversary_steps"],
        validation_fraction=params["validation_fraction"],
    )
    return [first, refiner, LinearErasure()]


class LabelRegression:
    """Least-squares prediction of latent coordinates from label features (fitted on the training split).

    Features: the decoder's attribute encoding, age deciles and the audit's age bands
    (one-hot), gender x ethnicity cells (one-hot) and age decile x gender. With an
    intercept and exact least squares, the residuals are uncorrelated with every
    feature on the fitting data, hence with every encoded attribute LEACE erases.
    """

    def __init__(self, schema):
        self.schema = schema

    def _features(self, sensitive: pd.DataFrame) -> np.ndarray:
        c = self.schema.encode(sensitive)
        age = sensitive["age"].to_numpy(dtype=float)
        deciles = np.eye(len(self.age_edges_) + 1)[np.digitize(age, self.age_edges_)]
        bands = np.eye(4)[np.digitize(age, (20.0, 40.0, 60.0))]
        cells = pd.Categorical(
            sensitive["gender"].astype(str) + "|" + sensitive["ethnicity"].astype(str), categories=self.cells_
        )
        cell_onehot = np.eye(len(self.cells_) + 1)[np.where(cells.codes < 0, len(self.cells_), cells.codes)]
        male = (sensitive["gender"].astype(str) == "male").to_numpy(dtype=float)[:, None]
        return np.hstack([c, deciles, bands, cell_onehot, deciles * male])

    def fit(self, sensitive: pd.DataFrame, target: np.ndarray) -> LabelRegression:
        from sklearn.linear_model import LinearRegression

        self.age_edges_ = np.unique(np.quantile(sensitive["age"].to_numpy(dtype=float), np.linspace(0, 1, 11)[1:-1]))
        self.cells_ = sorted(set(sensitive["gender"].astype(str) + "|" + sensitive["ethnicity"].astype(str)))
        features = self._features(sensitive)
        self.ols_ = LinearRegression().fit(features, target)
        centred = target - target.mean(axis=0)
        self.explained_fraction_ = float(
            1 - ((target - self.ols_.predict(features)) ** 2).sum() / max((centred**2).sum(), 1e-12)
        )
        return self

    def predict(self, sensitive: pd.DataFrame) -> np.ndarray:
        return self.ols_.predict(self._features(sensitive)).astype(np.float32)


class ResidualConcealment:
    """Subtract the labels' least-squares prediction of the latent; add it back to decode.

    ``z' = z - g(s) + mean(z)`` with ``g`` a :class:`LabelRegression` fitted on the
    training split: the residual is uncorrelated with the encoded attributes (the
    same linear guarantee as LEACE) but no direction is removed, and decoding with
    the true labels inverts it exactly. The catch: ``transform`` needs the labels.
    With ``adversary_weight`` a refiner is trained on the residuals and its output
    residualised again.
    """

    def __init__(self, base, variant: dict, seed: int):
        self.base = base
        self.variant = variant
        self.seed = seed

    def fit(self, means: np.ndarray, sensitive: pd.DataFrame) -> ResidualConcealment:
        self.first_ = LabelRegression(self.base.schema_).fit(sensitive, means)
        self.centre_ = means.mean(axis=0)
        residual = means - self.first_.predict(sensitive) + self.centre_
        self.refiner_ = self.final_ = None
        if self.variant["adversary_weight"] is not None:
            self.refiner_ = make_refiner(self.base, self.variant, self.seed).fit(residual, sensitive_features=sensitive)
            refined = self.refiner_.transform(residual)
            self.final_ = LabelRegression(self.base.schema_).fit(sensitive, refined)
            self.final_centre_ = refined.mean(axis=0)
        return self

    def transform(self, means: np.ndarray, sensitive: pd.DataFrame) -> np.ndarray:
        Z = means - self.first_.predict(sensitive) + self.centre_
        if self.refiner_ is not None:
            Z = self.refiner_.transform(Z)
            Z = Z - self.final_.predict(sensitive) + self.final_centre_
        return Z.astype(np.float32)

    def inverse(self, Z: np.ndarray, sensitive: pd.DataFrame) -> np.ndarray:
        if self.refiner_ is not None:
            Z = Z + self.final_.predict(sensitive) - self.final_centre_
            Z = self.refiner_.inverse_transform(Z.astype(np.float32), sensitive_features=sensitive)
        return (Z + self.first_.predict(sensitive) - self.centre_).astype(np.float32)


def make_refiner(base, variant: dict, seed: int):
    """The refiner step of ``full`` (a :class:`LatentRefiner`), for the residual chain, seeded as the estimator seeds it."""
    refiner = concealment_of({**variant, "concealment": "full"}, base.get_params())[1]
    return refiner.set_params(device=base.get_params()["device"], random_state=seed)


# -------------------------------------------------------------------- data
def machine_info(device: str, threads: int, audit_threads: int) -> dict:
    import sklearn
    import torch

    from bafo_pipeline._utils import resolve_device

    cpu_model = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as handle:
            names = [line.split(":", 1)[1].strip() for line in handle if line.startswith("model name")]
        cpu_model = names[0] if names else cpu_model
    except OSError:
        pass
    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:
        usable = os.cpu_count()
    try:
        commit = subprocess.run(
            ["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=True
        ).stdout.strip()
        dirty = bool(
            subprocess.run(
                ["git", "-C", str(ROOT), "status", "--porcelain", "--untracked-files=no"],
                capture_output=True,
                text=True,
                check=True,
            ).stdout.strip()
        )
    except (OSError, subprocess.CalledProcessError):
        commit, dirty = None, None
    return {
        "platform": platform.platform(),
        "cpu_model": cpu_model,
        "cpu_count": os.cpu_count(),
        "cpus_usable": usable,
        "load_average_at_start": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
        "python": sys.version.split()[0],
        "torch": torch.__version__,
        "sklearn": sklearn.__version__,
        "numpy": np.__version__,
        "device": str(resolve_device(device)),
        "torch_threads": threads,
        "audit_threads": audit_threads,
        "git_commit": commit,
        "git_dirty": dirty,
    }


def load_real(model_dir: Path, utkface: Path, device: str, limit: int | None = None):
    from bafo_pipeline import BAFOTransformer, load_model, load_utkface
    from bafo_pipeline.transformers import model_fingerprint, read_model_config

    config = read_model_config(model_dir)
    split = config.get("metadata", {}).get("split", {"test_fraction": 0.15, "seed": 0})
    model = load_model(model_dir, device=device)
    data = load_utkface(utkface, limit=limit)
    train, test = data.split(test_fraction=split["test_fraction"], seed=split["seed"])
    info = {
        "source": "utkface",
        "model": str(model_dir),
        "model_fingerprint": model_fingerprint(model_dir),
        "model_params": {k: config["params"][k] for k in MODEL_PARAMS_SHOWN if k in config["params"]},
        "model_params_defaults": {k: v for k, v in BAFOTransformer().get_params().items() if k in MODEL_PARAMS_SHOWN},
        "split": split,
        "n_loaded": len(data),
        "n_train": len(train),
        "n_test": len(test),
    }
    if limit:
        info["limit"] = limit
    info["split_check"] = split_check(model, train, test)
    print(f"split check: {info['split_check']['verdict']}", flush=True)
    return model, train, test, info


def split_check(model, train, test) -> dict:
    """Does the model's age standardisation match the training split's ages (it was fitted on exactly them)?

    The estimator standardises ``age`` with the mean and standard deviation of every image it
    was fitted on, so a model trained on this training split carries that split's mean and
    spread; one that also saw held-out images (or another split) carries others. A match is
    strong evidence, not proof (it does not see a swap of images with equal ages); without a
    full load (``--limit``) the split is a subset and no match is expected.
    """
    age = model.schema_["age"]
    train_age = train.sensitive_features["age"].to_numpy(dtype=float)
    both_age = np.concatenate([train_age, test.sensitive_features["age"].to_numpy(dtype=float)])
    out = {
        "model_age_center": age.center,
        "model_age_scale": age.scale,
        "train_age_mean": float(train_age.mean()),
        "train_age_std": float(train_age.std()),
        "train_and_test_age_mean": float(both_age.mean()),
    }
    out["matches_train"] = bool(
        abs(out["model_age_center"] - out["train_age_mean"]) < 1e-6
        and abs(out["model_age_scale"] - out["train_age_std"]) < 1e-6
    )
    out["verdict"] = (
        f"the model's age centre {age.center:.6f} and scale {age.scale:.6f} "
        + ("equal" if out["matches_train"] else "DO NOT equal")
        + f" the training split's mean {out['train_age_mean']:.6f} and sd {out['train_age_std']:.6f} "
        f"(training + held-out mean: {out['train_and_test_age_mean']:.6f})"
    )
    return out


def train_synthetic(n: int, device: str, seed: int = 0):
    from bafo_pipeline import BAFOTransformer, make_synthetic_faces

    data = make_synthetic_faces(n, random_state=seed)
    split = {"test_fraction": 0.3, "seed": seed}
    train, test = data.split(**split)
    model = BAFOTransformer(
        latent_dim=8, widths=(8, 16, 32), epochs=10, batch_size=32, concealment="none", device=device, random_state=seed
    ).fit(train.images, sensitive_features=train.sensitive_features)
    info = {
        "source": "synthetic",
        "model": "trained here: latent 8, widths (8, 16, 32), 10 epochs, batch 32",
        "split": split,
        "n_loaded": n,
        "n_train": len(train),
        "n_test": len(test),
    }
    return model, train, test, info


# --------------------------------------------------------------- measuring
def reconstruction_errors(original: np.ndarray, decoded: np.ndarray) -> dict:
    """Per-image MSE (0-255 scale) and PSNR; also the sum of squared errors on the [0, 1] scale."""
    diff = original.astype(np.float64) - decoded.astype(np.float64)
    mse = (diff**2).reshape(len(diff), -1).mean(axis=1)
    psnr = 10 * np.log10(255.0**2 / np.maximum(mse, 1e-12))
    sse_unit = ((diff / 255.0) ** 2).reshape(len(diff), -1).sum(axis=1)
    return {"mse": mse, "psnr": psnr, "sse_unit": sse_unit}


def reconstruction_summary(errors: dict, reference: dict) -> dict:
    """Mean PSNR/MSE, and the paired PSNR loss against the reference decode with a normal 95% interval."""
    loss = reference["psnr"] - errors["psnr"]
    half = 1.96 * loss.std(ddof=1) / np.sqrt(len(loss)) if len(loss) > 1 else float("nan")
    return {
        "psnr_db": float(errors["psnr"].mean()),
        "psnr_db_median": float(np.median(errors["psnr"])),
        "psnr_of_mean_mse_db": float(10 * np.log10(255.0**2 / errors["mse"].mean())),
        "mse_pixel": float(errors["mse"].mean()),
        "sse_unit_per_image": float(errors["sse_unit"].mean()),
        "psnr_loss_db": float(loss.mean()) + 0.0,
        "psnr_loss_db_ci95": [float(loss.mean() - half), float(loss.mean() + half)],
    }


def natural_units(audit, representation: str) -> dict:
    """Worst case over attack probes in the goal's units: max balanced accuracy, min age MAE."""
    t = audit.table
    t = t[(t["representation"] == representation) & t["probe"].isin(ATTACK_PROBES)]
    out = {}
    for attribute in t["attribute"].unique():
        rows = t[t["attribute"] == attribute]
        kind = rows["kind"].iloc[0]
        metric, pick = ("balanced_accuracy", "idxmax") if kind == "categorical" else ("mae", "idxmin")
        scored = rows[rows["metric"] == metric].set_index("probe")
        best = getattr(scored["mean"], pick)()
        prior = audit.table[
            (audit.table["representation"] == representation)
            & (audit.table["attribute"] == attribute)
            & (audit.table["probe"] == "prior")
            & (audit.table["metric"] == metric)
        ]["mean"]
        out[attribute] = {
            "metric": metric,
            "worst": float(scored.loc[best, "mean"]),
            "worst_probe": best,
            "ci_low": float(scored.loc[best, "ci_low"]),
            "ci_high": float(scored.loc[best, "ci_high"]),
            "by_probe": {p: float(scored.loc[p, "mean"]) for p in scored.index},
            "prior": float(prior.iloc[0]) if len(prior) else None,
        }
    return out


LEAKAGE_GOALS = ("gender", "ethnicity", "age")


def goals_met(entry: dict) -> dict:
    """Which parts of the goal a variant meets, at the audit's mean (derived, never stored)."""
    a = entry["audit"]
    restored = entry.get("reconstruction_label_restored") or entry["reconstruction"]
    met = {
        "gender": a["gender"]["worst"] <= GOAL["gender_max_bacc"],
        "ethnicity": a["ethnicity"]["worst"] <= GOAL["ethnicity_max_bacc"],
        "age": a["age"]["worst"] >= GOAL["age_min_mae"],
        "reconstruction": entry["reconstruction"]["psnr_loss_db"] <= GOAL["max_psnr_loss_db"],
        "reconstruction_restored": restored["psnr_loss_db"] <= GOAL["max_psnr_loss_db"],
    }
    met["leakage"] = all(met[k] for k in LEAKAGE_GOALS)
    met["all"] = met["leakage"] and met["reconstruction"]
    met["all_restored"] = met["leakage"] and met["reconstruction_restored"]
    return met


def _n_met(v: dict) -> int:
    return sum(v["goals_met"][k] for k in LEAKAGE_GOALS)


def _strong_met(v: dict) -> dict:
    """Targets met against the training-split attacker ({} where it was not run)."""
    t = v.get("train_split_attacker")
    if not t:
        return {}
    return {
        "gender": t["gender"]["worst"] <= GOAL["gender_max_bacc"],
        "ethnicity": t["ethnicity"]["worst"] <= GOAL["ethnicity_max_bacc"],
        "age": t["age"]["worst"] >= GOAL["age_min_mae"],
    }


def recommend(variants: list[dict]) -> dict:
    """Which of the estimator's own modes to recommend, by fixed rules on the numbers.

    ``within_budget``: within 1 dB as decoded today, most leakage targets met, then
    lowest gender, then ethnicity worst case. ``most_private``: ignoring the budget,
    most audit targets met, then most targets met against the training-split attacker,
    then lowest gender, then ethnicity worst case (audit). ``cheapest``: among the
    variants meeting as many audit targets as ``most_private``, the smallest PSNR loss.
    """
    candidates = [v for v in variants if v["concealment"] != "none" and is_preset(v)]
    within = [v for v in candidates if v["goals_met"]["reconstruction"]]
    best_within = min(
        within,
        key=lambda v: (-_n_met(v), v["audit"]["gender"]["worst"], v["audit"]["ethnicity"]["worst"]),
        default=None,
    )
    most_private = min(
        candidates,
        key=lambda v: (
            -_n_met(v),
            -sum(_strong_met(v).values()),
            v["audit"]["gender"]["worst"],
            v["audit"]["ethnicity"]["worst"],
        ),
        default=None,
    )
    cheapest = None
    if most_private is not None:
        peers = [v for v in candidates if _n_met(v) == _n_met(most_private)]
        cheapest = min(peers, key=lambda v: v["reconstruction"]["psnr_loss_db"])
    return {
        "within_budget": best_within["name"] if best_within else None,
        "most_private": most_private["name"] if most_private else None,
        "cheapest": cheapest["name"] if cheapest else None,
    }


def utility_targets(source: str, train, test, landmarks: str | None) -> tuple[pd.DataFrame, pd.DataFrame | None]:
    """Non-sensitive targets of the held-out split (and of the training split, for residuals on real faces).

    Synthetic faces: the generator's own non-sensitive attributes. UTKFace: the landmark
    targets (``benchmarks/landmark_labels.py``'s cache, keyed by content hash).
    """
    if source == "synthetic":
        columns = list(UTILITY_JUDGED["synthetic"])
        return test.attributes[columns].reset_index(drop=True), None
    from bafo_pipeline.data.landmarks import LANDMARK_TARGETS

    if landmarks is None or not Path(landmarks).is_file():
        raise SystemExit(f"landmark targets not found at {landmarks}; run benchmarks/landmark_labels.py (--landmarks)")
    table = pd.read_parquet(landmarks, columns=["content_hash", *LANDMARK_TARGETS])
    table = table.drop_duplicates("content_hash").set_index("content_hash")[list(LANDMARK_TARGETS)]

    def of(split) -> pd.DataFrame:
        rows = table.reindex(list(split.content_hash)).reset_index(drop=True)
        missing = int(rows.isna().all(axis=1).sum())
        if missing:
            print(f"landmarks: {missing} of {len(rows)} images have no targets (left out of the utility audit)")
        return rows

    return of(test), of(train)


def measure_utility(source: str, records: dict, names: list[str], train, test, args):
    """What every variant keeps of the non-sensitive targets, as shares of pixel PCA-64's and of ``none``'s."""
    from sklearn.decomposition import PCA

    from bafo_pipeline.audits.utility import audit_utility

    targets, fit_targets = utility_targets(source, train, test, getattr(args, "landmarks", None))
    flat = lambda d: d.images.reshape(len(d), -1).astype(np.float32) / 255.0  # noqa: E731
    pixels = PCA(64, random_state=0).fit(flat(train)).transform(flat(test))
    representations = {PIXELS: pixels, **{name: records[name]["Z"] for name in ["none", *names] if name in records}}
    real = fit_targets is not None
    probes = tuple(getattr(args, "utility_probes", "prior,linear,mlp,gbdt").split(","))
    # Residuals of the judged targets only (the others' would add a third to the audit's time).
    residual = [t.removesuffix("_residual") for t in UTILITY_JUDGED[source] if t.endswith("_residual")]
    return audit_utility(
        representations, targets, references=[PIXELS, "none"], probes=probes, residual=residual if real else None,
        sensitive=test.sensitive_features.reset_index(drop=True) if real else None,
        fit_targets=fit_targets, fit_sensitive=train.sensitive_features.reset_index(drop=True) if real else None,
        n_folds=args.folds, n_bootstrap=200, random_state=0, device=args.device, n_threads=args.audit_threads,
    )


def utility_entry(shares: pd.DataFrame, name: str, judged: tuple[str, ...]) -> dict:
    """One representation's utility: per target the best probe's score, interval and shares; the judged minimum."""
    rows = shares[shares["representation"] == name]
    targets = {}
    for r in rows.to_dict("records"):
        targets[r["target"]] = {
            "probe": r["probe"], "score": r["score"], "ci_low": r["ci_low"], "ci_high": r["ci_high"],
            "at_chance": bool(r["at_chance"]),
            "share_of_pixels": r[f"share_of[{PIXELS}]"], "share_of_none": r["share_of[none]"],
            "share_of_none_ci": [r["share_low[none]"], r["share_high[none]"]],
        }
    kept = [targets[t]["share_of_none"] for t in judged if t in targets]
    kept = [k for k in kept if k is not None and not np.isnan(k)]
    return {"targets": targets, "judged": list(judged), "min_share_of_none": min(kept) if kept else None}


def calibration_split(variant: dict, train, split: dict) -> tuple:
    """The training rows a variant's concealment is fitted on, and the training rows it shares.

    Every training row for all but ``transport``, which ``bafo run`` fits on a calibration share of the
    training split that it does not share. The share is chosen as ``bafo run`` chooses it: by the same
    salted content hash as the train/held-out ``split``, the hash buckets just above the held-out ones.
    """
    fraction = variant.get("calibration_fraction")
    if not fraction:
        return train, train
    below = split["test_fraction"] + fraction * (1.0 - split["test_fraction"])
    is_calibration = hash_split(train.content_hash, test_fraction=below, seed=split["seed"])
    return train.subset(is_calibration), train.subset(~is_calibration)


def transform_labels(variant: dict, part) -> dict:
    """What the estimator's ``transform`` needs besides the images: each row's labels, for a variant moving rows by them."""
    if not variant["labels_at_transform"]:
        return {}
    return {"sensitive_features": part.sensitive_features.reset_index(drop=True)}


def train_split_attack(Z_train: np.ndarray, Z_test: np.ndarray, train, test, device: str, threads: int) -> dict:
    """Probes trained on the whole training split's concealed latents, scored on the held-out split.

    A stronger attacker than the audit's (which learns from folds of the held-out split
    only): this one has every training image's latent and labels, as anyone holding the
    exported training data and its labels would.
    """
    from sklearn.metrics import balanced_accuracy_score, mean_absolute_error
    from threadpoolctl import threadpool_limits

    from bafo_pipeline.audits import make_probe

    out = {}
    with threadpool_limits(limits=threads):
        for attr in ATTRIBUTES:
            y_train = train.attributes[attr].to_numpy()
            y_test = test.attributes[attr].to_numpy()
            task = "regression" if attr == "age" else "classification"
            if task == "regression":
                y_train, y_test = y_train.astype(float), y_test.astype(float)
            scores = {}
            for probe_name in ATTACK_PROBES:
                probe = make_probe(probe_name, task, random_state=0, device=device)
                probe.fit(Z_train, y_train)
                pred = probe.predict(Z_test)
                if task == "regression":
                    scores[probe_name] = float(mean_absolute_error(y_test, pred))
                else:
                    scores[probe_name] = float(balanced_accuracy_score(y_test, pred))
            pick = min if task == "regression" else max
            worst = pick(scores, key=scores.get)
            out[attr] = {
                "metric": "mae" if task == "regression" else "balanced_accuracy",
                "worst": scores[worst],
                "worst_probe": worst,
                "by_probe": scores,
            }
    return out


def measure_variant(
    variant: dict, model, base, means: dict, train, test, seed: int, split: dict, attacker: dict | None = None
) -> dict:
    """Fit one variant's concealment, encode the held-out split, decode it with the true labels."""
    S_train = train.sensitive_features.reset_index(drop=True)
    S_test = test.sensitive_features.reset_index(drop=True)
    seconds: dict[str, float] = {}
    t0 = time.perf_counter()
    from bafo_pipeline import LinearErasure

    if variant["concealment"] != "residual":
        fitted_on, shared = calibration_split(variant, train, split)
        model.set_params(concealment=concealment_of(variant, model.get_params()),
                         decoder_epochs=variant.get("decoder_epochs", 0))
        # 'none' has nothing to fit; skip the training-set encode unless old steps must be cleared.
        if variant["concealment"] != "none" or model.concealment_steps_:
            model.fit_concealment(fitted_on.images, sensitive_features=fitted_on.sensitive_features.reset_index(drop=True))
        seconds["fit_concealment"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        Z = model.transform(test.images, **transform_labels(variant, test))
        seconds["transform_test"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        decoded = model.inverse_transform(Z, sensitive_features=S_test)
        steps = model.concealment_steps_
        first = steps[0] if steps and isinstance(steps[0], LinearErasure) else None  # for the restored decode
        refiner = next((step for step in steps if hasattr(step, "inverse_transform")), None)
        encode_train = lambda: (model.transform(shared.images, **transform_labels(variant, shared)), shared)
    else:
        chain = ResidualConcealment(base, variant, seed).fit(means["train"], S_train)
        seconds["fit_concealment"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        Z = chain.transform(means["test"], S_test)
        seconds["transform_test"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        decoded = base.inverse_transform(chain.inverse(Z, S_test), sensitive_features=S_test)
        first, refiner = None, None
        encode_train = lambda: (chain.transform(means["train"], S_train), train)
    record = {"Z": Z, "errors": reconstruction_errors(test.images, decoded)}
    seconds["reconstruct_test"] = time.perf_counter() - t0

    if first is not None:
        # The same latents, decoded with the erased component's label-predictable part added back.
        t0 = time.perf_counter()
        removed = means["train"] - first.transform(means["train"])
        regression = LabelRegression(base.schema_).fit(S_train, removed)
        erased = Z if refiner is None else refiner.inverse_transform(Z, sensitive_features=S_test).astype(np.float32)
        restored = base.inverse_transform(erased + regression.predict(S_test), sensitive_features=S_test)
        record["errors_restored"] = reconstruction_errors(test.images, restored)
        centred = means["train"] - means["train"].mean(axis=0)
        record["erasure"] = {
            "removed_variance_fraction": float((removed**2).sum() / (centred**2).sum()),
            "removed_explained_by_labels": regression.explained_fraction_,
        }
        seconds["restored_decode"] = time.perf_counter() - t0
    if attacker is not None:
        t0 = time.perf_counter()
        Z_attacker, attacker_rows = encode_train()
        record["train_split_attacker"] = train_split_attack(Z_attacker, Z, attacker_rows, test, **attacker)
        record["train_split_attacker_rows"] = len(attacker_rows)
        seconds["train_split_attacker"] = time.perf_counter() - t0
    record["steps_seconds"] = seconds
    return record


def run(args) -> dict:
    import torch

    torch.set_num_threads(args.threads)
    from bafo_pipeline.audits import audit_leakage

    started = time.perf_counter()
    steps: dict[str, float] = {}
    machine = machine_info(args.device, args.threads, args.audit_threads)
    variants = [parse_variant(s, args.refine_epochs) for s in args.variants.split(",") if s.strip()]
    names = [v["name"] for v in variants]
    if len(set(names)) != len(names):
        raise SystemExit(f"variant names repeat: {names}")
    if "none" not in names and not args.append:
        raise SystemExit("the variants must include 'none' (the PSNR reference)")
    # 'none' is always measured first: it is the PSNR reference and the base the residual variants decode through.
    reference_variant = parse_variant("none", args.refine_epochs)
    measured = [reference_variant, *[v for v in variants if v["name"] != "none"]]

    t0 = time.perf_counter()
    if args.synthetic:
        model, train, test, data_info = train_synthetic(args.synthetic, args.device)
    else:
        model, train, test, data_info = load_real(Path(args.model), Path(args.utkface), args.device, args.limit)
    steps["load_or_train"] = time.perf_counter() - t0
    print(
        f"[{steps['load_or_train']:.0f}s] data: {data_info['n_train']} train / {data_info['n_test']} test", flush=True
    )
    seed = model.get_params()["random_state"]
    seed = 0 if seed is None else int(seed)

    records: dict[str, dict] = {}
    base, means = None, {}
    for variant in measured:
        if variant["name"] != "none" and not means:  # posterior means of both splits, once
            t0 = time.perf_counter()
            means = {"train": base.transform(train.images), "test": base.transform(test.images)}
            steps["encode_base_means"] = time.perf_counter() - t0
        attacker = (
            {"device": args.device, "threads": args.audit_threads}
            if args.train_attacker and variant in variants
            else None
        )
        record = measure_variant(variant, model, base, means, train, test, seed, data_info["split"], attacker)
        records[variant["name"]] = record
        if variant["name"] == "none":
            base = copy.deepcopy(model)
        restored_text = (
            f", label-restored decode {record['errors_restored']['psnr'].mean():.2f} dB"
            if "errors_restored" in record
            else ""
        )
        print(
            f"[{time.perf_counter() - started:.0f}s] {variant['name']}: fit {record['steps_seconds']['fit_concealment']:.1f}s, "
            f"PSNR {record['errors']['psnr'].mean():.2f} dB{restored_text}",
            flush=True,
        )

    t0 = time.perf_counter()
    labels = test.attributes[list(ATTRIBUTES)].reset_index(drop=True)
    audit = audit_leakage(
        {v["name"]: records[v["name"]]["Z"] for v in variants},
        labels,
        attributes=list(ATTRIBUTES),
        n_folds=args.folds,
        random_state=0,
        device=args.device,
        n_threads=args.audit_threads,
    )
    steps["audit"] = time.perf_counter() - t0
    print(f"[{time.perf_counter() - started:.0f}s] audit done in {steps['audit']:.0f}s", flush=True)

    t0 = time.perf_counter()
    utility = measure_utility(data_info["source"], records, [v["name"] for v in variants], train, test, args)
    utility_shares = utility.shares("best")
    judged = UTILITY_JUDGED[data_info["source"]]
    steps["utility"] = time.perf_counter() - t0
    print(f"[{time.perf_counter() - started:.0f}s] utility done in {steps['utility']:.0f}s", flush=True)

    reference = records["none"]["errors"]
    worst = audit.worst_case(with_verdict=False)
    out_variants = []
    for v in variants:
        record = records[v["name"]]
        seconds = dict(record["steps_seconds"])
        seconds["audit"] = sum(
            t["fit_seconds"] + t["scoring_seconds"] for t in audit.timings if t["representation"] == v["name"]
        )
        restored = record.get("errors_restored")
        out_variants.append(
            {
                **v,
                "audit": natural_units(audit, v["name"]),
                "leakage": {
                    r["attribute"]: {
                        k: r[k] for k in ("probe", "leakage", "ci_low", "ci_high", "p_value", "linear", "nonlinear")
                    }
                    for r in worst[worst["representation"] == v["name"]].to_dict("records")
                },
                "reconstruction": reconstruction_summary(record["errors"], reference),
                "reconstruction_label_restored": None
                if restored is None
                else reconstruction_summary(restored, reference),
                "erasure": record.get("erasure"),
                "utility": utility_entry(utility_shares, v["name"], judged),
                "train_split_attacker": record.get("train_split_attacker"),
                "train_split_attacker_rows": record.get("train_split_attacker_rows"),
                "steps_seconds": {k: round(x, 2) for k, x in seconds.items()},
            }
        )

    result = {
        "benchmark": "leakage_frontier",
        "date_utc": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "command": "python " + " ".join([os.path.relpath(sys.argv[0], ROOT) if sys.argv[0] else "", *sys.argv[1:]]),
        "machine": machine,
        "data": data_info,
        "goal": GOAL,
        "chance": CHANCE,
        "protocol": {
            "probes": list(ATTACK_PROBES),
            "n_folds": args.folds,
            "audit": "5-fold cross-validation on the held-out split's latents (probes never see the encoder's "
            "training images); worst case = highest mean balanced accuracy / lowest mean age MAE over the "
            "attack probes; intervals: the audit's 95% interval of that probe's mean",
            "reconstruction": "held-out images encoded, concealed and decoded with their true labels; "
            "PSNR per image on 0-255 pixels, averaged; loss = paired mean difference against 'none'",
            "attribute_control": "not measured here (no judge run)",
            "utility": "the audit's probe ladder (5 folds, 200 bootstrap replicates) on non-sensitive targets of the "
            "held-out split: R² against the training mean (continuous) or chance-adjusted balanced accuracy "
            "(categorical), best probe; shares of pixel PCA-64's and of 'none' (the unconcealed encoder's) score; "
            "UTKFace: landmark targets, residuals fitted on the training split; judged: "
            + ", ".join(UTILITY_JUDGED[data_info["source"]]),
        },
        "audit_config": {
            k: audit.config[k] for k in ("n_folds", "n_bootstrap", "n_permutations", "probes", "mlp_device")
        },
        "variants": out_variants,
        "utility_references": {
            name: utility_entry(utility_shares, name, judged) for name in (PIXELS, "none")
        },
        "utility_explained_by_sensitive": utility.explained,
        "steps_seconds": {k: round(x, 2) for k, x in steps.items()},
        "wall_seconds": round(time.perf_counter() - started, 1),
        "audit_table": audit.table[audit.table["metric"].isin(["balanced_accuracy", "mae", "leakage", "p_value"])]
        .round(5)
        .to_dict("records"),
    }
    from bafo_pipeline._utils import to_jsonable

    return to_jsonable(result)


def merge(previous: dict, new: dict, *, only_new: bool = False) -> dict:
    """Add an ``--append`` run's variants to an earlier result (same data, model, folds and probes).

    With ``only_new`` (``--merge-from``: a run made side by side, which measured ``none`` too)
    the variants the earlier result already has are kept, not replaced.
    """
    for key in ("data", "audit_config"):
        if previous[key] != new[key]:
            raise SystemExit(f"--append: the new run's {key} differs from the stored one; rerun everything")
    if only_new:
        old = {v["name"] for v in previous["variants"]}
        new = {**new, "variants": [v for v in new["variants"] if v["name"] not in old],
               "audit_table": [r for r in new["audit_table"] if r["representation"] not in old]}
    names = {v["name"] for v in new["variants"]}
    fresh = {v["name"]: v for v in new["variants"]}
    merged = dict(previous)
    old_names = [v["name"] for v in previous["variants"]]
    merged["variants"] = [fresh.get(v["name"], v) for v in previous["variants"]] + [
        v for v in new["variants"] if v["name"] not in old_names
    ]
    merged["audit_table"] = [r for r in previous["audit_table"] if r["representation"] not in names] + new[
        "audit_table"
    ]
    merged["appended_runs"] = [
        *previous.get("appended_runs", []),
        {k: new[k] for k in ("date_utc", "command", "machine", "steps_seconds", "wall_seconds")}
        | {"variants": sorted(names)},
    ]
    return merged


# --------------------------------------------------------------- rendering
def pareto_front(points: list[tuple[float, float]]) -> list[int]:
    """Indices of points no other point beats on both coordinates (lower is better on both)."""
    keep = []
    for i, (x, y) in enumerate(points):
        if not any((x2 <= x and y2 <= y) and (x2 < x or y2 < y) for j, (x2, y2) in enumerate(points) if j != i):
            keep.append(i)
    return sorted(keep, key=lambda i: points[i][0])


def _restored_loss(v: dict) -> float | None:
    r = v.get("reconstruction_label_restored")
    return None if r is None else r["psnr_loss_db"]


def render_figure(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    variants = result["variants"]
    x = [v["reconstruction"]["psnr_loss_db"] for v in variants]
    none = next(v for v in variants if v["name"] == "none")
    panels = [
        ("gender", "worst-case gender balanced accuracy", GOAL["gender_max_bacc"], CHANCE["gender"], False),
        ("ethnicity", "worst-case ethnicity balanced accuracy", GOAL["ethnicity_max_bacc"], CHANCE["ethnicity"], False),
        ("age", "worst-case age MAE (years)", GOAL["age_min_mae"], none["audit"]["age"].get("prior"), True),
    ]
    colours = plt.get_cmap("tab10")
    with_utility = all(v.get("utility") and v["utility"].get("min_share_of_none") is not None for v in variants)
    fig, axes = plt.subplots(1, 4 if with_utility else 3, figsize=(21 if with_utility else 16, 5.2))
    if with_utility:
        _utility_panel(axes[3], variants, colours)
    for ax, (attr, label, goal, chance, higher_is_safer) in zip(axes, panels):
        y = [v["audit"][attr]["worst"] for v in variants]
        front = pareto_front([(xi, -yi if higher_is_safer else yi) for xi, yi in zip(x, y)])
        ax.plot([x[i] for i in front], [y[i] for i in front], "-", color="0.6", lw=1, zorder=1)
        for i, v in enumerate(variants):
            a = v["audit"][attr]
            colour = colours(i % 10)
            ax.errorbar(
                x[i],
                y[i],
                yerr=[[y[i] - a["ci_low"]], [a["ci_high"] - y[i]]],
                fmt="s" if v.get("labels_at_transform") else "o",
                color=colour,
                ecolor=colour,
                alpha=0.9,
                capsize=3,
                zorder=3,
                label=v["name"],
            )
            strong = (v.get("train_split_attacker") or {}).get(attr)
            if strong is not None:
                ax.scatter([x[i]], [strong["worst"]], marker="x", color=colour, zorder=3)
            restored = _restored_loss(v)
            if restored is not None:
                ax.scatter([restored], [y[i]], facecolors="none", edgecolors=[colour], zorder=3)
                ax.annotate(
                    "",
                    xy=(restored, y[i]),
                    xytext=(x[i], y[i]),
                    arrowprops={"arrowstyle": "->", "color": colour, "lw": 0.8, "alpha": 0.7},
                )
        ax.axhline(goal, color="tab:green", ls="--", lw=1)
        ax.axvline(GOAL["max_psnr_loss_db"], color="tab:red", ls=":", lw=1)
        if chance is not None:
            ax.axhline(chance, color="0.4", ls="-.", lw=0.8)
        ax.set_xlabel("PSNR loss vs. 'none' (dB), decoding with the true labels")
        ax.set_ylabel(label)
        ax.set_title(
            f"{attr}: goal {'≥' if higher_is_safer else '≤'} {goal:g} (green), "
            f"{'median guess' if higher_is_safer else 'chance'} {chance:.3g} (grey)",
            fontsize=9,
        )
        ax.grid(alpha=0.3)
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=min(len(labels), 8), fontsize=8, frameon=False)
    fig.suptitle(
        f"Leakage vs. reconstruction on the {result['data']['source']} held-out split (n={result['data']['n_test']}). "
        "Filled: decoded as the library does; hollow (arrow): erased part restored from the labels at decode time; "
        "squares need the labels at encode time;\nx: probes trained on the training split (stronger attacker). "
        "Bars: 95% interval of the audit's worst probe; red: 1 dB budget.",
        fontsize=8.5,
    )
    fig.tight_layout(rect=(0, 0.07, 1, 0.95))
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp.png")
    fig.savefig(tmp, dpi=120)
    plt.close(fig)
    os.replace(tmp, path)


def _utility_panel(ax, variants: list[dict], colours) -> None:
    """Leakage (worst-case gender balanced accuracy) against utility kept (judged targets' least share of none)."""
    x = [v["utility"]["min_share_of_none"] for v in variants]
    y = [v["audit"]["gender"]["worst"] for v in variants]
    front = pareto_front([(-xi, yi) for xi, yi in zip(x, y)])
    ax.plot([x[i] for i in front], [y[i] for i in front], "-", color="0.6", lw=1, zorder=1)
    for i, v in enumerate(variants):
        a = v["audit"]["gender"]
        ax.errorbar(x[i], y[i], yerr=[[y[i] - a["ci_low"]], [a["ci_high"] - y[i]]],
                    fmt="s" if v.get("labels_at_transform") else "o", color=colours(i % 10), capsize=3, zorder=3)
    ax.axhline(GOAL["gender_max_bacc"], color="tab:green", ls="--", lw=1)
    ax.axhline(CHANCE["gender"], color="0.4", ls="-.", lw=0.8)
    ax.axvline(UTILITY_GOAL_SHARE_OF_NONE, color="tab:red", ls=":", lw=1)
    judged = variants[0]["utility"]["judged"]
    ax.set_xlabel(f"utility kept: least share of 'none' over the {len(judged)} judged targets\n("
                  + ", ".join(judged) + ")", fontsize=8)
    ax.set_ylabel("worst-case gender balanced accuracy")
    ax.set_title(f"leakage vs utility: goal ≤ {GOAL['gender_max_bacc']:g} and ≥ {UTILITY_GOAL_SHARE_OF_NONE:g} "
                 "(right of red)", fontsize=9)
    ax.grid(alpha=0.3)


def model_params_text(data: dict) -> str:
    """`` (latent_dim 48, epochs 4 — the estimator's default is 20, ...)``: the settings, defaults named where they differ."""
    params, defaults = data.get("model_params") or {}, data.get("model_params_defaults") or {}
    if not params:
        return ""
    cells = [
        f"{k} {v:g}" if isinstance(v, float) else f"{k} {v}" for k, v in params.items()
    ]
    differ = [f"{k} {defaults[k]:g}" if isinstance(defaults[k], float) else f"{k} {defaults[k]}"
              for k in params if k in defaults and defaults[k] != params[k]]
    text = f" ({', '.join(cells)})"
    if differ:
        text += f"; **not the estimator's defaults** ({', '.join(differ)})"
    return text


def _cell(entry: dict, attr: str, digits: int = 3) -> str:
    a = entry["audit"][attr]
    return f"{a['worst']:.{digits}f} ({a['worst_probe']}; {a['ci_low']:.{digits}f}–{a['ci_high']:.{digits}f})"


def _mark(ok: bool) -> str:
    return "yes" if ok else "**no**"


def _db(value: float | None) -> str:
    return "–" if value is None else f"{round(0.0 - value, 2) + 0.0:+.2f}"


def _loss_relative(variant: dict, reference: dict) -> str:
    """How ``variant``'s reconstruction loss compares with ``reference``'s, in words."""
    saved = round(reference["reconstruction"]["psnr_loss_db"] - variant["reconstruction"]["psnr_loss_db"], 2)
    if saved == 0:
        return "at the same reconstruction loss"
    return f"and loses {abs(saved):.2f} dB {'less' if saved > 0 else 'more'} in reconstruction"


def _label(v: dict) -> str:
    return f"{v['name']} †" if v.get("labels_at_transform") else v["name"]


def _share(entry: dict | None, reference_at_chance: bool = False) -> str:
    """``score (share of none)``; no share where ``none`` itself is at chance (a ratio of noise)."""
    if entry is None:
        return "–"
    share = entry.get("share_of_none")
    text = f"{entry['score']:.3f}"
    if share is not None and not np.isnan(share) and not reference_at_chance:
        text += f" ({share:.2f})"
    return text + (" ·" if entry.get("at_chance") else "")


def utility_lines(result: dict) -> list[str]:
    """The utility table: one row per target, one column per representation (runs made before the
    frontier measured utility have none: nothing is added)."""
    variants = [v for v in result["variants"] if v.get("utility")]
    if not variants:
        return []
    judged = variants[0]["utility"]["judged"]
    columns = [(f"*{name}*", entry) for name, entry in result.get("utility_references", {}).items()]
    columns += [(_label(v), v["utility"]) for v in variants if v["name"] != "none"]
    targets = list(dict.fromkeys(t for _, entry in columns for t in entry["targets"]))
    real = result["data"]["source"] == "utkface"
    lines = [
        "",
        "## Utility kept",
        "",
        (
            "What a downstream model can still learn from each variant's held-out latents: the best probe's score "
            "(R² against the training mean, or chance-adjusted balanced accuracy; the audit's ladder, "
            f"{result.get('audit_config', {}).get('n_folds', 5)} folds) and, in brackets, its share of `none`'s (the unconcealed "
            "encoder's; left out where `none`'s own interval reaches chance); · marks a score whose interval "
            "reaches chance. **Bold** targets are the ones issue 12 "
            f"judges: the goal is every one at ≥ {UTILITY_GOAL_SHARE_OF_NONE} of `none`."
            + (" UTKFace targets come from 68-point facial landmarks (docs/UTILITY.md); `_residual` is the part of a "
               "target the sensitive attributes do not explain (least squares on them, fitted on the training split)."
               if real else "")
        ),
        "",
        "| target | " + " | ".join(label for label, _ in columns) + " |",
        "|---|" + "---|" * len(columns),
    ]
    none_targets = result.get("utility_references", {}).get("none", {}).get("targets", {})
    for target in targets:
        name = f"**{target}**" if target in judged else target
        none_at_chance = bool(none_targets.get(target, {}).get("at_chance"))
        lines.append(
            f"| {name} | " + " | ".join(_share(entry["targets"].get(target), none_at_chance) for _, entry in columns)
            + " |"
        )
    least, met = [], []
    for label, entry in columns:
        share = entry.get("min_share_of_none")
        reference = label.startswith("*")
        least.append("–" if reference or share is None else f"{share:.2f}")
        met.append("–" if reference else _mark(share is not None and share >= UTILITY_GOAL_SHARE_OF_NONE))
    lines.append("| least share of `none`, bold targets | " + " | ".join(least) + " |")
    lines.append(f"| all bold targets ≥ {UTILITY_GOAL_SHARE_OF_NONE} of `none` | " + " | ".join(met) + " |")
    explained = result.get("utility_explained_by_sensitive") or {}
    if explained:
        lines += ["", "Share of each target's variance the sensitive attributes explain (training split): "
                  + ", ".join(f"{k} {v:.2f}" for k, v in explained.items()) + "."]
    return lines


def issue12_lines(result: dict) -> list[str]:
    """Issue 12's goals per variant: leakage against both attackers, utility, reconstruction (yes/no, value)."""
    if result["data"]["source"] != "utkface":
        return []
    head = [f"{'data-rich' if attacker == 'data_rich' else 'audit'} {attr} {op.replace('<=', '≤').replace('>=', '≥')} {bound:g}"
            for attacker, goals in ISSUE12_GOALS.items() for attr, op, bound in goals]
    lines = [
        "",
        "## Issue 12's goals",
        "",
        (
            "Issue 12 (\"Blind and useful\") asks for more than the goals above: against the data-rich attacker "
            "(probes trained on the training split, above; one split, no interval) and the audit's, worst case over "
            f"the attack probes; every bold utility target at ≥ {UTILITY_GOAL_SHARE_OF_NONE} of `none`; and at "
            f"most {GOAL['max_psnr_loss_db']:g} dB of PSNR lost against `none` (as decoded). The deciding value "
            "is in brackets; the audit's interval of it is in the first table."
        ),
        "",
        "| variant | " + " | ".join(head) + f" | utility ≥ {UTILITY_GOAL_SHARE_OF_NONE} | ΔPSNR ≥ −{GOAL['max_psnr_loss_db']:g} dB | all |",
        "|---|" + "---|" * (len(head) + 3),
    ]
    for v in result["variants"]:
        if v["name"] == "none":
            continue
        cells, met = [], []
        for attacker, goals in ISSUE12_GOALS.items():
            scores = v.get("train_split_attacker") if attacker == "data_rich" else v["audit"]
            for attr, op, bound in goals:
                if not scores:
                    cells.append("–")
                    met.append(False)
                    continue
                value = scores[attr]["worst"]
                ok = value <= bound if op == "<=" else value >= bound
                met.append(ok)
                cells.append(f"{_mark(ok)} ({value:.{2 if attr == 'age' else 3}f})")
        share = (v.get("utility") or {}).get("min_share_of_none")
        ok = share is not None and share >= UTILITY_GOAL_SHARE_OF_NONE
        met.append(ok)
        cells.append("–" if share is None else f"{_mark(ok)} ({share:.2f})")
        loss = v["reconstruction"]["psnr_loss_db"]
        met.append(loss <= GOAL["max_psnr_loss_db"])
        cells.append(f"{_mark(met[-1])} ({_db(loss)})")
        cells.append(_mark(all(met)))
        lines.append(f"| {_label(v)} | " + " | ".join(cells) + " |")
    return lines


def earlier_run_lines(result: dict, json_path: Path, figure_path: Path, markdown_path: Path) -> list[str]:
    """Links to earlier runs kept beside the JSON (``leakage_frontier_<tag>.json``, figure ``frontier_<tag>.png``).

    Each says what it repeats of this page's ``result`` (:func:`_replicates`): this page's own model again,
    another encoder with the same settings on the same split, another split, or nothing comparable.
    """
    rel = lambda p: os.path.relpath(p, markdown_path.parent)  # noqa: E731
    lines = []
    for other in sorted(json_path.parent.glob(json_path.stem + "_*.json")):
        if other.resolve() == json_path.resolve():
            continue
        try:
            earlier = json.loads(other.read_text(encoding="utf-8"))
            d = earlier["data"]
        except (OSError, ValueError, KeyError):
            continue
        tag = other.stem[len(json_path.stem) + 1:]
        figure = figure_path.with_name(f"{figure_path.stem}_{tag}{figure_path.suffix}")
        replicate = _replicates(earlier, result)
        title = "Another run of this page's model" if replicate == "rerun" else "Another run"
        fewer = [p for p in attack_probes(result) if p not in attack_probes(earlier)]
        lines.append(
            f"- {title}: [`{rel(other)}`]({rel(other)})"
            + (f" (figure [`{rel(figure)}`]({rel(figure)}))" if figure.exists() else "")
            + f": {d['source']}, model `{d['model']}`{model_params_text(d)}, {earlier['date_utc']}, "
            f"{len(earlier['variants'])} variants. " + REPLICATE_TEXT[replicate]
            + (f" It attacked without the {', '.join(PROBE_LONG_NAMES[p] for p in fewer)} probe(s), so its worst "
               "cases are lower bounds beside this page's." if fewer and replicate else "")
        )
    return lines


REPLICATE_TEXT = {
    "rerun": "This page's model again, on its data and split with its audit: what its numbers differ by is what "
             "the probes' and the concealments' own randomness moves.",
    "encoder": "Another encoder trained with this page's settings on its split: what its numbers differ by is "
               "what training the encoder again moves.",
    "split": "Another split of the same data, and an encoder trained on it with this page's settings: what its "
             "numbers differ by is what the split and the encoder move.",
    None: "Its numbers are not comparable with this page's.",
}


def _replicates(run: dict, page: dict) -> str | None:
    """What ``run`` repeats ``page`` with: ``"rerun"`` (the same model, data, split, sizes and audit
    configuration), ``"encoder"`` (the same, but another model with the same shown settings), ``"split"``
    (another model, split and sizes), or ``None``.

    The audit configurations are compared without their probe lists (a run with fewer probes is still a
    replicate; :func:`earlier_run_lines` says its worst cases are lower bounds). A model is the same by its
    fingerprint where both runs recorded one, else by its path.
    """
    data, this = run.get("data", {}), page.get("data", {})

    def same(*keys):
        return all(data.get(k) is not None and data.get(k) == this.get(k) for k in keys)

    def audit_settings(result):
        return {k: v for k, v in (result.get("audit_config") or {}).items() if k != "probes"}

    if audit_settings(run) != audit_settings(page) or not same("source", "model_params"):
        return None
    same_split = same("split", "n_train", "n_test")
    fingerprints = data.get("model_fingerprint"), this.get("model_fingerprint")
    same_model = fingerprints[0] == fingerprints[1] if all(fingerprints) else same("model")
    if same_model:
        return "rerun" if same_split else None
    return "encoder" if same_split else "split"


def attack_probes(result: dict) -> tuple[str, ...]:
    """The attack probes a stored result was measured with (older results name them in ``protocol``)."""
    return tuple(result.get("protocol", {}).get("probes", LADDER_BEFORE_QUADRATIC))


def missing_probe_notes(cfg: dict) -> list[str]:
    """A paragraph for each probe of today's ladder that a page's run predates (its worst cases are lower bounds)."""
    probes = cfg.get("probes", [])
    notes = []
    if "quadratic" not in probes:
        notes += [
            "",
            "These attackers predate the audit's quadratic probe (QDA, added to the ladder on 2026-12-02). On three "
            "4-epoch UTKFace encoders it reads the transport at the shrinkage these rows used (10) "
            "about twice as well as these three, and its ethnicity past the data-rich goal; the transport's default "
            "shrinkage is 40 since, which meets that goal against it (docs/TRAINED_CONCEALMENT.md §15). The "
            "transport rows' leakage here is a lower bound; `full`'s is not changed by it.",
        ]
    if "knn" not in probes:
        notes += [
            "",
            "These attackers also predate the audit's nearest-neighbour probe (`knn`, added to the ladder on "
            "2026-12-02, after this run). On the frontier's encoder it reads the transport's gender at balanced "
            "accuracy 0.597 (0.583–0.613) from the shared rows, past the data-rich goal, where the other probes read "
            "0.56 (docs/TRAINED_CONCEALMENT.md §17): the transport rows' gender leakage here is a lower bound.",
        ]
    return notes


def render_markdown(result: dict, json_path: Path, figure_path: Path, markdown_path: Path) -> str:
    variants = result["variants"]
    by_name = {v["name"]: v for v in variants}
    m, d, cfg = result["machine"], result["data"], result["audit_config"]
    probes = attack_probes(result)
    ladder = " / ".join(PROBE_SHORT_NAMES[p] for p in probes)
    rel = lambda p: os.path.relpath(p, markdown_path.parent)
    lines = [
        "# Leakage frontier: how blind can the BAFO latent get, and at what cost?",
        "",
        (
            f"*Rendered by `benchmarks/leakage_frontier.py` from [`{rel(json_path)}`]({rel(json_path)}); "
            "do not edit the numbers by hand, rerun the script.*"
        ),
        "",
        (
            f"- **Data**: {d['source']}, {d['n_train']} training / {d['n_test']} held-out images "
            f"(content-hash split, test fraction {d['split']['test_fraction']}, seed {d['split']['seed']})."
        ),
        f"- **Model**: `{d['model']}`{model_params_text(d)}; one trained encoder, each variant refits only the "
        "concealment steps on the training split."
        + (f" Split check: {d['split_check']['verdict']}." if d.get("split_check") else ""),
        (
            f"- **Machine**: {m['cpu_model']}, {m['cpus_usable']} usable of {m['cpu_count']} CPUs, shared "
            f"(load average {', '.join(f'{x:.1f}' for x in m['load_average_at_start'] or [])} at start), "
            f"{m['platform']}, Python {m['python']}, torch {m['torch']} on {m['device']} "
            f"({m['torch_threads']} threads; audit {m['audit_threads']}), scikit-learn {m['sklearn']}; "
            f"git {m['git_commit']}{' with uncommitted changes' if m['git_dirty'] else ''}."
        ),
        (
            f"- **Run**: {result['date_utc']}, {result['wall_seconds'] / 60:.0f} min wall "
            f"(audit {result['steps_seconds']['audit'] / 60:.0f} min). Command:"
        ),
        "",
        "  ```",
        f"  {result['command']}",
        "  ```",
    ]
    for extra in result.get("appended_runs", []):
        lines += [
            (
                f"- **Added** {', '.join(f'`{n}`' for n in extra['variants'])} on {extra['date_utc']} "
                f"({extra['wall_seconds'] / 60:.0f} min, load {', '.join(f'{x:.1f}' for x in extra['machine']['load_average_at_start'] or [])}):"
            ),
            "",
            "  ```",
            f"  {extra['command']}",
            "  ```",
        ]
    lines += earlier_run_lines(result, json_path, figure_path, markdown_path)
    lines += [
        "",
        "## The frontier",
        "",
        (
            f"Worst case over the audit's attack probes ({', '.join(PROBE_LONG_NAMES[p] for p in probes)}), "
            f"{cfg['n_folds']}-fold cross-validated on the held-out split's latents: "
            "the highest mean balanced accuracy (gender, ethnicity, age band) and the lowest mean age MAE, "
            "with the probe that achieved it and the audit's 95% interval. PSNR: held-out images encoded, "
            "concealed and reconstructed through `inverse_transform` with their true labels; ΔPSNR is the paired "
            "mean difference against `none` (negative = worse). *Restored*: the same latents decoded after adding "
            "back the label-predictable part of what LEACE erased (see notes)."
        ),
        *missing_probe_notes(cfg),
        "",
        "| variant | gender bacc | ethnicity bacc | age MAE (years) | age-band bacc | PSNR (dB) | ΔPSNR | ΔPSNR, restored | fit (s)* |",
        "|---|---|---|---|---|---|---|---|---|",
        (
            f"| **goal** | **≤ {GOAL['gender_max_bacc']:.2f}** | **≤ {GOAL['ethnicity_max_bacc']:.2f}** | "
            f"**≥ {GOAL['age_min_mae']:.1f}** | – | – | **≥ −{GOAL['max_psnr_loss_db']:.1f}** | | – |"
        ),
        (
            f"| chance / median guess | {CHANCE['gender']:.2f} | {CHANCE['ethnicity']:.2f} | "
            f"{by_name['none']['audit']['age']['prior']:.1f} | 0.25 | – | – | – | – |"
        ),
    ]
    for v in variants:
        r = v["reconstruction"]
        band = v["audit"].get("age_band")
        band_cell = f"{band['worst']:.3f} ({band['worst_probe']})" if band else "–"
        lines.append(
            f"| {_label(v)} | {_cell(v, 'gender')} | {_cell(v, 'ethnicity')} | {_cell(v, 'age', 2)} | {band_cell} | "
            f"{r['psnr_db']:.2f} | {_db(r['psnr_loss_db'])} | {_db(_restored_loss(v))} | "
            f"{v['steps_seconds']['fit_concealment']:.0f} |"
        )
    lines += [
        "",
        (
            "† needs each row's sensitive labels at encode time (not just at fit), unlike the other variants. "
            "\\* wall seconds to fit the concealment steps on the shared 2-core machine, whose load varied during the "
            "runs (the load at each start is given above): the same refiner fit has taken under a minute and over a "
            "quarter of an hour, so these times say little about the methods."
        ),
        *utility_lines(result),
        "",
        "Per probe (mean over folds), and what the first linear erasure takes out of the training latents:",
        "",
        (
            f"| variant | gender {ladder} | ethnicity {ladder} | age MAE {ladder} | "
            "erased share of latent variance | of it, predictable from labels | SSE/image |"
        ),
        "|---|---|---|---|---|---|---|",
    ]
    for v in variants:
        cells = []
        for attr, fmt in (("gender", "{:.3f}"), ("ethnicity", "{:.3f}"), ("age", "{:.2f}")):
            bp = v["audit"][attr]["by_probe"]
            cells.append(" / ".join(fmt.format(bp[p]) if p in bp else "–" for p in probes))
        e = v.get("erasure") or {}
        erased = f"{e['removed_variance_fraction']:.1%}" if "removed_variance_fraction" in e else "–"
        explained = f"{e['removed_explained_by_labels']:.1%}" if "removed_explained_by_labels" in e else "–"
        lines.append(
            f"| {_label(v)} | " + " | ".join(cells) + f" | {erased} | {explained} | "
            f"{v['reconstruction']['sse_unit_per_image']:.1f} |"
        )
    lines += [
        "",
        (
            "SSE/image: sum of squared pixel errors on the [0, 1] scale (the unit of the training loss and of "
            "ARCHITECTURE.md's reconstruction numbers)."
        ),
        "",
    ]
    attacked = [v for v in variants if v.get("train_split_attacker")]
    if attacked:
        lines += [
            "### A stronger attacker",
            "",
            (
                f"The audit's probes learn from about {d['n_test'] * (cfg['n_folds'] - 1) // cfg['n_folds']} labelled "
                f"held-out latents. Here the same probes are trained on all {d['n_train']} training-split latents "
                "(concealed by the same fitted steps) with their labels, as anyone holding the exported training "
                "data could, and scored once on the held-out split (no interval: a single split)."
                + fewer_rows_note(attacked, d["n_train"])
            ),
            "",
            (
                f"| variant | gender bacc {ladder} | ethnicity bacc {ladder} | age MAE {ladder} | "
                "gender ≤ 0.60 | ethnicity ≤ 0.30 | age ≥ 13.5 |"
            ),
            "|---|---|---|---|---|---|---|",
        ]
        for v in attacked:
            t = v["train_split_attacker"]
            cells = []
            for attr, fmt in (("gender", "{:.3f}"), ("ethnicity", "{:.3f}"), ("age", "{:.2f}")):
                cells.append(" / ".join(fmt.format(t[attr]["by_probe"][p]) for p in probes))
            lines.append(
                f"| {_label(v)} | " + " | ".join(cells) + " | "
                f"{_mark(t['gender']['worst'] <= GOAL['gender_max_bacc'])} | "
                f"{_mark(t['ethnicity']['worst'] <= GOAL['ethnicity_max_bacc'])} | "
                f"{_mark(t['age']['worst'] >= GOAL['age_min_mae'])} |"
            )
        lines.append("")
    lines += [
        "## Goals met (at the audit's mean)",
        "",
        "| variant | gender | ethnicity | age | ≤ 1 dB as decoded | ≤ 1 dB, restored decode | all, as decoded | all, restored decode |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for v in variants:
        g = v["goals_met"]
        lines.append(
            f"| {_label(v)} | {_mark(g['gender'])} | {_mark(g['ethnicity'])} | {_mark(g['age'])} | "
            f"{_mark(g['reconstruction'])} | {_mark(g['reconstruction_restored'])} | {_mark(g['all'])} | "
            f"{_mark(g['all_restored'])} |"
        )
    lines += issue12_lines(result)
    lines += ["", *summary_paragraphs(result), ""]
    lines += [
        f"![Leakage vs. reconstruction]({rel(figure_path)})",
        "",
        (
            f"*[`{rel(figure_path)}`]({rel(figure_path)}): x, PSNR loss against `none` (filled: as decoded; hollow: "
            "restored decode); y, the worst-case probe's score with its 95% interval; dashed green, the goal; "
            "dotted red, the 1 dB budget; grey line, the Pareto-optimal variants (as decoded).*"
        ),
        "",
        "## Protocol notes",
        "",
        (
            "- The concealment steps are fitted on the training split only; everything in the tables is "
            "measured on the held-out split, which neither the encoder nor the concealment steps saw. The "
            "probes are trained and scored by cross-validation *within* the held-out split "
            f"({cfg['n_folds']} folds, {cfg['n_bootstrap']} bootstrap replicates, {cfg['n_permutations']} "
            f"permutations; MLP on {cfg['mlp_device']}), so an attacker here has about "
            f"{d['n_test'] * (cfg['n_folds'] - 1) // cfg['n_folds']} labelled latents to learn from; one with "
            "more labelled data could do somewhat better. Goals are judged at the mean; the intervals show "
            "which verdicts are close."
        ),
        (
            "- Reconstruction uses the true labels, so it measures what concealment costs the image content. "
            "**Attribute control (does a decode with changed labels show the new attributes?) was not "
            "measured in this run**: it needs an independent judge (`benchmarks/judges.py`), too "
            "slow to train on this shared CPU in the time budget."
        ),
        (
            "- *Restored decode*: LEACE maps `z` to `z - P(z - mean)`, and the decoder was trained on un-erased "
            "latents. Since decoding is given the labels anyway, a least-squares regression (fitted on the "
            "training split) of the erased part `P(z - mean)` on label features (the decoder's attribute encoding, "
            "age deciles and bands, gender × ethnicity cells, age decile × gender) is added back before the "
            "decoder (for `full`, after the refiner's own decoder). The exported latent, hence the leakage, is "
            "unchanged. The library's `inverse_transform` does not do this today."
        ),
        (
            "- `full` variants with `kl=` or `dim=` options are the estimator's concealment given as a list of steps "
            "(`LinearErasure`, `LatentRefiner(kl_weight=..., latent_dim=...)`, `LinearErasure`), the refiner "
            "configured as the `full` preset configures its own; runs made before the package's re-layer "
            "(issue 10) composed them in the script and decoded them without the estimator's erased-label map. "
            "`residual` variants need the labels at transform time, so they are composed in the script. "
            "`transport` is the estimator's own `\"transport\"` concealment (it too needs the labels at transform "
            "time), fitted as `bafo run` fits it: on a calibration share of the training split, chosen by content "
            "hash and never shared; its maps invert exactly given the labels, so it decodes as `none` does."
        ),
        "",
    ]
    return "\n".join(lines)


def fewer_rows_note(attacked: list[dict], n_train: int) -> str:
    """The variants whose data-rich attacker learned from fewer rows than the training split: those they share."""
    fewer = [f"`{v['name']}` {v['train_split_attacker_rows']}" for v in attacked
             if (v.get("train_split_attacker_rows") or n_train) < n_train]
    if not fewer:
        return ""
    return (" Where a variant shares fewer rows (" + ", ".join(fewer) + "; the rest are the calibration rows it was "
            "fitted on, which `bafo run` does not share), its attacker learns from those it shares.")


def _caveats(v: dict, n_train: int) -> str:
    """What a recommendation of ``v`` holds only under: labels at transform time, a smaller attacker."""
    text = " It needs every row's sensitive labels to encode it (†): for a labelled export only." if v.get(
        "labels_at_transform") else ""
    rows = v.get("train_split_attacker_rows")
    if rows and rows < n_train:
        text += f" Its data-rich attacker learns from the {rows} rows it shares, not all {n_train}."
    return text


def summary_paragraphs(result: dict) -> list[str]:
    """The reading of the table, composed from the numbers."""
    variants = result["variants"]
    by_name = {v["name"]: v for v in variants}
    none = by_name["none"]
    out = ["## Reading", ""]
    met_all = [v for v in variants if v["goals_met"]["all"]]
    met_restored = [v for v in variants if v["goals_met"]["all_restored"] and not v["goals_met"]["all"]]
    if met_all:
        out.append("**The goal is met** by " + ", ".join(f"`{_label(v)}`" for v in met_all) + " (at the audit's mean)."
                   + (" † needs each row's labels to encode: for labelled exports only." if any(
                       v.get("labels_at_transform") for v in met_all) else ""))
    else:
        out.append(
            "**No variant meets the whole goal** (every leakage target and the 1 dB budget) as the library decodes."
        )
    if met_restored:
        out.append("With the restored decode, " + ", ".join(f"`{v['name']}`" for v in met_restored) + " would meet it.")
    out.append("")
    for attr in LEAKAGE_GOALS:
        hits = [f"`{v['name']}`" for v in variants if v["goals_met"][attr]]
        best = (max if attr == "age" else min)(variants, key=lambda v: v["audit"][attr]["worst"])
        a = best["audit"][attr]
        unit = " years MAE" if attr == "age" else " balanced accuracy"
        out.append(
            f"- *{attr}*: the best worst case is {a['worst']:.3f}{unit} (`{best['name']}`, {a['worst_probe']} probe, "
            f"interval {a['ci_low']:.3f}–{a['ci_high']:.3f}) against {none['audit'][attr]['worst']:.3f} for plain "
            f"BAFO ({none['audit'][attr]['worst_probe']}). Target met by: {', '.join(hits) if hits else 'no variant'}."
        )
    costs = ", ".join(
        f"`{v['name']}` {_db(v['reconstruction']['psnr_loss_db'])} dB"
        + (f" ({_db(_restored_loss(v))} restored)" if _restored_loss(v) is not None else "")
        for v in variants
        if v["name"] != "none"
    )
    out.append(f"- *cost* (PSNR against plain BAFO, true labels): {costs}.")
    attacked = [v for v in variants if v.get("train_split_attacker")]
    if attacked:
        parts = []
        for v in attacked:
            t = v["train_split_attacker"]
            parts.append(
                f"`{v['name']}` gender {t['gender']['worst']:.3f} ({t['gender']['worst_probe']}), ethnicity "
                f"{t['ethnicity']['worst']:.3f}, age MAE {t['age']['worst']:.2f}"
            )
        out.append("- *stronger attacker* (probes trained on the training split): " + "; ".join(parts) + ".")
        for attr in LEAKAGE_GOALS:
            hits = [f"`{v['name']}`" for v in attacked if _strong_met(v)[attr]]
            in_audit = [f"`{v['name']}`" for v in attacked if v["goals_met"][attr]]
            if len(hits) < len(in_audit):
                out.append(
                    f"  Against it the {attr} target is met by {', '.join(hits) if hits else 'no variant'} "
                    f"(in the audit: {', '.join(in_audit)})."
                )
    rec = result["recommended"]
    out.append("")
    if rec["within_budget"]:
        v = by_name[rec["within_budget"]]
        out.append(
            f"**Recommended default within the 1 dB budget: `{v['name']}`** (most leakage targets met, then "
            f"lowest gender and ethnicity worst case)." + _caveats(v, result["data"]["n_train"])
        )
    else:
        out.append("**No concealment mode of the estimator stays within the 1 dB budget** as it decodes today.")
    if rec["most_private"]:
        v = by_name[rec["most_private"]]
        met = [k for k in LEAKAGE_GOALS if v["goals_met"][k]]
        out.append(
            f"Best of the estimator's modes on this data: **`{v['name']}`** (rule: most audit targets met, "
            f"then most met against the stronger attacker, then lowest gender and ethnicity leakage): gender "
            f"{v['audit']['gender']['worst']:.3f}, ethnicity {v['audit']['ethnicity']['worst']:.3f}, age MAE "
            f"{v['audit']['age']['worst']:.2f}, {_db(v['reconstruction']['psnr_loss_db'])} dB; audit targets met: "
            f"{', '.join(met) if met else 'none'}." + _caveats(v, result["data"]["n_train"])
            + (" The package default keeps `covariance_dims=0`: on synthetic faces the covariance erasure also "
               "removed non-sensitive information (docs/COVARIANCE_ERASURE.md)."
               if v.get("covariance_dims") else "")
        )
        cheap = by_name[rec["cheapest"]]
        if cheap["name"] != v["name"]:
            g = cheap["audit"]["gender"]
            out.append(
                f"`{cheap['name']}` meets as many audit targets {_loss_relative(cheap, v)}, with gender "
                f"{g['worst']:.3f} (interval {g['ci_low']:.3f}–{g['ci_high']:.3f}): "
                "the difference is within the audit's intervals."
            )
    out += ["", *limits(result)]
    return out


# Qualitative reading of what bounds the frontier (no numbers: those are rendered above). Paragraphs
# whose claim rests on a variant or a verdict are rendered only where the result holds it (limits()).
LIMITS = {
    "erasure": (
        "*Linear erasure is what costs the reconstruction.* To make the latent linearly blind, LEACE removes "
        "whole directions of it, and most of what lies along them is face content the labels do not predict "
        "(the last columns of the per-probe table). A decoder given the true labels cannot put that back: "
        "adding back the label-predictable part (the restored decode) recovers less than a decibel. The "
        "refiner's own bottleneck costs more on top."
    ),
    "residual": (
        "*Keeping the information keeps the leak.* The `residual` variant removes no direction (it is "
        "exactly inverted at decode time, so it costs no PSNR) and is linearly blind like LEACE, but it leaves "
        "more non-linear gender signal: a latent that keeps the face content keeps the content whose "
        "distribution differs between groups (hair, beard, face shape, skin tone), and an MLP reads the "
        "attribute off it."
    ),
    "no_variant_meets": (
        "*So, on this encoder, none of the post-hoc maps measured here reaches the 1 dB budget and the "
        "gender target together.* Fine-tuning the decoder on concealed latents (`decoder_epochs`, `dec=`) "
        "buys back some reconstruction without changing the latents; putting the erasure into training "
        "(`concealment=\"trained\"`, docs/TRAINED_CONCEALMENT.md) is another point on the leakage-utility "
        "frontier, not a better one. Attribute control should be checked with a judge for any variant that "
        "moves more of the face into the labels."
    ),
    "transport": (
        "*Moving instead of erasing keeps the content, at the price of the labels.* The `transport` variant "
        "matches each attribute cell's latent mean and covariance to the pooled ones and inverts exactly, so it "
        "costs no PSNR and keeps what varies inside a cell; but it needs every row's labels to encode it, and its "
        "maps are estimated on the calibration rows, whose estimation error every shared row of a cell carries "
        "and a data-rich attacker reads (docs/TRAINED_CONCEALMENT.md §13–14)."
    ),
    "attacker": (
        "*Read the margins against a stronger attacker.* The audit's attacker learns from the held-out "
        "split's folds only; probes trained on the whole training split (the table above, where run) recover "
        "more, so a variant that meets a target narrowly in the audit may not meet it against an attacker "
        "holding the exported training data."
    ),
}


def limits(result: dict) -> list[str]:
    """The paragraphs of :data:`LIMITS` that this result supports, and the adversary weights compared."""
    variants = result["variants"]
    adversary = sorted(
        (v for v in variants if v["concealment"] == "full" and is_preset(v)
         and not v.get("covariance_dims") and not v.get("decoder_epochs")),
        key=lambda v: v["adversary_weight"],
    )
    lines = ["**What limits further progress.**", ""]
    paragraphs = [LIMITS["erasure"]]
    if len(adversary) > 1:
        gender = [v["audit"]["gender"] for v in adversary]
        overlap = max(g["ci_low"] for g in gender) <= min(g["ci_high"] for g in gender)
        weights = ", ".join(f"{v['adversary_weight']:g}" for v in adversary)
        paragraphs.append(
            f"*The refiner's adversary weight* ({weights}): the audit's worst-case gender balanced accuracy is "
            + ", ".join(f"{g['worst']:.3f}" for g in gender)
            + (": the same within the intervals (they all overlap), so the adversary is not what conceals; the "
               "refiner's gain over LEACE comes from re-encoding the erased latent and erasing again."
               if overlap else ": the intervals do not all overlap.")
        )
    if any(v["concealment"] == "residual" for v in variants):
        paragraphs.append(LIMITS["residual"])
    if any(v["concealment"] == "transport" for v in variants):
        paragraphs.append(LIMITS["transport"])
    if not any(goals_met(v)["all"] for v in variants):
        paragraphs.append(LIMITS["no_variant_meets"])
    paragraphs.append(LIMITS["attacker"])
    return lines + [f"{i}. {text}" for i, text in enumerate(paragraphs, 1)]


def render(result: dict, json_path: Path, figure_path: Path, markdown_path: Path) -> None:
    for v in result["variants"]:  # derived from the measurements at render time, never stored
        v["goals_met"] = goals_met(v)
    result["recommended"] = recommend(result["variants"])
    render_figure(result, figure_path)
    text = render_markdown(result, json_path, figure_path, markdown_path)
    markdown_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = markdown_path.with_suffix(".md.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, markdown_path)


def write_json(result: dict, path: Path) -> None:
    """Write the result atomically (a temporary file, then a rename)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(result, indent=1, allow_nan=False) + "\n", encoding="utf-8")
    os.replace(tmp, path)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--synthetic", type=int, default=0, metavar="N", help="train a tiny model on N synthetic faces")
    source.add_argument("--render-only", action="store_true", help="re-render figure and markdown from --json")
    source.add_argument("--merge-from", metavar="JSON",
                        help="add the variants of another run's JSON (same data, model and folds; e.g. run side by "
                             "side) that --json lacks, and re-render")
    parser.add_argument("--model", default=str(ROOT / "artifacts" / "utk48"))
    parser.add_argument("--utkface", default="/work/shared/data/utkface/UTKFace")
    parser.add_argument("--limit", type=int, default=None, metavar="N",
                        help="UTKFace: load only N images (smallest content hashes; a smoke run)")
    parser.add_argument("--variants", default=DEFAULT_VARIANTS)
    parser.add_argument(
        "--append",
        action="store_true",
        help="add (or replace) these variants in the existing --json instead of starting afresh",
    )
    parser.add_argument("--refine-epochs", type=int, default=30)
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument(
        "--train-attacker",
        action="store_true",
        help="also score probes trained on the whole training split's concealed latents (slower)",
    )
    parser.add_argument("--device", default="auto")
    parser.add_argument("--threads", type=int, default=2, help="torch threads for encoding and the refiner")
    parser.add_argument("--audit-threads", type=int, default=1, help="thread limit of the audit's probes")
    parser.add_argument("--landmarks", default=DEFAULT_LANDMARKS,
                        help="UTKFace landmark targets (Parquet keyed by content hash) for the utility columns")
    parser.add_argument("--utility-probes", default="prior,linear,mlp,gbdt",
                        help="probes of the utility audit (a smoke run may take prior,linear)")
    parser.add_argument("--json", default=str(DEFAULT_JSON))
    parser.add_argument("--figure", default=str(DEFAULT_FIGURE))
    parser.add_argument("--markdown", default=str(DEFAULT_MARKDOWN))
    args = parser.parse_args(argv)
    json_path, figure_path, markdown_path = Path(args.json), Path(args.figure), Path(args.markdown)

    if args.render_only:
        result = json.loads(json_path.read_text(encoding="utf-8"))
    elif args.merge_from:
        other = json.loads(Path(args.merge_from).read_text(encoding="utf-8"))
        result = merge(json.loads(json_path.read_text(encoding="utf-8")), other, only_new=True)
        write_json(result, json_path)
    else:
        result = run(args)
        if args.append:
            result = merge(json.loads(json_path.read_text(encoding="utf-8")), result)
        write_json(result, json_path)
    render(result, json_path, figure_path, markdown_path)
    print(f"wrote {json_path}, {figure_path}, {markdown_path}", flush=True)
    return result


if __name__ == "__main__":
    main()
