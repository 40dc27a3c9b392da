"""What a distributed export reads: the list of image files (folder or manifest) and their bytes.

The driver only lists: a folder (local or any :mod:`pyarrow.fs`/fsspec URI) or a manifest
(CSV/Parquet, local or URI) becomes an :class:`InputList` of file locations, each with the
key that places it in a partition and, for labelled sources, its labels. Files are read
later, on the workers, by :func:`read_file_bytes`: regular files only, with a size cap, so a
manifest row pointing at ``/dev/zero`` or a FIFO is skipped with a reason instead of
growing memory or hanging the job.
"""

from __future__ import annotations

import errno
import os
import stat
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from ..data.utkface import parse_utkface_name
from ..io.filesystems import is_local, is_uri, join, resolve_filesystem

__all__ = [
    "DEFAULT_MAX_FILE_BYTES",
    "IMAGE_SUFFIXES",
    "InputList",
    "list_folder",
    "read_file_bytes",
    "read_manifest",
]

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp"})
#: Largest image file read (bytes); larger files are skipped with a reason.
DEFAULT_MAX_FILE_BYTES = 64 * 1024 * 1024
_MANIFEST_SUFFIXES = (".csv", ".parquet", ".pq")


@dataclass
class InputList:
    """The image files of one source, before anything is decoded.

    Attributes
    ----------
    filesystem : pyarrow.fs.FileSystem
        Where every file in ``locations`` is.
    locations : list of str
        File paths on ``filesystem``.
    source_keys : list of str
        What places each file in a partition: its path relative to the folder, or its
        manifest row number. Never written to the output.
    rows : list of int or None
        1-based data-row numbers of a manifest (the header is not counted); None for folders.
    labels : pyarrow.Table or None
        One row per file: attribute columns (UTKFace names, or the manifest's columns).
    skipped : list of (str, str)
        ``(source_key, reason)`` for entries left out while listing (bad names, empty
        paths, missing labels, paths leaving the manifest's folder).
    kind : str
        ``"folder"``, ``"utkface"`` or ``"manifest"``.
    """

    filesystem: pafs.FileSystem
    locations: list[str]
    source_keys: list[str]
    rows: list[int] | None = None
    labels: pa.Table | None = None
    skipped: list[tuple[str, str]] = field(default_factory=list)
    kind: str = "folder"

    def __len__(self) -> int:
        return len(self.locations)


def list_folder(location: str | os.PathLike, *, utkface: bool = False) -> InputList:
    """Every image file under a folder (recursively), sorted by relative path.

    Local folders are walked without following symlinked folders (a symlink loop cannot
    stall the scan); a symlinked file is kept only when its target is inside the folder.

    Parameters
    ----------
    location : str or path-like
        A local folder or a URI (``s3://bucket/faces``).
    utkface : bool, default=False
        Parse age, gender and ethnicity from UTKFace file names into ``labels``; names that
        do not parse are skipped with the parser's reason.

    Raises
    ------
    FileNotFoundError, NotADirectoryError
        If ``location`` is missing or not a folder.
    """
    filesystem, root = resolve_filesystem(location)
    info = filesystem.get_file_info(root)
    if info.type == pafs.FileType.NotFound:
        raise FileNotFoundError(f"folder not found: {location}")
    if info.type != pafs.FileType.Directory:
        raise NotADirectoryError(f"not a folder: {location}")
    names, skipped = _local_files(root) if is_local(filesystem) else _remote_files(filesystem, root)
    names = sorted(n for n in names if PurePosixPath(n).suffix.lower() in IMAGE_SUFFIXES)
    labels = None
    if utkface:
        kept, rows = [], []
        for name in names:
            try:
                rows.append(parse_utkface_name(PurePosixPath(name).name))
                kept.append(name)
            except ValueError as error:
                skipped.append((name, f"not a UTKFace name: {error}"))
        names = kept
        labels = pa.Table.from_pylist(rows, schema=pa.schema([("age", pa.float64()), ("gender", pa.string()), ("ethnicity", pa.string())]))
    return InputList(
        filesystem, [join(root, n) for n in names], names, labels=labels, skipped=skipped,
        kind="utkface" if utkface else "folder",
    )


def _local_files(root: str) -> tuple[list[str], list[tuple[str, str]]]:
    names, skipped = [], []
    real_root = os.path.realpath(root)
    for folder, dirs, files in os.walk(root, followlinks=False):
        dirs.sort()
        for name in files:
            path = os.path.join(folder, name)
            relative = os.path.relpath(path, root).replace(os.sep, "/")
            if os.path.islink(path):
                target = os.path.realpath(path)
                if os.path.commonpath([real_root, target]) != real_root:
                    skipped.append((relative, "symlink to a file outside the folder"))
                    continue
            names.append(relative)
    return names, skipped


def _remote_files(filesystem: pafs.FileSystem, root: str) -> tuple[list[str], list[tuple[str, str]]]:
    infos = filesystem.get_file_info(pafs.FileSelector(root, recursive=True))
    prefix = root.rstrip("/") + "/"
    return [i.path[len(prefix):] for i in infos if i.type == pafs.FileType.File and i.path.startswith(prefix)], []


