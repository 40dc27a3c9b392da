"""A label-conditional concealment (ConditionalTransport) in the batch jobs: exports read every row's labels
from the source and pass them to the encoder, write them only when asked, and refuse sources without them."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner
from PIL import Image

from bafo_pipeline import BAFOTransformer, export_latents, make_synthetic_faces, read_latents, save_model
from bafo_pipeline.cli import main
from bafo_pipeline.data import load_source, pseudonymous_ids, scan_source
from bafo_pipeline.data.splits import hash_split
from bafo_pipeline.data.utkface import UTKFACE_ETHNICITIES
from bafo_pipeline.pipeline import run_workflow
from bafo_pipeline.transformers import (
    ConditionalTransport,
    LinearErasure,
    load_model,
    load_verified_model,
    register_loadable,
)

SIZE = 32
KEY = bytes(range(32))


@pytest.fixture(scope="module")
def faces():
    return make_synthetic_faces(80, image_size=SIZE, random_state=3)


@pytest.fixture(scope="module")
def model(faces):
    # Two age bins and no age spline: 80 faces leave few rows per cell.
    steps = [ConditionalTransport(continuous_bins=2, smooth_mean_knots=0)]
    return BAFOTransformer(
        latent_dim=8, widths=(8, 16), epochs=1, batch_size=16, random_state=0, image_shape=(SIZE, SIZE),
        concealment=steps, decoder_epochs=0,
    ).fit(faces.images, sensitive_features=_whole_years(faces))


def _whole_years(faces):
    """The faces' labels with ages in whole years, as UTKFace names give them."""
    return faces.sensitive_features.assign(age=faces.sensitive_features["age"].round().clip(lower=1))


@pytest.fixture(scope="module")
def utkface_folder(faces, tmp_path_factory):
    """The faces as UTKFace-named JPEGs: their labels are in the names."""
    folder = tmp_path_factory.mktemp("utk")
    for i, (image, (age, gender, ethnicity)) in enumerate(zip(faces.images, _whole_years(faces).itertuples(index=False))):
        code = UTKFACE_ETHNICITIES.index(ethnicity)
        name = f"{int(age)}_{int(gender == 'female')}_{code}_20170116{i:06d}.jpg.chip.jpg"
        Image.fromarray(image).save(folder / name, quality=95)
    return folder


def _latents_by_id(path) -> dict:
    table = read_latents(path)
    return dict(zip(table.ids.tolist(), table.latents))


def test_the_model_needs_the_attributes_to_transform(model, faces):
    assert model.needs_sensitive_features_to_transform
    with pytest.raises(ValueError, match="sensitive"):
        model.transform(faces.images[:4])


def test_an_export_passes_each_row_its_own_labels_and_writes_none(model, faces, tmp_path):
    report = export_latents(model, faces, tmp_path / "z.parquet", id_key=KEY)
    expected = model.transform(faces.images, sensitive_features=faces.sensitive_features)
    assert pq.read_schema(tmp_path / "z.parquet").names == ["id", "latent"]  # no label in the shared file
    table = read_latents(tmp_path / "z.parquet")
    # Rows are written in id order; map them back through the ids of the in-memory faces.
    position = {int(i): k for k, i in enumerate(pseudonymous_ids(faces.content_hash, KEY))}
    written = table.latents
    rows = [position[int(i)] for i in table.ids]
    assert report.n_written == len(faces)
    np.testing.assert_allclose(written, expected[rows], atol=1e-4)
    # Labels swapped between rows change the latents: the export did use each row's own.
    swapped = faces.sensitive_features.iloc[::-1].reset_index(drop=True)
    assert not np.allclose(model.transform(faces.images, sensitive_features=swapped), expected, atol=1e-3)


def test_an_export_with_include_labels_writes_the_labels_beside_the_same_latents(model, faces, tmp_path):
    export_latents(model, faces, tmp_path / "plain.parquet", id_key=KEY)
    export_latents(model, faces, tmp_path / "labelled.parquet", id_key=KEY, include_labels=True)
    plain, labelled = _latents_by_id(tmp_path / "plain.parquet"), _latents_by_id(tmp_path / "labelled.parquet")
    assert plain.keys() == labelled.keys()
    for key, latent in plain.items():
        np.testing.assert_array_equal(latent, labelled[key])
    assert {"age", "gender", "ethnicity"} <= set(read_latents(tmp_path / "labelled.parquet").labels.columns)


