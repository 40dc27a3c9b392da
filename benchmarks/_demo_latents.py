"""``bafo run``'s unconcealed demo encoder and its latents, kept in a cache between benchmark runs."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from demo_concealments import RUN_DEFAULTS

from bafo_pipeline.data import FaceDataset, make_synthetic_faces
from bafo_pipeline.transformers import BAFOTransformer


def demo_encoder_latents(seed: int, samples: int, *, extra: int = 0, encoder_options: dict | None = None,
                         cache_path: Path | None = None) -> dict[str, tuple[np.ndarray, FaceDataset]]:
    """The latents (``conceal=False``) of the demo's training and held-out splits, and of ``extra`` further
    synthetic faces from another generator seed (never seen by the encoder), each with its faces.

    The encoder is ``bafo run``'s (:data:`RUN_DEFAULTS`, concealment ``none``) with ``encoder_options``
    on top, trained on the training split; ``cache_path`` keeps the latents between runs.
    """
    faces = make_synthetic_faces(samples, 56, random_state=seed)
    train, test = faces.split(test_fraction=0.15, seed=seed)
    parts = {"train": train, "test": test}
    if extra:
        parts["extra"] = make_synthetic_faces(extra, 56, random_state=1000 + seed)
    if cache_path is not None and cache_path.exists():
        saved = np.load(cache_path)
        return {name: (saved[name], part) for name, part in parts.items()}
    model = BAFOTransformer(concealment="none", random_state=seed, **{**RUN_DEFAULTS, **(encoder_options or {})})
    model.fit(train.images, sensitive_features=train.sensitive_features)
    latents = {name: model.transform(part.images, conceal=False) for name, part in parts.items()}
    if cache_path is not None:
        cache_path.parent.mkdir(parents=True, exist_ok=True)
        np.savez(cache_path, **latents)
    return {name: (latents[name], part) for name, part in parts.items()}
