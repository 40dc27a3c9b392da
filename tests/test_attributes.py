"""Attribute schema: kind inference, encoding, decode-time fractions, clear errors, JSON round trip."""

import json

import numpy as np
import pandas as pd
import pytest

from bafo_pipeline.attributes import (
    DEFAULT_SENSITIVE,
    MAX_DISCRETE_LEVELS,
    Attribute,
    AttributeSchema,
    as_sensitive_frame,
    infer_kind,
)
from bafo_pipeline.data.synthetic import ETHNICITIES, make_synthetic_faces


@pytest.fixture(scope="module")
def sensitive():
    return make_synthetic_faces(200, image_size=32, random_state=0).sensitive_features


def test_infer_kinds_of_the_default_sensitive_attributes(sensitive):
    schema = AttributeSchema.infer(sensitive)
    assert schema.names == ["age", "gender", "ethnicity"]
    assert [schema[name].kind for name in schema.names] == ["continuous", "binary", "categorical"]
    assert schema["gender"].categories == ("female", "male")
    assert set(schema["ethnicity"].categories) == set(sensitive["ethnicity"])
    assert schema["age"].center == pytest.approx(sensitive["age"].mean())
    assert schema["age"].scale == pytest.approx(sensitive["age"].std(ddof=0))
    assert schema.width == 1 + 1 + len(schema["ethnicity"].categories)


def test_encoding_standardises_age_codes_gender_and_one_hots_ethnicity(sensitive):
    schema = AttributeSchema.infer(sensitive)
    encoded = schema.encode(sensitive)
    assert encoded.dtype == np.float32 and encoded.shape == (len(sensitive), schema.width)
    assert encoded[:, 0].mean() == pytest.approx(0.0, abs=1e-5)
    assert encoded[:, 0].std() == pytest.approx(1.0, abs=1e-4)
    np.testing.assert_array_equal(encoded[:, 1], (sensitive["gender"] == "male").to_numpy(np.float32))
    one_hot = encoded[:, 2:]
    np.testing.assert_array_equal(one_hot.sum(axis=1), 1.0)
    categories = schema["ethnicity"].categories
    assert [categories[i] for i in one_hot.argmax(axis=1)] == sensitive["ethnicity"].tolist()


def test_kinds_can_be_overridden():
    frame = pd.DataFrame({"level": [1, 2, 3, 1, 2, 3], "code": [0, 1, 2, 3, 4, 5]})
    inferred = AttributeSchema.infer(frame)
    assert inferred["level"].kind == "categorical" and inferred["code"].kind == "categorical"
    schema = AttributeSchema.infer(frame, kinds={"level": "continuous"})
    assert schema["level"].kind == "continuous" and schema["code"].kind == "categorical"
    assert schema["level"].center == pytest.approx(2.0)


def test_decode_time_fractions_and_mixtures():
    schema = AttributeSchema(
        (
            Attribute("gender", "binary", categories=("female", "male")),
            Attribute("ethnicity", "categorical", categories=ETHNICITIES),
        )
    )
    rows = {"gender": [0.5, "female"], "ethnicity": [{"asian": 1.0, "white": 3.0}, "black"]}
    encoded = schema.encode(rows, allow_fractional=True)
    assert encoded[0, 0] == 0.5 and encoded[1, 0] == 0.0
    mixture = dict(zip(ETHNICITIES, encoded[0, 1:]))
    assert mixture["white"] == pytest.approx(0.75) and mixture["asian"] == pytest.approx(0.25)
    assert sum(mixture.values()) == pytest.approx(1.0)
    with pytest.raises(ValueError, match="unknown category 0.5"):
        schema.encode(rows)  # fractions only at decode time
    with pytest.raises(ValueError, match="only allowed for a binary or categorical attribute at decode time"):
        schema.encode({"gender": [{"male": 1}], "ethnicity": ["white"]})
    mixed = schema.encode({"gender": [{"male": 1, "female": 3}], "ethnicity": ["white"]}, allow_fractional=True)
    assert mixed[0, 0] == pytest.approx(0.25)