def test_a_source_without_labels_is_refused_before_anything_is_written(model, utkface_folder, tmp_path):
    unlabelled, _ = scan_source(images=utkface_folder, image_size=SIZE)  # a plain image folder: no labels
    with pytest.raises(ValueError, match=r"needs every row's sensitive attributes.*no \['age', 'gender', 'ethnicity'\]"):
        export_latents(model, unlabelled, tmp_path / "z.parquet", id_key=KEY)
    assert not (tmp_path / "z.parquet").exists()


def test_a_row_with_a_missing_label_is_named(model, faces, tmp_path):
    for i in range(6):
        Image.fromarray(faces.images[i]).save(tmp_path / f"face{i}.png")
    labels = faces.sensitive_features.iloc[:6].reset_index(drop=True).assign(path=[f"face{i}.png" for i in range(6)])
    labels.loc[3, "ethnicity"] = None
    labels.to_csv(tmp_path / "manifest.csv", index=False)
    # The scan skips rows that lack a value of its sensitive columns; ethnicity is not declared one here.
    source, _ = scan_source(manifest=tmp_path / "manifest.csv", sensitive=("age", "gender"), image_size=SIZE)
    assert len(source) == 6
    with pytest.raises(ValueError, match="manifest rows 4 lack"):
        export_latents(model, source, tmp_path / "z.parquet", id_key=KEY)


def test_a_row_with_a_category_the_model_never_saw_is_named_by_its_manifest_row(model, faces, tmp_path):
    for i in range(6):
        Image.fromarray(faces.images[i]).save(tmp_path / f"face{i}.png")
    labels = faces.sensitive_features.iloc[:6].reset_index(drop=True).assign(path=[f"face{i}.png" for i in range(6)])
    labels.loc[4, "ethnicity"] = "martian"
    labels.to_csv(tmp_path / "manifest.csv", index=False)
    source, _ = scan_source(manifest=tmp_path / "manifest.csv", sensitive=("age", "gender"), image_size=SIZE)
    with pytest.raises(ValueError, match=r"manifest rows 5 have ethnicity values the model never saw \(first: 'martian'"):
        export_latents(model, source, tmp_path / "z.parquet", id_key=KEY)
    assert not (tmp_path / "z.parquet").exists()


def test_the_transports_exact_inverse_gives_back_the_encoders_own_latents_to_decode(model, faces):
    S = _whole_years(faces)
    concealed = model.transform(faces.images, sensitive_features=S)
    raw = model.transform(faces.images, conceal=False)
    assert np.abs(concealed - raw).max() > 0.1 * np.abs(raw).max()  # the transport moved them
    values = {"age": 40, "gender": "female", "ethnicity": "white"}
    # Decoding the concealed latents with their own labels is decoding the raw ones: what decode and grid use.
    through_transport = model.inverse_transform(concealed, sensitive_features=S)
    assert through_transport.dtype == np.uint8  # as the faces were given
    np.testing.assert_allclose(through_transport.astype(int),
                               model.inverse_transform(raw, sensitive_features=S, conceal=False).astype(int), atol=1)
    chosen = model.inverse_transform(raw, sensitive_features=values, conceal=False)
    assert chosen.shape == faces.images.shape
    assert np.abs(chosen.astype(float) - model.inverse_transform(raw, sensitive_features=S, conceal=False)).max() > 0
    with pytest.raises(ValueError, match=r"expected latents of shape \(n, 8\)"):
        model.inverse_transform(raw[:, :4], sensitive_features=values, conceal=False)


def test_decode_and_grid_redraw_a_transport_model_from_its_encoders_latents(model, utkface_folder, tmp_path):
    model_dir = save_model(model, tmp_path / "model")
    image = sorted(utkface_folder.iterdir())[0]
    result = CliRunner().invoke(main, ["decode", "--model", str(model_dir), str(image), "--out", str(tmp_path / "decoded"),
                                       "--age", "40", "--gender", "female"])
    assert result.exit_code == 0, result.output
    assert "redrawing from the encoder's latents" in result.output
    loaded = load_model(model_dir)
    pixels = np.asarray(Image.open(image).convert("RGB").resize((SIZE, SIZE)))[None]
    expected = loaded.inverse_transform(loaded.transform(pixels, conceal=False), conceal=False,
                                        sensitive_features={"age": 40, "gender": "female"})
    written = np.asarray(Image.open(tmp_path / "decoded" / "decoded_0000.png"))
    assert np.abs(written.astype(int) - expected[0].astype(int)).max() <= 2
    grid = CliRunner().invoke(main, ["grid", "--model", str(model_dir), str(image), "--out", str(tmp_path / "grid.png")])
    assert grid.exit_code == 0, grid.output
    assert (tmp_path / "grid.png").stat().st_size > 0


