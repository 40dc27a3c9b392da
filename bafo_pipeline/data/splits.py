"""Content hashes: hashing files, dropping duplicate images and splitting train/test.

Everything here keys on the hash of an image file's bytes, so byte-identical
copies are recognised whatever their names, always land on the same side of a
split, and adding or removing other files never moves an image across it.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pandas as pd
import pyarrow.fs as pafs

from .files import DEFAULT_MAX_FILE_BYTES, read_file_bytes

__all__ = [
    "DEDUPE_MODES",
    "EMPTY_CONTENT_HASH",
    "content_hash",
    "dedupe_by_hash",
    "hash_files",
    "SPLIT_CHOICES",
    "hash_roles",
    "hash_split",
    "rows_of_split",
]

#: Accepted values of the ``dedupe`` argument of the loaders.
DEDUPE_MODES = ("drop-conflicts", "keep-first", "none")

_SPLIT_BUCKETS = 10_000

#: What an export of a model's own split can ask for (:func:`rows_of_split`).
SPLIT_CHOICES = ("all", "train", "test", "calibration")


def content_hash(data: bytes) -> str:
    """Hex SHA-1 of a file's bytes (the same digest ``sha1sum`` prints).

    Parameters
    ----------
    data : bytes

    Returns
    -------
    str
        40 lowercase hex digits.
    """
    return hashlib.sha1(data).hexdigest()


#: ``content_hash(b"")``: the hash every empty file gets.
EMPTY_CONTENT_HASH = content_hash(b"")


def _hash_one(filesystem, path: str, max_bytes: int) -> tuple[str | None, str | None]:
    try:
        return content_hash(read_file_bytes(filesystem, path, max_bytes)), None
    except OSError as err:
        return None, str(err)


def hash_files(
    paths: Iterable[str | os.PathLike],
    *,
    n_jobs: int | None = None,
    filesystem: pafs.FileSystem | None = None,
    max_bytes: int = DEFAULT_MAX_FILE_BYTES,
) -> tuple[list[str | None], list[str | None]]:
    """Content hash of each file, with a reason for each file that cannot be read.

    Files are read with :func:`~bafo_pipeline.data.files.read_file_bytes`: regular
    files only (a FIFO or a device is skipped, never waited on or read forever), at
    most ``max_bytes`` each.

    Parameters
    ----------
    paths : iterable of str or path-like
    n_jobs : int or None, default=None
        Reading threads; ``None`` means ``min(4, cpu count)``.
    filesystem : pyarrow.fs.FileSystem, optional
        Where the files are; default this machine's.
    max_bytes : int, default=64 MiB
        Larger files are skipped with a reason.

    Returns
    -------
    hashes : list of str or None
        :func:`content_hash` of each file, ``None`` where it could not be read.
    reasons : list of str or None
        ``None`` where the file was read, else why not (e.g. ``"file not found"``).
    """
    from .images import resolve_n_jobs

    filesystem = pafs.LocalFileSystem() if filesystem is None else filesystem
    paths = [os.fspath(p) for p in paths]
    n_threads = resolve_n_jobs(n_jobs)
    if n_threads == 1 or len(paths) < 2:
        results = [_hash_one(filesystem, p, max_bytes) for p in paths]
    else:
        # One task per chunk of files, not per file: a thread pool's per-task cost (a future, locks,
        # waking a thread) is about what hashing a small JPEG costs.
        size = max(64, -(-len(paths) // (8 * n_threads)))
        chunks = [paths[i : i + size] for i in range(0, len(paths), size)]
        with ThreadPoolExecutor(n_threads, thread_name_prefix="bafo-hash") as pool:
            done = pool.map(lambda chunk: [_hash_one(filesystem, p, max_bytes) for p in chunk], chunks)
            results = [result for chunk in done for result in chunk]
    return [h for h, _ in results], [r for _, r in results]


def dedupe_by_hash(
    table: pd.DataFrame,
    label_columns: Sequence[str],
    mode: str = "drop-conflicts",
    *,
    hash_column: str = "content_hash",
) -> tuple[pd.DataFrame, dict[str, int]]:
    """Drop byte-identical copies of images, checking that their labels agree.

    Parameters
    ----------
    table : DataFrame
        One row per image file, in the order that decides which copy is
        kept (the first).
    label_columns : sequence of str
        Columns whose values must agree between copies of one image.
    mode : {"drop-conflicts", "keep-first", "none"}, default="drop-conflicts"
        ``"drop-conflicts"``: keep the first copy of each group whose labels
        agree and drop every copy of a group whose labels disagree (its
        true labels are unknown). ``"keep-first"``: keep the first copy of
        every group, whatever the labels. ``"none"``: keep everything.
    hash_column : str, default="content_hash"

    Returns
    -------
    kept : DataFrame
        The kept rows, in their original order and with their original index.
    counts : dict
        ``duplicates_dropped`` (extra copies dropped from groups that were
        kept), ``conflicting_groups_dropped`` and ``conflicting_files_dropped``.
    """
    if mode not in DEDUPE_MODES:
        raise ValueError(f"dedupe must be one of {DEDUPE_MODES}, got {mode!r}")
    missing = [c for c in [hash_column, *label_columns] if c not in table.columns]
    if missing:
        raise ValueError(f"dedupe_by_hash: table lacks column(s) {missing}")
    counts = {"duplicates_dropped": 0, "conflicting_groups_dropped": 0, "conflicting_files_dropped": 0}
    if mode == "none" or table.empty:
        return table, counts

    hashes = table[hash_column]
    is_first = ~hashes.duplicated(keep="first").to_numpy()
    keep = is_first.copy()
    if mode == "drop-conflicts" and len(label_columns):
        # A group conflicts when any label column takes more than one value in it
        # (a missing value counts as a value of its own).
        n_values = table.groupby(hash_column, sort=False)[list(label_columns)].nunique(dropna=False)
        conflicting = n_values.index[(n_values > 1).any(axis=1).to_numpy()]
        in_conflict = hashes.isin(conflicting).to_numpy()
        keep &= ~in_conflict
        counts["conflicting_groups_dropped"] = int(len(conflicting))
        counts["conflicting_files_dropped"] = int(in_conflict.sum())
        counts["duplicates_dropped"] = int((~is_first & ~in_conflict).sum())
    else:
        counts["duplicates_dropped"] = int((~is_first).sum())
    return table[keep], counts


def hash_split(
    content_hash: Sequence[str] | np.ndarray,
    test_fraction: float = 0.15,
    seed: int = 0,
) -> np.ndarray:
    """Assign each image to train or test from its content hash alone.

    Each hash (salted with ``seed``) is hashed again with BLAKE2b and mapped
    to one of 10,000 buckets; buckets below ``test_fraction * 10,000`` are
    test. So identical images always share a side, an image's side never
    depends on the other images, and the test share is ``test_fraction``
    up to sampling noise.

    Parameters
    ----------
    content_hash : sequence of str
        One hash per image (any strings work).
    test_fraction : float, default=0.15
        Expected share of test images, strictly between 0 and 1.
    seed : int, default=0
        Changes the assignment; the same seed always gives the same split.

    Returns
    -------
    is_test : ndarray of shape (n,), dtype bool
    """
    _check_test_fraction(test_fraction)
    return _buckets(content_hash, seed) < _threshold(test_fraction)


def _check_test_fraction(test_fraction) -> None:
    if isinstance(test_fraction, bool) or not isinstance(test_fraction, (int, float, np.floating, np.integer)):
        raise TypeError(f"test_fraction must be a number, got {test_fraction!r}")
    if not 0.0 < float(test_fraction) < 1.0:
        raise ValueError(f"test_fraction must be strictly between 0 and 1, got {test_fraction!r}")


def _buckets(content_hash: Sequence[str] | np.ndarray, seed: int) -> np.ndarray:
    """Each hash's bucket in ``[0, _SPLIT_BUCKETS)``, salted with ``seed``."""
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
        raise TypeError(f"seed must be an int, got {seed!r}")
    salt = f"{int(seed)}:".encode()
    return np.fromiter(
        (
            int.from_bytes(hashlib.blake2b(salt + str(h).encode(), digest_size=8).digest(), "big") % _SPLIT_BUCKETS
            for h in np.asarray(content_hash, dtype=object).ravel()
        ),
        dtype=np.int64,
    )


