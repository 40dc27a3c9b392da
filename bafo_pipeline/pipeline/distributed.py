"""Distributed export on Ray Data: image folders and manifests to a partitioned latent Parquet dataset.

:func:`encode_dataset` is the engine behind ``bafo encode --engine ray``. What runs where:

- **driver** (the process that calls it): lists the files (folder or manifest; no image is
  read), places each in a partition by a keyed hash, writes ``_bafo_plan.json``, starts the
  Ray Data job, and writes ``_bafo_job.json`` once every partition is on disk. It holds the
  listing and one line of counts per partition, never images or latents.
- **actors** (``--workers`` of them, one GPU each where the cluster has GPUs): each holds the
  fitted model once and runs :class:`~bafo_pipeline.pipeline.partition_encoder.PartitionEncoder`
  on whole partitions: read, hash, decode, encode, write ``part-NNNNN.parquet`` atomically.

The same job runs unchanged on a laptop (``ray.init()`` starts a local cluster) and on a
cluster (``RAY_ADDRESS`` or ``address=``); files must then be reachable from every node
(object storage or a shared filesystem).
"""

from __future__ import annotations

import math
import os
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..io.filesystems import resolve_filesystem
from ..io.model_io import load_model, model_fingerprint, read_model_config, save_model
from .ids import load_id_key
from .inputs import DEFAULT_MAX_FILE_BYTES, InputList
from .job import JOB_FILE, PLAN_FILE, JobFolder, summarize
from .plan import ID_SCHEMES, Plan, make_plan
from .ray_execution import ray_session, run_dataset, run_planned, worker_resources
from .spec import JobSpec

__all__ = ["EncodeJobReport", "encode_dataset"]


@dataclass
class EncodeJobReport:
    """What a distributed export did.

    Attributes
    ----------
    out : str
        The output folder.
    counts : dict
        ``listed``, ``read``, ``written``, ``skipped``, ``skipped_while_listing``,
        ``excluded_by_split``, ``skipped_by_reason`` and the first ``skipped_items``.
    n_partitions : int
    partitions_kept : int
        Partitions already complete from an earlier, interrupted run of the same job.
    partitions_written : int
        Partitions written by this run.
    job : dict
        The content of ``_bafo_job.json``.
    """

    out: str
    counts: dict = field(default_factory=dict)
    n_partitions: int = 0
    partitions_kept: int = 0
    partitions_written: int = 0
    job: dict = field(default_factory=dict)

    @property
    def n_written(self) -> int:
        return int(self.counts.get("written", 0))