def test_ray_export_carries_the_labels_to_the_actors_and_writes_the_in_process_latents(
    ray_cluster, model, utkface_folder, tmp_path
):
    from bafo_pipeline.pipeline.distributed import encode_dataset
    from bafo_pipeline.pipeline.job_folder import PLAN_FILE

    model_dir = save_model(model, tmp_path / "model")
    source, _ = scan_source(utkface=utkface_folder, image_size=SIZE)
    export_latents(load_model(model_dir), source, tmp_path / "in_process.parquet", id_key=KEY)
    report = encode_dataset(model_dir, tmp_path / "ray", utkface=utkface_folder, id_key=KEY, workers=1,
                            address=ray_cluster, partition_rows=32)
    assert report.job["actor_model"] == ["estimator"]  # the folded torch bundle cannot transport
    assert sum(len(read_latents(p)) for p in (tmp_path / "ray").glob("part-*.parquet")) == len(source)
    parts = sorted((tmp_path / "ray").glob("part-*.parquet"))
    assert parts and all(pq.read_schema(p).names == ["id", "latent"] for p in parts)  # labels not written
    plan = json.loads((tmp_path / "ray" / PLAN_FILE).read_text())
    assert plan["labels_carried"] and plan["label_columns"] == []
    expected, written = _latents_by_id(tmp_path / "in_process.parquet"), {}
    for part in parts:
        written.update(_latents_by_id(part))
    assert written.keys() == expected.keys()
    for key, latent in expected.items():
        np.testing.assert_allclose(written[key], latent, atol=1e-5)


def test_a_run_refuses_before_training_a_held_out_class_combination_no_training_image_has(tmp_path):
    dataset = load_source(synthetic_samples=300, image_size=SIZE, seed=0)
    held_out = np.flatnonzero(hash_split(dataset.content_hash, test_fraction=0.15, seed=0))
    attributes = dataset.attributes.copy()
    attributes.loc[held_out[:3], "ethnicity"] = "martian"  # three held-out faces, no training face
    odd = dataclasses.replace(dataset, attributes=attributes)
    estimator = BAFOTransformer(latent_dim=4, widths=(4, 8), epochs=1, batch_size=64, concealment="transport")
    with pytest.raises(ValueError, match=r"3 exported images have a combination of classes that none of the \d+ "
                                         r"images the concealment is fitted on has \(e\.g\. gender='\w+', "
                                         r"ethnicity='martian'\).*--concealment full"):
        run_workflow(odd, tmp_path / "run", estimator, seed=0, calibration_fraction=0.0)
    assert not hasattr(estimator, "network_")  # refused before training
    assert not (tmp_path / "run").exists()


