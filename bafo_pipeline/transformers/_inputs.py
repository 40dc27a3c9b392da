"""Recognising what a user passed as ``X``: image files, image arrays, or tabular features."""

from __future__ import annotations

import os
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


def _is_path_sequence(X) -> bool:
    if isinstance(X, (str, os.PathLike)):
        raise TypeError("X must be a sequence of image paths, not a single path; wrap it in a list")
    if isinstance(X, np.ndarray):
        return X.ndim == 1 and (X.dtype.kind in "USO")
    if hasattr(X, "iloc") and getattr(X, "ndim", 2) == 1:  # pandas Series
        return X.dtype == object or str(X.dtype).startswith("string")
    if isinstance(X, (list, tuple)) and X:
        return all(isinstance(item, (str, os.PathLike)) for item in X)
    return False


def detect_format(X, image_shape: tuple[int, ...] | None) -> InputFormat:
    """Work out the input format of ``X`` at fit time.

    Parameters
    ----------
    X : sequence of paths, array of shape (n, H, W, C) / (n, C, H, W) / (n, features)
    image_shape : tuple of int, optional
        ``(height, width)`` or ``(height, width, channels)``: the size image
        files are decoded to, and the shape of flattened images in a 2-D ``X``.
        Without it a 2-D ``X`` is tabular.
    """
    if _is_path_sequence(X):
        height, width = (image_shape or (56, 56))[:2]
        return InputFormat("paths", (int(height), int(width), 3), "uint8")
    array = np.asarray(X)
    dtype = "uint8" if array.dtype == np.uint8 else "float"
    if array.ndim == 4:
        if array.shape[-1] in CHANNEL_COUNTS:
            return InputFormat("nhwc", tuple(array.shape[1:]), dtype)
        if array.shape[1] in CHANNEL_COUNTS:
            return InputFormat("nchw", (array.shape[2], array.shape[3], array.shape[1]), dtype)
        raise ValueError(f"a 4-D X must be NHWC or NCHW with 1, 3 or 4 channels; got shape {array.shape}")
    if array.ndim == 2:
        if image_shape is not None:
            shape = tuple(int(s) for s in image_shape)
            if len(shape) == 2:
                shape = (*shape, 3)
            if int(np.prod(shape)) != array.shape[1]:
                raise ValueError(
                    f"image_shape={tuple(image_shape)} holds {int(np.prod(shape))} values, "
                    f"but X has {array.shape[1]} columns"
                )
            return InputFormat("flat_image", shape, dtype)
        return InputFormat("tabular", (array.shape[1],), "float")
    raise ValueError(
        f"X must be a 2-D array (tabular features, or flattened images with image_shape), a 4-D image array, "
        f"or a 1-D sequence of image paths; got an array of shape {array.shape}"
    )


def image_batches_uint8(X, fmt: InputFormat, batch_size: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Yield ``(row_indices, images)`` with images as uint8 ``(n, C, H, W)``.

    ``X`` is an array in the fitted form or, for any image model, a sequence
    of image paths decoded to the fitted size. Image files are decoded in streaming batches, so ``X`` may be larger than
    memory; unreadable files raise (the estimator has no way to skip a row and
    keep the output aligned with ``X``).
    """
    height, width, channels = fmt.shape
    if _is_path_sequence(X):
        if channels != 3:
            raise ValueError(f"image files decode to RGB, but this model expects {channels} channel(s)")
        from ..data.images import iter_decoded_batches

        for indices, images, _ in iter_decoded_batches(X, batch_size=batch_size, size=(height, width), strict=True):
            yield indices, np.ascontiguousarray(images.transpose(0, 3, 1, 2))
        return
    array = np.asarray(X)
    for start in range(0, len(array), batch_size):
        chunk = array[start : start + batch_size]
        yield np.arange(start, start + len(chunk)), to_uint8_nchw(chunk, fmt)


def to_uint8_nchw(chunk: np.ndarray, fmt: InputFormat) -> np.ndarray:
    """Convert a chunk in the fitted format to uint8 ``(n, C, H, W)``, checking shape and range."""
    height, width, channels = fmt.shape
    chunk = np.asarray(chunk)
    if fmt.kind == "flat_image":
        if chunk.ndim != 2 or chunk.shape[1] != height * width * channels:
            raise ValueError(f"X must have {height * width * channels} columns (image_shape {fmt.shape}), got shape {chunk.shape}")
        chunk = chunk.reshape(len(chunk), height, width, channels)
    elif fmt.kind == "nchw":
        if chunk.ndim != 4 or chunk.shape[1:] != (channels, height, width):
            raise ValueError(f"X must be NCHW images of shape (n, {channels}, {height}, {width}), got {chunk.shape}")
        chunk = chunk.transpose(0, 2, 3, 1)
    elif chunk.ndim != 4 or chunk.shape[1:] != (height, width, channels):
        raise ValueError(f"X must be NHWC images of shape (n, {height}, {width}, {channels}), got {chunk.shape}")
    if chunk.dtype != np.uint8:
        chunk = chunk.astype(np.float32)
        if not np.isfinite(chunk).all():
            raise ValueError("X contains NaN or infinite pixel values")
        if chunk.min() < 0 or chunk.max() > 1:
            raise ValueError(
                f"float pixels must lie in [0, 1] (got {chunk.min():.3g}..{chunk.max():.3g}); "
                "pass uint8 arrays for 0-255 pixels"
            )
        chunk = np.rint(chunk * 255).astype(np.uint8)
    return np.ascontiguousarray(chunk.transpose(0, 3, 1, 2))


def from_unit_nchw(images: np.ndarray, fmt: InputFormat) -> np.ndarray:
    """Decoded float images in [0, 1], ``(n, C, H, W)``, back into the fitted input form."""
    if fmt.dtype == "uint8":
        images = np.rint(images * 255).clip(0, 255).astype(np.uint8)
    if fmt.kind == "nchw":
        return images
    nhwc = images.transpose(0, 2, 3, 1)
    if fmt.kind == "flat_image":
        return nhwc.reshape(len(nhwc), -1)
    return nhwc