def _threshold(fraction: float) -> int:
    """The buckets below which a ``fraction`` of the hashes fall."""
    return round(float(fraction) * _SPLIT_BUCKETS)


def hash_roles(
    content_hash: Sequence[str] | np.ndarray,
    test_fraction: float = 0.15,
    seed: int = 0,
    calibration_fraction: float = 0.0,
) -> np.ndarray:
    """Each image's role from its content hash alone: ``"test"``, ``"calibration"`` or ``"train"``.

    The test rows are :func:`hash_split`'s; of the other hash buckets, the
    lowest ``calibration_fraction`` are calibration rows (those ``bafo run``
    fits its concealment on and never shares), the rest train.

    Parameters
    ----------
    content_hash : sequence of str
    test_fraction, seed
        As :func:`hash_split`'s.
    calibration_fraction : float in [0, 1), default=0.0
        Expected share of calibration images among the non-test ones.

    Returns
    -------
    roles : ndarray of shape (n,), dtype str
    """
    if not 0.0 <= float(calibration_fraction) < 1.0:
        raise ValueError(f"calibration_fraction must be in [0, 1), got {calibration_fraction!r}")
    _check_test_fraction(test_fraction)
    buckets = _buckets(content_hash, seed)
    is_test = buckets < _threshold(test_fraction)  # hash_split's
    roles = np.where(is_test, "test", "train").astype(object)
    if calibration_fraction:  # the next buckets up
        below = test_fraction + calibration_fraction * (1.0 - test_fraction)
        roles[(buckets < _threshold(below)) & ~is_test] = "calibration"
    return roles.astype(str)


def rows_of_split(roles: np.ndarray, which: str) -> np.ndarray:
    """Which rows of :func:`hash_roles`' ``roles`` an export of ``which`` (one of ``SPLIT_CHOICES``) holds.

    ``"all"`` is every row but the calibration ones: a concealment fitted on rows fixes their
    class means, so sharing them lets anyone holding most of their labels read the rest off
    the sums (docs/AUDIT.md, section 3b). They are exported only when asked for by name.
    """
    if which not in SPLIT_CHOICES:
        raise ValueError(f"split must be one of {SPLIT_CHOICES}, got {which!r}")
    roles = np.asarray(roles)
    return roles != "calibration" if which == "all" else roles == which
