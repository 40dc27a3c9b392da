"""Distribution matching of group-conditional latents (issue 12): the penalties, and TrainedErasure with them."""

import numpy as np
import pandas as pd
import pytest
import torch

from bafo_pipeline import AttributeSchema, BAFOTransformer, TrainedErasure, load_model, save_model
from bafo_pipeline._nn.distribution_matching import (
    MATCHING_PENALTIES,
    group_mmd,
    group_neighbour_gap,
    group_second_moments,
    group_sliced_wasserstein,
)
from bafo_pipeline._nn.in_loop import InLoopErasure

SHAPE_AWARE = [group_sliced_wasserstein, group_mmd]


def _groups(n, seed, shape):
    """Two groups in 2-D; 'ring': group 1 on a circle with the same mean and covariance as group 0's Gaussian."""
    generator = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, 2, (n,), generator=generator)
    x = torch.randn(n, 2, generator=generator)
    if shape == "ring":
        angle = torch.rand(n, generator=generator) * 2 * torch.pi
        radius = 2**0.5 + 0.05 * torch.randn(n, generator=generator)
        ring = torch.stack([radius * torch.cos(angle), radius * torch.sin(angle)], 1)
        x = torch.where((labels == 1)[:, None], ring, x)
    elif shape == "spread":
        x[:, 0] *= torch.where(labels == 1, 3.0, 1.0)
    return x, torch.nn.functional.one_hot(labels, 2).float()


def _penalty(function, x, onehot):
    extra = {"generator": torch.Generator().manual_seed(1)} if function is group_sliced_wasserstein else {}
    return float(function(x, onehot, **extra))


@pytest.mark.parametrize("function", SHAPE_AWARE)
def test_shape_aware_penalties_see_a_ring_that_second_moments_do_not(function):
    same = _penalty(function, *_groups(4000, 0, "same"))
    ring = _penalty(function, *_groups(4000, 0, "ring"))
    # Identically distributed groups leave only the small finite-sample floor; the ring stands far above it.
    assert same < 0.1 * ring
    # The ring has the Gaussian's mean and covariance: the second-moment penalty stays at its own floor.
    moments_same = _penalty(group_second_moments, *_groups(4000, 0, "same"))
    moments_ring = _penalty(group_second_moments, *_groups(4000, 0, "ring"))
    assert moments_ring < 3 * moments_same


@pytest.mark.parametrize("function", SHAPE_AWARE)
def test_shape_aware_penalties_fall_towards_zero_for_identical_groups(function):
    small = _penalty(function, *_groups(256, 0, "same"))
    large = _penalty(function, *_groups(3000, 0, "same"))
    spread = _penalty(function, *_groups(3000, 0, "spread"))
    assert large < 0.25 * small
    assert large < 0.02 * spread


@pytest.mark.parametrize("function", list(MATCHING_PENALTIES.values()))
def test_penalties_do_not_change_when_the_latents_are_scaled_or_shifted(function):
    x, onehot = _groups(512, 0, "spread")
    reference = _penalty(function, x, onehot)
    assert reference > 0
    for scale in (0.01, 7.0):
        assert _penalty(function, x * scale + 3.0, onehot) == pytest.approx(reference, rel=1e-3)


def test_sliced_wasserstein_skips_small_groups_and_counts_groups_by_their_share():
    x, onehot = _groups(400, 0, "spread")
    tiny = torch.zeros(400, 1)
    tiny[:3] = 1.0  # a third group with 3 rows: below min_group_size
    with_tiny = _penalty(group_sliced_wasserstein, x, torch.cat([onehot, tiny], 1))
    assert with_tiny == pytest.approx(_penalty(group_sliced_wasserstein, x, onehot), rel=1e-6)


@pytest.mark.parametrize("function", SHAPE_AWARE)
def test_descending_the_penalty_removes_a_spread_difference(function):
    x, onehot = _groups(512, 0, "spread")
    before = _penalty(function, x, onehot)
    x = x.clone().requires_grad_()
    optimizer = torch.optim.Adam([x], lr=0.02)
    for _ in range(150):
        optimizer.zero_grad()
        (function(x, onehot, generator=torch.Generator().manual_seed(_)) if function is group_sliced_wasserstein
         else function(x, onehot)).backward()
        optimizer.step()
    after = _penalty(function, x.detach(), onehot)
    assert after < 0.3 * before
    male = onehot[:, 1] > 0
    spread = x.detach()[:, 0]
    assert spread[male].std() / spread[~male].std() < 2.0  # it was 3


