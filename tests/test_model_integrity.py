"""Model integrity: a manifest covers every file, loading refuses tampered models, exports record what loaded."""

import json
import shutil
import warnings
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from bafo_pipeline.cli import main
from bafo_pipeline.data.synthetic import make_synthetic_faces
from bafo_pipeline.io import read_metadata
from bafo_pipeline.transformers import (
    BAFOTransformer,
    ModelIntegrityError,
    load_model,
    load_verified_model,
    model_fingerprint,
    save_model,
)
from bafo_pipeline.transformers._integrity import directory_digests, manifest_document
from bafo_pipeline.transformers._persistence import CONFIG_NAME, MANIFEST_NAME, WEIGHTS_NAME

OLD_MODEL = Path(__file__).parent / "data" / "model_v0_1"


@pytest.fixture(scope="module")
def faces():
    return make_synthetic_faces(64, image_size=32, random_state=2)


@pytest.fixture(scope="module")
def fitted(faces):
    model = BAFOTransformer(latent_dim=4, widths=(4, 8), epochs=1, batch_size=16, random_state=0, refine_epochs=2,
                            decoder_epochs=0)
    return model.fit(faces.images, sensitive_features=faces.sensitive_features)


def _reseal(path: Path) -> None:
    (path / MANIFEST_NAME).write_text(manifest_document(directory_digests(path)))


def _unconceal(path: Path) -> None:
    """The attack of issue 14: set concealment to none and drop the fitted steps from config.json."""
    config = json.loads((path / CONFIG_NAME).read_text())
    config["params"]["concealment"] = "none"
    config["state"]["concealment_steps_"] = []
    (path / CONFIG_NAME).write_text(json.dumps(config))


def test_the_manifest_lists_every_file_and_the_fingerprint_covers_the_config(fitted, tmp_path):
    path = save_model(fitted, tmp_path / "model")
    manifest = json.loads((path / MANIFEST_NAME).read_text())
    assert sorted(manifest["files"]) == [CONFIG_NAME, WEIGHTS_NAME]
    loaded = load_verified_model(path)
    assert loaded.verified and loaded.fingerprint == model_fingerprint(path)
    assert loaded.concealment == {"setting": "full", "steps": ["LinearErasure", "LatentRefiner", "LinearErasure"]}
    before = model_fingerprint(path)
    config = json.loads((path / CONFIG_NAME).read_text())
    config["metadata"] = {"note": "edited"}  # weights untouched: 0.1's fingerprint would not have changed
    (path / CONFIG_NAME).write_text(json.dumps(config))
    assert model_fingerprint(path) != before


def test_an_edited_config_is_refused_with_a_clear_error(fitted, faces, tmp_path):
    path = save_model(fitted, tmp_path / "model")
    _unconceal(path)
    with pytest.raises(ModelIntegrityError, match=r"config.json was modified after the model was saved"):
        load_model(path)
    # Re-sealed by hand, the edit is consistent and loads, but under another fingerprint than the audited model's.
    original = model_fingerprint(save_model(fitted, tmp_path / "original"))
    _reseal(path)
    tampered = load_verified_model(path)
    assert tampered.concealment["steps"] == [] and tampered.fingerprint != original


def test_a_concealment_setting_that_no_longer_matches_the_fitted_steps_is_refused(fitted, tmp_path):
    path = save_model(fitted, tmp_path / "model")
    config = json.loads((path / CONFIG_NAME).read_text())
    config["params"]["concealment"] = "none"  # the steps stay: the config now lies about them
    (path / CONFIG_NAME).write_text(json.dumps(config))
    _reseal(path)
    with pytest.raises(ModelIntegrityError, match=r"concealment='none'.*fitted with \[LinearErasure, LatentRefiner"):
        load_model(path)
    config["params"]["concealment"] = "full"
    config["params"]["covariance_dims"] = 3  # the first erasure was fitted with 0
    (path / CONFIG_NAME).write_text(json.dumps(config))
    _reseal(path)
    with pytest.raises(ModelIntegrityError, match="does not match what was fitted"):
        load_model(path)


