"""Concealment learned in training: the running eraser, the matching penalties, balanced batches."""

import numpy as np
import pandas as pd
import pytest
import torch

from bafo_pipeline import AttributeSchema, LinearErasure
from bafo_pipeline.distribution_matching import balanced_sampling_weights, group_mmd, group_sliced_wasserstein
from bafo_pipeline.in_loop import InLoopConcealment
from bafo_pipeline.running_erasure import GroupLayout, RunningEraser


def _slices(schema):
    slices, start = [], 0
    for attribute in schema.attributes:
        slices.append((start, start + attribute.width, attribute.kind))
        start += attribute.width
    return slices


def _table(n=3000, seed=0):
    """Latents with a gender mean shift, a gender spread difference, an age trend and an ethnicity shift."""
    rng = np.random.default_rng(seed)
    S = pd.DataFrame({
        "age": rng.uniform(1, 80, n),
        "gender": rng.choice(["male", "female"], n),
        "ethnicity": rng.choice(["a", "b", "c", "d"], n),
    })
    X = rng.normal(size=(n, 10))
    X[:, 0] += 1.2 * (S["gender"] == "male")
    X[:, 1] *= np.where(S["gender"] == "male", 2.5, 1.0)
    X[:, 2] += S["age"] / 30
    X[:, 3] += 1.5 * (S["ethnicity"] == "c")
    X[:, 4:] = X[:, 4:] @ rng.normal(size=(6, 6))
    schema = AttributeSchema.infer(S)
    return X, S, schema, torch.from_numpy(schema.encode(S))


@pytest.mark.parametrize("covariance_dims", [0, 2])
def test_running_eraser_on_exact_statistics_is_linear_erasure(covariance_dims):
    X, S, schema, C = _table()
    expected = LinearErasure(covariance_dims=covariance_dims).fit(X, sensitive_features=S).transform(X)
    layout = GroupLayout(_slices(schema), C)
    eraser = RunningEraser(X.shape[1], layout, covariance_dims=covariance_dims, momentum=0.0)
    eraser.update(torch.from_numpy(X).float(), C)
    eraser.refresh()
    erased = eraser(torch.from_numpy(X).float()).numpy()
    np.testing.assert_allclose(erased, expected, atol=1e-4)


def test_running_statistics_converge_to_the_data_over_batches():
    X, S, schema, C = _table()
    layout = GroupLayout(_slices(schema), C)
    eraser = RunningEraser(X.shape[1], layout, momentum=0.9)
    Xt = torch.from_numpy(X).float()
    for _ in range(8):  # eight passes in batches of 300
        for start in range(0, len(X), 300):
            eraser.update(Xt[start : start + 300], C[start : start + 300])
    eraser.refresh()
    erased = eraser(Xt).numpy()
    concepts = layout.concepts(C).numpy()
    cross = (erased - erased.mean(0)).T @ (concepts - concepts.mean(0)) / len(X)
    raw = (X - X.mean(0)).T @ (concepts - concepts.mean(0)) / len(X)
    assert np.abs(cross).max() < 0.05 * np.abs(raw).max()


def test_eraser_passes_gradient_to_the_latent_only():
    X, S, schema, C = _table(n=500)
    eraser = RunningEraser(X.shape[1], GroupLayout(_slices(schema), C), momentum=0.0)
    eraser.update(torch.from_numpy(X).float(), C)
    eraser.refresh()
    z = torch.from_numpy(X[:8]).float().requires_grad_()
    eraser(z).sum().backward()
    assert z.grad is not None and torch.isfinite(z.grad).all()
    assert all(not buffer.requires_grad for buffer in eraser.buffers())


def test_group_layout_reads_groups_and_bins_off_the_conditions():
    X, S, schema, C = _table(n=400)
    layout = GroupLayout(_slices(schema), C, continuous_bins=4)
    ids = dict(zip(schema.names, layout.group_ids(C)))
    assert layout.n_groups == [4, 2, 4]  # age bins, gender, ethnicity
    assert np.bincount(ids["age"].numpy()).tolist() == pytest.approx([100, 100, 100, 100], abs=2)
    male = (S["gender"] == schema.attributes[1].categories[1]).to_numpy()
    assert (ids["gender"].numpy() == male).all()
    onehot = layout.group_onehot(C)
    assert onehot.shape == (400, 10) and (onehot.sum(1) == 3).all()


