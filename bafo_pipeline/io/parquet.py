"""Streaming Parquet export and import of latent datasets.

File layout (one row per encoded image):

========  ==================================  ==========================================
column    Arrow type                          notes
========  ==================================  ==========================================
id        int64 or string, not null           row numbers, or a user-chosen identifier
latent    fixed_size_list<float32>[d]         what LanceDB and Hugging Face datasets expect
split     string (optional)                   e.g. ``"train"`` / ``"test"``
<labels>  as declared (optional)              only when the caller opts in
========  ==================================  ==========================================

Descriptive metadata is stored as JSON under the ``bafo`` key, both in the Parquet
footer and in the Arrow schema metadata (so ``pq.read_table(path).schema.metadata``
shows it too). It is finalised when the writer closes, once the row count is known.

Privacy defaults: sensitive labels are written only when a ``label_schema`` is given,
and columns named like paths or file names, or string values that look like paths or
UTKFace-style file names (which encode age, gender and ethnicity), are refused unless
``allow_paths=True``. Error messages name columns, batches and rows, never the values.
"""

from __future__ import annotations

import base64
import itertools
import json
import os
import re
import warnings
from collections import defaultdict
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import PurePosixPath
from types import TracebackType
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as pads
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from .._utils.atomic import AtomicFile
from .._utils.filesystems import glob_files, has_glob, resolve_filesystem
from .._version import package_version

__all__ = [
    "LatentParquetWriter",
    "LatentTable",
    "embedding_column",
    "dimension_columns",
    "embedding_matrix",
    "iter_latent_batches",
    "looks_like_path",
    "read_embedding",
    "read_latents",
    "read_metadata",
    "read_schema",
    "read_table",
    "write_latents",
]

METADATA_KEY = "bafo"
FORMAT_NAME = "bafo-latents"
FORMAT_VERSION = 1
ID_COLUMN = "id"
LATENT_COLUMN = "latent"
SPLIT_COLUMN = "split"
DEFAULT_ROW_GROUP_SIZE = 65_536

_STRUCTURAL_COLUMNS = (ID_COLUMN, LATENT_COLUMN, SPLIT_COLUMN)
_WRITER_KEYS = frozenset(
    {
        "format",
        "format_version",
        "package_version",
        "latent_dim",
        "row_count",
        "created_at",
        "labels_included",
        "label_columns",
        "id_type",
        "split_included",
    }
)
_PATHLIKE_NAME_TOKENS = frozenset(
    {
        "path", "paths", "filepath", "filepaths", "file", "files", "filename",
        "filenames", "fname", "source", "sources", "src", "url", "uri", "dir",
        "dirname", "directory", "folder",
    }
)  # fmt: skip
# Name suffixes of path columns written as one word ("imagePath", "imgpath", "fullFilename").
_PATHLIKE_NAME_SUFFIXES = ("path", "paths", "filename", "filenames", "url", "uri")
_IMAGE_EXTENSIONS = "jpe?g|jpe|jfif|png|bmp|gif|tiff?|webp|ppm|pgm|heic|heif|avif|jxl|jp2|dng|cr2|nef|arw|ico|svg"
_SEX = r"(?:fe)?males?|wom[ae]n|m[ae]n|boys?|girls?"
_ETHNICITY = r"white|black|asian|indian|others?|hispanic|latin[oa]|caucasian"
# Absolute/home/drive/dot-relative paths, URIs (s3://...), nested relative paths, image file
# names (also with a query, "x.jpeg?raw=1", or trailing blanks, "x.JPG "), UTKFace names
# ("<age>_<gender>_<race>_<date>...") and names that spell out labels in words
# ("26-female-asian"). Written in the regex subset shared by Python's re and Arrow's RE2.
_PATHLIKE_VALUE = (
    r"^\s*(?:/|~[\\/]|[A-Za-z]:[\\/]|\.\.?[\\/]|[A-Za-z][A-Za-z0-9+.-]*://)"
    r"|\w[\\/]+\w+[\\/]+\w"
    rf"|\.(?:{_IMAGE_EXTENSIONS})(?:[?#]\S*)?\s*$"
    r"|^\s*\d{1,3}_[01]_[0-4]_\d"
    rf"|(?:^|[^a-z0-9])\d{{1,3}}[-_ .]+(?:{_SEX})(?:[^a-z]|$)"
    rf"|(?:^|[^a-z])(?:{_SEX})[-_ .]+(?:\d{{1,3}}|{_ETHNICITY})(?:[^a-z0-9]|$)"
    rf"|(?:^|[^a-z])(?:{_ETHNICITY})[-_ .]+(?:{_SEX}|\d{{1,3}})(?:[^a-z0-9]|$)"
)
_PATHLIKE_VALUE_RE = re.compile(_PATHLIKE_VALUE, re.IGNORECASE)


# Parquet row numbers in messages are positions in the file, as pandas and pyarrow count them; a
# manifest's messages count its data rows from 1 instead, as a spreadsheet shows them.
_ROWS_FROM_ZERO = "(rows counted from 0)"


def _utc_now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def looks_like_path(value: str) -> bool:
    """Whether a string value looks like a file path or file name (UTKFace names spell out the labels)."""
    return bool(_PATHLIKE_VALUE_RE.search(value))


def _name_looks_like_path(name: str) -> bool:
    words = re.sub(r"([a-z0-9])([A-Z])", r"\1_\2", name)  # imagePath -> image_Path
    tokens = [token for token in re.split(r"[^a-z0-9]+", words.lower()) if token]
    return any(token in _PATHLIKE_NAME_TOKENS or token.endswith(_PATHLIKE_NAME_SUFFIXES) for token in tokens)


def _first_pathlike_row(array: pa.Array) -> int | None:
    """Index of the first string value that looks like a path or file name, or None."""
    if not (pa.types.is_string(array.type) or pa.types.is_large_string(array.type)):
        return None
    mask = pc.match_substring_regex(array, _PATHLIKE_VALUE, ignore_case=True).fill_null(False)
    if not pc.any(mask).as_py():
        return None
    return int(np.flatnonzero(mask.to_numpy(zero_copy_only=False))[0])


