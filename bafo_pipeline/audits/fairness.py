"""Fairness of a simple downstream model trained on a representation (fairlearn metrics).

A standardised logistic regression predicts a user-named binary target (e.g. "smiling")
from the representation with cross-validated predictions; fairlearn's ``MetricFrame``
breaks its selection rate, TPR, FPR and accuracy down by each sensitive attribute, by
banded continuous attributes (age) and by intersections (gender x ethnicity), and
``demographic_parity_difference`` / ``equalized_odds_difference`` summarise the gaps.
Intervals come from a bootstrap over evaluation rows (the downstream model is held
fixed), computed with the same definitions as fairlearn's: BCa intervals for the group
rates, and simultaneous pairwise bands for the disparities (a max-minus-min, whose
percentile interval is biased upward; see :func:`.resampling.largest_gap_interval`).
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
from fairlearn.metrics import (
    MetricFrame,
    count,
    demographic_parity_difference,
    equalized_odds_difference,
    false_positive_rate,
    selection_rate,
    true_positive_rate,
)
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import accuracy_score, balanced_accuracy_score, roc_auc_score
from sklearn.model_selection import StratifiedKFold, cross_val_predict
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from threadpoolctl import threadpool_limits

from .._utils.jsonable import to_jsonable
from ._warnings import warn
from .inputs import DEFAULT_BANDS, band_names, infer_kind
from .resampling import (
    bca_interval,
    bootstrap_weights,
    chunks,
    jackknife_weights,
    largest_gap_interval,
    percentile_interval,
)

__all__ = ["FairnessResult", "fairness_report", "group_rates", "GROUP_METRICS", "DISPARITY_METRICS"]

GROUP_METRICS = ("selection_rate", "true_positive_rate", "false_positive_rate", "accuracy")
DISPARITY_METRICS = ("demographic_parity_difference", "equalized_odds_difference")
_SEPARATOR = " & "
# The group rates whose largest gap each disparity is (fairlearn's definitions).
_DISPARITY_RATES = {
    "demographic_parity_difference": ("selection_rate",),
    "equalized_odds_difference": ("true_positive_rate", "false_positive_rate"),
}
# Jackknife groups for the BCa acceleration of group rates.
_JACKKNIFE_GROUPS = 200
# Bootstrap replicates for the at-chance check of the downstream model, even when intervals are off.
_MIN_CHANCE_BOOTSTRAP = 200


@dataclass
class FairnessResult:
    """Per-group metrics and disparities of a downstream model on one representation.

    Attributes
    ----------
    representation : str
    target : str
    by_group : DataFrame
        Columns ``representation, feature, group, metric, value, ci_low, ci_high,
        count, included`` (``included``: the group is large enough to enter the
        disparities).
    disparities : DataFrame
        Columns ``representation, feature, metric, value, ci_low, ci_high, n_groups``.
    overall : dict
        Cross-validated accuracy, balanced accuracy (with ``balanced_accuracy_ci``, a
        bootstrap interval over rows) and ROC-AUC of the downstream model; ``at_chance``
        is True when that interval reaches 0.5: the model learned nothing measurable, and
        its group gaps are not meaningful.
    notes : list of str
    config : dict
    """

    representation: str
    target: str
    by_group: pd.DataFrame
    disparities: pd.DataFrame
    overall: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    config: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict (NaN becomes None)."""
        return to_jsonable(
            {
                "representation": self.representation,
                "target": self.target,
                "config": self.config,
                "overall": self.overall,
                "by_group": self.by_group.to_dict("records"),
                "disparities": self.disparities.to_dict("records"),
                "notes": self.notes,
            }
        )


def _binary_target(target, pos_label) -> tuple[np.ndarray, np.ndarray, str]:
    series = pd.Series(np.asarray(target, dtype=object) if not isinstance(target, pd.Series) else target)
    present = series.notna().to_numpy()
    values = series[present]
    levels = pd.unique(values)
    if len(levels) != 2:
        raise ValueError(
            f"the downstream target must have exactly two classes, found {len(levels)}: {list(levels)[:10]}"
        )
    if pos_label is None:
        if set(levels) <= {0, 1}:
            pos_label = 1
        else:
            raise ValueError(
                f"target classes are {list(levels)}; pass pos_label to say which one is positive"
            )
    if pos_label not in set(levels):
        raise ValueError(f"pos_label {pos_label!r} is not a target class ({list(levels)})")
    return (values == pos_label).to_numpy().astype(np.int64), present, str(pos_label)


