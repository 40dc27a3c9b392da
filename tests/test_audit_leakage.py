"""Planted signals: the audit must tell leaky, erased, non-linear, imbalanced and random apart."""

import numpy as np
import pandas as pd
import pytest

from bafo_pipeline.audits import AuditResult, audit_leakage

FAST = {"n_bootstrap": 300, "n_permutations": 300, "random_state": 0}


def leace_fit(X: np.ndarray, labels: np.ndarray):
    """Closed-form LEACE (Belrose et al., 2023): x' = x - W⁺ P W (x - mean).

    W = Σ^{-1/2} whitens X; P projects onto the column space of W Σ_xz, the
    whitened cross-covariance with the one-hot labels. On the fitting data every
    class then has the same mean, so no linear classifier beats a constant one.
    Returns the erasure function.
    """
    X = np.asarray(X, dtype=np.float64)
    classes = np.unique(labels)
    onehot = (labels[:, None] == classes[None, :]).astype(np.float64)
    mean = X.mean(axis=0)
    Xc = X - mean
    vals, vecs = np.linalg.eigh(Xc.T @ Xc / len(X))
    keep = vals > vals.max() * 1e-10
    W = (vecs[:, keep] / np.sqrt(vals[keep])) @ vecs[:, keep].T
    W_pinv = (vecs[:, keep] * np.sqrt(vals[keep])) @ vecs[:, keep].T
    cross = Xc.T @ (onehot - onehot.mean(axis=0)) / len(X)
    U, s, _ = np.linalg.svd(W @ cross, full_matrices=False)
    U = U[:, s > s.max() * 1e-10]
    eraser = W_pinv @ (U @ U.T) @ W
    return lambda Z: (Z - (Z - mean) @ eraser.T).astype(np.float32)


def test_leace_helper_equalises_class_means():
    rng = np.random.default_rng(9)
    labels = rng.choice(["a", "b", "c"], 500)
    X = rng.normal(size=(500, 5)) + (labels == "a")[:, None] * 2.0 - (labels == "c")[:, None]
    erased = leace_fit(X, labels)(X)
    means = np.stack([erased[labels == c].mean(axis=0) for c in "abc"])
    assert np.allclose(means, means[0], atol=1e-5)


def _random_labels(n, rng):
    return pd.DataFrame(
        {
            "age": rng.uniform(1, 90, n).round(),
            "gender": rng.choice(["female", "male"], n),
            "ethnicity": rng.choice(["white", "black", "asian", "indian", "others"], n),
        }
    )


@pytest.fixture(scope="module")
def linear_case():
    rng = np.random.default_rng(0)
    n, d = 1000, 8
    n_fit = 5 * n
    gender = rng.choice(["female", "male"], n_fit + n)
    Z = rng.normal(size=(n_fit + n, d))
    direction = rng.normal(size=d)
    Z += np.outer((gender == "male") * 1.6, direction / np.linalg.norm(direction))
    # The eraser is fitted on other data than the audit's, as an encoder would be: an
    # eraser fitted on the audit rows themselves pushes cross-validated probes below chance.
    fit, audit = slice(0, n_fit), slice(n_fit, n_fit + n)
    erased = leace_fit(Z[fit], gender[fit])(Z[audit])
    labels = pd.DataFrame({"gender": gender[audit]})
    return audit_leakage(
        {"plain": Z[audit], "erased": erased},
        labels,
        attributes=["gender"],
        probes=("prior", "linear"),
        **FAST,
    )


def test_linear_signal_is_found(linear_case):
    row = linear_case.value("plain", "gender", "linear")
    assert row["mean"] > 0.5
    assert row["ci_low"] > 0.3
    assert linear_case.value("plain", "gender", "linear", "p_value")["mean"] < 0.01
    assert linear_case.value("plain", "gender", "linear", "roc_auc")["mean"] > 0.8
    assert linear_case.value("plain", "gender", "linear", "information_bits")["mean"] > 0.2


def test_linear_erasure_brings_linear_probe_to_chance(linear_case):
    row = linear_case.value("erased", "gender", "linear")
    assert abs(row["mean"]) < 0.05
    assert row["ci_low"] <= 0.0 <= row["ci_high"]
    assert linear_case.value("erased", "gender", "linear", "p_value")["mean"] > 0.05
    auc = linear_case.value("erased", "gender", "linear", "roc_auc")
    assert auc["ci_low"] <= 0.5 <= auc["ci_high"] + 0.02  # at or (CV artefact) slightly below chance
    worst = linear_case.worst_case().set_index("representation")
    assert worst.loc["plain", "leakage"] > 0.5 and worst.loc["erased", "leakage"] < 0.05
    assert linear_case.exceeds(0.2) and not linear_case.exceeds(0.2, representation="erased")


def test_xor_signal_needs_a_nonlinear_probe():
    rng = np.random.default_rng(1)
    n = 1200
    Z = rng.normal(size=(n, 4))
    label = np.where(Z[:, 0] * Z[:, 1] > 0, "a", "b")
    result = audit_leakage(Z, pd.DataFrame({"xor": label}), attributes=["xor"], n_folds=3, **FAST)
    assert abs(result.value("latents", "xor", "linear")["mean"]) < 0.1
    assert result.value("latents", "xor", "linear", "p_value")["mean"] > 0.01
    for probe in ("mlp", "gbdt"):
        row = result.value("latents", "xor", probe)
        assert row["mean"] > 0.6, probe
        assert row["ci_low"] > 0.5, probe
    worst = result.worst_case().iloc[0]
    assert worst["probe"] in ("mlp", "gbdt") and worst["leakage"] > 0.6
    assert "non-linear" in worst["verdict"]


