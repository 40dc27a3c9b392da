"""scikit-learn estimators: the BAFO transformer, its concealment steps, and their persistence."""

from ._bafo import BAFOTransformer, LatentRefiner
from ._erasure import LinearErasure
from ._integrity import ModelIntegrityError
from ._noise import KeyedNoise
from ._persistence import (
    LoadedModel,
    describe_concealment,
    describe_model,
    load_model,
    load_verified_model,
    model_fingerprint,
    read_model_config,
    save_model,
)
from ._trained_erasure import TrainedErasure
from ._transport import ConditionalTransport
from ._state import register_loadable

__all__ = [
    "BAFOTransformer",
    "ConditionalTransport",
    "KeyedNoise",
    "LatentRefiner",
    "LinearErasure",
    "LoadedModel",
    "ModelIntegrityError",
    "TrainedErasure",
    "describe_concealment",
    "describe_model",
    "load_model",
    "load_verified_model",
    "model_fingerprint",
    "read_model_config",
    "register_loadable",
    "save_model",
]
