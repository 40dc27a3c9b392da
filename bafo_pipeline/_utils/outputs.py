"""Outputs that never destroy inputs: refuse a destination that is one of the inputs or inside them.

:func:`check_not_an_input` is called before anything is written, by every command that
writes files (exports, models, reports, decoded images, figures). It compares what the
filesystem says, not spellings: a symlink, a hard link or ``dir/../dir/x.jpg`` that
reaches an input is still that input.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

__all__ = ["OutputClashError", "check_not_an_input"]


class OutputClashError(ValueError):
    """An output path that would overwrite an input, or land inside an input folder."""


def _real(path: str | os.PathLike) -> Path:
    return Path(os.path.realpath(os.fspath(path)))


def _file_identity(path: str | os.PathLike) -> tuple[int, int] | None:
    try:
        status = os.stat(path)
    except (OSError, ValueError):
        return None
    return status.st_dev, status.st_ino


def check_not_an_input(
    out: str | os.PathLike,
    *,
    files: Iterable[str | os.PathLike] = (),
    folders: Iterable[str | os.PathLike] = (),
    what: str = "output",
) -> None:
    """Refuse an output that is an input file, or that lies in an input folder.

    Parameters
    ----------
    out : str or path-like
        A file or folder about to be written (it may not exist yet).
    files : iterable of path
        Input files (images, a manifest, a labels table). Items that are not local
        paths (URIs, bytes) are ignored.
    folders : iterable of path
        Input folders: ``out`` may be neither one of them nor inside one.
    what : str, default="output"
        How the message names ``out`` (e.g. ``"--out"``).

    Raises
    ------
    OutputClashError
        Naming ``out`` and the input it would overwrite.
    """
    target = _real(out)
    for folder in folders:
        if not _is_local_path(folder):
            continue
        root = _real(folder)
        if target == root or root in target.parents:
            raise OutputClashError(
                f"{what} {out} is inside the input folder {folder}; write outputs outside the inputs"
            )
    identity = _file_identity(target)
    if target.is_dir():
        # A folder output: no input file may live directly in it (its files get written there).
        real_parents: dict[str, Path] = {}
        for item in files:
            if not _is_local_path(item):
                continue
            parent = os.path.dirname(os.path.abspath(os.fspath(item)))
            if parent not in real_parents:
                real_parents[parent] = _real(parent)
            if real_parents[parent] == target or (os.path.islink(item) and _real(item).parent == target):
                raise OutputClashError(f"{what} {out} holds the input {item}; write outputs to another folder")
        return
    if identity is None:  # nothing there yet: nothing to destroy
        return
    for item in files:
        if _is_local_path(item) and _file_identity(item) == identity:
            raise OutputClashError(f"{what} {out} is the input {item}; refusing to overwrite an input")


def _is_local_path(item) -> bool:
    if isinstance(item, (bytes, bytearray, memoryview)):
        return False
    text = os.fspath(item)
    return "://" not in text
