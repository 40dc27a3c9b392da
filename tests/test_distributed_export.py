"""encode_dataset on a local Ray cluster: the in-process export's rows and latents, ids that reveal nothing,
bad files counted, resumption after a killed job, no path or label in the output, a private key table."""

from __future__ import annotations

import io
import json
import os
import shutil
import signal
import stat
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

from bafo_pipeline import BAFOTransformer, export_latents, make_synthetic_faces, read_latents, save_model
from bafo_pipeline.data import load_id_key, pseudonymous_ids, scan_source
from bafo_pipeline.data.splits import content_hash
from bafo_pipeline.pipeline.distributed import PartitionFailed, encode_dataset
from bafo_pipeline.pipeline.job_folder import JOB_FILE, PLAN_FILE
from bafo_pipeline.transformers import load_model

pytest.importorskip("ray")

SIZE = 32
KEY = bytes(range(32))
N_FACES = 24


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


def _utkface_name(i: int, faces, age=None) -> str:
    age = int(faces.sensitive_features["age"].iloc[i]) if age is None else age
    gender = 1 if faces.sensitive_features["gender"].iloc[i] == "female" else 0
    return f"{age}_{gender}_{i % 5}_20170116{i:06d}.jpg.chip.jpg"


@pytest.fixture(scope="module")
def folder(faces, tmp_path_factory):
    """24 faces as UTKFace-named JPEGs (labels in the names), a corrupt, an empty and a non-image file, a copy of
    face 0 under the same labels and two copies of face 1 under other labels (the scan keeps one of the first,
    none of the second)."""
    root = tmp_path_factory.mktemp("faces")
    for i, image in enumerate(faces.images[:N_FACES]):
        Image.fromarray(image).resize((3 * SIZE, 3 * SIZE), Image.Resampling.BICUBIC).save(root / _utkface_name(i, faces), quality=90)
    first = (root / _utkface_name(0, faces)).read_bytes()
    (root / "41_0_3_20170119000001.jpg.chip.jpg").write_bytes(first[:150])  # header, then nothing
    (root / "52_1_1_20170119000002.jpg.chip.jpg").write_bytes(b"")
    (root / "notes.txt").write_text("not an image")
    shutil.copy(root / _utkface_name(0, faces), root / _utkface_name(0, faces).replace("20170116", "20180116"))
    shutil.copy(root / _utkface_name(1, faces), root / _utkface_name(1, faces, age=99).replace("20170116", "20190116"))
    return root


N_WRITTEN = N_FACES - 1  # face 1 has conflicting copies: every copy is dropped


@pytest.fixture(scope="module")
def plain_export(ray_cluster, model_dir, folder, tmp_path_factory):
    """The folder exported by 2 actors into 3 partitions: ids and latents only."""
    out = tmp_path_factory.mktemp("plain") / "latents"
    return encode_dataset(model_dir, out, utkface=folder, id_key=KEY, workers=2, partition_rows=8, decoder="pil"), out


def test_the_rows_and_latents_are_those_of_the_in_process_export(plain_export, model_dir, folder, tmp_path):
    report, out = plain_export
    source, scan = scan_source(utkface=folder, image_size=SIZE)
    local = tmp_path / "local.parquet"
    export_latents(load_model(model_dir), source, local, ids=pseudonymous_ids(source.content_hash, KEY), decoder="pil")
    expected, got = read_latents(local), read_latents(out)
    assert report.n_partitions == 3 and len(list(out.glob("part-*.parquet"))) == 3
    assert report.job["actor_model"] == ["encoder bundle"]  # the actors encoded with torch alone
    assert sorted(got.ids) == sorted(expected.ids) and len(got.ids) == N_WRITTEN
    by_id = dict(zip(expected.ids.tolist(), expected.latents))
    for part in sorted(out.glob("part-*.parquet")):
        table = read_latents(part)
        for i, latent in zip(table.ids.tolist(), table.latents):
            if len(table) >= 4:  # one batch of 4+ images, as in-process: bit-identical
                np.testing.assert_array_equal(latent, by_id[i])
            else:  # on a CPU, bfloat16 autocast takes other kernels for batches of 1-3 images
                np.testing.assert_allclose(latent, by_id[i], rtol=0, atol=1e-6)
    counts = report.counts
    assert (counts["duplicates_dropped"], counts["conflicting_files_dropped"]) == (1, 2) == (
        scan.duplicates_dropped, scan.conflicting_files_dropped)
    # the same schema as the in-process file, and the model fingerprint in every file
    local_schema = pq.read_schema(local)
    for part in sorted(out.glob("part-*.parquet")):
        schema = pq.read_schema(part)
        assert schema.names == ["id", "latent"] and schema.types == local_schema.types
        meta = json.loads(schema.metadata[b"bafo"])
        assert meta["model_fingerprint"] == report.job["model_fingerprint"]
        assert meta["precision"] == json.loads(local_schema.metadata[b"bafo"])["precision"]


