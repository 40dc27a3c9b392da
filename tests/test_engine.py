"""The folded image encoder: equal to the unfolded chain, rebuilt when the concealment changes,
row-independent across slices, its precision chosen automatically and recorded in exports."""

import copy

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from sklearn.preprocessing import StandardScaler

from bafo_pipeline import BAFOTransformer, export_latents, make_synthetic_faces, read_latents
from bafo_pipeline.transformers import _inference
from bafo_pipeline.transformers._engine import image_encoder

SIZE = 32


@pytest.fixture(scope="module")
def faces():
    return make_synthetic_faces(150, image_size=SIZE, random_state=4)


@pytest.fixture(scope="module")
def model(faces):
    return BAFOTransformer(
        latent_dim=16, widths=(8, 16), epochs=1, refine_epochs=2, batch_size=16, precision="float32", random_state=0
    ).fit(faces.images, sensitive_features=faces.sensitive_features)


def _refit(model, faces, concealment: str) -> BAFOTransformer:
    twin = copy.deepcopy(model).set_params(concealment=concealment)
    return twin.fit_concealment(faces.images, sensitive_features=faces.sensitive_features)


def _float64_reference(model, images: np.ndarray, steps=None) -> np.ndarray:
    """The unfolded chain in float64: encoder mean, then each step (erasure; refiner: standardise, MLP mean)."""
    encoder = copy.deepcopy(model.network_.encoder).double()
    pixels = torch.from_numpy(images.transpose(0, 3, 1, 2).astype(np.float64) / 255.0)
    with torch.no_grad():
        latents = encoder.head(encoder.features(pixels).flatten(1))[:, : model.latent_dim].numpy()
    if steps is None:
        steps = [s for s in (model.erasure_, model.refiner_, model.final_erasure_) if s is not None]
    for step in steps:
        if hasattr(step, "projection_"):
            latents = latents - (latents - step.mean_) @ step.projection_
            continue
        standardised = (latents - step.feature_mean_) / step.feature_scale_
        with torch.no_grad():
            latents = copy.deepcopy(step.network_).double().encode(torch.from_numpy(standardised))[0].numpy()
    return latents


@pytest.mark.parametrize("concealment", ["none", "linear", "full"])
def test_folded_encoder_equals_the_unfolded_chain_in_float64(model, faces, concealment):
    fitted = _refit(model, faces, concealment)
    assert (fitted.refiner_ is not None) == (concealment == "full")
    assert (fitted.erasure_ is not None) == (concealment != "none")
    latents = fitted.transform(faces.images)
    reference = _float64_reference(fitted, faces.images)
    assert latents.dtype == np.float32 and latents.shape == reference.shape
    assert np.abs(latents - reference).max() < 1e-4 * reference.std()


def test_any_list_of_erasures_and_refiners_folds(model, faces):
    fitted = _refit(model, faces, "full")
    steps = [fitted.erasure_, fitted.refiner_, fitted.final_erasure_, fitted.refiner_, fitted.final_erasure_]
    encoder = image_encoder(fitted.network_, steps, torch.device("cpu"), bfloat16=False)
    latents = encoder(faces.images.transpose(0, 3, 1, 2))
    reference = _float64_reference(fitted, faces.images, steps)
    assert np.abs(latents - reference).max() < 1e-4 * reference.std()


def test_a_step_that_cannot_be_folded_runs_after_the_network(model, faces):
    raw = model.transform(faces.images, conceal=False)
    scaler = StandardScaler().fit(raw)  # affine, but not an erasure: not folded
    encoder = image_encoder(model.network_, [model.erasure_, scaler], torch.device("cpu"), bfloat16=False)
    expected = scaler.transform(model.erasure_.transform(raw))
    np.testing.assert_allclose(encoder(faces.images.transpose(0, 3, 1, 2)), expected, rtol=1e-5, atol=1e-5)


def test_refitting_the_concealment_rebuilds_the_folded_encoder(model, faces):
    fitted = _refit(model, faces, "full")
    full = fitted.transform(faces.images)
    fitted.set_params(concealment="linear").fit_concealment(faces.images, sensitive_features=faces.sensitive_features)
    linear = fitted.transform(faces.images)
    assert np.abs(linear - full).max() > 0.1 * full.std()  # not the cached full-concealment encoder
    reference = _float64_reference(fitted, faces.images)
    assert np.abs(linear - reference).max() < 1e-4 * reference.std()


def test_a_rows_latent_does_not_depend_on_its_slice(model, faces):
    every = model.transform(faces.images)  # 150 rows: slices of 64, 64 and 22
    np.testing.assert_array_equal(model.transform(faces.images[:5]), every[:5])
    np.testing.assert_array_equal(model.transform(faces.images[130:]), every[130:])
    np.testing.assert_array_equal(model.transform(faces.images[63:66]), every[63:66])


def test_bfloat16_keeps_concealed_latents_within_two_percent_of_their_spread(model, faces):
    float32 = model.transform(faces.images)
    bf16 = copy.deepcopy(model).set_params(precision="bfloat16").transform(faces.images)
    assert not np.array_equal(float32, bf16)  # bf16 did run
    assert np.sqrt(np.mean((float32 - bf16) ** 2)) < 0.02 * float32.std()


@pytest.fixture(scope="module")
def files(faces, tmp_path_factory):
    folder = tmp_path_factory.mktemp("faces")
    paths = []
    for i, image in enumerate(faces.images[:40]):
        path = folder / f"{i:03d}.jpg"
        Image.fromarray(image).save(path, quality=95)
        paths.append(str(path))
    return paths


@pytest.mark.parametrize("native", [False, True])
def test_auto_precision_follows_the_cpu_and_is_recorded_in_the_export(model, files, tmp_path, monkeypatch, native):
    monkeypatch.setattr(_inference, "native_bfloat16", lambda device, native=native: native)
    auto = copy.deepcopy(model).set_params(precision="auto", device="cpu")
    out = tmp_path / "latents.parquet"
    export_latents(auto, pd.DataFrame({"path": files}), out, batch_size=16)
    table = read_latents(out)
    assert table.metadata["precision"] == ("bfloat16" if native else "float32")
    explicit = copy.deepcopy(model).set_params(precision="bfloat16" if native else "float32")
    np.testing.assert_array_equal(table.latents, explicit.transform(files))


def test_export_reports_how_its_time_was_spent(model, files, tmp_path):
    report = export_latents(model, pd.DataFrame({"path": files}), tmp_path / "latents.parquet", batch_size=16)
    timings = report.timings
    assert report.n_written == len(files)
    stages = timings["waiting_for_decoder"] + timings["encoding"] + timings["writing"]
    assert 0 < timings["encoding"] and 0 < stages <= timings["wall"]
    assert 0 < timings["caller_cpu"] <= timings["process_cpu"]
