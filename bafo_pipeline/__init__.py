"""bafo-pipeline: label-blind latents for ML pipelines, exported to Parquet and audited for leakage.

The public API:

- :class:`BAFOTransformer` — the blind autoencoder as a scikit-learn transformer.
- :class:`LinearErasure`, :class:`LatentRefiner`, :class:`TrainedErasure`, :class:`ConditionalTransport`,
  :class:`KeyedNoise` — concealment steps (closed-form LEACE; an adversarial refiner; LEACE learned in training;
  label-conditional transport, which needs the attributes at transform time too; noise fixed per latent by a key).
- :func:`make_synthetic_faces`, :func:`load_utkface`, :func:`load_manifest` — data.
- :func:`save_model`, :func:`load_model` — model directories.
- :func:`export_latents`, :func:`read_latents` — Parquet latent datasets.
- :func:`bafo_pipeline.audits.audit_leakage`, :func:`bafo_pipeline.audits.run_audit` — the leakage audit.

These names are imported on first use: ``import bafo_pipeline.<module>`` loads only what
that module needs (a Ray actor that encodes loads torch, not scikit-learn).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ._lazy import lazy_attributes

from ._version import package_version

if TYPE_CHECKING:
    from .attributes import Attribute, AttributeSchema
    from .data import FaceDataset, load_manifest, load_utkface, make_synthetic_faces
    from .io import read_latents, write_latents
    from .pipeline import export_latents
    from .transformers import (
        BAFOTransformer,
        ConditionalTransport,
        KeyedNoise,
        LatentRefiner,
        LinearErasure,
        TrainedErasure,
        load_model,
        save_model,
    )

__version__ = package_version()

#: Public name → the module it is imported from on first use.
_SOURCES = {
    **dict.fromkeys(("Attribute", "AttributeSchema"), ".attributes"),
    **dict.fromkeys(("FaceDataset", "load_manifest", "load_utkface", "make_synthetic_faces"), ".data"),
    **dict.fromkeys(("read_latents", "write_latents"), ".io"),
    "export_latents": ".pipeline",
    **dict.fromkeys(("BAFOTransformer", "ConditionalTransport", "KeyedNoise", "LatentRefiner", "LinearErasure",
                     "TrainedErasure", "load_model", "save_model"), ".transformers"),
}

__all__ = [
    "Attribute",
    "AttributeSchema",
    "BAFOTransformer",
    "ConditionalTransport",
    "FaceDataset",
    "KeyedNoise",
    "LatentRefiner",
    "LinearErasure",
    "TrainedErasure",
    "export_latents",
    "load_manifest",
    "load_model",
    "load_utkface",
    "make_synthetic_faces",
    "read_latents",
    "save_model",
    "write_latents",
    "__version__",
]

__getattr__, __dir__ = lazy_attributes(__name__, _SOURCES, __all__)
