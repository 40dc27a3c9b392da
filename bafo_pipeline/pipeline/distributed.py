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

import contextlib
import hashlib
import json
import logging
import math
import os
import re
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from ..io.filesystems import resolve_filesystem
from ..io.model_io import load_model, model_fingerprint, read_model_config, save_model
from .ids import key_fingerprint, keyed_buckets, load_id_key
from .inputs import DEFAULT_MAX_FILE_BYTES, InputList, list_folder, read_manifest
from .job import JOB_FILE, PLAN_FILE, JobFolder, summarize
from .partition_encoder import (
    DATASET_RESERVED,
    JobSpec,
    PartitionEncoder,
    PartitionFailed,
    RowEncoder,
    key_rows,
    write_group,
)

__all__ = ["EncodeJobReport", "encode_dataset"]

JOB_FORMAT = "bafo-encode-job"
JOB_FORMAT_VERSION = 1
ID_SCHEMES = {"content": "keyed-blake2b-63 of the file bytes", "row": "manifest data-row number (1-based)"}
_MIN_PARTITION_ROWS, _MAX_PARTITION_ROWS, _TARGET_PARTITIONS = 500, 100_000, 64


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
        With ``strict``, for the first bad file (its manifest row or file key and why).
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
    plan = _plan(source, load_id_key(id_key), fingerprint, id_from=id_from, include_labels=include_labels,
                 partition_rows=partition_rows, split=split, include_split=include_split, split_rule=split_rule,
                 max_file_bytes=max_file_bytes)

    filesystem, out_path = resolve_filesystem(out)
    folder = JobFolder(filesystem, out_path)
    finished = _resume_state(folder, plan.fingerprint, overwrite)
    if finished is None:  # already complete: nothing to do
        job = folder.read_json(JOB_FILE)
        return EncodeJobReport(str(out), job["counts"], plan.n_partitions, plan.n_partitions, 0, job)
    folder.write_json(PLAN_FILE, {**plan.settings, "plan_fingerprint": plan.fingerprint})

    todo = [k for k in range(plan.n_partitions) if k not in finished]
    with _ray_session(address, verbose) as ray:
        cpus, gpus = _resources(ray, workers, cpus_per_worker, gpus_per_worker)
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
            new_stats = _run_dataset(ray, estimator, filesystem, spec, plan.dataset, todo, pool, progress)
        else:
            new_stats = _run(ray, estimator, filesystem, spec, plan, todo, pool, progress)
    stats = sorted([*finished.values(), *new_stats], key=lambda s: s["partition"])
    job = _job_record(plan, stats, len(finished), len(new_stats), estimator, workers, time.time() - started)
    folder.write_json(JOB_FILE, job)  # last: its presence means every partition is on disk
    return EncodeJobReport(str(out), job["counts"], plan.n_partitions, len(finished), len(new_stats), job)


# --------------------------------------------------------------------------- planning
@dataclass
class _SourceRefs:
    """How skipped inputs are named in the output: manifest rows as such, files by a keyed hash of their name."""

    per_input: list[str]
    listing: dict[str, str]


@dataclass
class _Plan:
    """What a job will produce, fixed before anything is read: inputs, partitions, settings, fingerprint."""

    key: bytes
    settings: dict
    fingerprint: str
    n_partitions: int
    label_schema: dict | None
    inputs: InputList | None = None
    buckets: np.ndarray | None = None
    refs: _SourceRefs | None = None
    dataset: Any = None