def _find_pathlike_metadata(value: Any, where: str) -> str | None:
    """Where the first path-like string inside a JSON-like value is, key or value, or None.

    A path-like key is named by its position (``key #2 of metadata['checks']``), never by its text.
    """
    if isinstance(value, str):
        return where if _PATHLIKE_VALUE_RE.search(value) else None
    if isinstance(value, Mapping):
        items: Iterable[tuple[Any, Any]] = value.items()
    elif isinstance(value, (list, tuple)):
        items = enumerate(value)
    else:
        return None
    for position, (key, item) in enumerate(items, start=1):
        if isinstance(value, Mapping) and isinstance(key, str) and _PATHLIKE_VALUE_RE.search(key):
            return f"key #{position} of {where}"
        found = _find_pathlike_metadata(item, f"{where}[{key!r}]")
        if found is not None:
            return found
    return None


def _to_arrow_type(name: str, dtype: Any) -> pa.DataType:
    """Map an Arrow type, a pandas/NumPy dtype or its name to an Arrow type."""
    if isinstance(dtype, pa.DataType):
        return dtype
    if dtype in (str, "str", "string", "object", object, np.str_):
        return pa.string()
    try:
        pd_dtype = pd.api.types.pandas_dtype(dtype)
    except TypeError as exc:
        raise TypeError(f"label_schema[{name!r}]: unknown dtype {dtype!r}") from exc
    if isinstance(pd_dtype, (pd.CategoricalDtype, pd.StringDtype)) or pd_dtype == np.dtype(object):
        return pa.string()
    numpy_dtype = getattr(pd_dtype, "numpy_dtype", pd_dtype)  # nullable Int64, boolean, ...
    try:
        return pa.from_numpy_dtype(numpy_dtype)
    except (pa.ArrowNotImplementedError, TypeError) as exc:
        raise TypeError(f"label_schema[{name!r}]: dtype {dtype!r} has no Arrow equivalent") from exc


@dataclass
class LatentTable:
    """Latents read back from Parquet.

    Attributes
    ----------
    ids : ndarray of shape (n,)
        int64 row numbers, or an object array of strings.
    latents : ndarray of shape (n, latent_dim), dtype float32
        One latent vector per row.
    labels : DataFrame or None
        Label columns, when the file has them and they were requested.
    split : ndarray of shape (n,) or None
        Split name per row (object array of str), when the file has a split column.
    metadata : dict
        The ``bafo`` metadata; empty for Parquet files written by other tools.
    """

    ids: np.ndarray
    latents: np.ndarray
    labels: pd.DataFrame | None
    split: np.ndarray | None
    metadata: dict

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def latent_dim(self) -> int:
        """Size of each latent vector."""
        return int(self.latents.shape[1])


def _string_column(values: Any, n: int, where: str, *, plural: str, singular: str, type_hint: str) -> pa.Array:
    """One batch's string column: ``n`` non-null str values, or an error naming the batch and row."""
    values = values.tolist() if isinstance(values, (np.ndarray, pd.Series, pd.Index)) else list(values)
    if len(values) != n:
        raise ValueError(f"{where}: {plural} must have {n} entries (one per latent), got {len(values)}")
    try:
        arr = pa.array(values, type=pa.string())
    except (pa.ArrowInvalid, pa.ArrowTypeError) as exc:
        raise TypeError(f"{where}: {type_hint}") from exc
    if arr.null_count:
        row = int(np.flatnonzero(arr.is_null().to_numpy(zero_copy_only=False))[0])
        raise ValueError(f"{where}: {singular} at row {row} of the batch is missing")
    return arr


