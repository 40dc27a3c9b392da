"""Concealment as a list of steps: presets spelled out, nested parameters, persistence, training hooks."""

import pickle

import numpy as np
import pytest
import sklearn
import torch
from sklearn.base import clone
from sklearn.model_selection import GridSearchCV

from bafo_pipeline import (
    BAFOTransformer,
    ConditionalTransport,
    LatentRefiner,
    LinearErasure,
    load_model,
    make_synthetic_faces,
    save_model,
)


@pytest.fixture(scope="module")
def faces():
    return make_synthetic_faces(160, image_size=32, random_state=4)


def _model(**params):
    defaults = dict(latent_dim=6, widths=(8, 16), epochs=1, batch_size=32, decoder_epochs=0, device="cpu",
                    precision="float32", random_state=0)
    return BAFOTransformer(**{**defaults, **params})


def test_presets_are_step_lists_and_fit_exactly_like_them(faces):
    S = faces.sensitive_features
    preset = _model(concealment="full", covariance_dims=1, refine_epochs=2, refine_adversary_weight=0.5,
                    decoder_epochs=1)
    steps = preset.concealment_steps()
    assert [type(s) for s in steps] == [LinearErasure, LatentRefiner, LinearErasure]
    assert steps[0].covariance_dims == 1 and steps[1].epochs == 2 and steps[1].adversary_weight == 0.5
    as_list = _model(concealment=steps, decoder_epochs=1)
    preset.fit(faces.images, sensitive_features=S)
    as_list.fit(faces.images, sensitive_features=S)
    np.testing.assert_array_equal(as_list.transform(faces.images), preset.transform(faces.images))
    np.testing.assert_array_equal(as_list.erased_label_map_, preset.erased_label_map_)
    values = {"age": 30, "gender": "female"}
    Z = preset.transform(faces.images[:5])
    np.testing.assert_array_equal(
        as_list.inverse_transform(Z, sensitive_features=values), preset.inverse_transform(Z, sensitive_features=values)
    )
    # The steps given as a parameter are left unfitted (fit works on copies).
    assert not hasattr(steps[0], "projection_") and not hasattr(steps[1], "model_")
    assert [type(s) for s in _model(concealment="linear").concealment_steps()] == [LinearErasure]
    assert _model(concealment="none").concealment_steps() == []



@pytest.mark.parametrize("preset", ["none", "linear", "full", "transport", "transport-refined"])
def test_spelling_out_a_preset_keeps_its_steps_and_resets_its_knobs(preset):
    knobs = {"covariance_dims": 1, "refine_epochs": 2, "refine_adversary_weight": 0.5, "refine_kl_weight": 0.2}
    model = _model(concealment=preset, **knobs)
    expected = model.concealment_steps()
    assert model.spell_out_concealment() is model
    assert [type(s) for s in model.concealment] == [type(s) for s in expected]
    assert [s.get_params() for s in model.concealment] == [s.get_params() for s in expected]
    untouched = BAFOTransformer()
    assert {k: getattr(model, k) for k in knobs} == {k: getattr(untouched, k) for k in knobs}
    assert [s.get_params() for s in model.concealment_steps()] == [s.get_params() for s in expected]  # no refusal


def test_a_spelled_out_preset_takes_nested_parameters_and_a_list_is_left_alone():
    model = _model(concealment="transport-refined").spell_out_concealment()
    model.set_params(concealment__0__shrinkage=160.0)
    transport, refiner, _ = model.concealment_steps()
    assert isinstance(transport, ConditionalTransport) and transport.shrinkage == 160.0
    assert refiner.kl_weight == BAFOTransformer().refine_kl_weight
    steps = [LinearErasure(covariance_dims=2)]
    given = _model(concealment=steps)
    assert given.spell_out_concealment().concealment is steps
    with pytest.raises(ValueError, match="concealment must be one of"):
        _model(concealment="nonsense").spell_out_concealment()

