"""Batch penalties that pull each attribute group's latent distribution onto the pooled one.

After linear erasure the groups share a mean latent; what a non-linear
attacker still reads is how the rest of their distributions differ. Both
penalties here compare, per attribute, every group's rows in a batch with the
whole batch, and are zero when the group-conditional distributions agree:

- :func:`group_mmd`: squared maximum mean discrepancy with Gaussian kernels at
  several bandwidths (multiples of the median pairwise distance);
- :func:`group_sliced_wasserstein`: squared 2-Wasserstein distance between the
  group's and the batch's projections on random directions, averaged;
- :func:`group_second_moments`: the squared Frobenius distance between each
  group's second-moment matrix (about the batch mean) and the batch's own: the
  soft form of ``LinearErasure``'s covariance-direction criterion, over all
  directions at once.

Give them latents in whitened coordinates (every direction at unit variance),
so a difference along a low-variance direction counts as much as one along a
high-variance direction: an attacker's probe standardises its inputs too.
"""

from __future__ import annotations

import torch


def _squared_distances(x: torch.Tensor) -> torch.Tensor:
    norms = x.pow(2).sum(1)
    return (norms[:, None] + norms[None, :] - 2.0 * x @ x.T).clamp_min(0.0)


def group_mmd(
    latents: torch.Tensor,
    group_onehot: torch.Tensor,
    attribute_of_group: torch.Tensor,
    *,
    scales: tuple[float, ...] = (0.25, 0.5, 1.0, 2.0),
    min_group_size: int = 4,
) -> torch.Tensor:
    """Per attribute, the group-share-weighted MMD² between each group and the batch; summed over attributes.

    Parameters
    ----------
    latents : Tensor of shape (n, d)
    group_onehot : Tensor of shape (n, n_groups)
        Group membership, one block of columns per attribute.
    attribute_of_group : Tensor of shape (n_groups,)
        The attribute each column belongs to.
    scales : tuple of float
        Kernel bandwidths as multiples of the (detached) median pairwise
        distance; the kernel is their average.
    min_group_size : int, default=4
        Groups with fewer rows in the batch are skipped.

    Returns
    -------
    Tensor
        A scalar, zero when every group's batch rows are distributed like the batch
        (the biased V-statistic, so a small positive floor remains for finite groups).
    """
    x = latents.float()
    squared = _squared_distances(x)
    detached = squared.detach()
    median = torch.nan_to_num(torch.nanmedian(torch.where(detached > 0, detached, torch.nan)), nan=1.0)
    kernel = torch.stack([torch.exp(-squared / (2.0 * s * s * median)) for s in scales]).mean(0)
    onehot = group_onehot.float()
    counts = onehot.sum(0)
    usable = counts >= min_group_size
    weights = onehot / counts.clamp_min(1.0)  # column g: the average over group g's rows
    within = (weights * (kernel @ weights)).sum(0)  # mean k(a, b), a and b in g
    across = weights.T @ kernel.mean(1)  # mean k(a, b), a in g, b in the batch
    mmd = (within - 2.0 * across + kernel.mean()).clamp_min(0.0)
    share = counts / len(x)
    return (share * mmd * usable).sum()


def group_second_moments(
    latents: torch.Tensor, group_onehot: torch.Tensor, *, min_group_size: int = 4
) -> torch.Tensor:
    """Per attribute, the group-share-weighted ``|M_g - M|_F^2`` of second moments about the batch mean; summed.

    Parameters
    ----------
    latents : Tensor of shape (n, d)
        Preferably whitened (then ``M`` is about the identity and the sum over
        groups is the trace of ``sum_g p_g (C_g - I)^2``, what ``covariance_dims``
        ranks directions by).
    group_onehot : Tensor of shape (n, n_groups)
    min_group_size : int, default=4

    Returns
    -------
    Tensor
        A scalar; zero when every group's batch rows have the batch's mean and
        covariance. Divided by the square of the batch's mean variance, so that
        shrinking the latents does not lower it.
    """
    x = latents.float()
    x = x - x.mean(0, keepdim=True)
    pooled = x.T @ x / len(x)
    onehot = group_onehot.float()
    counts = onehot.sum(0)
    usable = (counts >= min_group_size).float()
    groups = torch.einsum("ng,ni,nj->gij", onehot, x, x) / counts.clamp_min(1.0)[:, None, None]
    gaps = (groups - pooled).pow(2).sum((1, 2))
    scale = (torch.trace(pooled) / x.shape[1]).pow(2).clamp_min(1e-12)
    return (counts / len(x) * gaps * usable).sum() / scale


def group_sliced_wasserstein(
    latents: torch.Tensor,
    group_ids: list[torch.Tensor],
    *,
    n_projections: int = 64,
    generator: torch.Generator | None = None,
    min_group_size: int = 4,
) -> torch.Tensor:
    """Per attribute, the group-share-weighted sliced W₂² between each group and the batch; summed.

    Parameters
    ----------
    latents : Tensor of shape (n, d)
    group_ids : list of Tensor of shape (n,)
        Each attribute's group index per row.
    n_projections : int, default=64
        Random unit directions, drawn afresh per call.
    generator : torch.Generator, optional
    min_group_size : int, default=4

    Returns
    -------
    Tensor
        A scalar: for each group, the mean over directions and quantile levels of the
        squared gap between the group's sorted projections and the batch's quantiles at
        the same levels.
    """
    x = latents.float()
    directions = torch.randn(x.shape[1], n_projections, generator=generator, device=x.device)
    directions = directions / directions.norm(dim=0, keepdim=True).clamp_min(1e-12)
    projected = x @ directions
    total = x.new_zeros(())
    for ids in group_ids:
        for group in torch.unique(ids):
            members = projected[ids == group]
            size = len(members)
            if size < min_group_size:
                continue
            levels = (torch.arange(size, device=x.device, dtype=x.dtype) + 0.5) / size
            pooled = torch.quantile(projected, levels, dim=0)
            gap = members.sort(dim=0).values - pooled
            total = total + size / len(x) * gap.pow(2).mean()
    return total


def balanced_sampling_weights(group_ids: list[torch.Tensor], power: float = 1.0) -> torch.Tensor:
    """Sampling weights that even out the joint cells of the given groupings.

    Each row gets ``count(cell) ** -power``, its cell being its combination of
    group indices (e.g. gender x ethnicity). ``power=1`` makes every cell equally
    likely; ``0.5`` goes half way (in log terms).

    Parameters
    ----------
    group_ids : list of Tensor of shape (n,)
    power : float, default=1.0

    Returns
    -------
    Tensor of shape (n,)
        Normalised to sum to 1.
    """
    cells = torch.zeros_like(group_ids[0])
    for ids in group_ids:
        cells = cells * (int(ids.max()) + 1) + ids
    _, inverse, counts = torch.unique(cells, return_inverse=True, return_counts=True)
    weights = counts[inverse].double().pow(-power)
    return weights / weights.sum()
