"""End to end: Parquet latents + CSV labels -> report files, the gate, progress."""

import io
import json

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from bafo_pipeline.audits import AuditResult, read_embedding_parquet, run_audit, run_audit_files

OPTIONS = {"probes": ("prior", "linear", "gbdt"), "n_bootstrap": 100, "n_permutations": 100, "n_folds": 3}


def _write_latents(path, ids, Z):
    flat = pa.array(np.asarray(Z, dtype=np.float32).ravel(), pa.float32())
    latent = pa.FixedSizeListArray.from_arrays(flat, Z.shape[1])
    pq.write_table(pa.table({"id": pa.array(ids), "latent": latent}), path)


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    rng = np.random.default_rng(0)
    n = 600
    root = tmp_path_factory.mktemp("audit")
    ids = np.arange(n)
    gender = rng.choice(["female", "male"], n)
    labels = pd.DataFrame(
        {
            "id": [f"{i:05d}" for i in ids],  # text ids with leading zeros, as a CSV may hold
            "age": rng.uniform(1, 90, n).round(),
            "gender": gender,
            "ethnicity": rng.choice(["white", "black", "asian"], n),
            "smile": rng.integers(0, 2, n),
        }
    )
    labels.to_csv(root / "labels.csv", index=False)
    leaky = rng.normal(size=(n, 6))
    leaky[:, 0] += 2.0 * (gender == "male")
    blind = rng.normal(size=(n, 6))
    order = rng.permutation(n)  # the files list samples in different orders
    _write_latents(root / "leaky.parquet", [f"{i:05d}" for i in ids], leaky)
    _write_latents(root / "blind.parquet", [f"{i:05d}" for i in ids[order]], blind[order])
    return root


@pytest.fixture(scope="module")
def report(files):
    calls = []
    rep = run_audit_files(
        [files / "leaky.parquet", files / "blind.parquet"],
        files / "labels.csv",
        files / "out",
        target="smile",
        progress=lambda done, total, text: calls.append((done, total, text)),
        **OPTIONS,
    )
    return rep, calls


def test_report_files_are_written(files, report):
    rep, _ = report
    out = files / "out"
    assert {p.name for p in out.iterdir()} == {"report.json", "report.html", "leakage.png", "fairness.png"}
    data = json.loads((out / "report.json").read_text())
    assert data["schema_version"] == 2 and data["leakage"]["schema_version"] == 2
    assert "NaN" not in (out / "report.json").read_text()
    represented = data["leakage"]["representations"]
    assert {n for n, v in represented.items() if v.get("role") != "side channel"} == {"leaky", "blind"}
    # Each file's ids and row order are audited too, as side channels.
    assert {n for n, v in represented.items() if v.get("role") == "side channel"} == {
        "leaky · id", "leaky · row order", "blind · id", "blind · row order"
    }
    assert {(c["of"], c["channel"]) for c in data["side_channels"]} >= {("leaky", "id"), ("blind", "row order")}
    assert [f["representation"] for f in data["fairness"]] == ["leaky", "blind"]
    html = (out / "report.html").read_text()
    for verdict in rep.worst_case()["verdict"]:
        assert verdict.split(":")[0] in html
    assert (out / "leakage.png").read_bytes().startswith(b"\x89PNG")


def test_side_by_side_and_gate(report):
    rep, _ = report
    worst = rep.worst_case().set_index(["representation", "attribute"])
    assert worst.loc[("leaky", "gender"), "leakage"] > 0.5
    assert worst.loc[("leaky", "gender"), "p_value"] < 0.05
    assert worst.loc[("blind", "gender"), "leakage"] < 0.1
    assert rep.exceeds(0.3)
    assert not rep.exceeds(0.3, representation="blind")
    assert rep.leakage.max_leakage("leaky") == pytest.approx(worst.loc["leaky", "leakage"].max())
    with pytest.raises(KeyError, match="unknown representation"):
        rep.exceeds(0.3, representation="other")


