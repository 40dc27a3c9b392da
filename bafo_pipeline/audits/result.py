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
from .attackers import CROSS_VALIDATED, DATA_RICH, IN_SAMPLE

__all__ = ["SCHEMA_VERSION", "SIDE_CHANNEL_ALPHA", "TABLE_COLUMNS", "AuditResult"]

SCHEMA_VERSION = 2
#: Schema versions :meth:`AuditResult.from_dict` reads (1: before the data-rich attacker).
READABLE_VERSIONS = (1, 2)
SIDE_CHANNEL = "side channel"
#: Family-wise significance level at which a side channel leaks. Stricter than the embeddings' 0.05:
#: a file's ids or row order either follow the labels (rows sorted by a label give adjacency
#: p-values far below it from a few hundred rows: tests/test_audit_side_channels.py) or they do
#: not, and at 0.05 one clean export in twenty would be reported as leaking through its (random,
#: keyed) row order.
SIDE_CHANNEL_ALPHA = 0.001
TABLE_COLUMNS = [
    "representation",
    "attribute",
    "kind",
    "probe",
    "attacker",
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
        Long format, columns ``representation, attribute, kind, probe, attacker,
        metric, mean, ci_low, ci_high, std, n``: ``attacker`` is
        ``"cross-validated"`` (probes cross-validated on the audited rows),
        ``"data-rich"`` (probes fitted on a labelled training export, scored on
        every audited row) or ``"in-sample"`` (the group-sum attack on the
        training export's own rows, probe ``"group_sums"``); ``mean`` is the mean over test folds,
        ``ci_low``/``ci_high`` the bootstrap interval of that mean, ``std`` the
        standard deviation across folds, ``n`` the samples audited. The metric
        ``leakage`` is the chance-adjusted score (adjusted balanced accuracy,
        or R² against the training mean for continuous attributes); the metric
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

    def value(
        self,
        representation: str,
        attribute: str,
        probe: str,
        metric: str = "leakage",
        attacker: str = CROSS_VALIDATED,
    ) -> pd.Series:
        """The table row of one score (``mean``, ``ci_low``, ``ci_high``, ``std``...)."""
        t = self.table
        hit = t[
            (t["representation"] == representation)
            & (t["attribute"] == attribute)
            & (t["probe"] == probe)
            & (t["metric"] == metric)
            & (t["attacker"] == attacker)
        ]
        if hit.empty:
            raise KeyError(f"no score for {(representation, attribute, probe, metric, attacker)}")
        return hit.iloc[0]

    @property
    def attackers(self) -> list[str]:
        """The attackers audited: ``["cross-validated"]``, plus ``"data-rich"`` and ``"in-sample"`` when a training
        export was given."""
        return list(dict.fromkeys(self.table["attacker"])) if len(self.table) else [CROSS_VALIDATED]

    def worst_case(
        self, *, alpha: float = 0.05, with_verdict: bool = True, attacker: str | None = None
    ) -> pd.DataFrame:
        """The headline: per representation and attribute, the strongest attack's leakage.

        Parameters
        ----------
        alpha : float, default=0.05
            Significance level used in the embeddings' verdicts (side channels'
            verdicts follow :meth:`side_channels`).
        with_verdict : bool, default=True
            Add a plain-language ``verdict`` column.
        attacker : {"cross-validated", "data-rich", "in-sample"}, optional
            Only this attacker's probes; by default the strongest.

        Returns
        -------
        DataFrame
            ``representation, attribute, kind, probe, attacker`` (the attack probe,
            i.e. not the prior baseline, with the highest mean leakage, and whose it
            is), ``leakage, ci_low, ci_high`` (its score; can be slightly negative
            when every probe is at chance), ``p_value`` (smallest permutation
            p-value over the attacks that score above chance, or over every
            attack when none does, Bonferroni-corrected for the number tested),
            ``linear`` and ``nonlinear`` (best linear and best non-linear leakage),
            ``cross_validated``, ``data_rich`` and ``in_sample`` (each attacker's best
            leakage; NaN for an attacker not audited) and, optionally, ``verdict``.
        """
        leak = self.metric("leakage")
        pvals = self.metric("p_value")
        if attacker is not None:
            leak, pvals = leak[leak["attacker"] == attacker], pvals[pvals["attacker"] == attacker]
        pvals = pvals.set_index(["representation", "attribute", "probe", "attacker"])["mean"]
        out = []
        for (rep, attr), group in leak.groupby(["representation", "attribute"], sort=False):
            attacks = group[group["probe"] != "prior"]
            if attacks.empty:  # only the baseline was run
                attacks = group
            best = attacks.loc[attacks["mean"].idxmax()]
            p_values = [pvals.get((rep, attr, p, a), np.nan) for p, a in zip(attacks["probe"], attacks["attacker"])]
            p = _worst_case_p_value(p_values, attacks["mean"].to_numpy())
            by_attacker = attacks.groupby("attacker")["mean"].max()
            linear = group.loc[group["probe"] == "linear", "mean"]
            nonlinear = group.loc[group["probe"].isin(["mlp", "gbdt", "knn", "quadratic"]), "mean"]
            out.append(
                {
                    "representation": rep,
                    "attribute": attr,
                    "kind": best["kind"],
                    "probe": best["probe"],
                    "attacker": best["attacker"],
                    "leakage": best["mean"],
                    "ci_low": best["ci_low"],
                    "ci_high": best["ci_high"],
                    "p_value": p,
                    "linear": linear.max() if len(linear) else np.nan,
                    "nonlinear": nonlinear.max() if len(nonlinear) else np.nan,
                    "cross_validated": by_attacker.get(CROSS_VALIDATED, np.nan),
                    "data_rich": by_attacker.get(DATA_RICH, np.nan),
                    "in_sample": by_attacker.get(IN_SAMPLE, np.nan),
                }
            )
        frame = pd.DataFrame(out)
        if with_verdict and not frame.empty:
            from .verdict import verdict

            sides = self._side_channels_of(frame)  # their own, family-wise rule and sentence
            said = sides.set_index(["representation", "attribute"])["verdict"].to_dict() if len(sides) else {}
            frame["verdict"] = [
                said[(row["representation"], row["attribute"])]
                if (row["representation"], row["attribute"]) in said else verdict(self, row, alpha=alpha)
                for row in frame.to_dict("records")
            ]
        return frame

    def max_leakage(self, representation: str | None = None) -> float:
        """Largest worst-case leakage over attributes (and representations unless one is named; a named
        one's side channels count with it)."""
        worst = self.worst_case(with_verdict=False)
        if representation is not None:
            if representation not in self.representations:
                raise KeyError(
                    f"unknown representation {representation!r}; have {list(self.representations)}"
                )
            names = {representation} | {
                n for n, info in self.representations.items() if info.get("of") == representation
            }
            worst = worst[worst["representation"].isin(names)]
        return float(worst["leakage"].max())

    def exceeds(self, threshold: float, representation: str | None = None) -> bool:
        """The leakage gate: True when some attribute's worst-case leakage is above ``threshold``.

        Parameters
        ----------
        threshold : float
            Maximum tolerated chance-adjusted leakage (0 = chance, 1 = perfect).
        representation : str, optional
            Gate only this representation and its side channels (default: every one audited).
        """
        return self.max_leakage(representation) > threshold

    def failed(
        self, threshold: float | None = None, representation: str | None = None, *,
        side_channel_alpha: float = SIDE_CHANNEL_ALPHA,
    ) -> bool:
        """The verdict: True when a side channel leaks, or (with ``threshold``) the leakage gate fails.

        Side channels should carry nothing at all, so any significant leakage through
        them (at ``side_channel_alpha``, family-wise) fails, whatever the threshold; see
        :meth:`side_channels`.
        """
        if self.side_channels_leak(alpha=side_channel_alpha, threshold=threshold, representation=representation):
            return True
        return threshold is not None and self.exceeds(threshold, representation)

    # ------------------------------------------------------------ side channels
    def side_channels(self, *, alpha: float = SIDE_CHANNEL_ALPHA, threshold: float | None = None) -> pd.DataFrame:
        """The worst case of every side channel (a file's ids, row order, other columns) and whether it leaks.

        A side channel leaks when its worst-case p-value, Bonferroni-corrected over
        every side-channel test of the audit (channels x attributes), is below
        ``alpha``, or when its worst-case leakage exceeds ``threshold``.

        Parameters
        ----------
        alpha : float, default=SIDE_CHANNEL_ALPHA (0.001)
            Family-wise significance level: a clean file is called leaky in about
            this share of audits.
        threshold : float, optional
            The leakage gate, as in :meth:`exceeds`.

        Returns
        -------
        DataFrame
            :meth:`worst_case` rows of the side channels, with ``of`` and
            ``channel`` (the file and the channel), ``family_p_value``, ``leaks``
            and ``verdict`` (a sentence that agrees with ``leaks``).
            Empty when no side channel was audited.
        """
        return self._side_channels_of(self.worst_case(with_verdict=False), alpha=alpha, threshold=threshold)

    def _side_channels_of(self, worst: pd.DataFrame, *, alpha: float = SIDE_CHANNEL_ALPHA,
                          threshold: float | None = None) -> pd.DataFrame:
        """:meth:`side_channels` from the :meth:`worst_case` rows (without verdicts) already computed."""
        from .verdict import side_channel_verdict

        names = [n for n, info in self.representations.items() if info.get("role") == SIDE_CHANNEL]
        worst = worst[worst["representation"].isin(names)].reset_index(drop=True) if len(worst) else worst.copy()
        if worst.empty:
            return worst.assign(of=[], channel=[], family_p_value=[], leaks=[], verdict=[])
        worst["of"] = [self.representations[n].get("of") for n in worst["representation"]]
        worst["channel"] = [self.representations[n].get("channel") for n in worst["representation"]]
        worst["family_p_value"] = np.minimum(1.0, worst["p_value"].to_numpy(dtype=float) * len(worst))
        leaks = worst["family_p_value"].fillna(1.0).to_numpy() < alpha
        if threshold is not None:
            leaks |= worst["leakage"].to_numpy(dtype=float) > threshold
        worst["leaks"] = leaks
        worst["verdict"] = [side_channel_verdict(self, row) for row in worst.to_dict("records")]
        return worst

    def side_channels_leak(self, *, alpha: float = SIDE_CHANNEL_ALPHA, threshold: float | None = None,
                           representation: str | None = None) -> bool:
        """True when some side channel (of ``representation``, if named) leaks; see :meth:`side_channels`."""
        frame = self.side_channels(alpha=alpha, threshold=threshold)
        if representation is not None and len(frame):
            frame = frame[frame["of"] == representation]
        return bool(len(frame) and frame["leaks"].any())

    def with_rows(self, rows: list[dict[str, Any]]) -> AuditResult:
        """A copy with more table rows (e.g. a test that is not a fitted probe)."""
        table = pd.concat([self.table, pd.DataFrame(rows, columns=TABLE_COLUMNS)], ignore_index=True) if rows else (
            self.table.copy()
        )
        return AuditResult(table, dict(self.representations), dict(self.attributes), dict(self.config),
                           list(self.timings), list(self.warnings), self.schema_version)

    def merged(self, other: AuditResult) -> AuditResult:
        """This result and ``other`` (other representations of the same attributes) as one.

        The config is this one's; ``other``'s side-channel settings are added to it.
        """
        config = dict(self.config)
        for key in ("side_channel_probes", "side_channel_bootstrap"):
            if key in other.config:
                config[key] = other.config[key]
        skipped = {**self.config.get("skipped_columns", {}), **other.config.get("skipped_columns", {})}
        if skipped:
            config["skipped_columns"] = skipped
        warnings = list(self.warnings) + [w for w in other.warnings if w not in self.warnings]
        return AuditResult(
            pd.concat([self.table, other.table], ignore_index=True),
            {**self.representations, **other.representations},
            {**self.attributes, **{k: v for k, v in other.attributes.items() if k not in self.attributes}},
            config,
            list(self.timings) + list(other.timings),
            warnings,
            self.schema_version,
        )

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
        if version not in READABLE_VERSIONS:
            raise ValueError(
                f"unsupported audit schema_version {version!r} (this code reads {list(READABLE_VERSIONS)})"
            )
        table = pd.DataFrame(data["results"], columns=TABLE_COLUMNS)
        if version == 1:  # written before the data-rich attacker: every probe was cross-validated
            table["attacker"] = CROSS_VALIDATED
        for col in ("mean", "ci_low", "ci_high", "std"):
            table[col] = pd.to_numeric(table[col]).astype(float)
        return cls(
            table=table,
            representations=data.get("representations", {}),
            attributes=data.get("attributes", {}),
            config=data.get("config", {}),
            timings=data.get("timings", []),
            warnings=data.get("warnings", []),
            schema_version=SCHEMA_VERSION,
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


def _worst_case_p_value(p_values: list[float], scores: np.ndarray) -> float:
    """Bonferroni-corrected smallest p-value of the attacks that beat chance (of every attack when none does).

    A permutation test rejects independence even for a probe that scores below chance (its refitted
    null over-fits further), so such a probe's p-value must not stand for another attack's
    above-chance score; it is reported only when no attack beats chance.
    """
    tested = [(p, score) for p, score in zip(p_values, scores) if not np.isnan(p)]
    if not tested:
        return np.nan
    gaining = [p for p, score in tested if score > 0]
    return min(1.0, min(gaining or [p for p, _ in tested]) * len(tested))
