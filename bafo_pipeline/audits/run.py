"""One call that does the whole audit: align, probe, fairness, report (the CLI's backend)."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ..io.parquet import embedding_column, read_schema, read_table
from .fairness import FairnessResult, fairness_report
from .inputs import DEFAULT_ATTRIBUTES, align_by_id, check_representations
from .leakage import audit_leakage
from .readers import read_embedding_parquet, read_labels
from .report import report_dict, write_report
from .result import AuditResult
from .sampling import stratified_sample

__all__ = ["AuditReport", "run_audit", "run_audit_files"]


@dataclass
class AuditReport:
    """Leakage result, fairness results and the files written.

    Attributes
    ----------
    leakage : AuditResult
    fairness : list of FairnessResult
    paths : dict of str to Path
        Empty when no output folder was given.
    """

    leakage: AuditResult
    fairness: list[FairnessResult] = field(default_factory=list)
    paths: dict[str, Path] = field(default_factory=dict)

    def worst_case(self) -> pd.DataFrame:
        """See :meth:`AuditResult.worst_case`."""
        return self.leakage.worst_case()

    def exceeds(self, threshold: float, representation: str | None = None) -> bool:
        """The ``--max-leakage`` gate; see :meth:`AuditResult.exceeds`."""
        return self.leakage.exceeds(threshold, representation)

    def to_dict(self) -> dict[str, Any]:
        """The content of ``report.json``."""
        return report_dict(self.leakage, self.fairness)


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
    notes: Sequence[str] = (),
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
    notes : sequence of str
        Facts about the data the report must state (e.g. that it is a sample); listed first
        among the report's warnings.
    **audit_options
        Passed to :func:`audit_leakage` (``kinds``, ``bands``, ``probes``, ``n_folds``,
        ``n_bootstrap``, ``n_permutations``, ``confidence``, ``random_state``,
        ``device``, ``progress``, ``verbose``, ...).

    Returns
    -------
    AuditReport
        Use ``report.exceeds(x)`` for the ``--max-leakage`` gate.
    """
    collected: list[str] = list(notes)
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
    leakage = audit_leakage(reps, labels, attributes=attributes, **audit_options)
    leakage.warnings[:0] = collected

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
    paths = write_report(leakage, out_dir, fairness, overwrite=overwrite) if out_dir is not None else {}
    return AuditReport(leakage, fairness, paths)


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
    latent_column: str | None = None,
    sample: int | None = None,
    **options: Any,
) -> AuditReport:
    """:func:`run_audit` on Parquet embedding files or datasets (what ``bafo audit`` calls).

    Parameters
    ----------
    latents : sequence of paths, or mapping of name to path
        Parquet files, folders of them (plain or hive-partitioned), globs or URIs, with an
        id column and the embedding as a list column (``latent``, the one named by
        ``latent_column``, or the only list column) or one numeric column per dimension.
        Sequence entries are named by file or folder stem.
    labels : path, DataFrame or None
        CSV, or Parquet (file, folder, glob or URI), with ``id_column``; ``None`` uses the
        non-embedding columns of the first latents dataset.
    out_dir : str or path-like, optional
    id_column : str, default="id"
    latent_column : str, optional
        The embedding's column in files written by other tools (e.g. ``"embedding"``).
    sample : int, optional
        Audit a stratified sample of this many rows (by the audited attributes), reading
        only their embeddings: for datasets larger than memory. The report says so.
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
    first = next(iter(latents.values()))
    label_columns = [*(options.get("attributes") or DEFAULT_ATTRIBUTES), *filter(None, [options.get("target")])]
    if labels is None:
        labels = _labels_beside_embeddings(first, id_column, latent_column, label_columns)
    elif not isinstance(labels, pd.DataFrame):
        labels = read_labels(labels, id_column=id_column)
    notes: list[str] = []
    wanted = None
    if sample is not None:
        labels, note = _sampled_labels(first, labels, id_column, label_columns, sample, options.get("random_state", 0))
        wanted = labels[id_column].tolist()
        notes.append(note)
    pairs = {
        name: read_embedding_parquet(path, id_column=id_column, latent_column=latent_column, ids=wanted,
                                     exclude=label_columns)
        for name, path in latents.items()
    }
    return run_audit(pairs, labels, out_dir, id_column=id_column, notes=notes, **options)


def _labels_beside_embeddings(source, id_column: str, latent_column: str | None, label_columns) -> pd.DataFrame:
    """The label columns stored in an embeddings dataset (never the embedding itself)."""
    schema = read_schema(source)
    embedding = embedding_column(schema, latent_column)
    if embedding is not None:
        columns = [name for name in schema.names if name != embedding]
    else:  # one column per dimension: only the named label columns are labels
        columns = [name for name in schema.names if name == id_column or name in label_columns]
    if columns in ([id_column], []):
        raise ValueError(f"{source}: no label columns besides {id_column!r}; pass a labels file")
    return read_table(source, columns).to_pandas()


def _sampled_labels(source, labels: pd.DataFrame, id_column: str, label_columns, n: int, seed: int):
    """The labels rows of a stratified sample among the ids the embeddings have, and the note saying so."""
    if id_column not in labels.columns:
        raise ValueError(f"labels have no id column {id_column!r}; columns are {list(labels.columns)}")
    embedded = read_table(source, [id_column]).column(id_column).to_pandas()
    if labels[id_column].dtype != embedded.dtype:
        present = labels[id_column].astype(str).isin(set(embedded.astype(str)))
    else:
        present = labels[id_column].isin(set(embedded))
    labels = labels[present.to_numpy()].reset_index(drop=True)
    positions = stratified_sample(labels, label_columns, n, random_state=seed)
    strata = [c for c in label_columns if c in labels.columns]
    note = (
        f"audited a stratified sample of {len(positions):,} of {len(labels):,} rows (strata: joint groups of "
        f"{', '.join(strata) or 'none'}; seed {seed}); estimates carry the sampling error of the sample"
    )
    return labels.iloc[positions].reset_index(drop=True), note
