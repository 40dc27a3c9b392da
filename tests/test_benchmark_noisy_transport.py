"""benchmarks/noisy_transport.py: the transport, then fresh noise shaped like the pooled latents, the same for
every group, which blurs a shape difference the transport leaves."""

import numpy as np
import pytest

from bafo_pipeline.transformers import ConditionalTransport
from planted_shapes import knn_reads_gender, planted_radii


@pytest.fixture(scope="module")
def bench(benchmark_module):
    with benchmark_module("noisy_transport") as module:
        yield module


def test_the_noise_has_the_pooled_covariance_times_its_scale_squared_and_no_group_mean(bench):
    Z, labels, _ = planted_radii(4000, seed=0)
    step = bench.NoisyTransport(scale=0.5).fit(Z, sensitive_features=labels)
    transported = step.transport_.transform(Z, sensitive_features=labels)
    noise = np.vstack([step.transform(Z, sensitive_features=labels) - transported for _ in range(10)])
    np.testing.assert_allclose(np.cov(noise.T), 0.25 * np.cov(transported.T), atol=0.02)
    male = np.tile(labels["gender"].to_numpy() == 1, 10)
    for rows in (male, ~male):
        np.testing.assert_allclose(noise[rows].mean(axis=0), 0, atol=0.02)


def test_every_call_draws_new_noise_and_the_same_seed_the_same_first_draw(bench):
    Z, labels, _ = planted_radii(500, seed=1)
    first, second = (bench.NoisyTransport(seed=3).fit(Z, sensitive_features=labels) for _ in range(2))
    once = first.transform(Z, sensitive_features=labels)
    np.testing.assert_array_equal(once, second.transform(Z, sensitive_features=labels))
    assert not np.allclose(once, first.transform(Z, sensitive_features=labels))


def test_noise_blurs_a_spread_difference_the_transport_leaves(bench):
    Z, labels, _ = planted_radii(4000, seed=2)
    Z_new, labels_new, _ = planted_radii(3000, seed=3)
    Z_score, labels_score, _ = planted_radii(3000, seed=4)

    def reads(step):
        return knn_reads_gender(step.transform(Z_new, sensitive_features=labels_new), labels_new,
                                step.transform(Z_score, sensitive_features=labels_score), labels_score)

    clean = reads(ConditionalTransport(shrinkage=40).fit(Z, sensitive_features=labels))
    noisy = reads(bench.NoisyTransport(scale=1.0).fit(Z, sensitive_features=labels))
    assert clean > 0.64 and noisy < clean - 0.05
