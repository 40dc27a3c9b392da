"""ConditionalTransport: label-conditional transport, a concealment step that needs the attributes at transform time."""

import copy
import json
import pickle

import numpy as np
import pandas as pd
import pytest
from sklearn import config_context
from sklearn.discriminant_analysis import QuadraticDiscriminantAnalysis
from sklearn.ensemble import HistGradientBoostingClassifier
from sklearn.linear_model import LinearRegression, LogisticRegression
from sklearn.metrics import balanced_accuracy_score, r2_score
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import SplineTransformer

from bafo_pipeline import (
    BAFOTransformer,
    ConditionalTransport,
    LatentRefiner,
    LinearErasure,
    load_model,
    make_synthetic_faces,
    save_model,
)
from safetensors.torch import load as safetensors_load
from safetensors.torch import save as safetensors_save

from bafo_pipeline.transformers import describe_concealment
from bafo_pipeline.transformers._state import TensorStore, decode, encode
from bafo_pipeline.transformers._transport import RIDGE_ALPHAS, _spline_basis, _spline_knots


# ------------------------------------------------------------------ planted data
def _planted(n: int, seed: int):
    """Latents where gender and ethnicity shift means *and* spreads, age bends a mean non-linearly, and column 4
    carries a signal ``u`` drawn independently of every attribute: ``(Z, S, u)``."""
    rng = np.random.default_rng(seed)
    S = pd.DataFrame({"gender": rng.choice(["female", "male"], n), "ethnicity": rng.choice(["a", "b", "c"], n),
                      "age": rng.uniform(1, 80, n)})
    male = (S["gender"] == "male").to_numpy()
    ethnicity = S["ethnicity"].map({"a": 0, "b": 1, "c": 2}).to_numpy()
    u = rng.normal(size=n)
    Z = rng.normal(size=(n, 6))
    Z[:, 0] += 1.0 * male + 0.8 * (ethnicity == 2)  # group means: linear leakage
    Z[:, 1] *= np.where(male, 1.8, 0.6)  # gender spread: invisible to linear erasure
    Z[:, 2] *= np.array([0.6, 1.0, 1.6])[ethnicity]  # ethnicity spread
    Z[:, 3] += 1.5 * np.sin(S["age"].to_numpy() / 15)  # age, non-linear in the mean
    Z[:, 4] = u + 0.3 * Z[:, 4]  # content unrelated to the attributes
    return Z, S, u


def _rows(S, part):
    return S.iloc[part].reset_index(drop=True)


def _labels(S, name, age_edges):
    return np.digitize(S["age"], age_edges) if name == "age" else S[name].to_numpy()


def _probe_accuracies(Z_a, S_a, Z_b, S_b, age_edges) -> dict:
    """Balanced accuracy of a linear, a quadratic and a boosted probe, trained on part a, tested on part b."""
    probes = {
        "linear": lambda: LogisticRegression(max_iter=2000),
        "quadratic": lambda: QuadraticDiscriminantAnalysis(reg_param=0.01),
        "boosted": lambda: HistGradientBoostingClassifier(max_iter=100, random_state=0),
    }
    return {
        (name, kind): balanced_accuracy_score(
            _labels(S_b, name, age_edges), make().fit(Z_a, _labels(S_a, name, age_edges)).predict(Z_b))
        for name in ("gender", "ethnicity", "age") for kind, make in probes.items()
    }


CHANCE = {"gender": 1 / 2, "ethnicity": 1 / 3, "age": 1 / 4}


@pytest.fixture(scope="module")
def planted():
    Z, S, u = _planted(12000, seed=0)
    fit, a, b = slice(0, 6000), slice(6000, 9000), slice(9000, None)  # maps fitted on one half, probes on the other
    return Z, S, u, fit, a, b


