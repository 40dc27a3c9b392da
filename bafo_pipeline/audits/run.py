"""One call that does the whole audit: align, probe, fairness, report (the CLI's backend)."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from .._utils.progress import ContinuedProgress
from ..io.parquet import read_schema, read_table
from .fairness import FairnessResult, fairness_report
from .inputs import DEFAULT_ATTRIBUTES, align_by_id, check_representations
from .leakage import audit_leakage
from .overall import OverallVerdict, overall_verdicts
from .probes import UTILITY_PROBES
from .readers import read_labels
from .report import report_dict, write_report
from .result import AuditResult
from .sampling import stratified_sample
from .side_channels import SideChannels, audit_side_channels
from .utility import UtilityResult, audit_utility

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
    utility : UtilityResult or None
        What each representation keeps of the non-sensitive targets (``targets=``).
    verdicts : list of OverallVerdict
        The overall verdict lines (leakage and utility together).
    """

    leakage: AuditResult
    fairness: list[FairnessResult] = field(default_factory=list)
    paths: dict[str, Path] = field(default_factory=dict)
    files: dict[str, dict[str, Any]] = field(default_factory=dict)
    utility: UtilityResult | None = None
    verdicts: list[OverallVerdict] = field(default_factory=list)

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
        return report_dict(self.leakage, self.fairness, self.files, self.utility, self.verdicts)


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
    notes: Sequence[str] = (),
    targets: Sequence[str] | None = None,
    references: Sequence[str] = (),
    residual: bool = False,
    utility_probes: Sequence[str] | None = None,
    max_leakage: float | None = None,
    gate: str | None = None,
    min_share: float = 0.8,
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
    notes : sequence of str
        Facts about the data the report must state (e.g. that it is a sample); listed first
        among the report's warnings.
    targets : sequence of str, optional
        Non-sensitive columns of ``labels`` (e.g. ``yaw``, ``mouth_open``, ``smile``): what
        each representation keeps of them is measured with the same probes, folds and
        intervals (:func:`~.utility.audit_utility`) and reported beside the leakage.
    references : sequence of str, default=()
        Representations the utility shares are relative to (e.g. pixels, then the
        unconcealed encoder); the last one is the overall verdict's.
    residual : bool, default=False
        Also audit each continuous target's part that the sensitive attributes do not
        explain (``<target>_residual``, cross-fitted on the audited rows).
    utility_probes : sequence of str, optional
        The probes that measure what is kept. By default the leakage probes that are
        among :data:`~bafo_pipeline.audits.UTILITY_PROBES` (the models a downstream user
        fits; the quadratic and nearest-neighbour attackers are left out), or all of
        those when none is.
    max_leakage : float, optional
        The leakage gate of the overall verdict; without it any significant leakage fails.
    gate : str, optional
        Give the overall verdict on this representation only.
    min_share : float, default=0.8
        Share of the reference's utility each target must keep to pass.
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
    labels_by_id = labels
    if side_channels and audit_options.get("progress") is not None:
        audit_options = {**audit_options, "progress": ContinuedProgress(audit_options["progress"])}
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
    targets = list(targets or [])
    missing = [t for t in targets if t not in labels.columns]
    if missing:
        raise ValueError(f"labels have no utility target column(s) {missing}; columns are {list(labels.columns)}")
    sensitive_targets = [t for t in targets if t in (attributes or DEFAULT_ATTRIBUTES)]
    if sensitive_targets:
        raise ValueError(f"{sensitive_targets} are audited as sensitive attributes; they cannot be utility targets")
    unknown = [r for r in references if r not in reps]
    if unknown:
        raise ValueError(f"references {unknown} are not among the audited representations {list(reps)}")
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
        if isinstance(audit_options.get("progress"), ContinuedProgress):
            audit_options["progress"].next_part()
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
    utility = None
    if targets:
        sensitive_columns = [n for n, info in leakage.attributes.items() if info.get("derived_from") is None]
        config = leakage.config
        if utility_probes is None:
            utility_probes = [p for p in config["probes"] if p in UTILITY_PROBES] or UTILITY_PROBES
        utility = audit_utility(
            reps, labels[targets].reset_index(drop=True), references=list(references),
            sensitive=labels[sensitive_columns].reset_index(drop=True) if residual else None,
            probes=utility_probes,
            n_folds=config["n_folds"], n_bootstrap=config["n_bootstrap"],
            confidence=config["confidence"], random_state=config["random_state"], n_threads=config["n_threads"],
            **{k: audit_options[k] for k in ("device", "mlp_params", "gbdt_params", "verbose") if k in audit_options},
        )
    verdicts = overall_verdicts(
        leakage, utility, representations=[gate] if gate else None, max_leakage=max_leakage, min_share=min_share
    )
    facts = {name: dict(info) for name, info in (files or {}).items()}
    paths = (
        write_report(leakage, out_dir, fairness, overwrite=overwrite, files=facts, utility=utility, verdicts=verdicts)
        if out_dir is not None
        else {}
    )
    return AuditReport(leakage, fairness, paths, facts, utility, verdicts)


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
    fit_latents: Sequence[str | os.PathLike] | Mapping[str, str | os.PathLike] | None = None,
    sample: int | None = None,
    side_channels: bool = True,
    attach: bool = False,
    max_leakage: float | None = None,
    **options: Any,
) -> AuditReport:
    """:func:`run_audit` on Parquet embedding files or datasets (what ``bafo audit`` calls).

    Besides each file's embedding, the audit probes its side channels (ids, row
    order, every column that is neither embedding nor label) and lists what its
    footer metadata reveals.

    Parameters
    ----------
    latents : sequence of paths, or mapping of name to path
        Parquet files, folders of them (plain or hive-partitioned), globs or URIs, with
        an id column and the embedding: a list column (``latent``, the one named by
        ``latent_column``, or the only list column), or one numeric column per
        dimension (see :mod:`.sources`; label columns are never taken as dimensions).
        Sequence entries are named by file or folder stem.
    labels : path, DataFrame or None
        CSV, or Parquet (file, folder, glob or URI), with ``id_column``; ``None`` uses
        the label columns stored in the latents data themselves.
    out_dir : str or path-like, optional
    id_column : str, default="id"
    latent_column : str, optional
        The embedding's list column in files of other tools (e.g. ``"embedding"``).
    fit_latents : sequence of paths, or mapping of name to path, optional
        Labelled training exports for the data-rich attacker, one per latents source
        (by position, or by name); their labels come from ``labels`` (joined by id)
        or, without it, from the training data themselves. Read whole, even with
        ``sample``.
    sample : int, optional
        Audit a stratified sample of this many rows (by the audited attributes),
        reading only their embeddings: for datasets larger than memory. The report
        says so; the side channels are those of the sampled rows, in file order.
    side_channels : bool, default=True
        Probe the files' ids, row order and other columns.
    attach : bool, default=False
        Write an audit receipt into each latents file's footer (atomically; the rows
        are untouched), for ``bafo verify``. Single local Parquet files only.
    max_leakage : float, optional
        The gate recorded in the receipts and applied in the overall verdict.
    **options
        Passed to :func:`run_audit`.

    Returns
    -------
    AuditReport
    """
    from ..io.footer import data_fingerprint
    from .file_metadata import describe_footer
    from .receipt import attach_receipt, make_receipt
    from .side_channels import side_channels_of_table

    latents = _named(latents, "latents")
    if attach:
        for path in latents.values():
            if not _is_local_file(path):
                raise ValueError(f"{path}: an audit receipt is written into one Parquet file; this is a folder, "
                                 "a glob or a URI (audit each file, or drop --attach)")
    used = [*(options.get("attributes") or DEFAULT_ATTRIBUTES), *filter(None, [options.get("target")]),
            *(options.get("targets") or [])]
    external = None
    if isinstance(labels, pd.DataFrame):
        external = labels
    elif labels is not None:
        external = read_labels(labels, id_column=id_column)
    label_names = [c for c in (external.columns if external is not None else used) if c != id_column]
    first_name, first_path = next(iter(latents.items()))
    notes: list[str] = []
    wanted = None
    table = external
    if sample is not None:
        if table is None:
            table = _labels_beside_embeddings(first_path, id_column, used)
        table, note = _sampled_labels(first_path, table, id_column, used, sample, options.get("random_state", 0))
        wanted = table[id_column].tolist()
        notes.append(note)
    fingerprints = {name: data_fingerprint(path) for name, path in latents.items()} if attach else {}
    files = {
        name: _read_file(path, id_column=id_column, latent_column=latent_column, labels=label_names, ids=wanted)
        for name, path in latents.items()
    }
    if table is None:
        table = _labels_in_file(files[first_name], first_path, id_column, used)
    fit_pairs, fit_table, fit_paths = None, None, {}
    if fit_latents is not None:
        fit_paths = _named(fit_latents, "fit_latents", names=list(latents))
        fits = {
            name: _read_file(path, id_column=id_column, latent_column=latent_column, labels=label_names)
            for name, path in fit_paths.items()
        }
        fit_pairs = {name: (f.ids, f.Z) for name, f in fits.items()}
        first_fit = next(iter(fits))
        fit_table = external if external is not None else _labels_in_file(fits[first_fit], fit_paths[first_fit],
                                                                           id_column, used)
    channels = []
    facts: dict[str, dict[str, Any]] = {}
    for name, file in files.items():
        in_file = [c for c in file.rest.column_names if c != id_column and (c in file.declared_labels or (
            external is None and c in table.columns))]
        if side_channels:
            channels.append(side_channels_of_table(
                file.rest, source=name, id_column=id_column, embedding_columns=[], label_columns=in_file,
            ))
        facts[name] = {
            "embedding": file.embedding,
            "label_columns_in_file": in_file,
            "skipped_columns": channels[-1].skipped if side_channels else [],
            "metadata": describe_footer(file.footer),
            "data_fingerprint": fingerprints.get(name),
        }
    pairs = {name: (f.ids, f.Z) for name, f in files.items()}
    report = run_audit(
        pairs, table, out_dir, id_column=id_column, fit_representations=fit_pairs, fit_labels=fit_table,
        side_channels=channels, files=facts, notes=notes, max_leakage=max_leakage, **options,
    )
    if attach:
        for name, path in latents.items():
            training = data_fingerprint(fit_paths[name]) if name in fit_paths and _is_local_file(fit_paths[name]) \
                else None
            receipt = make_receipt(report, name, path, fingerprint=fingerprints[name], threshold=max_leakage,
                                   training_export=training)
            attach_receipt(path, receipt)
    return report


