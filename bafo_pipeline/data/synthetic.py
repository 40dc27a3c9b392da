"""Synthetic labeled faces: the embedded default dataset and the tests' ground truth.

Every face is drawn from a handful of per-image parameters on a normalised
coordinate grid, so any image size works and the true attributes are known
exactly. Sensitive attributes (age, gender, ethnicity) and non-sensitive ones
(smile, background, tilt, hair style, glasses) are drawn independently of each
other and each changes the picture through its own cues:

========== =============================================================
attribute  visual cues
========== =============================================================
age        face size and proportions (children), forehead lines and
           nasolabial folds, greying hair
gender     jaw shape, brow thickness, lip colour, eyeliner, beard shading
           or blushed cheeks, neck and shoulder width
ethnicity  skin tone, eye shape, nose width, hair and iris colour
smile      mouth curve, wider open mouth with teeth, lifted cheeks,
           narrowed eyes
background backdrop brightness
tilt       head rotation (degrees, positive = clockwise as displayed)
hair_style silhouette and texture: short cap, long hair to the shoulders,
           curly volume
glasses    frames around the eyes
========== =============================================================

Lighting direction, overall gain, colour jitter, small position and scale
jitter and pixel noise vary freely, so the images are not trivially memorised.
"""

from __future__ import annotations

from numbers import Integral

import numpy as np
import pandas as pd

from ..attributes import DEFAULT_SENSITIVE
from .dataset import FaceDataset, LoadReport
from .images import check_decoded_size
from .splits import content_hash

__all__ = [
    "SYNTHETIC_SENSITIVE",
    "SYNTHETIC_NON_SENSITIVE",
    "ETHNICITIES",
    "HAIR_STYLES",
    "make_synthetic_faces",
]

SYNTHETIC_SENSITIVE = DEFAULT_SENSITIVE
SYNTHETIC_NON_SENSITIVE = ("smile", "background", "tilt", "hair_style", "glasses")

ETHNICITIES = ("white", "black", "asian", "indian", "others")
HAIR_STYLES = ("short", "long", "curly")

_AGE_RANGE = (1.0, 80.0)
_TILT_RANGE = 15.0
_P_MALE = 0.52
_P_ETHNICITY = (0.42, 0.19, 0.15, 0.17, 0.07)  # roughly UTKFace's imbalance
_P_HAIR_STYLE = (0.40, 0.35, 0.25)
_P_GLASSES = 0.25
_P_SMILE = 0.5
_MIN_IMAGE_SIZE = 32

# Per ethnicity: skin RGB, eye height/width ratio, nose width (face widths).
_SKIN = np.array(
    [
        [0.94, 0.78, 0.69],  # white: pale, pinkish
        [0.40, 0.26, 0.18],  # black: dark brown
        [0.93, 0.81, 0.62],  # asian: light, yellowish
        [0.68, 0.48, 0.33],  # indian: medium brown
        [0.80, 0.62, 0.47],  # others: tan
    ],
    dtype=np.float32,
)
_EYE_ASPECT = np.array([0.50, 0.52, 0.30, 0.50, 0.68], dtype=np.float32)
_NOSE_WIDTH = np.array([0.09, 0.15, 0.11, 0.13, 0.12], dtype=np.float32)

# Hair colours: white faces get a mix; the others mostly near-black/dark brown.
_HAIR_WHITE = np.array(
    [[0.85, 0.70, 0.40], [0.45, 0.30, 0.18], [0.20, 0.14, 0.10], [0.62, 0.30, 0.14]],
    dtype=np.float32,
)
_P_HAIR_WHITE = (0.25, 0.40, 0.25, 0.10)
_HAIR_DARK = np.array([0.10, 0.08, 0.07], dtype=np.float32)
_HAIR_OTHERS = np.array([0.26, 0.17, 0.12], dtype=np.float32)
_GREY_HAIR = np.array([0.84, 0.84, 0.86], dtype=np.float32)
_IRIS = np.array(
    [[0.28, 0.45, 0.68], [0.35, 0.48, 0.30], [0.30, 0.19, 0.11]], dtype=np.float32
)