@pytest.mark.parametrize("shrinkage, margin", [(50.0, 0.09), (0.0, 0.05)])
def test_held_out_attributes_fall_to_chance_for_linear_and_nonlinear_probes(planted, shrinkage, margin):
    Z, S, u, fit, a, b = planted
    age_edges = np.quantile(S["age"][fit], [0.25, 0.5, 0.75])
    transport = ConditionalTransport(shrinkage=shrinkage).fit(Z[fit], sensitive_features=_rows(S, fit))
    moved_a, moved_b = (transport.transform(Z[part], sensitive_features=_rows(S, part)) for part in (a, b))
    raw = _probe_accuracies(Z[a], _rows(S, a), Z[b], _rows(S, b), age_edges)
    after = _probe_accuracies(moved_a, _rows(S, a), moved_b, _rows(S, b), age_edges)
    for (name, kind), accuracy in after.items():
        assert abs(accuracy - CHANCE[name]) <= margin, (name, kind, accuracy)
    for name in CHANCE:  # the raw latents are read well: the probes are not weak
        assert max(raw[name, kind] for kind in ("quadratic", "boosted")) >= CHANCE[name] + 0.15, raw
    # Linear erasure cannot remove the spread differences; the transport does (the boosted probe tells).
    erased = LinearErasure().fit(Z[fit], sensitive_features=_rows(S, fit))
    erased_gender = _probe_accuracies(erased.transform(Z[a]), _rows(S, a), erased.transform(Z[b]), _rows(S, b),
                                      age_edges)["gender", "boosted"]
    assert erased_gender >= 0.65 and after["gender", "boosted"] <= erased_gender - 0.1
    # The unrelated signal stays as readable.
    def r2(A, B):
        return r2_score(u[b], LinearRegression().fit(A, u[a]).predict(B))
    assert r2(moved_a, moved_b) >= 0.9 * r2(Z[a], Z[b])


def test_inverse_is_exact_and_each_cell_gets_the_pooled_moments(planted):
    Z, S, _, fit, _, b = planted
    transport = ConditionalTransport(shrinkage=0.0).fit(Z[fit], sensitive_features=_rows(S, fit))
    moved = transport.transform(Z[fit], sensitive_features=_rows(S, fit))
    np.testing.assert_allclose(transport.inverse_transform(moved, sensitive_features=_rows(S, fit)), Z[fit],
                               atol=1e-10)
    held_out = transport.transform(Z[b], sensitive_features=_rows(S, b))
    np.testing.assert_allclose(transport.inverse_transform(held_out, sensitive_features=_rows(S, b)), Z[b],
                               atol=1e-10)
    # Without shrinkage, every training cell has exactly the pooled mean and covariance after the move.
    cells = transport._cell_ids(transport._codes(_rows(S, fit)))
    ids, counts = np.unique(cells, return_counts=True)
    np.testing.assert_array_equal(transport.cell_ids_, ids)
    np.testing.assert_array_equal(transport.cell_counts_, counts)  # the rows each cell's maps were fitted on
    pooled = np.cov(moved.T)
    for cell in np.unique(cells)[:5]:
        rows = moved[cells == cell]
        np.testing.assert_allclose(rows.mean(0), transport.mean_, atol=1e-9)
        np.testing.assert_allclose(np.cov(rows.T), pooled, atol=0.05 * np.abs(pooled).max())
    assert transport.transform(Z[b].astype(np.float32), sensitive_features=_rows(S, b)).dtype == np.float32


def _pure_noise(n: int, seed: int):
    """Latents that hold nothing about the attributes (gender, 4 ethnicities, age)."""
    rng = np.random.default_rng(seed)
    S = pd.DataFrame({"gender": rng.choice(["female", "male"], n), "ethnicity": rng.choice(list("abcd"), n),
                      "age": rng.uniform(1, 80, n)})
    return rng.normal(size=(n, 24)), S


