"""Pseudonymous ids: a keyed hash of each image's content hash, under the data owner's key.

Why ids are a keyed hash of the content:

- they do not depend on how the work was split (which worker, which partition, which run)
  nor on which engine wrote them: every export of the same images under the same key
  gives the same ids;
- they carry nothing about file names or labels: UTKFace names start with
  ``age_gender_race``, so any id derived from name order (row positions, sorted file
  numbers) leaks age and gender (issue 14: Spearman 0.69 with age), and rows sorted by
  such ids leak it through their order;
- byte-identical images get the same id wherever they are listed;
- without the key nobody can link an image they hold to its row: an unkeyed hash (the
  SHA-1 of the file) would let anyone with the public image find its latent.

The key is 32 random bytes kept by the data owner in a key file (``0600``) outside the
output; exported data records only :func:`key_fingerprint`. Ids are 63-bit integers: two
different images share one with probability about ``n**2 / 2**64`` (5e-4 for 100 M
images), which exports check for. Which source an id came from is written only on request,
by :func:`write_key_table`, to a file the owner names.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import secrets
import stat
import tempfile
import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from .._utils.atomic import AtomicFile, fsync_dir

__all__ = [
    "ID_KEY_ENV",
    "default_id_key_path",
    "key_fingerprint",
    "load_id_key",
    "pseudonymous_ids",
    "write_key_table",
]

#: Environment variable naming the default key file.
ID_KEY_ENV = "BAFO_ID_KEY_FILE"
KEY_BYTES = 32
_INT63 = (1 << 63) - 1


def pseudonymous_ids(content_hashes: Sequence[str] | np.ndarray, key: bytes) -> np.ndarray:
    """The id of each image: a keyed BLAKE2b hash of its content hash, as a non-negative int64.

    The one id scheme of every export (in-process and distributed): the same image under
    the same key always gets the same id, whatever its name, position or labels.

    Parameters
    ----------
    content_hashes : sequence of str
        One per image: :func:`~bafo_pipeline.data.splits.content_hash` (SHA-1 hex) of its
        file, as the scans and loaders record it (``FaceSource.content_hash``).
    key : bytes
        The data owner's key (:func:`load_id_key`).

    Returns
    -------
    ndarray of shape (n,), dtype int64
        Values in ``[0, 2**63)``.

    Raises
    ------
    ValueError
        If the key is shorter than 16 or longer than 64 bytes.
    """
    _check_key(key)
    return np.fromiter(
        (
            int.from_bytes(hashlib.blake2b(str(h).encode(), key=key, digest_size=8, person=b"bafo-content-id").digest(), "big")
            & _INT63
            for h in np.asarray(content_hashes, dtype=object).ravel()
        ),
        dtype=np.int64,
    )


def key_fingerprint(key: bytes) -> str:
    """16 hex digits that identify a key without revealing it (recorded with the data)."""
    _check_key(key)
    return hashlib.blake2b(b"fingerprint", key=key, digest_size=8, person=b"bafo-key-fp").hexdigest()


def default_id_key_path() -> Path:
    """``$BAFO_ID_KEY_FILE``, else ``~/.config/bafo/id.key``: the data owner's key file."""
    configured = os.environ.get(ID_KEY_ENV)
    return Path(configured).expanduser() if configured else Path.home() / ".config" / "bafo" / "id.key"


