"""KeyedNoise: Gaussian noise that is the same every time a latent is exported, so exports cannot average it away."""

from __future__ import annotations

import hashlib
import secrets
from numbers import Real

import numpy as np
from sklearn.base import BaseEstimator, OneToOneFeatureMixin, TransformerMixin
from sklearn.utils import check_random_state
from sklearn.utils.validation import check_is_fitted, validate_data

from .._utils.params import Interval, checks_parameters
from ._state import register_loadable

KEY_BYTES = 32


@register_loadable
class KeyedNoise(OneToOneFeatureMixin, TransformerMixin, BaseEstimator):
    """Add Gaussian noise shaped like the training latents, drawn once per latent from a secret key.

    A concealment step to put last (``[ConditionalTransport(), KeyedNoise()]``):
    every row gets ``scale`` times a draw from the pooled covariance of the
    rows the step was fitted on, so the noise blurs every direction by the same
    share of its spread and depends on no attribute (it adds no group signal of
    its own). Its job is to blur the fine structure that the strongest attacks
    read after the other steps (a 15-nearest-neighbour probe with thousands of
    labelled rows, docs/TRAINED_CONCEALMENT.md §19), at a price every downstream
    model pays alike.

    Noise drawn afresh on every call would be useless: whoever receives two
    exports of one image averages them. So the noise of a row is a function of
    the row and a secret key: its input rounded to ``resolution`` of each
    column's spread, hashed with the key (SHAKE-256), and turned into normal
    draws by Box-Muller. The same latent gets the same noise in every export,
    batch, order, process and release; a different latent gets independent
    noise. The draw is computed from the hash with no random generator, so it
    does not depend on NumPy's generators staying the same.

    It is a trade, not a free gain: on UTKFace after ``bafo run``'s transport,
    noise at 0.25 took the 15-nearest-neighbour attacker's gender reading from
    0.597 to 0.576-0.581 (balanced accuracy; this step and two draws of fresh
    noise), the quadratic probe's ethnicity from 0.269 to 0.264-0.267, and kept
    0.89 of head yaw instead of 0.93 and 0.71-0.74 of the mouth-opening residual
    instead of 0.80 (docs/TRAINED_CONCEALMENT.md §19-20). Decoding passes it:
    a decoder fine-tuned on the noisy latents (``decoder_epochs``) decodes
    them best.

    Parameters
    ----------
    scale : float, default=0.25
        The noise's standard deviation as a share of the fitted rows' own, in
        every direction (its covariance is ``scale**2`` times theirs).
    resolution : float, default=0.01
        The rounding grid's step, as a share of each column's standard
        deviation: a row's noise is drawn from its cell of the grid, so the last
        bits of floating-point arithmetic (which differ between machines, batch
        sizes and float32 / float64) change it only for the rows that sit on a
        cell's edge (on 48 standard normal columns, 1 in 20,000 rows when rounded
        to float32, 1 in 1,000 at 1e-3). Two different images share a cell only
        if every latent column agrees to within the step.
    random_state : int, RandomState instance or None, default=None
        Where the key comes from. ``None``: the operating system's secure
        random source. An int makes the key (and so the noise) reproducible:
        anyone who knows it and a row's noise-free latent can compute that
        row's noise, so use it for tests and benchmarks, not for exports.
        Inside :class:`~bafo_pipeline.BAFOTransformer` the step takes the
        estimator's seed when left at ``None``.

    Attributes
    ----------
    mean_ : ndarray of shape (n_features,)
        The fitted rows' mean (the origin of the rounding grid).
    scale_ : ndarray of shape (n_features,)
        Each column's standard deviation (the rounding grid's step is ``resolution`` times it).
    noise_root_ : ndarray of shape (n_features, n_features)
        ``noise_root_ @ noise_root_.T`` is the fitted rows' covariance; a row's noise is
        ``scale * noise_root_ @ g`` for its standard normal draw ``g``.
    key_ : ndarray of shape (32,), dtype uint8
        The secret key. It is saved with the model: keep model files private.
    n_features_in_ : int

    Examples
    --------
    >>> import numpy as np
    >>> from bafo_pipeline.transformers import KeyedNoise
    >>> Z = np.random.default_rng(0).normal(size=(500, 4))
    >>> noise = KeyedNoise(scale=0.3, random_state=0).fit(Z)
    >>> bool(np.array_equal(noise.transform(Z[:3]), noise.transform(Z)[:3]))
    True
    """

    exact_inverse = False

    _parameter_rules: dict = {
        "scale": [Interval(Real, 0, None, closed="left")],
        "resolution": [Interval(Real, 0, None, closed="neither")],
        "random_state": ["random_state"],
    }

    def __init__(self, *, scale: float = 0.25, resolution: float = 0.01, random_state=None):
        self.scale = scale
        self.resolution = resolution
        self.random_state = random_state

    @checks_parameters
    def fit(self, X, y=None, *, sensitive_features=None):
        """Learn the rows' spread (the noise's shape and the rounding grid) and draw the key.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)
            The latents the noise will be added to (e.g. the transport's output).
        y : None
            Ignored.
        sensitive_features : ignored
            Accepted so the step fits like every other concealment step; the noise uses no attribute.

        Returns
        -------
        self : KeyedNoise
        """
        X = validate_data(self, X, dtype=[np.float64, np.float32], ensure_min_samples=2).astype(np.float64)
        self.mean_ = X.mean(axis=0)
        self.scale_ = X.std(axis=0)
        values, vectors = np.linalg.eigh(np.atleast_2d(np.cov(X, rowvar=False)))
        self.noise_root_ = vectors * np.sqrt(np.clip(values, 0.0, None))
        if self.random_state is None:
            key = secrets.token_bytes(KEY_BYTES)
        else:
            key = check_random_state(self.random_state).bytes(KEY_BYTES)
        self.key_ = np.frombuffer(key, dtype=np.uint8).copy()
        return self

    def transform(self, X) -> np.ndarray:
        """Add each row's own noise.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)

        Returns
        -------
        X_noisy : ndarray of shape (n_samples, n_features)
            Of the dtype of ``X`` (float64 for other dtypes).
        """
        check_is_fitted(self)
        X = validate_data(self, X, dtype=[np.float64, np.float32], reset=False)
        noisy = X + self.scale * self.standard_draws(X) @ self.noise_root_.T
        return noisy.astype(X.dtype, copy=False)

    def inverse_transform(self, X, *, sensitive_features=None) -> np.ndarray:
        """Return ``X`` unchanged: the noise cannot be taken out again (decoding passes through this step).

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)
        sensitive_features : ignored
            Accepted as every invertible concealment step accepts it.

        Returns
        -------
        X : ndarray of shape (n_samples, n_features)
        """
        check_is_fitted(self)
        return validate_data(self, X, dtype=[np.float64, np.float32], reset=False)

    def standard_draws(self, X) -> np.ndarray:
        """Each row's standard normal draw (before shaping and scaling), a function of the row and the key alone.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)

        Returns
        -------
        draws : ndarray of shape (n_samples, n_features), float64
        """
        check_is_fitted(self)
        X = validate_data(self, X, dtype=[np.float64, np.float32], reset=False).astype(np.float64)
        step = self.resolution * np.where(self.scale_ > 0, self.scale_, 1.0)
        grid = np.clip(np.rint((X - self.mean_) / step), -(2.0**62), 2.0**62).astype("<i8")
        n_features = X.shape[1]
        n_uniforms = 2 * ((n_features + 1) // 2)  # Box-Muller turns pairs of uniforms into pairs of normals
        key = self.key_.tobytes()
        words = np.frombuffer(
            b"".join(hashlib.shake_256(key + row.tobytes()).digest(4 * n_uniforms) for row in grid), dtype="<u4"
        ).reshape(len(grid), n_uniforms)
        uniforms = (words + 0.5) / 2.0**32  # in (0, 1): the logarithm below stays finite
        radius = np.sqrt(-2.0 * np.log(uniforms[:, 0::2]))
        angle = 2.0 * np.pi * uniforms[:, 1::2]
        normals = np.empty((len(grid), n_uniforms))
        normals[:, 0::2], normals[:, 1::2] = radius * np.cos(angle), radius * np.sin(angle)
        return normals[:, :n_features]

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.transformer_tags.preserves_dtype = ["float64", "float32"]
        return tags
