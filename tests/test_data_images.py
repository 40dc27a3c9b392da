"""Image decoding: modes, geometry, bad files and the batch helpers."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from bafo_pipeline.data.images import (
    ImageDecodeError,
    decode_image,
    decode_images,
    iter_decoded_batches,
)


def _noise(seed: int, size: int = 40) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8))


def _save(im: Image.Image, path, fmt: str | None = None, **kwargs) -> str:
    im.save(path, fmt, **kwargs)
    return str(path)


@pytest.fixture
def mixed_files(tmp_path):
    """Eight paths: good images and bad files mixed, with the expected reason of each bad one."""
    files, bad = [], {}
    for i in range(8):
        path = tmp_path / f"img{i}.png"
        if i == 2:
            path.write_bytes(b"")
            bad[i] = "empty file"
        elif i == 5:
            path = tmp_path / "notes.txt"
            path.write_text("not an image")
            bad[i] = "not an image"
        elif i == 6:
            path = tmp_path / "gone.png"
            bad[i] = "file not found"
        else:
            _save(_noise(i), path)
        files.append(str(path))
    return files, bad


@pytest.mark.parametrize(
    "mode, color, expected",
    [
        ("L", 100, (100, 100, 100)),
        ("1", 1, (255, 255, 255)),
        ("CMYK", (0, 255, 255, 0), (255, 0, 0)),
        ("RGBA", (255, 255, 255, 0), (0, 0, 0)),  # fully transparent white -> black
        ("RGBA", (200, 100, 50, 255), (200, 100, 50)),
        ("LA", (255, 128), (128, 128, 128)),  # half-transparent white on black
    ],
)
def test_modes_become_rgb_of_the_right_size(tmp_path, mode, color, expected):
    path = _save(Image.new(mode, (30, 20), color), tmp_path / "x.tiff")
    out = decode_image(path, size=(12, 16))
    assert out.shape == (12, 16, 3) and out.dtype == np.uint8
    assert np.abs(out.astype(int) - expected).max() <= 1


def test_palette_with_and_without_transparency(tmp_path):
    im = Image.new("P", (20, 20), 1)
    im.putpalette([0, 0, 255, 255, 0, 0] + [0] * 762)
    plain = decode_image(_save(im, tmp_path / "plain.png"), size=8)
    assert (plain == (255, 0, 0)).all()
    see_through = decode_image(_save(im, tmp_path / "clear.png", transparency=1), size=8)
    assert (see_through == 0).all()


def test_16_bit_is_scaled_not_clipped(tmp_path):
    arr = np.full((16, 16), 32896, dtype=np.uint16)  # 32896 / 257 = 128
    arr[:, 8:] = 65535
    path = _save(Image.fromarray(arr), tmp_path / "deep.png")
    with Image.open(path) as im:
        assert im.mode.startswith("I")
    out = decode_image(path, size=(16, 16))
    assert out[:, :4].max() == out[:, :4].min() == 128
    assert (out[:, 12:] == 255).all()


def test_cmyk_jpeg(tmp_path):
    path = _save(Image.new("CMYK", (32, 32), (0, 255, 255, 0)), tmp_path / "cmyk.jpg", quality=95)
    out = decode_image(path, size=8)
    assert np.abs(out.astype(int) - (255, 0, 0)).max() <= 8


def test_non_square_is_center_cropped(tmp_path):
    arr = np.zeros((60, 180, 3), dtype=np.uint8)
    arr[:, :60] = (255, 0, 0)
    arr[:, 60:120] = (0, 255, 0)
    arr[:, 120:] = (0, 0, 255)
    out = decode_image(_save(Image.fromarray(arr), tmp_path / "wide.png"), size=10)
    # The filter may blend a sliver from just outside the crop into the edge columns.
    assert (out[:, 1:-1] == (0, 255, 0)).all()
    assert (out[:, [0, -1], 1] > 200).all()
    # A wide target keeps the full width of the same image.
    wide = decode_image(_save(Image.fromarray(arr), tmp_path / "wide2.png"), size=(4, 12))
    assert (wide[:, 0] == (255, 0, 0)).all() and (wide[:, -1] == (0, 0, 255)).all()


def test_jpeg_draft_matches_full_decode(tmp_path):
    y, x = np.mgrid[0:400, 0:300]
    arr = np.stack([x * 255 // 299, y * 255 // 399, (x + y) * 255 // 698], axis=-1).astype(np.uint8)
    path = _save(Image.fromarray(arr), tmp_path / "big.jpg", quality=95)
    fast = decode_image(path, size=(40, 40)).astype(int)
    with Image.open(path) as im:
        im = im.convert("RGB")
        reference = np.asarray(im.resize((40, 40), Image.Resampling.BILINEAR, box=(0, 50, 300, 350))).astype(int)
    assert np.abs(fast - reference).mean() < 2.0


def test_exif_orientation_is_applied(tmp_path):
    arr = np.zeros((32, 32, 3), dtype=np.uint8)
    arr[:, :16] = (255, 0, 0)  # stored: left red, right blue
    arr[:, 16:] = (0, 0, 255)
    exif = Image.Exif()
    exif[0x0112] = 6  # display = stored rotated 90 degrees clockwise
    path = _save(Image.fromarray(arr), tmp_path / "rotated.jpg", quality=95, exif=exif)
    out = decode_image(path, size=16).astype(int)
    assert out[:6, :, 0].mean() > 200 and out[:6, :, 2].mean() < 50  # top is red
    assert out[-6:, :, 2].mean() > 200 and out[-6:, :, 0].mean() < 50  # bottom is blue


def test_bytes_and_path_agree(tmp_path):
    path = _save(_noise(1), tmp_path / "a.jpg")
    with open(path, "rb") as fh:
        data = fh.read()
    np.testing.assert_array_equal(decode_image(path, size=20), decode_image(data, size=20))


def test_truncated_files_are_refused(tmp_path):
    buffer = io.BytesIO()
    _noise(3, 64).save(buffer, "JPEG")
    path = tmp_path / "cut.jpg"
    path.write_bytes(buffer.getvalue()[: len(buffer.getvalue()) // 2])
    with pytest.raises(ImageDecodeError, match="truncated") as info:
        decode_image(path)
    assert info.value.path == str(path)


@pytest.mark.parametrize(
    "make, reason",
    [
        (lambda p: p.write_bytes(b""), "empty file"),
        (lambda p: p.write_text("hello, not pixels"), "not an image"),
        (lambda p: p.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 40), "not an image|corrupt"),
        (lambda p: None, "file not found"),
        (lambda p: p.mkdir(), "is a directory"),
    ],
)
def test_bad_files_name_the_file_and_the_problem(tmp_path, make, reason):
    path = tmp_path / "bad.png"
    make(path)
    with pytest.raises(ImageDecodeError, match=reason) as info:
        decode_image(path)
    assert str(path) in str(info.value)
    assert isinstance(info.value, ValueError)


def test_decompression_bomb_is_refused(tmp_path):
    path = _save(Image.new("RGB", (100, 80)), tmp_path / "big.png")
    with pytest.raises(ImageDecodeError, match="decompression bomb.*8,000 pixels"):
        decode_image(path, max_pixels=7_999)
    assert decode_image(path, max_pixels=8_000).shape == (56, 56, 3)
    assert decode_image(path, max_pixels=None).shape == (56, 56, 3)


@pytest.mark.parametrize("size", [0, -3, (10,), (10, 0), "56", 2.5, True])
def test_invalid_size(size, tmp_path):
    with pytest.raises(ValueError, match="size"):
        decode_image(b"x", size=size)


@pytest.mark.parametrize("n_jobs", [1, 3])
def test_decode_images_skips_and_reports(mixed_files, n_jobs):
    files, bad = mixed_files
    images, kept, errors = decode_images(files, size=16, n_jobs=n_jobs)
    good = [i for i in range(len(files)) if i not in bad]
    assert kept.tolist() == good
    assert images.shape == (len(good), 16, 16, 3)
    for row, i in enumerate(good):
        np.testing.assert_array_equal(images[row], decode_image(files[i], size=16))
    assert [path for path, _ in errors] == [files[i] for i in sorted(bad)]
    for (_, reason), i in zip(errors, sorted(bad)):
        assert bad[i] in reason


def test_decode_images_strict_raises_first_error(mixed_files):
    files, bad = mixed_files
    with pytest.raises(ImageDecodeError, match="empty file") as info:
        decode_images(files, strict=True, n_jobs=2)
    assert info.value.path == files[min(bad)]


def test_progress_callable_and_update_object(mixed_files):
    files, _ = mixed_files
    seen = []
    decode_images(files, size=8, progress=seen.append, n_jobs=1)
    assert seen == list(range(1, len(files) + 1))

    class Bar:
        total = 0

        def update(self, k):
            self.total += k

    bar = Bar()
    decode_images(files, size=8, progress=bar, n_jobs=2)
    assert bar.total == len(files)


@pytest.mark.parametrize("n_jobs", [1, 2])
def test_batches_match_decode_images(mixed_files, n_jobs):
    files, bad = mixed_files
    images, kept, errors = decode_images(files, size=12, n_jobs=1)
    batches = list(iter_decoded_batches(iter(files), batch_size=3, size=12, n_jobs=n_jobs))
    assert len(batches) == 3
    assert all(len(idx) + len(err) == min(3, len(files) - 3 * b) for b, (idx, _, err) in enumerate(batches))
    np.testing.assert_array_equal(np.concatenate([idx for idx, _, _ in batches]), kept)
    np.testing.assert_array_equal(np.concatenate([im for _, im, _ in batches]), images)
    assert [e for _, _, errs in batches for e in errs] == errors


def test_batches_strict_and_early_stop(mixed_files):
    files, bad = mixed_files
    batches = iter_decoded_batches(files, batch_size=2, size=8, strict=True, n_jobs=2)
    first = next(batches)
    assert first[0].tolist() == [0, 1]
    with pytest.raises(ImageDecodeError, match="empty file"):
        next(batches)
    # Closing a half-read stream must not hang or leak an error.
    stream = iter_decoded_batches(files, batch_size=2, size=8, n_jobs=2)
    next(stream)
    stream.close()


def test_invalid_batch_arguments():
    with pytest.raises(ValueError, match="batch_size"):
        iter_decoded_batches([], batch_size=0)
    with pytest.raises(ValueError, match="n_jobs"):
        decode_images([], n_jobs=0)