def _balanced_accuracy_interval(
    y: np.ndarray, pred: np.ndarray, n_bootstrap: int, confidence: float, rng: np.random.Generator
) -> tuple[float, float]:
    """Percentile bootstrap interval of the balanced accuracy of fixed predictions (rows resampled)."""
    replicates = []
    positive, hit = (y == 1).astype(np.float64), (y == pred).astype(np.float64)
    for size in chunks(n_bootstrap, len(y)):
        W = bootstrap_weights(len(y), size, rng).astype(np.float64)
        with np.errstate(invalid="ignore", divide="ignore"):
            tpr = (W @ (hit * positive)) / (W @ positive)
            tnr = (W @ (hit * (1 - positive))) / (W @ (1 - positive))
        replicates.append((tpr + tnr) / 2)
    return percentile_interval(np.concatenate(replicates), confidence)


def _groups(
    sensitive: pd.DataFrame,
    kinds: Mapping[str, str],
    bands: Mapping[str, Sequence[float]],
    intersections: Sequence[Sequence[str]],
) -> dict[str, pd.Series]:
    """One label series per feature (a column, banded if continuous, or an intersection)."""
    single: dict[str, pd.Series] = {}
    for name in sensitive.columns:
        column = sensitive[name]
        kind = kinds.get(name) or infer_kind(column)
        if kind == "continuous":
            values = pd.to_numeric(column, errors="coerce")
            edges = sorted(bands.get(name) or np.unique(np.nanquantile(values, [0.25, 0.5, 0.75])))
            labels = np.array(band_names(edges, lower=0.0 if values.min() >= 0 else None), dtype=object)
            codes = np.digitize(values.fillna(np.inf), edges)
            series = pd.Series(labels[np.minimum(codes, len(labels) - 1)], index=column.index, dtype=object)
            series[values.isna()] = None
            single[f"{name}_band"] = series
        else:
            single[name] = column.map(lambda v: None if pd.isna(v) else str(v)).astype(object)
    out = dict(single)
    for combo in intersections:
        parts = []
        for name in combo:
            key = name if name in single else f"{name}_band"
            if key not in single:
                raise ValueError(f"intersection {tuple(combo)} names {name!r}, not a sensitive column")
            parts.append(single[key])
        joined = parts[0].copy()
        for part in parts[1:]:
            joined = joined + _SEPARATOR + part
        joined[pd.concat(parts, axis=1).isna().any(axis=1)] = None
        out[" x ".join(combo)] = joined
    return out


def group_rates(
    y: np.ndarray, pred: np.ndarray, codes: np.ndarray, n_groups: int, W: np.ndarray, eligible: np.ndarray
) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """Group rates and disparities under sample weights ``W`` (one row per resample).

    With ``W = ones((1, n))`` these are fairlearn's ``selection_rate``,
    ``true_positive_rate``, ``false_positive_rate``, ``accuracy`` per group and
    ``demographic_parity_difference`` / ``equalized_odds_difference`` (between
    groups, worst case) over the ``eligible`` groups; bootstrap counts give replicates.

    Returns
    -------
    rates : dict of str to ndarray of shape (B, n_groups)
    disparities : dict of str to ndarray of shape (B,)
    """
    onehot = (codes[:, None] == np.arange(n_groups)[None, :]).astype(W.dtype)
    columns = np.concatenate(
        [
            onehot,
            onehot * pred[:, None],
            onehot * y[:, None],
            onehot * (y * pred)[:, None],
            onehot * (y == pred)[:, None],
        ],
        axis=1,
    )
    s = (W @ columns).astype(np.float64).reshape(-1, 5, n_groups)
    cnt, sel, pos, tp, correct = (s[:, i] for i in range(5))
    neg, fp = cnt - pos, sel - tp
    with np.errstate(invalid="ignore", divide="ignore"):
        rates = {
            "selection_rate": sel / cnt,
            "true_positive_rate": tp / pos,
            "false_positive_rate": fp / neg,
            "accuracy": correct / cnt,
        }

    def spread(r: np.ndarray) -> np.ndarray:
        r = r[:, eligible]
        if r.shape[1] == 0:  # no group is large enough: the disparity is undefined, not zero
            return np.full(len(r), np.nan)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN replicates stay NaN
            return np.nanmax(r, axis=1) - np.nanmin(r, axis=1)

    disparities = {
        "demographic_parity_difference": spread(rates["selection_rate"]),
        "equalized_odds_difference": np.fmax(
            spread(rates["true_positive_rate"]), spread(rates["false_positive_rate"])
        ),
    }
    return rates, disparities


def _bootstrap_group_rates(y, pred, codes, n_groups, n_boot, rng, eligible):
    parts = [
        group_rates(y, pred, codes, n_groups, bootstrap_weights(len(y), size, rng), eligible)
        for size in chunks(n_boot, len(y))
    ]
    rates = {k: np.concatenate([p[0][k] for p in parts]) for k in parts[0][0]}
    disparities = {k: np.concatenate([p[1][k] for p in parts]) for k in parts[0][1]}
    return rates, disparities


