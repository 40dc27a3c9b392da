"""benchmarks/demo_concealments.py: the estimator each named run measures."""

import pytest

from bafo_pipeline import ConditionalTransport, LatentRefiner


@pytest.fixture(scope="module")
def bench(benchmark_module):
    with benchmark_module("demo_concealments") as module:
        yield module


def test_own_means_measure_the_preset_itself(bench):
    estimator = bench.make_estimator("transport", seed=3)
    assert estimator.concealment == "transport" and estimator.random_state == 3
    assert estimator.latent_dim == bench.RUN_DEFAULTS["latent_dim"]


@pytest.mark.parametrize("means", ["shrunk", "shrunk-cells"])
def test_other_means_reach_the_transport_step_and_keep_the_refiner_settings(bench, means):
    estimator = bench.make_estimator("transport-refined", seed=0, refine_kl_weight=0.1, transport_means=means)
    transport, refiner, _ = estimator.concealment_steps()
    assert isinstance(transport, ConditionalTransport) and isinstance(refiner, LatentRefiner)
    wanted = bench.TRANSPORT_MEANS[means]
    assert {k: transport.get_params()[k] for k in wanted} == wanted
    assert refiner.kl_weight == 0.1


def test_the_transport_shrinkage_reaches_the_step(bench):
    estimator = bench.make_estimator("transport", seed=0, transport_shrinkage=5.0)
    (transport,) = estimator.concealment_steps()
    assert transport.shrinkage == 5.0 and transport.mean_shrinkage == bench.TRANSPORT_MEANS["own"]["mean_shrinkage"]


def test_a_noise_scale_appends_keyed_noise_after_the_transport(bench):
    from bafo_pipeline import KeyedNoise

    transport, noise = bench.make_estimator("transport", seed=0, noise_scale=0.25).concealment_steps()
    assert isinstance(transport, ConditionalTransport) and transport.shrinkage == bench.DEFAULT_SHRINKAGE
    assert isinstance(noise, KeyedNoise) and noise.scale == 0.25
