"""Folders of image files, on this machine or any ``pyarrow.fs`` / fsspec filesystem.

:func:`list_folder` lists a folder without reading a file: local folders are walked without
following symlinked folders (a symlink loop cannot stall the scan), and a symlinked file
whose target lies outside the folder is refused unless allowed. :func:`scan_image_folder`
turns a plain folder of images (no labels) into the scanned table every engine encodes,
like :func:`~bafo_pipeline.data.utkface.scan_utkface` does for UTKFace.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

import pandas as pd
import pyarrow.fs as pafs

from .._utils.filesystems import is_local, resolve_filesystem
from .dataset import LoadReport
from .files import DEFAULT_MAX_FILE_BYTES, IMAGE_SUFFIXES
from .splits import EMPTY_CONTENT_HASH, dedupe_by_hash, hash_files

__all__ = ["FolderListing", "list_folder", "scan_image_folder"]

#: The reason a symlink leaving its folder is skipped.
OUTSIDE_FOLDER = "symlink to a file outside the folder (allow_outside_root accepts it)"


@dataclass
class FolderListing:
    """The entries of a folder, before any file is read.

    Attributes
    ----------
    filesystem : pyarrow.fs.FileSystem
    files : list of (str, str)
        ``(name relative to the folder, path on filesystem)``, sorted by name.
    problems : list of (str, str, str)
        ``(name, path, reason)`` for entries left out (subfolders of a flat listing,
        symlinks leaving the folder).
    """

    filesystem: pafs.FileSystem
    files: list[tuple[str, str]] = field(default_factory=list)
    problems: list[tuple[str, str, str]] = field(default_factory=list)


def list_folder(location: str | os.PathLike, *, recursive: bool, allow_outside_root: bool = False) -> FolderListing:
    """The files of a folder, local or a URI, without reading them.

    Parameters
    ----------
    location : str or path-like
        A local folder or a URI (``s3://bucket/faces``).
    recursive : bool
        Search subfolders; otherwise each subfolder is a problem
        (``"is a folder (subfolders are not searched)"``).
    allow_outside_root : bool, default=False
        Keep symlinked files whose target lies outside the folder.

    Returns
    -------
    FolderListing
        Paths are absolute (local) or as the filesystem names them.

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
    if is_local(filesystem):
        return _local(filesystem, root, recursive, allow_outside_root)
    listing = FolderListing(filesystem)
    prefix = root.rstrip("/") + "/"
    for entry in filesystem.get_file_info(pafs.FileSelector(root, recursive=recursive)):
        name = entry.path[len(prefix):] if entry.path.startswith(prefix) else entry.base_name
        if entry.type == pafs.FileType.File:
            listing.files.append((name, entry.path))
        elif entry.type == pafs.FileType.Directory and not recursive:
            listing.problems.append((name, entry.path, "is a folder (subfolders are not searched)"))
    listing.files.sort()
    return listing


def _local(filesystem, root: str, recursive: bool, allow_outside_root: bool) -> FolderListing:
    listing = FolderListing(filesystem)
    real_root = os.path.realpath(root)

    def add(name: str, path: str, is_link: bool) -> None:
        if is_link and not allow_outside_root:
            target = os.path.realpath(path)
            if os.path.commonpath([real_root, target]) != real_root:
                listing.problems.append((name, path, OUTSIDE_FOLDER))
                return
        listing.files.append((name, path))

    if recursive:
        for folder, dirs, names in os.walk(root, followlinks=False):
            dirs.sort()
            for entry in sorted(names):
                path = os.path.join(folder, entry)
                add(os.path.relpath(path, root).replace(os.sep, "/"), path, os.path.islink(path))
    else:
        with os.scandir(root) as found:
            entries = sorted(found, key=lambda e: e.name)
        for entry in entries:
            path = str(Path(root) / entry.name)
            try:
                is_folder = entry.is_dir()
            except OSError:  # a symlink loop: reading it says so
                is_folder = False
            if is_folder:
                listing.problems.append((entry.name, path, "is a folder (subfolders are not searched)"))
            else:
                add(entry.name, path, entry.is_symlink())
    listing.files.sort()
    return listing


def scan_image_folder(
    folder: str | os.PathLike,
    *,
    strict: bool = False,
    n_jobs: int | None = None,
    allow_outside_root: bool = False,
    max_file_bytes: int = DEFAULT_MAX_FILE_BYTES,
    hasher: Callable = hash_files,
) -> tuple[pd.DataFrame, LoadReport]:
    """List the images under a folder (recursively) and hash every file, without decoding.

    Files are taken by their suffix (:data:`~bafo_pipeline.data.files.IMAGE_SUFFIXES`);
    byte-identical copies are kept once (the first by name).

    Parameters
    ----------
    folder : str or path-like
        A local folder or a URI.
    strict : bool, default=False
        Raise ``ValueError`` for the first file that cannot be read or is empty.
    n_jobs : int or None, default=None
        Reading threads of the default ``hasher``.
    allow_outside_root : bool, default=False
        Keep symlinked files whose target lies outside the folder.
    max_file_bytes : int, default=64 MiB
        Larger files are skipped with a reason.
    hasher : callable, default=hash_files
        ``hasher(paths, n_jobs=..., filesystem=..., max_bytes=...) -> (hashes, reasons)``,
        as :func:`~bafo_pipeline.data.splits.hash_files` (a distributed job passes its own).

    Returns
    -------
    table : DataFrame
        ``path`` and ``content_hash``, sorted by name.
    report : LoadReport
        ``skipped`` holds ``(path, reason)`` for each entry left out.
    """
    listing = list_folder(folder, recursive=True, allow_outside_root=allow_outside_root)
    files = [(name, path) for name, path in listing.files if PurePosixPath(name).suffix.lower() in IMAGE_SUFFIXES]
    problems = list(listing.problems)
    hashes, reasons = hasher(
        [path for _, path in files], n_jobs=n_jobs, filesystem=listing.filesystem, max_bytes=max_file_bytes
    )
    kept = []
    for (name, path), digest, reason in zip(files, hashes, reasons):
        if reason is None and digest == EMPTY_CONTENT_HASH:
            reason = "empty file (0 bytes)"
        if reason is None:
            kept.append({"path": path, "content_hash": digest})
        elif strict:
            raise ValueError(f"{path}: {reason}")
        else:
            problems.append((name, path, reason))
    table, counts = dedupe_by_hash(pd.DataFrame(kept, columns=["path", "content_hash"]), [], "keep-first")
    report = LoadReport(skipped=[(path, reason) for _, path, reason in sorted(problems)], **counts)
    report.n_loaded = len(table)
    return table.reset_index(drop=True), report
