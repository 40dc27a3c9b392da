"""Encode a dataset and stream its latents to Parquet, skipping and reporting unreadable images."""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Callable, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
import torch

from ..data.dataset import FaceSource
from ..data.images import resolve_n_jobs
from ..io.parquet import LatentParquetWriter
from ..transformers import describe_concealment

DECODERS = ("auto", "pil", "torch")


@dataclass
class ExportReport:
    """What an export wrote and skipped.

    Attributes
    ----------
    n_written : int
    skipped : list of (int, str)
        ``(row, reason)`` for each unreadable image; the row is its position in
        the source table, and file names are redacted from the reason.
    metadata : dict
        The ``bafo`` metadata stored in the file.
    """

    n_written: int = 0
    skipped: list[tuple[int, str]] = field(default_factory=list)
    metadata: dict = field(default_factory=dict)


def source_fingerprint(content_hashes: Sequence[str]) -> str:
    """SHA-256 over the sorted content hashes: identifies the exact set of source images."""
    digest = hashlib.sha256()
    for value in sorted(content_hashes):
        digest.update(str(value).encode())
    return digest.hexdigest()


def export_latents(
    estimator,
    source: FaceSource,
    out: str | os.PathLike,
    *,
    include_labels: bool = False,
    split: Sequence[str] | None = None,
    ids: Sequence[int] | None = None,
    id_column: str | None = None,
    metadata: dict | None = None,
    batch_size: int = 512,
    strict: bool = False,
    overwrite: bool = False,
    decoder: str = "auto",
    progress: Callable[[int], Any] | None = None,
) -> ExportReport:
    """Encode every image of ``source`` and write the latents to a Parquet file.

    Parameters
    ----------
    estimator : BAFOTransformer
        Fitted on images; encodes through its public
        :meth:`~bafo_pipeline.BAFOTransformer.encode_images`.
    source : FaceSource
        Labelled images read batch by batch: a :class:`~bafo_pipeline.data.FaceDataset`
        in memory, or :class:`~bafo_pipeline.data.ImageFiles` (a scanned
        folder or manifest, see :func:`~bafo_pipeline.data.scan_source`) whose
        files are decoded in streaming batches, so memory stays bounded.
    out : path
        The Parquet file; it appears only once complete.
    include_labels : bool, default=False
        Store the attribute columns (sensitive ones included) for audits.
        Off by default: a shared latent file should carry no sensitive value.
    split : sequence of str, optional
        One split name per source row, stored as a ``split`` column.
    ids : sequence of int, optional
        Row numbers to store as ``id`` (e.g. positions in the full dataset
        when ``source`` is a subset of it); default ``0 .. n-1``.
    id_column : str, optional
        A non-sensitive attribute column to use as ``id`` instead.
    metadata : dict, optional
        Extra provenance (e.g. :meth:`LoadedModel.provenance
        <bafo_pipeline.transformers.LoadedModel.provenance>`: the verified
        ``model_fingerprint``). The estimator's fitted ``concealment`` is always recorded.
    batch_size : int, default=512
    strict : bool, default=False
        Stop at the first unreadable image (no file is written) instead of
        skipping it.
    overwrite : bool, default=False
    decoder : {"auto", "pil", "torch"}, default="auto"
        How image files are decoded. ``"pil"``: Pillow in a thread pool on
        the CPU (with JPEG draft-mode scaling). ``"torch"``: batched JPEG
        decoding and resizing on the estimator's device (nvJPEG on a GPU;
        see :func:`~bafo_pipeline.data.jpeg_tensors.iter_tensor_batches`),
        with Pillow for anything else. ``"auto"`` picks ``"torch"`` when the
        estimator runs on CUDA, else ``"pil"``. On UTKFace faces the two
        differ by half a grey level per pixel on average (Pillow scales in
        the JPEG's DCT, torch resamples the full-size decode).
    progress : callable, optional
        Called with the number of source rows processed in each batch.
    """
    if decoder not in DECODERS:
        raise ValueError(f"decoder must be one of {DECODERS}, got {decoder!r}")
    if not estimator.input_format_.is_image:
        raise ValueError("export_latents encodes images; this estimator was fitted on tabular data")
    label_frame = source.attributes.reset_index(drop=True)
    if id_column is not None:
        if id_column not in label_frame.columns:
            raise ValueError(f"id column {id_column!r} not found; available: {list(label_frame.columns)}")
        if id_column in source.sensitive or (estimator.schema_ is not None and id_column in estimator.schema_.names):
            raise ValueError(f"id column {id_column!r} is a sensitive attribute; ids must not reveal one")
        ids = label_frame[id_column].to_numpy()
    elif ids is not None:
        ids = np.asarray(ids, dtype=np.int64)
        if len(ids) != len(label_frame):
            raise ValueError(f"{len(ids)} ids given for {len(label_frame)} source rows")
    else:
        ids = np.arange(len(label_frame), dtype=np.int64)
    hashes = source.content_hash
    settings = estimator.inference_settings()
    if decoder == "auto":
        decoder = "torch" if settings.device.type == "cuda" else "pil"
    provenance = {
        "model_fingerprint": None,
        "concealment": describe_concealment(estimator),
        "attribute_schema": None if estimator.schema_ is None else estimator.schema_.to_dict(),
        "source_fingerprint": None if hashes is None else source_fingerprint(hashes),
        "source_rows": len(label_frame),
        "precision": settings.precision,
        "decoder": "in-memory" if source.in_memory else decoder,
        **(metadata or {}),
    }
    split = None if split is None else np.asarray(split, dtype=object)
    label_schema = {c: _arrow_type(label_frame[c]) for c in label_frame.columns} if include_labels else None
    report = ExportReport()
    writer = LatentParquetWriter(
        out, estimator.latent_dim, metadata=provenance, id_type="int64" if ids.dtype.kind in "iu" else "string",
        label_schema=label_schema, include_split=split is not None, overwrite=overwrite,
    )
    size = estimator.input_format_.shape[:2]
    with writer, _encoder_threads_beside_decoding(settings.device, None if source.in_memory else decoder):
        batches = source.iter_batches(batch_size, size, strict=strict, decoder=decoder, device=settings.device)
        for rows, images, errors in batches:
            for row, reason in errors:
                report.skipped.append((row, _redact(reason)))
            if len(rows):
                latents = estimator.encode_images(images)
                writer.write_batch(
                    ids[rows], latents,
                    labels=label_frame.iloc[rows].reset_index(drop=True) if include_labels else None,
                    split=None if split is None else split[rows],
                )
                report.n_written += len(rows)
            if progress is not None:
                progress(len(rows) + len(errors))
    report.metadata = writer.metadata
    return report


