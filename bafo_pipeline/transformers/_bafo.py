"""BAFOTransformer: the blind autoencoder as a scikit-learn transformer."""

from __future__ import annotations

import copy
import hashlib
import warnings
from collections.abc import Mapping
from numbers import Integral, Real

import numpy as np
import pandas as pd
import torch
from sklearn.base import BaseEstimator, ClassNamePrefixFeaturesOutMixin, TransformerMixin
from sklearn.utils import check_random_state
from sklearn.utils.validation import check_is_fitted, validate_data

from .._nn.bundle import EncoderBundle
from .._nn.engine import TorchEncoder, cached_encoder
from .._nn.folding import AffineMap, Layer, fold_encoder, mlp_mean_layers
from .._nn.inference import PRECISIONS, InferenceSettings, inference_network, uses_bfloat16
from .._nn.inputs import network_input
from .._nn.network import BAFONetwork, NetworkConfig, vae_loss_terms
from .._nn.training import Trainer, TrainingConfig, fit_decoder
from .._utils.device import autocast, resolve_device
from .._utils.params import Interval, StrOptions, checks_parameters
from .._utils.progress import epoch_progress
from ..attributes import AttributeSchema, as_sensitive_frame
from ._erasure import LinearErasure
from ._trained_erasure import TrainedErasure
from ._transport import ConditionalTransport
from ._persistence import describe_model, load_model, save_model
from ._state import NetworkState, get_state, register_loadable, set_state
from ._steps import (
    PRESETS,
    check_steps,
    decoder_learned_output,
    fit_ready,
    foldable_layers,
    get_step_params,
    inverts_exactly,
    is_invertible,
    needs_attributes_to_transform,
    needs_row_keys,
    set_step_params,
    trains_with_encoder,
)
from ._inputs import InputFormat, detect_format, from_unit_nchw, image_batches_uint8

DEFAULT_CONV_WIDTHS = (32, 64, 128)
DEFAULT_MLP_WIDTHS = (128, 64)
#: The parameters that configure the named concealment presets, at their defaults: beside a list of steps they must
#: stay there (the steps carry their own settings).
PRESET_KNOBS = {"covariance_dims": 0, "refine_epochs": 30, "refine_adversary_weight": 0.3, "refine_kl_weight": 1.0}


