"""The attribute vocabulary: which attributes are sensitive, what kind each is, how it is encoded.

Everything in the package that reads sensitive attributes goes through this module:

- :data:`DEFAULT_SENSITIVE`, the attributes concealed and audited unless told otherwise;
- :func:`as_sensitive_frame`, the one converter of user input (pandas, polars, a mapping of
  columns, a 2-D array with column names) into a DataFrame aligned with ``X`` by position;
- :func:`infer_kind`, the one rule deciding whether a column is continuous, binary or
  categorical (the model and the audit agree on it);
- :class:`AttributeSchema`, the encoding of attributes into the vector the decoder is
  conditioned on.

Three kinds of attribute are supported:

- ``continuous`` (age): standardised, ``(x - center) / scale``; one column.
- ``binary`` (gender): ``0`` for the first category, ``1`` for the second; one
  column. At decode time any fraction in ``[0, 1]`` is allowed (``0.5`` is the
  paper's "neutral" gender), unless the categories are numbers other than 0 and 1
  (1 and 2: where would 0.5 lie?); a mapping ``{category: weight}`` is always.
- ``categorical`` (ethnicity): one-hot; at decode time a mapping
  ``{category: weight}`` gives a mixture (weights are normalised to sum to 1).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import pandas as pd

__all__ = [
    "DEFAULT_SENSITIVE",
    "KINDS",
    "MAX_CATEGORIES",
    "MAX_DISCRETE_LEVELS",
    "Attribute",
    "AttributeKind",
    "AttributeSchema",
    "as_sensitive_frame",
    "infer_kind",
    "quantile_bin_edges",
]

AttributeKind = Literal["continuous", "binary", "categorical"]
KINDS = ("continuous", "binary", "categorical")
DEFAULT_SENSITIVE: tuple[str, ...] = ("age", "gender", "ethnicity")
"""The attributes concealed and audited by default (UTKFace's labels)."""
MAX_DISCRETE_LEVELS = 10
"""A numeric column with more distinct values than this is continuous (see :func:`infer_kind`)."""
MAX_CATEGORIES = 64
"""A categorical attribute may have at most this many categories."""


def _plain(value: Any) -> Any:
    """A numpy scalar as the Python value JSON can hold."""
    return value.item() if isinstance(value, np.generic) else value


@dataclass(frozen=True)
class Attribute:
    """One sensitive attribute and how it is encoded.

    Parameters
    ----------
    name : str
        Column name.
    kind : {"continuous", "binary", "categorical"}
    categories : tuple, default=()
        The values of a binary (exactly two) or categorical attribute, in
        encoding order.
    center, scale : float
        Standardisation of a continuous attribute.
    """

    name: str
    kind: AttributeKind
    categories: tuple = ()
    center: float = 0.0
    scale: float = 1.0

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"attribute {self.name!r}: kind must be one of {KINDS}, got {self.kind!r}")
        if self.kind == "binary" and len(self.categories) != 2:
            raise ValueError(f"binary attribute {self.name!r} needs exactly 2 categories, got {self.categories}")
        if self.kind == "categorical" and len(self.categories) < 2:
            raise ValueError(f"categorical attribute {self.name!r} needs at least 2 categories")
        if self.kind == "continuous" and not self.scale > 0:
            raise ValueError(f"continuous attribute {self.name!r} needs a positive scale, got {self.scale}")

    @property
    def takes_fractions(self) -> bool:
        """Whether a number that is not a category means a fraction of the second category (decode time).

        Binary attributes only, and only where that cannot be misread: categories that are not numbers
        ("female", "male"), or exactly 0 and 1. With other numbers (1 and 2, -1 and 1) the fraction
        0.5 would not lie between them.
        """
        if self.kind != "binary":
            return False
        if not all(_is_number(category) for category in self.categories):
            return True
        return [float(category) for category in self.categories] == [0.0, 1.0]

    @property
    def width(self) -> int:
        """Number of columns this attribute takes in the condition vector."""
        return len(self.categories) if self.kind == "categorical" else 1

    def encode(self, values: pd.Series | np.ndarray | list, *, allow_fractional: bool = False) -> np.ndarray:
        """Encode values into a float32 array of shape ``(n, width)``.

        Parameters
        ----------
        values : Series, 1-D array or sequence
            One value per row.
        allow_fractional : bool, default=False
            Accept a fraction in ``[0, 1]`` for a binary attribute (see
            :attr:`takes_fractions`) and a ``{category: weight}`` mapping for a
            binary or categorical one (decode time).

        Returns
        -------
        encoded : ndarray of shape (n, width), dtype float32

        Raises
        ------
        ValueError
            Naming the row and the problem: a missing value, an unknown category.
        """
        return self._encode_column(_Column.of(values), allow_fractional)

    def _encode_column(self, column: _Column, allow_fractional: bool) -> np.ndarray:
        out = np.zeros((len(column), self.width), dtype=np.float32)
        resolved = self._encode_vectorised(column, out, allow_fractional)
        if not resolved.all():
            self._encode_one_by_one(column, np.flatnonzero(~resolved), out, allow_fractional)
        return out

    def _encode_vectorised(self, column: _Column, out: np.ndarray, allow_fractional: bool) -> np.ndarray:
        """Encode into ``out`` the rows whose value is plainly valid; return which rows those are.

        The rest (missing values, unknown categories, mixtures, mixed types) go through
        :meth:`_encode_one`, which defines the encoding and its error messages; this
        method only takes the common cases off its hands, with identical results.
        """
        if self.kind == "continuous":
            numbers = column.as_float()
            if numbers is None:
                return np.zeros(len(column), dtype=bool)
            resolved = np.isfinite(numbers)
            out[resolved, 0] = (numbers[resolved] - self.center) / self.scale
            return resolved
        index = column.category_index(self.categories)
        resolved = index >= 0
        rows = np.flatnonzero(resolved)
        if self.kind == "binary":
            out[rows, 0] = index[rows]
        else:
            out[rows, index[rows]] = 1.0
        if allow_fractional and self.takes_fractions and column.numeric_kind in ("i", "u", "f"):
            # Not a category, not missing, a plain number in [0, 1]: a fraction (decode time).
            numbers = column.as_float()
            with np.errstate(invalid="ignore"):
                fractional = ~resolved & (numbers >= 0) & (numbers <= 1)
            out[fractional, 0] = numbers[fractional]
            resolved |= fractional
        return resolved

    def _encode_one_by_one(self, column: _Column, rows: np.ndarray, out: np.ndarray, allow_fractional: bool) -> None:
        """Encode ``rows`` with :meth:`_encode_one`, once per distinct object (a mixture repeated on every row)."""
        values = column.python_values(rows)
        ids = np.fromiter(map(id, values), dtype=np.uint64, count=len(values))
        _, first, inverse = np.unique(ids, return_index=True, return_inverse=True)
        encoded = np.zeros((len(first), self.width), dtype=np.float32)
        for group in np.argsort(first, kind="stable"):  # in row order, so the first bad row is the one named
            at = first[group]
            encoded[group] = self._encode_one(values[at], int(rows[at]), allow_fractional)
        out[rows] = encoded[inverse.reshape(-1)]

    def _encode_one(self, value: Any, row: int, allow_fractional: bool) -> np.ndarray | float:
        where = f"attribute {self.name!r}, row {row}"
        if isinstance(value, Mapping):
            if not (allow_fractional and self.kind in ("binary", "categorical")):
                raise ValueError(f"{where}: a mapping of weights is only allowed for a binary or categorical attribute "
                                 "at decode time")
            mixture = self._mixture(value, where)
            return mixture if self.kind == "categorical" else float(mixture[1])
        if _is_missing(value):
            raise ValueError(f"{where}: missing value ({value!r})")
        if self.kind == "continuous":
            try:
                number = float(value)
            except (TypeError, ValueError):
                raise ValueError(f"{where}: expected a number, got {value!r}") from None
            if not np.isfinite(number):
                raise ValueError(f"{where}: expected a finite number, got {value!r}")
            return (number - self.center) / self.scale
        if not _is_hashable(value):
            raise ValueError(f"{where}: expected a single category, got {type(value).__name__} {value!r}")
        if value in self.categories:
            index = self.categories.index(value)
            if self.kind == "binary":
                return float(index)
            one_hot = np.zeros(self.width, dtype=np.float32)
            one_hot[index] = 1.0
            return one_hot
        if allow_fractional and self.takes_fractions and _is_number(value) and 0.0 <= float(value) <= 1.0:
            return float(value)
        hint = " (or a fraction in [0, 1])" if allow_fractional and self.takes_fractions else ""
        raise ValueError(f"{where}: unknown category {value!r}; known: {list(self.categories)}{hint}")

    def _mixture(self, weights: Mapping, where: str) -> np.ndarray:
        mixture = np.zeros(len(self.categories), dtype=np.float32)
        for category, weight in weights.items():
            if category not in self.categories:
                raise ValueError(f"{where}: unknown category {category!r}; known: {list(self.categories)}")
            if not _is_number(weight) or not np.isfinite(float(weight)):
                raise ValueError(f"{where}: the weight of {category!r} must be a finite number, got {weight!r}")
            if weight < 0:
                raise ValueError(f"{where}: negative weight {weight} for {category!r}")
            mixture[self.categories.index(category)] = weight
        if mixture.sum() <= 0:
            raise ValueError(f"{where}: mixture weights sum to zero")
        return mixture / mixture.sum()

    def neutral(self) -> Any:
        """A decode-time value that favours no group: the mean age, gender 0.5, an even mix of categories."""
        if self.kind == "continuous":
            return self.center
        if self.kind == "binary" and self.takes_fractions:
            return 0.5
        return {category: 1.0 for category in self.categories}

    def to_dict(self) -> dict:
        """JSON-ready description."""
        data: dict[str, Any] = {"name": self.name, "kind": self.kind}
        if self.kind == "continuous":
            data.update(center=float(self.center), scale=float(self.scale))
        else:
            data["categories"] = [_plain(c) for c in self.categories]
        return data

    @classmethod
    def from_dict(cls, data: Mapping) -> "Attribute":
        """Inverse of :meth:`to_dict`."""
        return cls(
            name=data["name"],
            kind=data["kind"],
            categories=tuple(data.get("categories", ())),
            center=float(data.get("center", 0.0)),
            scale=float(data.get("scale", 1.0)),
        )


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, bool)


