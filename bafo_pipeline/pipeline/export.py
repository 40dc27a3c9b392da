"""Encode a dataset and stream its latents to Parquet, skipping and reporting unreadable images."""

from __future__ import annotations

import hashlib
import os
import re
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import closing, contextmanager
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from .._nn.bundle import ImageEncoder
from .._nn.inference import InferenceSettings
from ..attributes import AttributeSchema
from ..data import key_fingerprint, load_id_key, pseudonymous_ids, write_key_table
from ..data.dataset import FaceSource
from ..data.decode_pool import choose_decode_processes, processes_available
from ..data.images import is_positive_int, resolve_n_jobs
from ..io.parquet import LatentParquetWriter

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


def source_fingerprint(content_hashes: Sequence[str], key: bytes) -> str:
    """A keyed BLAKE2b of the sorted content hashes, under the id key: identifies the exact set of source images.

    Keyed like the ids (:func:`~bafo_pipeline.data.pseudonymous_ids`): an unkeyed hash of a
    file's few images (a partition, a small export) could be recomputed by anyone holding
    those public images, linking them to the file and its rows. Only the key's holder can
    check it; two exports of the same images under the same key record the same value.
    """
    if not isinstance(key, (bytes, bytearray)) or not 16 <= len(key) <= 64:
        raise ValueError("the source fingerprint is keyed with the id key: 16 to 64 bytes")
    digest = hashlib.blake2b(key=bytes(key), digest_size=32, person=b"bafo-source-fp")
    for value in sorted(str(h) for h in content_hashes):
        digest.update(value.encode() + b"\n")
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
    id_from: str = "content",
    id_key: bytes | str | os.PathLike | None = None,
    key_table: str | os.PathLike | None = None,
    metadata: dict | None = None,
    batch_size: int = 512,
    strict: bool = False,
    overwrite: bool = False,
    decoder: str = "auto",
    decode_processes: int | None = None,
    progress: Callable[[int], Any] | None = None,
) -> ExportReport:
    """Encode every image of ``source`` and write the latents to a Parquet file.

    Parameters
    ----------
    estimator : BAFOTransformer or ImageEncoder
        Fitted on images; encodes through its public
        :meth:`~bafo_pipeline.BAFOTransformer.encode_images`. Or the encoder of its
        :meth:`~bafo_pipeline.BAFOTransformer.encoder_bundle` (what a Ray actor holds:
        torch only), which writes the same latents and metadata.
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
        Ids to store, one per source row, written in the source's order: the
        caller vouches that neither reveals anything (the distributed export
        passes pseudonymous ids in id order). Default: ``id_from``.
    id_column : str, optional
        A non-sensitive attribute column to use as ``id`` instead (the data
        owner's own key; missing or repeated values are refused, naming the
        rows). Rows are written in the order of their pseudonymous ids.
    id_from : {"content", "row"}, default="content"
        Without ``ids`` or ``id_column``: ``"content"``, the pseudonymous id of
        each image (:func:`~bafo_pipeline.data.pseudonymous_ids`: a keyed hash
        of its content, the same in every export under the same key), rows
        written in id order; ``"row"``, a manifest's 1-based data-row numbers
        (they reveal whatever the manifest's order reveals), rows written in
        the order of the pseudonymous ids. Neither the ids nor the row order
        follow file names (UTKFace names begin with the labels).
    id_key : bytes, path or None, default=None
        The key of the pseudonymous ids: raw bytes, a key file, or None for
        the data owner's default key file (:func:`~bafo_pipeline.data.load_id_key`:
        ``$BAFO_ID_KEY_FILE`` or ``~/.config/bafo/id.key``, created on first use).
        Only its fingerprint is written with the data. It also keys the recorded
        ``source_fingerprint`` (:func:`source_fingerprint`); with ``ids`` it is used
        for nothing else, and without it no source fingerprint is recorded.
    key_table : path, optional
        Also write which source each written id came from (and its manifest
        row), readable by its owner only (:func:`~bafo_pipeline.data.write_key_table`):
        for the data owner, never for the people the latents go to. Refused
        when it is ``out`` or exists (unless ``overwrite``).
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
        estimator runs on CUDA, else ``"pil"``, and always ``"pil"`` for a model
        whose concealment draws noise from each image's pixels
        (:class:`~bafo_pipeline.transformers.KeyedNoise`: every export of an
        image must see the same pixels). On UTKFace faces the two
        differ by half a grey level per pixel on average (Pillow scales in
        the JPEG's DCT, torch resamples the full-size decode).
    decode_processes : int or None, default=None
        Pillow decoding in that many worker processes (forked; see
        :mod:`~bafo_pipeline.data.decode_pool`) instead of threads: the same
        pixels and skip reasons, and on a few-core machine the decoders and
        the encoder no longer share one core's worth of Python time. ``None``
        chooses (:func:`~bafo_pipeline.data.decode_pool.choose_decode_processes`):
        processes when ``decoder`` resolves to ``"pil"``, the images are local
        files, the platform can fork, the encoder may use at least 2 threads
        (``torch.get_num_threads()``; a Ray actor with one CPU gets 1) and
        there are at least :data:`~bafo_pipeline.data.decode_pool.MIN_IMAGES_FOR_PROCESSES`
        images; else threads. ``0`` forces threads. The count used is
        recorded in the file's metadata (``decode_processes``).
    progress : callable, optional
        Called with the number of source rows processed in each batch.
    """
    if decoder not in DECODERS:
        raise ValueError(f"decoder must be one of {DECODERS}, got {decoder!r}")
    model = _read_model(estimator)
    if key_table is not None:
        key_table = _check_key_table(key_table, out, overwrite)
        if source_files(source) is None:
            raise ValueError("this source names no files (synthetic or in-memory images): there is no key table to write")
    if split is not None and len(split) != len(source):
        raise ValueError(f"{len(split)} split names given for {len(source)} source rows")
    ids, order, id_provenance, key = _ids_and_order(model.attribute_names, source, ids, id_column, id_from, id_key)
    conditions = _transform_attributes(model, source.attributes) if model.needs_attributes else None
    if order is not None:  # rows written in the order of their pseudonymous ids
        source, ids = source.subset(order), ids[order]
        split = None if split is None else np.asarray(split, dtype=object)[order]
        conditions = None if conditions is None else conditions.iloc[order].reset_index(drop=True)
    attributes = source.attributes
    label_frame = attributes.reset_index(drop=True)
    hashes = source.content_hash
    settings = model.settings
    if decoder == "auto":
        # Noise drawn from each image's pixels (KeyedNoise) must see the same pixels in every export: Pillow's.
        decoder = "torch" if settings.device.type == "cuda" and not model.draws_per_input else "pil"
    decode_processes = _decode_processes(decode_processes, source, decoder)
    provenance = {
        "model_fingerprint": None,
        **model.metadata,
        # Keyed: None where the images have no content hash or no id key was used (ids given, no id_key).
        "source_fingerprint": None if hashes is None or key is None else source_fingerprint(hashes, key),
        "source_rows": len(label_frame),
        "precision": settings.precision,
        "decoder": "in-memory" if source.in_memory else decoder,
        "decode_processes": decode_processes,
        **id_provenance,
        **(metadata or {}),
    }
    split = None if split is None else np.asarray(split, dtype=object)
    label_schema = {c: _arrow_type(label_frame[c]) for c in label_frame.columns} if include_labels else None
    report = ExportReport()
    written: list[np.ndarray] = []
    writer = LatentParquetWriter(
        out, model.latent_dim, metadata=provenance, id_type="int64" if ids.dtype.kind in "iu" else "string",
        label_schema=label_schema, include_split=split is not None, overwrite=overwrite,
    )
    size = model.image_shape[:2]
    clock = _StageClock()
    decoding = None if source.in_memory else decoder
    with writer, _encoders_beside_decoding(settings.device, decoding, decode_processes) as encode, closing(
        iter(source.iter_batches(batch_size, size, strict=strict, decoder=decoder, device=settings.device,
                                 processes=decode_processes))
    ) as batches:
        while True:
            with clock.stage("waiting_for_decoder"):
                batch = next(batches, None)
            if batch is None:
                break
            rows, images, errors = batch
            for row, reason in errors:
                report.skipped.append((int(row if order is None else order[row]), _redact(reason)))
            if len(rows):
                with clock.stage("encoding"):
                    latents = encode(model.encoder, images, None if conditions is None else conditions.iloc[rows])
                with clock.stage("writing"):
                    writer.write_batch(
                        ids[rows], latents,
                        labels=label_frame.iloc[rows].reset_index(drop=True) if include_labels else None,
                        split=None if split is None else split[rows],
                    )
                report.n_written += len(rows)
                written.append(rows)
            if progress is not None:
                progress(len(rows) + len(errors))
    report.metadata = writer.metadata
    report.timings = clock.totals()
    if key_table is not None:
        _write_key_table(key_table, source, ids, np.concatenate(written) if written else np.zeros(0, np.int64))
    return report