def test_changed_added_removed_or_linked_files_are_refused(fitted, tmp_path):
    path = save_model(fitted, tmp_path / "model")
    weights = bytearray((path / WEIGHTS_NAME).read_bytes())
    weights[-1] ^= 1
    (path / WEIGHTS_NAME).write_bytes(bytes(weights))
    with pytest.raises(ModelIntegrityError, match="model.safetensors was modified"):
        load_model(path)

    path = save_model(fitted, tmp_path / "added")
    (path / "extra.bin").write_bytes(b"x")
    with pytest.raises(ModelIntegrityError, match="extra.bin is not in the manifest"):
        load_model(path)

    path = save_model(fitted, tmp_path / "linked")
    (path / WEIGHTS_NAME).rename(tmp_path / "elsewhere.safetensors")
    (path / WEIGHTS_NAME).symlink_to(tmp_path / "elsewhere.safetensors")
    with pytest.raises(ModelIntegrityError, match="symbolic link"):
        load_model(path)

    path = save_model(fitted, tmp_path / "garbled")
    (path / MANIFEST_NAME).write_text("[]")
    with pytest.raises(ModelIntegrityError, match="not a bafo model manifest"):
        load_model(path)


def test_a_directory_without_manifest_loads_with_a_warning(fitted, faces, tmp_path):
    path = save_model(fitted, tmp_path / "model")
    (path / MANIFEST_NAME).unlink()
    with pytest.warns(UserWarning, match="integrity cannot be verified"):
        loaded = load_verified_model(path)
    assert not loaded.verified and loaded.fingerprint == model_fingerprint(path)
    np.testing.assert_array_equal(loaded.estimator.transform(faces.images[:4]), fitted.transform(faces.images[:4]))


def test_the_previous_release_model_keeps_loading_unverified(tmp_path):
    with pytest.warns(UserWarning, match="integrity cannot be verified"):
        loaded = load_verified_model(OLD_MODEL, device="cpu")
    assert not loaded.verified and loaded.concealment["setting"] == "full"
    assert len(loaded.concealment["steps"]) == 3
    # Re-saving adds a manifest; the copy then loads verified, without a warning.
    resaved = save_model(loaded.estimator, tmp_path / "resaved")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert load_verified_model(resaved).verified


def test_encode_records_the_verified_fingerprint_and_concealment(tmp_path):
    runner = CliRunner()
    model = tmp_path / "model"
    trained = runner.invoke(main, ["train", "--synthetic-samples", "120", "--epochs", "1", "--batch-size", "256",
                                   "--latent-dim", "8", "--decoder-epochs", "0", "--out", str(model)])
    assert trained.exit_code == 0, trained.output
    out = tmp_path / "z.parquet"
    result = runner.invoke(main, ["encode", "--model", str(model), "--synthetic-samples", "120", "--out", str(out)])
    assert result.exit_code == 0, result.output
    meta = read_metadata(out)
    assert meta["model_fingerprint"] == model_fingerprint(model) and meta["model_verified"] is True
    assert meta["concealment"]["setting"] == "full" and len(meta["concealment"]["steps"]) == 3
    _unconceal(model)
    refused = runner.invoke(main, ["encode", "--model", str(model), "--synthetic-samples", "120",
                                   "--out", str(tmp_path / "y.parquet")])
    assert refused.exit_code != 0 and not (tmp_path / "y.parquet").exists()
    assert "modified after the model was saved" in str(refused.exception) + refused.output


def test_a_copied_model_directory_keeps_its_fingerprint(fitted, tmp_path):
    path = save_model(fitted, tmp_path / "model")
    copy = Path(shutil.copytree(path, tmp_path / "copy"))
    assert model_fingerprint(copy) == model_fingerprint(path) == load_verified_model(copy).fingerprint
