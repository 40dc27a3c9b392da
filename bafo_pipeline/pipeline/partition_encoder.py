"""One partition of a distributed export: read its files, encode them, write one Parquet file atomically.

:class:`PartitionEncoder` is the callable class that Ray Data's ``map_batches`` runs in an
actor pool: the fitted model is unpickled once per actor and each call encodes whole
partitions. A partition is the unit of work, of atomic output and of resumption: its file
appears (temporary file, then rename) only once every row is in it, and a re-run skips the
partitions whose file is there.

Inside a call the work is the in-process export's: a thread pool reads, hashes and decodes
the files of the next batch while the model encodes the current one; Pillow on a CPU
(JPEG draft-mode scaling), batched nvJPEG decoding on a GPU; the estimator's precision.
Bad files are skipped with a reason and never cost their batch's good rows.
"""

from __future__ import annotations

import hashlib
import json
import tempfile
import time
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.fs as pafs
import torch

from ..data.images import ImageDecodeError, decode_image
from ..data.splits import hash_split
from ..io.filesystems import is_local, join
from ..io.parquet import LatentParquetWriter
from .encoding import encode_images, inference_settings
from .ids import content_digest, id_of_digest, keyed_order
from .inputs import read_file_bytes

__all__ = [
    "DATASET_RESERVED",
    "JobSpec",
    "PartitionEncoder",
    "PartitionFailed",
    "RowEncoder",
    "finish_partition",
    "key_rows",
    "partition_file_name",
    "write_group",
]

#: Columns of a ``ray.data.Dataset`` source that are never labels: the image bytes and Ray's path column.
DATASET_RESERVED = ("bytes", "path")

#: Most skipped entries listed per partition file (all are counted by reason).
MAX_LISTED_SKIPS = 1000


class PartitionFailed(RuntimeError):
    """A file stopped a ``strict`` job; the message names its source (row or file key) and why."""


def partition_file_name(partition: int) -> str:
    """``part-00042.parquet``: fixed per partition, so a re-run finds what is done."""
    return f"part-{partition:05d}.parquet"


@dataclass(frozen=True)
class JobSpec:
    """Everything an actor needs besides the model and the inputs (picklable, no secrets logged).

    Attributes
    ----------
    out : str
        Output folder on ``filesystem``.
    plan_fingerprint : str
        Identifies the job's inputs and settings; stored in every partition file.
    n_partitions : int
    id_key : bytes
        The data owner's id key (never written anywhere).
    id_from : {"content", "row"}
        Keyed content hash, or the manifest's row number.
    label_schema : dict or None
        Label columns to store (``include_labels``), name -> Arrow type name.
    split : {"all", "train", "test"}
    include_split : bool
    split_rule : dict or None
        ``{"test_fraction": f, "seed": s}`` of the model's content-hash split.
    batch_size, decoder, strict, max_file_bytes, threads
        As in :func:`~bafo_pipeline.pipeline.distributed.encode_dataset`.
    metadata : dict
        Stored in every file's ``bafo`` metadata (model fingerprint, attribute schema, ...).
    """

    out: str
    plan_fingerprint: str
    n_partitions: int
    id_key: bytes
    id_from: str = "content"
    label_schema: dict | None = None
    split: str = "all"
    include_split: bool = False
    split_rule: dict | None = None
    batch_size: int = 512
    decoder: str = "auto"
    strict: bool = False
    max_file_bytes: int = 64 * 1024 * 1024
    threads: int = 2
    metadata: dict = field(default_factory=dict)

    @property
    def needs_sha1(self) -> bool:
        return self.split != "all" or self.include_split


@dataclass
class _Loaded:
    """One file after the reading thread: its pixels (or bytes for the torch decoder), or why not."""

    image: np.ndarray | bytes | None = None
    digest: bytes | None = None
    sha1: str | None = None
    reason: str | None = None


