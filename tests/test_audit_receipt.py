"""Audit receipts: attached atomically without touching the rows; bafo verify refuses missing, stale, failing."""

import decimal
import hashlib
import json
import os
import stat

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner

from bafo_pipeline.audits.receipt import RECEIPT_KEY, attach_receipt, check_receipt, read_receipt
from bafo_pipeline.cli import main
from bafo_pipeline.io import read_latents, write_latents
from bafo_pipeline.io import footer
from bafo_pipeline.io.footer import data_fingerprint, read_footer_metadata, set_footer_metadata

AUDIT = ["--folds", "3"]


def _export(path, rng, n=400, leak=0.0, model="m-1"):
    people = pd.DataFrame({
        "age": rng.integers(1, 90, n).astype(float),
        "gender": rng.choice(["female", "male"], n),
        "ethnicity": rng.choice(["white", "black", "asian"], n),
    })
    Z = rng.normal(size=(n, 6)).astype(np.float32)
    Z[:, 0] += leak * (people["gender"] == "male")
    write_latents(path, [(np.arange(n), Z, people)], metadata={"model_fingerprint": model},
                  label_schema={"age": "float64", "gender": "string", "ethnicity": "string"}, overwrite=True)
    return Z


def _verify(path, *extra):
    return CliRunner().invoke(main, ["verify", str(path), *extra])


@pytest.fixture(scope="module")
def audited(tmp_path_factory):
    root = tmp_path_factory.mktemp("receipt")
    rng = np.random.default_rng(0)
    path = root / "z.parquet"
    Z = _export(path, rng, leak=0.8)
    before = data_fingerprint(path)
    result = CliRunner().invoke(main, ["audit", "--latents", str(path), "--out", str(root / "report"), "--attach",
                                       *AUDIT])
    assert result.exit_code == 0, result.output
    return root, path, Z, before


def test_the_receipt_records_the_verdict_and_leaves_the_rows_alone(audited):
    _, path, Z, before = audited
    receipt = read_receipt(path)
    assert receipt["data_fingerprint"] == before == data_fingerprint(path)
    assert receipt["model_fingerprint"] == "m-1" and receipt["representation"] == "z"
    assert {r["attribute"] for r in receipt["worst_case"]} == {"age", "age_band", "gender", "ethnicity"}
    gender = next(r for r in receipt["worst_case"] if r["attribute"] == "gender")
    assert gender["ci_low"] <= gender["leakage"] <= gender["ci_high"] and gender["leakage"] > 0.2
    assert receipt["probes"] == ["prior", "linear", "mlp", "gbdt", "quadratic", "knn"] and receipt["attackers"] == ["cross-validated"]
    assert {c["channel"] for c in receipt["side_channels"]} == {"id", "row order"}
    assert receipt["created_at"].endswith("+00:00")
    table = read_latents(path)  # the file still reads as latents, same rows, same bafo metadata
    np.testing.assert_array_equal(table.latents, Z)
    assert table.metadata["model_fingerprint"] == "m-1"
    assert not list(path.parent.glob(".*.tmp"))


def test_verify_passes_and_fails_on_the_threshold(audited):
    _, path, _, _ = audited
    passed = _verify(path, "--max-leakage", "0.9")
    assert passed.exit_code == 0 and "OK" in passed.output
    failed = _verify(path, "--max-leakage", "0.1")
    assert failed.exit_code == 1 and "gender: worst-case leakage" in failed.output and "FAILED" in failed.output
    upper = check_receipt(path, 0.9, bound="upper")
    estimate = check_receipt(path, 0.9)
    assert estimate.status == "ok" and upper.status in ("ok", "failing")