@dataclass(frozen=True)
class _Model:
    """What an export reads from its model, an estimator or an :class:`~bafo_pipeline._nn.bundle.ImageEncoder` alike."""

    encoder: Any  # its encode_images(uint8 NCHW) gives the latents
    settings: InferenceSettings  # device and precision
    image_shape: tuple[int, ...]  # (height, width, channels)
    latent_dim: int
    metadata: dict  # concealment and attribute schema, recorded in the file
    attribute_names: tuple[str, ...]
    needs_attributes: bool  # its concealment moves each attribute group's latents: every row's labels are needed
    draws_per_input: bool  # its concealment draws noise from each image's pixels: one decoder for every export


def _read_model(model) -> _Model:
    """What ``export_latents`` needs of ``model``; refuses a tabular estimator."""
    needs_attributes = draws_per_input = False
    if isinstance(model, ImageEncoder):
        image_shape, metadata = model.image_shape, dict(model.metadata)  # the bundle holds describe_model's dict
    else:
        # Imported here, not above: an actor that exports with an ImageEncoder never loads the
        # estimators (scikit-learn: about a second of every fresh worker process).
        from ..transformers import describe_model

        if not model.input_format_.is_image:
            raise ValueError("export_latents encodes images; this estimator was fitted on tabular data")
        image_shape, metadata = model.input_format_.shape, describe_model(model)
        needs_attributes = model.needs_sensitive_features_to_transform
        draws_per_input = model.draws_per_input
    schema = metadata["attribute_schema"]
    names = tuple(attribute["name"] for attribute in schema["attributes"]) if schema else ()
    return _Model(model, model.inference_settings(), tuple(image_shape), model.latent_dim, metadata, names,
                  needs_attributes, draws_per_input)


