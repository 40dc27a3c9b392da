"""The significance rule behind the verdicts: leakage means an attack beats chance, significantly."""

import numpy as np
import pandas as pd

from bafo_pipeline.audits.probes import PROBES
from bafo_pipeline.audits.side_channels import SIDE_CHANNEL_PROBES
from bafo_pipeline.audits.verdict import PROBE_NAMES, depends_without_gain, is_significant, verdict


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


def _table(rows):
    """An audit table of (probe, attacker, leakage, p-value) rows for one continuous attribute."""
    from bafo_pipeline.audits.result import AuditResult

    records = []
    for probe, attacker, leakage, p_value in rows:
        base = {"representation": "z", "attribute": "age", "kind": "continuous", "probe": probe,
                "attacker": attacker, "std": 0.0, "n": 500}
        records.append({**base, "metric": "leakage", "mean": leakage, "ci_low": leakage - 0.01,
                        "ci_high": leakage + 0.01})
        if p_value is not None:
            records.append({**base, "metric": "p_value", "mean": p_value, "ci_low": np.nan, "ci_high": np.nan})
    return AuditResult(table=pd.DataFrame(records))


def test_a_below_chance_probes_p_value_does_not_make_another_probes_score_significant():
    # The linear probe's test rejects (dependence) at a score below chance; the boosted trees
    # score just above chance, not significantly. The row is the trees', with the trees' p-value.
    result = _table([("prior", "cross-validated", 0.0, None), ("linear", "cross-validated", -0.003, 0.002),
                     ("gbdt", "cross-validated", 0.01, 0.4)])
    (row,) = result.worst_case().to_dict("records")
    assert row["probe"] == "gbdt" and row["p_value"] == 0.8  # 0.4, Bonferroni over two tests
    assert not is_significant(row)
    assert row["verdict"].startswith("No significant leakage")


def test_when_no_attack_beats_chance_the_smallest_p_value_is_kept_for_the_dependence_note():
    result = _table([("linear", "cross-validated", -0.003, 0.002), ("gbdt", "data-rich", -0.01, 0.3)])
    (row,) = result.worst_case().to_dict("records")
    assert row["probe"] == "linear" and row["p_value"] == 0.004
    assert depends_without_gain(row) and "rejects independence" in row["verdict"]


def test_an_above_chance_attack_with_a_small_p_value_stays_significant():
    result = _table([("linear", "cross-validated", 0.05, 0.002), ("gbdt", "data-rich", 0.08, 0.3)])
    (row,) = result.worst_case(with_verdict=False).to_dict("records")
    assert row["probe"] == "gbdt" and row["p_value"] == 0.004 and is_significant(row)


def test_every_probe_is_named_in_words():
    assert set(PROBES) | set(SIDE_CHANNEL_PROBES) <= set(PROBE_NAMES)


def test_a_quadratic_probes_verdict_names_it_in_words():
    class Errors:  # the audit result's one method a continuous attribute's sentence reads
        def value(self, representation, attribute, probe, metric, attacker):
            return {"mean": 15.0 if probe == "prior" else 12.0}

    row = {**_row(0.12, 0.001, (0.08, 0.16), probe="quadratic"), "attacker": "data-rich", "representation": "bafo"}
    text = verdict(Errors(), row)
    assert text.startswith("Weak leakage of age: a quadratic probe trained on the labelled training export recovers it "
                           "(mean absolute error 12 against 15 for always guessing the median")