def test_shrunk_means_plant_no_cell_signal_in_held_out_rows():
    """A map fitted on training rows moves a new row by its cell's estimation error too, the same for every new row
    of the cell: on latents that hold nothing about the attributes, the cells' own means (the default) make held-out
    cells readable by a linear probe fitted on held-out rows; shrunk means (cells and smooth mean) much less."""
    labels = {"ethnicity": lambda S: S["ethnicity"].to_numpy(), "age band": lambda S: np.digitize(S["age"], [20, 40, 60])}
    accuracies = {(means, name): [] for means in ("own", "shrunk") for name in labels}
    for seed in range(3):
        Z_fit, S_fit = _pure_noise(1600, seed=seed)  # 32 cells of about 50 rows
        Z, S = _pure_noise(4000, seed=100 + seed)
        a, b = slice(0, 2000), slice(2000, None)
        for means, transport in (("own", ConditionalTransport()),
                                 ("shrunk", ConditionalTransport(mean_shrinkage="auto", ridge_alpha="auto"))):
            moved = transport.fit(Z_fit, sensitive_features=S_fit).transform(Z, sensitive_features=S)
            for name, label in labels.items():
                y = label(S)
                probe = LogisticRegression(max_iter=1000).fit(moved[a], y[a])
                accuracies[means, name].append(balanced_accuracy_score(y[b], probe.predict(moved[b])))
    for name in labels:  # chance is 1/4 for both
        own, shrunk = np.mean(accuracies["own", name]), np.mean(accuracies["shrunk", name])
        assert own >= 0.25 + 0.03, (name, own)
        assert shrunk <= own - 0.025, (name, own, shrunk)


def test_auto_mean_shrinkage_pulls_noise_only_cell_means_to_the_pooled_mean():
    Z, S = _pure_noise(1600, seed=0)
    own = ConditionalTransport(smooth_mean_knots=0).fit(Z, sensitive_features=S)
    auto = ConditionalTransport(smooth_mean_knots=0, mean_shrinkage="auto").fit(Z, sensitive_features=S)
    np.testing.assert_allclose(auto.mean_, own.mean_)
    assert np.linalg.norm(auto.cell_means_ - auto.mean_) <= 0.3 * np.linalg.norm(own.cell_means_ - own.mean_)


def test_auto_mean_shrinkage_keeps_constant_cells_own_means():
    # No spread within any cell: no noise to shrink by (and no division by a zero spread).
    S = pd.DataFrame({"gender": ["female", "male"] * 10, "ethnicity": ["a"] * 10 + ["b"] * 10})
    Z = np.where((S["gender"] == "male").to_numpy()[:, None], 1.0, -1.0) * np.ones((20, 3))
    Z[:, 1] += (S["ethnicity"] == "b").to_numpy()
    transport = ConditionalTransport(mean_shrinkage="auto", smooth_mean_knots=0).fit(Z, sensitive_features=S)
    own = ConditionalTransport(smooth_mean_knots=0).fit(Z, sensitive_features=S)
    np.testing.assert_allclose(transport.cell_means_, own.cell_means_)


def test_a_fixed_ridge_penalty_is_the_closed_form_ridge_with_an_unpenalised_intercept(planted):
    Z, S, _, fit, _, _ = planted
    transport = ConditionalTransport(ridge_alpha=3.0).fit(Z[fit], sensitive_features=_rows(S, fit))
    codes = transport._codes(_rows(S, fit))
    design = transport._design(codes, _rows(S, fit)) - transport.design_mean_
    Y = Z[fit] - Z[fit].mean(axis=0)
    closed_form = np.linalg.solve(design.T @ design + 3.0 * np.eye(design.shape[1]), design.T @ Y)
    np.testing.assert_allclose(transport.ridge_coef_, closed_form, atol=1e-8)
    np.testing.assert_array_equal(transport.ridge_alpha_, np.full(Z.shape[1], 3.0))
    chosen = ConditionalTransport(ridge_alpha="auto").fit(Z[fit], sensitive_features=_rows(S, fit)).ridge_alpha_
    assert chosen.shape == (Z.shape[1],) and set(chosen) <= set(RIDGE_ALPHAS)


def test_mean_shrinkage_interpolates_between_own_and_pooled_means(planted):
    Z, S, _, fit, _, _ = planted
    fitted = {w: ConditionalTransport(mean_shrinkage=w, smooth_mean_knots=0).fit(Z[fit],
                                                                              sensitive_features=_rows(S, fit))
              for w in (0.0, 0.25, 1.0)}
    own = fitted[0.0].cell_means_
    np.testing.assert_allclose(fitted[1.0].cell_means_, np.broadcast_to(fitted[1.0].mean_, own.shape))
    np.testing.assert_allclose(fitted[0.25].cell_means_, fitted[0.0].mean_ + 0.75 * (own - fitted[0.0].mean_))
    # Planted group shifts are far beyond sampling noise: "auto" keeps (nearly) all of them.
    auto = ConditionalTransport(mean_shrinkage="auto", smooth_mean_knots=0)
    auto.fit(Z[fit], sensitive_features=_rows(S, fit))
    assert np.abs(auto.cell_means_[:, 0] - own[:, 0]).max() <= 0.05 * np.ptp(own[:, 0])


