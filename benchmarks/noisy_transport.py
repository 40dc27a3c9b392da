"""``bafo run``'s transport, then Gaussian noise shaped like the pooled latents: a research variant (§19).

The attacks that read the transport's gender past the goal (15 nearest neighbours) read fine local
structure spread thinly over many directions (TRAINED_CONCEALMENT §19). Noise drawn afresh for every
row, with covariance ``scale**2`` times the transported calibration rows' pooled covariance, blurs
that structure in every direction alike. It depends on no attribute, so it adds no group signal of
its own, and it costs every downstream model the same share of signal-to-noise; unlike the
transport it is not invertible (``inverse_transform`` undoes the transport of the noisy rows).

``calibration_rows.VARIANTS`` registers it (``noise-*``), so ``benchmarks/transport_utility_loss.py
--variants`` measures it beside the library's transport. In a product the noise has to be the same
for every export of an image, or averaging exports removes it: the library's
:class:`~bafo_pipeline.transformers.KeyedNoise` draws it from a keyed hash of each row, and
:class:`TransportThenKeyedNoise` (``keyed-noise-*``) measures the two library steps together.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from bafo_pipeline.transformers import ConditionalTransport, KeyedNoise


class NoisyTransport:
    """The library's transport, then ``N(0, scale**2 * pooled covariance)`` noise added to every row.

    Parameters
    ----------
    scale : float, default=0.3
        Noise standard deviation as a share of the pooled standard deviation, in every direction.
    shrinkage : float, default=40.0
        The transport's covariance shrinkage (``bafo run``'s).
    seed : int, default=0
        Seed of the noise; every call to :meth:`transform` draws new noise.
    """

    def __init__(self, scale: float = 0.3, shrinkage: float = 40.0, seed: int = 0):
        self.scale = scale
        self.shrinkage = shrinkage
        self.seed = seed

    def fit(self, Z: np.ndarray, *, sensitive_features: pd.DataFrame) -> NoisyTransport:
        """Fit the transport and the pooled covariance of the rows it moved."""
        attributes = sensitive_features.reset_index(drop=True)
        self.transport_ = ConditionalTransport(shrinkage=self.shrinkage).fit(Z, sensitive_features=attributes)
        moved = self.transport_.transform(Z, sensitive_features=attributes)
        values, vectors = np.linalg.eigh(np.cov(moved.T))
        self.noise_root_ = vectors * np.sqrt(np.clip(values, 0, None))  # noise_root_ @ noise_root_.T: the covariance
        self.generator_ = np.random.default_rng(self.seed)
        return self

    def transform(self, Z: np.ndarray, *, sensitive_features: pd.DataFrame) -> np.ndarray:
        """Transport, then fresh noise for every row."""
        moved = self.transport_.transform(Z, sensitive_features=sensitive_features.reset_index(drop=True))
        return moved + self.scale * self.generator_.normal(size=moved.shape) @ self.noise_root_.T

    def inverse_transform(self, Z: np.ndarray, *, sensitive_features: pd.DataFrame) -> np.ndarray:
        """Undo the transport (the noise stays: it is not invertible)."""
        return self.transport_.inverse_transform(Z, sensitive_features=sensitive_features.reset_index(drop=True))


class TransportThenKeyedNoise:
    """The library's steps as ``bafo run --noise-scale`` chains them: the transport, then :class:`KeyedNoise`.

    Parameters
    ----------
    scale : float, default=0.25
        :class:`KeyedNoise`'s scale.
    shrinkage : float, default=40.0
        The transport's covariance shrinkage (``bafo run``'s).
    seed : int, default=0
        The noise's key (``KeyedNoise(seed=seed)``).
    """

    def __init__(self, scale: float = 0.25, shrinkage: float = 40.0, seed: int = 0):
        self.scale = scale
        self.shrinkage = shrinkage
        self.seed = seed

    def fit(self, Z: np.ndarray, *, sensitive_features: pd.DataFrame) -> TransportThenKeyedNoise:
        """Fit the transport, then the noise on the rows it moved."""
        attributes = sensitive_features.reset_index(drop=True)
        self.transport_ = ConditionalTransport(shrinkage=self.shrinkage).fit(Z, sensitive_features=attributes)
        moved = self.transport_.transform(Z, sensitive_features=attributes)
        self.noise_ = KeyedNoise(scale=self.scale, seed=self.seed).fit(moved)
        return self

    def transform(self, Z: np.ndarray, *, sensitive_features: pd.DataFrame) -> np.ndarray:
        """Transport, then each row's own keyed noise."""
        moved = self.transport_.transform(Z, sensitive_features=sensitive_features.reset_index(drop=True))
        return self.noise_.transform(moved)

    def inverse_transform(self, Z: np.ndarray, *, sensitive_features: pd.DataFrame) -> np.ndarray:
        """Undo the transport (the noise stays)."""
        return self.transport_.inverse_transform(Z, sensitive_features=sensitive_features.reset_index(drop=True))
