"""Read embeddings and labels from files for the audit (Parquet for embeddings; CSV or Parquet labels).

Kept inside the audit package so the audit can read any method's embeddings without
importing the rest of bafo_pipeline.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

__all__ = ["read_embedding_parquet", "read_labels"]


def read_embedding_parquet(
    path: str | os.PathLike, *, id_column: str = "id", latent_column: str = "latent"
) -> tuple[np.ndarray, np.ndarray]:
    """Read ids and an embedding matrix from a Parquet file.

    The embedding is ``latent_column`` (a fixed-size or variable list of floats of one
    length, as bafo exports it) or, when that column is absent, every other numeric
    column (one feature per column, as many tools write embeddings).

    Parameters
    ----------
    path : str or path-like
    id_column : str, default="id"
    latent_column : str, default="latent"

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
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file")
    try:
        table = pq.read_table(path)
    except (pa.ArrowInvalid, OSError) as exc:
        raise ValueError(f"{path}: not a readable Parquet file ({exc})") from None
    if id_column not in table.column_names:
        raise ValueError(f"{path}: no id column {id_column!r}; columns are {table.column_names}")
    ids = table.column(id_column).to_numpy(zero_copy_only=False)
    if latent_column in table.column_names:
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
        numeric = [
            name
            for name, typ in zip(table.column_names, table.schema.types)
            if name != id_column and (pa.types.is_floating(typ) or pa.types.is_integer(typ))
        ]
        if not numeric:
            raise ValueError(
                f"{path}: no {latent_column!r} column and no numeric feature columns; "
                f"columns are {table.column_names}"
            )
        Z = np.column_stack([table.column(c).to_numpy(zero_copy_only=False) for c in numeric]).astype(
            np.float32
        )
    bad = ~np.isfinite(Z).all(axis=1)
    if bad.any():
        raise ValueError(
            f"{path}: row {int(np.flatnonzero(bad)[0])} has a missing or non-finite embedding value"
        )
    return np.asarray(ids), Z


def read_labels(path: str | os.PathLike, *, id_column: str | None = None) -> pd.DataFrame:
    """Read a labels table from ``.csv`` or ``.parquet``/``.pq``.

    In a CSV, ``id_column`` is read as text so ids such as ``"007"`` keep their
    leading zeros; :func:`~bafo_pipeline.audits.inputs.align_by_id` matches text ids
    with numeric ones by their text.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file")
    suffix = path.suffix.lower()
    if suffix == ".csv":
        return pd.read_csv(path, dtype={id_column: str} if id_column else None)
    if suffix in (".parquet", ".pq"):
        return pd.read_parquet(path)
    raise ValueError(f"{path}: labels must be a .csv or .parquet file")
