"""Parquet datasets, not just files: a file, a folder (plain or hive-partitioned), a glob or a URI.

What ``bafo encode --engine ray``, Spark or ``pyarrow.dataset.write_dataset`` write is a folder of
Parquet files, possibly hive-partitioned (``split=test/part-0.parquet``), possibly in object
storage. :func:`open_parquet_dataset` turns any of these spellings into one
:class:`pyarrow.dataset.Dataset`, whose columns (hive partition keys included) can then be
read whole, in batches, or filtered by id, so a dataset larger than memory can be sampled.

Files whose names start with ``_`` or ``.`` (job files, ``_SUCCESS``, temporary files) are
not data and are left out, as Spark and Hive do.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from pathlib import PurePosixPath

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as pads
import pyarrow.fs as pafs

from .filesystems import glob_files, has_glob, resolve_filesystem

__all__ = ["PARQUET_SUFFIXES", "iter_dataset_batches", "open_parquet_dataset", "parquet_files", "read_dataset"]

PARQUET_SUFFIXES = (".parquet", ".pq")


def _is_data_file(path: str) -> bool:
    name = PurePosixPath(path).name
    return not name.startswith(("_", ".")) and name.lower().endswith(PARQUET_SUFFIXES)


def parquet_files(source: str | os.PathLike) -> tuple[pafs.FileSystem, list[str], str]:
    """The Parquet files a source names.

    Parameters
    ----------
    source : str or path-like
        A Parquet file, a folder (searched recursively), a glob (``runs/*/latents.parquet``,
        ``out/**/*.parquet``) or a URI of any of these (``s3://bucket/latents/``).

    Returns
    -------
    filesystem : pyarrow.fs.FileSystem
    files : list of str
        Sorted paths on ``filesystem``.
    base : str
        The folder hive partition keys are read below.

    Raises
    ------
    FileNotFoundError
        If nothing exists there, or the folder or glob holds no Parquet file.
    """
    filesystem, path = resolve_filesystem(source)
    if has_glob(path):
        files = [f for f in glob_files(filesystem, path) if _is_data_file(f)]
        base = "/".join(p for p in path.split("/")[: _first_glob_part(path)]) or "/"
    else:
        info = filesystem.get_file_info(path)
        if info.type == pafs.FileType.NotFound:
            raise FileNotFoundError(f"{source}: no such file or folder")
        if info.type == pafs.FileType.File:
            return filesystem, [path], str(PurePosixPath(path).parent)
        files = sorted(f for f in glob_files(filesystem, path.rstrip("/") + "/**") if _is_data_file(f))
        base = path
    if not files:
        raise FileNotFoundError(f"{source}: no Parquet files (*.parquet, *.pq) found there")
    return filesystem, files, base


def _first_glob_part(path: str) -> int:
    for index, part in enumerate(path.split("/")):
        if has_glob(part):
            return index
    return len(path.split("/"))


def open_parquet_dataset(source: str | os.PathLike) -> pads.Dataset:
    """A :class:`pyarrow.dataset.Dataset` over the Parquet files of ``source`` (see :func:`parquet_files`).

    Hive partition keys in folder names (``split=test/``) become columns.

    Raises
    ------
    FileNotFoundError
        As :func:`parquet_files`.
    ValueError
        If a file is not readable Parquet or the files' schemas cannot be merged.
    """
    filesystem, files, base = parquet_files(source)
    try:
        return pads.dataset(
            files, filesystem=filesystem, format="parquet",
            partitioning=pads.HivePartitioning.discover(infer_dictionary=False), partition_base_dir=base,
        )
    except (pa.ArrowInvalid, OSError) as error:
        raise ValueError(f"{source}: not a readable Parquet file or dataset ({error})") from None


def read_dataset(
    source: str | os.PathLike | pads.Dataset,
    columns: Sequence[str] | None = None,
    *,
    ids: tuple[str, Sequence] | None = None,
) -> pa.Table:
    """Read some columns of a dataset, optionally only the rows whose id is in a given set.

    Parameters
    ----------
    source : str, path-like or pyarrow.dataset.Dataset
    columns : sequence of str, optional
        Columns to read (hive partition keys included); all by default.
    ids : (column, values), optional
        Keep only rows whose ``column`` is in ``values`` (read in streaming batches, so the
        result is the only thing held in memory).
    """
    dataset = source if isinstance(source, pads.Dataset) else open_parquet_dataset(source)
    _check_columns(dataset, columns, source)
    row_filter = None
    if ids is not None:
        column, values = ids
        _check_columns(dataset, [column], source)
        try:
            values = pa.array(list(values)).cast(dataset.schema.field(column).type)
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError, pa.ArrowTypeError):
            raise ValueError(f"{source}: the ids to read do not convert to the type of column {column!r}") from None
        row_filter = pc.field(column).isin(values)
    return dataset.to_table(columns=None if columns is None else list(columns), filter=row_filter)


def iter_dataset_batches(
    source: str | os.PathLike | pads.Dataset, columns: Sequence[str] | None = None, batch_size: int = 65_536
) -> Iterator[pa.RecordBatch]:
    """Stream a dataset's columns in record batches of at most ``batch_size`` rows."""
    dataset = source if isinstance(source, pads.Dataset) else open_parquet_dataset(source)
    _check_columns(dataset, columns, source)
    yield from dataset.to_batches(columns=None if columns is None else list(columns), batch_size=batch_size)


def _check_columns(dataset: pads.Dataset, columns: Sequence[str] | None, source) -> None:
    missing = [c for c in (columns or []) if c not in dataset.schema.names]
    if missing:
        raise ValueError(f"{source}: no column(s) {missing}; columns are {dataset.schema.names}")
