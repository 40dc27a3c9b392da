"""benchmarks/leakage_frontier.py's utility columns: per-variant shares of 'none', the table, the leakage-vs-utility panel."""

import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from matplotlib.figure import Figure

from bafo_pipeline.audits.utility import audit_utility

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


@pytest.fixture(scope="module")
def frontier():
    sys.path.insert(0, str(BENCHMARKS))
    try:
        import leakage_frontier

        yield leakage_frontier
    finally:
        sys.path.remove(str(BENCHMARKS))


@pytest.fixture(scope="module")
def shares(frontier):
    """Synthetic targets; 'none' keeps them all, 'kept' nearly all, 'erased' none."""
    rng = np.random.default_rng(0)
    n = 300
    targets = pd.DataFrame({name: rng.normal(size=n) for name in frontier.UTILITY_JUDGED["synthetic"]})
    signal = targets.to_numpy()
    representations = {
        frontier.PIXELS: signal + 0.1 * rng.normal(size=signal.shape),
        "none": signal + 0.2 * rng.normal(size=signal.shape),
        "kept": signal + 0.25 * rng.normal(size=signal.shape),
        "erased": rng.normal(size=signal.shape),
    }
    result = audit_utility(representations, targets, references=[frontier.PIXELS, "none"],
                           probes=("prior", "linear"), n_bootstrap=100, random_state=0)
    return result.shares("best")


def test_entries_give_each_variants_least_share_of_none(frontier, shares):
    judged = frontier.UTILITY_JUDGED["synthetic"]
    kept = frontier.utility_entry(shares, "kept", judged)
    erased = frontier.utility_entry(shares, "erased", judged)
    assert set(kept["targets"]) == set(judged) and kept["judged"] == list(judged)
    assert 0.9 < kept["min_share_of_none"] <= 1.0
    assert all(entry["at_chance"] for entry in erased["targets"].values())
    assert erased["min_share_of_none"] is None or erased["min_share_of_none"] < 0.1
    assert frontier.utility_entry(shares, "none", judged)["min_share_of_none"] == pytest.approx(1.0)


def _result(frontier, shares):
    judged = frontier.UTILITY_JUDGED["synthetic"]
    variants = []
    for name, gender in (("none", 0.8), ("kept", 0.7), ("erased", 0.5)):
        variants.append({
            "name": name, "labels_at_transform": False,
            "utility": frontier.utility_entry(shares, name, judged),
            "audit": {"gender": {"worst": gender, "ci_low": gender - 0.05, "ci_high": gender + 0.05}},
        })
    return {
        "variants": variants, "data": {"source": "synthetic"}, "utility_explained_by_sensitive": {},
        "utility_references": {n: frontier.utility_entry(shares, n, judged) for n in (frontier.PIXELS, "none")},
    }


def test_table_marks_the_goal_per_variant(frontier, shares):
    lines = frontier.utility_lines(_result(frontier, shares))
    assert "## Utility kept" in lines
    rows = {line.split(" | ")[0].strip("| "): line for line in lines if line.startswith("| ")}
    assert rows["kept"].endswith("| yes |") and rows["erased"].endswith("| **no** |")
    assert "*none*" in rows and "*pixels (PCA 64)*" in rows and "none" not in {k for k in rows if not k.startswith("*")}
    assert frontier.utility_lines({"variants": [{"name": "none", "labels_at_transform": False}],
                                   "data": {"source": "synthetic"}}) == []  # runs without utility render as before


def test_panel_plots_leakage_against_utility(frontier, shares):
    result = _result(frontier, shares)
    ax = Figure().add_subplot()
    import matplotlib.pyplot as plt

    frontier._utility_panel(ax, [v for v in result["variants"] if v["utility"]["min_share_of_none"] is not None],
                            plt.get_cmap("tab10"))
    plotted = sorted(float(line.get_xdata()[0]) for line in ax.lines if len(line.get_xdata()) == 1
                     and line.get_linestyle() == "None")
    assert plotted and plotted[-1] == pytest.approx(1.0)  # 'none' keeps all of itself
    assert "leakage vs utility" in ax.get_title()
