"""KeyedNoise: noise of the right shape, fixed per latent by a key, kept through persistence and the CLI."""

import json
import pickle

import numpy as np
import pytest
from click.testing import CliRunner
from scipy import stats

from bafo_pipeline import (
    BAFOTransformer,
    ConditionalTransport,
    KeyedNoise,
    LinearErasure,
    export_latents,
    load_model,
    make_synthetic_faces,
    read_latents,
    save_model,
)
from bafo_pipeline.cli import main


@pytest.fixture(scope="module")
def correlated():
    """20,000 rows whose columns have very different spreads and correlations."""
    generator = np.random.default_rng(0)
    mixing = generator.normal(size=(6, 6)) * np.array([3.0, 1.0, 0.2, 1.0, 0.5, 2.0])
    return generator.normal(size=(20_000, 6)) @ mixing + 5.0


def test_the_noise_has_the_fitted_rows_covariance_times_scale_squared(correlated):
    noise = KeyedNoise(scale=0.3, seed=0).fit(correlated)
    added = noise.transform(correlated) - correlated
    np.testing.assert_allclose(added.mean(axis=0), 0.0, atol=0.02 * correlated.std(axis=0).max())
    expected = 0.09 * np.cov(correlated, rowvar=False)
    np.testing.assert_allclose(np.cov(added, rowvar=False), expected, atol=0.04 * np.abs(expected).max())


def test_the_draws_are_independent_standard_normals(correlated):
    draws = KeyedNoise(seed=0).fit(correlated).standard_draws(correlated)
    assert stats.kstest(draws.ravel(), "norm").pvalue > 1e-3
    correlations = np.corrcoef(draws, rowvar=False)[np.triu_indices(draws.shape[1], 1)]
    assert np.abs(correlations).max() < 0.04


def test_a_row_gets_the_same_noise_in_any_batch_order_or_precision(correlated):
    noise = KeyedNoise(seed=0).fit(correlated)
    rows = correlated[:500]
    once, draws = noise.transform(rows), noise.standard_draws(rows)
    order = np.random.default_rng(1).permutation(len(rows))
    np.testing.assert_array_equal(noise.standard_draws(rows[order]), draws[order])
    np.testing.assert_array_equal(np.concatenate([noise.standard_draws(rows[i : i + 1]) for i in range(7)]), draws[:7])
    # (The shaping matrix product may round its last bit differently with another batch size.)
    np.testing.assert_allclose(noise.transform(rows[order]), once[order], rtol=1e-12, atol=1e-12)
    np.testing.assert_array_equal(noise.transform(rows), once)  # averaging exports removes nothing
    single = rows.astype(np.float32)
    np.testing.assert_array_equal(noise.standard_draws(single), noise.standard_draws(single.astype(np.float64)))
    assert noise.transform(single).dtype == np.float32


def test_with_row_keys_the_draw_follows_the_identity_not_the_values(correlated):
    noise = KeyedNoise(seed=0).fit(correlated)
    rows, keys = correlated[:300], [f"image-{i}" for i in range(300)]
    draws = noise.standard_draws(rows, row_keys=keys)
    # Values moved as a network's arithmetic moves them (last bits, bfloat16): the same draw.
    jittered = rows * (1 + 1e-3 * np.random.default_rng(2).standard_normal(rows.shape))
    np.testing.assert_array_equal(noise.standard_draws(jittered, row_keys=keys), draws)
    np.testing.assert_array_equal(noise.standard_draws(rows, row_keys=[k.encode() for k in keys]), draws)
    assert abs(np.corrcoef(draws.ravel(), noise.standard_draws(rows).ravel())[0, 1]) < 0.05  # values as identity
    with pytest.raises(ValueError, match="3 row keys given for 300 rows"):
        noise.transform(rows, row_keys=keys[:3])


