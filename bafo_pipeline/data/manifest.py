"""Load labeled images listed in a CSV or Parquet manifest.

A manifest is a table with one row per image: a column of image paths
(relative paths are taken relative to the manifest's folder) and attribute
columns. Bad rows (missing values, missing or unreadable files, undecodable
images) are skipped and reported by row number, or stop the load when
``strict=True``.
"""

from __future__ import annotations

import os
import posixpath
from collections.abc import Callable, Sequence
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np
import pandas as pd
import pyarrow.fs as pafs

from .._utils.filesystems import is_local, is_uri, join, resolve_filesystem, within
from ..attributes import DEFAULT_SENSITIVE
from .dataset import FaceDataset, LoadReport
from .files import DEFAULT_MAX_FILE_BYTES
from .images import DEFAULT_MAX_PIXELS, ImageDecodeError, Size
from .splits import EMPTY_CONTENT_HASH, dedupe_by_hash, hash_files
from .tables import PRIVATE_COLUMNS, dataset_from_table

__all__ = ["load_manifest", "read_manifest_table", "scan_manifest"]

_RESERVED = PRIVATE_COLUMNS
_READERS = {".csv": pd.read_csv, ".parquet": pd.read_parquet, ".pq": pd.read_parquet}


def read_manifest_table(path: str | os.PathLike) -> pd.DataFrame:
    """Read a manifest table, choosing CSV or Parquet by the file extension.

    Parameters
    ----------
    path : str or path-like
        A ``.csv``, ``.parquet`` or ``.pq`` file, local or a URI.

    Returns
    -------
    DataFrame

    Raises
    ------
    FileNotFoundError
        If the file does not exist.
    ValueError
        If the extension is not supported or the file cannot be parsed.
    """
    filesystem, location = resolve_filesystem(path)
    suffix = PurePosixPath(location).suffix.lower()
    reader = _READERS.get(suffix)
    if reader is None:
        raise ValueError(
            f"{path}: unsupported manifest format {suffix or '(no extension)'!r}; "
            f"use one of {sorted(_READERS)}"
        )
    if filesystem.get_file_info(location).type != pafs.FileType.File:
        raise FileNotFoundError(f"manifest not found: {path}")
    try:
        with filesystem.open_input_file(location) as handle:
            return reader(handle)
    except (OSError, ValueError, pd.errors.ParserError) as err:
        raise ValueError(f"{path}: cannot read manifest: {err}") from err
    except Exception as err:  # pyarrow raises its own error types for broken Parquet
        raise ValueError(f"{path}: cannot read manifest: {type(err).__name__}: {err}") from err


def _check_columns(
    manifest: Path,
    table: pd.DataFrame,
    image_column: str,
    sensitive: Sequence[str],
    other_columns: Sequence[str] | None,
) -> list[str]:
    """Validate the column arguments against the table; return the other columns."""
    if isinstance(sensitive, str) or (other_columns is not None and isinstance(other_columns, str)):
        raise TypeError("sensitive and other_columns must be sequences of column names, not a single string")
    requested = [image_column, *sensitive, *(other_columns or [])]
    repeated = sorted({c for c in requested if requested.count(c) > 1})
    if repeated:
        raise ValueError(f"column(s) {repeated} given more than once among image_column, sensitive and other_columns")
    missing = [c for c in requested if c not in table.columns]
    if missing:
        raise ValueError(
            f"{manifest}: column(s) {missing} not found; available columns: {[str(c) for c in table.columns]}"
        )
    if other_columns is None:
        # Everything else, except names the result reserves for itself.
        return [c for c in table.columns if c not in requested and c not in _RESERVED]
    clash = [c for c in [*sensitive, *other_columns] if c in _RESERVED]
    if clash:
        raise ValueError(f"column name(s) {clash} are reserved for the loader's output; rename them in the manifest")
    return list(other_columns)


def _row_problems(
    table: pd.DataFrame, image_column: str, sensitive: Sequence[str], check_age: bool
) -> dict[int, str]:
    """First problem of each bad row (by position): empty path, missing label, non-numeric age."""
    problems: dict[int, str] = {}
    paths = table[image_column]
    for pos in np.flatnonzero(paths.isna().to_numpy() | (paths.astype(str).str.strip() == "").to_numpy()):
        problems.setdefault(int(pos), f"empty value in image column {image_column!r}")
    for column in sensitive:
        for pos in np.flatnonzero(table[column].isna().to_numpy()):
            problems.setdefault(int(pos), f"missing value in column {column!r}")
    if check_age:
        raw = table["age"]
        age = pd.to_numeric(raw, errors="coerce")
        bad = (age.isna() & raw.notna()) | ~np.isfinite(age.fillna(0)) | (age < 0)
        for pos in np.flatnonzero(bad.to_numpy()):
            problems.setdefault(int(pos), f"age {raw.iloc[pos]!r} is not a non-negative number")
    return problems


