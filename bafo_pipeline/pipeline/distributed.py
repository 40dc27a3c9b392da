"""Distributed export on Ray Data: image folders, manifests or Ray datasets to a partitioned latent Parquet dataset.

:func:`encode_dataset` is the engine behind ``bafo encode --engine ray``. What runs where:

- **driver** (the process that calls it): scans the source with the in-process export's
  own scan (listing on the driver, file hashing in Ray tasks), plans ids and partitions
  (:mod:`~bafo_pipeline.pipeline.encode_plan`), writes ``_bafo_plan.json``, starts the Ray
  Data job, and writes ``_bafo_job.json`` once every partition is on disk. It holds the
  listing, never images or latents.
- **actors** (``workers`` of them, one GPU each where the cluster has GPUs): each holds the
  fitted model once and writes whole partitions
  (:class:`~bafo_pipeline.pipeline.partitions.PartitionWriter`). The model travels as its
  :meth:`~bafo_pipeline.BAFOTransformer.encoder_bundle` (the folded encoder's weights), so
  an actor imports torch, not scikit-learn; a concealment step that cannot be folded sends
  the estimator instead.

The same job runs unchanged on a laptop (a local Ray cluster is started) and on a cluster
(``RAY_ADDRESS`` or ``address=``); files must then be reachable from every node (object
storage or a shared filesystem).
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa

from .._utils.filesystems import is_local, resolve_filesystem, within
from ..attributes import DEFAULT_SENSITIVE
from ..data import load_id_key, write_key_table
from ..data.files import DEFAULT_MAX_FILE_BYTES
from ..data.splits import SPLIT_CHOICES, hash_files
from ..io import read_table
from ..transformers import load_model, model_fingerprint, read_model_config, save_model
from .encode_plan import ID_SCHEMES, JobSpec, Plan, make_dataset_plan, make_file_plan
from .job_folder import JOB_FILE, PLAN_FILE, JobFolder, summarize
from .partitions import GroupWriter, PartitionFailed, PartitionWriter, key_rows

__all__ = ["EncodeJobReport", "PartitionFailed", "actor_model", "encode_dataset"]


@dataclass
class EncodeJobReport:
    """What a distributed export did.

    Attributes
    ----------
    out : str
        The output folder.
    counts : dict
        ``planned``, ``written``, ``skipped`` (with ``skipped_by_reason`` and the first
        ``skipped_items``), ``skipped_while_scanning``, ``duplicates_dropped``,
        ``conflicting_groups_dropped``, ``conflicting_files_dropped``, ``id_collisions``
        and ``excluded_by_split``.
    n_partitions : int
    partitions_kept : int
        Partitions already complete from an earlier, interrupted run of the same job.
    partitions_written : int
        Partitions written by this run.
    job : dict
        The content of ``_bafo_job.json``.
    scan_skipped : list of (str, str)
        What the scan left out, named for the data owner (paths or manifest rows): for the
        terminal, never for the output folder.
    """

    out: str
    counts: dict = field(default_factory=dict)
    n_partitions: int = 0
    partitions_kept: int = 0
    partitions_written: int = 0
    job: dict = field(default_factory=dict)
    scan_skipped: list = field(default_factory=list)

    @property
    def n_written(self) -> int:
        return int(self.counts.get("written", 0))


def encode_dataset(
    model,
    out: str | os.PathLike,
    *,
    utkface: str | os.PathLike | None = None,
    manifest: str | os.PathLike | None = None,
    images: str | os.PathLike | None = None,
    dataset: Any = None,
    image_column: str = "path",
    sensitive: Sequence[str] = DEFAULT_SENSITIVE,
    include_labels: bool = False,
    id_from: str = "content",
    id_key: bytes | str | os.PathLike | None = None,
    key_table: str | os.PathLike | None = None,
    split: str = "all",
    include_split: bool = False,
    workers: int = 2,
    gpus_per_worker: float | None = None,
    cpus_per_worker: float | None = None,
    partition_rows: int | None = None,
    batch_size: int = 512,
    decoder: str = "auto",
    strict: bool = False,
    overwrite: bool = False,
    allow_outside_root: bool = False,
    max_file_bytes: int = DEFAULT_MAX_FILE_BYTES,
    address: str | None = None,
    progress: Callable[[int], Any] | None = None,
    verbose: bool = False,
) -> EncodeJobReport:
    """Encode every image of a source on a Ray cluster into a partitioned Parquet dataset.

    Every ``part-NNNNN.parquet`` is what ``bafo encode`` writes for its rows (``id`` int64,
    ``latent`` ``fixed_size_list<float32>[d]``, optional ``split`` and labels; the ``bafo``
    metadata with the model fingerprint), written by the same
    :func:`~bafo_pipeline.pipeline.export.export_latents`. The rows are those of the
    in-process export: the same scan skips the same files and drops the same duplicates
    over the whole source. No path or file name is ever written; labels only when asked.
    Re-running an interrupted job resumes it: finished partitions are kept, and the result
    is the same as one uninterrupted run. (Not for a ``dataset`` source: its images are read
    only while encoding, so nothing shows that an earlier run's partitions came from the same
    images; its folder is refused unless ``overwrite``.)

    Parameters
    ----------
    model : BAFOTransformer or path
        A fitted estimator or a model directory (its fingerprint is recorded).
    out : path or URI
        Output folder: created, resumed (same job; never for a ``dataset`` source), or refused
        (anything else, unless ``overwrite``).
    utkface, manifest, images : path or URI, optional
        The source, exactly one of these or ``dataset``: a UTKFace folder (labels in the
        names), a CSV/Parquet manifest, or a folder of images without labels (searched
        recursively).
    dataset : ray.data.Dataset, optional
        Image files as rows: a ``bytes`` column (as ``ray.data.read_binary_files`` gives
        it), other columns are labels; Ray's ``path`` column is dropped. Its export is
        never resumed: give a new ``out`` or ``overwrite``.
    image_column, sensitive :
        Manifest columns: the image path and the sensitive attributes (rows missing them
        are skipped; duplicates whose sensitive values disagree are dropped).
    include_labels : bool, default=False
        Store the source's label columns (sensitive ones included): for audit data only.
    id_from : {"content", "row"}, default="content"
        ``"content"``: :func:`~bafo_pipeline.data.pseudonymous_ids` (a keyed hash of the
        content: stable across splits, runs and engines, reveals no name or label).
        ``"row"``: the manifest's 1-based data-row number (for joining with the manifest;
        it reveals whatever the manifest's order encodes).
    id_key : bytes, path or None
        The key of the ids; default the data owner's key file
        (``$BAFO_ID_KEY_FILE`` or ``~/.config/bafo/id.key``, created on first use).
    key_table : path, optional
        Also write which file each written id came from (CSV or Parquet, mode ``0600``)
        here, on this machine and outside ``out``: for the data owner only.
    split : {"all", "train", "test", "calibration"}, default="all"
        Rows of the model's content-hash split to encode. ``"all"`` leaves out the
        calibration rows of a ``bafo run`` model (its concealment was fitted on them,
        so they are never shared unless asked for by name).
    include_split : bool, default=False
        Add a ``split`` column.
    workers : int, default=2
        Actors, each holding one copy of the model.
    gpus_per_worker : float, optional
        GPUs per actor; default 1 when the cluster has GPUs, else 0.
    cpus_per_worker : float, optional
        CPUs reserved per actor; default the cluster's CPUs divided by ``workers``.
    partition_rows : int, optional
        Images per partition (file); default about 1/64 of them, within 500-100,000.
    batch_size : int, default=512
        Images per encoder call.
    decoder : {"auto", "pil", "torch"}, default="auto"
        As in :func:`~bafo_pipeline.pipeline.export.export_latents`: ``auto`` is torch on a GPU (Pillow for a
        model with :class:`~bafo_pipeline.transformers.KeyedNoise`).
    strict : bool, default=False
        Stop at the first unreadable image instead of skipping it.
    overwrite : bool, default=False
        Replace an existing export (only files this function writes are removed) and key table.
        The earlier export's files are removed when the job starts, not when it ends: a
        job that fails or is stopped leaves neither export whole (rerun it to finish).
    allow_outside_root : bool, default=False
        Accept files leading outside the folder or the manifest's folder (symlinks,
        ``../`` and absolute manifest paths).
    max_file_bytes : int, default=64 MiB
        Larger files are skipped with a reason.
    address : str, optional
        Ray cluster address; default ``RAY_ADDRESS`` or a new local cluster.
    progress : callable, optional
        Called with the number of planned rows of each partition as it finishes.
    verbose : bool, default=False
        Show Ray's own logs and progress bars.

    Returns
    -------
    EncodeJobReport

    Raises
    ------
    PartitionFailed
        With ``strict``, for the first file that cannot be decoded (its path or manifest row, and why).
    FileExistsError
        If ``out`` holds another export or other files (any export, for a ``dataset``
        source), or ``key_table`` exists, and ``overwrite`` is False.
    ValueError
        For invalid settings, or (``strict``) the first file the scan cannot read.
    """
    kind, source = _source(utkface, manifest, images, dataset)
    if id_from not in ID_SCHEMES:
        raise ValueError(f"id_from must be one of {sorted(ID_SCHEMES)}, got {id_from!r}")
    if split not in SPLIT_CHOICES:
        raise ValueError(f"split must be one of {SPLIT_CHOICES}, got {split!r}")
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
        raise ValueError(f"workers must be a positive int, got {workers!r}")
    if kind == "dataset" and (split != "all" or include_split or id_from != "content" or key_table is not None):
        raise ValueError("a ray.data.Dataset source is exported whole with content ids: no split, row ids or key table")
    started = time.time()
    estimator, fingerprint, split_rule = _model(model)
    if (split != "all" or include_split) and split_rule is None:
        raise ValueError("this model records no train/test split; use split='all' without include_split")
    key = load_id_key(id_key)
    filesystem, out_path = resolve_filesystem(out)
    key_table = _check_key_table(key_table, filesystem, out_path, overwrite)
    folder = JobFolder(filesystem, out_path)

    carry_labels = include_labels or estimator.needs_sensitive_features_to_transform
    with _ray_session(address, verbose) as ray:
        if kind == "dataset":
            plan = make_dataset_plan(source, key, fingerprint, include_labels=include_labels,
                                     partition_rows=partition_rows, carry_labels=carry_labels)
        else:
            plan = make_file_plan(
                kind, source, key, fingerprint, hasher=_cluster_hasher(ray), id_from=id_from,
                include_labels=include_labels, carry_labels=carry_labels, include_split=include_split, split=split,
                split_rule=split_rule,
                partition_rows=partition_rows, image_column=image_column, sensitive=tuple(sensitive), strict=strict,
                allow_outside_root=allow_outside_root, max_file_bytes=max_file_bytes,
            )
        finished = _resume_state(folder, plan.fingerprint, overwrite, resumable=kind != "dataset")
        if finished is None:  # the same job is already complete
            job = folder.read_json(JOB_FILE)
            _write_key_table(key_table, plan, out, overwrite)
            return EncodeJobReport(str(out), job["counts"], plan.n_partitions, plan.n_partitions, 0, job, plan.skipped)
        folder.write_json(PLAN_FILE, {**plan.settings, "plan_fingerprint": plan.fingerprint})
        todo = [k for k in range(plan.n_partitions) if k not in finished]
        spec = JobSpec(
            out=out_path, plan_fingerprint=plan.fingerprint, n_partitions=plan.n_partitions,
            sensitive=plan.sensitive, include_labels=include_labels, include_split=include_split,
            carry_labels=carry_labels,
            batch_size=batch_size, decoder=decoder, strict=strict, max_file_bytes=max_file_bytes,
            metadata={"model_fingerprint": fingerprint, "id_scheme": plan.settings["id_scheme"],
                      "id_key_fingerprint": plan.settings["id_key_fingerprint"]},
        )
        pool = _pool(ray, workers, cpus_per_worker, gpus_per_worker, dataset_source=kind == "dataset")
        shipped = actor_model(estimator)
        if not todo:
            new_stats = []
        elif kind == "dataset":
            new_stats = _run_dataset(ray, shipped, filesystem, spec, source, key, plan, todo, pool, progress)
        else:
            inputs, _ = resolve_filesystem(source)
            new_stats = _run_planned(ray, shipped, filesystem, inputs, spec, plan, todo, pool, progress)
    stats = sorted([*finished.values(), *new_stats], key=lambda s: s["partition"])
    job = _job_record(plan, stats, len(finished), len(new_stats), estimator, workers, time.time() - started)
    folder.write_json(JOB_FILE, job)  # last: its presence means every partition is on disk
    _write_key_table(key_table, plan, out, overwrite)
    return EncodeJobReport(str(out), job["counts"], plan.n_partitions, len(finished), len(new_stats), job, plan.skipped)


# --------------------------------------------------------------------------- the driver's side
def _source(utkface, manifest, images, dataset) -> tuple[str, Any]:
    given = {k: v for k, v in (("utkface", utkface), ("manifest", manifest), ("images", images),
                               ("dataset", dataset)) if v is not None}
    if len(given) != 1:
        raise ValueError(f"give exactly one of utkface, manifest, images or dataset (got {sorted(given) or 'none'})")
    kind, source = next(iter(given.items()))
    if kind == "dataset" and not _is_ray_dataset(source):
        raise TypeError(f"dataset must be a ray.data.Dataset, got {type(source).__name__}")
    return kind, source


def _is_ray_dataset(source) -> bool:
    try:
        from ray.data import Dataset
    except ImportError:
        return False
    return isinstance(source, Dataset)


def _model(model) -> tuple[Any, str, dict | None]:
    """``(estimator, fingerprint, split rule)`` from a model directory or a fitted estimator."""
    if isinstance(model, (str, os.PathLike)):
        config = read_model_config(model)
        return load_model(model), model_fingerprint(model), config.get("metadata", {}).get("split")
    with tempfile.TemporaryDirectory(prefix="bafo-fingerprint-") as folder:
        saved = save_model(model, Path(folder) / "model")
        return model, model_fingerprint(saved), None


def actor_model(estimator):
    """What the actors receive: the estimator's :meth:`~bafo_pipeline.BAFOTransformer.encoder_bundle`
    (torch only: an actor then never imports scikit-learn), or the estimator itself when its
    concealment cannot be folded into the network (a step without ``as_layers()``)."""
    try:
        return estimator.encoder_bundle()
    except ValueError:
        return estimator


def _check_key_table(key_table, filesystem, out_path: str, overwrite: bool) -> Path | None:
    """The key table's path, refused before any work when it could leak or clobber."""
    if key_table is None:
        return None
    path = Path(key_table).expanduser().absolute()
    if is_local(filesystem) and within(out_path, str(path)):
        raise ValueError(f"the key table {key_table} would sit inside the export {out_path}; keep it apart")
    if path.exists() and not overwrite:
        raise FileExistsError(f"{key_table} exists; pass overwrite to replace it")
    if path.suffix.lower() not in (".csv", ".parquet", ".pq"):
        raise ValueError(f"{key_table}: a key table is a .csv or .parquet file")
    path.parent.mkdir(parents=True, exist_ok=True)
    return path