# Hair style geometry, in face half-widths/half-heights:
# cap width, cap height, cap bottom, back length, back width, hairline at the
# centre, hairline drop towards the sides, bump amplitude, curl texture, streaks.
_STYLE = np.array(
    [
        [1.07, 1.04, -0.05, -9.0, 0.0, 0.56, 0.25, 0.00, 0.00, 0.00],  # short
        [1.12, 1.08, 0.40, 1.45, 1.20, 0.50, 0.85, 0.00, 0.00, 0.12],  # long
        [1.34, 1.20, 0.15, 0.25, 1.28, 0.46, 0.35, 0.07, 0.35, 0.00],  # curly
    ],
    dtype=np.float32,
)


def make_synthetic_faces(
    n_samples: int = 2000,
    image_size: int = 56,
    *,
    random_state: int | np.random.Generator | None = 0,
) -> FaceDataset:
    """Draw simple labeled face images with known sensitive attributes.

    Parameters
    ----------
    n_samples : int, default=2000
        Number of images.
    image_size : int, default=56
        Height and width in pixels; at least 32. Faces are drawn on a
        normalised grid, so every size shows the same face.
    random_state : int, numpy Generator or None, default=0
        Seed for attributes, nuisance parameters and noise. The same seed
        gives identical images and attributes; None draws fresh entropy.

    Returns
    -------
    FaceDataset
        ``images`` of shape ``(n_samples, image_size, image_size, 3)``, dtype
        uint8; ``attributes`` with columns ``age`` (float years in [1, 80]),
        ``gender`` ("male"/"female"), ``ethnicity`` (one of
        :data:`ETHNICITIES`), ``smile`` (int 0/1), ``background`` (float
        brightness in [0, 1]), ``tilt`` (float degrees in [-15, 15]),
        ``hair_style`` (one of :data:`HAIR_STYLES`) and ``glasses`` (int 0/1);
        ``sensitive`` is :data:`SYNTHETIC_SENSITIVE`; ``content_hash`` is
        :func:`~bafo_pipeline.data.splits.content_hash` (SHA-1) of each
        image's pixel bytes; ``sources`` is None.

    Notes
    -----
    Non-sensitive attributes and all nuisance parameters are drawn
    independently of the sensitive ones, so any dependence a model finds
    between them is the model's own doing. Ethnicity and gender proportions
    are imbalanced roughly like UTKFace (42% white ... 7% others; 52% male).

    Examples
    --------
    >>> ds = make_synthetic_faces(100, random_state=0)
    >>> ds.images.shape
    (100, 56, 56, 3)
    >>> ds.sensitive
    ('age', 'gender', 'ethnicity')
    """
    n_samples = _check_int(n_samples, "n_samples", minimum=1)
    image_size = _check_int(image_size, "image_size", minimum=_MIN_IMAGE_SIZE)
    check_decoded_size(n_samples, image_size, image_size)
    rng = np.random.default_rng(random_state)

    attributes, codes = _draw_attributes(rng, n_samples)
    params = _draw_render_params(rng, attributes, codes)

    images = _render_all(params, codes["hair_style"], image_size, rng)
    hashes = np.array([content_hash(image.tobytes()) for image in images], dtype=object)
    return FaceDataset(
        images=images,
        attributes=attributes,
        sensitive=SYNTHETIC_SENSITIVE,
        content_hash=hashes,
        sources=None,
        report=LoadReport(n_loaded=n_samples),
    )


def _render_all(
    params: dict[str, np.ndarray], hair_style: np.ndarray, image_size: int, rng: np.random.Generator
) -> np.ndarray:
    """Render every image, chunk by chunk, into a ``(n, size, size, 3)`` uint8 array."""
    n = len(hair_style)
    images = np.empty((n, image_size, image_size, 3), dtype=np.uint8)
    step = _chunk_size(image_size)
    # One hair style per chunk, so style-specific work is skipped elsewhere.
    chunks = []
    for style in range(len(HAIR_STYLES)):
        members = np.flatnonzero(hair_style == style)
        chunks += [members[i : i + step] for i in range(0, len(members), step)]
    per_draw = _chunks_per_noise_draw(image_size, step)
    for first in range(0, len(chunks), per_draw):
        group = chunks[first : first + per_draw]
        # Uniform 8-bit noise: a normal draw would cost as much as the drawing.
        shape = (3, sum(map(len, group)), image_size, image_size)
        noise = rng.integers(0, 256, shape, dtype=np.uint8)
        offset = 0
        for indices in group:
            chunk = {name: value[indices] for name, value in params.items()}
            images[indices] = _render(chunk, image_size, noise[:, offset : offset + len(indices)])
            offset += len(indices)
    return images


