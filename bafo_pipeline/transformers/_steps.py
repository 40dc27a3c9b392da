"""Concealment steps: what :class:`BAFOTransformer` applies to its encoder's posterior means.

A step is a scikit-learn transformer of latents that learns from the sensitive
attributes at fit time only:

``fit(Z, y=None, *, sensitive_features)``
    learns from the training latents ``Z`` (posterior means, or the previous
    step's output) and the attributes (a DataFrame);
``transform(Z)``
    conceals, with no attributes (none are available when latents are shared).

Optional parts, found by name:

``needs_sensitive_features_to_transform = True``
    (a class attribute) the step's ``transform(Z, *, sensitive_features)`` and
    ``inverse_transform`` need each row's attributes, as fairlearn's
    ``CorrelationRemover`` does (:class:`ConditionalTransport` moves each
    attribute group by its own map). :class:`BAFOTransformer` then passes the
    rows' attributes to it (and refuses to encode without them), the steps
    after it run after the network, and the torch-only
    :meth:`~BAFOTransformer.encoder_bundle` cannot hold it. See
    :func:`needs_attributes_to_transform`.
``needs_row_keys = True``
    (a class attribute) the step's ``transform(Z, *, row_keys)`` takes one
    identity per row (bytes): :class:`BAFOTransformer` passes a hash of each
    row's input (an image's decoded pixels, a tabular row's standardised
    values), which the arithmetic of the network cannot change.
    :class:`~bafo_pipeline.transformers.KeyedNoise` draws each row's noise from
    it. See :func:`needs_row_keys`.
``exact_inverse = True``
    (a class attribute) ``inverse_transform`` undoes ``transform`` exactly, given
    the same attributes; when every step says so, the estimator decodes through
    the steps' inverses and its own decoder, and fine-tunes no decoder
    (``decoder_epochs`` is not needed).

``inverse_transform(Z, *, sensitive_features)``
    maps concealed latents back towards the step's input when decoding
    (:class:`LatentRefiner` decodes through its own decoder); a step without
    it (:class:`LinearErasure`, which is not invertible) is passed through.
``training_hook(latent_dim, condition_slices)``
    returns a :class:`~bafo_pipeline._nn.training.TrainingHook` that takes
    part in the encoder's own training (between encoder and decoder, plus a
    loss term); the step is still fitted on the trained encoder's latents
    afterwards. :class:`~bafo_pipeline.transformers.TrainedErasure` has one
    (linear erasure learned in training).
``decoder_learned_output``
    (a property or attribute) True when the encoder's decoder learned, in
    training, from the step's output (its training hook puts the step
    between encoder and decoder), so no label map is added back for it
    when decoding. :class:`~bafo_pipeline.transformers.TrainedErasure`
    says so unless its ``erase_in_loop`` is False. See :func:`decoder_learned_output`.
``as_layers()``
    describes the fitted step as a chain of
    :class:`~bafo_pipeline._nn.folding.AffineMap` s and ``nn.SiLU``
    activations (float64) computing its ``transform``; an image model then
    folds it into its encoder network (:func:`~bafo_pipeline._nn.folding.fold_encoder`)
    instead of running it after the network. :class:`LinearErasure` is one
    affine map, :class:`LatentRefiner` its standardisation and MLP.

Parameters a step leaves at ``None`` among :data:`INHERITED_PARAMS` take the
estimator's value when it fits the step (the device, the seed, the attribute
kinds), so ``[LinearErasure(), LatentRefiner(), LinearErasure()]`` follows the
estimator as the named presets do.
"""

from __future__ import annotations

from collections.abc import Sequence

from sklearn.base import clone

__all__ = [
    "INHERITED_PARAMS",
    "PRESETS",
    "PRESET_STEP_PARAMS",
    "check_steps",
    "decoder_learned_output",
    "fit_ready",
    "foldable_layers",
    "get_step_params",
    "inverts_exactly",
    "is_invertible",
    "needs_attributes_to_transform",
    "needs_row_keys",
    "set_step_params",
    "trains_with_encoder",
]

PRESETS = ("none", "linear", "full", "trained", "transport", "transport-refined")
INHERITED_PARAMS = ("attribute_kinds", "device", "random_state")
#: The step parameters (by step class name) that the named presets set from the estimator's own parameters. A
#: model saved under a preset is checked at load on these only: the steps' other parameters are their defaults in
#: the release that fitted the model, which a later release may change.
PRESET_STEP_PARAMS = {
    "LinearErasure": ("covariance_dims",),
    "TrainedErasure": ("covariance_dims",),
    "LatentRefiner": ("epochs", "adversary_weight", "kl_weight", "batch_size", "learning_rate", "adversary_steps",
                      "validation_fraction"),
    "ConditionalTransport": (),
}


