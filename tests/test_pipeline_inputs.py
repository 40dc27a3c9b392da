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


# ------------------------------------------------------------------ writing one partition (no Ray)
def _encoded(n, dim=4, duplicate_of=None):
    import hashlib

    from bafo_pipeline.pipeline.partition_writer import EncodedRows

    blobs = [f"image {i}".encode() for i in range(n)]
    if duplicate_of is not None:
        blobs[-1] = blobs[duplicate_of]
    latents = np.arange(n * dim, dtype=np.float32).reshape(n, dim)
    return EncodedRows(
        positions=np.arange(n), digests=[content_digest(KEY, b) for b in blobs],
        sha1s=[hashlib.sha1(b).hexdigest() for b in blobs], latents=latents,
        skipped=[("file 00", "empty file (0 bytes)")], failed=np.array([n]),
    ), blobs


def _spec(tmp_path, **settings):
    from bafo_pipeline.pipeline.spec import JobSpec

    return JobSpec(out=str(tmp_path), plan_fingerprint="fp", n_partitions=3, id_key=KEY, **settings)


def test_a_partition_is_written_in_id_order_without_repeated_content(tmp_path):
    import pyarrow.parquet as pq

    from bafo_pipeline.io.filesystems import resolve_filesystem
    from bafo_pipeline.pipeline.partition_writer import finish_partition

    encoded, blobs = _encoded(6, duplicate_of=1)
    sources = [f"file {i:02d}" for i in range(7)]
    stats = finish_partition(resolve_filesystem(tmp_path)[0], _spec(tmp_path), 2, 7, encoded, sources,
                             np.zeros(7, np.int64), None, "float32", "pil", 0.1)
    table = pq.read_table(tmp_path / "part-00002.parquet")
    ids = table.column("id").to_pylist()
    assert ids == sorted(ids) and len(ids) == 5  # the repeated image is written once
    expected = {id_of_digest(content_digest(KEY, b)): i for i, b in enumerate(blobs[:5])}
    for i, latent in zip(ids, table.column("latent").to_pylist()):
        assert latent == encoded.latents[expected[i]].tolist()
    assert stats["skipped_by_reason"] == {
        "duplicate of another file in its partition (same bytes, same id)": 1, "empty file (0 bytes)": 1}
    assert stats["rows_read"] == 7 and stats["rows_written"] == 5


def test_a_split_selects_rows_by_the_models_content_hash_rule(tmp_path):
    import pyarrow.parquet as pq

    from bafo_pipeline.data.splits import hash_split
    from bafo_pipeline.io.filesystems import resolve_filesystem
    from bafo_pipeline.pipeline.partition_writer import finish_partition

    encoded, blobs = _encoded(40)
    rule = {"test_fraction": 0.3, "seed": 0}
    spec = _spec(tmp_path, split="test", include_split=True, split_rule=rule)
    stats = finish_partition(resolve_filesystem(tmp_path)[0], spec, 0, 41, encoded, [f"file {i}" for i in range(41)],
                             np.zeros(41, np.int64), None, "float32", "pil", 0.1)
    is_test = hash_split(encoded.sha1s, **rule)
    table = pq.read_table(tmp_path / "part-00000.parquet")
    assert set(table.column("split").to_pylist()) == {"test"}
    assert sorted(table.column("id").to_pylist()) == sorted(
        id_of_digest(d) for d, t in zip(encoded.digests, is_test) if t)
    assert stats["excluded_by_split"] == int((~is_test).sum()) and stats["rows_written"] == int(is_test.sum())