def test_in_loop_hook_checks_the_matching_and_can_leave_the_decoder_input_alone():
    S = pd.DataFrame({"gender": ["f", "m"] * 64, "age": np.linspace(1, 80, 128)})
    schema = AttributeSchema.infer(S)
    slices, start = [], 0
    for attribute in schema.attributes:
        slices.append((start, start + attribute.width, attribute.kind))
        start += attribute.width
    with pytest.raises(ValueError, match="matching must be one of"):
        InLoopErasure(4, slices, matching="wasserstein")
    with pytest.raises(ValueError, match="matching must be one of"):
        TrainedErasure(matching="wasserstein").training_hook(4, slices)
    with pytest.raises(ValueError, match="bank_size must be >= 1"):
        InLoopErasure(4, slices, matching="neighbours", bank_size=0)
    C = torch.from_numpy(schema.encode(S)).float()
    hook = InLoopErasure(8, slices, matching="sliced_wasserstein", matching_weight=1.0, erase_in_loop=False)
    hook.begin(C, input_size=10)
    mean = torch.randn(128, 8) + 2.0 * C[:, :1]
    z = mean + 0.1 * torch.randn(128, 8)
    before = hook.eraser.z_mean.clone()
    assert torch.equal(hook.latent(z, C, mean), z)  # the decoder gets the sample as is
    assert not torch.equal(hook.eraser.z_mean, before)  # while the statistics follow the means
    assert hook.loss(mean.requires_grad_(), C) > 0


def _neighbour_gap(x, onehot, n_keys):
    """The neighbour gap of the first rows (queries) against the last ``n_keys`` rows (keys)."""
    return float(group_neighbour_gap(x[:-n_keys], onehot[:-n_keys], x[-n_keys:], onehot[-n_keys:]))


def test_neighbour_gap_sees_a_ring_and_is_zero_on_average_for_identical_groups():
    ring = _neighbour_gap(*_groups(3000, 0, "ring"), n_keys=2000)
    # Inside the ring the neighbours are the Gaussian's rows, on it the ring's: members and others see
    # very different neighbourhoods.
    assert ring > 0.2
    # Identical groups, batches of 32 against one bank: the plain squared gap would average to a floor
    # ten standard errors above zero; the estimate averages to zero within its standard error.
    keys, key_onehot = _groups(2000, 0, "same")
    estimates = []
    for seed in range(1, 201):
        queries, onehot = _groups(32, seed, "same")
        estimates.append(float(group_neighbour_gap(queries, onehot, keys, key_onehot)))
    estimates = np.array(estimates)
    assert abs(estimates.mean()) < 3 * estimates.std() / np.sqrt(len(estimates))
    assert estimates.std() > 0


def test_neighbour_gap_does_not_change_when_the_latents_are_scaled_or_shifted():
    x, onehot = _groups(1500, 0, "spread")
    reference = _neighbour_gap(x, onehot, 1000)
    assert reference > 0
    for scale in (0.01, 7.0):
        assert _neighbour_gap(x * scale + 3.0, onehot, 1000) == pytest.approx(reference, rel=1e-3)


def test_descending_the_neighbour_gap_mixes_two_clusters():
    from sklearn.metrics import balanced_accuracy_score
    from sklearn.neighbors import KNeighborsClassifier

    generator = torch.Generator().manual_seed(0)
    labels = torch.randint(0, 2, (1200,), generator=generator)
    onehot = torch.nn.functional.one_hot(labels, 2).float()
    # Two groups with the same mean and covariance in 2-D, but group 1 sits in two tight clusters.
    x = torch.randn(1200, 2, generator=generator)
    clusters = torch.where(torch.rand(1200, generator=generator) < 0.5, -1.0, 1.0)
    x[:, 0] = torch.where(labels == 1, clusters + 0.1 * x[:, 0], x[:, 0] * 2**0.5)

    def knn_reads(points):
        fit, test = slice(0, 800), slice(800, None)
        probe = KNeighborsClassifier(15).fit(points[fit], labels[fit])
        return balanced_accuracy_score(labels[test], probe.predict(points[test]))

    before = knn_reads(x.numpy())
    x = x.clone().requires_grad_()
    optimizer = torch.optim.Adam([x], lr=0.02)
    for step in range(300):
        batch = torch.randperm(1200, generator=generator)[:64]
        in_batch = set(batch.tolist())
        keys = torch.tensor([i for i in range(1200) if i not in in_batch])
        optimizer.zero_grad()
        group_neighbour_gap(x[batch], onehot[batch], x[keys].detach(), onehot[keys]).backward()
        optimizer.step()
    assert before > 0.7
    assert knn_reads(x.detach().numpy()) < 0.6


