"""BAFOTransformer: the blind autoencoder as a scikit-learn transformer."""

from __future__ import annotations

import copy
import warnings
from collections.abc import Mapping
from numbers import Integral, Real

import numpy as np
import pandas as pd
import torch
from sklearn.base import BaseEstimator, ClassNamePrefixFeaturesOutMixin, TransformerMixin, _fit_context
from sklearn.utils import check_random_state
from sklearn.utils._param_validation import Interval, StrOptions
from sklearn.utils.validation import check_is_fitted, validate_data

from ..attributes import AttributeSchema
from ..in_loop import MATCHING, InLoopConcealment
from ..model import BAFONetwork, NetworkConfig, vae_loss_terms
from .._device import resolve_device
from ..training import Trainer, TrainingConfig, fit_decoder
from ._erasure import LinearErasure
from ._inference import PRECISIONS, autocast, inference_network, model_input
from ._inputs import InputFormat, detect_format, from_unit_nchw, image_batches_uint8

DEFAULT_CONV_WIDTHS = (32, 64, 128)
DEFAULT_MLP_WIDTHS = (128, 64)


class BAFOTransformer(ClassNamePrefixFeaturesOutMixin, TransformerMixin, BaseEstimator):
    """Encode images (or features) into latents meant to be blind to sensitive attributes.

    A conditional VAE whose decoder receives the sensitive attributes next to
    the latent (BAFO, "Blind Autoencoder for Fairness and Objectiveness"), so
    the encoder has no need to store them. ``transform`` returns the posterior
    mean; ``inverse_transform`` decodes a latent with any chosen attributes.
    Conditioning alone does *not* make the latent blind: audit it with
    :func:`bafo_pipeline.audits.audit_representations`, and raise
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
    batch_size : int, default=256
    learning_rate : float, default=1e-3
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
    adversary_steps : int, default=2
        Adversary updates per encoder update.
    concealment : {"none", "linear", "full", "trained"}, default="full"
        What is applied to the encoder's posterior means (fitted with the
        sensitive features, which are then never needed at transform time):

        - ``"none"``: the paper's BAFO latent as is;
        - ``"linear"``: closed-form linear erasure (:class:`LinearErasure`),
          so no linear probe beats chance on the training distribution;
        - ``"full"``: linear erasure, then an adversarially trained refiner
          (an MLP BAFO on the latents, ``refine_epochs`` epochs,
          ``refine_adversary_weight``) against non-linear probes, then linear
          erasure again. ``inverse_transform`` decodes through the refiner.
        - ``"trained"``: concealment learned in training. A linear eraser
          fitted on running statistics of the posterior means (with
          ``covariance_dims``) sits between encoder and decoder, so the
          decoder learns from erased latents and the encoder keeps its content
          where the erasure does not reach; ``matching_weight`` adds a
          distribution-matching penalty against non-linear leakage. At
          transform time a :class:`LinearErasure` fitted on the final training
          latents applies the same map.
    covariance_dims : int, default=0
        With ``concealment="linear"`` or ``"full"``: the first linear erasure
        also removes this many directions in which the attribute groups'
        covariances differ most (see :class:`LinearErasure`), the spread
        differences that non-linear probes read once the group means agree.
        On UTKFace, ``"linear"`` with 8 (of 48) matched ``"full"`` against the
        audit, leaked less to a data-rich attacker and reconstructed 1.0 dB
        better; on synthetic faces it also removed non-sensitive information
        (background). Off by default; see docs/COVARIANCE_ERASURE.md.
    matching : {"mmd", "sliced", "moments"}, default="mmd"
        With ``concealment="trained"``: the penalty that pulls each attribute
        group's (erased, whitened) posterior means onto the batch's
        distribution: Gaussian-kernel MMD, sliced Wasserstein, or the gap
        between the group's and the batch's second moments.
    matching_weight : float, default=0.0
        Its weight (times the input size, like ``independence_weight``); 0
        disables it.
    balanced_batches : bool, default=False
        With ``concealment="trained"``: draw training batches with every
        combination of the categorical attributes equally likely.
    removal_weight : float, default=0.0
        With ``concealment="trained"``: weight of a KL-like pull on what the
        in-loop eraser removes from the posterior means, which keeps that part
        small so that the final eraser and the decoder agree with the running one.
    erase_in_loop : bool, default=True
        With ``concealment="trained"``: apply the running eraser between
        encoder and decoder in training (``False``: only the removal pull and
        the matching penalty act; the final eraser is fitted all the same).
    in_loop_ridge : float, default=0.0
        With ``concealment="trained"``: ridge on the running eraser's
        covariance (times its mean eigenvalue), which keeps near-collapsed
        latent directions from dominating LEACE's whitened criterion.
    in_loop_orthogonal : bool, default=False
        With ``concealment="trained"``: the running eraser removes the
        concept directions by orthogonal projection instead of LEACE.
    decoder_epochs : int, default=6
        With ``concealment="linear"`` or ``"full"``: after the concealment is
        fitted, fine-tune a copy of the decoder for this many epochs to rebuild
        the training inputs from their *concealed* latents and attributes, and
        decode with it in ``inverse_transform`` (instead of mapping back
        through the refiner). It changes no latent, only how sharp decodes
        are: 6 epochs raised the held-out PSNR of ``"full"`` from 15.9 to
        17.2 dB on UTKFace and from 18.2 to 19.2 dB on synthetic faces
        (docs/FRONTIER.md, docs/results/decoder_epochs_synthetic.json).
        0 keeps the encoder's own decoder.
    refine_epochs : int, default=30
        Training epochs of the refiner (``concealment="full"``).
    refine_adversary_weight : float, default=0.3
        Adversary weight of the refiner (``concealment="full"``).
    attribute_kinds : dict of str to str, optional
        Override the inferred kind (``"continuous"``, ``"binary"``,
        ``"categorical"``) of sensitive columns.
    validation_fraction : float, default=0.1
        Share of the fit data held out for the per-epoch validation loss.
    device : str, default="auto"
        ``"auto"`` uses CUDA when available, else the CPU.
    precision : {"auto", "float32", "bfloat16"}, default="auto"
        Arithmetic of ``transform`` and ``inverse_transform`` for image models.
        ``"auto"`` computes the convolutions in bfloat16 where the hardware
        does so natively (CUDA GPUs; CPUs with AVX512-BF16 or AMX), which
        about doubles the encoding speed, and in float32 elsewhere. The
        encoder's last layer always runs in float32; bfloat16 moves latents
        by about 1% of their spread. Tabular models always use float32.
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
    erasure_, refiner_, final_erasure_ : LinearErasure, BAFOTransformer or None
        The fitted concealment steps (``None`` where ``concealment`` has none).
    concealed_network_ : BAFONetwork or None
        With ``decoder_epochs > 0``: the network whose decoder was fine-tuned
        on concealed latents (its encoder is ``network_``'s).
    erased_label_map_ : ndarray of shape (n_conditions + 1, latent_dim) or None
        Least-squares map from the decoder's attribute encoding (plus an
        intercept row) to what the first erasure removed from the training
        latents. ``inverse_transform`` adds its prediction for the chosen
        attributes back before decoding: the typical latent signature of those
        attributes, which the erasure took out (+0.5 dB PSNR on UTKFace with
        ``"full"``, +0.7 dB with ``"linear"``).

    Notes
    -----
    Float image pixels are rounded to 8 bits for training and encoding (the
    training set lives on the device as uint8). Pickles and
    :func:`bafo_pipeline.io.model_io.save_model` store the network as CPU
    tensors, so a model fitted on a GPU loads on a CPU-only machine.

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
    __metadata_request__inverse_transform = {"sensitive_features": True}

    _parameter_constraints: dict = {
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
        "concealment": [StrOptions({"none", "linear", "full", "trained"})],
        "covariance_dims": [Interval(Integral, 0, None, closed="left")],
        "matching": [StrOptions(set(MATCHING))],
        "matching_weight": [Interval(Real, 0, None, closed="left")],
        "balanced_batches": ["boolean"],
        "removal_weight": [Interval(Real, 0, None, closed="left")],
        "erase_in_loop": ["boolean"],
        "in_loop_ridge": [Interval(Real, 0, None, closed="left")],
        "in_loop_orthogonal": ["boolean"],
        "decoder_epochs": [Interval(Integral, 0, None, closed="left")],
        "refine_epochs": [Interval(Integral, 1, None, closed="left")],
        "refine_adversary_weight": [Interval(Real, 0, None, closed="left")],
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
        batch_size: int = 256,
        learning_rate: float = 1e-3,
        kl_weight: float = 1.0,
        variance_weight: float = 1.0,
        independence_weight: float = 0.0,
        adversary_weight: float = 0.0,
        adversary_steps: int = 2,
        concealment: str = "full",
        covariance_dims: int = 0,
        matching: str = "mmd",
        matching_weight: float = 0.0,
        balanced_batches: bool = False,
        removal_weight: float = 0.0,
        erase_in_loop: bool = True,
        in_loop_ridge: float = 0.0,
        in_loop_orthogonal: bool = False,
        decoder_epochs: int = 6,
        refine_epochs: int = 30,
        refine_adversary_weight: float = 0.3,
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
        self.matching = matching
        self.matching_weight = matching_weight
        self.balanced_batches = balanced_batches
        self.removal_weight = removal_weight
        self.erase_in_loop = erase_in_loop
        self.in_loop_ridge = in_loop_ridge
        self.in_loop_orthogonal = in_loop_orthogonal
        self.decoder_epochs = decoder_epochs
        self.refine_epochs = refine_epochs
        self.refine_adversary_weight = refine_adversary_weight
        self.attribute_kinds = attribute_kinds
        self.validation_fraction = validation_fraction
        self.device = device
        self.precision = precision
        self.random_state = random_state
        self.verbose = verbose

    # ------------------------------------------------------------------ fit
    @_fit_context(prefer_skip_nested_validation=True)
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
        for stale in ("n_features_in_", "feature_names_in_", "feature_mean_", "feature_scale_"):
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
        in_loop = None
        if self.concealment == "trained" and schema is not None:
            in_loop = InLoopConcealment(
                self.latent_dim, _condition_slices(schema), torch.from_numpy(conditions),
                covariance_dims=self.covariance_dims, matching=self.matching, matching_weight=self.matching_weight,
                balanced=self.balanced_batches, removal_weight=self.removal_weight, erase_forward=self.erase_in_loop,
                ridge=self.in_loop_ridge, orthogonal=self.in_loop_orthogonal,
            )
        trainer = Trainer(network, config, device, _condition_slices(schema), in_loop=in_loop)
        with _epoch_progress(self.verbose, self.epochs) as on_epoch_end:
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
        self._fit_concealment(inputs, sensitive_features, seed)
        return self

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
        self._fit_concealment(inputs, frame, _seed_from(self.random_state))
        return self

    def _fit_concealment(self, inputs: np.ndarray, sensitive_features, seed: int) -> None:
        """Fit the post-encoder steps of ``concealment`` on the training latents."""
        self.erasure_ = self.refiner_ = self.final_erasure_ = self.erased_label_map_ = None
        self.concealed_network_ = None
        if self.schema_ is None or self.concealment == "none":
            return
        frame = _as_frame(sensitive_features)
        means = self._encoder_means(inputs)
        self.erasure_ = LinearErasure(attribute_kinds=self.attribute_kinds, covariance_dims=self.covariance_dims).fit(
            means, sensitive_features=frame
        )
        erased = self.erasure_.transform(means)
        conditions = self.schema_.encode(frame)
        # A decoder trained in the loop already decodes erased latents: nothing to add back.
        if self.concealment != "trained":
            self.erased_label_map_ = _least_squares_map(conditions, means - erased)
        if self.concealment == "full":
            self.refiner_ = BAFOTransformer(
                latent_dim=self.latent_dim, epochs=self.refine_epochs, batch_size=self.batch_size,
                learning_rate=self.learning_rate, adversary_weight=self.refine_adversary_weight,
                adversary_steps=self.adversary_steps, attribute_kinds=self.attribute_kinds, concealment="none",
                validation_fraction=self.validation_fraction, device=self.device, random_state=seed,
            ).fit(erased, sensitive_features=frame)
            refined = self.refiner_.transform(erased)
            self.final_erasure_ = LinearErasure(attribute_kinds=self.attribute_kinds).fit(
                refined, sensitive_features=frame
            )
        if self.decoder_epochs:
            network = copy.deepcopy(self.network_)
            with _epoch_progress(self.verbose, self.decoder_epochs, "fitting decoder") as on_epoch_end:
                network.decoder = fit_decoder(
                    network.decoder, torch.from_numpy(self._conceal(means)), torch.from_numpy(conditions),
                    torch.from_numpy(np.ascontiguousarray(inputs)), epochs=self.decoder_epochs,
                    batch_size=self.batch_size, learning_rate=self.learning_rate, device=resolve_device(self.device),
                    seed=seed, on_epoch_end=on_epoch_end,
                )
            self.concealed_network_ = network.eval()

    def _encoder_means(self, inputs: np.ndarray, batch_size: int = 1024) -> np.ndarray:
        """Posterior means of preprocessed inputs (uint8 NCHW images or standardised features)."""
        return np.concatenate(
            [self._encode(inputs[start : start + batch_size]) for start in range(0, len(inputs), batch_size)]
        )

    def _encode(self, batch, *, sample: bool = False, generator: torch.Generator | None = None) -> np.ndarray:
        """Posterior means (or draws) of one preprocessed batch: uint8 NCHW images (array or
        tensor, on any device) or standardised features."""
        network, device, bf16 = self._inference_network()
        with torch.inference_mode(), autocast(device, bf16):
            mean, logvar = network.encode(model_input(batch, device))
            if sample:
                noise = torch.randn(mean.shape, generator=generator, device=device)
                mean = mean + noise * torch.exp(0.5 * logvar)
        return mean.float().cpu().numpy()

    def _latents_of_images(self, images, *, conceal: bool = True) -> np.ndarray:
        """Latents of uint8 NCHW images (array or tensor) already decoded to the fitted size (the export's path)."""
        height, width, channels = self.input_format_.shape
        if images.dtype not in (np.uint8, torch.uint8) or tuple(images.shape[1:]) != (channels, height, width):
            raise ValueError(f"expected uint8 images of shape (n, {channels}, {height}, {width}), got {images.dtype} {tuple(images.shape)}")
        means = self._encode(images)
        return self._conceal(means) if conceal else means

    def _conceal(self, means: np.ndarray) -> np.ndarray:
        """Apply the fitted concealment steps to posterior means (no sensitive features needed)."""
        if getattr(self, "erasure_", None) is None:
            if self.schema_ is not None and self.concealment != "none":
                # Never hand out unconcealed latents under a setting that promises concealment.
                raise ValueError(
                    f"concealment={self.concealment!r} is set but its steps are not fitted; "
                    "call fit_concealment(X, sensitive_features=...) first"
                )
            return means
        latents = self.erasure_.transform(means)
        if self.refiner_ is not None:
            latents = self.final_erasure_.transform(self.refiner_.transform(latents))
        return latents.astype(np.float32, copy=False)

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
        frame = _as_frame(sensitive_features)
        if len(frame) != n_samples:
            raise ValueError(f"sensitive_features has {len(frame)} rows but X has {n_samples} samples")
        schema = AttributeSchema.infer(frame, kinds=self.attribute_kinds)
        return schema.encode(frame), schema

    # ------------------------------------------------------------ transform
    def transform(self, X, *, sample: bool = False, conceal: bool = True) -> np.ndarray:
        """Encode ``X`` to latents.

        Parameters
        ----------
        X : array-like or sequence of image paths
            In the form the estimator was fitted on; an image model also
            accepts image paths (decoded to the fitted size).
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
        parts = [latents for _, latents in self.iter_transform(X, sample=sample, conceal=conceal)]
        return np.concatenate(parts) if parts else np.zeros((0, self._n_features_out), np.float32)

    def iter_transform(self, X, *, batch_size: int = 1024, sample: bool = False, conceal: bool = True):
        """Encode in batches, yielding ``(row_indices, latents)``; memory stays bounded.

        Used for exports of datasets larger than memory: image paths are
        decoded one batch at a time.

        Parameters
        ----------
        X : array-like or sequence of image paths
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
        _, device, _ = self._inference_network()
        generator = torch.Generator(device=device).manual_seed(_seed_from(self.random_state))
        for indices, batch in self._encode_batches(X, self.input_format_, batch_size):
            means = self._encode(batch, sample=sample, generator=generator)
            yield indices, self._conceal(means) if conceal else means

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
        network, bf16 = inference_network(self.network_ if network is None else network, device, self.precision)
        return network, device, bf16

    def inverse_transform(self, X, *, sensitive_features=None) -> np.ndarray:
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

        Returns
        -------
        X_original : ndarray
            In the fitted input form: images ``(n, H, W, C)`` (or NCHW, or
            flattened) as uint8 or float in [0, 1]; tabular features in their
            original units.
        """
        check_is_fitted(self)
        latent_dim = self._n_features_out
        Z = np.asarray(X, dtype=np.float32)
        if Z.ndim != 2 or Z.shape[1] != latent_dim:
            raise ValueError(f"expected latents of shape (n, {latent_dim}), got {Z.shape}")
        if not np.isfinite(Z).all():
            raise ValueError(f"latents contain NaN or infinite values (row {int(np.argmax(~np.isfinite(Z).all(1)))})")
        frame = self._sensitive_frame(sensitive_features, len(Z), broadcast=True)
        conditions = self._encode_conditions(frame, len(Z), allow_fractional=True)
        concealed_network = getattr(self, "concealed_network_", None)
        if concealed_network is None:
            if getattr(self, "refiner_", None) is not None:
                # Linear erasure is not invertible; the refiner's decoder maps back to (erased) encoder latents.
                Z = self.refiner_.inverse_transform(Z, sensitive_features=frame).astype(np.float32)
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
            frame = _broadcast({**sensitive_features, **neutral}, n_samples)
        else:
            frame = _as_frame(sensitive_features)
        if len(frame) != n_samples:
            raise ValueError(f"sensitive_features has {len(frame)} rows but there are {n_samples} samples")
        return frame

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
            x = model_input(batch, device)
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
        return self.network_.config.latent_dim

    # ------------------------------------------------------------- pickling
    def __getstate__(self) -> dict:
        # Store the network as CPU tensors so a model fitted on a GPU unpickles anywhere. Copy the
        # state first: on Python >= 3.11 object.__getstate__ returns the live __dict__.
        state = dict(super().__getstate__())
        network = state.pop("network_", None)
        if network is not None:
            state["_network_config"] = network.config.to_dict()
            state["_network_state"] = {k: v.detach().cpu().clone() for k, v in network.state_dict().items()}
        return state

    def __setstate__(self, state: dict) -> None:
        state = dict(state)
        config = state.pop("_network_config", None)
        weights = state.pop("_network_state", None)
        super().__setstate__(state)
        if config is not None:
            network = BAFONetwork(NetworkConfig.from_dict(config))
            network.load_state_dict(weights)
            self.network_ = network.eval()

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.transformer_tags.preserves_dtype = ["float32"]
        tags.non_deterministic = False
        return tags


def _least_squares_map(conditions: np.ndarray, target: np.ndarray) -> np.ndarray:
    """``W`` of shape ``(n_conditions + 1, n_targets)`` minimising ``|[conditions, 1] @ W - target|``."""
    design = np.hstack([conditions.astype(np.float64), np.ones((len(conditions), 1))])
    return np.linalg.lstsq(design, target.astype(np.float64), rcond=None)[0]


def _n_rows(X) -> int:
    if hasattr(X, "shape") and len(X.shape):
        return int(X.shape[0])
    return len(X)


def _as_frame(sensitive_features) -> pd.DataFrame:
    """Sensitive features as a DataFrame with a fresh 0..n-1 index (rows match X by position)."""
    if isinstance(sensitive_features, pd.DataFrame):
        return sensitive_features.reset_index(drop=True)
    if isinstance(sensitive_features, pd.Series):
        name = sensitive_features.name if isinstance(sensitive_features.name, str) else "sensitive_0"
        return sensitive_features.reset_index(drop=True).to_frame(name)
    if isinstance(sensitive_features, Mapping):
        scalars = [name for name, value in sensitive_features.items() if np.ndim(value) == 0]
        if scalars:
            raise ValueError(
                f"sensitive_features{scalars} hold single values; give one value per row "
                "(only inverse_transform repeats a single value over all rows)"
            )
        return pd.DataFrame(dict(sensitive_features))
    if isinstance(sensitive_features, (str, bytes)) or np.ndim(sensitive_features) not in (1, 2):
        raise ValueError(
            "sensitive_features must be a DataFrame, a Series, a mapping of column name to values, "
            f"or a 1-D/2-D array; got {type(sensitive_features).__name__}"
        )
    # Lists of rows keep each column's own type (np.asarray would turn ages into strings next to "male").
    data = sensitive_features if isinstance(sensitive_features, np.ndarray) else list(sensitive_features)
    frame = pd.DataFrame(data)
    frame.columns = [f"sensitive_{i}" for i in range(frame.shape[1])]
    return frame


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


class _epoch_progress:
    """A tqdm bar over epochs when verbose, else a no-op callback."""

    def __init__(self, verbose: int, epochs: int, description: str = "training"):
        self.bar = None
        if verbose:
            from tqdm.auto import tqdm

            self.bar = tqdm(total=epochs, desc=description, unit="epoch")

    def __enter__(self):
        if self.bar is None:
            return None

        def on_epoch_end(record: dict) -> None:
            self.bar.update(1)
            postfix = {"loss": f"{record.get('loss', float('nan')):.1f}"}
            if "validation_loss" in record:
                postfix["val"] = f"{record['validation_loss']:.1f}"
            postfix["img_s"] = f"{record['images_per_second']:.0f}"
            self.bar.set_postfix(postfix)

        return on_epoch_end

    def __exit__(self, *exc) -> None:
        if self.bar is not None:
            self.bar.close()
