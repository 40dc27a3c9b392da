"""Decode image files in batches straight into fixed-size uint8 tensors on a torch device.

This is the accelerator path of :mod:`bafo_pipeline.data.images`: on CUDA the
JPEGs of a batch are decoded by nvJPEG in one batched call and resized on the
GPU, so the CPU only reads files. It gives the same result as the Pillow path
(RGB, center-cropped to the target aspect ratio, antialiased bilinear resize)
up to small decoder differences, and the same error reasons for bad files.

Design
------
* **Overlapped reading.** A thread pool reads the raw bytes of batch ``k + 1``
  and sniffs their JPEG headers (:func:`jpeg_header`, pure Python, no Pillow)
  while batch ``k`` is decoded and resized, the prefetch pattern of
  :func:`~bafo_pipeline.data.images.iter_decoded_batches`. At most two batches
  of encoded bytes are held at a time.
* **Fast path and fallback.** A file takes the batched torch decode only if
  its header parses, it has 1 (gray) or 3 (YCbCr/RGB) components, 8-bit
  samples, a Huffman baseline/extended/progressive frame, no EXIF rotation or
  flip and at most ``max_pixels`` pixels. Everything else (PNG and other
  formats, CMYK, rotated photos, oversized, empty, missing or unreadable
  files) is decoded in the thread pool by the Pillow path of
  :mod:`~bafo_pipeline.data.images`, which also names what is wrong with a bad
  file; its array is moved to the device. Neither torch backend is relied on
  for EXIF orientation, which is why rotated photos go to Pillow.
* **Corrupt files.** The batched decode fails as a whole when one image fails;
  the batch is then split in halves, recursively, until the failing files are
  decoded alone (a few batched calls instead of one call per file), and each
  file that fails alone goes to Pillow (which reports the reason, or decodes
  it if it can).
  A file that libjpeg/nvJPEG decode while only warning (e.g. a few stray
  bytes) is kept, where Pillow might refuse it.
* **Resize on the device.** Decoded images are grouped by size (usually one
  group), stacked, cropped to the target aspect ratio (the crop box of the
  Pillow path, rounded to whole pixels) and resized with
  ``torch.nn.functional.interpolate(mode="bilinear", antialias=True)``,
  which, like Pillow, widens the filter when shrinking (in float32 on CUDA,
  on uint8 directly on CPU, where that kernel is much faster). Device memory is
  bounded by decoding and resizing in slices of at most a few hundred million
  values.
* **Backends.** TorchCodec's ``decode_jpeg`` when it is installed and works on
  the device, else torchvision's (``>= 0.19``, deprecated from 0.29 on in
  favour of TorchCodec; its warning is silenced here). Both decode lists of
  encoded tensors and run on CPU or CUDA. Pillow decodes JPEGs at a reduced
  DCT scale when shrinking a lot; the torch path decodes at full size, so the
  two differ by about one grey level on average.
"""

from __future__ import annotations

import io
import math
import os
import warnings
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from functools import cache
from typing import NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from .files import StoredFile, open_regular_file
from .images import (
    DEFAULT_MAX_PIXELS,
    ORIENTATION_FIX,
    ImageDecodeError,
    Size,
    center_crop_box,
    check_max_pixels,
    check_size,
    is_positive_int,
    prefetched_batches,
    resolve_n_jobs,
    try_decode,
)

__all__ = [
    "JpegHeader",
    "available_jpeg_backends",
    "iter_tensor_batches",
    "jpeg_decoder",
    "jpeg_header",
]

TensorSource = str | os.PathLike | bytes | StoredFile
JpegDecodeFn = Callable[[Sequence[torch.Tensor], torch.device], list[torch.Tensor]]

_BACKENDS = ("torchcodec", "torchvision")