def _neighbour_hook(bank_size):
    """A neighbours hook on 128 training rows of one gender column, and means with group 1 in two clusters."""
    S = pd.DataFrame({"gender": ["f", "m"] * 64})
    schema = AttributeSchema.infer(S)
    slices = [(0, schema.attributes[0].width, schema.attributes[0].kind)]
    C = torch.from_numpy(schema.encode(S)).float()
    hook = InLoopErasure(4, slices, matching="neighbours", matching_weight=1.0, erase_in_loop=False,
                         bank_size=bank_size)
    hook.begin(C, input_size=10)
    generator = torch.Generator().manual_seed(0)
    clusters = torch.randn(128, 1, generator=generator).sign()
    mean = torch.randn(128, 4, generator=generator) + 6.0 * C[:, :1] * clusters
    return hook, C, mean


def test_the_neighbour_penalty_keeps_a_bank_of_training_batches_only():
    hook, C, mean = _neighbour_hook(bank_size=96)
    batches = [slice(start, start + 32) for start in range(0, 128, 32)]
    for batch in batches[:1]:
        hook.latent(mean[batch], C[batch], mean[batch])
    # The first batch has no earlier rows to find neighbours among.
    assert float(hook.loss(mean[batches[0]], C[batches[0]])) == 0.0
    with torch.no_grad():  # validation batches are scored against the bank but do not join it
        hook.loss(mean[batches[1]], C[batches[1]])
    assert len(hook.bank[0]) == 32
    penalties = [float(hook.loss(mean[batch].requires_grad_(), C[batch]).detach()) for batch in batches[1:]]
    assert min(penalties) > 0.1  # group 1's rows have group 1's neighbours: squared gaps of 0.03-0.14, times 10
    assert len(hook.bank[0]) == 96  # the last bank_size rows
    np.testing.assert_array_equal(hook.bank[0].numpy(), mean[32:].numpy())
    # The epoch's 128 rows are in: the next training batch starts a new epoch, and the bank holds none of
    # the rows that could be a query's own stale copy.
    assert float(hook.loss(mean[batches[0]].requires_grad_(), C[batches[0]]).detach()) == 0.0
    np.testing.assert_array_equal(hook.bank[0].numpy(), mean[batches[0]].numpy())


def test_the_neighbour_penalty_works_with_a_bank_smaller_than_the_batch():
    hook, C, mean = _neighbour_hook(bank_size=16)
    hook.latent(mean[:32], C[:32], mean[:32])
    hook.loss(mean[:32], C[:32])
    assert len(hook.bank[0]) == 16
    # It once waited for the bank to hold a batch, which a 16-row bank never does: 0 on every batch.
    assert float(hook.loss(mean[32:64].requires_grad_(), C[32:64]).detach()) > 0.01


def test_no_gradient_reaches_the_neighbour_keys():
    x, onehot = _groups(600, 0, "ring")
    queries = x[:100].clone().requires_grad_()
    keys = x[100:].clone().requires_grad_()
    group_neighbour_gap(queries, onehot[:100], keys, onehot[100:]).backward()
    assert keys.grad is None and queries.grad.abs().sum() > 0


def test_trained_erasure_rejects_an_unknown_matching_at_fit():
    with pytest.raises(ValueError, match="matching"):
        TrainedErasure(matching="wasserstein").fit(np.zeros((8, 3)), sensitive_features=pd.DataFrame({"g": list("abababab")}))


def test_a_sliced_wasserstein_fit_does_not_depend_on_the_global_random_state(planted_group_signals):
    # Its random directions once came from torch's global generator: the same random_state gave other
    # models depending on what had drawn from it before (a test failed or passed with the suite's order).
    X, S, _ = planted_group_signals(600, 0)

    def fit(global_seed):
        torch.manual_seed(global_seed)
        step = TrainedErasure(matching="sliced_wasserstein", matching_weight=10.0, erase_in_loop=False)
        return BAFOTransformer(
            latent_dim=8, widths=(16, 16), epochs=2, batch_size=128, decoder_epochs=0, concealment=[step],
            device="cpu", random_state=0,
        ).fit(X, sensitive_features=S).transform(X)

    np.testing.assert_array_equal(fit(1), fit(2))