def test_different_rows_and_different_keys_get_independent_noise(correlated):
    noise = KeyedNoise(seed=0).fit(correlated)
    draws = noise.standard_draws(correlated[:2000])
    moved = noise.standard_draws(np.nextafter(correlated[:2000], np.inf))  # the last bit of every value
    assert abs(np.corrcoef(draws.ravel(), moved.ravel())[0, 1]) < 0.05
    other_key = KeyedNoise(seed=1).fit(correlated).standard_draws(correlated[:2000])
    assert abs(np.corrcoef(draws.ravel(), other_key.ravel())[0, 1]) < 0.05
    np.testing.assert_array_equal(KeyedNoise(seed=0).fit(correlated).standard_draws(correlated[:2000]), draws)
    secret_keys = {KeyedNoise().fit(correlated[:100]).key_.tobytes() for _ in range(2)}
    assert len(secret_keys) == 2  # seed=None: a fresh key from the system's secure source


def test_inverse_transform_leaves_the_noise_in(correlated):
    noise = KeyedNoise(scale=0.5, seed=0).fit(correlated)
    noisy = noise.transform(correlated[:50])
    np.testing.assert_array_equal(noise.inverse_transform(noisy), noisy)
    assert not np.allclose(noisy, correlated[:50], atol=0.1)


def test_a_zero_scale_adds_nothing_and_bad_parameters_are_refused(correlated):
    np.testing.assert_array_equal(KeyedNoise(scale=0.0, seed=0).fit(correlated).transform(correlated), correlated)
    with pytest.raises(ValueError, match="'seed' parameter of KeyedNoise"):
        KeyedNoise(seed=-1).fit(correlated)
    with pytest.raises(ValueError, match="'scale' parameter of KeyedNoise"):
        KeyedNoise(scale=-1.0).fit(correlated)


@pytest.fixture(scope="module")
def faces():
    return make_synthetic_faces(200, image_size=32, random_state=4)


def test_in_a_model_the_noise_follows_each_images_pixels_and_its_key_stays_secret(faces, tmp_path):
    model = BAFOTransformer(latent_dim=6, widths=(8, 16), epochs=1, batch_size=32, decoder_epochs=0, device="cpu",
                            precision="float32", random_state=3,
                            concealment=[ConditionalTransport(), KeyedNoise(scale=0.5)])
    S = faces.sensitive_features
    model.fit(faces.images, sensitive_features=S)
    transport, noise = model.concealment_steps_
    assert noise.seed is None and model.draws_per_input  # the estimator's seed is not handed down: a secret key
    shared = model.transform(faces.images, sensitive_features=S)
    raw = model.transform(faces.images, sensitive_features=S, conceal=False)
    added = shared - transport.transform(raw, sensitive_features=S)
    assert np.abs(added).mean() > 0.1 * np.abs(raw - raw.mean(axis=0)).mean()
    # The same pixels give the same noise whatever the network's arithmetic does to the latents.
    model.set_params(precision="bfloat16")
    shared_bf16 = model.transform(faces.images, sensitive_features=S)
    raw_bf16 = model.transform(faces.images, sensitive_features=S, conceal=False)
    assert np.abs(raw_bf16 - raw).max() > 1e-3 * np.abs(raw).max()  # bfloat16 moved the latents...
    added_bf16 = shared_bf16 - transport.transform(raw_bf16, sensitive_features=S)
    np.testing.assert_allclose(added_bf16, added, atol=1e-4 * np.abs(added).max())  # ...and not the noise
    model.set_params(precision="float32")
    nchw = np.ascontiguousarray(faces.images.transpose(0, 3, 1, 2))
    np.testing.assert_allclose(model.encode_images(nchw, sensitive_features=S), shared, atol=1e-5)
    moved = faces.images[:20].copy()
    moved[:, 0, 0, 0] ^= 1  # one pixel's last bit: another image, another draw
    raw_moved = model.transform(moved, sensitive_features=S.iloc[:20], conceal=False)
    other = model.transform(moved, sensitive_features=S.iloc[:20]) - transport.transform(
        raw_moved, sensitive_features=S.iloc[:20])
    # Two independent draws of one scale differ by about 1.4 times a draw's size; the same draw by 0.
    # Compared row by row (the scale differs between rows), over 120 numbers so that chance cannot fail it.
    assert np.abs(other - added[:20]).mean() > 0.7 * np.abs(added[:20]).mean()
    save_model(model, tmp_path / "model")
    loaded = load_model(tmp_path / "model")
    np.testing.assert_array_equal(loaded.transform(faces.images, sensitive_features=S), shared)
    np.testing.assert_array_equal(pickle.loads(pickle.dumps(model)).transform(faces.images, sensitive_features=S),
                                  shared)
    stored = json.loads((tmp_path / "model" / "config.json").read_text())
    assert noise.key_.tobytes().hex() not in json.dumps(stored) and str(list(noise.key_[:4]))[1:-1] not in json.dumps(stored)
    # Decoding passes the noise and undoes the transport: back to the encoder's decoder on noisy latents.
    decoded = loaded.inverse_transform(shared[:4], sensitive_features=S.iloc[:4])
    assert decoded.shape == faces.images[:4].shape
    # An export (batches of decoded pixels) carries the noise transform gives the same images.
    export_latents(loaded, faces, tmp_path / "latents.parquet", ids=np.arange(len(faces.images)), batch_size=64)
    exported = read_latents(tmp_path / "latents.parquet")
    np.testing.assert_allclose(exported.latents[np.argsort(exported.ids)], shared, atol=1e-5)


