"""scikit-learn estimators: the BAFO transformer, its concealment steps, and their persistence."""

from ._bafo import BAFOTransformer, LatentRefiner
from ._erasure import LinearErasure
from ._trained_erasure import TrainedErasure
from ._persistence import load_model, model_fingerprint, read_model_config, save_model
from ._state import register_loadable

__all__ = [
    "BAFOTransformer",
    "LatentRefiner",
    "LinearErasure",
    "TrainedErasure",
    "load_model",
    "model_fingerprint",
    "read_model_config",
    "register_loadable",
    "save_model",
]
