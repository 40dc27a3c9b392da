"""Plain-language verdicts for the worst-case leakage of each attribute."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from .attackers import CROSS_VALIDATED, DATA_RICH, IN_SAMPLE

__all__ = ["SEVERITY", "depends_without_gain", "is_significant", "severity", "side_channel_verdict", "verdict"]

# Upper bounds of chance-adjusted leakage for each word.
SEVERITY = ((0.05, "slight"), (0.2, "weak"), (0.5, "moderate"), (float("inf"), "strong"))
PROBE_NAMES = {
    "prior": "the prior baseline",
    "linear": "a linear probe",
    "mlp": "an MLP",
    "gbdt": "gradient boosting",
    "quadratic": "a quadratic probe",
    "knn": "a nearest-neighbour probe",
    "adjacency": "the labels of neighbouring rows",
    "group_sums": "the group-sum attack",
}
# How each attacker other than the cross-validated one came by its guess.
ATTACKER_PHRASES = {
    DATA_RICH: " trained on the labelled training export",
    IN_SAMPLE: " on the training export, each tenth of its rows given the other nine tenths' labels",
}


def _num(x: float) -> str:
    text = f"{x:.2f}"
    return "0.00" if text == "-0.00" else text


def severity(leakage: float) -> str:
    """One word for a chance-adjusted leakage value."""
    for bound, word in SEVERITY:
        if leakage < bound:
            return word
    return "strong"


def is_significant(row: Mapping[str, Any], *, alpha: float = 0.05) -> bool:
    """Whether a worst-case row shows leakage: an attack probe beats chance significantly.

    Significant means the probe scores above chance (chance-adjusted leakage above 0)
    and either its permutation p-value is below ``alpha`` or, where no p-value was
    computed, its interval's lower end is above 0.

    The permutation test's null is independence, so it can reject for a probe that
    scores *below* chance: a probe refitted on shuffled labels over-fits and scores
    lower still. Such a row shows the representation is not independent of the
    attribute (:func:`depends_without_gain`), not that this attack reads it.
    """
    p, lo = row["p_value"], row["ci_low"]
    if row["probe"] == "prior" or not row["leakage"] > 0:
        return False
    return bool((not np.isnan(p) and p < alpha) or (np.isnan(p) and not np.isnan(lo) and lo > 0))


def depends_without_gain(row: Mapping[str, Any], *, alpha: float = 0.05) -> bool:
    """Whether the permutation test rejects independence although no probe beats chance."""
    p = row["p_value"]
    return bool(row["probe"] != "prior" and not row["leakage"] > 0 and not np.isnan(p) and p < alpha)


def _natural_units(result, row: dict[str, Any]) -> str:
    rep, attr, probe = row["representation"], row["attribute"], row["probe"]
    attacker = row.get("attacker", CROSS_VALIDATED)
    if row["kind"] == "categorical":
        bacc = result.value(rep, attr, probe, "balanced_accuracy", attacker)["mean"]
        k = len(result.attributes.get(attr, {}).get("classes", [])) or 2
        return f"balanced accuracy {bacc:.2f} against chance {1 / k:.2f}"
    mae = result.value(rep, attr, probe, "mae", attacker)["mean"]
    try:
        base = result.value(rep, attr, "prior", "mae", attacker)["mean"]
        return f"mean absolute error {mae:.3g} against {base:.3g} for always guessing the median"
    except KeyError:
        return f"mean absolute error {mae:.3g}"


def verdict(result, row: dict[str, Any], *, alpha: float = 0.05) -> str:
    """A short sentence on one (representation, attribute) worst-case row of an embedding.

    Parameters
    ----------
    result : AuditResult
    row : dict
        A row of :meth:`AuditResult.worst_case` (without the verdict). Side
        channels have their own rule and sentence: :func:`side_channel_verdict`.
    alpha : float
        Significance level of the permutation test.
    """
    attr, leak, hi, p = row["attribute"], row["leakage"], row["ci_high"], row["p_value"]
    ci = _interval(row)
    p_text = "" if np.isnan(p) else f", p = {p:.3g}"
    if not is_significant(row, alpha=alpha):
        text = (
            f"No significant leakage of {attr}: the best probe ({row['probe']}) scores {_num(leak)}{ci} "
            f"chance-adjusted{p_text}."
        )
        if depends_without_gain(row, alpha=alpha):
            text += (
                f" The permutation test still rejects independence (p < {alpha:g}): the latents are not"
                " independent of it, though no probe here turns that into better-than-chance guesses."
            )
        if not np.isnan(hi) and hi >= 0.05:
            return (
                text
                + f" The interval still allows leakage up to {hi:.2f}; more audit samples would narrow it."
            )
        return text + " These probes recover nothing; stronger attackers are not ruled out."
    units = _natural_units(result, row)
    trained = ATTACKER_PHRASES.get(row.get("attacker"), "")
    text = (
        f"{severity(leak).capitalize()} leakage of {attr}: {PROBE_NAMES.get(row['probe'], row['probe'])}{trained} "
        f"recovers it ({units}; chance-adjusted {_num(leak)}{ci}{p_text})."
    )
    if row.get("attacker") == IN_SAMPLE:
        return text + (
            " The concealment was fitted on these rows, which fixed their class means; share rows it was not "
            "fitted on."
        )
    linear, nonlinear = row.get("linear", np.nan), row.get("nonlinear", np.nan)
    if not np.isnan(linear) and not np.isnan(nonlinear) and linear < 0.05 and nonlinear >= 0.05:
        text += " Linear probes are near chance, so the remaining signal is non-linear."
    return text


def side_channel_verdict(result, row: dict[str, Any]) -> str:
    """A short sentence on one side channel's worst case, agreeing with its ``leaks`` decision.

    Parameters
    ----------
    result : AuditResult
    row : dict
        A row of :meth:`AuditResult.side_channels` (``leaks`` and
        ``family_p_value`` set, the verdict not yet).
    """
    info = result.representations.get(row["representation"], {})
    channel, attr, p = info.get("channel", row["representation"]), row["attribute"], row["family_p_value"]
    p_text = "" if np.isnan(p) else f", family-wise p = {p:.3g}"
    effect = f"chance-adjusted {_num(row['leakage'])}{_interval(row)}{p_text}"
    if row["leaks"]:
        if row["probe"] == "adjacency":
            how = f"rows next to each other in this order share {attr} far more often than chance"
        else:
            how = f"{PROBE_NAMES.get(row['probe'], row['probe'])} recovers {attr} from it"
        return (
            f"The {channel} of {info.get('of')} reveals {attr}: {how} ({effect}). Renumber or reorder the rows "
            "independently of the labels (or drop the column) before sharing."
        )
    return f"The {channel} of {info.get('of')} shows no significant link to {attr} ({effect})."


def _interval(row: dict[str, Any]) -> str:
    lo, hi = row["ci_low"], row["ci_high"]
    return "" if np.isnan(lo) else f" [{_num(lo)}, {_num(hi)}]"
