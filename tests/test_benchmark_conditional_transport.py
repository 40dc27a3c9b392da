"""benchmarks/conditional_transport.py: its ``smooth-mean+cells`` variant, now the library step, agrees with the
research prototype it replaced (on data where every held-out cell has training rows)."""


import numpy as np
import pandas as pd
import pytest


@pytest.fixture(scope="module")
def bench(benchmark_module):
    with benchmark_module("conditional_transport") as module:
        yield module


def _attributes(n: int, seed: int) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    return pd.DataFrame({
        "age": rng.integers(1, 90, n),  # whole years, as UTKFace's
        "gender": rng.choice(["female", "male"], n),
        "ethnicity": rng.choice(["asian", "black", "indian", "others", "white"], n),
        "smile": rng.normal(size=n),  # a column the transport must ignore
    })


def _latents(attributes: pd.DataFrame, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    Z = rng.normal(size=(len(attributes), 5)) @ rng.normal(size=(5, 5))
    male = (attributes["gender"] == "male").to_numpy()
    Z[:, 0] += male + np.log1p(attributes["age"].to_numpy()) / 2
    Z[:, 1] *= np.where(male, 1.5, 0.7)
    Z[:, 2] += (attributes["ethnicity"] == "white").to_numpy()
    return Z


def test_smooth_mean_cells_is_the_library_step_and_matches_the_prototype(bench):
    train, test = _attributes(3000, 0), _attributes(500, 1)
    Z_train, Z_test = _latents(train, 2), _latents(test, 3)
    library = bench.VARIANTS["smooth-mean+cells"]()
    assert isinstance(library, bench.LibraryTransport)
    prototype = bench.ConditionalTransport(smooth_mean_knots=6)
    np.testing.assert_allclose(library.fit_transform(Z_train, train), prototype.fit_transform(Z_train, train),
                               atol=1e-8)
    moved = library.transform(Z_test, test)
    np.testing.assert_allclose(moved, prototype.transform(Z_test, test), atol=1e-8)
    np.testing.assert_allclose(library.inverse_transform(moved, test), prototype.inverse_transform(moved, test),
                               atol=1e-8)
    assert np.abs(moved - Z_test).max() > 0.1  # the rows did move