def test_nested_step_parameters_are_exposed_set_and_cloned():
    model = _model(concealment=[LinearErasure(covariance_dims=2), LatentRefiner(epochs=3), LinearErasure()])
    params = model.get_params()
    assert params["concealment__0__covariance_dims"] == 2 and params["concealment__1__epochs"] == 3
    assert params["concealment__1"] is model.concealment[1]
    model.set_params(concealment__0__covariance_dims=4, concealment__1__adversary_weight=1.0)
    assert model.concealment[0].covariance_dims == 4 and model.concealment[1].adversary_weight == 1.0
    original = model.concealment
    model.set_params(concealment__2=LinearErasure(continuous_bins=0))
    assert model.concealment[2].continuous_bins == 0 and original[2].continuous_bins == 4  # a new list
    twin = clone(model)
    assert twin.concealment[0] is not model.concealment[0] and twin.get_params()["concealment__0__covariance_dims"] == 4
    with pytest.raises(ValueError, match="has 3 step"):
        model.set_params(concealment__5__covariance_dims=1)
    with pytest.raises(ValueError, match="named preset"):
        _model(concealment="full").set_params(concealment__0__covariance_dims=1)


def test_grid_search_tunes_a_nested_step_parameter(faces):
    X = faces.images[:96]
    S = faces.sensitive_features.iloc[:96].reset_index(drop=True)
    with sklearn.config_context(enable_metadata_routing=True):  # routes sensitive_features to fit and score
        search = GridSearchCV(
            _model(concealment=[LinearErasure()]), {"concealment__0__continuous_bins": [0, 2]}, cv=2,
        ).fit(X, sensitive_features=S)
    tried = [p["concealment__0__continuous_bins"] for p in search.cv_results_["params"]]
    assert tried == [0, 2]
    assert search.best_estimator_.concealment_steps_[0].continuous_bins == search.best_params_["concealment__0__continuous_bins"]


def test_steps_inherit_device_seed_and_kinds_left_at_none(faces):
    kinds = {"age": "continuous", "gender": "binary", "ethnicity": "categorical"}
    model = _model(concealment=[LatentRefiner(epochs=1), LinearErasure()], attribute_kinds=kinds, random_state=7)
    model.fit(faces.images, sensitive_features=faces.sensitive_features)
    refiner, eraser = model.concealment_steps_
    assert refiner.device == "cpu" and refiner.random_state == 7 and refiner.attribute_kinds == kinds
    assert eraser.attribute_kinds == kinds
    assert model.concealment[0].device is None  # the parameter itself is untouched


def test_a_step_list_that_changes_the_latent_size_is_saved_and_decodes(faces, tmp_path):
    model = _model(concealment=[LinearErasure(), LatentRefiner(latent_dim=3, epochs=1), LinearErasure()])
    model.fit(faces.images, sensitive_features=faces.sensitive_features)
    Z = model.transform(faces.images[:4])
    assert Z.shape == (4, 3) and len(model.get_feature_names_out()) == 3
    decoded = model.inverse_transform(Z, sensitive_features={"age": 50})
    assert decoded.shape == faces.images[:4].shape
    loaded = load_model(save_model(model, tmp_path / "model"))
    np.testing.assert_array_equal(loaded.transform(faces.images[:4]), Z)
    assert [type(s) for s in loaded.concealment] == [LinearErasure, LatentRefiner, LinearErasure]
    np.testing.assert_array_equal(pickle.loads(pickle.dumps(model)).transform(faces.images[:4]), Z)
    with pytest.raises(ValueError, match="decoder_epochs"):
        clone(model).set_params(decoder_epochs=1).fit(faces.images, sensitive_features=faces.sensitive_features)


def test_preset_knobs_are_refused_with_a_step_list(faces):
    model = _model(concealment=[LinearErasure()], covariance_dims=3)
    with pytest.raises(ValueError, match="covariance_dims"):
        model.fit(faces.images, sensitive_features=faces.sensitive_features)
    with pytest.raises(TypeError, match="concealment step"):
        _model(concealment=["linear"]).fit(faces.images, sensitive_features=faces.sensitive_features)


class _ZeroLatentHook:
    """A training hook that hides the latent from the decoder and asks for small posterior means."""

    def __init__(self, latent_dim, slices):
        self.calls, self.latent_dim, self.slices = 0, latent_dim, slices

    def latent(self, z, conditions, mean):
        self.calls += 1
        assert z.shape[1] == self.latent_dim and conditions.shape[1] == self.slices[-1][1]
        return torch.zeros_like(z)

    def loss(self, mean, conditions):
        return 0.5 * mean.pow(2).sum(1).mean()


