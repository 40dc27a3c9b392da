"""Differentiable measures of dependence between latents and sensitive attributes.

Used as training-time penalties: the encoder is pushed to make its posterior
means statistically independent of each sensitive attribute, not merely
linearly uncorrelated. The Hilbert-Schmidt Independence Criterion (HSIC) with
a characteristic (Gaussian) kernel is zero exactly when the two variables are
independent, and it handles continuous (age) and categorical attributes alike.
"""

from __future__ import annotations

import torch


def _centered(kernel: torch.Tensor) -> torch.Tensor:
    return kernel - kernel.mean(0, keepdim=True) - kernel.mean(1, keepdim=True) + kernel.mean()


def _squared_distances(x: torch.Tensor) -> torch.Tensor:
    # Expanded form rather than cdist: smooth at zero distance (the diagonal), so gradients stay finite.
    norms = x.pow(2).sum(1)
    return (norms[:, None] + norms[None, :] - 2.0 * x @ x.T).clamp_min(0.0)


def _gaussian_kernels(x: torch.Tensor, scales: tuple[float, ...]) -> torch.Tensor:
    """Mean of Gaussian kernels at bandwidths ``scale * median distance``."""
    squared = _squared_distances(x)
    detached = squared.detach()
    # Median of the nonzero distances, without a host sync (no boolean indexing, no `if` on a tensor);
    # all-zero distances (a constant batch) fall back to 1.
    median = torch.nanmedian(torch.where(detached > 0, detached, torch.nan))
    median = torch.nan_to_num(median, nan=1.0)
    return torch.stack([torch.exp(-squared / (2 * s * s * median)) for s in scales]).mean(0)


def normalized_hsic(
    latents: torch.Tensor, attribute: torch.Tensor, *, scales: tuple[float, ...] = (0.5, 1.0, 2.0)
) -> torch.Tensor:
    """Normalised HSIC between a batch of latents and one encoded attribute.

    Parameters
    ----------
    latents : Tensor of shape (n, d)
    attribute : Tensor of shape (n, k)
        One-hot columns of a categorical attribute, or one column of a
        binary/continuous one.
    scales : tuple of float
        Bandwidth multipliers of the median heuristic for the latent kernel;
        several make the penalty sensitive at several length scales.

    Returns
    -------
    Tensor
        A scalar in ``[0, 1]``: 0 for independence (in the population limit).
    """
    latents = latents.float()
    attribute = attribute.float()
    k = _centered(_gaussian_kernels(latents, scales))
    if attribute.shape[1] > 1:
        l = _centered(attribute @ attribute.T)  # delta kernel on one-hot rows
    else:
        l = _centered(_gaussian_kernels(attribute, (1.0,)))
    cross = (k * l).sum()
    return cross / (torch.sqrt((k * k).sum() * (l * l).sum()) + 1e-12)


def independence_penalty(
    latents: torch.Tensor, conditions: torch.Tensor, slices: list[tuple[int, int]]
) -> torch.Tensor:
    """Sum of :func:`normalized_hsic` over the attributes laid out in ``conditions``.

    Parameters
    ----------
    latents : Tensor of shape (n, d)
    conditions : Tensor of shape (n, width)
        The encoded attribute vector.
    slices : list of (start, stop)
        Column range of each attribute within ``conditions``.
    """
    return sum(normalized_hsic(latents, conditions[:, start:stop]) for start, stop in slices)