def test_verify_says_missing_and_stale(audited, tmp_path):
    _, path, _, _ = audited
    rng = np.random.default_rng(1)
    plain = tmp_path / "plain.parquet"
    _export(plain, rng)
    missing = _verify(plain, "--max-leakage", "0.5")
    assert missing.exit_code == 3 and "NO RECEIPT" in missing.output
    # The same rows with the receipt copied over: fresh. One value changed: stale.
    copy = tmp_path / "copy.parquet"
    table = pq.read_table(path)
    pq.write_table(table, copy)
    assert _verify(copy, "--max-leakage", "0.9").exit_code == 0
    latent = table.column("latent").to_pylist()
    latent[5][0] += 1.0
    changed = table.set_column(table.schema.get_field_index("latent"), table.schema.field("latent"),
                               pa.array(latent, table.schema.field("latent").type))
    pq.write_table(changed, copy)
    stale = _verify(copy, "--max-leakage", "0.9")
    assert stale.exit_code == 4 and "STALE" in stale.output and "changed after the audit" in stale.output
    # Another model's fingerprint in the metadata (the rows unchanged): stale too.
    meta = json.loads(table.schema.metadata[b"bafo"])
    renamed = table.replace_schema_metadata({**table.schema.metadata, b"bafo": json.dumps({**meta,
                                             "model_fingerprint": "m-2"}).encode()})
    pq.write_table(renamed, copy)
    assert check_receipt(copy).status == "stale"
    unreadable = tmp_path / "garbage.parquet"
    unreadable.write_bytes(b"not parquet")
    assert _verify(unreadable).exit_code == 2


def test_a_leaking_side_channel_fails_verify_whatever_the_threshold(tmp_path):
    rng = np.random.default_rng(2)
    path = tmp_path / "sorted.parquet"
    n = 600
    people = pd.DataFrame({"age": np.sort(rng.integers(1, 90, n)).astype(float),  # ids rise with age
                           "gender": rng.choice(["female", "male"], n),
                           "ethnicity": rng.choice(["white", "black", "asian"], n)})
    write_latents(path, [(np.arange(n), rng.normal(size=(n, 4)).astype(np.float32), people)],
                  label_schema={"age": "float64", "gender": "string", "ethnicity": "string"})
    result = CliRunner().invoke(main, ["audit", "--latents", str(path), "--out", str(tmp_path / "r"), "--attach",
                                       *AUDIT])
    assert result.exit_code == 1  # the audit itself fails, and still attaches its (failing) receipt
    assert read_receipt(path)["side_channels_leak"]
    check = _verify(path, "--max-leakage", "0.99")
    assert check.exit_code == 1 and "side channel id reveals age" in check.output


def test_a_file_changed_during_the_audit_gets_no_receipt(tmp_path):
    rng = np.random.default_rng(3)
    path = tmp_path / "z.parquet"
    _export(path, rng)
    receipt = {"kind": "bafo-audit-receipt", "version": 1, "data_fingerprint": data_fingerprint(path)}
    _export(path, rng)  # rewritten with other rows after the audit read it
    with pytest.raises(ValueError, match="changed while it was being audited"):
        attach_receipt(path, receipt)
    assert RECEIPT_KEY not in read_footer_metadata(path)


def test_data_fingerprint_ignores_layout_and_footer_but_not_rows(tmp_path):
    rng = np.random.default_rng(4)
    n = 1000
    table = pa.table({"id": pa.array([f"r{i}" for i in range(n)]),
                      "latent": pa.FixedSizeListArray.from_arrays(pa.array(rng.random(n * 3).astype(np.float32)), 3),
                      "note": pa.array([None if i % 7 else "x" for i in range(n)], pa.string())})
    pq.write_table(table, tmp_path / "a.parquet", row_group_size=100)
    pq.write_table(table, tmp_path / "b.parquet", row_group_size=777, compression="zstd")
    assert data_fingerprint(tmp_path / "a.parquet") == data_fingerprint(tmp_path / "b.parquet")
    assert set_footer_metadata(tmp_path / "a.parquet", {"k": "v"}) == data_fingerprint(tmp_path / "a.parquet")
    assert read_footer_metadata(tmp_path / "a.parquet")["k"] == "v"
    assert pq.ParquetFile(tmp_path / "a.parquet").metadata.num_row_groups == 10
    pq.write_table(table.slice(0, n - 1), tmp_path / "c.parquet")
    pq.write_table(table.take(np.r_[1, 0, 2:n]), tmp_path / "d.parquet")  # two rows swapped
    others = {data_fingerprint(tmp_path / name) for name in ("c.parquet", "d.parquet")}
    assert data_fingerprint(tmp_path / "b.parquet") not in others and len(others) == 2


