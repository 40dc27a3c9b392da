"""Tests for bafo_pipeline.io.parquet and bafo_pipeline._utils.atomic."""

from __future__ import annotations

import json
import os
import stat
from datetime import datetime, timedelta, timezone

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from bafo_pipeline._utils.atomic import AtomicFile, atomic_write_path
from bafo_pipeline.io import embedding_column, read_embedding
from bafo_pipeline.io.parquet import (
    LatentParquetWriter,
    iter_latent_batches,
    read_latents,
    read_metadata,
    write_latents,
)

D = 6


def _latents(n, d=D, seed=0):
    rng = np.random.default_rng(seed)
    z = rng.standard_normal((n, d)).astype(np.float32)
    # Values that would not survive a float64 -> text -> float32 detour unchanged.
    z.flat[:4] = [
        np.float32(1e-38),
        np.float32(3.4e38),
        np.nextafter(np.float32(1), np.float32(2)),
        -0.0,
    ]
    return z


def _labels(n, start=0):
    return pd.DataFrame(
        {
            "age": np.arange(start, start + n, dtype=np.float64) % 90,
            "gender": np.where(np.arange(start, start + n) % 2, "male", "female"),
        }
    )


def _split(n, start=0):
    return np.where(np.arange(start, start + n) % 7 == 0, "test", "train")


def _batches(n, batch, *, labels=False, split=False, d=D):
    z = _latents(n, d)
    for start in range(0, n, batch):
        stop = min(start + batch, n)
        yield (
            np.arange(start, stop),
            z[start:stop],
            _labels(stop - start, start) if labels else None,
            _split(stop - start, start) if split else None,
        )


def _write(path, n=100, batch=32, *, labels=False, split=False, **kwargs):
    kwargs.setdefault("metadata", {"model_fingerprint": "m-123", "source_fingerprint": "s-456"})
    return write_latents(path, _batches(n, batch, labels=labels, split=split), **kwargs)


# -- schema and metadata ----------------------------------------------------------------


def test_schema_is_int64_id_and_fixed_size_float32_latent(tmp_path):
    path = tmp_path / "z.parquet"
    _write(path)
    schema = pq.read_schema(path)
    assert schema.names == ["id", "latent"]  # privacy default: no labels, no split, no paths
    assert schema.field("id").type == pa.int64()
    latent = schema.field("latent").type
    assert pa.types.is_fixed_size_list(latent)
    assert latent.list_size == D
    assert latent.value_type == pa.float32()


def test_metadata_keys_and_values(tmp_path):
    path = tmp_path / "z.parquet"
    before = datetime.now(timezone.utc).replace(microsecond=0)
    returned = _write(
        path, n=77, metadata={"model_fingerprint": "m-123", "attribute_schema": {"age": "float"}}
    )
    meta = read_metadata(path)
    assert meta == returned
    assert meta["row_count"] == 77
    assert meta["latent_dim"] == D
    assert meta["labels_included"] is False
    assert meta["label_columns"] == []
    assert meta["split_included"] is False
    assert meta["id_type"] == "int64"
    assert meta["format"] == "bafo-latents" and meta["format_version"] == 1
    assert meta["model_fingerprint"] == "m-123"
    assert meta["attribute_schema"] == {"age": "float"}
    assert isinstance(meta["package_version"], str) and meta["package_version"]
    created = datetime.fromisoformat(meta["created_at"])
    assert created.utcoffset() == timedelta(0)
    assert before <= created <= datetime.now(timezone.utc) + timedelta(seconds=1)


def test_schema_metadata_matches_footer_metadata(tmp_path):
    # Arrow readers see the final metadata (with the row count), not the provisional one.
    path = tmp_path / "z.parquet"
    _write(path, n=50)
    from_schema = json.loads(pq.read_table(path).schema.metadata[b"bafo"])
    assert from_schema == read_metadata(path)
    assert from_schema["row_count"] == 50


def test_labels_included_flag_and_columns(tmp_path):
    path = tmp_path / "z.parquet"
    meta = _write(
        path,
        labels=True,
        split=True,
        label_schema={"age": "float64", "gender": "string"},
        include_split=True,
    )
    assert meta["labels_included"] is True
    assert meta["label_columns"] == ["age", "gender"]
    assert meta["split_included"] is True
    schema = pq.read_schema(path)
    assert schema.names == ["id", "latent", "split", "age", "gender"]
    assert schema.field("age").type == pa.float64()
    assert schema.field("gender").type == pa.string()


