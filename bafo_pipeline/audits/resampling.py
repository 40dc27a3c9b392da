"""Bootstrap and jackknife weights, label permutations, intervals (percentile, BCa, largest gap) and p-values."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy import stats

__all__ = [
    "ZERO_TOLERANCE",
    "bca_interval",
    "bootstrap_weights",
    "chunks",
    "jackknife_weights",
    "largest_gap_interval",
    "permutation_p_value",
    "permutations",
    "percentile_interval",
    "snap_zero",
]

# Scores closer to zero than this are rounding noise of exactly-zero quantities (the prior's information).
ZERO_TOLERANCE = 1e-12


def bootstrap_weights(m: int, n: int, rng: np.random.Generator) -> np.ndarray:
    """``n`` bootstrap resamples of ``m`` items as a ``(n, m)`` array of draw counts."""
    draws = rng.integers(0, m, size=(n, m)) + (np.arange(n) * m)[:, None]
    return np.bincount(draws.ravel(), minlength=n * m).reshape(n, m).astype(np.float32)


def jackknife_weights(m: int, n_groups: int, rng: np.random.Generator) -> np.ndarray:
    """Delete-a-group jackknife of ``m`` items as a ``(G, m)`` array of 0/1 weights, ``G = min(m, n_groups)``.

    Items are split at random into ``G`` groups of nearly equal size; row ``g`` leaves
    group ``g`` out. With ``n_groups >= m`` this is the ordinary leave-one-out jackknife.
    The BCa acceleration estimated from group deletions has the same expectation as the
    leave-one-out one (third cumulants add over the rows of a group).
    """
    groups = min(m, n_groups)
    membership = np.empty(m, dtype=np.int64)
    membership[rng.permutation(m)] = np.arange(m) % groups
    return (membership[None, :] != np.arange(groups)[:, None]).astype(np.float32)


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


def bca_interval(
    replicates: np.ndarray, estimate: float, jackknife: np.ndarray, confidence: float
) -> tuple[float, float]:
    """Bias-corrected and accelerated (BCa) bootstrap interval (Efron, 1987).

    Parameters
    ----------
    replicates : ndarray of shape (B,)
        Bootstrap replicates of the statistic; NaN ones (undefined scores) are ignored.
    estimate : float
        The statistic on the data.
    jackknife : ndarray of shape (G,)
        The statistic with each item (or group of items) left out, for the acceleration.
    confidence : float

    Returns
    -------
    (float, float)
        The interval; the percentile interval's when the bias correction is undefined.
    """
    samples = np.asarray(replicates, dtype=np.float64)
    samples = samples[~np.isnan(samples)]
    if samples.size == 0 or np.isnan(estimate):
        return float("nan"), float("nan")
    if np.ptp(samples) == 0:
        return float(min(samples[0], estimate)), float(max(samples[0], estimate))
    below = (np.sum(samples < estimate) + 0.5 * np.sum(samples == estimate)) / samples.size
    below = float(np.clip(below, 0.5 / samples.size, 1 - 0.5 / samples.size))
    z0 = stats.norm.ppf(below)
    jack = np.asarray(jackknife, dtype=np.float64)
    jack = jack[~np.isnan(jack)]
    deviation = jack.mean() - jack if jack.size > 2 else np.zeros(1)
    scale = np.sum(deviation**2)
    acceleration = float(np.sum(deviation**3) / (6.0 * scale**1.5)) if scale > 0 else 0.0
    alpha = (1.0 - confidence) / 2.0
    levels = []
    for z in stats.norm.ppf([alpha, 1.0 - alpha]):
        denominator = 1.0 - acceleration * (z0 + z)
        if denominator <= 0:  # the acceleration pushes this end past the sample: take the extreme
            levels.append(1.0 if z > 0 else 0.0)
        else:
            levels.append(float(stats.norm.cdf(z0 + (z0 + z) / denominator)))
    lo, hi = np.quantile(samples, levels)
    return float(lo), float(hi)


def largest_gap_interval(
    rate_sets: Sequence[tuple[np.ndarray, np.ndarray]], confidence: float
) -> tuple[float, float, float]:
    """Interval for the largest gap between group rates, ``max_g r_g - min_g r_g`` (over several rate kinds).

    A max-minus-min is biased upward, and its percentile (or BCa) bootstrap interval can
    exclude both the estimate and a true gap of zero. This interval is built from
    simultaneous intervals for every pairwise difference instead: with ``d`` the
    difference of two groups' rates and ``s`` its bootstrap standard error, ``c`` is the
    ``confidence`` quantile of the bootstrap maximum of ``|d* - d| / s`` over all pairs
    (a studentised max-t band), and the gap lies in
    ``[max(0, max(|d| - c s)), max(|d| + c s)]`` whenever every pair lies in its band.
    It always contains the estimate, and covers a true gap of zero at the nominal level.

    Parameters
    ----------
    rate_sets : sequence of (estimates, replicates)
        Per kind of rate (e.g. true and false positive rates for equalized odds): the
        rates of the eligible groups, shape ``(G,)``, and their bootstrap replicates,
        shape ``(B, G)``, from the same resamples for every kind.
    confidence : float

    Returns
    -------
    (estimate, low, high) : tuple of float
        NaN when fewer than two groups have a defined rate.
    """
    gaps, errors, deviations = [], [], []
    for estimates, replicates in rate_sets:
        estimates = np.asarray(estimates, dtype=np.float64)
        replicates = np.asarray(replicates, dtype=np.float64)
        first, second = np.triu_indices(len(estimates), k=1)
        keep = ~(np.isnan(estimates[first]) | np.isnan(estimates[second]))
        first, second = first[keep], second[keep]
        if not len(first):
            continue
        difference = estimates[first] - estimates[second]
        boot = replicates[:, first] - replicates[:, second]
        with np.errstate(invalid="ignore"):
            spread = np.nanstd(boot, axis=0, ddof=1) if len(boot) > 1 else np.zeros(len(first))
        spread = np.nan_to_num(spread, nan=0.0)
        gaps.append(np.abs(difference))
        errors.append(spread)
        with np.errstate(invalid="ignore", divide="ignore"):
            deviations.append(np.where(spread > 0, np.abs(boot - difference) / np.where(spread > 0, spread, 1), 0.0))
    if not gaps:
        return float("nan"), float("nan"), float("nan")
    gap, error = np.concatenate(gaps), np.concatenate(errors)
    estimate = float(gap.max())
    worst = np.nanmax(np.concatenate(deviations, axis=1), axis=1) if deviations[0].size else np.zeros(1)
    worst = worst[~np.isnan(worst)]
    critical = float(np.quantile(worst, confidence)) if worst.size else 0.0
    low = max(0.0, float(np.max(gap - critical * error)))
    high = min(1.0, float(np.max(gap + critical * error)))
    return estimate, min(low, estimate), max(high, estimate)


def snap_zero(values: np.ndarray) -> np.ndarray:
    """``values`` with entries within :data:`ZERO_TOLERANCE` of zero set to exactly zero."""
    values = np.asarray(values, dtype=np.float64)
    return np.where(np.abs(values) < ZERO_TOLERANCE, 0.0, values)


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