# Start-of-frame markers: C0..CF except DHT (C4), JPG (C8) and DAC (CC).
_SOF_MARKERS = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}
_PROGRESSIVE_MARKERS = frozenset((0xC2, 0xC6, 0xCA, 0xCE))
# Huffman baseline, extended and progressive: what libjpeg and nvJPEG both decode.
_FAST_SOF_MARKERS = frozenset((0xC0, 0xC1, 0xC2))
_EXIF_ORIENTATION = 0x0112
# TIFF field type -> byte size, for the integer types an orientation value may be stored as.
_TIFF_INT_TYPES = {1: 1, 3: 2, 4: 4, 6: 1, 8: 2, 9: 4}

# Largest number of uint8 values decoded in one call and of float values resized in one call
# (256 Mi values: 256 MiB of decoded pixels, 1 GiB of floats). A batch of 1024 faces of
# 200 x 200 pixels is 123 M values, so it goes in one call.
_DECODE_BUDGET = 1 << 28
_RESIZE_BUDGET = 1 << 28


class JpegHeader(NamedTuple):
    """What :func:`jpeg_header` reads from a JPEG file's markers.

    Attributes
    ----------
    height, width : int
        Stored size in pixels (before any EXIF rotation).
    components : int
        Color components: 1 gray, 3 YCbCr (or RGB), 4 CMYK/YCCK.
    progressive : bool
        Whether the frame is progressive (SOF2, SOF6, SOF10 or SOF14).
    orientation : int
        EXIF orientation tag (1 = upright; 1 when absent or unparsable).
    sof_marker : int
        The start-of-frame marker, e.g. ``0xC0`` baseline, ``0xC2`` progressive.
    precision : int
        Bits per sample (8 for almost every JPEG, 12 or 16 for some).
    """

    height: int
    width: int
    components: int
    progressive: bool
    orientation: int
    sof_marker: int = 0xC0
    precision: int = 8


def jpeg_header(data: bytes | bytearray | memoryview) -> JpegHeader | None:
    """Read the size, components and EXIF orientation from a JPEG file's bytes.

    Walks the markers from SOI up to the start-of-frame segment, collecting the
    EXIF orientation from ``APP1 "Exif"`` segments on the way. Pure Python and
    fast: only the headers (usually a few hundred bytes) are looked at.

    Parameters
    ----------
    data : bytes-like
        The file's bytes (or at least everything up to the frame header).

    Returns
    -------
    JpegHeader or None
        ``None`` when ``data`` does not start with a well-formed JPEG header
        (another format, garbage, truncated before the frame header, a frame
        with no size). Never raises for any bytes.
    """
    if isinstance(data, memoryview):
        data = data.tobytes()
    try:
        return _parse_jpeg_header(data)
    except Exception:  # noqa: BLE001  # pragma: no cover - the parser checks every bound; belt and braces
        return None


def _parse_jpeg_header(data: bytes | bytearray) -> JpegHeader | None:
    n = len(data)
    if n < 4 or data[0] != 0xFF or data[1] != 0xD8:
        return None
    pos = 2
    exif = b""
    while True:
        if pos >= n or data[pos] != 0xFF:
            return None  # not at a marker: garbage between segments
        while pos < n and data[pos] == 0xFF:  # fill bytes
            pos += 1
        if pos + 3 > n:
            return None
        marker = data[pos]
        if marker == 0x00 or marker == 0x01 or 0xD0 <= marker <= 0xDA:
            # A stuffed zero, TEM, RST, SOI, EOI or SOS before the frame header: not a sane file.
            return None
        length = (data[pos + 1] << 8) | data[pos + 2]
        start, end = pos + 3, pos + 1 + length
        if length < 2 or end > n:
            return None
        if marker in _SOF_MARKERS:
            if length < 8:
                return None
            precision = data[start]
            height = (data[start + 1] << 8) | data[start + 2]
            width = (data[start + 3] << 8) | data[start + 4]
            components = data[start + 5]
            if height == 0 or width == 0 or components == 0 or length < 8 + 3 * components:
                return None  # height 0 = defined later by a DNL marker; leave that to Pillow
            orientation = _exif_orientation(exif) if exif else 1
            return JpegHeader(
                height, width, components, marker in _PROGRESSIVE_MARKERS, orientation, marker, precision
            )
        if marker == 0xE1 and data[start : start + 6] == b"Exif\x00\x00":
            # Pillow joins the payloads of successive Exif segments; do the same.
            exif += data[start:end] if not exif else data[start + 6 : end]
        pos = end


