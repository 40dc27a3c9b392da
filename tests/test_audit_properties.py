"""Property-based tests of the audit's input checks: any input gives a result or a clear ValueError/TypeError."""

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from bafo_pipeline.audits.inputs import (  # noqa: E402
    align_by_id,
    check_representations,
    encode_like,
    prepare_attributes,
)
from bafo_pipeline.audits.side_channels import adjacency_test, side_channels_of_table  # noqa: E402
from bafo_pipeline.audits.sources import embedding_of  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore::bafo_pipeline.audits.AuditWarning")
FAST = settings(max_examples=250, deadline=None, suppress_health_check=[HealthCheck.too_slow])

cells = st.one_of(
    st.none(),
    st.integers(-5, 120),
    st.floats(allow_nan=True, allow_infinity=True, width=32),
    st.sampled_from(["female", "male", "", "x", "1e9", "NaN", "26_0_2_2017.jpg"]),
    st.booleans(),
)


@st.composite
def label_frames(draw):
    n = draw(st.integers(0, 30))
    columns = draw(st.lists(st.sampled_from(["age", "gender", "ethnicity", "smile"]), min_size=0, max_size=4,
                            unique=True))
    return pd.DataFrame({c: draw(st.lists(cells, min_size=n, max_size=n)) for c in columns}, dtype=object)


@FAST
@given(frame=label_frames(), folds=st.integers(2, 6),
       kinds=st.sampled_from([None, {"age": "categorical"}, {"gender": "continuous"}, {"x": "continuous"}]),
       bands=st.sampled_from([None, {}, {"age": (20, 40)}, {"age": (1e9,)}]))
def test_attribute_preparation_raises_only_clear_errors(frame, folds, kinds, bands):
    try:
        attributes = prepare_attributes(frame, None, kinds, bands, folds, [])
    except (ValueError, TypeError) as error:
        assert str(error)
        return
    for attribute in attributes:
        assert len(attribute.rows) == len(attribute.values)
        if attribute.kind == "categorical":
            assert attribute.values.min() >= 0 and attribute.values.max() < attribute.n_classes
            other = encode_like(attribute, frame.assign(gender=frame.get("gender")), [])
            assert other.values.max(initial=0) < attribute.n_classes
        else:
            assert np.isfinite(attribute.values).all()


arrays = st.one_of(
    st.integers(0, 6).flatmap(lambda n: st.lists(st.lists(st.floats(allow_nan=True, allow_infinity=True,
                                                                     width=32), min_size=2, max_size=2),
                                                 min_size=n, max_size=n)),
    st.lists(st.text(max_size=3), max_size=4),
    st.just([[1.0], [2.0, 3.0]]),
)


@FAST
@given(first=arrays, second=arrays)
def test_representation_checks_raise_only_clear_errors(first, second):
    try:
        reps = check_representations({"a": np.asarray(first, dtype=object), "b": np.asarray(second, dtype=object)})
    except (ValueError, TypeError) as error:
        assert str(error)
        return
    assert all(Z.dtype == np.float32 and np.isfinite(Z).all() for Z in reps.values())


ids = st.lists(st.one_of(st.integers(-3, 8), st.sampled_from(["007", "7", "a", ""]), st.none()), max_size=8)


@FAST
@given(embedded=ids, labelled=ids)
def test_id_alignment_raises_only_clear_errors(embedded, labelled):
    Z = np.zeros((len(embedded), 2), dtype=np.float32)
    labels = pd.DataFrame({"id": pd.Series(labelled, dtype=object), "gender": ["f"] * len(labelled)})
    try:
        aligned, rows, order = align_by_id({"z": (np.asarray(embedded, dtype=object), Z)}, labels, "id", [])
    except (ValueError, TypeError) as error:
        assert str(error)
        return
    assert len(rows) == len(order) == len(aligned["z"]) == len(embedded)


@FAST
@given(values=st.lists(st.floats(allow_nan=False, allow_infinity=False), min_size=0, max_size=40),
       codes=st.lists(st.integers(0, 3), min_size=0, max_size=40), seed=st.integers(0, 5))
def test_the_adjacency_test_is_defined_or_nan(values, codes, seed):
    n = min(len(values), len(codes))
    agreement, error, p = adjacency_test(np.asarray(values[:n]), np.asarray(codes[:n], dtype=np.int64),
                                         np.random.default_rng(seed))
    assert np.isnan(p) or 0 < p <= 1
    assert np.isnan(agreement) or agreement <= 1 + 1e-9


column_values = st.one_of(
    st.lists(st.one_of(st.none(), st.integers(-2, 2)), min_size=4, max_size=4),
    st.lists(st.one_of(st.none(), st.text(max_size=4)), min_size=4, max_size=4),
    st.lists(st.one_of(st.none(), st.floats(allow_nan=True)), min_size=4, max_size=4),
    st.lists(st.one_of(st.none(), st.lists(st.floats(width=32), max_size=3)), min_size=4, max_size=4),
    st.lists(st.one_of(st.none(), st.binary(max_size=3)), min_size=4, max_size=4),
)


@FAST
@given(extra=column_values, embedding=column_values, name=st.sampled_from(["latent", "embedding", "dim_0", "x"]))
def test_reading_a_file_raises_only_clear_errors(extra, embedding, name):
    try:
        table = pa.table({"id": pa.array(range(4)), name: pa.array(embedding), "extra": pa.array(extra)})
    except (pa.ArrowInvalid, pa.ArrowTypeError):
        return  # not a table Arrow can build: nothing to read
    try:
        file = embedding_of(table, where="z.parquet", id_column="id", latent_column=None, labels=["age"])
    except ValueError as error:
        assert "z.parquet" in str(error)
        return
    assert file.Z.shape[0] == 4 and np.isfinite(file.Z).all()
    channels = side_channels_of_table(file.rest, source="z", id_column="id", embedding_columns=[])
    assert {"row order", "id"} <= set(channels.channels)
    assert all(v.shape[0] == 4 for v in channels.channels.values())
