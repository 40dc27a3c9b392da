"""TrainedErasure: linear erasure the encoder is trained with (concealment learned in training, issue 12)."""

from __future__ import annotations

from numbers import Integral, Real


from .._nn.distribution_matching import MATCHING_CHOICES
from .._nn.in_loop import InLoopErasure
from .._utils.params import Interval, StrOptions
from ._erasure import LinearErasure


class TrainedErasure(LinearErasure):
    """:class:`LinearErasure` that also sits between encoder and decoder while the encoder trains.

    As a step of ``BAFOTransformer(concealment=[TrainedErasure()])`` (or
    ``concealment="trained"``) it takes part in the encoder's training through
    :meth:`training_hook`: an eraser refitted every batch from running
    class-conditional statistics of the posterior means erases them before
    the decoder sees them (the posterior noise is added after), so the
    decoder learns to reconstruct from erased latents plus the labels and the
    encoder learns to keep non-sensitive content in directions the erasure
    leaves. After training the step is fitted like :class:`LinearErasure` on
    the trained encoder's latents (the same map, from exact statistics), and
    ``transform`` applies it. The decoder already decodes erased latents, so
    no label map is added back when decoding (see ``BAFOTransformer``).

    Parameters
    ----------
    attribute_kinds : dict of str to str, optional
        Override inferred attribute kinds (see :class:`AttributeSchema`).
    continuous_bins : int, default=4
        Quantile bins of each continuous attribute erased beside its linear
        trend (as :class:`LinearErasure`); at least 2 when training with it.
    covariance_dims : int, default=0
        Also remove this many directions where the groups' covariances differ
        most, in training and after it.
    matching_weight : float, default=0.0
        Weight of a penalty, in training, on how far each group's
        distribution of the erased, whitened posterior means lies from the
        batch's, scaled by the input size like the estimator's other
        penalties. 0 disables it.
    matching : {"second_moments", "sliced_wasserstein", "mmd", "neighbours"}, default="second_moments"
        The penalty: second moments (a soft covariance-direction erasure over
        all directions; blind to differences of shape), sliced 2-Wasserstein
        distance on random directions, kernel MMD (Gaussian kernels at
        multiples of the median distance), or the neighbours' gap (how much
        more of a group a row's 10 nearest neighbours, among up to 2,048
        earlier training rows of the epoch, hold for the group's members than
        for others: what a nearest-neighbour attacker reads). All are invariant to the latents'
        scale. Experimental: docs/TRAINED_CONCEALMENT.md, §9 and §21.
    erase_in_loop : bool, default=True
        Erase the posterior means between encoder and decoder in training.
        False keeps the decoder on the encoder's own latents (the matching
        penalty alone shapes the encoder; the erasure is applied after
        training only, and decoding adds back what it removed, as for
        :class:`LinearErasure`).
    freeze_after : int, optional
        Refresh the in-loop eraser on this many training batches only, then
        keep it fixed while the encoder trains on (None: refresh every batch).
        Experimental: measured on planted data and synthetic faces only
        (docs/TRAINED_CONCEALMENT.md).
    tolerance : float, default=1e-10
        As :class:`LinearErasure`'s.

    Attributes
    ----------
    mean_, projection_, schema_, n_features_in_
        As :class:`LinearErasure`'s.

    See Also
    --------
    LinearErasure : the same erasure, applied after training only.
    """

    _parameter_rules: dict = {
        **LinearErasure._parameter_rules,
        "matching_weight": [Interval(Real, 0, None, closed="left")],
        "matching": [StrOptions(set(MATCHING_CHOICES))],
        "erase_in_loop": ["boolean"],
        "freeze_after": [Interval(Integral, 1, None, closed="left"), None],
    }

    def __init__(
        self,
        *,
        attribute_kinds: dict | None = None,
        continuous_bins: int = 4,
        covariance_dims: int = 0,
        matching_weight: float = 0.0,
        matching: str = "second_moments",
        erase_in_loop: bool = True,
        freeze_after: int | None = None,
        tolerance: float = 1e-10,
    ):
        super().__init__(
            attribute_kinds=attribute_kinds, continuous_bins=continuous_bins, covariance_dims=covariance_dims,
            tolerance=tolerance,
        )
        self.matching_weight = matching_weight
        self.matching = matching
        self.erase_in_loop = erase_in_loop
        self.freeze_after = freeze_after

    @property
    def decoder_learned_output(self) -> bool:
        """Whether the decoder learned from this step's output in training: it erases in the loop."""
        return bool(self.erase_in_loop)

    def training_hook(self, latent_dim: int, condition_slices: list) -> InLoopErasure:
        """The in-loop eraser (and matching penalty) the encoder trains with.

        Parameters
        ----------
        latent_dim : int
        condition_slices : list of (int, int, str)
            Column range and kind of each attribute in the condition vector.

        Returns
        -------
        InLoopErasure
        """
        if self.continuous_bins < 2:
            raise ValueError(f"TrainedErasure needs continuous_bins >= 2 to train with, got {self.continuous_bins}")
        return InLoopErasure(  # which checks the matching settings
            latent_dim, condition_slices, covariance_dims=self.covariance_dims,
            continuous_bins=self.continuous_bins, matching_weight=float(self.matching_weight),
            matching=self.matching, erase_in_loop=bool(self.erase_in_loop), freeze_after=self.freeze_after,
        )
