"""The data-rich attacker: probes fitted on a labelled training export, scored on the held-out rows; and the
in-sample attacker: the group-sum attack on the training export's own rows."""

import numpy as np
import pandas as pd
import pytest

from bafo_pipeline.audits import AuditResult, audit_leakage, run_audit

FAST = {"probes": ("prior", "linear"), "n_bootstrap": 200, "n_permutations": 200, "random_state": 0}


def _population(n, rng, strength):
    gender = rng.choice(["female", "male"], n)
    age = rng.uniform(1, 90, n).round()
    Z = rng.normal(size=(n, 20)).astype(np.float32)
    Z[:, 0] += strength * (gender == "male")
    Z[:, 1] += strength * (age - 45) / 26
    return Z, pd.DataFrame({"age": age, "gender": gender})


@pytest.fixture(scope="module")
def weak_signal():
    rng = np.random.default_rng(0)
    Z_train, train = _population(4000, rng, 0.35)
    Z_test, test = _population(250, rng, 0.35)
    return audit_leakage({"z": Z_test}, test, fit_representations={"z": Z_train}, fit_labels=train, **FAST)


def test_a_weak_signal_is_read_better_with_more_training_data(weak_signal):
    leak = weak_signal.metric("leakage").query("probe == 'linear'").set_index(["attribute", "attacker"])["mean"]
    for attribute in ("gender", "age"):
        assert leak[(attribute, "data-rich")] > leak[(attribute, "cross-validated")]
    worst = weak_signal.worst_case().set_index("attribute")
    assert worst.loc["gender", "attacker"] == "data-rich"
    assert worst.loc["gender", "leakage"] == pytest.approx(worst.loc["gender", "data_rich"])
    assert worst.loc["gender", "data_rich"] > worst.loc["gender", "cross_validated"]
    assert "trained on the labelled training export" in worst.loc["gender", "verdict"]
    assert worst.loc["gender", "p_value"] < 0.05
    # Only the cross-validated attacker, when asked: the same as an audit without the training export.
    assert weak_signal.worst_case(attacker="cross-validated")["attacker"].eq("cross-validated").all()
    held_out = weak_signal.value("z", "gender", "linear", "leakage", "data-rich")
    assert held_out["n"] == 250 and np.isnan(held_out["std"])  # one fit, scored on every held-out row
    assert held_out["ci_low"] <= held_out["mean"] <= held_out["ci_high"]
    assert weak_signal.representations["z"]["n_training_samples"] == 4000


def test_without_signal_neither_the_data_rich_nor_the_in_sample_attacker_finds_anything():
    rng = np.random.default_rng(1)
    significant = {"data-rich": 0, "in-sample": 0}
    for run in range(20):
        Z_train, Z_test = rng.normal(size=(600, 5)), rng.normal(size=(200, 5))
        train = pd.DataFrame({"gender": rng.choice(["f", "m"], 600), "age": rng.uniform(1, 90, 600)})
        test = pd.DataFrame({"gender": rng.choice(["f", "m"], 200), "age": rng.uniform(1, 90, 200)})
        result = audit_leakage(Z_test, test, fit_representations=Z_train, fit_labels=train,
                               **{**FAST, "random_state": run})
        p = result.metric("p_value").query("probe in ('linear', 'group_sums')")
        for attacker in significant:
            tested = p.loc[p["attacker"] == attacker, "mean"]
            assert len(tested) == (3 if attacker == "data-rich" else 2)  # the group sums: not the continuous age
            significant[attacker] += int((tested < 0.05).sum())
    assert significant["data-rich"] <= 6 and significant["in-sample"] <= 6  # 60 and 40 tests at 5%: 3 and 2 expected


def test_ids_join_the_training_export_and_classes_follow_the_audited_data():
    rng = np.random.default_rng(2)
    Z_train, train = _population(500, rng, 1.0)
    Z_test, test = _population(200, rng, 1.0)
    train["id"], test["id"] = np.arange(1000, 1500), np.arange(200)
    train.loc[:9, "gender"] = "unknown"  # a class the audited rows lack: left out with a warning
    order = rng.permutation(500)
    result = audit_leakage(
        {"z": (test["id"].to_numpy(), Z_test)}, test, id_column="id",
        fit_representations={"z": (train["id"].to_numpy()[order], Z_train[order])}, fit_labels=train, **FAST,
    )
    assert any("classes the audited data lacks" in w for w in result.warnings)
    assert result.worst_case().set_index("attribute").loc["gender", "leakage"] > 0.3


def test_bad_training_exports_are_refused():
    rng = np.random.default_rng(3)
    Z, labels = _population(100, rng, 1.0)
    with pytest.raises(ValueError, match="needs both"):
        audit_leakage(Z, labels, fit_representations=Z, **FAST)
    with pytest.raises(ValueError, match="not audited"):
        audit_leakage({"z": Z}, labels, fit_representations={"other": Z}, fit_labels=labels, **FAST)
    with pytest.raises(ValueError, match="3 dimensions"):
        audit_leakage(Z, labels, fit_representations=Z[:, :3], fit_labels=labels, **FAST)
    with pytest.raises(ValueError, match="training labels have no column 'gender'"):
        audit_leakage(Z, labels, fit_representations=Z, fit_labels=labels[["age"]], **FAST)
    # Audited rows that are also training rows would be read in-sample (ids of either type).
    labels["id"] = np.arange(100)
    with pytest.raises(ValueError, match="share 50 ids"):
        audit_leakage({"z": (labels["id"].to_numpy(), Z)}, labels, id_column="id",
                      fit_representations={"z": (labels["id"].astype(str).to_numpy()[50:], Z[50:])},
                      fit_labels=labels.iloc[50:], **FAST)