def test_spline_basis_matches_scikit_learn_and_is_constant_beyond_the_training_range():
    ages = np.random.default_rng(0).uniform(1, 80, 500)
    knots = _spline_knots(ages, 6)
    reference = SplineTransformer(n_knots=6, knots="quantile", extrapolation="constant").fit(ages[:, None])
    probe = np.concatenate([ages, [-50.0, 0.0, 80.5, 150.0, 1e6]])
    np.testing.assert_allclose(_spline_basis(probe, knots), reference.transform(probe[:, None]), atol=1e-12)
    np.testing.assert_array_equal(_spline_basis(np.array([1e6]), knots), _spline_basis(np.array([ages.max()]), knots))


def test_ages_beyond_the_training_range_move_without_blowing_up(planted):
    Z, S, _, fit, _, b = planted
    transport = ConditionalTransport().fit(Z[fit], sensitive_features=_rows(S, fit))
    rows = _rows(S, b).iloc[:20].copy()
    at_edge = transport.transform(Z[b][:20], sensitive_features=rows.assign(age=S["age"][fit].max()))
    far = transport.transform(Z[b][:20], sensitive_features=rows.assign(age=1000.0))
    np.testing.assert_allclose(far, at_edge)  # the smooth mean is held constant; the last age bin applies


# ------------------------------------------------------------------ bad input
@pytest.fixture(scope="module")
def small():
    Z, S, _ = _planted(600, seed=1)
    return Z, S, ConditionalTransport().fit(Z, sensitive_features=S)


def test_transform_and_inverse_without_attributes_name_them(small):
    Z, _, transport = small
    for method in (transport.transform, transport.inverse_transform):
        with pytest.raises(ValueError, match=r"needs the sensitive attributes at transform time.*"
                                             r"\['gender', 'ethnicity', 'age'\]"):
            method(Z)


def test_an_unseen_category_names_its_rows(small):
    Z, S, transport = small
    S = S.copy()
    S.loc[[3, 10], "ethnicity"] = "z"
    with pytest.raises(ValueError, match=r"rows 4, 11 \(1-based\): attribute 'ethnicity' has value 'z', which no "
                                         r"training row had"):
        transport.transform(Z, sensitive_features=S)
    with pytest.raises(ValueError, match=r"row 4 \(1-based\): attribute 'ethnicity'"):
        transport.inverse_transform(Z[:5], sensitive_features=S.iloc[:5])
    with pytest.raises(ValueError, match=r"row 2 \(1-based\): attribute 'age' needs a finite number, got nan$"):
        transport.transform(Z[:3], sensitive_features=S.iloc[:3].assign(age=[30.0, np.nan, 40.0]))


def test_a_cell_without_training_rows_names_its_rows():
    Z, S, _ = _planted(600, seed=2)
    lacking = ((S["gender"] == "female") & (S["ethnicity"] == "c")).to_numpy()
    transport = ConditionalTransport(continuous_bins=0).fit(Z[~lacking], sensitive_features=S[~lacking])
    first = np.flatnonzero(lacking)[:2] + 1
    with pytest.raises(ValueError, match=rf"rows {first[0]}, {first[1]}.*\(1-based\): no training row had the classes "
                                         r"of the cell \(gender='female', ethnicity='c', age in \[-inf, inf\)\)"):
        transport.transform(Z, sensitive_features=S)
    # The other rows are not silently moved and returned: nothing comes back at all.
    np.testing.assert_array_equal(transport.transform(Z[~lacking], sensitive_features=S[~lacking]).shape,
                                  Z[~lacking].shape)


