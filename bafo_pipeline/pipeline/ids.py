"""Pseudonymous ids and label-free placement: keyed BLAKE2b hashes under the data owner's key.

Why a keyed hash of the content (the default id):

- it does not depend on how the work was split (which worker, which partition, which run);
- it carries nothing about file names or labels: UTKFace names start with
  ``age_gender_race``, so any id derived from name order (row positions, sorted file
  numbers) leaks age and gender (issue 14: Spearman 0.69 with age);
- byte-identical images get the same id wherever they are listed;
- without the key nobody can link an image they hold to its row: an unkeyed hash
  (SHA-1 of the file) would let anyone with the public image find its latent.

The key is 32 random bytes kept by the data owner in a key file (``0600``) outside the
output; the exported data records only a fingerprint of it, so a resumed job can check that
it uses the same key. Ids are 63-bit integers: two different images share one with
probability about ``n**2 / 2**64`` (5e-4 for 100 M images); the export detects it within a
partition (it compares the full 128-bit digest) and skips the second image with a reason.

Partitions and the order of rows inside them come from keyed hashes too, so neither
reveals the name order either.
"""

from __future__ import annotations

import hashlib
import os
import secrets
import stat
import warnings
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np

__all__ = [
    "ID_KEY_ENV",
    "content_digest",
    "default_id_key_path",
    "id_of_digest",
    "key_fingerprint",
    "keyed_buckets",
    "keyed_order",
    "load_id_key",
]

#: Environment variable naming the default key file.
ID_KEY_ENV = "BAFO_ID_KEY_FILE"
KEY_BYTES = 32
_INT63 = (1 << 63) - 1


def default_id_key_path() -> Path:
    """``$BAFO_ID_KEY_FILE``, else ``~/.config/bafo/id.key``: the data owner's key file."""
    configured = os.environ.get(ID_KEY_ENV)
    return Path(configured).expanduser() if configured else Path.home() / ".config" / "bafo" / "id.key"


def load_id_key(key: bytes | str | os.PathLike | None = None, *, create: bool = True) -> bytes:
    """The id key: given bytes, or read from (or created in) a key file.

    Parameters
    ----------
    key : bytes, str, path-like or None
        32+ raw key bytes, or a key file (64 hex digits), or None for
        :func:`default_id_key_path`.
    create : bool, default=True
        Create a missing key file with a fresh random key, readable by its owner only.

    Returns
    -------
    bytes
        The key (at most 64 bytes, BLAKE2b's limit).

    Raises
    ------
    FileNotFoundError
        If the key file is missing and ``create`` is False.
    ValueError
        If the key or key file is malformed (too short, not hex).
    """
    if isinstance(key, (bytes, bytearray)):
        raw = bytes(key)
        if not 16 <= len(raw) <= 64:
            raise ValueError(f"an id key must have 16 to 64 bytes, got {len(raw)}")
        return raw
    path = default_id_key_path() if key is None else Path(key).expanduser()
    if not path.exists():
        if not create:
            raise FileNotFoundError(f"id key file not found: {path}")
        return _create_key_file(path)
    text = path.read_text().strip()
    try:
        raw = bytes.fromhex(text)
    except ValueError:
        raise ValueError(f"{path}: an id key file holds 64 hex digits") from None
    if not 16 <= len(raw) <= 64:
        raise ValueError(f"{path}: an id key must have 16 to 64 bytes, got {len(raw)}")
    if os.name == "posix" and path.stat().st_mode & (stat.S_IRWXG | stat.S_IRWXO):
        warnings.warn(
            f"{path} is readable by other users; whoever reads the id key can link images to "
            "their rows. Restrict it: chmod 600",
            UserWarning,
            stacklevel=2,
        )
    return raw


def _create_key_file(path: Path) -> bytes:
    path.parent.mkdir(parents=True, exist_ok=True)
    raw = secrets.token_bytes(KEY_BYTES)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:  # created meanwhile by another process: use theirs
        return load_id_key(path, create=False)
    with os.fdopen(fd, "w") as handle:
        handle.write(raw.hex() + "\n")
    return raw


def key_fingerprint(key: bytes) -> str:
    """16 hex digits that identify a key without revealing it (recorded with the data)."""
    return hashlib.blake2b(b"fingerprint", key=key, digest_size=8, person=b"bafo-key-fp").hexdigest()


def content_digest(key: bytes, data: bytes) -> bytes:
    """128-bit keyed digest of a file's bytes."""
    return hashlib.blake2b(data, key=key, digest_size=16, person=b"bafo-content-id").digest()


def id_of_digest(digest: bytes) -> int:
    """The non-negative int64 id of a :func:`content_digest` (its first 63 bits)."""
    return int.from_bytes(digest[:8], "big") & _INT63


def _keyed_int(key: bytes, text: str, person: bytes) -> int:
    return int.from_bytes(hashlib.blake2b(text.encode(), key=key, digest_size=8, person=person).digest(), "big")


def keyed_buckets(key: bytes, source_keys: Iterable[str], n_buckets: int) -> np.ndarray:
    """Partition of each input, from a keyed hash of its source key (relative path or manifest row).

    Independent of name order and labels, and fixed for a given key and listing, so a
    re-run puts every input in the same partition.
    """
    return np.fromiter(
        (_keyed_int(key, s, b"bafo-partition") % n_buckets for s in source_keys), dtype=np.int64
    )


def keyed_order(key: bytes, ids: Sequence[int] | np.ndarray) -> np.ndarray:
    """A permutation sorting ``ids`` by a keyed hash of each: a row order that reveals nothing.

    Used where ids themselves are ordered meaningfully (manifest row numbers); content ids
    are already pseudo-random and are simply sorted.
    """
    keys = np.fromiter((_keyed_int(key, str(int(i)), b"bafo-row-order") for i in ids), dtype=np.uint64)
    return np.argsort(keys, kind="stable")
