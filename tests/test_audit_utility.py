"""The utility audit: planted signal is found, noise is not, residuals remove what the sensitive attributes explain."""

import numpy as np
import pandas as pd
import pytest

from bafo_pipeline.audits.utility import (
    RESIDUAL_SUFFIX,
    SensitiveResidualizer,
    audit_utility,
    residualize_targets,
)

FAST = {"n_bootstrap": 200, "n_folds": 5, "random_state": 0, "probes": ("prior", "linear", "gbdt")}


def _sensitive(n, rng):
    return pd.DataFrame(
        {
            "age": rng.uniform(1, 90, n).round(),
            "gender": rng.choice(["female", "male"], n),
            "ethnicity": rng.choice(["white", "black", "asian", "indian", "others"], n),
        }
    )


@pytest.fixture(scope="module")
def planted():
    """Targets with known structure and three representations that keep all, half, or none of them."""
    rng = np.random.default_rng(0)
    n = 600
    sensitive = _sensitive(n, rng)
    pose = rng.normal(size=n)  # independent of everything sensitive
    expression = rng.normal(size=n)
    # A target that is part sensitive (age band, gender), part independent expression.
    mouth = 1.0 * (sensitive["age"] < 30).to_numpy() + 0.8 * (sensitive["gender"] == "female").to_numpy() + expression
    smile = (expression + 0.3 * rng.normal(size=n) > 0).astype(int)
    targets = pd.DataFrame({"yaw": pose, "mouth": mouth, "smile": smile})
    noise = rng.normal(size=(n, 6))
    full = np.column_stack([pose, expression, (sensitive["age"] < 30), sensitive["gender"] == "female", noise[:, :2]])
    half = np.column_stack([pose + rng.normal(size=n), noise[:, 2:]])  # yaw with SNR 1, nothing else
    representations = {
        "reference": full.astype(np.float32),
        "half": half.astype(np.float32),
        "noise": rng.normal(size=(n, 6)).astype(np.float32),
    }
    return representations, targets, sensitive


@pytest.fixture(scope="module")
def result(planted):
    representations, targets, sensitive = planted
    return audit_utility(representations, targets, references=["reference"], sensitive=sensitive, **FAST)


def test_planted_signal_is_recovered_and_noise_is_at_chance(result):
    scores = result.scores().set_index(["representation", "target"])
    assert scores.loc[("reference", "yaw"), "score"] > 0.95
    assert scores.loc[("reference", "smile"), "score"] > 0.6
    assert scores.loc[("reference", "mouth"), "score"] > 0.95
    assert 0.35 < scores.loc[("half", "yaw"), "score"] < 0.65  # R² of a signal with SNR 1: 0.5
    for target in ("yaw", "mouth", "smile", "mouth" + RESIDUAL_SUFFIX):
        row = scores.loc[("noise", target)]
        # The interval reaches below 0. (R² against the training mean: a probe of pure noise is at
        # or just below 0, and its interval may lie wholly below 0, a little worse than the mean.)
        assert row["score"] < 0.05 and row["at_chance"] and row["ci_low"] < 0, target
    assert not scores.loc[("half", "yaw"), "at_chance"]


def test_shares_relative_to_the_reference(result):
    shares = result.shares().set_index(["representation", "target"])
    column = "share_of[reference]"
    assert shares.loc[("reference", "yaw"), column] == pytest.approx(1.0)
    assert 0.35 < shares.loc[("half", "yaw"), column] < 0.65
    assert shares.loc[("noise", "yaw"), column] < 0.05
    low, high = shares.loc[("half", "yaw"), "share_low[reference]"], shares.loc[("half", "yaw"), "share_high[reference]"]
    assert low < shares.loc[("half", "yaw"), column] < high
    linear = result.shares("linear").set_index(["representation", "target"])
    assert set(linear["probe"]) == {"linear"}
    assert linear.loc[("half", "yaw"), column] == pytest.approx(
        linear.loc[("half", "yaw"), "score"] / linear.loc[("reference", "yaw"), "score"]
    )


def test_residual_targets_keep_only_what_the_sensitive_attributes_do_not_explain(planted, result):
    representations, targets, sensitive = planted
    # Continuous targets get a residual variant; the categorical smile does not.
    assert set(result.kinds) == {"yaw", "mouth", "smile", "yaw_residual", "mouth_residual"}
    # Half of mouth's variance is age and gender (1/4·1 + 1/4·0.64 ... of ~1.4): explained, not kept.
    assert 0.2 < result.explained["mouth"] < 0.45
    assert abs(result.explained["yaw"]) < 0.05
    scores = result.scores().set_index(["representation", "target"])
    # A representation holding only the expression part keeps the whole residual ...
    only_expression = {"expression": representations["reference"][:, [1]]}
    kept = audit_utility(only_expression, targets[["mouth"]], sensitive=sensitive, **FAST).scores().set_index("target")
    assert kept.loc["mouth" + RESIDUAL_SUFFIX, "score"] > 0.9
    assert kept.loc["mouth", "score"] < 0.8  # ... but not the part age and gender explain
    assert scores.loc[("reference", "mouth" + RESIDUAL_SUFFIX), "score"] > 0.9
    # ... and one holding only the sensitive part keeps none of it.
    only_sensitive = {"sensitive": representations["reference"][:, [2, 3]]}
    none = audit_utility(only_sensitive, targets[["mouth"]], sensitive=sensitive, **FAST).scores().set_index("target")
    assert none.loc["mouth", "score"] > 0.2
    assert none.loc["mouth" + RESIDUAL_SUFFIX, "score"] < 0.05