def _is_missing(value: Any) -> bool:
    """None, NaN, ``pd.NA`` or ``NaT`` (``pd.NA`` cannot be compared with categories, so catch it first)."""
    return value is None or (pd.api.types.is_scalar(value) and bool(pd.isna(value)))


def _is_hashable(value: Any) -> bool:
    try:
        hash(value)
    except TypeError:
        return False
    return True


class _Column:
    """One column of attribute values, for vectorised encoding, with the values a row loop would see.

    ``python_values(rows)`` are what iterating over the input yields (``list(values)``),
    so the row-by-row encoder sees exactly what it always saw.
    """

    def __init__(self, data: pd.Series | np.ndarray, python_values) -> None:
        self.data = data  # a Series, or a 1-D array
        self._python_values = python_values

    @classmethod
    def of(cls, values) -> "_Column":
        if isinstance(values, pd.Series):
            return cls(values, lambda rows: list(values.iloc[rows]))
        if isinstance(values, np.ndarray) and values.ndim == 1:
            return cls(values, lambda rows: list(values[rows]))
        items = list(values)
        return cls(np.fromiter(items, dtype=object, count=len(items)), lambda rows: [items[i] for i in rows])

    @classmethod
    def of_frame(cls, column: pd.Series) -> "_Column":
        """A DataFrame column, whose values a row loop reads with ``tolist()`` (Python scalars)."""
        return cls(column, lambda rows: column.iloc[rows].tolist())

    def __len__(self) -> int:
        return len(self.data)

    @property
    def numeric_kind(self) -> str | None:
        """``"b"``, ``"i"``, ``"u"`` or ``"f"`` for a column of numbers (nullable ones too), else None."""
        kind = getattr(self.data.dtype, "kind", "O")
        return kind if kind in ("b", "i", "u", "f") else None

    def python_values(self, rows: np.ndarray) -> list:
        return self._python_values(rows)

    def as_float(self) -> np.ndarray | None:
        """The values as float64 (``float(value)`` each; NaN where missing), or None if some is no number."""
        if self.numeric_kind:
            if isinstance(self.data, pd.Series):
                return self.data.to_numpy(dtype=np.float64, na_value=np.nan)
            return self.data.astype(np.float64)
        if self.data.dtype.kind in ("O", "U", "S"):
            try:
                return np.asarray(self.data, dtype=object).astype(np.float64)
            except (TypeError, ValueError, OverflowError):
                return None
        return None

    def category_index(self, categories: tuple) -> np.ndarray:
        """Each value's position in ``categories``; ``-1`` where missing, not found, or left to the row loop."""
        try:
            codes, uniques = pd.factorize(self.data)  # missing values get code -1
            # A dict lookup tests membership as ``value in categories`` does (identity or equality),
            # and the values factorize groups together are equal, so one lookup per distinct value.
            lookup: dict = {}
            for position, category in enumerate(categories):
                lookup.setdefault(category, position)
            positions = np.array([lookup.get(value, -1) for value in uniques] + [-1], dtype=np.intp)
        except TypeError:  # unhashable values (mixtures) or categories
            return np.full(len(self.data), -1, dtype=np.intp)
        return positions[codes]  # code -1 picks the trailing -1