def test_row_count_without_add_key_value_metadata(tmp_path, monkeypatch):
    # pyarrow < 17 cannot change metadata after opening: the reader fills the row count.
    monkeypatch.delattr(pq.ParquetWriter, "add_key_value_metadata")
    path = tmp_path / "z.parquet"
    _write(path, n=45)
    assert read_metadata(path)["row_count"] == 45
    assert json.loads(pq.read_schema(path).metadata[b"bafo"])["row_count"] is None


# -- round trips --------------------------------------------------------------------------


def test_round_trip_is_exact(tmp_path):
    path = tmp_path / "z.parquet"
    n = 130
    _write(
        path,
        n=n,
        batch=17,
        labels=True,
        split=True,
        row_group_size=40,
        label_schema={"age": "float64", "gender": "string"},
        include_split=True,
    )
    table = read_latents(path)
    assert table.latents.dtype == np.float32
    np.testing.assert_array_equal(table.latents, _latents(n))
    np.testing.assert_array_equal(table.ids, np.arange(n))
    assert table.ids.dtype == np.int64
    assert table.split.tolist() == _split(n).tolist()
    expected = _labels(n)
    assert table.labels.columns.tolist() == ["age", "gender"]
    np.testing.assert_array_equal(table.labels["age"].to_numpy(), expected["age"].to_numpy())
    assert table.labels["gender"].tolist() == expected["gender"].tolist()
    assert len(table) == n and table.latent_dim == D


def test_string_ids_round_trip(tmp_path):
    path = tmp_path / "z.parquet"
    z = _latents(5)
    ids = [f"subject-{i:03d}" for i in range(5)]
    write_latents(path, [(ids, z)], id_type="string")
    assert pq.read_schema(path).field("id").type == pa.string()
    table = read_latents(path)
    assert table.ids.tolist() == ids
    np.testing.assert_array_equal(table.latents, z)


def test_read_selected_label_columns(tmp_path):
    path = tmp_path / "z.parquet"
    _write(path, n=20, labels=True, label_schema={"age": "float64", "gender": "string"})
    assert read_latents(path, columns=["gender"]).labels.columns.tolist() == ["gender"]
    assert read_latents(path, columns=[]).labels is None
    with pytest.raises(
        ValueError, match=r"no columns \['ethnicity'\].*available: \['age', 'gender'\]"
    ):
        read_latents(path, columns=["ethnicity"])


def test_iter_latent_batches_matches_full_read(tmp_path):
    path = tmp_path / "z.parquet"
    _write(
        path,
        n=95,
        labels=True,
        split=True,
        row_group_size=30,
        label_schema={"age": "float64", "gender": "string"},
        include_split=True,
    )
    full = read_latents(path)
    parts = list(iter_latent_batches(path, 40))
    assert all(len(p) <= 40 for p in parts) and len(parts) >= 3
    np.testing.assert_array_equal(np.concatenate([p.latents for p in parts]), full.latents)
    np.testing.assert_array_equal(np.concatenate([p.ids for p in parts]), full.ids)
    assert np.concatenate([p.split for p in parts]).tolist() == full.split.tolist()
    pd.testing.assert_frame_equal(
        pd.concat([p.labels for p in parts], ignore_index=True), full.labels
    )
    assert all(p.metadata["row_count"] == 95 for p in parts)


def test_pandas_and_pyarrow_read_it(tmp_path):
    path = tmp_path / "z.parquet"
    _write(path, n=12)
    frame = pd.read_parquet(path)
    assert frame.columns.tolist() == ["id", "latent"]
    assert frame["id"].tolist() == list(range(12))
    np.testing.assert_array_equal(
        np.stack(frame["latent"].to_list()).astype(np.float32), _latents(12)
    )
    assert pq.read_table(path).num_rows == 12


def test_polars_reads_it(tmp_path):
    pl = pytest.importorskip("polars")
    path = tmp_path / "z.parquet"
    _write(path, n=12)
    frame = pl.read_parquet(path)
    assert frame["id"].to_list() == list(range(12))
    np.testing.assert_array_equal(
        np.asarray(frame["latent"].to_list(), dtype=np.float32), _latents(12)
    )


def test_duckdb_reads_it(tmp_path):
    duckdb = pytest.importorskip("duckdb")
    path = tmp_path / "z.parquet"
    _write(path, n=12)
    rows = duckdb.sql(f"SELECT id, latent FROM read_parquet('{path}') ORDER BY id").fetchall()
    assert [r[0] for r in rows] == list(range(12))
    np.testing.assert_array_equal(np.asarray([r[1] for r in rows], dtype=np.float32), _latents(12))


