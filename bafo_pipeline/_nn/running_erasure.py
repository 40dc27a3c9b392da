"""Linear concept erasure inside the training loop, fitted on running (EMA) statistics.

:class:`RunningEraser` keeps exponential moving averages of the moments LEACE
needs (the latents' mean and covariance, their cross-covariance with the
encoded sensitive attributes, and each attribute group's second moments) and
recomputes, from those averages alone, the affine map that
:class:`~bafo_pipeline.transformers.LinearErasure` would fit on the same data:
LEACE, then optionally the ``covariance_dims`` directions in which the groups'
covariances differ most. The map is a buffer (no gradient flows through the
statistics); applied between encoder and decoder, it lets the decoder learn
from erased latents and the encoder learn to keep its content in the
directions that survive.

:class:`GroupLayout` says where each attribute sits in the condition vector and
how its rows fall into groups (classes, or quantile bins of a continuous
attribute), the same groups ``LinearErasure`` uses.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

# (start, stop, kind) of one attribute's columns in the condition vector.
ConditionSlice = tuple[int, int, str]


class GroupLayout(nn.Module):
    """Concept columns and groups of the sensitive attributes, read off the condition vector.

    Parameters
    ----------
    slices : sequence of (start, stop, kind)
        Column range and kind (``"continuous"``, ``"binary"``, ``"categorical"``)
        of each attribute in the condition vector.
    conditions : Tensor of shape (n, width)
        The training rows' condition vectors; fix the quantile-bin edges of
        continuous attributes.
    continuous_bins : int, default=4
        Quantile bins per continuous attribute (as ``LinearErasure``'s
        ``continuous_bins``); their one-hot indicators join the concepts.
    """

    def __init__(self, slices: Sequence[ConditionSlice], conditions: torch.Tensor, continuous_bins: int = 4):
        super().__init__()
        if not slices:
            raise ValueError("GroupLayout needs at least one attribute slice")
        if continuous_bins < 2:
            raise ValueError(f"continuous_bins must be >= 2, got {continuous_bins}")
        self.slices = [(int(a), int(b), str(k)) for a, b, k in slices]
        for start, stop, kind in self.slices:
            if kind not in ("continuous", "binary", "categorical") or stop <= start:
                raise ValueError(f"bad attribute slice {(start, stop, kind)}")
        levels = torch.linspace(0, 1, continuous_bins + 1, dtype=torch.float64)[1:-1]
        self.n_groups: list[int] = []
        for index, (start, _, kind) in enumerate(self.slices):
            if kind == "continuous":
                edges = torch.unique(torch.quantile(conditions[:, start].double().cpu(), levels)).float()
                self.register_buffer(f"edges_{index}", edges)
                self.n_groups.append(len(edges) + 1)
            else:
                self.n_groups.append(2 if kind == "binary" else self.slices[index][1] - start)

    @property
    def total_groups(self) -> int:
        """Number of groups over all attributes (the width of :meth:`group_onehot`)."""
        return sum(self.n_groups)

    def group_ids(self, conditions: torch.Tensor) -> list[torch.Tensor]:
        """Each attribute's group index per row (long tensors of shape (n,))."""
        ids = []
        for index, (start, stop, kind) in enumerate(self.slices):
            column = conditions[:, start:stop]
            if kind == "categorical":
                ids.append(column.argmax(1))
            elif kind == "binary":
                ids.append((column[:, 0] > 0.5).long())
            else:
                ids.append(torch.bucketize(column[:, 0].float().contiguous(), getattr(self, f"edges_{index}"), right=True))
        return ids

    def group_onehot(self, conditions: torch.Tensor) -> torch.Tensor:
        """One-hot group membership, attributes side by side: shape (n, total_groups)."""
        blocks = [
            nn.functional.one_hot(ids, n).to(conditions.dtype)
            for ids, n in zip(self.group_ids(conditions), self.n_groups)
        ]
        return torch.cat(blocks, dim=1)

    def attribute_of_group(self) -> torch.Tensor:
        """For each column of :meth:`group_onehot`, the index of its attribute."""
        return torch.repeat_interleave(torch.arange(len(self.n_groups)), torch.tensor(self.n_groups))

    def concepts(self, conditions: torch.Tensor) -> torch.Tensor:
        """What LEACE decorrelates: the condition vector plus continuous attributes' bin indicators."""
        extra = [
            nn.functional.one_hot(ids, n).to(conditions.dtype)
            for ids, n, (_, _, kind) in zip(self.group_ids(conditions), self.n_groups, self.slices)
            if kind == "continuous"
        ]
        return torch.cat([conditions, *extra], dim=1)


