"""Where the nearest-neighbour attacker's gender signal lives after ``bafo run``'s transport (TRAINED_CONCEALMENT §19).

On the UTKFace split of a model, the transport (shrinkage 40) is fitted on ``bafo run``'s calibration rows
and moves the shared and held-out rows; the audit's ``knn`` probe is fitted on the shared rows' gender and
scores the held-out rows (the data-rich attacker). The script reads that attack:

- ``directions``: restricted to ranges of the transported calibration rows' principal directions;
- ``distance_deciles``: by decile of each held-out row's distance to its nearest shared row (unconcealed
  latents, standardised): near-duplicates across the split would make the nearest deciles stand out;
- ``age_bands``: within narrow age bands, as the area under the ROC curve of the probe's gender score
  (free of the band's gender ratio): if the probe only read age, it would be near 0.5 in every band;
- ``labels_only``: gender predicted from the labels alone (exact age; age and ethnicity) by boosted trees
  fitted on the training rows: what an attacker who recovered fine age would get.

Balanced accuracies come with bootstrap intervals over the held-out rows. Prints JSON::

    python benchmarks/neighbour_signal.py --model artifacts/utk_b32_e4_none --utkface UTKFace
"""

from __future__ import annotations

import argparse
import contextlib
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.ensemble import HistGradientBoostingClassifier
from sklearn.metrics import balanced_accuracy_score, roc_auc_score
from sklearn.neighbors import NearestNeighbors

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _machine import emit, machine  # noqa: E402

from bafo_pipeline.audits.probes import make_probe  # noqa: E402
from bafo_pipeline.transformers import ConditionalTransport  # noqa: E402

DIRECTION_RANGES = ((0, 4), (0, 8), (0, 16), (4, None), (8, None), (16, None))
AGE_BANDS = (0, 5, 15, 22, 26, 30, 35, 45, 55, 70, 200)
BOOTSTRAP = 200


def balanced_accuracy_interval(truth: np.ndarray, predicted: np.ndarray, seed: int = 0) -> dict:
    """Balanced accuracy with a 95% bootstrap interval over the rows."""
    rng = np.random.default_rng(seed)
    draws = [balanced_accuracy_score(truth[rows], predicted[rows])
             for rows in (rng.integers(0, len(truth), len(truth)) for _ in range(BOOTSTRAP))]
    return {"value": round(float(balanced_accuracy_score(truth, predicted)), 3),
            "ci": [round(float(q), 3) for q in np.quantile(draws, [0.025, 0.975])]}


def reading_by_directions(fit: np.ndarray, fit_labels: np.ndarray, score: np.ndarray, score_labels: np.ndarray,
                          basis: np.ndarray, ranges=DIRECTION_RANGES) -> dict:
    """The ``knn`` probe's balanced accuracy on the coordinates along ``basis[:, start:stop]``, per range.

    Parameters
    ----------
    fit, score : ndarray of shape (n, d)
        Centred rows the probe is fitted on and scored on.
    fit_labels, score_labels : ndarray of shape (n,)
    basis : ndarray of shape (d, d)
        Orthonormal directions, leading first.
    ranges : sequence of (start, stop)
        ``stop`` None: to the last direction.

    Returns
    -------
    dict
        ``{"start-stop": {"value": ..., "ci": [...]}}``.
    """
    out = {}
    for start, stop in ranges:
        directions = basis[:, start:stop]
        probe = make_probe("knn", "classification", random_state=0).fit(fit @ directions, fit_labels)
        out[f"{start}-{stop or basis.shape[1]}"] = balanced_accuracy_interval(score_labels,
                                                                             probe.predict(score @ directions))
    return out


