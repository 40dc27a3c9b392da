"""scikit-learn estimators: the BAFO transformer and erasure steps."""

from ._bafo import BAFOTransformer
from ._erasure import LinearErasure

__all__ = ["BAFOTransformer", "LinearErasure"]
