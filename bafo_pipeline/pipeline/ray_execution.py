"""Running a planned export on Ray Data: the session, the actor pool, and the counts streamed back.

Two shapes of job: planned partitions (folders, manifests), one actor call per partition; and a
``ray.data.Dataset`` source, whose rows are keyed, encoded in the actor pool, grouped by
partition and written.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import re
from collections.abc import Iterator
from typing import Any

import numpy as np
import pyarrow as pa

from .dataset_source import RowEncoder, key_rows, write_group
from .inputs import InputList
from .partition_encoder import PartitionEncoder
from .plan import Plan, SourceRefs
from .spec import JobSpec, PartitionFailed

__all__ = ["ray_session", "run_dataset", "run_planned", "worker_resources"]


@contextlib.contextmanager
def ray_session(address: str | None, verbose: bool) -> Iterator[Any]:
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


def worker_resources(ray, workers: int, cpus: float | None, gpus: float | None) -> tuple[float, float]:
    cluster = ray.cluster_resources()
    if gpus is None:
        gpus = 1.0 if cluster.get("GPU", 0) >= 1 else 0.0
    if cpus is None:
        cpus = max(1.0, math.floor(cluster.get("CPU", 1) / workers))
    return float(cpus), float(gpus)


def _partition_blobs(
    inputs: InputList, refs: SourceRefs, buckets: np.ndarray, todo: list[int], n_partitions: int
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


def run_planned(ray, estimator, filesystem, spec: JobSpec, plan: Plan, todo, pool: dict, progress):
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


def run_dataset(ray, estimator, filesystem, spec: JobSpec, dataset, todo, pool: dict, progress):
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


def _name_the_file(message: str, inputs: InputList, refs: SourceRefs) -> str:
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
