"""Batch penalties that pull each attribute group's latent distribution onto the pooled one.

After linear erasure the groups share a mean latent; what a non-linear
attacker still reads is how the rest of their distributions differ. Each
penalty here compares, per attribute, every group's rows in a batch with the
whole batch, weights the groups by their share of the batch and sums over
attributes:

- :func:`group_second_moments`: ``|M_g - M|_F^2`` of second-moment matrices,
  the soft form of ``LinearErasure``'s covariance-direction criterion, over
  all directions at once; blind to differences beyond the second moments;
- :func:`group_sliced_wasserstein`: squared 2-Wasserstein distance between
  the group's and the batch's projections on random unit directions,
  averaged; sees every difference of the one-dimensional marginals
  (spread, skew, a ring or two modes);
- :func:`group_mmd`: squared maximum mean discrepancy with Gaussian kernels
  at several bandwidths (multiples of the median pairwise distance);
- :func:`group_neighbour_gap`: what a nearest-neighbour attacker reads, the
  gap in own-group share among a row's nearest neighbours; unlike the
  others it compares the batch with rows of earlier batches, which the
  caller keeps.

Give them latents in whitened coordinates (every direction at unit variance),
so a difference along a low-variance direction counts as much as one along a
high-variance direction: an attacker's probe standardises its inputs too.
Each is also invariant to scaling the latents, so an encoder cannot lower it
by shrinking them. :data:`MATCHING_CHOICES` names them for
``TrainedErasure(matching=...)``.
"""

from __future__ import annotations

from collections.abc import Callable

