"""Side channels: what a file reveals besides its embedding (ids, row order, other columns).

A latents file can hide every attribute in its embedding and still give them away:
ids numbered in the order of file names that spell out age, gender and ethnicity,
rows written in that order, a ``split`` or ``source`` column. The audit therefore
treats every column of the file that is neither the embedding nor a label, and the
row order, as a representation of its own, and probes each one:

* ``row order``: the position of each row in the file;
* ``id``: the rank of each id among the file's ids (text ids in text order);
* ``column 'x'``: the rank of each value of column ``x`` (numbers in numeric order,
  text in text order, missing values first), or the numbers of a list column.

Probes: the linear probe and a k-nearest-neighbour probe (the attacker who reads a
row's label off its neighbours), with a lighter bootstrap than the embeddings' (at most
:data:`SIDE_CHANNEL_BOOTSTRAP` replicates). The p-value of a one-value channel is the
**adjacency test** alone (the probes' own permutation tests are skipped there; they run
for a list column): rows sorted by the channel, how often
do neighbouring rows share the label (deciles for continuous attributes), against
its exact mean and variance over random orders (normal approximation)? It catches
both trends (ids rising with age) and blocks (ids grouped by gender) and, unlike a
Monte Carlo permutation test, can give p-values small enough to survive the
Bonferroni correction over every channel and attribute. Its effect size, the
chance-adjusted agreement of neighbouring rows, is reported as the ``adjacency``
probe's leakage.

A side channel *leaks* when its worst case is significant after Bonferroni over all
side-channel tests of the audit at family-wise ``SIDE_CHANNEL_ALPHA`` (0.001, see
:meth:`~.result.AuditResult.side_channels`: a structural leak is never borderline, while
at 0.05 one clean export in twenty would fail on its random row order), or exceeds the
leakage gate. List columns get their p-values from permutation tests, whose floor keeps
them above that level: they leak through the gate.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from scipy import stats

from .._utils.progress import ContinuedProgress
from ..attributes import quantile_bin_edges
from .attackers import CROSS_VALIDATED
from .inputs import Attribute

__all__ = [
    "SIDE_CHANNEL_PROBES",
    "SideChannels",
    "adjacency_rows",
    "adjacency_test",
    "audit_side_channels",
    "side_channels_of_table",
]

#: Probes fitted on every side channel (cheap on one value per row); ``adjacency`` is added for one-value channels.
SIDE_CHANNEL_PROBES = ("linear", "knn")
#: At most this many bootstrap replicates for a side channel's intervals.
SIDE_CHANNEL_BOOTSTRAP = 200
ROLE = "side channel"
_DECILES = 10
# The adjacency test's p-value: random orders below this many rows, the normal approximation from it on.
_NORMAL_FROM = 2000
_PERMUTATIONS = 4000
_SMALLEST_P = 1e-300


@dataclass
class SideChannels:
    """The side channels of one file, ready to be aligned with labels by id.

    Attributes
    ----------
    source : str
        The representation (file) they belong to.
    ids : ndarray
        The file's ids, one per row.
    channels : dict of str to ndarray of shape (n, d)
        Channel name (``"row order"``, ``"id"``, ``"column 'split'"``) to its values.
    skipped : list of (str, str)
        Columns not audited, with the reason (a type no probe reads).
    """

    source: str
    ids: np.ndarray
    channels: dict[str, np.ndarray] = field(default_factory=dict)
    skipped: list[tuple[str, str]] = field(default_factory=list)

    def name(self, channel: str) -> str:
        """The representation name of a channel in the audit: ``"<source> · <channel>"``."""
        return f"{self.source} · {channel}"

    def pairs(self) -> dict[str, tuple[np.ndarray, np.ndarray]]:
        """``{representation name: (ids, values)}``, as :func:`~.inputs.align_by_id` takes them."""
        return {self.name(channel): (self.ids, values) for channel, values in self.channels.items()}

    def describe(self) -> dict[str, dict[str, Any]]:
        """``{representation name: {"role", "of", "channel"}}`` for the audit result's representations."""
        return {self.name(c): {"role": ROLE, "of": self.source, "channel": c} for c in self.channels}