def test_residuals_fitted_on_a_training_side():
    rng = np.random.default_rng(1)
    train_s, test_s = _sensitive(800, rng), _sensitive(200, rng)
    effect = lambda s: 2.0 * (s["gender"] == "male").to_numpy() + 0.05 * s["age"].to_numpy()  # noqa: E731
    train_t = pd.DataFrame({"t": effect(train_s) + rng.normal(size=800)})
    test_noise = rng.normal(size=200)
    test_t = pd.DataFrame({"t": effect(test_s) + test_noise})
    residuals, explained = residualize_targets(test_t, test_s, fit_targets=train_t, fit_sensitive=train_s)
    assert explained["t"] > 0.6
    # What is left is (up to the age bands' coarseness) the noise.
    assert np.corrcoef(residuals["t"], test_noise)[0, 1] > 0.95
    assert abs(np.corrcoef(residuals["t"], (test_s["gender"] == "male"))[0, 1]) < 0.1
    # Cross-fitting gives every row a residual from a model that did not see it.
    crossfit, _ = residualize_targets(test_t, test_s)
    assert crossfit["t"].notna().all() and np.corrcoef(crossfit["t"], test_noise)[0, 1] > 0.9


def test_residualizer_handles_missing_and_unseen_values():
    rng = np.random.default_rng(2)
    sensitive = _sensitive(300, rng)
    targets = pd.DataFrame({"t": rng.normal(size=300)})
    model = SensitiveResidualizer().fit(sensitive, targets)
    new = sensitive.iloc[:3].copy()
    new.loc[new.index[0], "gender"] = None
    new.loc[new.index[1], "ethnicity"] = "unseen"
    out = model.residuals(new, targets.iloc[:3])
    assert np.isnan(out["t"].iloc[0]) and np.isfinite(out["t"].iloc[1:]).all()
    with pytest.raises(ValueError, match="targets"):
        model.residuals(sensitive, pd.DataFrame({"other": targets["t"]}))


def test_bad_input(planted):
    representations, targets, sensitive = planted
    with pytest.raises(ValueError, match="references"):
        audit_utility(representations, targets, references=["missing"])
    with pytest.raises(ValueError, match="sensitive"):
        audit_utility(representations, targets, residual=["yaw"])
    with pytest.raises(ValueError, match="continuous"):
        audit_utility(representations, targets, sensitive=sensitive, residual=["smile"])
    with pytest.raises(ValueError, match="rows"):
        audit_utility(representations, targets.iloc[:10])


def test_missing_target_values_are_left_out_with_a_warning(planted):
    representations, targets, _ = planted
    gappy = targets[["yaw"]].copy()
    gappy.loc[:9, "yaw"] = np.nan
    with pytest.warns(UserWarning, match="10 rows without a label"):
        out = audit_utility({"reference": representations["reference"]}, gappy, **FAST)
    assert out.audit.attributes["yaw"]["n"] == len(targets) - 10
    assert out.to_dict()["kind"] == "bafo-utility-audit"


def test_continuous_targets_are_scored_against_the_training_mean_like_leakage():
    """One definition: a target's utility score is the leakage audit's score of that column, and a
    representation that knows nothing scores about 0 on a skewed target (against the median, the
    mean alone would have scored above 0)."""
    from bafo_pipeline.audits import audit_leakage

    rng = np.random.default_rng(3)
    n = 400
    skewed = rng.exponential(size=n) ** 2  # mean far above the median
    targets = pd.DataFrame({"skewed": skewed})
    representations = {"noise": rng.normal(size=(n, 3)), "signal": np.column_stack([skewed, rng.normal(size=n)])}
    utility = audit_utility(representations, targets, probes=("prior", "linear"), n_bootstrap=200, random_state=0)
    scores = utility.scores("linear").set_index("representation")
    assert abs(scores.loc["noise", "score"]) < 0.05 and scores.loc["noise", "at_chance"]
    assert scores.loc["signal", "score"] > 0.95
    leakage = audit_leakage(
        representations, targets, attributes=["skewed"], kinds={"skewed": "continuous"}, bands={},
        probes=("prior", "linear"), n_bootstrap=200, n_permutations=0, random_state=0,
    ).metric("leakage")
    leakage = leakage[leakage["probe"] == "linear"].set_index("representation")["mean"]
    np.testing.assert_allclose(scores["score"].to_numpy(), leakage.loc[scores.index].to_numpy())
    # the score is 1 - SSE / SSE(training mean): the mean itself scores at most rounding noise above 0
    prior = utility.scores("prior").set_index("representation")["score"]
    assert (prior <= 1e-9).all()


def test_numeric_classes_match_whether_a_table_reads_them_as_integers_or_floats():
    rng = np.random.default_rng(3)
    gender_fit = rng.integers(0, 2, 1000).astype(float)
    gender_fit[0] = np.nan  # one missing label: the column is read as floats, its classes "0.0" and "1.0"
    fit_t = pd.DataFrame({"t": 5 * np.nan_to_num(gender_fit) + rng.normal(size=1000)})
    gender = rng.integers(0, 2, 400)  # the audited table's integers: "0" and "1"
    noise = rng.normal(size=400)
    residuals, _ = residualize_targets(pd.DataFrame({"t": 5 * gender + noise}), pd.DataFrame({"gender": gender}),
                                       fit_targets=fit_t, fit_sensitive=pd.DataFrame({"gender": gender_fit}))
    assert abs(np.corrcoef(residuals["t"], gender)[0, 1]) < 0.15
    assert np.corrcoef(residuals["t"], noise)[0, 1] > 0.95