def _plan(source, key: bytes, fingerprint: str, *, id_from, include_labels, partition_rows, split,
          include_split, split_rule, max_file_bytes) -> _Plan:
    dataset = source if _is_ray_dataset(source) else None
    inputs = None if dataset is not None else _inputs(source)
    if id_from == "row" and (inputs is None or inputs.rows is None):
        raise ValueError("id_from='row' needs a manifest source; folders and datasets have no row numbers")
    label_schema = None
    if include_labels:
        label_schema = _dataset_label_schema(dataset) if dataset is not None else _label_schema(inputs)
    n_inputs = dataset.count() if dataset is not None else len(inputs)
    n_partitions = _n_partitions(n_inputs, partition_rows)
    buckets = None if inputs is None else keyed_buckets(key, inputs.source_keys, n_partitions)
    settings = {
        "format": JOB_FORMAT,
        "format_version": JOB_FORMAT_VERSION,
        "model_fingerprint": fingerprint,
        "id_scheme": ID_SCHEMES[id_from],
        "id_key_fingerprint": key_fingerprint(key),
        "source_kind": "ray-dataset" if dataset is not None else inputs.kind,
        "inputs": n_inputs,
        "n_partitions": n_partitions,
        "label_columns": list(label_schema or {}),
        "split": split,
        "include_split": include_split,
        "split_rule": split_rule if (split != "all" or include_split) else None,
        "max_file_bytes": max_file_bytes,
    }
    plan_fingerprint = _plan_fingerprint(settings, [] if inputs is None else inputs.source_keys, buckets)
    refs = None if inputs is None else _source_refs(inputs, key)
    return _Plan(key, settings, plan_fingerprint, n_partitions, label_schema, inputs, buckets, refs, dataset)


def _file_metadata(estimator, settings: dict) -> dict:
    """What every partition file records about its making (the writer adds the format facts)."""
    return {
        "model_fingerprint": settings["model_fingerprint"],
        "attribute_schema": None if estimator.schema_ is None else estimator.schema_.to_dict(),
        "id_scheme": settings["id_scheme"],
        "id_key_fingerprint": settings["id_key_fingerprint"],
    }


def _job_record(plan: _Plan, stats: list[dict], kept: int, written: int, estimator, workers: int, seconds: float) -> dict:
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


def _model(model) -> tuple[Any, str, dict | None]:
    """``(estimator, fingerprint, split rule)`` from a model directory or a fitted estimator."""
    if isinstance(model, (str, os.PathLike)):
        config = read_model_config(model)
        return load_model(model), model_fingerprint(model), config.get("metadata", {}).get("split")
    with tempfile.TemporaryDirectory(prefix="bafo-fingerprint-") as folder:
        saved = save_model(model, Path(folder) / "model")
        return model, model_fingerprint(saved), None


def _inputs(source) -> InputList:
    if isinstance(source, InputList):
        return source
    text = os.fspath(source)
    if text.lower().endswith((".csv", ".parquet", ".pq")):
        return read_manifest(text)
    return list_folder(text)


def _label_schema(inputs: InputList) -> dict[str, str]:
    if inputs.labels is None or not inputs.labels.num_columns:
        raise ValueError(f"include_labels: this {inputs.kind} source has no label columns")
    return {name: _type_name(typ) for name, typ in zip(inputs.labels.column_names, inputs.labels.schema.types)}


def _dataset_label_schema(dataset) -> dict[str, str]:
    schema = dataset.schema()
    labels = {n: _type_name(t) for n, t in zip(schema.names, schema.types) if n not in DATASET_RESERVED}
    if not labels:
        raise ValueError("include_labels: the dataset has no label columns besides 'bytes'")
    return labels


def _type_name(typ) -> str:
    if not isinstance(typ, pa.DataType):
        return "string"
    if pa.types.is_floating(typ):
        return "float64"
    if pa.types.is_integer(typ):
        return "int64"
    return "bool" if pa.types.is_boolean(typ) else "string"


def _is_ray_dataset(source) -> bool:
    try:
        from ray.data import Dataset
    except ImportError:
        return False
    return isinstance(source, Dataset)


def _n_partitions(n_inputs: int, partition_rows: int | None) -> int:
    if partition_rows is None:
        partition_rows = min(max(math.ceil(n_inputs / _TARGET_PARTITIONS), _MIN_PARTITION_ROWS), _MAX_PARTITION_ROWS)
    if not (isinstance(partition_rows, int) and partition_rows >= 1):
        raise ValueError(f"partition_rows must be a positive int, got {partition_rows!r}")
    return max(1, math.ceil(n_inputs / partition_rows))


