"""Load the UTKFace data set from its folder, labels parsed from the file names.

UTKFace names its files ``[age]_[gender]_[race]_[datetime].jpg.chip.jpg``
(gender 0 male, 1 female; race 0 white, 1 black, 2 asian, 3 indian,
4 others). Names that do not follow the pattern exactly are skipped with a
reason, never guessed: the distributed folder has some without the race
field (``39_1_20170116174525125.jpg.chip.jpg``), one with a space before the
extension and one without the dot before ``jpg.chip.jpg``. The data set also
holds byte-identical images under different labels; see
:func:`~bafo_pipeline.data.splits.dedupe_by_hash`.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from typing import Any

import pandas as pd

from ..attributes import DEFAULT_SENSITIVE
from .dataset import FaceDataset, LoadReport
from .files import DEFAULT_MAX_FILE_BYTES
from .folders import list_folder
from .images import DEFAULT_MAX_PIXELS, Size
from .splits import EMPTY_CONTENT_HASH, dedupe_by_hash, hash_files
from .tables import dataset_from_table

__all__ = [
    "UTKFACE_ETHNICITIES",
    "UTKFACE_GENDERS",
    "UTKFACE_SENSITIVE",
    "load_utkface",
    "parse_utkface_name",
    "scan_utkface",
]

#: Gender codes of the file names, in code order.
UTKFACE_GENDERS = ("male", "female")
#: Race codes of the file names, in code order.
UTKFACE_ETHNICITIES = ("white", "black", "asian", "indian", "others")

_MAX_AGE = 120
#: The labels a UTKFace file name spells out (the package's default sensitive attributes).
UTKFACE_SENSITIVE = DEFAULT_SENSITIVE
_LABELS = UTKFACE_SENSITIVE
# The distributed "aligned & cropped" names end in .jpg.chip.jpg; the
# "in-the-wild" release uses the same fields with a plain .jpg.
_SUFFIXES = (".jpg.chip.jpg", ".jpg", ".jpeg", ".png")
_IMAGE_EXTENSIONS = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp"}
_FIELDS = ("age", "gender", "race", "datetime")
_WHOLE_NUMBER = re.compile(r"[0-9]+")
# The distributed names carry 16-18 digit date-times; anything shorter is not a UTKFace name.
_MIN_DATETIME_DIGITS = 8


def parse_utkface_name(name: str | os.PathLike) -> dict[str, Any]:
    """Labels encoded in a UTKFace file name.

    Parameters
    ----------
    name : str or path-like
        A file name such as ``"26_1_2_20170116174525125.jpg.chip.jpg"``
        (any folder part is ignored).

    Returns
    -------
    dict
        ``age`` (float, years), ``gender`` (``"male"``/``"female"``) and
        ``ethnicity`` (``"white"``, ``"black"``, ``"asian"``, ``"indian"``, ``"others"``).

    Raises
    ------
    ValueError
        If the name does not follow ``age_gender_race_datetime.jpg.chip.jpg``
        exactly (a plain ``.jpg``, ``.jpeg`` or ``.png`` suffix is also
        accepted; no leading zeros, a date-time of at least 8 digits) or a
        value is out of range (age 0-120, gender 0-1, race 0-4); the message
        says what is wrong.
    """
    base = os.path.basename(os.fspath(name))
    extension = os.path.splitext(base)[1].lower()
    if extension not in _IMAGE_EXTENSIONS:
        raise ValueError(f"not an image file name (extension {extension or 'missing'!r})")
    if any(ch.isspace() for ch in base):
        raise ValueError("name contains whitespace")
    stem, _, rest = base.partition(".")
    suffix = "." + rest
    if suffix.lower() not in _SUFFIXES:
        raise ValueError(
            f"unexpected suffix {suffix!r} after {stem!r}; expected age_gender_race_datetime.jpg.chip.jpg"
        )
    fields = stem.split("_")
    if len(fields) != len(_FIELDS):
        raise ValueError(
            f"{len(fields)} underscore-separated fields, expected 4 (age_gender_race_datetime)"
        )
    for field, value in zip(_FIELDS, fields):
        if not _WHOLE_NUMBER.fullmatch(value):
            raise ValueError(f"{field} field {value!r} is not a whole number")
        if field != "datetime" and len(value) > 1 and value.startswith("0"):
            raise ValueError(f"{field} field {value!r} has leading zeros (a renamed or generated file?)")
    if len(fields[3]) < _MIN_DATETIME_DIGITS:
        raise ValueError(
            f"datetime field {fields[3]!r} has fewer than {_MIN_DATETIME_DIGITS} digits (yyyymmddHHMMSS...)"
        )
    age, gender, race = int(fields[0]), int(fields[1]), int(fields[2])
    if age > _MAX_AGE:
        raise ValueError(f"age {age} is outside 0-{_MAX_AGE}")
    if gender >= len(UTKFACE_GENDERS):
        raise ValueError(f"gender code {gender} is not 0 (male) or 1 (female)")
    if race >= len(UTKFACE_ETHNICITIES):
        raise ValueError(f"race code {race} is outside 0-{len(UTKFACE_ETHNICITIES) - 1}")
    return {"age": float(age), "gender": UTKFACE_GENDERS[gender], "ethnicity": UTKFACE_ETHNICITIES[race]}


def scan_utkface(
    folder: str | os.PathLike,
    *,
    dedupe: str = "drop-conflicts",
    strict: bool = False,
    n_jobs: int | None = None,
    allow_outside_root: bool = False,
    max_file_bytes: int = DEFAULT_MAX_FILE_BYTES,
    hasher: Callable = hash_files,
) -> tuple[pd.DataFrame, LoadReport]:
    """List a UTKFace folder: parse every file name and hash every file, without decoding.

    Parameters
    ----------
    folder : str or path-like
        The flat folder of UTKFace images (subfolders are not searched); local or a URI.
    dedupe : {"drop-conflicts", "keep-first", "none"}, default="drop-conflicts"
        How byte-identical images are handled. ``"drop-conflicts"`` keeps
        one copy of each group whose labels agree and drops every copy of a
        group whose labels differ; see
        :func:`~bafo_pipeline.data.splits.dedupe_by_hash`.
    strict : bool, default=False
        Raise ``ValueError`` for the first file (in name order) that cannot
        be read or is empty, instead of skipping it. Entries whose names do
        not follow the pattern (the distributed data set has a few) and
        subfolders are always skipped and reported, never raised.
    n_jobs : int or None, default=None
        File-reading threads; ``None`` means ``min(4, cpu count)``.
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
        Columns ``path``, ``age`` (float), ``gender``, ``ethnicity``,
        ``content_hash`` (SHA-1 of the file); rows sorted by file name.
    report : LoadReport
        ``skipped`` holds ``(path, reason)`` for every entry left out,
        the duplicate counts are filled in and ``n_loaded`` is the number of rows.

    Raises
    ------
    FileNotFoundError, NotADirectoryError
        If ``folder`` does not exist or is not a folder.
    ValueError
        If ``strict`` and an entry is bad, or ``dedupe`` is unknown.
    """
    try:
        listing = list_folder(folder, recursive=False, allow_outside_root=allow_outside_root)
    except FileNotFoundError:
        raise FileNotFoundError(f"UTKFace folder not found: {folder}") from None

    problems = list(listing.problems)  # (name, path, reason)
    rows: list[dict[str, Any]] = []
    for name, path in listing.files:
        try:
            rows.append({"path": path, **parse_utkface_name(name)})
        except ValueError as err:
            problems.append((name, path, str(err)))

    hashes, reasons = hasher(
        [r["path"] for r in rows], n_jobs=n_jobs, filesystem=listing.filesystem, max_bytes=max_file_bytes
    )
    kept = []
    for row, digest, reason in zip(rows, hashes, reasons):
        if reason is None and digest == EMPTY_CONTENT_HASH:
            reason = "empty file (0 bytes)"
        if reason is None:
            kept.append({**row, "content_hash": digest})
        elif strict:
            raise ValueError(f"{row['path']}: {reason}")
        else:
            problems.append((os.path.basename(row["path"]), row["path"], reason))

    problems.sort()
    table = pd.DataFrame(kept, columns=["path", *_LABELS, "content_hash"]).astype({"age": float})
    table, counts = dedupe_by_hash(table, _LABELS, dedupe)
    report = LoadReport(skipped=[(path, reason) for _, path, reason in problems], **counts)
    report.n_loaded = len(table)
    return table.reset_index(drop=True), report


def load_utkface(
    folder: str | os.PathLike,
    image_size: Size = 56,
    *,
    strict: bool = False,
    dedupe: str = "drop-conflicts",
    n_jobs: int | None = None,
    limit: int | None = None,
    progress: Any = None,
    max_pixels: int | None = DEFAULT_MAX_PIXELS,
    allow_outside_root: bool = False,
) -> FaceDataset:
    """Load UTKFace images with their age, gender and ethnicity labels.

    Parameters
    ----------
    folder : str or path-like
        The flat folder of UTKFace images.
    image_size : int or (int, int), default=56
        Output ``(height, width)`` of every image.
    strict : bool, default=False
        Raise for the first file that cannot be read or decoded instead of
        skipping it. Malformed names are always skipped and reported.
    dedupe : {"drop-conflicts", "keep-first", "none"}, default="drop-conflicts"
        See :func:`scan_utkface`.
    n_jobs : int or None, default=None
        Reading and decoding threads; ``None`` means ``min(4, cpu count)``.
    limit : int or None, default=None
        Keep at most this many images, chosen by smallest content hash: a
        fixed subset, independent of the labels (which lead the file names).
    progress : callable or tqdm-like, optional
        Decoding progress, see :func:`~bafo_pipeline.data.images.decode_images`.
    max_pixels : int or None, default=DEFAULT_MAX_PIXELS
        Decompression-bomb guard, see :func:`~bafo_pipeline.data.images.decode_image`.
    allow_outside_root : bool, default=False
        Keep symlinked files whose target lies outside the folder.

    Returns
    -------
    FaceDataset
        Attributes ``age``, ``gender``, ``ethnicity`` (all sensitive), in
        file-name order; ``report`` lists every file skipped or dropped.

    Raises
    ------
    FileNotFoundError, NotADirectoryError, ValueError
        As :func:`scan_utkface`; also ``ValueError`` when no image at all can be loaded.
    """
    table, report = scan_utkface(
        folder, dedupe=dedupe, strict=strict, n_jobs=n_jobs, allow_outside_root=allow_outside_root
    )
    return dataset_from_table(
        table,
        report,
        source=str(folder),
        sensitive=_LABELS,
        attribute_columns=_LABELS,
        describe=lambda _row, path, reason: (path, reason),
        image_size=image_size,
        strict=strict,
        n_jobs=n_jobs,
        limit=limit,
        progress=progress,
        max_pixels=max_pixels,
    )
