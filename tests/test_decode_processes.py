"""Decoding in worker processes: the same pixels and skip reasons as the thread pool, no worker left behind,
the choice recorded, threads where processes cannot pay."""

from __future__ import annotations

import multiprocessing
import subprocess
import sys
import threading
import time
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from bafo_pipeline import BAFOTransformer, export_latents, make_synthetic_faces, read_latents
from bafo_pipeline.data import FaceDataset, ImageFiles
from bafo_pipeline.data import decode_pool
from bafo_pipeline.data.decode_pool import (
    CHUNK_FILES,
    choose_decode_processes,
    iter_decoded_batches_in_processes,
    processes_available,
)
from bafo_pipeline.data.images import ImageDecodeError, iter_decoded_batches
from bafo_pipeline.io import read_metadata

pytestmark = pytest.mark.skipif(not processes_available(), reason="this platform cannot fork decoder processes")

SIZE = 32
#: Positions of the odd files among the good ones, and what each must be skipped for.
ODD = {3: "truncated", 20: "empty file", 33: "not an image", 34: "file not found", 70: "decompression bomb"}


@pytest.fixture(scope="module")
def faces():
    return make_synthetic_faces(80, image_size=SIZE, random_state=5)


@pytest.fixture(scope="module")
def model(faces):
    return BAFOTransformer(
        latent_dim=8, widths=(8, 16), epochs=1, refine_epochs=1, batch_size=16, random_state=0
    ).fit(faces.images, sensitive_features=faces.sensitive_features)


@pytest.fixture(scope="module")
def files(faces, tmp_path_factory) -> list[str]:
    """76 files across three chunks of a batch: JPEGs (some grey, some rotated by EXIF), PNGs with alpha,
    a 16-bit PNG, and five bad files at the positions of ``ODD``."""
    folder = tmp_path_factory.mktemp("mixed")
    paths = []
    for i, image in enumerate(faces.images[:71]):
        big = Image.fromarray(image).resize((3 * SIZE, 3 * SIZE), Image.Resampling.BICUBIC)
        if i % 7 == 1:
            path = folder / f"{i}.png"
            big.convert("RGBA").save(path)
        elif i % 7 == 2:
            path = folder / f"{i}.jpg"
            big.convert("L").save(path, quality=85)
        elif i == 9:
            path = folder / f"{i}.png"
            Image.fromarray((np.asarray(big.convert("L"), dtype=np.uint16) * 257)).save(path)
        else:
            path = folder / f"{i}_1_2_20170116.jpg.chip.jpg"
            exif = Image.Exif()
            exif[0x0112] = 6 if i % 5 == 0 else 1
            big.save(path, quality=90, exif=exif)
        paths.append(str(path))
    bad = {
        "truncated": lambda p: p.write_bytes(Path(paths[0]).read_bytes()[:300]),
        "empty file": lambda p: p.write_bytes(b""),
        "not an image": lambda p: p.write_text("a note, not a face"),
        "file not found": lambda p: None,
        "decompression bomb": lambda p: Image.new("1", (9000, 9000)).save(p, "PNG"),  # 81 megapixels
    }
    for position, reason in sorted(ODD.items()):
        path = folder / f"odd_{position}.jpg"
        bad[reason](path)
        paths.insert(position, str(path))
    return paths


def _source(paths) -> ImageFiles:
    return ImageFiles(pd.DataFrame({"path": paths, "age": np.arange(len(paths)) + 20}))


def _no_workers_left() -> bool:
    return multiprocessing.active_children() == []


