"""Model directories: config.json + model.safetensors, identical outputs after loading, safe overwrite."""

import json

import numpy as np
import pandas as pd
import pytest
import torch
from safetensors.torch import load_file

from bafo_pipeline._version import package_version
from bafo_pipeline.data.synthetic import make_synthetic_faces
from bafo_pipeline.transformers import (
    BAFOTransformer,
    ModelIntegrityError,
    load_model,
    model_fingerprint,
    read_model_config,
    save_model,
)
from bafo_pipeline.transformers._persistence import CONFIG_NAME, MANIFEST_NAME, WEIGHTS_NAME
from bafo_pipeline.transformers._steps import PRESET_STEP_PARAMS, PRESETS

VALUES = {"age": 60, "gender": 0.5, "ethnicity": {"indian": 1.0, "others": 1.0}}


def reseal(path):
    """Rewrite the manifest after a deliberate edit, as a tool that knows the format would."""
    from bafo_pipeline.transformers._integrity import directory_digests, manifest_document

    (path / MANIFEST_NAME).write_text(manifest_document(directory_digests(path)))




@pytest.fixture(scope="module")
def faces():
    return make_synthetic_faces(64, image_size=32, random_state=2)


@pytest.fixture(scope="module")
def fitted(faces):
    model = BAFOTransformer(latent_dim=4, widths=(4, 8), epochs=2, batch_size=16, random_state=0, refine_epochs=3)
    return model.fit(faces.images, sensitive_features=faces.sensitive_features)


def test_loaded_model_gives_identical_outputs(fitted, faces, tmp_path):
    path = save_model(fitted, tmp_path / "model")
    loaded = load_model(path)
    Z = fitted.transform(faces.images)
    np.testing.assert_array_equal(loaded.transform(faces.images), Z)
    np.testing.assert_array_equal(
        loaded.inverse_transform(Z, sensitive_features=VALUES), fitted.inverse_transform(Z, sensitive_features=VALUES)
    )
    S = faces.sensitive_features
    assert loaded.score(faces.images, sensitive_features=S) == fitted.score(faces.images, sensitive_features=S)
    assert loaded.get_params() == fitted.get_params()
    assert loaded.schema_ == fitted.schema_ and loaded.input_format_ == fitted.input_format_
    assert loaded.history_ == fitted.history_


def test_directory_holds_json_config_and_safetensors(fitted, tmp_path):
    path = save_model(fitted, tmp_path / "model", metadata={"split": {"seed": 0}})
    assert sorted(p.name for p in path.iterdir()) == [CONFIG_NAME, MANIFEST_NAME, WEIGHTS_NAME]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]  # no staging directory left
    config = json.loads((path / CONFIG_NAME).read_text())
    assert config["package_version"] == package_version() and config["class"] == "BAFOTransformer"
    assert config["params"]["latent_dim"] == 4 and read_model_config(path)["metadata"] == {"split": {"seed": 0}}
    state = config["state"]
    # Every fitted attribute is stored, and only those: the state is vars(estimator)'s "name_" entries.
    assert set(state) == {k for k in vars(fitted) if k.endswith("_") and not k.startswith("_")}
    assert state["schema_"]["schema"] == fitted.schema_.to_dict()
    assert state["network_"]["config"]["widths"] == [4, 8]
    tensors = load_file(path / WEIGHTS_NAME)
    weights = fitted.network_.state_dict()
    assert set(state["network_"]["weights"]) == set(weights)
    assert all(torch.equal(tensors[state["network_"]["weights"][k]], v) for k, v in weights.items())
    # The concealment steps (default "full") travel in the same file, as nested estimators.
    steps = state["concealment_steps_"]
    assert [step["class"] for step in steps] == ["LinearErasure", "LatentRefiner", "LinearErasure"]
    assert steps[1]["params"]["adversary_weight"] == fitted.refine_adversary_weight
    assert tensors[steps[0]["state"]["projection_"]["tensor"]].dtype == torch.float64
    # The fine-tuned decoder's network repeats network_'s encoder: those weights are stored once.
    concealed = state["concealed_network_"]["weights"]
    assert all(concealed[k] == state["network_"]["weights"][k] for k in concealed if k.startswith("encoder."))
    assert any(concealed[k] != state["network_"]["weights"][k] for k in concealed if k.startswith("decoder."))