def _transform_attributes(model: _Model, attributes: pd.DataFrame) -> pd.DataFrame:
    """The attributes a label-conditional concealment needs, one row per source row (positions reset);
    refused, naming the column or the rows, where the source lacks some."""
    what = f"this model's concealment ({model.metadata.get('concealment')}) needs every row's sensitive attributes"
    missing = [name for name in model.attribute_names if name not in attributes.columns]
    if missing:
        raise ValueError(f"{what} {list(model.attribute_names)}; the source has no {missing} column")
    frame = attributes[list(model.attribute_names)]
    empty = np.flatnonzero(frame.isna().any(axis=1).to_numpy())
    if len(empty):
        raise ValueError(f"{what}; {_named_rows(attributes.index, empty)} lack some of {list(model.attribute_names)}")
    schema = AttributeSchema.from_dict(model.metadata["attribute_schema"])
    for attribute in schema.attributes:
        if attribute.kind != "continuous":
            unknown = np.flatnonzero(~frame[attribute.name].isin(list(attribute.categories)).to_numpy())
            if len(unknown):
                raise ValueError(
                    f"{what}; {_named_rows(attributes.index, unknown)} have {attribute.name} values the model never "
                    f"saw (first: {frame[attribute.name].iloc[unknown[0]]!r}; known: {list(attribute.categories)})"
                )
    frame = frame.reset_index(drop=True)
    try:
        schema.encode(frame)
    except ValueError as error:  # what the category check above does not cover, e.g. an age that is not a number
        raise ValueError(f"{what}: {error} (rows counted from 0, in the source's order)") from None
    return frame


