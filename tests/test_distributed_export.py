"""encode_dataset on a local Ray cluster: same latents as the in-process export, ids that reveal nothing,
bad files counted, resumption after a killed job, no path or label columns."""

from __future__ import annotations

import io
import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
from PIL import Image

from bafo_pipeline import BAFOTransformer, export_latents, make_synthetic_faces, save_model
from bafo_pipeline.audits import read_embedding_parquet
from bafo_pipeline.pipeline.distributed import encode_dataset
from bafo_pipeline.pipeline.ids import content_digest, id_of_digest, load_id_key
from bafo_pipeline.pipeline.inputs import read_manifest
from bafo_pipeline.pipeline.job import JOB_FILE, PLAN_FILE
from bafo_pipeline.pipeline.spec import PartitionFailed

pytest.importorskip("ray")

SIZE = 32
KEY = bytes(range(32))
N_GOOD = 24


@pytest.fixture(scope="module")
def faces():
    return make_synthetic_faces(80, image_size=SIZE, random_state=3)


@pytest.fixture(scope="module")
def model_dir(faces, tmp_path_factory):
    model = BAFOTransformer(
        latent_dim=16, widths=(8, 16), epochs=1, refine_epochs=1, batch_size=16, random_state=0,
        image_shape=(SIZE, SIZE),
    ).fit(faces.images, sensitive_features=faces.sensitive_features)
    return save_model(model, tmp_path_factory.mktemp("model") / "bafo", metadata={"split": {"test_fraction": 0.3, "seed": 0}})


def _utkface_name(i: int, faces) -> str:
    age = int(faces.sensitive_features["age"].iloc[i])
    gender = 1 if faces.sensitive_features["gender"].iloc[i] == "female" else 0
    return f"{age}_{gender}_{i % 5}_20170116{i:06d}.jpg.chip.jpg"


@pytest.fixture(scope="module")
def folder(faces, tmp_path_factory):
    """24 faces as UTKFace-named JPEGs (labels in the names), plus a corrupt, an empty and a non-image file."""
    root = tmp_path_factory.mktemp("faces")
    for i, image in enumerate(faces.images[:N_GOOD]):
        Image.fromarray(image).resize((3 * SIZE, 3 * SIZE), Image.Resampling.BICUBIC).save(root / _utkface_name(i, faces), quality=90)
    first = sorted(root.iterdir())[0].read_bytes()
    (root / "41_0_3_20170119000001.jpg.chip.jpg").write_bytes(first[:150])  # header, then nothing
    (root / "52_1_1_20170119000002.jpg.chip.jpg").write_bytes(b"")
    (root / "notes.txt").write_text("not an image")
    return root


def _ids_of_files(paths) -> dict[int, Path]:
    return {id_of_digest(content_digest(KEY, Path(p).read_bytes())): Path(p) for p in paths}


@pytest.fixture(scope="module")
def plain_export(ray_cluster, model_dir, folder, tmp_path_factory):
    """The folder exported by 2 actors into 4 partitions: ids and latents only."""
    out = tmp_path_factory.mktemp("plain") / "latents"
    return encode_dataset(model_dir, folder, out, id_key=KEY, workers=2, partition_rows=8, decoder="pil"), out


def test_ray_export_equals_the_in_process_export_bit_for_bit(plain_export, model_dir, folder, tmp_path):
    from bafo_pipeline.io.model_io import load_model

    report, out = plain_export
    good = sorted(p for p in folder.iterdir() if p.suffix == ".jpg" and p.stat().st_size > 500)
    assert len(good) == N_GOOD and report.counts["written"] == N_GOOD
    assert report.n_partitions == 4 and len(list(out.glob("part-*.parquet"))) == 4

    local = tmp_path / "local.parquet"
    export_latents(load_model(model_dir), pd.DataFrame({"path": [str(p) for p in good]}), local, decoder="pil")
    expected = pq.read_table(local)
    by_file = dict(zip(map(str, good), expected.column("latent").to_numpy(zero_copy_only=False)))
    ids = _ids_of_files(good)
    got = pq.read_table(out)
    assert set(got.column("id").to_pylist()) == set(ids)
    for i, latent in zip(got.column("id").to_pylist(), got.column("latent").to_numpy(zero_copy_only=False)):
        np.testing.assert_array_equal(latent, by_file[str(ids[i])])

    # Same schema as the in-process file, and the model fingerprint in every file.
    for part in sorted(out.glob("part-*.parquet")):
        schema = pq.read_schema(part)
        assert schema.names == ["id", "latent"]
        assert schema.field("id").type == expected.schema.field("id").type
        assert schema.field("latent").type == expected.schema.field("latent").type
        meta = json.loads(schema.metadata[b"bafo"])
        assert meta["model_fingerprint"] == report.job["model_fingerprint"]
        assert meta["precision"] == json.loads(expected.schema.metadata[b"bafo"])["precision"]