class LatentParquetWriter:
    """Stream latent vectors to a Parquet file, one bounded row group at a time.

    Rows are buffered until ``row_group_size`` of them are pending, then written as a
    row group, so memory stays bounded whatever the dataset size. Output goes to a
    hidden temporary file next to ``path``; :meth:`close` (or leaving the ``with``
    block cleanly) writes the final metadata and moves it into place. On an exception
    or ``KeyboardInterrupt`` inside the ``with`` block, or after :meth:`abort`, neither
    ``path`` nor a temporary file is left behind.

    Parameters
    ----------
    path : str or path-like
        Output file. Its folder must exist.
    latent_dim : int
        Size of each latent vector.
    metadata : dict, optional
        JSON-serialisable facts to record under the ``bafo`` key, e.g.
        ``model_fingerprint``, ``attribute_schema``, ``source_fingerprint``. The writer
        adds ``format``, ``format_version``, ``package_version``, ``latent_dim``,
        ``row_count``, ``created_at`` (UTC, ISO 8601), ``labels_included``,
        ``label_columns``, ``id_type`` and ``split_included``; these keys may not be
        passed.
    id_type : {"int64", "string"}, default="int64"
        Type of the ``id`` column: row numbers, or non-sensitive string identifiers.
    label_schema : dict of str to Arrow type or dtype, optional
        Label columns to store, e.g. ``{"age": "float64", "gender": "string"}``. None
        (the default) stores no labels: the file then holds no sensitive attribute.
    include_split : bool, default=False
        Store a ``split`` string column; every batch must then pass ``split``.
    overwrite : bool, default=False
        Replace an existing ``path`` instead of raising ``FileExistsError``.
    row_group_size : int, default=65536
        Rows per Parquet row group, and the most rows held in memory between batches.
    compression : str, default="snappy"
        Parquet compression codec.
    allow_paths : bool, default=False
        Permit column names, string ids, labels and metadata values that look like
        file paths or file names. UTKFace file names spell out age, gender and
        ethnicity, so they are refused by default.

    Attributes
    ----------
    schema : pyarrow.Schema
        Schema of the rows written (without the metadata).
    metadata : dict or None
        The final ``bafo`` metadata, set by :meth:`close`.

    Examples
    --------
    >>> import numpy as np
    >>> with LatentParquetWriter("z.parquet", 48, metadata={"model": "m1"}) as w:  # doctest: +SKIP
    ...     w.write_batch(np.arange(2), np.zeros((2, 48), np.float32))
    """

    def __init__(
        self,
        path: str | os.PathLike,
        latent_dim: int,
        *,
        metadata: Mapping[str, Any] | None = None,
        id_type: str = "int64",
        label_schema: Mapping[str, Any] | None = None,
        include_split: bool = False,
        overwrite: bool = False,
        row_group_size: int = DEFAULT_ROW_GROUP_SIZE,
        compression: str = "snappy",
        allow_paths: bool = False,
    ) -> None:
        if (
            isinstance(latent_dim, bool)
            or not isinstance(latent_dim, (int, np.integer))
            or latent_dim < 1
        ):
            raise ValueError(f"latent_dim must be a positive integer, got {latent_dim!r}")
        if id_type not in ("int64", "string"):
            raise ValueError(f"id_type must be 'int64' or 'string', got {id_type!r}")
        if (
            isinstance(row_group_size, bool)
            or not isinstance(row_group_size, (int, np.integer))
            or row_group_size < 1
        ):
            raise ValueError(f"row_group_size must be a positive integer, got {row_group_size!r}")
        self.latent_dim = int(latent_dim)
        self.id_type = id_type
        self.include_split = bool(include_split)
        self.row_group_size = int(row_group_size)
        self.allow_paths = allow_paths
        self._label_types = self._check_label_schema(label_schema)
        self._user_metadata = self._check_metadata(metadata)
        self.schema = self._build_schema()
        self.metadata: dict | None = None

        self._buffer: list[pa.RecordBatch] = []
        self._buffered_rows = 0
        self._rows_accepted = 0
        self._n_batches = 0
        self._closed = False

        self._target = AtomicFile(path, overwrite=overwrite)
        self.path = self._target.path
        # Provisional metadata (row_count unknown) is replaced at close where pyarrow
        # can; older pyarrow keeps it and readers take the row count from the footer.
        provisional = self._final_metadata(row_count=None)
        try:
            self._writer = pq.ParquetWriter(
                self._target.tmp_path,
                self.schema.with_metadata({METADATA_KEY: json.dumps(provisional, sort_keys=True)}),
                compression=compression,
            )
        except BaseException:
            self._target.abort()
            raise

    # -- validation ------------------------------------------------------------------

    def _check_label_schema(self, label_schema: Mapping[str, Any] | None) -> dict[str, pa.DataType]:
        if label_schema is None:
            return {}
        types = {}
        for name, dtype in label_schema.items():
            if not isinstance(name, str) or not name:
                raise ValueError(f"label column names must be non-empty strings, got {name!r}")
            if name in _STRUCTURAL_COLUMNS:
                raise ValueError(
                    f"label column {name!r} clashes with the reserved column of that name"
                )
            if not self.allow_paths and _name_looks_like_path(name):
                raise ValueError(
                    f"label column {name!r} looks like a file path or file name column; file "
                    "names can encode sensitive attributes. Pass allow_paths=True to store it"
                )
            types[name] = _to_arrow_type(name, dtype)
        return types

    def _check_metadata(self, metadata: Mapping[str, Any] | None) -> dict[str, Any]:
        metadata = dict(metadata or {})
        clashes = sorted(_WRITER_KEYS.intersection(metadata))
        if clashes:
            raise ValueError(f"metadata keys {clashes} are set by the writer and may not be passed")
        try:
            json.dumps(metadata)
        except (TypeError, ValueError) as exc:
            raise TypeError(f"metadata must be JSON-serialisable: {exc}") from exc
        if not self.allow_paths:
            where = _find_pathlike_metadata(metadata, "metadata")
            if where is not None:
                raise ValueError(
                    f"{where} looks like a file path or file name; exported datasets carry no "
                    "source paths. Record a fingerprint instead, or pass allow_paths=True"
                )
        return metadata

    def _build_schema(self) -> pa.Schema:
        id_type = pa.int64() if self.id_type == "int64" else pa.string()
        fields = [
            pa.field(ID_COLUMN, id_type, nullable=False),
            # "element" is the child name Parquet's compliant nested types read back as.
            pa.field(
                LATENT_COLUMN,
                pa.list_(pa.field("element", pa.float32()), self.latent_dim),
                nullable=False,
            ),
        ]
        if self.include_split:
            fields.append(pa.field(SPLIT_COLUMN, pa.string(), nullable=False))
        fields.extend(pa.field(name, typ) for name, typ in self._label_types.items())
        return pa.schema(fields)

    def _final_metadata(self, row_count: int | None) -> dict[str, Any]:
        return {
            **self._user_metadata,
            "format": FORMAT_NAME,
            "format_version": FORMAT_VERSION,
            "package_version": package_version(),
            "latent_dim": self.latent_dim,
            "row_count": row_count,
            "created_at": _utc_now(),
            "labels_included": bool(self._label_types),
            "label_columns": list(self._label_types),
            "id_type": self.id_type,
            "split_included": self.include_split,
        }

    # -- conversion of one batch -------------------------------------------------------

    def _ids_array(self, ids: Any, n: int, where: str) -> pa.Array:
        if isinstance(ids, (pa.Array, pa.ChunkedArray)):
            ids = ids.to_numpy(zero_copy_only=False)
        if self.id_type == "int64":
            arr = np.asarray(ids)
            if arr.ndim != 1 or len(arr) != n:
                raise ValueError(
                    f"{where}: ids must be 1-D with {n} entries (one per latent), "
                    f"got shape {arr.shape}"
                )
            if arr.dtype.kind not in "iu":
                raise TypeError(
                    f"{where}: id_type='int64' needs integer ids, got dtype {arr.dtype}"
                )
            if arr.dtype.kind == "u" and n and arr.max() > np.iinfo(np.int64).max:
                raise ValueError(f"{where}: ids exceed the int64 range")
            return pa.array(arr.astype(np.int64, copy=False), type=pa.int64())
        arr = _string_column(ids, n, where, plural="ids", singular="id", type_hint="id_type='string' needs str ids")
        self._refuse_pathlike_values(arr, f"{where}: id")
        return arr

    def _latent_array(self, latents: Any, where: str) -> pa.Array:
        z = np.asarray(latents)
        if z.ndim != 2 or z.shape[1] != self.latent_dim:
            raise ValueError(
                f"{where}: latents must have shape (n, {self.latent_dim}), got {z.shape}"
            )
        if z.dtype.kind != "f":
            raise TypeError(f"{where}: latents must be floating point, got dtype {z.dtype}")
        z = np.ascontiguousarray(z, dtype=np.float32)
        finite = np.isfinite(z).all(axis=1)
        if not finite.all():
            row = int(np.flatnonzero(~finite)[0])
            raise ValueError(
                f"{where}: latent at row {row} of the batch is not finite (NaN or inf)"
            )
        return pa.FixedSizeListArray.from_arrays(
            pa.array(z.reshape(-1)), type=self.schema.field(LATENT_COLUMN).type
        )

    def _split_array(self, split: Any, n: int, where: str) -> pa.Array:
        if split is None:
            raise ValueError(f"{where}: the writer was opened with include_split=True, pass split=")
        return _string_column(split, n, where, plural="split", singular="split", type_hint="split values must be str")

    def _label_arrays(self, labels: pd.DataFrame | None, n: int, where: str) -> list[pa.Array]:
        if not self._label_types:
            if labels is not None:
                raise ValueError(
                    f"{where}: labels were passed but the writer was opened without label_schema "
                    "(labels are left out by default for privacy); declare them to store them"
                )
            return []
        if labels is None:
            raise ValueError(
                f"{where}: the writer stores labels {list(self._label_types)}, pass labels="
            )
        if not isinstance(labels, pd.DataFrame):
            raise TypeError(
                f"{where}: labels must be a pandas DataFrame, got {type(labels).__name__}"
            )
        if len(labels) != n:
            raise ValueError(
                f"{where}: labels must have {n} rows (one per latent), got {len(labels)}"
            )
        missing = [name for name in self._label_types if name not in labels.columns]
        if missing:
            raise ValueError(f"{where}: labels lack the declared columns {missing}")
        arrays = []
        for name, typ in self._label_types.items():
            column = labels[name]
            try:
                arr = pa.Array.from_pandas(column, type=typ)
            except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError):
                # The Arrow message would quote the offending value; keep labels out of logs.
                raise TypeError(
                    f"{where}: label column {name!r} (dtype {column.dtype}) "
                    f"does not convert to {typ}"
                ) from None
            self._refuse_pathlike_values(arr, f"{where}: label column {name!r}")
            arrays.append(arr)
        return arrays

    def _refuse_pathlike_values(self, arr: pa.Array, what: str) -> None:
        if self.allow_paths:
            return
        row = _first_pathlike_row(arr)
        if row is not None:
            raise ValueError(
                f"{what} at row {row} of the batch looks like a file path or file name; file "
                "names can encode sensitive attributes. Pass allow_paths=True to store it anyway"
            )

    # -- public API --------------------------------------------------------------------

    @property
    def n_rows(self) -> int:
        """Rows accepted so far (written or buffered)."""
        return self._rows_accepted

    @property
    def buffered_rows(self) -> int:
        """Rows held in memory, waiting for a full row group."""
        return self._buffered_rows

    def write_batch(
        self,
        ids: Any,
        latents: Any,
        *,
        labels: pd.DataFrame | None = None,
        split: Any = None,
    ) -> None:
        """Append one batch of rows.

        Parameters
        ----------
        ids : array-like of shape (n,)
            Integers (``id_type="int64"``) or strings (``id_type="string"``).
        latents : array-like of shape (n, latent_dim)
            Floating point; stored as float32. Must be finite.
        labels : DataFrame of n rows, optional
            Required when the writer has a ``label_schema``, refused otherwise. Only
            the declared columns are stored; others are ignored.
        split : array-like of str of shape (n,), optional
            Required when ``include_split=True``, ignored otherwise.

        Raises
        ------
        ValueError, TypeError
            On a bad shape, dtype, length or value; the message names the batch (and
            its global row range) and the expected form. The writer stays usable.
        """
        if self._closed:
            raise RuntimeError(f"{self.path}: write_batch called after close() or abort()")
        z = np.asarray(latents)
        n = z.shape[0] if z.ndim >= 1 else 0
        where = (
            f"batch {self._n_batches} (rows {self._rows_accepted}-{self._rows_accepted + n - 1})"
        )
        latent_array = self._latent_array(z, where)
        arrays = [self._ids_array(ids, n, where), latent_array]
        if self.include_split:
            arrays.append(self._split_array(split, n, where))
        arrays.extend(self._label_arrays(labels, n, where))
        batch = pa.RecordBatch.from_arrays(arrays, schema=self.schema)

        self._n_batches += 1
        self._rows_accepted += n
        if n:
            self._buffer.append(batch)
            self._buffered_rows += n
        if self._buffered_rows >= self.row_group_size:
            self._flush(final=False)

    def _flush(self, *, final: bool) -> None:
        if not self._buffered_rows:
            return
        table = pa.Table.from_batches(self._buffer, schema=self.schema)
        size = self.row_group_size
        n_out = len(table) if final else (len(table) // size) * size
        self._writer.write_table(table.slice(0, n_out), row_group_size=size)
        rest = table.slice(n_out)
        self._buffer = rest.to_batches()
        self._buffered_rows = len(rest)

    def close(self) -> dict:
        """Write the remaining rows and the final metadata, then move the file into place.

        Returns
        -------
        dict
            The final ``bafo`` metadata (also stored as :attr:`metadata`).
        """
        if self._closed:
            if self.metadata is None:
                raise RuntimeError(f"{self.path}: the writer was aborted, nothing was written")
            return self.metadata
        try:
            self._flush(final=True)
            final = self._final_metadata(row_count=self._rows_accepted)
            if hasattr(self._writer, "add_key_value_metadata"):  # pyarrow >= 17
                text = json.dumps(final, sort_keys=True)
                # Arrow readers take schema metadata from the serialised schema stored at
                # open, so that copy is replaced too (same encoding Arrow itself writes).
                schema = self.schema.with_metadata({METADATA_KEY: text})
                self._writer.add_key_value_metadata(
                    {
                        METADATA_KEY: text,
                        "ARROW:schema": base64.b64encode(schema.serialize().to_pybytes()),
                    }
                )
            self._writer.close()
            self._target.commit()
        except BaseException:
            self.abort()
            raise
        self._closed = True
        self._buffer = []
        self.metadata = final
        return final

    def abort(self) -> None:
        """Discard everything: no output file and no temporary file remain."""
        self._closed = True
        self._buffer = []
        self._buffered_rows = 0
        try:
            self._writer.close()
        except Exception:  # the file is being thrown away; a failing close changes nothing
            pass
        finally:
            self._target.abort()

    def __enter__(self) -> LatentParquetWriter:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._closed:  # closed or aborted explicitly inside the block
            return
        if exc_type is None:
            self.close()
        else:
            self.abort()


def _unpack_batch(batch: Any, index: int) -> tuple[Any, Any, Any, Any]:
    if not isinstance(batch, (tuple, list)) or not 2 <= len(batch) <= 4:
        raise TypeError(
            f"batch {index}: expected a tuple (ids, latents[, labels[, split]]), "
            f"got {type(batch).__name__}"
        )
    ids, latents, labels, split = (*batch, None, None)[:4]
    return ids, latents, labels, split


def write_latents(
    path: str | os.PathLike,
    batches: Iterable[tuple],
    *,
    latent_dim: int | None = None,
    metadata: Mapping[str, Any] | None = None,
    id_type: str = "int64",
    label_schema: Mapping[str, Any] | None = None,
    include_split: bool = False,
    overwrite: bool = False,
    row_group_size: int = DEFAULT_ROW_GROUP_SIZE,
    compression: str = "snappy",
    allow_paths: bool = False,
) -> dict:
    """Write an iterable of batches to a latent Parquet file, atomically.

    Parameters
    ----------
    path : str or path-like
        Output file.
    batches : iterable of tuple
        ``(ids, latents)``, ``(ids, latents, labels)`` or ``(ids, latents, labels,
        split)`` tuples, consumed one at a time (a generator keeps memory bounded).
        If the iterable raises, no file is written.
    latent_dim : int, optional
        Latent size; inferred from the first batch when omitted.
    metadata, id_type, label_schema, include_split, overwrite, row_group_size, \
compression, allow_paths
        See :class:`LatentParquetWriter`.

    Returns
    -------
    dict
        The final ``bafo`` metadata written to the file.
    """
    iterator = iter(batches)
    if latent_dim is None:
        try:
            first = next(iterator)
        except StopIteration:
            raise ValueError("batches is empty: pass latent_dim to write an empty file") from None
        shape = np.shape(_unpack_batch(first, 0)[1])
        if len(shape) != 2:
            raise ValueError(f"batch 0: latents must have shape (n, latent_dim), got {shape}")
        latent_dim = shape[1]
        iterator = itertools.chain([first], iterator)
    with LatentParquetWriter(
        path,
        latent_dim,
        metadata=metadata,
        id_type=id_type,
        label_schema=label_schema,
        include_split=include_split,
        overwrite=overwrite,
        row_group_size=row_group_size,
        compression=compression,
        allow_paths=allow_paths,
    ) as writer:
        for index, batch in enumerate(iterator):
            ids, latents, labels, split = _unpack_batch(batch, index)
            writer.write_batch(ids, latents, labels=labels, split=split)
    return writer.metadata


# -- reading: a file, a folder of files (plain or hive-partitioned), a glob, a URI --------

#: Suffixes of Parquet data files in folders and globs. Files whose names start with ``_`` or
#: ``.`` (job files, ``_SUCCESS``, temporary files) are not data, as Spark and Hive have it, and
#: neither are files in such folders below the dataset's base (``_temporary/``, ``.staging/``).
PARQUET_SUFFIXES = (".parquet", ".pq")


def _is_data_file(path: str, base: str) -> bool:
    name = PurePosixPath(path).name
    if name.startswith(("_", ".")) or not name.lower().endswith(PARQUET_SUFFIXES):
        return False
    prefix = base.rstrip("/") + "/"
    folders = path[len(prefix) :].split("/")[:-1] if path.startswith(prefix) else []
    return not any(folder.startswith(("_", ".")) for folder in folders)


def _first_glob_part(path: str) -> int:
    parts = path.split("/")
    return next((i for i, part in enumerate(parts) if has_glob(part)), len(parts))


@dataclass
class _Parquet:
    """An opened source: one file (read through its footer) or a dataset of files."""

    name: str
    schema: pa.Schema
    metadata: dict
    file: pq.ParquetFile | None = None
    dataset: pads.Dataset | None = None

    def read(self, columns: Sequence[str] | None, row_filter: pc.Expression | None = None) -> pa.Table:
        if self.file is not None:
            table = self.file.read(columns=None if columns is None else list(columns))
            return table if row_filter is None else table.filter(row_filter)
        return self.dataset.to_table(columns=None if columns is None else list(columns), filter=row_filter)

    def batches(self, columns: Sequence[str], batch_size: int) -> Iterator[pa.RecordBatch]:
        if self.file is not None:
            return self.file.iter_batches(batch_size=batch_size, columns=list(columns))
        return self.dataset.to_batches(columns=list(columns), batch_size=batch_size)


def _open(source: str | os.PathLike) -> _Parquet:
    """Open a Parquet file, or the Parquet files of a folder (searched recursively), a glob or a URI.

    Hive partition keys in folder names (``split=test/``) become columns of a dataset.
    """
    name = os.fspath(source)
    filesystem, path = resolve_filesystem(source)
    if has_glob(path):
        base = "/".join(path.split("/")[: _first_glob_part(path)]) or "/"
        files = [f for f in glob_files(filesystem, path) if _is_data_file(f, base)]
    else:
        info = filesystem.get_file_info(path)
        if info.type == pafs.FileType.NotFound:
            raise FileNotFoundError(f"{name} does not exist")
        if info.type == pafs.FileType.File:
            try:
                parquet_file = pq.ParquetFile(path, filesystem=filesystem)
            except (pa.ArrowException, OSError) as exc:  # a damaged file can raise any of pyarrow's errors
                raise ValueError(f"{name} is not a readable Parquet file: {exc}") from exc
            meta = _parse_metadata(name, parquet_file.metadata)
            return _Parquet(name, parquet_file.schema_arrow, meta, file=parquet_file)
        files = sorted(f for f in glob_files(filesystem, path.rstrip("/") + "/**") if _is_data_file(f, path))
        base = path
    if not files:
        raise FileNotFoundError(f"{name}: no Parquet files (*.parquet, *.pq) found there")
    try:
        dataset = pads.dataset(
            files, filesystem=filesystem, format="parquet", partition_base_dir=base,
            partitioning=pads.HivePartitioning.discover(infer_dictionary=False),
        )
        meta = _parse_metadata(files[0], pq.ParquetFile(files[0], filesystem=filesystem).metadata)
        if meta:
            meta["row_count"] = dataset.count_rows()  # the dataset's, not its first file's
    except (pa.ArrowException, OSError) as exc:
        raise ValueError(f"{name} is not a readable Parquet dataset: {exc}") from exc
    return _Parquet(name, dataset.schema, meta, dataset=dataset)


def _parse_metadata(path: str, file_meta: pq.FileMetaData) -> dict:
    raw = (file_meta.metadata or {}).get(METADATA_KEY.encode())
    if raw is None:
        return {}
    try:
        meta = json.loads(raw)
    except ValueError as exc:
        raise ValueError(f"{path}: the {METADATA_KEY!r} metadata is not valid JSON") from exc
    if not isinstance(meta, dict):
        raise ValueError(f"{path}: the {METADATA_KEY!r} metadata is not a JSON object")
    version = meta.get("format_version")
    if isinstance(version, int) and version > FORMAT_VERSION:
        raise ValueError(
            f"{path} uses latent format version {version}; this bafo-pipeline reads up to "
            f"{FORMAT_VERSION}. Upgrade bafo-pipeline"
        )
    if meta.get("row_count") is None:  # written by pyarrow < 17, see LatentParquetWriter
        meta["row_count"] = file_meta.num_rows
    elif meta["row_count"] != file_meta.num_rows:
        warnings.warn(
            f"{path}: metadata says {meta['row_count']} rows but the file holds "
            f"{file_meta.num_rows}; was it modified after writing?",
            stacklevel=3,
        )
    return meta


def read_metadata(path: str | os.PathLike) -> dict:
    """Read the ``bafo`` metadata of a latent Parquet file or dataset (footers only, no data).

    Parameters
    ----------
    path : str or path-like
        A Parquet file, a folder of them (plain or hive-partitioned), a glob or a URI;
        for several files, the first file's metadata with the dataset's ``row_count``.

    Returns
    -------
    dict
        The metadata written by :class:`LatentParquetWriter`; empty for Parquet
        without ``bafo`` metadata.

    Raises
    ------
    FileNotFoundError
        If nothing exists there, or a folder or glob holds no Parquet file.
    ValueError
        If it is not Parquet, its metadata is corrupt, or its format version is
        newer than this package reads.
    """
    return _open(path).metadata


def _columns_to_read(
    path: str, schema: pa.Schema, meta: dict, columns: Sequence[str] | None
) -> tuple[list[str], list[str]]:
    """Return (all columns to read, label columns among them)."""
    names = schema.names
    if LATENT_COLUMN not in names:
        raise ValueError(
            f"{path} has no {LATENT_COLUMN!r} column, so it is not a latent dataset "
            f"(columns: {names})"
        )
    available = [name for name in names if name not in _STRUCTURAL_COLUMNS]
    if isinstance(columns, str):
        raise TypeError("columns must be a list of column names, not a single string")
    if columns is None:
        labels = available
    else:
        unknown = [c for c in columns if c not in names]
        if unknown:
            raise ValueError(
                f"{path} has no columns {unknown}; label columns available: {available}"
            )
        labels = [c for c in columns if c not in _STRUCTURAL_COLUMNS]
    structural = [name for name in _STRUCTURAL_COLUMNS if name in names]
    return structural + labels, labels


def _latent_matrix(
    path: str, column: pa.ChunkedArray, first_row: int, meta: dict, name: str = LATENT_COLUMN
) -> np.ndarray:
    """A list-of-numbers column as a float32 matrix, through Arrow buffers; errors name the file and row."""
    typ = column.type
    if not (pa.types.is_fixed_size_list(typ) or pa.types.is_list(typ) or pa.types.is_large_list(typ)):
        raise ValueError(f"{path}: column {name!r} has type {typ}, expected a list of numbers")
    if not (pa.types.is_floating(typ.value_type) or pa.types.is_integer(typ.value_type)):
        raise ValueError(f"{path}: column {name!r} holds {typ.value_type}, expected numbers")
    if column.null_count:
        row = int(np.flatnonzero(column.is_null().to_numpy(zero_copy_only=False))[0])
        raise ValueError(f"{path}: {name!r} at row {first_row + row} is missing {_ROWS_FROM_ZERO}")
    if pa.types.is_fixed_size_list(typ):
        dim = typ.list_size
    else:
        lengths = pc.list_value_length(column).to_numpy(zero_copy_only=False)
        dim = int(lengths[0]) if len(lengths) else int(meta.get("latent_dim", 0))
        if (lengths != dim).any():
            row = int(np.flatnonzero(lengths != dim)[0])
            raise ValueError(
                f"{path}: row {first_row + row} has {lengths[row]} {name!r} values, row {first_row} has {dim} "
                f"{_ROWS_FROM_ZERO}"
            )

    out = np.empty((len(column), dim), dtype=np.float32)
    start = 0
    for chunk in column.chunks:
        values = chunk.flatten()  # respects slicing offsets, unlike .values
        if values.null_count:
            row = start + int(
                np.flatnonzero(pc.is_null(values).to_numpy(zero_copy_only=False))[0]
            ) // max(dim, 1)
            raise ValueError(f"{path}: {name!r} at row {first_row + row} has a missing element {_ROWS_FROM_ZERO}")
        stop = start + len(chunk)
        with np.errstate(over="ignore"):  # numbers beyond float32 become inf, refused below with their row
            out[start:stop] = values.to_numpy(zero_copy_only=False).reshape(len(chunk), dim)
        start = stop
    bad = ~np.isfinite(out).all(axis=1)
    if bad.any():
        raise ValueError(
            f"{path}: row {first_row + int(np.flatnonzero(bad)[0])} has a non-finite {name!r} value {_ROWS_FROM_ZERO}"
        )
    return out


def _string_numpy(column: pa.ChunkedArray) -> np.ndarray:
    if pa.types.is_dictionary(column.type):
        column = column.cast(column.type.value_type)
    return column.to_numpy(zero_copy_only=False)


def _to_latent_table(
    path: str, table: pa.Table, label_columns: list[str], meta: dict, first_row: int
) -> LatentTable:
    n = table.num_rows
    latents = _latent_matrix(path, table.column(LATENT_COLUMN), first_row, meta)
    if ID_COLUMN in table.column_names:
        ids = _string_numpy(table.column(ID_COLUMN))
    else:  # generic file: number the rows
        ids = np.arange(first_row, first_row + n, dtype=np.int64)
    split = (
        _string_numpy(table.column(SPLIT_COLUMN)) if SPLIT_COLUMN in table.column_names else None
    )
    labels = table.select(label_columns).to_pandas() if label_columns else None
    return LatentTable(ids=ids, latents=latents, labels=labels, split=split, metadata=meta)


def read_latents(path: str | os.PathLike, *, columns: Sequence[str] | None = None) -> LatentTable:
    """Read a latent Parquet file or dataset into NumPy arrays.

    The ``latent`` column is converted to a float32 matrix through Arrow buffers, with
    no per-row Python objects. Parquet files from other tools are accepted when they
    have a ``latent`` column of equal-length float lists; their metadata is ``{}`` and,
    without an ``id`` column, ids are row numbers.

    Parameters
    ----------
    path : str or path-like
        A Parquet file, a folder of them (plain or hive-partitioned, as
        ``bafo encode --engine ray`` writes), a glob or a URI.
    columns : list of str, optional
        Label columns to load. None loads all of them; ``[]`` loads none. ``id``,
        ``latent`` and (when present) ``split`` are always loaded.

    Returns
    -------
    LatentTable
        ids, latents, labels, split and metadata.

    Raises
    ------
    FileNotFoundError
        If nothing exists there.
    ValueError
        If the file is not Parquet, has no usable ``latent`` column, has missing
        latents, or a requested column does not exist.
    """
    source = _open(path)
    to_read, label_columns = _columns_to_read(source.name, source.schema, source.metadata, columns)
    return _to_latent_table(source.name, source.read(to_read), label_columns, source.metadata, first_row=0)


def iter_latent_batches(
    path: str | os.PathLike,
    batch_size: int = DEFAULT_ROW_GROUP_SIZE,
    *,
    columns: Sequence[str] | None = None,
) -> Iterator[LatentTable]:
    """Stream a latent Parquet file or dataset in batches of at most ``batch_size`` rows.

    Parameters
    ----------
    path : str or path-like
        As in :func:`read_latents`.
    batch_size : int, default=65536
        Largest number of rows per yielded batch.
    columns : list of str, optional
        Label columns to load, as in :func:`read_latents`.

    Yields
    ------
    LatentTable
        Consecutive rows. All share the same ``metadata`` dict.
    """
    if (
        isinstance(batch_size, bool)
        or not isinstance(batch_size, (int, np.integer))
        or batch_size < 1
    ):
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
    source = _open(path)
    to_read, label_columns = _columns_to_read(source.name, source.schema, source.metadata, columns)
    first_row = 0
    for batch in source.batches(to_read, int(batch_size)):
        table = pa.Table.from_batches([batch])
        yield _to_latent_table(source.name, table, label_columns, source.metadata, first_row)
        first_row += batch.num_rows


def _is_number_list(typ: pa.DataType) -> bool:
    return (pa.types.is_list(typ) or pa.types.is_large_list(typ) or pa.types.is_fixed_size_list(typ)) and (
        pa.types.is_floating(typ.value_type) or pa.types.is_integer(typ.value_type)
    )


def embedding_column(schema: pa.Schema, latent_column: str | None = None) -> str | None:
    """The list column holding the embedding, or None when it is one numeric column per dimension.

    Parameters
    ----------
    schema : pyarrow.Schema
        Of a file or dataset (:func:`read_schema`).
    latent_column : str, optional
        The column to use; default ``latent``, else the only list-of-numbers column
        (another tool's ``embedding``, say).

    Raises
    ------
    ValueError
        If ``latent_column`` is given but missing or not a list of numbers, or several list
        columns could be the embedding.
    """
    if latent_column is not None:
        if latent_column not in schema.names:
            raise ValueError(f"no embedding column {latent_column!r}; columns are {schema.names}")
        if not _is_number_list(schema.field(latent_column).type):
            raise ValueError(
                f"column {latent_column!r} is a {schema.field(latent_column).type}, not a list of numbers"
            )
        return latent_column
    if LATENT_COLUMN in schema.names and _is_number_list(schema.field(LATENT_COLUMN).type):
        return LATENT_COLUMN
    lists = [field.name for field in schema if _is_number_list(field.type)]
    if len(lists) > 1:
        raise ValueError(f"several list columns could be the embedding ({lists}); name one with --latent-column")
    return lists[0] if lists else None


_NUMBERED = re.compile(r"^(.*?)(\d+)$")


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
        f.name
        for f in schema
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


def embedding_matrix(column: pa.ChunkedArray, source: str, name: str) -> np.ndarray:
    """A list-of-numbers column as a float32 matrix of shape ``(rows, length)``.

    Parameters
    ----------
    column : pyarrow.ChunkedArray
        A list, large list or fixed-size list of floats or integers.
    source : str
        Where the column comes from, for error messages.
    name : str
        The column's name, for error messages.

    Raises
    ------
    ValueError
        Naming the source and row: a missing list or element, a non-finite value, or lists of
        different lengths.
    """
    return _latent_matrix(source, column, 0, {}, name)


def read_schema(source: str | os.PathLike) -> pa.Schema:
    """The Arrow schema of a Parquet file or dataset (hive partition keys included), reading no data."""
    return _open(source).schema


def read_table(
    source: str | os.PathLike,
    columns: Sequence[str] | None = None,
    *,
    ids: Sequence | None = None,
    id_column: str = ID_COLUMN,
) -> pa.Table:
    """Some columns of a Parquet file or dataset, optionally only the rows whose id is in ``ids``.

    Parameters
    ----------
    source : str or path-like
        A Parquet file, a folder of them (plain or hive-partitioned), a glob or a URI.
    columns : sequence of str, optional
        Columns to read (hive partition keys included); all by default.
    ids : sequence, optional
        Keep only these ids (filtered while reading, so a sample of a dataset larger than
        memory costs the memory of the sample).
    id_column : str, default="id"

    Raises
    ------
    FileNotFoundError, ValueError
        As :func:`read_latents`; ``ValueError`` also for a missing column.
    """
    parquet = _open(source)
    _check_columns(parquet, [*(columns or []), *([id_column] if ids is not None else [])])
    return parquet.read(columns, None if ids is None else _id_filter(parquet, id_column, ids))


def _check_columns(parquet: _Parquet, columns: Sequence[str]) -> None:
    missing = [c for c in columns if c not in parquet.schema.names]
    if missing:
        raise ValueError(f"{parquet.name}: no column(s) {missing}; columns are {parquet.schema.names}")


def _id_filter(parquet: _Parquet, id_column: str, ids: Sequence) -> pc.Expression:
    try:
        values = pa.array(list(ids)).cast(parquet.schema.field(id_column).type)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError, pa.ArrowTypeError):
        raise ValueError(f"{parquet.name}: the ids to read do not convert to the type of column {id_column!r}") from None
    return pc.field(id_column).isin(values)


