"""The significance rule behind the verdicts: leakage means an attack beats chance, significantly."""

import numpy as np

from bafo_pipeline.audits.verdict import depends_without_gain, is_significant, verdict


def _row(leakage, p_value, ci=(np.nan, np.nan), probe="linear"):
    return {
        "attribute": "age", "kind": "continuous", "probe": probe, "attacker": "cross-validated",
        "leakage": leakage, "ci_low": ci[0], "ci_high": ci[1], "p_value": p_value,
    }


def test_a_probe_below_chance_is_not_leakage_even_when_independence_is_rejected():
    # As bafo run's demo once reported: the refitted probe on shuffled labels over-fits further
    # below chance than on the real ones, so the test rejects independence for a -0.003 score.
    row = _row(-0.003, 0.012, (-0.008, 0.002))
    assert not is_significant(row)
    assert depends_without_gain(row)
    text = verdict(None, row)
    assert text.startswith("No significant leakage of age")
    assert "rejects independence" in text


def test_a_probe_above_chance_with_a_small_p_value_is_leakage():
    row = _row(0.093, 0.014, (-0.021, 0.207))
    assert is_significant(row)
    assert not depends_without_gain(row)
    assert not is_significant(row, alpha=0.01)


def test_without_a_p_value_the_interval_decides():
    assert is_significant(_row(0.04, np.nan, (0.01, 0.07)))
    assert not is_significant(_row(0.04, np.nan, (-0.01, 0.09)))
    assert not depends_without_gain(_row(-0.01, np.nan, (-0.03, 0.01)))


def test_the_prior_baseline_never_leaks():
    row = _row(0.2, 0.001, (0.1, 0.3), probe="prior")
    assert not is_significant(row) and not depends_without_gain(row)


def test_a_chance_level_probe_whose_test_does_not_reject_gets_no_dependence_sentence():
    text = verdict(None, _row(0.0, 0.6, (-0.01, 0.01)))
    assert "rejects independence" not in text and "recover nothing" in text