def _whitening(covariance: torch.Tensor, tolerance: float) -> tuple[torch.Tensor, torch.Tensor]:
    """``(whiten, unwhiten)`` of a covariance matrix, on the span of its non-negligible eigenvalues."""
    eigenvalues, eigenvectors = torch.linalg.eigh(covariance)
    keep = eigenvalues > tolerance * eigenvalues.max().clamp_min(torch.finfo(covariance.dtype).tiny)
    vectors, values = eigenvectors[:, keep], eigenvalues[keep]
    return (vectors / values.sqrt()) @ vectors.T, (vectors * values.sqrt()) @ vectors.T


class RunningEraser(nn.Module):
    """LEACE (and optional covariance-direction erasure) fitted on EMA statistics of a stream of latents.

    Call :meth:`update` with each batch's (detached) latents and conditions, then
    :meth:`refresh` to recompute the map; ``forward`` applies it,
    ``z -> mean_ + (z - mean_) @ keep_``, with gradient to ``z`` only.

    Parameters
    ----------
    latent_dim : int
    layout : GroupLayout
    covariance_dims : int, default=0
        Also remove this many directions where the groups' covariances differ
        most from the pooled one (as ``LinearErasure(covariance_dims=...)``).
    momentum : float, default=0.98
        EMA decay per update (bias-corrected, as Adam's moments are): the
        statistics describe roughly the last ``1 / (1 - momentum)`` batches.
    tolerance : float, default=1e-7
        Relative eigenvalue / singular-value threshold below which directions
        count as empty (the statistics are estimates, so looser than
        ``LinearErasure``'s exact-data default).
    """

    def __init__(
        self,
        latent_dim: int,
        layout: GroupLayout,
        *,
        covariance_dims: int = 0,
        momentum: float = 0.98,
        tolerance: float = 1e-7,
    ):
        super().__init__()
        if not 0.0 <= momentum < 1.0:
            raise ValueError(f"momentum must lie in [0, 1), got {momentum}")
        if not 0 <= covariance_dims < latent_dim:
            raise ValueError(f"covariance_dims must lie in [0, latent_dim), got {covariance_dims}")
        self.layout = layout
        self.covariance_dims = covariance_dims
        self.momentum = momentum
        self.tolerance = tolerance
        d = latent_dim
        k = layout.concepts(torch.zeros(1, max(stop for _, stop, _ in layout.slices))).shape[1]
        g = layout.total_groups
        f64 = torch.float64
        self.register_buffer("weight", torch.zeros((), dtype=f64))  # sum of EMA weights (bias correction)
        self.register_buffer("z_mean", torch.zeros(d, dtype=f64))
        self.register_buffer("z_second", torch.zeros(d, d, dtype=f64))
        self.register_buffer("c_mean", torch.zeros(k, dtype=f64))
        self.register_buffer("zc_second", torch.zeros(d, k, dtype=f64))
        self.register_buffer("group_share", torch.zeros(g, dtype=f64))
        self.register_buffer("group_mean", torch.zeros(g, d, dtype=f64))
        self.register_buffer("group_second", torch.zeros(g, d, d, dtype=f64))
        self.register_buffer("mean_", torch.zeros(d))
        self.register_buffer("keep_", torch.eye(d))
        self.register_buffer("whiten_", torch.eye(d))  # whitens the erased latents (for distribution penalties)
        self.register_buffer("attribute_of_group", layout.attribute_of_group())

    @torch.no_grad()
    def update(self, latents: torch.Tensor, conditions: torch.Tensor) -> None:
        """Fold one batch into the moving averages."""
        z = latents.detach().double()
        c = self.layout.concepts(conditions.detach()).double()
        onehot = self.layout.group_onehot(conditions.detach()).double()
        n = len(z)
        counts = onehot.sum(0)
        batch = {
            "z_mean": z.mean(0),
            "z_second": z.T @ z / n,
            "c_mean": c.mean(0),
            "zc_second": z.T @ c / n,
            "group_share": counts / n,
            # Per-group sums over the batch size: EMA-averaged and divided by group_share they are group means.
            "group_mean": onehot.T @ z / n,
            "group_second": torch.einsum("ng,ni,nj->gij", onehot, z, z) / n,
        }
        decay = self.momentum
        for name, value in batch.items():
            buffer = getattr(self, name)
            buffer.mul_(decay).add_(value, alpha=1.0 - decay)
        self.weight.mul_(decay).add_(1.0 - decay)

    @torch.no_grad()
    def refresh(self) -> None:
        """Recompute the erasure map from the current averages."""
        if self.weight <= 0:
            return
        scale = 1.0 / self.weight
        mean = self.z_mean * scale
        covariance = self.z_second * scale - torch.outer(mean, mean)
        d = len(mean)
        identity = torch.eye(d, dtype=mean.dtype, device=mean.device)
        cross = self.zc_second * scale - torch.outer(mean, self.c_mean * scale)
        keep = self._leace_keep(cross, mean, covariance, scale)
        erased_covariance = keep.T @ covariance @ keep
        self.mean_.copy_(mean.float())
        self.keep_.copy_(keep.float())
        # A small ridge keeps near-empty directions from being blown up (and their gradients with them).
        ridge = 1e-3 * torch.trace(erased_covariance) / d
        self.whiten_.copy_(_whitening(erased_covariance + ridge * identity, 1e-6)[0].float())

    def _group_moments(self, mean: torch.Tensor, scale: torch.Tensor):
        """``(share, second moment about the pooled mean)`` of every group with rows."""
        share = self.group_share * scale
        for g in range(len(share)):
            if share[g] <= 0:
                continue
            group_mean = self.group_mean[g] * scale / share[g]
            second = self.group_second[g] * scale / share[g]
            yield share[g], second - torch.outer(group_mean, mean) - torch.outer(mean, group_mean) + torch.outer(mean, mean)

    def _leace_keep(self, cross, mean, covariance, scale) -> torch.Tensor:
        d = len(mean)
        identity = torch.eye(d, dtype=mean.dtype, device=mean.device)
        whiten, unwhiten = _whitening(covariance, self.tolerance)
        u, s, _ = torch.linalg.svd(whiten @ cross, full_matrices=False)
        # Dependent concept columns (one-hot groups sum to 1) leave singular values at rounding level.
        u = u[:, s > torch.clamp(1e-6 * s.max(), min=1e-9)] if len(s) else u
        keep = identity - whiten @ u @ u.T @ unwhiten
        if self.covariance_dims:
            keep = keep @ self._covariance_keep(keep, mean, covariance, scale)
        return keep

    def _covariance_keep(
        self, keep: torch.Tensor, mean: torch.Tensor, covariance: torch.Tensor, scale: torch.Tensor
    ) -> torch.Tensor:
        """The map (right-multiplied) removing the directions where group covariances differ most."""
        erased = keep.T @ covariance @ keep
        whiten, unwhiten = _whitening(erased, self.tolerance)
        span = whiten @ unwhiten
        spread = torch.zeros_like(covariance)
        # Second moments about the pooled mean, as LinearErasure measures them.
        for share, about_pooled in self._group_moments(mean, scale):
            deviation = whiten @ keep.T @ about_pooled @ keep @ whiten - span
            spread += share * deviation @ deviation
        eigenvalues, eigenvectors = torch.linalg.eigh(spread)
        top = eigenvectors[:, torch.argsort(eigenvalues, descending=True)[: self.covariance_dims]]
        identity = torch.eye(len(span), dtype=span.dtype, device=span.device)
        return whiten @ (span - top @ top.T) @ unwhiten + (identity - whiten @ unwhiten)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        """Erase: ``mean_ + (z - mean_) @ keep_`` (the map is a constant; gradient flows to ``z``)."""
        mean = self.mean_.to(z.dtype)
        return mean + (z - mean) @ self.keep_.to(z.dtype)

    def whitened(self, z: torch.Tensor) -> torch.Tensor:
        """Erased latents in coordinates where their pooled covariance is the identity (on its span)."""
        return (self.forward(z) - self.mean_.to(z.dtype)) @ self.whiten_.to(z.dtype)
