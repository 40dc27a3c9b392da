"""A stratified sample of a labelled dataset, for audits of datasets too large to load whole.

Strata are the joint groups of the audited attributes (continuous ones cut at their
quintiles), so every group keeps its share of the data and small groups are not lost to
sampling noise. Allocation is proportional, rounded by largest remainder, so the sample has
exactly the requested size.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

from .inputs import infer_kind

__all__ = ["stratified_sample"]

_QUANTILE_BINS = 5


def _codes(column: pd.Series) -> np.ndarray:
    if infer_kind(column) == "continuous":
        values = pd.to_numeric(column, errors="coerce")
        bins = min(_QUANTILE_BINS, int(values.nunique()))
        return pd.qcut(values.rank(method="first"), q=max(bins, 1), labels=False).fillna(-1).to_numpy(int)
    return pd.factorize(column, use_na_sentinel=True)[0]


def stratified_sample(
    labels: pd.DataFrame, columns: Sequence[str], n: int, *, random_state: int = 0
) -> np.ndarray:
    """Positions of ``n`` rows of ``labels``, drawn without replacement within strata.

    Parameters
    ----------
    labels : DataFrame
    columns : sequence of str
        Attributes whose joint groups are the strata (missing columns are ignored;
        missing values form a group of their own).
    n : int
        Sample size; all rows when ``n`` is at least their number.
    random_state : int, default=0

    Returns
    -------
    ndarray of int
        Increasing row positions.
    """
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1:
        raise ValueError(f"the sample size must be a positive integer, got {n!r}")
    total = len(labels)
    if n >= total:
        return np.arange(total)
    present = [c for c in columns if c in labels.columns]
    if present:
        keys = pd.DataFrame({c: _codes(labels[c]) for c in present})
        strata = keys.groupby(present, sort=True).ngroup().to_numpy()
    else:
        strata = np.zeros(total, dtype=int)
    sizes = np.bincount(strata)
    exact = sizes * (n / total)
    allocation = np.floor(exact).astype(int)
    shortfall = n - allocation.sum()
    allocation[np.argsort(-(exact - allocation), kind="stable")[:shortfall]] += 1
    rng = np.random.default_rng(random_state)
    chosen = [
        rng.choice(np.flatnonzero(strata == s), size=k, replace=False) for s, k in enumerate(allocation) if k
    ]
    return np.sort(np.concatenate(chosen))
