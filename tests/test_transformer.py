"""BAFOTransformer as a scikit-learn estimator: input forms, attributes, routing, persistence, errors."""

import pickle

import joblib
import numpy as np
import pandas as pd
import pytest
import scipy.sparse
from PIL import Image
from sklearn import config_context
from sklearn.base import clone
from sklearn.exceptions import NotFittedError
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import GridSearchCV, KFold, cross_validate
from sklearn.pipeline import Pipeline

from bafo_pipeline.data.synthetic import make_synthetic_faces
from bafo_pipeline.transformers import BAFOTransformer

SIZE = 32




def _model(**params):
    # The estimator's own behaviour, without the concealment steps (tested in test_concealment.py).
    defaults = dict(latent_dim=4, widths=(4, 8), epochs=2, batch_size=16, random_state=0, concealment="none")
    return BAFOTransformer(**{**defaults, **params})


@pytest.fixture(scope="module")
def faces():
    return make_synthetic_faces(96, image_size=SIZE, random_state=0)


@pytest.fixture(scope="module")
def fitted(faces):
    return _model().fit(faces.images, sensitive_features=faces.sensitive_features)


def _tabular(n=200, seed=0):
    """Low-rank features (so an autoencoder has something to learn), a row id in column 0, labels."""
    rng = np.random.default_rng(seed)
    factors = rng.normal(size=(n, 3))
    X = factors @ rng.normal(size=(3, 6)) + 0.05 * rng.normal(size=(n, 6))
    X = 10.0 * X + 100.0
    X[:, 0] = np.arange(n)
    S = pd.DataFrame(
        {"row": np.arange(n, dtype=float), "group": rng.choice(["a", "b", "c"], size=n)},
        index=[f"person-{i}" for i in rng.permutation(n)],  # labels unrelated to position
    )
    y = (factors[:, 0] > 0).astype(int)
    return X.astype(np.float32), y, S


# ------------------------------------------------------------------ input forms


def test_every_image_array_form_gives_the_same_latents(faces):
    images, S = faces.images, faces.sensitive_features
    forms = {
        "nhwc": (images, {}),
        "nchw": (images.transpose(0, 3, 1, 2), {}),
        "float": (images.astype(np.float32) / 255.0, {}),
        "flat": (images.reshape(len(images), -1), {"image_shape": (SIZE, SIZE)}),
    }
    latents = {}
    for name, (X, params) in forms.items():
        model = _model(epochs=1, **params).fit(X, sensitive_features=S)
        latents[name] = model.transform(X)
        decoded = model.inverse_transform(latents[name][:3], sensitive_features=S.iloc[:3])
        assert decoded.shape == (3, *X.shape[1:])
        assert decoded.dtype == (np.float32 if name == "float" else np.uint8)
    for name in forms:
        np.testing.assert_array_equal(latents[name], latents["nhwc"], err_msg=name)
    assert model.n_features_in_ == SIZE * SIZE * 3  # flattened images are 2-D input


def test_image_paths_give_the_same_latents_as_arrays(faces, tmp_path):
    images, S = faces.images[:40], faces.sensitive_features.iloc[:40]
    paths = []
    for i, image in enumerate(images):
        paths.append(str(tmp_path / f"{i}.png"))
        Image.fromarray(image).save(paths[-1])  # PNG is lossless and the size matches: no resize
    from_arrays = _model(epochs=1, image_shape=(SIZE, SIZE)).fit(images, sensitive_features=S)
    from_paths = _model(epochs=1, image_shape=(SIZE, SIZE)).fit(paths, sensitive_features=S)
    assert from_paths.input_format_.kind == "paths"
    expected = from_arrays.transform(images)
    np.testing.assert_array_equal(from_paths.transform(paths), expected)
    np.testing.assert_array_equal(from_arrays.transform(paths), expected)  # an array model reads files too
    np.testing.assert_array_equal(from_paths.transform(images), expected)
    batches = list(from_paths.iter_transform(paths, batch_size=16))
    assert [len(rows) for rows, _ in batches] == [16, 16, 8]
    np.testing.assert_array_equal(np.concatenate([z for _, z in batches]), expected)