def test_pickle_and_directory_store_the_same_state(fitted, faces, tmp_path):
    import pickle

    from bafo_pipeline.transformers._state import NetworkState

    state = pickle.loads(pickle.dumps(fitted)).__getstate__()["_fitted_state"]
    assert set(state) == set(json.loads((save_model(fitted, tmp_path / "m") / CONFIG_NAME).read_text())["state"])
    assert isinstance(state["network_"], NetworkState)  # CPU tensors: a GPU-fitted model unpickles anywhere
    unpickled = pickle.loads(pickle.dumps(fitted))
    np.testing.assert_array_equal(unpickled.transform(faces.images), fitted.transform(faces.images))


def test_a_new_fitted_attribute_is_stored_without_persistence_code(fitted, faces, tmp_path):
    import copy
    import pickle

    model = copy.deepcopy(fitted)
    model.extra_counts_ = np.arange(3)  # as a future fit might add
    model.extra_note_ = {"kind": ("a", 1)}
    for loaded in (load_model(save_model(model, tmp_path / "m")), pickle.loads(pickle.dumps(model))):
        np.testing.assert_array_equal(loaded.extra_counts_, [0, 1, 2])
        assert loaded.extra_note_ == {"kind": ("a", 1)}
    model.extra_thing_ = object()
    with pytest.raises(TypeError, match="extra_thing_.*cannot store a object"):
        save_model(model, tmp_path / "m2")


def test_tabular_model_keeps_standardisation_and_feature_names(tmp_path):
    rng = np.random.default_rng(0)
    X = pd.DataFrame(rng.normal(50, 5, size=(60, 4)).astype(np.float32), columns=["a", "b", "c", "d"])
    S = pd.DataFrame({"group": rng.choice(["x", "y"], size=60)})
    model = BAFOTransformer(latent_dim=2, widths=(8,), epochs=2, batch_size=256, random_state=np.random.RandomState(0))
    model.fit(X, sensitive_features=S)
    loaded = load_model(save_model(model, tmp_path / "tabular"))
    assert loaded.random_state is None  # a RandomState instance cannot be stored in JSON
    assert list(loaded.feature_names_in_) == ["a", "b", "c", "d"] and loaded.n_features_in_ == 4
    Z = model.transform(X)
    np.testing.assert_array_equal(loaded.transform(X), Z)
    np.testing.assert_array_equal(
        loaded.inverse_transform(Z, sensitive_features=S), model.inverse_transform(Z, sensitive_features=S)
    )


def test_overwrite_only_replaces_model_directories(fitted, tmp_path):
    path = save_model(fitted, tmp_path / "model")
    with pytest.raises(FileExistsError, match="already exists"):
        save_model(fitted, path)
    save_model(fitted, path, overwrite=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]
    precious = tmp_path / "data"
    precious.mkdir()
    (precious / "photos.txt").write_text("keep me")
    with pytest.raises(FileExistsError, match="not a bafo model"):
        save_model(fitted, precious, overwrite=True)
    assert (precious / "photos.txt").read_text() == "keep me"
    (tmp_path / "file").write_text("x")
    with pytest.raises(FileExistsError, match="not a directory"):
        save_model(fitted, tmp_path / "file", overwrite=True)


def test_a_model_saved_for_cuda_loads_on_a_cpu_only_machine(fitted, faces, tmp_path):
    if torch.cuda.is_available():
        pytest.skip("needs a machine without CUDA")
    path = save_model(fitted, tmp_path / "model")
    config = json.loads((path / CONFIG_NAME).read_text())
    config["params"]["device"] = "cuda:0"  # as written by a model trained with device="cuda:0"
    (path / CONFIG_NAME).write_text(json.dumps(config))
    reseal(path)
    with pytest.warns(UserWarning, match="not available here"):
        loaded = load_model(path)
    assert loaded.device == "auto"
    np.testing.assert_array_equal(loaded.transform(faces.images[:5]), fitted.transform(faces.images[:5]))
    assert load_model(path, device="cpu").device == "cpu"