def encode_dataset(
    model,
    source: str | os.PathLike | InputList,
    out: str | os.PathLike,
    *,
    include_labels: bool = False,
    id_from: str = "content",
    id_key: bytes | str | os.PathLike | None = None,
    split: str = "all",
    include_split: bool = False,
    workers: int = 2,
    gpus_per_worker: float | None = None,
    cpus_per_worker: float | None = None,
    threads_per_worker: int | None = None,
    partition_rows: int | None = None,
    batch_size: int = 512,
    decoder: str = "auto",
    strict: bool = False,
    overwrite: bool = False,
    max_file_bytes: int = DEFAULT_MAX_FILE_BYTES,
    address: str | None = None,
    progress: Callable[[int], Any] | None = None,
    verbose: bool = False,
) -> EncodeJobReport:
    """Encode every image of a folder or manifest on a Ray cluster into a partitioned Parquet dataset.

    Every ``part-NNNNN.parquet`` has the schema of ``bafo encode``'s file (``id`` int64,
    ``latent`` ``fixed_size_list<float32>[d]``, optional ``split`` and labels) and its
    ``bafo`` metadata (model fingerprint, attribute schema, precision, decoder, and the
    partition's own counts). No path or file name is ever written; labels only when asked.
    Re-running an interrupted job resumes it: finished partitions are kept, and the result
    is the same as one uninterrupted run.

    Parameters
    ----------
    model : BAFOTransformer or path
        A fitted estimator or a model directory (its fingerprint is recorded).
    source : path, URI or InputList
        A folder of images, a ``.csv``/``.parquet`` manifest (column ``path``), or the
        result of :func:`~bafo_pipeline.pipeline.inputs.list_folder` /
        :func:`~bafo_pipeline.pipeline.inputs.read_manifest` for other options (UTKFace
        labels, other columns).
    out : path or URI
        Output folder: created, resumed (same job), or refused (anything else, unless
        ``overwrite``).
    include_labels : bool, default=False
        Store the source's label columns (sensitive ones included): for audit data only.
    id_from : {"content", "row"}, default="content"
        ``"content"``: a keyed hash of the file's bytes (stable across splits and runs,
        reveals no name or label). ``"row"``: the manifest's 1-based data-row number (for
        joining with the manifest; it leaks whatever the manifest's order encodes).
    id_key : bytes, path or None
        The key of the keyed hashes; default the data owner's key file
        (``$BAFO_ID_KEY_FILE`` or ``~/.config/bafo/id.key``, created on first use).
    split : {"all", "train", "test"}, default="all"
        Rows of the model's content-hash split to encode.
    include_split : bool, default=False
        Add a ``split`` column.
    workers : int, default=2
        Actors, each holding one copy of the model.
    gpus_per_worker : float, optional
        GPUs per actor; default 1 when the cluster has GPUs, else 0.
    cpus_per_worker : float, optional
        CPUs reserved per actor; default the cluster's CPUs divided by ``workers``.
    threads_per_worker : int, optional
        Reading/decoding threads per actor; default ``max(2, cpus_per_worker)``.
    partition_rows : int, optional
        Inputs per partition (file); default about 1/64 of the inputs, within 500-100,000.
    batch_size : int, default=512
        Images per encoder call.
    decoder : {"auto", "pil", "torch"}, default="auto"
        As in :func:`~bafo_pipeline.io.export.export_latents`: ``auto`` is torch on a GPU.
    strict : bool, default=False
        Stop at the first unreadable image instead of skipping it.
    overwrite : bool, default=False
        Replace an existing export (only files this function writes are removed).
    max_file_bytes : int, default=64 MiB
        Larger files are skipped with a reason.
    address : str, optional
        Ray cluster address; default ``RAY_ADDRESS`` or a new local cluster.
    progress : callable, optional
        Called with the number of inputs of each partition as it finishes.
    verbose : bool, default=False
        Show Ray's own logs and progress bars.

    Returns
    -------
    EncodeJobReport

    Raises
    ------
    PartitionFailed
        (:class:`~bafo_pipeline.pipeline.spec.PartitionFailed`) With ``strict``, for the first bad file (its manifest row or file key and why).
    FileExistsError
        If ``out`` holds another export or other files and ``overwrite`` is False.
    """
    if id_from not in ID_SCHEMES:
        raise ValueError(f"id_from must be one of {sorted(ID_SCHEMES)}, got {id_from!r}")
    if split not in ("all", "train", "test"):
        raise ValueError(f"split must be 'all', 'train' or 'test', got {split!r}")
    if not (isinstance(workers, int) and workers >= 1):
        raise ValueError(f"workers must be a positive int, got {workers!r}")
    started = time.time()
    estimator, fingerprint, split_rule = _model(model)
    if (split != "all" or include_split) and split_rule is None:
        raise ValueError("this model records no train/test split; use split='all' without include_split")
    plan = make_plan(
        source, load_id_key(id_key), fingerprint, id_from=id_from, include_labels=include_labels,
        partition_rows=partition_rows, split=split, include_split=include_split, split_rule=split_rule,
        max_file_bytes=max_file_bytes,
    )

    filesystem, out_path = resolve_filesystem(out)
    folder = JobFolder(filesystem, out_path)
    finished = _resume_state(folder, plan.fingerprint, overwrite)
    if finished is None:  # already complete: nothing to do
        job = folder.read_json(JOB_FILE)
        return EncodeJobReport(str(out), job["counts"], plan.n_partitions, plan.n_partitions, 0, job)
    folder.write_json(PLAN_FILE, {**plan.settings, "plan_fingerprint": plan.fingerprint})

    todo = [k for k in range(plan.n_partitions) if k not in finished]
    with ray_session(address, verbose) as ray:
        cpus, gpus = worker_resources(ray, workers, cpus_per_worker, gpus_per_worker)
        if plan.dataset is not None and cpus_per_worker is None:
            # The actors must leave a CPU to the tasks that key the rows and write the groups.
            spare = max(1.0, ray.cluster_resources().get("CPU", 1) - 1)
            cpus = min(cpus, max(0.5, math.floor(spare / workers)))
        spec = JobSpec(
            out=out_path, plan_fingerprint=plan.fingerprint, n_partitions=plan.n_partitions, id_key=plan.key,
            id_from=id_from, label_schema=plan.label_schema, split=split, include_split=include_split,
            split_rule=plan.settings["split_rule"], batch_size=batch_size, decoder=decoder, strict=strict,
            max_file_bytes=max_file_bytes, threads=threads_per_worker or max(2, int(cpus)),
            metadata=_file_metadata(estimator, plan.settings),
        )
        pool = {"workers": workers, "cpus": cpus, "gpus": gpus}
        if plan.dataset is not None:
            new_stats = run_dataset(ray, estimator, filesystem, spec, plan.dataset, todo, pool, progress)
        else:
            new_stats = run_planned(ray, estimator, filesystem, spec, plan, todo, pool, progress)
    stats = sorted([*finished.values(), *new_stats], key=lambda s: s["partition"])
    job = _job_record(plan, stats, len(finished), len(new_stats), estimator, workers, time.time() - started)
    folder.write_json(JOB_FILE, job)  # last: its presence means every partition is on disk
    return EncodeJobReport(str(out), job["counts"], plan.n_partitions, len(finished), len(new_stats), job)


