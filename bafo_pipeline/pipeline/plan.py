"""Planning a distributed export: what it reads, which partition each input goes to, and the job's fingerprint.

Everything here runs on the driver before any image is read, and is fixed by the inputs, the
model, the id key and the settings, so that a re-run of the same job plans the same partitions.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa

from .dataset_source import DATASET_RESERVED
from .ids import key_fingerprint, keyed_buckets
from .inputs import InputList, list_folder, read_manifest

__all__ = ["ID_SCHEMES", "JOB_FORMAT", "JOB_FORMAT_VERSION", "Plan", "SourceRefs", "is_ray_dataset", "make_plan"]

JOB_FORMAT = "bafo-encode-job"
JOB_FORMAT_VERSION = 1
ID_SCHEMES = {"content": "keyed-blake2b-63 of the file bytes", "row": "manifest data-row number (1-based)"}
_MIN_PARTITION_ROWS, _MAX_PARTITION_ROWS, _TARGET_PARTITIONS = 500, 100_000, 64



@dataclass
class SourceRefs:
    """How skipped inputs are named in the output: manifest rows as such, files by a keyed hash of their name."""

    per_input: list[str]
    listing: dict[str, str]


@dataclass
class Plan:
    """What a job will produce, fixed before anything is read: inputs, partitions, settings, fingerprint."""

    key: bytes
    settings: dict
    fingerprint: str
    n_partitions: int
    label_schema: dict | None
    inputs: InputList | None = None
    buckets: np.ndarray | None = None
    refs: SourceRefs | None = None
    dataset: Any = None


def make_plan(source, key: bytes, fingerprint: str, *, id_from, include_labels, partition_rows, split,
          include_split, split_rule, max_file_bytes) -> Plan:
    dataset = source if is_ray_dataset(source) else None
    inputs = None if dataset is not None else _inputs(source)
    if id_from == "row" and (inputs is None or inputs.rows is None):
        raise ValueError("id_from='row' needs a manifest source; folders and datasets have no row numbers")
    label_schema = None
    if include_labels:
        label_schema = _dataset_label_schema(dataset) if dataset is not None else _label_schema(inputs)
    n_inputs = dataset.count() if dataset is not None else len(inputs)
    n_partitions = _n_partitions(n_inputs, partition_rows)
    buckets = None if inputs is None else keyed_buckets(key, inputs.source_keys, n_partitions)
    settings = {
        "format": JOB_FORMAT,
        "format_version": JOB_FORMAT_VERSION,
        "model_fingerprint": fingerprint,
        "id_scheme": ID_SCHEMES[id_from],
        "id_key_fingerprint": key_fingerprint(key),
        "source_kind": "ray-dataset" if dataset is not None else inputs.kind,
        "inputs": n_inputs,
        "n_partitions": n_partitions,
        "label_columns": list(label_schema or {}),
        "split": split,
        "include_split": include_split,
        "split_rule": split_rule if (split != "all" or include_split) else None,
        "max_file_bytes": max_file_bytes,
    }
    plan_fingerprint = _plan_fingerprint(settings, [] if inputs is None else inputs.source_keys, buckets)
    refs = None if inputs is None else _source_refs(inputs, key)
    return Plan(key, settings, plan_fingerprint, n_partitions, label_schema, inputs, buckets, refs, dataset)


def _inputs(source) -> InputList:
    if isinstance(source, InputList):
        return source
    text = os.fspath(source)
    if text.lower().endswith((".csv", ".parquet", ".pq")):
        return read_manifest(text)
    return list_folder(text)


def _label_schema(inputs: InputList) -> dict[str, str]:
    if inputs.labels is None or not inputs.labels.num_columns:
        raise ValueError(f"include_labels: this {inputs.kind} source has no label columns")
    return {name: _type_name(typ) for name, typ in zip(inputs.labels.column_names, inputs.labels.schema.types)}


def _dataset_label_schema(dataset) -> dict[str, str]:
    schema = dataset.schema()
    labels = {n: _type_name(t) for n, t in zip(schema.names, schema.types) if n not in DATASET_RESERVED}
    if not labels:
        raise ValueError("include_labels: the dataset has no label columns besides 'bytes'")
    return labels


def _type_name(typ) -> str:
    if not isinstance(typ, pa.DataType):
        return "string"
    if pa.types.is_floating(typ):
        return "float64"
    if pa.types.is_integer(typ):
        return "int64"
    return "bool" if pa.types.is_boolean(typ) else "string"


def is_ray_dataset(source) -> bool:
    try:
        from ray.data import Dataset
    except ImportError:
        return False
    return isinstance(source, Dataset)


def _n_partitions(n_inputs: int, partition_rows: int | None) -> int:
    if partition_rows is None:
        partition_rows = min(max(math.ceil(n_inputs / _TARGET_PARTITIONS), _MIN_PARTITION_ROWS), _MAX_PARTITION_ROWS)
    if not (isinstance(partition_rows, int) and partition_rows >= 1):
        raise ValueError(f"partition_rows must be a positive int, got {partition_rows!r}")
    return max(1, math.ceil(n_inputs / partition_rows))


def _plan_fingerprint(settings: dict, source_keys: list[str], buckets: np.ndarray | None) -> str:
    """What makes two runs the same job: settings, model, key and (files or manifest rows) -> partitions.

    A ``ray.data.Dataset`` is not listed, so only its row count enters.
    """
    digest = hashlib.sha256(json.dumps(settings, sort_keys=True).encode())
    for key, bucket in sorted(zip(source_keys, [] if buckets is None else buckets.tolist())):
        digest.update(f"{bucket}\t{key}\n".encode())
    return digest.hexdigest()


def _source_refs(inputs: InputList, key: bytes) -> SourceRefs:
    def ref(source_key: str) -> str:
        if inputs.rows is not None:
            return f"row {source_key}"
        digest = hashlib.blake2b(source_key.encode(), key=key, digest_size=8, person=b"bafo-source-ref")
        return f"file {digest.hexdigest()}"

    return SourceRefs([ref(k) for k in inputs.source_keys], {k: ref(k) for k, _ in inputs.skipped})