def _check_int(value, name: str, *, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, Integral):
        raise TypeError(f"{name} must be an integer, got {value!r} ({type(value).__name__})")
    if value < minimum:
        raise ValueError(f"{name} must be at least {minimum}, got {value}")
    return int(value)


def _draw_attributes(rng: np.random.Generator, n: int) -> tuple[pd.DataFrame, dict]:
    """Draw every attribute independently; return the table and integer codes."""
    low, high = _AGE_RANGE
    age = np.round(low + (high - low) * rng.beta(1.4, 2.0, n), 1)
    male = rng.random(n) < _P_MALE
    ethnicity = rng.choice(len(ETHNICITIES), size=n, p=_P_ETHNICITY)
    smile = (rng.random(n) < _P_SMILE).astype(np.int64)
    background = rng.random(n)
    tilt = rng.uniform(-_TILT_RANGE, _TILT_RANGE, n)
    hair_style = rng.choice(len(HAIR_STYLES), size=n, p=_P_HAIR_STYLE)
    glasses = (rng.random(n) < _P_GLASSES).astype(np.int64)

    attributes = pd.DataFrame(
        {
            "age": age,
            "gender": np.where(male, "male", "female"),
            "ethnicity": np.asarray(ETHNICITIES)[ethnicity],
            "smile": smile,
            "background": background,
            "tilt": tilt,
            "hair_style": np.asarray(HAIR_STYLES)[hair_style],
            "glasses": glasses,
        }
    )
    codes = {"male": male, "ethnicity": ethnicity, "hair_style": hair_style}
    return attributes, codes


