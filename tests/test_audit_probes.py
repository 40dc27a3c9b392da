"""The probe ladder's pieces: the torch MLP and the probe factory."""

import numpy as np
import pytest
import torch
from threadpoolctl import threadpool_limits

from bafo_pipeline.audits import PROBES, TorchMLPProbe, make_probe


@pytest.fixture(autouse=True)
def one_thread():
    # As audit_leakage does: tiny fits under a shared machine's OpenMP contention crawl.
    with threadpool_limits(1):
        yield


def test_mlp_stops_early_and_keeps_its_best_epoch():
    rng = np.random.default_rng(0)
    X = rng.normal(size=(400, 5))
    y = rng.integers(0, 3, 400)  # pure noise: validation loss stops improving at once
    probe = TorchMLPProbe(max_epochs=200, patience=4, device="cpu").fit(X, y)
    assert probe.n_epochs_ < 200
    assert probe.n_epochs_ == probe.best_epoch_ + 4
    P = probe.predict_proba(X)
    assert P.shape == (400, 3) and np.allclose(P.sum(axis=1), 1.0, atol=1e-5)


def test_mlp_regression_learns_a_smooth_target():
    rng = np.random.default_rng(1)
    X = rng.normal(size=(800, 3))
    y = 40 + 10 * np.sin(X[:, 0]) + 5 * X[:, 1] ** 2
    probe = TorchMLPProbe(task="regression", device="cpu").fit(X[:600], y[:600])
    residual = np.mean((probe.predict(X[600:]) - y[600:]) ** 2)
    assert residual < 0.2 * np.var(y[600:])


def test_mlp_leaves_the_global_torch_seed_alone():
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    TorchMLPProbe(max_epochs=2, device="cpu").fit(
        np.random.default_rng(2).normal(size=(100, 2)), np.arange(100) % 2
    )
    assert torch.equal(torch.rand(3), expected)


def test_make_probe():
    for name in PROBES:
        for task in ("classification", "regression"):
            assert hasattr(make_probe(name, task, random_state=0), "fit")
    with pytest.raises(ValueError, match="unknown probe 'svm'"):
        make_probe("svm", "classification", random_state=0)