def read_embedding(
    path: str | os.PathLike,
    *,
    id_column: str = ID_COLUMN,
    latent_column: str | None = None,
    ids: Sequence | None = None,
    exclude: Sequence[str] = (),
) -> tuple[np.ndarray, np.ndarray]:
    """Ids and an embedding matrix from Parquet, ours or another tool's (what the audit reads).

    The embedding is a list column of numbers of one length (fixed-size or variable, as
    :class:`LatentParquetWriter` writes it): :func:`embedding_column` picks it. Without
    one, the embedding is one numeric column per dimension, as many tools write it:
    :func:`dimension_columns` picks them (the numbered family ``dim_0 … dim_47``, else every
    numeric column), never the id or the ``exclude`` columns.

    Parameters
    ----------
    path : str or path-like
        A Parquet file, a folder of them (plain or hive-partitioned), a glob or a URI.
    id_column : str, default="id"
    latent_column : str, optional
        The embedding column (e.g. ``"embedding"``); default as :func:`embedding_column`.
    ids : sequence, optional
        Read only the rows with these ids (a sample of a dataset too large for memory).
    exclude : sequence of str
        Columns that are never embedding dimensions (the labels).

    Returns
    -------
    ids : ndarray of shape (n,)
    Z : ndarray of shape (n, d), float32

    Raises
    ------
    FileNotFoundError
        If nothing exists there.
    ValueError
        If it is not Parquet, the id column is missing, the embedding column is
        missing or ambiguous, the list lengths differ, values are missing or not
        finite, or no numeric columns are found; the message names the source and row.
    """
    parquet = _open(path)
    names = parquet.schema.names
    if id_column not in names:
        raise ValueError(f"{parquet.name}: no id column {id_column!r}; columns are {names}")
    try:
        column = embedding_column(parquet.schema, latent_column)
    except ValueError as exc:
        raise ValueError(f"{parquet.name}: {exc}") from None
    row_filter = None if ids is None else _id_filter(parquet, id_column, ids)
    if column is not None:
        table = parquet.read([id_column, column], row_filter)
        Z = _latent_matrix(parquet.name, table.column(column), 0, parquet.metadata, column)
    else:
        numeric, _ = dimension_columns(parquet.schema, [id_column, *exclude])
        if not numeric:
            raise ValueError(
                f"{parquet.name}: no list column holding the embedding (name one with latent_column) and no "
                f"numeric feature columns; columns are {names}"
            )
        table = parquet.read([id_column, *numeric], row_filter)
        Z = np.column_stack([table.column(c).to_numpy(zero_copy_only=False) for c in numeric]).astype(np.float32)
    bad = ~np.isfinite(Z).all(axis=1)
    if bad.any():
        counted = _ROWS_FROM_ZERO if row_filter is None else "(rows counted from 0 among those with the requested ids)"
        raise ValueError(
            f"{parquet.name}: row {int(np.flatnonzero(bad)[0])} has a missing or non-finite embedding value {counted}"
        )
    return np.asarray(_string_numpy(table.column(id_column))), Z