def test_imbalanced_attribute_without_signal_is_not_called_leaky():
    rng = np.random.default_rng(2)
    n = 2000
    rare = np.where(rng.uniform(size=n) < 0.05, "rare", "common")
    Z = rng.normal(size=(n, 8))
    result = audit_leakage(Z, pd.DataFrame({"flag": rare}), attributes=["flag"], **FAST)
    for probe in ("linear", "mlp", "gbdt"):
        assert result.value("latents", "flag", probe, "accuracy")["mean"] > 0.85, (
            probe
        )  # raw accuracy looks good
        row = result.value("latents", "flag", probe)
        assert abs(row["mean"]) < 0.1 and row["ci_low"] <= 0 <= row["ci_high"], probe
    worst = result.worst_case().iloc[0]
    assert worst["p_value"] > 0.05
    assert worst["verdict"].startswith("No significant leakage")
    assert not result.exceeds(0.1)


def test_random_latents_stay_within_chance_intervals():
    rng = np.random.default_rng(3)
    n = 800
    Z = rng.normal(size=(n, 8))
    result = audit_leakage(Z, _random_labels(n, rng), **FAST)
    table = result.table
    assert set(table["attribute"]) == {"age", "age_band", "gender", "ethnicity"}
    chance = {
        "leakage": 0.0,
        "adjusted_balanced_accuracy": 0.0,
        "roc_auc": 0.5,
        "r2": 0.0,
        "information_bits": 0.0,
    }
    attack = table[(table["probe"] != "prior") & table["metric"].isin(chance)]
    # No score is significantly above chance (over-fitted probes may sit below it).
    assert (attack["ci_low"] <= attack["metric"].map(chance)).all(), attack[
        attack["ci_low"] > attack["metric"].map(chance)
    ]
    worst = result.worst_case()
    assert (worst["p_value"] > 0.05).all()
    assert (worst["leakage"] < 0.1).all()
    bacc = result.metric("balanced_accuracy")
    ethnicity = bacc[bacc["attribute"] == "ethnicity"]
    assert ((ethnicity["ci_low"] <= 0.2) & (ethnicity["ci_high"] + 0.01 >= 0.2)).all()


def test_continuous_attribute_and_bands():
    rng = np.random.default_rng(4)
    n = 900
    age = rng.uniform(1, 90, n).round()
    Z = np.column_stack([age / 30 + rng.normal(0, 0.3, n), rng.normal(size=(n, 3))])
    result = audit_leakage(Z, pd.DataFrame({"age": age}), probes=("prior", "linear"), **FAST)
    assert result.attributes["age"]["kind"] == "continuous"
    assert result.attributes["age_band"]["classes"] == ["0-19", "20-39", "40-59", "60+"]
    assert result.value("latents", "age", "linear", "r2")["mean"] > 0.8
    mae = result.value("latents", "age", "linear", "mae")["mean"]
    assert mae < 0.5 * result.value("latents", "age", "prior", "mae")["mean"]
    assert result.value("latents", "age_band", "linear")["mean"] > 0.5


def test_prior_probe_is_exactly_chance():
    rng = np.random.default_rng(5)
    n = 300
    result = audit_leakage(rng.normal(size=(n, 3)), _random_labels(n, rng), probes=("prior",), **FAST)
    leak = result.metric("leakage")
    categorical = leak[leak["kind"] == "categorical"]
    assert (
        np.allclose(categorical["mean"], 0.0)
        and np.allclose(categorical["ci_low"], 0.0)
        and np.allclose(categorical["ci_high"], 0.0)
    )
    # On a continuous attribute the prior predicts the median; R² is taken against the mean, so it is at most 0.
    assert (leak.loc[leak["kind"] == "continuous", "mean"] <= 0).all()
    assert result.metric("p_value")["mean"].isna().all()


def test_a_probe_that_learnt_nothing_but_the_mean_scores_zero_on_a_skewed_attribute():
    # Issue found with the side channels: R² against the median gave such a probe +0.04 on UTKFace's ages.
    rng = np.random.default_rng(8)
    n = 4000
    labels = pd.DataFrame({"age": np.round(rng.gamma(1.5, 20, n) + 1)})  # mean well above the median
    skew = (labels["age"].mean() - labels["age"].median()) ** 2 / labels["age"].var()
    assert skew > 0.03
    result = audit_leakage(rng.normal(size=(n, 2)), labels, probes=("prior", "linear"), bands={}, **FAST)
    linear = result.value("latents", "age", "linear")
    assert abs(linear["mean"]) < 0.005 and linear["ci_low"] <= 0 <= linear["ci_high"]
    assert result.worst_case()["p_value"].iloc[0] > 0.05


def test_result_roundtrips_through_json(linear_case):
    text = linear_case.to_json()
    assert '"schema_version": 2' in text and "NaN" not in text
    again = AuditResult.from_json(text)
    pd.testing.assert_frame_equal(
        again.table.drop(columns=["n"]), linear_case.table.drop(columns=["n"]), check_dtype=False
    )
    assert again.worst_case()["leakage"].tolist() == pytest.approx(
        linear_case.worst_case()["leakage"].tolist()
    )


def test_same_seed_same_result():
    rng = np.random.default_rng(6)
    n = 300
    Z = rng.normal(size=(n, 4))
    labels = _random_labels(n, rng)[["gender"]]
    a = audit_leakage(Z, labels, probes=("prior", "linear", "mlp"), **FAST)
    b = audit_leakage(Z, labels, probes=("prior", "linear", "mlp"), **FAST)
    pd.testing.assert_frame_equal(a.table, b.table)
