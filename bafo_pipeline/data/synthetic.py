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
ethnicity  skin tone, eye shape, nose width, hair and iris colour
smile      mouth curve, open mouth with teeth
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

import hashlib
from numbers import Integral

import numpy as np
import pandas as pd

from .dataset import FaceDataset, LoadReport

__all__ = [
    "SYNTHETIC_SENSITIVE",
    "SYNTHETIC_NON_SENSITIVE",
    "ETHNICITIES",
    "HAIR_STYLES",
    "make_synthetic_faces",
]

SYNTHETIC_SENSITIVE = ("age", "gender", "ethnicity")
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
        ``sensitive`` is :data:`SYNTHETIC_SENSITIVE`; ``content_hash`` is the
        SHA-256 hex digest of each image's bytes; ``sources`` is None.

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
    rng = np.random.default_rng(random_state)

    attributes, codes = _draw_attributes(rng, n_samples)
    params = _draw_render_params(rng, attributes, codes)

    images = np.empty((n_samples, image_size, image_size, 3), dtype=np.uint8)
    step = _chunk_size(image_size)
    for start in range(0, n_samples, step):
        stop = min(start + step, n_samples)
        chunk = {name: value[start:stop] for name, value in params.items()}
        noise = rng.standard_normal((3, stop - start, image_size, image_size), dtype=np.float32)
        images[start:stop] = _render(chunk, image_size, noise)

    content_hash = np.array(
        [hashlib.sha256(image.tobytes()).hexdigest() for image in images], dtype=object
    )
    return FaceDataset(
        images=images,
        attributes=attributes,
        sensitive=SYNTHETIC_SENSITIVE,
        content_hash=content_hash,
        sources=None,
        report=LoadReport(n_loaded=n_samples),
    )


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
            "gender": np.where(male, "male", "female").astype(object),
            "ethnicity": np.asarray(ETHNICITIES, dtype=object)[ethnicity],
            "smile": smile,
            "background": background,
            "tilt": tilt,
            "hair_style": np.asarray(HAIR_STYLES, dtype=object)[hair_style],
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
    p["nose_w"] = _NOSE_WIDTH[eth]

    p["wrinkle"] = np.clip((age - 30.0) / 45.0, 0.0, 1.0)
    grey = np.clip((age - 38.0) / 37.0, 0.0, 1.0) ** 1.2

    p["jaw"] = np.where(male, rng.uniform(0.45, 0.7, n), rng.uniform(0.0, 0.1, n)).astype(f32)
    p["taper"] = np.where(male, 0.02, 0.16).astype(f32)
    p["brow_t"] = np.where(male, 0.060, 0.032).astype(f32)
    p["liner"] = np.where(male, 0.0, 0.6).astype(f32)
    beard_onset = np.clip((age - 15.0) / 6.0, 0.0, 1.0)
    p["beard"] = np.where(male, rng.uniform(0.15, 1.0, n) * beard_onset, 0.0).astype(f32)

    skin = _SKIN[eth] * rng.uniform(0.93, 1.07, (n, 1)) + rng.uniform(-0.025, 0.025, (n, 3))
    p["skin"] = np.clip(skin, 0.0, 1.0).astype(f32)
    lips_female = np.array([0.78, 0.26, 0.32], dtype=f32)
    p["lips"] = np.where(male[:, None], p["skin"] * np.array([0.78, 0.62, 0.62], dtype=f32), lips_female)

    hair = np.where(
        (eth == 0)[:, None],
        _HAIR_WHITE[rng.choice(len(_HAIR_WHITE), size=n, p=_P_HAIR_WHITE)],
        np.where((eth == 4)[:, None], _HAIR_OTHERS, _HAIR_DARK),
    )
    hair = hair + rng.uniform(-0.03, 0.03, (n, 3))
    p["hair"] = np.clip(hair * (1 - grey[:, None]) + _GREY_HAIR * grey[:, None], 0, 1).astype(f32)
    iris = np.where((eth == 0)[:, None], _IRIS[rng.integers(0, 3, n)], _IRIS[2])
    p["iris"] = iris.astype(f32)

    (
        p["cap_w"], p["cap_h"], p["cap_bottom"], p["back_len"], p["back_w"],
        p["hairline"], p["hairline_drop"], p["bumps"], p["curls"], p["streaks"],
    ) = style.T

    p["smile"] = attributes["smile"].to_numpy(f32)
    p["glasses"] = attributes["glasses"].to_numpy(f32)
    p["frame"] = rng.uniform(0.05, 0.35, n).astype(f32)

    # Background: brightness is the attribute; a faint tint and gradient are nuisance.
    level = 0.06 + 0.88 * attributes["background"].to_numpy(f32)
    tint = 1.0 + rng.uniform(-0.08, 0.08, (n, 3))
    p["bg"] = np.clip(level[:, None] * tint, 0, 1).astype(f32)
    p["bg_grad"] = rng.uniform(-0.12, 0.12, n).astype(f32)
    p["cloth"] = rng.uniform(0.1, 0.9, (n, 3)).astype(f32)
    p["light"] = rng.uniform(-0.2, 0.2, n).astype(f32)
    p["gain"] = (rng.uniform(0.9, 1.1, (n, 1)) * rng.uniform(0.97, 1.03, (n, 3))).astype(f32)
    p["noise"] = rng.uniform(0.015, 0.035, n).astype(f32)
    return {k: np.ascontiguousarray(v, dtype=f32) for k, v in p.items()}