class _ManifestPaths:
    """Where a manifest's image entries point, on the manifest's own filesystem."""

    def __init__(self, manifest: str, filesystem: pafs.FileSystem, location: str, allow_outside_root: bool) -> None:
        self.filesystem = filesystem
        self.local = is_local(filesystem)
        self.base = str(Path(location).parent) if self.local else posixpath.dirname(location)
        self.real_base = os.path.realpath(self.base) if self.local else None
        self.scheme = manifest.split("://", 1)[0] if is_uri(manifest) else "file"
        self.allow_outside_root = allow_outside_root

    def resolve(self, entry: str) -> tuple[str | None, str | None]:
        """``(path, None)``, or ``(None, reason)`` for an entry leading elsewhere."""
        if is_uri(entry):
            scheme, rest = entry.split("://", 1)
            if scheme != self.scheme:
                return None, f"names another filesystem than the manifest's ({scheme}://)"
            path = rest
        elif self.local:
            path = entry if Path(entry).is_absolute() else str(Path(self.base) / entry)
        else:
            path = entry if entry.startswith("/") else join(self.base, entry)
        if self.allow_outside_root or self._inside(path):
            return path, None
        return None, "path leads outside the manifest's folder (allow_outside_root accepts it)"

    def _inside(self, path: str) -> bool:
        if not self.local:
            return within(self.base, path)
        return within(self.base, os.path.normpath(path)) and within(self.real_base, os.path.realpath(path))


def scan_manifest(
    path: str | os.PathLike,
    *,
    image_column: str = "path",
    sensitive: Sequence[str] = DEFAULT_SENSITIVE,
    other_columns: Sequence[str] | None = None,
    dedupe: str = "drop-conflicts",
    strict: bool = False,
    n_jobs: int | None = None,
    allow_outside_root: bool = False,
    max_file_bytes: int = DEFAULT_MAX_FILE_BYTES,
    hasher: Callable = hash_files,
) -> tuple[pd.DataFrame, LoadReport]:
    """Read a manifest, check every row and hash every image file, without decoding.

    Parameters
    ----------
    path : str or path-like
        A ``.csv``, ``.parquet`` or ``.pq`` table, local or a URI.
    image_column : str, default="path"
        Column of image paths: relative to the manifest's folder, absolute on its
        filesystem, or URIs of its scheme.
    sensitive : sequence of str, default=("age", "gender", "ethnicity")
        Sensitive attribute columns; rows with a missing value in any of them are skipped.
    other_columns : sequence of str or None, default=None
        Non-sensitive columns to keep; ``None`` keeps every remaining column
        (except ``path`` and ``content_hash``, which the result defines), ``[]`` none.
    dedupe : {"drop-conflicts", "keep-first", "none"}, default="drop-conflicts"
        How byte-identical images are handled; conflicts are judged on the
        sensitive columns (see :func:`~bafo_pipeline.data.splits.dedupe_by_hash`).
    strict : bool, default=False
        Raise ``ValueError`` for the first bad row (by row number) instead of skipping.
    n_jobs : int or None, default=None
        File-reading threads; ``None`` means ``min(4, cpu count)``.
    allow_outside_root : bool, default=False
        Accept image paths that lead outside the manifest's folder (``../x.jpg``,
        absolute paths elsewhere, symlinks out of it); by default such rows are
        skipped with a reason.
    max_file_bytes : int, default=64 MiB
        Larger files are skipped with a reason.
    hasher : callable, default=hash_files
        ``hasher(paths, n_jobs=..., filesystem=..., max_bytes=...) -> (hashes, reasons)``,
        as :func:`~bafo_pipeline.data.splits.hash_files` (a distributed job passes its own).

    Returns
    -------
    table : DataFrame
        Columns ``path`` (resolved file path), the sensitive columns, the
        other columns and ``content_hash``; the index, named ``row``, holds
        each row's 1-based data-row number in the manifest (the header is
        not counted). A column named ``age`` is converted to float.
    report : LoadReport
        Skipped rows as ``("row 17", "file not found")`` (the reason names no path) and the
        duplicate counts; ``n_loaded`` is the number of rows returned.

    Raises
    ------
    FileNotFoundError
        If the manifest does not exist.
    ValueError
        If the format is unsupported, a column is missing (the message lists
        the available ones), or ``strict`` and a row is bad.
    """
    manifest = os.fspath(path)
    filesystem, location = resolve_filesystem(manifest)
    raw = read_manifest_table(manifest)
    sensitive = list(sensitive)
    others = _check_columns(manifest, raw, image_column, sensitive, other_columns)
    raw = raw.reset_index(drop=True)

    row_problems = _row_problems(raw, image_column, sensitive, check_age="age" in [*sensitive, *others])
    problems = dict(row_problems)  # and then the problems with the rows' files
    ok = np.ones(len(raw), dtype=bool)
    ok[list(problems)] = False
    written = raw[image_column].where(raw[image_column].isna(), raw[image_column].astype(str))

    entries = _ManifestPaths(manifest, filesystem, location, allow_outside_root)
    resolved = {}
    values = written.tolist()  # a list: indexing a Series row by row costs more than resolving the path
    for pos in np.flatnonzero(ok):
        found, reason = entries.resolve(str(values[pos]))
        if reason is None:
            resolved[int(pos)] = found
        else:
            problems[int(pos)] = reason
            ok[pos] = False
    positions = np.flatnonzero(ok)
    resolved = [resolved[int(pos)] for pos in positions]
    hashes, reasons = hasher(resolved, n_jobs=n_jobs, filesystem=filesystem, max_bytes=max_file_bytes)
    for pos, digest, reason in zip(positions, hashes, reasons):
        if reason is None and digest == EMPTY_CONTENT_HASH:
            reason = "empty file (0 bytes)"
        if reason is not None:
            problems[int(pos)] = reason
            ok[pos] = False

    # A reason names the problem, not the file: the row names the entry, and reasons stay countable by
    # kind (paths may spell out labels, too). The strict error, for the manifest's owner, names the file.
    skipped = [(f"row {pos + 1}", problems[pos]) for pos in sorted(problems)]
    if strict and skipped:
        first = min(problems)
        entry = "" if first in row_problems else f": {values[first]}"
        raise ValueError(f"{manifest}: row {first + 1}: {problems[first]}{entry}")

    keep_hash = {int(pos): (r, h) for pos, r, h in zip(positions, resolved, hashes)}
    good = np.flatnonzero(ok)
    table = raw.iloc[good][[*sensitive, *others]].copy()
    table.insert(0, "path", [keep_hash[int(pos)][0] for pos in good])
    table["content_hash"] = [keep_hash[int(pos)][1] for pos in good]
    if "age" in table.columns:
        table["age"] = pd.to_numeric(table["age"]).astype(float)
    table.index = pd.Index(good + 1, name="row")

    report = LoadReport(skipped=skipped)
    table, counts = dedupe_by_hash(table, sensitive, dedupe)
    for name, value in counts.items():
        setattr(report, name, value)
    report.n_loaded = len(table)
    return table, report


