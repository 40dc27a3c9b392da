"""``bafo run``'s unconcealed demo encoder and its latents, kept in a cache between benchmark runs."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from demo_concealments import RUN_DEFAULTS

from bafo_pipeline.data import FaceDataset, make_synthetic_faces
from bafo_pipeline.transformers import BAFOTransformer


def demo_encoder_latents(seed: int, samples: int, *, extra: int = 0, encoder_options: dict | None = None,
                         cache_path: Path | None = None) -> dict[str, tuple[np.ndarray, pd.DataFrame]]:
    """The latents (``conceal=False``) of the demo's training and held-out splits, and of ``extra`` further
    synthetic faces from another generator seed (never seen by the encoder), each with its faces' attributes
    (sensitive and not).

    The encoder is ``bafo run``'s (:data:`RUN_DEFAULTS`, concealment ``none``) with ``encoder_options``
    on top, trained on the training split. ``cache_path`` keeps the latents between runs, and the attributes
    beside them (the same name, ``.parquet``), so that a cached call draws no faces.
    """
    cached = cache_path is not None and cache_path.exists()
    attributes_path = cache_path.with_suffix(".parquet") if cache_path is not None else None
    if cached and attributes_path.exists():
        table = pd.read_parquet(attributes_path)
        with np.load(cache_path) as saved:
            return {name: (saved[name], rows.drop(columns="part").reset_index(drop=True))
                    for name, rows in table.groupby("part", sort=False)}
    parts = _demo_faces(seed, samples, extra)
    if cached:  # latents cached before the attributes were
        with np.load(cache_path) as saved:
            latents = {name: saved[name] for name in parts}
    else:
        model = BAFOTransformer(concealment="none", random_state=seed, **{**RUN_DEFAULTS, **(encoder_options or {})})
        train = parts["train"]
        model.fit(train.images, sensitive_features=train.sensitive_features)
        latents = {name: model.transform(part.images, conceal=False) for name, part in parts.items()}
        if cache_path is not None:
            cache_path.parent.mkdir(parents=True, exist_ok=True)
            np.savez(cache_path, **latents)
    if cache_path is not None:
        pd.concat([part.attributes.assign(part=name) for name, part in parts.items()],
                  ignore_index=True).to_parquet(attributes_path)
    return {name: (latents[name], part.attributes.reset_index(drop=True)) for name, part in parts.items()}


def _demo_faces(seed: int, samples: int, extra: int) -> dict[str, FaceDataset]:
    """The demo's training and held-out faces, and ``extra`` faces from generator seed ``1000 + seed``."""
    train, test = make_synthetic_faces(samples, 56, random_state=seed).split(test_fraction=0.15, seed=seed)
    parts = {"train": train, "test": test}
    if extra:
        parts["extra"] = make_synthetic_faces(extra, 56, random_state=1000 + seed)
    return parts
