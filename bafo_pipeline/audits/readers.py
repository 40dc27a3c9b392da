"""Read embeddings and labels for the audit: Parquet files or datasets (folders, globs, URIs); CSV labels.

Embeddings come from any tool: bafo's ``latent`` column, another list-of-floats column
(``--latent-column embedding``), or one numeric column per dimension.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.fs as pafs

from ..io.datasets import open_parquet_dataset, read_dataset
from ..io.filesystems import resolve_filesystem

__all__ = ["embedding_column", "read_embedding_parquet", "read_labels"]


def _is_float_list(typ: pa.DataType) -> bool:
    return (pa.types.is_list(typ) or pa.types.is_large_list(typ) or pa.types.is_fixed_size_list(typ)) and (
        pa.types.is_floating(typ.value_type) or pa.types.is_integer(typ.value_type)
    )


def embedding_column(schema: pa.Schema, latent_column: str | None = None) -> str | None:
    """The list column holding the embedding: ``latent_column`` if given, else ``latent``, else the only
    list-of-numbers column; None when the embedding is one numeric column per dimension.

    Raises
    ------
    ValueError
        If ``latent_column`` is given but missing, or several list columns could be the embedding.
    """
    if latent_column is not None:
        if latent_column not in schema.names:
            raise ValueError(f"no embedding column {latent_column!r}; columns are {schema.names}")
        return latent_column
    if "latent" in schema.names:
        return "latent"
    lists = [f.name for f in schema if _is_float_list(f.type)]
    if len(lists) > 1:
        raise ValueError(f"several list columns could be the embedding ({lists}); name one with --latent-column")
    return lists[0] if lists else None


def read_embedding_parquet(
    path: str | os.PathLike,
    *,
    id_column: str = "id",
    latent_column: str | None = None,
    ids: Sequence | None = None,
    exclude: Sequence[str] = (),
) -> tuple[np.ndarray, np.ndarray]:
    """Read ids and an embedding matrix from a Parquet file or dataset.

    The embedding is a list column (fixed-size or variable lists of numbers of one length):
    ``latent_column``, else ``latent``, else the only list column; without one, every other
    numeric column is a dimension (one feature per column, as many tools write embeddings),
    except the ``exclude`` columns (labels).

    Parameters
    ----------
    path : str or path-like
        A Parquet file, a folder of them (plain or hive-partitioned), a glob or a URI.
    id_column : str, default="id"
    latent_column : str, optional
    ids : sequence, optional
        Read only the rows with these ids (a sample of a dataset too large for memory).
    exclude : sequence of str
        Columns that are never embedding dimensions (the audited labels).

    Returns
    -------
    ids : ndarray of shape (n,)
    Z : ndarray of shape (n, d), float32

    Raises
    ------
    ValueError
        If the id column is missing, the list lengths differ, values are missing or
        no numeric columns are found; the message names the file and row.
    """
    dataset = open_parquet_dataset(path)
    names = dataset.schema.names
    if id_column not in names:
        raise ValueError(f"{path}: no id column {id_column!r}; columns are {names}")
    try:
        latent_column = embedding_column(dataset.schema, latent_column)
    except ValueError as error:
        raise ValueError(f"{path}: {error}") from None
    if latent_column is not None:
        wanted = [id_column, latent_column]
    else:
        wanted = [id_column, *(
            f.name for f in dataset.schema
            if f.name not in (id_column, *exclude) and (pa.types.is_floating(f.type) or pa.types.is_integer(f.type))
        )]
    try:
        table = read_dataset(dataset, wanted, ids=None if ids is None else (id_column, ids))
    except (pa.ArrowInvalid, OSError) as exc:
        raise ValueError(f"{path}: not a readable Parquet file or dataset ({exc})") from None
    row_ids = table.column(id_column).to_numpy(zero_copy_only=False)
    if latent_column is not None:
        column = table.column(latent_column).combine_chunks()
        if not (
            pa.types.is_list(column.type)
            or pa.types.is_large_list(column.type)
            or pa.types.is_fixed_size_list(column.type)
        ):
            raise ValueError(f"{path}: column {latent_column!r} is {column.type}, expected a list of floats")
        if column.null_count:
            row = int(np.flatnonzero(column.is_null().to_numpy(zero_copy_only=False))[0])
            raise ValueError(f"{path}: row {row} has no {latent_column!r} value")
        if pa.types.is_fixed_size_list(column.type):
            width = column.type.list_size
        else:
            lengths = column.value_lengths().to_numpy(zero_copy_only=False)
            width = int(lengths[0]) if len(lengths) else 0
            if (lengths != width).any():
                row = int(np.flatnonzero(lengths != width)[0])
                raise ValueError(
                    f"{path}: row {row} has {lengths[row]} {latent_column!r} values, row 0 has {width}"
                )
        flat = column.flatten().to_numpy(zero_copy_only=False)
        Z = np.asarray(flat, dtype=np.float32).reshape(len(column), width)
    else:
        numeric = [name for name in table.column_names if name != id_column]
        if not numeric:
            raise ValueError(
                f"{path}: no list column holding the embedding (name one with --latent-column) and no "
                f"numeric feature columns; columns are {dataset.schema.names}"
            )
        Z = np.column_stack([table.column(c).to_numpy(zero_copy_only=False) for c in numeric]).astype(
            np.float32
        )
    bad = ~np.isfinite(Z).all(axis=1)
    if bad.any():
        raise ValueError(
            f"{path}: row {int(np.flatnonzero(bad)[0])} has a missing or non-finite embedding value"
        )
    return np.asarray(row_ids), Z


def read_labels(
    path: str | os.PathLike, *, id_column: str | None = None, columns: Sequence[str] | None = None
) -> pd.DataFrame:
    """Read a labels table: a ``.csv`` file, or Parquet (a file, folder, glob or URI).

    In a CSV, ``id_column`` is read as text so ids such as ``"007"`` keep their
    leading zeros; :func:`~bafo_pipeline.audits.inputs.align_by_id` matches text ids
    with numeric ones by their text. ``columns`` limits what is read (Parquet).
    """
    text = os.fspath(path)
    if text.lower().endswith(".csv"):
        filesystem, location = resolve_filesystem(text)
        if filesystem.get_file_info(location).type != pafs.FileType.File:
            raise FileNotFoundError(f"{path}: no such file")
        with filesystem.open_input_stream(location) as stream:
            return pd.read_csv(stream, dtype={id_column: str} if id_column else None)
    if Path(text).suffix and Path(text).suffix.lower() not in (".parquet", ".pq") and "*" not in text:
        raise ValueError(f"{path}: labels must be a .csv or .parquet file (or a Parquet folder)")
    return read_dataset(path, columns).to_pandas()