def test_a_row_whose_age_bin_had_no_training_rows_in_its_classes_takes_the_nearest_bins_map():
    Z, S, _ = _planted(1200, seed=3)
    cell = ((S["gender"] == "female") & (S["ethnicity"] == "c")).to_numpy()
    S = S.assign(age=np.where(cell, 1 + S["age"] * 49 / 80, S["age"]))  # (female, c) only aged 1-50 in training
    for knots in (0, 6):
        transport = ConditionalTransport(continuous_bins=4, smooth_mean_knots=knots).fit(Z, sensitive_features=S)
        *_, second_last, last = transport.bin_edges_[0]
        assert second_last < 45 < 50 < last  # so (female, c) has no training row in the oldest bin
        old = S[cell].assign(age=70.0)
        moved = transport.transform(Z[cell], sensitive_features=old)
        assert np.isfinite(moved).all() and np.abs(moved - Z[cell]).max() > 0.1
        np.testing.assert_allclose(transport.inverse_transform(moved, sensitive_features=old), Z[cell], atol=1e-9)
        if not knots:  # without the smooth mean a row's move depends on its cell only: the bin below's map
            np.testing.assert_allclose(moved, transport.transform(Z[cell], sensitive_features=old.assign(age=45.0)),
                                       atol=1e-12)


def test_wrong_row_count_and_missing_column_are_refused(small):
    Z, S, transport = small
    with pytest.raises(ValueError, match="sensitive_features has 10 rows but X has 600 samples"):
        transport.transform(Z, sensitive_features=S.iloc[:10])
    with pytest.raises(ValueError, match=r"lack column\(s\) \['age'\]"):
        transport.transform(Z, sensitive_features=S.drop(columns="age"))


# ------------------------------------------------------------------ persistence and pipelines
# (scikit-learn's estimator checks: tests/test_sklearn_checks.py)
def test_state_is_arrays_that_safetensors_and_pickle_keep(small):
    Z, S, transport = small
    store = TensorStore()
    tree = json.loads(json.dumps(encode(transport, store)))  # what a model directory's config.json holds
    tensors = safetensors_load(safetensors_save(store.tensors))
    expected = transport.transform(Z, sensitive_features=S)
    for restored in (pickle.loads(pickle.dumps(transport)), decode(tree, tensors)):
        assert type(restored) is ConditionalTransport
        np.testing.assert_array_equal(restored.transform(Z, sensitive_features=S), expected)
        np.testing.assert_array_equal(restored.inverse_transform(expected, sensitive_features=S),
                                      transport.inverse_transform(expected, sensitive_features=S))


def test_pipeline_routes_attributes_to_fit_and_transform(small):
    Z, S, _ = small
    y = (Z[:, 4] > 0).astype(int)
    with config_context(enable_metadata_routing=True):
        pipe = Pipeline([("transport", ConditionalTransport()), ("clf", LogisticRegression())])
        pipe.fit(Z, y, sensitive_features=S)
        expected = pipe["clf"].predict(pipe["transport"].transform(Z, sensitive_features=S))
        np.testing.assert_array_equal(pipe.predict(Z, sensitive_features=S), expected)
        with pytest.raises(ValueError, match="needs the sensitive attributes at transform time"):
            pipe.predict(Z)


# ------------------------------------------------------------------ in BAFOTransformer
@pytest.fixture(scope="module")
def faces():
    return make_synthetic_faces(200, image_size=32, random_state=4)


def _model(**params):
    defaults = dict(latent_dim=6, widths=(8, 16), epochs=1, batch_size=32, device="cpu", precision="float32",
                    random_state=0, concealment="transport")
    return BAFOTransformer(**{**defaults, **params})


@pytest.fixture(scope="module")
def transported(faces):
    return _model().fit(faces.images, sensitive_features=faces.sensitive_features)


def test_presets_spell_out_their_steps():
    assert [type(s) for s in _model().concealment_steps()] == [ConditionalTransport]
    refined = _model(concealment="transport-refined", refine_epochs=3, refine_adversary_weight=0.5)
    steps = refined.concealment_steps()
    assert [type(s) for s in steps] == [ConditionalTransport, LatentRefiner, LinearErasure]
    full = _model(concealment="full", refine_epochs=3, refine_adversary_weight=0.5).concealment_steps()[1]
    assert steps[1].get_params() == full.get_params() and full.kl_weight == 1.0
    for setting in ("full", "transport-refined"):  # refine_kl_weight sets both presets' refiner
        assert _model(concealment=setting, refine_kl_weight=0.3).concealment_steps()[1].kl_weight == 0.3
    with pytest.raises(ValueError, match=r"'refine_kl_weight'\] configure the named concealment presets"):
        _model(concealment=[ConditionalTransport()], refine_kl_weight=0.3).concealment_steps()
    assert _model().needs_sensitive_features_to_transform and not _model(concealment="full").needs_sensitive_features_to_transform


