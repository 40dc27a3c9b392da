"""Intervals that contain their estimate and cover the truth: BCa, the largest-gap band, zero printed as zero."""

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from bafo_pipeline.audits import audit_leakage, fairness_report
from bafo_pipeline.audits.fairness import group_rates
from bafo_pipeline.audits.report import write_report
from bafo_pipeline.audits.resampling import (
    bca_interval,
    bootstrap_weights,
    jackknife_weights,
    largest_gap_interval,
    percentile_interval,
)


def test_jackknife_weights_leave_out_each_group_once():
    W = jackknife_weights(23, 5, np.random.default_rng(0))
    assert W.shape == (5, 23) and set(np.unique(W)) == {0.0, 1.0}
    assert ((1 - W).sum(axis=0) == 1).all()  # every row is left out exactly once
    assert sorted((1 - W).sum(axis=1)) == [4, 4, 5, 5, 5]
    assert jackknife_weights(4, 100, np.random.default_rng(0)).shape == (4, 4)  # leave-one-out


def test_bca_agrees_with_scipy_on_a_skewed_statistic():
    # The variance of a small normal sample: skewed and biased, where BCa and percentile differ.
    rng = np.random.default_rng(3)
    ours, theirs, widths = [], [], []
    for _ in range(20):
        x = rng.normal(size=20)

        def variance(W, m, x=x):
            return (W @ x**2) / m - ((W @ x) / m) ** 2

        boot = variance(bootstrap_weights(20, 4000, rng), 20)
        jack = variance(jackknife_weights(20, 20, rng), 19)
        ours.append(bca_interval(boot, float(np.var(x)), jack, 0.9))
        reference = stats.bootstrap((x,), np.var, confidence_level=0.9, method="BCa", n_resamples=4000,
                                    random_state=rng).confidence_interval
        theirs.append((reference.low, reference.high))
        widths.append(reference.high - reference.low)
    difference = np.abs(np.array(ours) - np.array(theirs)).mean(axis=0)
    assert (difference < 0.08 * np.mean(widths)).all()  # the same interval up to resampling noise


def test_bca_removes_the_bias_of_the_replicates():
    # Replicates centred b above the estimate: the bias-corrected interval is centred b below it.
    rng = np.random.default_rng(0)
    estimate, bias, sd = 1.0, 0.3, 0.5
    replicates = estimate + bias + sd * rng.normal(size=200_000)
    lo, hi = bca_interval(replicates, estimate, np.linspace(-1, 1, 21), 0.95)  # symmetric jackknife: a = 0
    assert lo == pytest.approx(estimate - bias - 1.96 * sd, abs=0.02)
    assert hi == pytest.approx(estimate - bias + 1.96 * sd, abs=0.02)


def test_bca_degenerate_cases():
    assert bca_interval(np.full(50, 0.3), 0.3, np.full(10, 0.3), 0.95) == (0.3, 0.3)
    assert np.isnan(bca_interval(np.array([np.nan]), 0.1, np.zeros(3), 0.95)[0])
    lo, hi = bca_interval(np.linspace(0, 1, 101), 0.5, np.linspace(0.4, 0.6, 20), 0.9)
    assert lo == pytest.approx(0.05, abs=0.02) and hi == pytest.approx(0.95, abs=0.02)


def _disparity_run(rng, rates, n_per_group, n_bootstrap=200):
    groups = np.repeat(np.arange(len(rates)), n_per_group)
    pred = (rng.random(len(groups)) < np.asarray(rates)[groups]).astype(int)
    y = rng.integers(0, 2, len(groups))
    eligible = np.ones(len(rates), dtype=bool)
    full, _ = group_rates(y, pred, groups, len(rates), np.ones((1, len(groups))), eligible)
    boot, _ = group_rates(y, pred, groups, len(rates), bootstrap_weights(len(groups), n_bootstrap, rng), eligible)
    gap = float(np.ptp(full["selection_rate"][0]))
    spread = boot["selection_rate"].max(axis=1) - boot["selection_rate"].min(axis=1)
    return gap, percentile_interval(spread, 0.95), largest_gap_interval(
        [(full["selection_rate"][0], boot["selection_rate"])], 0.95
    )


@pytest.mark.parametrize("rates", [(0.3, 0.3, 0.3), (0.3, 0.3, 0.42)])
def test_largest_gap_band_contains_its_estimate_and_covers_the_true_gap(rates):
    rng = np.random.default_rng(11)
    truth = max(rates) - min(rates)
    runs, covered_band, covered_percentile = 200, 0, 0
    for _ in range(runs):
        gap, (p_lo, p_hi), (estimate, lo, hi) = _disparity_run(rng, rates, 300)
        assert estimate == pytest.approx(gap) and lo <= gap <= hi
        covered_band += lo <= truth + 1e-12 and truth <= hi
        covered_percentile += p_lo <= truth <= p_hi
    assert covered_band / runs >= 0.93
    if truth == 0:  # the percentile interval of a max-minus-min never reaches a true gap of zero
        assert covered_percentile / runs < 0.1


