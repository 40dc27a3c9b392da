"""Atomic file output: write to a hidden temporary file, then move it into place.

A reader never sees a half-written file: output goes to a temporary file in the
destination folder (same filesystem, so the final move is atomic), which is fsynced
and renamed only once writing succeeded. On any exception, ``KeyboardInterrupt``
included, the temporary file is removed and the destination is left untouched.

Examples
--------
>>> from safetensors.numpy import save_file  # doctest: +SKIP
>>> with atomic_write_path("model.safetensors") as tmp:  # doctest: +SKIP
...     save_file(tensors, tmp)
"""

from __future__ import annotations

import contextlib
import os
import secrets
import weakref
from collections.abc import Iterator
from pathlib import Path
from types import TracebackType

__all__ = ["AtomicFile", "atomic_write_path", "check_destination"]


def _remove_quietly(path: Path) -> None:
    with contextlib.suppress(FileNotFoundError):
        path.unlink()


def _fsync_file(path: Path) -> None:
    with open(path, "rb+") as handle:
        os.fsync(handle.fileno())


def _fsync_dir(path: Path) -> None:
    # Persists the rename itself; POSIX only, and best effort (some filesystems refuse).
    if os.name != "posix":
        return
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def check_destination(path: str | os.PathLike, *, overwrite: bool) -> Path:
    """Validate an output path before anything is written.

    Parameters
    ----------
    path : str or path-like
        Destination file.
    overwrite : bool
        Whether an existing file may be replaced.

    Returns
    -------
    pathlib.Path
        The destination as a ``Path``.

    Raises
    ------
    FileExistsError
        If the file exists and ``overwrite`` is False.
    IsADirectoryError
        If the destination is a directory.
    FileNotFoundError
        If the destination folder does not exist.
    """
    path = Path(path)
    if path.is_dir():
        raise IsADirectoryError(f"{path} is a directory, expected a file path")
    if path.exists() and not overwrite:
        raise FileExistsError(f"{path} already exists; pass overwrite=True to replace it")
    if not path.parent.is_dir():
        raise FileNotFoundError(f"cannot write {path}: folder {path.parent} does not exist")
    return path


class AtomicFile:
    """A temporary file that becomes ``path`` on :meth:`commit`, or vanishes on :meth:`abort`.

    The temporary file is created empty (with the usual umask-derived permissions) as
    ``.<name>.<random>.tmp`` next to ``path``; write to :attr:`tmp_path` by any means,
    then call :meth:`commit`. Used as a context manager it commits on a clean exit and
    aborts on any exception, ``KeyboardInterrupt`` included. A temporary file that was
    neither committed nor aborted is removed when the object is garbage collected or
    the interpreter exits.

    Parameters
    ----------
    path : str or path-like
        Final destination.
    overwrite : bool, default=False
        Replace an existing ``path``. When False the check is made both at creation and,
        race-free where the filesystem supports hard links, at commit.

    Attributes
    ----------
    path : pathlib.Path
        Final destination.
    tmp_path : pathlib.Path
        The temporary file to write to.
    """

    def __init__(self, path: str | os.PathLike, *, overwrite: bool = False) -> None:
        self.path = check_destination(path, overwrite=overwrite)
        self.overwrite = overwrite
        while True:
            candidate = self.path.with_name(f".{self.path.name}.{secrets.token_hex(6)}.tmp")
            try:
                fd = os.open(candidate, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666)
            except FileExistsError:
                continue
            os.close(fd)
            break
        self.tmp_path = candidate
        self._finalizer = weakref.finalize(self, _remove_quietly, candidate)
        self._done = False

    def commit(self) -> Path:
        """Flush the temporary file to disk and move it to :attr:`path`.

        Returns
        -------
        pathlib.Path
            The final path.

        Raises
        ------
        FileExistsError
            If ``overwrite`` is False and ``path`` appeared meanwhile; the temporary
            file is removed.
        """
        if self._done:
            raise RuntimeError(f"{self.path}: already committed or aborted")
        try:
            _fsync_file(self.tmp_path)
            if self.overwrite:
                os.replace(self.tmp_path, self.path)
            else:
                self._move_no_clobber()
        except BaseException:
            self.abort()
            raise
        self._done = True
        self._finalizer.detach()
        _fsync_dir(self.path.parent)
        return self.path

    def _move_no_clobber(self) -> None:
        try:
            # link() fails atomically if the destination exists, unlike replace().
            os.link(self.tmp_path, self.path)
        except FileExistsError:
            raise FileExistsError(
                f"{self.path} already exists; pass overwrite=True to replace it"
            ) from None
        except OSError:  # no hard links on this filesystem
            if self.path.exists():
                raise FileExistsError(
                    f"{self.path} already exists; pass overwrite=True to replace it"
                ) from None
            os.replace(self.tmp_path, self.path)
        else:
            _remove_quietly(self.tmp_path)

    def abort(self) -> None:
        """Remove the temporary file; the destination is left untouched."""
        self._done = True
        self._finalizer()

    def __enter__(self) -> AtomicFile:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if exc_type is None:
            self.commit()
        else:
            self.abort()


@contextlib.contextmanager
def atomic_write_path(path: str | os.PathLike, *, overwrite: bool = False) -> Iterator[Path]:
    """Yield a temporary path that replaces ``path`` when the block exits cleanly.

    Parameters
    ----------
    path : str or path-like
        Final destination.
    overwrite : bool, default=False
        Replace an existing file instead of raising ``FileExistsError``.

    Yields
    ------
    pathlib.Path
        Temporary file in the same folder; write the whole output there.
    """
    with AtomicFile(path, overwrite=overwrite) as target:
        yield target.tmp_path
