"""The audit reads datasets: folders (plain and hive-partitioned), globs and URIs; other tools' embedding
columns; stratified samples of datasets too large for memory."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner

from bafo_pipeline.audits import read_embedding_parquet, read_labels, run_audit_files
from bafo_pipeline.audits.sampling import stratified_sample
from bafo_pipeline.cli import main
from bafo_pipeline.io import read_latents, read_metadata

OPTIONS = {"probes": ("prior", "linear"), "n_bootstrap": 50, "n_permutations": 50, "n_folds": 3}
N = 300


@pytest.fixture(scope="module")
def data():
    """Embeddings that leak gender through dimension 0, with their labels."""
    rng = np.random.default_rng(0)
    gender = rng.choice(["female", "male"], N, p=[0.3, 0.7])
    Z = rng.normal(size=(N, 4)).astype(np.float32)
    Z[:, 0] += 2.0 * (gender == "male")
    ids = rng.permutation(10_000)[:N].astype(np.int64)
    labels = pd.DataFrame({"id": ids, "gender": gender, "age": rng.uniform(1, 90, N).round(),
                           "split": np.where(np.arange(N) % 3 == 0, "test", "train")})
    return ids, Z, labels


def _table(ids, Z, column="latent", fixed=True):
    values = pa.array(Z.ravel(), pa.float32())
    lists = pa.FixedSizeListArray.from_arrays(values, Z.shape[1]) if fixed else pa.ListArray.from_arrays(
        pa.array(np.arange(0, Z.size + 1, Z.shape[1]), pa.int32()), values)
    return pa.table({"id": ids, column: lists})


def _hive(root, ids, Z, labels):
    """A hive-partitioned dataset (split=train/, split=test/) of latents and labels, plus non-data files."""
    table = _table(ids, Z).append_column("gender", pa.array(labels["gender"])).append_column(
        "split", pa.array(labels["split"]))
    pq.write_to_dataset(table, root, partition_cols=["split"])
    (root / "_bafo_job.json").write_text("{}")
    (root / "split=test" / ".part-00001.parquet.abc.tmp").write_bytes(b"half")
    return root


def test_a_hive_partitioned_folder_a_glob_and_a_uri_read_the_same_rows(tmp_path, data):
    ids, Z, labels = data
    root = _hive(tmp_path / "hive", ids, Z, labels)
    by_id = dict(zip(ids.tolist(), Z))
    for source in (root, f"{root}/split=*/*.parquet", f"file://{root}", f"{root}/**/*.parquet"):
        got_ids, got = read_embedding_parquet(source)
        assert sorted(got_ids.tolist()) == sorted(ids.tolist()), source
        for i, z in zip(got_ids.tolist(), got):
            np.testing.assert_array_equal(z, by_id[i])
    # the job file and the temporary file beside the data are not read (they are not Parquet)
    assert read_metadata(root) == {} and len(read_latents(root).ids) == N
    # the hive key is a column of the labels read beside the embeddings
    read = read_labels(root)
    assert set(read.columns) >= {"id", "gender", "split"} and len(read) == N
    assert dict(zip(read["id"], read["split"])) == dict(zip(labels["id"], labels["split"]))


def test_missing_and_empty_sources_are_clear_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        read_embedding_parquet(tmp_path / "nothing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="no Parquet files"):
        read_embedding_parquet(tmp_path / "empty")


def test_an_embedding_list_column_of_another_tool_is_read(tmp_path, data):
    ids, Z, labels = data
    table = _table(ids, Z, column="embedding", fixed=False).append_column("age", pa.array(labels["age"]))
    pq.write_table(table, tmp_path / "other.parquet")
    for column in (None, "embedding"):  # the only list column, or named
        got_ids, got = read_embedding_parquet(tmp_path / "other.parquet", latent_column=column)
        np.testing.assert_array_equal(got, Z)
    with pytest.raises(ValueError, match="no embedding column 'vector'"):
        read_embedding_parquet(tmp_path / "other.parquet", latent_column="vector")
    two = table.append_column("other", table.column("embedding"))
    pq.write_table(two, tmp_path / "two.parquet")
    with pytest.raises(ValueError, match="--latent-column"):
        read_embedding_parquet(tmp_path / "two.parquet")


def test_label_columns_of_a_wide_file_are_not_embedding_dimensions(tmp_path, data):
    ids, Z, labels = data
    wide = pd.DataFrame({"id": ids, **{f"z{j}": Z[:, j] for j in range(4)}, "age": labels["age"],
                         "gender": labels["gender"]})
    wide.to_parquet(tmp_path / "wide.parquet")
    rep = run_audit_files([tmp_path / "wide.parquet"], None, attributes=["age", "gender"], **OPTIONS)
    worst = rep.worst_case().set_index(["representation", "attribute"]).loc["wide"]  # the embedding, not side channels
    # age is not in Z: were the age column a feature, a linear probe would read it perfectly
    assert worst.loc["age", "leakage"] < 0.3 and worst.loc["gender", "leakage"] > 0.5


def test_stratified_sample_keeps_every_group_share(data):
    _, _, labels = data
    labels = pd.concat([labels, labels.assign(gender="other").iloc[:7]], ignore_index=True)  # a small group
    for columns in (["gender"], ["gender", "age"]):
        chosen = stratified_sample(labels, columns, 100, random_state=1)
        assert len(chosen) == 100 and len(set(chosen)) == 100
        # every stratum (joint group; age cut at its quintiles) within one row of its proportional share
        strata = labels["gender"] + (pd.qcut(labels["age"].rank(method="first"), 5, labels=False).astype(str)
                                     if "age" in columns else "")
        expected = strata.value_counts(normalize=True) * 100
        got = strata.iloc[chosen].value_counts()
        assert all(abs(got.get(group, 0) - share) < 1.0 + 1e-9 for group, share in expected.items()), (got, expected)
        assert got.get("other", 0) + sum(got.get(f"other{k}", 0) for k in range(5)) >= 2  # the small group is kept
    again = stratified_sample(labels, ["gender"], 100, random_state=1)
    assert (again == stratified_sample(labels, ["gender"], 100, random_state=1)).all()
    assert not (again == stratified_sample(labels, ["gender"], 100, random_state=2)).all()
    assert len(stratified_sample(labels, ["gender"], 10_000)) == len(labels)


def test_audit_of_a_sample_reads_only_the_sampled_rows_and_says_so(tmp_path, data):
    ids, Z, labels = data
    root = _hive(tmp_path / "hive", ids, Z, labels)
    labels[["id", "gender"]].to_csv(tmp_path / "labels.csv", index=False)
    rep = run_audit_files([root], tmp_path / "labels.csv", tmp_path / "report", sample=120, attributes=["gender"], **OPTIONS)
    assert rep.leakage.representations["hive"]["n_samples"] == 120
    note = rep.leakage.warnings[0]
    assert "stratified sample of 120 of 300 rows" in note
    saved = json.loads((tmp_path / "report" / "report.json").read_text())
    assert note in json.dumps(saved)
    worst = rep.worst_case().set_index(["representation", "attribute"])
    assert worst.loc[("hive", "gender"), "leakage"] > 0.5  # still sees the leak


def test_cli_audits_a_dataset_folder_with_a_sample(tmp_path, data):
    ids, Z, labels = data
    root = _hive(tmp_path / "hive", ids, Z, labels)
    result = CliRunner().invoke(main, ["audit", "--latents", str(root), "--attributes", "gender", "--sample", "90",
                                       "--folds", "3", "--out", str(tmp_path / "report")])
    assert result.exit_code == 0, result.output
    assert "stratified sample of 90 of 300 rows" in result.output
    result = CliRunner().invoke(main, ["audit", "--latents", str(tmp_path / "absent"), "--out", str(tmp_path / "r2")])
    assert result.exit_code != 0 and "does not exist" in result.output and "Traceback" not in result.output


def test_data_rich_attacker_reads_a_training_dataset_folder_and_receipts_need_one_file(tmp_path, data):
    ids, Z, labels = data
    train = _hive(tmp_path / "train", ids, Z, labels)  # a folder: the training export of a distributed job
    test_ids = ids + 20_000
    pq.write_table(_table(test_ids, Z).append_column("gender", pa.array(labels["gender"])), tmp_path / "test.parquet")
    rep = run_audit_files([tmp_path / "test.parquet"], None, fit_latents=[train], attributes=["gender"], **OPTIONS)
    rich = rep.leakage.value("test", "gender", "linear", "leakage", "data-rich")  # fitted on the folder
    assert rich["n"] == N and rich["mean"] > 0.5
    assert rep.leakage.representations["test"]["n_training_samples"] == N
    with pytest.raises(ValueError, match="one Parquet file"):
        run_audit_files([train], None, attach=True, attributes=["gender"], **OPTIONS)