def load_manifest(
    path: str | os.PathLike,
    image_size: Size = 56,
    *,
    image_column: str = "path",
    sensitive: Sequence[str] = DEFAULT_SENSITIVE,
    other_columns: Sequence[str] | None = None,
    strict: bool = False,
    dedupe: str = "drop-conflicts",
    n_jobs: int | None = None,
    limit: int | None = None,
    progress: Any = None,
    max_pixels: int | None = DEFAULT_MAX_PIXELS,
    allow_outside_root: bool = False,
) -> FaceDataset:
    """Load the images and attributes listed in a CSV or Parquet manifest.

    Parameters
    ----------
    path : str or path-like
        A ``.csv``, ``.parquet`` or ``.pq`` table, see :func:`scan_manifest`.
    image_size : int or (int, int), default=56
        Output ``(height, width)`` of every image.
    image_column, sensitive, other_columns, dedupe, allow_outside_root
        See :func:`scan_manifest`.
    strict : bool, default=False
        Raise for the first bad row or image instead of skipping it.
    n_jobs : int or None, default=None
        Reading and decoding threads; ``None`` means ``min(4, cpu count)``.
    limit : int or None, default=None
        Keep at most this many images, chosen by smallest content hash: a
        fixed, label-independent subset for quick runs.
    progress : callable or tqdm-like, optional
        Decoding progress, see :func:`~bafo_pipeline.data.images.decode_images`.
    max_pixels : int or None, default=DEFAULT_MAX_PIXELS
        Decompression-bomb guard, see :func:`~bafo_pipeline.data.images.decode_image`.

    Returns
    -------
    FaceDataset
        Attributes are the sensitive then the other columns; ``sources``
        holds the resolved paths; ``report`` lists what was skipped or dropped.

    Raises
    ------
    FileNotFoundError, ValueError
        As :func:`scan_manifest`; also ``ValueError`` when no image at all can be loaded.
    """
    table, report = scan_manifest(
        path,
        image_column=image_column,
        sensitive=sensitive,
        other_columns=other_columns,
        dedupe=dedupe,
        strict=strict,
        n_jobs=n_jobs,
        allow_outside_root=allow_outside_root,
    )
    columns = [c for c in table.columns if c not in _RESERVED]
    try:
        return dataset_from_table(
            table,
            report,
            source=str(path),
            sensitive=sensitive,
            attribute_columns=columns,
            describe=lambda row, _file, reason: (f"row {row}", reason),  # as scan_manifest: no path in reasons
            image_size=image_size,
            strict=strict,
            n_jobs=n_jobs,
            limit=limit,
            progress=progress,
            max_pixels=max_pixels,
        )
    except ImageDecodeError as error:  # strict: the error, for the manifest's owner, names the file too
        if not isinstance(error.__cause__, ImageDecodeError):
            raise
        raise ImageDecodeError(error.path, f"{error.__cause__.path}: {error.reason}") from error.__cause__
