"""Recognising what a user passed as ``X``: image files, image arrays, or tabular features."""

from __future__ import annotations

import os
import warnings
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

CHANNEL_COUNTS = (1, 3, 4)


@dataclass(frozen=True)
class InputFormat:
    """How the estimator was fitted, so outputs can be returned in the same form.

    Attributes
    ----------
    kind : {"paths", "nhwc", "nchw", "flat_image", "tabular"}
    shape : tuple of int
        ``(height, width, channels)`` for images, ``(n_features,)`` for tabular.
    dtype : str
        ``"uint8"`` or ``"float"`` (pixels in [0, 1]); tabular is always float.
    """

    kind: str
    shape: tuple[int, ...]
    dtype: str

    @property
    def is_image(self) -> bool:
        return self.kind != "tabular"


def _reject_sparse(X) -> None:
    from scipy import sparse

    if sparse.issparse(X):
        raise TypeError("sparse input is not supported: BAFOTransformer needs a dense array (use X.toarray())")


def _is_path_sequence(X) -> bool:
    if isinstance(X, (str, bytes, os.PathLike)):
        raise TypeError("X must be a sequence of image paths, not a single path; wrap it in a list")
    if isinstance(X, np.ndarray):
        return X.ndim == 1 and (X.dtype.kind in "USO")
    if hasattr(X, "iloc") and getattr(X, "ndim", 2) == 1:  # pandas Series
        return X.dtype == object or str(X.dtype).startswith("string")
    if isinstance(X, (list, tuple)) and X:
        return all(isinstance(item, (str, os.PathLike)) for item in X)
    return False


def check_image_shape(image_shape) -> tuple[int, ...] | None:
    """Validate the ``image_shape`` parameter: ``(height, width)`` or ``(height, width, channels)``."""
    if image_shape is None:
        return None
    shape = tuple(image_shape)
    valid = len(shape) in (2, 3) and all(
        isinstance(s, (int, np.integer)) and not isinstance(s, bool) and s > 0 for s in shape
    )
    if not valid or (len(shape) == 3 and shape[2] not in CHANNEL_COUNTS):
        raise ValueError(
            "image_shape must be (height, width) or (height, width, channels) with positive ints and "
            f"{CHANNEL_COUNTS} channels, got {image_shape!r}"
        )
    return tuple(int(s) for s in shape)


def _check_pixel_dtype(dtype: np.dtype) -> str:
    if dtype == np.uint8:
        return "uint8"
    if dtype.kind == "f":
        return "float"
    raise ValueError(
        f"image pixels must be uint8 (0-255) or float in [0, 1]; got dtype {dtype} "
        "(convert with X.astype(np.uint8) or X / 255.0)"
    )


def _image_layout(shape: tuple[int, ...], image_shape: tuple[int, ...] | None) -> tuple[str, tuple[int, int, int]]:
    """NHWC or NCHW for a 4-D array shape, using ``image_shape`` to settle ambiguity."""
    candidates = []
    if shape[3] in CHANNEL_COUNTS:
        candidates.append(("nhwc", (shape[1], shape[2], shape[3])))
    if shape[1] in CHANNEL_COUNTS:
        candidates.append(("nchw", (shape[2], shape[3], shape[1])))
    if image_shape is not None:
        candidates = [c for c in candidates if c[1][: len(image_shape)] == image_shape]
        if not candidates:
            raise ValueError(
                f"X of shape {shape} holds neither NHWC nor NCHW images of image_shape={image_shape} "
                "(height, width[, channels])"
            )
    if not candidates:
        raise ValueError(f"a 4-D X must be NHWC or NCHW with {CHANNEL_COUNTS} channels; got shape {shape}")
    if len(candidates) > 1 and candidates[0][1] != candidates[1][1]:
        # e.g. (n, 3, 8, 4): 3x8 RGBA or 8x4 RGB; image_shape=(height, width) says which.
        raise ValueError(
            f"X of shape {shape} could be NHWC images of shape {candidates[0][1]} or NCHW images of "
            f"shape {candidates[1][1]} (height, width, channels); pass image_shape to say which"
        )
    if len(candidates) > 1:
        # Same image shape either way (e.g. (n, 3, 3, 3)): nothing can tell the layouts apart, so the
        # package's convention, NHWC, applies; say so, since a wrong guess scrambles every image.
        warnings.warn(
            f"X of shape {shape} reads as NHWC or NCHW alike; treating it as NHWC (height, width, channels). "
            "Transpose NCHW arrays to NHWC first.",
            UserWarning,
            stacklevel=5,  # the caller of BAFOTransformer.fit
        )
    return candidates[0]