@dataclass(frozen=True)
class AttributeSchema:
    """The ordered sensitive attributes a model is conditioned on.

    Build one with :meth:`infer` from a DataFrame, or by hand from
    :class:`Attribute` objects.
    """

    attributes: tuple[Attribute, ...]

    def __post_init__(self) -> None:
        names = [a.name for a in self.attributes]
        if not names:
            raise ValueError("an attribute schema needs at least one attribute")
        if len(set(names)) != len(names):
            raise ValueError(f"duplicate attribute names in schema: {names}")

    @property
    def names(self) -> list[str]:
        """Attribute names, in order."""
        return [a.name for a in self.attributes]

    @property
    def width(self) -> int:
        """Total width of the condition vector."""
        return sum(a.width for a in self.attributes)

    def __getitem__(self, name: str) -> Attribute:
        for attribute in self.attributes:
            if attribute.name == name:
                return attribute
        raise KeyError(f"no attribute {name!r} in schema {self.names}")

    def encode(self, frame: pd.DataFrame | Mapping, *, allow_fractional: bool = False) -> np.ndarray:
        """Encode a table of attribute values into a float32 ``(n, width)`` matrix.

        Parameters
        ----------
        frame : DataFrame or mapping of column name to values
            Must hold every attribute of the schema; other columns are ignored.
            Anything :func:`as_sensitive_frame` accepts.
        allow_fractional : bool, default=False
            See :meth:`Attribute.encode`.
        """
        frame = as_sensitive_frame(frame)
        missing = [name for name in self.names if name not in frame.columns]
        if missing:
            raise ValueError(
                f"sensitive features lack column(s) {missing}; got columns {list(frame.columns)}"
            )
        blocks = [a._encode_column(_Column.of_frame(frame[a.name]), allow_fractional) for a in self.attributes]
        return np.concatenate(blocks, axis=1)

    def to_dict(self) -> dict:
        """JSON-ready description."""
        return {"attributes": [a.to_dict() for a in self.attributes]}

    @classmethod
    def from_dict(cls, data: Mapping) -> "AttributeSchema":
        """Inverse of :meth:`to_dict`."""
        return cls(tuple(Attribute.from_dict(a) for a in data["attributes"]))

    @classmethod
    def infer(cls, frame: pd.DataFrame | Mapping, kinds: Mapping[str, str] | None = None) -> "AttributeSchema":
        """Infer each column's kind and encoding from the data.

        Kinds follow :func:`infer_kind`: numeric columns with more than
        :data:`MAX_DISCRETE_LEVELS` (10) distinct values are continuous; other
        columns with two distinct values are binary; the rest categorical.

        Parameters
        ----------
        frame : DataFrame or mapping of column name to values
            One column per sensitive attribute; anything :func:`as_sensitive_frame`
            accepts.
        kinds : mapping of str to str, optional
            Override the inferred kind of some columns.

        Raises
        ------
        ValueError
            For missing or infinite values (naming column and rows), a
            constant column, a categorical column with more than 64
            categories, a binary column without exactly two values, or
            non-string or duplicate column names.
        """
        frame = as_sensitive_frame(frame)
        columns = list(frame.columns)
        if not all(isinstance(name, str) for name in columns):
            raise ValueError(f"sensitive feature column names must be strings, got {columns}")
        if len(set(columns)) != len(columns):
            raise ValueError(f"duplicate sensitive feature column names: {columns}")
        kinds = dict(kinds or {})
        unknown = set(kinds) - set(columns)
        if unknown:
            raise ValueError(f"kinds given for columns not in the data: {sorted(unknown)}; columns are {columns}")
        invalid = {name: kind for name, kind in kinds.items() if kind not in KINDS}
        if invalid:
            raise ValueError(f"invalid attribute kinds {invalid}; each must be one of {KINDS}")
        return cls(tuple(_infer_attribute(frame[name], kinds.get(name)) for name in frame.columns))


