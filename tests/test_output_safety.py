"""Outputs never destroy inputs: killed writers leave the old file or the new one, never a part of one;
their temporary files are removed on SIGTERM or by the next run; an output is never an input."""

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from bafo_pipeline._utils import (
    AtomicFile,
    OutputClashError,
    check_not_an_input,
    remove_stale_temporaries,
    staging_directory,
)
from bafo_pipeline.data import make_synthetic_faces
from bafo_pipeline.transformers import BAFOTransformer, load_model, save_model

REPO = Path(__file__).resolve().parents[1]
POSIX_ONLY = pytest.mark.skipif(os.name != "posix", reason="signals, fork and flock are POSIX")


def _temporaries(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.endswith(".tmp"))


def _python(code: str, *args: str, **kwargs) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": f"{REPO}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    return subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(code), *args], env=env, stdout=subprocess.PIPE, text=True, **kwargs
    )


# Holds a temporary file open (as a writer in the middle of an export does) until it is signalled.
# atomic.py imports nothing of the package: loading it alone keeps these processes quick to start.
_HOLD_A_TEMPORARY = f"""
    import importlib.util, sys, time
    spec = importlib.util.spec_from_file_location("atomic", {str(REPO / "bafo_pipeline" / "_utils" / "atomic.py")!r})
    atomic = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(atomic)
    target = atomic.AtomicFile(sys.argv[1], overwrite=True)
    target.tmp_path.write_bytes(b"half of a file")
    print(target.tmp_path, flush=True)
    time.sleep(60)
"""


@POSIX_ONLY
@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_sigterm_and_sigint_remove_the_temporary_file_and_keep_the_old_one(tmp_path, signum):
    path = tmp_path / "latents.parquet"
    path.write_bytes(b"the previous file")
    child = _python(_HOLD_A_TEMPORARY, str(path))
    tmp = Path(child.stdout.readline().strip())
    assert tmp.exists() and tmp.parent == tmp_path
    child.send_signal(signum)
    assert child.wait(timeout=30) != 0
    assert not tmp.exists() and _temporaries(tmp_path) == []
    assert path.read_bytes() == b"the previous file"


@POSIX_ONLY
def test_the_next_run_removes_what_a_killed_writer_left_but_never_a_live_writers_file(tmp_path):
    path = tmp_path / "latents.parquet"
    child = _python(_HOLD_A_TEMPORARY, str(path))
    stale = Path(child.stdout.readline().strip())
    child.kill()  # SIGKILL: no handler runs
    child.wait(timeout=30)
    assert stale.exists()
    other_target = tmp_path / ".other.parquet.0123456789ab.tmp"  # another destination's: not ours to remove
    other_target.write_bytes(b"x")
    live = AtomicFile(path, overwrite=True)  # a writer that is still running
    assert not stale.exists() and live.tmp_path.exists()
    assert remove_stale_temporaries(path) == [] and live.tmp_path.exists()  # held by a live writer
    second = _python(_HOLD_A_TEMPORARY, str(path))  # a live writer in another process
    held_elsewhere = Path(second.stdout.readline().strip())
    assert remove_stale_temporaries(path) == [] and held_elsewhere.exists()
    second.kill()
    second.wait(timeout=30)
    assert remove_stale_temporaries(path) == [held_elsewhere]
    live.tmp_path.write_bytes(b"complete")
    live.commit()
    assert path.read_bytes() == b"complete" and _temporaries(tmp_path) == [other_target.name]


