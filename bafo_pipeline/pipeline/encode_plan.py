"""Planning a distributed export on the driver: the rows it will write, their ids, partitions and fingerprint.

A file source (UTKFace folder, manifest, image folder) is scanned by the very function the
in-process export scans it with (:func:`~bafo_pipeline.data.scan_utkface`,
:func:`~bafo_pipeline.data.scan_manifest`, :func:`~bafo_pipeline.data.scan_image_folder`),
with the file hashing spread over the cluster; so both engines skip the same files and
drop the same duplicates, over the whole source. Then every kept row gets its
pseudonymous id (:func:`~bafo_pipeline.data.pseudonymous_ids`) and its partition: a range
of those ids, so partitions and the order of rows in them reveal no name and no label,
and byte-identical images meet in one partition. All of it is fixed by the inputs, the
model, the id key and the settings, so a re-run of the same job plans the same partitions.
A ``ray.data.Dataset`` source is not read on the driver: its plan fixes only the settings,
and its fingerprint is that run's alone (see :func:`make_dataset_plan`).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import secrets
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa

from ..data import (
    hash_roles,
    key_fingerprint,
    pseudonymous_ids,
    rows_of_split,
    scan_image_folder,
    scan_manifest,
    scan_utkface,
)
from ..data.utkface import UTKFACE_SENSITIVE
from .job_folder import public_reason

__all__ = [
    "ID_SCHEMES",
    "JOB_FORMAT",
    "JOB_FORMAT_VERSION",
    "PLAN_COLUMNS",
    "JobSpec",
    "Plan",
    "make_dataset_plan",
    "make_file_plan",
    "n_partitions_for",
    "partition_of",
]

JOB_FORMAT = "bafo-encode-job"
JOB_FORMAT_VERSION = 2
ID_SCHEMES = {
    "content": "keyed BLAKE2b of the content hash, 63 bits (bafo_pipeline.data.pseudonymous_ids)",
    "row": "manifest data-row number (1-based)",
}
#: Columns the plan adds to each partition's rows for the workers (never written as labels).
PLAN_COLUMNS = ("_bafo_id", "_bafo_split", "_bafo_source")
_MIN_PARTITION_ROWS, _MAX_PARTITION_ROWS, _TARGET_PARTITIONS = 500, 100_000, 64


@dataclass(frozen=True)
class JobSpec:
    """What every actor of a distributed export is told besides the model (picklable, holds no key).

    Attributes
    ----------
    out : str
        Output folder on the job's filesystem.
    plan_fingerprint : str
        Identifies the job's inputs and settings; recorded with every partition.
    n_partitions : int
    sensitive : tuple of str
        The source's sensitive columns.
    include_labels, include_split, batch_size, decoder, strict, max_file_bytes
        As in :func:`~bafo_pipeline.pipeline.distributed.encode_dataset`.
    carry_labels : bool
        The label columns travel with the planned rows (the model's concealment needs
        every row's sensitive attributes); written only with ``include_labels``.
    metadata : dict
        Stored in every file's ``bafo`` metadata (model fingerprint, id scheme, key fingerprint).
    """

    out: str
    plan_fingerprint: str
    n_partitions: int
    sensitive: tuple[str, ...] = ()
    include_labels: bool = False
    include_split: bool = False
    carry_labels: bool = False
    batch_size: int = 512
    decoder: str = "auto"
    strict: bool = False
    max_file_bytes: int = 64 * 1024 * 1024
    metadata: dict = field(default_factory=dict)


@dataclass
class Plan:
    """What a job will write, fixed before any image is decoded.

    Attributes
    ----------
    settings : dict
        What ``_bafo_plan.json`` and ``_bafo_job.json`` record.
    fingerprint : str
    n_partitions : int
    rows : DataFrame or None
        File sources: one row per image to encode, sorted by partition then id: ``path``,
        ``content_hash``, the label columns, and :data:`PLAN_COLUMNS`.
    partitions : ndarray or None
        The partition of each of ``rows``.
    sources : dict
        Id to the file (path or URI) it was read from: for the key table, never written
        with the data.
    manifest_rows : ndarray or None
        Id to manifest row, for the key table of a manifest.
    skipped : list of (str, str)
        ``(where, reason)`` for what the scan left out, named for the data owner.
    skipped_public : list of (str, str)
        The same as the output folder may show them: manifest rows, or files by a keyed
        hash of their path, and reasons without names (:func:`~bafo_pipeline.pipeline.job_folder.public_reason`).
    dropped : dict
        Duplicate and collision counts of the scan.
    sensitive : tuple of str
    label_columns : list of str
    """

    settings: dict
    fingerprint: str
    n_partitions: int
    rows: pd.DataFrame | None = None
    partitions: np.ndarray | None = None
    sources: dict = field(default_factory=dict)
    manifest_rows: np.ndarray | None = None
    skipped: list = field(default_factory=list)
    skipped_public: list = field(default_factory=list)
    dropped: dict = field(default_factory=dict)
    sensitive: tuple = ()
    label_columns: list = field(default_factory=list)

    def partition_rows(self, partition: int) -> pa.Table:
        """The rows of one partition, as the workers receive them."""
        start, stop = np.searchsorted(self.partitions, [partition, partition + 1])
        return pa.Table.from_pandas(self.rows.iloc[start:stop], preserve_index=False)


def n_partitions_for(n_inputs: int, partition_rows: int | None) -> int:
    """Partitions of ``partition_rows`` inputs (default about 1/64 of them, within 500-100,000)."""
    if partition_rows is None:
        partition_rows = min(max(math.ceil(n_inputs / _TARGET_PARTITIONS), _MIN_PARTITION_ROWS), _MAX_PARTITION_ROWS)
    if isinstance(partition_rows, bool) or not isinstance(partition_rows, int) or partition_rows < 1:
        raise ValueError(f"partition_rows must be a positive int, got {partition_rows!r}")
    return max(1, math.ceil(n_inputs / partition_rows))


def partition_of(content_ids: np.ndarray, n_partitions: int) -> np.ndarray:
    """The partition of each pseudonymous id: ``n_partitions`` equal ranges of the 63-bit ids."""
    return ((np.asarray(content_ids, dtype=np.int64) >> 32) * n_partitions) >> 31


def make_file_plan(
    kind: str,
    location: str | os.PathLike,
    key: bytes,
    model_fingerprint: str,
    *,
    hasher: Callable,
    id_from: str = "content",
    include_labels: bool = False,
    carry_labels: bool = False,
    include_split: bool = False,
    split: str = "all",
    split_rule: dict | None = None,
    partition_rows: int | None = None,
    image_column: str = "path",
    sensitive: tuple[str, ...] = (),
    strict: bool = False,
    allow_outside_root: bool = False,
    max_file_bytes: int = 64 * 1024 * 1024,
) -> Plan:
    """Scan a file source (``kind`` ``"utkface"``, ``"manifest"`` or ``"images"``) and plan its partitions.

    ``hasher`` hashes the files (the cluster's, see
    :func:`~bafo_pipeline.data.splits.hash_files` for its signature). The other
    parameters are :func:`~bafo_pipeline.pipeline.distributed.encode_dataset`'s, except
    ``carry_labels``: the planned rows hold the label columns without ``include_labels``
    (a concealment that needs every row's sensitive attributes; they are not written).
    """
    common = {"strict": strict, "allow_outside_root": allow_outside_root, "max_file_bytes": max_file_bytes,
              "hasher": hasher}
    if kind == "utkface":
        table, report = scan_utkface(location, **common)
        sensitive = UTKFACE_SENSITIVE
    elif kind == "manifest":
        table, report = scan_manifest(location, image_column=image_column, sensitive=tuple(sensitive), **common)
    elif kind == "images":
        table, report = scan_image_folder(location, **common)
        sensitive = ()
    else:
        raise ValueError(f"kind must be 'utkface', 'manifest' or 'images', got {kind!r}")
    if id_from == "row" and kind != "manifest":
        raise ValueError("id_from='row' needs a manifest; folders have no row numbers")
    label_columns = [c for c in table.columns if c not in ("path", "content_hash")]
    clash = [c for c in label_columns if c.startswith("_bafo_")]
    if clash:
        raise ValueError(f"column name(s) {clash} are reserved for the export; rename them")
    carry_labels = carry_labels or include_labels
    if carry_labels and not label_columns:
        why = "include_labels" if include_labels else "this model's concealment needs every row's sensitive attributes"
        raise ValueError(f"{why}: this {kind} source has no label columns")

    hashes = table["content_hash"].to_numpy(dtype=object)
    content_ids = pseudonymous_ids(hashes, key)
    collided = pd.Series(content_ids).duplicated().to_numpy()  # different images, one 63-bit id: about n**2/2**64
    skipped = list(report.skipped)
    skipped += [(str(p), "id collision with a different image (kept the first)") for p in table["path"][collided]]
    split_names, excluded = None, 0
    if split != "all" or include_split or (split_rule or {}).get("calibration_fraction"):
        split_names = hash_roles(hashes, **split_rule).astype(object)
    keep = ~collided
    if split_names is not None:
        wanted = rows_of_split(split_names, split)
        excluded = int((keep & ~wanted).sum())
        keep &= wanted
    table, content_ids, hashes = table[keep], content_ids[keep], hashes[keep]
    split_names = None if split_names is None else split_names[keep]
    manifest_rows = table.index.to_numpy(dtype=np.int64) if kind == "manifest" else None
    ids = manifest_rows if id_from == "row" else content_ids

    n_partitions = n_partitions_for(len(table), partition_rows)
    partitions = partition_of(content_ids, n_partitions)
    order = np.lexsort((content_ids, partitions))  # by partition, then by the keyed id: no name order
    rows = table.reset_index(drop=True)[["path", "content_hash", *(label_columns if carry_labels else [])]]
    rows = rows.iloc[order].reset_index(drop=True)
    rows["_bafo_id"] = ids[order]
    rows["_bafo_split"] = None if split_names is None else split_names[order]
    rows["_bafo_source"] = [
        f"row {r}" for r in manifest_rows[order]
    ] if manifest_rows is not None else [_file_ref(key, p) for p in rows["path"]]

    settings = {
        "format": JOB_FORMAT,
        "format_version": JOB_FORMAT_VERSION,
        "model_fingerprint": model_fingerprint,
        "id_scheme": ID_SCHEMES[id_from],
        "id_key_fingerprint": key_fingerprint(key),
        "source_kind": kind,
        "rows_planned": int(len(rows)),
        "n_partitions": n_partitions,
        "label_columns": label_columns if include_labels else [],
        **({"labels_carried": True} if carry_labels and not include_labels else {}),
        "split": split,
        "include_split": include_split,
        "split_rule": split_rule if split_names is not None else None,
        "max_file_bytes": max_file_bytes,
    }
    digest = hashlib.sha256(json.dumps(settings, sort_keys=True).encode())
    for part, i, h in zip(partitions[order].tolist(), rows["_bafo_id"].tolist(), rows["content_hash"].tolist()):
        digest.update(f"{part}\t{i}\t{h}\n".encode())
    if carry_labels:
        digest.update(pd.util.hash_pandas_object(rows[label_columns], index=False).to_numpy().tobytes())
    return Plan(
        settings=settings,
        fingerprint=digest.hexdigest(),
        n_partitions=n_partitions,
        rows=rows,
        partitions=partitions[order],
        sources=dict(zip(ids[order].tolist(), rows["path"].tolist())),
        manifest_rows=None if manifest_rows is None else manifest_rows[order],
        skipped=skipped,
        skipped_public=[
            (where if kind == "manifest" and where.startswith("row ") else _file_ref(key, where), public_reason(reason))
            for where, reason in skipped
        ],
        dropped={
            "duplicates_dropped": report.duplicates_dropped,
            "conflicting_groups_dropped": report.conflicting_groups_dropped,
            "conflicting_files_dropped": report.conflicting_files_dropped,
            "id_collisions": int(collided.sum()),
            "excluded_by_split": excluded,
        },
        sensitive=tuple(sensitive),
        label_columns=label_columns,
    )


def make_dataset_plan(dataset: Any, key: bytes, model_fingerprint: str, *, include_labels: bool,
                      partition_rows: int | None, carry_labels: bool = False) -> Plan:
    """Plan a ``ray.data.Dataset`` of image bytes: its rows are keyed on the workers, only counted here.

    Its images are read only while they are encoded, so nothing here can tell this dataset from
    another of the same shape (row count, columns): the fingerprint is therefore unique to this
    plan (settings and a random nonce), never that of an earlier run, and a dataset's job folder
    is never resumed or reused (:func:`~bafo_pipeline.pipeline.distributed.encode_dataset`
    refuses it without ``overwrite``). ``carry_labels``: as in :func:`make_file_plan`."""
    names = dataset.schema().names
    if "bytes" not in names:
        raise ValueError(f"a ray.data.Dataset source needs a 'bytes' column of image files; columns: {names}")
    label_columns = [n for n in names if n not in ("bytes", "path") and not n.startswith("_bafo_")]
    if (include_labels or carry_labels) and not label_columns:
        raise ValueError("include_labels (or a concealment that needs every row's sensitive attributes): the dataset "
                         "has no label columns besides 'bytes'")
    n_inputs = dataset.count()
    n_partitions = n_partitions_for(n_inputs, partition_rows)
    settings = {
        "format": JOB_FORMAT,
        "format_version": JOB_FORMAT_VERSION,
        "model_fingerprint": model_fingerprint,
        "id_scheme": ID_SCHEMES["content"],
        "id_key_fingerprint": key_fingerprint(key),
        "source_kind": "ray-dataset",
        "rows_planned": n_inputs,
        "n_partitions": n_partitions,
        "label_columns": label_columns if include_labels else [],
        **({"labels_carried": True} if carry_labels and not include_labels else {}),
        "split": "all",
        "include_split": False,
        "split_rule": None,
    }
    digest = hashlib.sha256(json.dumps(settings, sort_keys=True).encode())
    digest.update(secrets.token_bytes(16))  # no earlier job's partitions can pass for this dataset's
    return Plan(settings, digest.hexdigest(), n_partitions, label_columns=label_columns)


def _file_ref(key: bytes, path: str) -> str:
    """How a file is named in the output folder's job file: a keyed hash of its path (names spell out labels)."""
    return "file " + hashlib.blake2b(str(path).encode(), key=key, digest_size=8, person=b"bafo-source-ref").hexdigest()
