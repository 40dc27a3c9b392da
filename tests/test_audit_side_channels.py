"""The audit checks the whole file: ids, row order, other columns and footer metadata, never labels as dimensions."""

import json

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner

from bafo_pipeline.audits import run_audit_files
from bafo_pipeline.audits.file_metadata import describe_footer
from bafo_pipeline.audits.result import SIDE_CHANNEL_ALPHA
from bafo_pipeline.audits.side_channels import adjacency_test, side_channels_of_table
from bafo_pipeline.cli import main

FAST = {"probes": ("prior", "linear"), "n_bootstrap": 100, "n_permutations": 100, "n_folds": 3}


def _people(n, rng):
    return pd.DataFrame({
        "age": rng.integers(1, 90, n).astype(float),
        "gender": rng.choice(["female", "male"], n),
        "ethnicity": rng.choice(["white", "black", "asian", "indian", "others"], n),
    })


def _latent(Z):
    return pa.FixedSizeListArray.from_arrays(pa.array(np.asarray(Z, np.float32).ravel()), Z.shape[1])


def _utkface_ordered(n, rng):
    """Rows and ids in the order of UTKFace-style names (age_gender_race_date): what issue 14 found."""
    people = _people(n, rng)
    names = [f"{int(a)}_{g}_{e}_{rng.integers(10**9)}" for a, g, e in people.itertuples(index=False)]
    order = np.argsort(names, kind="stable")
    return people.iloc[order].reset_index(drop=True)


def test_ids_in_label_order_fail_the_audit_although_the_latents_are_blind(tmp_path):
    rng = np.random.default_rng(0)
    people = _utkface_ordered(1200, rng)
    ids = np.arange(len(people))
    pq.write_table(pa.table({"id": ids, "latent": _latent(rng.normal(size=(len(people), 8)))}),
                   tmp_path / "z.parquet")
    people.assign(id=ids).to_csv(tmp_path / "labels.csv", index=False)
    report = run_audit_files([tmp_path / "z.parquet"], tmp_path / "labels.csv", **FAST)
    # The embedding itself is blind ...
    assert report.leakage.max_leakage("z · id") > 0.5
    worst = report.worst_case().set_index(["representation", "attribute"])
    assert worst.loc[("z", "gender"), "leakage"] < 0.1
    # ... but its ids and row order give age and gender away, and the audit fails on them.
    sides = report.leakage.side_channels().set_index(["channel", "attribute"])
    for channel in ("id", "row order"):
        assert sides.loc[(channel, "age"), "leaks"] and sides.loc[(channel, "gender"), "leaks"]
        assert sides.loc[(channel, "age_band"), "leakage"] > 0.8
    assert "reveals gender" in sides.loc[("id", "gender"), "verdict"]
    assert all(("reveals" in text) == leaks for text, leaks in zip(sides["verdict"], sides["leaks"]))
    assert report.failed() and not report.leakage.failed(representation="unknown-file")  # only z's channels fail


def test_pseudonymous_ids_in_random_order_pass(tmp_path):
    rng = np.random.default_rng(1)
    people = _people(1200, rng)
    ids = np.array([f"{rng.integers(1 << 62):016x}" for _ in range(len(people))])
    table = pa.table({"id": ids, "latent": _latent(rng.normal(size=(len(people), 8))),
                      "split": rng.choice(["train", "test"], len(people))})
    pq.write_table(table, tmp_path / "z.parquet")
    people.assign(id=ids).to_csv(tmp_path / "labels.csv", index=False)
    report = run_audit_files([tmp_path / "z.parquet"], tmp_path / "labels.csv", **FAST)
    sides = report.leakage.side_channels()
    assert set(sides["channel"]) == {"id", "row order", "column 'split'"}
    assert not sides["leaks"].any() and not report.failed()


def _family_p(n, rng):
    """The smallest family-wise p-value of a clean file's two channels (random ids, rows in id order) x 2 attributes."""
    people = _people(n, rng)
    codes = {a: pd.factorize(people[a])[0] for a in ("gender", "ethnicity")}
    ids = rng.random(n)
    p = [adjacency_test(ids, codes[a], rng)[2] for a in codes]
    p += [adjacency_test(np.argsort(np.argsort(ids)), codes[a], rng)[2] for a in codes]
    return min(p) * len(p)


