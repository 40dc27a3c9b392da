"""The output folder of a distributed export: its plan, its finished partitions and its job file.

Layout of ``OUT/``::

    _bafo_plan.json            written first: what the job will produce (fingerprints, partition count)
    part-00000.parquet         one file per partition, each complete or absent (temporary file + rename)
    _bafo_part-00000.json      that partition's counts, written right after it
    ...
    _bafo_job.json             written LAST: counts read / written / skipped (by reason), files, fingerprints

A folder with a plan and no job file is a half-finished job; running the same job again
keeps every partition whose counts file carries the plan's fingerprint and writes the
others (file sources only: a ``ray.data.Dataset`` source's folder is never resumed, as its
plan cannot identify its images). Files starting with ``_`` are not data to Parquet readers (Spark's and Hive's
convention, and :mod:`bafo_pipeline.io`'s). Nothing here names a source file: UTKFace file
names spell out labels, so files are named by a keyed hash and reasons are stripped of
names and values (:func:`public_reason`).
"""

from __future__ import annotations

import json
import re
import time
from collections import Counter
from dataclasses import dataclass

import pyarrow.fs as pafs

from .._utils.atomic import atomic_write_path
from .._utils.filesystems import is_local, join

__all__ = ["JOB_FILE", "PLAN_FILE", "JobFolder", "partition_file_name", "public_reason", "summarize"]

PLAN_FILE = "_bafo_plan.json"
JOB_FILE = "_bafo_job.json"
_PART = re.compile(r"^part-(\d{5,})\.parquet$")
_OURS = re.compile(
    r"^(?:part-\d{5,}\.parquet|_bafo_(?:plan|job|part-\d{5,})\.json|\.(?:part-\d{5,}\.parquet|_bafo_[\w-]+\.json)\..+\.tmp)$"
)
_TEMPORARY = re.compile(r"^\..+\.tmp$")
#: Most skipped entries listed by name in a job file (all are counted by reason).
MAX_LISTED_SKIPS = 100


def partition_file_name(partition: int) -> str:
    """``part-00042.parquet``: fixed per partition, so a re-run finds what is done."""
    return f"part-{partition:05d}.parquet"


def _stats_file_name(partition: int) -> str:
    return f"_bafo_part-{partition:05d}.json"


def public_reason(reason: str) -> str:
    """A skip reason fit for the shared output folder: no quoted text, no file name, no path.

    ``"unexpected suffix '.jpgg' after '26_1_2_2017'"`` becomes ``"unexpected suffix '…'
    after '…'"``, ``"file not found: img/26_1_2_2017.jpg"`` becomes ``"file not found: …"``.
    """
    text = re.sub(r"'[^']*'|\"[^\"]*\"", "'…'", reason)
    return _PATHLIKE_TOKEN.sub("…", text)


_PATHLIKE_TOKEN = re.compile(
    r"[^\s'\"(),;]*(?:[/\\]|\.(?:jpe?g|png|bmp|gif|tiff?|webp|chip)\b)[^\s'\"(),;]*", re.IGNORECASE
)