def test_the_check_before_training_forms_cells_as_the_transport_step_will(tmp_path, monkeypatch):
    # Ages in decades, three held-out faces aged 120. As classes (the estimator's attribute_kinds) that is a
    # combination no training face has; but the transport step forms its cells with its own kinds, age continuous,
    # and moves age 120 by the last age bin's map: the run must go on to training (with 3 audit folds: the audit,
    # checked before training too, reads the decades as classes, and 120 has three held-out faces).
    dataset = load_source(synthetic_samples=900, image_size=SIZE, seed=0)
    held_out = np.flatnonzero(hash_split(dataset.content_hash, test_fraction=0.15, seed=0))
    attributes = dataset.attributes.assign(age=dataset.attributes["age"] // 10 * 10)
    attributes.loc[held_out[:3], "age"] = 120
    decades = dataclasses.replace(dataset, attributes=attributes)

    def estimator(step_kinds):
        return BAFOTransformer(latent_dim=4, widths=(4, 8), epochs=1, batch_size=64,
                               attribute_kinds={"age": "categorical"},
                               concealment=[ConditionalTransport(attribute_kinds=step_kinds)])

    with pytest.raises(ValueError, match=r"exported images have a combination of classes that none of the \d+ images "
                                         r"the concealment is fitted on has \(e\.g\. age=120\.0, "):
        # (calibration_fraction=0: the maps fitted on the whole training split, checked against the held-out one)
        run_workflow(decades, tmp_path / "a", estimator(None), seed=0, calibration_fraction=0.0)  # inherits the kinds

    class Trained(Exception):
        pass

    def fit(self, *args, **kwargs):
        raise Trained

    monkeypatch.setattr(BAFOTransformer, "fit", fit)
    with pytest.raises(Trained):
        run_workflow(decades, tmp_path / "b", estimator({"age": "continuous"}), seed=0, calibration_fraction=0.0,
                     audit_options={"n_folds": 3})


KEY = b"calibration-test-key-0123456789"
QUICK_AUDIT = {"probes": ("prior", "linear"), "n_bootstrap": 0, "n_permutations": 0}


def test_a_run_with_calibration_rows_shares_only_rows_its_concealment_was_not_fitted_on(tmp_path):
    dataset = load_source(synthetic_samples=700, image_size=SIZE, seed=0)

    def run(folder, fraction):
        estimator = BAFOTransformer(latent_dim=4, widths=(4, 8), epochs=1, batch_size=64, concealment="transport",
                                    random_state=0)
        return estimator, run_workflow(dataset, tmp_path / folder, estimator, seed=0, calibration_fraction=fraction,
                                       id_key=KEY, audit_options=QUICK_AUDIT)

    _, plain = run("plain", 0.0)
    estimator, calibrated = run("calibrated", 0.4)
    shared = read_latents(calibrated.latents_path)
    held_out = read_latents(calibrated.audit_latents_path)
    training = read_latents(calibrated.train_latents_path)
    assert plain.n_calibration == 0 and len(read_latents(plain.latents_path).ids) == len(dataset)
    assert 0.3 * 595 < calibrated.n_calibration < 0.5 * 595  # about 40% of the ~595 training images
    assert len(shared.ids) == len(dataset) - calibrated.n_calibration
    # The held-out split is the one without calibration; the shared training rows are the rest of the shared file.
    assert set(held_out.ids) == set(read_latents(plain.audit_latents_path).ids)
    assert set(training.ids) | set(held_out.ids) == set(shared.ids) and not set(training.ids) & set(held_out.ids)
    assert len(read_latents(plain.train_latents_path).ids) == len(training.ids) + calibrated.n_calibration
    # The transport step was fitted on the calibration images, the ones missing from the shared file.
    key = dict(zip(pseudonymous_ids(dataset.content_hash, KEY), dataset.content_hash))
    shared_hashes = {key[i] for i in shared.ids}
    calibration = dataset.subset([h not in shared_hashes for h in dataset.content_hash])
    assert len(calibration) == calibrated.n_calibration
    raw = estimator.transform(calibration.images, conceal=False)
    refit = ConditionalTransport().fit(raw, sensitive_features=calibration.sensitive_features)
    (step,) = estimator.concealment_steps_
    np.testing.assert_allclose(step.cell_means_, refit.cell_means_, atol=2e-3)  # (transform may encode in bf16)
    every_training_image = dataset.subset([h not in set(key[i] for i in held_out.ids) for h in dataset.content_hash])
    # The run reports each cell's fitting rows: the calibration images' cells, or (without them) the training split's.
    np.testing.assert_array_equal(calibrated.rows_per_cell, refit.cell_counts_)
    assert calibrated.rows_per_cell.sum() == calibrated.n_calibration
    assert plain.rows_per_cell.sum() == len(every_training_image)
    assert calibrated.rows_per_cell_summary() == {"fewest": refit.cell_counts_.min(), "cells": len(refit.cell_ids_),
                                                  "median": np.median(refit.cell_counts_)}
    other = ConditionalTransport().fit(estimator.transform(every_training_image.images, conceal=False),
                                       sensitive_features=every_training_image.sensitive_features)
    common, in_other, in_step = np.intersect1d(other.cell_ids_, step.cell_ids_, return_indices=True)
    assert len(common) > 20  # and those fitted on the whole training split differ:
    assert np.abs(other.cell_means_[in_other] - step.cell_means_[in_step]).max() > 1e-2
    assert load_verified_model(calibrated.model_dir).metadata["split"]["calibration_fraction"] == 0.4


def test_a_run_whose_concealment_has_no_cells_reports_no_rows_per_cell(tmp_path):
    dataset = load_source(synthetic_samples=700, image_size=SIZE, seed=0)
    estimator = BAFOTransformer(latent_dim=4, widths=(4, 8), epochs=1, batch_size=64, concealment="linear",
                                random_state=0)
    result = run_workflow(dataset, tmp_path / "run", estimator, seed=0, calibration_fraction=0.4, id_key=KEY,
                          audit_options=QUICK_AUDIT)
    assert result.n_calibration > 0 and result.rows_per_cell is None  # LEACE moves every row by one map
    assert result.rows_per_cell_summary() is None


def test_a_calibration_fraction_outside_zero_to_one_is_refused(tmp_path):
    dataset = load_source(synthetic_samples=60, image_size=SIZE, seed=0)
    estimator = BAFOTransformer(latent_dim=4, widths=(4, 8), epochs=1, concealment="transport")
    with pytest.raises(ValueError, match=r"calibration_fraction must be in \[0, 1\), got 1\.0"):
        run_workflow(dataset, tmp_path / "run", estimator, calibration_fraction=1.0)


class CountingErasure(LinearErasure):
    """LinearErasure that records how many rows each fit saw (the class keeps the list: steps are cloned)."""

    fitted_rows: list = []

    def fit(self, X, y=None, *, sensitive_features=None):
        CountingErasure.fitted_rows.append(len(X))
        return super().fit(X, y, sensitive_features=sensitive_features)


register_loadable(CountingErasure)


def test_a_run_with_calibration_rows_fits_its_concealment_once_and_on_them_alone(tmp_path):
    dataset = load_source(synthetic_samples=700, image_size=SIZE, seed=0)
    estimator = BAFOTransformer(latent_dim=4, widths=(4, 8), epochs=1, batch_size=64, random_state=0,
                                concealment=[CountingErasure()])
    CountingErasure.fitted_rows = []
    result = run_workflow(dataset, tmp_path / "run", estimator, seed=0, calibration_fraction=0.4, id_key=KEY,
                          audit_options=QUICK_AUDIT)
    assert CountingErasure.fitted_rows == [result.n_calibration]  # not first on the training split, then again
    assert isinstance(estimator.concealment[0], CountingErasure)  # its concealment parameter is as it was given


def test_the_encoder_a_run_trains_does_not_depend_on_the_concealment_fitted_afterwards():
    faces = make_synthetic_faces(120, image_size=SIZE, random_state=5)
    S, calibration = faces.sensitive_features, slice(0, 50)

    def fitted(concealment_while_training):
        estimator = BAFOTransformer(latent_dim=4, widths=(4, 8), epochs=1, batch_size=32, random_state=0,
                                    concealment=concealment_while_training, decoder_epochs=1)
        estimator.fit(faces.images, sensitive_features=S)
        estimator.set_params(concealment="full", refine_epochs=1)
        return estimator.fit_concealment(faces.images[calibration], sensitive_features=S.iloc[calibration])

    np.testing.assert_array_equal(fitted("none").transform(faces.images), fitted("full").transform(faces.images))


def test_a_run_whose_training_fails_leaves_the_concealment_as_it_was_given(tmp_path):
    dataset = load_source(synthetic_samples=700, image_size=SIZE, seed=0)
    steps = [CountingErasure()]
    estimator = BAFOTransformer(latent_dim=4, widths=(4, 8), epochs=1, batch_size=64, random_state=0,
                                learning_rate=-1.0, concealment=steps)
    with pytest.raises(ValueError, match="learning_rate"):
        run_workflow(dataset, tmp_path / "run", estimator, seed=0, calibration_fraction=0.4, id_key=KEY,
                     audit_options=QUICK_AUDIT)
    assert estimator.concealment is steps


def test_a_run_whose_held_out_split_cannot_be_audited_stops_before_training(tmp_path):
    dataset = load_source(synthetic_samples=300, image_size=SIZE, seed=0)
    estimator = BAFOTransformer(latent_dim=4, widths=(4, 8), epochs=1, batch_size=64, concealment="linear")
    with pytest.raises(ValueError, match=r"the held-out split cannot be audited: attribute '\w+': classes with fewer "
                                         r"samples than n_folds=20"):
        run_workflow(dataset, tmp_path / "run", estimator, seed=0, audit_options={"n_folds": 20})
    assert not hasattr(estimator, "network_") and not (tmp_path / "run").exists()
