"""The bafo command line, through click's test runner, on tiny synthetic data."""

import json
import re

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner
from PIL import Image

from bafo_pipeline.cli import main
from bafo_pipeline.io import read_latents, write_latents




@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("cli") / "model"
    result = CliRunner().invoke(
        main, ["train", "--synthetic-samples", "240", "--epochs", "1", "--batch-size", "256", "--latent-dim", "16",
               "--out", str(out)]
    )
    assert result.exit_code == 0, result.output
    return out


def test_train_writes_a_model_and_refuses_to_overwrite(model_dir):
    config = json.loads((model_dir / "config.json").read_text())
    assert config["params"]["latent_dim"] == 16
    assert config["metadata"]["split"] == {"test_fraction": 0.15, "seed": 0}
    again = CliRunner().invoke(main, ["train", "--synthetic-samples", "240", "--epochs", "1", "--out", str(model_dir)])
    assert again.exit_code != 0 and "--overwrite" in again.output


def test_train_sets_the_refiners_kl_weight_and_refuses_a_negative_one(tmp_path):
    from bafo_pipeline.transformers import load_model

    args = ["train", "--synthetic-samples", "240", "--epochs", "1", "--batch-size", "256", "--latent-dim", "8",
            "--decoder-epochs", "0"]
    refused = CliRunner().invoke(main, [*args, "--refine-kl-weight", "-1", "--out", str(tmp_path / "bad")])
    assert refused.exit_code == 2 and "--refine-kl-weight" in refused.output and not (tmp_path / "bad").exists()
    result = CliRunner().invoke(main, [*args, "--refine-kl-weight", "0.2", "--out", str(tmp_path / "model")])
    assert result.exit_code == 0, result.output
    model = load_model(tmp_path / "model")
    assert model.refine_kl_weight == 0.2 and model.concealment_steps_[1].kl_weight == 0.2


def test_train_sets_the_transports_shrinkage_and_keeps_the_presets_other_knobs(tmp_path):
    from bafo_pipeline.transformers import load_model

    args = ["train", "--synthetic-samples", "240", "--epochs", "1", "--batch-size", "256", "--latent-dim", "8",
            "--decoder-epochs", "0"]
    refused = CliRunner().invoke(main, [*args, "--concealment", "full", "--transport-shrinkage", "40",
                                        "--out", str(tmp_path / "bad")])
    assert refused.exit_code == 2 and "has none" in refused.output and not (tmp_path / "bad").exists()
    result = CliRunner().invoke(main, [*args, "--concealment", "transport-refined", "--transport-shrinkage", "160",
                                       "--refine-kl-weight", "0.2", "--out", str(tmp_path / "model")])
    assert result.exit_code == 0, result.output
    transport, refiner, _ = load_model(tmp_path / "model").concealment_steps_
    assert transport.shrinkage == 160 and refiner.kl_weight == 0.2
    recorded = json.loads((tmp_path / "model" / "config.json").read_text())["metadata"]["data"]
    assert recorded["concealment_options"] == {"concealment": "transport-refined", "transport_shrinkage": 160}
    default = CliRunner().invoke(main, [*args, "--concealment", "transport", "--out", str(tmp_path / "default")])
    assert default.exit_code == 0, default.output
    assert load_model(tmp_path / "default").concealment == "transport"  # without the option, the preset as it was
    assert "concealment_options" not in json.loads((tmp_path / "default" / "config.json").read_text())["metadata"]["data"]
    run_refused = CliRunner().invoke(main, ["run", "--synthetic-samples", "240", "--concealment", "linear",
                                            "--transport-shrinkage", "40", "--out", str(tmp_path / "run")])
    assert run_refused.exit_code == 2 and "has none" in run_refused.output and not (tmp_path / "run").exists()


def test_encode_is_private_by_default_and_labels_only_on_request(model_dir, tmp_path):
    runner = CliRunner()
    shared, audit = tmp_path / "shared.parquet", tmp_path / "audit.parquet"
    assert runner.invoke(main, ["encode", "--model", str(model_dir), "--synthetic-samples", "240", "--out", str(shared)]).exit_code == 0
    result = runner.invoke(
        main,
        ["encode", "--model", str(model_dir), "--synthetic-samples", "240", "--split", "test", "--include-labels",
         "--include-split", "--out", str(audit)],
    )
    assert result.exit_code == 0, result.output
    assert pq.read_schema(shared).names == ["id", "latent"]  # no labels, no paths
    everything, held_out = read_latents(shared), read_latents(audit)
    assert len(everything) == 240 and everything.latents.shape == (240, 16)
    assert 0 < len(held_out) < 240 and set(held_out.split) == {"test"}
    assert {"age", "gender", "ethnicity"} <= set(held_out.labels.columns) and held_out.metadata["labels_included"]
    # The held-out rows are the same images, encoded the same way, as in the full export: joined by their
    # pseudonymous ids, and both files written in id order.
    position = {i: p for p, i in enumerate(everything.ids)}
    np.testing.assert_allclose(held_out.latents, everything.latents[[position[i] for i in held_out.ids]], atol=1e-6)
    assert (np.diff(everything.ids) > 0).all() and (np.diff(held_out.ids) > 0).all()
    refused = runner.invoke(main, ["encode", "--model", str(model_dir), "--out", str(shared)])
    assert refused.exit_code != 0 and "--overwrite" in refused.output