def test_ids_and_row_order_come_from_the_content_not_the_names(plain_export, model_dir, folder, tmp_path):
    """Renamed files (other labels in the names, other name order) get the same ids, rows and partitions."""
    _, out = plain_export
    renamed = tmp_path / "renamed"
    renamed.mkdir()
    rng = np.random.default_rng(0)
    for i, path in enumerate(sorted(folder.glob("*.jpg"))):
        shutil.copy(path, renamed / f"{rng.integers(1, 99)}_{i % 2}_{(i * 3) % 5}_{rng.integers(1e9)}.jpg.chip.jpg")
    report = encode_dataset(model_dir, renamed, tmp_path / "b", id_key=KEY, workers=1, partition_rows=8)
    assert report.counts["written"] == N_GOOD
    a, b = pq.read_table(out), pq.read_table(tmp_path / "b")
    assert sorted(a.column("id").to_pylist()) == sorted(b.column("id").to_pylist())
    for part in sorted(out.glob("part-*.parquet")):
        ids = pq.read_table(part).column("id").to_numpy()
        assert (np.diff(ids) > 0).all()  # written in id order (a keyed hash), never in name order


def test_bad_files_are_skipped_with_reasons_and_their_batch_keeps_its_good_rows(plain_export, folder):
    report, out = plain_export
    counts = report.counts
    assert counts["read"] == N_GOOD + 2 and counts["written"] == N_GOOD and counts["skipped"] == 2
    reasons = sorted(counts["skipped_by_reason"])
    assert reasons[0] == "empty file (0 bytes)" and reasons[1].startswith("truncated image data")
    assert all(item["source"].startswith("file ") for item in counts["skipped_items"])
    job = json.loads((out / JOB_FILE).read_text())
    assert job["counts"] == counts and sum(f["rows"] for f in job["files"]) == N_GOOD
    # each bad file shared its partition (and batch) with good files, which were all written
    for part in out.glob("part-*.parquet"):
        meta = json.loads(pq.read_schema(part).metadata[b"bafo"])["job"]
        assert meta["rows_written"] == meta["rows_read"] - meta["skipped"] > 0


def test_strict_stops_at_a_bad_file_and_names_it(ray_cluster, model_dir, folder, tmp_path):
    with pytest.raises(PartitionFailed, match=str(folder)):
        encode_dataset(model_dir, folder, tmp_path / "strict", id_key=KEY, workers=1, strict=True)
    assert not (tmp_path / "strict" / JOB_FILE).exists()


def test_no_path_or_name_leaves_through_the_files(plain_export, folder):
    _, out = plain_export
    names = [p.name for p in folder.iterdir()]
    for path in out.iterdir():
        if path.suffix == ".parquet":
            assert pq.read_schema(path).names == ["id", "latent"]  # no labels unless asked, no path column
        text = path.read_bytes().decode("latin-1")
        for name in names:
            assert name not in text and name.split(".")[0] not in text, f"{name} leaked into {path.name}"
        assert str(folder) not in text and folder.name not in text


def test_manifest_rows_are_ids_and_bad_rows_are_named_by_row(ray_cluster, model_dir, folder, tmp_path):
    files = sorted(p.name for p in folder.glob("*.jpg"))  # the 24 faces, the corrupt and the empty file
    rows = [{"path": f"{folder.name}/{name}", "smile": i % 2} for i, name in enumerate(files)]
    rows[3]["path"] = "../outside.jpg"  # leaves the manifest's folder
    manifest = folder.parent / f"manifest_{tmp_path.name}.csv"
    pd.DataFrame(rows).to_csv(manifest, index=False)
    report = encode_dataset(model_dir, read_manifest(manifest, label_columns=["smile"]), tmp_path / "out", id_key=KEY,
                            id_from="row", include_labels=True, workers=1, partition_rows=7, decoder="torch")
    table = pq.read_table(tmp_path / "out").to_pandas()
    # the batched torch decoder (nvJPEG on a GPU; here on the CPU) gives the in-process export's latents, up
    # to float rounding: its batches hold other images here than there, in another memory layout
    from bafo_pipeline.io.model_io import load_model

    paths = [str(folder.parent / rows[i - 1]["path"]) for i in table["id"]]
    local = export_latents(load_model(model_dir), pd.DataFrame({"path": paths}), tmp_path / "local.parquet",
                           decoder="torch")
    assert local.n_written == len(table) and report.job["decoder"] == ["torch"]
    expected = pq.read_table(tmp_path / "local.parquet").column("latent").to_numpy(zero_copy_only=False)
    np.testing.assert_allclose(np.stack(table["latent"].to_numpy()), np.stack(expected), rtol=0, atol=1e-6)
    # ids are the manifest's own 1-based data rows, and each carries its row's label
    assert all(row.smile == rows[row.id - 1]["smile"] for row in table.itertuples())
    assert not (np.diff(table["id"].to_numpy()) > 0).all()  # rows are not written in manifest order
    skipped = {item["source"]: item["reason"] for item in report.counts["skipped_items"]}
    assert "leaves the manifest" in skipped["row 4"] and 4 not in set(table["id"])
    assert report.counts["written"] == len(table) == len(files) - 3
    assert report.counts["skipped"] == 3  # the escaping path, the empty and the corrupt file


