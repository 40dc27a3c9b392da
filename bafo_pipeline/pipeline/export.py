"""Encode a dataset and stream its latents to Parquet, skipping and reporting unreadable images."""

from __future__ import annotations

import hashlib
import os
import re
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import partial
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
    timings : dict
        How the export spent its time, in seconds: ``wall``; in the calling
        thread, ``waiting_for_decoder`` (blocked until the next decoded batch),
        ``encoding`` and ``writing``, and its CPU time ``caller_cpu``;
        ``process_cpu``, the whole process's CPU time (decoder and encoder
        threads included).
    """

    n_written: int = 0
    skipped: list[tuple[int, str]] = field(default_factory=list)
    metadata: dict = field(default_factory=dict)
    timings: dict = field(default_factory=dict)


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
    clock = _StageClock()
    with writer, _encoders_beside_decoding(settings.device, None if source.in_memory else decoder) as encode:
        batches = iter(source.iter_batches(batch_size, size, strict=strict, decoder=decoder, device=settings.device))
        while True:
            with clock.stage("waiting_for_decoder"):
                batch = next(batches, None)
            if batch is None:
                break
            rows, images, errors = batch
            for row, reason in errors:
                report.skipped.append((row, _redact(reason)))
            if len(rows):
                with clock.stage("encoding"):
                    latents = encode(estimator, images)
                with clock.stage("writing"):
                    writer.write_batch(
                        ids[rows], latents,
                        labels=label_frame.iloc[rows].reset_index(drop=True) if include_labels else None,
                        split=None if split is None else split[rows],
                    )
                report.n_written += len(rows)
            if progress is not None:
                progress(len(rows) + len(errors))
    report.metadata = writer.metadata
    report.timings = clock.totals()
    return report


class _StageClock:
    """Wall time per stage of the calling thread, plus the thread's and the process's CPU time."""

    def __init__(self) -> None:
        self._seconds: dict[str, float] = {"waiting_for_decoder": 0.0, "encoding": 0.0, "writing": 0.0}
        self._start = (time.perf_counter(), time.thread_time(), time.process_time())

    @contextmanager
    def stage(self, name: str):
        started = time.perf_counter()
        try:
            yield
        finally:
            self._seconds[name] += time.perf_counter() - started

    def totals(self) -> dict[str, float]:
        wall, caller, process = self._start
        return {
            "wall": time.perf_counter() - wall, **self._seconds,
            "caller_cpu": time.thread_time() - caller, "process_cpu": time.process_time() - process,
        }


@contextmanager
def _encoders_beside_decoding(device: torch.device, decoder: str | None):
    """Share the CPU between Pillow's decoder threads and the encoder; yields ``encode(estimator, images)``.

    The encoder gets the intra-op threads the decoder pool leaves (at least one):
    intra-op threads wait for each other at every operation, so when they
    outnumber the free cores they stall (2 cores: 0.64-0.72 of the decode
    ceiling with 2 intra-op threads, 0.77-0.89 with 1 and bf16; 0.19 against
    0.52 with float32 on a loaded machine; benchmarks/encode_throughput.py).

    Where that leaves one intra-op thread on a machine with several cores, two
    Python threads encode the two halves of each batch instead, each with that
    one thread: they never wait for each other, and the scheduler gives them
    whatever CPU the decoders leave. The decoders hold the GIL for part of
    every image, so on 2 cores they keep about one core busy, and without its
    second thread a float32 encoder (slower than decoding per image on an
    AVX2-only CPU) would leave the rest idle. A row's latent does not depend on
    how its batch is split (the CPU encoder pads every slice to one size).
    """
    if device.type != "cpu" or decoder != "pil":
        yield _encode_whole
        return
    threads = torch.get_num_threads()
    intra_op = max(1, threads - resolve_n_jobs(None))
    torch.set_num_threads(intra_op)
    pool = ThreadPoolExecutor(1, thread_name_prefix="bafo-encode") if intra_op == 1 and (os.cpu_count() or 1) > 1 else None
    try:
        yield _encode_whole if pool is None else partial(_encode_halves, pool)
    finally:
        if pool is not None:
            pool.shutdown(wait=True)
        torch.set_num_threads(threads)


def _encode_whole(estimator, images) -> np.ndarray:
    return estimator.encode_images(images)


def _encode_halves(pool: ThreadPoolExecutor, estimator, images) -> np.ndarray:
    half = (len(images) + 1) // 2
    if half == len(images):
        return estimator.encode_images(images)
    second = pool.submit(estimator.encode_images, images[half:])
    first = estimator.encode_images(images[:half])
    return np.concatenate([first, second.result()])


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