def test_numeric_binary_categories_other_than_0_and_1_take_weights_not_bare_fractions():
    coded = Attribute("gender", "binary", categories=(1, 2))
    assert coded.encode([1, 2], allow_fractional=True).ravel().tolist() == [0.0, 1.0]
    with pytest.raises(ValueError, match="unknown category 0.5"):
        coded.encode([0.5], allow_fractional=True)  # between 1 and 2, or half of 2? refused
    assert coded.encode([{1: 1.0, 2: 1.0}], allow_fractional=True)[0, 0] == pytest.approx(0.5)
    assert coded.encode([coded.neutral()], allow_fractional=True)[0, 0] == pytest.approx(0.5)
    plain = Attribute("gender", "binary", categories=(0, 1))
    assert plain.takes_fractions and plain.encode([0.25], allow_fractional=True)[0, 0] == pytest.approx(0.25)


@pytest.mark.parametrize(
    ("value", "message"),
    [
        (1.5, r"unknown category 1.5.*or a fraction in \[0, 1\]"),
        (-0.1, "unknown category -0.1"),
        ({"martian": 1.0}, "unknown category 'martian'"),
        ({"white": -1.0, "black": 2.0}, "negative weight"),
        ({"white": 0.0}, "sum to zero"),
        ({"white": float("nan"), "asian": 1.0}, "weight of 'white' must be a finite number, got nan"),
        ({"white": float("inf")}, "must be a finite number, got inf"),
        ({"white": "1"}, "must be a finite number, got '1'"),
        ({"white": True}, "must be a finite number, got True"),
    ],
)
def test_bad_decode_values_are_rejected(value, message):
    schema = AttributeSchema(
        (
            Attribute("gender", "binary", categories=("female", "male")),
            Attribute("ethnicity", "categorical", categories=ETHNICITIES),
        )
    )
    rows = {"gender": ["male"], "ethnicity": ["white"]}
    rows["ethnicity" if isinstance(value, dict) else "gender"] = [value]
    with pytest.raises(ValueError, match=message):
        schema.encode(rows, allow_fractional=True)


@pytest.mark.parametrize("missing", [np.nan, None, pd.NA])
def test_missing_values_name_the_attribute_and_row(missing):
    schema = AttributeSchema(
        (Attribute("age", "continuous", center=30.0, scale=10.0), Attribute("gender", "binary", categories=("f", "m")))
    )
    with pytest.raises(ValueError, match=r"attribute 'gender', row 2: missing value"):
        schema.encode(pd.DataFrame({"age": [1.0, 2.0, 3.0], "gender": pd.Series(["f", "m", missing], dtype=object)}))
    with pytest.raises(ValueError, match=r"attribute 'age', row 1: missing value"):
        schema.encode(pd.DataFrame({"age": pd.Series([1.0, missing], dtype=object), "gender": ["f", "m"]}))


def test_encode_errors_name_row_and_known_categories():
    schema = AttributeSchema((Attribute("ethnicity", "categorical", categories=ETHNICITIES),))
    with pytest.raises(ValueError, match=r"row 1: unknown category 'martian'; known: \['white'"):
        schema.encode({"ethnicity": ["white", "martian"]})
    age = AttributeSchema((Attribute("age", "continuous", center=30.0, scale=10.0),))
    with pytest.raises(ValueError, match=r"row 0: expected a number, got 'old'"):
        age.encode({"age": ["old"]})
    with pytest.raises(ValueError, match="row 0: expected a finite number"):
        age.encode({"age": [np.inf]})
    with pytest.raises(ValueError, match=r"lack column\(s\) \['age'\]"):
        age.encode({"years": [3.0]})


