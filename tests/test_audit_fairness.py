"""Fairness of a downstream model on the latents: fairlearn's numbers, with intervals."""

import numpy as np
import pandas as pd
import pytest
from fairlearn.metrics import (
    MetricFrame,
    demographic_parity_difference,
    equalized_odds_difference,
    selection_rate,
)

from bafo_pipeline.audits import fairness_report
from bafo_pipeline.audits.fairness import group_rates


def _population(n, rng, gender_in_latent):
    gender = rng.choice(["female", "male"], n)
    ethnicity = rng.choice(["white", "black", "asian"], n)
    age = rng.uniform(1, 90, n).round()
    Z = rng.normal(size=(n, 6))
    Z[:, 0] += gender_in_latent * (gender == "male")
    smile = (Z[:, 0] + Z[:, 1] + rng.normal(size=n) > 0.8).astype(int)
    return Z, smile, pd.DataFrame({"age": age, "gender": gender, "ethnicity": ethnicity})


@pytest.fixture(scope="module")
def biased():
    rng = np.random.default_rng(0)
    Z, smile, sensitive = _population(1500, rng, gender_in_latent=1.5)
    return fairness_report(Z, smile, sensitive, target_name="smile", representation="raw", n_bootstrap=300)


def test_group_rates_match_fairlearn():
    rng = np.random.default_rng(1)
    y, pred = rng.integers(0, 2, 400), rng.integers(0, 2, 400)
    groups = rng.choice(["a", "b", "c"], 400)
    codes = pd.Index(["a", "b", "c"]).get_indexer(groups)
    rates, disparities = group_rates(y, pred, codes, 3, np.ones((1, 400)), np.ones(3, dtype=bool))
    frame = MetricFrame(
        metrics={"selection_rate": selection_rate}, y_true=y, y_pred=pred, sensitive_features=groups
    )
    assert rates["selection_rate"][0] == pytest.approx(frame.by_group["selection_rate"].to_numpy())
    assert disparities["demographic_parity_difference"][0] == pytest.approx(
        demographic_parity_difference(y, pred, sensitive_features=groups)
    )
    assert disparities["equalized_odds_difference"][0] == pytest.approx(
        equalized_odds_difference(y, pred, sensitive_features=groups)
    )


def test_latent_that_encodes_gender_gives_a_gender_gap(biased):
    d = biased.disparities.set_index(["feature", "metric"])
    gap = d.loc[("gender", "demographic_parity_difference")]
    assert gap["value"] > 0.2 and gap["ci_low"] > 0.1
    assert gap["ci_low"] <= gap["value"] <= gap["ci_high"]
    # The disparity is the spread of the per-group selection rates fairlearn reports.
    rates = biased.by_group.query("feature == 'gender' and metric == 'selection_rate'")["value"]
    assert gap["value"] == pytest.approx(rates.max() - rates.min())
    assert biased.overall["roc_auc"] > 0.75  # the downstream model is useful


def test_breakdowns_cover_bands_and_intersections(biased):
    features = set(biased.by_group["feature"])
    assert features == {"age_band", "gender", "ethnicity", "gender x ethnicity"}
    bands = set(biased.by_group.query("feature == 'age_band'")["group"])
    assert bands == {"0-19", "20-39", "40-59", "60+"}
    cells = biased.by_group.query("feature == 'gender x ethnicity' and metric == 'accuracy'")
    assert len(cells) == 6 and cells["group"].str.contains(" & ").all()
    assert cells["count"].sum() == 1500
    assert set(biased.by_group["metric"]) == {
        "selection_rate",
        "true_positive_rate",
        "false_positive_rate",
        "accuracy",
    }
    assert set(biased.disparities["metric"]) == {"demographic_parity_difference", "equalized_odds_difference"}


def test_blind_latent_gives_small_gaps():
    rng = np.random.default_rng(2)
    Z, smile, sensitive = _population(1500, rng, gender_in_latent=0.0)
    result = fairness_report(Z, smile, sensitive, n_bootstrap=200, intersections=[])
    d = result.disparities.set_index(["feature", "metric"])
    assert d.loc[("gender", "demographic_parity_difference"), "value"] < 0.08
    assert set(result.by_group["feature"]) == {"age_band", "gender", "ethnicity"}


def test_small_groups_are_listed_but_left_out_of_disparities():
    rng = np.random.default_rng(3)
    Z, smile, sensitive = _population(600, rng, gender_in_latent=1.0)
    sensitive.loc[:9, "ethnicity"] = "indian"
    result = fairness_report(Z, smile, sensitive, n_bootstrap=100, intersections=[], min_group_size=30)
    indian = result.by_group.query("feature == 'ethnicity' and group == 'indian'")
    assert (~indian["included"]).all() and (indian["count"] == 10).all()
    assert result.disparities.query("feature == 'ethnicity'")["n_groups"].iloc[0] == 3
    assert any("indian (10)" in note for note in result.notes)


def test_target_errors():
    rng = np.random.default_rng(4)
    Z, smile, sensitive = _population(200, rng, gender_in_latent=0.0)
    with pytest.raises(ValueError, match="exactly two classes"):
        fairness_report(Z, rng.integers(0, 3, 200), sensitive)
    with pytest.raises(ValueError, match="pass pos_label"):
        fairness_report(Z, np.where(smile == 1, "yes", "no"), sensitive)
    result = fairness_report(Z, np.where(smile == 1, "yes", "no"), sensitive, pos_label="yes", n_bootstrap=0)
    assert result.config["pos_label"] == "yes" and result.disparities["ci_low"].isna().all()
    with pytest.raises(ValueError, match="has 200 rows, target 199"):
        fairness_report(Z, smile[:199], sensitive)


def test_no_group_large_enough_gives_undefined_disparities_not_a_crash():
    rng = np.random.default_rng(3)
    n = 120
    Z = rng.normal(size=(n, 4))
    target = (Z[:, 0] > 0).astype(int)
    sensitive = pd.DataFrame({"gender": rng.choice(["f", "m"], n), "ethnicity": rng.choice(list("abcde"), n)})
    result = fairness_report(
        Z, target, sensitive, intersections=[("gender", "ethnicity")], min_group_size=100, n_bootstrap=20
    )
    assert (result.disparities["n_groups"] == 0).all()
    assert result.disparities["value"].isna().all()