class PartitionEncoder:
    """Ray Data callable class: holds the model once per actor, encodes and writes whole partitions.

    Parameters
    ----------
    estimator : BAFOTransformer or list
        Fitted on images; or a one-element list holding a Ray ``ObjectRef`` of it (nested, so
        Ray hands the actor the reference and the model is stored once for all actors).
    filesystem : pyarrow.fs.FileSystem
        Where the inputs and the output folder are.
    spec : JobSpec
    device : str, optional
        ``"cuda"`` or ``"cpu"``; default: CUDA when this actor was given a GPU.

    Notes
    -----
    ``__call__`` takes a batch ``{"partition": int64[k], "inputs": bytes[k]}`` (each
    ``inputs`` an Arrow IPC stream of the partition's ``location``, ``source``, ``row`` and
    label columns) and returns ``{"partition": int64[k], "stats": str[k]}`` (JSON).
    """

    def __init__(self, estimator, filesystem: pafs.FileSystem, spec: JobSpec, device: str | None = None) -> None:
        if isinstance(estimator, list):
            import ray

            estimator = ray.get(estimator[0])
        if device is None:
            device = "cuda" if torch.cuda.is_available() and _has_assigned_gpu() else "cpu"
        self.estimator = estimator.set_params(device=device)
        self.filesystem = filesystem
        self.spec = spec
        self.device, self.precision = inference_settings(self.estimator)
        self.decoder = ("torch" if self.device.type == "cuda" else "pil") if spec.decoder == "auto" else spec.decoder
        if self.device.type == "cpu" and self.decoder == "pil":
            # The decoding threads keep the cores busy; an encoder on every core would preempt them.
            torch.set_num_threads(1)
        self.size = tuple(self.estimator.input_format_.shape[:2])
        self.pool = ThreadPoolExecutor(max(1, spec.threads), thread_name_prefix="bafo-read")

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        stats = [
            self.encode_partition(int(partition), pa.ipc.open_stream(blob).read_all())
            for partition, blob in zip(batch["partition"], batch["inputs"])
        ]
        return {
            "partition": np.asarray(batch["partition"], dtype=np.int64),
            "stats": np.array([json.dumps(s) for s in stats], dtype=object),
        }

    # ----------------------------------------------------------------- one partition
    def encode_partition(self, partition: int, inputs: pa.Table) -> dict:
        """Encode and write one partition; returns its counts (what the job file sums up)."""
        started = time.perf_counter()
        sources = inputs.column("source").to_pylist()
        encoded = self.encode_rows(inputs.column("location").to_pylist(), sources)
        rows = inputs.column("row").to_numpy(zero_copy_only=False)
        return finish_partition(
            self.filesystem, self.spec, partition, inputs.num_rows, encoded, sources, rows, inputs,
            self.precision, self.decoder, time.perf_counter() - started,
        )

    def encode_rows(self, items: list[str | bytes], sources: list[str]) -> EncodedRows:
        """Read (file locations) or take (bytes), hash, decode and encode; bad items become skips."""
        latents, digests, sha1s, positions, skipped, failed = [], [], [], [], [], []
        for chunk_positions, images, loaded in self._decoded_chunks(items):
            for pos, item in zip(chunk_positions, loaded):
                if item.reason is not None:
                    if self.spec.strict:
                        raise PartitionFailed(f"{sources[pos]}: {item.reason} (stopped: strict)")
                    skipped.append((sources[pos], item.reason))
                    failed.append(pos)
            good = [pos for pos, item in zip(chunk_positions, loaded) if item.reason is None]
            if good:
                latents.append(encode_images(self.estimator, images))
                kept = [item for item in loaded if item.reason is None]
                digests += [item.digest for item in kept]
                sha1s += [item.sha1 for item in kept]
                positions += good
        latent_dim = int(self.estimator.network_.config.latent_dim)
        return EncodedRows(
            positions=np.asarray(positions, dtype=np.int64),
            digests=digests,
            sha1s=sha1s,
            latents=np.concatenate(latents) if latents else np.zeros((0, latent_dim), np.float32),
            skipped=skipped,
            failed=np.asarray(failed, dtype=np.int64),
        )

    # ----------------------------------------------------------------- reading and decoding
    def _decoded_chunks(self, items: list[str | bytes]) -> Iterator[tuple[list[int], np.ndarray | torch.Tensor, list[_Loaded]]]:
        """``(positions, images NCHW uint8 of the good ones, per-item results)`` per batch, one batch read ahead."""
        size = self.spec.batch_size
        starts = list(range(0, len(items), size))
        pending = self._submit(items, starts[0], size) if starts else None
        for index, start in enumerate(starts):
            handles = pending
            pending = self._submit(items, starts[index + 1], size) if index + 1 < len(starts) else None
            loaded = [handle.result() for handle in handles]
            positions = list(range(start, start + len(loaded)))
            yield positions, self._stack(loaded), loaded
            del loaded

    def _submit(self, items: list[str | bytes], start: int, size: int) -> list[Future]:
        want_pixels = self.decoder == "pil"
        return [self.pool.submit(self._load, item, want_pixels) for item in items[start : start + size]]

    def _load(self, item: str | bytes, want_pixels: bool) -> _Loaded:
        if isinstance(item, (bytes, bytearray, memoryview)):
            data = bytes(item)
            if len(data) > self.spec.max_file_bytes:
                return _Loaded(reason=f"larger than the {self.spec.max_file_bytes} bytes cap")
        elif item is None:
            return _Loaded(reason="no image bytes")
        else:
            try:
                data = read_file_bytes(self.filesystem, item, self.spec.max_file_bytes)
            except OSError as error:
                return _Loaded(reason=str(error))
        if not data:
            return _Loaded(reason="empty file (0 bytes)")
        digest = content_digest(self.spec.id_key, data)
        sha1 = hashlib.sha1(data).hexdigest() if self.spec.needs_sha1 else None
        if not want_pixels:
            return _Loaded(image=data, digest=digest, sha1=sha1)
        try:
            return _Loaded(image=decode_image(data, self.size), digest=digest, sha1=sha1)
        except ImageDecodeError as error:
            return _Loaded(reason=error.reason)

    def _stack(self, loaded: list[_Loaded]) -> np.ndarray | torch.Tensor:
        good = [item for item in loaded if item.reason is None]
        height, width = self.size
        if self.decoder == "pil":
            images = np.empty((len(good), height, width, 3), dtype=np.uint8)
            for i, item in enumerate(good):
                images[i] = item.image
                item.image = None
            return images.transpose(0, 3, 1, 2)
        return self._torch_decode(good)

    def _torch_decode(self, good: list[_Loaded]) -> torch.Tensor:
        """Batched JPEG decoding on the device; files it cannot decode become skips with a reason."""
        from ..data.jpeg_tensors import iter_tensor_batches

        if not good:
            return torch.empty((0, 3, *self.size), dtype=torch.uint8, device=self.device)
        blobs = [item.image for item in good]
        batches = iter_tensor_batches(
            blobs, batch_size=len(blobs), size=self.size, device=self.device, n_jobs=self.spec.threads
        )
        kept, images, errors = next(iter(batches))
        failed = sorted(set(range(len(good))) - set(int(i) for i in kept))
        for position, (_, reason) in zip(failed, errors):
            good[position].reason = reason
        for item in good:
            item.image = None
        return images


