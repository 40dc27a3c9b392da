"""Turn user input (embeddings, a labels table) into validated arrays for the audit.

Everything here fails loudly: mismatched ids, missing label columns, a single-class
attribute or a class too small for the folds raise ``ValueError`` naming the problem;
dropped rows (missing labels) raise an :class:`AuditWarning` and are recorded.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from ..attributes import DEFAULT_SENSITIVE
from ..attributes import infer_kind as attribute_kind
from ._warnings import warn

__all__ = [
    "ATTRIBUTE_KINDS",
    "DEFAULT_ATTRIBUTES",
    "DEFAULT_BANDS",
    "Attribute",
    "align_by_id",
    "band_names",
    "check_representations",
    "class_text",
    "encode_like",
    "infer_kind",
    "prepare_attributes",
]

ATTRIBUTE_KINDS = ("categorical", "continuous")
DEFAULT_ATTRIBUTES = DEFAULT_SENSITIVE
DEFAULT_BANDS: dict[str, tuple[float, ...]] = {"age": (20.0, 40.0, 60.0)}


@dataclass
class Attribute:
    """One attribute ready to be probed.

    Attributes
    ----------
    name : str
        Column name (``"<column>_band"`` for a banded continuous attribute).
    kind : {"categorical", "continuous"}
    rows : ndarray of int
        Rows of the aligned sample that have a label for this attribute.
    values : ndarray
        Class codes ``0..K-1`` (categorical) or float values (continuous), one per row
        in ``rows``.
    classes : list of str or None
        Class names, indexed by code (categorical only).
    derived_from : str or None
        Source column of a banded attribute.
    edges : tuple of float or None
        Band edges of a banded attribute; ``band_names`` gives ``all_bands``' names.
    all_bands : list of str or None
        Every band's name, empty ones included (``classes`` keeps the non-empty ones).
    """

    name: str
    kind: str
    rows: np.ndarray
    values: np.ndarray
    classes: list[str] | None = None
    derived_from: str | None = None
    edges: tuple[float, ...] | None = None
    all_bands: list[str] | None = None

    @property
    def n_classes(self) -> int:
        return 0 if self.classes is None else len(self.classes)

    def summary(self) -> dict:
        """JSON-ready description (no per-sample data)."""
        out: dict = {"kind": self.kind, "n": int(len(self.rows)), "derived_from": self.derived_from}
        if self.kind == "categorical":
            counts = np.bincount(self.values, minlength=self.n_classes)
            freq = counts / counts.sum()
            out["classes"] = list(self.classes)
            out["class_counts"] = {c: int(k) for c, k in zip(self.classes, counts)}
            out["chance_balanced_accuracy"] = 1.0 / self.n_classes
            out["majority_accuracy"] = float(freq.max())
            out["entropy_bits"] = float(-(freq[freq > 0] * np.log2(freq[freq > 0])).sum())
        else:
            out["median"] = float(np.median(self.values))
            out["mean_absolute_deviation_from_median"] = float(
                np.mean(np.abs(self.values - np.median(self.values)))
            )
        return out


def infer_kind(values: pd.Series) -> str:
    """``"continuous"`` or ``"categorical"``: the package's one rule (:func:`bafo_pipeline.attributes.infer_kind`),
    with ``"binary"`` read as categorical, since the audit only needs to know whether to regress or classify.

    Numeric (not boolean) columns with more than 10 distinct values are continuous;
    everything else is categorical.

    Parameters
    ----------
    values : Series
        One attribute's column.

    Returns
    -------
    {"continuous", "categorical"}
    """
    return "continuous" if attribute_kind(values) == "continuous" else "categorical"


def check_representations(representations) -> dict[str, np.ndarray]:
    """Validate embeddings: a 2-D finite array, or a mapping ``name -> array``.

    Returns
    -------
    dict of str to ndarray of shape (n, d), dtype float32
        All with the same ``n``.
    """
    if not isinstance(representations, Mapping):
        representations = {"latents": representations}
    if not representations:
        raise ValueError("no representation to audit")
    out: dict[str, np.ndarray] = {}
    n = None
    for name, Z in representations.items():
        Z = np.asarray(Z)
        if Z.ndim != 2:
            raise ValueError(f"representation {name!r}: expected a 2-D array (n, d), got shape {Z.shape}")
        if not np.issubdtype(Z.dtype, np.number):
            raise ValueError(f"representation {name!r}: expected numbers, got dtype {Z.dtype}")
        Z = Z.astype(np.float32, copy=False)
        bad = ~np.isfinite(Z).all(axis=1)
        if bad.any():
            rows = np.flatnonzero(bad)
            raise ValueError(
                f"representation {name!r}: {len(rows)} rows contain NaN or inf (first row {rows[0]})"
            )
        if n is not None and len(Z) != n:
            raise ValueError(
                f"representation {name!r} has {len(Z)} rows, the first one has {n}; "
                "all representations must describe the same samples"
            )
        n = len(Z)
        out[str(name)] = Z
    return out


def class_text(values) -> np.ndarray:
    """The text each class value is matched by across tables: ``str``, with integral numbers written as integers.

    A label column with one missing value is read as floats, so its classes would
    be ``"0.0"`` and ``"1.0"`` against another table's ``"0"`` and ``"1"``.
    """
    def text(value) -> str:
        if isinstance(value, (float, np.floating)) and float(value).is_integer():
            return str(int(value))
        return str(value)

    return np.array([text(v) for v in np.asarray(values, dtype=object)], dtype=object)


def _is_text(index: pd.Index) -> bool:
    return not pd.api.types.is_numeric_dtype(index.dtype)


def _first(values, k: int = 5) -> str:
    return ", ".join(repr(v) for v in list(values)[:k])


def align_by_id(
    representations: Mapping[str, tuple[Sequence, np.ndarray]],
    labels: pd.DataFrame,
    id_column: str,
    collected: list[str] | None = None,
) -> tuple[dict[str, np.ndarray], pd.DataFrame, np.ndarray]:
    """Align embeddings given as ``(ids, Z)`` with a labels table by an id column.

    Every representation must cover the same ids (so they are compared on the same
    samples) and every id must have exactly one labels row. Labels rows with no
    embedding are dropped with a warning.

    Parameters
    ----------
    representations : mapping of str to (ids, ndarray of shape (n, d))
        Each embedding with the ids of its rows.
    labels : DataFrame
        One row per id, with ``id_column``.
    id_column : str
        The labels column holding the ids.
    collected : list of str, optional
        Receives the text of each warning given here (for the report).

    Returns
    -------
    representations : dict of str to ndarray
        Rows in the order of the first representation's ids.
    labels : DataFrame
        The matching labels rows, same order, fresh RangeIndex.
    ids : ndarray
        The ids, same order.
    """
    if id_column not in labels.columns:
        raise ValueError(f"labels have no id column {id_column!r}; columns are {list(labels.columns)}")
    label_ids = pd.Index(labels[id_column])
    if label_ids.hasnans:
        raise ValueError(f"labels column {id_column!r} has missing ids")
    if not label_ids.is_unique:
        dup = label_ids[label_ids.duplicated()].unique()
        raise ValueError(f"labels column {id_column!r} repeats {len(dup)} ids (first: {_first(dup)})")
    for name, pair in representations.items():
        if not (isinstance(pair, tuple) and len(pair) == 2):
            raise ValueError(f"representation {name!r}: expected an (ids, Z) pair when aligning by id")
    # e.g. integer ids in Parquet and text ids from a CSV: match them by their text.
    kinds = {_is_text(label_ids)} | {_is_text(pd.Index(np.asarray(p[0]))) for p in representations.values()}
    mixed = len(kinds) > 1
    if mixed:
        label_ids = label_ids.astype(str)
    reference: pd.Index | None = None
    ref_name = ""
    aligned: dict[str, np.ndarray] = {}
    for name, (ids, Z) in representations.items():
        ids = pd.Index(np.asarray(ids))
        if mixed:
            ids = ids.astype(str)
        Z = np.asarray(Z)
        if len(ids) != len(Z):
            raise ValueError(f"representation {name!r}: {len(ids)} ids for {len(Z)} rows")
        if not ids.is_unique:
            dup = ids[ids.duplicated()].unique()
            raise ValueError(f"representation {name!r} repeats {len(dup)} ids (first: {_first(dup)})")
        missing = ids.difference(label_ids)
        if len(missing):
            hint = ""
            if ids.dtype != label_ids.dtype:
                hint = f" (its ids are {ids.dtype}, the labels' are {label_ids.dtype})"
            raise ValueError(
                f"representation {name!r}: {len(missing)} of {len(ids)} ids have no labels row"
                f"{hint} (first: {_first(missing)})"
            )
        if reference is None:
            reference, ref_name = ids, str(name)
            aligned[str(name)] = Z
            continue
        only_here, only_ref = ids.difference(reference), reference.difference(ids)
        if len(only_here) or len(only_ref):
            raise ValueError(
                f"representations {ref_name!r} and {name!r} cover different samples: "
                f"{len(only_ref)} ids only in {ref_name!r}, {len(only_here)} only in {name!r}; "
                "audit them on the same ids so the comparison is fair"
            )
        aligned[str(name)] = Z[ids.get_indexer(reference)]
    assert reference is not None
    extra = len(label_ids) - len(reference)
    if extra:
        warn(f"{extra} labels rows have no embedding and are ignored", collected)
    rows = label_ids.get_indexer(reference)
    return aligned, labels.iloc[rows].reset_index(drop=True), np.asarray(reference)


def band_names(edges: Sequence[float], lower: float | None = None) -> list[str]:
    """Names of the bands cut at ``edges``: ``0-19, 20-39, 40-59, 60+`` for age.

    ``lower`` (the smallest possible value, e.g. 0 for ages) names the first band
    ``lower-(e0-1)``; without it the first band is ``<e0``.
    """

    def fmt(x: float) -> str:
        return str(int(x)) if float(x).is_integer() else f"{x:g}"

    integer = all(float(e).is_integer() for e in edges)
    if lower is not None and integer and float(lower).is_integer() and lower < edges[0]:
        names = [f"{fmt(lower)}-{fmt(edges[0] - 1)}"]
    else:
        names = [f"<{fmt(edges[0])}"]
    for lo, hi in zip(edges[:-1], edges[1:]):
        names.append(f"{fmt(lo)}-{fmt(hi - 1)}" if integer else f"{fmt(lo)}-{fmt(hi)}")
    names.append(f"{fmt(edges[-1])}+")
    return names


def _categorical(name: str, column: pd.Series, n_folds: int) -> Attribute:
    present = column.notna().to_numpy()
    rows = np.flatnonzero(present)
    values = column.to_numpy()[present]
    if len(values) == 0:
        raise ValueError(f"attribute {name!r} has no labelled rows")
    try:
        classes, codes = np.unique(values, return_inverse=True)
    except TypeError:  # mixed types: compare as text
        classes, codes = np.unique(values.astype(str), return_inverse=True)
    names = list(class_text(classes))
    if len(names) < 2:
        raise ValueError(
            f"attribute {name!r} has a single class ({names[0]!r}) in the audit data; "
            "there is nothing to predict, so leakage is undefined"
        )
    counts = np.bincount(codes, minlength=len(names))
    small = [(c, int(k)) for c, k in zip(names, counts) if k < n_folds]
    if small:
        listed = ", ".join(f"{c!r}: {k}" for c, k in small)
        raise ValueError(
            f"attribute {name!r}: classes with fewer samples than n_folds={n_folds} ({listed}); "
            "merge or drop them, or lower n_folds"
        )
    return Attribute(name, "categorical", rows, codes.astype(np.int64), names)


def _continuous(name: str, column: pd.Series, n_folds: int) -> Attribute:
    values = pd.to_numeric(column, errors="coerce").to_numpy(dtype=np.float64)
    bad_text = column.notna().to_numpy() & np.isnan(values)
    if bad_text.any():
        row = int(np.flatnonzero(bad_text)[0])
        raise ValueError(
            f"attribute {name!r} is continuous but row {row} holds {column.iloc[row]!r}, not a number"
        )
    if np.isinf(values).any():
        row = int(np.flatnonzero(np.isinf(values))[0])
        raise ValueError(f"attribute {name!r}: row {row} is infinite")
    rows = np.flatnonzero(~np.isnan(values))
    values = values[rows]
    if len(values) < 2 * n_folds:
        raise ValueError(f"attribute {name!r}: {len(values)} labelled rows, too few for {n_folds} folds")
    if np.ptp(values) == 0:
        raise ValueError(f"attribute {name!r} is constant ({values[0]:g}); leakage is undefined")
    return Attribute(name, "continuous", rows, values)


def _banded(source: Attribute, edges: Sequence[float], n_folds: int, collected) -> Attribute | None:
    edges = sorted(float(e) for e in edges)
    names = band_names(edges, lower=0.0 if source.values.min() >= 0 else None)
    codes = np.digitize(source.values, edges)
    counts = np.bincount(codes, minlength=len(names))
    keep = counts > 0
    name = f"{source.name}_band"
    if keep.sum() < 2:
        warn(f"{name}: fewer than two non-empty bands; band probes skipped", collected)
        return None
    if (counts[keep] < n_folds).any():
        listed = ", ".join(f"{b!r}: {int(k)}" for b, k in zip(names, counts) if 0 < k < n_folds)
        warn(
            f"{name}: bands with fewer samples than n_folds={n_folds} ({listed}); band probes skipped",
            collected,
        )
        return None
    remap = np.cumsum(keep) - 1  # drop empty bands, keep order
    return Attribute(
        name,
        "categorical",
        source.rows,
        remap[codes].astype(np.int64),
        [b for b, k in zip(names, keep) if k],
        derived_from=source.name,
        edges=tuple(edges),
        all_bands=names,
    )


def encode_like(attribute: Attribute, labels: pd.DataFrame, collected: list[str] | None = None) -> Attribute:
    """Encode another table's labels (a training export's) with the classes of an audited attribute.

    The data-rich attacker fits its probes on these rows and is scored on the audited
    ones, so class codes (and band edges) must be the audited attribute's. Rows whose
    class the audited data lacks are dropped, and a class the other table lacks is
    named, each with a warning.

    Returns
    -------
    Attribute
        Same name, kind and classes; ``rows`` index ``labels``.
    """
    source = attribute.derived_from or attribute.name
    if source not in labels.columns:
        raise ValueError(
            f"the training labels have no column {source!r}; columns are {list(labels.columns)}"
        )
    column = labels[source]
    if attribute.kind == "continuous" or attribute.edges is not None:
        values = pd.to_numeric(column, errors="coerce").to_numpy(dtype=np.float64)
        bad = column.notna().to_numpy() & ~np.isfinite(values)
        if bad.any():
            row = int(np.flatnonzero(bad)[0])
            raise ValueError(f"training labels: attribute {source!r} at row {row} is not a finite number")
        rows = np.flatnonzero(~np.isnan(values))
        values = values[rows]
        if attribute.edges is None:
            return Attribute(attribute.name, attribute.kind, rows, values)
        text = np.asarray(attribute.all_bands, dtype=object)[np.digitize(values, attribute.edges)]
    else:
        present = column.notna().to_numpy()
        rows = np.flatnonzero(present)
        text = class_text(column.to_numpy()[present])
    index = {name: code for code, name in enumerate(attribute.classes or [])}
    codes = np.array([index.get(t, -1) for t in text], dtype=np.int64)
    unknown = codes < 0
    if unknown.any():
        warn(
            f"training labels: {int(unknown.sum())} rows of {attribute.name!r} have classes the audited data "
            f"lacks ({_first([str(t) for t in pd.unique(text[unknown])])}) and are left out of the data-rich probes",
            collected,
        )
    absent = [c for c in attribute.classes or [] if c not in set(text[~unknown])]
    if absent:
        warn(
            f"training labels: {attribute.name!r} has no rows of {absent}; the data-rich probes cannot predict them",
            collected,
        )
    return Attribute(
        attribute.name,
        attribute.kind,
        rows[~unknown],
        codes[~unknown],
        attribute.classes,
        attribute.derived_from,
        attribute.edges,
        attribute.all_bands,
    )


def prepare_attributes(
    labels: pd.DataFrame,
    attributes: Sequence[str] | None,
    kinds: Mapping[str, str] | None,
    bands: Mapping[str, Sequence[float]] | None,
    n_folds: int,
    collected: list[str] | None = None,
) -> list[Attribute]:
    """Select, type-check and encode the attributes to audit.

    Parameters
    ----------
    labels : DataFrame
        One row per sample, aligned with the embeddings.
    attributes : sequence of str or None
        Columns to audit; ``None`` means those of ``age``, ``gender``, ``ethnicity``
        present.
    kinds : mapping or None
        Overrides of the inferred kind, ``{name: "continuous" | "categorical"}``.
    bands : mapping or None
        Band edges for continuous attributes, audited again as a categorical
        ``<name>_band`` attribute. ``None`` means ``{"age": (20, 40, 60)}``.
    n_folds : int
        Folds of the cross-validation; every class needs at least this many samples.
    collected : list of str, optional
        Receives the text of any warning.

    Returns
    -------
    list of Attribute
    """
    if attributes is None:
        attributes = [a for a in DEFAULT_ATTRIBUTES if a in labels.columns]
        if not attributes:
            raise ValueError(
                f"labels have none of the default attributes {DEFAULT_ATTRIBUTES}; "
                f"pass attributes= (columns are {list(labels.columns)})"
            )
    else:
        attributes = list(attributes)
        if not attributes:
            raise ValueError("attributes is empty")
        missing = [a for a in attributes if a not in labels.columns]
        if missing:
            raise ValueError(
                f"labels lack the attribute columns {missing}; columns are {list(labels.columns)}"
            )
        if len(set(attributes)) != len(attributes):
            raise ValueError(f"attributes repeat a name: {attributes}")
    kinds = dict(kinds or {})
    unknown = set(kinds) - set(attributes)
    if unknown:
        raise ValueError(f"kinds names attributes that are not audited: {sorted(unknown)}")
    bad = {k: v for k, v in kinds.items() if v not in ATTRIBUTE_KINDS}
    if bad:
        raise ValueError(f"kinds must be one of {ATTRIBUTE_KINDS}, got {bad}")
    bands = DEFAULT_BANDS if bands is None else dict(bands)

    out: list[Attribute] = []
    for name in attributes:
        column = labels[name]
        kind = kinds.get(name) or infer_kind(column)
        n_missing = int(column.isna().sum())
        if n_missing:
            warn(f"attribute {name!r}: {n_missing} rows without a label are left out of its audit", collected)
        if kind == "categorical":
            out.append(_categorical(name, column, n_folds))
            continue
        attribute = _continuous(name, column, n_folds)
        out.append(attribute)
        if name in bands and bands[name]:
            banded = _banded(attribute, bands[name], n_folds, collected)
            if banded is not None:
                out.append(banded)
    return out