def infer_kind(values) -> AttributeKind:
    """The kind of a sensitive attribute, from its values: the package's one rule.

    A numeric (not boolean) column with more than :data:`MAX_DISCRETE_LEVELS`
    (10) distinct values is ``"continuous"``; any other column with exactly two
    distinct values is ``"binary"``; the rest is ``"categorical"``. Missing
    values are not counted. So ages in years are continuous, a 0/1 or
    ``"female"/"male"`` column is binary, and ethnicity labels, or ages already
    cut into up to 10 bands, are categorical.

    The model (:meth:`AttributeSchema.infer`) uses this rule as it is; the leakage
    audit, which needs only "regress or classify", reads ``"binary"`` as categorical.

    Parameters
    ----------
    values : array-like of shape (n_samples,)
        A pandas or polars Series, a 1-D array or a list.

    Returns
    -------
    kind : {"continuous", "binary", "categorical"}
    """
    column = _as_series(values)
    return _kind_of(column, column.nunique(dropna=True))


def quantile_bin_edges(values: np.ndarray, bins: int) -> np.ndarray:
    """The distinct inner edges of ``bins`` equal-count bins of ``values`` (none for fewer than 2 bins).

    Rows fall into ``np.searchsorted(edges, values, side="right")``: the groups the
    concealment steps use for a continuous attribute (age bands).
    """
    if bins < 2:
        return np.zeros(0)
    return np.unique(np.quantile(values, np.linspace(0, 1, bins + 1)[1:-1]))


