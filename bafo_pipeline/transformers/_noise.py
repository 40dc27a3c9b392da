"""KeyedNoise: Gaussian noise drawn once per input from a secret key, so exports cannot average it away."""

from __future__ import annotations

import hashlib
import secrets
from collections.abc import Sequence
from numbers import Integral, Real

import numpy as np
from sklearn.base import BaseEstimator, OneToOneFeatureMixin, TransformerMixin
from sklearn.utils.validation import check_is_fitted, validate_data

from .._utils.params import Interval, checks_parameters
from ._state import register_loadable

KEY_BYTES = 32


@register_loadable
class KeyedNoise(OneToOneFeatureMixin, TransformerMixin, BaseEstimator):
    """Add Gaussian noise shaped like the training latents, drawn once per input from a secret key.

    A concealment step to put last (``[ConditionalTransport(), KeyedNoise()]``):
    every row gets ``scale`` times a draw from the pooled covariance of the
    rows the step was fitted on, so the noise blurs every direction by the same
    share of its spread and depends on no attribute (it adds no group signal of
    its own). Its job is to blur the fine structure that the strongest attacks
    read after the other steps (a 15-nearest-neighbour probe with thousands of
    labelled rows, docs/TRAINED_CONCEALMENT.md §19), at a price every downstream
    model pays alike.

    Noise drawn afresh on every call would be useless: whoever receives two
    exports of one image averages them. So a row's draw is a function of the
    secret key and the row's *identity*, hashed together (SHAKE-256) and turned
    into normal draws by Box-Muller, with no random generator involved.
    :class:`~bafo_pipeline.BAFOTransformer` gives each row the hash of its
    input (an image's decoded pixels) as its identity, so the draw does not
    depend on the arithmetic of the network (CPU or GPU, float32 or bfloat16,
    batch size), which moves the latents' last bits; exports of a model with
    this step therefore decode JPEGs with Pillow on every device (another
    decoder may change pixels, and with them the draw). Used alone, a row's
    identity is its exact values, unless ``row_keys`` names it. The noise is
    fixed for one fitted model: a refitted one draws a new key, and exports of
    two fits of one image average as two independent draws.

    It is a trade, not a free gain: on UTKFace after ``bafo run``'s transport,
    noise at 0.25 took the 15-nearest-neighbour attacker's gender reading from
    0.597 to 0.576-0.592 (balanced accuracy, three draws of the noise), the
    quadratic probe's ethnicity from 0.269 to 0.264-0.267, and kept 0.89 of
    head yaw instead of 0.93 and 0.71-0.76 of the mouth-opening residual
    instead of 0.80; in ``bafo run``'s whole job gender went from 0.605 to
    0.590 (docs/TRAINED_CONCEALMENT.md §19-20). Decoding passes it:
    a decoder fine-tuned on the noisy latents (``decoder_epochs``) decodes
    them best.

    Parameters
    ----------
    scale : float, default=0.25
        The noise's standard deviation as a share of the fitted rows' own, in
        every direction (its covariance is ``scale**2`` times theirs).
    seed : int, optional
        Makes the key, and so the noise, reproducible: for tests and
        benchmarks. Anyone who knows it and a row's identity and noise-free
        latent can compute that row's noise, so leave it at ``None`` for
        exports: the key then comes from the operating system's secure random
        source. Unlike ``random_state`` elsewhere, a
        :class:`~bafo_pipeline.BAFOTransformer` never hands its own seed down
        to it.

    Attributes
    ----------
    noise_root_ : ndarray of shape (n_features, n_features)
        ``noise_root_ @ noise_root_.T`` is the fitted rows' covariance; a row's noise is
        ``scale * noise_root_ @ g`` for its standard normal draw ``g``.
    key_ : ndarray of shape (32,), dtype uint8
        The secret key. It is saved with the model: keep model files private.
    n_features_in_ : int
        The number of latent columns seen in :meth:`fit`.

    Examples
    --------
    >>> import numpy as np
    >>> from bafo_pipeline.transformers import KeyedNoise
    >>> Z = np.random.default_rng(0).normal(size=(500, 4))
    >>> noise = KeyedNoise(scale=0.3, seed=0).fit(Z)
    >>> bool(np.array_equal(noise.transform(Z[:3]), noise.transform(Z)[:3]))
    True
    """

    exact_inverse = False
    needs_row_keys = True

    _parameter_rules: dict = {
        "scale": [Interval(Real, 0, None, closed="left")],
        "seed": [Interval(Integral, 0, None, closed="left"), None],
    }

    def __init__(self, *, scale: float = 0.25, seed: int | None = None):
        self.scale = scale
        self.seed = seed

    @checks_parameters
    def fit(self, X, y=None, *, sensitive_features=None) -> KeyedNoise:
        """Learn the rows' covariance (the noise's shape) and draw the key.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)
            The latents the noise will be added to (e.g. the transport's output).
        y : None
            Ignored.
        sensitive_features : DataFrame, optional
            Ignored: accepted so the step fits like every other concealment step; the noise uses no attribute.

        Returns
        -------
        self : KeyedNoise
        """
        X = validate_data(self, X, dtype=[np.float64, np.float32], ensure_min_samples=2).astype(np.float64)
        values, vectors = np.linalg.eigh(np.atleast_2d(np.cov(X, rowvar=False)))
        self.noise_root_ = vectors * np.sqrt(np.clip(values, 0.0, None))
        if self.seed is None:
            key = secrets.token_bytes(KEY_BYTES)
        else:
            key = np.random.default_rng(self.seed).bytes(KEY_BYTES)
        self.key_ = np.frombuffer(key, dtype=np.uint8).copy()
        return self

    def transform(self, X, *, row_keys: Sequence[bytes | str] | None = None) -> np.ndarray:
        """Add each row's own noise.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)
        row_keys : sequence of bytes or str, optional
            Each row's identity (e.g. a hash of the image it was encoded from);
            by default its exact values.

        Returns
        -------
        X_noisy : ndarray of shape (n_samples, n_features)
            Of the dtype of ``X`` (float64 for other dtypes).
        """
        check_is_fitted(self)
        X = validate_data(self, X, dtype=[np.float64, np.float32], reset=False)
        noisy = X + self.scale * self.standard_draws(X, row_keys=row_keys) @ self.noise_root_.T
        return noisy.astype(X.dtype, copy=False)

    def inverse_transform(self, X, *, sensitive_features=None) -> np.ndarray:
        """Return ``X`` unchanged: the noise cannot be taken out again (decoding passes through this step).

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)
        sensitive_features : DataFrame, optional
            Ignored: accepted as every invertible concealment step accepts it.

        Returns
        -------
        X : ndarray of shape (n_samples, n_features)
        """
        check_is_fitted(self)
        return validate_data(self, X, dtype=[np.float64, np.float32], reset=False)

    def standard_draws(self, X, *, row_keys: Sequence[bytes | str] | None = None) -> np.ndarray:
        """Each row's standard normal draw (before shaping and scaling): a function of its identity and the key.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)
        row_keys : sequence of bytes or str, optional
            Each row's identity; by default its exact values (as float64).

        Returns
        -------
        draws : ndarray of shape (n_samples, n_features), float64
        """
        check_is_fitted(self)
        X = validate_data(self, X, dtype=[np.float64, np.float32], reset=False)
        if row_keys is None:
            identities = [row.tobytes() for row in X.astype("<f8")]
        else:
            if len(row_keys) != len(X):
                raise ValueError(f"{len(row_keys)} row keys given for {len(X)} rows")
            identities = [key.encode() if isinstance(key, str) else bytes(key) for key in row_keys]
        n_features = X.shape[1]
        n_uniforms = 2 * ((n_features + 1) // 2)  # Box-Muller turns pairs of uniforms into pairs of normals
        key = self.key_.tobytes()
        digests = b"".join(hashlib.shake_256(key + identity).digest(4 * n_uniforms) for identity in identities)
        words = np.frombuffer(digests, dtype="<u4").reshape(len(X), n_uniforms)
        uniforms = (words + 0.5) / 2.0**32  # in (0, 1): the logarithm below stays finite
        radius = np.sqrt(-2.0 * np.log(uniforms[:, 0::2]))
        angle = 2.0 * np.pi * uniforms[:, 1::2]
        normals = np.empty((len(X), n_uniforms))
        normals[:, 0::2], normals[:, 1::2] = radius * np.cos(angle), radius * np.sin(angle)
        return normals[:, :n_features]

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.transformer_tags.preserves_dtype = ["float64", "float32"]
        return tags