def test_unreadable_model_directories_give_clear_errors(fitted, tmp_path):
    with pytest.raises(FileNotFoundError, match="config.json is missing"):
        load_model(tmp_path)
    path = save_model(fitted, tmp_path / "model")
    config = json.loads((path / CONFIG_NAME).read_text())
    (path / CONFIG_NAME).write_text(json.dumps({**config, "format_version": 99}))
    reseal(path)
    with pytest.raises(ValueError, match="not a bafo model of a supported format"):
        load_model(path)
    (path / CONFIG_NAME).write_text("{not json")
    reseal(path)
    with pytest.raises(ValueError, match="not valid JSON"):
        load_model(path)
    (path / CONFIG_NAME).write_text("[1, 2]")
    reseal(path)
    with pytest.raises(ValueError, match="not a bafo model config"):
        load_model(path)
    config["state"]["network_"]["config"]["latent_dim"] = 5
    (path / CONFIG_NAME).write_text(json.dumps(config))
    reseal(path)
    with pytest.raises(ValueError, match="weights do not load into the configured model"):
        load_model(path)


def test_fingerprint_identifies_the_model(fitted, faces, tmp_path):
    first = save_model(fitted, tmp_path / "a")
    again = save_model(load_model(first), tmp_path / "b")
    assert model_fingerprint(first) == model_fingerprint(again)
    other = BAFOTransformer(latent_dim=4, widths=(4, 8), epochs=1, batch_size=16, random_state=1)
    other.fit(faces.images, sensitive_features=faces.sensitive_features)
    assert model_fingerprint(save_model(other, tmp_path / "c")) != model_fingerprint(first)


def test_a_model_saved_before_concealment_loads_without_it_and_says_so(tmp_path):
    # A directory of 0.1.0's format (version 1) whose config lacks concealment, as earlier releases wrote it.
    import shutil
    from pathlib import Path

    path = Path(shutil.copytree(Path(__file__).parent / "data" / "model_v0_1", tmp_path / "model"))
    config = json.loads((path / CONFIG_NAME).read_text())
    assert config["format_version"] == 1
    for key in ("concealment", "refine_epochs", "refine_adversary_weight"):
        del config["params"][key]
    for key in ("erasure", "final_erasure", "refiner"):
        config.pop(key, None)
    (path / CONFIG_NAME).write_text(json.dumps(config))
    with pytest.warns(UserWarning, match="predates concealment"):
        loaded = load_model(path)
    assert loaded.concealment == "none" and loaded.erasure_ is None and loaded.concealment_steps_ == []


def test_a_model_saved_before_refine_kl_weight_loads_with_the_weight_it_was_fitted_with(faces, tmp_path):
    # A config written before the parameter existed lacks it; its refiner was fitted with KL weight 1.0, the
    # default, so it must load (the concealment check compares the configured refiner with the fitted one).
    model = BAFOTransformer(latent_dim=4, widths=(4, 8), epochs=1, batch_size=16, random_state=0, refine_epochs=1,
                            decoder_epochs=0, concealment="transport-refined")
    model.fit(faces.images, sensitive_features=faces.sensitive_features)
    path = save_model(model, tmp_path / "model")
    config = json.loads((path / CONFIG_NAME).read_text())
    del config["params"]["refine_kl_weight"]
    (path / CONFIG_NAME).write_text(json.dumps(config))
    reseal(path)
    loaded = load_model(path)
    assert loaded.refine_kl_weight == 1.0 and loaded.concealment_steps_[1].kl_weight == 1.0
    S = faces.sensitive_features
    np.testing.assert_array_equal(loaded.transform(faces.images, sensitive_features=S),
                                  model.transform(faces.images, sensitive_features=S))


def test_a_refiner_kl_weight_other_than_the_configured_one_is_refused_at_load(faces, tmp_path):
    model = BAFOTransformer(latent_dim=4, widths=(4, 8), epochs=1, batch_size=16, random_state=0, refine_epochs=1,
                            decoder_epochs=0, refine_kl_weight=0.1)
    model.fit(faces.images, sensitive_features=faces.sensitive_features)
    path = save_model(model, tmp_path / "model")
    assert load_model(path).concealment_steps_[1].kl_weight == 0.1
    config = json.loads((path / CONFIG_NAME).read_text())
    config["params"]["refine_kl_weight"] = 1.0
    (path / CONFIG_NAME).write_text(json.dumps(config))
    reseal(path)
    with pytest.raises(ModelIntegrityError, match=r"\(LatentRefiner\.kl_weight: config 1\.0, fitted 0\.1\); the config "
                                                  "was changed after fitting"):
        load_model(path)