def test_tabular_input_uses_an_mlp_and_restores_units():
    X, _, S = _tabular()
    frame = pd.DataFrame(X, columns=[f"f{i}" for i in range(X.shape[1])])
    model = BAFOTransformer(
        latent_dim=3, widths=(32,), epochs=30, batch_size=32, learning_rate=1e-2, random_state=0, concealment="none"
    )
    Z = model.fit_transform(frame, sensitive_features=S[["group"]])
    assert model.network_.config.kind == "mlp" and Z.shape == (len(X), 3) and Z.dtype == np.float32
    assert model.n_features_in_ == 6 and list(model.feature_names_in_) == list(frame.columns)
    restored = model.inverse_transform(Z, sensitive_features=S[["group"]])
    residual = ((restored - X)[:, 1:] ** 2).mean()
    assert residual < 0.35 * X[:, 1:].var(axis=0).mean()  # back in original units, far better than the mean
    with pytest.raises(ValueError, match="Feature names seen at fit time, yet now missing:\n- f5"):
        model.transform(frame.iloc[:, :5])
    model.fit(X, sensitive_features=S[["group"]])
    with pytest.raises(ValueError, match="X has 5 features, but BAFOTransformer is expecting 6"):
        model.transform(X[:, :5])


def test_refitting_on_images_drops_tabular_attributes(faces):
    X, _, S = _tabular(n=40)
    model = _model(epochs=1).fit(X, sensitive_features=S)
    assert hasattr(model, "n_features_in_") and hasattr(model, "feature_mean_")
    model.fit(faces.images[:40], sensitive_features=S)
    assert not hasattr(model, "n_features_in_") and not hasattr(model, "feature_mean_")


@pytest.mark.parametrize(
    ("make_X", "error", "message"),
    [
        (lambda im: im[:, :16], ValueError, r"X must be NHWC images of shape \(n, 32, 32, 3\)"),
        (lambda im: im.transpose(0, 3, 1, 2), ValueError, "X must be NHWC images"),
        (lambda im: im.reshape(len(im), -1), ValueError, "X must be NHWC images"),
        (lambda im: im.astype(np.int64), ValueError, "must be uint8 .0-255. or float in .0, 1."),
        (lambda im: _with(im.astype(np.float32) / 255, 3, 1.5), ValueError, r"X row 3: float pixels must lie in \[0, 1\]"),
        (lambda im: _with(im.astype(np.float32) / 255, 2, np.nan), ValueError, "X row 2 contains NaN"),
        (lambda im: "face.png", TypeError, "not a single path"),
    ],
)
def test_transform_rejects_bad_images_clearly(fitted, faces, make_X, error, message):
    with pytest.raises(error, match=message):
        fitted.transform(make_X(faces.images[:5]))


def _with(images, row, value):
    images = images.copy()
    images[row, 0, 0, 0] = value
    return images


@pytest.mark.parametrize(
    ("X", "message"),
    [
        (np.zeros((4, 8, 8), np.uint8), "got an array of shape"),
        (np.zeros((4, 8, 8, 5), np.uint8), "NHWC or NCHW"),
        (np.zeros((4, 3, 8, 4), np.uint8), "could be NHWC images .* or NCHW images .*pass image_shape"),
    ],
)
def test_fit_rejects_unusable_arrays(X, message):
    with pytest.raises(ValueError, match=message):
        _model(epochs=0).fit(X)


def test_sparse_input_is_rejected():
    with pytest.raises(TypeError, match="sparse input is not supported"):
        _model(epochs=0).fit(scipy.sparse.random(10, 4, density=0.5, format="csr"))


def test_image_layout_ambiguity(faces):
    S = faces.sensitive_features.iloc[:8]
    # (n, 3, 8, 4): 3x8 RGBA or 8x4 RGB; image_shape settles it.
    nchw = np.zeros((8, 3, 8, 4), np.uint8)
    model = _model(epochs=0, widths=(4,), image_shape=(8, 4)).fit(nchw, sensitive_features=S)
    assert model.input_format_.kind == "nchw" and model.input_format_.shape == (8, 4, 3)
    # (n, 4, 4, 4) reads the same either way: NHWC, the package convention, with a warning.
    with pytest.warns(UserWarning, match="treating it as NHWC"):
        model = _model(epochs=0, widths=(4,)).fit(np.zeros((8, 4, 4, 4), np.uint8), sensitive_features=S)
    assert model.input_format_.kind == "nhwc"
    with pytest.raises(ValueError, match="neither NHWC nor NCHW images of image_shape"):
        _model(epochs=0, image_shape=(16, 16)).fit(faces.images[:8], sensitive_features=S)