def test_ids_partitions_and_row_order_come_from_the_content_not_the_names(plain_export, model_dir, folder, tmp_path):
    """Renamed files (other labels in the names, another name order) get the same ids, rows and partitions."""
    _, out = plain_export
    renamed = tmp_path / "renamed"
    renamed.mkdir()
    rng = np.random.default_rng(0)
    for i, path in enumerate(sorted(folder.glob("*_20170116*.jpg.chip.jpg"))):  # the 24 faces, once each
        shutil.copy(path, renamed / f"{rng.integers(1, 99)}_{i % 2}_{(i * 3) % 5}_{rng.integers(1e9)}.jpg.chip.jpg")
    report = encode_dataset(model_dir, tmp_path / "b", images=renamed, id_key=KEY, workers=1, partition_rows=8)
    a, b = pq.read_table(out), pq.read_table(tmp_path / "b")
    assert set(a.column("id").to_pylist()) <= set(b.column("id").to_pylist())
    for part in sorted(out.glob("part-*.parquet")):
        ids = pq.read_table(part).column("id").to_numpy()
        assert (np.diff(ids) > 0).all()  # written in id order (a keyed hash), never in name order
        other = tmp_path / "b" / part.name
        assert set(ids) <= set(pq.read_table(other).column("id").to_numpy())  # same partition, whatever the names
    assert report.counts["written"] == len(b)


def test_bad_files_are_skipped_with_reasons_and_their_partition_keeps_its_good_rows(plain_export):
    report, out = plain_export
    counts = report.counts
    assert counts["planned"] == N_WRITTEN + 1 and counts["written"] == N_WRITTEN and counts["skipped"] == 3
    reasons = sorted(counts["skipped_by_reason"])  # the scan's two (names, not values), then the decoder's
    assert reasons[:2] == ["empty file (0 bytes)", "not an image file name (extension '…')"]
    assert reasons[2].startswith("truncated image data") and counts["skipped_while_scanning"] == 2
    assert all(item["source"].startswith("file ") for item in counts["skipped_items"])
    job = json.loads((out / JOB_FILE).read_text())
    assert job["counts"] == counts and sum(f["rows"] for f in job["files"]) == N_WRITTEN
    truncated = [json.loads(p.read_text()) for p in out.glob("_bafo_part-*.json")]
    broken = [s for s in truncated if s["skipped_by_reason"]]
    assert len(broken) == 1 and broken[0]["rows_written"] == broken[0]["rows_read"] - 1 > 0


def test_strict_stops_at_a_bad_file_and_names_it(ray_cluster, model_dir, folder, tmp_path):
    some = tmp_path / "some"
    some.mkdir()
    for path in [*sorted(folder.glob("*_20170116*"))[:5], folder / "41_0_3_20170119000001.jpg.chip.jpg"]:
        shutil.copy(path, some / path.name)
    with pytest.raises(PartitionFailed, match="41_0_3_20170119000001.*truncated"):  # the decoder's stop, named
        encode_dataset(model_dir, tmp_path / "strict", images=some, id_key=KEY, workers=1, strict=True)
    assert not (tmp_path / "strict" / JOB_FILE).exists()
    with pytest.raises(ValueError, match="empty file"):  # the scan stops at an empty file before any encoding
        encode_dataset(model_dir, tmp_path / "strict2", utkface=folder, id_key=KEY, workers=1, strict=True)