def test_a_transport_model_saved_under_older_step_defaults_loads_with_what_it_was_fitted_with(faces, tmp_path):
    # A release that fitted ConditionalTransport at shrinkage 50, a fixed ridge penalty and before mean_shrinkage
    # existed (each cell moved by its own mean) saved those values in the fitted step; the preset now spells out
    # other defaults, which is no edit of the config and must not be refused.
    model = BAFOTransformer(latent_dim=4, widths=(4, 8), epochs=1, batch_size=16, random_state=0, decoder_epochs=0,
                            concealment="transport")
    model.fit(faces.images, sensitive_features=faces.sensitive_features)
    path = save_model(model, tmp_path / "model")
    config = json.loads((path / CONFIG_NAME).read_text())
    (step,) = config["state"]["concealment_steps_"]
    del step["params"]["mean_shrinkage"]
    step["params"].update(shrinkage=50.0, ridge_alpha=1.0)
    (path / CONFIG_NAME).write_text(json.dumps(config))
    reseal(path)
    loaded = load_model(path)  # the point: this used to raise ModelIntegrityError (shrinkage 10 vs 50)
    # What it was fitted with (the backfill itself is tested on build_estimator below).
    assert loaded.concealment_steps_[0].get_params()["mean_shrinkage"] == 0.0
    assert loaded.concealment_steps_[0].get_params()["shrinkage"] == 50.0
    S = faces.sensitive_features
    np.testing.assert_array_equal(loaded.transform(faces.images, sensitive_features=S),
                                  model.transform(faces.images, sensitive_features=S))


def test_the_presets_set_only_the_step_parameters_the_load_check_compares():
    knobs = {"covariance_dims": 2, "refine_epochs": 7, "refine_adversary_weight": 0.7, "refine_kl_weight": 0.2,
             "batch_size": 8, "learning_rate": 0.01, "adversary_steps": 3, "validation_fraction": 0.2}
    for preset in PRESETS:
        for step in BAFOTransformer(concealment=preset, **knobs).concealment_steps():
            defaults = type(step)().get_params(deep=False)
            changed = {k for k, v in step.get_params(deep=False).items() if v != defaults[k]}
            assert changed <= set(PRESET_STEP_PARAMS[type(step).__name__]), (preset, type(step).__name__, changed)


def test_a_parameter_an_older_file_lacks_takes_the_value_such_models_were_fitted_with():
    from sklearn.base import BaseEstimator

    from bafo_pipeline.transformers._state import build_estimator

    class Step(BaseEstimator):
        params_before_added = {"added": 0.0}

        def __init__(self, kept=1, added="auto"):
            self.kept, self.added = kept, added

    assert build_estimator(Step, {"kept": 2}).get_params() == {"kept": 2, "added": 0.0}
    assert build_estimator(Step, {"kept": 2, "added": "auto"}).added == "auto"
    assert build_estimator(BaseEstimator, {}).get_params() == {}


def test_a_model_whose_concealment_parameters_changed_after_fitting_is_refused_at_save(faces, tmp_path):
    # load_model would refuse the directory (the config no longer describes the fitted steps): say so at save.
    model = BAFOTransformer(latent_dim=4, widths=(4, 8), epochs=1, batch_size=16, random_state=0, decoder_epochs=0,
                            concealment="linear").fit(faces.images, sensitive_features=faces.sensitive_features)
    model.set_params(covariance_dims=2)
    with pytest.raises(ValueError, match=r"LinearErasure\.covariance_dims: config 2, fitted 0\). Refit the concealment"):
        save_model(model, tmp_path / "model")
    assert not (tmp_path / "model").exists()
    model.set_params(covariance_dims=0)
    assert load_model(save_model(model, tmp_path / "model")).concealment_steps_[0].covariance_dims == 0