def _write_key_table(path: Path | None, plan: Plan, out, overwrite: bool) -> None:
    """id -> source of every row written (rows that failed to decode are not in the export, nor here)."""
    if path is None:
        return
    written = read_table(out, ["id"]).column("id").to_pylist()
    sources = [plan.sources[i] for i in written]
    rows = None
    if plan.manifest_rows is not None:
        row_of = dict(zip(plan.rows["_bafo_id"].tolist(), plan.manifest_rows.tolist()))
        rows = [row_of[i] for i in written]
    write_key_table(path, written, sources, rows=rows, overwrite=True)


def _resume_state(folder: JobFolder, plan_fingerprint: str, overwrite: bool, *,
                  resumable: bool = True) -> dict[int, dict] | None:
    """Finished partitions to keep (``{}`` for a fresh job), or None when the same job is already complete.

    ``resumable`` False (a ``ray.data.Dataset`` source): a folder holding an export is refused
    without ``overwrite``, whatever its plan says. Such a plan identifies the settings and the
    dataset's shape, not its images (they are read only while encoding), so the folder's
    partitions could be another dataset's: kept, they would be mixed with this one's, or
    returned as its result.
    """
    names = folder.names()
    if overwrite or not names:
        folder.prepare(overwrite=overwrite)
        return {}
    plan = folder.read_json(PLAN_FILE)
    if plan is not None and not resumable:
        raise FileExistsError(
            f"{folder.path} holds an earlier export; a ray.data.Dataset source cannot resume or reuse one, "
            "since its images are read only while encoding and nothing can check that they are those the "
            "folder's partitions were written from. Choose a new folder or pass overwrite to encode it again"
        )
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


