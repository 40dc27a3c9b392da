"""Adversaries that try to read the sensitive attributes from the latent during training.

The encoder is trained to leave them *confused* — every prediction pulled to
the batch's marginal (the class shares, the mean age) — rather than wrong:
gradient reversal rewards confidently wrong predictions, which still leak.
Several members, re-initialised in turn, keep the encoder from hiding the
attributes from one particular adversary only; a fresh audit probe is still
the judge.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn
from torch.nn import functional as F

# (start, stop, kind) of one attribute's columns in the condition vector.
ConditionSlice = tuple[int, int, str]


def _member(latent_dim: int, out_dim: int, hidden: int) -> nn.Module:
    return nn.Sequential(
        nn.Linear(latent_dim, hidden), nn.SiLU(), nn.Linear(hidden, hidden), nn.SiLU(), nn.Linear(hidden, out_dim)
    )


class AttributeAdversary(nn.Module):
    """An ensemble of MLPs, each predicting every sensitive attribute from the latent.

    Parameters
    ----------
    latent_dim : int
    slices : sequence of (start, stop, kind)
        Where each attribute sits in the condition vector, and its kind
        (``"continuous"``, ``"binary"`` or ``"categorical"``).
    n_members : int, default=3
    hidden : int, default=128
    """

    def __init__(self, latent_dim: int, slices: Sequence[ConditionSlice], n_members: int = 3, hidden: int = 128):
        super().__init__()
        self.slices = list(slices)
        self.width = max(stop for _, stop, _ in self.slices)
        self.latent_dim, self.hidden = latent_dim, hidden
        self.members = nn.ModuleList(_member(latent_dim, self.width, hidden) for _ in range(n_members))
        self.next_reset = 0

    def prediction_loss(self, latents: torch.Tensor, conditions: torch.Tensor) -> torch.Tensor:
        """How badly the members predict the attributes (what the adversaries minimise)."""
        return sum(self._attribute_losses(member(latents), conditions, confuse=False) for member in self.members)

    def confusion_loss(self, latents: torch.Tensor, conditions: torch.Tensor) -> torch.Tensor:
        """How far the members' predictions are from the batch marginals (what the encoder minimises)."""
        return sum(self._attribute_losses(member(latents), conditions, confuse=True) for member in self.members)

    def _attribute_losses(self, outputs: torch.Tensor, conditions: torch.Tensor, *, confuse: bool) -> torch.Tensor:
        total = outputs.new_zeros(())
        for start, stop, kind in self.slices:
            logits, target = outputs[:, start:stop].float(), conditions[:, start:stop]
            if confuse:
                target = target.mean(0, keepdim=True).expand_as(target)
            if kind == "categorical":
                total = total + F.cross_entropy(logits, target)
            elif kind == "binary":
                total = total + F.binary_cross_entropy_with_logits(logits, target)
            else:
                total = total + F.mse_loss(logits, target)
        return total

    @torch.no_grad()
    def reset_next(self) -> None:
        """Re-initialise one member (round robin), so the encoder faces a fresh adversary."""
        member = self.members[self.next_reset]
        for layer in member:
            if isinstance(layer, nn.Linear):
                layer.reset_parameters()
        self.next_reset = (self.next_reset + 1) % len(self.members)