def _draw_render_params(
    rng: np.random.Generator, attributes: pd.DataFrame, codes: dict
) -> dict[str, np.ndarray]:
    """Turn attributes into drawing parameters, adding nuisance variation."""
    n = len(attributes)
    f32 = np.float32
    age = attributes["age"].to_numpy(f32)
    male = codes["male"]
    eth = codes["ethnicity"]
    style = _STYLE[codes["hair_style"]]

    # Growth saturates in the late teens; the face keeps widening slightly with age.
    growth = 1.0 - np.exp(-age / 6.0)
    scale = rng.uniform(0.95, 1.05, n).astype(f32)
    size = (0.70 + 0.30 * growth) * scale
    p: dict[str, np.ndarray] = {}
    p["a"] = 0.45 * size * (1.0 + 0.08 * age / 80.0)
    p["b"] = 0.60 * size * (0.90 + 0.10 * growth)
    p["cx"] = rng.uniform(-0.04, 0.04, n).astype(f32)
    p["cy"] = (-0.06 + rng.uniform(-0.04, 0.04, n)).astype(f32)
    theta = np.deg2rad(attributes["tilt"].to_numpy(f32))
    p["cos"], p["sin"] = np.cos(theta), np.sin(theta)

    # Children: big eyes set low in the face.
    p["eye_y"] = -0.02 - 0.13 * growth
    p["eye_w"] = 0.19 * (1.30 - 0.30 * growth) * rng.uniform(0.92, 1.08, n).astype(f32)
    p["eye_h"] = p["eye_w"] * _EYE_ASPECT[eth] * rng.uniform(0.9, 1.1, n).astype(f32)
    p["eye_h"] *= 1.0 - 0.25 * attributes["smile"].to_numpy(f32)  # smiling eyes narrow
    p["nose_w"] = _NOSE_WIDTH[eth]

    p["wrinkle"] = np.clip((age - 30.0) / 45.0, 0.0, 1.0)
    grey = np.clip((age - 38.0) / 37.0, 0.0, 1.0) ** 1.2

    p["jaw"] = np.where(male, rng.uniform(0.45, 0.7, n), rng.uniform(0.0, 0.1, n)).astype(f32)
    p["taper"] = np.where(male, 0.02, 0.16).astype(f32)
    p["brow_t"] = np.where(male, 0.060, 0.032).astype(f32)
    p["liner"] = np.where(male, 0.0, 0.6).astype(f32)
    p["neck_w"] = np.where(male, 0.46, 0.36).astype(f32)
    p["shoulder_w"] = (np.where(male, 1.0, 0.84) * (0.75 + 0.25 * growth)).astype(f32)
    # Men's lower faces shade towards their hair colour (beard), women's cheeks blush.
    beard_onset = np.clip((age - 15.0) / 6.0, 0.0, 1.0)
    p["beard"] = np.where(male, rng.uniform(0.3, 1.0, n) * beard_onset, 0.0).astype(f32)
    p["blush"] = np.where(male, 0.0, rng.uniform(0.25, 0.5, n)).astype(f32)

    skin = _SKIN[eth] * rng.uniform(0.93, 1.07, (n, 1)) + rng.uniform(-0.025, 0.025, (n, 3))
    p["skin"] = np.clip(skin, 0.0, 1.0).astype(f32)
    lips_male = p["skin"] * np.array([0.78, 0.62, 0.62], dtype=f32)
    p["lips"] = np.where(male[:, None], lips_male, np.array([0.78, 0.26, 0.32], dtype=f32))

    hair = np.where(
        (eth == 0)[:, None],
        _HAIR_WHITE[rng.choice(len(_HAIR_WHITE), size=n, p=_P_HAIR_WHITE)],
        np.where((eth == 4)[:, None], _HAIR_OTHERS, _HAIR_DARK),
    )
    hair = hair + rng.uniform(-0.03, 0.03, (n, 3))
    p["hair"] = np.clip(hair * (1 - grey[:, None]) + _GREY_HAIR * grey[:, None], 0, 1).astype(f32)
    iris = np.where((eth == 0)[:, None], _IRIS[rng.integers(0, 3, n)], _IRIS[2])
    p["iris"] = iris.astype(f32)
    p["tint"] = np.where(male[:, None], p["hair"] * 0.7, np.array([0.88, 0.34, 0.40], dtype=f32))

    (
        p["cap_w"], p["cap_h"], p["cap_bottom"], p["back_len"], p["back_w"],
        p["hairline"], p["hairline_drop"], p["bumps"], p["curls"], p["streaks"],
    ) = style.T

    p["smile"] = attributes["smile"].to_numpy(f32)
    p["glasses"] = attributes["glasses"].to_numpy(f32)
    p["frame"] = rng.uniform(0.05, 0.35, n).astype(f32)

    # Background: brightness is the attribute; a faint tint and gradient are nuisance.
    level = 0.06 + 0.88 * attributes["background"].to_numpy(f32)
    bg_tint = 1.0 + rng.uniform(-0.08, 0.08, (n, 3))
    p["bg"] = np.clip(level[:, None] * bg_tint, 0, 1).astype(f32)
    p["bg_grad"] = rng.uniform(-0.12, 0.12, n).astype(f32)
    p["cloth"] = rng.uniform(0.1, 0.9, (n, 3)).astype(f32)
    p["light"] = rng.uniform(-0.2, 0.2, n).astype(f32)
    p["gain"] = (rng.uniform(0.9, 1.1, (n, 1)) * rng.uniform(0.97, 1.03, (n, 3))).astype(f32)
    p["noise"] = rng.uniform(0.015, 0.035, n).astype(f32)
    return {k: np.ascontiguousarray(v, dtype=f32) for k, v in p.items()}