# ------------------------------------------------------------ sensitive attributes


def test_schema_is_inferred_and_overridable(faces, fitted):
    assert [(a.name, a.kind) for a in fitted.schema_.attributes] == [
        ("age", "continuous"),
        ("gender", "binary"),
        ("ethnicity", "categorical"),
    ]
    S = faces.sensitive_features.assign(age=faces.sensitive_features["age"].round(-1))
    model = _model(epochs=0, attribute_kinds={"age": "categorical"}).fit(faces.images, sensitive_features=S)
    assert model.schema_["age"].kind == "categorical"


def test_fit_rejects_bad_sensitive_features(faces):
    S = faces.sensitive_features.copy()
    S.loc[S.index[[4, 7]], "age"] = np.nan
    with pytest.raises(ValueError, match=r"'age': missing values at rows \[4, 7\]"):
        _model(epochs=0).fit(faces.images, sensitive_features=S)
    with pytest.raises(ValueError, match="sensitive_features has 95 rows but X has 96 samples"):
        _model(epochs=0).fit(faces.images, sensitive_features=faces.sensitive_features.iloc[1:])
    with pytest.raises(ValueError, match=r"sensitive_features\['gender'\] hold single values"):
        _model(epochs=0).fit(faces.images, sensitive_features={"age": faces.sensitive_features["age"], "gender": "male"})
    with pytest.raises(ValueError, match="needs exactly 2 categories"):
        _model(epochs=0, attribute_kinds={"ethnicity": "binary"}).fit(
            faces.images, sensitive_features=faces.sensitive_features
        )


def test_without_sensitive_features_it_warns_and_is_a_plain_vae(faces):
    with pytest.warns(UserWarning, match="plain VAE"):
        model = _model(epochs=1).fit(faces.images)
    assert model.schema_ is None
    Z = model.transform(faces.images[:4])
    assert model.inverse_transform(Z).shape == (4, SIZE, SIZE, 3)
    with pytest.raises(ValueError, match="fitted without sensitive features"):
        model.inverse_transform(Z, sensitive_features={"gender": "male"})


def test_inverse_transform_broadcasts_scalars_and_accepts_fractions(faces, fitted):
    Z = fitted.transform(faces.images[:6])
    values = {"age": 40, "gender": "female", "ethnicity": "asian"}
    by_mapping = fitted.inverse_transform(Z, sensitive_features=values)
    by_frame = fitted.inverse_transform(Z, sensitive_features=pd.DataFrame([values] * 6))
    np.testing.assert_array_equal(by_mapping, by_frame)
    per_row_ages = fitted.inverse_transform(Z, sensitive_features={**values, "age": np.full(6, 40.0)})
    np.testing.assert_array_equal(per_row_ages, by_mapping)
    mixed = fitted.inverse_transform(
        Z, sensitive_features={"age": 40, "gender": 0.5, "ethnicity": {"asian": 0.5, "white": 0.5}}
    )
    assert mixed.shape == by_mapping.shape and not np.array_equal(mixed, by_mapping)
    # Attributes a mapping leaves out decode at their neutral value.
    partial = fitted.inverse_transform(Z, sensitive_features={"age": 40, "gender": "female"})
    neutral = {"age": 40, "gender": "female", "ethnicity": fitted.schema_.attributes[2].neutral()}
    assert fitted.schema_.attributes[2].name == "ethnicity"
    np.testing.assert_array_equal(partial, fitted.inverse_transform(Z, sensitive_features=neutral))