def _ids_and_order(attribute_names: tuple[str, ...], source: FaceSource, ids, id_column, id_from, id_key):
    """``(ids, order, provenance, key)``: the id of each source row, the order to write the rows in (None: as
    given), what the file records about the ids, and the id key (None: ids given without ``id_key``)."""
    n = len(source)
    if ids is not None:
        if id_column is not None:
            raise ValueError("give ids or id_column, not both")
        ids = np.asarray(ids, dtype=np.int64)
        if len(ids) != n:
            raise ValueError(f"{len(ids)} ids given for {n} source rows")
        # The key only keys the source fingerprint here: never load (or create) the default key file for it.
        return ids, None, {"id_scheme": "given"}, None if id_key is None else load_id_key(id_key)
    if id_from not in ("content", "row"):
        raise ValueError(f"id_from must be 'content' or 'row', got {id_from!r}")
    hashes = source.content_hash
    if hashes is None:
        raise ValueError("pseudonymous ids need the images' content hashes, and this source has none; pass ids")
    key = load_id_key(id_key)
    content_ids = pseudonymous_ids(hashes, key)
    attributes = source.attributes
    _refuse_missing_or_repeated_ids(content_ids, attributes.index, "the content ids (byte-identical images?)")
    order = np.argsort(content_ids, kind="stable")
    provenance = {"id_key_fingerprint": key_fingerprint(key)}
    if id_column is not None:
        if id_column not in attributes.columns:
            raise ValueError(f"id column {id_column!r} not found; available: {list(attributes.columns)}")
        if id_column in source.sensitive or id_column in attribute_names:
            raise ValueError(f"id column {id_column!r} is a sensitive attribute; ids must not reveal one")
        ids = attributes[id_column].to_numpy()
        _refuse_missing_or_repeated_ids(ids, attributes.index, f"id column {id_column!r}")
        return ids, order, {"id_scheme": f"column {id_column}", **provenance}, key
    if id_from == "row":
        if attributes.index.name != "row":
            raise ValueError("id_from='row' needs a manifest (its data-row numbers); this source has none")
        return attributes.index.to_numpy(dtype=np.int64), order, {"id_scheme": "manifest row", **provenance}, key
    return content_ids, order, {"id_scheme": "content", **provenance}, key


def _check_key_table(key_table, out, overwrite: bool) -> Path:
    """The key table's path, refused before any work where it would clobber the export or an older table."""
    path = Path(key_table).expanduser()
    if os.path.abspath(path) == os.path.abspath(out):
        raise ValueError(f"the key table {key_table} would replace the export itself; keep it apart")
    if path.suffix.lower() not in (".csv", ".parquet", ".pq"):
        raise ValueError(f"{key_table}: a key table is a .csv or .parquet file")
    if path.exists() and not overwrite:
        raise FileExistsError(f"{key_table} already exists; pass overwrite=True (--overwrite) to replace it")
    return path


def _write_key_table(path: Path, source: FaceSource, ids: np.ndarray, written: np.ndarray) -> None:
    """id -> source file (and manifest row) of every row written: what only the data owner may keep."""
    files = source_files(source)
    if files is None:
        raise ValueError("this source names no files: there is no key table to write")
    rows = source.attributes.index
    write_key_table(
        path, ids[written], [str(files[i]) for i in written],
        rows=rows.to_numpy()[written] if rows.name == "row" else None, overwrite=True,
    )


def source_files(source: FaceSource) -> list | None:
    """The file each row of ``source`` was read from (paths or URIs), or None when it names none.

    For the data owner's eyes only (key tables, skip listings): file names such as UTKFace's
    spell out the labels.
    """
    table = getattr(source, "table", None)
    if table is not None and "path" in table.columns:
        return table["path"].tolist()
    return getattr(source, "sources", None)


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


def _decode_processes(requested: int | None, source: FaceSource, decoder: str) -> int:
    """The worker processes that decode (0: threads, or nothing to decode); ``requested`` None chooses."""
    if requested is not None and not (is_positive_int(requested) or (isinstance(requested, int) and requested == 0)):
        raise ValueError(f"decode_processes must be None, 0 or a positive int, got {requested!r}")
    possible = not source.in_memory and decoder == "pil" and getattr(source, "local_files", False)
    if requested is None:
        return choose_decode_processes(len(source), torch.get_num_threads()) if possible else 0
    if requested and not possible:
        raise ValueError(
            "decode_processes applies to Pillow decoding of files on this machine; this export "
            + ("has decoded images in memory" if source.in_memory else f"uses decoder {decoder!r}" if decoder != "pil"
               else "reads bytes in memory or files on another filesystem")
        )
    if requested and not processes_available():
        raise ValueError("decode_processes needs forked worker processes, which this platform does not offer; pass 0")
    return int(requested)