@dataclass
class EncodedRows:
    """One partition after encoding, before ordering and writing.

    ``positions`` index the partition's inputs; ``digests``, ``sha1s`` and ``latents`` follow
    ``positions``; ``skipped`` holds ``(source, reason)`` of the inputs that gave no latent,
    at ``failed`` positions.
    """

    positions: np.ndarray
    digests: list[bytes]
    sha1s: list[str | None]
    latents: np.ndarray
    skipped: list[tuple[str, str]]
    failed: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))


def finish_partition(
    filesystem: pafs.FileSystem,
    spec: JobSpec,
    partition: int,
    rows_read: int,
    encoded: EncodedRows,
    sources: list[str],
    row_numbers: np.ndarray,
    labels: pa.Table | None,
    precision: str,
    decoder: str,
    seconds: float,
) -> dict:
    """Order, de-duplicate and select the rows of a partition, write its file atomically, return its counts.

    ``sources``, ``row_numbers`` and ``labels`` are indexed like the partition's inputs.
    """
    skipped = list(encoded.skipped)
    positions, digests = encoded.positions, encoded.digests
    if spec.id_from == "row":
        ids = np.asarray(row_numbers, dtype=np.int64)[positions]
        order = keyed_order(spec.id_key, ids)
    else:
        ids = np.fromiter((id_of_digest(d) for d in digests), dtype=np.int64, count=len(digests))
        order = np.argsort(ids, kind="stable")
        keep, repeats = _first_of_each_id(ids[order], [digests[i] for i in order])
        skipped += [(sources[positions[order[i]]], reason) for i, reason in repeats]
        order = order[keep]
    split_names, excluded = None, 0
    if spec.needs_sha1:
        is_test = hash_split([encoded.sha1s[i] for i in order], **spec.split_rule) if len(order) else np.zeros(0, bool)
        split_names = np.where(is_test, "test", "train").astype(object)
        if spec.split != "all":
            chosen = split_names == spec.split
            excluded = int((~chosen).sum())
            order, split_names = order[chosen], split_names[chosen]
    label_frame = None
    if spec.label_schema:
        rows = pa.array(positions[order], pa.int64())
        label_frame = labels.select(list(spec.label_schema)).take(rows).to_pandas()
    counts = Counter(reason for _, reason in skipped)
    stats = {
        "partition": partition,
        "file": partition_file_name(partition),
        "rows_read": int(rows_read),
        "rows_written": int(len(order)),
        "skipped": int(len(skipped)),
        "skipped_by_reason": dict(sorted(counts.items())),
        "skipped_items": [{"source": s, "reason": r} for s, r in skipped[:MAX_LISTED_SKIPS]],
        "excluded_by_split": excluded,
        "precision": precision,
        "decoder": decoder,
        "seconds": round(seconds, 3),  # reading, decoding and encoding
    }
    metadata = {
        **spec.metadata,
        "precision": precision,
        "decoder": decoder,
        "job": {
            "plan_fingerprint": spec.plan_fingerprint,
            "n_partitions": spec.n_partitions,
            **{k: v for k, v in stats.items() if k not in ("file", "precision", "decoder")},
        },
    }
    _write_partition(
        filesystem, spec, partition, ids[order], encoded.latents[order], label_frame,
        split_names if spec.include_split else None, metadata,
    )
    return stats


