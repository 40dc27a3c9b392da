"""Decode image files into fixed-size RGB arrays, skipping or refusing bad files.

Every image Pillow can open is turned into an ``(height, width, 3)`` uint8 RGB
array: grayscale, palette, CMYK and other modes are converted, transparency is
composited on black, 16-bit and float images are scaled to 8 bits and the EXIF
orientation is applied. Images whose aspect ratio differs from the target are
center-cropped to the target aspect ratio, then resized (antialiased bilinear
filter: Pillow widens the filter when shrinking, so it averages every source pixel).

Bad files (missing, empty, not an image, truncated, corrupt, oversized) raise
:class:`ImageDecodeError` with a reason that names the problem, or are skipped
and reported by the batch functions.
"""

from __future__ import annotations

import io
import os
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from itertools import islice
from typing import Any, Union

import numpy as np
from PIL import Image, UnidentifiedImageError

from .files import StoredFile, open_regular_file

__all__ = [
    "DEFAULT_MAX_PIXELS",
    "ImageDecodeError",
    "decode_image",
    "decode_images",
    "iter_decoded_batches",
]

#: Largest source image accepted by default (64 megapixels, e.g. 8000 x 8000).
DEFAULT_MAX_PIXELS = 64_000_000

#: A file path, a file's bytes, or a :class:`~bafo_pipeline.data.files.StoredFile` (any filesystem).
ImageSource = Union[str, os.PathLike, bytes, StoredFile]
Size = Union[int, tuple[int, int]]

# Antialiased bilinear: as sharp as needed at 56 px and ~2.5x faster than Lanczos
# in Pillow. The integer pre-reduction (reducing_gap) only kicks in for large
# sources, where it saves most of the work at no visible cost.
_RESAMPLE = Image.Resampling.BILINEAR
_REDUCING_GAP = 2.0

# EXIF orientation tag value -> the transpose that makes the image upright
# (the table of PIL.ImageOps.exif_transpose).
_EXIF_ORIENTATION = 0x0112
ORIENTATION_FIX = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}
_ALPHA_MODES = {"RGBA", "RGBa", "LA", "La", "PA"}
_INT_MODES = {"I", "I;16", "I;16L", "I;16B", "I;16N"}


class ImageDecodeError(ValueError):
    """An image file that could not be turned into an RGB array.

    Parameters
    ----------
    path : str
        The file (or ``"<bytes>"`` for in-memory data).
    reason : str
        What is wrong with it, e.g. ``"file not found"`` or ``"empty file"``.
    """

    def __init__(self, path: str, reason: str) -> None:
        self.path = str(path)
        self.reason = reason
        super().__init__(f"{self.path}: {reason}")

    def __reduce__(self):  # keep the two-argument form picklable
        return type(self), (self.path, self.reason)


class _BombError(Exception):
    """Internal marker for our own pixel cap."""


# The checks and helpers below are shared with the torch decoder (jpeg_tensors.py) and the
# export (thread budget); they are public for that reason, not part of the data API.
def is_positive_int(value: Any) -> bool:
    """True for a positive int (NumPy ints included, booleans excluded)."""
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool) and value > 0


def check_size(size: Size) -> tuple[int, int]:
    """Return ``size`` as ``(height, width)`` positive ints or raise ``ValueError``."""
    if is_positive_int(size):
        size = (int(size), int(size))
    try:
        height, width = size  # type: ignore[misc]
        ok = is_positive_int(height) and is_positive_int(width)
    except (TypeError, ValueError):
        ok = False
    if not ok:
        raise ValueError(f"size must be a positive int or a (height, width) pair of positive ints, got {size!r}")
    return int(height), int(width)


#: Largest array of decoded images built in memory (bytes): past it a request is refused before
#: allocating (``bafo train --image-size 100000`` would otherwise ask for terabytes).
MAX_DECODED_BYTES = 16 * 2**30


def check_decoded_size(n_images: int, height: int, width: int) -> None:
    """Refuse to build ``n_images`` RGB images of ``height`` x ``width`` in memory past :data:`MAX_DECODED_BYTES`."""
    needed = int(n_images) * int(height) * int(width) * 3
    if needed > MAX_DECODED_BYTES:
        raise ValueError(
            f"{n_images} images of {height}x{width} pixels need {needed / 2**30:.3g} GiB in memory, over the "
            f"{MAX_DECODED_BYTES / 2**30:.0f} GiB this package allocates; use a smaller image size or fewer "
            "images (bafo encode streams files in batches)"
        )