# Exports the same faces again and again, each in a forked child that the parent kills with SIGKILL at a
# random moment; prints one line per trial: trial, what the target held afterwards, the temporary files.
_KILLED_EXPORTS = """
    import json, os, random, signal, sys, time
    from pathlib import Path
    import numpy as np
    import torch
    torch.set_num_threads(1)  # before any torch work: the children are forked
    from bafo_pipeline import export_latents, make_synthetic_faces, read_latents
    from bafo_pipeline.transformers import load_model

    model, target, trials = load_model(sys.argv[1]), Path(sys.argv[2]), int(sys.argv[3])
    faces = make_synthetic_faces(300, image_size=32, random_state=1)

    def export(trial):
        export_latents(model, faces, target, overwrite=True, batch_size=4, metadata={"trial": trial})

    started = time.perf_counter()
    export(-1)
    duration = time.perf_counter() - started
    reference = read_latents(target).latents
    rng, committed = random.Random(0), -1
    for trial in range(trials):
        pid = os.fork()
        if pid == 0:
            try:
                export(trial)
            finally:
                os._exit(0)
        if trial % 5 == 4:  # every fifth export runs to the end, however loaded the machine is
            os.waitpid(pid, 0)
        else:
            time.sleep(rng.uniform(0.05, 1.1) * duration)
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
        left = sorted(p.name for p in target.parent.iterdir() if p.name.endswith(".tmp"))
        written = read_latents(target)
        holds = written.metadata["trial"]
        complete = len(written) == len(reference) and np.allclose(written.latents, reference, atol=1e-6)
        print(json.dumps({"trial": trial, "holds": holds, "previous": committed, "complete": bool(complete),
                          "temporaries": left}), flush=True)
        committed = holds
    export(trials)
    print(json.dumps({"final": True, "temporaries": sorted(p.name for p in target.parent.iterdir()
                                                           if p.name.endswith(".tmp"))}), flush=True)
"""


@POSIX_ONLY
def test_twenty_exports_killed_at_random_points_leave_the_old_or_the_new_file_and_no_temporary(tmp_path):
    import json

    from bafo_pipeline import BAFOTransformer, make_synthetic_faces, save_model

    faces = make_synthetic_faces(60, image_size=32, random_state=3)
    model = BAFOTransformer(latent_dim=8, widths=(8, 16), epochs=1, refine_epochs=1, batch_size=16, random_state=0)
    model_dir = save_model(model.fit(faces.images, sensitive_features=faces.sensitive_features), tmp_path / "model")
    out = tmp_path / "out"
    out.mkdir()
    child = _python(_KILLED_EXPORTS, str(model_dir), str(out / "latents.parquet"), "20")
    lines, _ = child.communicate(timeout=600)
    assert child.returncode == 0
    records = [json.loads(line) for line in lines.splitlines()]
    trials, final = records[:-1], records[-1]
    assert len(trials) == 20
    for record in trials:
        # Never a partial file: the previous complete export, or this trial's complete one.
        assert record["holds"] in (record["previous"], record["trial"]) and record["complete"], record
        assert len(record["temporaries"]) <= 1, record  # each run removed what the killed one before it left
    mid_write = sum(bool(r["temporaries"]) for r in trials)
    assert mid_write >= 3, f"only {mid_write} of 20 kills landed while a temporary file existed"
    assert all(r["holds"] == r["trial"] for r in trials[4::5])  # an export that ran to the end is committed
    assert final["temporaries"] == []


# ------------------------------------------------------------------- outputs are never inputs
def test_an_output_that_is_an_input_file_is_refused_however_it_is_spelled(tmp_path):
    image = tmp_path / "faces" / "30_1_0_x.jpg"
    image.parent.mkdir()
    image.write_bytes(b"a face")
    for spelling in (image, tmp_path / "faces" / ".." / "faces" / image.name):
        with pytest.raises(OutputClashError, match="is the input"):
            check_not_an_input(spelling, files=[str(image)])
    link = tmp_path / "link.jpg"
    link.symlink_to(image)
    hard = tmp_path / "hard.jpg"
    os.link(image, hard)
    for other_name in (link, hard):
        with pytest.raises(OutputClashError, match="is the input"):
            check_not_an_input(other_name, files=[str(image)])
    check_not_an_input(tmp_path / "latents.parquet", files=[str(image)])  # a new file elsewhere is fine
    check_not_an_input(tmp_path / "x.parquet", files=["s3://bucket/x.parquet", b"raw bytes"])


