"""benchmarks/in_sample_attack.py: where each fitting mode fits the step, and what its attack reads."""

import numpy as np
import pandas as pd
import pytest


@pytest.fixture(scope="module")
def bench(benchmark_module):
    with benchmark_module("in_sample_attack") as module:
        yield module


@pytest.fixture(scope="module")
def planted():
    """Latents that say nothing about anyone, with the benchmark's attributes."""
    rng = np.random.default_rng(0)
    n = 1200
    attributes = pd.DataFrame({
        "age": rng.uniform(1, 80, n), "gender": rng.integers(0, 2, n), "ethnicity": rng.integers(0, 3, n),
    })
    return rng.normal(size=(n, 16)), attributes


def test_in_sample_moves_every_row_by_the_step_fitted_on_all_of_them(bench, planted):
    latents, attributes = planted
    moved = bench.conceal("linear", latents, attributes, np.ones(len(latents), bool), "in-sample", seed=0)
    fitted = bench.STEPS["linear"]().fit(latents, sensitive_features=attributes)
    np.testing.assert_allclose(moved, fitted.transform(latents))


def test_cross_fitting_leaves_no_row_moved_by_a_step_fitted_on_it(bench, planted):
    latents, attributes = planted
    in_sample = bench.conceal("linear", latents, attributes, np.ones(len(latents), bool), "in-sample", seed=0)
    crossed = bench.conceal("linear", latents, attributes, np.ones(len(latents), bool), "cross-fitted", seed=0)
    assert (np.abs(in_sample - crossed).max(axis=1) > 1e-9).all()  # every row moved by another fit
    codes = bench.group_codes(attributes)
    known = np.random.default_rng(1).random(len(latents)) < 0.9
    read = bench.attack(in_sample, codes, known)["gender"]
    unread = bench.attack(crossed, codes, known)["gender"]
    # LEACE fitted on these rows equalised the gender means over them: the attack reads the unknown rows' gender;
    # fitted on the other folds it does not.
    assert read["group_sum_by_classes"] > 0.6 and unread["group_sum_by_classes"] < 0.57
    assert read["probe"] < 0.56  # no probe reads anything: the noise holds no gender


def test_group_codes_are_the_transports_cells(bench, planted):
    _, attributes = planted
    codes = bench.group_codes(attributes)
    assert set(np.unique(codes["age"])) == {0, 1, 2, 3}
    assert len(np.unique(codes["cell"])) == 4 * 2 * 3
    cells = pd.DataFrame({k: codes[k] for k in ("age", "gender", "ethnicity", "cell")}).drop_duplicates()
    assert len(cells) == 24  # one cell per combination of the attribute codes