def test_the_family_wise_false_alarm_rate_stays_small():
    # Clean files (label-free ids and order): the side-channel level keeps false "LEAKS" rare,
    # although the embeddings' 0.05 would flag about one file in twenty.
    rng = np.random.default_rng(2)
    family_p = np.array([_family_p(2000, rng) for _ in range(400)])  # the normal approximation
    assert (family_p < SIDE_CHANNEL_ALPHA).sum() <= 2  # expected 0.4 at most
    assert 0.01 < (family_p < 0.05).mean() < 0.1  # the test is calibrated: about 5% at 0.05
    small = np.array([_family_p(300, rng) for _ in range(100)])  # random orders, normal tail beyond them
    assert (small < SIDE_CHANNEL_ALPHA).sum() <= 1


def test_a_clean_file_is_not_failed_on_a_chance_p_value(tmp_path):
    # The false alarm seen in `bafo run` (issue 12): a keyed, label-free row order whose adjacency
    # p-value happens to fall below 0.05 after Bonferroni (~1 file in 20) is not a leak.
    rng = np.random.default_rng(8)
    n = 2400
    while True:  # draw clean files until one falls into that band (deterministic for this seed)
        people = _people(n, rng)
        ids = rng.permutation(n)
        codes = {a: pd.factorize(people[a])[0] for a in ("gender", "ethnicity")}
        p = min(adjacency_test(ids, codes[a], rng)[2] for a in codes)
        if p < 0.002:
            break
    order = np.argsort(ids)  # rows written in id order, as an export writes them
    table = pa.table({"id": ids[order], "latent": _latent(rng.normal(size=(n, 4)))})
    pq.write_table(table, tmp_path / "z.parquet")
    people.assign(id=ids).to_csv(tmp_path / "labels.csv", index=False)
    report = run_audit_files([tmp_path / "z.parquet"], tmp_path / "labels.csv", **FAST)
    sides = report.leakage.side_channels()
    assert sides["p_value"].min() < 0.05 / len(sides)  # significant at the embeddings' level ...
    assert not sides["leaks"].any() and not report.failed()  # ... but not a leak
    assert report.leakage.side_channels(alpha=0.05)["leaks"].any()  # (it was one at 0.05)
    assert all("no significant link" in text for text in sides["verdict"])
    worst = report.worst_case().set_index("representation")
    assert all("no significant link" in text for text in worst.loc[sides["representation"], "verdict"])


def test_small_files_sorted_by_a_label_still_fail_beyond_the_permutations_resolution():
    # Below 2,000 rows the p-value comes from 4,000 random orders (floor 1/4,001); a file sorted by
    # gender must still reach the family-wise side-channel level.
    rng = np.random.default_rng(9)
    people = _people(400, rng).sort_values("gender", kind="stable").reset_index(drop=True)
    codes = pd.factorize(people["gender"])[0]
    _, _, p = adjacency_test(np.arange(400), codes, rng)
    assert p < 1e-20
    shuffled = rng.permutation(400)
    _, _, p_clean = adjacency_test(shuffled, codes, rng)
    assert p_clean > 1e-3


def test_other_columns_are_side_channels_and_file_names_leak(tmp_path):
    rng = np.random.default_rng(3)
    people = _utkface_ordered(900, rng)
    shuffled = rng.permutation(len(people))
    people = people.iloc[shuffled].reset_index(drop=True)  # rows and ids in random order now
    names = [f"{int(a)}_{g[0]}_{e[:2]}.jpg" for a, g, e in people.itertuples(index=False)]
    table = pa.table({"id": np.arange(len(people)), "latent": _latent(rng.normal(size=(len(people), 4))),
                      "source": names, "blob": pa.array([b"x"] * len(people))})
    channels = side_channels_of_table(table, source="z", id_column="id", embedding_columns=["latent"])
    assert set(channels.channels) == {"row order", "id", "column 'source'"}
    assert channels.skipped == [("blob", "a column of type binary is not audited; review it before sharing")]
    pq.write_table(table, tmp_path / "z.parquet")
    people.assign(id=np.arange(len(people))).to_csv(tmp_path / "labels.csv", index=False)
    report = run_audit_files([tmp_path / "z.parquet"], tmp_path / "labels.csv", **FAST)
    sides = report.leakage.side_channels().set_index(["channel", "attribute"])
    assert sides.loc[("column 'source'", "age"), "leaks"]
    assert not sides.loc[("row order", "gender"), "leaks"]
    assert report.files["z"]["skipped_columns"] == [("blob", channels.skipped[0][1])]