@pytest.mark.parametrize(
    ("frame", "kinds", "message"),
    [
        (pd.DataFrame({"age": [1.0, np.nan, 3.0, np.nan]}), None, r"'age': missing values at rows \[1, 3\]"),
        (pd.DataFrame({"gender": ["f", "f", "f"]}), None, "single value"),
        (pd.DataFrame({"id": [f"p{i}" for i in range(65)]}), None, "65 distinct values"),
        (pd.DataFrame({"eth": ["a", "b", "c"]}), {"eth": "binary"}, "needs exactly 2 categories"),
        (pd.DataFrame({"eth": ["a", "b", "c"]}), {"eth": "ordinal"}, "invalid attribute kinds"),
        (pd.DataFrame({"eth": ["a", "b", "c"]}), {"race": "categorical"}, "not in the data"),
        (pd.DataFrame({"eth": ["a", "b", "c"]}), {"eth": "continuous"}, "needs numbers"),
        (pd.DataFrame({"age": [1.0, np.inf] * 8}), {"age": "continuous"}, "infinite values at rows"),
        (pd.DataFrame({0: ["a", "b"]}), None, "column names must be strings"),
    ],
)
def test_inference_errors_are_clear(frame, kinds, message):
    with pytest.raises(ValueError, match=message):
        AttributeSchema.infer(frame, kinds=kinds)


def test_schema_round_trips_through_json_with_numpy_values():
    frame = pd.DataFrame(
        {
            "age": np.linspace(1, 80, 30),
            "sex": np.array([0, 1] * 15, dtype=np.int64),
            "group": np.array([3, 1, 2] * 10, dtype=np.int64),
        }
    )
    schema = AttributeSchema.infer(frame)
    restored = AttributeSchema.from_dict(json.loads(json.dumps(schema.to_dict())))
    assert restored == schema
    np.testing.assert_array_equal(restored.encode(frame), schema.encode(frame))


def test_neutral_values_favour_no_group(sensitive):
    schema = AttributeSchema.infer(sensitive)
    neutral = {a.name: a.neutral() for a in schema.attributes}
    encoded = schema.encode({name: [value] for name, value in neutral.items()}, allow_fractional=True)[0]
    assert encoded[0] == pytest.approx(0.0, abs=1e-6)  # the mean age
    assert encoded[1] == 0.5
    np.testing.assert_allclose(encoded[2:], 1.0 / len(schema["ethnicity"].categories))


def test_invalid_attributes_and_schemas_are_rejected():
    with pytest.raises(ValueError, match="kind must be one of"):
        Attribute("x", "ordinal")
    with pytest.raises(ValueError, match="positive scale"):
        Attribute("age", "continuous", scale=0.0)
    with pytest.raises(ValueError, match="duplicate attribute names"):
        AttributeSchema((Attribute("a", "continuous"), Attribute("a", "continuous")))
    with pytest.raises(ValueError, match="at least one attribute"):
        AttributeSchema(())
    with pytest.raises(KeyError, match="no attribute 'b'"):
        AttributeSchema((Attribute("a", "continuous"),))["b"]


# ---------------------------------------------------------------- the one vocabulary


def test_default_sensitive_attributes_are_utkface_labels():
    assert DEFAULT_SENSITIVE == ("age", "gender", "ethnicity")


@pytest.mark.parametrize(
    ("values", "kind"),
    [
        (np.arange(11), "continuous"),  # 11 levels: more than MAX_DISCRETE_LEVELS
        (np.arange(15) * 5, "continuous"),  # a 15-level age column is continuous for model and audit alike
        (np.arange(10), "categorical"),  # 10 levels: bands
        (np.linspace(0, 1, 200), "continuous"),
        ([0, 1, 1, 0], "binary"),
        ([True, False, True], "binary"),
        (["female", "male"], "binary"),
        ([1.0, 2.0, np.nan], "binary"),  # missing values are not counted
        (["a", "b", "c"], "categorical"),
        ([f"id{i}" for i in range(100)], "categorical"),  # text is never continuous
        (np.arange(40) % 2 == 0, "binary"),
    ],
)
def test_infer_kind_has_one_threshold(values, kind):
    assert MAX_DISCRETE_LEVELS == 10
    assert infer_kind(values) == kind
    assert infer_kind(pd.Series(values)) == kind