def fairness_report(
    Z: np.ndarray,
    target: np.ndarray | pd.Series,
    sensitive: pd.DataFrame,
    *,
    target_name: str = "target",
    pos_label: Any = None,
    representation: str = "latents",
    kinds: Mapping[str, str] | None = None,
    bands: Mapping[str, Sequence[float]] | None = None,
    intersections: Sequence[Sequence[str]] | None = None,
    n_folds: int = 5,
    n_bootstrap: int = 500,
    confidence: float = 0.95,
    min_group_size: int = 30,
    random_state: int = 0,
    n_threads: int | None = 1,
) -> FairnessResult:
    """Train a downstream classifier on ``Z`` and measure its fairness by group.

    Parameters
    ----------
    Z : array-like of shape (n, d)
        The representation.
    target : array-like of shape (n,)
        Binary downstream target (e.g. "smiling"); rows with a missing target are dropped.
    sensitive : DataFrame of n rows
        Sensitive attributes; continuous ones (age) are banded.
    target_name : str, default="target"
    pos_label : scalar, optional
        Positive class; needed unless the classes are 0/1 or booleans.
    representation : str, default="latents"
        Name used in the tables.
    kinds : mapping, optional
        ``{column: "continuous" | "categorical"}`` overriding the inferred kind.
    bands : mapping, optional
        Band edges of continuous columns; default ``{"age": (20, 40, 60)}``, quartiles
        for other continuous columns.
    intersections : sequence of tuples of str, optional
        Column combinations to cross; default ``[("gender", "ethnicity")]`` when both exist.
    n_folds : int, default=5
        Folds of the cross-validated downstream predictions.
    n_bootstrap : int, default=500
        Bootstrap replicates for the intervals (0: none).
    confidence : float, default=0.95
    min_group_size : int, default=30
        Groups smaller than this are listed but left out of the disparities, whose
        max-minus-min would otherwise be driven by a handful of rows.
    random_state : int, default=0
    n_threads : int or None, default=1
        Thread limit for BLAS/OpenMP pools (``None``: the libraries' defaults).

    Returns
    -------
    FairnessResult
    """
    with threadpool_limits(limits=n_threads):
        return _fairness_report(
            Z,
            target,
            sensitive,
            target_name=target_name,
            pos_label=pos_label,
            representation=representation,
            kinds=kinds,
            bands=bands,
            intersections=intersections,
            n_folds=n_folds,
            n_bootstrap=n_bootstrap,
            confidence=confidence,
            min_group_size=min_group_size,
            random_state=random_state,
        )