def _ranks(array: pa.Array | pa.ChunkedArray) -> np.ndarray | None:
    """Dense ranks of a column's values (missing values rank first), or None for a type that has no order."""
    if isinstance(array, pa.ChunkedArray):
        array = array.combine_chunks()
    typ = array.type
    if pa.types.is_dictionary(typ):
        array = array.cast(typ.value_type)
        typ = array.type
    if not (
        pa.types.is_integer(typ)
        or pa.types.is_floating(typ)
        or pa.types.is_boolean(typ)
        or pa.types.is_string(typ)
        or pa.types.is_large_string(typ)
        or pa.types.is_temporal(typ)
        or pa.types.is_decimal(typ)
    ):
        return None
    ranks = np.asarray(pc.rank(array, sort_keys="ascending", tiebreaker="dense"), dtype=np.float64)
    return np.where(np.asarray(array.is_null()), 0.0, ranks)


def _list_matrix(array: pa.Array | pa.ChunkedArray) -> np.ndarray | None:
    """A list-of-numbers column of one length as a matrix, or None."""
    if isinstance(array, pa.ChunkedArray):
        array = array.combine_chunks()
    typ = array.type
    if not (pa.types.is_fixed_size_list(typ) or pa.types.is_list(typ) or pa.types.is_large_list(typ)):
        return None
    if not (pa.types.is_floating(typ.value_type) or pa.types.is_integer(typ.value_type)) or array.null_count:
        return None
    lengths = np.asarray(pc.list_value_length(array))
    if len(lengths) == 0 or (lengths != lengths[0]).any() or lengths[0] == 0:
        return None
    values = np.asarray(array.flatten().to_numpy(zero_copy_only=False), dtype=np.float64)
    if not np.isfinite(values).all():
        return None
    return values.reshape(len(array), int(lengths[0]))


def side_channels_of_table(
    table: pa.Table,
    *,
    source: str,
    id_column: str,
    embedding_columns: Sequence[str],
    label_columns: Sequence[str] = (),
    row_positions: np.ndarray | None = None,
) -> SideChannels:
    """The side channels of a file read as an Arrow table.

    Parameters
    ----------
    table : pyarrow.Table
        Every column of the file (or of the rows audited), in file order.
    source : str
        Name of the representation the file holds.
    id_column : str
    embedding_columns : sequence of str
        The columns holding the embedding (one list column, or one per dimension).
    label_columns : sequence of str
        Columns that are labels (the audited attributes, the target, columns the file
        declares as labels); they are what is audited, not side channels.
    row_positions : ndarray, optional
        Each row's position in the whole file, when ``table`` holds a sample of it.

    Returns
    -------
    SideChannels
    """
    ids = np.asarray(table.column(id_column).to_numpy(zero_copy_only=False))
    positions = np.arange(table.num_rows, dtype=np.float64) if row_positions is None else row_positions
    out = SideChannels(source=source, ids=ids)
    out.channels["row order"] = np.asarray(positions, dtype=np.float64)[:, None]
    id_ranks = _ranks(table.column(id_column))
    if id_ranks is not None:
        out.channels["id"] = id_ranks[:, None]
    else:
        out.skipped.append((id_column, f"ids of type {table.schema.field(id_column).type} have no order to audit"))
    excluded = {id_column, *embedding_columns, *label_columns}
    for name in table.column_names:
        if name in excluded:
            continue
        column = table.column(name)
        ranks = _ranks(column)
        if ranks is not None:
            out.channels[f"column {name!r}"] = ranks[:, None]
            continue
        matrix = _list_matrix(column)
        if matrix is not None:
            out.channels[f"column {name!r}"] = matrix
            continue
        out.skipped.append((name, f"a column of type {column.type} is not audited; review it before sharing"))
    return out


