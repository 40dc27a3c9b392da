"""Writing one partition: order rows by a keyed hash, drop repeated content, select the split, write atomically."""

from __future__ import annotations

import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.fs as pafs

from ..data.splits import hash_split
from ..io.filesystems import is_local, join
from ..io.parquet import LatentParquetWriter
from .ids import id_of_digest, keyed_order
from .spec import JobSpec, partition_file_name

__all__ = ["MAX_LISTED_SKIPS", "EncodedRows", "finish_partition"]

#: Most skipped entries listed per partition file (all are counted by reason).
MAX_LISTED_SKIPS = 1000


@dataclass
class EncodedRows:
    """One partition after encoding, before ordering and writing.

    ``positions`` index the partition's inputs; ``digests``, ``sha1s`` and ``latents`` follow
    ``positions``; ``skipped`` holds ``(source, reason)`` of the inputs that gave no latent,
    at ``failed`` positions.
    """

    positions: np.ndarray
    digests: list[bytes]
    sha1s: list[str | None]
    latents: np.ndarray
    skipped: list[tuple[str, str]]
    failed: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))


def finish_partition(
    filesystem: pafs.FileSystem,
    spec: JobSpec,
    partition: int,
    rows_read: int,
    encoded: EncodedRows,
    sources: list[str],
    row_numbers: np.ndarray,
    labels: pa.Table | None,
    precision: str,
    decoder: str,
    seconds: float,
) -> dict:
    """Order, de-duplicate and select the rows of a partition, write its file atomically, return its counts.

    ``sources``, ``row_numbers`` and ``labels`` are indexed like the partition's inputs.
    """
    skipped = list(encoded.skipped)
    positions, digests = encoded.positions, encoded.digests
    if spec.id_from == "row":
        ids = np.asarray(row_numbers, dtype=np.int64)[positions]
        order = keyed_order(spec.id_key, ids)
    else:
        ids = np.fromiter((id_of_digest(d) for d in digests), dtype=np.int64, count=len(digests))
        order = np.argsort(ids, kind="stable")
        keep, repeats = _first_of_each_id(ids[order], [digests[i] for i in order])
        skipped += [(sources[positions[order[i]]], reason) for i, reason in repeats]
        order = order[keep]
    split_names, excluded = None, 0
    if spec.needs_sha1:
        is_test = hash_split([encoded.sha1s[i] for i in order], **spec.split_rule) if len(order) else np.zeros(0, bool)
        split_names = np.where(is_test, "test", "train").astype(object)
        if spec.split != "all":
            chosen = split_names == spec.split
            excluded = int((~chosen).sum())
            order, split_names = order[chosen], split_names[chosen]
    label_frame = None
    if spec.label_schema:
        rows = pa.array(positions[order], pa.int64())
        label_frame = labels.select(list(spec.label_schema)).take(rows).to_pandas()
    counts = Counter(reason for _, reason in skipped)
    stats = {
        "partition": partition,
        "file": partition_file_name(partition),
        "rows_read": int(rows_read),
        "rows_written": int(len(order)),
        "skipped": int(len(skipped)),
        "skipped_by_reason": dict(sorted(counts.items())),
        "skipped_items": [{"source": s, "reason": r} for s, r in skipped[:MAX_LISTED_SKIPS]],
        "excluded_by_split": excluded,
        "precision": precision,
        "decoder": decoder,
        "seconds": round(seconds, 3),  # reading, decoding and encoding
    }
    metadata = {
        **spec.metadata,
        "precision": precision,
        "decoder": decoder,
        "job": {
            "plan_fingerprint": spec.plan_fingerprint,
            "n_partitions": spec.n_partitions,
            **{k: v for k, v in stats.items() if k not in ("file", "precision", "decoder")},
        },
    }
    _write_partition(
        filesystem, spec, partition, ids[order], encoded.latents[order], label_frame,
        split_names if spec.include_split else None, metadata,
    )
    return stats


def _write_partition(filesystem, spec: JobSpec, partition: int, ids, latents, labels, split, metadata: dict) -> None:
    final = join(spec.out, partition_file_name(partition))
    if is_local(filesystem):
        _write_file(final, spec, ids, latents, labels, split, metadata)
        return
    with tempfile.TemporaryDirectory(prefix="bafo-part-") as folder:
        local = str(Path(folder) / partition_file_name(partition))
        _write_file(local, spec, ids, latents, labels, split, metadata)
        temporary = join(spec.out, f".{partition_file_name(partition)}.{time.time_ns()}.tmp")
        pafs.copy_files(local, temporary, destination_filesystem=filesystem)
        filesystem.move(temporary, final)


def _write_file(path: str, spec: JobSpec, ids, latents, labels: pd.DataFrame | None, split, metadata: dict) -> None:
    # overwrite=True: a retried task rewrites the same rows; the rename keeps it atomic.
    with LatentParquetWriter(
        path, latents.shape[1], metadata=metadata, id_type="int64", label_schema=spec.label_schema,
        include_split=split is not None, overwrite=True,
    ) as writer:
        writer.write_batch(ids, latents, labels=labels, split=split)


def _first_of_each_id(ids: np.ndarray, digests: list[bytes]) -> tuple[np.ndarray, list[tuple[int, str]]]:
    """Positions in ``ids`` (sorted) to keep, and ``(position, reason)`` for each repeated id."""
    repeats = []
    for i in np.flatnonzero(ids[1:] == ids[:-1]) + 1:
        if digests[i] == digests[i - 1]:
            reason = "duplicate of another file in its partition (same bytes, same id)"
        else:  # two different images share 63 bits of a keyed hash: about n**2 / 2**64
            reason = "id collision with a different image of its partition"
        repeats.append((int(i), reason))
    keep = np.ones(len(ids), dtype=bool)
    keep[[i for i, _ in repeats]] = False
    return np.flatnonzero(keep), repeats