class _StepWithHook(LinearErasure):
    """A LinearErasure that also takes part in training (only to exercise the hook's place)."""

    def training_hook(self, latent_dim, condition_slices):
        self.hook_ = _ZeroLatentHook(latent_dim, condition_slices)
        return self.hook_


def test_a_step_may_take_part_in_training_through_a_hook(faces):
    S = faces.sensitive_features
    plain = _model(concealment=[LinearErasure()], epochs=2).fit(faces.images, sensitive_features=S)
    hooked = _model(concealment=[_StepWithHook()], epochs=2).fit(faces.images, sensitive_features=S)
    hook = hooked.concealment_steps_[0].hook_  # the fitted step is the one whose hook trained with the encoder
    assert hook.calls > 0
    # The decoder never saw a latent, so reconstruction cannot use it; the hook's loss is in the record.
    assert "hook_0" in hooked.history_[-1] and "hook_0" not in plain.history_[-1]
    assert hooked.history_[-1]["reconstruction"] > plain.history_[-1]["reconstruction"]
    assert not np.array_equal(hooked.transform(faces.images[:4], conceal=False), plain.transform(faces.images[:4], conceal=False))


def test_a_step_of_an_unregistered_class_is_refused_at_save_not_at_load(faces, tmp_path):
    from bafo_pipeline.transformers import register_loadable
    from bafo_pipeline.transformers._state import _LOADABLE

    class MyErasure(LinearErasure):
        pass

    model = _model(concealment=[MyErasure()]).fit(faces.images, sensitive_features=faces.sensitive_features)
    with pytest.raises(TypeError, match="register its class"):
        save_model(model, tmp_path / "model")
    assert not (tmp_path / "model").exists()
    register_loadable(MyErasure)
    try:
        loaded = load_model(save_model(model, tmp_path / "model"))
        assert type(loaded.concealment_steps_[0]) is MyErasure
        np.testing.assert_array_equal(loaded.transform(faces.images[:3]), model.transform(faces.images[:3]))
    finally:
        _LOADABLE.pop("MyErasure")


def test_inverse_transform_without_concealment_decodes_the_encoders_latents_with_its_own_decoder(faces):
    S = faces.sensitive_features
    concealed = _model(concealment="linear", decoder_epochs=1).fit(faces.images, sensitive_features=S)
    plain = _model(concealment="none").fit(faces.images, sensitive_features=S)  # the same encoder and decoder
    raw = concealed.transform(faces.images[:6], conceal=False)
    np.testing.assert_array_equal(raw, plain.transform(faces.images[:6]))
    values = {"age": 30, "gender": "female"}
    # conceal=False: nothing undone, and the encoder's decoder rather than the one fine-tuned on concealed latents.
    np.testing.assert_array_equal(concealed.inverse_transform(raw, sensitive_features=values, conceal=False),
                                  plain.inverse_transform(raw, sensitive_features=values))
    assert not np.array_equal(concealed.inverse_transform(raw, sensitive_features=values),
                              plain.inverse_transform(raw, sensitive_features=values))


def test_a_concealment_fit_that_fails_half_way_leaves_no_step_to_encode_with(faces, monkeypatch):
    S = faces.sensitive_features
    model = _model(concealment="none").fit(faces.images, sensitive_features=S)

    def interrupted(self, *args, **kwargs):
        raise RuntimeError("stopped while the refiner trained")

    monkeypatch.setattr(LatentRefiner, "fit", interrupted)
    with pytest.raises(RuntimeError, match="stopped"):
        model.set_params(concealment="full").fit_concealment(faces.images, sensitive_features=S)
    assert model.concealment_steps_ == []  # not the first erasure alone
    with pytest.raises(ValueError, match="steps are not fitted"):
        model.transform(faces.images)


def test_a_refit_that_fails_leaves_the_estimator_unfitted_not_half_refitted(faces):
    from sklearn.exceptions import NotFittedError

    S = faces.sensitive_features
    model = _model(concealment="none").fit(faces.images, sensitive_features=S)
    with pytest.raises(ValueError):
        model.fit(faces.images[:100], sensitive_features=S)  # 160 attribute rows for 100 images
    assert not [name for name in vars(model) if name.endswith("_") and not name.startswith("_")]
    with pytest.raises(NotFittedError):
        model.transform(faces.images)
