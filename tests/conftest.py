"""Shared test settings and helpers."""

import copy

import numpy as np
import pytest
import torch


@pytest.fixture(autouse=True, scope="session")
def _one_torch_thread():
    # The test networks are tiny: extra intra-op threads only add synchronisation, which gets very
    # expensive on a small shared CPU (seen: 20-50x slower with 2 threads under load).
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def ray_cluster():
    """A local Ray cluster (2 CPUs, no dashboard) for the distributed tests; yields its address, shut down at the end."""
    ray = pytest.importorskip("ray")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, logging_level="WARNING")
    yield ray.get_runtime_context().gcs_address
    ray.shutdown()


def _float64_chain(model, images: np.ndarray, steps=None) -> np.ndarray:
    """What a fitted image model's ``transform`` computes, run unfolded in float64: the encoder's posterior
    mean, then each concealment step (LinearErasure: its projection; LatentRefiner: its standardisation and
    MLP mean). The exact value the folded float32 encoder approximates."""
    from bafo_pipeline import LinearErasure

    encoder = copy.deepcopy(model.network_.encoder).double()
    pixels = torch.from_numpy(images.transpose(0, 3, 1, 2).astype(np.float64) / 255.0)
    with torch.no_grad():
        latents = encoder.head(encoder.features(pixels).flatten(1))[:, : model.network_.config.latent_dim].numpy()
    for step in model.concealment_steps_ if steps is None else steps:
        if isinstance(step, LinearErasure):
            latents = latents - (latents - step.mean_) @ step.projection_
            continue
        refiner = step.model_  # a LatentRefiner
        standardised = (latents - refiner.feature_mean_) / refiner.feature_scale_
        with torch.no_grad():
            latents = copy.deepcopy(refiner.network_).double().encode(torch.from_numpy(standardised))[0].numpy()
    return latents


@pytest.fixture(scope="session")
def float64_chain():
    """``float64_chain(model, images NHWC uint8, steps=None)``: see :func:`_float64_chain`."""
    return _float64_chain
