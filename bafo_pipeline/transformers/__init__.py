"""scikit-learn estimators: the BAFO transformer and erasure steps."""

from ._bafo import BAFOTransformer

__all__ = ["BAFOTransformer"]
