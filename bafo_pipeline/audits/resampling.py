"""Bootstrap weights, label permutations, percentile intervals and permutation p-values."""

from __future__ import annotations

import numpy as np

__all__ = ["bootstrap_weights", "permutations", "percentile_interval", "permutation_p_value", "chunks"]


def bootstrap_weights(m: int, n: int, rng: np.random.Generator) -> np.ndarray:
    """``n`` bootstrap resamples of ``m`` items as a ``(n, m)`` array of draw counts."""
    draws = rng.integers(0, m, size=(n, m)) + (np.arange(n) * m)[:, None]
    return np.bincount(draws.ravel(), minlength=n * m).reshape(n, m).astype(np.float32)


def permutations(m: int, n: int, rng: np.random.Generator) -> np.ndarray:
    """``n`` independent permutations of ``0..m-1``, shape ``(n, m)``."""
    return rng.permuted(np.broadcast_to(np.arange(m), (n, m)), axis=1)


def chunks(total: int, m: int, budget: int = 4_000_000) -> list[int]:
    """Split ``total`` resamples of ``m`` items into chunk sizes that keep arrays small."""
    size = max(1, budget // max(m, 1))
    return [min(size, total - start) for start in range(0, total, size)]


def percentile_interval(samples: np.ndarray, confidence: float) -> tuple[float, float]:
    """Percentile bootstrap interval; NaN replicates (undefined scores) are ignored."""
    samples = np.asarray(samples, dtype=np.float64)
    samples = samples[~np.isnan(samples)]
    if samples.size == 0:
        return float("nan"), float("nan")
    alpha = (1.0 - confidence) / 2.0
    lo, hi = np.quantile(samples, [alpha, 1.0 - alpha])
    return float(lo), float(hi)


def permutation_p_value(observed: float, null: np.ndarray) -> float:
    """One-sided p-value ``(1 + #{null >= observed}) / (1 + n)``.

    The ``+1`` counts the observed labelling as one of the permutations, so the
    p-value is never zero and the test is exact (Phipson & Smyth, 2010).
    """
    null = np.asarray(null, dtype=np.float64)
    if np.isnan(observed) or null.size == 0:
        return float("nan")
    # A small tolerance so ties from floating-point noise count as "as extreme".
    return float((1 + np.sum(null >= observed - 1e-12)) / (1 + null.size))