def test_an_output_inside_an_input_folder_or_holding_inputs_is_refused(tmp_path):
    faces = tmp_path / "faces"
    (faces / "sub").mkdir(parents=True)
    (faces / "a.jpg").write_bytes(b"a")
    for inside in (faces, faces / "latents.parquet", faces / "sub" / "new"):
        with pytest.raises(OutputClashError, match="inside the input folder"):
            check_not_an_input(inside, folders=[faces])
    with pytest.raises(OutputClashError, match="holds the input"):
        check_not_an_input(faces, files=[faces / "a.jpg"])  # a folder output beside its inputs
    check_not_an_input(tmp_path / "out", folders=[faces], files=[faces / "a.jpg"])


def test_a_folder_that_cannot_be_written_is_named_in_the_error(tmp_path, monkeypatch):
    import bafo_pipeline._utils.atomic as atomic

    real_open = os.open

    def read_only(path, flags, *args):
        if flags & os.O_CREAT and Path(path).parent == tmp_path:
            raise PermissionError(13, "Permission denied", str(path))
        return real_open(path, flags, *args)

    monkeypatch.setattr(atomic.os, "open", read_only)
    with pytest.raises(PermissionError) as info:
        AtomicFile(tmp_path / "latents.parquet")
    assert info.value.filename == str(tmp_path) and "cannot write latents.parquet there" in info.value.strerror
    assert ".tmp" not in str(info.value)


@POSIX_ONLY
def test_a_forked_child_leaves_its_parents_temporary_file_alone(tmp_path):
    target = AtomicFile(tmp_path / "latents.parquet")
    pid = os.fork()
    if pid == 0:  # the child: its copy of the writer is collected and it exits normally (atexit runs)
        del target
        import gc

        gc.collect()
        os._exit(0)
    os.waitpid(pid, 0)
    assert target.tmp_path.exists()
    target.tmp_path.write_bytes(b"done")
    target.commit()
    assert (tmp_path / "latents.parquet").read_bytes() == b"done"


@POSIX_ONLY
def test_a_model_save_removes_what_a_killed_save_left_but_never_a_live_saves_folder(tmp_path):
    faces = make_synthetic_faces(40, image_size=32, random_state=0)
    model = BAFOTransformer(latent_dim=4, widths=(4, 8), epochs=1, concealment="none", decoder_epochs=0,
                            random_state=0).fit(faces.images, sensitive_features=faces.sensitive_features)
    target = tmp_path / "model"
    killed = tmp_path / ".model.0123456789ab.tmp"  # as a save killed with SIGKILL leaves it: nobody holds its lock
    killed.mkdir()
    (killed / "model.safetensors").write_bytes(b"half")
    other = tmp_path / ".other.0123456789ab.tmp"  # another destination's: not ours to remove
    other.mkdir()
    with staging_directory(target) as live:  # a save still running
        save_model(model, target)
        assert live.is_dir() and not killed.exists() and other.is_dir()
    assert not live.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == [".other.0123456789ab.tmp", "model"]
    np.testing.assert_array_equal(load_model(target).transform(faces.images), model.transform(faces.images))


def test_a_model_parked_by_an_interrupted_overwrite_is_named_when_loading(tmp_path):
    faces = make_synthetic_faces(40, image_size=32, random_state=0)
    model = BAFOTransformer(latent_dim=4, widths=(4, 8), epochs=1, concealment="none", decoder_epochs=0,
                            random_state=0).fit(faces.images, sensitive_features=faces.sensitive_features)
    target = save_model(model, tmp_path / "model")
    parked = tmp_path / ".model.old"
    target.rename(parked)  # what an overwrite stopped between its two renames leaves
    with pytest.raises(FileNotFoundError, match=r"\.model\.old.*previous model is intact"):
        load_model(target)
    parked.rename(target)
    np.testing.assert_array_equal(load_model(target).transform(faces.images), model.transform(faces.images))