def _exif_orientation(segment: bytes | bytearray) -> int:
    """Orientation tag of IFD0 in an ``Exif\\0\\0`` + TIFF block; 1 when absent or unparsable."""
    tiff = segment[6:]
    n = len(tiff)
    if n < 8:
        return 1
    order = tiff[:2]
    if order == b"II":
        byteorder = "little"
    elif order == b"MM":
        byteorder = "big"
    else:
        return 1

    def uint(offset: int, size: int) -> int:
        return int.from_bytes(tiff[offset : offset + size], byteorder)

    if uint(2, 2) != 42:
        return 1
    ifd = uint(4, 4)
    if ifd < 8 or ifd + 2 > n:
        return 1
    count = uint(ifd, 2)
    for entry in range(ifd + 2, min(ifd + 2 + 12 * count, n - 11), 12):
        if uint(entry, 2) != _EXIF_ORIENTATION:
            continue
        size = _TIFF_INT_TYPES.get(uint(entry + 2, 2))
        if size is None or uint(entry + 4, 4) != 1:
            return 1
        return uint(entry + 8, size)  # a single value of <= 4 bytes sits in the entry itself
    return 1


# --------------------------------------------------------------------------------------------
# Decode backends


def _torchcodec_decoder() -> JpegDecodeFn:
    from torchcodec.decoders import decode_jpeg

    def decode(data: Sequence[torch.Tensor], device: torch.device) -> list[torch.Tensor]:
        return list(decode_jpeg(list(data), mode="RGB", device=device))

    return decode


def _torchvision_decoder() -> JpegDecodeFn:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        from torchvision.io import ImageReadMode, decode_jpeg

    def decode(data: Sequence[torch.Tensor], device: torch.device) -> list[torch.Tensor]:
        with warnings.catch_warnings():
            # torchvision >= 0.29 deprecates its decoders in favour of TorchCodec.
            warnings.simplefilter("ignore", DeprecationWarning)
            return list(decode_jpeg(list(data), mode=ImageReadMode.RGB, device=device))

    return decode


_FACTORIES = {"torchcodec": _torchcodec_decoder, "torchvision": _torchvision_decoder}


@cache
def _probe_jpeg() -> tuple[bytes, tuple[int, int]]:
    """A tiny JPEG (and its height, width) to check that a backend really decodes."""
    ramp = np.arange(16 * 8 * 3, dtype=np.uint8).reshape(8, 16, 3)
    buf = io.BytesIO()
    Image.fromarray(ramp).save(buf, "JPEG", quality=90)
    return buf.getvalue(), (8, 16)


@cache
def _load_backend(name: str, device: str) -> tuple[JpegDecodeFn | None, str]:
    """``(decode, "")`` when backend ``name`` imports and decodes a JPEG on ``device``, else ``(None, why)``."""
    try:
        decode = _FACTORIES[name]()
        data, (height, width) = _probe_jpeg()
        (out,) = decode([torch.frombuffer(bytearray(data), dtype=torch.uint8)], torch.device(device))
        if tuple(out.shape) != (3, height, width) or out.dtype != torch.uint8:
            return None, f"decoded a test JPEG to {tuple(out.shape)} {out.dtype}"
        if out.device.type != torch.device(device).type:
            return None, f"decoded to {out.device} instead of {device}"
    except Exception as err:  # noqa: BLE001 - not installed, missing native libraries, no CUDA, ...
        return None, f"{type(err).__name__}: {err}"
    return decode, ""


