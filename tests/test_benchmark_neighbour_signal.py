"""benchmarks/neighbour_signal.py: the neighbour probe's reading is taken apart by direction range."""

import numpy as np
import pytest


@pytest.fixture(scope="module")
def bench(benchmark_module):
    with benchmark_module("neighbour_signal") as module:
        yield module


def test_the_reading_comes_from_the_directions_that_hold_the_signal(bench):
    rng = np.random.default_rng(0)

    def rows(n):
        labels = rng.choice(np.array(["female", "male"]), n)
        Z = rng.normal(size=(n, 4))
        Z[:, 3] += 1.5 * (labels == "male")  # gender lives in the last direction only
        return Z - Z.mean(axis=0), labels

    (fit, fit_labels), (score, score_labels) = rows(3000), rows(2000)
    rotation = np.linalg.qr(rng.normal(size=(4, 4)))[0]  # the basis need not be the coordinate axes
    reading = bench.reading_by_directions(fit @ rotation.T, fit_labels, score @ rotation.T, score_labels,
                                          rotation, ranges=((0, 3), (3, None), (0, None)))
    assert set(reading) == {"0-3", "3-4", "0-4"}
    assert abs(reading["0-3"]["value"] - 0.5) < 0.04
    assert reading["3-4"]["value"] > 0.7 and reading["0-4"]["value"] > 0.65
    for entry in reading.values():
        low, high = entry["ci"]
        assert low <= entry["value"] <= high and high - low < 0.08
