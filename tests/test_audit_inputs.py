"""Bad input gets a clear error or warning, never a silent wrong number."""

import numpy as np
import pandas as pd
import pytest

from bafo_pipeline.audits import AuditWarning, align_by_id, audit_leakage, infer_kind

QUICK = {"probes": ("prior", "linear"), "n_bootstrap": 50, "n_permutations": 50}


def _labels(n, rng):
    return pd.DataFrame(
        {
            "id": [f"img{i:04d}" for i in range(n)],
            "age": rng.uniform(1, 90, n).round(),
            "gender": rng.choice(["female", "male"], n),
            "ethnicity": rng.choice(["white", "black", "asian"], n),
        }
    )


def test_infer_kind():
    rng = np.random.default_rng(0)
    assert infer_kind(pd.Series(rng.uniform(0, 90, 200))) == "continuous"
    assert infer_kind(pd.Series(rng.integers(0, 3, 200))) == "categorical"
    assert infer_kind(pd.Series(rng.choice(["a", "b"], 200))) == "categorical"
    assert infer_kind(pd.Series(rng.uniform(size=200) > 0.5)) == "categorical"


def test_kind_override_treats_numbers_as_classes():
    rng = np.random.default_rng(1)
    labels = pd.DataFrame({"score": rng.integers(0, 30, 300)})
    result = audit_leakage(
        rng.normal(size=(300, 3)),
        labels,
        attributes=["score"],
        kinds={"score": "continuous"},
        bands={},
        **QUICK,
    )
    assert result.attributes["score"]["kind"] == "continuous"
    with pytest.raises(ValueError, match="kinds must be one of"):
        audit_leakage(rng.normal(size=(300, 3)), labels, attributes=["score"], kinds={"score": "ordinal"})
    with pytest.raises(ValueError, match="not audited"):
        audit_leakage(rng.normal(size=(300, 3)), labels, attributes=["score"], kinds={"age": "continuous"})


def test_align_by_id_reorders_rows_to_match_labels():
    rng = np.random.default_rng(2)
    labels = _labels(50, rng)
    order = rng.permutation(50)
    # Column 0 of the embedding carries the age, so misalignment would show.
    Z = np.column_stack([labels["age"].to_numpy()[order], rng.normal(size=50)])
    other = Z[::-1].copy()
    aligned, aligned_labels, ids = align_by_id(
        {"a": (labels["id"].to_numpy()[order], Z), "b": (labels["id"].to_numpy()[order][::-1], other)},
        labels,
        "id",
    )
    assert (aligned["a"][:, 0] == aligned_labels["age"].to_numpy()).all()
    assert (aligned["b"][:, 0] == aligned_labels["age"].to_numpy()).all()
    assert list(ids) == list(aligned_labels["id"])


def test_integer_ids_match_text_ids():
    rng = np.random.default_rng(3)
    labels = pd.DataFrame({"id": [str(i) for i in range(40)], "gender": rng.choice(["f", "m"], 40)})
    aligned, aligned_labels, _ = align_by_id(
        {"z": (np.arange(40)[::-1], np.arange(40.0)[::-1, None])}, labels, "id"
    )
    assert (aligned["z"][:, 0] == aligned_labels["id"].astype(int)).all()


def test_mismatched_ids_are_errors():
    rng = np.random.default_rng(4)
    labels = _labels(60, rng)
    ids = labels["id"].to_numpy().copy()
    Z = rng.normal(size=(60, 3))
    bad = ids.copy()
    bad[5] = "stranger"
    with pytest.raises(ValueError, match=r"1 of 60 ids have no labels row.*stranger"):
        audit_leakage({"z": (bad, Z)}, labels, id_column="id", **QUICK)
    with pytest.raises(ValueError, match="cover different samples"):
        audit_leakage({"a": (ids, Z), "b": (ids[:50], Z[:50])}, labels, id_column="id", **QUICK)
    dup = ids.copy()
    dup[1] = dup[0]
    with pytest.raises(ValueError, match="repeats 1 ids"):
        audit_leakage({"z": (dup, Z)}, labels, id_column="id", **QUICK)
    with pytest.raises(ValueError, match="need id_column"):
        audit_leakage({"z": (ids, Z)}, labels, **QUICK)
    with pytest.raises(ValueError, match="no id column 'key'"):
        audit_leakage({"z": (ids, Z)}, labels, id_column="key", **QUICK)


