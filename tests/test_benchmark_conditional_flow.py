"""benchmarks/conditional_flow.py: one attribute-conditional flow after the transport removes shape differences
between cells that equal means and covariances leave, keeps a signal outside its directions, and inverts."""

import numpy as np
import pytest

from bafo_pipeline.transformers import ConditionalTransport

from planted_shapes import knn_reads_gender, planted, planted_radii


@pytest.fixture(scope="module")
def bench(benchmark_module):
    with benchmark_module("conditional_flow") as module:
        yield module


@pytest.mark.parametrize("conditions", [("gender", "ethnicity", "age"), ("gender",)], ids=["all", "gender-only"])
@pytest.mark.parametrize(("make", "transport_reads", "flow_reads"), [(planted, 0.9, 0.75), (planted_radii, 0.64, 0.57)],
                         ids=["corners-against-midpoints", "gaussian-against-scale-mixture"])
def test_the_flow_removes_shape_differences_the_transport_leaves_and_keeps_an_independent_signal(
        bench, make, transport_reads, flow_reads, conditions):
    Z, labels, _ = make(4000, seed=0)
    Z_new, labels_new, independent_new = make(3000, seed=1)
    Z_score, labels_score, _ = make(3000, seed=2)
    transport = ConditionalTransport(shrinkage=40).fit(Z, sensitive_features=labels)
    left = knn_reads_gender(transport.transform(Z_new, sensitive_features=labels_new), labels_new,
                            transport.transform(Z_score, sensitive_features=labels_score), labels_score)
    assert left > transport_reads

    step = bench.ConditionalFlowMatching(components=2, conditions=conditions).fit(Z, sensitive_features=labels)
    moved_new = step.transform(Z_new, sensitive_features=labels_new)
    matched = knn_reads_gender(moved_new, labels_new, step.transform(Z_score, sensitive_features=labels_score),
                               labels_score)
    assert matched < flow_reads
    assert np.corrcoef(moved_new[:, 2], independent_new)[0, 1] > 0.99  # outside the two leading directions
    np.testing.assert_allclose(step.inverse_transform(moved_new, sensitive_features=labels_new), Z_new, atol=1e-8)


def test_the_flow_sends_the_calibration_rows_towards_a_standard_normal_in_every_cell(bench):
    Z, labels, _ = planted_radii(4000, seed=3)
    step = bench.ConditionalFlowMatching(components=2).fit(Z, sensitive_features=labels)
    moved = step.transform(Z, sensitive_features=labels)
    whitened = (moved - step.mean_) @ step.directions_ / step.scales_
    male = labels["gender"].to_numpy() == 1
    kurtosis = [np.mean(np.sum(whitened[rows] ** 2, axis=1) ** 2) / 8 for rows in (male, ~male)]  # 1 for N(0, I_2)
    before = (Z[:, :2] - Z[:, :2].mean(axis=0))[male]
    assert np.mean(np.sum(before ** 2, axis=1) ** 2) / 8 > 1.5  # the scale mixture's heavy tails
    np.testing.assert_allclose(kurtosis, 1.0, atol=0.2)


def test_the_flow_is_the_same_fit_twice_and_refuses_a_class_it_never_saw(bench):
    Z, labels, _ = planted_radii(1500, seed=4)
    first, second = (bench.ConditionalFlowMatching(components=2, epochs=3).fit(Z, sensitive_features=labels)
                     for _ in range(2))
    np.testing.assert_array_equal(first.transform(Z, sensitive_features=labels),
                                  second.transform(Z, sensitive_features=labels))
    with pytest.raises(ValueError, match="ethnicity has a class no fitted row had"):
        first.inverse_transform(Z, sensitive_features=labels.assign(ethnicity=7))