def _chunk_size(image_size: int) -> int:
    # About 100k pixels per chunk: big enough to amortise Python's per-call
    # overhead, small enough that the temporaries stay in cache.
    return max(1, min(256, 100_000 // (image_size * image_size)))


def _render(
    p: dict[str, np.ndarray], size: int, noise: np.ndarray, *, windowed: bool = True
) -> np.ndarray:
    """Paint one chunk of faces back to front; returns uint8 ``(B, size, size, 3)``.

    The large shapes (backdrop, shoulders, hair, neck, ears, face) cover the
    whole frame; the small features (eyes, brows, glasses, nose, mouth) are
    painted only inside a window around them, which is where most of the
    time would otherwise go. ``windowed=False`` paints them on the whole
    frame instead, which must give the same picture.
    """
    n = len(p["a"])
    grid = (np.arange(size, dtype=np.float32) + 0.5) * np.float32(2.0 / size) - np.float32(1.0)
    # Channels first, per chunk: the colour axis outermost keeps every plane
    # contiguous and lets single-channel masks broadcast without reshaping.
    img = np.empty((3, n, size, size), dtype=np.float32)
    bg_shade = 1.0 + _col(p, "bg_grad") * grid[None, :, None]
    np.multiply(_rgb(p, "bg"), bg_shade, out=img)

    rows = np.broadcast_to(np.arange(size), (n, size))
    _paint_head(img, p, grid[rows][:, :, None], grid[rows][:, None, :], size)

    for painter, box in ((_paint_eyes, _eye_box), (_paint_mouth, _mouth_box)):
        if windowed:
            rows, cols = _window(p, size, *box(p))
        index = (slice(None), np.arange(n)[:, None, None], rows[:, :, None], cols[:, None, :])
        patch = img[index]
        painter(patch, p, grid[rows][:, :, None], grid[cols][:, None, :], size)
        img[index] = patch

    img *= p["gain"].T[:, :, None, None]
    img += noise * _col(p, "noise")
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


def _window(p, size, x0, x1, y0, y1) -> tuple[np.ndarray, np.ndarray]:
    """Rows and columns, one common window size per chunk, covering a head-local box."""
    cos, sin = p["cos"], p["sin"]
    lx, ly = np.stack([x0, x1, x0, x1]), np.stack([y0, y0, y1, y1])
    u = p["cx"] + cos * lx - sin * ly
    v = p["cy"] + sin * lx + cos * ly
    out = []
    for coord in (v, u):
        # Pixel j has its centre at (j + 0.5) * px - 1; two pixels of margin
        # cover the anti-aliased rim.
        lo = np.floor((coord.min(0) + 1.0) * size / 2.0 - 0.5).astype(int) - 2
        hi = np.ceil((coord.max(0) + 1.0) * size / 2.0 - 0.5).astype(int) + 2
        width = min(size, int((hi - lo).max()) + 1)
        start = np.clip(lo, 0, size - width)
        out.append(start[:, None] + np.arange(width))
    return out[0], out[1]


def _eye_box(p):
    """Head-local box around eyes, brows, glasses and forehead lines."""
    a, b = p["a"], p["b"]
    half_w = a * (0.38 + np.maximum(np.maximum(p["eye_w"], 0.27), 0.25))
    top = -0.56 * b
    bottom = p["eye_y"] * b + np.maximum(p["eye_h"] * a, 0.27 * a)
    return -half_w, half_w, top, bottom


def _mouth_box(p):
    """Head-local box around nose, nasolabial folds and mouth."""
    a, b = p["a"], p["b"]
    return -0.52 * a, 0.52 * a, 0.10 * b, 0.74 * b


def _paint_head(img, p, v, u, size) -> None:
    """Shoulders, hair, neck, ears and face, on the whole frame."""
    a, b = _col(p, "a"), _col(p, "b")
    x, y = _local(p, v, u)
    ax = np.abs(x)
    xa, yb = x / a, y / b
    hair = _rgb(p, "hair")

    # Shoulders and neck stay upright; the head rotates above them.
    du, dv = u - _col(p, "cx"), v - _col(p, "cy")
    shoulders = np.sqrt((du / 0.95) ** 2 + ((dv - b - 0.62) / 0.5) ** 2)
    shoulders -= 1.0
    shoulders *= 0.5
    _paint(img, _cover(shoulders, size), _rgb(p, "cloth"))

    # Hair behind the head: a cap (bumpy for curls) plus what hangs down.
    cap = np.sqrt((xa / _col(p, "cap_w")) ** 2 + ((yb + 0.1) / _col(p, "cap_h")) ** 2)
    cap -= 1.0
    cap -= _col(p, "bumps") * np.sin(9.0 * xa) * np.sin(9.0 * yb)
    cap *= a
    cap = np.maximum(cap, y - _col(p, "cap_bottom") * b)
    hanging = np.maximum(ax - _col(p, "back_w") * a, y - _col(p, "back_len") * b)
    hanging = np.maximum(hanging, -y - 0.1 * b)
    texture = 1.0 + _col(p, "curls") * np.sin(22.0 * yb + 5.0 * np.sin(16.0 * xa))
    texture += _col(p, "streaks") * np.sin(30.0 * xa)
    hair_px = hair * texture
    _paint(img, _cover(np.minimum(cap, hanging), size), hair_px * 0.8)

    neck = np.maximum(np.abs(du) - 0.42 * a, -dv)
    skin = _rgb(p, "skin")
    _paint(img, _cover(neck, size), skin * 0.8)
    ears = np.sqrt(((ax - a) / (0.16 * a)) ** 2 + ((y - 0.02 * b) / (0.16 * b)) ** 2) - 1.0
    _paint(img, _cover(ears * (0.16 * a), size), skin * 0.9)

    # Face: round on top; below the cheekbones the jaw tapers (women) or squares off (men).
    xf = ax / (a * (1.0 - _col(p, "taper") * np.maximum(yb, 0.0)))
    ay = np.abs(yb)
    r2 = xf * xf + ay * ay
    l2 = np.sqrt(r2)
    square = np.maximum(xf, ay) * 1.08 - l2
    square *= _col(p, "jaw") * np.clip(yb * 3.0, 0.0, 1.0)
    face = _cover((l2 + square - 1.0) * a, size)
    shade = 1.0 - 0.22 * r2 * r2
    shade *= 1.0 + _col(p, "light") * xa
    # Beard shading fades in below the cheekbones.
    beard = np.clip((yb - 0.12) * 3.0, 0.0, 1.0) * (0.5 * _col(p, "beard"))
    face_px = skin * shade
    _paint(face_px, beard, hair * 0.7)
    _paint(img, face, face_px)

    # Hair in front: the fringe above the hairline, lower towards the sides.
    hairline = _col(p, "hairline_drop") * xa * xa - _col(p, "hairline")
    hairline += _col(p, "bumps") * np.sin(18.0 * xa)
    fringe = np.maximum(cap, (yb - hairline) * b)
    _paint(img, _cover(fringe, size), hair_px)


def _paint_eyes(img, p, v, u, size) -> None:
    """Forehead lines, eyes, eyeliner, brows and glasses."""
    a, b = _col(p, "a"), _col(p, "b")
    x, y = _local(p, v, u)
    ax = np.abs(x)
    yb = y / b
    px = np.float32(2.0 / size)

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
    liner = _cover(np.maximum(np.abs(eye_rho - 1.0) * eh - 0.35 * px, ey), size)
    _paint(img, liner * _col(p, "liner"), np.float32(0.08))

    brow_w = 0.25 * a
    brow_y = _col(p, "eye_y") * b - 1.3 * eh - 0.09 * b + 0.05 * b * (ex / brow_w) ** 2
    brow = _cover(np.maximum(np.abs(y - brow_y) - _col(p, "brow_t") * b, np.abs(ex) - brow_w), size)
    _paint(img, 0.9 * brow, _rgb(p, "hair") * 0.6)

    # Glasses: a ring round each eye, a bridge and faintly bright lenses.
    ring_r = 0.26 * a
    glasses = _col(p, "glasses")
    _paint(img, (0.15 * glasses) * _cover(dist - ring_r, size), np.float32(1.0))
    ring = _cover(np.abs(dist - ring_r) - 0.6 * px, size)
    bridge = _cover(np.maximum(np.abs(ey) - 0.5 * px, ax - (0.38 * a - ring_r)), size)
    _paint(img, np.maximum(ring, bridge) * glasses, _col(p, "frame"))


def _paint_mouth(img, p, v, u, size) -> None:
    """Nasolabial folds, nostrils and mouth: a smile curves up and opens onto teeth."""
    a, b = _col(p, "a"), _col(p, "b")
    x, y = _local(p, v, u)
    ax = np.abs(x)
    xa, yb = ax / a, y / b
    px = np.float32(2.0 / size)

    fold_x = 0.15 + 0.33 * (yb - 0.12) / 0.4  # from the nose wing to the mouth corner
    fold = _cover(np.maximum(np.abs(xa - fold_x) * a - 0.45 * px, np.abs(yb - 0.32) * b - 0.2 * b), size)
    img *= 1.0 - (0.3 * _col(p, "wrinkle")) * fold

    nose_w = _col(p, "nose_w")
    nostril = _cover(np.sqrt((ax - nose_w * a) ** 2 + ((y - 0.27 * b) * 1.6) ** 2) - 0.045 * a, size)
    shadow = _rgb(p, "skin") * np.float32(0.5)
    _paint(img, 0.6 * nostril, shadow)
    tip = _cover(np.maximum(np.abs(yb - 0.31) * b - 0.6 * px, ax - (nose_w + 0.04) * a), size)
    _paint(img, 0.3 * tip, shadow)

    smile = _col(p, "smile")
    mw = 0.30 + 0.07 * smile
    t = (xa / mw) ** 2
    curve = 0.55 - (0.13 * smile - 0.03) * t
    upper = curve - 0.035 - 0.01 * smile
    lower = curve + 0.035 + 0.13 * smile * (1.0 - t)
    side = ax - mw * a
    mouth = _cover(np.maximum(np.maximum((upper - yb) * b, (yb - lower) * b), side), size)
    _paint(img, mouth, _rgb(p, "lips"))
    inner = _cover(np.maximum(np.maximum((upper + 0.03 - yb) * b, (yb - lower + 0.03) * b), side + 0.05 * a), size)
    inner *= mouth * smile
    _paint(img, inner, np.float32(0.25))
    _paint(img, inner * _cover((yb - upper - 0.075) * b, size), np.float32(0.95))