def test_generic_parquet_without_bafo_metadata(tmp_path):
    path = tmp_path / "other.parquet"
    z = _latents(4)
    pq.write_table(
        pa.table({"latent": [row.tolist() for row in z.astype(np.float64)], "y": [1, 0, 1, 1]}),
        path,
    )
    table = read_latents(path)
    assert table.metadata == {}
    np.testing.assert_array_equal(table.ids, np.arange(4))
    np.testing.assert_array_equal(table.latents, z)  # float32 values survive float64 storage
    assert table.labels["y"].tolist() == [1, 0, 1, 1]
    assert read_metadata(path) == {}


def test_empty_file(tmp_path):
    path = tmp_path / "z.parquet"
    meta = write_latents(path, [], latent_dim=D)
    assert meta["row_count"] == 0
    table = read_latents(path)
    assert table.latents.shape == (0, D) and len(table.ids) == 0
    with pytest.raises(ValueError, match="pass latent_dim"):
        write_latents(tmp_path / "y.parquet", [])


# -- atomicity and overwriting ------------------------------------------------------------


def test_exception_mid_write_leaves_no_file(tmp_path):
    path = tmp_path / "z.parquet"
    with pytest.raises(RuntimeError, match="encoder failed"):
        with LatentParquetWriter(path, D, row_group_size=10) as writer:
            for ids, z, _, _ in _batches(60, 20):
                writer.write_batch(ids, z)
            # Rows already reached disk, in a temporary file only.
            assert not path.exists()
            assert len(list(tmp_path.iterdir())) == 1 and writer.buffered_rows == 0
            raise RuntimeError("encoder failed")
    assert list(tmp_path.iterdir()) == []


def test_keyboard_interrupt_leaves_no_file(tmp_path):
    path = tmp_path / "z.parquet"
    with pytest.raises(KeyboardInterrupt):
        with LatentParquetWriter(path, D, row_group_size=10) as writer:
            writer.write_batch(np.arange(30), _latents(30))
            raise KeyboardInterrupt
    assert list(tmp_path.iterdir()) == []


def test_failing_batch_iterable_leaves_no_file(tmp_path):
    def batches():
        yield from _batches(40, 20)
        raise OSError("image 41 unreadable")

    with pytest.raises(OSError, match="unreadable"):
        write_latents(tmp_path / "z.parquet", batches(), row_group_size=10)
    assert list(tmp_path.iterdir()) == []


def test_refuses_to_overwrite(tmp_path):
    path = tmp_path / "z.parquet"
    path.write_bytes(b"precious")
    with pytest.raises(FileExistsError, match="overwrite=True"):
        _write(path)
    assert path.read_bytes() == b"precious"
    assert list(tmp_path.iterdir()) == [path]
    _write(path, n=9, overwrite=True)
    assert read_metadata(path)["row_count"] == 9


def test_failed_overwrite_keeps_old_file(tmp_path):
    path = tmp_path / "z.parquet"
    path.write_bytes(b"precious")
    with pytest.raises(ValueError):
        with LatentParquetWriter(path, D, overwrite=True) as writer:
            writer.write_batch(np.arange(3), _latents(3, d=D + 1))
    assert path.read_bytes() == b"precious"
    assert list(tmp_path.iterdir()) == [path]


def test_streaming_flushes_row_groups_and_bounds_memory(tmp_path):
    path = tmp_path / "z.parquet"
    row_group_size, n_batches, batch = 100, 50, 30
    z = _latents(n_batches * batch)
    with LatentParquetWriter(path, D, row_group_size=row_group_size) as writer:
        for i in range(n_batches):
            rows = slice(i * batch, (i + 1) * batch)
            writer.write_batch(np.arange(rows.start, rows.stop), z[rows])
            assert writer.buffered_rows < row_group_size
        assert writer.n_rows == n_batches * batch
    parquet_file = pq.ParquetFile(path)
    sizes = [
        parquet_file.metadata.row_group(i).num_rows for i in range(parquet_file.num_row_groups)
    ]
    assert sizes == [row_group_size] * 15
    np.testing.assert_array_equal(read_latents(path).latents, z)


