"""Does ConditionalTransport itself plant attribute signal in held-out latents? Latents of pure noise, side by side.

A map fitted on training rows moves a *new* row of a cell by the training estimate's error too, the same for every
new row of the cell, so a probe fitted on new rows alone (the audit's cross-validated attacker) may read the cells
even where the latents held nothing about the attributes. This benchmark draws latents that hold nothing (standard
normal, 48 columns), attributes as the demo's (gender, 4 ethnicities, uniform age 1-80; 32 cells), fits the step
on 2400 training rows (about 75 per cell) and probes 600 held-out rows, raw and moved, with 5-fold cross-validated
linear and MLP probes, over several seeds; chance-adjusted balanced accuracy of gender, ethnicity and age band.
Variants: each cell's own means (the default), the cells' means shrunk by empirical Bayes, and that plus the
smooth mean's ridge penalty chosen by leave-one-out error (docs/TRAINED_CONCEALMENT.md §12).

    python benchmarks/transport_estimation_noise.py --seeds 4
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
from sklearn.model_selection import StratifiedKFold, cross_val_score
from sklearn.neural_network import MLPClassifier
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _machine import machine  # noqa: E402
from _transport_means import OWN_MEANS, SHRUNK_CELL_MEANS, SHRUNK_MEANS  # noqa: E402

from bafo_pipeline import ConditionalTransport  # noqa: E402

VARIANTS = {
    "raw (not moved)": None,
    "own means (default)": OWN_MEANS,
    "shrunk cell means": SHRUNK_CELL_MEANS,
    "shrunk means (cells and smooth mean)": SHRUNK_MEANS,
}
CHANCE = {"gender": 1 / 2, "ethnicity": 1 / 4, "age_band": 1 / 4}
PROBES = {
    "linear": lambda: LogisticRegression(max_iter=2000),
    "mlp": lambda: make_pipeline(StandardScaler(), MLPClassifier((64,), alpha=1e-2, max_iter=300,
                                                                 early_stopping=True, random_state=0)),
}


def attributes(rng: np.random.Generator, n: int) -> pd.DataFrame:
    return pd.DataFrame({"gender": rng.choice(["female", "male"], n), "ethnicity": rng.choice(list("abcd"), n),
                         "age": rng.uniform(1, 80, n)})


def one_seed(seed: int, n_train: int, n_test: int, dims: int) -> dict:
    rng = np.random.default_rng(seed)
    S_train, S_test = attributes(rng, n_train), attributes(rng, n_test)
    Z_train, Z_test = rng.normal(size=(n_train, dims)), rng.normal(size=(n_test, dims))
    labels = {"gender": S_test["gender"], "ethnicity": S_test["ethnicity"],
              "age_band": np.digitize(S_test["age"], [20, 40, 60])}
    folds = StratifiedKFold(5, shuffle=True, random_state=0)
    result = {}
    for name, params in VARIANTS.items():
        Z = Z_test
        if params is not None:
            step = ConditionalTransport(**params).fit(Z_train, sensitive_features=S_train)
            Z = step.transform(Z_test, sensitive_features=S_test)
        result[name] = {
            f"{attribute}/{probe}": round(float(cross_val_score(
                make(), Z, y, cv=folds, scoring="balanced_accuracy").mean()) - CHANCE[attribute], 4)
            for attribute, y in labels.items() for probe, make in PROBES.items()
        }
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, default=4)
    parser.add_argument("--train", type=int, default=2400)
    parser.add_argument("--test", type=int, default=600)
    parser.add_argument("--dims", type=int, default=48)
    parser.add_argument("--commit", help="the package version measured (recorded in the JSON)")
    args = parser.parse_args()
    started = time.perf_counter()
    per_seed = [one_seed(seed, args.train, args.test, args.dims) for seed in range(args.seeds)]
    mean = {name: {key: round(float(np.mean([run[name][key] for run in per_seed])), 4) for key in per_seed[0][name]}
            for name in VARIANTS}
    print(json.dumps({
        "benchmark": "transport_estimation_noise",
        "command": " ".join(["python", *sys.argv]),
        "machine": machine(),
        "commit": args.commit,
        "settings": {"seeds": args.seeds, "train": args.train, "test": args.test, "dims": args.dims,
                     "cells": 32, "variants": VARIANTS},
        "chance_adjusted_mean_over_seeds": mean,
        "per_seed": per_seed,
        "seconds": round(time.perf_counter() - started, 1),
    }, indent=1))


if __name__ == "__main__":
    main()
