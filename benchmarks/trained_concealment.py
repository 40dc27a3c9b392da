"""Concealment learned in training vs. post-hoc concealment: leakage to a data-rich attacker, utility, PSNR.

Issue 12's research measurement. Each variant is a full ``BAFOTransformer`` fit on the
training split (content-hash split, test fraction 0.15, seed 0 on UTKFace; 0.25 on
synthetic faces), optionally followed by a post-hoc concealment refit
(``fit_concealment``). On the held-out split it measures:

- **data-rich attacker**: linear, MLP and boosted-tree probes fitted on *all* training-split
  latents with their labels, scored once on the held-out latents; worst case over probes,
  with a 95% bootstrap interval over held-out rows (gender and ethnicity balanced
  accuracy, age MAE in years, age band balanced accuracy);
- the audit's attacker (``--audit``): ``audits.audit_leakage``, 5-fold CV within the held-out split;
- **PSNR** of held-out reconstructions decoded with the true labels;
- **utility**: UTKFace: head yaw, and mouth opening / mouth width / eye opening after
  regressing out the sensitive attributes (landmark targets from
  ``--landmarks``), R² of linear and MLP probes fitted on the training latents; synthetic
  faces: every non-sensitive attribute (smile, glasses, hair style: chance-adjusted
  balanced accuracy; background, tilt: R²). Shares are relative to the ``none`` variant
  (the unconcealed encoder at the same budget) when it is in the same JSON.

Trained models are cached under ``--models`` (one directory per variant and data setting),
so re-measuring does not retrain. Results are merged into ``--json`` by variant name::

    python benchmarks/trained_concealment.py --data utkface --epochs 12 --variants none,linear-cov16,trained-cov16
    python benchmarks/trained_concealment.py --data synthetic --faces 8000 --epochs 8 --variants none,trained
    python benchmarks/trained_concealment.py --list

Training seeds (``--seed``: the estimator's ``random_state``; the split stays fixed) go to one file each
and are combined, with each headline number's min-max over seeds, by::

    python benchmarks/trained_concealment.py --json seeds.json --merge-seeds seed0.json seed1.json seed2.json
"""

from __future__ import annotations

import argparse
import copy
import hashlib
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _machine import machine  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
UTKFACE = Path("/work/shared/data/utkface/UTKFace")
LANDMARKS = Path("/work/cache/utkface_landmarks.parquet")
AGE_BANDS = (20.0, 40.0, 60.0)
ATTACK_PROBES = ("linear", "mlp", "gbdt")
GOALS = {  # issue 12
    "data_rich": {"gender": ("<=", 0.58), "ethnicity": ("<=", 0.27), "age": (">=", 14.5)},
    "audit": {"gender": ("<=", 0.56), "ethnicity": ("<=", 0.25), "age": (">=", 15.0)},
    "psnr_loss_db": 1.0,
    "utility_share": 0.9,
    "synthetic_leak_chance_adjusted": 0.05,
}

# The in-loop training code as this process loaded it (read once, so edits made while it runs do not
# change which cached models it finds).
IN_LOOP_SOURCE = hashlib.sha1(b"".join(
    (ROOT / "bafo_pipeline" / name).read_bytes()
    for name in ("_nn/in_loop.py", "_nn/running_erasure.py", "_nn/distribution_matching.py", "_nn/training.py",
                 "transformers/_trained_erasure.py")
)).hexdigest()

# TrainedErasure's own parameters; any of them in a variant's "fit" spells
# concealment=[TrainedErasure(covariance_dims=..., ...)].
IN_LOOP_KEYS = ("matching_weight", "matching", "erase_in_loop", "freeze_after")

