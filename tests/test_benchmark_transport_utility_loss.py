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
        Z[:, 2] += 1.5 * (labels["gender"].to_numpy() == 1) * (labels["ethnicity"].to_numpy() == 2)  # a joint one
        return Z

    stages, chosen = bench.stage_latents(latents(fit), fit, {"test": (latents(new), new)})
    assert chosen == {}  # no stage chooses its own shrinkage
    assert list(stages) == [*bench.STAGES, *bench.ALTERNATIVES]
    ethnicity, male = new["ethnicity"].to_numpy(), new["gender"].to_numpy() == 1
    both = male & (ethnicity == 2)

    def spread_ratio(Z):
        spreads = [Z[ethnicity == k, 1].std() for k in range(3)]
        return max(spreads) / min(spreads)

    def joint_gap(Z):
        return abs(Z[both, 2].mean() - Z[~both, 2].mean())

    for name, parts in stages.items():
        Z = parts["test"]
        assert abs(Z[male, 0].mean() - Z[~male, 0].mean()) < 0.15, name  # every stage removes the mean difference
    assert joint_gap(stages["smooth mean"]["test"]) > 0.5  # it has no gender x ethnicity term ...
    for name in list(bench.STAGES)[1:]:  # ... which the cell means, and every stage after them, remove
        assert joint_gap(stages[name]["test"]) < 0.15, name
    assert spread_ratio(stages["smooth mean"]["test"]) > 2.5  # the spreads are left to the covariance maps
    assert spread_ratio(stages["+ cell means"]["test"]) > 2.5
    assert spread_ratio(stages["+ covariance maps, shrinkage 40 (bafo run since §15)"]["test"]) < 1.3
    assert spread_ratio(stages["+ covariance maps, shrinkage 10 (bafo run until §15)"]["test"]) < 1.15

    # given alternatives replace the script's own, after the same stages
    moved, chosen = bench.stage_latents(latents(fit), fit, {"test": (latents(new), new)},
                                        {name: bench.VARIANTS[name] for name in ("barycenter", "cov-likelihood")})
    assert list(moved) == [*bench.STAGES, "barycenter", "cov-likelihood"]
    assert spread_ratio(moved["barycenter"]["test"]) < 1.15
    assert list(chosen) == ["cov-likelihood"]
    assert chosen["cov-likelihood"]["chosen_shrinkage"] <= 10  # the planted spreads differ threefold: little pooling


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


def test_kept_shares_are_each_representations_score_over_the_unconcealed_ones(bench):
    rng = np.random.default_rng(9)
    target = rng.normal(size=600)
    noise = rng.normal(size=(600, 2))
    representations = {bench.UNCONCEALED: np.c_[target + 0.3 * noise[:, 0], noise[:, 1]],
                       "blurred": np.c_[target + 1.0 * noise[:, 0], noise[:, 1]]}
    kept = bench.kept_shares(representations, pd.DataFrame({"t": target}), threads=1)
    assert kept[bench.UNCONCEALED]["t"]["share"] == pytest.approx(1.0)
    blurred = kept["blurred"]["t"]
    assert blurred["share"] == pytest.approx(blurred["score"] / kept[bench.UNCONCEALED]["t"]["score"], abs=0.01)
    assert 0.4 < blurred["share"] < 0.7  # R² about 0.5 against about 0.92
    assert blurred["share_ci"][0] < blurred["share"] < blurred["share_ci"][1]