def main() -> None:
    """Measure the attack's pieces on one UTKFace model and print the JSON."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help="an unconcealed UTKFace model (e.g. the frontier's)")
    parser.add_argument("--utkface", required=True)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    import torch

    torch.set_num_threads(args.threads)
    import leakage_frontier as frontier

    started = time.perf_counter()
    with contextlib.redirect_stdout(sys.stderr):
        model, train, test, info = frontier.load_real(Path(args.model), Path(args.utkface), "cpu")
    calibration, shared = frontier.calibration_split(frontier.parse_variant("transport", 0), train, info["split"])
    latents = {name: model.transform(part.images, conceal=False) for name, part in
               (("calibration", calibration), ("shared", shared), ("test", test))}
    labels = {name: part.sensitive_features.reset_index(drop=True) for name, part in
              (("calibration", calibration), ("shared", shared), ("test", test))}
    transport = ConditionalTransport(shrinkage=40).fit(latents["calibration"], sensitive_features=labels["calibration"])
    moved = {name: transport.transform(latents[name], sensitive_features=labels[name]) for name in ("calibration", "shared", "test")}
    gender = {name: labels[name]["gender"].astype(str).to_numpy() for name in labels}

    probe = make_probe("knn", "classification", random_state=0).fit(moved["shared"], gender["shared"])
    predicted = probe.predict(moved["test"])
    positive = probe.classes_[1]
    score = probe.predict_proba(moved["test"])[:, 1]

    centre = moved["calibration"].mean(axis=0)
    values, vectors = np.linalg.eigh(np.cov(moved["calibration"].T))
    basis = vectors[:, np.argsort(values)[::-1]]
    directions = reading_by_directions(moved["shared"] - centre, gender["shared"], moved["test"] - centre,
                                       gender["test"], basis)

    scale = latents["shared"].std(axis=0)
    distance = NearestNeighbors(n_neighbors=1).fit(latents["shared"] / scale).kneighbors(latents["test"] / scale)[0][:, 0]
    deciles = [{"mean_distance": round(float(distance[rows].mean()), 3),
                "knn_correct": round(float((predicted[rows] == gender["test"][rows]).mean()), 3)}
               for rows in np.array_split(np.argsort(distance), 10)]

    ages = labels["test"]["age"].to_numpy(float)
    bands = []
    for low, high in zip(AGE_BANDS[:-1], AGE_BANDS[1:]):
        rows = (ages >= low) & (ages < high)
        bands.append({"ages": [low, high], "rows": int(rows.sum()),
                      "share_" + str(positive): round(float((gender["test"][rows] == positive).mean()), 3),
                      "knn_auc": round(float(roc_auc_score(gender["test"][rows] == positive, score[rows])), 3)})

    def label_features(frame: pd.DataFrame, with_ethnicity: bool) -> np.ndarray:
        columns = [frame["age"].to_numpy(float)]
        if with_ethnicity:
            known = sorted(labels["calibration"]["ethnicity"].astype(str).unique())
            columns += [(frame["ethnicity"].astype(str) == value).to_numpy(float) for value in known]
        return np.column_stack(columns)

    fit_labels = pd.concat([labels["calibration"], labels["shared"]], ignore_index=True)
    labels_only = {}
    for name, with_ethnicity in (("age", False), ("age_and_ethnicity", True)):
        trees = HistGradientBoostingClassifier(max_depth=3, random_state=0)
        trees.fit(label_features(fit_labels, with_ethnicity), fit_labels["gender"].astype(str))
        labels_only[name] = balanced_accuracy_interval(gender["test"], trees.predict(label_features(labels["test"], with_ethnicity)))

    emit({
        "benchmark": "neighbour_signal", "command": "python " + " ".join(sys.argv), "machine": machine(),
        "data": {"model": args.model, "calibration_rows": len(moved["calibration"]), "shared_rows": len(moved["shared"]),
                 "test_rows": len(moved["test"])},
        "knn_gender_all_directions": balanced_accuracy_interval(gender["test"], predicted),
        "knn_gender_auc": round(float(roc_auc_score(gender["test"] == positive, score)), 3),
        "directions": directions, "distance_deciles": deciles, "age_bands": bands,
        "gender_from_labels_only": labels_only, "seconds": round(time.perf_counter() - started, 1),
    }, None)


if __name__ == "__main__":
    main()