def _write_partition(filesystem, spec: JobSpec, partition: int, ids, latents, labels, split, metadata: dict) -> None:
    final = join(spec.out, partition_file_name(partition))
    if is_local(filesystem):
        _write_file(final, spec, ids, latents, labels, split, metadata)
        return
    with tempfile.TemporaryDirectory(prefix="bafo-part-") as folder:
        local = str(Path(folder) / partition_file_name(partition))
        _write_file(local, spec, ids, latents, labels, split, metadata)
        temporary = join(spec.out, f".{partition_file_name(partition)}.{time.time_ns()}.tmp")
        pafs.copy_files(local, temporary, destination_filesystem=filesystem)
        filesystem.move(temporary, final)


def _write_file(path: str, spec: JobSpec, ids, latents, labels: pd.DataFrame | None, split, metadata: dict) -> None:
    # overwrite=True: a retried task rewrites the same rows; the rename keeps it atomic.
    with LatentParquetWriter(
        path, latents.shape[1], metadata=metadata, id_type="int64", label_schema=spec.label_schema,
        include_split=split is not None, overwrite=True,
    ) as writer:
        writer.write_batch(ids, latents, labels=labels, split=split)


# --------------------------------------------------------------------------- ray.data.Dataset sources
def key_rows(batch: pa.Table, *, spec: JobSpec, todo: list[int]) -> pa.Table:
    """Place each row of a dataset of image bytes in its partition (keyed content hash); keep those to write.

    Ray's ``path`` column is dropped here: it never travels further, let alone into the output.
    """
    if "bytes" not in batch.column_names:
        raise ValueError(f"a ray.data.Dataset source needs a 'bytes' column of image files; columns: {batch.column_names}")
    digests = [None if b is None else content_digest(spec.id_key, b) for b in batch.column("bytes").to_pylist()]
    partitions = [0 if d is None else id_of_digest(d) % spec.n_partitions for d in digests]
    sources = ["row without bytes" if d is None else f"content {d[:8].hex()}" for d in digests]
    keyed = batch.drop_columns([c for c in ("path", "partition", "source") if c in batch.column_names])
    keyed = keyed.append_column("partition", pa.array(partitions, pa.int64())).append_column(
        "source", pa.array(sources, pa.string()))
    wanted = set(todo)
    return keyed.filter(pa.array([p in wanted for p in partitions], pa.bool_()))


