"""An embeddings file as the audit reads it: which columns are the embedding, which are labels, and the rest.

A file holds an id column, the embedding (one list column, or one numeric column
per dimension), perhaps label columns, and perhaps anything else. Labels must
never be taken for embedding dimensions (a one-column-per-dimension file with an
``age`` column would otherwise "leak" age perfectly), and everything that is
neither embedding nor label is a side channel (:mod:`.side_channels`).

For one column per dimension, the dimensions are the largest family of numeric
columns named ``<prefix><number>`` (``dim_0 … dim_47``, ``e0 … e63``, ``0 … 511``);
other numeric columns are labels or side channels, never dimensions. A file
without such a family has every numeric column that is not a label taken as a
dimension, and the report lists them.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa

from ..io.parquet import dimension_columns, embedding_column, embedding_matrix

__all__ = ["EmbeddingFile", "declared_labels", "embedding_of"]

def declared_labels(footer: dict[str, str]) -> list[str]:
    """The label columns a bafo file declares in its metadata (``label_columns``)."""
    try:
        meta = json.loads(footer.get("bafo", "{}"))
    except ValueError:
        return []
    columns = meta.get("label_columns") if isinstance(meta, dict) else None
    return [str(c) for c in columns] if isinstance(columns, list) else []


@dataclass
class EmbeddingFile:
    """What the audit reads from one embeddings file.

    Attributes
    ----------
    ids : ndarray of shape (n,)
    Z : ndarray of shape (n, d), float32
    rest : pyarrow.Table
        Every column but the embedding (the id included), in file order.
    embedding_columns : list of str
    embedding : str
        How the embedding was found, for the report.
    declared_labels : list of str
        Label columns the file declares (bafo metadata).
    footer : dict of str to str
    """

    ids: np.ndarray
    Z: np.ndarray
    rest: pa.Table
    embedding_columns: list[str]
    embedding: str
    declared_labels: list[str] = field(default_factory=list)
    footer: dict[str, str] = field(default_factory=dict)


def embedding_of(
    table: pa.Table,
    *,
    where: str | os.PathLike,
    id_column: str,
    latent_column: str | None,
    labels: Sequence[str],
    footer: dict[str, str] | None = None,
) -> EmbeddingFile:
    """Split a file's table into ids, the embedding matrix, and the other columns.

    Parameters
    ----------
    table : pyarrow.Table
    where : str or path-like
        The file, for messages.
    id_column : str
    latent_column : str, optional
    labels : sequence of str
        Columns that are labels (never dimensions).
    footer : dict, optional

    Raises
    ------
    ValueError
        Naming the file and the row: a missing id column, lists of different lengths,
        missing or non-finite values, no embedding at all.
    """
    footer = footer or {}
    where = Path(where) if not isinstance(where, str) else where
    if id_column not in table.column_names:
        raise ValueError(f"{where}: no id column {id_column!r}; columns are {table.column_names}")
    declared = declared_labels(footer)
    try:
        listed = embedding_column(table.schema, latent_column)
    except ValueError as error:
        raise ValueError(f"{where}: {error}") from None
    if listed is not None:
        columns, how = [listed], f"the list column {listed!r}"
        Z = embedding_matrix(table.column(listed), str(where), listed)
    else:
        columns, how = dimension_columns(table.schema, [id_column, *labels, *declared])
        if not columns:
            raise ValueError(
                f"{where}: no list column holding the embedding (name one with --latent-column) and no numeric "
                f"feature columns besides the labels; columns are {table.column_names}"
            )
        with np.errstate(over="ignore"):  # values beyond float32 become inf, refused below with their row
            Z = np.column_stack([table.column(c).to_numpy(zero_copy_only=False) for c in columns]).astype(np.float32)
    bad = ~np.isfinite(Z).all(axis=1)
    if bad.any():
        raise ValueError(
            f"{where}: row {int(np.flatnonzero(bad)[0])} has a missing or non-finite embedding value (rows counted from 0)"
        )
    ids = np.asarray(table.column(id_column).to_numpy(zero_copy_only=False))
    rest = table.drop_columns(columns)
    return EmbeddingFile(ids, Z, rest, columns, how, declared, footer)