def test_extra_label_rows_are_dropped_with_a_warning():
    rng = np.random.default_rng(5)
    labels = _labels(80, rng)
    Z = rng.normal(size=(70, 3))
    with pytest.warns(AuditWarning, match="10 labels rows have no embedding"):
        result = audit_leakage({"z": (labels["id"].to_numpy()[:70], Z)}, labels, id_column="id", **QUICK)
    assert result.representations["z"]["n_samples"] == 70
    assert any("10 labels rows" in w for w in result.warnings)


def test_row_count_mismatch_and_bad_arrays():
    rng = np.random.default_rng(6)
    labels = _labels(50, rng)
    with pytest.raises(ValueError, match="labels have 50 rows but the representations have 40"):
        audit_leakage(rng.normal(size=(40, 3)), labels, **QUICK)
    Z = rng.normal(size=(50, 3))
    Z[7, 1] = np.nan
    with pytest.raises(ValueError, match="contain NaN or inf \\(first row 7\\)"):
        audit_leakage(Z, labels, **QUICK)
    with pytest.raises(ValueError, match="2-D array"):
        audit_leakage(rng.normal(size=50), labels, **QUICK)
    with pytest.raises(ValueError, match="rows, the first one has"):
        audit_leakage({"a": rng.normal(size=(50, 3)), "b": rng.normal(size=(49, 3))}, labels, **QUICK)


def test_missing_columns_and_degenerate_attributes():
    rng = np.random.default_rng(7)
    labels = _labels(60, rng)
    Z = rng.normal(size=(60, 3))
    with pytest.raises(ValueError, match=r"lack the attribute columns \['smile'\]"):
        audit_leakage(Z, labels, attributes=["gender", "smile"], **QUICK)
    with pytest.raises(ValueError, match="none of the default attributes"):
        audit_leakage(Z, labels[["id"]], **QUICK)
    single = labels.assign(gender="female")
    with pytest.raises(ValueError, match="single class \\('female'\\)"):
        audit_leakage(Z, single, attributes=["gender"], **QUICK)
    few = labels.copy()
    few.loc[:2, "ethnicity"] = "indian"
    with pytest.raises(ValueError, match=r"fewer samples than n_folds=5 \('indian': 3\)"):
        audit_leakage(Z, few, attributes=["ethnicity"], **QUICK)
    with pytest.raises(ValueError, match="n_folds must be an integer >= 2"):
        audit_leakage(Z, labels, n_folds=1)
    with pytest.raises(ValueError, match="probes must be distinct names"):
        audit_leakage(Z, labels, probes=("prior", "svm"))


def test_missing_labels_are_left_out_with_a_warning():
    rng = np.random.default_rng(8)
    labels = _labels(200, rng)
    labels.loc[:9, "gender"] = None
    with pytest.warns(AuditWarning, match="10 rows without a label"):
        result = audit_leakage(rng.normal(size=(200, 3)), labels, attributes=["gender"], **QUICK)
    assert result.attributes["gender"]["n"] == 190
    assert (result.metric("leakage")["n"] == 190).all()


def test_small_age_band_is_skipped_with_a_warning():
    rng = np.random.default_rng(9)
    labels = pd.DataFrame({"age": np.r_[rng.uniform(1, 59, 197), [70.0, 75.0, 80.0]]})
    with pytest.warns(
        AuditWarning, match="age_band: bands with fewer samples than n_folds=5 \\('60\\+': 3\\)"
    ):
        result = audit_leakage(rng.normal(size=(200, 3)), labels, **QUICK)
    assert list(result.attributes) == ["age"]


def test_text_in_a_continuous_column_names_the_row():
    labels = pd.DataFrame({"age": [str(a) for a in range(100)]})
    labels.loc[42, "age"] = "unknown"
    with pytest.raises(ValueError, match="row 42 holds 'unknown'"):
        audit_leakage(np.zeros((100, 2)), labels, kinds={"age": "continuous"}, **QUICK)
