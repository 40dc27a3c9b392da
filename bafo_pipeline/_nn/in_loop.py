"""Concealment learned in training: a :class:`~bafo_pipeline._nn.training.TrainingHook` with a running eraser.

:class:`InLoopErasure`

- keeps a :class:`~bafo_pipeline._nn.running_erasure.RunningEraser` on the
  training batches' posterior means and, between encoder and decoder, gives the
  decoder ``erase(mean) + (z - mean)``: the erased mean plus the posterior
  noise. The decoder learns from erased latents plus the labels, and the
  encoder learns to keep its content where the erasure does not reach.
  (Erasing the sample ``z`` instead fails: the eraser is fitted on the means'
  statistics, and along collapsed directions the noise is orders of
  magnitude wider than the means, so LEACE's oblique map amplifies it into
  the directions the decoder uses.)
- optionally adds a distribution-matching penalty
  (:data:`~bafo_pipeline._nn.distribution_matching.MATCHING_CHOICES`: second
  moments, sliced Wasserstein, kernel MMD, or the neighbours' gap against a
  bank of earlier batches' means) of the erased, whitened means to the loss,
  against the non-linear leakage that linear erasure leaves.
- with ``erase_in_loop=False`` it keeps the eraser's statistics (the penalty
  needs the erased, whitened coordinates) but gives the decoder the sample
  ``z`` unchanged: the penalty alone shapes the encoder, and the erasure is
  applied after training only.

The concealment step that owns the hook is fitted post hoc on the trained
encoder's latents as usual (the same map from exact statistics).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from .distribution_matching import MATCHING_CHOICES, MATCHING_PENALTIES, group_neighbour_gap
from .running_erasure import ConditionSlice, GroupLayout, RunningEraser


class InLoopErasure:
    """Erase inside the forward pass (and optionally match group distributions) while the encoder trains.

    Parameters
    ----------
    latent_dim : int
    condition_slices : sequence of (start, stop, kind)
        Where each sensitive attribute sits in the condition vector.
    covariance_dims : int, default=0
        Covariance directions the eraser also removes.
    continuous_bins : int, default=4
        Quantile bins of continuous attributes, as ``LinearErasure``'s (at least 2).
    matching_weight : float, default=0.0
        Weight of the matching penalty, multiplied by the input size like the
        trainer's other penalties (0 disables it).
    matching : {"second_moments", "sliced_wasserstein", "mmd", "neighbours"}, default="second_moments"
        Which penalty compares each group's erased, whitened means with the
        batch's (``"neighbours"``: with the last ``bank_size`` training rows').
    erase_in_loop : bool, default=True
        Give the decoder ``erase(mean) + (z - mean)``; False gives it ``z``
        (the eraser's statistics are still kept, for the penalty).
    momentum : float, default=0.98
        EMA decay of the eraser's statistics.
    freeze_after : int, optional
        Refresh the eraser on this many training batches only, then keep its
        map fixed while the encoder goes on training (None: refresh on every
        batch). A map refitted every batch moves with the estimation noise of
        directions that carry little sensitive signal, and content cannot settle
        outside it.
    seed : int, default=0
        Seeds the sliced-Wasserstein penalty's random directions (its own
        generator: a fit does not depend on the global one).
    bank_size : int, default=2048
        Earlier training rows of the same epoch (posterior means, detached,
        and their groups) the ``"neighbours"`` penalty finds each batch row's
        neighbours among; whitened with the current eraser when used.

    Notes
    -----
    :meth:`begin` must run before the first batch (the trainer calls it): it
    fixes the continuous attributes' bin edges from all training conditions.
    Only batches seen with gradients enabled (training, not validation)
    update the statistics. The statistics and the ``"neighbours"`` bank are
    not part of training checkpoints: a resumed fit starts them afresh.
    """

    def __init__(
        self,
        latent_dim: int,
        condition_slices: Sequence[ConditionSlice],
        *,
        covariance_dims: int = 0,
        continuous_bins: int = 4,
        matching_weight: float = 0.0,
        matching: str = "second_moments",
        erase_in_loop: bool = True,
        momentum: float = 0.98,
        freeze_after: int | None = None,
        seed: int = 0,
        bank_size: int = 2048,
    ):
        if matching_weight < 0:
            raise ValueError(f"matching_weight must be >= 0, got {matching_weight}")
        if matching not in MATCHING_CHOICES:
            raise ValueError(f"matching must be one of {sorted(MATCHING_CHOICES)}, got {matching!r}")
        if bank_size < 1:
            raise ValueError(f"bank_size must be >= 1, got {bank_size}")
        if not 0 <= covariance_dims < latent_dim:
            raise ValueError(f"covariance_dims must lie in [0, latent_dim={latent_dim}), got {covariance_dims}")
        self.latent_dim = latent_dim
        self.condition_slices = list(condition_slices)
        self.covariance_dims = covariance_dims
        self.continuous_bins = continuous_bins
        self.matching_weight = matching_weight
        self.matching = matching
        self.erase_in_loop = erase_in_loop
        self.momentum = momentum
        self.freeze_after = freeze_after
        self.seed = seed
        self.bank_size = bank_size
        self._bank: tuple[torch.Tensor, torch.Tensor] | None = None
        self._epoch_rows = 0
        self._rows_per_epoch = 0
        self.refreshed = 0
        self.eraser: RunningEraser | None = None
        self._loss_scale = 1.0

    def begin(self, conditions: torch.Tensor, input_size: int) -> None:
        """Set up on the training rows' conditions (bin edges, device) and the size of one input row."""
        layout = GroupLayout(self.condition_slices, conditions.detach().cpu(), self.continuous_bins)
        self.eraser = RunningEraser(
            self.latent_dim, layout, covariance_dims=self.covariance_dims, momentum=self.momentum
        ).to(conditions.device)
        self._loss_scale = float(input_size)
        self._rows_per_epoch = len(conditions)  # the training rows: every epoch's batches hold each once
        # The sliced penalty's random directions come from here, not torch's global generator, so a fit
        # does not depend on what drew from that generator before it.
        self._generator = torch.Generator().manual_seed(self.seed)

    def latent(self, z: torch.Tensor, conditions: torch.Tensor, mean: torch.Tensor) -> torch.Tensor:
        """``erase(mean) + (z - mean)`` (``z`` without ``erase_in_loop``); a training batch first updates and refreshes the eraser."""
        eraser = self._ready()
        if torch.is_grad_enabled() and (self.freeze_after is None or self.refreshed < self.freeze_after):
            eraser.update(mean.detach().float(), conditions)
            eraser.refresh()
            self.refreshed += 1
        if not self.erase_in_loop:
            return z
        return (eraser(mean.float()) + (z - mean).float()).to(z.dtype)

    def loss(self, mean: torch.Tensor, conditions: torch.Tensor) -> torch.Tensor:
        """The weighted matching penalty on the erased, whitened means (0 when disabled)."""
        eraser = self._ready()
        if self.matching_weight == 0:
            return mean.new_zeros(())
        if self.matching == "neighbours":
            return self.matching_weight * self._loss_scale * self._neighbour_penalty(eraser, mean, conditions)
        options = {"generator": self._generator} if self.matching == "sliced_wasserstein" else {}
        penalty = MATCHING_PENALTIES[self.matching](
            eraser.whitened(mean.float()), eraser.layout.group_onehot(conditions), **options
        )
        return self.matching_weight * self._loss_scale * penalty

    @property
    def bank(self) -> tuple[torch.Tensor, torch.Tensor] | None:
        """The ``"neighbours"`` penalty's earlier training rows: their detached means and group one-hots (None before any)."""
        return self._bank

    def _neighbour_penalty(self, eraser: RunningEraser, mean: torch.Tensor, conditions: torch.Tensor) -> torch.Tensor:
        """:func:`group_neighbour_gap` of the batch against the bank; training batches join the bank.

        The bank holds the current epoch's rows only: a row of an earlier epoch
        could be a query's own stale copy, its nearest neighbour and of its own
        groups. It is 0 while the bank holds fewer rows than the batch (or
        than ``bank_size``).
        """
        onehot = eraser.layout.group_onehot(conditions)
        training = torch.is_grad_enabled()
        if training and self._epoch_rows + len(mean) > self._rows_per_epoch:  # a new epoch
            self._bank, self._epoch_rows = None, 0
        penalty = mean.new_zeros((), dtype=torch.float32)
        if self._bank is not None and len(self._bank[0]) >= min(len(mean), self.bank_size):
            keys, key_onehot = self._bank
            penalty = group_neighbour_gap(eraser.whitened(mean.float()), onehot, eraser.whitened(keys), key_onehot)
        if training:
            rows, groups = mean.detach().float(), onehot.detach()
            if self._bank is not None:
                rows, groups = torch.cat([self._bank[0], rows]), torch.cat([self._bank[1], groups])
            self._bank = (rows[-self.bank_size :], groups[-self.bank_size :])
            self._epoch_rows += len(mean)
        return penalty

    def erase(self, latents: torch.Tensor) -> torch.Tensor:
        """The current erasure map applied to latents."""
        return self._ready()(latents)

    def _ready(self) -> RunningEraser:
        if self.eraser is None:
            raise RuntimeError("InLoopErasure.begin(conditions, input_size) must run before the first batch")
        return self.eraser
