"""Concealment learned in training: the hook the :class:`~bafo_pipeline.training.Trainer` calls each step.

:class:`InLoopConcealment` bundles

- a :class:`~bafo_pipeline.running_erasure.RunningEraser` applied to the
  posterior mean between encoder and decoder, the posterior noise added after
  it: the decoder learns from erased latents plus the labels, and the encoder
  learns to keep content where the erasure does not reach. (Erasing the sample
  instead fails: the eraser is fitted on the means' statistics, and along
  collapsed directions the noise is orders of magnitude wider than the means,
  so LEACE's oblique map amplifies it into the directions the decoder uses);
- an optional distribution-matching penalty
  (:mod:`~bafo_pipeline.distribution_matching`) on the erased, whitened
  posterior means (what is exported), against the non-linear leakage linear
  erasure leaves;
- an optional class-balanced batch order, so that every group has enough rows
  in a batch for the penalty to see it.

At transform time the estimator applies a ``LinearErasure`` fitted on the
final training latents (the same map, from exact rather than running
statistics).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from .distribution_matching import (
    balanced_sampling_weights,
    group_mmd,
    group_second_moments,
    group_sliced_wasserstein,
)
from .running_erasure import ConditionSlice, GroupLayout, RunningEraser

MATCHING = ("mmd", "sliced", "moments")


class InLoopConcealment(nn.Module):
    """Erase inside the forward pass and penalise group differences of the erased latents.

    Parameters
    ----------
    latent_dim : int
    slices : sequence of (start, stop, kind)
        Where each sensitive attribute sits in the condition vector.
    conditions : Tensor of shape (n, width)
        All training conditions (fix the continuous attributes' bin edges and the
        balanced sampling weights).
    covariance_dims : int, default=0
        Covariance directions the in-loop eraser also removes.
    continuous_bins : int, default=4
    matching : {"mmd", "sliced", "moments"}, default="mmd"
    matching_weight : float, default=0.0
        Weight of the distribution-matching penalty (0 disables it), multiplied by
        the input size, like the trainer's other penalties.
    balanced : bool, default=False
        Draw batches with every gender x ethnicity (x ...) cell equally likely.
    removal_weight : float, default=0.0
        Weight of half the squared norm of what the eraser removes from the
        posterior means (a KL-like pull, per sample, unscaled). It keeps the
        removed part small, so the final eraser (fitted on exact statistics at
        the end) and the running one agree, and the decoder never relies on it.
    momentum : float, default=0.98
        EMA decay of the eraser's statistics.
    ridge : float, default=0.0
        The eraser's covariance ridge (see :class:`RunningEraser`).
    orthogonal : bool, default=False
        Erase by orthogonal projection rather than LEACE (see :class:`RunningEraser`).
    erase_forward : bool, default=True
        Apply the eraser between encoder and decoder. ``False`` leaves the
        forward pass alone: only the removal pull (and the matching penalty)
        act, and the decoder sees the raw samples.
    """

    def __init__(
        self,
        latent_dim: int,
        slices: Sequence[ConditionSlice],
        conditions: torch.Tensor,
        *,
        covariance_dims: int = 0,
        continuous_bins: int = 4,
        matching: str = "mmd",
        matching_weight: float = 0.0,
        balanced: bool = False,
        removal_weight: float = 0.0,
        momentum: float = 0.98,
        erase_forward: bool = True,
        ridge: float = 0.0,
        orthogonal: bool = False,
    ):
        super().__init__()
        if matching not in MATCHING:
            raise ValueError(f"matching must be one of {MATCHING}, got {matching!r}")
        if matching_weight < 0 or removal_weight < 0:
            raise ValueError(f"matching_weight and removal_weight must be >= 0, got {matching_weight}, {removal_weight}")
        self.layout = GroupLayout(slices, conditions, continuous_bins)
        self.eraser = RunningEraser(
            latent_dim, self.layout, covariance_dims=covariance_dims, momentum=momentum, ridge=ridge,
            orthogonal=orthogonal,
        )
        self.matching = matching
        self.matching_weight = matching_weight
        self.balanced = balanced
        self.removal_weight = removal_weight
        self.erase_forward = erase_forward

    def observe(self, means: torch.Tensor, conditions: torch.Tensor) -> None:
        """Fold a batch of posterior means into the eraser's statistics and refresh its map."""
        self.eraser.update(means, conditions)
        self.eraser.refresh()

    def erase(self, latents: torch.Tensor) -> torch.Tensor:
        """The current erasure map applied to (sampled or mean) latents."""
        return self.eraser(latents)

    def decoder_input(self, latents: torch.Tensor) -> torch.Tensor:
        """What the decoder gets in training (before the noise is added): the erased means, or the means."""
        return self.eraser(latents) if self.erase_forward else latents

    def removal(self, means: torch.Tensor) -> torch.Tensor:
        """Half the squared norm of what the eraser removes from each posterior mean, averaged."""
        return 0.5 * (means.float() - self.erase(means.float())).pow(2).sum(1).mean()

    def penalty(
        self, means: torch.Tensor, conditions: torch.Tensor, generator: torch.Generator | None = None
    ) -> torch.Tensor | None:
        """The weighted-less matching penalty on the erased, whitened posterior means (None when disabled)."""
        if self.matching_weight == 0:
            return None
        whitened = self.eraser.whitened(means.float())
        if self.matching == "mmd":
            return group_mmd(whitened, self.layout.group_onehot(conditions), self.eraser.attribute_of_group)
        if self.matching == "moments":
            return group_second_moments(whitened, self.layout.group_onehot(conditions))
        return group_sliced_wasserstein(whitened, self.layout.group_ids(conditions), generator=generator)

    def batch_order(self, rows: torch.Tensor, conditions: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """An epoch's row order: a permutation, or (``balanced``) as many class-balanced draws with replacement."""
        if not self.balanced:
            return rows[torch.randperm(len(rows), generator=generator, device=rows.device)]
        categorical = [
            ids
            for ids, (_, _, kind) in zip(self.layout.group_ids(conditions[rows]), self.layout.slices)
            if kind != "continuous"
        ]
        if not categorical:
            return rows[torch.randperm(len(rows), generator=generator, device=rows.device)]
        weights = balanced_sampling_weights(categorical).to(torch.float32)
        draws = torch.multinomial(weights, len(rows), replacement=True, generator=generator)
        return rows[draws]
