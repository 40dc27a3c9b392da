"""Absurd network shapes (from parameters or an edited config.json) are refused before anything is allocated."""

import tracemalloc

import numpy as np
import pytest
import torch

from bafo_pipeline._nn.network import MAX_PARAMETERS, BAFONetwork, NetworkConfig


@pytest.mark.parametrize(
    "config",
    [
        NetworkConfig("conv", (3, 56, 56), 9, 48, (8, 16)),
        NetworkConfig("conv", (3, 64, 64), 9, 16, (8, 16, 32), condition_every_layer=True),
        NetworkConfig("mlp", (100,), 5, 16, (64, 32)),
        NetworkConfig("mlp", (100,), 5, 16, (64, 32), condition_every_layer=True),
    ],
)
def test_the_parameter_count_is_the_built_networks(config):
    assert config.parameter_count() == sum(p.numel() for p in BAFONetwork(config).parameters())


def test_a_100000_pixel_square_is_refused_without_allocating():  # issue 14, item 9: it asked for 84 GiB
    tracemalloc.start()
    try:
        with pytest.raises(ValueError, match="parameters .* over the"):
            NetworkConfig.from_dict({"kind": "conv", "input_shape": [3, 100000, 100000], "condition_dim": 9,
                                     "latent_dim": 48, "widths": [32, 64, 128], "condition_every_layer": False})
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 10 * 2**20
    with pytest.raises(ValueError, match="over the"):
        NetworkConfig("mlp", (MAX_PARAMETERS,), 5, 16, (64,))


@pytest.mark.parametrize("shape", [[3, 56.5, 56], [3, "56", 56], [3, True, 56], "356"])
def test_shapes_must_be_whole_numbers(shape):
    with pytest.raises(ValueError, match="whole numbers"):
        NetworkConfig("conv", shape, 9, 16, (8, 16))


def test_numpy_whole_numbers_are_accepted_as_ints():
    config = NetworkConfig("conv", (3, np.int64(32), 32), np.int64(9), np.int32(16), (8, 16))
    assert config.input_shape == (3, 32, 32) and type(config.latent_dim) is int
    assert isinstance(BAFONetwork(config)(torch.zeros(1, 3, 32, 32), torch.zeros(1, 9))[0], torch.Tensor)


def test_image_arrays_past_the_memory_budget_are_refused_before_allocating(tmp_path):
    from click.testing import CliRunner

    from bafo_pipeline import make_synthetic_faces
    from bafo_pipeline.cli import main
    from bafo_pipeline.data.images import decode_images

    tracemalloc.start()
    try:
        with pytest.raises(ValueError, match="GiB in memory"):
            make_synthetic_faces(3000, image_size=100_000)
        with pytest.raises(ValueError, match="GiB in memory"):
            decode_images(["a.jpg"] * 1000, size=(100_000, 100_000))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 10 * 2**20
    result = CliRunner().invoke(main, ["train", "--image-size", "100000", "--out", str(tmp_path / "m")])
    assert result.exit_code == 1 and "GiB in memory" in result.output and "Traceback" not in result.output