# name -> {"fit": estimator parameters, "post": parameters for a fit_concealment refit (optional)}.
VARIANTS: dict[str, dict] = {
    "none": {"fit": {"concealment": "none"}},
    # post-hoc concealment refitted on the 'none' encoder (the same cached model)
    "linear": {"fit": {"concealment": "none"}, "post": {"concealment": "linear", "decoder_epochs": 0}},
    "linear-cov8": {"fit": {"concealment": "none"},
                    "post": {"concealment": "linear", "covariance_dims": 8, "decoder_epochs": 0}},
    "linear-cov16": {"fit": {"concealment": "none"},
                     "post": {"concealment": "linear", "covariance_dims": 16, "decoder_epochs": 0}},
    "linear-cov16-dec6": {"fit": {"concealment": "none"},
                          "post": {"concealment": "linear", "covariance_dims": 16, "decoder_epochs": 6}},
    "full-dec6": {"fit": {"concealment": "none"}, "post": {"concealment": "full", "decoder_epochs": 6}},
    # concealment learned in training
    "trained": {"fit": {"concealment": "trained", "decoder_epochs": 0}},
    # the estimator's preset as it fits by default: the in-loop encoder, then the decoder fine-tuned (6 epochs)
    "trained-dec6": {"fit": {"concealment": "trained", "decoder_epochs": 0},
                     "post": {"concealment": "trained", "decoder_epochs": 6}},
    "trained-cov8": {"fit": {"concealment": "trained", "covariance_dims": 8, "decoder_epochs": 0}},
    "trained-cov16": {"fit": {"concealment": "trained", "covariance_dims": 16, "decoder_epochs": 0}},
    # issue 12, distribution matching (§9 of docs/TRAINED_CONCEALMENT.md): the sliced-Wasserstein penalty on the
    # erased, whitened means alone, the decoder trained on the encoder's own latents; LEACE after training
    "swd": {"fit": {"concealment": "trained", "matching": "sliced_wasserstein", "erase_in_loop": False,
                    "matching_weight": 0.01, "decoder_epochs": 0}},
}


def variant_settings(name: str) -> dict:
    """A registered variant, or one composed on the command line as ``base+key=value+key=value``.

    ``post.key=value`` goes to the post-hoc refit; every other key to the estimator.
    """
    base, *options = name.split("+")
    if base not in VARIANTS:
        raise SystemExit(f"unknown variant {base!r}; known: {', '.join(VARIANTS)}")
    settings = copy.deepcopy(VARIANTS[base])
    for option in options:
        key, _, raw = option.partition("=")
        try:
            value = json.loads(raw)
        except json.JSONDecodeError:
            value = raw
        target = settings.setdefault("post", {}) if key.startswith("post.") else settings["fit"]
        target[key.removeprefix("post.")] = value
    return settings


# ---------------------------------------------------------------- data
def load_data(args):
    """``(train, test, info)`` FaceDatasets."""
    if args.data == "synthetic":
        from bafo_pipeline import make_synthetic_faces

        faces = make_synthetic_faces(args.faces, random_state=11)
        split = {"test_fraction": 0.25, "seed": 0}
        train, test = faces.split(**split)
    else:
        from bafo_pipeline import load_utkface

        faces = load_utkface(args.utkface, limit=args.limit)
        split = {"test_fraction": 0.15, "seed": 0}
        train, test = faces.split(**split)
    info = {"data": args.data, "split": split, "n_train": len(train), "n_test": len(test)}
    if args.data == "synthetic":
        info["faces"] = args.faces
    elif args.limit:
        info["limit"] = args.limit
    return train, test, info


def utkface_utility_targets(train, test, path: Path) -> dict | None:
    """Yaw, and mouth/eye targets with the sensitive attributes regressed out (OLS fitted on train).

    Returns ``{target: (train_values, test_values, train_mask, test_mask)}``; rows whose landmarks
    were not found by the detector are masked out.
    """
    if not path.exists():
        return None
    from sklearn.linear_model import LinearRegression

    table = pd.read_parquet(path).drop_duplicates("content_hash").set_index("content_hash")

    def rows(ds):
        found = table.reindex(ds.content_hash)
        ok = (found["detection"].astype(str) == "detector").to_numpy()
        return found.reset_index(drop=True), ok

    (tr, tr_ok), (te, te_ok) = rows(train), rows(test)

    def design(ds):
        s = ds.sensitive_features.reset_index(drop=True)
        age = s["age"].to_numpy(float)
        bands = np.eye(len(AGE_BANDS) + 1)[np.digitize(age, AGE_BANDS)]
        cells = pd.get_dummies(s["gender"].astype(str) + "|" + s["ethnicity"].astype(str)).reindex(
            columns=sorted(set(train.sensitive_features["gender"].astype(str) + "|" + train.sensitive_features["ethnicity"].astype(str))),
            fill_value=0,
        )
        return np.hstack([age[:, None] / 50, (age[:, None] / 50) ** 2, bands, cells.to_numpy(float)])

    out = {"yaw": (tr["yaw"].to_numpy(float), te["yaw"].to_numpy(float), tr_ok, te_ok)}
    X_tr, X_te = design(train), design(test)
    for target in ("mouth_open", "mouth_width", "eye_open"):
        y_tr, y_te = tr[target].to_numpy(float), te[target].to_numpy(float)
        ols = LinearRegression().fit(X_tr[tr_ok], y_tr[tr_ok])
        out[f"{target}_residual"] = (y_tr - ols.predict(X_tr), y_te - ols.predict(X_te), tr_ok, te_ok)
    return out