def _device_key(device: str | torch.device) -> str:
    device = torch.device(device)
    if device.type == "cuda" and device.index is None and torch.cuda.is_available():
        device = torch.device("cuda", torch.cuda.current_device())
    return str(device)


def available_jpeg_backends(device: str | torch.device = "cpu") -> list[str]:
    """Names of the JPEG decode backends that work on ``device``, in order of preference.

    Parameters
    ----------
    device : str or torch.device, default="cpu"
        A backend counts only if it decodes a test JPEG on this device.

    Returns
    -------
    list of str
        A subset of ``["torchcodec", "torchvision"]``.
    """
    key = _device_key(device)
    return [name for name in _BACKENDS if _load_backend(name, key)[0] is not None]


def jpeg_decoder(backend: str = "auto", *, device: str | torch.device = "cpu") -> JpegDecodeFn:
    """A function that decodes a list of encoded JPEGs into RGB ``CHW`` uint8 tensors.

    Parameters
    ----------
    backend : {"auto", "torchcodec", "torchvision"}, default="auto"
        ``"auto"`` picks TorchCodec when it works on ``device``, else torchvision.
    device : str or torch.device, default="cpu"
        The device the backend must work on (checked by decoding a test JPEG).

    Returns
    -------
    callable
        ``decode(data, device) -> list of torch.Tensor``: ``data`` is a sequence
        of 1-D uint8 CPU tensors holding JPEG files; the result holds one
        ``(3, height, width)`` uint8 tensor per file, on ``device``. It raises
        (usually ``RuntimeError``) when any file of the list fails.

    Raises
    ------
    ValueError
        If ``backend`` is not one of the names above.
    RuntimeError
        If the backend (for ``"auto"``: every backend) does not work on ``device``.
    """
    if backend != "auto" and backend not in _BACKENDS:
        raise ValueError(f"backend must be 'auto' or one of {list(_BACKENDS)}, got {backend!r}")
    key = _device_key(device)
    reasons = []
    for name in _BACKENDS if backend == "auto" else (backend,):
        decode, why = _load_backend(name, key)
        if decode is not None:
            return decode
        reasons.append(f"{name}: {why}")
    raise RuntimeError(f"no JPEG decode backend works on {key} ({'; '.join(reasons)})")


# --------------------------------------------------------------------------------------------
# Batches


class _Encoded(NamedTuple):
    """A file bound for the batched decode: its label, bytes (shared with ``tensor``) and header."""

    label: str
    data: bytearray
    tensor: torch.Tensor
    header: JpegHeader


def _fast_path_ok(header: JpegHeader, max_pixels: int | None) -> bool:
    return (
        header.components in (1, 3)
        and header.precision == 8
        and header.sof_marker in _FAST_SOF_MARKERS
        and header.orientation not in ORIENTATION_FIX  # Pillow ignores values outside 2..8 too
        and (max_pixels is None or header.width * header.height <= max_pixels)
    )


def _fallback(data: bytes | bytearray, label: str, args: tuple):
    """Pillow decode of bytes already read, with errors naming the file."""
    out = try_decode(data, *args)
    if isinstance(out, ImageDecodeError) and out.path != label:
        return ImageDecodeError(label, out.reason)
    return out


def _prepare(source: TensorSource, target_h: int, target_w: int, max_pixels: int | None):
    """Worker: read ``source``; an :class:`_Encoded` for the fast path, else Pillow's array or error."""
    args = (target_h, target_w, max_pixels)
    if isinstance(source, (bytes, bytearray, memoryview)):
        label, data = "<bytes>", bytes(source)
    elif isinstance(source, StoredFile):
        label = source.path
        try:
            data = source.read()
        except OSError as err:
            return ImageDecodeError(label, str(err))
        if not data:
            return ImageDecodeError(label, "empty file (0 bytes)")
    else:
        label = os.fspath(source)
        try:
            with open_regular_file(label) as fh:  # never a FIFO, a device or a file past the size cap
                data = fh.read()
        except OSError as err:
            return ImageDecodeError(label, str(err))
    header = jpeg_header(data)
    if header is None or not _fast_path_ok(header, max_pixels):
        return _fallback(data, label, args)
    buf = bytearray(data)  # writable, so the tensor can share it without a warning
    return _Encoded(label, buf, torch.frombuffer(buf, dtype=torch.uint8), header)