def _kind_of(column: pd.Series, n_distinct: int) -> AttributeKind:
    if _is_numeric_column(column) and n_distinct > MAX_DISCRETE_LEVELS:
        return "continuous"
    return "binary" if n_distinct == 2 else "categorical"


def as_sensitive_frame(
    sensitive_features,
    *,
    n_rows: int | None = None,
    columns: Sequence[str] | None = None,
) -> pd.DataFrame:
    """Sensitive features as a pandas DataFrame whose rows match ``X`` by position.

    The one converter of user input used everywhere in the package.

    Parameters
    ----------
    sensitive_features : DataFrame, Series, mapping, or array-like
        One of:

        - a pandas DataFrame or Series (its index is dropped: rows match by position);
        - a polars DataFrame or Series, or any object with ``to_pandas()``, the Arrow
          PyCapsule stream interface or the dataframe interchange protocol;
        - a mapping of column name to one-dimensional values (lists, arrays, Series);
        - a 2-D array or a list of rows, columns named by ``columns`` or else
          ``sensitive_0``, ``sensitive_1``, ...;
        - a 1-D array or list: a single column.
    n_rows : int, optional
        The number of samples in ``X``; a different number of rows is an error.
    columns : sequence of str, optional
        Names of the columns of an array, a list of rows or an unnamed Series.
        Input that names its columns already (a DataFrame, a mapping) must not get them.

    Returns
    -------
    frame : DataFrame
        With a fresh ``RangeIndex``.

    Raises
    ------
    ValueError
        For a row count other than ``n_rows``, a mapping holding single values or
        columns of different lengths, ``columns`` of the wrong length, or input of
        another shape.
    TypeError
        For ``columns`` given with input that names its columns.
    """
    frame = _to_frame(sensitive_features, columns)
    if n_rows is not None and len(frame) != n_rows:
        raise ValueError(f"sensitive_features has {len(frame)} rows but X has {n_rows} samples")
    return frame