def check_max_pixels(max_pixels: int | None) -> None:
    """Raise ``ValueError`` unless ``max_pixels`` is a positive int or None."""
    if max_pixels is not None and not is_positive_int(max_pixels):
        raise ValueError(f"max_pixels must be a positive int or None, got {max_pixels!r}")


def resolve_n_jobs(n_jobs: int | None) -> int:
    """Decoding threads for ``n_jobs``: None → ``min(4, cpu count)``, -1 → every core."""
    if n_jobs is None:
        return max(1, min(4, os.cpu_count() or 1))
    if not (is_positive_int(n_jobs) or (isinstance(n_jobs, (int, np.integer)) and n_jobs == -1)):
        raise ValueError(f"n_jobs must be None, -1 (all cores) or a positive int, got {n_jobs!r}")
    return (os.cpu_count() or 1) if n_jobs == -1 else int(n_jobs)


def center_crop_box(width: int, height: int, target_w: int, target_h: int) -> tuple[float, float, float, float]:
    """The largest box of the target aspect ratio centered in a ``width x height`` image."""
    if width * target_h > height * target_w:  # too wide: trim left and right
        crop_w = height * target_w / target_h
        x0 = (width - crop_w) / 2
        return (x0, 0.0, x0 + crop_w, float(height))
    crop_h = width * target_h / target_w
    y0 = (height - crop_h) / 2
    return (0.0, y0, float(width), y0 + crop_h)


