"""benchmarks/quadratic_attack.py: scores in the goal's units per attacker and probe, and the model's own concealment."""

import numpy as np
import pandas as pd
import pytest
from types import SimpleNamespace

from bafo_pipeline.audits import audit_leakage


@pytest.fixture(scope="module")
def bench(benchmark_module):
    with benchmark_module("quadratic_attack") as module:
        yield module


def test_scores_are_in_the_goals_units_with_and_without_the_quadratic_probe(bench):
    rng = np.random.default_rng(0)
    n = 1600
    labels = pd.DataFrame({"age": rng.uniform(1, 80, n), "gender": rng.integers(0, 2, n),
                           "ethnicity": rng.integers(0, 3, n)})
    Z = rng.normal(size=(n, 4))
    Z[:, 1] *= np.where(labels["gender"] == 1, 3.0, 1.0)  # a spread only the quadratic probe reads
    result = audit_leakage({"z": Z[800:]}, labels.iloc[800:].reset_index(drop=True),
                           fit_representations={"z": Z[:800]}, fit_labels=labels.iloc[:800],
                           probes=("prior", "linear", "quadratic"), n_bootstrap=20, n_permutations=0, random_state=0)
    scores = bench.in_goal_units(result, ["linear", "quadratic"])["z"]
    assert set(scores) == {"cross-validated", "data-rich"}
    gender = scores["data-rich"]["gender"]
    assert gender["metric"] == "balanced_accuracy" and gender["worst_probe"] == "quadratic"
    assert gender["worst"] > 0.7 and gender["worst_without_quadratic"] < 0.58
    low, high = gender["by_probe"]["quadratic"]["ci"]
    assert low <= gender["worst"] <= high
    age = scores["data-rich"]["age"]
    assert age["metric"] == "mae" and age["worst"] == min(p["mean"] for p in age["by_probe"].values())
    assert age["worst"] > 10  # ages are noise here: about a quarter of their 1-80 range


def test_latents_pass_the_labels_only_to_a_concealment_that_needs_them(bench):
    calls = []

    def transform(images, **kwargs):
        calls.append(sorted(kwargs))
        return images

    part = SimpleNamespace(images=np.zeros((2, 3)), sensitive_features=pd.DataFrame({"gender": [0, 1]}))
    for needs in (True, False):
        model = SimpleNamespace(needs_sensitive_features_to_transform=needs, transform=transform)
        bench.latents(model, part, conceal=True)
        bench.latents(model, part, conceal=False)
    assert calls == [["sensitive_features"], ["conceal"], ["conceal"], ["conceal"]]