@pytest.mark.parametrize(
    ("sensitive", "message"),
    [
        (None, "sensitive_features are required"),
        ({"age": 40, "gender": "female", "ethnicity": "martian"}, "unknown category 'martian'"),
        (pd.DataFrame({"age": [40] * 3, "gender": ["female"] * 3}), r"lack column\(s\) \['ethnicity'\]"),
        ({"age": 40, "gender": "female", "ethnicty": "asian"}, r"unknown attribute\(s\) \['ethnicty'\]"),
        ({"age": [40, 50], "gender": "female", "ethnicity": "asian"}, "has 2 values but there are 3 samples"),
        ({"age": 40, "gender": 1.5, "ethnicity": "asian"}, "unknown category 1.5"),
    ],
)
def test_inverse_transform_rejects_bad_attributes(fitted, sensitive, message):
    Z = np.zeros((3, 4), np.float32)
    with pytest.raises(ValueError, match=message):
        fitted.inverse_transform(Z, sensitive_features=sensitive)


def test_inverse_transform_rejects_bad_latents(fitted):
    with pytest.raises(ValueError, match=r"expected latents of shape \(n, 4\)"):
        fitted.inverse_transform(np.zeros((3, 5)), sensitive_features={"age": 1, "gender": "male", "ethnicity": "white"})
    with pytest.raises(ValueError, match="NaN or infinite values .row 1"):
        fitted.inverse_transform(
            np.array([[0, 0, 0, 0], [0, np.nan, 0, 0]]), sensitive_features={"age": 1, "gender": "male", "ethnicity": "white"}
        )


# ------------------------------------------------------------ transform, score, output


def test_transform_is_the_posterior_mean_and_sampling_is_reproducible(faces, fitted):
    X = faces.images[:20]
    np.testing.assert_array_equal(fitted.transform(X), fitted.transform(X))
    sample = fitted.transform(X, sample=True)
    assert not np.allclose(sample, fitted.transform(X))
    np.testing.assert_array_equal(sample, fitted.transform(X, sample=True))  # random_state fixes the draw
    assert fitted.transform(X[:0]).shape == (0, 4)


def test_feature_names_and_pandas_output():
    X, _, S = _tabular(n=40)
    frame = pd.DataFrame(X, columns=[f"f{i}" for i in range(6)], index=np.arange(100, 140))
    model = _model(latent_dim=3, widths=(8,), epochs=1)
    with pytest.raises(NotFittedError):
        model.get_feature_names_out()
    model.fit(frame, sensitive_features=S)
    names = ["bafotransformer0", "bafotransformer1", "bafotransformer2"]
    assert list(model.get_feature_names_out()) == names
    out = model.set_output(transform="pandas").transform(frame)
    assert isinstance(out, pd.DataFrame) and list(out.columns) == names
    assert list(out.index) == list(frame.index)
    np.testing.assert_array_equal(out.to_numpy(), model.set_output(transform="default").transform(frame))


def test_score_is_the_negative_elbo_and_rises_with_training(faces):
    X, S = faces.images, faces.sensitive_features
    untrained = _model(epochs=0).fit(X, sensitive_features=S)
    trained = _model(epochs=4, learning_rate=3e-3).fit(X, sensitive_features=S)
    assert untrained.score(X, sensitive_features=S) < trained.score(X, sensitive_features=S) < 0
    with pytest.raises(ValueError, match="sensitive_features are required"):
        trained.score(X)


# ------------------------------------------------------------ metadata routing


class _RecordingBAFO(BAFOTransformer):
    """Records the (X, sensitive_features) pairs that reach fit."""

    calls: list = []

    def fit(self, X, y=None, *, sensitive_features=None, checkpoint=None, resume=False):
        _RecordingBAFO.calls.append((np.asarray(X).copy(), sensitive_features))
        return super().fit(X, y, sensitive_features=sensitive_features, checkpoint=checkpoint, resume=resume)


def test_pipeline_routes_sensitive_features(faces):
    y = faces.attributes["smile"].to_numpy()
    with config_context(enable_metadata_routing=True):
        pipe = Pipeline([("bafo", _model(epochs=1)), ("clf", LogisticRegression())])
        pipe.fit(faces.images, y, sensitive_features=faces.sensitive_features)
        assert pipe["bafo"].schema_.names == ["age", "gender", "ethnicity"]
        assert pipe.predict(faces.images).shape == y.shape


