"""ConditionalTransport: move each attribute group's latents onto the pooled distribution; exact inverse.

Unlike the other concealment steps, this one needs the sensitive attributes at
``transform`` time too (as fairlearn's ``CorrelationRemover`` does): every row is
moved by the map of its own attribute cell. It is the ``smooth-mean+cells`` setting of
benchmarks/conditional_transport.py (docs/TRAINED_CONCEALMENT.md §11).
"""

from __future__ import annotations

from numbers import Integral, Real

import numpy as np
import pandas as pd
from scipy.interpolate import BSpline
from sklearn.base import BaseEstimator, OneToOneFeatureMixin, TransformerMixin
from sklearn.linear_model import Ridge, RidgeCV
from sklearn.utils.validation import check_is_fitted, validate_data

from .._utils.params import Interval, Options, StrOptions, checks_parameters
from ..attributes import AttributeSchema, as_sensitive_frame, quantile_bin_edges
from ._state import register_loadable

SPLINE_DEGREE = 3
ROWS_NAMED = 5  # how many offending rows an error message names
RIDGE_ALPHAS = np.logspace(-2, 6, 17)  # the grid ridge_alpha="auto" chooses from, per latent column


@register_loadable
class ConditionalTransport(OneToOneFeatureMixin, TransformerMixin, BaseEstimator):
    """Move each attribute cell's latents onto the pooled distribution, given each row's attributes.

    Two invertible steps, both fitted on the training latents:

    1. **Smooth mean.** A ridge regression of the latent on the attributes (a
       cubic B-spline basis of each continuous attribute, one-hots of the
       categorical and binary ones, and every spline x one-hot product) is
       subtracted, so a continuous attribute's trend is removed inside its
       bins too.
    2. **Gaussian transport per cell.** Cells are the product of every
       categorical/binary attribute's classes and every continuous attribute's
       training-quantile bins. Row ``z`` of cell ``c`` goes to
       ``mean_ + A_c (z - mu_c)``, the optimal-transport map between Gaussians
       that gives the cell the pooled mean and covariance
       (``A_c = S_c^-1/2 (S_c^1/2 S S_c^1/2)^1/2 S_c^-1/2``), with the cell's
       covariance ``S_c`` shrunk towards the pooled ``S`` (and, optionally, its
       mean ``mu_c`` towards the pooled mean).

    So linear *and* quadratic probes of the output find (on the fit
    distribution) no difference between cells in mean or covariance, while
    what varies inside each cell (everything not sensitive) is kept.
    ``inverse_transform`` undoes both steps exactly, given the same attributes.

    The maps are estimated on training rows, so a *new* row of a cell is also moved
    by the estimate's error, the same for every new row of the cell, which a probe
    fitted on new rows alone can read: on latents that hold nothing about the
    attributes, a linear probe fitted on held-out rows read age band and ethnicity
    0.03-0.05 above chance after the move. Shrinking the means
    (``mean_shrinkage="auto"``, ``ridge_alpha="auto"``) removes that, but leaves
    part of each cell's true offset in the training rows, which an attacker fitted
    on them reads on new rows: on the demo that leaked more (gender 0.14 instead
    of not significant at one of three seeds, age band 0.18 instead of 0.14 and
    0.11 at the other two), so by default each cell is moved by its own training
    mean (docs/TRAINED_CONCEALMENT.md §12).

    The price: ``transform`` needs every row's attributes (a labelled export
    has them; an unlabelled stream of new images does not), and a category, or
    a combination of classes, that had no training rows cannot be moved, so it
    is an error (leaving such rows as they are would leak them). A row whose
    continuous bin had no training rows in its classes' cells is moved by the
    nearest bin's map.

    Parameters
    ----------
    attribute_kinds : dict of str to str, optional
        Override inferred attribute kinds (see :class:`AttributeSchema`).
    continuous_bins : int, default=4
        Training-quantile bins of each continuous attribute in the cells
        (0: continuous attributes enter only the smooth mean).
    smooth_mean_knots : int, default=6
        Knots (at training quantiles) of each continuous attribute's spline in
        the smooth mean; 0 turns the smooth mean off. Beyond the training
        range the basis is held constant at its boundary value (the
        ``extrapolation="constant"`` of scikit-learn's ``SplineTransformer``),
        so ages outside it never blow up.
    shrinkage : float, default=40.0
        Pseudo-count of rows pulling each cell's covariance towards the pooled
        one: ``(n_c S_c + shrinkage S) / (n_c + shrinkage)``. More leaves more
        of each cell's own spread unmatched; less lets more of each map's
        estimation error through; both are differences in spread, which the
        audit's quadratic probe reads. 0 gives cells with few rows near-singular
        maps that blow held-out rows up. With about 290 calibration rows per
        cell on UTKFace (three encoders), 40 leaked less ethnicity than 10 to
        the quadratic probe (balanced accuracy 0.25-0.27 against 0.28-0.29),
        no more gender, and kept more of every utility target; 80 and more let
        gender through (docs/TRAINED_CONCEALMENT.md §15). With about 32 rows per
        cell (the demo) every setting leaks.
    mean_shrinkage : "auto" or float in [0, 1], default=0.0
        How far each cell's training mean (after the smooth mean) is pulled
        towards the pooled mean before the cell is moved by it. 0 moves each
        cell by its own training mean (the training rows' cells then match the
        pooled mean exactly, new rows' cells up to that mean's sampling error);
        1 leaves cell means to the smooth mean. ``"auto"``: empirical Bayes per
        direction of the pooled within-cell covariance (whitened), the
        James-Stein weight ``tau^2 / (tau^2 + 1 / n_c)`` where ``tau^2`` is the
        spread of the cell means beyond their sampling noise, so a direction
        in which cells differ truly is moved nearly fully and one in which they
        differ only by noise hardly at all. The noise is taken as ``1 / n_c``,
        ignoring what the smooth mean (fitted on the same rows) already
        absorbed, so with the smooth mean on it shrinks somewhat more than
        needed; where every cell has a single training row (no spread within
        cells to tell noise by) it keeps the cells' own means. Shrinking the
        cell means alone leaves the smooth mean's own estimation noise: to
        plant no signal in new rows, shrink both (``ridge_alpha="auto"``).
    ridge_alpha : "auto" or float, default=1.0
        Ridge penalty of the smooth mean (the intercept is not penalised).
        ``"auto"``: chosen per latent column from ``logspace(-2, 6, 17)`` by
        efficient leave-one-out error (scikit-learn's ``RidgeCV``).

    Attributes
    ----------
    schema_ : AttributeSchema
    mean_ : ndarray of shape (n_features,)
        The pooled mean every cell is moved to.
    cell_ids_ : ndarray of int64, shape (n_cells,)
        The fitted cells, sorted: each row's attribute codes in mixed radix
        (attributes in schema order; a class's position in its categories, a
        continuous attribute's bin).
    cell_counts_ : ndarray of int64, shape (n_cells,)
        The training rows of each cell. A cell's maps are estimated on these alone
        (its covariance shrunk towards the pooled one by ``shrinkage`` pseudo-rows), so
        their estimation error, which every new row of the cell carries, shrinks as
        they grow (docs/TRAINED_CONCEALMENT.md §14). Absent from models saved before it existed.
    cell_means_ : ndarray of shape (n_cells, n_features)
        The (shrunk) mean each cell is moved from.
    transports_, inverse_transports_ : ndarray of shape (n_cells, n_features, n_features)
        ``A_c`` and its inverse.
    bin_edges_ : list of ndarray
        Inner bin edges of each continuous attribute (schema order).
    spline_knots_ : list of ndarray
        Full knot vector of each continuous attribute's B-spline basis.
    ridge_alpha_ : ndarray of shape (n_features,)
        The smooth mean's penalty of each latent column (NaN without a smooth
        mean, ``smooth_mean_knots=0``).
    ridge_coef_ : ndarray of shape (n_design, n_features)
    design_mean_ : ndarray of shape (n_design,)
        The smooth mean subtracted from a row is ``(design - design_mean_) @ ridge_coef_``.
    n_features_in_ : int

    Notes
    -----
    Every statistic is computed in float64; float32 input gives float32 output.

    Examples
    --------
    >>> import numpy as np, pandas as pd
    >>> rng = np.random.default_rng(0)
    >>> S = pd.DataFrame({"gender": rng.choice(["f", "m"], 400), "age": rng.uniform(1, 80, 400)})
    >>> Z = rng.normal(size=(400, 3)) + (S["gender"] == "m").to_numpy()[:, None]
    >>> transport = ConditionalTransport().fit(Z, sensitive_features=S)
    >>> moved = transport.transform(Z, sensitive_features=S)
    >>> np.allclose(transport.inverse_transform(moved, sensitive_features=S), Z)
    True
    """

    params_before_added = {"mean_shrinkage": 0.0}
    """A model saved before ``mean_shrinkage`` existed moved each cell by its own training mean (see
    :func:`~bafo_pipeline.transformers.load_model`)."""
    needs_sensitive_features_to_transform = True
    """``transform`` and ``inverse_transform`` need each row's attributes (see the step protocol)."""
    exact_inverse = True
    """``inverse_transform`` undoes ``transform`` exactly, given the same attributes."""

    __metadata_request__fit = {"sensitive_features": True}
    __metadata_request__transform = {"sensitive_features": True}
    __metadata_request__inverse_transform = {"sensitive_features": True}

    _parameter_rules: dict = {
        "attribute_kinds": [dict, None],
        "continuous_bins": [Interval(Integral, 0, None, closed="left")],
        "smooth_mean_knots": [Options(Integral, {0}), Interval(Integral, 2, None, closed="left")],
        "shrinkage": [Interval(Real, 0, None, closed="left")],
        "mean_shrinkage": [StrOptions({"auto"}), Interval(Real, 0, 1, closed="both")],
        "ridge_alpha": [StrOptions({"auto"}), Interval(Real, 0, None, closed="neither")],
    }

    def __init__(
        self,
        *,
        attribute_kinds: dict | None = None,
        continuous_bins: int = 4,
        smooth_mean_knots: int = 6,
        shrinkage: float = 40.0,
        mean_shrinkage: str | float = 0.0,
        ridge_alpha: str | float = 1.0,
    ):
        self.attribute_kinds = attribute_kinds
        self.continuous_bins = continuous_bins
        self.smooth_mean_knots = smooth_mean_knots
        self.shrinkage = shrinkage
        self.mean_shrinkage = mean_shrinkage
        self.ridge_alpha = ridge_alpha

    # ------------------------------------------------------------------ fit
    @checks_parameters
    def fit(self, X, y=None, *, sensitive_features=None):
        """Fit the smooth mean and every cell's transport map.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)
        y : None
            Ignored.
        sensitive_features : DataFrame of shape (n_samples, n_attributes)
            The attributes (anything :func:`~bafo_pipeline.attributes.as_sensitive_frame`
            accepts).

        Returns
        -------
        self : ConditionalTransport
        """
        X = validate_data(self, X, dtype=[np.float64, np.float32], ensure_min_samples=2)
        if sensitive_features is None:
            raise ValueError(
                "ConditionalTransport needs sensitive_features at fit time (with metadata routing in pipelines)"
            )
        frame = as_sensitive_frame(sensitive_features, n_rows=len(X))
        self.schema_ = AttributeSchema.infer(frame, kinds=self.attribute_kinds)
        continuous = [frame[a.name].to_numpy(dtype=float) for a in self.schema_.attributes if a.kind == "continuous"]
        self.bin_edges_ = [quantile_bin_edges(values, self.continuous_bins) for values in continuous]
        self.spline_knots_ = [_spline_knots(values, self.smooth_mean_knots) for values in continuous]
        codes = self._codes(frame)
        Z = X.astype(np.float64)
        self._fit_smooth_mean(Z, codes, frame)
        Z = Z - self._smooth_mean(codes, frame)
        self._fit_cells(Z, self._cell_ids(codes))
        return self

    def _fit_smooth_mean(self, Z: np.ndarray, codes: np.ndarray, frame: pd.DataFrame) -> None:
        """Ridge (unpenalised intercept) of ``Z`` on the attribute design matrix."""
        design = self._design(codes, frame)
        self.design_mean_ = design.mean(axis=0)
        if not design.shape[1]:
            self.ridge_alpha_ = np.full(Z.shape[1], np.nan)
            self.ridge_coef_ = np.zeros((0, Z.shape[1]))
            return
        if self.ridge_alpha == "auto":
            ridge = RidgeCV(alphas=RIDGE_ALPHAS, alpha_per_target=True).fit(design, Z)
            alphas = ridge.alpha_
        else:
            ridge = Ridge(alpha=float(self.ridge_alpha)).fit(design, Z)
            alphas = float(self.ridge_alpha)
        self.ridge_alpha_ = np.broadcast_to(alphas, Z.shape[1]).astype(float)
        self.ridge_coef_ = np.atleast_2d(ridge.coef_).T

    def _fit_cells(self, Z: np.ndarray, cells: np.ndarray) -> None:
        self.mean_ = Z.mean(axis=0)
        pooled = np.atleast_2d(np.cov(Z.T))
        self.cell_ids_ = np.unique(cells)
        n_cells, n_features = len(self.cell_ids_), Z.shape[1]
        position = np.searchsorted(self.cell_ids_, cells)  # each row's cell, as an index into cell_ids_
        counts = np.bincount(position, minlength=n_cells)
        self.cell_counts_ = counts.astype(np.int64)
        cell_means = np.stack([Z[position == index].mean(axis=0) for index in range(n_cells)])
        self.cell_means_ = self._shrunk_cell_means(Z, position, cell_means, counts)
        self.transports_ = np.zeros((n_cells, n_features, n_features))
        self.inverse_transports_ = np.zeros_like(self.transports_)
        for index in range(n_cells):
            rows = Z[position == index]
            covariance = np.atleast_2d(np.cov(rows.T)) if len(rows) > 1 else pooled
            covariance = (len(rows) * covariance + self.shrinkage * pooled) / (len(rows) + self.shrinkage)
            root, inverse_root = _sqrt_and_inverse(covariance)
            middle, _ = _sqrt_and_inverse(root @ pooled @ root)
            transport = inverse_root @ middle @ inverse_root
            self.transports_[index] = transport
            self.inverse_transports_[index] = np.linalg.inv(transport)

    def _shrunk_cell_means(self, Z: np.ndarray, position: np.ndarray, cell_means: np.ndarray,
                           counts: np.ndarray) -> np.ndarray:
        """Each cell's mean pulled towards the pooled mean: by ``mean_shrinkage``, or by empirical Bayes."""
        deviations = cell_means - self.mean_
        if self.mean_shrinkage != "auto":
            return self.mean_ + (1.0 - float(self.mean_shrinkage)) * deviations
        if len(Z) <= len(counts):  # no within-cell spread to tell noise from signal by
            return cell_means
        centered = Z - cell_means[position]
        within = np.atleast_2d(centered.T @ centered) / (len(Z) - len(counts))
        values, vectors = np.linalg.eigh(within)
        if values.max() <= 0:  # every cell constant: its mean is no estimate, nothing to shrink
            return cell_means
        scales = np.sqrt(np.clip(values, 1e-9 * max(values.max(), np.finfo(float).tiny), None))
        whitened = deviations @ vectors / scales  # each column's sampling variance in cell c: 1 / n_c
        weights = counts / counts.sum()
        signal = np.maximum(0.0, weights @ whitened**2 - np.sum(weights / counts))
        kept = signal / (signal + 1.0 / counts[:, None])
        return self.mean_ + (kept * whitened * scales) @ vectors.T

    # ------------------------------------------------------------ transform
    def transform(self, X, *, sensitive_features=None) -> np.ndarray:
        """Move each row by its cell's map.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)
        sensitive_features : DataFrame of shape (n_samples, n_attributes)
            Each row's attributes; required.

        Returns
        -------
        X_moved : ndarray of shape (n_samples, n_features)
            Of the dtype of ``X`` (float64 for other dtypes).

        Raises
        ------
        ValueError
            Without ``sensitive_features``, for a row count other than ``X``'s, or
            for rows whose category or cell had no training rows (naming them).
        """
        return self._move(X, sensitive_features, inverse=False)

    def inverse_transform(self, X, *, sensitive_features=None) -> np.ndarray:
        """Move rows back: the exact inverse of :meth:`transform` given the same attributes.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)
        sensitive_features : DataFrame of shape (n_samples, n_attributes)
            Each row's attributes (exact categories; no fractions or mixtures).

        Returns
        -------
        X_original : ndarray of shape (n_samples, n_features)
        """
        return self._move(X, sensitive_features, inverse=True)

    def fit_transform(self, X, y=None, *, sensitive_features=None):
        """Fit, then transform ``X`` with the same ``sensitive_features``.

        Returns
        -------
        X_moved : ndarray of shape (n_samples, n_features)
        """
        return self.fit(X, y, sensitive_features=sensitive_features).transform(X, sensitive_features=sensitive_features)

    def _move(self, X, sensitive_features, *, inverse: bool) -> np.ndarray:
        check_is_fitted(self)
        X = validate_data(self, X, dtype=[np.float64, np.float32], reset=False)
        if sensitive_features is None:
            raise ValueError(
                "ConditionalTransport moves each attribute group's latents by that group's own map, so it needs the "
                f"sensitive attributes at transform time too: pass sensitive_features with columns {self.schema_.names}"
            )
        frame = as_sensitive_frame(sensitive_features, n_rows=len(X))
        codes = self._codes(frame)
        cells = self._fitted_cells(codes)
        shift = self._smooth_mean(codes, frame)
        Z = X.astype(np.float64)
        out = np.empty_like(Z)
        for index in np.unique(cells):
            rows = cells == index
            if inverse:
                out[rows] = self.cell_means_[index] + (Z[rows] - self.mean_) @ self.inverse_transports_[index].T
            else:
                out[rows] = self.mean_ + (Z[rows] - shift[rows] - self.cell_means_[index]) @ self.transports_[index].T
        if inverse:
            out += shift
        return out.astype(X.dtype, copy=False)

    # --------------------------------------------------- attributes → cells
    def _codes(self, frame: pd.DataFrame) -> np.ndarray:
        """``(n, n_attributes)`` int codes: a class's position in its categories, a continuous value's bin."""
        missing = [name for name in self.schema_.names if name not in frame.columns]
        if missing:
            raise ValueError(f"sensitive_features lack column(s) {missing}; got columns {list(frame.columns)}")
        codes = np.zeros((len(frame), len(self.schema_.attributes)), dtype=np.int64)
        edges = iter(self.bin_edges_)
        for j, attribute in enumerate(self.schema_.attributes):
            column = frame[attribute.name]
            if attribute.kind == "continuous":
                values = _finite_numbers(column, attribute.name)
                codes[:, j] = np.searchsorted(next(edges), values, side="right")
            else:
                codes[:, j] = _category_positions(column, attribute.categories)
                unknown = np.flatnonzero(codes[:, j] < 0)
                if len(unknown):
                    raise ValueError(
                        f"{_rows(unknown)}: attribute {attribute.name!r} has value {_shown(column.iloc[unknown[0]])}, "
                        f"which no training row had (known: {list(attribute.categories)}); ConditionalTransport "
                        "has no map for it"
                    )
        return codes

    def _radices(self) -> list[int]:
        edges = iter(self.bin_edges_)
        return [len(next(edges)) + 1 if a.kind == "continuous" else len(a.categories) for a in self.schema_.attributes]

    def _cell_ids(self, codes: np.ndarray) -> np.ndarray:
        ids = np.zeros(len(codes), dtype=np.int64)
        for j, radix in enumerate(self._radices()):
            ids = ids * radix + codes[:, j]
        return ids

    def _fitted_cells(self, codes: np.ndarray) -> np.ndarray:
        """Each row's position in ``cell_ids_``.

        A row whose cell had no training rows takes the map of the nearest fitted cell with the same
        classes (the nearest continuous bins; the smooth mean already follows the continuous values
        themselves); an error names the rows whose combination of classes had no training rows at all.
        """
        ids = self._cell_ids(codes)
        positions = np.minimum(np.searchsorted(self.cell_ids_, ids), len(self.cell_ids_) - 1)
        empty = np.flatnonzero(self.cell_ids_[positions] != ids)
        if not len(empty):
            return positions
        fitted_codes = self._cell_codes(self.cell_ids_)
        continuous = np.array([a.kind == "continuous" for a in self.schema_.attributes])
        unmapped = np.zeros(len(ids), dtype=bool)
        for cell in np.unique(ids[empty]):
            rows = ids == cell
            wanted = codes[np.argmax(rows)]
            same_classes = (fitted_codes[:, ~continuous] == wanted[~continuous]).all(axis=1)
            if not same_classes.any():
                unmapped |= rows
                continue
            distance = np.abs(fitted_codes[:, continuous] - wanted[continuous]).sum(axis=1)
            positions[rows] = np.flatnonzero(same_classes)[np.argmin(distance[same_classes])]
        if unmapped.any():
            first = np.flatnonzero(unmapped)
            raise ValueError(
                f"{_rows(first)}: no training row had the classes of the cell {self._describe_cell(codes[first[0]])}, "
                "so ConditionalTransport has no map for it"
            )
        return positions

    def _cell_codes(self, ids: np.ndarray) -> np.ndarray:
        """The inverse of :meth:`_cell_ids`: each cell id's attribute codes."""
        radices = self._radices()
        codes = np.zeros((len(ids), len(radices)), dtype=np.int64)
        rest = ids.copy()
        for j in reversed(range(len(radices))):
            rest, codes[:, j] = np.divmod(rest, radices[j])
        return codes

    def _describe_cell(self, codes: np.ndarray) -> str:
        parts, edges = [], iter(self.bin_edges_)
        for code, attribute in zip(codes, self.schema_.attributes):
            if attribute.kind == "continuous":
                bounds = np.concatenate([[-np.inf], next(edges), [np.inf]])
                parts.append(f"{attribute.name} in [{bounds[code]:g}, {bounds[code + 1]:g})")
            else:
                parts.append(f"{attribute.name}={attribute.categories[code]!r}")
        return "(" + ", ".join(parts) + ")"

    # ---------------------------------------------------------- smooth mean
    def _design(self, codes: np.ndarray, frame: pd.DataFrame) -> np.ndarray:
        """``[splines, one-hots, splines x one-hots]`` of the attributes (empty without ``smooth_mean_knots``)."""
        if not self.smooth_mean_knots:
            return np.zeros((len(frame), 0))
        splines, one_hots, knots = [], [], iter(self.spline_knots_)
        for j, attribute in enumerate(self.schema_.attributes):
            if attribute.kind == "continuous":
                splines.append(_spline_basis(frame[attribute.name].to_numpy(dtype=float), next(knots)))
            else:
                one_hots.append(np.eye(len(attribute.categories))[codes[:, j]])
        spline = np.hstack(splines) if splines else np.zeros((len(frame), 0))
        one_hot = np.hstack(one_hots) if one_hots else np.zeros((len(frame), 0))
        products = (spline[:, :, None] * one_hot[:, None, :]).reshape(len(frame), -1)
        return np.hstack([spline, one_hot, products])

    def _smooth_mean(self, codes: np.ndarray, frame: pd.DataFrame) -> np.ndarray:
        """The smooth mean of each row's attributes, relative to the training average."""
        if not self.smooth_mean_knots:
            return np.zeros((len(frame), self.n_features_in_))
        return (self._design(codes, frame) - self.design_mean_) @ self.ridge_coef_

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.transformer_tags.preserves_dtype = ["float64", "float32"]
        return tags