def test_infer_kind_reads_polars_series():
    pl = pytest.importorskip("polars")
    assert infer_kind(pl.Series("age", np.arange(15))) == "continuous"
    assert infer_kind(pl.Series("g", ["f", "m", "f"])) == "binary"


def test_schema_inference_uses_infer_kind():
    frame = pd.DataFrame({"age15": np.arange(60) % 15, "band": np.arange(60) % 10, "sex": np.arange(60) % 2})
    schema = AttributeSchema.infer(frame)
    assert [schema[name].kind for name in frame] == [infer_kind(frame[name]) for name in frame]
    assert [schema[name].kind for name in frame] == ["continuous", "categorical", "binary"]


def _reference_frame(n=6):
    return pd.DataFrame({"age": np.arange(n) * 10.0, "gender": ["f", "m"] * (n // 2)})


def test_converter_reads_pandas_with_a_fresh_index():
    frame = _reference_frame().set_axis(range(100, 106))
    converted = as_sensitive_frame(frame, n_rows=6)
    assert isinstance(converted.index, pd.RangeIndex) and converted.index[0] == 0
    pd.testing.assert_frame_equal(converted, _reference_frame())
    series = as_sensitive_frame(pd.Series(["f", "m"], index=[7, 3], name="gender"))
    assert list(series.columns) == ["gender"] and series["gender"].tolist() == ["f", "m"]
    assert list(as_sensitive_frame(pd.Series([1, 2])).columns) == ["sensitive_0"]


def test_converter_reads_polars_frames_and_series():
    pl = pytest.importorskip("polars")
    reference = _reference_frame()
    converted = as_sensitive_frame(pl.from_pandas(reference), n_rows=6)
    assert converted["age"].tolist() == reference["age"].tolist()
    assert converted["gender"].tolist() == reference["gender"].tolist()
    assert list(converted.columns) == ["age", "gender"]
    series = as_sensitive_frame(pl.Series("gender", ["f", "m"]))
    assert list(series.columns) == ["gender"] and series["gender"].tolist() == ["f", "m"]
    # The misleading message of old: a polars frame read as its columns ("has 2 rows").
    with pytest.raises(ValueError, match="sensitive_features has 6 rows but X has 64 samples"):
        as_sensitive_frame(pl.from_pandas(reference), n_rows=64)


def test_converter_reads_arrow_tables():
    pa = pytest.importorskip("pyarrow")
    converted = as_sensitive_frame(pa.table({"age": [1.0, 2.0], "gender": ["f", "m"]}))
    assert converted.to_dict("list") == {"age": [1.0, 2.0], "gender": ["f", "m"]}


def test_converter_reads_mappings_by_position():
    pl = pytest.importorskip("polars")
    converted = as_sensitive_frame(
        {
            "age": np.array([30.0, 40.0]),
            "gender": pd.Series(["f", "m"], index=[9, 4]),  # not aligned on its index
            "ethnicity": pl.Series(["asian", "white"]),
            "band": pd.Series(["a", "b"]).astype("category"),
        },
        n_rows=2,
    )
    assert converted["gender"].tolist() == ["f", "m"]
    assert converted["ethnicity"].tolist() == ["asian", "white"]
    assert isinstance(converted["band"].dtype, pd.CategoricalDtype)
    with pytest.raises(ValueError, match=r"differ in length: \{'age': 2, 'gender': 3\}"):
        as_sensitive_frame({"age": [1, 2], "gender": ["f", "m", "f"]})
    with pytest.raises(ValueError, match=r"sensitive_features\['gender'\] hold single values"):
        as_sensitive_frame({"age": [1, 2], "gender": "f"})
    with pytest.raises(ValueError, match=r"\['age'\] must be one-dimensional"):
        as_sensitive_frame({"age": np.zeros((2, 2))})


def test_converter_names_array_columns():
    rows = np.array([[30, "f"], [40, "m"]], dtype=object)
    named = as_sensitive_frame(rows, columns=["age", "gender"])
    assert list(named.columns) == ["age", "gender"]
    assert pd.api.types.is_integer_dtype(named["age"])  # object arrays get their columns' own types
    assert list(as_sensitive_frame(np.zeros((3, 2))).columns) == ["sensitive_0", "sensitive_1"]
    assert list(as_sensitive_frame([25.0, 35.0], columns=["age"]).columns) == ["age"]
    mixed = as_sensitive_frame([[30, "f"], [40, "m"]])  # lists of rows keep numbers numeric
    assert pd.api.types.is_integer_dtype(mixed["sensitive_0"])
    with pytest.raises(ValueError, match=r"gives 1 name\(s\) \['age'\] for sensitive_features with 2 column"):
        as_sensitive_frame(rows, columns=["age"])
    with pytest.raises(TypeError, match="already name theirs"):
        as_sensitive_frame(_reference_frame(), columns=["a", "b"])
    with pytest.raises(ValueError, match="sensitive_features has 2 rows but X has 3 samples"):
        as_sensitive_frame(rows, n_rows=3, columns=["age", "gender"])
    with pytest.raises(ValueError, match="1-D/2-D array; got str"):
        as_sensitive_frame("age")
    with pytest.raises(ValueError, match="1-D/2-D array"):
        as_sensitive_frame(np.zeros((2, 2, 2)))


def test_schema_infers_and_encodes_polars_and_numpy_input():
    pl = pytest.importorskip("polars")
    reference = _reference_frame()
    schema = AttributeSchema.infer(reference)
    assert AttributeSchema.infer(pl.from_pandas(reference)) == schema
    np.testing.assert_array_equal(schema.encode(pl.from_pandas(reference)), schema.encode(reference))


# ---------------------------------------------------------------- vectorised encoding


def _row_by_row(attribute, values, allow_fractional):
    """The encoding as defined value by value (the loop the vectorised path replaces)."""
    rows = [attribute._encode_one(value, row, allow_fractional) for row, value in enumerate(list(values))]
    return np.array([np.broadcast_to(np.float32(r) if np.ndim(r) == 0 else r, (attribute.width,)) for r in rows], dtype=np.float32).reshape(-1, attribute.width)


_ATTRIBUTES = [
    Attribute("age", "continuous", center=30.0, scale=7.0),
    Attribute("gender", "binary", categories=("female", "male")),
    Attribute("flag", "binary", categories=(1, 2)),
    Attribute("sex", "binary", categories=(0, 1)),
    Attribute("ethnicity", "categorical", categories=ETHNICITIES),
    Attribute("group", "categorical", categories=(1, 2, 3)),
]

_VALUES = {
    "strings": pd.Series(["male", "female", "white", "asian", "male", "black"]),
    "object strings": np.array(["male", "female", "others", "indian"], dtype=object),
    "numpy unicode": np.array(["white", "male", "indian"]),
    "floats": pd.Series([1.0, 2.0, 3.0, 0.0, 1.5, -0.0, 0.25]),
    "floats with nan": pd.Series([1.0, 2.0, np.nan, 1.0]),
    "floats with inf": np.array([1.0, np.inf, 2.0]),
    "ints": pd.Series([1, 2, 3, 0, 1, 2]),
    "big ints": np.array([2**60, 1, 2], dtype=np.int64),
    "bools": pd.Series([True, False, True]),
    "nullable ints": pd.Series([1, 2, 1], dtype="Int64"),
    "nullable ints with NA": pd.Series([1, pd.NA, 2], dtype="Int64"),
    "category dtype": pd.Series(["white", "black", "white"], dtype="category"),
    "category ints": pd.Series([1, 2, 3, 2], dtype="category"),
    "mixed objects": pd.Series([1, True, 1.0, "1", 2], dtype=object),
    "missing kinds": pd.Series(["male", None, "female"], dtype=object),
    "pd.NA": pd.Series([1.0, pd.NA], dtype=object),
    "NaT": pd.Series([1.0, pd.NaT], dtype=object),
    "number strings": ["3.5", " 2 ", "1e1"],
    "text for numbers": ["old", 3.0],
    "fractions": [0.5, 0.0, 1.0, 0.25],
    "fractions and categories": ["male", 0.5, "female", 0.75],
    "bad fraction": ["male", 1.5],
    "broadcast fraction": [0.5] * 40,
    "broadcast mixture": [{"asian": 1.0, "white": 3.0}] * 30,
    "mixtures and categories": [{"asian": 1.0}, "white", {"black": 2.0, "white": 2.0}],
    "bad mixture": ["white", {"martian": 1.0}],
    "unhashable": [["white"], "white"],
    "tuples": [("white",), "white"],
    "empty": pd.Series([], dtype=float),
}


@pytest.mark.parametrize("allow_fractional", [False, True])
@pytest.mark.parametrize("values_name", list(_VALUES))
@pytest.mark.parametrize("attribute", _ATTRIBUTES, ids=lambda a: a.name)
def test_vectorised_encoding_equals_the_row_by_row_definition(attribute, values_name, allow_fractional):
    values = _VALUES[values_name]
    try:
        expected = _row_by_row(attribute, values, allow_fractional)
    except ValueError as error:
        with pytest.raises(ValueError) as raised:
            attribute.encode(values, allow_fractional=allow_fractional)
        assert str(raised.value) == str(error)
        return
    encoded = attribute.encode(values, allow_fractional=allow_fractional)
    assert encoded.dtype == np.float32 and encoded.shape == expected.shape
    assert encoded.tobytes() == expected.tobytes()  # bit for bit, signed zeros included


def test_the_first_bad_row_is_named_wherever_it_is():
    gender = Attribute("gender", "binary", categories=("female", "male"))
    values = pd.Series(["male"] * 5000 + ["martian"] + [None] + ["robot"])
    with pytest.raises(ValueError, match=r"row 5000: unknown category 'martian'"):
        gender.encode(values)
    values[5000] = "male"
    with pytest.raises(ValueError, match=r"row 5001: missing value"):
        gender.encode(values)
    age = Attribute("age", "continuous", center=30.0, scale=7.0)
    with pytest.raises(ValueError, match=r"row 4: missing value \(<NA>\)"):
        age.encode(pd.Series([1, 2, 3, 4, pd.NA, 6], dtype="Int64"))
    with pytest.raises(ValueError, match=r"attribute 'age', row 2: expected a finite number, got -inf"):
        AttributeSchema((age, gender)).encode({"age": [1.0, 2.0, -np.inf], "gender": ["male", "x", "y"]})


def test_schema_encoding_of_a_large_frame_matches_row_by_row(sensitive):
    schema = AttributeSchema.infer(sensitive)
    big = pd.concat([sensitive] * 20, ignore_index=True)
    expected = np.concatenate([_row_by_row(a, big[a.name], False) for a in schema.attributes], axis=1)
    assert schema.encode(big).tobytes() == expected.tobytes()
    neutral = {a.name: [a.neutral()] * len(big) for a in schema.attributes}
    expected = np.concatenate([_row_by_row(a, neutral[a.name], True) for a in schema.attributes], axis=1)
    assert schema.encode(neutral, allow_fractional=True).tobytes() == expected.tobytes()


def test_valid_values_skip_the_row_by_row_encoder(sensitive, monkeypatch):
    schema = AttributeSchema.infer(sensitive)
    big = pd.concat([sensitive] * 50, ignore_index=True)
    calls = []
    original = Attribute._encode_one

    def counting(self, value, row, allow_fractional):
        calls.append(row)
        return original(self, value, row, allow_fractional)

    monkeypatch.setattr(Attribute, "_encode_one", counting)
    schema.encode(big)
    assert calls == []  # 10,000 rows, no per-row work
    neutral = {a.name: a.neutral() for a in schema.attributes}
    schema.encode({name: [value] * len(big) for name, value in neutral.items()}, allow_fractional=True)
    assert calls == [0]  # the ethnicity mixture, one object on every row: encoded once