def test_cross_validate_slices_sensitive_features_per_split():
    X, y, S = _tabular(n=60)
    _RecordingBAFO.calls = []
    with config_context(enable_metadata_routing=True):
        pipe = Pipeline([("bafo", _RecordingBAFO(latent_dim=2, widths=(8,), epochs=1, random_state=0)), ("clf", LogisticRegression())])
        result = cross_validate(pipe, X, y, cv=KFold(3), params={"sensitive_features": S})
    assert len(result["test_score"]) == 3 and len(_RecordingBAFO.calls) == 3
    for X_fold, S_fold in _RecordingBAFO.calls:
        assert len(X_fold) == 40 and len(S_fold) == 40
        np.testing.assert_array_equal(S_fold["row"].to_numpy(), X_fold[:, 0])  # the rows of this split, in order


def test_grid_search_over_latent_dim_with_routing():
    X, y, S = _tabular(n=60)
    with config_context(enable_metadata_routing=True):
        pipe = Pipeline([("bafo", _model(widths=(8,), epochs=1)), ("clf", LogisticRegression())])
        search = GridSearchCV(pipe, {"bafo__latent_dim": [2, 3]}, cv=2).fit(X, y, sensitive_features=S)
    assert len(search.cv_results_["params"]) == 2
    best = search.best_estimator_["bafo"]
    assert best.latent_dim == search.best_params_["bafo__latent_dim"] and best.schema_ is not None


def test_grid_search_picks_the_better_elbo():
    X, _, S = _tabular(n=80)
    with config_context(enable_metadata_routing=True):
        search = GridSearchCV(_model(widths=(16,), latent_dim=3), {"epochs": [0, 20]}, cv=2)
        search.fit(X, sensitive_features=S)  # scored by BAFOTransformer.score, which needs the routed attributes
    assert search.best_params_ == {"epochs": 20}


# ------------------------------------------------------------ cloning, pickling, verbosity


def test_clone_gives_an_unfitted_copy(fitted):
    copy = clone(fitted)
    assert copy.get_params() == fitted.get_params()
    assert not hasattr(copy, "network_")


@pytest.mark.parametrize("how", ["pickle", "joblib"])
def test_pickle_round_trip_keeps_outputs(faces, fitted, tmp_path, how):
    X = faces.images[:10]
    if how == "pickle":
        restored = pickle.loads(pickle.dumps(fitted))
    else:
        joblib.dump(fitted, tmp_path / "model.joblib")
        restored = joblib.load(tmp_path / "model.joblib")
    assert hasattr(fitted, "network_")  # pickling must not strip the original
    Z = fitted.transform(X)
    np.testing.assert_array_equal(restored.transform(X), Z)
    values = {"age": 30, "gender": "male", "ethnicity": "black"}
    np.testing.assert_array_equal(
        restored.inverse_transform(Z, sensitive_features=values), fitted.inverse_transform(Z, sensitive_features=values)
    )


def test_pickled_state_holds_only_cpu_tensors(fitted):
    state = fitted.__getstate__()
    assert "network_" not in state
    assert all(t.device.type == "cpu" for t in state["_fitted_state"]["network_"].weights.values())


def test_a_pickle_of_release_0_1_still_loads(fitted, faces):
    # 0.1.0 pickled the network as "_network_config" + "_network_state" next to the other attributes.
    state = {k: v for k, v in vars(fitted).items() if k != "network_"}
    state["_network_config"] = fitted.network_.config.to_dict()
    state["_network_state"] = {k: v.clone() for k, v in fitted.network_.state_dict().items()}
    old = BAFOTransformer.__new__(BAFOTransformer)
    old.__setstate__(state)
    np.testing.assert_array_equal(old.transform(faces.images[:8]), fitted.transform(faces.images[:8]))


def test_quiet_unless_verbose(faces, capsys):
    X, S = faces.images[:32], faces.sensitive_features.iloc[:32]
    _model(epochs=1, device="cpu").fit(X, sensitive_features=S)
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err == ""
    _model(epochs=1, verbose=1).fit(X, sensitive_features=S)
    captured = capsys.readouterr()
    assert captured.out == "" and "training" in captured.err
