"""Reading image files safely, on this machine or any ``pyarrow.fs`` / fsspec filesystem.

Only regular files are read, and at most ``max_bytes`` of them: a manifest row pointing at
``/dev/zero`` or a FIFO is skipped with a reason instead of growing memory or hanging the
job. :class:`StoredFile` names one file on a filesystem; the decoders
(:func:`~bafo_pipeline.data.images.decode_image`, the batched torch decoder) read it through
:func:`read_file_bytes`, so remote files are decoded exactly like local ones.
"""

from __future__ import annotations

import errno
import os
import stat
from dataclasses import dataclass
from typing import BinaryIO

import pyarrow.fs as pafs

from .._utils.filesystems import is_local

__all__ = ["DEFAULT_MAX_FILE_BYTES", "IMAGE_SUFFIXES", "StoredFile", "open_regular_file", "read_file_bytes"]

#: Largest image file read (bytes); larger files are skipped with a reason.
DEFAULT_MAX_FILE_BYTES = 64 * 1024 * 1024
#: File name suffixes taken for images when a plain folder is listed.
IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp"})


@dataclass(frozen=True)
class StoredFile:
    """One file on a filesystem, read only when asked (picklable: it travels to Ray workers).

    Attributes
    ----------
    filesystem : pyarrow.fs.FileSystem
    path : str
        The file's path on ``filesystem``.
    max_bytes : int
        Size cap of :meth:`read`.
    """

    filesystem: pafs.FileSystem
    path: str
    max_bytes: int = DEFAULT_MAX_FILE_BYTES

    def read(self) -> bytes:
        """The file's bytes; ``OSError`` with a readable reason otherwise (see :func:`read_file_bytes`)."""
        return read_file_bytes(self.filesystem, self.path, self.max_bytes)

    def __str__(self) -> str:
        return self.path


def read_file_bytes(filesystem: pafs.FileSystem, path: str, max_bytes: int = DEFAULT_MAX_FILE_BYTES) -> bytes:
    """The bytes of one regular file, at most ``max_bytes`` of them.

    Parameters
    ----------
    filesystem : pyarrow.fs.FileSystem
    path : str
    max_bytes : int, default=64 MiB

    Returns
    -------
    bytes

    Raises
    ------
    OSError
        With a reason a person can read (``"file not found"``, ``"not a regular file"``,
        ``"larger than the 64 MiB cap"``, ...) and never the file's name, which the
        caller knows and UTKFace names spell out labels.
    """
    if is_local(filesystem):
        return _read_local(path, max_bytes)
    info = filesystem.get_file_info(path)
    if info.type == pafs.FileType.NotFound:
        raise OSError("file not found")
    if info.type == pafs.FileType.Directory:
        raise OSError("is a directory, not a file")
    if info.type != pafs.FileType.File:
        raise OSError("not a regular file")
    if info.size is not None and info.size > max_bytes:
        raise OSError(f"larger than the {_size(max_bytes)} cap ({_size(info.size)})")
    with filesystem.open_input_stream(path) as stream:
        data = stream.read(max_bytes + 1)
    if len(data) > max_bytes:
        raise OSError(f"larger than the {_size(max_bytes)} cap")
    return data


def open_regular_file(path: str | os.PathLike, max_bytes: int = DEFAULT_MAX_FILE_BYTES) -> BinaryIO:
    """Open a local file for reading, only if it is a regular file of at most ``max_bytes``.

    What decoders stream from (Pillow reads lazily): a FIFO is refused without waiting for
    a writer, a device (``/dev/zero``) or a folder is refused, and so is a file past the
    cap, before anything is read.

    Parameters
    ----------
    path : str or path-like
    max_bytes : int, default=64 MiB

    Returns
    -------
    binary file object
        Positioned at the start; the caller closes it.

    Raises
    ------
    OSError
        With a reason a person can read, never the file's name (see :func:`read_file_bytes`).
    """
    try:
        # O_NONBLOCK: opening a FIFO must not wait for a writer.
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
    except FileNotFoundError:
        raise OSError("file not found") from None
    except PermissionError:
        raise OSError("permission denied") from None
    except IsADirectoryError:
        raise OSError("is a directory, not a file") from None
    except OSError as error:
        if error.errno == errno.ELOOP:
            raise OSError("symlink loop") from None
        raise OSError(f"cannot open: {error.strerror}") from None
    try:
        status = os.fstat(fd)
        if stat.S_ISDIR(status.st_mode):
            raise OSError("is a directory, not a file")
        if not stat.S_ISREG(status.st_mode):
            raise OSError("not a regular file")
        if status.st_size > max_bytes:
            raise OSError(f"larger than the {_size(max_bytes)} cap ({_size(status.st_size)})")
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def _read_local(path: str, max_bytes: int) -> bytes:
    with open_regular_file(path, max_bytes) as handle:
        data = handle.read(max_bytes + 1)  # the file may have grown since it was opened
    if len(data) > max_bytes:
        raise OSError(f"larger than the {_size(max_bytes)} cap")
    return data


def _size(n: int) -> str:
    return f"{n / 1024**2:.0f} MiB" if n >= 1024**2 else f"{n} bytes"
