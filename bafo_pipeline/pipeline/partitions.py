"""The workers of a distributed export: each writes whole partitions with the in-process export.

:class:`PartitionWriter` is the callable class Ray Data's ``map_batches`` runs in an actor
pool: the fitted model is received once per actor, as an
:class:`~bafo_pipeline._nn.bundle.EncoderBundle` (the folded encoder's weights: the actor
builds it with torch alone, and never imports scikit-learn or the estimators) or, for a
concealment that cannot be folded, as the estimator itself. Each call writes one partition,
whose rows the plan fixed (files, ids, split, labels), through
:func:`~bafo_pipeline.pipeline.export.export_latents`: the same decoding (Pillow on a CPU,
batched nvJPEG on a GPU), the same precision, the same file schema and metadata as
``bafo encode``, so the latents are bit-identical. A partition is the unit of work, of
atomic output and of resumption: its file appears (temporary file, then rename) only once
every row is in it, followed by its counts file.

For a ``ray.data.Dataset`` of image bytes, :func:`key_rows` gives each row its content
hash, id and partition (the rows are not listed beforehand), a group-by gathers each
partition, and :class:`GroupWriter` drops repeated content as the scans do and writes it.
"""

from __future__ import annotations

import json
import tempfile
import time
import traceback
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.fs as pafs
import torch

from .._nn.bundle import EncoderBundle
from .._utils.filesystems import is_local, join
from ..data import ImageDecodeError, ImageFiles, pseudonymous_ids
from ..data.splits import EMPTY_CONTENT_HASH, content_hash, dedupe_by_hash
from .encode_plan import PLAN_COLUMNS, JobSpec, partition_of
from .export import export_latents
from .job_folder import MAX_LISTED_SKIPS, JobFolder, partition_file_name, public_reason

__all__ = ["GroupWriter", "PartitionFailed", "PartitionWriter", "key_rows"]


class PartitionFailed(RuntimeError):
    """A file stopped a ``strict`` job; the message names its source (manifest row or file key) and why."""


class PartitionWriter:
    """Ray Data callable class: holds the model once per actor and writes whole partitions.

    Parameters
    ----------
    estimator : EncoderBundle, BAFOTransformer or list
        The model: the bundle of a fitted image estimator
        (:meth:`~bafo_pipeline.BAFOTransformer.encoder_bundle`), or the estimator itself;
        or a one-element list holding a Ray ``ObjectRef`` of either (nested, so Ray hands
        the actor the reference and the model is stored once for all actors).
    filesystem : pyarrow.fs.FileSystem
        Where the output folder is.
    spec : JobSpec
    inputs : pyarrow.fs.FileSystem, optional
        Where the planned rows' files are (file sources).
    device : str, optional
        ``"cuda"`` or ``"cpu"``; default CUDA when this actor was given a GPU.

    Notes
    -----
    ``__call__`` takes ``{"partition": int64[k], "rows": bytes[k]}`` (each ``rows`` an Arrow
    IPC stream of the partition's planned rows) and returns ``{"partition": int64[k],
    "stats": str[k]}``: JSON counts, or ``{"stopped": message}`` for a ``strict`` stop and
    ``{"failed": traceback}`` for an error. The actor never raises: Ray Data keeps an
    actor pool alive after a task raised, holding its CPUs and GPUs, but releases it when
    the driver stops reading.
    """

    def __init__(self, estimator, filesystem: pafs.FileSystem, spec: JobSpec, inputs: pafs.FileSystem | None = None,
                 device: str | None = None) -> None:
        if isinstance(estimator, list):
            import ray

            estimator = ray.get(estimator[0])
        if device is None:
            device = "cuda" if torch.cuda.is_available() and _has_assigned_gpu() else "cpu"
        self.model_kind = "encoder bundle" if isinstance(estimator, EncoderBundle) else "estimator"
        if isinstance(estimator, EncoderBundle):
            self.estimator = estimator.encoder(device)
        else:
            self.estimator = estimator.set_params(device=device)
        self.filesystem = filesystem
        self.inputs = inputs
        self.spec = spec
        self.folder = JobFolder(filesystem, spec.out)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        stats = [
            self.write_or_report(int(partition), lambda: pa.ipc.open_stream(blob).read_all(), read_from=self.inputs)
            for partition, blob in zip(batch["partition"], batch["rows"])
        ]
        return {
            "partition": np.asarray(batch["partition"], dtype=np.int64),
            "stats": np.array([json.dumps(s) for s in stats], dtype=object),
        }

    def write_or_report(self, partition: int, rows: Callable[[], pa.Table], **options) -> dict:
        """:meth:`write`, with a strict stop or an error returned as a record instead of raised."""
        try:
            return self.write(partition, rows(), **options)
        except PartitionFailed as stop:
            return {"partition": partition, "stopped": str(stop)}
        except Exception:
            return {"partition": partition, "failed": traceback.format_exc()}

    def write(self, partition: int, rows: pa.Table, *, read_from: pafs.FileSystem | None,
              skipped: list[tuple[str, str]] = ()) -> dict:
        """Encode and write one partition's planned rows; record and return its counts.

        ``read_from`` is the filesystem of the ``path`` column (None when it holds the
        images' bytes); ``skipped`` are rows already left out, as ``(source, reason)``.
        """
        started = time.perf_counter()
        frame = rows.to_pandas()
        sources = frame["_bafo_source"].tolist()
        files = ImageFiles(frame.drop(columns=list(PLAN_COLUMNS)), self.spec.sensitive, filesystem=read_from,
                           max_file_bytes=self.spec.max_file_bytes)
        split = frame["_bafo_split"].to_numpy(dtype=object) if self.spec.include_split else None
        metadata = {**self.spec.metadata, "job": {"plan_fingerprint": self.spec.plan_fingerprint,
                                                  "partition": partition, "n_partitions": self.spec.n_partitions}}
        try:
            report = self._export(partition, files, frame["_bafo_id"].to_numpy(dtype=np.int64), split, metadata)
        except ImageDecodeError as error:
            where = sources[frame.index[frame["path"].astype(str) == error.path][0]] if read_from is not None else None
            raise PartitionFailed(f"{where or 'a dataset row'}: {error.reason} (stopped: strict)") from None
        rows_read = len(frame) + len(skipped)
        skipped = [*skipped, *((sources[row], reason) for row, reason in report.skipped)]
        stats = {
            "plan_fingerprint": self.spec.plan_fingerprint,
            "partition": partition,
            "file": partition_file_name(partition),
            "rows_read": rows_read,
            "rows_written": report.n_written,
            "skipped_by_reason": dict(sorted(Counter(public_reason(r) for _, r in skipped).items())),
            "skipped_items": [{"source": s, "reason": public_reason(r)} for s, r in skipped[:MAX_LISTED_SKIPS]],
            "precision": report.metadata.get("precision"),
            "decoder": report.metadata.get("decoder"),
            "seconds": round(time.perf_counter() - started, 3),
            "actor_model": self.model_kind,
        }
        self.folder.write_partition_stats(partition, stats)
        return stats

    def _export(self, partition: int, files: ImageFiles, ids: np.ndarray, split, metadata: dict):
        """``export_latents`` to the partition's file, atomically on any filesystem."""
        options = {
            "include_labels": self.spec.include_labels, "split": split, "ids": ids, "metadata": metadata,
            "batch_size": self.spec.batch_size, "strict": self.spec.strict, "decoder": self.spec.decoder,
            "overwrite": True,  # a retried task writes the same rows again
        }
        name = partition_file_name(partition)
        if is_local(self.filesystem):
            return export_latents(self.estimator, files, join(self.spec.out, name), **options)
        with tempfile.TemporaryDirectory(prefix="bafo-part-") as folder:
            local = str(Path(folder) / name)
            report = export_latents(self.estimator, files, local, **options)
            temporary = join(self.spec.out, f".{name}.{time.time_ns()}.tmp")
            pafs.copy_files(local, temporary, destination_filesystem=self.filesystem)
            self.filesystem.move(temporary, join(self.spec.out, name))
        return report