def _run_fallbacks(pool: ThreadPoolExecutor | None, items: list[_Encoded], args: tuple) -> list:
    if pool is None or len(items) < 2:
        return [_fallback(e.data, e.label, args) for e in items]
    futures = [pool.submit(_fallback, e.data, e.label, args) for e in items]
    return [f.result() for f in futures]


def _budget_slices(sizes: Sequence[int], budget: int) -> Iterator[slice]:
    """Consecutive slices of ``sizes`` whose sums stay within ``budget`` (at least one item each)."""
    start, total = 0, 0
    for i, size in enumerate(sizes):
        if i > start and total + size > budget:
            yield slice(start, i)
            start, total = i, 0
        total += size
    if start < len(sizes):
        yield slice(start, len(sizes))


def _resize(images: torch.Tensor, target_h: int, target_w: int) -> torch.Tensor:
    """Center-crop ``(n, 3, h, w)`` uint8 images to the target aspect ratio and resize them."""
    height, width = images.shape[-2:]
    x0, y0, x1, y1 = center_crop_box(width, height, target_w, target_h)
    left, top = math.floor(x0 + 0.5), math.floor(y0 + 0.5)
    right = max(left + 1, math.floor(x1 + 0.5))
    bottom = max(top + 1, math.floor(y1 + 0.5))
    if (left, top, right, bottom) != (0, 0, width, height):
        images = images[:, :, top:bottom, left:right]
    if images.shape[-2:] == (target_h, target_w):
        return images.contiguous()
    if images.device.type == "cpu":
        # The CPU kernel resizes uint8 directly (fixed point, like Pillow): ~7x faster than
        # float and within one grey level of it.
        return F.interpolate(images, size=(target_h, target_w), mode="bilinear", antialias=True, align_corners=False)
    out = F.interpolate(images.float(), size=(target_h, target_w), mode="bilinear", antialias=True, align_corners=False)
    return out.round_().clamp_(0, 255).to(torch.uint8)


def _decode_or_split(
    items: list[tuple[int, _Encoded]], decode: JpegDecodeFn, device: torch.device
) -> list[tuple[tuple[int, _Encoded], torch.Tensor | None]]:
    """Decode in one call; when that fails, split in halves until the failing files are alone."""
    if device.type == "cuda":
        # nvJPEG's hardware decoder can write its outputs before work already queued on the stream
        # has run, i.e. into freed blocks that queued kernels still read (pytorch/vision#9606,
        # meta-pytorch/torchcodec#1634). Drain the stream first; it is nearly always idle here.
        torch.cuda.current_stream(device).synchronize()
    try:
        decoded = decode([e.tensor for _, e in items], device)
        if len(decoded) != len(items):
            raise RuntimeError(f"decoder returned {len(decoded)} images for {len(items)} files")
        return list(zip(items, decoded))
    except Exception:  # noqa: BLE001 - one bad file fails the whole call; any failure means Pillow
        if len(items) == 1:
            return [(items[0], None)]
    mid = len(items) // 2
    return _decode_or_split(items[:mid], decode, device) + _decode_or_split(items[mid:], decode, device)