def _write_faces(folder, n=2):
    from bafo_pipeline import make_synthetic_faces

    folder.mkdir()
    for i, image in enumerate(make_synthetic_faces(n, random_state=7).images):
        Image.fromarray(image).save(folder / f"30_1_0_2017{i:04d}.png")  # a UTKFace-style, label-bearing name
    return folder


def test_decode_redraws_faces_with_chosen_attributes_under_neutral_names(model_dir, tmp_path):
    faces = _write_faces(tmp_path / "in")
    runner = CliRunner()
    outputs = {}
    for gender in ("female", "male"):
        out = tmp_path / gender
        result = runner.invoke(main, ["decode", "--model", str(model_dir), str(faces), "--age", "40", "--gender", gender, "--out", str(out)])
        assert result.exit_code == 0, result.output
        assert sorted(p.name for p in out.iterdir()) == ["decoded_0000.png", "decoded_0001.png"]
        outputs[gender] = np.stack([np.asarray(Image.open(p)) for p in sorted(out.iterdir())])
    assert outputs["female"].shape == (2, 56, 56, 3)
    assert not np.array_equal(outputs["female"], outputs["male"])
    bad = runner.invoke(main, ["decode", "--model", str(model_dir), str(faces), "--gender", "robot", "--out", str(tmp_path / "x")])
    assert bad.exit_code != 0 and "robot" in bad.output
    unknown = runner.invoke(main, ["decode", "--model", str(model_dir), str(faces), "--set", "smile=1", "--out", str(tmp_path / "y")])
    assert unknown.exit_code != 0 and "unknown attribute(s) ['smile']" in unknown.output


def test_grid_draws_inputs_across_ages_and_genders(model_dir, tmp_path):
    faces = _write_faces(tmp_path / "in")
    out = tmp_path / "grid.png"
    result = CliRunner().invoke(main, ["grid", "--model", str(model_dir), str(faces), "--ages", "1,40,80", "--out", str(out)])
    assert result.exit_code == 0, result.output
    width, height = Image.open(out).size
    # 2 inputs x 2 genders rows; input + 3 ages columns; 56 px cells, 2 px gaps, scaled 2x.
    assert (width, height) == (2 * (4 * 58 + 2), 2 * (4 * 58 + 2))


def test_audit_gate_fails_on_a_planted_leak_and_passes_on_noise(tmp_path):
    rng = np.random.default_rng(0)
    n = 400
    labels = pd.DataFrame({
        "gender": rng.choice(["female", "male"], n),
        "ethnicity": rng.choice(["a", "b", "c"], n),
        "age": rng.uniform(1, 80, n).round(1),
    })
    leaky = rng.normal(size=(n, 8)).astype(np.float32)
    leaky[:, 0] += 3.0 * (labels["gender"] == "female")
    noise = rng.normal(size=(n, 8)).astype(np.float32)
    for name, Z in (("leaky", leaky), ("noise", noise)):
        write_latents(tmp_path / f"{name}.parquet", [(np.arange(n), Z, labels)],
                      label_schema={"gender": "string", "ethnicity": "string", "age": "float64"})
    runner = CliRunner()
    common = ["--folds", "3", "--max-leakage", "0.3"]
    failed = runner.invoke(main, ["audit", "--latents", str(tmp_path / "leaky.parquet"), "--out", str(tmp_path / "r1"), *common])
    assert failed.exit_code == 1 and "gender" in failed.output
    passed = runner.invoke(main, ["audit", "--latents", str(tmp_path / "noise.parquet"), "--out", str(tmp_path / "r2"), *common])
    assert passed.exit_code == 0, passed.output
    assert json.loads((tmp_path / "r2" / "report.json").read_text())["schema_version"] >= 1