@contextmanager
def _encoders_beside_decoding(device: torch.device, decoder: str | None, processes: int = 0):
    """Share the CPU between Pillow's decoders and the encoder; yields ``encode(estimator, images)``.

    The encoder gets the intra-op threads the decoders (``processes`` worker
    processes, or else the thread pool) leave, at least one: intra-op threads
    wait for each other at every operation, so when they outnumber the free
    cores they stall (2 cores: 0.64-0.72 of the decode ceiling with 2 intra-op
    threads, 0.77-0.89 with 1 and bf16, benchmarks/encode_throughput.py).

    Where that leaves one intra-op thread on a machine with several cores, two
    Python threads encode the two halves of each batch instead, each with that
    one thread: they never wait for each other, and the scheduler gives them
    whatever CPU the decoders leave. With two decoder processes on 2 cores
    this was the fastest of the arrangements tried (one encoder thread, two
    halves, two intra-op threads; one or two processes). A row's latent does
    not depend on how its batch is split (the CPU encoder pads every slice to
    one size).
    """
    if device.type != "cpu" or decoder != "pil":
        yield _encode_whole
        return
    threads = torch.get_num_threads()
    intra_op = max(1, threads - (processes or resolve_n_jobs(None)))
    torch.set_num_threads(intra_op)
    pool = ThreadPoolExecutor(1, thread_name_prefix="bafo-encode") if intra_op == 1 and (os.cpu_count() or 1) > 1 else None
    try:
        yield _encode_whole if pool is None else partial(_encode_halves, pool)
    finally:
        if pool is not None:
            pool.shutdown(wait=True)
        torch.set_num_threads(threads)


def _encode_whole(estimator, images, attributes: pd.DataFrame | None = None) -> np.ndarray:
    """Latents of ``images``; ``attributes`` (their rows' labels) only for a label-conditional concealment."""
    if attributes is None:
        return estimator.encode_images(images)
    return estimator.encode_images(images, sensitive_features=attributes.reset_index(drop=True))


def _encode_halves(pool: ThreadPoolExecutor, estimator, images, attributes: pd.DataFrame | None = None) -> np.ndarray:
    half = (len(images) + 1) // 2
    if half == len(images):
        return _encode_whole(estimator, images, attributes)
    rest = None if attributes is None else attributes.iloc[half:]
    second = pool.submit(_encode_whole, estimator, images[half:], rest)
    first = _encode_whole(estimator, images[:half], None if attributes is None else attributes.iloc[:half])
    return np.concatenate([first, second.result()])


def _refuse_missing_or_repeated_ids(ids: np.ndarray, index: pd.Index, what: str) -> None:
    """Ids must identify rows: no missing value, no value twice (the message names the rows)."""
    values = pd.Series(ids)
    missing = np.flatnonzero(values.isna().to_numpy())
    if len(missing):
        raise ValueError(f"{what} is empty at {_named_rows(index, missing)}; ids must identify rows")
    repeated = values.duplicated(keep=False).to_numpy()
    if repeated.any():
        groups = pd.Series(np.flatnonzero(repeated)).groupby(values[repeated].to_numpy(), sort=False)
        shown = "; ".join(_named_rows(index, positions.to_numpy()) for _, positions in list(groups)[:3])
        raise ValueError(
            f"{what} repeats values: {int(repeated.sum())} rows share {groups.ngroups} ids ({shown}"
            f"{'; ...' if groups.ngroups > 3 else ''}); ids must be unique"
        )


def _named_rows(index: pd.Index, positions: np.ndarray) -> str:
    """``"manifest rows 4, 9"`` or ``"rows 3, 8, 12, 20, 31 and 2 more"``: rows as the user knows them, a
    manifest's 1-based data-row numbers (header not counted) where the source keeps them, else 1-based
    positions in the source."""
    manifest = index.name == "row"
    numbers = [str(index[p] if manifest else p + 1) for p in positions[:5]]
    more = f" and {len(positions) - 5} more" if len(positions) > 5 else ""
    return f"{'manifest rows' if manifest else 'rows'} {', '.join(numbers)}{more}"


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
