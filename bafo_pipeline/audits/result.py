"""The audit's result: a tidy table plus context, a worst-case summary and a gate."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from .._utils.jsonable import to_jsonable

__all__ = ["SCHEMA_VERSION", "TABLE_COLUMNS", "AuditResult"]

SCHEMA_VERSION = 1
TABLE_COLUMNS = [
    "representation",
    "attribute",
    "kind",
    "probe",
    "metric",
    "mean",
    "ci_low",
    "ci_high",
    "std",
    "n",
]


@dataclass
class AuditResult:
    """Leakage scores of every (representation, attribute, probe, metric).

    Attributes
    ----------
    table : DataFrame
        Long format, columns ``representation, attribute, kind, probe, metric,
        mean, ci_low, ci_high, std, n``: ``mean`` is the mean over test folds,
        ``ci_low``/``ci_high`` the bootstrap interval of that mean, ``std`` the
        standard deviation across folds, ``n`` the samples audited. The metric
        ``leakage`` is the chance-adjusted score (adjusted balanced accuracy,
        or R² against the training median for continuous attributes); the metric
        ``p_value`` holds the permutation p-value in ``mean``.
    representations : dict
        ``name -> {"n_samples", "dim"}``.
    attributes : dict
        ``name -> {"kind", "n", "classes", "class_counts", ...}``.
    config : dict
        Settings of the run.
    timings : list of dict
        Seconds per (representation, attribute, probe).
    warnings : list of str
        Warnings raised while preparing the data.
    schema_version : int
    """

    table: pd.DataFrame
    representations: dict[str, Any] = field(default_factory=dict)
    attributes: dict[str, Any] = field(default_factory=dict)
    config: dict[str, Any] = field(default_factory=dict)
    timings: list[dict[str, Any]] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    schema_version: int = SCHEMA_VERSION

    # ------------------------------------------------------------------ views
    def metric(self, name: str) -> pd.DataFrame:
        """Rows of one metric, e.g. ``result.metric("leakage")``."""
        return self.table[self.table["metric"] == name].reset_index(drop=True)

    def value(self, representation: str, attribute: str, probe: str, metric: str = "leakage") -> pd.Series:
        """The table row of one score (``mean``, ``ci_low``, ``ci_high``, ``std``...)."""
        t = self.table
        hit = t[
            (t["representation"] == representation)
            & (t["attribute"] == attribute)
            & (t["probe"] == probe)
            & (t["metric"] == metric)
        ]
        if hit.empty:
            raise KeyError(f"no score for {(representation, attribute, probe, metric)}")
        return hit.iloc[0]

    def worst_case(self, *, alpha: float = 0.05, with_verdict: bool = True) -> pd.DataFrame:
        """The headline: per representation and attribute, the best attacker's leakage.

        Parameters
        ----------
        alpha : float, default=0.05
            Significance level used in the verdict.
        with_verdict : bool, default=True
            Add a plain-language ``verdict`` column.

        Returns
        -------
        DataFrame
            ``representation, attribute, kind, probe`` (the attack probe, i.e. not
            the prior baseline, with the highest mean leakage), ``leakage, ci_low,
            ci_high`` (its score; can be slightly negative when every probe is at
            chance), ``p_value`` (smallest
            permutation p-value over the non-baseline probes, Bonferroni-corrected
            for their number), ``linear`` and ``nonlinear`` (best linear and best
            non-linear leakage) and, optionally, ``verdict``.
        """
        leak = self.metric("leakage")
        pvals = self.metric("p_value").set_index(["representation", "attribute", "probe"])["mean"]
        out = []
        for (rep, attr), group in leak.groupby(["representation", "attribute"], sort=False):
            attacks = group[group["probe"] != "prior"]
            if attacks.empty:  # only the baseline was run
                attacks = group
            best = attacks.loc[attacks["mean"].idxmax()]
            tested = [pvals.get((rep, attr, p), np.nan) for p in attacks["probe"]]
            tested = [p for p in tested if not np.isnan(p)]
            p = min(1.0, min(tested) * len(tested)) if tested else np.nan
            by_probe = group.set_index("probe")["mean"]
            nonlinear = [by_probe[p] for p in ("mlp", "gbdt") if p in by_probe]
            out.append(
                {
                    "representation": rep,
                    "attribute": attr,
                    "kind": best["kind"],
                    "probe": best["probe"],
                    "leakage": best["mean"],
                    "ci_low": best["ci_low"],
                    "ci_high": best["ci_high"],
                    "p_value": p,
                    "linear": by_probe.get("linear", np.nan),
                    "nonlinear": max(nonlinear) if nonlinear else np.nan,
                }
            )
        frame = pd.DataFrame(out)
        if with_verdict and not frame.empty:
            from .verdict import verdict

            frame["verdict"] = [verdict(self, row, alpha=alpha) for row in frame.to_dict("records")]
        return frame

    def max_leakage(self, representation: str | None = None) -> float:
        """Largest worst-case leakage over attributes (and representations unless one is named)."""
        worst = self.worst_case(with_verdict=False)
        if representation is not None:
            if representation not in self.representations:
                raise KeyError(
                    f"unknown representation {representation!r}; have {list(self.representations)}"
                )
            worst = worst[worst["representation"] == representation]
        return float(worst["leakage"].max())

    def exceeds(self, threshold: float, representation: str | None = None) -> bool:
        """The gate: True when some attribute's worst-case leakage is above ``threshold``.

        Parameters
        ----------
        threshold : float
            Maximum tolerated chance-adjusted leakage (0 = chance, 1 = perfect).
        representation : str, optional
            Gate only this representation (default: every one audited).
        """
        return self.max_leakage(representation) > threshold

    # ---------------------------------------------------------- serialisation
    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict (NaN becomes None)."""
        return to_jsonable(
            {
                "schema_version": self.schema_version,
                "kind": "bafo-leakage-audit",
                "config": self.config,
                "representations": self.representations,
                "attributes": self.attributes,
                "results": self.table[TABLE_COLUMNS].to_dict("records"),
                "worst_case": self.worst_case().to_dict("records"),
                "timings": self.timings,
                "warnings": self.warnings,
            }
        )

    def to_json(self, path: str | os.PathLike | None = None, *, indent: int = 2) -> str:
        """Serialise with :meth:`to_dict`; also write to ``path`` when given."""
        text = json.dumps(self.to_dict(), indent=indent, allow_nan=False)
        if path is not None:
            from .._utils.atomic import atomic_write_path

            with atomic_write_path(path, overwrite=True) as tmp:
                tmp.write_text(text + "\n", encoding="utf-8")
        return text

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> AuditResult:
        """Rebuild from :meth:`to_dict` output."""
        version = data.get("schema_version")
        if version != SCHEMA_VERSION:
            raise ValueError(
                f"unsupported audit schema_version {version!r} (this code reads {SCHEMA_VERSION})"
            )
        table = pd.DataFrame(data["results"], columns=TABLE_COLUMNS)
        for col in ("mean", "ci_low", "ci_high", "std"):
            table[col] = pd.to_numeric(table[col]).astype(float)
        return cls(
            table=table,
            representations=data.get("representations", {}),
            attributes=data.get("attributes", {}),
            config=data.get("config", {}),
            timings=data.get("timings", []),
            warnings=data.get("warnings", []),
            schema_version=version,
        )

    @classmethod
    def from_json(cls, text_or_path: str | os.PathLike) -> AuditResult:
        """Rebuild from a JSON string or a ``report.json`` path."""
        text = str(text_or_path)
        if not text.lstrip().startswith("{"):
            text = Path(text_or_path).read_text(encoding="utf-8")
        data = json.loads(text)
        if "leakage" in data and "results" not in data:  # a full report.json
            data = data["leakage"]
        return cls.from_dict(data)
