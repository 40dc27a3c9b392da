"""The in-memory container every loader returns (images, attributes, a load report), and the
:class:`FaceSource` protocol that batch consumers (the export) read any source through."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, ClassVar, Protocol, runtime_checkable

import numpy as np
import pandas as pd

#: ``(rows, images, errors)``: positions in the source, uint8 ``(n, C, H, W)`` images (a NumPy
#: array or a tensor on the decoding device), and ``(row, reason)`` for each unreadable image.
ImageBatch = tuple[np.ndarray, Any, list[tuple[int, str]]]


@runtime_checkable
class FaceSource(Protocol):
    """Labelled face images read in batches: what :func:`~bafo_pipeline.pipeline.export_latents` takes.

    :class:`FaceDataset` (decoded, in memory) and
    :class:`~bafo_pipeline.data.tables.ImageFiles` (files decoded batch by
    batch) implement it; a new kind of source (a database, a bucket, a video)
    only has to do the same.

    Attributes
    ----------
    attributes : DataFrame
        One row per image: the label columns (never file paths).
    sensitive : tuple of str
        Which of those columns are sensitive.
    content_hash : ndarray of str or None
        Hex digest per image (drives splits), when known.
    in_memory : bool
        True when the images are already decoded (no decoder is involved).
    """

    sensitive: tuple[str, ...]
    in_memory: ClassVar[bool]

    @property
    def attributes(self) -> pd.DataFrame: ...

    @property
    def content_hash(self) -> np.ndarray | None: ...

    def __len__(self) -> int: ...

    def subset(self, indices) -> "FaceSource":
        """The rows at ``indices`` (integer positions or a boolean mask)."""

    def iter_batches(
        self, batch_size: int, size: tuple[int, int], *, strict: bool = False, decoder: str = "pil", device=None,
        processes: int = 0,
    ) -> Iterator[ImageBatch]:
        """``(rows, uint8 NCHW images of ``size``, [(row, reason), ...])`` per batch.

        ``processes``: decode with Pillow in that many worker processes instead
        of threads; a source offers it with a true ``local_files`` attribute
        (every row a file on this machine), and ignores it otherwise.
        """


@dataclass
class LoadReport:
    """What a loader kept, skipped and dropped, so nothing is lost silently.

    Attributes
    ----------
    n_loaded : int
        Images in the returned dataset.
    skipped : list of (str, str)
        ``(item, reason)`` for every file or row that was skipped (malformed
        name, unreadable image, missing file, ...).
    duplicates_dropped : int
        Extra copies of byte-identical images whose labels agreed (one copy kept).
    conflicting_groups_dropped : int
        Groups of byte-identical images whose labels disagreed (all copies dropped).
    conflicting_files_dropped : int
        Files in those groups.
    """

    n_loaded: int = 0
    skipped: list[tuple[str, str]] = field(default_factory=list)
    duplicates_dropped: int = 0
    conflicting_groups_dropped: int = 0
    conflicting_files_dropped: int = 0

    def summary(self) -> str:
        """One line a person can read."""
        text = f"{self.n_loaded} images loaded"
        if self.skipped:
            text += f", {len(self.skipped)} skipped"
        if self.duplicates_dropped:
            text += f", {self.duplicates_dropped} duplicate copies dropped"
        if self.conflicting_groups_dropped:
            text += (
                f", {self.conflicting_groups_dropped} duplicate groups with conflicting labels dropped"
                f" ({self.conflicting_files_dropped} files)"
            )
        return text


@dataclass
class FaceDataset:
    """Decoded images with their attributes.

    Attributes
    ----------
    images : ndarray of shape (n, height, width, 3), dtype uint8
        RGB images.
    attributes : DataFrame of n rows (RangeIndex)
        Sensitive and non-sensitive attributes, one row per image.
    sensitive : tuple of str
        The columns of ``attributes`` that are sensitive.
    content_hash : ndarray of shape (n,), dtype object
        Hex digest of each image's source bytes; drives splits and de-duplication.
    sources : list of str or None
        Source paths. Internal only: exports never write them unless asked,
        since names such as UTKFace's spell out the labels.
    report : LoadReport
    """

    images: np.ndarray
    attributes: pd.DataFrame
    sensitive: tuple[str, ...]
    content_hash: np.ndarray
    sources: list[str] | None = None
    report: LoadReport = field(default_factory=LoadReport)
    in_memory: ClassVar[bool] = True

    def __post_init__(self) -> None:
        n = len(self.images)
        if len(self.attributes) != n or len(self.content_hash) != n:
            raise ValueError(
                f"FaceDataset parts disagree in length: {n} images, "
                f"{len(self.attributes)} attribute rows, {len(self.content_hash)} hashes"
            )
        if self.sources is not None and len(self.sources) != n:
            raise ValueError(f"FaceDataset has {n} images but {len(self.sources)} sources")
        missing = [c for c in self.sensitive if c not in self.attributes.columns]
        if missing:
            raise ValueError(f"sensitive columns {missing} are not among the attributes")

    def __len__(self) -> int:
        return len(self.images)

    @property
    def sensitive_features(self) -> pd.DataFrame:
        """The sensitive columns only."""
        return self.attributes[list(self.sensitive)]

    def subset(self, indices) -> "FaceDataset":
        """A new dataset with the rows at ``indices`` (integer positions or a boolean mask)."""
        indices = np.asarray(indices)
        if indices.dtype == bool:
            indices = np.flatnonzero(indices)
        return FaceDataset(
            images=self.images[indices],
            attributes=self.attributes.iloc[indices].reset_index(drop=True),
            sensitive=self.sensitive,
            content_hash=self.content_hash[indices],
            sources=None if self.sources is None else [self.sources[i] for i in indices],
            report=self.report,
        )

    def split(self, test_fraction: float = 0.15, seed: int = 0) -> tuple["FaceDataset", "FaceDataset"]:
        """Deterministic train/test split by content hash (see :func:`hash_split`)."""
        from .splits import hash_split

        is_test = hash_split(self.content_hash, test_fraction=test_fraction, seed=seed)
        return self.subset(~is_test), self.subset(is_test)

    def iter_batches(
        self, batch_size: int, size: tuple[int, int], *, strict: bool = False, decoder: str = "pil", device=None,
        processes: int = 0,
    ) -> Iterator[ImageBatch]:
        """The images in batches, as uint8 NCHW views: the :class:`FaceSource` protocol.

        ``strict``, ``decoder``, ``device`` and ``processes`` are ignored: nothing is decoded.

        Raises
        ------
        ValueError
            When the images are not of ``size`` (height, width).
        """
        if self.images.shape[1:3] != tuple(size):
            raise ValueError(f"the dataset's images are {self.images.shape[1:3]}, the model expects {tuple(size)}")
        for start in range(0, len(self), batch_size):
            rows = np.arange(start, min(start + batch_size, len(self)))
            yield rows, self.images[rows].transpose(0, 3, 1, 2), []
