"""Shared test settings and helpers."""

import contextlib
import copy
import importlib
import os
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

try:
    from hypothesis import HealthCheck, settings
except ImportError:  # the property-based tests skip themselves
    pass
else:
    # Property-based tests: "ci" (the default) runs thousands of examples in all, within a minute;
    # "dev" a tenth for quick iterations; "thorough" ten times more. Pick with BAFO_HYPOTHESIS_PROFILE.
    _SLOW_IS_FINE = [HealthCheck.too_slow, HealthCheck.data_too_large]
    settings.register_profile("ci", max_examples=1000, deadline=None, suppress_health_check=_SLOW_IS_FINE)
    settings.register_profile("dev", max_examples=100, deadline=None, suppress_health_check=_SLOW_IS_FINE)
    settings.register_profile("thorough", max_examples=10000, deadline=None, suppress_health_check=_SLOW_IS_FINE)
    settings.load_profile(os.environ.get("BAFO_HYPOTHESIS_PROFILE", "ci"))


@pytest.fixture(autouse=True, scope="session")
def _private_id_key(tmp_path_factory):
    # Exports take the data owner's default key file unless given one: never the real ~/.config/bafo/id.key.
    previous = os.environ.get("BAFO_ID_KEY_FILE")
    os.environ["BAFO_ID_KEY_FILE"] = str(tmp_path_factory.mktemp("id_key") / "id.key")
    yield
    if previous is None:
        os.environ.pop("BAFO_ID_KEY_FILE", None)
    else:
        os.environ["BAFO_ID_KEY_FILE"] = previous


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


def _planted_group_signals(n: int, seed: int):
    """Tabular rows hiding a gender mean shift (linear), a gender spread difference (non-linear, invisible to
    linear erasure), and a signal ``u`` drawn independently of every attribute: ``(X, sensitive, u)``."""
    import pandas as pd

    rng = np.random.default_rng(seed)
    S = pd.DataFrame({"gender": rng.choice(["female", "male"], n), "age": rng.uniform(1, 80, n)})
    male = (S["gender"] == "male").to_numpy()
    u = rng.normal(size=n)
    X = rng.normal(size=(n, 8)) * 0.3
    X[:, 0] += 2.0 * male
    X[:, 1] += rng.normal(size=n) * np.where(male, 2.0, 0.3)
    X[:, 2] += u
    X[:, 3] += S["age"].to_numpy() / 25
    return X.astype(np.float32), S, u


@pytest.fixture(scope="session")
def planted_group_signals():
    """``planted_group_signals(n, seed)``: see :func:`_planted_group_signals`."""
    return _planted_group_signals


BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


@contextlib.contextmanager
def _benchmark_module(name: str):
    sys.path.insert(0, str(BENCHMARKS))  # benchmarks import their siblings by name
    try:
        yield importlib.import_module(name)
    finally:
        sys.path.remove(str(BENCHMARKS))


@pytest.fixture(scope="session")
def benchmark_module():
    """``with benchmark_module("leakage_frontier") as module:`` imports ``benchmarks/<name>.py``."""
    return _benchmark_module

