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
from bafo_pipeline._nn import inference
from bafo_pipeline._nn.engine import TorchEncoder
from bafo_pipeline._nn.folding import AffineMap, fold_encoder
from bafo_pipeline.data import ImageFiles

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


def _folded(model, steps) -> TorchEncoder:
    layers = [layer for step in steps for layer in step.as_layers()]
    return TorchEncoder(fold_encoder(model.network_, layers), torch.device("cpu"), bfloat16=False)


@pytest.mark.parametrize("concealment", ["none", "linear", "full"])
def test_folded_encoder_equals_the_unfolded_chain_in_float64(model, faces, concealment, float64_chain):
    fitted = _refit(model, faces, concealment)
    assert (fitted.refiner_ is not None) == (concealment == "full")
    assert (fitted.erasure_ is not None) == (concealment != "none")
    latents = fitted.transform(faces.images)
    reference = float64_chain(fitted, faces.images)
    assert latents.dtype == np.float32 and latents.shape == reference.shape
    assert np.abs(latents - reference).max() < 1e-4 * reference.std()


def test_any_list_of_erasures_and_refiners_folds(model, faces, float64_chain):
    fitted = _refit(model, faces, "full")
    first, refiner, last = fitted.concealment_steps_
    steps = [first, refiner, last, refiner, last, first]
    latents = _folded(fitted, steps)(faces.images.transpose(0, 3, 1, 2))
    reference = float64_chain(fitted, faces.images, steps)
    assert np.abs(latents - reference).max() < 1e-4 * reference.std()


def test_steps_describe_their_transform_as_layers(model, faces):
    fitted = _refit(model, faces, "full")
    latents = fitted.transform(faces.images, conceal=False).astype(np.float64)
    for step in fitted.concealment_steps_:
        expected = step.transform(latents.astype(np.float32))
        through_layers = latents
        for layer in step.as_layers():
            if isinstance(layer, AffineMap):
                through_layers = through_layers @ layer.matrix + layer.offset
            else:
                through_layers = through_layers / (1 + np.exp(-through_layers))  # SiLU
        assert np.abs(through_layers - expected).max() < 1e-5 * expected.std()
        latents = through_layers


@pytest.mark.parametrize("order", ["erasure_first", "scaler_first"])
def test_a_step_without_layers_runs_after_the_network_with_the_steps_after_it(model, faces, order):
    linear = _refit(model, faces, "linear")
    (erasure,) = linear.concealment_steps_
    raw = linear.transform(faces.images, conceal=False)
    scaler = StandardScaler().fit(raw)  # affine, but it does not describe itself as layers: not folded
    steps = [erasure, scaler] if order == "erasure_first" else [scaler, erasure]
    linear.concealment_steps_ = steps
    expected = raw
    for step in steps:
        expected = step.transform(expected)
    np.testing.assert_allclose(linear.transform(faces.images), expected, rtol=1e-5, atol=1e-5 * expected.std())


def test_refitting_the_concealment_rebuilds_the_folded_encoder(model, faces, float64_chain):
    fitted = _refit(model, faces, "full")
    full = fitted.transform(faces.images)
    fitted.set_params(concealment="linear").fit_concealment(faces.images, sensitive_features=faces.sensitive_features)
    linear = fitted.transform(faces.images)
    assert np.abs(linear - full).max() > 0.1 * full.std()  # not the cached full-concealment encoder
    reference = float64_chain(fitted, faces.images)
    assert np.abs(linear - reference).max() < 1e-4 * reference.std()


def test_a_rows_latent_does_not_depend_on_its_slice(model, faces):
    every = model.transform(faces.images)  # 150 rows: slices of 64, 64 and 22
    np.testing.assert_array_equal(model.transform(faces.images[:5]), every[:5])
    np.testing.assert_array_equal(model.transform(faces.images[130:]), every[130:])
    np.testing.assert_array_equal(model.transform(faces.images[63:66]), every[63:66])


def test_read_only_images_encode_as_writable_ones_do_without_a_warning(model, faces):
    import warnings

    frozen = faces.images[:5].copy()
    frozen.flags.writeable = False
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # torch warns when it views read-only memory
        latents = model.transform(frozen)
    np.testing.assert_array_equal(latents, model.transform(faces.images[:5]))
    assert not frozen.flags.writeable  # the caller's array is left as it was


def test_bfloat16_keeps_concealed_latents_within_two_percent_of_their_spread(model, faces):
    float32 = model.transform(faces.images)
    bf16 = copy.deepcopy(model).set_params(precision="bfloat16").transform(faces.images)
    assert not np.array_equal(float32, bf16)  # bf16 did run
    assert np.sqrt(np.mean((float32 - bf16) ** 2)) < 0.02 * float32.std()


