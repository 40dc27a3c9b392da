"""Entry points for the data sources the CLI and benchmarks offer (synthetic, UTKFace, manifest, image folder):
decoded into memory (:func:`load_source`) or scanned for streaming (:func:`scan_source`)."""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from typing import Any

from ..attributes import DEFAULT_SENSITIVE
from .dataset import FaceDataset, FaceSource, LoadReport
from .images import is_positive_int


def load_source(
    *,
    utkface: str | os.PathLike | None = None,
    manifest: str | os.PathLike | None = None,
    synthetic_samples: int = 3000,
    image_size: int = 56,
    image_column: str = "path",
    sensitive: Sequence[str] = DEFAULT_SENSITIVE,
    limit: int | None = None,
    strict: bool = False,
    seed: int = 0,
    progress: Callable[[int], Any] | Any | None = None,
    allow_outside_root: bool = False,
) -> FaceDataset:
    """Load a UTKFace folder, a manifest, or (neither given) synthetic faces.

    Parameters
    ----------
    utkface : path, optional
        A UTKFace folder (labels in the file names).
    manifest : path, optional
        A CSV or Parquet table with an image-path column and attribute columns.
    synthetic_samples : int, default=3000
        Number of synthetic faces when no folder or manifest is given.
    image_size : int, default=56
    image_column, sensitive :
        Manifest columns: the image path and the sensitive attributes.
    limit : int, optional
        Load at most this many images (a deterministic subset).
    strict : bool, default=False
        Stop at the first unreadable image instead of skipping it.
    seed : int, default=0
        Seed of the synthetic faces.
    progress : callable or tqdm-like, optional
        Decoding progress.
    allow_outside_root : bool, default=False
        Accept files that lead outside the folder or the manifest's folder
        (symlinks, ``../`` and absolute manifest paths).
    """
    if utkface is not None and manifest is not None:
        raise ValueError("give either a UTKFace folder or a manifest, not both")
    _check_limit(limit)
    if utkface is not None:
        from .utkface import load_utkface

        return load_utkface(
            utkface, image_size=image_size, strict=strict, limit=limit, progress=progress,
            allow_outside_root=allow_outside_root,
        )
    if manifest is not None:
        from .manifest import load_manifest

        return load_manifest(
            manifest, image_size=image_size, image_column=image_column, sensitive=tuple(sensitive),
            strict=strict, limit=limit, progress=progress, allow_outside_root=allow_outside_root,
        )
    from .synthetic import make_synthetic_faces

    n_samples = synthetic_samples if limit is None else min(limit, synthetic_samples)
    return make_synthetic_faces(n_samples, image_size, random_state=seed)


def scan_source(
    *,
    utkface: str | os.PathLike | None = None,
    manifest: str | os.PathLike | None = None,
    images: str | os.PathLike | None = None,
    synthetic_samples: int = 3000,
    image_size: int = 56,
    image_column: str = "path",
    sensitive: Sequence[str] = DEFAULT_SENSITIVE,
    limit: int | None = None,
    strict: bool = False,
    seed: int = 0,
    allow_outside_root: bool = False,
) -> tuple[FaceSource, LoadReport]:
    """Like :func:`load_source`, but files are only scanned: their images are decoded later, in batches.

    Parameters
    ----------
    images : path, optional
        A folder of images without labels (searched recursively; see
        :func:`~bafo_pipeline.data.folders.scan_image_folder`): encoding only.
    allow_outside_root : bool, default=False
        Accept files that lead outside the folder or the manifest's folder
        (symlinks, ``../`` and absolute manifest paths).
    utkface, manifest, synthetic_samples, image_size, image_column, sensitive, limit, strict, seed
        As in :func:`load_source`; folders and manifests may be URIs (``s3://...``).

    Returns
    -------
    source : FaceSource
        :class:`~bafo_pipeline.data.tables.ImageFiles` for a folder or a
        manifest (``limit`` rows chosen by content hash, as :func:`load_source`
        chooses them); the drawn :class:`FaceDataset`
        for synthetic faces (``image_size`` pixels).
    report : LoadReport
        What the scan skipped or dropped.
    """
    _check_limit(limit)
    given = [name for name, value in (("utkface", utkface), ("manifest", manifest), ("images", images)) if value is not None]
    if len(given) > 1:
        raise ValueError(f"give one of a UTKFace folder, a manifest or an image folder, not {' and '.join(given)}")
    if not given:
        dataset = load_source(synthetic_samples=synthetic_samples, image_size=image_size, limit=limit, seed=seed)
        return dataset, dataset.report
    from .._utils.filesystems import resolve_filesystem
    from .tables import ImageFiles, subset_by_hash

    if utkface is not None:
        from .utkface import UTKFACE_SENSITIVE, scan_utkface

        location = utkface
        table, report = scan_utkface(utkface, strict=strict, allow_outside_root=allow_outside_root)
        sensitive = UTKFACE_SENSITIVE
    elif manifest is not None:
        from .manifest import scan_manifest

        location = manifest
        table, report = scan_manifest(
            manifest, image_column=image_column, sensitive=tuple(sensitive), strict=strict,
            allow_outside_root=allow_outside_root,
        )
    else:
        from .folders import scan_image_folder

        location, sensitive = images, ()
        table, report = scan_image_folder(images, strict=strict, allow_outside_root=allow_outside_root)
    # The same subset train takes (smallest content hashes): never the first names, which sort by label.
    table = subset_by_hash(table, limit)
    filesystem, _ = resolve_filesystem(location)
    return ImageFiles(table, tuple(sensitive), report, filesystem=filesystem), report


def _check_limit(limit) -> None:
    # A negative limit would slice off the end instead (``table[:-5]``: all but five).
    if limit is not None and not is_positive_int(limit):
        raise ValueError(f"limit must be a positive whole number, got {limit!r}")
