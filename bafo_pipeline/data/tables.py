"""Scanned tables of image files (what scan_utkface and scan_manifest return) and what is made of them.

A scanned table has one row per image: ``path``, ``content_hash`` and the
attribute columns. :func:`dataset_from_table` decodes all of it into a
:class:`FaceDataset`; :class:`ImageFiles` wraps it as a :class:`FaceSource`
whose images are decoded in streaming batches (exports larger than memory).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import closing
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np
import pandas as pd

from .dataset import FaceDataset, ImageBatch, LoadReport
from .files import DEFAULT_MAX_FILE_BYTES, StoredFile
from .images import ImageDecodeError, Size, decode_images, is_positive_int, iter_decoded_batches

__all__ = ["PRIVATE_COLUMNS", "ImageFiles", "dataset_from_table", "subset_by_hash"]

#: Columns of a scanned table that are never labels: file paths spell out labels (UTKFace).
PRIVATE_COLUMNS = ("path", "content_hash")


def subset_by_hash(table: pd.DataFrame, limit: int | None) -> pd.DataFrame:
    """The ``limit`` rows with the smallest content hashes, in their original order."""
    if limit is None:
        return table
    if not is_positive_int(limit):
        raise ValueError(f"limit must be a positive int or None, got {limit!r}")
    if limit >= len(table):
        return table
    chosen = np.sort(np.argsort(table["content_hash"].to_numpy(dtype=str), kind="stable")[: int(limit)])
    return table.iloc[chosen]


def dataset_from_table(
    table: pd.DataFrame,
    report: LoadReport,
    *,
    source: str,
    sensitive: Sequence[str],
    attribute_columns: Sequence[str],
    describe: Callable[[Any, str, str], tuple[str, str]],
    image_size: Size,
    strict: bool,
    n_jobs: int | None,
    limit: int | None,
    progress: Any,
    max_pixels: int | None,
) -> FaceDataset:
    """Decode the images of a scanned table into a :class:`FaceDataset`.

    ``describe(index_label, path, reason)`` turns a decode failure into the
    ``(item, reason)`` pair recorded in the report (or raised when strict).
    """
    table = subset_by_hash(table, limit)
    paths = table["path"].tolist()
    try:
        images, kept, errors = decode_images(
            paths, image_size, strict=strict, n_jobs=n_jobs, progress=progress, max_pixels=max_pixels
        )
    except ImageDecodeError as err:
        pos = paths.index(err.path)
        raise ImageDecodeError(*describe(table.index[pos], err.path, err.reason)) from err
    failed = np.setdiff1d(np.arange(len(paths)), kept)
    report.skipped.extend(describe(table.index[pos], path, reason) for pos, (path, reason) in zip(failed, errors))
    kept_table = table.iloc[kept]
    report.n_loaded = len(kept_table)
    if report.n_loaded == 0:
        first = "; ".join(f"{item}: {reason}" for item, reason in report.skipped[:3])
        example = f"; e.g. {first}" if first else ""
        raise ValueError(f"no images could be loaded from {source} ({report.summary()}){example}")
    return FaceDataset(
        images=images,
        attributes=kept_table[list(attribute_columns)].reset_index(drop=True),
        sensitive=tuple(sensitive),
        content_hash=kept_table["content_hash"].to_numpy(dtype=object),
        sources=kept_table["path"].tolist(),
        report=report,
    )


@dataclass
class ImageFiles:
    """Image files listed in a scanned table, decoded batch by batch: a :class:`FaceSource`.

    Parameters
    ----------
    table : DataFrame
        ``path``, ``content_hash`` and attribute columns, one row per image
        (as :func:`~bafo_pipeline.data.scan_utkface` or
        :func:`~bafo_pipeline.data.scan_manifest` return it). ``path`` may
        also hold the files' bytes (images already in memory, such as the
        rows of a Ray dataset).
    sensitive : tuple of str, default=()
        The sensitive attribute columns.
    report : LoadReport
        What the scan skipped or dropped.
    filesystem : pyarrow.fs.FileSystem, optional
        Where the paths are, when not (only) on this machine: files are then
        read as :class:`~bafo_pipeline.data.files.StoredFile` (regular files
        only, at most ``max_file_bytes`` each).
    max_file_bytes : int, default=64 MiB
    """

    table: pd.DataFrame
    sensitive: tuple[str, ...] = ()
    report: LoadReport = field(default_factory=LoadReport)
    filesystem: Any = None
    max_file_bytes: int = DEFAULT_MAX_FILE_BYTES
    in_memory: ClassVar[bool] = False

    def __post_init__(self) -> None:
        if "path" not in self.table.columns:
            raise ValueError(f"a table of image files needs a 'path' column; got {list(self.table.columns)}")
        if self.table.index.name != "row":  # a manifest's 1-based data-row numbers are kept for messages
            self.table = self.table.reset_index(drop=True)
        self.sensitive = tuple(self.sensitive)

    def __len__(self) -> int:
        return len(self.table)

    @property
    def attributes(self) -> pd.DataFrame:
        """The label columns (no paths, no hashes); indexed by the manifest's data-row numbers for a manifest."""
        return self.table.drop(columns=[c for c in PRIVATE_COLUMNS if c in self.table.columns])

    @property
    def content_hash(self) -> np.ndarray | None:
        """Hex digest of each file's bytes, when the scan computed them."""
        return None if "content_hash" not in self.table.columns else self.table["content_hash"].to_numpy(dtype=object)

    def subset(self, indices) -> "ImageFiles":
        """The rows at ``indices`` (integer positions or a boolean mask)."""
        indices = np.asarray(indices)
        if indices.dtype == bool:
            indices = np.flatnonzero(indices)
        return ImageFiles(self.table.iloc[indices], self.sensitive, self.report, self.filesystem, self.max_file_bytes)

    @property
    def local_files(self) -> bool:
        """True when every row names a file on this machine (no other filesystem, no bytes in memory)."""
        return self.filesystem is None and all(isinstance(p, str) for p in self.table["path"])

    def iter_batches(
        self, batch_size: int, size: tuple[int, int], *, strict: bool = False, decoder: str = "pil", device=None,
        processes: int = 0,
    ) -> Iterator[ImageBatch]:
        """Decode the files in batches: ``(rows, uint8 NCHW images, [(row, reason), ...])``.

        ``decoder="pil"`` decodes with Pillow (NCHW views of NHWC arrays) in a
        thread pool, or in ``processes`` worker processes when that is positive
        and :attr:`local_files` holds (see :mod:`~bafo_pipeline.data.decode_pool`);
        ``"torch"`` decodes JPEGs in batches on ``device`` (nvJPEG on a GPU; see
        :func:`~bafo_pipeline.data.jpeg_tensors.iter_tensor_batches`) and
        returns tensors there. Unreadable files are reported by row, or raise
        :class:`ImageDecodeError` when ``strict``. Closing the generator stops
        the decoders (worker processes included).
        """
        paths = self._sources()
        if decoder == "torch":
            from .jpeg_tensors import iter_tensor_batches

            batches = iter_tensor_batches(paths, batch_size=batch_size, size=size, device=device, strict=strict)
        elif decoder == "pil" and processes > 0 and self.local_files:
            from .decode_pool import iter_decoded_batches_in_processes

            batches = iter_decoded_batches_in_processes(paths, batch_size, size, n_processes=processes, strict=strict)
        elif decoder == "pil":
            batches = iter_decoded_batches(paths, batch_size=batch_size, size=size, strict=strict)
        else:
            raise ValueError(f"decoder must be 'pil' or 'torch', got {decoder!r}")
        with closing(batches):
            offset = 0
            for indices, images, errors in batches:
                # The decoders report failures as (path, reason) in order; map them back to rows.
                batch_rows = range(offset, min(offset + batch_size, len(paths)))
                missing = sorted(set(batch_rows) - {int(i) for i in indices})
                offset += batch_size
                if decoder == "pil":
                    images = images.transpose(0, 3, 1, 2)
                yield np.asarray(indices, dtype=np.int64), images, [(row, reason) for row, (_, reason) in zip(missing, errors)]

    def _sources(self) -> list:
        """What the decoders read: paths, bytes, or files on ``filesystem``."""
        if self.filesystem is not None:
            return [StoredFile(self.filesystem, str(p), self.max_file_bytes) for p in self.table["path"]]
        return [p if isinstance(p, (bytes, bytearray, memoryview)) else str(p) for p in self.table["path"]]
