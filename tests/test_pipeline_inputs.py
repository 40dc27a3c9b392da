"""What the distributed export lists and reads, and its keyed ids (no Ray needed)."""

from __future__ import annotations

import os
import stat

import numpy as np
import pandas as pd
import pytest

from bafo_pipeline.pipeline.ids import (
    content_digest,
    id_of_digest,
    key_fingerprint,
    keyed_buckets,
    load_id_key,
)
from bafo_pipeline.pipeline.inputs import list_folder, read_file_bytes, read_manifest

KEY = bytes(range(32))


def test_ids_depend_on_the_bytes_and_the_key_only():
    data = [b"image one", b"image two", b"image one"]
    ids = [id_of_digest(content_digest(KEY, d)) for d in data]
    assert ids[0] == ids[2] != ids[1] and all(0 <= i < 2**63 for i in ids)
    other = [id_of_digest(content_digest(b"x" * 32, d)) for d in data]
    assert not set(other) & set(ids)  # without the key, an image cannot be linked to its row
    assert key_fingerprint(KEY) != key_fingerprint(b"x" * 32) and KEY.hex() not in key_fingerprint(KEY)


def test_partitions_follow_a_keyed_hash_not_the_name_order():
    names = [f"{age}_0_0_2017{i:04d}.jpg" for i, age in enumerate(range(1, 101))]
    buckets = keyed_buckets(KEY, names, 4)
    assert set(buckets) == {0, 1, 2, 3}
    assert (keyed_buckets(KEY, names[::-1], 4) == buckets[::-1]).all()  # per name, whatever the listing order
    ages = np.arange(1, 101)
    means = [ages[buckets == b].mean() for b in range(4)]
    assert max(means) - min(means) < 25  # name-ordered chunks would give 13, 38, 63, 88


def test_key_file_is_created_private_and_reused(tmp_path, monkeypatch):
    monkeypatch.setenv("BAFO_ID_KEY_FILE", str(tmp_path / "keys" / "id.key"))
    key = load_id_key()
    assert len(key) == 32 and stat.S_IMODE((tmp_path / "keys" / "id.key").stat().st_mode) == 0o600
    assert load_id_key() == key == load_id_key(tmp_path / "keys" / "id.key")
    (tmp_path / "bad.key").write_text("not hex")
    with pytest.raises(ValueError, match="64 hex digits"):
        load_id_key(tmp_path / "bad.key")
    with pytest.raises(ValueError, match="16 to 64 bytes"):
        load_id_key(b"short")


def test_reading_refuses_what_is_not_a_small_regular_file(tmp_path):
    from bafo_pipeline.io.filesystems import resolve_filesystem

    fs, _ = resolve_filesystem(tmp_path)
    (tmp_path / "ok.jpg").write_bytes(b"x" * 100)
    assert read_file_bytes(fs, str(tmp_path / "ok.jpg")) == b"x" * 100
    with pytest.raises(OSError, match="larger than the 50 bytes cap"):
        read_file_bytes(fs, str(tmp_path / "ok.jpg"), max_bytes=50)
    with pytest.raises(OSError, match="not a regular file"):
        read_file_bytes(fs, "/dev/zero")  # would grow without limit
    os.mkfifo(tmp_path / "fifo.jpg")
    with pytest.raises(OSError, match="not a regular file"):
        read_file_bytes(fs, str(tmp_path / "fifo.jpg"))  # would hang waiting for a writer
    with pytest.raises(OSError, match="file not found"):
        read_file_bytes(fs, str(tmp_path / "missing.jpg"))


def test_folder_listing_survives_symlink_loops_and_refuses_links_out(tmp_path):
    root = tmp_path / "faces"
    (root / "sub").mkdir(parents=True)
    (root / "a.jpg").write_bytes(b"a")
    (root / "sub" / "b.JPEG").write_bytes(b"b")
    (root / "notes.txt").write_text("x")
    (root / "sub" / "loop").symlink_to(root)  # a folder loop: not followed
    (tmp_path / "secret.jpg").write_bytes(b"s")
    (root / "out.jpg").symlink_to(tmp_path / "secret.jpg")
    (root / "in.jpg").symlink_to(root / "a.jpg")
    listed = list_folder(root)
    assert listed.source_keys == ["a.jpg", "in.jpg", "sub/b.JPEG"]
    assert listed.skipped == [("out.jpg", "symlink to a file outside the folder")]


def test_utkface_names_give_labels_and_bad_names_a_reason(tmp_path):
    (tmp_path / "26_1_2_20170116174525125.jpg.chip.jpg").write_bytes(b"x")
    (tmp_path / "39_1_20170116174525125.jpg.chip.jpg").write_bytes(b"x")
    listed = list_folder(tmp_path, utkface=True)
    assert listed.labels.to_pylist() == [{"age": 26.0, "gender": "female", "ethnicity": "asian"}]
    assert len(listed.skipped) == 1 and listed.skipped[0][1].startswith("not a UTKFace name")


def test_manifest_rows_keep_their_numbers_and_paths_stay_inside(tmp_path):
    pd.DataFrame({
        "path": ["a.jpg", None, "../escape.jpg", "sub/../b.jpg", str(tmp_path / "abs.jpg")],
        "gender": ["f", "m", "f", None, "m"],
    }).to_csv(tmp_path / "m.csv", index=False)
    listed = read_manifest(tmp_path / "m.csv", label_columns=["gender"], required_labels=["gender"])
    assert listed.rows == [1, 5] and listed.locations == [f"{tmp_path}/a.jpg", str(tmp_path / "abs.jpg")]
    assert dict(listed.skipped) == {
        "2": "empty value in image column 'path'",
        "3": "path leaves the manifest's folder (or names another filesystem)",
        "4": "missing value in column 'gender'",
    }
    with pytest.raises(ValueError, match=r"column\(s\) \['age'\] not found"):
        read_manifest(tmp_path / "m.csv", label_columns=["age"])