def test_schema_1_reports_still_load(weak_signal):
    data = weak_signal.to_dict()
    assert data["schema_version"] == 2
    assert {r["attacker"] for r in data["results"]} == {"cross-validated", "data-rich", "in-sample"}
    old = {**data, "schema_version": 1, "results": [
        {k: v for k, v in r.items() if k != "attacker"} for r in data["results"] if r["attacker"] == "cross-validated"
    ]}
    again = AuditResult.from_dict(old)
    assert set(again.table["attacker"]) == {"cross-validated"}
    assert again.worst_case()["leakage"].tolist() == pytest.approx(
        weak_signal.worst_case(attacker="cross-validated")["leakage"].tolist()
    )


def test_run_audit_passes_the_training_export_through(tmp_path):
    rng = np.random.default_rng(4)
    Z_train, train = _population(800, rng, 0.5)
    Z_test, test = _population(200, rng, 0.5)
    report = run_audit({"z": Z_test}, test, tmp_path, fit_representations={"z": Z_train}, fit_labels=train, **FAST)
    assert set(report.leakage.table["attacker"]) == {"cross-validated", "data-rich", "in-sample"}
    html = (tmp_path / "report.html").read_text()
    assert "data-rich" in html and "in-sample" in html


def test_the_cli_audits_a_training_export_beside_the_held_out_file(tmp_path):
    from click.testing import CliRunner

    from bafo_pipeline.cli import main
    from bafo_pipeline.io import write_latents

    rng = np.random.default_rng(5)
    schema = {"age": "float64", "gender": "string"}
    Z_train, train = _population(1500, rng, 0.5)
    Z_test, test = _population(200, rng, 0.5)
    order = rng.permutation(200)  # rows in an order of their own, ids joined across the two files
    write_latents(tmp_path / "train.parquet", [(np.arange(1000, 2500), Z_train, train)], label_schema=schema)
    write_latents(tmp_path / "test.parquet", [(order, Z_test[order], test.iloc[order])], label_schema=schema)
    result = CliRunner().invoke(main, [
        "audit", "--latents", str(tmp_path / "test.parquet"), "--fit-latents", str(tmp_path / "train.parquet"),
        "--attributes", "age,gender", "--folds", "3", "--out", str(tmp_path / "report"),
    ])
    assert result.exit_code == 0, result.output
    assert "data-rich" in result.output
    data = __import__("json").loads((tmp_path / "report" / "report.json").read_text())
    rich = [r for r in data["leakage"]["results"] if r["attacker"] == "data-rich" and r["metric"] == "leakage"]
    assert {r["representation"] for r in rich} == {"test"} and all(r["n"] == 200 for r in rich)
    assert data["leakage"]["representations"]["test"]["n_training_samples"] == 1500


def _centred_by_class(Z, classes):
    """What a concealment fitted on these rows leaves of them: every class with exactly the same mean."""
    out = Z - Z.mean(axis=0)
    for value in np.unique(classes):
        out[classes == value] -= out[classes == value].mean(axis=0)
    return out


def test_the_in_sample_attacker_reads_rows_whose_class_means_were_equalised_on_them():
    rng = np.random.default_rng(4)
    Z_train, train = _population(1500, rng, 0.0)  # latents that say nothing about anyone
    Z_test, test = _population(250, rng, 0.0)
    concealed = _centred_by_class(Z_train, train["gender"].to_numpy())
    result = audit_leakage({"z": Z_test}, test, fit_representations={"z": concealed}, fit_labels=train, **FAST)
    worst = result.worst_case().set_index("attribute")
    assert worst.loc["gender", "attacker"] == "in-sample" and worst.loc["gender", "probe"] == "group_sums"
    assert worst.loc["gender", "leakage"] > 0.2 and worst.loc["gender", "p_value"] < 0.05
    assert "the group-sum attack on the training export, each tenth" in worst.loc["gender", "verdict"]
    assert worst.loc["gender", "verdict"].endswith("share rows it was not fitted on.")
    in_sample = result.value("z", "gender", "group_sums", "leakage", "in-sample")
    assert in_sample["n"] == 1500 and in_sample["ci_low"] > 0  # every training row attacked once
    assert result.config["attackers"] == ["cross-validated", "data-rich", "in-sample"]
    # The probes find nothing, on either split: only the fitting statistics give the rows away.
    probes = result.metric("leakage").query("attribute == 'gender' and probe == 'linear'")["mean"]
    assert (probes < 0.1).all()
    # The same rows before the concealment, or with their means equalised by another grouping: nothing.
    for rows in (Z_train, _centred_by_class(Z_train, rng.permutation(train["gender"].to_numpy()))):
        plain = audit_leakage({"z": Z_test}, test, fit_representations={"z": rows}, fit_labels=train, **FAST)
        assert plain.value("z", "gender", "group_sums", "leakage", "in-sample")["mean"] < 0.1


def test_a_training_export_whose_labels_were_read_as_floats_trains_the_data_rich_probes():
    rng = np.random.default_rng(5)
    gender = rng.integers(0, 2, 300)
    gender_fit = rng.integers(0, 2, 600).astype(float)
    gender_fit[0] = np.nan  # one missing label: the column is read as floats
    Z = rng.normal(size=(300, 4)) + 1.5 * gender[:, None]
    Z_fit = rng.normal(size=(600, 4)) + 1.5 * np.nan_to_num(gender_fit)[:, None]
    result = audit_leakage({"z": Z}, pd.DataFrame({"gender": gender}), fit_representations={"z": Z_fit},
                           fit_labels=pd.DataFrame({"gender": gender_fit}), **FAST)
    leak = result.metric("leakage").query("probe == 'linear'").set_index("attacker")["mean"]
    assert leak["data-rich"] > 0.6