def test_no_path_name_or_label_leaves_through_any_file(plain_export, folder):
    _, out = plain_export
    names = [p.name for p in folder.iterdir()]
    for path in out.iterdir():
        if path.suffix == ".parquet":
            assert pq.read_schema(path).names == ["id", "latent"]  # no labels unless asked, no path column
        text = path.read_bytes().decode("latin-1")
        for name in names:
            assert name not in text and name.split(".")[0] not in text, f"{name} leaked into {path.name}"
        assert str(folder) not in text and folder.name not in text


def test_manifest_rows_are_ids_and_paths_outside_are_refused(ray_cluster, model_dir, folder, tmp_path):
    files = sorted(p.name for p in folder.glob("*_20170116*.jpg.chip.jpg"))  # the 24 faces, once each
    base = folder.parent
    rows = [{"path": f"{folder.name}/{name}", "smile": i % 2, "gender": "x"} for i, name in enumerate(files)]
    rows[3]["path"] = "../outside.jpg"
    rows[5]["path"] = str(folder / files[5])  # absolute, inside the manifest's folder: accepted
    manifest = base / f"manifest_{tmp_path.name}.csv"
    pd.DataFrame(rows).to_csv(manifest, index=False)
    report = encode_dataset(model_dir, tmp_path / "out", manifest=manifest, sensitive=("gender",), id_key=KEY,
                            id_from="row", include_labels=True, workers=1, partition_rows=7, decoder="torch",
                            key_table=tmp_path / "owner" / "keys.csv")
    table = pq.read_table(tmp_path / "out").to_pandas()
    assert sorted(table["id"]) == [i + 1 for i in range(len(rows)) if i != 3]  # the manifest's own data rows
    assert all(row.smile == rows[row.id - 1]["smile"] for row in table.itertuples())
    assert not (np.diff(table["id"].to_numpy()) > 0).all()  # rows are not written in manifest order
    skipped = dict(report.scan_skipped)
    assert skipped["row 4"].startswith("path leads outside the manifest's folder")
    assert report.job["decoder"] == ["torch"]
    keys = pd.read_csv(tmp_path / "owner" / "keys.csv")
    assert stat.S_IMODE((tmp_path / "owner" / "keys.csv").stat().st_mode) == 0o600
    assert sorted(keys["id"]) == sorted(table["id"]) and (keys["id"] == keys["row"]).all()
    assert all(Path(s).name == files[i - 1] for i, s in zip(keys["row"], keys["source"]))
    # the batched torch decoder (nvJPEG on a GPU; here on the CPU) gives the in-process export's latents, up to
    # float rounding: its batches hold other images here than there
    source = scan_source(manifest=manifest, sensitive=("gender",))[0]
    local = tmp_path / "local.parquet"
    export_latents(load_model(model_dir), source, local, ids=pseudonymous_ids(source.content_hash, KEY), decoder="torch")
    expected = dict(zip(*(lambda t: (t.ids.tolist(), t.latents))(read_latents(local))))
    file_of = dict(zip(keys["id"], keys["source"]))
    for row in table.itertuples():
        content_id = pseudonymous_ids([content_hash(Path(file_of[row.id]).read_bytes())], KEY)[0]
        np.testing.assert_allclose(row.latent, expected[content_id], rtol=0, atol=1e-6)
    allowed = encode_dataset(model_dir, tmp_path / "allowed", manifest=manifest, sensitive=("gender",), id_key=KEY,
                             workers=1, allow_outside_root=True)
    assert "row 4" in dict(allowed.scan_skipped) and "file not found" in dict(allowed.scan_skipped)["row 4"]


