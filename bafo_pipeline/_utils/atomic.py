"""Atomic file output: write to a hidden temporary file, then move it into place.

A reader never sees a half-written file: output goes to a temporary file in the
destination folder (same filesystem, so the final move is atomic), which is fsynced
and renamed only once writing succeeded. On any exception, ``KeyboardInterrupt``
included, the temporary file is removed and the destination is left untouched.

Temporary files never outlive their writer for long:

- ``SIGTERM`` (the default action of ``kill``, of job schedulers and of container
  stops) removes every pending temporary file before the process ends as it would
  have (the handler is installed only where ``SIGTERM`` still has its default action);
- a writer that was killed outright (``SIGKILL``, a power cut) leaves its temporary
  file behind, and the next write to the same destination removes it: a writer holds
  an advisory lock (``flock``) on its temporary file while it lives, so a temporary
  file nobody holds a lock on belongs to a dead writer.

Outputs that are folders (a saved model) are built in a :func:`staging_directory`
beside the destination, named and locked the same way, so the same rules apply.

Examples
--------
>>> from safetensors.numpy import save_file  # doctest: +SKIP
>>> with atomic_write_path("model.safetensors") as tmp:  # doctest: +SKIP
...     save_file(tensors, tmp)
"""

from __future__ import annotations

import contextlib
import os
import re
import secrets
import shutil
import signal
import threading
import weakref
from collections.abc import Iterator
from pathlib import Path
from types import TracebackType

try:  # POSIX
    import fcntl
except ImportError:  # pragma: no cover - Windows: stale files are recognised by age only
    fcntl = None

__all__ = [
    "AtomicFile",
    "atomic_write_path",
    "check_destination",
    "fsync_dir",
    "remove_stale_temporaries",
    "staging_directory",
]

#: Temporary files of dead writers younger than this are left alone where locks are unavailable.
_STALE_AGE_WITHOUT_LOCKS = 24 * 3600

# Temporary files being written, with the id of the process writing each: the SIGTERM handler removes
# only its own process's (a forked child inherits this table, not the files).
_pending: dict[Path, int] = {}
_pending_lock = threading.Lock()
_sigterm_installed = False


def _temporary_name_pattern(name: str) -> re.Pattern:
    return re.compile(rf"\.{re.escape(name)}\.[0-9a-f]{{12}}\.tmp")


def _remove_quietly(path: Path) -> None:
    with contextlib.suppress(FileNotFoundError):
        path.unlink()


def _forget_and_remove(path: Path, handle: int | None) -> None:
    with _pending_lock:
        _pending.pop(path, None)
    _remove_quietly(path)
    if handle is not None:
        with contextlib.suppress(OSError):
            os.close(handle)


def _abandon(path: Path, handle: int, writer: int) -> None:
    """Finalizer of an uncommitted temporary file: removed by its writer; a forked child leaves it alone."""
    if os.getpid() == writer:
        _forget_and_remove(path, handle)


def _remove_pending_and_terminate(signum, frame) -> None:  # pragma: no cover - runs in a dying process
    me = os.getpid()
    for path, writer in list(_pending.items()):
        if writer == me:
            with contextlib.suppress(OSError):
                os.unlink(path)
    signal.signal(signum, signal.SIG_DFL)
    os.kill(os.getpid(), signum)


def _install_sigterm_cleanup() -> None:
    """Remove pending temporary files on SIGTERM, where SIGTERM would otherwise just end the process."""
    global _sigterm_installed
    if _sigterm_installed or threading.current_thread() is not threading.main_thread():
        return
    with contextlib.suppress(ValueError, OSError):  # no signals here (embedded interpreters)
        if signal.getsignal(signal.SIGTERM) is signal.SIG_DFL:
            signal.signal(signal.SIGTERM, _remove_pending_and_terminate)
            _sigterm_installed = True


def _is_held(path: Path) -> bool:
    """Whether a live writer holds ``path`` (its advisory lock); without locks, whether it is recent."""
    if fcntl is None:  # pragma: no cover
        import time

        return time.time() - path.stat().st_mtime < _STALE_AGE_WITHOUT_LOCKS
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_NOFOLLOW", 0))
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        return True
    finally:
        os.close(fd)  # releases the lock, if taken
    return False