def test_a_rerun_of_a_complete_job_does_nothing_and_another_job_is_refused(plain_export, model_dir, folder, tmp_path):
    first, out = plain_export
    before = {p.name: p.stat().st_mtime_ns for p in out.iterdir()}
    again = encode_dataset(model_dir, folder, out, id_key=KEY, workers=2, partition_rows=8, decoder="pil")
    assert again.partitions_written == 0 and again.counts == first.counts
    assert before == {p.name: p.stat().st_mtime_ns for p in out.iterdir()}
    with pytest.raises(FileExistsError, match="another export"):  # other partitions: another job
        encode_dataset(model_dir, folder, out, id_key=KEY, workers=1, partition_rows=5)
    with pytest.raises(FileExistsError, match="another export"):  # another key: other ids
        encode_dataset(model_dir, folder, out, id_key=b"another key of 32 bytes........", partition_rows=8)
    assert before == {p.name: p.stat().st_mtime_ns for p in out.iterdir()}
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "mine.txt").write_text("keep me")
    with pytest.raises(FileExistsError, match="not a bafo export|not this export"):
        encode_dataset(model_dir, folder, tmp_path / "other", id_key=KEY, workers=1, overwrite=True)
    assert (tmp_path / "other" / "mine.txt").read_text() == "keep me"


# ------------------------------------------------------------------ resumption after a kill
_SLOW_JOB = textwrap.dedent(
    """
    import os, signal, sys
    import ray
    from bafo_pipeline.pipeline.distributed import encode_dataset

    address, model, source, out = sys.argv[1:5]
    ray.init(address=address, log_to_driver=False, logging_level="WARNING")
    done = []

    def die_after_the_first_partition(n):
        done.append(n)
        print("partition done", flush=True)
        os.kill(os.getpid(), signal.SIGKILL)  # a killed job: no cleanup, no job file

    encode_dataset(model, source, out, id_key=bytes(range(32)), workers=1, partition_rows=1,
                   progress=die_after_the_first_partition)
    """
)


def _slow_pngs(folder: Path, n: int) -> None:
    """Large solid-colour PNGs (about 0.1-0.4 s each to decode), distinct bytes through a trailing chunk."""
    buffer = io.BytesIO()
    Image.new("RGB", (3000, 3000), (120, 30, 200)).save(buffer, format="PNG")
    for i in range(n):
        (folder / f"{i:03d}.png").write_bytes(buffer.getvalue() + f"extra{i}".encode())


def test_a_killed_job_resumes_and_equals_an_uninterrupted_run(ray_cluster, model_dir, tmp_path):
    source = tmp_path / "slow"
    source.mkdir()
    _slow_pngs(source, 8)
    out = tmp_path / "killed"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(Path(__file__).parents[1]), os.environ.get("PYTHONPATH", "")])}
    job = subprocess.run([sys.executable, "-c", _SLOW_JOB, ray_cluster, str(model_dir), str(source), str(out)],
                         env=env, capture_output=True, text=True, timeout=300)
    assert job.returncode == -signal.SIGKILL, job.stderr[-2000:]
    time.sleep(1.0)  # the cluster stops the dead job's actor
    parts = sorted(p.name for p in out.glob("part-*.parquet"))
    assert (out / PLAN_FILE).exists() and not (out / JOB_FILE).exists()  # recognisably half-finished
    assert 1 <= len(parts) < 8, parts
    (out / ".part-00007.parquet.0123456789ab.tmp").write_bytes(b"half a file")  # as a kill mid-write leaves

    resumed = encode_dataset(model_dir, source, out, id_key=KEY, workers=1, partition_rows=1)
    assert resumed.partitions_kept == len(parts) and resumed.partitions_written == 8 - len(parts)
    assert not list(out.glob(".*.tmp"))
    whole = encode_dataset(model_dir, source, tmp_path / "whole", id_key=KEY, workers=1, partition_rows=1)
    assert resumed.counts == whole.counts and resumed.counts["written"] == 8
    for part in sorted(out.glob("part-*.parquet")):
        a, b = pq.read_table(part), pq.read_table(tmp_path / "whole" / part.name)
        assert a.column("id").equals(b.column("id")) and a.column("latent").equals(b.column("latent"))