# ------------------------------------------------------------- models
def model_key(settings: dict, args, info: dict) -> str:
    """A directory name fixed by the settings the trained encoder depends on.

    Not by the trainer's code (only the in-loop code under study is keyed on its source): an encoder
    cached before a trainer change is reused as it is. Since 2026-11-30 the trainer keeps the best
    validation epoch; encoders cached before (§10's seeds 1 and 2 ended on a worse epoch) were not
    refitted. Pass ``--refit`` (or another ``--models``) to fit them with today's trainer.
    """
    identity = {"fit": settings["fit"], "epochs": args.epochs, "latent": args.latent_dim, "data": info,
                "seed": args.seed, "base": args.base}
    if settings["fit"].get("concealment") == "trained" or set(IN_LOOP_KEYS) & set(settings["fit"]):
        # the in-loop code is under study: key on its source
        identity["code"] = IN_LOOP_SOURCE
    return hashlib.sha1(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:12]


def fit_or_load(name: str, settings: dict, train, args, info: dict):
    from bafo_pipeline import BAFOTransformer, load_model, save_model

    # Named by what the encoder depends on only: post-hoc variants share their base encoder.
    directory = Path(args.models) / f"{args.data}-{settings['fit'].get('concealment', 'full')}-{model_key(settings, args, info)}"
    # Beside the model, not in it: load_model refuses a directory holding files its manifest does not list.
    timing = directory.with_name(directory.name + ".fit_seconds.json")
    if (directory / "fit_seconds.json").exists():  # a cache written before the model manifest
        os.replace(directory / "fit_seconds.json", timing)
    if directory.exists() and not args.refit:
        return load_model(directory, device="cpu"), json.loads(timing.read_text())
    params = {"latent_dim": args.latent_dim, "epochs": args.epochs, "random_state": args.seed, "device": "cpu",
              "precision": "float32", **json.loads(args.base), **settings["fit"]}
    if set(IN_LOOP_KEYS) & set(params):
        from bafo_pipeline import TrainedErasure

        params["concealment"] = [TrainedErasure(covariance_dims=params.pop("covariance_dims", 0),
                                                **{key: params.pop(key) for key in IN_LOOP_KEYS if key in params})]
    model = BAFOTransformer(**params)
    started = time.perf_counter()
    model.fit(train.images, sensitive_features=train.sensitive_features)
    seconds = {"fit": time.perf_counter() - started, "images_per_second": [r["images_per_second"] for r in model.history_]}
    save_model(model, directory, overwrite=True)
    timing.write_text(json.dumps(seconds))
    return model, seconds


# ----------------------------------------------------------- measures
def bootstrap(metric, y, pred, n: int, rng) -> list[float]:
    idx = rng.integers(0, len(y), size=(n, len(y)))
    values = np.array([metric(y[i], pred[i]) for i in idx])
    return [float(np.percentile(values, 2.5)), float(np.percentile(values, 97.5))]


def data_rich_attack(Z_train, Z_test, train, test, args) -> dict:
    """Probes fitted on all training latents, scored on held-out ones; worst case with a bootstrap interval."""
    from sklearn.metrics import balanced_accuracy_score, mean_absolute_error

    from bafo_pipeline.audits import make_probe

    rng = np.random.default_rng(0)
    targets = {
        "gender": (train.attributes["gender"].astype(str).to_numpy(), test.attributes["gender"].astype(str).to_numpy()),
        "ethnicity": (train.attributes["ethnicity"].astype(str).to_numpy(), test.attributes["ethnicity"].astype(str).to_numpy()),
        "age": (train.attributes["age"].to_numpy(float), test.attributes["age"].to_numpy(float)),
        "age_band": (np.digitize(train.attributes["age"].to_numpy(float), AGE_BANDS),
                     np.digitize(test.attributes["age"].to_numpy(float), AGE_BANDS)),
    }
    out = {}
    for attribute, (y_train, y_test) in targets.items():
        regression = attribute == "age"
        metric = mean_absolute_error if regression else balanced_accuracy_score
        scores, predictions = {}, {}
        for probe_name in ATTACK_PROBES:
            probe = make_probe(probe_name, "regression" if regression else "classification", random_state=0, device="cpu")
            probe.fit(Z_train, y_train)
            predictions[probe_name] = probe.predict(Z_test)
            scores[probe_name] = float(metric(y_test, predictions[probe_name]))
        worst = (min if regression else max)(scores, key=scores.get)
        entry = {"worst": scores[worst], "worst_probe": worst, "by_probe": scores,
                 "ci95": bootstrap(metric, y_test, predictions[worst], args.bootstrap, rng)}
        if not regression:
            chance = 1.0 / len(np.unique(y_train))
            entry["chance_adjusted"] = (scores[worst] - chance) / (1 - chance)
        out[attribute] = entry
    return out