def _named(paths, what: str, names: list[str] | None = None) -> dict[str, Any]:
    """``{name: path}``: a mapping as it is, a sequence named by file stem (or by ``names``, in order)."""
    if isinstance(paths, Mapping):
        named = dict(paths)
        if names is not None:
            unknown = [n for n in named if n not in names]
            if unknown:
                raise ValueError(f"{what} names {unknown}, which are not among the audited files {names}")
    else:
        paths = list(paths)
        if names is not None:
            if len(paths) > len(names):
                raise ValueError(f"{len(paths)} {what} files for {len(names)} latents files")
            named = dict(zip(names, paths))
        else:
            named = dict(zip(_names(paths), paths))
    if not named:
        raise ValueError(f"no {what} file given")
    return named


def _is_local_file(path) -> bool:
    return not isinstance(path, pd.DataFrame) and Path(os.fspath(path)).is_file()


def _footer_of(path) -> dict[str, str]:
    """A local file's footer metadata; for a folder, glob or URI, the dataset schema's (its first file's)."""
    from ..io.footer import read_footer_metadata

    if _is_local_file(path):
        return read_footer_metadata(path)
    raw = read_schema(path).metadata or {}
    return {key.decode("utf-8", "replace"): value.decode("utf-8", "replace") for key, value in raw.items()}