# The neighbours' penalty keeps less of the independent signal (R² 0.60-0.65 against 0.76 without it; sliced
# Wasserstein 0.74), and its training path follows the CPU's arithmetic (0.60 with AVX512 kernels, 0.65 with
# AVX2 ones, from the same seed: a last-bit difference swaps a nearest neighbour), so it gets wider bounds:
# it is held to keeping well over half of the signal and to taking the attackers far from the plain
# latents' 0.75-0.8 (read here: 0.55-0.58).
@pytest.mark.parametrize(("matching", "weight", "most_read", "least_kept", "most_lost"),
                         [("sliced_wasserstein", 10.0, 0.62, 0.65, 0.1), ("neighbours", 1.0, 0.65, 0.45, 0.3)])
def test_matching_removes_the_non_linear_signal_that_erasure_leaves(
    planted_group_signals, matching, weight, most_read, least_kept, most_lost
):
    from sklearn.ensemble import HistGradientBoostingClassifier
    from sklearn.linear_model import LinearRegression, LogisticRegression
    from sklearn.metrics import balanced_accuracy_score, r2_score
    from sklearn.neighbors import KNeighborsClassifier
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    X, S, u = planted_group_signals(4000, 0)
    X_test, S_test, u_test = planted_group_signals(2000, 1)

    def fit(weight):
        step = TrainedErasure(matching=matching, matching_weight=weight, erase_in_loop=False)
        return BAFOTransformer(
            latent_dim=16, widths=(64, 64), epochs=25, batch_size=128, learning_rate=2e-3, decoder_epochs=0,
            concealment=[step], device="cpu", random_state=0,
        ).fit(X, sensitive_features=S)

    def gender_read(probe, model):
        Z, Z_test = model.transform(X), model.transform(X_test)
        return balanced_accuracy_score(S_test["gender"], probe.fit(Z, S["gender"]).predict(Z_test))

    plain, matched = fit(0.0), fit(weight)
    trees = HistGradientBoostingClassifier(random_state=0)
    neighbours = make_pipeline(StandardScaler(), KNeighborsClassifier(15))
    # Linear erasure alone: linear probes at chance, but fresh trees read the spread difference.
    assert gender_read(LogisticRegression(max_iter=1000), plain) < 0.55
    assert gender_read(trees, plain) > 0.8
    assert gender_read(neighbours, plain) > 0.75
    # With the penalty in training the trees and the neighbours are near chance too ...
    assert gender_read(LogisticRegression(max_iter=1000), matched) < 0.55
    assert gender_read(trees, matched) < most_read
    assert gender_read(neighbours, matched) < most_read
    # ... and the independent signal is kept as well as without it.
    kept = r2_score(u_test, LinearRegression().fit(matched.transform(X), u).predict(matched.transform(X_test)))
    plain_kept = r2_score(u_test, LinearRegression().fit(plain.transform(X), u).predict(plain.transform(X_test)))
    assert kept > least_kept and kept > plain_kept - most_lost
    assert matched.history_[-1]["hook_0"] > 0
    # Without erasure in the loop the decoder learned from the encoder's own latents: decoding adds back
    # what the erasure removed, as for a post-hoc LinearErasure.
    assert matched.erased_label_map_ is not None


@pytest.mark.parametrize("matching", ["sliced_wasserstein", "neighbours"])
def test_matching_settings_round_trip_through_save_and_load(tmp_path, matching):
    from bafo_pipeline import make_synthetic_faces

    faces = make_synthetic_faces(96, image_size=32, random_state=3)
    S = faces.sensitive_features
    step = TrainedErasure(matching=matching, matching_weight=0.01, erase_in_loop=False)
    model = BAFOTransformer(
        latent_dim=6, widths=(4, 8), epochs=2, batch_size=32, concealment=[step], decoder_epochs=0, random_state=0,
    ).fit(faces.images, sensitive_features=S)
    loaded = load_model(save_model(model, tmp_path / "model"))
    restored = loaded.concealment_steps_[0]
    assert (restored.matching, restored.erase_in_loop, restored.matching_weight) == (matching, False, 0.01)
    assert restored.get_params() == step.get_params()
    assert loaded.get_params()["concealment"][0].get_params() == step.get_params()
    Z = model.transform(faces.images)
    np.testing.assert_array_equal(loaded.transform(faces.images), Z)
    np.testing.assert_array_equal(loaded.inverse_transform(Z, sensitive_features=S), model.inverse_transform(Z, sensitive_features=S))
