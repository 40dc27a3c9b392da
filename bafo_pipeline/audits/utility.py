"""The utility audit: how much of each non-sensitive target a representation still carries.

A privacy stage is judged on two axes: what leaks of the sensitive attributes and what
downstream models can still learn. This module measures the second with the leakage
audit's own machinery (:func:`~bafo_pipeline.audits.leakage.audit_leakage`: the same
probe ladder, folds, intervals), pointed at non-sensitive targets instead:

- the score of a target is its chance-adjusted recovery: R² against the training-fold
  mean for continuous targets (the leakage audit's definition, so a probe that learnt
  only the mean scores 0 even on a skewed target), chance-adjusted balanced accuracy
  for categorical ones;
- the *share* a representation retains is its score over a reference representation's
  (raw pixels, the unconcealed encoder), per target;
- the *residual* variant of a continuous target is the part the sensitive attributes do
  not explain: the target minus its least-squares prediction from the one-hot encoded
  sensitive attributes (continuous ones cut into decile bands), fitted on a training side.
  A representation that hides the sensitive attributes cannot be expected to keep the part
  of a target they explain (mouth shape varies with age), but it should keep the rest.

Like every audit, this works on arrays only and knows nothing of the model.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
from sklearn.model_selection import KFold

from ..attributes import quantile_bin_edges
from .inputs import class_text, infer_kind
from .leakage import audit_leakage
from .probes import UTILITY_PROBES
from .result import AuditResult

__all__ = [
    "RESIDUAL_SUFFIX",
    "SensitiveResidualizer",
    "UtilityResult",
    "audit_utility",
    "residualize_targets",
]

#: Name suffix of a target's residual variant (``mouth_open`` -> ``mouth_open_residual``).
RESIDUAL_SUFFIX = "_residual"
_N_BANDS = 10


class SensitiveResidualizer:
    """Least-squares prediction of targets from one-hot encoded sensitive attributes.

    Categorical attributes are one-hot encoded (levels unseen at fit time get no
    column, i.e. the intercept); continuous ones are cut at the deciles of the fitting
    data and the bands one-hot encoded. The model is additive (no interactions).

    Parameters
    ----------
    n_bands : int, default=10
        Quantile bands per continuous sensitive attribute.
    kinds : mapping, optional
        ``{column: "categorical" | "continuous"}`` overriding the inferred kind.

    Attributes
    ----------
    columns_ : list of str
        Sensitive columns used.
    levels_ : dict
        Per categorical column, its levels; per continuous column, its band edges.
    coef_ : ndarray of shape (n_features + 1, n_targets)
        Intercept first.
    explained_ : dict of str to float
        R² of each target on the fitting data (the share of its variance the sensitive
        attributes explain).
    """

    def __init__(self, *, n_bands: int = _N_BANDS, kinds: Mapping[str, str] | None = None) -> None:
        self.n_bands = n_bands
        self.kinds = kinds

    def _design(self, sensitive: pd.DataFrame) -> np.ndarray:
        blocks = [np.ones((len(sensitive), 1))]
        for column in self.columns_:
            values = sensitive[column]
            if self.kinds_[column] == "continuous":
                codes = np.digitize(pd.to_numeric(values).to_numpy(np.float64), self.levels_[column])
                blocks.append((codes[:, None] == np.arange(1, len(self.levels_[column]) + 1)).astype(float))
            else:
                text = class_text(values)
                blocks.append((text[:, None] == np.asarray(self.levels_[column][1:])[None, :]).astype(float))
        return np.hstack(blocks)

    def fit(self, sensitive: pd.DataFrame, targets: pd.DataFrame) -> SensitiveResidualizer:
        """Fit on rows where every sensitive value and the target are present.

        Parameters
        ----------
        sensitive : DataFrame
        targets : DataFrame
            Continuous targets, same rows.

        Returns
        -------
        self
        """
        _check_same_rows(sensitive, targets)
        self.columns_ = list(sensitive.columns)
        self.kinds_ = {c: (self.kinds or {}).get(c) or infer_kind(sensitive[c]) for c in self.columns_}
        complete = sensitive.notna().all(axis=1).to_numpy()
        self.levels_ = {}
        for column in self.columns_:
            values = sensitive.loc[complete, column]
            if self.kinds_[column] == "continuous":
                self.levels_[column] = quantile_bin_edges(pd.to_numeric(values).to_numpy(dtype=float), self.n_bands)
            else:
                self.levels_[column] = sorted(set(class_text(values)))
        X = self._design(sensitive[complete])
        self.coef_ = np.zeros((X.shape[1], targets.shape[1]))
        self.explained_ = {}
        for j, name in enumerate(targets.columns):
            y = pd.to_numeric(targets[name]).to_numpy(np.float64)[complete]
            ok = np.isfinite(y)
            if ok.sum() <= X.shape[1]:
                raise ValueError(f"target {name!r}: {int(ok.sum())} usable rows, too few to regress on {X.shape[1]} columns")
            self.coef_[:, j] = np.linalg.lstsq(X[ok], y[ok], rcond=None)[0]
            residual = y[ok] - X[ok] @ self.coef_[:, j]
            self.explained_[name] = float(1.0 - residual.var() / y[ok].var())
        self.targets_ = list(targets.columns)
        return self

    def residuals(self, sensitive: pd.DataFrame, targets: pd.DataFrame) -> pd.DataFrame:
        """Targets minus their prediction from the sensitive attributes (NaN where one is missing).

        Parameters
        ----------
        sensitive, targets : DataFrame
            Same columns as in :meth:`fit`, same rows as each other.

        Returns
        -------
        DataFrame
            Same shape, index and columns as ``targets``.
        """
        _check_same_rows(sensitive, targets)
        missing = [c for c in self.columns_ if c not in sensitive.columns]
        if missing or list(targets.columns) != self.targets_:
            raise ValueError(
                f"fitted on sensitive columns {self.columns_} and targets {self.targets_}; "
                f"got {list(sensitive.columns)} and {list(targets.columns)}"
            )
        complete = sensitive[self.columns_].notna().all(axis=1).to_numpy()
        out = np.full(targets.shape, np.nan)
        if complete.any():
            predicted = self._design(sensitive[self.columns_][complete]) @ self.coef_
            out[complete] = targets.apply(pd.to_numeric).to_numpy(np.float64)[complete] - predicted
        return pd.DataFrame(out, index=targets.index, columns=targets.columns)


def _check_same_rows(sensitive: pd.DataFrame, targets: pd.DataFrame) -> None:
    if not isinstance(sensitive, pd.DataFrame) or not isinstance(targets, pd.DataFrame):
        raise TypeError("sensitive and targets must be pandas DataFrames")
    if len(sensitive) != len(targets):
        raise ValueError(f"sensitive has {len(sensitive)} rows but targets {len(targets)}")


def residualize_targets(
    targets: pd.DataFrame,
    sensitive: pd.DataFrame,
    *,
    fit_targets: pd.DataFrame | None = None,
    fit_sensitive: pd.DataFrame | None = None,
    n_folds: int = 5,
    random_state: int = 0,
    n_bands: int = _N_BANDS,
) -> tuple[pd.DataFrame, dict[str, float]]:
    """The part of each target that the sensitive attributes do not explain.

    Parameters
    ----------
    targets : DataFrame
        Continuous targets of the audited rows.
    sensitive : DataFrame
        The sensitive attributes of the same rows.
    fit_targets, fit_sensitive : DataFrame, optional
        A training side to fit the regression on (e.g. the encoder's training split). Without
        them the audited rows are cross-fitted: each fold's residuals come from a regression
        fitted on the other folds, so no row's residual uses its own target.
    n_folds : int, default=5
        Folds of the cross-fitting.
    random_state : int, default=0
    n_bands : int, default=10
        See :class:`SensitiveResidualizer`.

    Returns
    -------
    residuals : DataFrame
        Same index and columns as ``targets``.
    explained : dict of str to float
        R² of each target on the sensitive attributes, on the fitting data (the mean over
        folds when cross-fitted).
    """
    if (fit_targets is None) != (fit_sensitive is None):
        raise ValueError("pass both fit_targets and fit_sensitive, or neither")
    if fit_targets is not None:
        model = SensitiveResidualizer(n_bands=n_bands).fit(fit_sensitive, fit_targets[list(targets.columns)])
        return model.residuals(sensitive, targets), model.explained_
    _check_same_rows(sensitive, targets)
    out = pd.DataFrame(np.nan, index=targets.index, columns=targets.columns)
    explained: dict[str, list[float]] = {c: [] for c in targets.columns}
    splitter = KFold(n_splits=n_folds, shuffle=True, random_state=random_state)
    for train, test in splitter.split(np.zeros(len(targets))):
        model = SensitiveResidualizer(n_bands=n_bands).fit(sensitive.iloc[train], targets.iloc[train])
        out.iloc[test] = model.residuals(sensitive.iloc[test], targets.iloc[test]).to_numpy()
        for name, value in model.explained_.items():
            explained[name].append(value)
    return out, {name: float(np.mean(values)) for name, values in explained.items()}


@dataclass
class UtilityResult:
    """Scores of every (representation, target, probe), with shares of reference representations.

    Attributes
    ----------
    audit : AuditResult
        The underlying probe table (metric ``leakage`` holds the chance-adjusted score).
    references : list of str
        Representations the shares are relative to.
    explained : dict of str to float
        Share of each residualised target's variance the sensitive attributes explain.
    kinds : dict of str to str
        Kind of each target.
    """

    audit: AuditResult
    references: list[str] = field(default_factory=list)
    explained: dict[str, float] = field(default_factory=dict)
    kinds: dict[str, str] = field(default_factory=dict)

    def scores(self, probe: str = "best") -> pd.DataFrame:
        """Per representation and target, one probe's chance-adjusted score.

        Parameters
        ----------
        probe : str, default="best"
            ``"best"``: the best non-baseline probe per representation and target (what
            the strongest downstream model of the ladder gets); or a probe name.

        Returns
        -------
        DataFrame
            ``representation, target, kind, probe, score, ci_low, ci_high, at_chance``
            (``at_chance``: the interval reaches 0).
        """
        leak = self.audit.metric("leakage")
        if probe == "best":
            attacks = leak[leak["probe"] != "prior"]
            chosen = attacks.loc[attacks.groupby(["representation", "attribute"], sort=False)["mean"].idxmax()]
        else:
            if probe not in set(leak["probe"]):
                raise ValueError(f"probe {probe!r} was not run; have {sorted(set(leak['probe']))}")
            chosen = leak[leak["probe"] == probe]
        out = chosen.rename(columns={"attribute": "target", "mean": "score"})[
            ["representation", "target", "kind", "probe", "score", "ci_low", "ci_high"]
        ].reset_index(drop=True)
        out["at_chance"] = ~(out["ci_low"] > 0)
        return out

    def shares(self, probe: str = "best") -> pd.DataFrame:
        """:meth:`scores` with, per reference, the share of the reference's score retained.

        The share interval is conservative: the ratio of the interval ends (lower over the
        reference's upper, upper over the reference's lower), NaN when the reference's
        interval reaches 0 (then the reference itself carries no measurable signal).

        Returns
        -------
        DataFrame
            :meth:`scores` plus ``share_of[<reference>]``, ``share_low[<reference>]``,
            ``share_high[<reference>]`` per reference.
        """
        table = self.scores(probe)
        for reference in self.references:
            ref = table[table["representation"] == reference].set_index("target")
            score = table["target"].map(ref["score"])
            low, high = table["target"].map(ref["ci_low"]), table["target"].map(ref["ci_high"])
            usable = low > 0
            table[f"share_of[{reference}]"] = np.where(score > 0, table["score"] / score, np.nan)
            table[f"share_low[{reference}]"] = np.where(usable, table["ci_low"] / high, np.nan)
            table[f"share_high[{reference}]"] = np.where(usable, table["ci_high"] / low, np.nan)
        return table

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready summary: best-probe and linear-probe shares, explained variance, the audit."""
        from .._utils import to_jsonable

        linear = "linear" in set(self.audit.metric("leakage")["probe"])
        return to_jsonable(
            {
                "kind": "bafo-utility-audit",
                "references": self.references,
                "explained_by_sensitive": self.explained,
                "targets": self.kinds,
                "best": self.shares("best").to_dict("records"),
                "linear": self.shares("linear").to_dict("records") if linear else None,
                "audit": self.audit.to_dict(),
            }
        )


def audit_utility(
    representations: Mapping[str, Any],
    targets: pd.DataFrame,
    *,
    references: Sequence[str] = (),
    sensitive: pd.DataFrame | None = None,
    fit_targets: pd.DataFrame | None = None,
    fit_sensitive: pd.DataFrame | None = None,
    residual: Sequence[str] | None = None,
    kinds: Mapping[str, str] | None = None,
    probes: Sequence[str] = UTILITY_PROBES,
    n_folds: int = 5,
    n_bootstrap: int = 500,
    n_permutations: int = 0,
    confidence: float = 0.95,
    random_state: int = 0,
    **audit_options: Any,
) -> UtilityResult:
    """How well the probe ladder recovers each non-sensitive target from each representation.

    Parameters
    ----------
    representations : mapping of str to array-like of shape (n, d)
        Embeddings of the same ``n`` rows, side by side (e.g. pixel PCA, the unconcealed
        encoder, the shared latents).
    targets : DataFrame
        Non-sensitive targets of the ``n`` rows (NaN where unknown: such rows are left out
        of that target's audit, with a warning).
    references : sequence of str, default=()
        Names in ``representations`` that shares are computed against.
    sensitive : DataFrame, optional
        Sensitive attributes of the ``n`` rows; needed for residual targets.
    fit_targets, fit_sensitive : DataFrame, optional
        A training side for the residual regression (see :func:`residualize_targets`);
        without it the audited rows are cross-fitted.
    residual : sequence of str, optional
        Targets to audit also as ``<name>_residual``; default: every continuous target when
        ``sensitive`` is given, none otherwise.
    kinds : mapping, optional
        ``{target: "continuous" | "categorical"}``; default: floats continuous, the rest
        by :func:`~bafo_pipeline.audits.inputs.infer_kind`.
    probes : sequence of str, default=("prior", "linear", "mlp", "gbdt")
        :data:`~bafo_pipeline.audits.UTILITY_PROBES`: the models a downstream user would fit
        (the attack ladder's ``"quadratic"`` and ``"knn"`` are left out).
    n_folds, n_bootstrap, n_permutations, confidence, random_state
        As :func:`~bafo_pipeline.audits.leakage.audit_leakage` (permutation p-values are
        off by default: the intervals already say whether a target is recovered).
    **audit_options
        Passed to :func:`~bafo_pipeline.audits.leakage.audit_leakage` (``device``,
        ``mlp_params``, ``progress``, ``verbose`` ...).

    Returns
    -------
    UtilityResult

    Raises
    ------
    ValueError
        For unknown references, residual targets that are not continuous, residuals
        without ``sensitive``, or anything :func:`audit_leakage` refuses.
    """
    if not isinstance(targets, pd.DataFrame):
        raise TypeError(f"targets must be a pandas DataFrame, got {type(targets).__name__}")
    unknown = [r for r in references if r not in representations]
    if unknown:
        raise ValueError(f"references {unknown} are not among the representations {list(representations)}")
    kinds = {c: (kinds or {}).get(c) or _target_kind(targets[c]) for c in targets.columns}
    if residual is None:
        residual = [c for c, k in kinds.items() if k == "continuous"] if sensitive is not None else []
    residual = list(residual)
    if residual and sensitive is None:
        raise ValueError("residual targets need the sensitive attributes (sensitive=...)")
    not_continuous = [c for c in residual if kinds.get(c) != "continuous"]
    if not_continuous:
        raise ValueError(f"only continuous targets have a residual variant; {not_continuous} are not")

    table = targets.reset_index(drop=True).copy()
    explained: dict[str, float] = {}
    if residual:
        residuals, explained = residualize_targets(
            table[residual],
            sensitive.reset_index(drop=True),
            fit_targets=fit_targets,
            fit_sensitive=fit_sensitive,
            n_folds=n_folds,
            random_state=random_state,
        )
        for name in residual:
            table[name + RESIDUAL_SUFFIX] = residuals[name].to_numpy()
            kinds[name + RESIDUAL_SUFFIX] = "continuous"
    audit = audit_leakage(
        dict(representations),
        table,
        attributes=list(table.columns),
        kinds=kinds,
        bands={},
        probes=probes,
        n_folds=n_folds,
        n_bootstrap=n_bootstrap,
        n_permutations=n_permutations,
        confidence=confidence,
        random_state=random_state,
        **audit_options,
    )
    return UtilityResult(audit=audit, references=list(references), explained=explained, kinds=kinds)


def _target_kind(column: pd.Series) -> str:
    if pd.api.types.is_float_dtype(column):
        return "continuous"
    return infer_kind(column)