def _decode_group(
    items: list[tuple[int, _Encoded]], decode: JpegDecodeFn, device: torch.device
) -> tuple[list[tuple[int, torch.Tensor]], list[tuple[int, _Encoded]]]:
    """Decode ``(position, file)`` pairs in one call, isolating the files that fail.

    One bad file fails the whole batched call; the batch is then split in halves
    (recursively) rather than decoded one file at a time, so a batch with one bad
    file costs about two batched decodes instead of a thousand single ones.
    Returns the decoded ``(position, CHW tensor)`` pairs and the files that failed alone.
    """
    pairs = _decode_or_split(items, decode, device)
    good, failed = [], []
    for (pos, enc), img in pairs:
        if img is not None and img.ndim == 3 and img.shape[0] == 1:
            img = img.expand(3, -1, -1)  # gray decoded without the RGB conversion: replicate, as Pillow does
        if img is None or img.ndim != 3 or img.shape[0] != 3 or img.dtype != torch.uint8:
            failed.append((pos, enc))
        else:
            good.append((pos, img))
    return good, failed


def _decode_and_resize(
    items: list[tuple[int, _Encoded]],
    decode: JpegDecodeFn,
    device: torch.device,
    target_h: int,
    target_w: int,
) -> tuple[list[tuple[list[int], torch.Tensor]], list[tuple[int, _Encoded]]]:
    """Fast-path files to resized ``(positions, (k, 3, H, W) tensor)`` chunks, plus the failures."""
    chunks, failed = [], []
    sizes = [3 * e.header.height * e.header.width for _, e in items]
    for part in _budget_slices(sizes, _DECODE_BUDGET):
        good, bad = _decode_group(items[part], decode, device)
        failed.extend(bad)
        groups: dict[tuple[int, int], list[tuple[int, torch.Tensor]]] = {}
        for pos, img in good:  # group by the decoded size: the header may disagree in odd files
            groups.setdefault(tuple(img.shape[-2:]), []).append((pos, img))
        for (height, width), members in groups.items():
            for sub in _budget_slices([3 * height * width] * len(members), _RESIZE_BUDGET):
                block = members[sub]
                stacked = torch.stack([img for _, img in block])
                chunks.append(([pos for pos, _ in block], _resize(stacked, target_h, target_w)))
        del good, groups
    return chunks, failed


def _process_batch(
    handles: list,
    sources: Sequence[TensorSource],
    args: tuple,
    strict: bool,
    pool: ThreadPoolExecutor | None,
    decode: JpegDecodeFn,
    device: torch.device,
) -> tuple[np.ndarray, torch.Tensor, list[tuple[str, str]]]:
    target_h, target_w = args[0], args[1]
    results: list = []
    for i, handle in enumerate(handles):
        results.append(_prepare(sources[i], *args) if handle is None else handle.result())
        handles[i] = None  # let the finished future go
    fast = [(pos, r) for pos, r in enumerate(results) if isinstance(r, _Encoded)]
    chunks, failed = _decode_and_resize(fast, decode, device, target_h, target_w) if fast else ([], [])
    for pos in (pos for pos, _ in fast):
        results[pos] = None  # decoded on the device (or failed, and replaced below): free the bytes
    del fast
    for (pos, _), out in zip(failed, _run_fallbacks(pool, [enc for _, enc in failed], args)):
        results[pos] = out
    del failed

    kept: list[int] = []
    errors: list[tuple[str, str]] = []
    cpu_positions: list[int] = []
    for pos, out in enumerate(results):
        if isinstance(out, ImageDecodeError):
            if strict:
                raise out
            errors.append((out.path, out.reason))
            continue
        if out is not None:
            cpu_positions.append(pos)
        kept.append(pos)
    if cpu_positions:  # Pillow results: one transfer for all of them
        stacked = torch.from_numpy(np.stack([results[pos] for pos in cpu_positions]))
        chunks.append((cpu_positions, stacked.permute(0, 3, 1, 2).to(device)))
    del results

    if len(chunks) == 1 and chunks[0][0] == kept:
        images = chunks[0][1].contiguous()
    else:
        slot = {pos: k for k, pos in enumerate(kept)}
        images = torch.empty((len(kept), 3, target_h, target_w), dtype=torch.uint8, device=device)
        for positions, block in chunks:
            index = torch.tensor([slot[p] for p in positions], dtype=torch.long, device=device)
            images.index_copy_(0, index, block)
    return np.asarray(kept, dtype=np.int64), images, errors


