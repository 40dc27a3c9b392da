"""Read what the audit is given as files: embeddings (through the one Parquet reader of
:mod:`bafo_pipeline.io`) and label tables (CSV or Parquet)."""

from __future__ import annotations

import os
from pathlib import Path

import pandas as pd

from ..io.parquet import read_embedding

__all__ = ["read_embedding_parquet", "read_labels"]

#: Ids and embedding matrix of a Parquet file: :func:`bafo_pipeline.io.read_embedding`, under the audit's name.
read_embedding_parquet = read_embedding


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
