"""benchmarks/transport_utility_loss.py: its stages do what their names say, and its cell residuals remove
what the attributes explain together."""

import numpy as np
import pandas as pd
import pytest


@pytest.fixture(scope="module")
def bench(benchmark_module):
    with benchmark_module("transport_utility_loss") as module:
        yield module


def attributes(n, seed):
    rng = np.random.default_rng(seed)
    return pd.DataFrame({"age": rng.uniform(1, 80, n), "gender": rng.integers(0, 2, n),
                         "ethnicity": rng.integers(0, 3, n)})


def test_cell_residuals_remove_an_interaction_the_additive_residual_keeps(bench):
    rng = np.random.default_rng(0)
    fit, new = attributes(4000, 1), attributes(2000, 2)

    def targets(labels, independent):
        both = (labels["gender"] == 1) & (labels["ethnicity"] == 2)  # an effect of the two together only
        return pd.DataFrame({"mouth": 0.5 * labels["gender"] + 2.0 * both + independent})

    independent = rng.normal(size=len(new))
    additive = bench.residualize_targets(targets(new, independent), new, fit_targets=targets(fit, rng.normal(size=len(fit))),
                                         fit_sensitive=fit)[0]["mouth"]
    cells = bench.cell_residuals(targets(new, independent), new, targets(fit, rng.normal(size=len(fit))), fit)["mouth"]
    both = ((new["gender"] == 1) & (new["ethnicity"] == 2)).to_numpy(float)
    assert abs(np.corrcoef(additive, both)[0, 1]) > 0.2  # the additive model cannot fit the joint effect
    assert abs(np.corrcoef(cells, both)[0, 1]) < 0.05
    assert np.corrcoef(cells, independent)[0, 1] > 0.95  # what the attributes do not explain is kept


def test_the_stages_remove_means_then_spreads_cumulatively(bench):
    rng = np.random.default_rng(3)
    fit, new = attributes(6000, 4), attributes(3000, 5)

    def latents(labels):
        Z = rng.normal(size=(len(labels), 3))
        Z[:, 0] += 2.0 * labels["gender"].to_numpy()  # a mean difference
        Z[:, 1] *= 1 + labels["ethnicity"].to_numpy()  # a spread difference
        return Z

    stages = bench.stage_latents(latents(fit), fit, {"test": (latents(new), new)})
    assert list(stages) == [*bench.STAGES, *bench.ALTERNATIVES]
    ethnicity, male = new["ethnicity"].to_numpy(), new["gender"].to_numpy() == 1

    def spread_ratio(Z):
        spreads = [Z[ethnicity == k, 1].std() for k in range(3)]
        return max(spreads) / min(spreads)

    for name, parts in stages.items():
        Z = parts["test"]
        assert abs(Z[male, 0].mean() - Z[~male, 0].mean()) < 0.15, name  # every stage removes the mean difference
    assert spread_ratio(stages["smooth mean"]["test"]) > 2.5  # the spreads are left to the covariance maps
    assert spread_ratio(stages["+ cell means"]["test"]) > 2.5
    assert spread_ratio(stages["+ covariance maps, shrinkage 10 (bafo run)"]["test"]) < 1.15


def test_covariance_maps_of_one_attribute_match_its_spreads_only(bench):
    rng = np.random.default_rng(6)
    fit, new = attributes(6000, 7), attributes(3000, 8)

    def latents(labels):
        Z = rng.normal(size=(len(labels), 2))
        Z[:, 0] *= 1 + 2 * labels["gender"].to_numpy()  # gender's spread
        Z[:, 1] *= 1 + labels["ethnicity"].to_numpy()  # ethnicity's spread
        return Z

    step = bench.CellMeansThenCovariance(["gender"]).fit(latents(fit), sensitive_features=fit)
    Z = step.transform(latents(new), sensitive_features=new)
    male, ethnicity = new["gender"].to_numpy() == 1, new["ethnicity"].to_numpy()
    assert Z[male, 0].std() / Z[~male, 0].std() == pytest.approx(1.0, abs=0.1)  # was 3
    spreads = [Z[ethnicity == k, 1].std() for k in range(3)]
    assert max(spreads) / min(spreads) > 2.5  # ethnicity's spreads are left as they were
