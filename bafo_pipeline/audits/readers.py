"""Read what the audit is given as files: embeddings (through the one Parquet reader of
:mod:`bafo_pipeline.io`, which takes files, folders, globs and URIs) and label tables
(CSV, or Parquet through the same reader)."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import PurePosixPath

import pandas as pd
import pyarrow.fs as pafs

from .._utils.filesystems import has_glob, resolve_filesystem
from ..io.parquet import read_embedding, read_table

__all__ = ["read_embedding_parquet", "read_labels"]

#: Ids and embedding matrix of Parquet: :func:`bafo_pipeline.io.read_embedding`, under the audit's name.
read_embedding_parquet = read_embedding


def read_labels(
    path: str | os.PathLike, *, id_column: str | None = None, columns: Sequence[str] | None = None
) -> pd.DataFrame:
    """Read a labels table: a ``.csv`` file, or Parquet (a file, a folder, a glob or a URI).

    In a CSV, ``id_column`` is read as text so ids such as ``"007"`` keep their
    leading zeros; :func:`~bafo_pipeline.audits.inputs.align_by_id` matches text ids
    with numeric ones by their text. ``columns`` limits what is read from Parquet.

    Raises
    ------
    FileNotFoundError
        If nothing exists there.
    ValueError
        If a file is neither CSV nor Parquet, or cannot be parsed.
    """
    text = os.fspath(path)
    suffix = PurePosixPath(text).suffix.lower()
    if suffix == ".csv":
        filesystem, location = resolve_filesystem(text)
        if filesystem.get_file_info(location).type != pafs.FileType.File:
            raise FileNotFoundError(f"{path}: no such file")
        with filesystem.open_input_stream(location) as stream:
            return pd.read_csv(stream, dtype={id_column: str} if id_column else None)
    if suffix and suffix not in (".parquet", ".pq") and not has_glob(text):
        raise ValueError(f"{path}: labels must be a .csv or .parquet file (or a folder of Parquet files)")
    return read_table(path, columns).to_pandas()
