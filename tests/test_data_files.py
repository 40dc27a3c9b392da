"""Safe file reading, folder listings, pseudonymous ids, the id key and the key table (no Ray needed)."""

from __future__ import annotations

import os
import stat

import numpy as np
import pandas as pd
import pyarrow.fs as pafs
import pytest

from bafo_pipeline.data import (
    key_fingerprint,
    load_id_key,
    pseudonymous_ids,
    read_file_bytes,
    scan_image_folder,
    scan_utkface,
    write_key_table,
)
from bafo_pipeline.data.folders import list_folder
from bafo_pipeline.data.splits import content_hash
from bafo_pipeline.pipeline.encode_plan import partition_of
from bafo_pipeline.pipeline.job_folder import public_reason

KEY = bytes(range(32))
LOCAL = pafs.LocalFileSystem()


def test_ids_depend_on_the_content_and_the_key_only():
    hashes = [content_hash(b) for b in (b"image one", b"image two", b"image one")]
    ids = pseudonymous_ids(hashes, KEY)
    assert ids.dtype == np.int64 and ids[0] == ids[2] != ids[1] and (ids >= 0).all()
    other = pseudonymous_ids(hashes, b"x" * 32)
    assert not set(other) & set(ids)  # without the key, an image cannot be linked to its row
    assert key_fingerprint(KEY) != key_fingerprint(b"x" * 32) and KEY.hex() not in key_fingerprint(KEY)
    with pytest.raises(ValueError, match="16 to 64 bytes"):
        pseudonymous_ids(hashes, b"short")


def test_partitions_are_ranges_of_ids_so_they_ignore_names_and_labels():
    names = [f"{age}_0_0_2017{i:04d}.jpg" for i, age in enumerate(range(1, 401))]
    ids = pseudonymous_ids([content_hash(n.encode()) for n in names], KEY)
    parts = partition_of(ids, 4)
    assert set(parts) == {0, 1, 2, 3}
    order = np.lexsort((ids, parts))
    assert (np.diff(ids[order]) > 0).all()  # partitions in order hold increasing ids: one id order overall
    ages = np.arange(1, 401)
    means = [ages[parts == p].mean() for p in range(4)]
    assert max(means) - min(means) < 60  # name-ordered chunks would give 50, 150, 250, 350


def test_key_file_is_created_private_and_reused(tmp_path, monkeypatch):
    monkeypatch.setenv("BAFO_ID_KEY_FILE", str(tmp_path / "keys" / "id.key"))
    key = load_id_key()
    assert len(key) == 32 and stat.S_IMODE((tmp_path / "keys" / "id.key").stat().st_mode) == 0o600
    assert load_id_key() == key == load_id_key(tmp_path / "keys" / "id.key")
    (tmp_path / "bad.key").write_text("not hex")
    with pytest.raises(ValueError, match="hex digits"):
        load_id_key(tmp_path / "bad.key")
    with pytest.raises(ValueError, match="16 to 64 bytes"):
        load_id_key(b"short")
    (tmp_path / "open.key").write_text(KEY.hex())
    os.chmod(tmp_path / "open.key", 0o644)
    with pytest.warns(UserWarning, match="chmod 600"):
        load_id_key(tmp_path / "open.key")


def _load_key_when_released(path, barrier, results):
    barrier.wait()
    try:
        results.put(load_id_key(path).hex())
    except Exception as error:  # noqa: BLE001 - reported to the test
        results.put(f"{type(error).__name__}: {error}")


@pytest.mark.skipif(os.name != "posix", reason="forks processes")
def test_processes_creating_the_key_file_at_once_all_get_the_one_whole_key(tmp_path):
    import multiprocessing

    context = multiprocessing.get_context("fork")
    for trial in range(40):  # the key file used to appear empty, then be written: 1 race in 10 read it empty
        path = tmp_path / str(trial) / "id.key"
        barrier, results = context.Barrier(3), context.Queue()
        workers = [context.Process(target=_load_key_when_released, args=(path, barrier, results)) for _ in range(3)]
        for worker in workers:
            worker.start()
        keys = {results.get(timeout=60) for _ in workers}
        for worker in workers:
            worker.join(timeout=60)
        assert len(keys) == 1 and len(bytes.fromhex(keys.pop())) == 32, (trial, keys)
        assert stat.S_IMODE(path.stat().st_mode) == 0o600 and os.listdir(path.parent) == ["id.key"]


def test_a_key_published_meanwhile_by_another_process_is_the_one_used(tmp_path, monkeypatch):
    import bafo_pipeline.data.ids as ids

    path, theirs, link = tmp_path / "id.key", bytes(range(100, 132)), os.link

    def publish_theirs_first(source, target):
        (tmp_path / "id.key").write_text(theirs.hex() + "\n")
        os.chmod(path, 0o600)
        link(source, target)

    monkeypatch.setattr(ids.os, "link", publish_theirs_first)
    assert load_id_key(path) == theirs
    monkeypatch.undo()
    assert load_id_key(path) == theirs and os.listdir(tmp_path) == ["id.key"]  # no temporary file left


def test_a_failed_key_write_leaves_no_key_file(tmp_path, monkeypatch):
    import bafo_pipeline.data.ids as ids

    class Full:
        def __init__(self, handle):
            self.handle = handle

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.handle.close()

        def write(self, text):
            raise OSError(28, "No space left on device")

    fdopen = os.fdopen
    monkeypatch.setattr(ids.os, "fdopen", lambda fd, mode: Full(fdopen(fd, mode)))
    path = tmp_path / "keys" / "id.key"
    with pytest.raises(OSError, match="No space"):
        load_id_key(path)
    assert os.listdir(path.parent) == []  # used to leave an empty key file: every later load failed
    monkeypatch.undo()
    assert len(load_id_key(path)) == 32 == len(load_id_key(path, create=False))