def _to_frame(data, columns: Sequence[str] | None) -> pd.DataFrame:
    named = isinstance(data, (pd.DataFrame, Mapping)) or _is_foreign_frame(data)
    if named and columns is not None:
        raise TypeError(
            f"columns= names the columns of an array; these {type(data).__name__} sensitive_features "
            "already name theirs"
        )
    if isinstance(data, pd.DataFrame):
        return data.reset_index(drop=True)
    if _is_foreign_frame(data) or _is_foreign_series(data):
        return _to_frame(_foreign_to_pandas(data), columns)
    if isinstance(data, pd.Series):
        name = data.name if isinstance(data.name, str) else "sensitive_0"
        return data.reset_index(drop=True).to_frame(_column_names(columns, 1, default=[name])[0])
    if isinstance(data, Mapping):
        return _frame_of_mapping(data)
    if isinstance(data, (str, bytes)) or np.ndim(data) not in (1, 2):
        raise ValueError(
            "sensitive_features must be a DataFrame (pandas or polars), a Series, a mapping of column name "
            f"to values, or a 1-D/2-D array; got {type(data).__name__}"
        )
    # Lists of rows keep each column's own type (np.asarray would turn ages into strings next to "male").
    table = data if isinstance(data, np.ndarray) else list(data)
    frame = pd.DataFrame(table)
    if isinstance(table, np.ndarray) and table.dtype == object:
        frame = frame.infer_objects()
    frame.columns = _column_names(columns, frame.shape[1], default=[f"sensitive_{i}" for i in range(frame.shape[1])])
    return frame


def _column_names(columns: Sequence[str] | None, width: int, *, default: list) -> list:
    if columns is None:
        return default
    if isinstance(columns, str):
        columns = [columns]
    names = list(columns)
    if len(names) != width:
        raise ValueError(f"columns= gives {len(names)} name(s) {names} for sensitive_features with {width} column(s)")
    return names


def _frame_of_mapping(data: Mapping) -> pd.DataFrame:
    scalars = [name for name, value in data.items() if np.ndim(value) == 0 and not _is_foreign_series(value)]
    if scalars:
        raise ValueError(
            f"sensitive_features{scalars} hold single values; give one value per row "
            "(only inverse_transform repeats a single value over all rows)"
        )
    columns = {name: _column_values(name, value) for name, value in data.items()}
    lengths = {name: len(values) for name, values in columns.items()}
    if len(set(lengths.values())) > 1:
        raise ValueError(f"sensitive_features columns differ in length: {lengths}")
    return pd.DataFrame(columns, index=pd.RangeIndex(next(iter(lengths.values()), 0)))