def _plan_fingerprint(settings: dict, source_keys: list[str], buckets: np.ndarray | None) -> str:
    """What makes two runs the same job: settings, model, key and (files or manifest rows) -> partitions.

    A ``ray.data.Dataset`` is not listed, so only its row count enters.
    """
    digest = hashlib.sha256(json.dumps(settings, sort_keys=True).encode())
    for key, bucket in sorted(zip(source_keys, [] if buckets is None else buckets.tolist())):
        digest.update(f"{bucket}\t{key}\n".encode())
    return digest.hexdigest()


def _source_refs(inputs: InputList, key: bytes) -> _SourceRefs:
    def ref(source_key: str) -> str:
        if inputs.rows is not None:
            return f"row {source_key}"
        digest = hashlib.blake2b(source_key.encode(), key=key, digest_size=8, person=b"bafo-source-ref")
        return f"file {digest.hexdigest()}"

    return _SourceRefs([ref(k) for k in inputs.source_keys], {k: ref(k) for k, _ in inputs.skipped})


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


# --------------------------------------------------------------------------- running
@contextlib.contextmanager
def _ray_session(address: str | None, verbose: bool) -> Iterator[Any]:
    """Ray, connected: the caller's session if one is open, else a new one shut down afterwards."""
    try:
        import ray
    except ImportError:
        raise ImportError("the ray engine needs Ray Data: pip install 'bafo-pipeline[ray]'") from None
    started_here = not ray.is_initialized()
    if started_here:
        ray.init(address=address, include_dashboard=False, log_to_driver=verbose,
                 logging_level="INFO" if verbose else "ERROR")
    context = ray.data.DataContext.get_current()
    context.enable_progress_bars = verbose
    context.print_on_execution_start = verbose
    context.enable_auto_log_stats = False
    # A library stays quiet: Ray Data logs each execution's start and end, and re-reads its
    # level from this variable whenever it sets up its loggers.
    level = os.environ.get("RAY_DATA_LOG_LEVEL")
    if not verbose:
        os.environ["RAY_DATA_LOG_LEVEL"] = "ERROR"
        logging.getLogger("ray.data").setLevel(logging.ERROR)
    try:
        yield ray
    finally:
        if not verbose:
            if level is None:
                os.environ.pop("RAY_DATA_LOG_LEVEL", None)
            else:
                os.environ["RAY_DATA_LOG_LEVEL"] = level
        if started_here:
            ray.shutdown()


def _resources(ray, workers: int, cpus: float | None, gpus: float | None) -> tuple[float, float]:
    cluster = ray.cluster_resources()
    if gpus is None:
        gpus = 1.0 if cluster.get("GPU", 0) >= 1 else 0.0
    if cpus is None:
        cpus = max(1.0, math.floor(cluster.get("CPU", 1) / workers))
    return float(cpus), float(gpus)


def _partition_blobs(
    inputs: InputList, refs: _SourceRefs, buckets: np.ndarray, todo: list[int], n_partitions: int
) -> list[dict]:
    """One item per partition to write: its inputs as an Arrow IPC stream (locations, refs, rows, labels)."""
    columns = {
        "location": pa.array(inputs.locations, pa.string()),
        "source": pa.array(refs.per_input, pa.string()),
        "row": pa.array(inputs.rows if inputs.rows is not None else [0] * len(inputs), pa.int64()),
    }
    table = pa.table(columns)
    if inputs.labels is not None:
        for name in inputs.labels.column_names:
            table = table.append_column(name, inputs.labels.column(name))
    order = np.argsort(buckets, kind="stable")
    bounds = np.searchsorted(buckets[order], np.arange(n_partitions + 1))
    items = []
    for k in todo:
        chunk = table.take(pa.array(order[bounds[k] : bounds[k + 1]]))
        sink = pa.BufferOutputStream()
        with pa.ipc.new_stream(sink, chunk.schema) as writer:
            writer.write_table(chunk)
        items.append({"partition": k, "inputs": sink.getvalue().to_pybytes()})
    return items


