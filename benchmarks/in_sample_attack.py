"""What the exported *training* rows reveal to an attacker who knows how the concealment was fitted.

``bafo run`` fits its concealment on the training split and exports those very rows. A step fitted
in-sample equalises exact sample statistics over them: after ``ConditionalTransport`` every cell
(gender x ethnicity x age bin) of the training rows has exactly the pooled mean; after ``LinearErasure``
(LEACE) every class of every attribute has. An attacker who knows the labels of a fraction ``f`` of the
training rows (and which rows are training rows: the shared file's ``split`` column) therefore knows
the sum of the *other* rows' latents in each group: minus the sum of its known rows' deviations. A row
of the group projects onto that vector by about ``sqrt(d / k)`` within-group standard deviations (``d``
latent columns, ``k`` unknown rows of the group) more than the others do: the "group-sum" attack.

For each demo seed this script trains ``bafo run``'s encoder on the demo's training split (as
``benchmarks/demo_concealments.py`` does, concealment ``none``), then conceals the training latents with
each step fitted

- ``in-sample``: on every training row, the rows it then moves (what ``bafo run`` exports today);
- ``cross-fitted``: each of 5 folds moved by the step fitted on the other 4 (as scikit-learn's
  ``TargetEncoder.fit_transform`` encodes its training rows),

and scores, on the training rows whose labels the attacker lacks, the balanced accuracy of: a logistic
probe fitted on the known rows (the ordinary attacker), and the group-sum attack
(:func:`bafo_pipeline.audits.group_sums.group_sum_scores`, which the audit's in-sample attacker runs)
by the attribute's classes and by the transport's cells. Age is scored as its four training quartiles (the transport's
bins). It also scores the held-out rows against an attacker who knows every training row's labels,
with the step fitted on the training rows (which cannot leak this way: what ``bafo run``'s calibration rows
give every shared row) or on every
exported row (a transductive fit). Prints JSON::

    python benchmarks/in_sample_attack.py --seeds 0,1,2
    python benchmarks/in_sample_attack.py --data utkface --models MODELS   # trained_concealment's cached encoder

``--data utkface`` runs the same on UTKFace's split (test fraction 0.15) with the unconcealed encoder that
``benchmarks/trained_concealment.py`` caches (§5 of docs/TRAINED_CONCEALMENT.md; its ``--seed``).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import balanced_accuracy_score
from sklearn.model_selection import KFold
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _demo_latents import demo_encoder_latents  # noqa: E402
from _machine import machine  # noqa: E402
from demo_concealments import RUN_DEFAULTS  # noqa: E402  (bafo run's defaults)

from bafo_pipeline.attributes import quantile_bin_edges  # noqa: E402
from bafo_pipeline.audits.group_sums import group_sum_scores  # noqa: E402
from bafo_pipeline.data import SYNTHETIC_SENSITIVE  # noqa: E402
from bafo_pipeline.transformers import ConditionalTransport, LinearErasure  # noqa: E402

STEPS = {"transport": ConditionalTransport, "linear": LinearErasure}
FOLDS = 5


def demo_latents(seed: int, samples: int, cache: Path | None) -> tuple[np.ndarray, pd.DataFrame, np.ndarray]:
    """``bafo run``'s unconcealed encoder's latents of the demo's training rows, then its held-out rows; their
    attributes; and which rows are training rows."""
    path = cache / f"demo_latents_seed{seed}_samples{samples}.npz" if cache else None
    (train, train_attributes), (test, test_attributes) = demo_encoder_latents(seed, samples, cache_path=path).values()
    attributes = pd.concat([train_attributes, test_attributes], ignore_index=True)[list(SYNTHETIC_SENSITIVE)]
    return np.vstack([train, test]), attributes, np.arange(len(attributes)) < len(train)


def utkface_latents(seed: int, utkface: str, models: str) -> tuple[np.ndarray, pd.DataFrame, np.ndarray]:
    """The cached unconcealed UTKFace encoder's latents (trained_concealment's protocol), as :func:`demo_latents`."""
    import trained_concealment as tc

    settings = argparse.Namespace(
        data="utkface", utkface=utkface, limit=None, faces=8000, landmarks=str(tc.LANDMARKS), epochs=4,
        latent_dim=48, base='{"batch_size": 32, "learning_rate": 0.002}', seed=seed, bootstrap=0, threads=2,
        refit=False, models=models,
    )
    train, test, info = tc.load_data(settings)
    model, _ = tc.fit_or_load("none", tc.variant_settings("none"), train, settings, info)
    latents = np.vstack([model.transform(part.images, conceal=False).astype(float) for part in (train, test)])
    attributes = pd.concat([train.sensitive_features, test.sensitive_features], ignore_index=True)
    return latents, attributes, np.arange(len(attributes)) < len(train)


def conceal(step_name: str, latents: np.ndarray, attributes: pd.DataFrame, fit_rows: np.ndarray,
            mode: str, seed: int) -> np.ndarray:
    """Every row concealed by the step fitted on ``fit_rows`` (``in-sample``), or, with ``cross-fitted``, each
    fold of ``fit_rows`` by the step fitted on the other folds."""
    def fitted(rows):
        return STEPS[step_name]().fit(latents[rows], sensitive_features=attributes.iloc[rows])

    def moved(step, rows):
        extra = {"sensitive_features": attributes.iloc[rows]} if step_name == "transport" else {}
        return step.transform(latents[rows], **extra)

    everything, fitting = np.arange(len(latents)), np.flatnonzero(fit_rows)
    out = moved(fitted(fitting), everything)
    if mode == "cross-fitted":
        for others, fold in KFold(FOLDS, shuffle=True, random_state=seed).split(fitting):
            out[fitting[fold]] = moved(fitted(fitting[others]), fitting[fold])
    return out


def group_codes(attributes: pd.DataFrame) -> dict[str, np.ndarray]:
    """Each attribute's class index (age: its training quartile), and the transport's cell index."""
    codes = {}
    for name in attributes.columns:
        column = attributes[name]
        if pd.api.types.is_numeric_dtype(column) and column.nunique() > 10:
            codes[name] = np.searchsorted(quantile_bin_edges(column.to_numpy(float), 4), column.to_numpy(float),
                                          side="right")
        else:
            codes[name] = pd.factorize(column, sort=True)[0]
    cells = np.zeros(len(attributes), dtype=np.int64)
    for code in codes.values():
        cells = cells * (code.max() + 1) + code
    return {**codes, "cell": pd.factorize(cells, sort=True)[0]}


def group_sum_guess(latents: np.ndarray, groups: np.ndarray, known: np.ndarray) -> np.ndarray:
    """Each unknown row's group: the one whose unknown rows' sum (minus the known rows') it projects onto most."""
    return group_sum_scores(latents, groups, int(groups.max()) + 1, known).argmax(axis=1)


def attack(concealed: np.ndarray, codes: dict[str, np.ndarray], known: np.ndarray) -> dict:
    cell_guess = group_sum_guess(concealed, codes["cell"], known)
    attributes = [name for name in codes if name != "cell"]
    # the attribute code of each cell (cells are products of the attribute codes)
    cell_to_code = {name: pd.Series(codes[name]).groupby(codes["cell"]).first() for name in attributes}
    scores = {}
    for name in attributes:
        truth = codes[name][~known]
        probe = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000))
        probe.fit(concealed[known], codes[name][known])
        by_classes = group_sum_guess(concealed, codes[name], known)
        by_cells = cell_to_code[name].reindex(cell_guess).to_numpy()
        scores[name] = {
            "chance": round(1 / len(np.unique(truth)), 3),
            "probe": round(balanced_accuracy_score(truth, probe.predict(concealed[~known])), 3),
            "group_sum_by_classes": round(balanced_accuracy_score(truth, by_classes), 3),
            "group_sum_by_cells": round(balanced_accuracy_score(truth, by_cells), 3),
        }
    return scores


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", choices=("demo", "utkface"), default="demo")
    parser.add_argument("--utkface", default="../shared/data/utkface/UTKFace")
    parser.add_argument("--models", default="/work/cache/models/trained_concealment",
                        help="--data utkface: trained_concealment's model cache holding the 'none' encoder")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--samples", type=int, default=3000, help="bafo run's --synthetic-samples")
    parser.add_argument("--known", default="0.5,0.9", help="fractions of training rows whose labels the attacker has")
    parser.add_argument("--cache", type=Path, help="keep the trained encoders' latents here between runs")
    parser.add_argument("--commit", help="the package version measured (recorded in the JSON)")
    args = parser.parse_args()
    results, started = [], time.perf_counter()

    def record(**row):
        results.append(row)
        print(json.dumps(row), file=sys.stderr, flush=True)

    for seed in map(int, args.seeds.split(",")):
        latents, attributes, is_train = (
            demo_latents(seed, args.samples, args.cache) if args.data == "demo"
            else utkface_latents(seed, args.utkface, args.models)
        )
        codes, every_code = group_codes(attributes[is_train]), group_codes(attributes)
        train_latents, train_attributes = latents[is_train], attributes[is_train].reset_index(drop=True)
        for step_name in STEPS:
            # The exported training rows, against an attacker who knows a fraction of their labels.
            for mode in ("in-sample", "cross-fitted"):
                concealed = conceal(step_name, train_latents, train_attributes, np.ones(len(train_latents), bool),
                                    mode, seed)
                for fraction in map(float, args.known.split(",")):
                    known = np.random.default_rng(seed).random(len(train_latents)) < fraction
                    record(seed=seed, step=step_name, rows="training", fit=mode, known=fraction,
                           scores=attack(concealed, codes, known))
            # The held-out rows, against an attacker who knows every training row's labels; the step fitted on the
            # training rows (as calibration rows are) or on every exported row (transductive).
            for fit_on, fit_rows in (("training rows", is_train), ("every exported row", np.ones_like(is_train))):
                concealed = conceal(step_name, latents, attributes, fit_rows, "in-sample", seed)
                record(seed=seed, step=step_name, rows="held-out", fit=fit_on, known="every training row",
                       scores=attack(concealed, every_code, is_train))
    print(json.dumps({
        "benchmark": "in_sample_attack",
        "command": " ".join(["python", *sys.argv]),
        "machine": machine(),
        "commit": args.commit,
        "settings": ({**RUN_DEFAULTS, "samples": args.samples} if args.data == "demo" else
                     {"data": "utkface", "encoder": "trained_concealment's 'none' (4 epochs)"}) | {"folds": FOLDS},
        "seconds": round(time.perf_counter() - started, 1),
        "results": results,
    }, indent=1))


if __name__ == "__main__":
    main()