def detect_format(X, image_shape: tuple[int, ...] | None) -> InputFormat:
    """Work out the input format of ``X`` at fit time.

    Parameters
    ----------
    X : sequence of paths, array of shape (n, H, W, C) / (n, C, H, W) / (n, features)
    image_shape : tuple of int, optional
        ``(height, width)`` or ``(height, width, channels)``: the size image
        files are decoded to, the shape of flattened images in a 2-D ``X``,
        and, for a 4-D ``X`` whose layout is ambiguous, which reading is meant.
        Without it a 2-D ``X`` is tabular.

    Raises
    ------
    TypeError
        For sparse input or a single path.
    ValueError
        For shapes and dtypes that are not one of the supported forms.
    """
    _reject_sparse(X)
    image_shape = check_image_shape(image_shape)
    if _is_path_sequence(X):
        if image_shape is not None and len(image_shape) == 3 and image_shape[2] != 3:
            raise ValueError(f"image files decode to RGB (3 channels), but image_shape={image_shape}")
        height, width = (image_shape or (56, 56))[:2]
        return InputFormat("paths", (height, width, 3), "uint8")
    array = np.asarray(X)
    if array.ndim == 4:
        dtype = _check_pixel_dtype(array.dtype)
        kind, shape = _image_layout(array.shape, image_shape)
        return InputFormat(kind, shape, dtype)
    if array.ndim == 2:
        if image_shape is not None:
            dtype = _check_pixel_dtype(array.dtype)
            shape = image_shape if len(image_shape) == 3 else (*image_shape, 3)
            if int(np.prod(shape)) != array.shape[1]:
                raise ValueError(
                    f"image_shape={image_shape} holds {int(np.prod(shape))} values, "
                    f"but X has {array.shape[1]} columns"
                )
            return InputFormat("flat_image", shape, dtype)
        return InputFormat("tabular", (array.shape[1],), "float")
    raise ValueError(
        f"X must be a 2-D array (tabular features, or flattened images with image_shape), a 4-D image array, "
        f"or a 1-D sequence of image paths; got an array of shape {array.shape}"
    )


def image_batches_uint8(X, fmt: InputFormat, batch_size: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Yield ``(row_indices, images)`` with images as uint8 ``(n, C, H, W)`` (possibly NHWC memory).

    ``X`` is an array in the fitted form or, for any image model, a sequence
    of image paths decoded to the fitted size (or, for a model fitted on
    paths, an NHWC array of that size). Image files are decoded in streaming
    batches, so ``X`` may be larger than memory; unreadable files raise (the
    estimator has no way to skip a row and keep the output aligned with ``X``).
    """
    _reject_sparse(X)
    height, width, channels = fmt.shape
    if _is_path_sequence(X):
        if channels != 3:
            raise ValueError(f"image files decode to RGB, but this model expects {channels} channel(s)")
        from ..data.images import iter_decoded_batches

        for indices, images, _ in iter_decoded_batches(X, batch_size=batch_size, size=(height, width), strict=True):
            yield indices, images.transpose(0, 3, 1, 2)
        return
    array = np.asarray(X)  # a view for arrays and memory maps; chunks are converted one at a time
    for start in range(0, len(array), batch_size):
        chunk = array[start : start + batch_size]
        yield np.arange(start, start + len(chunk)), to_uint8_nchw(chunk, fmt, first_row=start)


def to_uint8_nchw(chunk: np.ndarray, fmt: InputFormat, *, first_row: int = 0) -> np.ndarray:
    """Convert a chunk in the fitted format to uint8 ``(n, C, H, W)`` (a view where possible), checking shape and range.

    ``first_row`` is the chunk's offset in the whole input, for error messages.
    Float pixels are rounded to 8 bits (training data lives on the device as uint8).
    """
    height, width, channels = fmt.shape
    chunk = np.asarray(chunk)
    if fmt.kind == "flat_image":
        if chunk.ndim != 2 or chunk.shape[1] != height * width * channels:
            raise ValueError(
                f"X must have {height * width * channels} columns (image_shape {fmt.shape}), got shape {chunk.shape}"
            )
        chunk = chunk.reshape(len(chunk), height, width, channels)
    elif fmt.kind == "nchw":
        if chunk.ndim != 4 or chunk.shape[1:] != (channels, height, width):
            raise ValueError(f"X must be NCHW images of shape (n, {channels}, {height}, {width}), got {chunk.shape}")
        chunk = chunk.transpose(0, 2, 3, 1)
    elif chunk.ndim != 4 or chunk.shape[1:] != (height, width, channels):
        raise ValueError(f"X must be NHWC images of shape (n, {height}, {width}, {channels}), got {chunk.shape}")
    if _check_pixel_dtype(chunk.dtype) == "float":
        flat = chunk.reshape(len(chunk), -1)
        bad = ~np.isfinite(flat).all(axis=1)
        if bad.any():
            raise ValueError(f"X row {first_row + int(np.argmax(bad))} contains NaN or infinite pixel values")
        bad = (flat.min(axis=1) < 0) | (flat.max(axis=1) > 1)
        if bad.any():
            row = int(np.argmax(bad))
            raise ValueError(
                f"X row {first_row + row}: float pixels must lie in [0, 1], got {flat[row].min():.3g}..{flat[row].max():.3g} "
                "(pass uint8 arrays for 0-255 pixels)"
            )
        chunk = np.rint(chunk.astype(np.float32) * 255).astype(np.uint8)
    return chunk.transpose(0, 3, 1, 2)  # a view: the model takes NHWC memory (channels_last) as it is


def from_unit_nchw(images: np.ndarray, fmt: InputFormat) -> np.ndarray:
    """Decoded float images in [0, 1], ``(n, C, H, W)``, back into the fitted input form."""
    if fmt.dtype == "uint8":
        images = np.rint(images * 255).clip(0, 255).astype(np.uint8)
    if fmt.kind == "nchw":
        return images
    nhwc = np.ascontiguousarray(images.transpose(0, 2, 3, 1))
    if fmt.kind == "flat_image":
        return nhwc.reshape(len(nhwc), -1)
    return nhwc
