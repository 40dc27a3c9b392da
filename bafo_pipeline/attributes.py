"""Encoding sensitive attributes into the vector the decoder is conditioned on.

Three kinds of attribute are supported:

- ``continuous`` (age): standardised, ``(x - center) / scale``; one column.
- ``binary`` (gender): ``0`` for the first category, ``1`` for the second; one
  column. At decode time any fraction in ``[0, 1]`` is allowed (``0.5`` is the
  paper's "neutral" gender).
- ``categorical`` (ethnicity): one-hot; at decode time a mapping
  ``{category: weight}`` gives a mixture (weights are normalised to sum to 1).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import pandas as pd

AttributeKind = Literal["continuous", "binary", "categorical"]
KINDS = ("continuous", "binary", "categorical")
MAX_CATEGORIES = 64


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
    def width(self) -> int:
        """Number of columns this attribute takes in the condition vector."""
        return len(self.categories) if self.kind == "categorical" else 1

    def encode(self, values: pd.Series | np.ndarray | list, *, allow_fractional: bool = False) -> np.ndarray:
        """Encode values into a float32 array of shape ``(n, width)``.

        Parameters
        ----------
        values : sequence
            One value per row.
        allow_fractional : bool, default=False
            Accept a fraction in ``[0, 1]`` for a binary attribute and a
            ``{category: weight}`` mapping for a categorical one (decode time).

        Raises
        ------
        ValueError
            Naming the row and the problem: a missing value, an unknown category.
        """
        values = list(values)
        out = np.zeros((len(values), self.width), dtype=np.float32)
        for row, value in enumerate(values):
            out[row] = self._encode_one(value, row, allow_fractional)
        return out

    def _encode_one(self, value: Any, row: int, allow_fractional: bool) -> np.ndarray | float:
        where = f"attribute {self.name!r}, row {row}"
        if isinstance(value, Mapping):
            if not (allow_fractional and self.kind == "categorical"):
                raise ValueError(f"{where}: a mapping of weights is only allowed for a categorical attribute at decode time")
            return self._mixture(value, where)
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
        if allow_fractional and self.kind == "binary" and _is_number(value) and 0.0 <= float(value) <= 1.0:
            return float(value)
        hint = " (or a fraction in [0, 1])" if allow_fractional and self.kind == "binary" else ""
        raise ValueError(f"{where}: unknown category {value!r}; known: {list(self.categories)}{hint}")

    def _mixture(self, weights: Mapping, where: str) -> np.ndarray:
        mixture = np.zeros(self.width, dtype=np.float32)
        for category, weight in weights.items():
            if category not in self.categories:
                raise ValueError(f"{where}: unknown category {category!r}; known: {list(self.categories)}")
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
        if self.kind == "binary":
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
        allow_fractional : bool, default=False
            See :meth:`Attribute.encode`.
        """
        frame = _as_frame(frame)
        missing = [name for name in self.names if name not in frame.columns]
        if missing:
            raise ValueError(
                f"sensitive features lack column(s) {missing}; got columns {list(frame.columns)}"
            )
        blocks = [a.encode(frame[a.name].tolist(), allow_fractional=allow_fractional) for a in self.attributes]
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

        Numeric columns with more than 10 distinct values are continuous;
        columns with two distinct values are binary; the rest categorical.

        Parameters
        ----------
        frame : DataFrame or mapping of column name to values
            One column per sensitive attribute.
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
        frame = _as_frame(frame)
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


def _as_frame(frame: pd.DataFrame | Mapping) -> pd.DataFrame:
    if isinstance(frame, pd.DataFrame):
        return frame
    if isinstance(frame, pd.Series):
        return frame.to_frame()
    if isinstance(frame, Mapping):
        return pd.DataFrame(dict(frame))
    raise TypeError(
        "sensitive features must be a pandas DataFrame (or a mapping of column name to values), "
        f"got {type(frame).__name__}"
    )


def _infer_attribute(column: pd.Series, kind: str | None) -> Attribute:
    name = str(column.name)
    nulls = np.flatnonzero(column.isna().to_numpy())
    if len(nulls):
        raise ValueError(f"attribute {name!r}: missing values at rows {nulls[:10].tolist()}")
    distinct = pd.unique(column)
    numeric = pd.api.types.is_numeric_dtype(column) and not pd.api.types.is_bool_dtype(column)
    if kind is None:
        if numeric and len(distinct) > 10:
            kind = "continuous"
        elif len(distinct) == 2:
            kind = "binary"
        else:
            kind = "categorical"
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