def test_a_list_of_steps_needs_attributes_before_fit_whenever_one_step_does():
    listed = _model(concealment=[LinearErasure(), ConditionalTransport()])
    assert listed.needs_sensitive_features_to_transform
    assert not _model(concealment=[LinearErasure()]).needs_sensitive_features_to_transform
    # A preset knob beside a list is an error at fit, not a reason to answer False before it.
    assert _model(concealment=[ConditionalTransport()], refine_epochs=3).needs_sensitive_features_to_transform


def test_transport_model_needs_attributes_to_encode(faces, transported):
    S = faces.sensitive_features
    assert transported.needs_sensitive_features_to_transform
    with pytest.raises(ValueError, match=r"concealment='transport'.*needs every row's sensitive attributes.*"
                                         r"\['age', 'gender', 'ethnicity'\]"):
        transported.transform(faces.images)
    with pytest.raises(ValueError, match="needs every row's sensitive attributes"):
        transported.encode_images(faces.images[:4].transpose(0, 3, 1, 2))
    with pytest.raises(ValueError, match="sensitive_features has 10 rows but X has 200 samples"):
        transported.transform(faces.images, sensitive_features=S.iloc[:10])
    raw = transported.transform(faces.images, conceal=False)  # the raw latents need nothing
    step = transported.concealment_steps_[0]
    Z = transported.transform(faces.images, sensitive_features=S)
    np.testing.assert_allclose(Z, step.transform(raw, sensitive_features=S), rtol=1e-5, atol=1e-6)
    assert np.abs(Z - raw).max() > 0.01
    # Batches get their own rows; encode_images takes them as transform does.
    batches = list(transported.iter_transform(faces.images, sensitive_features=S, batch_size=64))
    assert [len(i) for i, _ in batches] == [64, 64, 64, 8]
    np.testing.assert_array_equal(np.concatenate([z for _, z in batches]), Z)
    nchw = np.ascontiguousarray(faces.images[:50].transpose(0, 3, 1, 2))
    np.testing.assert_array_equal(transported.encode_images(nchw, sensitive_features=S.iloc[:50]), Z[:50])


def test_fit_transform_passes_the_attributes_to_transform(faces, transported):
    S = faces.sensitive_features
    Z = _model().fit_transform(faces.images, sensitive_features=S)
    np.testing.assert_array_equal(Z, transported.transform(faces.images, sensitive_features=S))


def test_pipeline_with_metadata_routing(faces):
    S = faces.sensitive_features
    y = faces.attributes["smile"].to_numpy()
    with config_context(enable_metadata_routing=True):
        pipe = Pipeline([("bafo", _model()), ("clf", LogisticRegression(max_iter=1000))]).fit(
            faces.images, y, sensitive_features=S)
        Z = pipe["bafo"].transform(faces.images, sensitive_features=S)
        np.testing.assert_array_equal(pipe["clf"].coef_, LogisticRegression(max_iter=1000).fit(Z, y).coef_)
        np.testing.assert_array_equal(pipe.predict(faces.images, sensitive_features=S), pipe["clf"].predict(Z))
        with pytest.raises(ValueError, match="needs every row's sensitive attributes"):
            pipe.predict(faces.images)
        # A model that needs no attributes to transform accepts them when routed, and ignores them.
        full = Pipeline([("bafo", _model(concealment="linear")), ("clf", LogisticRegression(max_iter=1000))]).fit(
            faces.images, y, sensitive_features=S)
        np.testing.assert_array_equal(full.predict(faces.images, sensitive_features=S), full.predict(faces.images))


