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
import stat
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


def _fixed_width_bytes(array: pa.Array) -> bytes:
    """The values of a fixed-width array (decimal, fixed-size binary, time, interval), null slots zeroed."""
    width = array.type.bit_width // 8
    data = array.buffers()[1]
    if data is None or not len(array):
        return b""
    values = np.frombuffer(data, dtype=np.uint8)[array.offset * width : (array.offset + len(array)) * width]
    if array.null_count:
        values = values.reshape(len(array), width).copy()
        values[np.asarray(array.is_null(), dtype=bool)] = 0
    return values.tobytes()


def _zero(typ: pa.DataType) -> pa.Scalar:
    try:
        return pa.scalar(0).cast(typ)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):  # date32 has no cast from int64
        return pa.array([0], pa.int32() if typ.bit_width == 32 else pa.int64()).view(typ)[0]


def _update(digest, array: pa.Array) -> None:
    """Feed one chunk of a column to ``digest`` in a form that does not depend on chunking or buffers.

    Raises
    ------
    ValueError
        For a column type without a stable byte form (a union, say).
    """
    typ = array.type
    if isinstance(typ, pa.BaseExtensionType):
        array = array.storage
        typ = array.type
    if pa.types.is_dictionary(typ):
        array = array.cast(typ.value_type)
        typ = array.type
    if pa.types.is_string_view(typ) or pa.types.is_binary_view(typ):
        array = array.cast(pa.large_binary())
        typ = array.type
    elif pa.types.is_map(typ):
        array = array.cast(pa.list_(pa.struct([typ.key_field, typ.item_field])))
        typ = array.type
    digest.update(np.asarray(array.is_null(), dtype=np.uint8).tobytes())
    if pa.types.is_fixed_size_list(typ) or pa.types.is_list(typ) or pa.types.is_large_list(typ) or (
        pa.types.is_list_view(typ) or pa.types.is_large_list_view(typ)
    ):
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
    elif (
        pa.types.is_decimal(typ) or pa.types.is_fixed_size_binary(typ) or pa.types.is_time(typ)
        or pa.types.is_interval(typ)
    ):
        digest.update(_fixed_width_bytes(array))
    elif pa.types.is_integer(typ) or pa.types.is_floating(typ) or pa.types.is_temporal(typ):
        values = (array.fill_null(_zero(typ)) if array.null_count else array).to_numpy(zero_copy_only=False)
        if values.dtype == object:
            raise ValueError(f"cannot fingerprint column type {typ}")
        digest.update(np.ascontiguousarray(values).tobytes())
    else:
        raise ValueError(f"cannot fingerprint column type {typ}")


def data_fingerprint(path: str | os.PathLike) -> str:
    """SHA-256 of a Parquet file's data: column names and types, then every column's values in row order.

    Independent of the footer metadata, the row groups, the compression and the
    writer, so rewriting a file's footer keeps it; any change of a value, a row, the
    row order or a column changes it.

    Raises
    ------
    FileNotFoundError, ValueError
        For a missing file or one that is not Parquet; ValueError also for a column
        whose type has no stable byte form (a union, say).
    """
    parquet_file = _open(path)
    schema = parquet_file.schema_arrow
    columns = [hashlib.sha256() for _ in schema.names]
    rows = 0
    for batch in parquet_file.iter_batches(batch_size=_BATCH_ROWS):
        rows += batch.num_rows
        for name, digest, column in zip(schema.names, columns, batch.columns):
            try:
                _update(digest, column)
            except (ValueError, pa.ArrowException) as error:
                raise ValueError(f"{path}: column {name!r}: {error}") from None
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
    the old one's, and only if the old one was not itself replaced meanwhile. Other
    footer entries are kept, and so are the file's permission bits.

    Parameters
    ----------
    path : str or path-like
    updates : mapping of str to str

    Returns
    -------
    str
        The data fingerprint (unchanged by the rewrite).

    Raises
    ------
    ValueError
        If another writer replaced or removed the file while it was being rewritten;
        the file is then left as that writer left it.
    """
    path = Path(path)
    original = os.stat(path) if path.is_file() else None  # taken before reading, to notice a replacement
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
        os.chmod(target.tmp_path, 0o600)  # private while it is written, whatever the umask
        with pq.ParquetWriter(target.tmp_path, schema, compression=compression) as writer:
            for index in range(meta.num_row_groups):
                writer.write_table(parquet_file.read_row_group(index).replace_schema_metadata(metadata))
        after = data_fingerprint(target.tmp_path)
        if after != before:
            raise RuntimeError(f"{path}: rewriting the footer changed the data; the file was left as it was")
        mode = stat.S_IMODE(original.st_mode)
        writable = mode | stat.S_IRUSR | stat.S_IWUSR  # commit reopens the file to flush it
        os.chmod(target.tmp_path, writable)
        try:
            current = os.stat(path)
        except FileNotFoundError:
            current = None
        if current is None or (current.st_ino, current.st_size, current.st_mtime_ns) != (
            original.st_ino, original.st_size, original.st_mtime_ns
        ):
            raise ValueError(f"{path} was replaced or removed while its footer was being rewritten; "
                             "it was left as the other writer left it")
        target.commit()
    except BaseException:
        target.abort()
        raise
    if mode != writable:
        os.chmod(path, mode)
    return before