def _chunk_size(image_size: int) -> int:
    """Images per chunk: about 64k pixels, enough to amortise Python's per-call
    overhead while the temporaries stay in cache."""
    return max(1, min(256, 64_000 // (image_size * image_size)))


def _chunks_per_noise_draw(image_size: int, chunk: int) -> int:
    """How many chunks share one noise draw.

    Noise is drawn for several chunks at once (about 8 MB): fewer generator
    calls, and freeing a block that size lets glibc keep the renderer's
    temporaries in its heap instead of page-faulting them in again each chunk.
    """
    return max(1, 8_000_000 // (3 * image_size * image_size * chunk))


def _render(
    p: dict[str, np.ndarray], size: int, noise: np.ndarray, *, windowed: bool = True
) -> np.ndarray:
    """Paint one chunk of faces back to front; returns uint8 ``(B, size, size, 3)``.

    Each part is painted only inside the span of rows and columns that can
    hold it for every face in the chunk, which saves most of the work.
    ``windowed=False`` paints every part on the whole frame instead, which
    must give the same picture.
    """
    grid = (np.arange(size, dtype=np.float32) + 0.5) * np.float32(2.0 / size) - np.float32(1.0)
    v, u = grid[None, :, None], grid[None, None, :]
    # Channels first: the colour axis outermost keeps every plane contiguous and
    # lets single-channel masks broadcast without reshaping.
    img = np.empty((3, len(p["a"]), size, size), dtype=np.float32)
    np.multiply(_rgb(p, "bg"), 1.0 + _col(p, "bg_grad") * v, out=img)

    def window(box):
        rows, cols = _span(size, *box) if windowed else (slice(None), slice(None))
        return img[:, :, rows, cols], v[:, rows], u[:, :, cols]

    for painter, box in (
        (_paint_shoulders, _shoulder_box(p)),
        (_paint_back_hair, _local_box(p, *_back_hair_box(p))),
        (_paint_neck, _neck_box(p)),
        (_paint_ears, _local_box(p, *_ear_box(p))),
        (_paint_face, _local_box(p, *_face_box(p))),
        (_paint_fringe, _local_box(p, *_fringe_box(p))),
        (_paint_eyes, _local_box(p, *_eye_box(p))),
        (_paint_mouth, _local_box(p, *_mouth_box(p))),
    ):
        painter(*window(box), p, size)

    img *= p["gain"].T[:, :, None, None]
    noise = noise.astype(np.float32)
    noise -= 127.5
    noise *= _col(p, "noise") / np.float32(73.9)  # unit variance before scaling
    img += noise
    np.clip(img, 0.0, 1.0, out=img)
    img *= 255.0
    img += 0.5
    return np.moveaxis(img.astype(np.uint8), 0, -1)


def _col(p: dict[str, np.ndarray], name: str) -> np.ndarray:
    """Per-image scalar shaped to broadcast over ``(B, h, w)``."""
    return p[name][:, None, None]


def _rgb(p: dict[str, np.ndarray], name: str) -> np.ndarray:
    """Per-image colour shaped to broadcast over ``(3, B, h, w)``."""
    return p[name].T[:, :, None, None]


def _cover(d: np.ndarray, size: int) -> np.ndarray:
    """Signed distance (negative inside, grid units) to anti-aliased coverage in [0, 1]."""
    cover = d * np.float32(-size / 2.0)
    cover += 0.5
    return np.clip(cover, 0.0, 1.0, out=cover)


def _thin(width: float, size: int) -> np.float32:
    """Half-width of a thin line in grid units, never under half a pixel."""
    return np.float32(max(width, 1.0 / size))


def _paint(img: np.ndarray, alpha: np.ndarray, color) -> None:
    """Blend ``color`` over ``img`` in place with per-pixel opacity ``alpha``."""
    delta = np.subtract(color, img)
    delta *= alpha
    img += delta


def _local(p: dict[str, np.ndarray], v: np.ndarray, u: np.ndarray):
    """Head-centred coordinates of pixels at ``(v, u)``, undoing the tilt."""
    du, dv = u - _col(p, "cx"), v - _col(p, "cy")
    cos, sin = _col(p, "cos"), _col(p, "sin")
    return cos * du + sin * dv, cos * dv - sin * du


def _span(size: int, u0, u1, v0, v1) -> tuple[slice, slice]:
    """Rows and columns that hold every image's box ``[u0, u1] x [v0, v1]`` in this chunk."""
    out = []
    for lo, hi in ((v0, v1), (u0, u1)):
        # Pixel j is centred at (j + 0.5) * 2 / size - 1; two pixels of margin
        # take in the anti-aliased rim.
        first = int(np.floor((np.min(lo) + 1.0) * size / 2.0 - 0.5)) - 2
        last = int(np.ceil((np.max(hi) + 1.0) * size / 2.0 - 0.5)) + 2
        out.append(slice(max(first, 0), max(min(last + 1, size), 0)))
    return out[0], out[1]


def _local_box(p, x0, x1, y0, y1):
    """Image-axis bounding box of a head-local box, after the tilt."""
    cos, sin = p["cos"], p["sin"]
    lx, ly = np.stack([x0, x1, x0, x1]), np.stack([y0, y0, y1, y1])
    u = p["cx"] + cos * lx - sin * ly
    v = p["cy"] + sin * lx + cos * ly
    return u.min(0), u.max(0), v.min(0), v.max(0)


def _shoulder_box(p):
    top = p["cy"] + p["b"] + 0.12
    return np.full_like(top, -1.0), np.full_like(top, 1.0), top, np.full_like(top, 1.0)


def _neck_box(p):
    half = p["neck_w"] * p["a"]
    return p["cx"] - half, p["cx"] + half, p["cy"], np.full_like(half, 1.0)


def _eye_box(p):
    """Head-local box around eyes, brows, glasses and forehead lines."""
    a, b = p["a"], p["b"]
    half_w = a * (0.38 + np.maximum(p["eye_w"], 0.27))
    bottom = p["eye_y"] * b + np.maximum(p["eye_h"] * a, 0.27 * a)
    return -half_w, half_w, -0.56 * b, bottom


def _mouth_box(p):
    """Head-local box around nose, nasolabial folds and mouth."""
    a, b = p["a"], p["b"]
    return -0.52 * a, 0.52 * a, 0.10 * b, 0.80 * b


def _paint_shoulders(img, v, u, p, size) -> None:
    """Shoulders stay upright; the head rotates above them."""
    du, dv = u - _col(p, "cx"), v - _col(p, "cy") - _col(p, "b") - 0.62
    shoulders = np.sqrt((du / _col(p, "shoulder_w")) ** 2 + (dv / 0.5) ** 2)
    shoulders -= 1.0
    shoulders *= 0.5
    _paint(img, _cover(shoulders, size), _rgb(p, "cloth"))


def _paint_neck(img, v, u, p, size) -> None:
    half = _col(p, "neck_w") * _col(p, "a")
    neck = np.maximum(np.abs(u - _col(p, "cx")) - half, _col(p, "cy") - v)
    _paint(img, _cover(neck, size), _rgb(p, "skin") * 0.8)


def _hair(x, y, p):
    """Signed distance to the hair cap (bumpy for curls) and the textured hair colour."""
    a, b = _col(p, "a"), _col(p, "b")
    xa, yb = x / a, y / b
    cap = np.sqrt((xa / _col(p, "cap_w")) ** 2 + ((yb + 0.1) / _col(p, "cap_h")) ** 2)
    cap -= 1.0
    texture = np.ones_like(cap)
    # Chunks hold one hair style each, so these terms are skipped where unused.
    if p["bumps"].any():
        cap -= _col(p, "bumps") * np.sin(9.0 * xa) * np.sin(9.0 * yb)
    if p["curls"].any():
        texture += _col(p, "curls") * np.sin(22.0 * yb + 5.0 * np.sin(16.0 * xa))
    if p["streaks"].any():
        texture += _col(p, "streaks") * np.sin(30.0 * xa)
    cap *= a
    cap = np.maximum(cap, y - _col(p, "cap_bottom") * b)
    return cap, _rgb(p, "hair") * texture


def _back_hair_box(p):
    a, b = p["a"], p["b"]
    half_w = a * np.maximum(p["cap_w"] * (1.0 + p["bumps"]), p["back_w"])
    top = -b * (0.1 + p["cap_h"] * (1.0 + p["bumps"]))
    return -half_w, half_w, top, b * np.maximum(p["cap_bottom"], p["back_len"])


def _paint_back_hair(img, v, u, p, size) -> None:
    """Hair behind the head: the cap plus what hangs down."""
    x, y = _local(p, v, u)
    a, b = _col(p, "a"), _col(p, "b")
    cap, hair = _hair(x, y, p)
    hanging = np.maximum(np.abs(x) - _col(p, "back_w") * a, y - _col(p, "back_len") * b)
    hanging = np.maximum(hanging, -y - 0.1 * b)
    _paint(img, _cover(np.minimum(cap, hanging), size), hair * 0.8)


def _ear_box(p):
    a, b = p["a"], p["b"]
    return -1.17 * a, 1.17 * a, -0.15 * b, 0.19 * b


def _paint_ears(img, v, u, p, size) -> None:
    a, b = _col(p, "a"), _col(p, "b")
    x, y = _local(p, v, u)
    ears = np.sqrt(((np.abs(x) - a) / (0.16 * a)) ** 2 + ((y - 0.02 * b) / (0.16 * b)) ** 2) - 1.0
    _paint(img, _cover(ears * (0.16 * a), size), _rgb(p, "skin") * 0.9)


def _face_box(p):
    a, b = p["a"], p["b"]
    return -a, a, -b, b


def _paint_face(img, v, u, p, size) -> None:
    """The face with its shading, beard or blush, and smiling cheeks."""
    a, b = _col(p, "a"), _col(p, "b")
    x, y = _local(p, v, u)
    ax = np.abs(x)
    xa, yb = x / a, y / b
    skin = _rgb(p, "skin")

    # Round on top; below the cheekbones the jaw tapers (women) or squares off (men).
    xf = ax / (a * (1.0 - _col(p, "taper") * np.maximum(yb, 0.0)))
    ay = np.abs(yb)
    r2 = xf * xf + ay * ay
    l2 = np.sqrt(r2)
    square = np.maximum(xf, ay) * 1.08 - l2
    square *= _col(p, "jaw") * np.clip(yb * 3.0, 0.0, 1.0)
    face = _cover((l2 + square - 1.0) * a, size)
    cheeks = ((ax - 0.5 * a) / (0.28 * a)) ** 2 + ((y - 0.2 * b) / (0.28 * a)) ** 2
    cheeks = np.clip(1.0 - cheeks, 0.0, 1.0)
    shade = 1.0 - 0.22 * r2 * r2
    # Side lighting; a smile lifts the cheeks into the light.
    shade *= 1.0 + _col(p, "light") * xa + (0.15 * _col(p, "smile")) * cheeks
    # Beard shading fades in below the cheekbones; blush sits on the cheeks.
    tint = np.clip((yb - 0.12) * 3.0, 0.0, 1.0) * (0.5 * _col(p, "beard"))
    tint += cheeks * _col(p, "blush")
    face_px = skin * shade
    _paint(face_px, tint, _rgb(p, "tint"))
    _paint(img, face, face_px)


def _fringe_box(p):
    x0, x1, top, _ = _back_hair_box(p)
    return x0, x1, top, p["b"] * p["cap_bottom"]


def _paint_fringe(img, v, u, p, size) -> None:
    """Hair in front of the face, above a hairline that drops towards the sides."""
    x, y = _local(p, v, u)
    xa = x / _col(p, "a")
    cap, hair = _hair(x, y, p)
    hairline = _col(p, "hairline_drop") * xa * xa - _col(p, "hairline")
    if p["bumps"].any():
        hairline += _col(p, "bumps") * np.sin(18.0 * xa)
    fringe = np.maximum(cap, y - hairline * _col(p, "b"))
    _paint(img, _cover(fringe, size), hair)


def _paint_eyes(img, v, u, p, size) -> None:
    """Forehead lines, eyes, eyeliner, brows and glasses."""
    a, b = _col(p, "a"), _col(p, "b")
    x, y = _local(p, v, u)
    ax = np.abs(x)
    yb = y / b

    lines = np.clip((np.sin(yb * 40.0) - 0.55) * 3.0, 0.0, 1.0)
    lines *= _cover(np.maximum(np.abs(yb + 0.42) - 0.1, ax / a - 0.5) * b, size)
    img *= 1.0 - (0.35 * _col(p, "wrinkle")) * lines

    # Both eyes at once through |x|.
    ex = ax - 0.38 * a
    ey = y - _col(p, "eye_y") * b
    ew, eh = _col(p, "eye_w") * a, _col(p, "eye_h") * a
    eye_rho = np.sqrt((ex / ew) ** 2 + (ey / eh) ** 2)
    eye = _cover((eye_rho - 1.0) * eh, size)
    _paint(img, eye, np.float32(0.93))
    dist = np.sqrt(ex * ex + ey * ey)
    _paint(img, eye * _cover(dist - 0.55 * ew, size), _rgb(p, "iris"))
    _paint(img, eye * _cover(dist - 0.22 * ew, size), np.float32(0.05))
    liner = _cover(np.maximum(np.abs(eye_rho - 1.0) * eh - _thin(0.0125, size), ey), size)
    _paint(img, liner * _col(p, "liner"), np.float32(0.08))

    brow_w = 0.25 * a
    brow_y = _col(p, "eye_y") * b - 1.3 * eh - 0.09 * b + 0.05 * b * (ex / brow_w) ** 2
    brow = _cover(np.maximum(np.abs(y - brow_y) - _col(p, "brow_t") * b, np.abs(ex) - brow_w), size)
    _paint(img, 0.9 * brow, _rgb(p, "hair") * 0.6)

    # Glasses: a ring round each eye, a bridge and faintly bright lenses.
    ring_r = 0.26 * a
    glasses = _col(p, "glasses")
    _paint(img, (0.15 * glasses) * _cover(dist - ring_r, size), np.float32(1.0))
    ring = _cover(np.abs(dist - ring_r) - _thin(0.021, size), size)
    bridge = _cover(np.maximum(np.abs(ey) - _thin(0.018, size), ax - (0.38 * a - ring_r)), size)
    _paint(img, np.maximum(ring, bridge) * glasses, _col(p, "frame"))


def _paint_mouth(img, v, u, p, size) -> None:
    """Nasolabial folds, nostrils and mouth: a smile curves up and opens onto teeth."""
    a, b = _col(p, "a"), _col(p, "b")
    x, y = _local(p, v, u)
    ax = np.abs(x)
    xa, yb = ax / a, y / b

    fold_x = 0.15 + 0.33 * (yb - 0.12) / 0.4  # from the nose wing to the mouth corner
    fold = np.maximum(np.abs(xa - fold_x) * a - _thin(0.016, size), np.abs(yb - 0.32) * b - 0.2 * b)
    fold = _cover(fold, size)
    img *= 1.0 - (0.3 * _col(p, "wrinkle")) * fold

    nose_w = _col(p, "nose_w")
    nostril = np.sqrt((ax - nose_w * a) ** 2 + ((y - 0.27 * b) * 1.6) ** 2) - 0.045 * a
    nostril = _cover(nostril, size)
    shadow = _rgb(p, "skin") * np.float32(0.5)
    _paint(img, 0.6 * nostril, shadow)
    tip = np.maximum(np.abs(yb - 0.31) * b - _thin(0.021, size), ax - (nose_w + 0.04) * a)
    tip = _cover(tip, size)
    _paint(img, 0.3 * tip, shadow)

    smile = _col(p, "smile")
    mw = 0.30 + 0.12 * smile
    t = (xa / mw) ** 2
    curve = 0.55 - (0.13 * smile - 0.03) * t
    upper = curve - 0.035 - 0.01 * smile
    lower = curve + 0.035 + 0.16 * smile * (1.0 - t)
    side = ax - mw * a
    mouth = _cover(np.maximum(np.maximum((upper - yb) * b, (yb - lower) * b), side), size)
    _paint(img, mouth, _rgb(p, "lips"))
    inner = np.maximum((upper + 0.03 - yb) * b, (yb - lower + 0.03) * b)
    inner = _cover(np.maximum(inner, side + 0.05 * a), size)
    inner *= mouth * smile
    _paint(img, inner, np.float32(0.25))
    _paint(img, inner * _cover((yb - upper - 0.075) * b, size), np.float32(0.95))
