"""A ``ray.data.Dataset`` of image bytes as a source: key rows by content, encode them, write each partition.

Its rows are not listed beforehand, so partitions come from the keyed content hash, and a
group-by gathers each partition's latents (never the images) before one task writes it.
"""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pyarrow.fs as pafs

from .ids import content_digest, id_of_digest
from .partition_encoder import PartitionEncoder
from .partition_writer import EncodedRows, finish_partition
from .spec import JobSpec

__all__ = ["DATASET_RESERVED", "RowEncoder", "key_rows", "write_group"]

#: Columns of a ``ray.data.Dataset`` source that are never labels: the image bytes and Ray's path column.
DATASET_RESERVED = ("bytes", "path")


def key_rows(batch: pa.Table, *, spec: JobSpec, todo: list[int]) -> pa.Table:
    """Place each row of a dataset of image bytes in its partition (keyed content hash); keep those to write.

    Ray's ``path`` column is dropped here: it never travels further, let alone into the output.
    """
    if "bytes" not in batch.column_names:
        raise ValueError(f"a ray.data.Dataset source needs a 'bytes' column of image files; columns: {batch.column_names}")
    digests = [None if b is None else content_digest(spec.id_key, b) for b in batch.column("bytes").to_pylist()]
    partitions = [0 if d is None else id_of_digest(d) % spec.n_partitions for d in digests]
    sources = ["row without bytes" if d is None else f"content {d[:8].hex()}" for d in digests]
    keyed = batch.drop_columns([c for c in ("path", "partition", "source") if c in batch.column_names])
    keyed = keyed.append_column("partition", pa.array(partitions, pa.int64())).append_column(
        "source", pa.array(sources, pa.string()))
    wanted = set(todo)
    return keyed.filter(pa.array([p in wanted for p in partitions], pa.bool_()))


class RowEncoder(PartitionEncoder):
    """Ray Data callable class for ``ray.data.Dataset`` sources: encodes batches of rows, whatever their partition.

    Returns one row per input (``partition``, ``source``, ``digest``, ``sha1``, ``latent`` or
    a ``reason``, the label columns); :func:`write_group` then writes each partition. The
    image bytes do not leave this stage.
    """

    def __call__(self, batch: pa.Table) -> pa.Table:
        sources = batch.column("source").to_pylist()
        encoded = self.encode_rows(batch.column("bytes").to_pylist(), sources)
        n, dim = batch.num_rows, encoded.latents.shape[1]
        latents = np.zeros((n, dim), np.float32)
        latents[encoded.positions] = encoded.latents
        digests: list = [None] * n
        sha1s: list = [None] * n
        for pos, digest, sha1 in zip(encoded.positions.tolist(), encoded.digests, encoded.sha1s):
            digests[pos], sha1s[pos] = digest, sha1
        reasons: list = [None] * n
        for pos, (_, reason) in zip(encoded.failed.tolist(), encoded.skipped):
            reasons[pos] = reason
        out = batch.drop_columns(["bytes"])
        columns = {
            "digest": pa.array(digests, pa.binary()),
            "sha1": pa.array(sha1s, pa.string()),
            "latent": pa.FixedSizeListArray.from_arrays(pa.array(latents.ravel()), dim),
            "reason": pa.array(reasons, pa.string()),
            "precision": pa.array([self.precision] * n, pa.string()),
            "decoder": pa.array([self.decoder] * n, pa.string()),
        }
        for name, column in columns.items():
            out = out.append_column(name, column)
        return out


def write_group(table: pa.Table, *, filesystem: pafs.FileSystem, spec: JobSpec) -> pa.Table:
    """Write one partition of a dataset source from its encoded rows (a ``map_groups`` function)."""
    partition = int(table.column("partition")[0].as_py())
    reasons = table.column("reason").to_pylist()
    good = np.asarray([i for i, r in enumerate(reasons) if r is None], dtype=np.int64)
    bad = [i for i, r in enumerate(reasons) if r is not None]
    sources = table.column("source").to_pylist()
    digests = table.column("digest").to_pylist()
    sha1s = table.column("sha1").to_pylist()
    flat = table.column("latent").combine_chunks().flatten().to_numpy(zero_copy_only=False)
    latents = np.asarray(flat, dtype=np.float32).reshape(table.num_rows, -1)
    encoded = EncodedRows(
        positions=good, digests=[digests[i] for i in good], sha1s=[sha1s[i] for i in good], latents=latents[good],
        skipped=[(sources[i], reasons[i]) for i in bad], failed=np.asarray(bad, dtype=np.int64),
    )
    stats = finish_partition(
        filesystem, spec, partition, table.num_rows, encoded, sources, np.zeros(table.num_rows, np.int64), table,
        table.column("precision")[0].as_py(), table.column("decoder")[0].as_py(), 0.0,
    )
    return pa.table({"partition": [partition], "stats": [json.dumps(stats)]})