def test_transport_decodes_exactly_as_the_raw_latents(faces, transported):
    S = faces.sensitive_features
    assert transported.concealed_network_ is None  # an exact inverse needs no fine-tuned decoder
    assert transported.erased_label_map_ is None
    floats = faces.images[:40].astype(np.float32) / 255  # float images decode to floats: no rounding to hide in
    model = _model().fit(floats, sensitive_features=S.iloc[:40])
    Z = model.transform(floats, sensitive_features=S.iloc[:40])
    raw = model.transform(floats, conceal=False)
    decoded = model.inverse_transform(Z, sensitive_features=S.iloc[:40])
    unconcealed = copy.deepcopy(model).set_params(concealment="none").fit_concealment(floats, sensitive_features=S.iloc[:40])
    np.testing.assert_allclose(decoded, unconcealed.inverse_transform(raw, sensitive_features=S.iloc[:40]), atol=1e-5)
    assert np.abs(model.inverse_transform(raw, sensitive_features=S.iloc[:40]) - decoded).max() > 1e-4
    # Decoding with other rows' attributes moves the latents back through other cells' maps: not the raw decode.
    other = model.inverse_transform(Z, sensitive_features=S.iloc[:40].iloc[::-1].reset_index(drop=True))
    assert np.abs(other - decoded).max() > 1e-2


def test_encoder_bundle_refuses_and_names_the_step(transported):
    with pytest.raises(ValueError, match=r"concealment step 0 \(ConditionalTransport\) needs each row's sensitive "
                                         r"attributes.*the estimator itself must encode"):
        transported.encoder_bundle()


@pytest.mark.parametrize("setting", ["transport", "transport-refined"])
def test_presets_save_load_and_describe(faces, setting, tmp_path):
    S = faces.sensitive_features
    model = _model(concealment=setting, refine_epochs=1, decoder_epochs=1).fit(faces.images, sensitive_features=S)
    steps = {"transport": ["ConditionalTransport"],
             "transport-refined": ["ConditionalTransport", "LatentRefiner", "LinearErasure"]}[setting]
    assert describe_concealment(model) == {"setting": setting, "steps": steps}
    # transport-refined's refiner and erasure are not invertible exactly: it decodes with a fine-tuned decoder.
    assert (model.concealed_network_ is not None) == (setting == "transport-refined")
    Z = model.transform(faces.images, sensitive_features=S)
    decoded = model.inverse_transform(Z[:8], sensitive_features=S.iloc[:8])
    for restored in (load_model(save_model(model, tmp_path / setting)), pickle.loads(pickle.dumps(model))):
        assert describe_concealment(restored) == describe_concealment(model)
        assert restored.needs_sensitive_features_to_transform
        np.testing.assert_array_equal(restored.transform(faces.images, sensitive_features=S), Z)
        np.testing.assert_array_equal(restored.inverse_transform(Z[:8], sensitive_features=S.iloc[:8]), decoded)
        with pytest.raises(ValueError, match="needs every row's sensitive attributes"):
            restored.transform(faces.images[:4])


def test_a_tabular_transport_model_conceals_each_batch_with_its_rows():
    Z, S, _ = _planted(300, seed=3)
    X = np.hstack([Z, np.random.default_rng(0).normal(size=(300, 4))]).astype(np.float32)
    model = _model(widths=(16,), epochs=2).fit(X, sensitive_features=S)
    step = model.concealment_steps_[0]
    raw = model.transform(X, conceal=False)
    expected = step.transform(raw, sensitive_features=S).astype(np.float32)
    np.testing.assert_array_equal(model.transform(X, sensitive_features=S), expected)
    batches = list(model.iter_transform(X, sensitive_features=S, batch_size=128))
    # Equal up to the float32 rounding of matrix products over 128 rows instead of 300; a row moved by
    # another row's cell would be off by a whole cell offset.
    np.testing.assert_allclose(np.concatenate([z for _, z in batches]), expected, rtol=0,
                               atol=1e-6 * np.abs(expected).max())
    drawn = model.transform(X, sensitive_features=S, sample=True)  # posterior draws, moved by their rows' maps
    raw_draws = model.transform(X, sample=True, conceal=False)  # the same draws (the seed is the model's)
    assert np.abs(raw_draws - raw).max() > 0.1
    np.testing.assert_array_equal(drawn, step.transform(raw_draws, sensitive_features=S).astype(np.float32))
    with pytest.raises(ValueError, match="needs every row's sensitive attributes"):
        model.transform(X, sample=True)