def iter_tensor_batches(
    paths: Iterable[TensorSource],
    batch_size: int = 1024,
    size: Size = (56, 56),
    *,
    device: str | torch.device = "cpu",
    strict: bool = False,
    n_jobs: int | None = None,
    max_pixels: int | None = DEFAULT_MAX_PIXELS,
    backend: str = "auto",
) -> Iterator[tuple[np.ndarray, torch.Tensor, list[tuple[str, str]]]]:
    """Decode images batch by batch into uint8 ``NCHW`` tensors on a torch device.

    The tensor counterpart of
    :func:`~bafo_pipeline.data.images.iter_decoded_batches`: JPEGs are decoded
    in one batched call per batch (nvJPEG on CUDA) and resized on the device;
    other formats, CMYK and EXIF-rotated JPEGs and bad files go through the
    Pillow path in a thread pool. While the caller works on one batch, the
    files of the next are already being read.

    Parameters
    ----------
    paths : iterable of str, path-like or bytes
        Image files (or their bytes); consumed lazily.
    batch_size : int, default=1024
        Input items per batch (a batch holds fewer images when files fail).
    size : int or (int, int), default=(56, 56)
        Output ``(height, width)``; an int means a square. Images are
        center-cropped to this aspect ratio and resized with an antialiased
        bilinear filter.
    device : str or torch.device, default="cpu"
        Where to decode and where the images are returned, e.g. ``"cuda"``.
    strict : bool, default=False
        Raise the first :class:`~bafo_pipeline.data.images.ImageDecodeError`
        (in input order) instead of skipping bad files.
    n_jobs : int or None, default=None
        Threads that read files and run the Pillow fallback. ``None`` means
        ``min(4, cpu count)``, ``-1`` all cores, ``1`` no threads (no overlap).
    max_pixels : int or None, default=DEFAULT_MAX_PIXELS
        Refuse source images with more pixels than this (decompression-bomb
        guard), see :func:`~bafo_pipeline.data.images.decode_image`.
    backend : {"auto", "torchcodec", "torchvision"}, default="auto"
        JPEG decoder, see :func:`jpeg_decoder`.

    Yields
    ------
    indices : ndarray of shape (k,), dtype int64
        Positions in ``paths`` (counted from 0 over the whole iterable) of
        the decoded images of this batch, increasing.
    images : torch.Tensor of shape (k, 3, height, width), dtype uint8, on ``device``
        RGB images, channels first.
    errors : list of (str, str)
        ``(path, reason)`` for the files of this batch that were skipped, in
        input order; the reasons are those of the Pillow path.

    Raises
    ------
    ValueError
        If ``size``, ``batch_size``, ``n_jobs``, ``max_pixels`` or ``backend``
        is invalid (raised at the call, before iterating).
    RuntimeError
        If no JPEG backend works on ``device``.
    ImageDecodeError
        With ``strict=True``, for the first bad file.
    """
    target_h, target_w = check_size(size)
    check_max_pixels(max_pixels)
    if not is_positive_int(batch_size):
        raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
    n_threads = resolve_n_jobs(n_jobs)
    device = torch.device(device)
    decode = jpeg_decoder(backend, device=device)
    args = (target_h, target_w, max_pixels)
    return _iter_batches(iter(paths), int(batch_size), args, strict, n_threads, decode, device)


def _iter_batches(
    paths: Iterator[TensorSource],
    batch_size: int,
    args: tuple,
    strict: bool,
    n_threads: int,
    decode: JpegDecodeFn,
    device: torch.device,
):
    def finish(handles, chunk, pool):
        return _process_batch(handles, chunk, args, strict, pool, decode, device)

    return prefetched_batches(paths, batch_size, n_threads, "bafo-jpeg", _prepare, args, finish)