def _fairness_report(
    Z,
    target,
    sensitive,
    *,
    target_name,
    pos_label,
    representation,
    kinds,
    bands,
    intersections,
    n_folds,
    n_bootstrap,
    confidence,
    min_group_size,
    random_state,
) -> FairnessResult:
    notes: list[str] = []
    Z = np.asarray(Z, dtype=np.float64)
    if Z.ndim != 2 or not np.isfinite(Z).all():
        raise ValueError(
            f"representation {representation!r}: expected a finite 2-D array, got shape {Z.shape}"
        )
    if not isinstance(sensitive, pd.DataFrame) or sensitive.shape[1] == 0:
        raise ValueError("sensitive must be a DataFrame with at least one column")
    if len(sensitive) != len(Z) or len(target) != len(Z):
        raise ValueError(
            f"representation {representation!r} has {len(Z)} rows, "
            f"target {len(target)}, sensitive {len(sensitive)}"
        )
    y, present, pos_text = _binary_target(target, pos_label)
    if not present.all():
        warn(f"fairness: {int((~present).sum())} rows without a {target_name!r} value are dropped", notes)
    Z, sensitive = Z[present], sensitive.iloc[np.flatnonzero(present)].reset_index(drop=True)
    minority = int(min(y.sum(), len(y) - y.sum()))
    if minority < n_folds:
        raise ValueError(
            f"target {target_name!r} has {minority} rows in its smaller class, fewer than n_folds={n_folds}"
        )
    kinds = dict(kinds or {})
    bands = dict(DEFAULT_BANDS if bands is None else bands)
    if intersections is None:
        intersections = [("gender", "ethnicity")] if {"gender", "ethnicity"} <= set(sensitive.columns) else []

    model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000))
    folds = StratifiedKFold(n_splits=n_folds, shuffle=True, random_state=random_state)
    proba = cross_val_predict(model, Z, y, cv=folds, method="predict_proba")[:, 1]
    pred = (proba >= 0.5).astype(np.int64)
    overall = {
        "n": int(len(y)),
        "positive_rate": float(y.mean()),
        "accuracy": float(accuracy_score(y, pred)),
        "balanced_accuracy": float(balanced_accuracy_score(y, pred)),
        "roc_auc": float(roc_auc_score(y, proba)),
        "selection_rate": float(pred.mean()),
    }
    low, high = _balanced_accuracy_interval(  # own stream: the group intervals draw as before
        y, pred, max(n_bootstrap, _MIN_CHANCE_BOOTSTRAP), confidence, np.random.default_rng([random_state, 1])
    )
    overall["balanced_accuracy_ci"] = [low, high]
    # The model learned nothing measurable: its group gaps describe noise, not how it treats groups.
    overall["at_chance"] = bool(low <= 0.5)
    if overall["at_chance"]:
        notes.append(
            f"the downstream model is at chance (balanced accuracy {overall['balanced_accuracy']:.2f} "
            f"[{low:.2f}, {high:.2f}]): it learned nothing of {target_name!r} from this representation, so its "
            "fairness gaps are not meaningful"
        )

    metric_fns = {
        "count": count,
        "selection_rate": selection_rate,
        "true_positive_rate": true_positive_rate,
        "false_positive_rate": false_positive_rate,
        "accuracy": accuracy_score,
    }
    rng = np.random.default_rng(random_state)
    group_rows, disparity_rows = [], []
    for feature, groups in _groups(sensitive, kinds, bands, intersections).items():
        keep = groups.notna().to_numpy()
        if not keep.all():
            warn(
                f"fairness: {feature!r} is missing for {int((~keep).sum())} rows, left out of its breakdown",
                notes,
            )
        g, yt, yp = groups[keep].to_numpy(dtype=object), y[keep], pred[keep]
        frame = MetricFrame(
            metrics=metric_fns, y_true=yt, y_pred=yp, sensitive_features=pd.Series(g, name=feature)
        )
        by_group = frame.by_group
        names = [str(v) for v in by_group.index]
        codes = pd.Index(names).get_indexer(g)
        counts = by_group["count"].to_numpy(dtype=int)
        eligible = counts >= min_group_size
        if (~eligible).any():
            small = [f"{n} ({c})" for n, c in zip(names, counts) if c < min_group_size]
            notes.append(
                f"{feature}: groups under {min_group_size} rows are shown but left out of the disparities: "
                + ", ".join(small)
            )
        if n_bootstrap:
            boot_rates, _ = _bootstrap_group_rates(yt, yp, codes, len(names), n_bootstrap, rng, eligible)
            jack_rates, _ = group_rates(
                yt, yp, codes, len(names), jackknife_weights(len(yt), _JACKKNIFE_GROUPS, rng), eligible
            )
        for j, name in enumerate(names):
            for metric in GROUP_METRICS:
                value = float(by_group[metric].iloc[j])
                lo, hi = (
                    bca_interval(boot_rates[metric][:, j], value, jack_rates[metric][:, j], confidence)
                    if n_bootstrap
                    else (np.nan, np.nan)
                )
                group_rows.append(
                    {
                        "representation": representation,
                        "feature": feature,
                        "group": name,
                        "metric": metric,
                        "value": value,
                        "ci_low": lo,
                        "ci_high": hi,
                        "count": int(counts[j]),
                        "included": bool(eligible[j]),
                    }
                )
        included = np.isin(codes, np.flatnonzero(eligible))
        for metric, fn in (
            ("demographic_parity_difference", demographic_parity_difference),
            ("equalized_odds_difference", equalized_odds_difference),
        ):
            if eligible.sum() >= 2:
                value = float(fn(yt[included], yp[included], sensitive_features=g[included]))
                lo, hi = np.nan, np.nan
                if n_bootstrap:
                    _, lo, hi = largest_gap_interval(
                        [
                            (by_group[rate].to_numpy(dtype=float)[eligible], boot_rates[rate][:, eligible])
                            for rate in _DISPARITY_RATES[metric]
                        ],
                        confidence,
                    )
                    lo, hi = min(lo, value), max(hi, value)
            else:
                value, lo, hi = np.nan, np.nan, np.nan
            disparity_rows.append(
                {
                    "representation": representation,
                    "feature": feature,
                    "metric": metric,
                    "value": value,
                    "ci_low": lo,
                    "ci_high": hi,
                    "n_groups": int(eligible.sum()),
                }
            )
        if eligible.sum() < 2:
            notes.append(f"{feature}: fewer than two groups of {min_group_size}+ rows, no disparity computed")

    return FairnessResult(
        representation=representation,
        target=target_name,
        by_group=pd.DataFrame(group_rows),
        disparities=pd.DataFrame(disparity_rows),
        overall=overall,
        notes=notes,
        config={
            "pos_label": pos_text,
            "downstream_model": (
                "StandardScaler + LogisticRegression(C=1), cross-validated predictions, threshold 0.5"
            ),
            "n_folds": n_folds,
            "n_bootstrap": n_bootstrap,
            "confidence": confidence,
            "min_group_size": min_group_size,
            "random_state": random_state,
            "intersections": [list(c) for c in intersections],
        },
    )
