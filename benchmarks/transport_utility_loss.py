"""Where ``bafo run``'s transport loses the UTKFace expression targets: step by step.

``ConditionalTransport`` does three things to a latent, each fitted on ``bafo run``'s calibration
rows: it subtracts a smooth function of the attributes (the *smooth mean*), moves every cell
(gender x ethnicity x age bin) to the pooled mean (*cell means*), and maps each cell's covariance
onto the pooled one (*covariance maps*, shrunk by ``shrinkage`` pseudo-rows). This script applies
them cumulatively to the held-out latents of one unconcealed encoder (and, as alternatives to the last
stage, covariance maps of fewer attributes' cells: :data:`ALTERNATIVES`) and measures, per stage:

- what each landmark target keeps (best probe's score, 5 folds on the held-out rows, as a share of
  the unconcealed latents'), the raw targets and the residuals of the judged ones (the part the
  attributes explain additively, as the audit defines it) and, as a check of that definition, the
  *cell residuals*: the same targets minus their additive prediction and each cell's mean
  deviation from it (shrunk by 10 pseudo-rows), fitted on the training split;
- what each sensitive attribute leaks, worst case over probes and over the cross-validated and the
  data-rich attacker (probes fitted on the shared training rows, moved by the same step).

    python benchmarks/transport_utility_loss.py --model MODEL --utkface UTKFace --landmarks LANDMARKS
    python benchmarks/transport_utility_loss.py ... --variants barycenter,cov160

``--variants`` fits estimator variants of ``benchmarks/calibration_rows.py`` (its ``VARIANTS``) after the
stages, instead of this script's alternatives.

Prints JSON (the machine named); docs/TRAINED_CONCEALMENT.md §14 reads it.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _machine import machine  # noqa: E402
from _cells import cell_codes, class_categories  # noqa: E402
from calibration_rows import (SENSITIVE, VARIANT_SHRINKAGE, VARIANTS, leakage_by_probe, smooth_mean_only,  # noqa: E402
                              what_it_chose, worst_cases)

from bafo_pipeline.audits import PROBES, audit_leakage  # noqa: E402
from bafo_pipeline.audits.utility import audit_utility, residualize_targets  # noqa: E402
from bafo_pipeline.data.landmarks import LANDMARK_TARGETS  # noqa: E402
from bafo_pipeline.transformers import ConditionalTransport  # noqa: E402

UNCONCEALED = "none"
#: The transport's stages, cumulative; the last is ``bafo run``'s step.
STAGES = {
    "smooth mean": smooth_mean_only,
    "+ cell means": lambda: ConditionalTransport(shrinkage=1e15),  # every cell keeps the pooled covariance
    "+ covariance maps, shrinkage 40 (bafo run since §15)": ConditionalTransport,
    "+ covariance maps, shrinkage 10 (bafo run until §15)": lambda: ConditionalTransport(shrinkage=10),
}


class CellMeansThenCovariance:
    """The ``+ cell means`` stage on every attribute, then covariance maps of ``covariance_by``'s classes only.

    It shows which attributes' covariance maps cost the targets: a map per gender class, say, is fitted on
    about 5,900 calibration rows and matches only gender's spreads. Only categorical attributes are meant
    for ``covariance_by`` (age's cells would be its default quartile bins).

    Parameters
    ----------
    covariance_by : list of str
        The sensitive columns whose classes get their own covariance map.
    """

    def __init__(self, covariance_by: list[str]):
        self.covariance_by = covariance_by

    def fit(self, Z: np.ndarray, *, sensitive_features: pd.DataFrame) -> CellMeansThenCovariance:
        """Fit the cell means on every attribute, then the covariance maps on the rows they moved."""
        self.means_ = STAGES["+ cell means"]().fit(Z, sensitive_features=sensitive_features)
        moved = self.means_.transform(Z, sensitive_features=sensitive_features)
        self.covariance_ = ConditionalTransport(shrinkage=VARIANT_SHRINKAGE).fit(
            moved, sensitive_features=sensitive_features[self.covariance_by])
        return self

    def transform(self, Z: np.ndarray, *, sensitive_features: pd.DataFrame) -> np.ndarray:
        """Move ``Z`` by its rows' cell means, then by their classes' covariance maps."""
        moved = self.means_.transform(Z, sensitive_features=sensitive_features)
        return self.covariance_.transform(moved, sensitive_features=sensitive_features[self.covariance_by])


#: Alternatives to the last stage: covariance maps of fewer attributes, or cells without age bins.
ALTERNATIVES = {
    "cell means + gender's covariance maps": lambda: CellMeansThenCovariance(["gender"]),
    "cell means + gender x ethnicity covariance maps": lambda: CellMeansThenCovariance(["gender", "ethnicity"]),
    # age left to the smooth mean: cell means and covariance maps both by gender x ethnicity only
    "cells without age bins (continuous_bins=0)": lambda: ConditionalTransport(continuous_bins=0,
                                                                               shrinkage=VARIANT_SHRINKAGE),
}
JUDGED = ("mouth_open", "mouth_width", "eye_open")  # issue 12 judges these targets' residuals
CELL_PSEUDO_ROWS = 10


def cell_residuals(targets: pd.DataFrame, sensitive: pd.DataFrame, fit_targets: pd.DataFrame,
                   fit_sensitive: pd.DataFrame, bands: int = 10) -> pd.DataFrame:
    """``targets`` minus their additive prediction from the attributes and their cell's mean deviation from it.

    Parameters
    ----------
    targets, sensitive : DataFrame
        The rows to residualise: continuous targets, and their ``age``, ``gender`` and ``ethnicity``.
    fit_targets, fit_sensitive : DataFrame
        The rows both parts are fitted on: the additive part by :func:`residualize_targets` (the audit's
        residual), the cell deviations as each cell's mean additive residual, shrunk by
        :data:`CELL_PSEUDO_ROWS` pseudo-rows towards 0 (a cell without fitted rows keeps the additive residual).
    bands : int, default=10
        Age quantile bands of the cells (gender x ethnicity x band); tied quantiles merge bands.

    Returns
    -------
    DataFrame
        Same index and columns as ``targets``.
    """
    ages = pd.to_numeric(fit_sensitive["age"]).to_numpy(float)
    edges = np.unique(np.quantile(ages, np.linspace(0, 1, bands + 1)[1:-1]))
    additive, _ = residualize_targets(targets, sensitive, fit_targets=fit_targets, fit_sensitive=fit_sensitive)
    fit_additive, _ = residualize_targets(fit_targets, fit_sensitive, fit_targets=fit_targets,
                                          fit_sensitive=fit_sensitive)
    categories = class_categories(fit_sensitive)  # a class no fitted row had gets code -1: a cell of its own
    codes = np.vstack([cell_codes(fit_sensitive, edges, categories), cell_codes(sensitive, edges, categories)])
    cell_ids = np.unique(codes, axis=0, return_inverse=True)[1].ravel()
    fit_cells, cells = cell_ids[:len(fit_sensitive)], cell_ids[len(fit_sensitive):]
    out = additive.copy()
    for column in targets.columns:
        known = fit_additive[column].notna().to_numpy()
        grouped = pd.Series(fit_additive[column].to_numpy()[known]).groupby(fit_cells[known])
        deviation = grouped.sum() / (grouped.size() + CELL_PSEUDO_ROWS)
        out[column] = additive[column].to_numpy() - pd.Series(cells).map(deviation).fillna(0.0).to_numpy()
    return out


def stage_latents(fit_latents: np.ndarray, fit_sensitive: pd.DataFrame, parts: dict[str, tuple[np.ndarray, pd.DataFrame]],
                  alternatives: dict | None = None) -> tuple[dict[str, dict[str, np.ndarray]], dict[str, dict]]:
    """Every stage's and alternative's step, fitted once and applied to every part.

    Parameters
    ----------
    fit_latents : ndarray of shape (n, d)
    fit_sensitive : DataFrame
        The rows each step is fitted on (``bafo run``'s calibration rows) and their attributes.
    parts : dict of str to (ndarray, DataFrame)
        Unconcealed latents to move, with their attributes, by name (the held-out and the shared rows).
    alternatives : dict of str to callable, optional
        Steps to fit after the stages, by name; :data:`ALTERNATIVES` when None.

    Returns
    -------
    moved : dict
        ``{step name: {part name: moved latents}}``, in the order of :data:`STAGES`, then the alternatives.
    chosen : dict
        ``{step name: what_it_chose(step)}`` for the steps that choose something for themselves.
    """
    moved, chosen = {}, {}
    for name, make in {**STAGES, **(ALTERNATIVES if alternatives is None else alternatives)}.items():
        step = make().fit(fit_latents, sensitive_features=fit_sensitive)
        moved[name] = {part: step.transform(latents, sensitive_features=sensitive)
                       for part, (latents, sensitive) in parts.items()}
        if choice := what_it_chose(step):
            chosen[name] = choice
    return moved, chosen


def kept_shares(representations: dict[str, np.ndarray], targets: pd.DataFrame, threads: int) -> dict[str, dict]:
    """What each representation keeps of each target.

    Parameters
    ----------
    representations : dict of str to ndarray
        Latents of the same rows, :data:`UNCONCEALED` among them.
    targets : DataFrame
        Continuous targets of those rows.
    threads : int
        Thread limit of the probes.

    Returns
    -------
    dict
        ``{representation: {target: {"score", "probe", "share", "share_ci"}}}``: the best probe's score (5
        folds) and its share of :data:`UNCONCEALED`'s, with the share's bootstrap interval.
    """
    result = audit_utility(representations, targets, references=[UNCONCEALED], probes=("prior", "linear", "mlp", "gbdt"),
                           n_folds=5, n_bootstrap=200, random_state=0, n_threads=threads)
    out: dict = {}
    for r in result.shares("best").to_dict("records"):
        out.setdefault(r["representation"], {})[r["target"]] = {
            "score": round(float(r["score"]), 3), "probe": r["probe"],
            "share": round(float(r[f"share_of[{UNCONCEALED}]"]), 3),
            "share_ci": [round(float(r[f"share_low[{UNCONCEALED}]"]), 3), round(float(r[f"share_high[{UNCONCEALED}]"]), 3)],
        }
    return out


def main() -> None:
    """Measure every stage on one UTKFace model and print the JSON."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help="an unconcealed UTKFace model (e.g. the frontier's)")
    parser.add_argument("--utkface", required=True)
    parser.add_argument("--landmarks", required=True, help="benchmarks/landmark_labels.py's Parquet cache")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--variants", help="comma-separated estimator variants of benchmarks/calibration_rows.py "
                                           "to run after the stages instead of this script's alternatives")
    parser.add_argument("--probes", default=",".join(PROBES),
                        help="the attack probes (e.g. add 'quadratic', which reads differences in spread)")
    args = parser.parse_args()
    alternatives = ALTERNATIVES
    if args.variants:
        names = args.variants.split(",")
        unknown = [name for name in names if name not in VARIANTS]
        if unknown:
            raise SystemExit(f"unknown variant(s) {', '.join(unknown)}; known: {', '.join(VARIANTS)}")
        alternatives = {name: VARIANTS[name] for name in names}
    import torch

    torch.set_num_threads(args.threads)
    import leakage_frontier as frontier

    started = time.perf_counter()
    with contextlib.redirect_stdout(sys.stderr):  # the frontier's progress lines; stdout is the JSON
        model, train, test, info = frontier.load_real(Path(args.model), Path(args.utkface), "cpu")
        targets, fit_targets = frontier.utility_targets("utkface", train, test, args.landmarks)
    calibration, shared = frontier.calibration_split(frontier.parse_variant("transport", 0), train, info["split"])

    def unconcealed(data) -> tuple[np.ndarray, pd.DataFrame]:
        return model.transform(data.images, conceal=False), data.sensitive_features.reset_index(drop=True)

    fit_latents, fit_sensitive = unconcealed(calibration)
    parts = {"test": unconcealed(test), "shared": unconcealed(shared)}
    stages, chosen = stage_latents(fit_latents, fit_sensitive, parts, alternatives)
    test_latents = {UNCONCEALED: parts["test"][0], **{name: moved["test"] for name, moved in stages.items()}}

    test_sensitive, train_sensitive = parts["test"][1], train.sensitive_features.reset_index(drop=True)
    judged = list(JUDGED)
    additive, _ = residualize_targets(targets[judged], test_sensitive, fit_targets=fit_targets[judged],
                                      fit_sensitive=train_sensitive)
    cells = cell_residuals(targets[judged], test_sensitive, fit_targets[judged], train_sensitive)
    all_targets = pd.concat([targets[list(LANDMARK_TARGETS)], additive.add_suffix("_residual"),
                             cells.add_suffix("_cell_residual")], axis=1)
    kept = kept_shares(test_latents, all_targets, args.threads)

    leakage = audit_leakage(test_latents, test_sensitive[SENSITIVE],
                            fit_representations={UNCONCEALED: parts["shared"][0],
                                                 **{name: moved["shared"] for name, moved in stages.items()}},
                            fit_labels=parts["shared"][1][SENSITIVE], n_bootstrap=200, n_permutations=0,
                            random_state=0, n_threads=args.threads, probes=tuple(args.probes.split(",")))
    print(json.dumps({
        "benchmark": "transport_utility_loss",
        "command": " ".join(["python", *sys.argv]),
        "machine": machine(),
        "data": {key: info[key] for key in ("model", "model_params", "split", "n_train", "n_test")}
        | {"calibration_rows": len(calibration), "shared_rows": len(shared)},
        "stages": list(STAGES),
        "alternatives": list(alternatives),
        "chosen": chosen,
        "kept": kept,
        "probes": args.probes.split(","),
        "worst_leakage": worst_cases(leakage),
        "leakage_by_probe": leakage_by_probe(leakage),
        "seconds": round(time.perf_counter() - started, 1),
    }, indent=1))


if __name__ == "__main__":
    main()