def audit_attack(Z_test, test) -> dict:
    from bafo_pipeline.audits import audit_leakage

    labels = test.attributes[["age", "gender", "ethnicity"]].reset_index(drop=True)
    audit = audit_leakage({"z": Z_test}, labels, attributes=["age", "gender", "ethnicity"], n_folds=5,
                          random_state=0, device="cpu", n_permutations=0)
    t = audit.table
    t = t[t["probe"].isin(ATTACK_PROBES)]
    out = {}
    for attribute in t["attribute"].unique():
        rows = t[t["attribute"] == attribute]
        metric = "mae" if (rows["metric"] == "mae").any() else "balanced_accuracy"
        scored = rows[rows["metric"] == metric].set_index("probe")
        best = scored["mean"].idxmin() if metric == "mae" else scored["mean"].idxmax()
        out[attribute] = {"worst": float(scored.loc[best, "mean"]), "worst_probe": best,
                          "ci95": [float(scored.loc[best, "ci_low"]), float(scored.loc[best, "ci_high"])],
                          "by_probe": {p: float(v) for p, v in scored["mean"].items()}}
    return out


def utility(Z_train, Z_test, targets: dict) -> dict:
    """Linear and MLP probes per non-sensitive target: R² (continuous) or chance-adjusted balanced accuracy."""
    from sklearn.metrics import balanced_accuracy_score, r2_score

    from bafo_pipeline.audits import make_probe

    out = {}
    for name, (y_train, y_test, train_ok, test_ok, continuous) in targets.items():
        scores = {}
        for probe_name in ("linear", "mlp"):
            probe = make_probe(probe_name, "regression" if continuous else "classification", random_state=0, device="cpu")
            probe.fit(Z_train[train_ok], y_train[train_ok])
            predicted = probe.predict(Z_test[test_ok])
            if continuous:
                scores[probe_name] = float(r2_score(y_test[test_ok], predicted))
            else:
                chance = 1.0 / len(np.unique(y_train))
                scores[probe_name] = float((balanced_accuracy_score(y_test[test_ok], predicted) - chance) / (1 - chance))
        out[name] = {"best": max(scores.values()), "by_probe": scores}
    return out


def utility_targets(train, test, args) -> dict:
    if args.data == "synthetic":
        out = {}
        for name in ("smile", "glasses", "hair_style", "background", "tilt"):
            continuous = name in ("background", "tilt")
            y_tr, y_te = train.attributes[name].to_numpy(), test.attributes[name].to_numpy()
            if not continuous:
                y_tr, y_te = y_tr.astype(str), y_te.astype(str)
            out[name] = (y_tr, y_te, np.ones(len(y_tr), bool), np.ones(len(y_te), bool), continuous)
        return out
    found = utkface_utility_targets(train, test, Path(args.landmarks))
    return {} if found is None else {k: (*v, True) for k, v in found.items()}


def psnr(images: np.ndarray, decoded: np.ndarray) -> np.ndarray:
    mse = ((images.astype(float) - decoded.astype(float)) ** 2).reshape(len(images), -1).mean(axis=1)
    return 10 * np.log10(255.0**2 / np.maximum(mse, 1e-12))


def training_history(model) -> list[dict]:
    """The encoder's per-epoch losses (timing left out), as the fitted model records them."""
    return [{k: v for k, v in record.items() if k != "images_per_second"} for record in model.history_]


