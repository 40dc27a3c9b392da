"""Batched JPEG decoding into device tensors: agreement with the Pillow path, bad files, headers."""

from __future__ import annotations

import io
import struct
import warnings

import numpy as np
import pytest
import torch
from PIL import Image

from bafo_pipeline.data import jpeg_tensors as jt
from bafo_pipeline.data.images import ImageDecodeError, decode_images
from bafo_pipeline.data.jpeg_tensors import (
    JpegHeader,
    available_jpeg_backends,
    iter_tensor_batches,
    jpeg_decoder,
    jpeg_header,
)

BACKENDS = available_jpeg_backends()


def _smooth(seed: int, height: int = 200, width: int = 200) -> Image.Image:
    """A colorful smooth image: different gradients per channel plus mild noise."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float64)
    red = 255 * xx / width
    green = 255 * yy / height
    blue = 128 + 80 * np.sin(xx / (9 + seed % 5) + yy / 13)
    arr = np.stack([red, green, blue], axis=-1) + rng.normal(0, 6, (height, width, 3))
    return Image.fromarray(arr.clip(0, 255).astype(np.uint8))


def _jpeg_bytes(im: Image.Image, **kwargs) -> bytes:
    buf = io.BytesIO()
    im.save(buf, "JPEG", quality=90, **kwargs)
    return buf.getvalue()


def _write(path, data: bytes) -> str:
    path.write_bytes(data)
    return str(path)


def _collect(batches):
    """Concatenate yielded batches: (indices, NHWC int array, errors, per-batch tensors)."""
    batches = list(batches)
    indices = np.concatenate([b[0] for b in batches]) if batches else np.empty(0, np.int64)
    tensors = [b[1] for b in batches]
    images = torch.cat(tensors).permute(0, 2, 3, 1).numpy().astype(np.int64)
    errors = [e for b in batches for e in b[2]]
    return indices, images, errors, tensors


def _sof_end(data: bytes) -> int:
    """Offset just past the SOF0/SOF2 segment of a Pillow-written JPEG."""
    pos = max(data.find(b"\xff\xc0"), data.find(b"\xff\xc2"))
    return pos + 2 + int.from_bytes(data[pos + 2 : pos + 4], "big")


@pytest.fixture
def fallback_spy(monkeypatch):
    """Labels of the files that went to the Pillow fallback after being read."""
    labels: list[str] = []
    real = jt._fallback

    def spy(data, label, args):
        labels.append(label)
        return real(data, label, args)

    monkeypatch.setattr(jt, "_fallback", spy)
    return labels


# ---------------------------------------------------------------------------------------------
# Agreement with the Pillow path


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("size", [(56, 56), (40, 64)])
def test_matches_pil_path(tmp_path, backend, size, fallback_spy):
    shapes = [(200, 200), (180, 240), (200, 200), (240, 180), (200, 200)]
    paths = [_write(tmp_path / f"{i}.jpg", _jpeg_bytes(_smooth(i, h, w))) for i, (h, w) in enumerate(shapes)]
    paths.append(_write(tmp_path / "prog.jpg", _jpeg_bytes(_smooth(9), progressive=True)))
    ref, ref_kept, ref_errors = decode_images(paths, size, n_jobs=1)

    indices, images, errors, tensors = _collect(iter_tensor_batches(paths, 4, size, backend=backend))

    assert fallback_spy == []  # every file took the batched torch decode
    assert errors == ref_errors == []
    np.testing.assert_array_equal(indices, ref_kept)
    assert [tuple(t.shape) for t in tensors] == [(4, 3, *size), (2, 3, *size)]
    assert all(t.dtype == torch.uint8 and t.device.type == "cpu" for t in tensors)
    diff = np.abs(images - ref.astype(np.int64))
    assert diff.mean() < 2.0
    assert diff.max() < 40
    # The images really differ (guards against comparing a thing with itself).
    assert np.abs(images - images[::-1]).mean() > 5


@pytest.mark.parametrize("backend", BACKENDS)
def test_decoder_backend(backend):
    decode = jpeg_decoder(backend)
    im = _smooth(3, 48, 64)
    encoded = _jpeg_bytes(im)
    data = [torch.frombuffer(bytearray(encoded), dtype=torch.uint8)] * 2
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        out = decode(data, torch.device("cpu"))
    assert not [w for w in caught if issubclass(w.category, DeprecationWarning)]
    assert len(out) == 2
    assert out[0].shape == (3, 48, 64) and out[0].dtype == torch.uint8
    with Image.open(io.BytesIO(encoded)) as pil:
        diff = np.abs(out[0].permute(1, 2, 0).numpy().astype(int) - np.asarray(pil.convert("RGB"), dtype=int))
    assert diff.mean() < 1 and diff.max() <= 8  # RGB channel order; decoders agree closely


def test_backend_names():
    assert BACKENDS  # torchvision at least
    assert set(BACKENDS) <= {"torchcodec", "torchvision"}
    assert callable(jpeg_decoder("auto"))
    with pytest.raises(ValueError, match="backend"):
        jpeg_decoder("nvjpeg")


# ---------------------------------------------------------------------------------------------
# Bad files, fallbacks, order


@pytest.fixture
def mixed_files(tmp_path):
    """Good JPEGs, files for the Pillow fallback and bad files, mixed; plus the fallback labels."""
    good = _jpeg_bytes(_smooth(0))
    scan = good.find(b"\xff\xda")
    exif = Image.Exif()
    exif[0x0112] = 6  # stored sideways: must be rotated 90 degrees clockwise
    entries = [
        ("good0.jpg", good),
        # Valid header, then an invalid marker (0xFF05) in the middle of the scan data.
        ("corrupt.jpg", good[: scan + 400] + b"\xff\x05" * 10 + good[scan + 400 :]),
        ("good1.jpg", _jpeg_bytes(_smooth(1, 180, 240))),
        ("truncated.jpg", good[: len(good) // 2]),
        ("empty.jpg", b""),
        ("missing.jpg", None),
        ("image.png", None),
        ("cmyk.jpg", _jpeg_bytes(_smooth(2).convert("CMYK"))),
        ("rotated.jpg", _jpeg_bytes(_smooth(3, 120, 200), exif=exif)),
        ("gray.jpg", _jpeg_bytes(_smooth(4).convert("L"))),
        ("good2.jpg", _jpeg_bytes(_smooth(5, 240, 180))),
        ("notes.txt", b"not an image"),
        ("good3.jpg", _jpeg_bytes(_smooth(6))),
    ]
    paths = []
    for name, data in entries:
        path = tmp_path / name
        if name == "image.png":
            _smooth(7, 150, 150).save(path)
        elif data is not None:
            path.write_bytes(data)
        paths.append(str(path))
    by_name = {name: str(tmp_path / name) for name, _ in entries}
    fallback = {by_name[n] for n in ("corrupt.jpg", "truncated.jpg", "empty.jpg", "image.png", "cmyk.jpg")}
    fallback |= {by_name[n] for n in ("rotated.jpg", "notes.txt")}
    return paths, by_name, fallback


@pytest.mark.parametrize("n_jobs", [1, 2])
@pytest.mark.parametrize("backend", BACKENDS)
def test_mixed_files_order_and_errors(mixed_files, n_jobs, backend, fallback_spy):
    paths, by_name, fallback = mixed_files
    size = (48, 48)
    ref, ref_kept, ref_errors = decode_images(paths, size, n_jobs=1)
    bad = {by_name[n] for n in ("corrupt.jpg", "truncated.jpg", "empty.jpg", "missing.jpg", "notes.txt")}
    assert {p for p, _ in ref_errors} == bad  # the fixture makes what it claims

    batches = list(iter_tensor_batches(paths, 4, size, n_jobs=n_jobs, backend=backend))
    indices, images, errors, _ = _collect(batches)

    assert len(batches) == 4  # 13 files in batches of 4
    for b, (idx, tensor, errs) in enumerate(batches):
        assert idx.dtype == np.int64
        assert np.all((idx >= 4 * b) & (idx < 4 * b + 4))
        assert tensor.shape == (len(idx), 3, *size)
        assert tensor.dtype == torch.uint8 and tensor.device == torch.device("cpu")
        assert tensor.is_contiguous()
        assert {p for p, _ in errs} <= set(paths[4 * b : 4 * b + 4])
    np.testing.assert_array_equal(indices, ref_kept)
    assert errors == ref_errors  # same paths, same reasons, same order
    assert set(fallback_spy) == fallback

    ref = ref.astype(np.int64)
    for k, pos in enumerate(indices):
        name = paths[pos].rsplit("/", 1)[-1]
        if name in ("image.png", "cmyk.jpg", "rotated.jpg"):
            np.testing.assert_array_equal(images[k], ref[k], err_msg=name)  # same Pillow code
        else:
            diff = np.abs(images[k] - ref[k])
            assert diff.mean() < 2.0 and diff.max() < 40, name
        if name == "gray.jpg":
            assert np.array_equal(images[k][..., 0], images[k][..., 1])
            assert np.array_equal(images[k][..., 0], images[k][..., 2])


def test_corrupt_jpeg_that_pillow_can_decode_is_kept(tmp_path, fallback_spy):
    good = _jpeg_bytes(_smooth(0))
    scan = good.find(b"\xff\xda")
    garbage = np.random.default_rng(1).integers(0, 256, 3000, dtype=np.uint8).tobytes()
    paths = [
        _write(tmp_path / "a.jpg", _jpeg_bytes(_smooth(1))),
        _write(tmp_path / "b.jpg", good[: scan + 14] + garbage),  # torch decoders refuse, Pillow decodes
    ]
    ref, _, ref_errors = decode_images(paths, 32, n_jobs=1)
    assert ref_errors == []
    indices, images, errors, _ = _collect(iter_tensor_batches(paths, 8, 32, n_jobs=1))
    np.testing.assert_array_equal(indices, [0, 1])
    assert errors == []
    assert fallback_spy == [paths[1]]
    np.testing.assert_array_equal(images[1], ref[1])


def test_bad_file_is_isolated_by_splitting_the_batch():
    decode = jpeg_decoder()
    calls: list[int] = []

    def counting(data, device):
        calls.append(len(data))
        return decode(data, device)

    good = _jpeg_bytes(_smooth(0, 24, 24))
    bad = good[: len(good) // 2]
    items = []
    for pos in range(33):
        data = bytearray(bad if pos == 21 else good)
        tensor = torch.frombuffer(data, dtype=torch.uint8)
        items.append((pos, jt._Encoded(f"f{pos}", data, tensor, jpeg_header(good))))
    decoded, failed = jt._decode_group(items, counting, torch.device("cpu"))
    assert [pos for pos, _ in failed] == [21]
    assert [pos for pos, _ in decoded] == [p for p in range(33) if p != 21]
    assert all(img.shape == (3, 24, 24) for _, img in decoded)
    assert calls[0] == 33 and len(calls) <= 2 * 6 + 1  # halving, not one call per file
    assert sum(calls) < 3 * 33


def test_bytes_sources(tmp_path):
    sources = [_jpeg_bytes(_smooth(0)), b"", b"junk"]
    indices, images, errors, _ = _collect(iter_tensor_batches(sources, 2, 24, n_jobs=1))
    np.testing.assert_array_equal(indices, [0])
    assert images.shape == (1, 24, 24, 3)
    assert errors == decode_images(sources, 24, n_jobs=1)[2]
    assert [p for p, _ in errors] == ["<bytes>", "<bytes>"]


@pytest.mark.parametrize("n_jobs", [1, 2])
def test_strict_raises_first_bad_file_in_order(mixed_files, n_jobs):
    _, by_name, _ = mixed_files
    # The corrupt JPEG is found only by the batched decode, after the missing file was seen.
    order = [by_name["good0.jpg"], by_name["corrupt.jpg"], by_name["missing.jpg"], by_name["good1.jpg"]]
    with pytest.raises(ImageDecodeError) as info:
        list(iter_tensor_batches(order, 4, 32, strict=True, n_jobs=n_jobs))
    assert info.value.path == by_name["corrupt.jpg"]

    later = [by_name["good0.jpg"], by_name["good1.jpg"], by_name["missing.jpg"], by_name["empty.jpg"]]
    batches = iter_tensor_batches(later, 2, 32, strict=True, n_jobs=n_jobs)
    idx, tensor, errs = next(batches)  # the first batch is fine
    assert list(idx) == [0, 1] and tensor.shape == (2, 3, 32, 32) and errs == []
    with pytest.raises(ImageDecodeError, match="file not found") as info:
        next(batches)
    assert info.value.path == by_name["missing.jpg"]


def test_max_pixels_refuses_large_jpeg(tmp_path, fallback_spy):
    paths = [
        _write(tmp_path / "small.jpg", _jpeg_bytes(_smooth(0, 60, 60))),
        _write(tmp_path / "large.jpg", _jpeg_bytes(_smooth(1, 200, 200))),
    ]
    indices, _, errors, _ = _collect(iter_tensor_batches(paths, 8, 32, max_pixels=10_000))
    np.testing.assert_array_equal(indices, [0])
    assert len(errors) == 1 and errors[0][0] == paths[1]
    assert "decompression bomb" in errors[0][1]
    assert errors == decode_images(paths, 32, max_pixels=10_000)[2]
    assert fallback_spy == [paths[1]]
    # Without the cap it takes the fast path.
    assert len(_collect(iter_tensor_batches(paths, 8, 32, max_pixels=None))[0]) == 2


def test_small_device_budgets_give_the_same_result(tmp_path, monkeypatch):
    shapes = [(200, 200), (180, 240), (200, 200), (60, 60), (200, 200), (180, 240)]
    paths = [_write(tmp_path / f"{i}.jpg", _jpeg_bytes(_smooth(i, h, w))) for i, (h, w) in enumerate(shapes)]
    expected = _collect(iter_tensor_batches(paths, 6, 40, n_jobs=1))
    monkeypatch.setattr(jt, "_DECODE_BUDGET", 3 * 200 * 200 * 2)  # two files per decode call
    monkeypatch.setattr(jt, "_RESIZE_BUDGET", 3 * 200 * 200)  # one image per resize call
    got = _collect(iter_tensor_batches(paths, 6, 40, n_jobs=1))
    np.testing.assert_array_equal(got[0], expected[0])
    np.testing.assert_array_equal(got[1], expected[1])


def test_reads_at_most_two_batches_ahead(tmp_path):
    path = _write(tmp_path / "a.jpg", _jpeg_bytes(_smooth(0, 40, 40)))
    pulled = []

    def source():
        for i in range(20):
            pulled.append(i)
            yield path

    batches = iter_tensor_batches(source(), 4, 16, n_jobs=2)
    assert pulled == []  # lazy until iterated
    idx, _, _ = next(batches)
    assert list(idx) == [0, 1, 2, 3]
    assert len(pulled) == 8  # this batch and the prefetched next one
    rest = list(batches)
    assert np.concatenate([idx] + [b[0] for b in rest]).tolist() == list(range(20))


def test_identity_size_and_empty_input(tmp_path):
    im = _smooth(0, 32, 48)
    path = _write(tmp_path / "a.jpg", _jpeg_bytes(im))
    ((idx, tensor, errs),) = iter_tensor_batches([path], 4, (32, 48))
    assert list(idx) == [0] and errs == []
    encoded = torch.frombuffer(bytearray(_jpeg_bytes(im)), dtype=torch.uint8)
    expected = jt.jpeg_decoder()([encoded], torch.device("cpu"))
    assert torch.equal(tensor[0], expected[0])  # no resampling at the stored size
    assert list(iter_tensor_batches([], 4, 16)) == []


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"size": 0}, "size"),
        ({"size": (56,)}, "size"),
        ({"size": (56, -1)}, "size"),
        ({"batch_size": 0}, "batch_size"),
        ({"batch_size": True}, "batch_size"),
        ({"batch_size": 2.5}, "batch_size"),
        ({"n_jobs": 0}, "n_jobs"),
        ({"max_pixels": 0}, "max_pixels"),
        ({"backend": "pil"}, "backend"),
    ],
)
def test_argument_validation_is_eager(kwargs, match):
    with pytest.raises(ValueError, match=match):
        iter_tensor_batches(["never-read.jpg"], **kwargs)  # raised at the call, not when iterating


# ---------------------------------------------------------------------------------------------
# Header sniffing


@pytest.mark.parametrize(
    "make, expected",
    [
        (lambda: _jpeg_bytes(_smooth(0)), (200, 200, 3, False, 1)),
        (lambda: _jpeg_bytes(_smooth(1, 180, 240), progressive=True), (180, 240, 3, True, 1)),
        (lambda: _jpeg_bytes(_smooth(2, 31, 17).convert("L")), (31, 17, 1, False, 1)),
        (lambda: _jpeg_bytes(_smooth(3, 20, 30).convert("CMYK")), (20, 30, 4, False, 1)),
    ],
)
def test_jpeg_header_reads_pillow_files(make, expected):
    header = jpeg_header(make())
    assert isinstance(header, JpegHeader)
    assert tuple(header[:5]) == expected
    assert header.precision == 8
    assert header.sof_marker == (0xC2 if expected[3] else 0xC0)


@pytest.mark.parametrize("orientation", [1, 3, 6, 8])
def test_jpeg_header_reads_exif_orientation(orientation):
    exif = Image.Exif()
    exif[0x010F] = "camera maker"  # another IFD0 entry before the orientation
    exif[0x0112] = orientation
    data = _jpeg_bytes(_smooth(0, 40, 60), exif=exif)
    header = jpeg_header(data)
    assert (header.height, header.width, header.orientation) == (40, 60, orientation)
    with Image.open(io.BytesIO(data)) as im:  # agrees with Pillow
        assert im.getexif().get(0x0112) == orientation


def _with_segment(jpeg: bytes, marker: int, payload: bytes) -> bytes:
    return jpeg[:2] + struct.pack(">BBH", 0xFF, marker, len(payload) + 2) + payload + jpeg[2:]


def test_jpeg_header_big_endian_exif_and_fill_bytes():
    tiff = b"MM\x00\x2a\x00\x00\x00\x08" + struct.pack(">H", 1) + struct.pack(">HHIHH", 0x0112, 3, 1, 8, 0)
    data = _with_segment(_jpeg_bytes(_smooth(0, 16, 24)), 0xE1, b"Exif\x00\x00" + tiff + b"\x00\x00\x00\x00")
    assert jpeg_header(data).orientation == 8
    # Fill bytes (extra 0xFF) before a marker are allowed.
    sof = data.find(b"\xff\xc0")
    padded = data[:sof] + b"\xff\xff\xff" + data[sof:]
    assert tuple(jpeg_header(padded)[:5]) == (16, 24, 3, False, 8)
    # Broken or odd EXIF blocks give orientation 1, never an error.
    for bad in (b"XX" + tiff[2:], tiff[:6], tiff[:8] + b"\x00\x05", tiff.replace(b"\x00\x03\x00\x00\x00\x01", b"\x00\x03\x00\x00\x00\x02")):
        header = jpeg_header(_with_segment(_jpeg_bytes(_smooth(0, 16, 24)), 0xE1, b"Exif\x00\x00" + bad))
        assert header is not None and header.orientation == 1
    # Non-bytes inputs of the buffer protocol are fine.
    assert jpeg_header(memoryview(data)) == jpeg_header(bytearray(data)) == jpeg_header(data)


def test_jpeg_header_rejects_other_data(tmp_path):
    png = io.BytesIO()
    _smooth(0, 8, 8).save(png, "PNG")
    assert jpeg_header(png.getvalue()) is None
    assert jpeg_header(b"") is None
    assert jpeg_header(b"\xff\xd8") is None
    assert jpeg_header(b"\xff\xd8\xff\xd9") is None  # EOI before any frame
    assert jpeg_header(b"not a jpeg at all") is None
    data = _jpeg_bytes(_smooth(0, 30, 50))
    end = _sof_end(data)
    for cut in range(end):  # truncated anywhere before the frame header is complete
        assert jpeg_header(data[:cut]) is None, cut
    assert tuple(jpeg_header(data[:end])[:2]) == (30, 50)
    sof = data.find(b"\xff\xc0")
    zero_height = data[: sof + 5] + b"\x00\x00" + data[sof + 7 :]
    assert jpeg_header(zero_height) is None


def test_jpeg_header_fuzz_never_raises():
    rng = np.random.default_rng(0)
    exif = Image.Exif()
    exif[0x0112] = 6
    seeds = [_jpeg_bytes(_smooth(0, 16, 16), exif=exif), _jpeg_bytes(_smooth(1, 16, 16), progressive=True)]
    results = []
    for i in range(3000):
        kind = i % 4
        if kind == 0:  # random bytes
            data = rng.integers(0, 256, rng.integers(0, 64), dtype=np.uint8).tobytes()
        elif kind == 1:  # SOI then random bytes, often marker-like
            body = rng.choice([0xFF, 0xE1, 0xC0, 0x00, 0x08, 0x45], size=rng.integers(0, 80)).astype(np.uint8)
            data = b"\xff\xd8" + body.tobytes()
        else:  # a real header with random bytes flipped, then truncated
            data = bytearray(seeds[kind - 2][:700])
            for pos in rng.integers(0, len(data), rng.integers(1, 6)):
                data[pos] = rng.integers(0, 256)
            data = bytes(data[: rng.integers(0, len(data) + 1)])
        header = jpeg_header(data)
        assert header is None or (isinstance(header, JpegHeader) and header.height > 0 and header.width > 0)
        results.append(header is None)
    assert any(results) and not all(results)  # the mutations hit both outcomes