# -- privacy --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name", ["file_path", "filename", "source", "image_path", "Path", "src_dir"]
)
def test_refuses_path_like_label_columns(tmp_path, name):
    with pytest.raises(ValueError, match=f"label column '{name}' looks like a file path"):
        LatentParquetWriter(tmp_path / "z.parquet", D, label_schema={name: "string"})
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("name", ["imagePath", "ImageURL", "fullFilename", "img_paths"])
def test_refuses_path_columns_written_as_one_word(tmp_path, name):  # issue 14, item 9
    with pytest.raises(ValueError, match=f"label column '{name}' looks like a file path"):
        LatentParquetWriter(tmp_path / "z.parquet", D, label_schema={name: "string"})


@pytest.mark.parametrize("name", ["profile", "smile", "mouth_open", "age"])
def test_keeps_label_columns_that_only_resemble_path_words(tmp_path, name):
    LatentParquetWriter(tmp_path / "z.parquet", D, label_schema={name: "string"}).abort()


@pytest.mark.parametrize(
    "value", ["s3://bucket/key", "x.JPG ", "x.jpeg?raw=1", "x.heic", "26-female-asian", "Asian female 30", " /etc/passwd"]
)
def test_refuses_uris_padded_or_queried_image_names_and_labels_in_words(tmp_path, value):  # issue 14, item 9
    with pytest.raises(ValueError, match="id at row 0 of the batch looks like a file path"):
        write_latents(tmp_path / "z.parquet", [([value], _latents(1))], id_type="string")
    assert list(tmp_path.iterdir()) == []


def test_keeps_plain_label_values_and_ids(tmp_path):
    labels = pd.DataFrame({"gender": ["female", "male", "female"], "ethnicity": ["asian", "black", "others"],
                           "note": ["human-3", "version 2.0", "3-mango"]})
    path = tmp_path / "z.parquet"
    write_latents(path, [(["id-0001", "ok-1", "f00d"], _latents(3), labels)], id_type="string",
                  label_schema={"gender": "string", "ethnicity": "string", "note": "string"})
    assert read_latents(path).labels["gender"].tolist() == ["female", "male", "female"]


def test_path_like_label_column_allowed_on_request(tmp_path):
    path = tmp_path / "z.parquet"
    labels = pd.DataFrame({"filename": ["25_0_1_20170116.jpg.chip.jpg", "a/b/c.png"]})
    write_latents(
        path,
        [(np.arange(2), _latents(2), labels)],
        label_schema={"filename": "string"},
        allow_paths=True,
    )
    assert read_latents(path).labels["filename"].tolist() == labels["filename"].tolist()


@pytest.mark.parametrize(
    "value",
    [
        "25_0_1_20170116174525125.jpg.chip.jpg",
        "/data/UTKFace/x",
        "data/UTKFace/part1/x",
        "face.PNG",
    ],
)
def test_refuses_path_like_string_ids_without_echoing_them(tmp_path, value):
    ids = ["ok-1", value]
    with pytest.raises(ValueError, match="id at row 1 of the batch looks like a file path") as info:
        write_latents(tmp_path / "z.parquet", [(ids, _latents(2))], id_type="string")
    assert value not in str(info.value)
    assert list(tmp_path.iterdir()) == []


def test_refuses_path_like_label_values_and_metadata(tmp_path):
    labels = pd.DataFrame({"note": ["fine", "25_1_2_2017.jpg"]})
    with pytest.raises(ValueError, match="label column 'note' at row 1"):
        write_latents(
            tmp_path / "z.parquet",
            [(np.arange(2), _latents(2), labels)],
            label_schema={"note": "string"},
        )
    with pytest.raises(ValueError, match=r"metadata\['source'\]\['root'\] looks like a file path"):
        LatentParquetWriter(
            tmp_path / "z.parquet", D, metadata={"source": {"root": "/home/me/UTKFace"}}
        )
    assert list(tmp_path.iterdir()) == []


def test_refuses_path_like_metadata_keys_without_echoing_them(tmp_path):
    name = "/data/UTKFace/26_1_2_20170116.jpg.chip.jpg"
    metadata = {"checks": {"first": "ok", name: "ok"}}
    with pytest.raises(ValueError, match=r"key #2 of metadata\['checks'\] looks like a file path") as info:
        write_latents(tmp_path / "z.parquet", [(np.arange(1), _latents(1))], metadata=metadata)
    assert "UTKFace" not in str(info.value) and "26_1_2" not in str(info.value)
    assert list(tmp_path.iterdir()) == []
    write_latents(tmp_path / "z.parquet", [(np.arange(1), _latents(1))], metadata=metadata, allow_paths=True)
    assert read_metadata(tmp_path / "z.parquet")["checks"] == metadata["checks"]


