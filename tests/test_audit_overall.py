"""Utility in the audit: targets beside leakage, the overall verdict line, a downstream model at chance."""

import json

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner

from bafo_pipeline.audits import run_audit
from bafo_pipeline.audits.overall import overall_verdicts
from bafo_pipeline.cli import main

FAST = {"probes": ("prior", "linear"), "n_bootstrap": 200, "n_permutations": 100, "random_state": 0}
N = 500


def _planted(n=N, seed=0):
    """Labels with two sensitive attributes and two non-sensitive targets, and four representations.

    ``pixels`` carries everything (the reference); ``shared`` keeps the targets and hides the
    sensitive attributes; ``erased`` hides everything (noise); ``leaky`` keeps the targets and
    gender.
    """
    rng = np.random.default_rng(seed)
    gender = rng.choice(["female", "male"], n)
    ethnicity = rng.choice(["a", "b", "c"], n)
    yaw = rng.normal(size=n)
    smile_score = rng.normal(size=n)
    smile = (smile_score > 0).astype(int)
    labels = pd.DataFrame({"gender": gender, "ethnicity": ethnicity, "yaw": yaw, "smile": smile})
    female = (gender == "female").astype(float)
    noise = lambda k: rng.normal(size=(n, k))  # noqa: E731
    targets = np.column_stack([yaw, smile_score]) + 0.2 * noise(2)
    representations = {
        "pixels": np.column_stack([targets, 3 * female, ethnicity == "a", noise(2)]),
        "shared": np.column_stack([targets, noise(4)]),
        "erased": noise(6),
        "leaky": np.column_stack([targets, 3 * female, noise(3)]),
    }
    return {k: v.astype(np.float32) for k, v in representations.items()}, labels


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    representations, labels = _planted()
    out = tmp_path_factory.mktemp("overall")
    return run_audit(
        representations, labels, out, attributes=["gender", "ethnicity"], target="smile",
        targets=["yaw", "smile"], references=["pixels"], **FAST,
    )


def test_utility_scores_planted_targets_and_noise(report):
    scores = report.utility.shares("best").set_index(["representation", "target"])
    for name in ("pixels", "shared", "leaky"):
        assert scores.loc[(name, "yaw"), "score"] > 0.8 and not scores.loc[(name, "yaw"), "at_chance"]
        assert scores.loc[(name, "smile"), "score"] > 0.6
    for target in ("yaw", "smile"):
        assert scores.loc[("erased", target), "at_chance"]
        assert scores.loc[("erased", target), "share_of[pixels]"] < 0.2 or np.isnan(
            scores.loc[("erased", target), "share_of[pixels]"]
        )
        assert scores.loc[("shared", target), "share_of[pixels]"] > 0.9


def test_the_quadratic_attacker_probes_leakage_but_not_utility():
    representations, labels = _planted(300, seed=1)
    report = run_audit(representations, labels, attributes=["gender"], targets=["yaw"], references=["pixels"],
                       **{**FAST, "probes": ("prior", "linear", "quadratic"), "n_permutations": 0})
    assert set(report.leakage.metric("leakage")["probe"]) >= {"linear", "quadratic"}
    assert set(report.utility.audit.metric("leakage")["probe"]) == {"prior", "linear"}


def test_utility_probes_can_be_chosen_apart_from_the_attackers():
    representations, labels = _planted(300, seed=1)
    report = run_audit(representations, labels, attributes=["gender"], targets=["yaw"], references=["pixels"],
                       utility_probes=("prior", "knn"),
                       **{**FAST, "probes": ("prior", "linear"), "n_permutations": 0})
    assert set(report.leakage.metric("leakage")["probe"]) == {"prior", "linear"}
    assert set(report.utility.audit.metric("leakage")["probe"]) == {"prior", "knn"}


def test_overall_verdict_needs_both_halves(report):
    verdicts = {v.representation: v for v in report.verdicts}
    assert set(verdicts) == {"shared", "erased", "leaky"}  # the reference is not judged
    assert verdicts["shared"].passed and verdicts["shared"].text.startswith("PASS: shared hides")
    assert verdicts["erased"].hides and not verdicts["erased"].keeps
    assert "loses yaw" in verdicts["erased"].text and "at chance" in verdicts["erased"].text
    assert verdicts["leaky"].keeps and not verdicts["leaky"].hides
    assert "leaks gender" in verdicts["leaky"].text and verdicts["leaky"].text.startswith("FAIL")


