"""The network, the loss and the training loop: learning, attribute control, determinism, resume."""

import numpy as np
import pytest
import torch
from sklearn.linear_model import LogisticRegression, Ridge

from bafo_pipeline.data.synthetic import make_synthetic_faces
from bafo_pipeline._nn.independence import independence_penalty, normalized_hsic
from bafo_pipeline._nn.network import BAFONetwork, NetworkConfig, vae_loss_terms
from bafo_pipeline._nn.training import Trainer, TrainingConfig
from bafo_pipeline._utils import resolve_device
from bafo_pipeline.transformers import BAFOTransformer




@pytest.fixture(scope="module")
def trained():
    """A small BAFO trained on 448 synthetic 56x56 faces, with 64 held-out faces."""
    faces = make_synthetic_faces(512, random_state=0)
    train, test = faces.subset(np.arange(448)), faces.subset(np.arange(448, 512))
    model = BAFOTransformer(
        latent_dim=16, widths=(8, 16, 32), epochs=6, batch_size=32, learning_rate=3e-3, random_state=0,
        concealment="none",  # these tests are about the conditional VAE itself
    )
    model.fit(train.images, sensitive_features=train.sensitive_features)
    return model, train, test


def _pooled(images: np.ndarray) -> np.ndarray:
    """4x4-average-pooled pixels in [0, 1]: features for the external attribute probes."""
    x = images.astype(np.float32) / 255.0
    n, h, w, c = x.shape
    return x.reshape(n, h // 4, 4, w // 4, 4, c).mean(axis=(2, 4)).reshape(n, -1)


@pytest.fixture(scope="module")
def probes(trained):
    """External gender classifier and age regressor trained on the real training images (as in the paper)."""
    _, train, _ = trained
    features = _pooled(train.images)
    gender = LogisticRegression(max_iter=2000).fit(features, train.attributes["gender"])
    age = Ridge(alpha=1.0).fit(features, train.attributes["age"])
    return gender, age


def _squared_error(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    diff = a.astype(np.float64) / 255.0 - b.astype(np.float64) / 255.0
    return (diff**2).reshape(len(diff), -1).sum(axis=1)


def test_reconstruction_beats_the_mean_image(trained):
    model, train, test = trained
    latents = model.transform(test.images)
    reconstructions = model.inverse_transform(latents, sensitive_features=test.sensitive_features)
    error = _squared_error(reconstructions, test.images)
    mean_image = np.broadcast_to(train.images.mean(axis=0), test.images.shape)
    baseline = _squared_error(mean_image, test.images)
    assert error.mean() < 0.5 * baseline.mean()
    assert np.mean(error < baseline) > 0.9
    assert all("validation_loss" in record for record in model.history_)
    assert model.history_[-1]["validation_loss"] < model.history_[0]["validation_loss"]


def test_decoding_as_the_other_gender_changes_the_face_that_way(trained, probes):
    model, _, test = trained
    gender_probe, _ = probes
    female = list(gender_probe.classes_).index("female")
    latents = model.transform(test.images)
    decoded = {
        g: model.inverse_transform(latents, sensitive_features=test.sensitive_features.assign(gender=g))
        for g in ("female", 0.5, "male")
    }
    p = {g: gender_probe.predict_proba(_pooled(images))[:, female] for g, images in decoded.items()}
    assert np.abs(decoded["female"].astype(float) - decoded["male"]).mean() > 1.0  # grey levels of 255
    assert np.mean(p["female"] > p["male"]) > 0.9
    # The paper's "neutral" decode (gender 0.5) lands between the two.
    between = (p[0.5] > np.minimum(p["female"], p["male"])) & (p[0.5] < np.maximum(p["female"], p["male"]))
    assert np.mean(between) > 0.8


def test_decoding_at_another_age_changes_the_face_that_way(trained, probes):
    model, _, test = trained
    _, age_probe = probes
    latents = model.transform(test.images)
    young, old = (
        model.inverse_transform(latents, sensitive_features=test.sensitive_features.assign(age=age))
        for age in (5.0, 75.0)
    )
    assert np.abs(young.astype(float) - old).mean() > 1.0
    predicted_young, predicted_old = age_probe.predict(_pooled(young)), age_probe.predict(_pooled(old))
    assert np.mean(predicted_old > predicted_young) > 0.9
    assert (predicted_old - predicted_young).mean() > 5.0


def test_ethnicity_mixture_decodes_between_its_parts(trained):
    # Synthetic "white" skin is pale and "black" skin dark brown, so brightness orders the decodes.
    model, _, test = trained
    latents = model.transform(test.images)
    fixed = {"age": test.sensitive_features["age"].to_numpy(), "gender": test.sensitive_features["gender"].to_numpy()}
    brightness = {
        name: model.inverse_transform(latents, sensitive_features={**fixed, "ethnicity": mix}).astype(float).mean()
        for name, mix in [("white", "white"), ("mix", {"white": 0.5, "black": 0.5}), ("black", "black")]
    }
    assert brightness["white"] > brightness["mix"] > brightness["black"]


def _tiny_faces(n=96):
    return make_synthetic_faces(n, image_size=32, random_state=1)


def _tiny_model(**params):
    defaults = dict(latent_dim=4, widths=(4, 8), epochs=2, batch_size=16, random_state=3, concealment="none")
    return BAFOTransformer(**{**defaults, **params})


def _weights(model):
    return model.network_.state_dict()


def _losses(history):
    return [{k: v for k, v in record.items() if k != "images_per_second"} for record in history]


def _same_weights(a, b):
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_training_is_deterministic_given_random_state():
    faces = _tiny_faces()
    first = _tiny_model().fit(faces.images, sensitive_features=faces.sensitive_features)
    second = _tiny_model().fit(faces.images, sensitive_features=faces.sensitive_features)
    third = _tiny_model(random_state=4).fit(faces.images, sensitive_features=faces.sensitive_features)
    assert _same_weights(_weights(first), _weights(second))
    np.testing.assert_array_equal(first.transform(faces.images), second.transform(faces.images))
    assert _losses(first.history_) == _losses(second.history_)
    assert not _same_weights(_weights(first), _weights(third))


def test_fit_leaves_the_global_torch_rng_alone():
    faces = _tiny_faces(32)
    before = torch.get_rng_state()
    _tiny_model(epochs=1).fit(faces.images, sensitive_features=faces.sensitive_features)
    assert torch.equal(before, torch.get_rng_state())


def test_resume_continues_exactly_where_the_checkpoint_stopped(tmp_path):
    faces = _tiny_faces()
    S = faces.sensitive_features
    straight = _tiny_model(epochs=2).fit(faces.images, sensitive_features=S)
    checkpoint = tmp_path / "train.ckpt"
    interrupted = _tiny_model(epochs=1).fit(faces.images, sensitive_features=S, checkpoint=checkpoint)
    assert checkpoint.is_file() and len(interrupted.history_) == 1
    resumed = _tiny_model(epochs=2).fit(faces.images, sensitive_features=S, checkpoint=checkpoint, resume=True)
    assert _same_weights(_weights(straight), _weights(resumed))
    assert [r["epoch"] for r in resumed.history_] == [1, 2]
    assert resumed.history_[1]["loss"] == straight.history_[1]["loss"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["train.ckpt"]  # no temporary files left behind


def test_resume_refuses_a_checkpoint_of_other_settings(tmp_path):
    faces = _tiny_faces(32)
    S = faces.sensitive_features
    checkpoint = tmp_path / "train.ckpt"
    _tiny_model(epochs=1).fit(faces.images, sensitive_features=S, checkpoint=checkpoint)
    with pytest.raises(ValueError, match="different training settings"):
        _tiny_model(epochs=2, learning_rate=0.01).fit(faces.images, sensitive_features=S, checkpoint=checkpoint, resume=True)
    with pytest.raises(ValueError, match="different network"):
        _tiny_model(epochs=2, latent_dim=5).fit(faces.images, sensitive_features=S, checkpoint=checkpoint, resume=True)
    with pytest.raises(ValueError, match="already holds 1 epochs, more than the 0 asked for"):
        _tiny_model(epochs=0).fit(faces.images, sensitive_features=S, checkpoint=checkpoint, resume=True)
    with pytest.raises(ValueError, match="training on 32 rows, not the 31 given now"):
        _tiny_model(epochs=2).fit(faces.images[1:], sensitive_features=S.iloc[1:], checkpoint=checkpoint, resume=True)
    checkpoint.write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="cannot be read"):
        _tiny_model(epochs=2).fit(faces.images, sensitive_features=S, checkpoint=checkpoint, resume=True)


def test_trainer_history_holds_plain_floats_per_epoch():
    config = NetworkConfig("mlp", (6,), condition_dim=2, latent_dim=2, widths=(8,))
    trainer = Trainer(
        BAFONetwork(config),
        TrainingConfig(epochs=3, batch_size=16, independence_weight=1.0, seed=0),
        torch.device("cpu"),
        [(0, 1, "binary"), (1, 2, "binary")],
    )
    x = torch.randn(64, 6)
    c = torch.randint(0, 2, (64, 2)).float()
    history = trainer.fit(x, c)
    assert [r["epoch"] for r in history] == [1, 2, 3]
    keys = {"loss", "reconstruction", "kl_mean", "kl_variance", "independence", "validation_loss", "images_per_second"}
    for record in history:
        assert keys <= set(record)
        assert all(type(record[k]) is float and np.isfinite(record[k]) for k in keys)


def _scripted_trainer(validation_losses, monkeypatch, *, epochs=3, validation_fraction=0.1):
    """A small tabular trainer whose validation losses are ``validation_losses``, one per epoch, and the
    weights it had at the end of each epoch."""
    config = NetworkConfig("mlp", (6,), condition_dim=1, latent_dim=2, widths=(8,))
    with torch.random.fork_rng(devices=[]):  # the same initial weights in every trainer
        torch.manual_seed(0)
        network = BAFONetwork(config)
    trainer = Trainer(
        network,
        TrainingConfig(epochs=epochs, batch_size=16, seed=0, validation_fraction=validation_fraction),
        torch.device("cpu"),
        [(0, 1, "binary")],
    )
    losses = iter(validation_losses)
    monkeypatch.setattr(trainer, "evaluate", lambda inputs, conditions: next(losses))
    snapshots = []
    trainer_fit = trainer.fit

    def fit(x, c, **kwargs):
        return trainer_fit(x, c, on_epoch_end=lambda record: snapshots.append(
            {k: v.clone() for k, v in trainer.network.state_dict().items()}), **kwargs)

    return trainer, fit, snapshots


def _data(n=64):
    generator = torch.Generator().manual_seed(0)
    return torch.randn(n, 6, generator=generator), torch.randint(0, 2, (n, 1), generator=generator).float()


def test_a_last_epoch_worse_on_validation_is_undone(monkeypatch):
    trainer, fit, snapshots = _scripted_trainer([3.0, 1.0, 5.0], monkeypatch)
    history = fit(*_data())
    assert [r["validation_loss"] for r in history] == [3.0, 1.0, 5.0]  # every epoch stays in the history
    assert [r.get("kept", False) for r in history] == [False, True, False]
    assert _same_weights(trainer.network.state_dict(), snapshots[1])
    assert not _same_weights(trainer.network.state_dict(), snapshots[2])


def test_the_last_epoch_is_kept_when_it_is_the_best_or_nothing_is_held_out(monkeypatch):
    trainer, fit, snapshots = _scripted_trainer([3.0, 2.0, 1.0], monkeypatch)
    history = fit(*_data())
    assert [r.get("kept", False) for r in history] == [False, False, True]
    assert _same_weights(trainer.network.state_dict(), snapshots[2])
    trainer, fit, snapshots = _scripted_trainer([], monkeypatch, validation_fraction=0.0)
    history = fit(*_data())
    assert all("validation_loss" not in r and "kept" not in r for r in history)
    assert _same_weights(trainer.network.state_dict(), snapshots[2])


def test_the_best_epoch_survives_a_resume(monkeypatch, tmp_path):
    straight, fit, snapshots = _scripted_trainer([3.0, 1.0, 5.0], monkeypatch)
    fit(*_data())
    checkpoint = tmp_path / "train.ckpt"
    _, fit_two, _ = _scripted_trainer([3.0, 1.0], monkeypatch, epochs=2)
    fit_two(*_data(), checkpoint=checkpoint)
    resumed, fit_rest, _ = _scripted_trainer([5.0], monkeypatch)
    history = fit_rest(*_data(), checkpoint=checkpoint, resume=True)
    assert [r.get("kept", False) for r in history] == [False, True, False]
    assert _same_weights(resumed.network.state_dict(), straight.network.state_dict())
    assert _same_weights(resumed.network.state_dict(), snapshots[1])


def test_heavier_variance_penalty_shrinks_the_variance_kl():
    rng = np.random.default_rng(0)
    X = rng.normal(size=(200, 8)).astype(np.float32)
    S = {"group": rng.choice(["a", "b"], size=200)}
    kl = {}
    for weight in (1.0, 30.0):
        model = BAFOTransformer(latent_dim=4, widths=(16,), epochs=15, batch_size=32, variance_weight=weight, random_state=0)
        kl[weight] = model.fit(X, sensitive_features=S).history_[-1]["kl_variance"]
    assert kl[30.0] < 0.5 * kl[1.0]


def test_kl_terms_add_up_to_the_gaussian_kl():
    torch.manual_seed(0)
    mean, logvar = torch.randn(5, 3), torch.randn(5, 3)
    x = torch.rand(5, 2)
    terms = vae_loss_terms(x, torch.rand(5, 2), mean, logvar)
    posterior = torch.distributions.Normal(mean, torch.exp(0.5 * logvar))
    prior = torch.distributions.Normal(torch.zeros(3), torch.ones(3))
    expected = torch.distributions.kl_divergence(posterior, prior).sum(1)
    torch.testing.assert_close(terms["kl_mean"] + terms["kl_variance"], expected)


def test_conditioning_reaches_every_decoder_stage():
    for every_layer in (False, True):
        config = NetworkConfig("conv", (3, 16, 16), condition_dim=2, latent_dim=3, widths=(4, 8), condition_every_layer=every_layer)
        torch.manual_seed(0)
        network = BAFONetwork(config).eval()
        z = torch.zeros(1, 3)
        out_a = network.decode(z, torch.tensor([[0.0, 1.0]]))
        out_b = network.decode(z, torch.tensor([[1.0, 0.0]]))
        assert out_a.shape == (1, 3, 16, 16) and 0 <= out_a.min() and out_a.max() <= 1
        assert not torch.allclose(out_a, out_b)
        first_stage = network.decoder.stages[0]
        assert first_stage.in_channels == 8 + (2 if every_layer else 0)


def test_network_config_errors_are_clear():
    with pytest.raises(ValueError, match="must be divisible by 8"):
        NetworkConfig("conv", (3, 20, 20), condition_dim=1, widths=(4, 8, 16))
    with pytest.raises(ValueError, match="'conv' or 'mlp'"):
        NetworkConfig("rnn", (3,), condition_dim=1)
    with pytest.raises(ValueError, match="input_shape"):
        NetworkConfig("mlp", (3, 4), condition_dim=1)
    with pytest.raises(ValueError, match="batch_size >= 2"):
        TrainingConfig(batch_size=1)
    with pytest.raises(ValueError, match="validation_fraction"):
        TrainingConfig(validation_fraction=1.0)


def test_hsic_detects_dependence_and_has_finite_gradients():
    torch.manual_seed(0)
    group = torch.randint(0, 2, (128, 1)).float()
    independent = torch.randn(128, 4, requires_grad=True)
    dependent = torch.cat([group + 0.1 * torch.randn(128, 1), torch.randn(128, 3)], dim=1)
    assert normalized_hsic(independent, group) < 0.05
    assert normalized_hsic(dependent, group) > 0.15  # one of four latent dimensions carries the group
    one_hot = torch.nn.functional.one_hot(torch.randint(0, 3, (128,)), 3).float()
    conditions = torch.cat([group, one_hot], dim=1)
    penalty = independence_penalty(independent, conditions, [(0, 1), (1, 4)])
    penalty.backward()
    assert torch.isfinite(independent.grad).all()
    duplicated = torch.zeros(8, 2, requires_grad=True)  # zero distances everywhere: no NaN
    normalized_hsic(duplicated, torch.arange(8.0)[:, None]).backward()
    assert torch.isfinite(duplicated.grad).all()


def test_resolve_device():
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert resolve_device("auto").type == expected
    assert resolve_device("cpu") == torch.device("cpu")
    if not torch.cuda.is_available():
        with pytest.raises(RuntimeError, match="CUDA is not available"):
            resolve_device("cuda")
