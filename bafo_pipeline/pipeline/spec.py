"""What every actor of a distributed export is told: the job's settings, and how partitions are named."""

from __future__ import annotations

from dataclasses import dataclass, field

__all__ = ["JobSpec", "PartitionFailed", "partition_file_name"]


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