def _codes(attribute: Attribute) -> np.ndarray:
    """Class codes, or decile codes of a continuous attribute."""
    if attribute.kind == "categorical":
        return attribute.values
    return np.digitize(attribute.values, quantile_bin_edges(attribute.values, _DECILES))


def adjacency_test(order_values: np.ndarray, codes: np.ndarray, rng: np.random.Generator) -> tuple[float, float, float]:
    """Agreement of neighbouring rows, sorted by a channel, against random orders.

    Parameters
    ----------
    order_values : ndarray of shape (n,)
        The channel's value per row; ties are broken at random (a label-free order).
    codes : ndarray of shape (n,), int
        The attribute's class (or decile) per row.
    rng : numpy Generator

    Returns
    -------
    agreement : float
        Chance-adjusted share of neighbouring rows with the same code,
        ``(A - E[A]) / (1 - E[A])``: 0 at chance, 1 when rows are sorted by the label.
    standard_error : float
        Of ``agreement`` under random orders.
    p_value : float
        One-sided: neighbours agree more than in a random order. From the exact
        permutation mean and variance of the count of agreeing pairs (normal
        approximation, continuity-corrected) for ``n >= 2000``; from
        :data:`_PERMUTATIONS` random orders below, and from the normal tail
        again where no random order reaches the observed agreement (the
        permutations cannot resolve p-values below 1 / 4,001).
    """
    n = len(codes)
    counts = np.bincount(codes).astype(np.float64)
    counts = counts[counts > 0]
    if n < 4 or len(counts) < 2:
        return float("nan"), float("nan"), float("nan")
    order = np.lexsort((rng.random(n), order_values))
    sorted_codes = codes[order]
    same = float(np.sum(sorted_codes[1:] == sorted_codes[:-1]))
    falling = lambda k: np.prod([n - i for i in range(k)])  # noqa: E731  n (n-1) ... (n-k+1)
    p2 = float(np.sum(counts * (counts - 1)) / falling(2))
    p3 = float(np.sum(counts * (counts - 1) * (counts - 2)) / falling(3))
    pairs = counts * (counts - 1)
    p4 = float((np.sum(pairs * (counts - 2) * (counts - 3)) + pairs.sum() ** 2 - np.sum(pairs**2)) / falling(4))
    mean = (n - 1) * p2
    variance = (n - 1) * p2 + 2 * (n - 2) * p3 + (n - 2) * (n - 3) * p4 - mean**2
    if variance <= 0 or p2 >= 1:
        return float("nan"), float("nan"), float("nan")
    scale = (n - 1) * (1 - p2)
    agreement = (same - mean) / scale
    # Never exactly 0, however strong the evidence.
    normal_p = max(float(stats.norm.sf((same - 0.5 - mean) / np.sqrt(variance))), _SMALLEST_P)
    if n >= _NORMAL_FROM:
        p_value = normal_p
    else:
        shuffled = rng.permuted(np.broadcast_to(codes, (_PERMUTATIONS, n)), axis=1)
        exceeding = int(np.sum(np.sum(shuffled[:, 1:] == shuffled[:, :-1], axis=1) >= same))
        p_value = float((1 + exceeding) / (1 + _PERMUTATIONS))
        if exceeding == 0:
            # Beyond what the random orders resolve (1 / 4,001, too coarse for the family-wise
            # side-channel level): the normal tail says how far beyond.
            p_value = min(p_value, normal_p)
    return float(agreement), float(np.sqrt(variance) / scale), p_value


def adjacency_rows(
    values: np.ndarray,
    attribute: Attribute,
    *,
    confidence: float,
    rng: np.random.Generator,
) -> list[dict[str, Any]]:
    """The ``adjacency`` probe's table rows (leakage with a normal interval, and the p-value) for one channel."""
    agreement, error, p_value = adjacency_test(values[attribute.rows, 0], _codes(attribute), rng)
    half = stats.norm.ppf(0.5 + confidence / 2) * error
    return [
        {"metric": "leakage", "mean": agreement, "ci_low": agreement - half, "ci_high": min(1.0, agreement + half),
         "std": np.nan},
        {"metric": "p_value", "mean": p_value, "ci_low": np.nan, "ci_high": np.nan, "std": np.nan},
    ]