def _sqrt_and_inverse(matrix: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The symmetric square root of a covariance and its inverse (eigenvalues floored, relative to the largest)."""
    values, vectors = np.linalg.eigh((matrix + matrix.T) / 2)
    values = np.clip(values, 1e-9 * max(values.max(), np.finfo(float).tiny), None)
    return (vectors * np.sqrt(values)) @ vectors.T, (vectors / np.sqrt(values)) @ vectors.T


def _spline_knots(values: np.ndarray, n_knots: int) -> np.ndarray:
    """Knot vector of a cubic B-spline basis: ``n_knots`` training quantiles (as ``SplineTransformer(knots="quantile")``
    places them; repeated ones dropped), extended by ``SPLINE_DEGREE`` evenly spaced knots on each side."""
    if not n_knots:
        return np.zeros(0)
    base = np.unique(np.percentile(values, 100 * np.linspace(0, 1, n_knots)))
    if len(base) < 2:
        raise ValueError("a continuous attribute needs at least two distinct values for its spline")
    low, high = base[1] - base[0], base[-1] - base[-2]
    degree = SPLINE_DEGREE
    return np.concatenate([
        np.linspace(base[0] - degree * low, base[0] - low, degree),
        base,
        np.linspace(base[-1] + high, base[-1] + degree * high, degree),
    ])


def _spline_basis(values: np.ndarray, knots: np.ndarray) -> np.ndarray:
    """The B-spline basis at ``values``, held constant beyond the base knots (values are clipped to them)."""
    degree = SPLINE_DEGREE
    inside = np.clip(values, knots[degree], knots[-degree - 1])
    return BSpline.design_matrix(inside, knots, degree).toarray()


def _finite_numbers(column: pd.Series, name: str) -> np.ndarray:
    try:
        values = pd.to_numeric(column, errors="coerce").to_numpy(dtype=float)
    except (TypeError, ValueError):
        values = np.full(len(column), np.nan)
    bad = np.flatnonzero(~np.isfinite(values))
    if len(bad):
        raise ValueError(
            f"{_rows(bad)}: attribute {name!r} needs a finite number, got {_shown(column.iloc[bad[0]])}"
        )
    return values


def _category_positions(column: pd.Series, categories: tuple) -> np.ndarray:
    """Each value's position in ``categories`` (equality as ``value in categories``), -1 where none."""
    lookup: dict = {}
    for position, category in enumerate(categories):
        lookup.setdefault(category, position)
    try:
        codes, uniques = pd.factorize(column)  # missing values get code -1
    except TypeError:  # unhashable values (a mixture of categories): none has a map
        return np.full(len(column), -1, dtype=np.int64)
    positions = np.array([lookup.get(value, -1) for value in uniques] + [-1], dtype=np.int64)
    return positions[codes]  # code -1 picks the trailing -1


def _shown(value) -> str:
    """A value as its user wrote it: ``nan``, ``'x'``, ``3.5`` (not ``np.float64(nan)``)."""
    return repr(value.item() if isinstance(value, np.generic) else value)


def _rows(rows: np.ndarray) -> str:
    """``"row 3"`` or ``"rows 3, 9, 12 and 4 more"``: 1-based positions of offending rows."""
    named = ", ".join(str(int(r) + 1) for r in rows[:ROWS_NAMED])
    more = f" and {len(rows) - ROWS_NAMED} more" if len(rows) > ROWS_NAMED else ""
    return f"{'row' if len(rows) == 1 else 'rows'} {named}{more} (1-based)"