def check_steps(steps: Sequence, name: str = "concealment") -> None:
    """Raise ``TypeError`` unless every step has ``fit`` and ``transform``."""
    for i, step in enumerate(steps):
        if not (hasattr(step, "fit") and hasattr(step, "transform") and hasattr(step, "get_params")):
            raise TypeError(
                f"{name}[{i}] is a {type(step).__name__}; a concealment step must be a scikit-learn transformer "
                "(get_params, fit(Z, sensitive_features=...), transform(Z))"
            )


def fit_ready(step, inherited: dict):
    """An unfitted copy of ``step`` whose :data:`INHERITED_PARAMS` left at None take the estimator's values."""
    step = clone(step)
    own = step.get_params(deep=False)
    updates = {k: v for k, v in inherited.items() if k in INHERITED_PARAMS and k in own and own[k] is None}
    return step.set_params(**updates) if updates else step


def is_invertible(step) -> bool:
    """Whether decoding maps back through ``step`` (it has ``inverse_transform``)."""
    return callable(getattr(step, "inverse_transform", None))


def needs_attributes_to_transform(step) -> bool:
    """Whether ``step.transform`` needs each row's ``sensitive_features`` (``needs_sensitive_features_to_transform``)."""
    return bool(getattr(step, "needs_sensitive_features_to_transform", False))


def needs_row_keys(step) -> bool:
    """Whether ``step.transform`` takes each row's identity as ``row_keys`` (``needs_row_keys``)."""
    return bool(getattr(step, "needs_row_keys", False))


def trains_with_encoder(step) -> bool:
    """Whether ``step`` takes part in the encoder's own training (it has ``training_hook``)."""
    return callable(getattr(step, "training_hook", None))


def decoder_learned_output(step) -> bool:
    """Whether the decoder learned, in the encoder's training, from ``step``'s output (``decoder_learned_output``)."""
    return bool(getattr(step, "decoder_learned_output", False))


def inverts_exactly(step) -> bool:
    """Whether ``step.inverse_transform`` undoes its ``transform`` exactly (``exact_inverse``)."""
    return is_invertible(step) and bool(getattr(step, "exact_inverse", False))


def foldable_layers(steps: Sequence) -> tuple[list, int]:
    """``(layers, n)``: the concatenated ``as_layers()`` of the leading steps that have it, and how many
    steps that is (the steps from ``n`` on run after the folded network, with their ``transform``)."""
    layers: list = []
    for n, step in enumerate(steps):
        as_layers = getattr(step, "as_layers", None)
        if not callable(as_layers):
            return layers, n
        layers += as_layers()
    return layers, len(steps)


def get_step_params(prefix: str, steps: Sequence) -> dict:
    """``{prefix__0: step, prefix__0__param: value, ...}``: the nested parameters of a list of steps
    (as scikit-learn's Pipeline exposes its steps in ``get_params(deep=True)``, with positions for names)."""
    out = {}
    for i, step in enumerate(steps):
        out[f"{prefix}__{i}"] = step
        if hasattr(step, "get_params"):
            out.update({f"{prefix}__{i}__{k}": v for k, v in step.get_params(deep=True).items()})
    return out


def set_step_params(steps: list, params: dict, prefix: str = "concealment") -> list:
    """Apply ``{"0": new_step, "0__param": value, ...}`` (the part after ``prefix__``) to ``steps``.

    Returns a new list when a step is replaced (the caller's list is never
    mutated); nested parameters are set on the steps themselves, as
    :meth:`sklearn.pipeline.Pipeline.set_params` does.
    """
    steps = list(steps)
    nested: dict[int, dict] = {}
    for key, value in params.items():
        index, _, rest = key.partition("__")
        if not index.isdigit() or int(index) >= len(steps):
            raise ValueError(
                f"invalid parameter {prefix}__{key!r}: {prefix} has {len(steps)} step(s), addressed as "
                f"{prefix}__0 ... {prefix}__{max(len(steps) - 1, 0)}"
            )
        if rest:
            nested.setdefault(int(index), {})[rest] = value
        else:
            steps[int(index)] = value
    for index, sub_params in nested.items():
        steps[index].set_params(**sub_params)
    return steps