def test_fairness_intervals_contain_their_estimates():
    # Issue 14: "equalized-odds difference 0.247 [0.250, 0.558]", an interval that excluded its own estimate.
    rng = np.random.default_rng(4)
    for seed in range(3):
        n = 400
        Z = rng.normal(size=(n, 4))
        sensitive = pd.DataFrame(
            {"gender": rng.choice(["f", "m"], n), "ethnicity": rng.choice(["a", "b", "c", "d"], n)}
        )
        target = (Z[:, 0] + rng.normal(size=n) > 0).astype(int)
        result = fairness_report(Z, target, sensitive, n_bootstrap=200, random_state=seed, min_group_size=20)
        for frame, value in ((result.disparities, "value"), (result.by_group, "value")):
            defined = frame.dropna(subset=["ci_low"])
            assert len(defined)
            assert (defined["ci_low"] <= defined[value] + 1e-12).all()
            assert (defined[value] <= defined["ci_high"] + 1e-12).all()


def test_zero_is_reported_as_zero(tmp_path):
    rng = np.random.default_rng(5)
    labels = pd.DataFrame({"gender": rng.choice(["f", "m"], 300, p=[0.3, 0.7])})
    result = audit_leakage(rng.normal(size=(300, 3)), labels, probes=("prior", "linear"), n_bootstrap=50,
                           n_permutations=20)
    prior = result.table[result.table["probe"] == "prior"].set_index("metric")
    assert prior.loc["information_bits", "mean"] == 0.0  # not 1.24e-16
    assert prior.loc["information_bits", "ci_low"] == 0.0 and prior.loc["information_bits", "ci_high"] == 0.0
    html = write_report(result, tmp_path)["report.html"].read_text()
    assert "e-1" not in html
    assert all(
        r["ci_low"] <= r["mean"] <= r["ci_high"]
        for r in result.table[result.table["metric"] != "p_value"].to_dict("records")
    )


def _fold_outputs(rng, n_folds, m, informative):
    outputs = []
    for _ in range(n_folds):
        y = rng.integers(0, 2, m)
        guess = y if informative else rng.integers(0, 2, m)
        P = np.where(guess[:, None] == np.arange(2), 0.9, 0.1)
        outputs.append({"y": y, "P": P, "prior": np.array([0.5, 0.5])})
    return outputs


def test_a_perfect_probe_is_not_held_at_the_permutation_floor():
    from bafo_pipeline.audits.permutation import FLOOR_EXTENSION, per_fold_test

    rng = np.random.default_rng(0)
    outputs = _fold_outputs(rng, 5, 200, informative=True)
    p = per_fold_test(outputs, categorical=True, n_permutations=100, rng=rng)
    # Five folds at a floor of 1/101 would combine to 0.0495: with 11 probes tested that is never significant.
    assert p == pytest.approx(5 / (FLOOR_EXTENSION * 100 + 1))
    assert p * 11 < 0.05


def test_the_extended_per_fold_test_keeps_its_size_under_the_null():
    from bafo_pipeline.audits.permutation import per_fold_test

    rng = np.random.default_rng(1)
    # 20 permutations per fold: each fold sits at its floor one time in 21, so the extension runs often.
    p = np.array([per_fold_test(_fold_outputs(rng, 1, 30, informative=False), categorical=True, n_permutations=20,
                                rng=rng) for _ in range(600)])
    for alpha in (0.02, 0.05, 0.1, 0.3):
        bound = alpha + 3 * np.sqrt(alpha * (1 - alpha) / len(p))
        assert np.mean(p <= alpha) <= bound


def test_the_refitted_linear_test_sees_a_signal_with_more_dimensions_than_rows():
    from bafo_pipeline.audits.permutation import refit_linear_test

    rng = np.random.default_rng(2)
    y = rng.integers(0, 2, 300)
    X = rng.normal(size=(300, 400))
    X[:, 0] += 2.0 * y
    folds = np.array_split(rng.permutation(300), 5)
    statistic, p = refit_linear_test(X, y, folds, categorical=True, n_classes=2, n_permutations=200, rng=rng)
    assert statistic > 0.1 and p < 0.01  # whitened by the sample covariance: statistic 0, p = 1


def test_the_refitted_linear_test_keeps_its_size_with_more_dimensions_than_rows():
    from bafo_pipeline.audits.permutation import refit_linear_test

    rng = np.random.default_rng(3)
    p = []
    for _ in range(150):
        y, X = rng.integers(0, 2, 60), rng.normal(size=(60, 80))
        folds = np.array_split(rng.permutation(60), 5)
        p.append(refit_linear_test(X, y, folds, categorical=True, n_classes=2, n_permutations=40, rng=rng)[1])
    p = np.array(p)
    for alpha in (0.05, 0.1, 0.3):
        assert np.mean(p <= alpha) <= alpha + 3 * np.sqrt(alpha * (1 - alpha) / len(p))