def _groups(n, seed, spread_difference):
    generator = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, 2, (n,), generator=generator)
    x = torch.randn(n, 4, generator=generator)
    x[:, 0] *= torch.where(labels == 1, 1.0 + spread_difference, 1.0)
    onehot = torch.nn.functional.one_hot(labels, 2).float()
    return x, labels, onehot


@pytest.mark.parametrize("penalty", ["mmd", "sliced"])
def test_matching_penalties_see_a_spread_difference_and_can_remove_it(penalty):
    def value(x, labels, onehot):
        if penalty == "mmd":
            return group_mmd(x, onehot, torch.zeros(2, dtype=torch.long))
        return group_sliced_wasserstein(x, [labels], generator=torch.Generator().manual_seed(0))

    same = value(*_groups(512, 0, 0.0))
    different = value(*_groups(512, 0, 2.0))
    assert different > 5 * same
    x, labels, onehot = _groups(512, 0, 2.0)
    x.requires_grad_()
    optimizer = torch.optim.Adam([x], lr=0.02)
    for _ in range(100):
        optimizer.zero_grad()
        value(x, labels, onehot).backward()
        optimizer.step()
    assert value(x, labels, onehot) < 0.3 * different


def test_balanced_weights_give_every_cell_the_same_mass():
    ids = [torch.tensor([0, 0, 0, 0, 1, 1]), torch.tensor([0, 1, 1, 1, 0, 0])]
    weights = balanced_sampling_weights(ids)
    cells = [(0, 0), (0, 1), (1, 0)]
    mass = {cell: float(sum(w for w, a, b in zip(weights, *ids) if (int(a), int(b)) == cell)) for cell in cells}
    assert all(m == pytest.approx(1 / 3) for m in mass.values())


def test_in_loop_hook_checks_its_settings():
    X, S, schema, C = _table(n=200)
    with pytest.raises(ValueError, match="matching"):
        InLoopConcealment(10, _slices(schema), C, matching="wasserstein")
    with pytest.raises(ValueError, match=">= 0"):
        InLoopConcealment(10, _slices(schema), C, matching_weight=-1.0)


def test_trained_concealment_round_trips_through_save_and_load(tmp_path):
    from bafo_pipeline import BAFOTransformer, load_model, make_synthetic_faces, save_model

    faces = make_synthetic_faces(96, image_size=32, random_state=3)
    model = BAFOTransformer(
        latent_dim=6, widths=(4, 8), epochs=2, batch_size=32, concealment="trained", covariance_dims=1,
        matching="moments", matching_weight=0.01, decoder_epochs=1, random_state=0,
    ).fit(faces.images, sensitive_features=faces.sensitive_features)
    assert model.erasure_ is not None and model.refiner_ is None
    assert "matching" in model.history_[-1]
    loaded = load_model(save_model(model, tmp_path / "model"))
    Z = model.transform(faces.images)
    np.testing.assert_array_equal(loaded.transform(faces.images), Z)
    S = faces.sensitive_features
    np.testing.assert_array_equal(loaded.inverse_transform(Z, sensitive_features=S), model.inverse_transform(Z, sensitive_features=S))
    assert loaded.get_params() == model.get_params()


def test_trainer_decodes_erased_means_plus_noise():
    from bafo_pipeline.model import BAFONetwork, NetworkConfig
    from bafo_pipeline.training import Trainer, TrainingConfig

    X, S, schema, C = _table(n=256)
    hook = InLoopConcealment(4, _slices(schema), C, momentum=0.0)
    network = BAFONetwork(NetworkConfig(kind="mlp", input_shape=(10,), condition_dim=C.shape[1], latent_dim=4, widths=(16,)))
    seen = []
    network.decoder.register_forward_pre_hook(lambda module, args: seen.append(args[0].detach().clone()))
    trainer = Trainer(network, TrainingConfig(epochs=1, batch_size=256, validation_fraction=0.0), torch.device("cpu"),
                      _slices(schema), in_loop=hook)
    inputs = torch.from_numpy(X).float()
    mean, logvar = network.encode(inputs)
    trainer._loss(inputs, C.float())
    # The eraser was refreshed on this very batch (momentum 0): the erased means have no cross-covariance
    # with any concept, and the decoder got them plus the posterior noise (not erased noise).
    erased = hook.erase(mean.detach())
    concepts = hook.layout.concepts(C.float())
    cross = (erased - erased.mean(0)).T @ (concepts - concepts.mean(0)) / len(erased)
    assert cross.abs().max() < 1e-4
    noise = seen[-1] - erased
    assert torch.allclose(noise.std(0), torch.exp(0.5 * logvar.detach()).mean(0), rtol=0.3)