def test_gate_and_threshold_change_the_leakage_half(report):
    lenient = overall_verdicts(report.leakage, report.utility, max_leakage=1.0)
    assert {v.representation: v.hides for v in lenient}["leaky"]
    strict = overall_verdicts(report.leakage, report.utility, representations=["leaky"], max_leakage=0.05)
    assert len(strict) == 1 and not strict[0].hides and "gender" in strict[0].text and "> 0.05" in strict[0].text
    without_utility = overall_verdicts(report.leakage, None, representations=["shared", "leaky"])
    assert without_utility[0].keeps is None and without_utility[0].passed
    assert without_utility[0].text.startswith("PASS (leakage only): shared") and "utility not audited" in without_utility[0].text
    assert without_utility[1].text.startswith("FAIL: leaky leaks gender")


def test_report_has_the_verdict_line_the_utility_table_and_says_when_the_downstream_model_is_at_chance(report):
    page = (report.paths["report.html"]).read_text()
    assert "<h2>Overall verdict</h2>" in page and "<b>PASS</b>: shared hides" in page
    assert "<b>FAIL</b>: erased" in page and "<b>FAIL</b>: leaky leaks gender" in page
    assert "Utility: what a downstream model can still learn" in page
    # erased: the downstream smile model is at chance, and the report says so once, for erased only
    assert page.count("This downstream model is at chance") == 1
    at_chance_section = page.split("erased: downstream model")[1].split("<h3>")[0]
    assert "This downstream model is at chance" in at_chance_section and "<details>" in at_chance_section
    fairness = {f.representation: f.overall for f in report.fairness}
    assert fairness["erased"]["at_chance"] and not fairness["shared"]["at_chance"]
    low, high = fairness["shared"]["balanced_accuracy_ci"]
    assert 0.5 < low <= fairness["shared"]["balanced_accuracy"] <= high
    from bafo_pipeline.audits.report import plot_fairness

    legend = [t.get_text() for t in plot_fairness(report.fairness).axes[0].get_legend().get_texts()]
    assert "erased (model at chance: gaps not meaningful)" in legend and "shared" in legend
    saved = json.loads(report.paths["report.json"].read_text())
    assert [o["representation"] for o in saved["overall"]] == ["shared", "erased", "leaky"]
    assert saved["utility"]["references"] == ["pixels"]


def test_bad_targets_are_refused():
    representations, labels = _planted(n=100)
    with pytest.raises(ValueError, match="no utility target column"):
        run_audit(representations, labels, attributes=["gender"], targets=["pitch"], **FAST)
    with pytest.raises(ValueError, match="cannot be utility targets"):
        run_audit(representations, labels, attributes=["gender"], targets=["gender"], **FAST)
    with pytest.raises(ValueError, match="references"):
        run_audit(representations, labels, attributes=["gender"], targets=["yaw"], references=["raw"], **FAST)


def _write(path, ids, Z, labels=None):
    columns = {"id": pa.array(ids), "latent": pa.array(list(Z), type=pa.list_(pa.float32()))}
    if labels is not None:
        columns.update({c: pa.array(labels[c].to_numpy()) for c in labels.columns})
    pq.write_table(pa.table(columns), path)


def test_cli_audit_targets(tmp_path):
    representations, labels = _planted(n=300, seed=1)
    ids = np.arange(len(labels)) * 7 % 1009  # ids unrelated to the labels' order
    labels.assign(id=ids).to_csv(tmp_path / "labels.csv", index=False)
    for name in ("pixels", "shared", "erased"):
        _write(tmp_path / f"{name}.parquet", ids, representations[name])
    result = CliRunner().invoke(main, [
        "audit", *[a for name in ("pixels", "shared", "erased") for a in ("--latents", str(tmp_path / f"{name}.parquet"))],
        "--labels", str(tmp_path / "labels.csv"), "--attributes", "gender,ethnicity", "--targets", "yaw,smile",
        "--references", "pixels", "--out", str(tmp_path / "report"),
    ])
    assert result.exit_code == 0, result.output
    assert "utility kept (non-sensitive targets" in result.output
    assert "PASS: shared hides" in result.output
    assert "FAIL: erased hides the sensitive attributes" in result.output and "loses yaw" in result.output
    report = json.loads((tmp_path / "report" / "report.json").read_text())
    best = pd.DataFrame(report["utility"]["best"]).set_index(["representation", "target"])
    assert best.loc[("shared", "yaw"), "score"] > 0.8 and best.loc[("erased", "yaw"), "at_chance"]