import torch


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
        Group membership, one block of columns per attribute.
    min_group_size : int, default=4
        Groups with fewer rows in the batch are skipped.

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
    group_onehot: torch.Tensor,
    *,
    n_projections: int = 64,
    min_group_size: int = 4,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Per attribute, the group-share-weighted sliced W₂² between each group and the batch; summed.

    Parameters
    ----------
    latents : Tensor of shape (n, d)
        Preferably whitened.
    group_onehot : Tensor of shape (n, n_groups)
        Group membership, one block of columns per attribute.
    n_projections : int, default=64
        Random unit directions, drawn afresh on every call.
    min_group_size : int, default=4
        Groups with fewer rows in the batch are skipped.
    generator : torch.Generator, optional
        Source of the directions (default: torch's global generator).

    Returns
    -------
    Tensor
        A scalar: for each group, the mean over directions and quantile levels
        of the squared gap between the group's sorted projections and the
        batch's quantiles at the same levels; divided by the batch's mean
        variance, so that shrinking the latents does not lower it. Identically
        distributed groups leave only a finite-sample floor that falls with
        the group size.
    """
    x = latents.float()
    x = x - x.mean(0, keepdim=True)
    directions = torch.randn(x.shape[1], n_projections, generator=generator).to(x.device)
    directions = directions / directions.norm(dim=0, keepdim=True).clamp_min(1e-12)
    projected = x @ directions
    onehot = group_onehot.float()
    total = x.new_zeros(())
    for column in onehot.T:
        members = projected[column > 0]
        size = len(members)
        if size < min_group_size:
            continue
        levels = (torch.arange(size, device=x.device, dtype=x.dtype) + 0.5) / size
        pooled = torch.quantile(projected, levels, dim=0)
        gap = members.sort(dim=0).values - pooled
        total = total + size / len(x) * gap.pow(2).mean()
    return total / x.pow(2).mean().clamp_min(1e-12)


def group_mmd(
    latents: torch.Tensor,
    group_onehot: torch.Tensor,
    *,
    scales: tuple[float, ...] = (0.25, 0.5, 1.0, 2.0),
    min_group_size: int = 4,
) -> torch.Tensor:
    """Per attribute, the group-share-weighted MMD² between each group and the batch; summed.

    Parameters
    ----------
    latents : Tensor of shape (n, d)
        Preferably whitened.
    group_onehot : Tensor of shape (n, n_groups)
        Group membership, one block of columns per attribute.
    scales : tuple of float
        Kernel bandwidths as multiples of the (detached) median pairwise
        distance; the kernel is their average. Tied to the median, the
        penalty does not change when the latents are scaled.
    min_group_size : int, default=4
        Groups with fewer rows in the batch are skipped.

    Returns
    -------
    Tensor
        A scalar, zero when every group's batch rows are distributed like the
        batch (the biased V-statistic: a finite-sample floor remains).
    """
    x = latents.float()
    norms = x.pow(2).sum(1)
    squared = (norms[:, None] + norms[None, :] - 2.0 * x @ x.T).clamp_min(0.0)
    detached = squared.detach()
    median = torch.nan_to_num(torch.nanmedian(torch.where(detached > 0, detached, torch.nan)), nan=1.0)
    kernel = torch.stack([torch.exp(-squared / (2.0 * s * s * median)) for s in scales]).mean(0)
    onehot = group_onehot.float()
    counts = onehot.sum(0)
    usable = (counts >= min_group_size).float()
    weights = onehot / counts.clamp_min(1.0)  # column g: the average over group g's rows
    within = (weights * (kernel @ weights)).sum(0)  # mean k(a, b), a and b in g
    across = weights.T @ kernel.mean(1)  # mean k(a, b), a in g, b in the batch
    mmd = (within - 2.0 * across + kernel.mean()).clamp_min(0.0)
    return (counts / len(x) * mmd * usable).sum()


def group_neighbour_gap(
    queries: torch.Tensor,
    query_onehot: torch.Tensor,
    keys: torch.Tensor,
    key_onehot: torch.Tensor,
    *,
    neighbours: int = 10,
    min_group_size: int = 4,
) -> torch.Tensor:
    """Per group, how much more of its own group a row's nearest neighbours hold for members than for others.

    A nearest-neighbour attacker reads a group from the share of that group
    among a row's ``k`` nearest neighbours. Each query row gets its
    ``neighbours`` nearest ``keys`` (rows of earlier batches: a batch of 32 is
    too small to hold neighbours of its own), weighted by a softmax of their
    squared distances so that the share has a gradient; for every group, the
    mean neighbour share of the group among its member queries minus that
    among the other queries is the *gap*, zero in expectation when the
    neighbourhoods do not depend on the group. Its square is estimated
    without the finite-batch floor of the plain square.

    Parameters
    ----------
    queries : Tensor of shape (n, d)
        The batch's latents (gradients flow through them), preferably whitened.
    query_onehot : Tensor of shape (n, n_groups)
        The queries' group membership, one block of columns per attribute.
    keys : Tensor of shape (m, d)
        Latents of other rows, in the queries' coordinates (no gradient
        flows into them).
    key_onehot : Tensor of shape (m, n_groups)
        Their group membership.
    neighbours : int, default=10
        Keys per query (at least 2). Their weights fall from 1 at the nearest
        to ``exp(-1)`` at the farthest (the kernel's width is the gap between
        their squared distances), so the penalty does not change when the
        latents are scaled.
    min_group_size : int, default=4
        Groups with fewer member or non-member queries are skipped (at least 2).

    Returns
    -------
    Tensor
        A scalar: the group-share-weighted sum of squared gaps, each estimated
        without bias (so it can fall below zero, and it is zero in expectation
        for groups the neighbourhoods do not depend on).
    """
    if neighbours < 2 or min_group_size < 2:
        raise ValueError(f"need neighbours >= 2 and min_group_size >= 2, got {neighbours} and {min_group_size}")
    with torch.autocast(queries.device.type, enabled=False):  # distances in float32 even under bf16 autocast
        keys = keys.detach().float()
        centre = keys.mean(0, keepdim=True)  # distances do not move, float32 rounding does
        q, k = queries.float() - centre, keys - centre
        squared = (q.pow(2).sum(1, keepdim=True) + k.pow(2).sum(1)[None, :] - 2.0 * q @ k.T).clamp_min(0.0)
        nearest, index = squared.topk(min(neighbours, len(k)), dim=1, largest=False)
        closest = nearest.detach()
        width = (closest[:, -1] - closest[:, 0]).clamp_min(1e-6 * closest[:, -1] + 1e-30)
        weights = torch.softmax(-(nearest - closest[:, :1]) / width[:, None], dim=1)
        # (n, n_groups): each group's share among a row's neighbours
        shares = torch.einsum("nk,nkg->ng", weights, key_onehot.float()[index])
    onehot = query_onehot.float()
    counts = onehot.sum(0)
    others = len(q) - counts
    usable = ((counts >= min_group_size) & (others >= min_group_size)).float()
    inside_mean, inside_variance = _group_moments(shares, onehot, counts)
    outside_mean, outside_variance = _group_moments(shares, 1.0 - onehot, others)
    # The unbiased estimate of the squared difference of two means: the plain square's finite-batch floor
    # (the variances' share) would leave noise the encoder could answer only by emptying the latents, and,
    # unlike a square without its diagonal terms, a shift common to all rows (batches drawn into a part of
    # the bank one group dominates) cannot lower it.
    squared_gap = (
        (inside_mean - outside_mean).pow(2)
        - inside_variance / counts.clamp_min(1.0)
        - outside_variance / others.clamp_min(1.0)
    )
    return (counts / len(q) * squared_gap * usable).sum()


def _group_moments(values: torch.Tensor, members: torch.Tensor, counts: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per column, the mean and the unbiased variance of ``values`` over the rows ``members`` marks."""
    mean = (members * values).sum(0) / counts.clamp_min(1.0)
    variance = (members * (values - mean).pow(2)).sum(0) / (counts - 1.0).clamp_min(1.0)
    return mean, variance


MATCHING_PENALTIES: dict[str, Callable[[torch.Tensor, torch.Tensor], torch.Tensor]] = {
    "second_moments": group_second_moments,
    "sliced_wasserstein": group_sliced_wasserstein,
    "mmd": group_mmd,
}
"""The batch penalties, by the name ``TrainedErasure(matching=...)`` takes."""

MATCHING_CHOICES: tuple[str, ...] = (*MATCHING_PENALTIES, "neighbours")
"""Every ``matching`` choice: the batch penalties and ``"neighbours"``
(:func:`group_neighbour_gap` against a bank of earlier batches' rows)."""