def _to_rgb(im: Image.Image) -> Image.Image:
    """Convert any Pillow mode to 8-bit RGB."""
    mode = im.mode
    if mode == "RGB":
        return im
    if mode in _INT_MODES:
        # 16-bit (and 32-bit int, which Pillow uses for 16-bit PNG/TIFF) samples:
        # scale the 0-65535 range to 0-255 instead of clipping at 255.
        arr = np.asarray(im).astype(np.int64).clip(0, 65535)
        arr = ((arr * 255 + 32767) // 65535).astype(np.uint8)
        return Image.fromarray(arr, mode="L").convert("RGB")
    if mode == "F":
        arr = np.nan_to_num(np.asarray(im, dtype=np.float64), nan=0.0, posinf=0.0, neginf=0.0)
        if arr.size and arr.min() >= 0.0 and arr.max() <= 1.0:
            arr = arr * 255.0  # a [0, 1] float image
        return Image.fromarray(np.rint(arr.clip(0, 255)).astype(np.uint8), mode="L").convert("RGB")
    if mode in _ALPHA_MODES or (mode == "P" and "transparency" in im.info):
        rgba = im.convert("RGBA")
        black = Image.new("RGBA", rgba.size, (0, 0, 0, 255))
        return Image.alpha_composite(black, rgba).convert("RGB")
    return im.convert("RGB")


def _decode_opened(im: Image.Image, target_h: int, target_w: int, max_pixels: int | None) -> np.ndarray:
    """Decode an opened (not yet loaded) Pillow image; may raise any Pillow error."""
    width, height = im.size
    if width < 1 or height < 1:
        raise ValueError(f"image has no pixels ({width}x{height})")
    if max_pixels is not None and width * height > max_pixels:
        raise _BombError(
            f"refused as a possible decompression bomb: {width}x{height} = {width * height:,} pixels "
            f"exceeds max_pixels={max_pixels:,}"
        )
    try:
        orientation = int(im.getexif().get(_EXIF_ORIENTATION, 1))
    except Exception:  # a broken EXIF block should not cost the image
        orientation = 1
    transpose = ORIENTATION_FIX.get(orientation)
    swapped = orientation in (5, 6, 7, 8)
    # Sizes in the stored (pre-rotation) frame.
    stored_tw, stored_th = (target_h, target_w) if swapped else (target_w, target_h)

    if im.format in ("JPEG", "MPO"):
        # Let libjpeg decode at 1/2, 1/4 or 1/8 scale while the crop stays >= target size.
        x0, y0, x1, y1 = center_crop_box(width, height, stored_tw, stored_th)
        want = (
            int(np.ceil(width * stored_tw / (x1 - x0))),
            int(np.ceil(height * stored_th / (y1 - y0))),
        )
        im.draft(None, want)
    im.load()
    if transpose is not None:
        im = im.transpose(transpose)
    im = _to_rgb(im)
    box = center_crop_box(im.width, im.height, target_w, target_h)
    if im.size != (target_w, target_h) or box != (0.0, 0.0, float(target_w), float(target_h)):
        im = im.resize((target_w, target_h), _RESAMPLE, box=box, reducing_gap=_REDUCING_GAP)
    arr = np.asarray(im, dtype=np.uint8)
    return arr if arr.flags.writeable else arr.copy()


def decode_image(
    source: ImageSource,
    size: Size = (56, 56),
    *,
    max_pixels: int | None = DEFAULT_MAX_PIXELS,
) -> np.ndarray:
    """Decode one image file (or its bytes) into an RGB uint8 array of a fixed size.

    The image is converted to RGB (transparency composited on black, 16-bit
    samples scaled to 8 bits), turned upright by its EXIF orientation,
    center-cropped to the aspect ratio of ``size`` and resized with an
    antialiased bilinear filter. JPEGs are decoded directly at a reduced scale when that still
    leaves at least ``size`` pixels, which is faster and loses nothing.

    Parameters
    ----------
    source : str, path-like, bytes or StoredFile
        A file path, the file's bytes, or a file on any filesystem
        (:class:`~bafo_pipeline.data.files.StoredFile`, read with its size cap).
    size : int or (int, int), default=(56, 56)
        Output ``(height, width)``; an int means a square.
    max_pixels : int or None, default=DEFAULT_MAX_PIXELS
        Refuse source images with more pixels than this (decompression-bomb
        guard). ``None`` leaves only Pillow's own limit
        (``2 * PIL.Image.MAX_IMAGE_PIXELS``), above which Pillow always
        refuses; between ``PIL.Image.MAX_IMAGE_PIXELS`` and that, Pillow
        also emits its ``DecompressionBombWarning`` when opening.

    Returns
    -------
    ndarray of shape (height, width, 3), dtype uint8

    Raises
    ------
    ImageDecodeError
        If the file is missing, unreadable, empty, not an image, truncated,
        corrupt or larger than ``max_pixels``; ``reason`` says which.
    ValueError
        If ``size`` or ``max_pixels`` is invalid.
    """
    target_h, target_w = check_size(size)
    check_max_pixels(max_pixels)
    return _decode(source, target_h, target_w, max_pixels)


def _decode(source: ImageSource, target_h: int, target_w: int, max_pixels: int | None) -> np.ndarray:
    if isinstance(source, (bytes, bytearray, memoryview)):
        label = "<bytes>"
        if len(source) == 0:
            raise ImageDecodeError(label, "empty file (0 bytes)")
        return _decode_stream(io.BytesIO(source), label, target_h, target_w, max_pixels)
    if isinstance(source, StoredFile):
        try:
            data = source.read()
        except OSError as err:
            raise ImageDecodeError(source.path, str(err)) from None
        if not data:
            raise ImageDecodeError(source.path, "empty file (0 bytes)")
        return _decode_stream(io.BytesIO(data), source.path, target_h, target_w, max_pixels)
    label = os.fspath(source)
    try:
        handle = open_regular_file(label)  # never a FIFO, a device or a file past the size cap
    except OSError as err:
        raise ImageDecodeError(label, str(err)) from None
    with handle as fh:
        if os.fstat(fh.fileno()).st_size == 0:
            raise ImageDecodeError(label, "empty file (0 bytes)")
        try:
            return _decode_stream(fh, label, target_h, target_w, max_pixels)
        except ImageDecodeError:
            raise
        except OSError as err:
            raise ImageDecodeError(label, f"cannot read file: {err.strerror or err}") from None


def _decode_stream(fh, label: str, target_h: int, target_w: int, max_pixels: int | None) -> np.ndarray:
    try:
        with Image.open(fh) as im:
            return _decode_opened(im, target_h, target_w, max_pixels)
    except UnidentifiedImageError:
        raise ImageDecodeError(label, "not an image (or a format Pillow cannot read)") from None
    except _BombError as err:
        raise ImageDecodeError(label, str(err)) from None
    except Image.DecompressionBombError as err:
        raise ImageDecodeError(label, f"refused as a possible decompression bomb: {err}") from None
    except MemoryError:
        raise
    except Exception as err:  # Pillow plugins raise OSError, SyntaxError, struct.error, ...
        text = str(err) or type(err).__name__
        if "truncated" in text.lower():
            raise ImageDecodeError(label, f"truncated image data ({text})") from None
        raise ImageDecodeError(label, f"corrupt or unsupported image data ({type(err).__name__}: {text})") from None


def try_decode(source: ImageSource, target_h: int, target_w: int, max_pixels: int | None):
    """Return the array, or the ImageDecodeError (so worker threads never raise)."""
    try:
        return _decode(source, target_h, target_w, max_pixels)
    except ImageDecodeError as err:
        return err


class _Progress:
    """Adapt ``progress`` (None, a tqdm-like object or a callable) to one ``advance(k)``."""

    def __init__(self, progress: Any) -> None:
        self._update = getattr(progress, "update", None)
        self._callback = progress if self._update is None else None
        if progress is not None and self._update is None and not callable(progress):
            raise TypeError(f"progress must be None, a callable or have an update() method, got {progress!r}")
        self.done = 0

    def advance(self, k: int = 1) -> None:
        self.done += k
        if self._update is not None:
            self._update(k)
        elif self._callback is not None:
            self._callback(self.done)


def _submit_all(
    pool: ThreadPoolExecutor | None, sources: Sequence[ImageSource], args: tuple, work: Callable = try_decode
) -> list:
    """Futures of ``work(source, *args)`` (pool), or ``None`` placeholders to run lazily (no pool), in order."""
    if pool is None:
        return [None] * len(sources)
    return [pool.submit(work, s, *args) for s in sources]


def _result(handle: Future | None, source: ImageSource, args: tuple):
    return try_decode(source, *args) if handle is None else handle.result()


def decode_images(
    paths: Sequence[ImageSource],
    size: Size = (56, 56),
    *,
    strict: bool = False,
    n_jobs: int | None = None,
    progress: Callable[[int], Any] | Any | None = None,
    max_pixels: int | None = DEFAULT_MAX_PIXELS,
) -> tuple[np.ndarray, np.ndarray, list[tuple[str, str]]]:
    """Decode many images, skipping (and reporting) the ones that fail.

    Parameters
    ----------
    paths : sequence of str, path-like or bytes
        Image files (or their bytes).
    size : int or (int, int), default=(56, 56)
        Output ``(height, width)``, see :func:`decode_image`.
    strict : bool, default=False
        Raise the first :class:`ImageDecodeError` (in input order) instead of
        skipping bad files.
    n_jobs : int or None, default=None
        Decoding threads (Pillow releases the GIL while decoding). ``None``
        means ``min(4, cpu count)``, ``-1`` all cores, ``1`` no threads.
    progress : callable or object with ``update(n)``, optional
        Called as images finish: a tqdm-like object gets ``update(k)`` with
        the number of newly finished images, a callable gets the running total.
    max_pixels : int or None, default=DEFAULT_MAX_PIXELS
        Decompression-bomb guard, see :func:`decode_image`.

    Returns
    -------
    images : ndarray of shape (n_kept, height, width, 3), dtype uint8
    kept_indices : ndarray of shape (n_kept,), dtype int64
        Positions in ``paths`` of the decoded images, increasing.
    errors : list of (str, str)
        ``(path, reason)`` for each skipped file, in input order.
    """
    target_h, target_w = check_size(size)
    check_max_pixels(max_pixels)
    n_threads = resolve_n_jobs(n_jobs)
    tracker = _Progress(progress)
    paths = list(paths)
    check_decoded_size(len(paths), target_h, target_w)
    args = (target_h, target_w, max_pixels)
    pool = ThreadPoolExecutor(n_threads, thread_name_prefix="bafo-decode") if n_threads > 1 and len(paths) > 1 else None
    try:
        return _collect(_submit_all(pool, paths, args), paths, args, strict, tracker)
    finally:
        if pool is not None:
            pool.shutdown(wait=True, cancel_futures=True)


def _collect(handles: list, sources: Sequence[ImageSource], args: tuple, strict: bool, tracker=None):
    """Wait for each source's decode, in order: ``(images, kept_positions, errors)``."""
    target_h, target_w = args[0], args[1]
    images = np.empty((len(sources), target_h, target_w, 3), dtype=np.uint8)
    kept: list[int] = []
    errors: list[tuple[str, str]] = []
    for i, (handle, source) in enumerate(zip(handles, sources)):
        out = _result(handle, source, args)
        handles[i] = None  # let the finished future (and its array) go
        if isinstance(out, ImageDecodeError):
            if strict:
                raise out
            errors.append((out.path, out.reason))
        else:
            images[len(kept)] = out
            kept.append(i)
        if tracker is not None:
            tracker.advance()
    if len(kept) < len(sources):
        images = images[: len(kept)].copy()
    return images, np.asarray(kept, dtype=np.int64), errors


def iter_decoded_batches(
    paths: Iterable[ImageSource],
    batch_size: int = 256,
    size: Size = (56, 56),
    *,
    strict: bool = False,
    n_jobs: int | None = None,
    max_pixels: int | None = DEFAULT_MAX_PIXELS,
) -> Iterator[tuple[np.ndarray, np.ndarray, list[tuple[str, str]]]]:
    """Decode images batch by batch, for collections that do not fit in memory.

    While the caller works on one batch, the next one is already being read
    and decoded in the thread pool.

    Parameters
    ----------
    paths : iterable of str, path-like or bytes
        Image files (or their bytes); consumed lazily.
    batch_size : int, default=256
        Input items per batch (a batch holds fewer images when files fail).
    size : int or (int, int), default=(56, 56)
        Output ``(height, width)``, see :func:`decode_image`.
    strict : bool, default=False
        Raise the first :class:`ImageDecodeError` instead of skipping.
    n_jobs : int or None, default=None
        Decoding threads, see :func:`decode_images`.
    max_pixels : int or None, default=DEFAULT_MAX_PIXELS
        Decompression-bomb guard, see :func:`decode_image`.

    Yields
    ------
    indices : ndarray of shape (k,), dtype int64
        Positions in ``paths`` (counted from 0 over the whole iterable) of
        the decoded images of this batch.
    images : ndarray of shape (k, height, width, 3), dtype uint8
    errors : list of (str, str)
        ``(path, reason)`` for the files of this batch that were skipped.
    """
    target_h, target_w = check_size(size)
    check_max_pixels(max_pixels)
    if not is_positive_int(batch_size):
        raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
    n_threads = resolve_n_jobs(n_jobs)
    return _iter_batches(iter(paths), int(batch_size), (target_h, target_w, max_pixels), strict, n_threads)


def _iter_batches(paths: Iterator[ImageSource], batch_size: int, args: tuple, strict: bool, n_threads: int):
    def finish(handles, chunk, pool):
        images, kept, errors = _collect(handles, chunk, args, strict)
        return kept, images, errors

    return prefetched_batches(paths, batch_size, n_threads, "bafo-decode", try_decode, args, finish)


def prefetched_batches(
    sources: Iterator[ImageSource],
    batch_size: int,
    n_threads: int,
    thread_name: str,
    work: Callable,
    args: tuple,
    finish: Callable[[list, list, ThreadPoolExecutor | None], tuple],
) -> Iterator[tuple]:
    """Run ``work(source, *args)`` in a thread pool, one batch ahead of the caller.

    For each batch of ``sources``, ``finish(handles, batch, pool)`` turns the
    batch's futures (``None`` placeholders when ``n_threads == 1``) into
    ``(positions_in_batch, *rest)``; this yields ``(positions_in_sources,
    *rest)`` (see :func:`batches_one_ahead`). Shared by the Pillow and the torch decoders.
    """
    pool = ThreadPoolExecutor(n_threads, thread_name_prefix=thread_name) if n_threads > 1 else None
    try:
        yield from batches_one_ahead(
            sources, batch_size, lambda batch: _submit_all(pool, batch, args, work),
            lambda handles, batch: finish(handles, batch, pool),
        )
    finally:
        if pool is not None:
            pool.shutdown(wait=True, cancel_futures=True)


def batches_one_ahead(
    sources: Iterator,
    batch_size: int,
    submit: Callable[[list], list],
    finish: Callable[[list, list], tuple],
) -> Iterator[tuple]:
    """Work on ``sources`` batch by batch, the next batch submitted while the caller holds the current one.

    ``submit(batch)`` starts a batch's work and returns its handles;
    ``finish(handles, batch)`` waits for them and returns ``(positions_in_batch, *rest)``.
    Yields ``(positions_in_sources, *rest)``.
    """
    offset = 0
    batch = list(islice(sources, batch_size))
    handles = submit(batch)
    while batch:
        next_batch = list(islice(sources, batch_size))
        next_handles = submit(next_batch) if next_batch else []  # prefetch
        kept, *rest = finish(handles, batch)
        yield (kept + offset, *rest)
        del rest  # the caller is done with this batch: free it before the next is built
        offset += len(batch)
        batch, handles = next_batch, next_handles