@pytest.mark.parametrize("batch_size", [50, 2 * CHUNK_FILES, 200])
def test_processes_give_the_threads_pixels_and_skip_reasons(files, batch_size):
    threads = list(iter_decoded_batches(files, batch_size=batch_size, size=SIZE, n_jobs=2))
    processes = list(iter_decoded_batches_in_processes(files, batch_size, SIZE, n_processes=2))
    assert len(processes) == len(threads) == -(-len(files) // batch_size)
    for (t_rows, t_images, t_errors), (p_rows, p_images, p_errors) in zip(threads, processes):
        np.testing.assert_array_equal(p_rows, t_rows)
        assert p_images.dtype == np.uint8 and p_images.shape == t_images.shape
        np.testing.assert_array_equal(p_images, t_images)  # bit for bit
        assert p_errors == t_errors
    errors = [error for _, _, batch_errors in processes for error in batch_errors]
    assert [path for path, _ in errors] == [files[i] for i in sorted(ODD)]
    assert all(ODD[i] in reason for i, (_, reason) in zip(sorted(ODD), errors)), errors
    assert _no_workers_left()


def test_strict_raises_the_first_bad_file_like_the_threads(files):
    with pytest.raises(ImageDecodeError) as by_threads:
        list(iter_decoded_batches(files, batch_size=50, size=SIZE, strict=True, n_jobs=2))
    with pytest.raises(ImageDecodeError) as by_processes:
        list(iter_decoded_batches_in_processes(files, 50, SIZE, n_processes=2, strict=True))
    assert (by_processes.value.path, by_processes.value.reason) == (by_threads.value.path, by_threads.value.reason)
    assert by_processes.value.path == files[min(ODD)]
    assert _no_workers_left()


def test_forking_beside_other_threads_warns_nobody(files):
    """Python 3.12+ warns when a multi-threaded process forks; the workers only decode, so the pool silences it."""
    release = threading.Event()
    busy = threading.Thread(target=release.wait, daemon=True)
    busy.start()
    try:
        with warnings.catch_warnings(record=True) as seen:
            warnings.simplefilter("always")
            list(iter_decoded_batches_in_processes(files[:40], 40, SIZE, n_processes=2))
    finally:
        release.set()
    assert [str(w.message) for w in seen if "fork" in str(w.message)] == []


def test_closing_the_stream_early_stops_the_workers(files):
    stream = iter_decoded_batches_in_processes(files, 20, SIZE, n_processes=2)
    next(stream)
    assert len(multiprocessing.active_children()) == 2
    stream.close()
    assert _no_workers_left()


def test_export_in_processes_writes_what_the_threads_write(model, files, tmp_path):
    source = _source(files)
    ids = np.arange(len(files))
    by_threads = export_latents(model, source, tmp_path / "threads.parquet", ids=ids, batch_size=40, decode_processes=0)
    by_processes = export_latents(model, source, tmp_path / "processes.parquet", ids=ids, batch_size=40,
                                  decode_processes=2)
    again = export_latents(model, source, tmp_path / "again.parquet", ids=ids, batch_size=40, decode_processes=1)
    assert by_processes.skipped == by_threads.skipped == again.skipped
    assert [row for row, _ in by_processes.skipped] == sorted(ODD)
    threads = read_latents(tmp_path / "threads.parquet")
    assert len(threads) == len(files) - len(ODD)
    for name in ("processes", "again"):
        table = read_latents(tmp_path / f"{name}.parquet")
        np.testing.assert_array_equal(table.ids, threads.ids)
        np.testing.assert_array_equal(table.latents, threads.latents)  # bit for bit
    assert read_metadata(tmp_path / "threads.parquet")["decode_processes"] == 0
    assert read_metadata(tmp_path / "processes.parquet")["decode_processes"] == 2
    assert by_processes.metadata["decode_processes"] == 2 and again.metadata["decode_processes"] == 1
    assert _no_workers_left()


class _EncoderFails(Exception):
    pass


@pytest.mark.parametrize("failure", [_EncoderFails, KeyboardInterrupt])
def test_no_worker_outlives_an_export_that_fails(model, files, tmp_path, monkeypatch, failure):
    calls, original = [], BAFOTransformer.encode_images

    def encode_then_fail(self, images):
        calls.append(len(images))
        if len(calls) == 2:
            raise failure("stopped in the middle")
        return original(self, images)

    monkeypatch.setattr(BAFOTransformer, "encode_images", encode_then_fail)
    with pytest.raises(failure):
        export_latents(model, _source(files), tmp_path / "x.parquet", ids=np.arange(len(files)), batch_size=20,
                       decode_processes=2)
    assert len(calls) == 2
    assert _no_workers_left()
    assert not (tmp_path / "x.parquet").exists()


def test_workers_exit_when_their_parent_dies_without_shutting_them_down(files):
    """A parent killed outright (no ``with`` exit, no shutdown) leaves no decoder running."""
    code = (
        "import multiprocessing, os, sys\n"
        "from bafo_pipeline.data.decode_pool import DecodeProcesses\n"
        "pool = DecodeProcesses(2).__enter__()\n"
        "[f.result() for f in pool.submit(sys.argv[1:], (16, 16, None))]\n"
        "print(' '.join(str(p.pid) for p in multiprocessing.active_children()), flush=True)\n"
        "os._exit(0)\n"
    )
    run = subprocess.run([sys.executable, "-c", code, *files[:4]], capture_output=True, text=True, timeout=300,
                         cwd=Path(__file__).resolve().parents[1])
    assert run.returncode == 0, run.stderr
    workers = [int(pid) for pid in run.stdout.split()]
    assert len(workers) == 2
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and any(_alive(pid) for pid in workers):
        time.sleep(0.1)
    assert not any(_alive(pid) for pid in workers)


def _alive(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie, exited but not yet reaped by init, counts as gone)."""
    try:
        with open(f"/proc/{pid}/stat") as handle:
            return handle.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def test_the_choice_falls_back_to_threads_where_processes_cannot_pay(monkeypatch):
    enough = decode_pool.MIN_IMAGES_FOR_PROCESSES
    assert choose_decode_processes(enough, 2) >= 1
    assert choose_decode_processes(enough - 1, 2) == 0  # too few images to pay for the workers
    assert choose_decode_processes(enough, 1) == 0  # one core (a Ray actor with one CPU): threads
    monkeypatch.setattr(decode_pool, "processes_available", lambda: False)
    assert choose_decode_processes(10 * enough, 8) == 0


def test_export_chooses_by_cores_and_images_and_records_it(model, files, faces, tmp_path, monkeypatch):
    monkeypatch.setattr(decode_pool, "MIN_IMAGES_FOR_PROCESSES", len(files))
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        chosen = export_latents(model, _source(files), tmp_path / "a.parquet", ids=np.arange(len(files)))
        assert chosen.metadata["decode_processes"] >= 1
        fewer = export_latents(model, _source(files[:-1]), tmp_path / "b.parquet", ids=np.arange(len(files) - 1))
        assert fewer.metadata["decode_processes"] == 0
        in_bytes = ImageFiles(pd.DataFrame({"path": [Path(p).read_bytes() for p in files if Path(p).exists()]}))
        from_bytes = export_latents(model, in_bytes, tmp_path / "c.parquet", ids=np.arange(len(in_bytes)))
        assert from_bytes.metadata["decode_processes"] == 0  # bytes in memory: threads
        memory = FaceDataset(faces.images, faces.sensitive_features, ("age", "gender", "ethnicity"),
                             np.array([f"{i:064x}" for i in range(len(faces.images))]))
        assert export_latents(model, memory, tmp_path / "d.parquet", ids=np.arange(len(memory))).metadata[
            "decode_processes"] == 0
        torch.set_num_threads(1)
        one_core = export_latents(model, _source(files), tmp_path / "e.parquet", ids=np.arange(len(files)))
        assert one_core.metadata["decode_processes"] == 0
    finally:
        torch.set_num_threads(before)
    assert torch.get_num_threads() == before and _no_workers_left()


def test_forcing_processes_where_they_cannot_decode_is_refused(model, files, tmp_path):
    with pytest.raises(ValueError, match="decode_processes applies to Pillow"):
        export_latents(model, _source(files), tmp_path / "x.parquet", ids=np.arange(len(files)), decoder="torch",
                       decode_processes=2)
    with pytest.raises(ValueError, match="decode_processes must be"):
        export_latents(model, _source(files), tmp_path / "x.parquet", ids=np.arange(len(files)), decode_processes=-1)
    assert not (tmp_path / "x.parquet").exists()