def remove_stale_temporaries(path: str | os.PathLike) -> list[Path]:
    """Remove the temporary files and folders that killed writers of ``path`` left behind.

    A temporary file of ``path`` is ``.<name>.<12 hex digits>.tmp`` in the same folder
    (as :class:`AtomicFile` and :func:`staging_directory` name them). It is stale when
    no live process holds its lock: the writer was killed before it could commit or
    clean up. Files being written by live processes are left alone, as is everything
    else in the folder.

    Parameters
    ----------
    path : str or path-like
        The destination whose stale temporary files to remove.

    Returns
    -------
    list of pathlib.Path
        The files removed.
    """
    path = Path(path)
    pattern = _temporary_name_pattern(path.name)
    removed = []
    try:
        entries = list(os.scandir(path.parent))
    except OSError:
        return removed
    for entry in entries:
        if not pattern.fullmatch(entry.name):
            continue
        candidate = Path(entry.path)
        try:
            is_folder = entry.is_dir(follow_symlinks=False)
            if not (is_folder or entry.is_file(follow_symlinks=False)) or _is_held(candidate):
                continue
            if is_folder:
                shutil.rmtree(candidate)
            else:
                candidate.unlink()
        except OSError:  # vanished meanwhile, or not ours to remove
            continue
        removed.append(candidate)
    return removed


@contextlib.contextmanager
def staging_directory(path: str | os.PathLike) -> Iterator[Path]:
    """A fresh, private folder beside ``path`` in which to build it; move it into place before the block ends.

    The folder (``.<name>.<12 hex digits>.tmp``, mode 0700) is locked while the block
    runs and removed when it ends unless it was moved away, so a killed writer's
    folder is recognised and removed by the next one (:func:`remove_stale_temporaries`).

    Parameters
    ----------
    path : str or path-like
        The destination folder.

    Yields
    ------
    pathlib.Path
        The staging folder.
    """
    path = Path(path)
    remove_stale_temporaries(path)
    staging = path.with_name(f".{path.name}.{secrets.token_hex(6)}.tmp")
    os.mkdir(staging, 0o700)
    handle = None
    try:
        if fcntl is not None:  # elsewhere (Windows) folders cannot be opened; stale ones are recognised by age
            handle = os.open(staging, os.O_RDONLY)
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        yield staging
    finally:
        if handle is not None:
            os.close(handle)
        shutil.rmtree(staging, ignore_errors=True)


def _fsync_file(path: Path) -> None:
    with open(path, "rb+") as handle:
        os.fsync(handle.fileno())


def fsync_dir(path: Path) -> None:
    """Make a new name in the folder ``path`` durable (a rename, a link); POSIX only, best effort."""
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
    neither committed nor aborted is removed when the object is garbage collected, the
    interpreter exits or the process receives ``SIGTERM``; temporary files that killed
    writers of the same ``path`` left behind are removed when it is created (see
    :func:`remove_stale_temporaries`).

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
        remove_stale_temporaries(self.path)
        _install_sigterm_cleanup()
        while True:
            candidate = self.path.with_name(f".{self.path.name}.{secrets.token_hex(6)}.tmp")
            try:
                fd = os.open(candidate, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666)
            except FileExistsError:
                continue
            except OSError as error:  # read-only folder or filesystem, no space: name the folder, not our temp file
                raise type(error)(error.errno, f"cannot write {self.path.name} there: {error.strerror}",
                                  str(self.path.parent)) from None
            break
        if fcntl is not None:
            # Held until commit or abort (or death): marks the file as a live writer's.
            with contextlib.suppress(OSError):
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        with _pending_lock:
            _pending[candidate] = os.getpid()
        self.tmp_path = candidate
        self._lock_handle = fd
        self._finalizer = weakref.finalize(self, _abandon, candidate, fd, os.getpid())
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
        _forget_and_remove(self.tmp_path, self._lock_handle)  # the name is gone already; drops the lock
        fsync_dir(self.path.parent)
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