def measure(name: str, args, train, test, info, targets) -> dict:
    settings = variant_settings(name)
    t0 = time.perf_counter()
    model, fit_seconds = fit_or_load(name, settings, train, args, info)
    post_seconds = None
    if settings.get("post"):
        t1 = time.perf_counter()
        model.set_params(**settings["post"]).fit_concealment(train.images, sensitive_features=train.sensitive_features)
        post_seconds = time.perf_counter() - t1
    print(f"[{name}] fitted/loaded in {time.perf_counter() - t0:.0f}s", file=sys.stderr, flush=True)
    Z_train, Z_test = model.transform(train.images), model.transform(test.images)
    decoded = model.inverse_transform(Z_test, sensitive_features=test.sensitive_features)
    result = {
        "settings": settings,
        "params": json.loads(json.dumps({k: v for k, v in model.get_params(deep=False).items()
                                         if k not in ("device", "verbose")}, default=repr)),
        "fit_seconds": fit_seconds["fit"],
        "training_history": training_history(model),
        "train_images_per_second": fit_seconds["images_per_second"],
        "post_fit_seconds": post_seconds,
        "psnr_per_image": np.round(psnr(test.images, decoded), 3).tolist(),
        "data_rich": data_rich_attack(Z_train, Z_test, train, test, args),
        "utility": utility(Z_train, Z_test, targets) if targets else None,
    }
    result["psnr_db"] = float(np.mean(result["psnr_per_image"]))
    if args.audit:
        result["audit"] = audit_attack(Z_test, test)
    print(f"[{name}] measured in {time.perf_counter() - t0:.0f}s: " + summary_line(result), file=sys.stderr, flush=True)
    return result


def summary_line(r: dict) -> str:
    d = r["data_rich"]
    text = (f"PSNR {r['psnr_db']:.2f}; data-rich gender {d['gender']['worst']:.3f} ({d['gender']['worst_probe']}), "
            f"ethnicity {d['ethnicity']['worst']:.3f}, age MAE {d['age']['worst']:.2f}, band {d['age_band']['worst']:.3f}")
    if r.get("utility"):
        text += "; utility " + ", ".join(f"{k} {v['best']:.3f}" for k, v in r["utility"].items())
    if r.get("audit"):
        a = r["audit"]
        text += f"; audit gender {a['gender']['worst']:.3f}, ethnicity {a['ethnicity']['worst']:.3f}, age {a['age']['worst']:.2f}"
    return text


def derived(results: dict) -> dict:
    """PSNR loss and utility shares against ``none``, and the goals each variant meets."""
    reference = results.get("none")
    out = {}
    for name, r in results.items():
        entry = {}
        if reference is not None:
            loss = np.array(reference["psnr_per_image"]) - np.array(r["psnr_per_image"])
            half = 1.96 * loss.std(ddof=1) / np.sqrt(len(loss))
            entry["psnr_loss_db"] = float(loss.mean())
            entry["psnr_loss_ci95"] = [float(loss.mean() - half), float(loss.mean() + half)]
            if r.get("utility") and reference.get("utility"):
                entry["utility_share"] = {
                    k: v["best"] / reference["utility"][k]["best"] if reference["utility"][k]["best"] > 0 else None
                    for k, v in r["utility"].items()
                }
        met = {}
        for attacker in ("data_rich", "audit"):
            if attacker not in r:
                continue
            for attribute, (op, bound) in GOALS[attacker].items():
                value = r[attacker][attribute]["worst"]
                met[f"{attacker}.{attribute}"] = value <= bound if op == "<=" else value >= bound
        if "psnr_loss_db" in entry:
            met["psnr"] = entry["psnr_loss_db"] <= GOALS["psnr_loss_db"]
        if entry.get("utility_share"):
            met["utility"] = all(s is not None and s >= GOALS["utility_share"] for s in entry["utility_share"].values())
        entry["goals_met"] = met
        out[name] = entry
    return out


CHANCE = {"gender": 0.5, "ethnicity": 0.2, "age_band": 0.25}  # balanced-accuracy chance (synthetic faces)


def chance_adjusted(balanced_accuracy: float, attribute: str) -> float:
    """``(bacc - chance) / (1 - chance)``: 0 at chance, 1 when perfect."""
    chance = CHANCE[attribute]
    return (balanced_accuracy - chance) / (1.0 - chance)


