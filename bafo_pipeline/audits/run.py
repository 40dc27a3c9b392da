"""One call that does the whole audit: align, probe, fairness, report (the CLI's backend)."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from .fairness import FairnessResult, fairness_report
from .inputs import align_by_id, check_representations
from .leakage import audit_leakage
from .readers import read_embedding_parquet, read_labels
from .report import report_dict, write_report
from .result import AuditResult
from .side_channels import SideChannels, audit_side_channels

__all__ = ["AuditReport", "run_audit", "run_audit_files"]


@dataclass
class AuditReport:
    """Leakage result, fairness results and the files written.

    Attributes
    ----------
    leakage : AuditResult
        The embeddings' leakage, and their files' side channels (representations
        with ``role: "side channel"``).
    fairness : list of FairnessResult
    paths : dict of str to Path
        Empty when no output folder was given.
    files : dict of str to dict
        Per audited file (by representation name): what its footer metadata
        reveals, the columns taken as the embedding and as labels, the columns not
        audited, and its data fingerprint when one was taken.
    """

    leakage: AuditResult
    fairness: list[FairnessResult] = field(default_factory=list)
    paths: dict[str, Path] = field(default_factory=dict)
    files: dict[str, dict[str, Any]] = field(default_factory=dict)

    def worst_case(self) -> pd.DataFrame:
        """See :meth:`AuditResult.worst_case`."""
        return self.leakage.worst_case()

    def exceeds(self, threshold: float, representation: str | None = None) -> bool:
        """The ``--max-leakage`` gate; see :meth:`AuditResult.exceeds`."""
        return self.leakage.exceeds(threshold, representation)

    def failed(self, threshold: float | None = None, representation: str | None = None) -> bool:
        """The verdict: a side channel leaks, or the gate fails; see :meth:`AuditResult.failed`."""
        return self.leakage.failed(threshold, representation)

    def to_dict(self) -> dict[str, Any]:
        """The content of ``report.json``."""
        return report_dict(self.leakage, self.fairness, self.files)


def run_audit(
    representations: np.ndarray | Mapping[str, Any],
    labels: pd.DataFrame,
    out_dir: str | os.PathLike | None = None,
    *,
    id_column: str | None = None,
    attributes: Sequence[str] | None = None,
    target: str | None = None,
    pos_label: Any = None,
    intersections: Sequence[Sequence[str]] | None = None,
    min_group_size: int = 30,
    overwrite: bool = True,
    fit_representations: np.ndarray | Mapping[str, Any] | None = None,
    fit_labels: pd.DataFrame | None = None,
    side_channels: Sequence[SideChannels] = (),
    side_channel_labels: pd.DataFrame | None = None,
    files: Mapping[str, dict[str, Any]] | None = None,
    **audit_options: Any,
) -> AuditReport:
    """Audit one or more representations and write the report.

    Parameters
    ----------
    representations : array-like or mapping
        As in :func:`audit_leakage`: an array, ``{name: array}`` matched to ``labels``
        by row, or ``{name: (ids, array)}`` matched by ``id_column``.
    labels : DataFrame
        Sensitive attributes (and the downstream target, if any).
    out_dir : str or path-like, optional
        Folder for ``report.json``, ``report.html`` and plots; nothing is written
        when omitted.
    id_column : str, optional
        Id column of ``labels`` for ``(ids, array)`` pairs.
    attributes : sequence of str, optional
        Columns to audit (default: ``age``, ``gender``, ``ethnicity`` where present).
    target : str, optional
        Binary column of ``labels`` for the downstream fairness check (e.g. ``"smile"``);
        skipped when omitted.
    pos_label, intersections, min_group_size
        Passed to :func:`fairness_report`.
    overwrite : bool, default=True
        Replace existing report files in ``out_dir``.
    fit_representations, fit_labels : optional
        A labelled training export for the data-rich attacker (see
        :func:`audit_leakage`); ``(ids, array)`` pairs are matched to ``fit_labels``
        by ``id_column``.
    side_channels : sequence of SideChannels
        The files' ids, row order and other columns
        (:func:`~.side_channels.side_channels_of_table`), probed too and matched to
        ``labels`` (or ``side_channel_labels``) by ``id_column``.
    side_channel_labels : DataFrame, optional
        The labels of the side channels' rows, with ``id_column``, when they are not
        ``labels`` (e.g. a shared file of every image, audited beside a held-out split).
    files : mapping, optional
        Facts about the audited files, kept in the report (``report.files``).
    **audit_options
        Passed to :func:`audit_leakage` (``kinds``, ``bands``, ``probes``, ``n_folds``,
        ``n_bootstrap``, ``n_permutations``, ``confidence``, ``random_state``,
        ``device``, ``progress``, ``verbose``, ...).

    Returns
    -------
    AuditReport
        Use ``report.exceeds(x)`` for the ``--max-leakage`` gate.
    """
    collected: list[str] = []
    labels_by_id = labels
    if isinstance(representations, Mapping) and any(isinstance(v, tuple) for v in representations.values()):
        if id_column is None:
            raise ValueError("representations given as (ids, array) pairs need id_column")
        representations, labels, _ = align_by_id(representations, labels, id_column, collected)
    reps = check_representations(representations)
    if target is not None:
        if target not in labels.columns:
            raise ValueError(f"labels have no target column {target!r}; columns are {list(labels.columns)}")
        if attributes is not None and target in attributes:
            raise ValueError(f"the target {target!r} cannot also be an audited attribute")
    if fit_representations is not None:
        audit_options = {**audit_options, "id_column": id_column}
    leakage = audit_leakage(
        reps, labels, attributes=attributes, fit_representations=fit_representations, fit_labels=fit_labels,
        **audit_options,
    )
    leakage.warnings[:0] = collected
    if side_channels:
        if id_column is None:
            raise ValueError("side channels are matched to the labels by id: pass id_column")
        keys = ("kinds", "bands", "n_folds", "n_bootstrap", "n_permutations", "confidence", "random_state",
                "n_threads", "progress")
        side = audit_side_channels(
            side_channels, labels_by_id if side_channel_labels is None else side_channel_labels,
            id_column=id_column, attributes=attributes,
            **{k: audit_options[k] for k in keys if k in audit_options},
        )
        if side is not None:
            leakage = leakage.merged(side)

    fairness: list[FairnessResult] = []
    if target is not None:
        sensitive_columns = [
            name for name, info in leakage.attributes.items() if info.get("derived_from") is None
        ]
        for name, Z in reps.items():
            fairness.append(
                fairness_report(
                    Z,
                    labels[target],
                    labels[sensitive_columns],
                    target_name=target,
                    pos_label=pos_label,
                    representation=name,
                    kinds=audit_options.get("kinds"),
                    bands=audit_options.get("bands"),
                    intersections=intersections,
                    n_folds=leakage.config["n_folds"],
                    n_bootstrap=leakage.config["n_bootstrap"],
                    confidence=leakage.config["confidence"],
                    min_group_size=min_group_size,
                    random_state=leakage.config["random_state"],
                    n_threads=leakage.config["n_threads"],
                )
            )
    facts = {name: dict(info) for name, info in (files or {}).items()}
    paths = write_report(leakage, out_dir, fairness, overwrite=overwrite, files=facts) if out_dir is not None else {}
    return AuditReport(leakage, fairness, paths, facts)


def _names(paths: Sequence[str | os.PathLike]) -> list[str]:
    names: list[str] = []
    for p in paths:
        base = Path(p).stem
        name, k = base, 2
        while name in names:
            name, k = f"{base}_{k}", k + 1
        names.append(name)
    return names


def run_audit_files(
    latents: Sequence[str | os.PathLike] | Mapping[str, str | os.PathLike],
    labels: str | os.PathLike | pd.DataFrame | None,
    out_dir: str | os.PathLike | None = None,
    *,
    id_column: str = "id",
    latent_column: str = "latent",
    **options: Any,
) -> AuditReport:
    """:func:`run_audit` on Parquet embedding files (what ``bafo audit`` calls).

    Parameters
    ----------
    latents : sequence of paths, or mapping of name to path
        Parquet files with an id column and a ``latent`` list column (or one numeric
        column per dimension). Sequence entries are named by file stem.
    labels : path, DataFrame or None
        CSV or Parquet labels with ``id_column``; ``None`` uses the non-embedding
        columns of the first latents file.
    out_dir : str or path-like, optional
    id_column : str, default="id"
    latent_column : str, default="latent"
    **options
        Passed to :func:`run_audit`.

    Returns
    -------
    AuditReport
    """
    if not isinstance(latents, Mapping):
        latents = list(latents)
        latents = dict(zip(_names(latents), latents))
    if not latents:
        raise ValueError("no latents file given")
    pairs = {
        name: read_embedding_parquet(path, id_column=id_column, latent_column=latent_column)
        for name, path in latents.items()
    }
    if labels is None:
        first = Path(next(iter(latents.values())))
        table = pd.read_parquet(first)
        labels = table.drop(columns=[c for c in table.columns if c == latent_column])
        if labels.columns.tolist() == [id_column]:
            raise ValueError(f"{first}: no label columns besides {id_column!r}; pass a labels file")
    elif not isinstance(labels, pd.DataFrame):
        labels = read_labels(labels, id_column=id_column)
    return run_audit(pairs, labels, out_dir, id_column=id_column, **options)