# --------------------------------------------------------------------------- helpers
def _model(model) -> tuple[Any, str, dict | None]:
    """``(estimator, fingerprint, split rule)`` from a model directory or a fitted estimator."""
    if isinstance(model, (str, os.PathLike)):
        config = read_model_config(model)
        return load_model(model), model_fingerprint(model), config.get("metadata", {}).get("split")
    with tempfile.TemporaryDirectory(prefix="bafo-fingerprint-") as folder:
        saved = save_model(model, Path(folder) / "model")
        return model, model_fingerprint(saved), None


def _resume_state(folder: JobFolder, plan_fingerprint: str, overwrite: bool) -> dict[int, dict] | None:
    """Finished partitions to keep (``{}`` for a fresh job), or None when the same job is already complete."""
    names = folder.names()
    if overwrite or not names:
        folder.prepare(overwrite=overwrite)
        return {}
    plan = folder.read_json(PLAN_FILE)
    if plan is None or plan.get("plan_fingerprint") != plan_fingerprint:
        what = "another export" if plan is not None else "files that are not this export"
        raise FileExistsError(
            f"{folder.path} holds {what} (different inputs, model, key or settings); "
            "choose a new folder or pass overwrite to replace it"
        )
    job = folder.read_json(JOB_FILE)
    if job is not None and job.get("plan_fingerprint") == plan_fingerprint and job.get("complete"):
        return None
    folder.remove_temporaries()
    finished = folder.finished_partitions(plan_fingerprint)
    folder.remove_partitions_except(set(finished))
    return finished


def _file_metadata(estimator, settings: dict) -> dict:
    """What every partition file records about its making (the writer adds the format facts)."""
    return {
        "model_fingerprint": settings["model_fingerprint"],
        "attribute_schema": None if estimator.schema_ is None else estimator.schema_.to_dict(),
        "id_scheme": settings["id_scheme"],
        "id_key_fingerprint": settings["id_key_fingerprint"],
    }


def _job_record(plan: Plan, stats: list[dict], kept: int, written: int, estimator, workers: int, seconds: float) -> dict:
    """The content of ``_bafo_job.json``."""
    listing_skips = [] if plan.inputs is None else [(plan.refs.listing[s], r) for s, r in plan.inputs.skipped]
    return {
        **plan.settings,
        "plan_fingerprint": plan.fingerprint,
        "complete": True,
        "counts": summarize(stats, listing_skips),
        "partitions": {"total": plan.n_partitions, "kept_from_earlier_runs": kept, "written_now": written},
        "files": [{"name": s["file"], "rows": s["rows_written"]} for s in stats],
        "precision": sorted({s["precision"] for s in stats if "precision" in s}),
        "decoder": sorted({s["decoder"] for s in stats if "decoder" in s}),
        "latent_dim": int(estimator.network_.config.latent_dim),
        "workers": workers,
        "seconds_this_run": round(seconds, 2),
        "finished_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
