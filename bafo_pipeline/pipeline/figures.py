"""Figure panels in the paper's styles: decodes across ages and genders, inputs vs. decodes."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence

import numpy as np


def _unit_nhwc(estimator, images: np.ndarray) -> np.ndarray:
    """Decoded images as float [0, 1] NHWC, whatever form the estimator returns."""
    fmt = estimator.input_format_
    height, width, channels = fmt.shape
    images = np.asarray(images)
    images = images.astype(np.float32) / 255.0 if images.dtype == np.uint8 else images.astype(np.float32)
    if fmt.kind == "nchw":
        images = images.transpose(0, 2, 3, 1)
    return images.reshape(len(images), height, width, channels)


def redraw_latents(estimator, images: np.ndarray) -> tuple[np.ndarray, bool]:
    """``(latents, conceal)``: the latents to redraw ``images`` from, and whether they are concealed.

    Concealed latents, unless the concealment needs each image's own attributes to encode it
    (``"transport"``), which a redraw is not given: then the encoder's own latents, which such a
    concealment's exact inverse would give back anyway.
    """
    conceal = not estimator.needs_sensitive_features_to_transform
    return estimator.transform(images, conceal=conceal), conceal


def decode_as(estimator, latents: np.ndarray, values: Mapping, *, conceal: bool = True) -> np.ndarray:
    """Decode every latent with the same attribute ``values``; float [0, 1] NHWC."""
    decoded = estimator.inverse_transform(latents, sensitive_features=dict(values), conceal=conceal)
    return _unit_nhwc(estimator, decoded)


def age_gender_grid(
    estimator, images: np.ndarray, ages: Sequence[float], *, age_name: str = "age", gender_name: str = "gender",
    fixed: Mapping | None = None,
) -> np.ndarray:
    """Each input in a block: one row per gender, one column per age (input first).

    Returns
    -------
    ndarray of shape (rows, cols, H, W, 3)
        Float [0, 1]; blank cells are white.
    """
    latents, conceal = redraw_latents(estimator, images)
    originals = _unit_nhwc(estimator, images)
    genders = estimator.schema_[gender_name].categories
    rows = []
    for i in range(len(latents)):
        for g, gender in enumerate(genders):
            row = [originals[i] if g == 0 else np.ones_like(originals[i])]
            for age in ages:
                values = {**(fixed or {}), age_name: age, gender_name: gender}  # the rest decode as neutral
                row.append(decode_as(estimator, latents[i : i + 1], values, conceal=conceal)[0])
            rows.append(row)
    return np.asarray(rows)


def attribute_rows_grid(
    estimator, images: np.ndarray, *, age: float = 40.0, age_name: str = "age", gender_name: str = "gender",
    fixed: Mapping | None = None,
) -> np.ndarray:
    """Row 0: the inputs; then one row per gender decoded at ``age`` (the paper's Figure 2 style)."""
    latents, conceal = redraw_latents(estimator, images)
    rows = [list(_unit_nhwc(estimator, images))]
    for gender in estimator.schema_[gender_name].categories:
        values = {**(fixed or {}), age_name: age, gender_name: gender}  # the rest decode as neutral
        rows.append(list(decode_as(estimator, latents, values, conceal=conceal)))
    return np.asarray(rows)


def save_grid_png(
    panel: np.ndarray, path: str | os.PathLike, *, scale: int = 2, gap: int = 2, overwrite: bool = False
) -> None:
    """Tile a ``(rows, cols, H, W, 3)`` float panel into one PNG, with white gaps, upscaled.

    The file appears only when complete; an existing ``path`` is replaced only with
    ``overwrite=True`` (``FileExistsError`` otherwise).
    """
    from PIL import Image

    from .._utils import atomic_write_path

    rows, cols, height, width, _ = panel.shape
    canvas = np.ones((rows * (height + gap) + gap, cols * (width + gap) + gap, 3), dtype=np.float32)
    for r in range(rows):
        for c in range(cols):
            top, left = gap + r * (height + gap), gap + c * (width + gap)
            canvas[top : top + height, left : left + width] = panel[r, c]
    image = Image.fromarray(np.rint(canvas.clip(0, 1) * 255).astype(np.uint8))
    image = image.resize((image.width * scale, image.height * scale), Image.Resampling.NEAREST)
    with atomic_write_path(path, overwrite=overwrite) as tmp:
        image.save(tmp, format="PNG")
