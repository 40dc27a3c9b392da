"""A Parquet file's footer metadata, and a fingerprint of its data that the footer does not change.

An audit receipt lives in the footer of the file it vouches for, so writing it must
not change what it vouches for: :func:`data_fingerprint` hashes the rows (column
names, types and values, in order), never the footer, the row groups or the
compression, and :func:`set_footer_metadata` rewrites a file with new footer entries
atomically, checking that the data fingerprint is unchanged before the new file
replaces the old one.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from .._utils.atomic import AtomicFile

__all__ = ["data_fingerprint", "read_footer_metadata", "set_footer_metadata"]

_BATCH_ROWS = 65_536


def _open(path: str | os.PathLike) -> pq.ParquetFile:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file")
    try:
        return pq.ParquetFile(path)
    except (pa.ArrowInvalid, OSError) as error:
        raise ValueError(f"{path}: not a readable Parquet file ({error})") from None


def read_footer_metadata(path: str | os.PathLike) -> dict[str, str]:
    """The footer's key-value metadata as text (``{}`` when it has none); no data is read."""
    raw = _open(path).metadata.metadata or {}
    return {key.decode("utf-8", "replace"): value.decode("utf-8", "replace") for key, value in raw.items()}


def _update(digest, array: pa.Array) -> None:
    """Feed one chunk of a column to ``digest`` in a form that does not depend on chunking or buffers."""
    typ = array.type
    if pa.types.is_dictionary(typ):
        array = array.cast(typ.value_type)
        typ = array.type
    digest.update(np.asarray(array.is_null(), dtype=np.uint8).tobytes())
    if pa.types.is_fixed_size_list(typ) or pa.types.is_list(typ) or pa.types.is_large_list(typ):
        lengths = pc.list_value_length(array).fill_null(0)
        digest.update(np.asarray(lengths, dtype=np.int64).tobytes())
        _update(digest, array.flatten())
    elif pa.types.is_struct(typ):
        for index in range(typ.num_fields):
            _update(digest, array.field(index))
    elif pa.types.is_string(typ) or pa.types.is_large_string(typ) or pa.types.is_binary(typ) or (
        pa.types.is_large_binary(typ)
    ):
        filled = array.fill_null("" if pa.types.is_string(typ) or pa.types.is_large_string(typ) else b"")
        binary = filled.cast(pa.large_binary())
        offsets = np.frombuffer(binary.buffers()[1], dtype=np.int64)[binary.offset : binary.offset + len(binary) + 1]
        digest.update(np.diff(offsets).astype(np.int64).tobytes())  # the lengths make the concatenation unambiguous
        data = binary.buffers()[2]
        if data is not None and len(offsets) and offsets[-1] > offsets[0]:
            digest.update(memoryview(data)[int(offsets[0]) : int(offsets[-1])])
    elif pa.types.is_boolean(typ):
        digest.update(np.asarray(array.fill_null(False), dtype=np.uint8).tobytes())
    elif pa.types.is_null(typ):
        return
    else:
        try:
            values = array.fill_null(pa.scalar(0).cast(typ)) if array.null_count else array
            digest.update(np.ascontiguousarray(values.to_numpy(zero_copy_only=False)).tobytes())
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError, pa.ArrowTypeError):
            digest.update(json.dumps(array.to_pylist(), default=str).encode("utf-8"))


def data_fingerprint(path: str | os.PathLike) -> str:
    """SHA-256 of a Parquet file's data: column names and types, then every column's values in row order.

    Independent of the footer metadata, the row groups, the compression and the
    writer, so rewriting a file's footer keeps it; any change of a value, a row, the
    row order or a column changes it.

    Raises
    ------
    FileNotFoundError, ValueError
        For a missing file or one that is not Parquet.
    """
    parquet_file = _open(path)
    schema = parquet_file.schema_arrow
    columns = [hashlib.sha256() for _ in schema.names]
    rows = 0
    for batch in parquet_file.iter_batches(batch_size=_BATCH_ROWS):
        rows += batch.num_rows
        for digest, column in zip(columns, batch.columns):
            _update(digest, column)
    top = hashlib.sha256()
    top.update(json.dumps([[f.name, str(f.type)] for f in schema], separators=(",", ":")).encode("utf-8"))
    top.update(str(rows).encode())
    for digest in columns:
        top.update(digest.digest())
    return top.hexdigest()


def set_footer_metadata(path: str | os.PathLike, updates: Mapping[str, str]) -> str:
    """Rewrite a Parquet file with ``updates`` added to its footer metadata, atomically.

    The rows are copied row group by row group (same sizes and codec); the new file
    replaces the old one only after its :func:`data_fingerprint` was checked to equal
    the old one's. Other footer entries are kept.

    Parameters
    ----------
    path : str or path-like
    updates : mapping of str to str

    Returns
    -------
    str
        The data fingerprint (unchanged by the rewrite).
    """
    path = Path(path)
    parquet_file = _open(path)
    before = data_fingerprint(path)
    metadata = dict(parquet_file.schema_arrow.metadata or {})
    metadata.update({key.encode("utf-8"): value.encode("utf-8") for key, value in updates.items()})
    schema = parquet_file.schema_arrow.with_metadata(metadata)
    meta = parquet_file.metadata
    compression = meta.row_group(0).column(0).compression.lower() if meta.num_row_groups else "snappy"
    if compression not in ("snappy", "gzip", "brotli", "lz4", "zstd", "uncompressed", "none"):
        compression = "snappy"
    target = AtomicFile(path, overwrite=True)
    try:
        with pq.ParquetWriter(target.tmp_path, schema, compression=compression) as writer:
            for index in range(meta.num_row_groups):
                writer.write_table(parquet_file.read_row_group(index).replace_schema_metadata(metadata))
        after = data_fingerprint(target.tmp_path)
        if after != before:
            raise RuntimeError(f"{path}: rewriting the footer changed the data; the file was left as it was")
        target.commit()
    except BaseException:
        target.abort()
        raise
    return before
