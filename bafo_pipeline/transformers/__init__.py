"""scikit-learn estimators: the BAFO transformer, its concealment steps, and their persistence."""

from ._bafo import BAFOTransformer
from ._erasure import LinearErasure
from ._persistence import load_model, model_fingerprint, read_model_config, save_model

__all__ = ["BAFOTransformer", "LinearErasure", "load_model", "model_fingerprint", "read_model_config", "save_model"]