def _column_values(name, value) -> Any:
    """One column of a mapping, by position (a Series' index is dropped, not aligned)."""
    if _is_foreign_series(value):
        value = _foreign_to_pandas(value)
    if isinstance(value, pd.Series):
        return value.reset_index(drop=True)  # keeps its dtype (category, nullable integers)
    if isinstance(value, np.ndarray):
        if value.ndim != 1:
            raise ValueError(f"sensitive_features[{name!r}] must be one-dimensional, got shape {value.shape}")
        return value
    return list(value)


def _is_foreign_frame(data) -> bool:
    """A dataframe of another library (polars, pyarrow, ...), not pandas."""
    if isinstance(data, (pd.DataFrame, pd.Series, np.ndarray)):
        return False
    if hasattr(data, "__dataframe__") or hasattr(data, "__arrow_c_stream__"):
        return not _is_foreign_series(data)
    return hasattr(data, "to_pandas") and getattr(data, "ndim", 2) == 2 and not _is_foreign_series(data)


def _is_foreign_series(data) -> bool:
    """A one-column series of another library (polars.Series, pyarrow arrays)."""
    if isinstance(data, (pd.DataFrame, pd.Series, np.ndarray)) or not hasattr(data, "to_pandas"):
        return False
    return getattr(data, "ndim", None) == 1 or type(data).__name__ in ("Series", "Array", "ChunkedArray")


def _foreign_to_pandas(data) -> pd.DataFrame | pd.Series:
    if hasattr(data, "to_pandas"):
        return data.to_pandas()
    return pd.api.interchange.from_dataframe(data)


def _as_series(values) -> pd.Series:
    if _is_foreign_series(values):
        values = _foreign_to_pandas(values)
    if isinstance(values, pd.Series):
        return values
    if isinstance(values, pd.DataFrame) or np.ndim(values) != 1:
        raise ValueError(f"expected one column of values, got {type(values).__name__} of shape {np.shape(values)}")
    return pd.Series(values if isinstance(values, np.ndarray) else list(values))


def _is_numeric_column(column: pd.Series) -> bool:
    return pd.api.types.is_numeric_dtype(column) and not pd.api.types.is_bool_dtype(column)


def _infer_attribute(column: pd.Series, kind: str | None) -> Attribute:
    name = str(column.name)
    nulls = np.flatnonzero(column.isna().to_numpy())
    if len(nulls):
        raise ValueError(f"attribute {name!r}: missing values at rows {nulls[:10].tolist()}")
    numeric = _is_numeric_column(column)
    distinct = pd.unique(column)
    kind = kind or _kind_of(column, len(distinct))  # infer_kind's rule; no missing values here
    if kind == "continuous":
        if not numeric:
            raise ValueError(f"attribute {name!r}: a continuous attribute needs numbers, got dtype {column.dtype}")
        values = column.to_numpy(dtype=float)
        infinite = np.flatnonzero(~np.isfinite(values))
        if len(infinite):
            raise ValueError(f"attribute {name!r}: infinite values at rows {infinite[:10].tolist()}")
        scale = float(values.std()) or 1.0
        return Attribute(name, "continuous", center=float(values.mean()), scale=scale)
    if len(distinct) < 2:
        raise ValueError(f"attribute {name!r} has a single value ({distinct[0]!r}); nothing to condition on")
    if len(distinct) > MAX_CATEGORIES:
        raise ValueError(
            f"attribute {name!r} has {len(distinct)} distinct values; declare it continuous "
            "(kinds={...: 'continuous'}) or bin it"
        )
    categories = tuple(_plain(c) for c in sorted(distinct, key=_sort_key))
    return Attribute(name, kind, categories=categories)


def _sort_key(value: Any) -> tuple:
    return (0, value, "") if _is_number(value) else (1, 0, str(value))