def test_run_does_the_whole_job(tmp_path, monkeypatch):
    # A fixed id key: the shared file's row order follows the keyed ids, and the side-channel check fails a
    # label-free row order for about 0.1% of keys (its family-wise level); a fixed key keeps the test deterministic.
    (tmp_path / "id.key").write_text("5e" * 32 + "\n")
    monkeypatch.setenv("BAFO_ID_KEY_FILE", str(tmp_path / "id.key"))
    out = tmp_path / "demo"
    result = CliRunner().invoke(main, ["run", "--synthetic-samples", "700", "--epochs", "1", "--batch-size", "256",
                                       "--latent-dim", "16", "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert {p.name for p in out.iterdir()} == {
        "model", "latents.parquet", "audit_latents.parquet", "audit_train_latents.parquet", "report"
    }
    # Its data are labelled, so it conceals by label-conditional transport (bafo train's default stays full).
    assert json.loads((out / "model" / "config.json").read_text())["params"]["concealment"] == "transport"
    assert pq.read_schema(out / "latents.parquet").names == ["id", "latent", "split"]
    shared, audited = read_latents(out / "latents.parquet"), read_latents(out / "audit_latents.parquet")
    assert (np.diff(shared.ids) > 0).all() and (np.diff(audited.ids) > 0).all()  # pseudonymous ids, in id order
    assert set(audited.ids) <= set(shared.ids) and shared.metadata["id_scheme"] == "content"
    position = {i: p for p, i in enumerate(shared.ids)}
    np.testing.assert_allclose(audited.latents, shared.latents[[position[i] for i in audited.ids]], atol=1e-6)
    assert (out / "report" / "report.html").stat().st_size > 0
    assert re.search(r"auditing: 100%.*probe", result.output)  # the audit's own progress bar, run to its end
    assert ".staging" not in (out / "report" / "report.json").read_text()  # written in a staging folder, moved whole
    for representation in ("pixels (PCA 64)", "bafo encoder (no concealment)", "bafo (shared latents)"):
        assert representation in result.output
    assert "downstream model for smile: balanced accuracy" in result.output
    assert "utility kept (non-sensitive targets" in result.output
    for attribute in ("smile", "background", "tilt", "hair_style", "glasses"):
        assert attribute in result.output.split("utility kept")[1]
    report = json.loads((out / "report" / "report.json").read_text())
    assert report["utility"]["references"] == ["pixels (PCA 64)", "bafo encoder (no concealment)"]
    [overall] = report["overall"]  # the shared latents, judged against the unconcealed encoder
    assert overall["representation"] == "bafo (shared latents)"
    assert overall["text"] in result.output and "of bafo encoder (no concealment)" in overall["text"]
    again = CliRunner().invoke(main, ["run", "--synthetic-samples", "700", "--out", str(out)])
    assert again.exit_code != 0 and "--overwrite" in again.output


@pytest.mark.parametrize("noise_scale", [None, 0.25])
def test_run_with_transport_encodes_every_image_with_its_own_labels(tmp_path, monkeypatch, noise_scale):
    from bafo_pipeline.data import load_id_key, load_source, pseudonymous_ids
    from bafo_pipeline.transformers import KeyedNoise, load_model

    (tmp_path / "id.key").write_text("5e" * 32 + "\n")
    monkeypatch.setenv("BAFO_ID_KEY_FILE", str(tmp_path / "id.key"))
    out = tmp_path / "demo"
    noise = [] if noise_scale is None else ["--noise-scale", str(noise_scale)]
    result = CliRunner().invoke(main, ["run", "--synthetic-samples", "700", "--epochs", "1", "--batch-size", "256",
                                       "--latent-dim", "16", "--concealment", "transport", "--calibration-fraction",
                                       "0.3", *noise, "--out", str(out)])
    assert result.exit_code == 0, result.output
    model = load_model(out / "model")
    steps = model.concealment_steps_
    recorded = json.loads((out / "model" / "config.json").read_text())["metadata"]["data"]
    if noise_scale is None:  # the preset, named as such
        assert len(steps) == 1 and "concealment_options" not in recorded
    else:  # the noise follows the transport, and the export below carries the draws transform gives
        assert isinstance(steps[-1], KeyedNoise) and steps[-1].scale == noise_scale
        assert recorded["concealment_options"] == {"concealment": "transport", "noise_scale": noise_scale}
    assert pq.read_schema(out / "latents.parquet").names == ["id", "latent", "split"]  # no label in the shared file
    faces = load_source(synthetic_samples=700, image_size=56, seed=0)  # what bafo run loaded
    assert model.needs_sensitive_features_to_transform
    shared = read_latents(out / "latents.parquet")
    n_calibration = int(re.search(r"not shared: the (\d+) calibration images", result.output).group(1))
    assert 0.2 * 595 < n_calibration < 0.4 * 595 and len(shared.ids) == 700 - n_calibration
    fewest, median = re.search(r"concealment was fitted on: fewest (\d+), median ([\d.]+)", result.output).groups()
    assert int(fewest) == model.concealment_steps_[0].cell_counts_.min() >= 1
    assert float(median) == np.median(model.concealment_steps_[0].cell_counts_)
    row = {i: r for r, i in enumerate(pseudonymous_ids(faces.content_hash, load_id_key(None)))}
    rows = [row[i] for i in shared.ids]
    labels = faces.sensitive_features.iloc[rows].reset_index(drop=True)
    np.testing.assert_allclose(shared.latents, model.transform(faces.images[rows], sensitive_features=labels),
                               atol=1e-4)
    other = labels.assign(gender=labels["gender"].map({"male": "female", "female": "male"}))
    moved = np.abs(model.transform(faces.images[rows], sensitive_features=other) - shared.latents).max()
    assert moved > 0.1 * shared.latents.std()  # another row's labels move it: the export used each row's own
    if noise_scale is None:  # `bafo encode` of the run's model shares what the run shared: no calibration image
        runner = CliRunner()
        encoded = runner.invoke(main, ["encode", "--model", str(out / "model"), "--synthetic-samples", "700",
                                       "--out", str(tmp_path / "all.parquet")])
        assert encoded.exit_code == 0, encoded.output
        assert f"left out the {n_calibration} calibration images" in encoded.output
        assert sorted(read_latents(tmp_path / "all.parquet").ids) == sorted(shared.ids)
        named = runner.invoke(main, ["encode", "--model", str(out / "model"), "--synthetic-samples", "700",
                                     "--split", "calibration", "--out", str(tmp_path / "calibration.parquet")])
        assert named.exit_code == 0, named.output
        held_back = read_latents(tmp_path / "calibration.parquet").ids
        assert len(held_back) == n_calibration and not set(held_back) & set(shared.ids)


def test_run_on_real_faces_says_why_utility_is_missing_without_the_landmarks_extra(monkeypatch, capsys):
    import bafo_pipeline.data.landmarks as landmarks
    from bafo_pipeline.cli import _landmark_targets

    def missing():
        raise ImportError(f"facial landmarks need dlib; install the optional extra: {landmarks.LANDMARKS_EXTRA_HINT}")

    monkeypatch.setattr(landmarks, "require_landmark_model", missing)
    assert _landmark_targets(None) is None
    message = capsys.readouterr().err
    assert "utility not audited" in message and "bafo-pipeline[landmarks]" in message


def test_run_on_real_faces_measures_landmark_targets_of_the_split(tmp_path):
    from bafo_pipeline.cli import _landmark_targets
    from bafo_pipeline.data import make_synthetic_faces
    from bafo_pipeline.data.landmarks import LANDMARK_TARGETS

    split = make_synthetic_faces(6, 56, random_state=0)
    measure = _landmark_targets(tmp_path / "landmarks.parquet")
    table = measure(split)
    assert list(table.columns) == list(LANDMARK_TARGETS) and len(table) == len(split)
    assert table.notna().all().all()  # small synthetic crops: the fixed face box still gives every target
    assert (tmp_path / "landmarks.parquet").exists()


def test_run_holds_back_the_workflows_calibration_share_by_default():
    from bafo_pipeline.cli import run
    from bafo_pipeline.pipeline.workflow import CALIBRATION_FRACTION

    (option,) = [p for p in run.params if p.name == "calibration_fraction"]
    assert option.default == CALIBRATION_FRACTION > 0  # the CLI spells the library's default out (fast start-up)


def test_decode_overwrite_keeps_the_earlier_decodes_until_the_new_set_is_complete(model_dir, tmp_path):
    faces, out = _write_faces(tmp_path / "in"), tmp_path / "decoded"
    runner = CliRunner()
    assert runner.invoke(main, ["decode", "--model", str(model_dir), str(faces), "--age", "40", "--out", str(out)]).exit_code == 0
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    unreadable = tmp_path / "broken.png"
    unreadable.write_bytes(b"not a png")
    failed = runner.invoke(main, ["decode", "--model", str(model_dir), str(unreadable), "--age", "40", "--out", str(out),
                                  "--overwrite"])
    assert failed.exit_code == 1 and "none of the inputs could be read" in failed.output
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before  # not emptied by the failed run
    replaced = runner.invoke(main, ["decode", "--model", str(model_dir), str(sorted(faces.iterdir())[0]), "--age", "80",
                                    "--out", str(out), "--overwrite"])
    assert replaced.exit_code == 0, replaced.output
    assert [p.name for p in out.iterdir()] == ["decoded_0000.png"]  # the new set only
    assert (out / "decoded_0000.png").read_bytes() != before["decoded_0000.png"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["broken.png", "decoded", "in"]  # no staging left behind


def test_skips_are_counted_by_reason_without_their_paths(model_dir, tmp_path):
    from bafo_pipeline.cli import _reason_kind

    faces = _write_faces(tmp_path / "faces", n=1)
    missing = [f"photos/{name}.jpg" for name in ("alice", "bob", "carol", "dave", "erin", "frank", "grace", "heidi",
                                                   "ivan", "judy", "mallory", "oscar")]
    manifest = tmp_path / "faces.csv"
    pd.DataFrame({"path": [str(next(faces.iterdir()).relative_to(tmp_path)), *missing], "age": 30.0,
                  "gender": "male", "ethnicity": "white"}).to_csv(manifest, index=False)
    out = tmp_path / "latents.parquet"
    result = CliRunner().invoke(main, ["encode", "--model", str(model_dir), "--manifest", str(manifest), "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert "skipped by reason: 12 file not found\n" in result.output
    assert "skipped row 2: file not found\n" in result.output and "alice" not in result.output  # rows name them
    listing = json.loads((tmp_path / "latents.parquet.skipped.json").read_text())
    assert listing["by_reason"] == {"file not found": 12}
    assert [entry["item"] for entry in listing["skipped"]] == [f"row {i}" for i in range(2, 14)]
    strict = CliRunner().invoke(main, ["encode", "--model", str(model_dir), "--manifest", str(manifest), "--strict",
                                       "--out", str(tmp_path / "strict.parquet")])
    assert strict.exit_code == 1 and "row 2: file not found: photos/alice.jpg" in strict.output  # the error names both
    # reasons of other sources that still carry a path or a file name are counted as one kind too
    assert _reason_kind("file not found: img/26_1_2_2017.jpg") == _reason_kind("file not found: other/40_0_1.jpg")
    assert _reason_kind("age 'old' is not a non-negative number") == _reason_kind("age '-1' is not a non-negative number")


@pytest.mark.parametrize("device, says", [("bogus", "'bogus' is not a device"), ("cuda:x", "is not a device"),
                                          ("cuda", "CUDA is not available"), ("cuda:0", "CUDA is not available")])
@pytest.mark.parametrize("command", ["train", "run"])
def test_a_bad_device_is_a_usage_error_before_any_data_is_loaded(command, device, says, tmp_path, monkeypatch):
    import torch

    import bafo_pipeline.data.sources as sources

    def never(*args, **kwargs):
        raise AssertionError("data loaded before --device was checked")

    monkeypatch.setattr(sources, "load_source", never)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    out = tmp_path / "out"
    result = CliRunner().invoke(main, [command, "--synthetic-samples", "50", "--device", device, "--out", str(out)])
    assert result.exit_code == 2, result.output
    assert "Invalid value for '--device'" in result.output and says in result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)  # a message, no traceback
    assert not out.exists()


def test_device_names_that_this_machine_has_are_accepted(monkeypatch):
    import click
    import torch

    from bafo_pipeline.cli import _check_device

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    for device in ("auto", "cpu", "cuda", "cuda:0", "cuda:1"):
        assert _check_device(None, None, device) == device
    with pytest.raises(click.BadParameter, match="2 CUDA device"):
        _check_device(None, None, "cuda:2")


def test_a_run_that_fails_leaves_the_earlier_run_folder_as_it_was(tmp_path, monkeypatch):
    import bafo_pipeline.pipeline.workflow as workflow

    out = tmp_path / "demo"
    (out / "report").mkdir(parents=True)
    (out / "latents.parquet").write_bytes(b"an earlier run's export")

    def fails(*args, **kwargs):
        raise RuntimeError("stopped while auditing")

    monkeypatch.setattr(workflow, "_train_export_and_audit", fails)
    result = CliRunner().invoke(main, ["run", "--synthetic-samples", "300", "--epochs", "1", "--out", str(out),
                                       "--overwrite"])
    assert result.exit_code != 0
    assert (out / "latents.parquet").read_bytes() == b"an earlier run's export"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["demo"]  # no staging folder left beside it
    (out / "notes.txt").write_text("mine")
    refused = CliRunner().invoke(main, ["run", "--synthetic-samples", "300", "--epochs", "1", "--out", str(out),
                                        "--overwrite"])
    assert refused.exit_code != 0 and "holds files that no run wrote (notes.txt)" in refused.output