@pytest.mark.parametrize("name", ["keys.csv", "keys.parquet"])
def test_the_key_table_is_written_whole_and_readable_by_its_owner_only(tmp_path, name):
    path = write_key_table(tmp_path / name, [5, 7], ["/data/a.jpg", "/data/b.jpg"], rows=[2, 3])
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    table = pd.read_csv(path) if name.endswith(".csv") else pd.read_parquet(path)
    assert table.to_dict("list") == {"id": [5, 7], "row": [2, 3], "source": ["/data/a.jpg", "/data/b.jpg"]}
    with pytest.raises(FileExistsError):
        write_key_table(path, [1], ["x"])
    with pytest.raises(ValueError, match=".csv or .parquet"):
        write_key_table(tmp_path / "keys.txt", [1], ["x"])
    assert sorted(p.name for p in tmp_path.iterdir()) == [name]  # no temporary file left


def test_reading_refuses_what_is_not_a_small_regular_file(tmp_path):
    (tmp_path / "ok.jpg").write_bytes(b"x" * 100)
    assert read_file_bytes(LOCAL, str(tmp_path / "ok.jpg")) == b"x" * 100
    with pytest.raises(OSError, match="larger than the 50 bytes cap"):
        read_file_bytes(LOCAL, str(tmp_path / "ok.jpg"), max_bytes=50)
    with pytest.raises(OSError, match="not a regular file"):
        read_file_bytes(LOCAL, "/dev/zero")  # would grow without limit
    os.mkfifo(tmp_path / "fifo.jpg")
    with pytest.raises(OSError, match="not a regular file"):
        read_file_bytes(LOCAL, str(tmp_path / "fifo.jpg"))  # would hang waiting for a writer
    with pytest.raises(OSError, match="file not found"):
        read_file_bytes(LOCAL, str(tmp_path / "missing.jpg"))
    with pytest.raises(OSError, match="is a directory"):
        read_file_bytes(LOCAL, str(tmp_path))
    (tmp_path / "loop.jpg").symlink_to(tmp_path / "loop.jpg")
    with pytest.raises(OSError, match="symlink loop"):
        read_file_bytes(LOCAL, str(tmp_path / "loop.jpg"))


def test_folder_listing_survives_symlink_loops_and_refuses_links_out(tmp_path):
    root = tmp_path / "faces"
    (root / "sub").mkdir(parents=True)
    (root / "a.jpg").write_bytes(b"a")
    (root / "sub" / "b.JPEG").write_bytes(b"b")
    (root / "sub" / "loop").symlink_to(root)  # a folder loop: not followed
    (tmp_path / "secret.jpg").write_bytes(b"s")
    (root / "out.jpg").symlink_to(tmp_path / "secret.jpg")
    (root / "in.jpg").symlink_to(root / "a.jpg")
    listed = list_folder(root, recursive=True)
    assert [name for name, _ in listed.files] == ["a.jpg", "in.jpg", "sub/b.JPEG"]
    assert [(n, r.split(" (")[0]) for n, _, r in listed.problems] == [("out.jpg", "symlink to a file outside the folder")]
    assert [n for n, _ in list_folder(root, recursive=True, allow_outside_root=True).files] == [
        "a.jpg", "in.jpg", "out.jpg", "sub/b.JPEG"]
    table, report = scan_image_folder(root)  # in.jpg is a copy of a.jpg: kept once
    assert [os.path.basename(p) for p in table["path"]] == ["a.jpg", "sub/b.JPEG".split("/")[1]]
    assert report.duplicates_dropped == 1 and len(report.skipped) == 1


def test_a_utkface_scan_refuses_links_out_and_skips_loops_with_a_reason(tmp_path):
    root = tmp_path / "UTKFace"
    root.mkdir()
    (root / "26_1_2_20170116174525125.jpg.chip.jpg").write_bytes(b"x")
    (tmp_path / "30_0_0_20170116174525125.jpg.chip.jpg").write_bytes(b"y")
    (root / "30_0_0_20170116174525125.jpg.chip.jpg").symlink_to(tmp_path / "30_0_0_20170116174525125.jpg.chip.jpg")
    (root / "40_0_0_20170116174525125.jpg.chip.jpg").symlink_to(root / "40_0_0_20170116174525125.jpg.chip.jpg")
    table, report = scan_utkface(root)
    assert table["age"].tolist() == [26.0]
    reasons = {os.path.basename(p): r for p, r in report.skipped}
    assert reasons["30_0_0_20170116174525125.jpg.chip.jpg"].startswith("symlink to a file outside the folder")
    assert reasons["40_0_0_20170116174525125.jpg.chip.jpg"] == "symlink loop"
    assert scan_utkface(root, allow_outside_root=True)[0]["age"].tolist() == [26.0, 30.0]


def test_skip_reasons_in_the_output_folder_carry_no_names_or_values():
    assert public_reason("file not found: img/26_1_2_2017.jpg") == "file not found: …"
    assert public_reason("age 'old' is not a non-negative number") == "age '…' is not a non-negative number"
    assert public_reason("unexpected suffix '.jpgg' after '26_1_2_2017'") == "unexpected suffix '…' after '…'"
    assert public_reason("empty file (0 bytes)") == "empty file (0 bytes)"