def _job_record(plan: Plan, stats: list[dict], kept: int, written: int, estimator, workers: int, seconds: float) -> dict:
    """The content of ``_bafo_job.json``."""
    return {
        **plan.settings,
        "plan_fingerprint": plan.fingerprint,
        "complete": True,
        "counts": summarize(stats, plan.skipped_public, plan.dropped),
        "partitions": {"total": plan.n_partitions, "kept_from_earlier_runs": kept, "written_now": written},
        "files": [{"name": s["file"], "rows": s["rows_written"]} for s in stats],
        "precision": sorted({s["precision"] for s in stats if s.get("precision")}),
        "decoder": sorted({s["decoder"] for s in stats if s.get("decoder")}),
        "actor_model": sorted({s["actor_model"] for s in stats if s.get("actor_model")}),
        "latent_dim": int(estimator.latent_dim),
        "workers": workers,
        "seconds_this_run": round(seconds, 2),
        "finished_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }


# --------------------------------------------------------------------------- Ray
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


def _pool(ray, workers: int, cpus: float | None, gpus: float | None, *, dataset_source: bool) -> dict:
    """Actors and the resources each reserves."""
    cluster = ray.cluster_resources()
    if gpus is None:
        gpus = 1.0 if cluster.get("GPU", 0) >= 1 else 0.0
    if cpus is None:
        cpus = max(1.0, math.floor(cluster.get("CPU", 1) / workers))
        if dataset_source:  # leave a CPU to the tasks that key the rows and shuffle them
            cpus = min(cpus, max(0.5, math.floor(max(1.0, cluster.get("CPU", 1) - 1) / workers)))
    return {"workers": workers, "cpus": float(cpus), "gpus": float(gpus)}


def _cluster_hasher(ray) -> Callable:
    """:func:`~bafo_pipeline.data.splits.hash_files` where it is cheapest (what the scans call).

    Files on this machine's disk (or a shared filesystem mounted on it) are hashed here, in
    the reading threads of :func:`~bafo_pipeline.data.splits.hash_files`: about 25,000
    files/s per thread, where a Ray task pays a worker process importing the package first
    (seconds, on every job: Ray recycles idle task workers once the actors have run).
    Files in object storage, where every read waits on the network, are spread over the
    cluster in Ray tasks.
    """
    remote = ray.remote(num_cpus=1)(hash_files)
    cpus = max(1, int(ray.cluster_resources().get("CPU", 1)))

    def hasher(paths, *, n_jobs=None, filesystem=None, max_bytes=DEFAULT_MAX_FILE_BYTES):
        if filesystem is None or is_local(filesystem):
            return hash_files(paths, n_jobs=n_jobs, filesystem=filesystem, max_bytes=max_bytes)
        size = max(256, math.ceil(len(paths) / (4 * cpus)))
        chunks = [paths[i : i + size] for i in range(0, len(paths), size)]
        results = ray.get([remote.remote(c, filesystem=filesystem, max_bytes=max_bytes) for c in chunks])
        return [h for hashes, _ in results for h in hashes], [r for _, reasons in results for r in reasons]

    return hasher


def _run_planned(ray, estimator, filesystem, inputs, spec: JobSpec, plan: Plan, todo, pool: dict, progress):
    """File sources: one actor call writes one planned partition."""
    items = []
    for k in todo:
        rows = plan.partition_rows(k)
        sink = pa.BufferOutputStream()
        with pa.ipc.new_stream(sink, rows.schema) as writer:
            writer.write_table(rows)
        items.append({"partition": k, "rows": sink.getvalue().to_pybytes()})
    written = ray.data.from_items(items, override_num_blocks=len(items)).map_batches(
        PartitionWriter,
        batch_size=1,
        batch_format="numpy",
        fn_constructor_kwargs={"estimator": [ray.put(estimator)], "filesystem": filesystem, "spec": spec,
                               "inputs": inputs},
        compute=ray.data.ActorPoolStrategy(size=min(pool["workers"], len(todo))),
        num_cpus=pool["cpus"],
        num_gpus=pool["gpus"],
    )
    del items
    files = {s: f"{s} ({p})" if s.startswith("row ") else p for s, p in zip(plan.rows["_bafo_source"], plan.rows["path"])}
    return _collect(written, progress, files)


def _run_dataset(ray, estimator, filesystem, spec: JobSpec, dataset, key: bytes, plan: Plan, todo, pool, progress):
    """A ``ray.data.Dataset`` of image bytes: key the rows, gather each partition, write it in the actor pool."""
    keyed = dataset.map_batches(key_rows, fn_kwargs={"key": key, "n_partitions": plan.n_partitions, "todo": todo},
                                batch_format="pyarrow")
    written = keyed.groupby("partition").map_groups(
        GroupWriter,
        batch_format="pyarrow",
        fn_constructor_kwargs={"estimator": [ray.put(estimator)], "filesystem": filesystem, "spec": spec,
                               "label_columns": plan.label_columns},
        concurrency=pool["workers"],
        num_cpus=pool["cpus"],
        num_gpus=pool["gpus"],
    )
    return _collect(written, progress, {})


def _collect(results, progress, files: dict) -> list[dict]:
    """Stream the per-partition counts back to the driver as partitions finish.

    A strict stop or an error reported by an actor ends the reading (which releases the
    actor pool) and is raised here.
    """
    stats = []
    rows = iter(results.iter_rows())
    try:
        for row in rows:
            record = json.loads(row["stats"])
            if "stopped" in record:
                where, _, reason = record["stopped"].partition(": ")
                raise PartitionFailed(f"{files.get(where, where)}: {reason}")  # the owner's terminal: full path
            if "failed" in record:
                raise RuntimeError(f"partition {record['partition']} failed on its worker:\n{record['failed']}")
            stats.append(record)
            if progress is not None:
                progress(record["rows_read"])
    finally:
        close = getattr(rows, "close", None)
        if close is not None:
            close()
    return stats
