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
import time
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.fs as pafs
import torch

from ..data.images import ImageDecodeError, decode_image
from .encoding import encode_images, inference_settings
from .ids import content_digest
from .inputs import read_file_bytes
from .partition_writer import EncodedRows, finish_partition
from .spec import JobSpec, PartitionFailed

__all__ = ["PartitionEncoder"]


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


def _has_assigned_gpu() -> bool:
    try:
        import ray

        return bool(ray.get_gpu_ids())
    except Exception:  # outside a Ray worker
        return torch.cuda.is_available()
