"""export_latents: image files on disk -> concealed latents in Parquet, on both decoders, with bad files."""

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from bafo_pipeline import BAFOTransformer, export_latents, make_synthetic_faces, read_latents
from bafo_pipeline._nn import inference as _inference
from bafo_pipeline.data import FaceDataset, ImageFiles
from bafo_pipeline.data.images import decode_images
from bafo_pipeline.data.jpeg_tensors import iter_tensor_batches
from bafo_pipeline.data.splits import content_hash

SIZE = 32


@pytest.fixture(scope="module")
def faces():
    return make_synthetic_faces(80, image_size=SIZE, random_state=3)


@pytest.fixture(scope="module")
def model(faces):
    return BAFOTransformer(
        latent_dim=16, widths=(8, 16), epochs=1, refine_epochs=1, batch_size=16, random_state=0
    ).fit(faces.images, sensitive_features=faces.sensitive_features)


@pytest.fixture(scope="module")
def files(faces, tmp_path_factory):
    """The faces as JPEGs 3.5x the model size (as 200 px files are for a 56 px model), named like UTKFace
    files (age_gender_race_...), plus two bad ones."""
    folder = tmp_path_factory.mktemp("faces")
    paths = []
    for i, image in enumerate(faces.images[:12]):
        path = folder / f"{30 + i}_1_2_2017011{i:02d}.jpg.chip.jpg"
        Image.fromarray(image).resize((7 * SIZE // 2, 7 * SIZE // 2), Image.Resampling.BICUBIC).save(path, quality=90)
        paths.append(str(path))
    corrupt = folder / "41_0_3_20170119.jpg.chip.jpg"
    corrupt.write_bytes(Path(paths[0]).read_bytes()[:150])  # a header and then nothing
    missing = folder / "52_1_1_20170120.jpg.chip.jpg"
    paths[3:3] = [str(corrupt)]
    paths[8:8] = [str(missing)]
    return paths


def _dataset(images, faces):
    hashes = np.array([f"{i:064x}" for i in range(len(images))])
    return FaceDataset(images, faces.sensitive_features, ("age", "gender", "ethnicity"), hashes)


def _table(paths):
    """A scanned table of the files (content hashes as scans compute them; none for a missing file)."""
    hashes = [content_hash(Path(p).read_bytes()) if Path(p).is_file() else f"{i:040x}" for i, p in enumerate(paths)]
    return ImageFiles(pd.DataFrame({"path": paths, "age": np.arange(len(paths)) + 20, "content_hash": hashes}))


def _in_order(source):
    """Ids that keep the source's order (these tests are about decoding; ids have their own tests)."""
    return np.arange(len(source))


@pytest.mark.parametrize("decoder", ["pil", "torch"])
def test_bad_files_are_skipped_and_reported_by_row_without_names(model, files, tmp_path, decoder):
    out = tmp_path / "latents.parquet"
    seen = []
    report = export_latents(model, _table(files), out, batch_size=5, decoder=decoder, progress=seen.append,
                            ids=_in_order(files))
    assert [row for row, _ in report.skipped] == [3, 8]
    reasons = dict(report.skipped)
    assert reasons[3].startswith("truncated") or "corrupt" in reasons[3]
    assert reasons[8] == "file not found"
    assert not any("_2017" in reason or ".jpg" in reason for reason in reasons.values())
    assert sum(seen) == len(files) and report.n_written == len(files) - 2
    table = read_latents(out)
    np.testing.assert_array_equal(table.ids, [i for i in range(len(files)) if i not in (3, 8)])
    assert table.metadata["decoder"] == decoder and table.metadata["source_rows"] == len(files)
    assert table.labels is None  # no labels unless asked for


def test_strict_stops_at_the_first_bad_file_and_writes_nothing(model, files, tmp_path):
    out = tmp_path / "latents.parquet"
    with pytest.raises(ValueError, match="truncated|corrupt"):
        export_latents(model, _table(files), out, batch_size=5, strict=True, ids=_in_order(files))
    with pytest.raises(ValueError, match="truncated|corrupt|file not found"):  # the first in id order
        export_latents(model, _table(files), out, batch_size=5, strict=True)
    assert list(tmp_path.iterdir()) == []


def test_an_interrupted_export_leaves_nothing_behind(model, files, tmp_path):
    out = tmp_path / "latents.parquet"

    def interrupt(done):
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        export_latents(model, _table(files), out, batch_size=5, progress=interrupt)
    assert list(tmp_path.iterdir()) == []


def test_each_decoder_exports_the_latents_of_the_pixels_it_decoded(model, files, tmp_path):
    good = [p for i, p in enumerate(files) if i not in (3, 8)]
    pil, torch_ = tmp_path / "pil.parquet", tmp_path / "torch.parquet"
    export_latents(model, _table(good), pil, decoder="pil", ids=_in_order(good))
    export_latents(model, _table(good), torch_, decoder="torch", ids=_in_order(good))
    pil_pixels, _, _ = decode_images(good, size=(SIZE, SIZE))
    torch_pixels = torch.cat([b for _, b, _ in iter_tensor_batches(good, size=(SIZE, SIZE))]).permute(0, 2, 3, 1).numpy()
    np.testing.assert_allclose(read_latents(pil).latents, model.transform(pil_pixels), atol=1e-5)
    np.testing.assert_allclose(read_latents(torch_).latents, model.transform(torch_pixels), atol=1e-5)
    # The two decoders see nearly the same pixels (Pillow scales in the DCT, torch resamples).
    assert np.abs(pil_pixels.astype(int) - torch_pixels).mean() < 1.5


def test_in_memory_export_equals_transform_and_records_precision(model, faces, tmp_path):
    out = tmp_path / "latents.parquet"
    dataset = _dataset(faces.images, faces)
    export_latents(model, dataset, out, batch_size=32, ids=_in_order(dataset))
    table = read_latents(out)
    np.testing.assert_array_equal(table.latents, model.transform(faces.images))
    settings = model.inference_settings()
    assert table.metadata["precision"] == settings.precision
    native = _inference.native_bfloat16(settings.device) and model.bfloat16_error_ <= _inference.AUTO_BFLOAT16_TOLERANCE
    assert settings.precision == ("bfloat16" if native else "float32")
    assert table.metadata["decoder"] == "in-memory"


def test_bad_decoder_and_wrong_image_size_are_refused(model, faces, tmp_path):
    with pytest.raises(ValueError, match="decoder must be one of"):
        export_latents(model, _table([]), tmp_path / "x.parquet", decoder="opencv")
    small = _dataset(faces.images[:, :16, :16], faces)
    with pytest.raises(ValueError, match=r"\(16, 16\).*\(32, 32\)"):
        export_latents(model, small, tmp_path / "x.parquet")
    assert not (tmp_path / "x.parquet").exists()


# ------------------------------------------------------------------ precision


def test_bfloat16_moves_latents_by_about_a_percent_and_keeps_rows_independent(model, faces):
    fp32 = BAFOTransformer(**{**model.get_params(), "precision": "float32"})
    fp32.__dict__.update({k: v for k, v in model.__dict__.items() if k.endswith("_")})
    bf16 = BAFOTransformer(**{**model.get_params(), "precision": "bfloat16"})
    bf16.__dict__.update({k: v for k, v in model.__dict__.items() if k.endswith("_")})
    a, b = fp32.transform(faces.images, conceal=False), bf16.transform(faces.images, conceal=False)
    assert not np.array_equal(a, b)  # bf16 did run
    assert np.sqrt(np.mean((a - b) ** 2)) < 0.02 * a.std()
    # A row's latent does not depend on the rest of its batch.
    np.testing.assert_array_equal(bf16.transform(faces.images[:5], conceal=False), b[:5])


def test_auto_precision_uses_bfloat16_only_for_conv_networks_on_native_hardware(model, monkeypatch):
    conv = model.network_
    tabular = model.refiner_.network_
    cpu = torch.device("cpu")
    for native in (True, False):
        monkeypatch.setattr(_inference, "native_bfloat16", lambda device, native=native: native)
        assert _inference.uses_bfloat16("auto", cpu, conv, measured_error=0.001) is native
        assert _inference.uses_bfloat16("auto", cpu, conv, measured_error=0.03) is False
        assert _inference.uses_bfloat16("auto", cpu, conv) is False  # never measured: float32
        assert _inference.uses_bfloat16("auto", cpu, tabular, measured_error=0.001) is False
        assert _inference.uses_bfloat16("float32", cpu, conv) is False
        assert _inference.uses_bfloat16("bfloat16", cpu, tabular) is True


def test_inference_copy_is_made_once_and_leaves_the_fitted_network_alone(model):
    first = _inference.inference_network(model.network_, torch.device("cpu"))
    second = _inference.inference_network(model.network_, torch.device("cpu"))
    assert first is second and first is not model.network_
    assert all(p.is_contiguous() for p in model.network_.parameters())
    assert first.encoder.features[0].weight.is_contiguous(memory_format=torch.channels_last)


def test_cpu_encoder_leaves_the_decoding_threads_their_cores_and_restores_its_own(model, files, tmp_path):
    from bafo_pipeline.data.images import resolve_n_jobs

    good = [p for i, p in enumerate(files) if i not in (3, 8)]
    before = torch.get_num_threads()
    torch.set_num_threads(3)
    try:
        for decoder, expected in (("pil", max(1, 3 - resolve_n_jobs(None))), ("torch", 3)):
            seen = []
            export_latents(model, _table(good), tmp_path / f"{decoder}.parquet", batch_size=4, decoder=decoder,
                           progress=lambda done: seen.append(torch.get_num_threads()))
            assert set(seen) == {expected} and torch.get_num_threads() == 3, decoder
        with pytest.raises(KeyboardInterrupt):
            export_latents(model, _table(good), tmp_path / "x.parquet", decoder="pil",
                           progress=lambda done: (_ for _ in ()).throw(KeyboardInterrupt))
        assert torch.get_num_threads() == 3
    finally:
        torch.set_num_threads(before)
