"""Planning a distributed export (no Ray needed): a ray.data.Dataset source's plan cannot identify its images,
so its job folder is never resumed or reused."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pyarrow.fs as pafs
import pytest

from bafo_pipeline.pipeline.distributed import _resume_state
from bafo_pipeline.pipeline.encode_plan import make_dataset_plan
from bafo_pipeline.pipeline.job_folder import JOB_FILE, PLAN_FILE, JobFolder

KEY = bytes(range(32))


class _Dataset:
    """What the plan reads of a ``ray.data.Dataset``: its columns and its row count, never its images."""

    def __init__(self, blobs):
        self.blobs = blobs

    def schema(self):
        return SimpleNamespace(names=["bytes", "path", "age"])

    def count(self):
        return len(self.blobs)


def _plan(blobs):
    return make_dataset_plan(_Dataset(blobs), KEY, "model", include_labels=False, partition_rows=None)


def test_two_datasets_of_the_same_shape_never_share_a_plan_fingerprint():
    first, other, again = _plan([b"image A1", b"image A2"]), _plan([b"other 1", b"other 2"]), _plan([b"image A1", b"image A2"])
    assert first.settings == other.settings  # all the plan can see of them
    assert len({first.fingerprint, other.fingerprint, again.fingerprint}) == 3


def _finished_dataset_job(out, fingerprint: str) -> None:
    """What a complete export of a dataset leaves: plan, one partition and its counts, job file."""
    out.mkdir()
    (out / "part-00000.parquet").write_bytes(b"the first dataset's latents")
    (out / "_bafo_part-00000.json").write_text(json.dumps({"plan_fingerprint": fingerprint, "partition": 0}))
    plan = {"source_kind": "ray-dataset", "plan_fingerprint": fingerprint}
    (out / PLAN_FILE).write_text(json.dumps(plan))
    (out / JOB_FILE).write_text(json.dumps({**plan, "complete": True, "counts": {"written": 1}}))


@pytest.mark.parametrize("complete", [True, False])
def test_a_dataset_source_neither_reuses_nor_resumes_an_earlier_export(tmp_path, complete):
    out = tmp_path / "latents"
    _finished_dataset_job(out, "same shape, same settings")
    if not complete:  # interrupted: no job file
        (out / JOB_FILE).unlink()
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    folder = JobFolder(pafs.LocalFileSystem(), str(out))
    # Even under the same fingerprint (a plan made before plans of datasets were unique): refused.
    with pytest.raises(FileExistsError, match="ray.data.Dataset source cannot resume or reuse.*overwrite"):
        _resume_state(folder, "same shape, same settings", False, resumable=False)
    assert before == {p.name: p.read_bytes() for p in out.iterdir()}  # untouched
    # A file source's plan does identify its images: the same job is still resumed, or found complete.
    kept = _resume_state(folder, "same shape, same settings", False)
    assert kept is None if complete else list(kept) == [0]
    assert _resume_state(folder, "same shape, same settings", True, resumable=False) == {}  # overwrite: a fresh job
    assert list(out.iterdir()) == []