def test_labels_need_an_explicit_schema(tmp_path):
    with pytest.raises(ValueError, match="without label_schema"):
        write_latents(tmp_path / "z.parquet", [(np.arange(3), _latents(3), _labels(3))])


# -- folders ------------------------------------------------------------------------------


def _spark_like_folder(root):
    """Hive partitions holding ids 0-2, and files in hidden and underscore folders holding ids 7-9."""
    for folder, ids in [("split=train", [0, 1]), ("split=test", [2]), ("_temporary/0/_temporary/attempt_1", [7]),
                        (".staging", [8]), ("split=test/_temporary", [9])]:
        (root / folder).mkdir(parents=True)
        write_latents(root / folder / "part-00000.parquet", [(np.array(ids), _latents(len(ids)))])
    return root


def test_files_in_hidden_and_underscore_folders_are_not_read(tmp_path):
    root = _spark_like_folder(tmp_path / "ds")
    for source in (root, f"{root}/**/*.parquet", f"file://{root}"):
        table = read_latents(source)
        assert sorted(table.ids.tolist()) == [0, 1, 2], source
        assert dict(zip(table.ids.tolist(), table.split.tolist())) == {0: "train", 1: "train", 2: "test"}
        assert read_metadata(source)["row_count"] == 3


def test_a_dataset_below_a_hidden_folder_is_still_read(tmp_path):
    root = _spark_like_folder(tmp_path / ".cache" / "_exports" / "ds")
    assert sorted(read_latents(root).ids.tolist()) == [0, 1, 2]


def test_hidden_folders_of_an_fsspec_dataset_are_not_read(tmp_path):
    fsspec = pytest.importorskip("fsspec")
    root = _spark_like_folder(tmp_path / "ds")
    memory = fsspec.filesystem("memory")
    base = f"/{tmp_path.name}/ds"
    for file in root.rglob("*.parquet"):
        memory.pipe(f"{base}/{file.relative_to(root).as_posix()}", file.read_bytes())
    try:
        for source in (f"memory://{base}", f"memory://{base}/**/*.parquet"):
            assert sorted(read_latents(source).ids.tolist()) == [0, 1, 2], source
    finally:
        memory.rm(base, recursive=True)


# -- bad input ------------------------------------------------------------------------------


def test_wrong_latent_shape_names_batch_and_dim(tmp_path):
    with LatentParquetWriter(tmp_path / "z.parquet", D) as writer:
        writer.write_batch(np.arange(4), _latents(4))
        with pytest.raises(
            ValueError,
            match=rf"batch 1 \(rows 4-6\): latents must have shape \(n, {D}\), got \(3, 5\)",
        ):
            writer.write_batch(np.arange(4, 7), _latents(3, d=5))
        writer.write_batch(np.arange(4, 7), _latents(3))  # the writer stays usable
    assert read_metadata(tmp_path / "z.parquet")["row_count"] == 7


def test_bad_batches_get_clear_errors(tmp_path):
    with LatentParquetWriter(tmp_path / "z.parquet", D, label_schema={"age": "float64"}) as writer:
        with pytest.raises(TypeError, match="latents must be floating point, got dtype int64"):
            writer.write_batch(np.arange(2), np.zeros((2, D), dtype=np.int64), labels=_labels(2))
        with pytest.raises(ValueError, match="ids must be 1-D with 3 entries"):
            writer.write_batch(np.arange(2), _latents(3), labels=_labels(3))
        with pytest.raises(TypeError, match="needs integer ids"):
            writer.write_batch(np.arange(3.0), _latents(3), labels=_labels(3))
        bad = _latents(3)
        bad[2, 1] = np.nan
        with pytest.raises(ValueError, match="latent at row 2 of the batch is not finite"):
            writer.write_batch(np.arange(3), bad, labels=_labels(3))
        with pytest.raises(ValueError, match=r"lack the declared columns \['age'\]"):
            writer.write_batch(np.arange(3), _latents(3), labels=pd.DataFrame({"x": [1, 2, 3]}))
        with pytest.raises(TypeError, match="label column 'age' .* does not convert") as info:
            writer.write_batch(
                np.arange(2), _latents(2), labels=pd.DataFrame({"age": ["old", "young"]})
            )
        assert "young" not in str(info.value)
        writer.abort()
    assert list(tmp_path.iterdir()) == []


