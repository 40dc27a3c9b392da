"""Where files live: local paths and URIs resolved to a ``pyarrow.fs`` filesystem.

Every reader and writer of files that may be remote (image folders and manifests, Parquet
datasets, the distributed export's output) resolves its location here, so one set of rules
holds everywhere:

- a plain path (or ``file://`` URI) is the local filesystem;
- a URI whose scheme pyarrow implements (``s3://``, ``gs://``, ``hdfs://``, ``abfs://``...)
  uses pyarrow's own filesystem;
- any other scheme that fsspec knows (``memory://``, ``az://``, ``http://``, ...) is wrapped
  with :class:`pyarrow.fs.FSSpecHandler`.

Credentials come from the environment as each filesystem reads them; nothing here logs a
location's contents.
"""

from __future__ import annotations

import fnmatch
import os
import posixpath
import re
from collections.abc import Iterator
from pathlib import Path

import pyarrow.fs as pafs

__all__ = ["glob_files", "has_glob", "is_local", "is_uri", "join", "resolve_filesystem", "within"]

_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]+)://")
_GLOB_CHARS = set("*?[")


def is_uri(location: str | os.PathLike) -> bool:
    """Whether ``location`` names a scheme (``s3://bucket/x``); Windows drive letters do not count."""
    return bool(_SCHEME.match(os.fspath(location)))


def resolve_filesystem(location: str | os.PathLike) -> tuple[pafs.FileSystem, str]:
    """The filesystem holding ``location``, and the path of ``location`` on it.

    Parameters
    ----------
    location : str or path-like
        A local path or a URI.

    Returns
    -------
    filesystem : pyarrow.fs.FileSystem
    path : str
        ``location`` as that filesystem names it (absolute for local paths).

    Raises
    ------
    ValueError
        If the scheme is unknown to both pyarrow and fsspec (or fsspec is missing).
    """
    text = os.fspath(location)
    match = _SCHEME.match(text)
    if match is None:
        return pafs.LocalFileSystem(), str(Path(text).expanduser().absolute())
    try:
        return pafs.FileSystem.from_uri(text)
    except ValueError:  # pyarrow's ArrowInvalid: a scheme pyarrow does not implement
        pass
    scheme = match.group(1)
    try:
        import fsspec
    except ImportError:  # pragma: no cover - fsspec ships with the dev extra
        raise ValueError(f"{text}: unknown filesystem scheme {scheme!r} (install fsspec for more)") from None
    try:
        fs = fsspec.filesystem(scheme)
    except (ImportError, ValueError) as error:
        raise ValueError(f"{text}: cannot open filesystem {scheme!r}: {error}") from None
    return pafs.PyFileSystem(pafs.FSSpecHandler(fs)), fs._strip_protocol(text)


def is_local(filesystem: pafs.FileSystem) -> bool:
    """Whether ``filesystem`` is this machine's disk (where atomic renames and ``open`` work)."""
    return isinstance(filesystem, pafs.LocalFileSystem)


def join(base: str, *parts: str) -> str:
    """Join path parts with ``/`` (every pyarrow filesystem's separator, local ones included)."""
    return "/".join([base.rstrip("/"), *(p.strip("/") for p in parts)])


def within(root: str, path: str) -> bool:
    """Whether ``path`` is ``root`` or below it, once ``.`` and ``..`` are resolved (no symlink is followed)."""
    root = posixpath.normpath(root)
    path = posixpath.normpath(path)
    return path == root or path.startswith(root.rstrip("/") + "/")


def has_glob(path: str) -> bool:
    """Whether ``path`` holds a glob pattern (``*``, ``?`` or ``[``)."""
    return any(ch in _GLOB_CHARS for ch in path)


def glob_files(filesystem: pafs.FileSystem, pattern: str) -> list[str]:
    """Files matching a glob (``*`` stays within a folder, ``**`` crosses folders), sorted.

    The folder part before the first wildcard is listed recursively and every file path is
    matched against the pattern.
    """
    parts = pattern.split("/")
    fixed = []
    for part in parts:
        if has_glob(part):
            break
        fixed.append(part)
    base = "/".join(fixed) or "/"
    regex = _glob_regex(pattern)
    return sorted(path for path in _walk_files(filesystem, base) if regex.fullmatch(path))


def _glob_regex(pattern: str) -> re.Pattern:
    out, i = [], 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            out.append("(?:.*/)?")
            i += 3
        elif pattern.startswith("**", i):
            out.append(".*")
            i += 2
        elif pattern[i] == "*":
            out.append("[^/]*")
            i += 1
        else:
            j = i
            while j < len(pattern) and pattern[j] != "*" and not pattern.startswith("**", j):
                j += 1
            out.append(fnmatch.translate(pattern[i:j])[4:-3])  # strip "(?s:" and ")\Z"
            i = j
    return re.compile("".join(out))


def _walk_files(filesystem: pafs.FileSystem, base: str) -> Iterator[str]:
    if is_local(filesystem):
        for root, dirs, files in os.walk(base, followlinks=False):
            dirs[:] = sorted(dirs)
            for name in files:
                yield join(root, name)
        return
    try:
        infos = filesystem.get_file_info(pafs.FileSelector(base, recursive=True, allow_not_found=True))
    except OSError:
        return
    for info in infos:
        if info.type == pafs.FileType.File:
            yield info.path