def _typed_table(n=300, nulls=False, changed_row=None):
    """Columns numpy holds as Python objects: fixed-size binary, map, decimal, time, string view."""
    def value(i):
        return i + 1000 if i == changed_row else i

    def missing(i, every):
        return nulls and i % every == 0

    return pa.table({
        "uuid": pa.array([None if missing(i, 7) else value(i).to_bytes(16, "little") for i in range(n)],
                         pa.binary(16)),
        "tags": pa.array([None if missing(i, 5) else [(str(value(i)), i)] * (1 + i % 3) for i in range(n)],
                         pa.map_(pa.string(), pa.int64())),
        "price": pa.array([None if missing(i, 4) else decimal.Decimal(value(i)) / 10 for i in range(n)],
                          pa.decimal128(9, 1)),
        "at": pa.array([None if missing(i, 6) else value(i) for i in range(n)], pa.int32()).view(pa.time32("s")),
        "name": pa.array([None if missing(i, 3) else f"n{value(i)}" for i in range(n)], pa.string_view()),
    })


@pytest.mark.parametrize("nulls", [False, True], ids=["no-nulls", "nulls"])
@pytest.mark.parametrize("column", ["uuid", "tags", "price", "at", "name"])
def test_data_fingerprint_of_object_typed_columns_is_stable_and_sees_changes(tmp_path, column, nulls):
    table = _typed_table(nulls=nulls).select([column])
    pq.write_table(table, tmp_path / "a.parquet", row_group_size=100)
    pq.write_table(table, tmp_path / "b.parquet", row_group_size=77)
    pq.write_table(_typed_table(nulls=nulls, changed_row=1).select([column]), tmp_path / "c.parquet",
                   row_group_size=100)
    fingerprints = {data_fingerprint(tmp_path / "a.parquet") for _ in range(5)}
    assert fingerprints == {data_fingerprint(tmp_path / "b.parquet")}
    assert data_fingerprint(tmp_path / "c.parquet") not in fingerprints
    assert set_footer_metadata(tmp_path / "a.parquet", {"k": "v"}) in fingerprints


def test_data_fingerprint_refuses_a_type_it_cannot_hash():
    union = pa.UnionArray.from_sparse(pa.array([0, 1], pa.int8()), [pa.array([1, 2]), pa.array(["a", "b"])])
    with pytest.raises(ValueError, match="cannot fingerprint column type sparse_union"):
        footer._update(hashlib.sha256(), union)


@pytest.mark.parametrize("mode", [0o600, 0o640, 0o444], ids=oct)
def test_set_footer_metadata_keeps_the_file_mode(tmp_path, mode):
    path = tmp_path / "z.parquet"
    _export(path, np.random.default_rng(5), n=20)
    os.chmod(path, mode)
    set_footer_metadata(path, {"k": "v"})
    assert stat.S_IMODE(os.stat(path).st_mode) == mode and read_footer_metadata(path)["k"] == "v"


def test_set_footer_metadata_refuses_a_file_replaced_meanwhile(tmp_path, monkeypatch):
    path = tmp_path / "z.parquet"
    rng = np.random.default_rng(6)
    _export(path, rng, n=20)
    fingerprint = footer.data_fingerprint

    def replaced_while_copying(source):
        if source != path:  # the rewritten copy is being checked: another writer replaces the file now
            _export(path, rng, n=30)
        return fingerprint(source)

    monkeypatch.setattr(footer, "data_fingerprint", replaced_while_copying)
    with pytest.raises(ValueError, match="was replaced or removed while its footer was being rewritten"):
        set_footer_metadata(path, {"k": "v"})
    assert "k" not in read_footer_metadata(path) and pq.ParquetFile(path).metadata.num_rows == 30
    assert sorted(p.name for p in tmp_path.iterdir()) == ["z.parquet"]