def test_cli_encodes_on_ray_and_the_audit_reads_the_partitioned_output(ray_cluster, model_dir, folder, tmp_path):
    from click.testing import CliRunner

    from bafo_pipeline.cli import main

    key_file = tmp_path / "owner" / "id.key"
    out = tmp_path / "latents"
    args = ["encode", "--engine", "ray", "--model", str(model_dir), "--utkface", str(folder), "--out", str(out),
            "--include-labels", "--include-split", "--workers", "1", "--partition-rows", "10",
            "--id-key-file", str(key_file)]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    assert f"wrote {N_GOOD} latents" in result.output and "3 partitions" in result.output
    assert key_file.stat().st_mode & 0o777 == 0o600  # the data owner's key, private
    table = pq.read_table(out).to_pandas()
    assert set(table.columns) == {"id", "latent", "split", "age", "gender", "ethnicity"}
    assert set(table["split"]) == {"train", "test"}
    owner_key = load_id_key(key_file, create=False)
    files = {id_of_digest(content_digest(owner_key, p.read_bytes())): p for p in folder.glob("*.jpg")}
    for row in table.itertuples():  # the labels are those in the file's name; the name itself is not there
        age, gender = files[row.id].name.split("_")[:2]
        assert row.age == float(age) and row.gender == ("female" if gender == "1" else "male")
    for path in out.iterdir():
        assert not any(p.name.split(".")[0] in path.read_bytes().decode("latin-1") for p in folder.iterdir())

    again = CliRunner().invoke(main, args)  # the same job again: complete, nothing to redo
    assert again.exit_code == 0 and f"wrote {N_GOOD} latents" in again.output

    report = tmp_path / "report"
    audited = CliRunner().invoke(main, ["audit", "--latents", str(out), "--attributes", "gender", "--folds", "3",
                                        "--out", str(report)])
    assert audited.exit_code == 0, audited.output
    saved = json.loads((report / "report.json").read_text())
    assert saved["leakage"]["representations"]["latents"]["n_samples"] == N_GOOD

    refused = CliRunner().invoke(main, ["encode", "--engine", "ray", "--model", str(model_dir), "--utkface",
                                        str(folder), "--out", str(out), "--limit", "5"])
    assert refused.exit_code != 0 and "--limit" in refused.output


def test_a_ray_dataset_of_image_bytes_gives_the_folder_export_rows(plain_export, model_dir, folder, tmp_path):
    import ray

    from_folder, folder_out = plain_export
    dataset = ray.data.read_binary_files(str(folder), include_paths=True)  # Ray's own path column
    report = encode_dataset(model_dir, dataset, tmp_path / "dataset", id_key=KEY, workers=1, partition_rows=10)
    a = pq.read_table(folder_out).sort_by("id")
    b = pq.read_table(tmp_path / "dataset").sort_by("id")
    assert b.column_names == ["id", "latent"]  # the path column never reaches the output
    assert a.column("id").equals(b.column("id")) and a.column("latent").equals(b.column("latent"))
    assert report.counts["written"] == from_folder.counts["written"] == N_GOOD
    # the empty, the corrupt and the text file (a folder listing leaves text files out by name)
    assert report.counts["skipped"] == 3 and report.n_partitions == 3
    for part in (tmp_path / "dataset").glob("part-*.parquet"):
        ids = pq.read_table(part).column("id").to_numpy()
        assert (np.diff(ids) > 0).all() and (ids % 3 == int(part.stem[-5:]) % 3).all()  # keyed-id partitions
    again = encode_dataset(model_dir, dataset, tmp_path / "dataset", id_key=KEY, workers=1, partition_rows=10)
    assert again.partitions_written == 0


def test_uris_through_fsspec_read_and_write_like_local_paths(plain_export, model_dir, folder, tmp_path):
    """``local://`` is fsspec's local filesystem seen through pyarrow's fsspec handler: the path every
    object store (s3://, gs://, az://, ...) takes, without a network."""
    report = encode_dataset(model_dir, f"local://{folder}", f"local://{tmp_path}/out", id_key=KEY, workers=1,
                            partition_rows=8, decoder="pil")
    _, local_out = plain_export
    assert report.counts == json.loads((local_out / JOB_FILE).read_text())["counts"]
    assert not list((tmp_path / "out").glob(".*"))  # temporary objects moved into place
    for part in sorted(local_out.glob("part-*.parquet")):
        assert pq.read_table(tmp_path / "out" / part.name).equals(pq.read_table(part).replace_schema_metadata(
            pq.read_table(tmp_path / "out" / part.name).schema.metadata))
    ids, latents = read_embedding_parquet(f"local://{tmp_path}/out")
    assert len(ids) == N_GOOD and latents.shape == (N_GOOD, 16)