def test_label_columns_are_never_dimensions(tmp_path):
    # Issue 14: a one-column-per-dimension file without --labels took age and smile as dimensions.
    rng = np.random.default_rng(4)
    people = _people(600, rng)
    Z = rng.normal(size=(600, 6))
    frame = pd.DataFrame({f"dim_{i}": Z[:, i] for i in range(6)})
    frame = pd.concat([pd.DataFrame({"id": np.arange(600)}), frame, people,
                       pd.DataFrame({"smile": rng.integers(0, 2, 600), "tilt": rng.normal(size=600)})], axis=1)
    frame.to_parquet(tmp_path / "z.parquet")
    report = run_audit_files([tmp_path / "z.parquet"], None, **FAST)
    assert report.leakage.representations["z"]["dim"] == 6
    assert report.files["z"]["embedding"].startswith("6 numbered columns dim_0 … dim_5")
    worst = report.worst_case().set_index(["representation", "attribute"])
    assert worst.loc[("z", "age"), "leakage"] < 0.2  # not 1.000 from age being a "dimension"
    # smile and tilt are neither dimensions nor audited labels: they are side channels of the file.
    assert {"column 'smile'", "column 'tilt'"} <= set(report.leakage.side_channels()["channel"])


def test_a_list_column_of_another_name_is_the_embedding(tmp_path):
    rng = np.random.default_rng(5)
    people = _people(300, rng)
    table = pa.Table.from_pandas(people.assign(id=np.arange(300)), preserve_index=False)
    table = table.append_column("embedding", pa.array(list(rng.normal(size=(300, 5))), pa.list_(pa.float64())))
    pq.write_table(table, tmp_path / "z.parquet")
    report = run_audit_files([tmp_path / "z.parquet"], None, **FAST)
    assert report.leakage.representations["z"]["dim"] == 5
    assert report.files["z"]["embedding"] == "the list column 'embedding'"


def test_footer_metadata_is_listed_with_what_it_reveals():
    footer = {
        "bafo": json.dumps({"model_fingerprint": "ab", "labels_included": True, "label_columns": ["age"],
                            "note": "from /data/faces/26_0_2_201701.jpg"}),
        "ARROW:schema": "...",
        "spark.metadata": "{}",
    }
    entries = {e["key"]: e for e in describe_footer(footer)}
    assert entries["bafo.model_fingerprint"]["concern"] is None
    assert "carries its labels" in entries["bafo.labels_included"]["concern"]
    assert "file path or file name" in entries["bafo.note"]["concern"]
    assert "unknown" in entries["spark.metadata"]["concern"]
    assert entries["ARROW:schema"]["concern"] is None


def test_the_cli_fails_on_a_leaking_side_channel(tmp_path):
    rng = np.random.default_rng(6)
    people = _utkface_ordered(600, rng)
    ids = np.arange(len(people))
    table = pa.Table.from_pandas(people.assign(id=ids), preserve_index=False)
    table = table.append_column("latent", _latent(rng.normal(size=(len(people), 4))))
    pq.write_table(table, tmp_path / "z.parquet")
    result = CliRunner().invoke(main, ["audit", "--latents", str(tmp_path / "z.parquet"), "--folds", "3",
                                       "--out", str(tmp_path / "report")])
    assert result.exit_code == 1, result.output
    assert "side channel" in result.output and "LEAKS" in result.output
    html = (tmp_path / "report" / "report.html").read_text()
    assert "Side channels and metadata" in html and "labels taken from the file" in html


@pytest.mark.parametrize("n", [300, 3000])
def test_adjacency_statistic_is_one_when_rows_are_sorted_by_the_label(n):
    rng = np.random.default_rng(7)
    codes = np.sort(rng.integers(0, 3, n))
    agreement, _, p = adjacency_test(np.arange(n), codes, rng)
    assert agreement == pytest.approx(1.0, abs=0.02) and 0 < p < 1e-3  # two class boundaries only