@contextmanager
def _encoder_threads_beside_decoding(device: torch.device, decoder: str | None):
    """While Pillow decodes in a thread pool on the CPU, give the CPU encoder only the remaining cores.

    Decoding is the slower stage and its pool stays busy (it prefetches the next
    batch); an encoder that also claims every core makes the threads preempt each
    other. Measured on 2 cores: 0.64-0.72 of the decode ceiling with 2 encoder
    threads, 0.77-0.89 with 1 (benchmarks/encode_throughput.py).
    """
    if device.type != "cpu" or decoder != "pil":
        yield
        return
    threads = torch.get_num_threads()
    torch.set_num_threads(max(1, threads - resolve_n_jobs(None)))
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def _redact(reason: str) -> str:
    """Strip file names from a decode error: UTKFace names spell out the labels."""
    return re.sub(r"[^\s:'\"]+\.(jpe?g|png|bmp|gif|tiff?|webp|chip)\b[^\s:'\"]*", "<file>", reason, flags=re.IGNORECASE)


def _arrow_type(column: pd.Series) -> str:
    if pd.api.types.is_bool_dtype(column):
        return "bool"
    if pd.api.types.is_integer_dtype(column):
        return "int64"
    if pd.api.types.is_float_dtype(column):
        return "float64"
    return "string"