@dataclass
class JobFolder:
    """The output folder of one export job, on any :mod:`pyarrow.fs` filesystem."""

    filesystem: pafs.FileSystem
    path: str

    # ------------------------------------------------------------------ state
    def names(self) -> list[str]:
        """Entries directly in the folder (empty when it does not exist)."""
        info = self.filesystem.get_file_info(self.path)
        if info.type == pafs.FileType.NotFound:
            return []
        if info.type != pafs.FileType.Directory:
            raise NotADirectoryError(f"{self.path} exists and is not a folder")
        selector = pafs.FileSelector(self.path, recursive=False)
        return sorted(i.base_name for i in self.filesystem.get_file_info(selector))

    def read_json(self, name: str) -> dict | None:
        """A job's JSON file, or None when absent."""
        location = join(self.path, name)
        if self.filesystem.get_file_info(location).type != pafs.FileType.File:
            return None
        with self.filesystem.open_input_stream(location) as stream:
            try:
                return json.loads(stream.read().decode())
            except (ValueError, UnicodeDecodeError):
                raise ValueError(f"{location}: not a valid bafo job file; remove it or pass overwrite") from None

    def write_json(self, name: str, content: dict) -> None:
        """Write a JSON file atomically (temporary file, then rename)."""
        text = json.dumps(content, indent=2, sort_keys=True)
        location = join(self.path, name)
        if is_local(self.filesystem):
            with atomic_write_path(location, overwrite=True) as temporary:
                temporary.write_text(text)
            return
        temporary = join(self.path, f".{name}.{time.time_ns()}.tmp")
        with self.filesystem.open_output_stream(temporary) as stream:
            stream.write(text.encode())
        self.filesystem.move(temporary, location)

    def write_partition_stats(self, partition: int, stats: dict) -> None:
        """Record a written partition's counts (after its file: together they mark it finished)."""
        self.write_json(_stats_file_name(partition), stats)

    def finished_partitions(self, plan_fingerprint: str) -> dict[int, dict]:
        """``{partition: counts}`` of the partitions written for this plan."""
        names = set(self.names())
        done = {}
        for name in names:
            match = _PART.match(name)
            if match is None or _stats_file_name(int(match.group(1))) not in names:
                continue
            try:
                stats = self.read_json(_stats_file_name(int(match.group(1))))
            except ValueError:  # unreadable: written again
                continue
            if stats.get("plan_fingerprint") == plan_fingerprint:
                done[int(match.group(1))] = stats
        return done

    # ------------------------------------------------------------------ preparing
    def prepare(self, *, overwrite: bool) -> None:
        """Create the folder, or clear it (``overwrite``), refusing to touch anything not ours."""
        names = self.names()
        foreign = [n for n in names if not _OURS.match(n)]
        if foreign and (overwrite or PLAN_FILE not in names):
            raise FileExistsError(
                f"{self.path} holds files that are not a bafo export ({len(foreign)}, e.g. {foreign[0]!r}); "
                "choose an empty or new folder"
            )
        if overwrite:
            for name in names:
                self.filesystem.delete_file(join(self.path, name))
        self.filesystem.create_dir(self.path, recursive=True)

    def remove_temporaries(self) -> int:
        """Delete temporary files left by killed runs; returns how many."""
        stale = [n for n in self.names() if _TEMPORARY.match(n) and _OURS.match(n)]
        for name in stale:
            self.filesystem.delete_file(join(self.path, name))
        return len(stale)

    def remove_partitions_except(self, keep: set[int]) -> None:
        """Delete partition files (and counts) not in ``keep``: left by another plan or a killed run."""
        for name in self.names():
            match = _PART.match(name) or re.match(r"^_bafo_part-(\d{5,})\.json$", name)
            if match is not None and int(match.group(1)) not in keep:
                self.filesystem.delete_file(join(self.path, name))


def summarize(partition_stats: list[dict], scan_skips: list[tuple[str, str]], dropped: dict) -> dict:
    """The counts of a job file: the scan's skips and drops, then each partition's counts."""
    reasons: Counter = Counter(reason for _, reason in scan_skips)
    items = [{"source": s, "reason": r} for s, r in scan_skips[:MAX_LISTED_SKIPS]]
    for stats in partition_stats:
        reasons.update(stats.get("skipped_by_reason", {}))
        items += stats.get("skipped_items", [])[: max(0, MAX_LISTED_SKIPS - len(items))]
    planned = sum(s["rows_read"] for s in partition_stats)
    return {
        "planned": planned,
        "written": sum(s["rows_written"] for s in partition_stats),
        "skipped": sum(reasons.values()),
        "skipped_while_scanning": len(scan_skips),
        **dropped,
        "skipped_by_reason": dict(sorted(reasons.items())),
        "skipped_items": items,
    }