def test_fit_measures_how_far_bfloat16_moves_the_latents(model, faces):
    # The fit-time figure is taken on a sample of the fit images; on all of them it is about the same.
    exact = model.transform(faces.images)
    rounded = copy.deepcopy(model).set_params(precision="bfloat16").transform(faces.images)
    on_all = np.sqrt(np.mean((exact - rounded) ** 2)) / exact.std()
    assert 0 < model.bfloat16_error_ and 0.5 * on_all < model.bfloat16_error_ < 2 * on_all


@pytest.mark.parametrize(
    ("measured", "expected"), [(0.002, "bfloat16"), (0.05, "float32"), (None, "float32")]
)
def test_auto_takes_bfloat16_only_where_it_was_measured_to_be_close(model, monkeypatch, measured, expected):
    monkeypatch.setattr(inference, "native_bfloat16", lambda device: True)
    auto = copy.deepcopy(model).set_params(precision="auto", device="cpu")
    if measured is None:  # a model saved before the measurement existed
        del auto.bfloat16_error_
    else:
        auto.bfloat16_error_ = measured
    assert auto.inference_settings().precision == expected
    assert copy.deepcopy(auto).set_params(precision="bfloat16").inference_settings().precision == "bfloat16"


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
    monkeypatch.setattr(inference, "native_bfloat16", lambda device, native=native: native)
    auto = copy.deepcopy(model).set_params(precision="auto", device="cpu")
    out = tmp_path / "latents.parquet"
    export_latents(auto, ImageFiles(pd.DataFrame({"path": files})), out, batch_size=16, ids=np.arange(len(files)))
    table = read_latents(out)
    assert table.metadata["precision"] == ("bfloat16" if native else "float32")
    explicit = copy.deepcopy(model).set_params(precision="bfloat16" if native else "float32")
    np.testing.assert_array_equal(table.latents, explicit.transform(files))


def test_export_reports_how_its_time_was_spent(model, files, tmp_path):
    report = export_latents(model, ImageFiles(pd.DataFrame({"path": files})), tmp_path / "latents.parquet", batch_size=16,
                            ids=np.arange(len(files)))  # in file order: no content hashes to key pseudonymous ids on
    timings = report.timings
    assert report.n_written == len(files)
    stages = timings["waiting_for_decoder"] + timings["encoding"] + timings["writing"]
    assert 0 < timings["encoding"] and 0 < stages <= timings["wall"]
    assert 0 < timings["caller_cpu"] <= timings["process_cpu"]


def test_encode_images_checks_its_batch_and_runs_the_folded_encoder(model, faces, float64_chain):
    nchw = faces.images.transpose(0, 3, 1, 2)  # a strided view, as the Pillow decoder hands it over
    latents = model.encode_images(nchw)
    np.testing.assert_array_equal(latents, model.transform(faces.images))
    np.testing.assert_array_equal(model.encode_images(torch.from_numpy(nchw)), latents)
    reference = float64_chain(model, faces.images)
    assert np.abs(latents - reference).max() < 1e-4 * reference.std()
    with pytest.raises(ValueError, match="expected uint8 images of shape"):
        model.encode_images(nchw.astype(np.float32))
    with pytest.raises(ValueError, match="expected uint8 images of shape"):
        model.encode_images(faces.images)  # NHWC, not NCHW
    unfitted = copy.deepcopy(model)
    unfitted.concealment_steps_ = []  # concealment "full" promised, no step fitted: never raw latents
    with pytest.raises(ValueError, match="not fitted"):
        unfitted.encode_images(nchw)


_FRESH_ENCODE = (
    "import sys, numpy as np, torch; from bafo_pipeline.transformers import load_model;"
    "model = load_model(sys.argv[1]); state = torch.get_rng_state(); height, width, channels = model.input_format_.shape;"
    "model.encode_images(np.zeros((4, channels, height, width), np.uint8));"
    "print('sympy' in sys.modules, torch.equal(state, torch.get_rng_state()))"
)


def test_a_fresh_process_folds_without_random_init_or_importing_sympy(model, tmp_path):
    """Folding assigns its layers' weights: no random initialisation (the global RNG untouched), and not
    ``torch.nn.utils.skip_init``, whose first use imports sympy (a third of a second of every fresh process
    that encodes: each Ray actor's first partition, each ``bafo encode``)."""
    import subprocess
    import sys

    from bafo_pipeline import save_model

    saved = save_model(model, tmp_path / "model")
    output = subprocess.run([sys.executable, "-c", _FRESH_ENCODE, str(saved)], check=True, capture_output=True,
                            text=True).stdout.split()
    assert output == ["False", "True"]