def test_writer_rejects_reserved_metadata_and_use_after_close(tmp_path):
    with pytest.raises(ValueError, match=r"\['row_count'\] are set by the writer"):
        LatentParquetWriter(tmp_path / "a.parquet", D, metadata={"row_count": 5})
    writer = LatentParquetWriter(tmp_path / "b.parquet", D)
    writer.close()
    with pytest.raises(RuntimeError, match="after close"):
        writer.write_batch(np.arange(1), _latents(1))


def test_not_a_latent_parquet(tmp_path):
    text = tmp_path / "notes.parquet"
    text.write_text("hello")
    with pytest.raises(ValueError, match="not a readable Parquet file"):
        read_latents(text)
    plain = tmp_path / "plain.parquet"
    pq.write_table(pa.table({"x": [1, 2]}), plain)
    with pytest.raises(ValueError, match="has no 'latent' column"):
        read_latents(plain)
    with pytest.raises(FileNotFoundError):
        read_metadata(tmp_path / "missing.parquet")


def test_newer_format_version_is_refused(tmp_path):
    path = tmp_path / "future.parquet"
    table = pa.table({"latent": [[0.0, 1.0]]}).replace_schema_metadata(
        {"bafo": json.dumps({"format_version": 99})}
    )
    pq.write_table(table, path)
    with pytest.raises(ValueError, match="format version 99"):
        read_metadata(path)


# -- atomic helper --------------------------------------------------------------------------


def test_atomic_write_path_commits_with_normal_permissions(tmp_path):
    path = tmp_path / "out.bin"
    with atomic_write_path(path) as tmp:
        assert tmp.parent == tmp_path and tmp != path
        tmp.write_bytes(b"data")
        assert not path.exists()
    assert path.read_bytes() == b"data"
    assert list(tmp_path.iterdir()) == [path]
    if os.name == "posix":
        umask = os.umask(0)
        os.umask(umask)
        assert stat.S_IMODE(path.stat().st_mode) == 0o666 & ~umask


def test_atomic_file_does_not_clobber_a_file_that_appeared(tmp_path):
    path = tmp_path / "out.bin"
    target = AtomicFile(path)
    target.tmp_path.write_bytes(b"new")
    path.write_bytes(b"someone else's")
    with pytest.raises(FileExistsError, match="overwrite=True"):
        target.commit()
    assert path.read_bytes() == b"someone else's"
    assert list(tmp_path.iterdir()) == [path]


def test_atomic_file_removes_temp_when_forgotten(tmp_path):
    target = AtomicFile(tmp_path / "out.bin")
    assert len(list(tmp_path.iterdir())) == 1
    del target
    assert list(tmp_path.iterdir()) == []


# -- embeddings written by other tools ------------------------------------------------

def test_numbered_dimensions_leave_other_numeric_columns_out(tmp_path):
    rng = np.random.default_rng(0)
    Z = rng.normal(size=(5, 3)).astype(np.float32)
    table = pa.table({"id": np.arange(5), **{f"dim_{i}": Z[:, i] for i in range(3)}, "age": np.arange(5.0)})
    pq.write_table(table, tmp_path / "e.parquet")
    ids, read = read_embedding(tmp_path / "e.parquet")
    np.testing.assert_array_equal(read, Z)

def test_an_integer_list_column_is_an_embedding(tmp_path):
    table = pa.table({"id": [0, 1], "embedding": pa.array([[1, 2], [3, 4]], pa.list_(pa.int16()))})
    pq.write_table(table, tmp_path / "e.parquet")
    _, read = read_embedding(tmp_path / "e.parquet")
    np.testing.assert_array_equal(read, np.array([[1, 2], [3, 4]], np.float32))

def test_a_named_column_that_is_no_list_is_refused():
    schema = pa.schema([("id", pa.int64()), ("embedding", pa.string())])
    with pytest.raises(ValueError, match="not a list of numbers"):
        embedding_column(schema, "embedding")


@pytest.mark.parametrize("value", [float("inf"), float("nan"), 1e39])
def test_a_non_finite_latent_is_refused_with_its_row(tmp_path, value):
    rows = [[0.5, 1.0], [0.25, value]]
    table = pa.table({"id": [7, 8], "latent": pa.array(rows, pa.list_(pa.float64()))})
    pq.write_table(table, tmp_path / "e.parquet")
    with pytest.raises(ValueError, match=r"e\.parquet: row 1 has a non-finite 'latent' value \(rows counted from 0\)"):
        read_latents(tmp_path / "e.parquet")