def test_the_cli_appends_the_noise_and_records_it(tmp_path):
    args = ["train", "--synthetic-samples", "240", "--epochs", "1", "--batch-size", "256", "--latent-dim", "8",
            "--decoder-epochs", "0", "--concealment", "transport"]
    refused = CliRunner().invoke(main, [*args, "--noise-scale", "0", "--out", str(tmp_path / "bad")])
    assert refused.exit_code == 2 and "--noise-scale" in refused.output and not (tmp_path / "bad").exists()
    result = CliRunner().invoke(main, [*args, "--noise-scale", "0.3", "--transport-shrinkage", "80",
                                       "--out", str(tmp_path / "model")])
    assert result.exit_code == 0, result.output
    transport, noise = load_model(tmp_path / "model").concealment_steps_
    assert isinstance(noise, KeyedNoise) and noise.scale == 0.3 and transport.shrinkage == 80
    recorded = json.loads((tmp_path / "model" / "config.json").read_text())["metadata"]["data"]
    assert recorded["concealment_options"] == {"concealment": "transport", "transport_shrinkage": 80,
                                               "noise_scale": 0.3}


def test_after_an_attribute_free_step_the_noise_is_still_keyed_on_the_pixels(faces):
    # LinearErasure is folded into the network; the noise after it must not be drawn from the folded
    # network's output, whose last bits follow the precision (each precision would then be a fresh draw).
    # (16 dimensions: in 6, the erasure of every attribute group's mean leaves nothing for the noise to follow.)
    model = BAFOTransformer(latent_dim=16, widths=(8,), epochs=1, batch_size=32, decoder_epochs=0, device="cpu",
                            precision="float32", random_state=0, concealment=[LinearErasure(), KeyedNoise(scale=0.5)])
    model.fit(faces.images, sensitive_features=faces.sensitive_features)
    erasure = model.concealment_steps_[0]
    float32 = model.transform(faces.images)
    noise = float32 - erasure.transform(model.transform(faces.images, conceal=False))
    bfloat16 = model.set_params(precision="bfloat16").transform(faces.images)
    assert np.abs(noise).mean() > 0.1 * float32.std(axis=0).mean()
    assert np.abs(bfloat16 - float32).mean() < 0.2 * np.abs(noise).mean()
    assert model.bfloat16_error_ < 0.02  # measured with the same noise on both sides