def audit_side_channels(
    files: Sequence[SideChannels],
    labels,
    *,
    id_column: str,
    attributes: Sequence[str] | None = None,
    kinds: Mapping[str, str] | None = None,
    bands: Mapping[str, Sequence[float]] | None = None,
    n_folds: int = 5,
    n_bootstrap: int = 500,
    n_permutations: int = 500,
    confidence: float = 0.95,
    random_state: int = 0,
    n_threads: int | None = 1,
    progress: Any = None,
):
    """Probe every side channel of some files, as :func:`~.leakage.audit_leakage` probes embeddings.

    Parameters
    ----------
    files : sequence of SideChannels
    labels : DataFrame
        With ``id_column``; every file's ids must have a labels row.
    id_column : str
    attributes, kinds, bands, n_folds, n_bootstrap, n_permutations, confidence, random_state, n_threads, progress
        As in :func:`~.leakage.audit_leakage`.

    Returns
    -------
    AuditResult
        Whose representations are the channels (``"<file> · <channel>"``, with
        ``role: "side channel"``), probed by :data:`SIDE_CHANNEL_PROBES` and, for
        one-value channels, the ``adjacency`` test.
    """
    from .inputs import align_by_id, prepare_attributes
    from .leakage import audit_leakage

    pairs: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    for file in files:
        pairs.update(file.pairs())
    if not pairs:
        return None
    settings = dict(
        id_column=id_column, attributes=attributes, kinds=kinds, bands=bands, probes=SIDE_CHANNEL_PROBES,
        n_folds=n_folds, n_bootstrap=min(n_bootstrap, SIDE_CHANNEL_BOOTSTRAP), confidence=confidence,
        random_state=random_state, n_threads=n_threads, progress=progress,
    )
    # One-value channels get their p-value from the adjacency test; list columns from the probes' own tests.
    single = {name: pair for name, pair in pairs.items() if np.ndim(pair[1]) == 2 and np.shape(pair[1])[1] == 1}
    several = {name: pair for name, pair in pairs.items() if name not in single}
    if progress is not None and not isinstance(progress, ContinuedProgress):
        settings["progress"] = ContinuedProgress(progress)
    result = None
    for group, permutations in ((single, 0), (several, n_permutations)):
        if group:
            part = audit_leakage(group, labels, n_permutations=permutations, **settings)
            result = part if result is None else result.merged(part)
            if isinstance(settings["progress"], ContinuedProgress):
                settings["progress"].next_part()
    aligned, aligned_labels, _ = align_by_id(pairs, labels, id_column, [])
    attrs = prepare_attributes(aligned_labels, attributes, kinds, bands, n_folds, [])
    extra = []
    for i, (name, values) in enumerate(aligned.items()):
        if values.shape[1] != 1:
            continue
        for j, attribute in enumerate(attrs):
            rng = np.random.default_rng([random_state, i, j, 3])
            for row in adjacency_rows(values, attribute, confidence=confidence, rng=rng):
                extra.append(
                    {
                        "representation": name,
                        "attribute": attribute.name,
                        "kind": attribute.kind,
                        "probe": "adjacency",
                        "attacker": CROSS_VALIDATED,
                        **row,
                        "n": len(attribute.rows),
                    }
                )
    result = result.with_rows(extra)
    for file in files:
        for name, info in file.describe().items():
            result.representations[name].update(info)
    result.config["side_channel_probes"] = [*SIDE_CHANNEL_PROBES, "adjacency"]
    result.config["side_channel_bootstrap"] = min(n_bootstrap, SIDE_CHANNEL_BOOTSTRAP)
    result.config["skipped_columns"] = {file.source: [list(s) for s in file.skipped] for file in files}
    return result