@register_loadable
class BAFOTransformer(ClassNamePrefixFeaturesOutMixin, TransformerMixin, BaseEstimator):
    """Encode images (or features) into latents meant to be blind to sensitive attributes.

    A conditional VAE whose decoder receives the sensitive attributes next to
    the latent (BAFO, "Blind Autoencoder for Fairness and Objectiveness"), so
    the encoder has no need to store them. ``transform`` returns the posterior
    mean; ``inverse_transform`` decodes a latent with any chosen attributes.
    Conditioning alone does *not* make the latent blind: audit it with
    :func:`bafo_pipeline.audits.audit_leakage` (or ``bafo audit``), and raise
    ``independence_weight`` or add :class:`LinearErasure` where it leaks.

    Parameters
    ----------
    latent_dim : int, default=48
        Size of the latent (the paper compares 48 and 100).
    image_shape : tuple of int, optional
        ``(height, width[, channels])``. Size image files are decoded to
        (default 56x56), the shape of flattened images when ``X`` is 2-D, and
        the reading of a 4-D ``X`` that could be NHWC or NCHW. Leave unset for
        tabular ``X`` (features, embeddings).
    widths : tuple of int, optional
        Channels of the conv stages (images; default ``(32, 64, 128)``) or hidden
        sizes of the MLP (tabular; default ``(128, 64)``).
    condition_every_layer : bool, default=False
        Feed the attributes to every decoder stage (Fader-network style).
    epochs : int, default=20
    batch_size : int, default=32
        Small batches give many optimiser steps per epoch: with 256, a few thousand
        images get too few steps to learn small details (docs/UTILITY.md).
    learning_rate : float, default=2e-3
    kl_weight : float, default=1.0
        Weight of the KL term of the ELBO.
    variance_weight : float, default=1.0
        Extra multiplier on the KL term's variance part (the paper's suggested
        heavier penalty on the standard deviation).
    independence_weight : float, default=0.0
        Weight of an HSIC penalty that pushes the posterior means towards
        statistical independence from each sensitive attribute.
    adversary_weight : float, default=0.0
        Weight of an adversarial term: an ensemble of MLP adversaries learns to
        predict the attributes from the posterior means, and the encoder is
        trained to leave their predictions at the batch marginals. 0 disables.
        Like the other penalties it is scaled by the input size (9,408 for
        56x56 RGB images), so on images 1.0 collapses the latent and 0.01
        already costs several dB of reconstruction; the adversary reads the
        raw means, which a shrinking latent fools (docs/TRAINED_CONCEALMENT.md §7).
    adversary_steps : int, default=2
        Adversary updates per encoder update.
    concealment : {"none", "linear", "full", "trained", "transport", "transport-refined"} or list of steps, default="full"
        What is applied to the encoder's posterior means (fitted with the
        sensitive features, which are then never needed at transform time,
        except by the ``"transport"`` presets).
        A list of concealment steps, applied in order (scikit-learn
        transformers fitted with ``sensitive_features``; see
        :meth:`concealment_steps` and docs/ARCHITECTURE.md), e.g.
        ``[LinearErasure(covariance_dims=8), LatentRefiner(adversary_weight=1.0), LinearErasure()]``;
        their parameters are nested (``concealment__0__covariance_dims``), so
        ``GridSearchCV`` can tune them. A :class:`KeyedNoise` last
        (``[ConditionalTransport(), KeyedNoise(scale=0.25)]``, what
        ``bafo run --noise-scale 0.25`` fits) trades utility for less leakage
        to the strongest attackers, with noise fixed per input image. Or one of the
        named presets:

        - ``"none"``: the paper's BAFO latent as is (no steps);
        - ``"linear"``: ``[LinearErasure(covariance_dims=covariance_dims)]``,
          closed-form linear erasure, so no linear probe beats chance on the
          training distribution;
        - ``"full"``: ``[LinearErasure(covariance_dims=covariance_dims),
          LatentRefiner(epochs=refine_epochs, adversary_weight=refine_adversary_weight),
          LinearErasure()]``: linear erasure, an adversarially trained refiner
          (an MLP BAFO on the latents) against non-linear probes, then linear
          erasure again. ``inverse_transform`` decodes through the refiner.
        - ``"trained"``: ``[TrainedErasure(covariance_dims=covariance_dims)]``,
          linear erasure learned in training: the eraser sits between encoder
          and decoder while the encoder trains, so the encoder keeps its
          non-sensitive content where the erasure does not reach
          (docs/TRAINED_CONCEALMENT.md).
        - ``"transport"``: ``[ConditionalTransport()]``, label-conditional
          transport: each attribute cell's latents are moved onto the pooled
          distribution (mean and covariance), which keeps what is not
          sensitive and decodes exactly, but **needs every row's sensitive
          attributes at transform time** (``transform(X, sensitive_features=S)``;
          a labelled export has them, unlabelled new images do not).
          Decoding goes back through the transport's exact inverse and the
          encoder's own decoder (no decoder is fine-tuned).
        - ``"transport-refined"``: ``[ConditionalTransport(), LatentRefiner(...),
          LinearErasure()]``, the transport, then ``"full"``'s refiner (same
          settings) and a linear erasure against the non-linear leakage the
          transport leaves (docs/TRAINED_CONCEALMENT.md §11); needs the
          attributes at transform time too. With ``decoder_epochs`` it decodes
          with a decoder fine-tuned on its output, as ``"full"`` does.
    covariance_dims : int, default=0
        Of the presets ``"linear"``, ``"full"`` and ``"trained"``: the first linear erasure
        also removes this many directions in which the attribute groups'
        covariances differ most (see :class:`LinearErasure`), the spread
        differences that non-linear probes read once the group means agree.
        On UTKFace, ``"linear"`` with 8 (of 48) matched ``"full"`` against the
        audit, leaked less to a data-rich attacker and reconstructed 1.0 dB
        better; on synthetic faces it also removed non-sensitive information
        (background). Off by default; see docs/COVARIANCE_ERASURE.md.
    decoder_epochs : int, default=6
        With any concealment (``"linear"``, ``"full"``, ``"trained"``): after
        the concealment is fitted, fine-tune a copy of the decoder for this many epochs to rebuild
        the training inputs from their *concealed* latents and attributes, and
        decode with it in ``inverse_transform`` (instead of mapping back
        through the refiner). It changes no latent, only how sharp decodes
        are: 6 epochs raised the held-out PSNR of ``"full"`` from 15.9 to
        17.2 dB on UTKFace (the frontier's earlier encoder,
        docs/results/leakage_frontier_utk48_2026-11-26.json) and from 18.2 to 19.2 dB on
        synthetic faces (docs/results/decoder_epochs_synthetic.json).
        0 keeps the encoder's own decoder. It applies to a list of steps too.
    refine_epochs : int, default=30
        Training epochs of the refiner (preset ``"full"``; a list of steps sets
        :class:`LatentRefiner` ``epochs`` instead).
    refine_adversary_weight : float, default=0.3
        Adversary weight of the refiner (preset ``"full"``; a list of steps sets
        :class:`LatentRefiner` ``adversary_weight`` instead).
    refine_kl_weight : float, default=1.0
        KL weight of the refiner's own VAE (presets ``"full"`` and
        ``"transport-refined"``; a list of steps sets :class:`LatentRefiner`
        ``kl_weight`` instead): the refiner's trade-off knob, lower keeps more
        and leaks more. With ``"transport-refined"``, 0.1 decoded 1.7 dB
        better on UTKFace and kept 0.5-0.8 instead of 0.3-0.6 of the
        expression residuals, for about 0.01 more data-rich gender accuracy
        (two refiner seeds); on synthetic faces it decoded within 0.4 dB of
        the unconcealed latent but leaked more ethnicity, and on ``bafo run``'s
        demo more of every attribute. With ``"full"`` it helped nothing
        (docs/TRAINED_CONCEALMENT.md §11).
    attribute_kinds : dict of str to str, optional
        Override the inferred kind (``"continuous"``, ``"binary"``,
        ``"categorical"``) of sensitive columns.
    validation_fraction : float, default=0.1
        Share of the fit data held out for the per-epoch validation loss. The
        encoder and decoder keep the weights of the epoch with the lowest
        validation loss, so a last epoch that diverged is undone (its record in
        ``history_`` stays; the kept epoch's says ``"kept": True``). With 0,
        the last epoch's weights are kept.
    device : str, default="auto"
        ``"auto"`` uses CUDA when available, else the CPU.
    precision : {"auto", "float32", "bfloat16"}, default="auto"
        Arithmetic of ``transform`` and ``inverse_transform`` for image models.
        ``"auto"`` computes the convolutions in bfloat16 where the hardware
        does so natively (CUDA GPUs; CPUs with AVX512-BF16 or AMX), which
        about doubles the encoding speed, and in float32 elsewhere. The
        encoder's last layer always runs in float32. Fitting measures how
        far bfloat16 moves this model's latents (``bfloat16_error_``):
        "auto" keeps float32 where that exceeds 2% of their spread (a
        concealment map can amplify rounding) and for models saved before
        the measurement existed. Tabular models always use float32.
        Training is unaffected (bfloat16 on CUDA, float32 on the CPU).
    random_state : int, optional
        Seed for initialisation, shuffling and sampling.
    verbose : int, default=0
        ``> 0`` shows a progress bar over epochs (on stderr); otherwise training is silent.

    Attributes
    ----------
    network_ : BAFONetwork
        The fitted encoder and decoder (on the CPU between calls).
    schema_ : AttributeSchema or None
        The sensitive attributes the decoder is conditioned on; ``None`` when
        fitted without ``sensitive_features`` (a plain VAE).
    input_format_ : InputFormat
    history_ : list of dict
        Per-epoch training records.
    n_features_in_ : int
        Only for 2-D ``X``.
    feature_names_in_ : ndarray of str
        Only for a DataFrame ``X`` with string column names.
    feature_mean_, feature_scale_ : ndarray of shape (n_features_in_,)
        Standardisation of tabular ``X``.
    concealment_steps_ : list
        The fitted concealment steps, in order (empty for ``"none"`` or
        without sensitive features).
    erasure_, refiner_, final_erasure_ : LinearErasure, BAFOTransformer or None
        Views of ``concealment_steps_`` in the presets' layout (first erasure,
        the refiner's model, last erasure; ``None`` where there is none),
        kept for code written before step lists.
    concealed_network_ : BAFONetwork or None
        With ``decoder_epochs > 0``: the network whose decoder was fine-tuned
        on concealed latents (its encoder is ``network_``'s).
    erased_label_map_ : ndarray of shape (n_conditions + 1, latent_dim) or None
        Least-squares map from the decoder's attribute encoding (plus an
        intercept row) to what the leading non-invertible steps (the first
        erasure) removed from the training latents, leaving out steps that
        took part in training (their output is what the decoder learned from). ``inverse_transform`` adds its prediction for the chosen
        attributes back before decoding: the typical latent signature of those
        attributes, which the erasure took out (+0.5 dB PSNR on UTKFace with
        ``"full"``, +0.7 dB with ``"linear"``).
    bfloat16_error_ : float or None
        RMS change bfloat16 makes to the latents (raw or concealed, the
        worse) as a share of their spread, measured on up to 256 fit images;
        ``precision="auto"`` uses bfloat16 only where it is at most 2%.
        ``None`` for tabular models.

    Notes
    -----
    Float image pixels are rounded to 8 bits for training and encoding (the
    training set lives on the device as uint8). Pickles and model directories
    (:meth:`save`, :func:`~bafo_pipeline.save_model`) store the fitted state
    (every attribute ending in ``_``, networks as CPU tensors) through one
    pair of methods, ``_get_state``/``_set_state``, so a model fitted on a GPU
    loads on a CPU-only machine.

    Examples
    --------
    >>> from bafo_pipeline import BAFOTransformer, make_synthetic_faces
    >>> faces = make_synthetic_faces(256, random_state=0)
    >>> bafo = BAFOTransformer(latent_dim=8, epochs=1, widths=(8, 16, 32), random_state=0)
    >>> Z = bafo.fit_transform(faces.images, sensitive_features=faces.sensitive_features)
    >>> Z.shape
    (256, 8)
    """

    __metadata_request__fit = {"sensitive_features": True}
    __metadata_request__score = {"sensitive_features": True}
    __metadata_request__transform = {"sensitive_features": True}
    __metadata_request__inverse_transform = {"sensitive_features": True}

    params_before_added = {"refine_kl_weight": 1.0}
    """What a model saved before a parameter existed was fitted with (see :func:`load_model`)."""

    _parameter_rules: dict = {
        "latent_dim": [Interval(Integral, 1, None, closed="left")],
        "image_shape": [tuple, list, None],
        "widths": [tuple, list, None],
        "condition_every_layer": ["boolean"],
        "epochs": [Interval(Integral, 0, None, closed="left")],
        "batch_size": [Interval(Integral, 2, None, closed="left")],
        "learning_rate": [Interval(Real, 0, None, closed="neither")],
        "kl_weight": [Interval(Real, 0, None, closed="left")],
        "variance_weight": [Interval(Real, 0, None, closed="left")],
        "independence_weight": [Interval(Real, 0, None, closed="left")],
        "adversary_weight": [Interval(Real, 0, None, closed="left")],
        "adversary_steps": [Interval(Integral, 1, None, closed="left")],
        "concealment": [StrOptions(set(PRESETS)), list, tuple],
        "covariance_dims": [Interval(Integral, 0, None, closed="left")],
        "decoder_epochs": [Interval(Integral, 0, None, closed="left")],
        "refine_epochs": [Interval(Integral, 1, None, closed="left")],
        "refine_adversary_weight": [Interval(Real, 0, None, closed="left")],
        "refine_kl_weight": [Interval(Real, 0, None, closed="left")],
        "attribute_kinds": [dict, None],
        "validation_fraction": [Interval(Real, 0, 1, closed="left")],
        "device": [str, torch.device],
        "precision": [StrOptions(set(PRECISIONS))],
        "random_state": ["random_state"],
        "verbose": ["verbose"],
    }

    def __init__(
        self,
        latent_dim: int = 48,
        *,
        image_shape: tuple[int, ...] | None = None,
        widths: tuple[int, ...] | None = None,
        condition_every_layer: bool = False,
        epochs: int = 20,
        batch_size: int = 32,
        learning_rate: float = 2e-3,
        kl_weight: float = 1.0,
        variance_weight: float = 1.0,
        independence_weight: float = 0.0,
        adversary_weight: float = 0.0,
        adversary_steps: int = 2,
        concealment: str = "full",
        covariance_dims: int = 0,
        decoder_epochs: int = 6,
        refine_epochs: int = 30,
        refine_adversary_weight: float = 0.3,
        refine_kl_weight: float = 1.0,
        attribute_kinds: dict | None = None,
        validation_fraction: float = 0.1,
        device: str = "auto",
        precision: str = "auto",
        random_state: int | None = None,
        verbose: int = 0,
    ):
        self.latent_dim = latent_dim
        self.image_shape = image_shape
        self.widths = widths
        self.condition_every_layer = condition_every_layer
        self.epochs = epochs
        self.batch_size = batch_size
        self.learning_rate = learning_rate
        self.kl_weight = kl_weight
        self.variance_weight = variance_weight
        self.independence_weight = independence_weight
        self.adversary_weight = adversary_weight
        self.adversary_steps = adversary_steps
        self.concealment = concealment
        self.covariance_dims = covariance_dims
        self.decoder_epochs = decoder_epochs
        self.refine_epochs = refine_epochs
        self.refine_adversary_weight = refine_adversary_weight
        self.refine_kl_weight = refine_kl_weight
        self.attribute_kinds = attribute_kinds
        self.validation_fraction = validation_fraction
        self.device = device
        self.precision = precision
        self.random_state = random_state
        self.verbose = verbose

    # ----------------------------------------------------------- parameters
    def get_params(self, deep: bool = True) -> dict:
        """Parameters; with ``deep`` and a list of concealment steps, also ``concealment__<i>`` and
        ``concealment__<i>__<param>`` (as :class:`~sklearn.pipeline.Pipeline` exposes its steps)."""
        params = super().get_params(deep=deep)
        if deep and isinstance(self.concealment, (list, tuple)):
            params.update(get_step_params("concealment", self.concealment))
        return params

    def set_params(self, **params) -> "BAFOTransformer":
        """Set parameters, including nested ones of concealment steps (``concealment__0__covariance_dims=8``)."""
        nested = {k[len("concealment__"):]: params.pop(k) for k in list(params) if k.startswith("concealment__")}
        super().set_params(**params)
        if nested:
            if not isinstance(self.concealment, (list, tuple)):
                raise ValueError(
                    f"concealment={self.concealment!r} is a named preset with no steps to address; "
                    "give concealment a list of steps to set concealment__<i>__<param>"
                )
            self.concealment = set_step_params(self.concealment, nested)
        return self

    def concealment_steps(self) -> list:
        """The (unfitted) concealment steps the current parameters describe: a named preset spelled out.

        Returns
        -------
        list
            ``[]`` for ``"none"``; ``[LinearErasure(...)]`` for ``"linear"``;
            ``[LinearErasure(...), LatentRefiner(...), LinearErasure()]`` for
            ``"full"``; ``[ConditionalTransport()]`` for ``"transport"``, followed by
            ``"full"``'s refiner and a ``LinearErasure()`` for ``"transport-refined"``;
            a list given as ``concealment`` as it is.
        """
        if isinstance(self.concealment, (list, tuple)):
            check_steps(self.concealment)
            changed = [k for k, default in PRESET_KNOBS.items() if getattr(self, k) != default]
            if changed:
                raise ValueError(
                    f"{changed} configure the named concealment presets; with a list of steps, set them on "
                    "the steps (LinearErasure(covariance_dims=...), LatentRefiner(epochs=..., adversary_weight=..., "
                    "kl_weight=...))"
                )
            return list(self.concealment)
        if self.concealment not in PRESETS:
            raise ValueError(f"concealment must be one of {list(PRESETS)} or a list of steps, got {self.concealment!r}")
        if self.concealment == "none":
            return []
        if self.concealment == "trained":
            return [TrainedErasure(covariance_dims=self.covariance_dims)]
        if self.concealment == "transport":
            return [ConditionalTransport()]
        first = LinearErasure(covariance_dims=self.covariance_dims)
        if self.concealment == "linear":
            return [first]
        refiner = LatentRefiner(
            epochs=self.refine_epochs, adversary_weight=self.refine_adversary_weight, kl_weight=self.refine_kl_weight,
            batch_size=self.batch_size, learning_rate=self.learning_rate, adversary_steps=self.adversary_steps,
            validation_fraction=self.validation_fraction,
        )
        # The final erasure's covariance_dims is spelled out so that the load check (which compares the
        # parameters a preset sets) holds it to the preset, not to whatever LinearErasure's default becomes.
        last = LinearErasure(covariance_dims=0)
        if self.concealment == "transport-refined":
            return [ConditionalTransport(), refiner, last]
        return [first, refiner, last]

    def spell_out_concealment(self) -> "BAFOTransformer":
        """Replace a named concealment preset by its list of steps, so that each step can be tuned.

        The preset's knobs (``covariance_dims``, ``refine_epochs``, ``refine_adversary_weight``,
        ``refine_kl_weight``) move into the steps and return to their defaults here, as a list of steps
        requires. The training settings the preset hands its refiner (``batch_size``, ``learning_rate``,
        ``adversary_steps``, ``validation_fraction``) are copied into the refiner step: from now on the
        refiner follows the step's values, not the estimator's. A list of steps is left as it is.

        Returns
        -------
        self : BAFOTransformer
            With ``concealment`` the list :meth:`concealment_steps` gave.

        Examples
        --------
        >>> model = BAFOTransformer(concealment="transport-refined").spell_out_concealment()
        >>> model = model.set_params(concealment__0__shrinkage=160.0)
        >>> [type(step).__name__ for step in model.concealment]
        ['ConditionalTransport', 'LatentRefiner', 'LinearErasure']
        >>> model.concealment[0].shrinkage
        160.0
        """
        steps = self.concealment_steps()
        if isinstance(self.concealment, (list, tuple)):
            return self
        return self.set_params(concealment=steps, **PRESET_KNOBS)

    def _prepared_steps(self, seed: int) -> list:
        """Unfitted copies of the concealment steps, with the estimator's device, seed and attribute kinds
        where a step leaves them at None."""
        inherited = {"attribute_kinds": self.attribute_kinds, "device": self.device, "random_state": seed}
        return [fit_ready(step, inherited) for step in self.concealment_steps()]

    # ------------------------------------------------------------------ fit
    @checks_parameters
    def fit(self, X, y=None, *, sensitive_features=None, checkpoint=None, resume: bool = False):
        """Train the encoder and decoder.

        Parameters
        ----------
        X : array-like or sequence of image paths
            A 4-D image array (NHWC or NCHW, uint8 or float in [0, 1]), a 2-D
            array (flattened images when ``image_shape`` is set, else tabular
            features), or a 1-D sequence of image file paths.
        y : None
            Ignored; present for pipeline compatibility.
        sensitive_features : DataFrame of shape (n_samples, n_attributes), optional
            The attributes to conceal, matched to ``X`` by position. Without
            them the model is a plain VAE (a non-blind baseline) and a warning
            says so. In a pipeline, enable metadata routing
            (``sklearn.set_config(enable_metadata_routing=True)``): this
            estimator requests ``sensitive_features`` by default.
        checkpoint : path, optional
            Training state is written here atomically after every epoch.
        resume : bool, default=False
            Continue from ``checkpoint`` if it exists (same data and settings;
            ``epochs`` may be raised).

        Returns
        -------
        self : BAFOTransformer
            Fitted estimator.
        """
        try:
            return self._fit(X, sensitive_features, checkpoint, resume)
        except BaseException:
            self._forget_fit()  # a failed refit must not pair one fit's input scaling with another's network
            raise

    def _fit(self, X, sensitive_features, checkpoint, resume: bool) -> BAFOTransformer:
        """The body of :meth:`fit`, which forgets a half-made fit on failure."""
        # bfloat16_error_ too: until it is measured again, the concealment is fitted on float32 latents.
        for stale in ("n_features_in_", "feature_names_in_", "feature_mean_", "feature_scale_", "bfloat16_error_"):
            self.__dict__.pop(stale, None)
        fmt = detect_format(X, self.image_shape)
        inputs = self._fit_inputs(X, fmt)
        n_samples = len(inputs)
        if n_samples < 2:
            raise ValueError(f"BAFOTransformer needs at least 2 samples to fit, got {n_samples}")
        conditions, schema = self._fit_conditions(sensitive_features, n_samples)
        seed = _seed_from(self.random_state)
        network_config = NetworkConfig(
            kind="conv" if fmt.is_image else "mlp",
            input_shape=(fmt.shape[2], fmt.shape[0], fmt.shape[1]) if fmt.is_image else fmt.shape,
            condition_dim=conditions.shape[1],
            latent_dim=self.latent_dim,
            widths=tuple(self.widths or (DEFAULT_CONV_WIDTHS if fmt.is_image else DEFAULT_MLP_WIDTHS)),
            condition_every_layer=self.condition_every_layer,
        )
        with torch.random.fork_rng(devices=[]):  # seed the initialisation without touching the global RNG
            torch.manual_seed(seed)
            network = BAFONetwork(network_config)
        config = TrainingConfig(
            epochs=self.epochs,
            batch_size=self.batch_size,
            learning_rate=self.learning_rate,
            kl_weight=self.kl_weight,
            variance_weight=self.variance_weight,
            independence_weight=self.independence_weight,
            adversary_weight=self.adversary_weight,
            adversary_steps=self.adversary_steps,
            validation_fraction=self.validation_fraction,
            seed=seed,
        )
        device = resolve_device(self.device)
        steps = self._prepared_steps(seed) if schema is not None else []
        slices = _condition_slices(schema)
        hooks = [step.training_hook(self.latent_dim, slices) for step in steps if trains_with_encoder(step)]
        trainer = Trainer(network, config, device, slices, hooks=hooks)
        with epoch_progress(self.verbose, self.epochs) as on_epoch_end:
            self.history_ = trainer.fit(
                torch.from_numpy(inputs),
                torch.from_numpy(conditions),
                checkpoint=checkpoint,
                resume=resume,
                on_epoch_end=on_epoch_end,
            )
        # Plain CPU tensors between calls: cheap to pickle, portable, and what save_model writes.
        self.network_ = trainer.network.cpu().to(memory_format=torch.contiguous_format).eval()
        self.schema_ = schema
        self.input_format_ = fmt
        self._fit_concealment(inputs, sensitive_features, steps, seed)
        self.bfloat16_error_ = self._bfloat16_error(inputs, sensitive_features)
        return self

    def _forget_fit(self) -> None:
        """Drop every fitted attribute (scikit-learn's ``name_``): the estimator is unfitted again."""
        for name in [n for n in self.__dict__ if n.endswith("_") and not n.startswith("_")]:
            del self.__dict__[name]

    def fit_transform(self, X, y=None, *, sensitive_features=None, **fit_params) -> np.ndarray:
        """Fit, then encode ``X``, passing ``sensitive_features`` to both (a ``"transport"`` model needs them
        in ``transform`` too; scikit-learn's default ``fit_transform`` would pass them to ``fit`` only).

        In a :class:`~sklearn.pipeline.Pipeline` with metadata routing, ``fit``
        and ``transform`` both request ``sensitive_features`` by default, so
        ``pipe.fit(X, y, sensitive_features=S)`` reaches both, and
        ``pipe.predict(X, sensitive_features=S)`` reaches ``transform``.

        Parameters
        ----------
        X, y, sensitive_features
            See :meth:`fit`.
        **fit_params
            ``checkpoint`` and ``resume`` (see :meth:`fit`).

        Returns
        -------
        Z : ndarray of shape (n_samples, n_features_out), float32
        """
        self.fit(X, y, sensitive_features=sensitive_features, **fit_params)
        return self.transform(X, sensitive_features=sensitive_features)

    def fit_concealment(self, X, *, sensitive_features):
        """Refit only the concealment steps (per the current ``concealment`` parameters), keeping the encoder.

        Use it to compare concealment settings on one trained encoder, e.g.
        ``model.set_params(concealment="linear").fit_concealment(X, sensitive_features=S)``.

        Parameters
        ----------
        X : array-like or sequence of image paths
            Training data, in the fitted form.
        sensitive_features : DataFrame
            Must hold the fitted schema's columns.

        Returns
        -------
        self : BAFOTransformer
        """
        check_is_fitted(self)
        if self.schema_ is None:
            raise ValueError("this model was fitted without sensitive features; there is nothing to conceal")
        inputs = np.concatenate([batch for _, batch in self._encode_batches(X, self.input_format_, 1024)])
        frame = self._sensitive_frame(sensitive_features, len(inputs), broadcast=False)
        seed = _seed_from(self.random_state)
        self.__dict__.pop("bfloat16_error_", None)  # fit on float32 latents; measured again below
        self._fit_concealment(inputs, frame, self._prepared_steps(seed), seed)
        self.bfloat16_error_ = self._bfloat16_error(inputs, frame)
        return self

    def _fit_concealment(self, inputs: np.ndarray, sensitive_features, steps: list, seed: int) -> None:
        """Fit ``steps`` in turn on the training latents, then the decode-side repairs (label map, decoder).

        All or nothing: if any part fails or is interrupted, no step stays fitted, so that
        :meth:`transform` refuses to encode rather than serve a part of the concealment.
        """
        self.concealment_steps_, self.erased_label_map_, self.concealed_network_ = [], None, None
        if self.schema_ is None or not steps:
            return
        try:
            self._fit_concealment_steps(inputs, sensitive_features, steps, seed)
        except BaseException:
            self.concealment_steps_, self.erased_label_map_, self.concealed_network_ = [], None, None
            raise

    def _fit_concealment_steps(self, inputs: np.ndarray, sensitive_features, steps: list, seed: int) -> None:
        """The body of :meth:`_fit_concealment`, which undoes it on failure."""
        frame = as_sensitive_frame(sensitive_features, n_rows=len(inputs))
        means = self._encoder_means(inputs)
        conditions = self.schema_.encode(frame)
        row_keys = _row_keys(inputs, steps)
        # Decoding passes the steps before the first invertible one (erasure); the label map puts back what
        # they removed, as far as the chosen attributes predict it, except what steps that took part in
        # training removed: the decoder learned from their output.
        leading = next((i for i, step in enumerate(steps) if is_invertible(step)), len(steps))
        trained = next((i for i, step in enumerate(steps) if not decoder_learned_output(step)), len(steps))
        latents = decoded_from = means
        for i, step in enumerate(steps):
            latents = _step_transform(step.fit(latents, sensitive_features=frame), latents, frame, row_keys)
            self.concealment_steps_.append(step)
            if i + 1 == trained:
                decoded_from = latents
            if i + 1 == leading and leading > trained:
                self.erased_label_map_ = _least_squares_map(conditions, decoded_from - latents)
        if self.decoder_epochs and not all(inverts_exactly(step) for step in steps):
            # (Steps that all invert exactly decode through their inverses and the encoder's own decoder.)
            if self._n_features_out != self.latent_dim:
                raise ValueError(
                    f"decoder_epochs={self.decoder_epochs} fine-tunes the decoder on the concealed latents, but the "
                    f"steps change their size ({self.latent_dim} -> {self._n_features_out}); set decoder_epochs=0"
                )
            network = copy.deepcopy(self.network_)  # only its decoder is fine-tuned
            with epoch_progress(self.verbose, self.decoder_epochs, "fitting decoder") as on_epoch_end:
                network.decoder = fit_decoder(
                    network.decoder, torch.from_numpy(np.asarray(latents, dtype=np.float32)),  # the steps' output
                    torch.from_numpy(conditions), torch.from_numpy(np.ascontiguousarray(inputs)),
                    epochs=self.decoder_epochs, batch_size=self.batch_size, learning_rate=self.learning_rate,
                    device=resolve_device(self.device), seed=seed, on_epoch_end=on_epoch_end,
                )
            self.concealed_network_ = network.eval()

    def _encoder_means(self, inputs: np.ndarray, batch_size: int = 1024) -> np.ndarray:
        """Posterior means of preprocessed inputs (uint8 NCHW images or standardised features)."""
        # Images go through the encoder transform uses, so the concealment is fitted on the very
        # means it will be applied to.
        encode = self._image_encoder(conceal=False) if self.input_format_.is_image else self._encode
        return np.concatenate([encode(inputs[start : start + batch_size]) for start in range(0, len(inputs), batch_size)])

    def _encode(self, batch, *, sample: bool = False, generator: torch.Generator | None = None) -> np.ndarray:
        """Posterior means (or draws) of one preprocessed batch: uint8 NCHW images (array or
        tensor, on any device) or standardised features."""
        network, device, bf16 = self._inference_network()
        with torch.inference_mode(), autocast(device, bf16):
            mean, logvar = network.encode(network_input(batch, device))
            if sample:
                noise = torch.randn(mean.shape, generator=generator, device=device)
                mean = mean + noise * torch.exp(0.5 * logvar)
        return mean.float().cpu().numpy()

    def encode_images(self, images, *, sensitive_features=None, conceal: bool = True) -> np.ndarray:
        """Latents of a batch of decoded images: the fast path of exports and batch jobs.

        Unlike :meth:`transform`, no input form is detected and nothing is
        copied or re-checked per pixel: the batch is taken as the network
        takes it. Like :meth:`transform`, it runs one network from pixels to
        concealed latents: the concealment steps that describe themselves as
        layers (``as_layers()``: :class:`LinearErasure`, :class:`LatentRefiner`)
        are folded into the encoder, made once per fitted concealment; on
        the CPU it encodes 64 images at a time, so a row's latent does not
        depend on the batch it came in. Steps that need the attributes
        (``"transport"``) run after the network, on these rows' attributes.

        Parameters
        ----------
        images : ndarray or Tensor of shape (n, C, H, W), uint8
            Decoded to the fitted size and channel count; a NumPy array (any
            strides, e.g. an NCHW view of NHWC pixels) or a tensor, possibly
            already on the estimator's device.
        sensitive_features : DataFrame of shape (n, n_attributes), optional
            The images' attributes, in order; required when a concealment step
            needs them (:attr:`needs_sensitive_features_to_transform`), ignored
            otherwise.
        conceal : bool, default=True
            Apply the fitted concealment steps (see :meth:`transform`).

        Returns
        -------
        Z : ndarray of shape (n, latent_dim), float32
        """
        check_is_fitted(self)
        if not self.input_format_.is_image:
            raise ValueError("encode_images needs an image model; this one was fitted on tabular data")
        height, width, channels = self.input_format_.shape
        if images.dtype not in (np.uint8, torch.uint8) or tuple(images.shape[1:]) != (channels, height, width):
            raise ValueError(
                f"expected uint8 images of shape (n, {channels}, {height}, {width}), "
                f"got {images.dtype} {tuple(images.shape)}"
            )
        frame = self._transform_frame(sensitive_features, images, conceal=conceal)
        latents = self._image_encoder(conceal=conceal)(images)
        return self._conceal_after_network(latents, frame, images, conceal=conceal)

    def encoder_bundle(self) -> EncoderBundle:
        """What :meth:`encode_images` runs, as a small picklable object that encodes with torch alone.

        For workers that only encode (the actors of a Ray export): the folded network
        (concealment included) as architecture and float32 weights, the input size, the
        ``precision`` setting with its measured bfloat16 error, and what an export
        records about the model. ``bundle.encoder(device)`` rebuilds the network without
        scikit-learn or this estimator, and its latents are bit for bit those of
        :meth:`encode_images` on the same device and precision.

        Returns
        -------
        EncoderBundle

        Raises
        ------
        ValueError
            For a tabular model, when a concealment step cannot be folded into the
            network (it has no ``as_layers()``), or when one needs each row's
            sensitive attributes (``"transport"``): such steps need the estimator.
        """
        check_is_fitted(self)
        if not self.input_format_.is_image:
            raise ValueError("encoder_bundle needs an image model; this one was fitted on tabular data")
        steps = self._concealment_steps()
        for i, step in enumerate(steps):
            if needs_attributes_to_transform(step):
                raise ValueError(
                    f"concealment step {i} ({type(step).__name__}) needs each row's sensitive attributes to transform, "
                    "which a torch-only encoder bundle cannot take: the estimator itself must encode "
                    "(transform or encode_images with sensitive_features=...)"
                )
        layers, n_folded = foldable_layers(steps)
        if n_folded < len(steps):
            raise ValueError(
                f"concealment step {n_folded} ({type(steps[n_folded]).__name__}) has no as_layers(): it cannot be "
                "folded into the network, so encoding needs the estimator itself"
            )
        return EncoderBundle.of(fold_encoder(self.network_, layers), image_shape=self.input_format_.shape,
                                precision=self.precision, bfloat16_error=getattr(self, "bfloat16_error_", None),
                                metadata=describe_model(self))

    def inference_settings(self) -> InferenceSettings:
        """The device :meth:`transform` and :meth:`encode_images` run on, and their arithmetic.

        Returns
        -------
        InferenceSettings
            ``device`` (a ``torch.device``, ``"auto"`` resolved) and
            ``precision`` (``"bfloat16"`` or ``"float32"``, ``"auto"``
            resolved for this model on this device).
        """
        check_is_fitted(self)
        device = resolve_device(self.device)
        return InferenceSettings(device, "bfloat16" if self._uses_bfloat16(device) else "float32")

    def _uses_bfloat16(self, device: torch.device) -> bool:
        measured = getattr(self, "bfloat16_error_", None)
        return uses_bfloat16(self.precision, device, self.network_, measured_error=measured)

    def _image_encoder(self, *, conceal: bool = True) -> TorchEncoder:
        """The folded network from uint8 images to (concealed) latents on the estimator's device, in the
        arithmetic ``precision`` resolves to; made once, rebuilt when the concealment is refitted.

        The leading steps with ``as_layers()`` are folded into the network; the attribute-free ones after them
        run on its output. From the first step that needs the attributes or the rows' identities on, the steps
        are not part of it: :meth:`_conceal_after_network` runs them.
        """
        device = resolve_device(self.device)
        bfloat16 = self._uses_bfloat16(device)
        steps = self._concealment_steps()[: self._n_network_steps()] if conceal else []

        def build() -> TorchEncoder:
            return self._folded_encoder(steps, device, bfloat16)

        return cached_encoder(self.network_, (str(device), bfloat16, bool(steps)), steps, build)

    def _folded_encoder(self, steps: list, device: torch.device, bfloat16: bool) -> TorchEncoder:
        layers, n_folded = foldable_layers(steps)
        after = [step.transform for step in steps[n_folded:]]
        return TorchEncoder(fold_encoder(self.network_, layers), device, bfloat16, after=after)

    def _n_network_steps(self) -> int:
        """How many leading fitted steps the image encoder runs: those before the first that needs attributes
        or each row's identity (a step drawing per image must be keyed on its pixels, not on its latents)."""
        steps = self._concealment_steps()
        return next((i for i, step in enumerate(steps) if needs_attributes_to_transform(step) or needs_row_keys(step)),
                    len(steps))

    def _conceal_after_network(self, latents: np.ndarray, frame: pd.DataFrame | None, inputs, *,
                               conceal: bool) -> np.ndarray:
        """The concealment steps the image encoder leaves out (from the first that needs attributes or row keys on);
        ``inputs``: the rows' images, whose hashes the steps that draw per row need."""
        rest = self._concealment_steps()[self._n_network_steps() :] if conceal else []
        row_keys = _row_keys(inputs, rest)
        for step in rest:
            latents = _step_transform(step, latents, frame, row_keys)
        return np.asarray(latents).astype(np.float32, copy=False)

    def _bfloat16_error(self, inputs: np.ndarray, sensitive_features=None, n_images: int = 256) -> float | None:
        """How far bfloat16 moves the latents (raw or concealed, the worse), as RMS over their spread.

        Measured on up to ``n_images`` fit images spread over the set (with their attributes, for steps that
        need them); ``None`` for tabular models.
        """
        if not self.input_format_.is_image:
            return None
        rows = np.arange(0, len(inputs), max(1, len(inputs) // n_images))[:n_images]
        sample = inputs[rows]
        frame = None
        if sensitive_features is not None and self.schema_ is not None:
            frame = as_sensitive_frame(sensitive_features, n_rows=len(inputs)).iloc[rows].reset_index(drop=True)
        device = resolve_device(self.device)
        errors = []
        for conceal in (False, True):
            steps = self._concealment_steps()[: self._n_network_steps()] if conceal else []
            exact = self._folded_encoder(steps, device, bfloat16=False)(sample)
            rounded = self._folded_encoder(steps, device, bfloat16=True)(sample)
            exact = self._conceal_after_network(exact, frame, sample, conceal=conceal)
            rounded = self._conceal_after_network(rounded, frame, sample, conceal=conceal)
            spread = exact.std()
            errors.append(float(np.sqrt(np.mean((exact - rounded) ** 2)) / spread) if spread > 0 else np.inf)
        return max(errors)

    def _concealment_steps(self) -> list:
        """The fitted concealment steps in order; raises where concealment is promised but not fitted."""
        steps = list(getattr(self, "concealment_steps_", None) or [])
        if not steps and self.schema_ is not None and self.concealment_steps():
            # Never hand out unconcealed latents under a setting that promises concealment.
            raise ValueError(
                f"concealment={self.concealment!r} is set but its steps are not fitted; "
                "call fit_concealment(X, sensitive_features=...) first"
            )
        return steps

    def _conceal(self, means: np.ndarray, frame: pd.DataFrame | None, inputs) -> np.ndarray:
        """Apply the fitted concealment steps to posterior means; ``frame``: their rows' attributes, and
        ``inputs``: the rows' preprocessed inputs (hashed for the steps that draw per row), for the steps that
        need them."""
        steps = self._concealment_steps()
        latents, row_keys = means, _row_keys(inputs, steps)
        for step in steps:
            latents = _step_transform(step, latents, frame, row_keys)
        return np.asarray(latents).astype(np.float32, copy=False)

    @property
    def needs_sensitive_features_to_transform(self) -> bool:
        """Whether concealed encoding (:meth:`transform`, :meth:`iter_transform`, :meth:`encode_images`)
        needs each row's ``sensitive_features``: a fitted concealment step needs them (``"transport"``).
        Before fit, whether the configured steps would. Encoding with ``conceal=False`` never needs them."""
        if hasattr(self, "network_"):
            steps = self.concealment_steps_
        elif isinstance(self.concealment, (list, tuple)):
            steps = self.concealment  # as given: fit checks that they are steps
        else:
            steps = self.concealment_steps() if self.concealment in PRESETS else []  # fit names a wrong one
        return any(needs_attributes_to_transform(step) for step in steps)

    @property
    def draws_per_input(self) -> bool:
        """Whether a fitted concealment step draws per input row (:class:`KeyedNoise`): its noise follows each
        image's decoded pixels, so every export of the image must decode it the same way (with Pillow)."""
        return any(needs_row_keys(step) for step in getattr(self, "concealment_steps_", None) or [])

    def _transform_frame(self, sensitive_features, X, *, conceal: bool) -> pd.DataFrame | None:
        """The rows' attributes where a concealment step needs them (checked against the schema and row count);
        None where none does (attributes given anyway are ignored: pipelines route them to every transform)."""
        if not conceal:
            return None
        steps = self._concealment_steps()
        needing = [type(step).__name__ for step in steps if needs_attributes_to_transform(step)]
        if not needing:
            return None
        if sensitive_features is None:
            raise ValueError(
                f"concealment={_setting_name(self.concealment)!r} moves each attribute group's latents by that group's "
                f"own map ({', '.join(needing)}), so encoding needs every row's sensitive attributes: pass "
                f"sensitive_features with columns {self.schema_.names} (or conceal=False for the raw, leaking latents)"
            )
        return self._sensitive_frame(sensitive_features, _n_rows(X), broadcast=False)

    def _mean_layers(self) -> list[Layer]:
        """A fitted tabular model's ``transform`` as layers (float64): standardisation, MLP mean path,
        then its concealment steps (what :meth:`LatentRefiner.as_layers` folds)."""
        if self.input_format_.is_image:
            raise ValueError("only a tabular model's transform is described as layers; image models fold them")
        steps = self._concealment_steps()
        layers, n_folded = foldable_layers(steps)
        if n_folded < len(steps):
            raise ValueError(f"a {type(steps[n_folded]).__name__} step cannot be described as layers")
        standardise = AffineMap.standardisation(self.feature_mean_, self.feature_scale_)
        return [standardise, *mlp_mean_layers(self.network_), *layers]

    # Views of concealment_steps_ in the presets' layout, for code written before step lists.
    @property
    def erasure_(self) -> LinearErasure | None:
        steps = self.concealment_steps_
        return steps[0] if steps and isinstance(steps[0], LinearErasure) else None

    @property
    def refiner_(self) -> "BAFOTransformer | None":
        return next((step.model_ for step in self.concealment_steps_ if isinstance(step, LatentRefiner)), None)

    @property
    def final_erasure_(self) -> LinearErasure | None:
        steps = self.concealment_steps_
        return steps[-1] if len(steps) > 1 and isinstance(steps[-1], LinearErasure) else None

    def _fit_inputs(self, X, fmt: InputFormat) -> np.ndarray:
        """All fit inputs in memory: uint8 NCHW images or standardised float32 features."""
        if fmt.kind == "tabular":
            X = validate_data(self, X, dtype=np.float32, ensure_min_samples=2)
            self.feature_mean_ = X.mean(axis=0)
            self.feature_scale_ = X.std(axis=0)
            self.feature_scale_[self.feature_scale_ == 0] = 1.0
            return (X - self.feature_mean_) / self.feature_scale_
        if fmt.kind == "flat_image":
            validate_data(self, X, dtype=None, ensure_min_samples=2)
        chunks = [images for _, images in image_batches_uint8(X, fmt, batch_size=1024)]
        if not chunks:
            raise ValueError("X holds no images")
        return np.concatenate(chunks)

    def _fit_conditions(self, sensitive_features, n_samples: int) -> tuple[np.ndarray, AttributeSchema | None]:
        if sensitive_features is None:
            warnings.warn(
                "BAFOTransformer fitted without sensitive_features: this is a plain VAE and its latents "
                "are not blind to anything. Pass sensitive_features= (with metadata routing in pipelines).",
                UserWarning,
                stacklevel=4,
            )
            return np.zeros((n_samples, 0), dtype=np.float32), None
        frame = as_sensitive_frame(sensitive_features, n_rows=n_samples)
        schema = AttributeSchema.infer(frame, kinds=self.attribute_kinds)
        return schema.encode(frame), schema

    # ------------------------------------------------------------ transform
    def transform(self, X, *, sensitive_features=None, sample: bool = False, conceal: bool = True) -> np.ndarray:
        """Encode ``X`` to latents.

        Parameters
        ----------
        X : array-like or sequence of image paths
            In the form the estimator was fitted on; an image model also
            accepts image paths (decoded to the fitted size).
        sensitive_features : DataFrame of shape (n_samples, n_attributes), optional
            Each row's attributes, matched to ``X`` by position. Required when a
            concealment step needs them (``"transport"``; see
            :attr:`needs_sensitive_features_to_transform`); otherwise accepted and
            ignored (pipelines with metadata routing pass them to every transform).
        sample : bool, default=False
            Draw from the posterior instead of returning its mean (the mean is
            deterministic and is what downstream models should use). Draws are
            reproducible for an integer ``random_state``.
        conceal : bool, default=True
            Apply the fitted concealment steps. ``False`` returns the raw
            encoder output, which leaks; it exists to audit what the
            concealment removed.

        Returns
        -------
        Z : ndarray of shape (n_samples, latent_dim), float32
        """
        check_is_fitted(self)
        parts = [latents for _, latents in self.iter_transform(
            X, sensitive_features=sensitive_features, sample=sample, conceal=conceal)]
        return np.concatenate(parts) if parts else np.zeros((0, self._n_features_out), np.float32)

    def iter_transform(
        self, X, *, sensitive_features=None, batch_size: int = 1024, sample: bool = False, conceal: bool = True
    ):
        """Encode in batches, yielding ``(row_indices, latents)``; memory stays bounded.

        Used for exports of datasets larger than memory: image paths are
        decoded one batch at a time.

        Parameters
        ----------
        X : array-like or sequence of image paths
        sensitive_features : DataFrame, optional
            See :meth:`transform`; each batch gets its rows.
        batch_size : int, default=1024
        sample, conceal : bool
            See :meth:`transform`.

        Yields
        ------
        row_indices : ndarray of int
            Positions in ``X``.
        latents : ndarray of shape (len(row_indices), latent_dim), float32
        """
        check_is_fitted(self)
        frame = self._transform_frame(sensitive_features, X, conceal=conceal)

        def rows(indices):
            return None if frame is None else frame.iloc[indices].reset_index(drop=True)

        if self.input_format_.is_image and not sample:
            for indices, batch in self._encode_batches(X, self.input_format_, batch_size):
                latents = self._image_encoder(conceal=conceal)(batch)
                yield indices, self._conceal_after_network(latents, rows(indices), batch, conceal=conceal)
            return
        device = resolve_device(self.device)
        generator = torch.Generator(device=device).manual_seed(_seed_from(self.random_state))
        for indices, batch in self._encode_batches(X, self.input_format_, batch_size):
            means = self._encode(batch, sample=sample, generator=generator)
            yield indices, self._conceal(means, rows(indices), batch) if conceal else means

    def _encode_batches(self, X, fmt: InputFormat, batch_size: int):
        if fmt.kind == "tabular":
            X = validate_data(self, X, dtype=np.float32, reset=False)
            X = (X - self.feature_mean_) / self.feature_scale_
            for start in range(0, len(X), batch_size):
                yield np.arange(start, min(start + batch_size, len(X))), X[start : start + batch_size]
            return
        if fmt.kind == "flat_image" and not _paths_like(X):
            validate_data(self, X, dtype=None, reset=False)
        yield from image_batches_uint8(X, fmt, batch_size)

    def _inference_network(self, network: BAFONetwork | None = None) -> tuple[BAFONetwork, torch.device, bool]:
        """``(network, device, bfloat16)``: ``network`` (default: the fitted one) ready for inference on the
        estimator's device."""
        device = resolve_device(self.device)
        return inference_network(self.network_ if network is None else network, device), device, self._uses_bfloat16(device)

    def inverse_transform(self, X, *, sensitive_features=None, conceal: bool = True) -> np.ndarray:
        """Decode latents into images (or features) with chosen attributes.

        Parameters
        ----------
        X : array-like of shape (n_samples, latent_dim)
            Latents, e.g. from :meth:`transform`.
        sensitive_features : DataFrame or mapping
            The attributes to decode with: one row per latent, or a mapping
            whose scalar values apply to every row
            (``{"age": 40, "gender": "female"}``; sequences in the mapping give
            one value per row). Fractions are allowed: ``gender=0.5`` for a
            neutral decode, ``{"ethnicity": {"asian": 0.5, "white": 0.5}}`` for
            a mixture. Attributes a mapping leaves out decode at their neutral
            value (the mean age, gender 0.5, an even mix of categories).
            Required when the model was fitted with sensitive features.
            A concealment that needs the attributes to transform (``"transport"``)
            is undone with them: pass each latent's own row (exact categories,
            no fractions or mixtures) to get back its encoder latent and decode it
            as the unconcealed model would.
        conceal : bool, default=True
            Whether ``X`` went through the concealment steps. ``False``: ``X`` are
            the encoder's own latents (``transform(..., conceal=False)``), decoded
            by the encoder's own decoder with nothing undone; with a concealment
            that inverts exactly (``"transport"``) that is what its inverse gives
            back, so faces can be redrawn with chosen attributes without their
            own (what ``bafo decode`` and ``bafo grid`` do for such models).

        Returns
        -------
        X_original : ndarray
            In the fitted input form: images ``(n, H, W, C)`` (or NCHW, or
            flattened) as uint8 or float in [0, 1]; tabular features in their
            original units.
        """
        check_is_fitted(self)
        latent_dim = self._n_features_out if conceal else self.latent_dim
        Z = np.asarray(X, dtype=np.float32)
        if Z.ndim != 2 or Z.shape[1] != latent_dim:
            raise ValueError(f"expected latents of shape (n, {latent_dim}), got {Z.shape}")
        if not np.isfinite(Z).all():
            raise ValueError(f"latents contain NaN or infinite values (row {int(np.argmax(~np.isfinite(Z).all(1)))})")
        frame = self._sensitive_frame(sensitive_features, len(Z), broadcast=True)
        conditions = self._encode_conditions(frame, len(Z), allow_fractional=True)
        concealed_network = getattr(self, "concealed_network_", None) if conceal else None
        if conceal and concealed_network is None:
            # Back through the invertible steps (the refiner's decoder); erasure is not invertible and is passed.
            for step in reversed(getattr(self, "concealment_steps_", None) or []):
                if is_invertible(step):
                    Z = np.asarray(step.inverse_transform(Z, sensitive_features=frame)).astype(np.float32)
            label_map = getattr(self, "erased_label_map_", None)
            if label_map is not None:  # put back what the erasure removed, as far as the attributes predict it
                Z = (Z + conditions @ label_map[:-1] + label_map[-1]).astype(np.float32)
        network, device, bf16 = self._inference_network(concealed_network)
        decoded = []
        with torch.inference_mode(), autocast(device, bf16):
            for start in range(0, len(Z), 1024) or [0]:  # one (empty) batch gives an empty result its shape
                z = torch.from_numpy(Z[start : start + 1024]).to(device)
                c = torch.from_numpy(conditions[start : start + 1024]).to(device)
                decoded.append(network.decode(z, c).float().cpu().numpy())
        decoded = np.concatenate(decoded)
        if self.input_format_.is_image:
            return from_unit_nchw(decoded, self.input_format_)
        return decoded * self.feature_scale_ + self.feature_mean_

    def _sensitive_frame(self, sensitive_features, n_samples: int, *, broadcast: bool) -> pd.DataFrame | None:
        """Check ``sensitive_features`` against the fitted schema and row count; a DataFrame or None."""
        if self.schema_ is None:
            if sensitive_features is not None:
                raise ValueError("this model was fitted without sensitive features; do not pass any")
            return None
        if sensitive_features is None:
            raise ValueError(
                f"sensitive_features are required: this model's decoder is conditioned on {self.schema_.names}"
            )
        if broadcast and isinstance(sensitive_features, Mapping):
            unknown = sorted(set(sensitive_features) - set(self.schema_.names), key=str)
            if unknown:
                raise ValueError(f"unknown attribute(s) {unknown}; this model is conditioned on {self.schema_.names}")
            neutral = {a.name: a.neutral() for a in self.schema_.attributes if a.name not in sensitive_features}
            return _broadcast({**sensitive_features, **neutral}, n_samples)
        return as_sensitive_frame(sensitive_features, n_rows=n_samples)

    def _encode_conditions(self, frame: pd.DataFrame | None, n_samples: int, *, allow_fractional: bool) -> np.ndarray:
        if frame is None:
            return np.zeros((n_samples, 0), dtype=np.float32)
        return self.schema_.encode(frame, allow_fractional=allow_fractional)

    # ---------------------------------------------------------------- score
    def score(self, X, y=None, *, sensitive_features=None) -> float:
        """Negative ELBO per sample (higher is better), for model selection without labels.

        The ELBO here is the unweighted one (squared reconstruction error plus
        the full KL term, with posterior-mean decoding), so models with
        different ``kl_weight`` compare on the same scale.

        Parameters
        ----------
        X : array-like or sequence of image paths
        y : None
            Ignored.
        sensitive_features : DataFrame, optional
            One row per sample; required when the model was fitted with
            sensitive features.

        Returns
        -------
        score : float
        """
        check_is_fitted(self)
        frame = self._sensitive_frame(sensitive_features, _n_rows(X), broadcast=False)
        network, device, _ = self._inference_network()  # float32: scores must compare across machines
        total, count = 0.0, 0
        for indices, batch in self._encode_batches(X, self.input_format_, 1024):
            x = network_input(batch, device)
            rows = None if frame is None else frame.iloc[indices]
            c = torch.from_numpy(self._encode_conditions(rows, len(x), allow_fractional=False)).to(device)
            with torch.inference_mode():
                mean, logvar = network.encode(x)
                terms = vae_loss_terms(x, network.decode(mean, c), mean, logvar)
                total += float((terms["reconstruction"] + terms["kl_mean"] + terms["kl_variance"]).sum())
            count += len(x)
        return -total / max(count, 1)

    @property
    def _n_features_out(self) -> int:
        # Raises AttributeError before fit, so get_feature_names_out reports "not fitted".
        steps = getattr(self, "concealment_steps_", None)
        if steps:
            return len(steps[-1].get_feature_names_out())
        return self.network_.config.latent_dim

    # ---------------------------------------------------------- persistence
    def _get_state(self) -> dict:
        """The fitted state (every attribute ending in ``_``), networks as CPU tensors: what pickles and
        model directories store."""
        return get_state(self)

    def _set_state(self, state: dict) -> None:
        """Inverse of :meth:`_get_state`."""
        set_state(self, state)

    def __getstate__(self) -> dict:
        # Copy the state first: on Python >= 3.11 object.__getstate__ returns the live __dict__.
        state = dict(super().__getstate__())
        fitted = self._get_state()
        for name in fitted:
            state.pop(name)
        state["_fitted_state"] = fitted
        return state

    def __setstate__(self, state: dict) -> None:
        state = dict(state)
        fitted = state.pop("_fitted_state", {})
        config, weights = state.pop("_network_config", None), state.pop("_network_state", None)
        if config is not None:  # a pickle of bafo-pipeline 0.1.0
            fitted["network_"] = NetworkState(config, weights)
        super().__setstate__(state)
        self._set_state(fitted)

    def save(self, path, *, overwrite: bool = False, metadata: dict | None = None):
        """Write this fitted estimator to a model directory; see :func:`~bafo_pipeline.save_model`."""
        return save_model(self, path, overwrite=overwrite, metadata=metadata)

    @classmethod
    def load(cls, path, *, device: str | None = None) -> "BAFOTransformer":
        """Read a model directory; see :func:`~bafo_pipeline.load_model`."""
        model = load_model(path, device=device)
        if not isinstance(model, cls):
            raise TypeError(f"{path} holds a {type(model).__name__}, not a {cls.__name__}")
        return model

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.transformer_tags.preserves_dtype = ["float32"]
        tags.non_deterministic = False
        return tags


@register_loadable
class LatentRefiner(ClassNamePrefixFeaturesOutMixin, TransformerMixin, BaseEstimator):
    """A concealment step: re-encode latents through a second, adversarially trained conditional VAE.

    A tabular :class:`BAFOTransformer` (MLP encoder and decoder) is fitted on
    the latents with the sensitive features, with an ensemble of adversaries
    pushing its own latent to leave them confused; ``transform`` returns its
    posterior mean, ``inverse_transform`` decodes back towards the input
    latents with chosen attributes. Between two :class:`LinearErasure` steps
    it is ``concealment="full"``.

    Parameters
    ----------
    epochs : int, default=30
    adversary_weight : float, default=0.3
    latent_dim : int, optional
        Size of its output; ``None`` keeps the size of its input.
    kl_weight : float, default=1.0
    batch_size : int, default=256
    learning_rate : float, default=1e-3
    adversary_steps : int, default=2
    validation_fraction : float, default=0.1
        See :class:`BAFOTransformer`.
    attribute_kinds : dict, optional
    device : str, optional
    random_state : int, optional
        ``None``: inside a :class:`BAFOTransformer`, the estimator's attribute
        kinds, device and seed; on its own, inferred kinds, ``"auto"`` and a
        random seed.
    verbose : int, default=0

    Attributes
    ----------
    model_ : BAFOTransformer
        The fitted tabular model.
    n_features_in_ : int
    """

    __metadata_request__fit = {"sensitive_features": True}
    __metadata_request__inverse_transform = {"sensitive_features": True}

    _parameter_rules: dict = {
        "epochs": [Interval(Integral, 1, None, closed="left")],
        "adversary_weight": [Interval(Real, 0, None, closed="left")],
        "latent_dim": [Interval(Integral, 1, None, closed="left"), None],
        "kl_weight": [Interval(Real, 0, None, closed="left")],
        "batch_size": [Interval(Integral, 2, None, closed="left")],
        "learning_rate": [Interval(Real, 0, None, closed="neither")],
        "adversary_steps": [Interval(Integral, 1, None, closed="left")],
        "validation_fraction": [Interval(Real, 0, 1, closed="left")],
        "attribute_kinds": [dict, None],
        "device": [str, torch.device, None],
        "random_state": ["random_state"],
        "verbose": ["verbose"],
    }

    def __init__(
        self,
        *,
        epochs: int = 30,
        adversary_weight: float = 0.3,
        latent_dim: int | None = None,
        kl_weight: float = 1.0,
        batch_size: int = 256,
        learning_rate: float = 1e-3,
        adversary_steps: int = 2,
        validation_fraction: float = 0.1,
        attribute_kinds: dict | None = None,
        device: str | None = None,
        random_state: int | None = None,
        verbose: int = 0,
    ):
        self.epochs = epochs
        self.adversary_weight = adversary_weight
        self.latent_dim = latent_dim
        self.kl_weight = kl_weight
        self.batch_size = batch_size
        self.learning_rate = learning_rate
        self.adversary_steps = adversary_steps
        self.validation_fraction = validation_fraction
        self.attribute_kinds = attribute_kinds
        self.device = device
        self.random_state = random_state
        self.verbose = verbose

    @checks_parameters
    def fit(self, X, y=None, *, sensitive_features=None):
        """Train the refiner on latents ``X`` (n, d) with the attributes they should not reveal.

        Returns
        -------
        self : LatentRefiner
        """
        if sensitive_features is None:
            raise ValueError("LatentRefiner needs sensitive_features at fit time (with metadata routing in pipelines)")
        X = validate_data(self, X, dtype=np.float32, ensure_min_samples=2)
        self.model_ = BAFOTransformer(
            latent_dim=self.latent_dim or X.shape[1], epochs=self.epochs, batch_size=self.batch_size,
            learning_rate=self.learning_rate, kl_weight=self.kl_weight, adversary_weight=self.adversary_weight,
            adversary_steps=self.adversary_steps, attribute_kinds=self.attribute_kinds, concealment="none",
            validation_fraction=self.validation_fraction, device=self.device or "auto",
            random_state=self.random_state, verbose=self.verbose,
        ).fit(X, sensitive_features=sensitive_features)
        return self

    def transform(self, X) -> np.ndarray:
        """The refiner's posterior means of latents ``X``; needs no attributes."""
        check_is_fitted(self)
        return self.model_.transform(X)

    def inverse_transform(self, X, *, sensitive_features=None) -> np.ndarray:
        """Decode refined latents back towards the refiner's input, with the given attributes."""
        check_is_fitted(self)
        return self.model_.inverse_transform(X, sensitive_features=sensitive_features)

    def as_layers(self) -> list[Layer]:
        """The fitted refiner's ``transform`` as layers, for folding into an image encoder.

        Returns
        -------
        list of AffineMap and nn.SiLU
            Its standardisation, then its MLP encoder up to the posterior mean
            (float64; see :mod:`bafo_pipeline._nn.folding`).
        """
        check_is_fitted(self)
        return self.model_._mean_layers()

    @property
    def _n_features_out(self) -> int:
        return self.model_._n_features_out

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.transformer_tags.preserves_dtype = ["float32"]
        tags.non_deterministic = False
        return tags


register_loadable(LinearErasure)
register_loadable(TrainedErasure)


def _step_transform(step, latents: np.ndarray, frame: pd.DataFrame | None, row_keys=None) -> np.ndarray:
    """``step.transform(latents)``, with the rows' attributes and identities for a step that needs them."""
    extra = {}
    if needs_attributes_to_transform(step):
        extra["sensitive_features"] = frame
    if needs_row_keys(step):
        extra["row_keys"] = row_keys
    return step.transform(latents, **extra)


def _row_keys(inputs, steps) -> list[bytes] | None:
    """Each input row's identity for the steps that draw per row (``needs_row_keys``): a hash of its bytes (an
    image's decoded uint8 pixels, a tabular row's standardised float32 values); ``None`` when no step needs it."""
    if not any(needs_row_keys(step) for step in steps):
        return None
    rows = inputs.cpu().numpy() if isinstance(inputs, torch.Tensor) else np.asarray(inputs)
    rows = np.ascontiguousarray(rows, dtype="<f4" if rows.dtype.kind == "f" else None).reshape(len(rows), -1)
    return [hashlib.blake2b(row.tobytes(), digest_size=32).digest() for row in rows]


def _setting_name(concealment) -> str:
    return concealment if isinstance(concealment, str) else "steps"


def _least_squares_map(conditions: np.ndarray, target: np.ndarray) -> np.ndarray:
    """``W`` of shape ``(n_conditions + 1, n_targets)`` minimising ``|[conditions, 1] @ W - target|``."""
    design = np.hstack([conditions.astype(np.float64), np.ones((len(conditions), 1))])
    return np.linalg.lstsq(design, target.astype(np.float64), rcond=None)[0]


def _n_rows(X) -> int:
    if hasattr(X, "shape") and len(X.shape):
        return int(X.shape[0])
    return len(X)


def _broadcast(values: Mapping, n_samples: int) -> pd.DataFrame:
    """A mapping of per-attribute values as ``n_samples`` rows: scalars and mixtures repeat, sequences stay."""
    columns = {}
    for name, value in values.items():
        if isinstance(value, Mapping) or np.ndim(value) == 0:
            columns[name] = [value] * n_samples
        else:
            columns[name] = list(value)
            if len(columns[name]) != n_samples:
                raise ValueError(
                    f"sensitive_features[{name!r}] has {len(columns[name])} values but there are {n_samples} samples"
                )
    return pd.DataFrame(columns, index=pd.RangeIndex(n_samples))


def _paths_like(X) -> bool:
    try:
        return detect_format(X, None).kind == "paths"
    except (TypeError, ValueError):
        return False


def _condition_slices(schema: AttributeSchema | None) -> list[tuple[int, int, str]]:
    if schema is None:
        return []
    slices, start = [], 0
    for attribute in schema.attributes:
        slices.append((start, start + attribute.width, attribute.kind))
        start += attribute.width
    return slices


def _seed_from(random_state) -> int:
    """An int seed: the int itself, or a draw from ``check_random_state`` (None → numpy's global RNG)."""
    if isinstance(random_state, Integral) and not isinstance(random_state, bool):
        return int(random_state)
    return int(check_random_state(random_state).randint(2**31 - 1))
