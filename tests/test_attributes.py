"""Attribute schema: kind inference, encoding, decode-time fractions, clear errors, JSON round trip."""

import json

import numpy as np
import pandas as pd
import pytest

from bafo_pipeline.attributes import Attribute, AttributeSchema
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
    with pytest.raises(ValueError, match="only allowed for a categorical attribute at decode time"):
        schema.encode({"gender": [{"male": 1}], "ethnicity": ["white"]}, allow_fractional=True)


@pytest.mark.parametrize(
    ("value", "message"),
    [
        (1.5, r"unknown category 1.5.*or a fraction in \[0, 1\]"),
        (-0.1, "unknown category -0.1"),
        ({"martian": 1.0}, "unknown category 'martian'"),
        ({"white": -1.0, "black": 2.0}, "negative weight"),
        ({"white": 0.0}, "sum to zero"),
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