class RowEncoder(PartitionEncoder):
    """Ray Data callable class for ``ray.data.Dataset`` sources: encodes batches of rows, whatever their partition.

    Returns one row per input (``partition``, ``source``, ``digest``, ``sha1``, ``latent`` or
    a ``reason``, the label columns); :func:`write_group` then writes each partition. The
    image bytes do not leave this stage.
    """

    def __call__(self, batch: pa.Table) -> pa.Table:
        sources = batch.column("source").to_pylist()
        encoded = self.encode_rows(batch.column("bytes").to_pylist(), sources)
        n, dim = batch.num_rows, encoded.latents.shape[1]
        latents = np.zeros((n, dim), np.float32)
        latents[encoded.positions] = encoded.latents
        digests: list = [None] * n
        sha1s: list = [None] * n
        for pos, digest, sha1 in zip(encoded.positions.tolist(), encoded.digests, encoded.sha1s):
            digests[pos], sha1s[pos] = digest, sha1
        reasons: list = [None] * n
        for pos, (_, reason) in zip(encoded.failed.tolist(), encoded.skipped):
            reasons[pos] = reason
        out = batch.drop_columns(["bytes"])
        columns = {
            "digest": pa.array(digests, pa.binary()),
            "sha1": pa.array(sha1s, pa.string()),
            "latent": pa.FixedSizeListArray.from_arrays(pa.array(latents.ravel()), dim),
            "reason": pa.array(reasons, pa.string()),
            "precision": pa.array([self.precision] * n, pa.string()),
            "decoder": pa.array([self.decoder] * n, pa.string()),
        }
        for name, column in columns.items():
            out = out.append_column(name, column)
        return out


def write_group(table: pa.Table, *, filesystem: pafs.FileSystem, spec: JobSpec) -> pa.Table:
    """Write one partition of a dataset source from its encoded rows (a ``map_groups`` function)."""
    partition = int(table.column("partition")[0].as_py())
    reasons = table.column("reason").to_pylist()
    good = np.asarray([i for i, r in enumerate(reasons) if r is None], dtype=np.int64)
    bad = [i for i, r in enumerate(reasons) if r is not None]
    sources = table.column("source").to_pylist()
    digests = table.column("digest").to_pylist()
    sha1s = table.column("sha1").to_pylist()
    flat = table.column("latent").combine_chunks().flatten().to_numpy(zero_copy_only=False)
    latents = np.asarray(flat, dtype=np.float32).reshape(table.num_rows, -1)
    encoded = EncodedRows(
        positions=good, digests=[digests[i] for i in good], sha1s=[sha1s[i] for i in good], latents=latents[good],
        skipped=[(sources[i], reasons[i]) for i in bad], failed=np.asarray(bad, dtype=np.int64),
    )
    stats = finish_partition(
        filesystem, spec, partition, table.num_rows, encoded, sources, np.zeros(table.num_rows, np.int64), table,
        table.column("precision")[0].as_py(), table.column("decoder")[0].as_py(), 0.0,
    )
    return pa.table({"partition": [partition], "stats": [json.dumps(stats)]})


def _first_of_each_id(ids: np.ndarray, digests: list[bytes]) -> tuple[np.ndarray, list[tuple[int, str]]]:
    """Positions in ``ids`` (sorted) to keep, and ``(position, reason)`` for each repeated id."""
    repeats = []
    for i in np.flatnonzero(ids[1:] == ids[:-1]) + 1:
        if digests[i] == digests[i - 1]:
            reason = "duplicate of another file in its partition (same bytes, same id)"
        else:  # two different images share 63 bits of a keyed hash: about n**2 / 2**64
            reason = "id collision with a different image of its partition"
        repeats.append((int(i), reason))
    keep = np.ones(len(ids), dtype=bool)
    keep[[i for i, _ in repeats]] = False
    return np.flatnonzero(keep), repeats


def _has_assigned_gpu() -> bool:
    try:
        import ray

        return bool(ray.get_gpu_ids())
    except Exception:  # outside a Ray worker
        return torch.cuda.is_available()
