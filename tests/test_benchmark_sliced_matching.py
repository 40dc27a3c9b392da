"""benchmarks/sliced_matching.py: per-cell sliced (and radial) distribution matching removes a shape difference the
transport leaves, keeps what does not depend on the cell, and inverts exactly."""

import numpy as np
import pytest

from planted_shapes import knn_reads_gender, planted, planted_radii


@pytest.fixture(scope="module")
def bench(benchmark_module):
    with benchmark_module("sliced_matching") as module:
        yield module


def test_monotone_map_sends_knots_to_knots_shifts_beyond_them_and_inverts(bench):
    source, target = np.array([0.0, 1.0, 3.0]), np.array([-1.0, 0.0, 5.0])
    values = np.array([-2.0, 0.0, 0.5, 2.0, 3.0, 4.0])
    moved = bench.monotone_map(values, source, target)
    np.testing.assert_allclose(moved, [-3.0, -1.0, -0.5, 2.5, 5.0, 6.0])
    np.testing.assert_allclose(bench.monotone_map(moved, target, source), values)


def test_sliced_matching_removes_a_shape_difference_the_transport_leaves_and_keeps_an_independent_signal(bench):
    Z, labels, independent = planted(4000, seed=0)
    Z_new, labels_new, independent_new = planted(3000, seed=1)
    Z_score, labels_score, _ = planted(3000, seed=2)
    transport = bench.ConditionalTransport(shrinkage=40).fit(Z, sensitive_features=labels)
    left = knn_reads_gender(transport.transform(Z_new, sensitive_features=labels_new), labels_new,
                            transport.transform(Z_score, sensitive_features=labels_score), labels_score)
    assert left > 0.9  # equal means and covariances: the transport leaves the shapes as they are

    step = bench.SlicedCellMatching(components=2, n_iter=60, n_knots=9).fit(Z, sensitive_features=labels)
    moved_new = step.transform(Z_new, sensitive_features=labels_new)
    matched = knn_reads_gender(moved_new, labels_new, step.transform(Z_score, sensitive_features=labels_score),
                               labels_score)
    assert matched < 0.62
    # column 2 is independent of gender and outside the two leading directions the maps move
    assert np.corrcoef(moved_new[:, 2], independent_new)[0, 1] > 0.99
    np.testing.assert_allclose(step.inverse_transform(moved_new, sensitive_features=labels_new), Z_new, atol=1e-8)


def test_sliced_matching_refuses_a_class_it_never_saw(bench):
    Z, labels, _ = planted(800, seed=3)
    step = bench.SlicedCellMatching(components=2, n_iter=2).fit(Z, sensitive_features=labels)
    other = labels.assign(ethnicity=7)
    with pytest.raises(ValueError, match="has value 7, which no training row had"):
        step.transform(Z, sensitive_features=other)  # the transport's own error
    with pytest.raises(ValueError, match="ethnicity has a class no fitted row had"):
        step.inverse_transform(Z, sensitive_features=other)  # the quantile maps are undone first


def test_a_smaller_step_moves_each_cells_quantiles_part_of_the_way_and_still_inverts(bench):
    Z, labels, _ = planted(2000, seed=4)
    full = bench.SlicedCellMatching(components=2, n_iter=1, n_knots=5).fit(Z, sensitive_features=labels)
    half = bench.SlicedCellMatching(components=2, n_iter=1, n_knots=5, step_size=0.5).fit(Z, sensitive_features=labels)
    np.testing.assert_allclose(half.target_knots_[0], (full.cell_knots_[0] + full.target_knots_[0]) / 2)
    transported = full.transport_.transform(Z, sensitive_features=labels)
    moved_full, moved_half = (step.transform(Z, sensitive_features=labels) for step in (full, half))
    assert 0 < np.abs(moved_half - transported).mean() < np.abs(moved_full - transported).mean()
    np.testing.assert_allclose(half.inverse_transform(moved_half, sensitive_features=labels), Z, atol=1e-8)


def test_radial_matching_removes_a_difference_in_spread_and_keeps_directions_and_an_independent_signal(bench):
    Z, labels, _ = planted_radii(6000, seed=0)
    Z_new, labels_new, independent_new = planted_radii(3000, seed=1)
    Z_score, labels_score, _ = planted_radii(3000, seed=2)
    transport = bench.ConditionalTransport(shrinkage=40).fit(Z, sensitive_features=labels)
    transported_new = transport.transform(Z_new, sensitive_features=labels_new)
    left = knn_reads_gender(transported_new, labels_new,
                            transport.transform(Z_score, sensitive_features=labels_score), labels_score)
    assert left > 0.64  # equal means and covariances: the transport leaves the spreads as they are

    step = bench.RadialCellMatching(components=2, n_knots=9).fit(Z, sensitive_features=labels)
    moved_new = step.transform(Z_new, sensitive_features=labels_new)
    matched = knn_reads_gender(moved_new, labels_new, step.transform(Z_score, sensitive_features=labels_score),
                               labels_score)
    assert matched < 0.56
    # each row keeps its direction in the leading plane; column 2 is outside it
    centred = (transported_new - step.mean_) @ step.directions_, (moved_new - step.mean_) @ step.directions_
    np.testing.assert_allclose(*(np.arctan2(c[:, 1], c[:, 0]) for c in centred), atol=1e-9)
    assert np.corrcoef(moved_new[:, 2], independent_new)[0, 1] > 0.99
    np.testing.assert_allclose(step.inverse_transform(moved_new, sensitive_features=labels_new), Z_new, atol=1e-8)


def test_radial_matching_sends_each_cells_radius_quantiles_to_the_pooled_ones(bench):
    Z, labels, _ = planted_radii(6000, seed=3)
    step = bench.RadialCellMatching(components=2, n_knots=5).fit(Z, sensitive_features=labels)
    moved = step.transform(Z, sensitive_features=labels)
    radius = np.linalg.norm((moved - step.mean_) @ step.directions_ / step.scales_, axis=1)
    cells = step._cells(labels)
    levels = np.linspace(0.05, 0.95, 5)
    assert np.abs(step.cell_knots_ - step.target_knots_).max() > 0.5  # the scale mixture's cells, before
    for cell in step.cells_:  # after (to the interpolation between order statistics that the knots are)
        np.testing.assert_allclose(np.log(np.quantile(radius[cells == cell], levels)), step.target_knots_, atol=0.01)