def test_progress_reports_every_fit(report):
    rep, calls = report
    embeddings = 2 * 4 * 3 * 3  # representations x attributes (age, age_band, gender, ethnicity) x probes x folds
    side_channels = 2 * 2 * 4 * 2 * 3  # files x (id, row order) x attributes x (linear, knn) x folds
    total = embeddings + side_channels
    assert [c[0] for c in calls] == list(range(1, total + 1))
    assert all(c[1] == embeddings for c in calls[:embeddings]) and calls[-1][1] == total
    assert calls[0][2] == "leaky/age: prior fold 1/3"


def test_report_json_reloads(files, report):
    rep, _ = report
    again = AuditResult.from_json(files / "out" / "report.json")
    assert again.worst_case()["leakage"].tolist() == pytest.approx(rep.worst_case()["leakage"].tolist())
    assert again.exceeds(0.3) == rep.exceeds(0.3)


def test_tqdm_progress_and_quiet_by_default(capsys):
    from tqdm import tqdm

    rng = np.random.default_rng(1)
    labels = pd.DataFrame({"gender": rng.choice(["f", "m"], 120)})
    sink = io.StringIO()
    with tqdm(file=sink) as bar:
        run_audit(rng.normal(size=(120, 3)), labels, progress=bar, probes=("prior",), n_folds=3)
        assert bar.n == 3 and bar.total == 3
    assert "latents/gender" in sink.getvalue()
    run_audit(rng.normal(size=(120, 3)), labels, probes=("prior",), n_folds=3)
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err == ""


def test_embedding_reader(tmp_path):
    Z = np.arange(12, dtype=np.float32).reshape(4, 3)
    _write_latents(tmp_path / "a.parquet", [1, 2, 3, 4], Z)
    ids, got = read_embedding_parquet(tmp_path / "a.parquet")
    assert list(ids) == [1, 2, 3, 4] and np.array_equal(got, Z)
    pq.write_table(pa.table({"key": [1, 2], "f0": [0.1, 0.2], "f1": [1.0, 2.0]}), tmp_path / "wide.parquet")
    ids, got = read_embedding_parquet(tmp_path / "wide.parquet", id_column="key")
    assert got.shape == (2, 2)
    with pytest.raises(ValueError, match="no id column 'id'"):
        read_embedding_parquet(tmp_path / "wide.parquet")
    ragged = pa.array([[0.0, 1.0], [2.0]], pa.list_(pa.float32()))
    pq.write_table(pa.table({"id": [1, 2], "latent": ragged}), tmp_path / "ragged.parquet")
    with pytest.raises(ValueError, match="row 1 has 1 'latent' values, row 0 has 2"):
        read_embedding_parquet(tmp_path / "ragged.parquet")
    (tmp_path / "junk.parquet").write_text("not parquet")
    with pytest.raises(ValueError, match="not a readable Parquet file"):
        read_embedding_parquet(tmp_path / "junk.parquet")


def test_labels_can_come_from_the_latents_file(tmp_path):
    rng = np.random.default_rng(2)
    Z = rng.normal(size=(90, 3)).astype(np.float32)
    table = pa.table(
        {
            "id": np.arange(90),
            "latent": pa.FixedSizeListArray.from_arrays(pa.array(Z.ravel()), 3),
            "gender": rng.choice(["f", "m"], 90),
        }
    )
    pq.write_table(table, tmp_path / "z.parquet")
    rep = run_audit_files([tmp_path / "z.parquet"], None, probes=("prior",), n_folds=3)
    assert list(rep.leakage.attributes) == ["gender"] and rep.paths == {}


def test_out_dir_that_is_a_file_is_refused(tmp_path):
    rng = np.random.default_rng(3)
    (tmp_path / "taken").write_text("x")
    with pytest.raises(NotADirectoryError):
        run_audit(
            rng.normal(size=(60, 2)),
            pd.DataFrame({"gender": rng.choice(["f", "m"], 60)}),
            tmp_path / "taken",
            probes=("prior",),
            n_folds=3,
        )