def test_a_rerun_of_a_complete_job_does_nothing_and_another_job_is_refused(plain_export, model_dir, folder, tmp_path):
    first, out = plain_export
    before = {p.name: p.stat().st_mtime_ns for p in out.iterdir()}
    again = encode_dataset(model_dir, out, utkface=folder, id_key=KEY, workers=2, partition_rows=8, decoder="pil")
    assert again.partitions_written == 0 and again.counts == first.counts
    assert before == {p.name: p.stat().st_mtime_ns for p in out.iterdir()}
    with pytest.raises(FileExistsError, match="another export"):  # other partitions: another job
        encode_dataset(model_dir, out, utkface=folder, id_key=KEY, workers=1, partition_rows=5)
    with pytest.raises(FileExistsError, match="another export"):  # another key: other ids
        encode_dataset(model_dir, out, utkface=folder, id_key=b"another key of 32 bytes........", partition_rows=8)
    assert before == {p.name: p.stat().st_mtime_ns for p in out.iterdir()}
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "mine.txt").write_text("keep me")
    with pytest.raises(FileExistsError, match="not a bafo export|not this export"):
        encode_dataset(model_dir, tmp_path / "other", utkface=folder, id_key=KEY, workers=1, overwrite=True)
    assert (tmp_path / "other" / "mine.txt").read_text() == "keep me"
    with pytest.raises(ValueError, match="inside the export"):  # a key table must not travel with the data
        encode_dataset(model_dir, out, utkface=folder, id_key=KEY, key_table=out / "keys.csv")