def _read_file(path, *, id_column: str, latent_column: str | None, labels: Sequence[str], ids=None):
    """One source read as :class:`~.sources.EmbeddingFile` (only the rows of ``ids`` when given)."""
    from .sources import embedding_of

    table = read_table(path, ids=ids, id_column=id_column)
    return embedding_of(table, where=path, id_column=id_column, latent_column=latent_column, labels=labels,
                        footer=_footer_of(path))


def _labels_in_file(file, path, id_column: str, used: Sequence[str]) -> pd.DataFrame:
    """The label columns stored in an embeddings file: those it declares, and the audited ones it has."""
    wanted = [c for c in file.rest.column_names if c != id_column and (c in file.declared_labels or c in used)]
    if not wanted:
        raise ValueError(
            f"{path}: no label columns besides {id_column!r} (looked for {list(used)}); pass a labels file"
        )
    return file.rest.select([id_column, *wanted]).to_pandas()


def _labels_beside_embeddings(source, id_column: str, used: Sequence[str]) -> pd.DataFrame:
    """The label columns stored in an embeddings dataset, read without its embedding (for sampling first)."""
    from .sources import declared_labels

    schema = read_schema(source)
    declared = declared_labels(_footer_of(source))
    wanted = [c for c in schema.names if c != id_column and (c in declared or c in used)]
    if not wanted:
        raise ValueError(
            f"{source}: no label columns besides {id_column!r} (looked for {list(used)}); pass a labels file"
        )
    return read_table(source, [id_column, *wanted]).to_pandas()


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