def key_rows(batch: pa.Table, *, key: bytes, n_partitions: int, todo: list[int]) -> pa.Table:
    """Give each row of a dataset of image bytes its content hash, id and partition; keep those to write.

    Ray's ``path`` column is dropped here: it never travels further, let alone into the output.
    """
    blobs = batch.column("bytes").to_pylist()
    hashes = [None if b is None else content_hash(b) for b in blobs]
    ids = pseudonymous_ids(["" if h is None else h for h in hashes], key)
    partitions = partition_of(ids, n_partitions)
    partitions[np.array([h is None for h in hashes], dtype=bool)] = 0  # counted as skipped in partition 0
    keyed = batch.drop_columns([c for c in ("path", *PLAN_COLUMNS, "content_hash", "partition") if c in batch.column_names])
    keyed = (
        keyed.append_column("content_hash", pa.array(hashes, pa.string()))
        .append_column("partition", pa.array(partitions, pa.int64()))
        .append_column("_bafo_id", pa.array(ids, pa.int64()))
    )
    return keyed.filter(pa.array(np.isin(partitions, todo)))


class GroupWriter(PartitionWriter):
    """Ray Data callable class for ``map_groups``: one whole partition of a ``ray.data.Dataset`` source.

    Byte-identical rows are kept once, and every copy of a group whose labels disagree is
    dropped, as the scans of file sources do; then the partition is written in id order.
    """

    def __init__(self, estimator, filesystem: pafs.FileSystem, spec: JobSpec, label_columns: list[str],
                 device: str | None = None) -> None:
        super().__init__(estimator, filesystem, spec, device=device)
        self.label_columns = label_columns

    def __call__(self, group: pa.Table) -> pa.Table:
        partition = int(group.column("partition")[0].as_py())
        frame = group.drop_columns(["partition"]).to_pandas()
        frame["_bafo_source"] = [f"content {i:016x}" for i in frame["_bafo_id"]]
        unusable = frame["content_hash"].isna() | (frame["content_hash"] == EMPTY_CONTENT_HASH)
        skipped = [(s, "no image bytes" if h is None else "empty file (0 bytes)")
                   for s, h in zip(frame["_bafo_source"][unusable], frame["content_hash"][unusable])]
        kept, counts = dedupe_by_hash(frame[~unusable], self.label_columns, "drop-conflicts")
        skipped += [("content", "duplicate of another image (same bytes)")] * counts["duplicates_dropped"]
        skipped += [("content", "copy of an image with conflicting labels (all copies dropped)")] * counts[
            "conflicting_files_dropped"]
        kept = kept.sort_values("_bafo_id", kind="stable").rename(columns={"bytes": "path"})
        kept["_bafo_split"] = None
        columns = ["path", "content_hash", *(self.label_columns if self.spec.carry_labels else []), *PLAN_COLUMNS]
        stats = self.write_or_report(partition, lambda: pa.Table.from_pandas(kept[columns], preserve_index=False),
                                     read_from=None, skipped=skipped)
        return pa.table({"partition": [partition], "stats": [json.dumps(stats)]})


def _has_assigned_gpu() -> bool:
    try:
        import ray

        return bool(ray.get_gpu_ids())
    except Exception:  # outside a Ray worker
        return torch.cuda.is_available()