def load_id_key(key: bytes | str | os.PathLike | None = None, *, create: bool = True) -> bytes:
    """The id key: given bytes, or read from (or created in) a key file.

    Parameters
    ----------
    key : bytes, str, path-like or None
        16 to 64 raw key bytes, or a key file (hex digits), or None for
        :func:`default_id_key_path`.
    create : bool, default=True
        Create a missing key file with a fresh random key, readable by its owner only.

    Returns
    -------
    bytes

    Raises
    ------
    FileNotFoundError
        If the key file is missing and ``create`` is False.
    ValueError
        If the key or key file is malformed (too short or long, not hex).
    """
    if isinstance(key, (bytes, bytearray)):
        return _check_key(bytes(key))
    path = default_id_key_path() if key is None else Path(key).expanduser()
    if not path.exists():
        if not create:
            raise FileNotFoundError(f"id key file not found: {path}")
        return _create_key_file(path)
    try:
        raw = bytes.fromhex(path.read_text().strip())
    except ValueError:
        raise ValueError(f"{path}: an id key file holds 32 to 128 hex digits") from None
    try:
        _check_key(raw)
    except ValueError as error:
        raise ValueError(f"{path}: {error}") from None
    if os.name == "posix" and path.stat().st_mode & (stat.S_IRWXG | stat.S_IRWXO):
        warnings.warn(
            f"{path} is readable by other users; whoever reads the id key can link images to "
            "their rows. Restrict it: chmod 600",
            UserWarning,
            stacklevel=2,
        )
    return raw


def write_key_table(
    path: str | os.PathLike,
    ids: Sequence[int] | np.ndarray,
    sources: Sequence[str],
    *,
    rows: Sequence[int] | None = None,
    overwrite: bool = False,
) -> Path:
    """Write which source each id came from, readable by its owner only (``0600``).

    The table links pseudonymous ids back to files: it is for the data owner, never for
    the people the latents are shared with. It is written atomically, as CSV (``.csv``)
    or Parquet (``.parquet``/``.pq``).

    Parameters
    ----------
    path : str or path-like
        Where to write it (keep it apart from the exported data).
    ids : sequence of int
    sources : sequence of str
        The file (path or URI) of each id.
    rows : sequence of int, optional
        The manifest's 1-based data-row number of each id.
    overwrite : bool, default=False

    Returns
    -------
    pathlib.Path

    Raises
    ------
    ValueError
        If the suffix is not ``.csv``, ``.parquet`` or ``.pq``, or the lengths differ.
    FileExistsError
        If ``path`` exists and ``overwrite`` is False.
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in (".csv", ".parquet", ".pq"):
        raise ValueError(f"{path}: a key table is a .csv or .parquet file")
    table = pd.DataFrame({"id": np.asarray(ids, dtype=np.int64), "source": list(sources)})
    if rows is not None:
        table.insert(1, "row", np.asarray(rows, dtype=np.int64))
    with AtomicFile(path, overwrite=overwrite) as target:
        os.chmod(target.tmp_path, 0o600)  # before anything is in it
        if suffix == ".csv":
            table.to_csv(target.tmp_path, index=False)
        else:
            table.to_parquet(target.tmp_path, index=False)
    return path


def _check_key(key: bytes) -> bytes:
    if not 16 <= len(key) <= 64:
        raise ValueError(f"an id key must have 16 to 64 bytes, got {len(key)}")
    return key


def _create_key_file(path: Path) -> bytes:
    """Create ``path`` holding a fresh key, or read the key another process published there first.

    The key is written and synced to a private temporary file beside ``path`` and only then
    published under its name by a hard link, which fails rather than replace an existing file:
    a reader never sees the key file empty or half-written (it is absent, then whole), a crash
    leaves no empty key file behind, and of two processes creating it at once, one key wins
    and both use it. (On a filesystem without hard links the file is created exclusively,
    then filled: the one-key guarantee holds, the others do not.)
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    raw = secrets.token_bytes(KEY_BYTES)
    fd, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)  # mode 0600
    try:
        with os.fdopen(fd, "w") as handle:
            handle.write(raw.hex() + "\n")
            handle.flush()
            os.fsync(handle.fileno())
        try:
            os.link(temporary, path)
        except FileExistsError:  # published meanwhile by another process: use theirs
            return load_id_key(path, create=False)
        except OSError:  # a filesystem without hard links: create it exclusively, then fill it
            try:
                fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            except FileExistsError:
                return load_id_key(path, create=False)
            with os.fdopen(fd, "w") as handle:
                handle.write(raw.hex() + "\n")
                handle.flush()
                os.fsync(handle.fileno())
        fsync_dir(path.parent)
        return raw
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temporary)