# ------------------------------------------------------------------ resumption after a kill
_SLOW_JOB = textwrap.dedent(
    """
    import os, signal, sys
    import ray
    from bafo_pipeline.pipeline.distributed import encode_dataset

    address, model, source, out = sys.argv[1:5]
    ray.init(address=address, log_to_driver=False, logging_level="WARNING")

    def die_after_the_first_partition(n):
        print("partition done", flush=True)
        os.kill(os.getpid(), signal.SIGKILL)  # a killed job: no cleanup, no job file

    encode_dataset(model, out, images=source, id_key=bytes(range(32)), workers=1, partition_rows=1,
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

    resumed = encode_dataset(model_dir, out, images=source, id_key=KEY, workers=1, partition_rows=1)
    done = len(list(out.glob("_bafo_part-*.json"))) - resumed.partitions_written
    assert resumed.partitions_kept == done >= 1 and resumed.partitions_kept + resumed.partitions_written == 8
    assert not list(out.glob(".*.tmp"))
    whole = encode_dataset(model_dir, tmp_path / "whole", images=source, id_key=KEY, workers=1, partition_rows=1)
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
            "--id-key-file", str(key_file), "--key-table", str(tmp_path / "owner" / "keys.parquet")]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    assert f"wrote {N_WRITTEN} latents" in result.output and "3 partitions" in result.output
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600  # the data owner's key, private
    table = pq.read_table(out).to_pandas()
    assert set(table.columns) == {"id", "latent", "split", "age", "gender", "ethnicity"}
    assert set(table["split"]) == {"train", "test"}
    owner_key = load_id_key(key_file, create=False)
    keys = pd.read_parquet(tmp_path / "owner" / "keys.parquet")
    assert stat.S_IMODE((tmp_path / "owner" / "keys.parquet").stat().st_mode) == 0o600
    source_of = dict(zip(keys["id"], keys["source"]))
    for row in table.itertuples():  # the key table says which file; the labels are those in its name
        path = Path(source_of[row.id])
        assert pseudonymous_ids([content_hash(path.read_bytes())], owner_key)[0] == row.id
        age, gender = path.name.split("_")[:2]
        assert row.age == float(age) and row.gender == ("female" if gender == "1" else "male")
    for path in out.iterdir():
        assert not any(p.name.split(".")[0] in path.read_bytes().decode("latin-1") for p in folder.iterdir())

    again = CliRunner().invoke(main, args[:-2])  # the same job again (no key table this time): nothing to redo
    assert again.exit_code == 0 and f"wrote {N_WRITTEN} latents" in again.output

    report = tmp_path / "report"
    audited = CliRunner().invoke(main, ["audit", "--latents", str(out), "--attributes", "gender", "--folds", "3",
                                        "--out", str(report)])
    assert audited.exit_code == 0, audited.output
    saved = json.loads((report / "report.json").read_text())
    assert saved["leakage"]["representations"]["latents"]["n_samples"] == N_WRITTEN

    refused = CliRunner().invoke(main, ["encode", "--engine", "ray", "--model", str(model_dir), "--utkface",
                                        str(folder), "--out", str(out), "--limit", "5"])
    assert refused.exit_code != 0 and "--limit" in refused.output


def test_a_ray_dataset_of_image_bytes_gives_the_folder_export_rows(plain_export, model_dir, folder, faces, tmp_path):
    import ray

    from_folder, folder_out = plain_export
    files = [p for p in sorted(folder.iterdir()) if p.name != "notes.txt"]
    labels = [n.name.split("_")[:2] for n in files]
    dataset = ray.data.from_items([{"bytes": p.read_bytes(), "age": float(a), "gender": g, "path": str(p)}
                                   for p, (a, g) in zip(files, labels)])  # with Ray's own path column
    report = encode_dataset(model_dir, tmp_path / "dataset", dataset=dataset, id_key=KEY, workers=1,
                            partition_rows=10, include_labels=True)
    a = pq.read_table(folder_out).sort_by("id")
    b = pq.read_table(tmp_path / "dataset").sort_by("id")
    assert b.column_names == ["id", "latent", "age", "gender"]  # the path column never reaches the output
    assert a.column("id").equals(b.column("id")) and a.column("latent").equals(b.column("latent"))
    assert report.counts["written"] == from_folder.counts["written"] == N_WRITTEN
    assert report.job["actor_model"] == ["encoder bundle"]
    reasons = report.counts["skipped_by_reason"]
    assert reasons["empty file (0 bytes)"] == 1 and reasons["duplicate of another image (same bytes)"] == 1
    assert reasons["copy of an image with conflicting labels (all copies dropped)"] == 2
    # Another dataset of the same shape (count, columns, labels): its plan cannot tell it from the first, so the
    # folder is refused, not answered with the first dataset's output, nor resumed with its partitions.
    items = dataset.take_all()
    replaced = files.index(folder / _utkface_name(5, faces))  # a face written once, with no copy
    buffer = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(np.asarray(Image.open(files[replaced]).convert("RGB"))[::-1])).save(
        buffer, format="PNG")  # the same face upside down: other bytes, other id
    items[replaced] = {**items[replaced], "bytes": buffer.getvalue()}
    other = ray.data.from_items(items)
    before = {p.name: p.stat().st_mtime_ns for p in (tmp_path / "dataset").iterdir()}
    for source in (dataset, other):
        with pytest.raises(FileExistsError, match="cannot resume or reuse"):
            encode_dataset(model_dir, tmp_path / "dataset", dataset=source, id_key=KEY, workers=1,
                           partition_rows=10, include_labels=True)
    assert before == {p.name: p.stat().st_mtime_ns for p in (tmp_path / "dataset").iterdir()}
    again = encode_dataset(model_dir, tmp_path / "dataset", dataset=other, id_key=KEY, workers=1,
                           partition_rows=10, include_labels=True, overwrite=True)
    assert again.partitions_kept == 0 and again.partitions_written == report.n_partitions
    new_id = pseudonymous_ids([content_hash(buffer.getvalue())], KEY)[0]
    ids = set(pq.read_table(tmp_path / "dataset").column("id").to_pylist())
    assert new_id in ids and new_id not in set(b.column("id").to_pylist())
    assert pseudonymous_ids([content_hash(files[replaced].read_bytes())], KEY)[0] not in ids  # the face it replaced


def test_uris_through_fsspec_read_and_write_like_local_paths(plain_export, model_dir, folder, tmp_path):
    """``local://`` is fsspec's local filesystem seen through pyarrow's fsspec handler: the path every
    object store (s3://, gs://, az://, ...) takes, without a network."""
    report = encode_dataset(model_dir, f"local://{tmp_path}/out", utkface=f"local://{folder}", id_key=KEY, workers=1,
                            partition_rows=8, decoder="pil")
    first, local_out = plain_export
    assert report.counts == first.counts
    assert not list((tmp_path / "out").glob(".*"))  # temporary objects moved into place
    ids, latents = read_latents(local_out).ids, read_latents(f"local://{tmp_path}/out").latents
    np.testing.assert_array_equal(np.sort(read_latents(f"local://{tmp_path}/out").ids), np.sort(ids))
    assert latents.shape == (N_WRITTEN, 16)