def read_manifest(
    location: str | os.PathLike,
    *,
    image_column: str = "path",
    label_columns: list[str] | tuple[str, ...] = (),
    required_labels: list[str] | tuple[str, ...] = (),
) -> InputList:
    """The files a CSV or Parquet manifest lists, with its label columns.

    Parameters
    ----------
    location : str or path-like
        ``.csv``, ``.parquet`` or ``.pq``; local or a URI.
    image_column : str, default="path"
        Image paths: relative to the manifest's folder, absolute on its filesystem, or URIs
        of the manifest's own scheme.
    label_columns : sequence of str
        Columns to carry (for ``include_labels``).
    required_labels : sequence of str
        Columns whose missing values skip the row (the sensitive attributes an audit needs).

    Raises
    ------
    FileNotFoundError
        If the manifest does not exist.
    ValueError
        If its format is unsupported, it cannot be parsed, or a column is missing (the
        message lists those available).
    """
    filesystem, path = resolve_filesystem(location)
    suffix = PurePosixPath(path).suffix.lower()
    if suffix not in _MANIFEST_SUFFIXES:
        raise ValueError(f"{location}: a manifest is {', '.join(_MANIFEST_SUFFIXES)}; got {suffix or 'no extension'!r}")
    if filesystem.get_file_info(path).type != pafs.FileType.File:
        raise FileNotFoundError(f"manifest not found: {location}")
    try:
        if suffix == ".csv":
            with filesystem.open_input_stream(path) as stream:
                # empty cells are missing values (as pandas reads them), strings included
                table = pacsv.read_csv(stream, convert_options=pacsv.ConvertOptions(strings_can_be_null=True))
        else:
            table = pq.read_table(path, filesystem=filesystem)
    except (pa.ArrowException, OSError) as error:
        raise ValueError(f"{location}: cannot read the manifest: {error}") from None
    wanted = [image_column, *label_columns, *required_labels]
    missing = [c for c in dict.fromkeys(wanted) if c not in table.column_names]
    if missing:
        raise ValueError(f"{location}: column(s) {missing} not found; available columns: {table.column_names}")

    base = str(PurePosixPath(path).parent)
    scheme = os.fspath(location).split("://", 1)[0] if is_uri(location) else None
    raw_paths = table.column(image_column).to_pylist()
    required = {c: table.column(c).is_null().to_pylist() for c in required_labels}
    locations, keys, rows, keep, skipped = [], [], [], [], []
    for position, raw in enumerate(raw_paths):
        row = position + 1
        reason = _row_problem(raw, required, position, image_column)
        resolved = None if reason else _resolve_entry(str(raw).strip(), base, scheme)
        if reason is None and resolved is None:
            reason = "path leaves the manifest's folder (or names another filesystem)"
        if reason is not None:
            skipped.append((str(row), reason))
            continue
        locations.append(resolved)
        keys.append(str(row))
        rows.append(row)
        keep.append(position)
    columns = list(dict.fromkeys([*label_columns, *required_labels]))
    labels = table.select(columns).take(pa.array(keep, pa.int64())) if columns else None
    return InputList(filesystem, locations, keys, rows=rows, labels=labels, skipped=skipped, kind="manifest")


def _row_problem(raw, required: dict[str, list[bool]], position: int, image_column: str) -> str | None:
    if raw is None or not str(raw).strip():
        return f"empty value in image column {image_column!r}"
    for column, nulls in required.items():
        if nulls[position]:
            return f"missing value in column {column!r}"
    return None


def _resolve_entry(entry: str, base: str, scheme: str | None) -> str | None:
    """The entry's path on the manifest's filesystem, or None when it leaves the folder or the filesystem."""
    if is_uri(entry):
        entry_scheme, rest = entry.split("://", 1)
        if scheme is None and entry_scheme == "file":
            return rest
        return rest if entry_scheme == scheme else None
    if entry.startswith("/") or (scheme is None and Path(entry).is_absolute()):
        return entry
    parts = PurePosixPath(entry.replace("\\", "/")).parts
    depth = 0
    for part in parts:
        depth += -1 if part == ".." else 0 if part == "." else 1
        if depth < 0:
            return None
    return join(base, entry.replace("\\", "/"))


def read_file_bytes(filesystem: pafs.FileSystem, path: str, max_bytes: int = DEFAULT_MAX_FILE_BYTES) -> bytes:
    """The bytes of one regular file, at most ``max_bytes`` of them.

    Raises
    ------
    OSError
        With a reason a person can read (``"file not found"``, ``"not a regular file"``,
        ``"larger than the 64 MiB cap"``, ...); never the file's name, which the caller
        knows and UTKFace names spell out labels.
    """
    if is_local(filesystem):
        return _read_local(path, max_bytes)
    info = filesystem.get_file_info(path)
    if info.type == pafs.FileType.NotFound:
        raise OSError("file not found")
    if info.type != pafs.FileType.File:
        raise OSError("not a regular file")
    if info.size is not None and info.size > max_bytes:
        raise OSError(f"larger than the {_size(max_bytes)} cap ({_size(info.size)})")
    with filesystem.open_input_stream(path) as stream:
        data = stream.read(max_bytes + 1)
    if len(data) > max_bytes:
        raise OSError(f"larger than the {_size(max_bytes)} cap")
    return data


def _read_local(path: str, max_bytes: int) -> bytes:
    try:
        # O_NONBLOCK: opening a FIFO must not wait for a writer.
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
    except FileNotFoundError:
        raise OSError("file not found") from None
    except PermissionError:
        raise OSError("permission denied") from None
    except OSError as error:
        if error.errno == errno.ELOOP:
            raise OSError("symlink loop") from None
        raise OSError(f"cannot open: {error.strerror}") from None
    with os.fdopen(fd, "rb") as handle:
        status = os.fstat(fd)
        if not stat.S_ISREG(status.st_mode):
            raise OSError("not a regular file")
        if status.st_size > max_bytes:
            raise OSError(f"larger than the {_size(max_bytes)} cap ({_size(status.st_size)})")
        data = handle.read(max_bytes + 1)
    if len(data) > max_bytes:
        raise OSError(f"larger than the {_size(max_bytes)} cap")
    return data


def _size(n: int) -> str:
    return f"{n / 1024**2:.0f} MiB" if n >= 1024**2 else f"{n} bytes"