def goals_table(result: dict) -> str:
    """Issue 12's goals, met (yes) or not (no), per variant; the value that decides in brackets."""
    numbers = derived(result["variants"])
    synthetic = result["setting"]["data"] == "synthetic"
    if synthetic:
        leak_goals = [("data_rich", a) for a in CHANCE]
        header = ["gender (ca ≤ 0.05)", "ethnicity (ca ≤ 0.05)", "age band (ca ≤ 0.05)"]
    else:
        leak_goals = [(k, a) for k in ("data_rich", "audit") for a in ("gender", "ethnicity", "age")]
        header = [f"{'data-rich' if k == 'data_rich' else 'audit'} {a} ({GOALS[k][a][0]} {GOALS[k][a][1]})"
                  for k, a in leak_goals]
    header += ["PSNR (≥ none − 1 dB)", "utility (≥ 0.9 each)"]
    lines = ["| variant | " + " | ".join(header) + " |", "|---|" + "---|" * len(header)]
    for name, r in result["variants"].items():
        cells = []
        for attacker, attribute in leak_goals:
            if attacker not in r:
                cells.append("–")
                continue
            value = r[attacker][attribute]["worst"]
            if synthetic:
                adjusted = chance_adjusted(value, attribute)
                cells.append(f"{'yes' if adjusted <= GOALS['synthetic_leak_chance_adjusted'] else 'no'} ({adjusted:.3f})")
            else:
                op, bound = GOALS[attacker][attribute]
                met = value <= bound if op == "<=" else value >= bound
                cells.append(f"{'yes' if met else 'no'} ({value:.3f})" if attribute != "age" else
                             f"{'yes' if met else 'no'} ({value:.2f})")
        entry = numbers[name]
        loss = entry.get("psnr_loss_db")
        cells.append("–" if loss is None else f"{'yes' if loss <= GOALS['psnr_loss_db'] else 'no'} ({-loss:+.2f})")
        shares = entry.get("utility_share") or {}
        if shares:
            worst = min(shares, key=lambda k: shares[k] if shares[k] is not None else -1)
            ok = all(v is not None and v >= GOALS["utility_share"] for v in shares.values())
            cells.append(f"{'yes' if ok else 'no'} (min {shares[worst]:.2f}, {worst})")
        else:
            cells.append("–")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def markdown_table(result: dict) -> str:
    """Leakage (data-rich, audit), PSNR and utility per variant, from a result file."""
    derived_numbers = derived(result["variants"])

    def leak(entry, attribute, digits):
        if entry is None:
            return "–"
        e = entry[attribute]
        low, high = e["ci95"]
        return f"{e['worst']:.{digits}f} ({e['worst_probe']}; {low:.{digits}f}–{high:.{digits}f})"

    lines = [
        "| variant | gender bacc | ethnicity bacc | age MAE | age-band bacc | audit gender / ethnicity / age | PSNR (dB) | ΔPSNR | fit (min) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    utility_names = []
    for name, r in result["variants"].items():
        d, a = r["data_rich"], r.get("audit")
        audit = "–" if a is None else f"{a['gender']['worst']:.3f} / {a['ethnicity']['worst']:.3f} / {a['age']['worst']:.2f}"
        loss = derived_numbers[name].get("psnr_loss_db")
        lines.append(
            f"| {name} | {leak(d, 'gender', 3)} | {leak(d, 'ethnicity', 3)} | {leak(d, 'age', 2)} | {leak(d, 'age_band', 3)} "
            f"| {audit} | {r['psnr_db']:.2f} | {'–' if loss is None else f'{-loss:+.2f}'} | {(r['fit_seconds'] + (r.get('post_fit_seconds') or 0)) / 60:.1f} |"
        )
        if r.get("utility"):
            utility_names = list(r["utility"])
    if utility_names:
        lines += ["", "| variant | " + " | ".join(utility_names) + " |", "|---|" + "---|" * len(utility_names)]
        for name, r in result["variants"].items():
            shares = derived_numbers[name].get("utility_share") or {}
            cells = []
            for target in utility_names:
                value = (r.get("utility") or {}).get(target)
                share = shares.get(target)
                cells.append("–" if value is None else f"{value['best']:.3f}" + ("" if share is None else f" ({share:.2f})"))
            lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def merge(sources: list[str], target: Path) -> dict:
    """Combine result files of one setting (later files win per variant); recompute the derived numbers."""
    parts = [json.loads(Path(source).read_text()) for source in sources]
    if target.exists():
        parts.insert(0, json.loads(target.read_text()))
    settings = {json.dumps(p["setting"], sort_keys=True) for p in parts}
    if len(settings) != 1:
        raise SystemExit(f"cannot merge results of different settings: {settings}")
    variants, runs = {}, []
    for part in parts:
        variants.update(part["variants"])
        runs += [run for run in part.get("runs", []) if run not in runs]
    output = {"benchmark": "trained_concealment", "setting": parts[0]["setting"], "goals": GOALS,
              "variants": variants, "derived": derived(variants), "runs": runs}
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_suffix(".tmp")
    tmp.write_text(json.dumps(output, indent=1))
    os.replace(tmp, target)
    return output


# ------------------------------------------------------------- seeds
def headline(result: dict, derived_entry: dict) -> dict[str, float]:
    """The numbers a variant is judged by: leakage (worst probe), PSNR loss, utility shares."""
    out = {f"data_rich.{a}": result["data_rich"][a]["worst"] for a in ("gender", "ethnicity", "age", "age_band")}
    for attribute, entry in (result.get("audit") or {}).items():
        out[f"audit.{attribute}"] = entry["worst"]
    out["psnr_db"] = result["psnr_db"]
    if "psnr_loss_db" in derived_entry:
        out["delta_psnr_db"] = -derived_entry["psnr_loss_db"]
    for target, share in (derived_entry.get("utility_share") or {}).items():
        if share is not None:
            out[f"utility_share.{target}"] = share
    for target, entry in (result.get("utility") or {}).items():
        out[f"utility.{target}"] = entry["best"]
    return out


def seed_spread(by_seed: dict[str, dict]) -> dict:
    """Per variant and headline number: the value at each seed, min, max and range (max - min).

    ``by_seed`` maps a seed to a result file's ``variants``; only variants present at every seed count.
    ΔPSNR and utility shares are taken against the ``none`` variant of the same seed.
    """
    common = [name for name in next(iter(by_seed.values())) if all(name in v for v in by_seed.values())]
    numbers = {seed: derived(variants) for seed, variants in by_seed.items()}
    out = {}
    for name in common:
        values = {seed: headline(variants[name], numbers[seed][name]) for seed, variants in by_seed.items()}
        keys = [k for k in next(iter(values.values())) if all(k in v for v in values.values())]
        out[name] = {}
        for key in keys:
            series = {seed: float(v[key]) for seed, v in values.items()}
            low, high = min(series.values()), max(series.values())
            out[name][key] = {"by_seed": series, "min": low, "max": high, "range": high - low}
    return out


def merge_seeds(sources: list[str], target: Path) -> dict:
    """Combine result files that differ only in ``--seed`` into one file with the seed-to-seed spread.

    Keeps the variants present in every file; each seed's ΔPSNR and utility shares are against its own ``none``.
    """
    parts = [json.loads(Path(source).read_text()) for source in sources]
    settings = [{k: v for k, v in p["setting"].items() if k != "seed"} for p in parts]
    if any(s != settings[0] for s in settings):
        raise SystemExit(f"cannot merge seeds of different settings: {settings}")
    seeds = [str(p["setting"]["seed"]) for p in parts]
    if len(set(seeds)) != len(seeds):
        raise SystemExit(f"the same seed twice among {sources}: {seeds}")
    common = [name for name in parts[0]["variants"] if all(name in p["variants"] for p in parts)]
    by_seed = {seed: {name: p["variants"][name] for name in common} for seed, p in zip(seeds, parts)}
    output = {
        "benchmark": "trained_concealment_seeds",
        "setting": settings[0],
        "sources": dict(zip(seeds, sources)),
        "seeds": {seed: {"variants": variants, "derived": derived(variants), "runs": p.get("runs", [])}
                  for (seed, variants), p in zip(by_seed.items(), parts)},
        "spread": seed_spread(by_seed),
    }
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_suffix(".tmp")
    tmp.write_text(json.dumps(output, indent=1))
    os.replace(tmp, target)
    return output


def seeds_table(result: dict) -> str:
    """One row per variant and seed, then each variant's min–max over seeds."""
    keys = [("data_rich.gender", "data-rich gender", 3), ("data_rich.ethnicity", "ethnicity", 3),
            ("data_rich.age", "age MAE", 2), ("data_rich.age_band", "age band", 3),
            ("audit.gender", "audit gender", 3), ("audit.ethnicity", "audit ethnicity", 3), ("audit.age", "audit age", 2),
            ("psnr_db", "PSNR (dB)", 2), ("delta_psnr_db", "ΔPSNR (dB)", 2)]
    spread = result["spread"]
    shares = sorted({k for v in spread.values() for k in v if k.startswith("utility_share.")})
    keys += [(k, k.removeprefix("utility_share."), 2) for k in shares]
    lines = ["| variant | seed | " + " | ".join(label for _, label, _ in keys) + " |", "|---|---|" + "---|" * len(keys)]
    for name, numbers in spread.items():
        for seed, part in result["seeds"].items():
            r = part["variants"][name]
            cells = []
            for key, _, digits in keys:
                if key not in numbers:
                    cells.append("–")
                    continue
                value = numbers[key]["by_seed"][seed]
                attacker, _, attribute = key.partition(".")
                if attacker == "data_rich" and "ci95" in r[attacker][attribute]:
                    low, high = r[attacker][attribute]["ci95"]
                    cells.append(f"{value:.{digits}f} ({low:.{digits}f}–{high:.{digits}f})")
                else:
                    cells.append(f"{value:.{digits}f}")
            lines.append(f"| {name} | {seed} | " + " | ".join(cells) + " |")
        cells = ["–" if key not in numbers else
                 f"{numbers[key]['min']:.{digits}f}–{numbers[key]['max']:.{digits}f} ({numbers[key]['range']:.{digits}f})"
                 for key, _, digits in keys]
        lines.append(f"| **{name}: min–max (range)** | all | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", choices=("utkface", "synthetic"), default="utkface")
    parser.add_argument("--utkface", default=str(UTKFACE))
    parser.add_argument("--limit", type=int, help="UTKFace: keep this many images (smallest content hash)")
    parser.add_argument("--faces", type=int, default=8000, help="synthetic faces to draw")
    parser.add_argument("--landmarks", default=str(LANDMARKS))
    parser.add_argument("--epochs", type=int, default=12)
    parser.add_argument("--latent-dim", type=int, default=48)
    parser.add_argument("--base", default="{}", help="JSON of estimator parameters shared by every variant")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--variants", default="none,trained")
    parser.add_argument("--audit", action="store_true", help="also run the audit's 5-fold attacker")
    parser.add_argument("--bootstrap", type=int, default=1000)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--models", default=str(ROOT / "artifacts" / "trained_concealment"))
    parser.add_argument("--refit", action="store_true")
    parser.add_argument("--json", default=str(ROOT / "docs" / "results" / "trained_concealment.json"))
    parser.add_argument("--list", action="store_true")
    parser.add_argument("--table", action="store_true", help="print the --json results as markdown tables and exit")
    parser.add_argument("--merge", nargs="+", metavar="JSON",
                        help="merge these result files (same setting; runs run side by side) into --json and exit")
    parser.add_argument("--merge-seeds", nargs="+", metavar="JSON",
                        help="combine result files that differ only in --seed into --json (with the seed spread) and exit")
    args = parser.parse_args(argv)
    if args.list:
        print(json.dumps(VARIANTS, indent=1))
        return {}
    if args.merge:
        return merge(args.merge, Path(args.json))
    if args.merge_seeds:
        return merge_seeds(args.merge_seeds, Path(args.json))
    if args.table:
        stored = json.loads(Path(args.json).read_text())
        if stored.get("benchmark") == "trained_concealment_seeds":
            print(seeds_table(stored))
            return {}
        print(markdown_table(stored) + "\n\nGoals of issue 12 (ca: chance-adjusted):\n\n" + goals_table(stored))
        return {}
    import torch

    torch.set_num_threads(args.threads)
    started = time.perf_counter()
    train, test, info = load_data(args)
    targets = utility_targets(train, test, args)
    path = Path(args.json)
    stored = json.loads(path.read_text()) if path.exists() else {}
    setting = {**info, "epochs": args.epochs, "latent_dim": args.latent_dim, "base": json.loads(args.base),
               "seed": args.seed}
    if stored and stored.get("setting") != setting:
        raise SystemExit(f"{path} holds results for another setting: {stored.get('setting')}; use another --json")
    results = stored.get("variants", {})
    runs = stored.get("runs", [])
    for name in [v for v in args.variants.split(",") if v]:
        results[name] = measure(name, args, train, test, info, targets)
        results[name]["machine"] = machine()
        output = {
            "benchmark": "trained_concealment",
            "setting": setting,
            "goals": GOALS,
            "variants": results,
            "derived": derived(results),
            "runs": runs + [{"command": " ".join(sys.argv), "wall_seconds": time.perf_counter() - started,
                             "machine": machine()}],
        }
        tmp = path.with_suffix(".tmp")
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp.write_text(json.dumps(output, indent=1))
        os.replace(tmp, path)
    return output


if __name__ == "__main__":
    main()
