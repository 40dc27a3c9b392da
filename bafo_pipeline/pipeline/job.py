"""The output folder of a distributed export: its plan, its finished partitions and its job file.

Layout of ``OUT/``::

    _bafo_plan.json      written first: what the job will produce (fingerprints, partition count)
    part-00000.parquet   one file per partition, each complete or absent (temporary file + rename)
    ...
    _bafo_job.json       written LAST: counts read / written / skipped (by reason), files, fingerprints

A folder with a plan and no job file is a half-finished job; running the same job again
keeps every partition whose file carries the plan's fingerprint and writes the others.
Nothing here names a source file: UTKFace file names spell out labels.
"""

from __future__ import annotations

import json
import re
import time
from collections import Counter
from dataclasses import dataclass

import pyarrow.fs as pafs
import pyarrow.parquet as pq

from ..io import atomic_write_path
from ..io.filesystems import is_local, join

__all__ = ["JOB_FILE", "PLAN_FILE", "JobFolder", "summarize"]

PLAN_FILE = "_bafo_plan.json"
JOB_FILE = "_bafo_job.json"
_PART = re.compile(r"^part-(\d{5,})\.parquet$")
_OURS = re.compile(r"^(?:part-\d{5,}\.parquet|_bafo_(?:plan|job)\.json|\.(?:part-\d{5,}\.parquet|_bafo_\w+\.json)\..+\.tmp)$")
_TEMPORARY = re.compile(r"^\..+\.tmp$")


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

    def finished_partitions(self, plan_fingerprint: str) -> dict[int, dict]:
        """``{partition: stats}`` of the partition files written for this plan (read from their footers)."""
        done = {}
        for name in self.names():
            match = _PART.match(name)
            if match is None:
                continue
            job = self._footer_job(join(self.path, name))
            if job is not None and job.get("plan_fingerprint") == plan_fingerprint:
                done[int(match.group(1))] = {**job, "file": name}
        return done

    def _footer_job(self, location: str) -> dict | None:
        try:
            with self.filesystem.open_input_file(location) as handle:
                meta = pq.ParquetFile(handle).metadata.metadata or {}
            return json.loads(meta[b"bafo"]).get("job")
        except (OSError, ValueError, KeyError):  # unreadable or foreign: written again
            return None

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
        """Delete partition files not in ``keep`` (left by another plan; they would mix in)."""
        for name in self.names():
            match = _PART.match(name)
            if match is not None and int(match.group(1)) not in keep:
                self.filesystem.delete_file(join(self.path, name))


def summarize(partition_stats: list[dict], listing_skips: list[tuple[str, str]], max_items: int = 100) -> dict:
    """The counts of a job file from its partitions' counts and the skips found while listing."""
    reasons: Counter = Counter(reason for _, reason in listing_skips)
    items = [{"source": s, "reason": r} for s, r in listing_skips[:max_items]]
    for stats in partition_stats:
        reasons.update(stats.get("skipped_by_reason", {}))
        items += stats.get("skipped_items", [])[: max(0, max_items - len(items))]
    read = sum(s["rows_read"] for s in partition_stats)
    return {
        "listed": read + len(listing_skips),
        "read": read,
        "written": sum(s["rows_written"] for s in partition_stats),
        "skipped": sum(reasons.values()),
        "skipped_while_listing": len(listing_skips),
        "excluded_by_split": sum(s.get("excluded_by_split", 0) for s in partition_stats),
        "skipped_by_reason": dict(sorted(reasons.items())),
        "skipped_items": items,
    }