def _run(ray, estimator, filesystem, spec: JobSpec, plan: _Plan, todo, pool: dict, progress):
    """Planned partitions (folders, manifests): one actor call reads, encodes and writes a whole partition."""
    if not todo:
        return []
    items = _partition_blobs(plan.inputs, plan.refs, plan.buckets, todo, spec.n_partitions)
    dataset = ray.data.from_items(items, override_num_blocks=len(items))
    del items
    encoded = dataset.map_batches(
        PartitionEncoder,
        batch_size=1,
        batch_format="numpy",
        fn_constructor_kwargs={"estimator": [ray.put(estimator)], "filesystem": filesystem, "spec": spec},
        compute=ray.data.ActorPoolStrategy(size=min(pool["workers"], len(todo))),
        num_cpus=pool["cpus"],
        num_gpus=pool["gpus"],
    )
    return _collect(encoded, progress, plan.inputs, plan.refs)


def _run_dataset(ray, estimator, filesystem, spec: JobSpec, dataset, todo, pool: dict, progress):
    """A ``ray.data.Dataset`` of image bytes: key rows, encode in the actor pool, group by partition, write.

    The rows are not listed beforehand, so partitions come from the keyed content hash and
    a group-by gathers each partition's latents (not the images) before it is written.
    """
    if not todo:
        return []
    keyed = dataset.map_batches(key_rows, fn_kwargs={"spec": spec, "todo": todo}, batch_format="pyarrow")
    encoded = keyed.map_batches(
        RowEncoder,
        batch_size=spec.batch_size,
        batch_format="pyarrow",
        fn_constructor_kwargs={"estimator": [ray.put(estimator)], "filesystem": filesystem, "spec": spec},
        compute=ray.data.ActorPoolStrategy(size=pool["workers"]),
        num_cpus=pool["cpus"],
        num_gpus=pool["gpus"],
    )
    written = encoded.groupby("partition").map_groups(
        write_group, batch_format="pyarrow", fn_kwargs={"filesystem": filesystem, "spec": spec},
    )
    return _collect(written, progress, None, None)


def _collect(results, progress, inputs, refs) -> list[dict]:
    """Stream the per-partition counts back to the driver as partitions finish."""
    stats = []
    try:
        for row in results.iter_rows():
            record = json.loads(row["stats"])
            stats.append(record)
            if progress is not None:
                progress(record["rows_read"])
    except Exception as error:  # Ray wraps the actor's exception; surface a strict stop as itself
        message = _strict_stop_message(error)
        if message is not None:
            raise PartitionFailed(message if inputs is None else _name_the_file(message, inputs, refs)) from None
        raise
    return stats


def _name_the_file(message: str, inputs: InputList, refs: _SourceRefs) -> str:
    """On the driver (the data owner's terminal), say which file stopped a strict job."""
    ref, _, reason = message.partition(": ")
    if ref.startswith("file "):
        where = refs.per_input.index(ref) if ref in refs.per_input else None
        if where is not None:
            return f"{inputs.locations[where]}: {reason}"
    return message


def _strict_stop_message(error: BaseException) -> str | None:
    """The message of a :class:`PartitionFailed` raised in an actor, from the error Ray re-raises.

    Ray re-raises the actor's exception as its own type with the original's traceback as
    text, so the cause is found by type where Ray kept it and by its printed name otherwise.
    """
    cause, seen = error, set()
    while cause is not None and id(cause) not in seen:
        seen.add(id(cause))
        if isinstance(cause, PartitionFailed):
            return str(cause).splitlines()[0]
        cause = getattr(cause, "cause", None) or cause.__cause__
    match = re.search(rf"{PartitionFailed.__name__}: (.+)", str(error))
    return match.group(1).strip() if match else None
