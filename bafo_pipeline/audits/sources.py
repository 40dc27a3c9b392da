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
import re
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

__all__ = ["EmbeddingFile", "declared_labels", "dimension_columns", "embedding_of", "list_column"]

_NUMBERED = re.compile(r"^(.*?)(\d+)$")


def _is_number_list(typ: pa.DataType) -> bool:
    return (pa.types.is_list(typ) or pa.types.is_large_list(typ) or pa.types.is_fixed_size_list(typ)) and (
        pa.types.is_floating(typ.value_type) or pa.types.is_integer(typ.value_type)
    )


def list_column(schema: pa.Schema, latent_column: str | None = None) -> str | None:
    """The list column holding the embedding: ``latent_column`` if given, else ``latent``, else the only
    list-of-numbers column; None when there is none (one column per dimension).

    Raises
    ------
    ValueError
        If ``latent_column`` is missing or not a list of numbers, or several list columns could be the embedding.
    """
    if latent_column is not None:
        if latent_column not in schema.names:
            raise ValueError(f"no embedding column {latent_column!r}; columns are {schema.names}")
        if not _is_number_list(schema.field(latent_column).type):
            raise ValueError(
                f"column {latent_column!r} is a {schema.field(latent_column).type}, not a list of numbers"
            )
        return latent_column
    if "latent" in schema.names and _is_number_list(schema.field("latent").type):
        return "latent"
    lists = [f.name for f in schema if _is_number_list(f.type)]
    if len(lists) > 1:
        raise ValueError(f"several list columns could be the embedding ({lists}); name one with --latent-column")
    return lists[0] if lists else None


def dimension_columns(schema: pa.Schema, excluded: Sequence[str]) -> tuple[list[str], str]:
    """The numeric columns that are the embedding's dimensions, and how they were chosen.

    Parameters
    ----------
    schema : pyarrow.Schema
    excluded : sequence of str
        The id and every label column: never dimensions.

    Returns
    -------
    columns : list of str
    how : str
        A sentence for the report.
    """
    numeric = [
        f.name for f in schema
        if f.name not in set(excluded) and (pa.types.is_floating(f.type) or pa.types.is_integer(f.type))
    ]
    families: dict[str, list[tuple[int, str]]] = defaultdict(list)
    for name in numeric:
        match = _NUMBERED.match(name)
        if match:
            families[match.group(1)].append((int(match.group(2)), name))
    best = max(families.values(), key=len, default=[])
    if len(best) >= 2:
        columns = [name for _, name in sorted(best)]
        others = [name for name in numeric if name not in set(columns)]
        how = f"{len(columns)} numbered columns {columns[0]} … {columns[-1]}"
        if others:
            how += f" (not {others}: numeric, but outside the numbered family)"
        return columns, how
    return numeric, f"every numeric column that is not a label ({len(numeric)}: {numeric[:8]}{' …' if len(numeric) > 8 else ''})"


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
        listed = list_column(table.schema, latent_column)
    except ValueError as error:
        raise ValueError(f"{where}: {error}") from None
    if listed is not None:
        columns, how = [listed], f"the list column {listed!r}"
        Z = _list_matrix(table.column(listed), where, listed)
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
        raise ValueError(f"{where}: row {int(np.flatnonzero(bad)[0])} has a missing or non-finite embedding value")
    ids = np.asarray(table.column(id_column).to_numpy(zero_copy_only=False))
    rest = table.drop_columns(columns)
    return EmbeddingFile(ids, Z, rest, columns, how, declared, footer)


def _list_matrix(column: pa.ChunkedArray, where, name: str) -> np.ndarray:
    column = column.combine_chunks()
    if column.null_count:
        row = int(np.flatnonzero(np.asarray(column.is_null()))[0])
        raise ValueError(f"{where}: {name!r} at row {row} is missing")
    lengths = np.asarray(pc.list_value_length(column))
    if len(lengths) and (lengths != lengths[0]).any():
        row = int(np.flatnonzero(lengths != lengths[0])[0])
        raise ValueError(f"{where}: row {row} has {lengths[row]} {name!r} values, row 0 has {lengths[0]}")
    width = int(lengths[0]) if len(lengths) else 0
    flat = column.flatten()
    if flat.null_count:
        row = int(np.flatnonzero(np.asarray(flat.is_null()))[0]) // max(width, 1)
        raise ValueError(f"{where}: {name!r} at row {row} has a missing element")
    return np.asarray(flat.to_numpy(zero_copy_only=False), dtype=np.float32).reshape(len(column), width)
