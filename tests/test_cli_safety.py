"""The command line as a careless user meets it (issue 14): outputs never destroy inputs, every user error
is one line and a non-zero exit (the traceback only with --debug), skipped files are listed by reason."""

import json
import os
import stat

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner
from pathlib import Path
from PIL import Image

from bafo_pipeline import make_synthetic_faces, read_latents
from bafo_pipeline.cli import main
from bafo_pipeline.data.splits import content_hash


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("cli_safety") / "model"
    result = CliRunner().invoke(
        main, ["train", "--synthetic-samples", "200", "--epochs", "1", "--latent-dim", "8", "--decoder-epochs", "0",
               "--concealment", "linear", "--out", str(out)],
    )
    assert result.exit_code == 0, result.output
    return out


@pytest.fixture()
def utkface(tmp_path):
    """A UTKFace-style folder: 12 readable faces, a file with a malformed name and one unreadable image."""
    folder = tmp_path / "UTKFace"
    folder.mkdir()
    for i, image in enumerate(make_synthetic_faces(12, random_state=7).images):
        Image.fromarray(image).save(folder / f"{20 + i}_{i % 2}_{i % 5}_2017011617452{i:04d}.jpg.chip.jpg")
    (folder / "39_1_20170116174525125.jpg.chip.jpg").write_bytes(b"no race field")
    (folder / "50_0_1_20170116174525999.jpg.chip.jpg").write_bytes(b"not a jpeg")
    return folder


def _run(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def _error_line(result) -> str:
    """The one ``Error:`` line of a failed command; fails if a traceback or several errors were printed."""
    assert result.exit_code not in (0, None), result.output
    assert "Traceback" not in result.output
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    errors = [line for line in result.output.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1, result.output
    return errors[0]


# ------------------------------------------------------------- outputs never destroy inputs
def test_encode_refuses_an_input_image_or_the_input_folder_as_output_even_with_overwrite(model_dir, utkface, tmp_path):
    image = sorted(utkface.iterdir())[0]
    before = image.read_bytes()
    outside_link = tmp_path / "link.parquet"
    outside_link.symlink_to(image)  # the same file under another name, outside the folder
    for out in (image, utkface / "latents.parquet", outside_link):
        line = _error_line(_run("encode", "--model", model_dir, "--utkface", utkface, "--out", out, "--overwrite"))
        assert "--out" in line and ("input" in line), line
    assert image.read_bytes() == before
    manifest = tmp_path / "faces.csv"
    pd.DataFrame({"path": [str(image)], "age": [30.0], "gender": ["male"], "ethnicity": ["white"]}).to_csv(manifest)
    line = _error_line(_run("encode", "--model", model_dir, "--manifest", manifest, "--out", manifest, "--overwrite"))
    assert "is the input" in line
    assert manifest.read_text().startswith(",path")


def test_grid_needs_overwrite_for_an_existing_file_and_never_replaces_an_input(model_dir, utkface, tmp_path):
    existing = tmp_path / "existing.png"
    existing.write_bytes(b"keep me")
    line = _error_line(_run("grid", "--model", model_dir, utkface, "--ages", "20,60", "--out", existing))
    assert "--overwrite" in line and existing.read_bytes() == b"keep me"
    replaced = _run("grid", "--model", model_dir, utkface, "--ages", "20,60", "--out", existing, "--overwrite")
    assert replaced.exit_code == 0, replaced.output
    assert Image.open(existing).size[0] > 0
    face = sorted(utkface.iterdir())[0]
    _error_line(_run("grid", "--model", model_dir, face, "--out", face, "--overwrite"))
    assert face.read_bytes()[:2] == b"\xff\xd8"  # still the JPEG


def test_decode_names_outputs_after_their_inputs_and_refuses_or_cleans_a_used_folder(model_dir, utkface, tmp_path):
    out = tmp_path / "decoded"
    result = _run("decode", "--model", model_dir, utkface, "--age", "40", "--out", out)
    assert result.exit_code == 0, result.output
    # 14 inputs sorted by name; the two unreadable ones (positions 12, 13 here) are named and leave gaps.
    listing = sorted(p.name for p in utkface.iterdir())
    bad = [i for i, name in enumerate(listing) if name.startswith(("39_", "50_"))]
    assert sorted(p.name for p in out.iterdir()) == [f"decoded_{i:04d}.png" for i in range(len(listing)) if i not in bad]
    for i in bad:
        assert f"skipped input {i} (" in result.output and listing[i] in result.output
    reused = _run("decode", "--model", model_dir, utkface, "--age", "40", "--out", out)
    assert "--overwrite" in _error_line(reused)
    fewer = tmp_path / "two"
    fewer.mkdir()
    for name in listing[:2]:
        (fewer / name).write_bytes((utkface / name).read_bytes())
    cleaned = _run("decode", "--model", model_dir, fewer, "--age", "40", "--out", out, "--overwrite")
    assert cleaned.exit_code == 0, cleaned.output
    assert sorted(p.name for p in out.iterdir()) == ["decoded_0000.png", "decoded_0001.png"]  # no stale decodes
    (out / "notes.txt").write_text("mine")
    refused = _run("decode", "--model", model_dir, fewer, "--age", "40", "--out", out, "--overwrite")
    assert "not decodes" in _error_line(refused) and (out / "notes.txt").exists()
    inside = _run("decode", "--model", model_dir, fewer, "--age", "40", "--out", fewer / "out")
    assert "inside the input folder" in _error_line(inside)


def test_audit_needs_overwrite_to_replace_an_earlier_report(tmp_path):
    from bafo_pipeline.io import write_latents

    rng = np.random.default_rng(0)
    labels = pd.DataFrame({"gender": rng.choice(["female", "male"], 120)})
    latents = tmp_path / "z.parquet"
    write_latents(latents, [(np.arange(120), rng.normal(size=(120, 4)).astype(np.float32), labels)],
                  label_schema={"gender": "string"})
    report = tmp_path / "report"
    common = ["audit", "--latents", latents, "--attributes", "gender", "--folds", "2", "--out", report]
    assert _run(*common).exit_code == 0
    first = (report / "report.json").read_bytes()
    assert "--overwrite" in _error_line(_run(*common))
    assert (report / "report.json").read_bytes() == first
    assert _run(*common, "--overwrite").exit_code == 0


# ------------------------------------------------------------------- errors as messages
def test_user_errors_are_one_line_and_debug_shows_the_traceback(model_dir, utkface, tmp_path):
    manifest = tmp_path / "m.csv"
    pd.DataFrame({"file": ["a.jpg"], "age": [3]}).to_csv(manifest, index=False)
    missing_column = _run("encode", "--model", model_dir, "--manifest", manifest, "--out", tmp_path / "a.parquet")
    assert "'path'" in _error_line(missing_column) and "m.csv" in _error_line(missing_column)

    strict = _run("encode", "--model", model_dir, "--utkface", utkface, "--out", tmp_path / "b.parquet", "--strict")
    line = _error_line(strict)
    assert "50_0_1_" in line and "--strict" in line and not (tmp_path / "b.parquet").exists()

    no_folder = _run("encode", "--model", model_dir, "--utkface", utkface, "--out", tmp_path / "nowhere" / "c.parquet")
    assert "nowhere" in _error_line(no_folder)

    garbage = tmp_path / "labels.parquet"
    garbage.write_bytes(b"garbage, not Parquet")
    good = tmp_path / "good.parquet"
    assert _run("encode", "--model", model_dir, "--utkface", utkface, "--out", good).exit_code == 0
    bad_labels = _run("audit", "--latents", good, "--labels", garbage, "--out", tmp_path / "r")
    assert "labels.parquet" in _error_line(bad_labels)

    debug = CliRunner().invoke(
        main, ["--debug", "encode", "--model", str(model_dir), "--manifest", str(manifest), "--out", str(tmp_path / "d.parquet")]
    )
    assert debug.exit_code != 0 and isinstance(debug.exception, ValueError)  # raised: click prints the traceback


def test_limit_must_be_positive_and_picks_by_content_hash_not_by_name(model_dir, utkface, tmp_path):
    assert "-5" in _error_line(_run("encode", "--model", model_dir, "--utkface", utkface, "--limit", "-5",
                                    "--out", tmp_path / "x.parquet"))
    out = tmp_path / "five.parquet"
    assert _run("encode", "--model", model_dir, "--utkface", utkface, "--limit", "5", "--include-labels",
                "--out", out).exit_code == 0
    named = [p for p in sorted(utkface.iterdir()) if not p.name.startswith("39_")]  # the scan's rows
    by_hash = sorted(named, key=lambda p: content_hash(p.read_bytes()))[:5]
    expected_ages = sorted(float(p.name.split("_")[0]) for p in by_hash if not p.name.startswith("50_"))
    assert sorted(read_latents(out).labels["age"]) == expected_ages
    assert expected_ages != [20.0, 21.0, 22.0, 23.0, 24.0]  # not the first five names (the test would be moot)


def test_skipped_files_are_listed_by_reason_and_in_a_private_json_beside_the_output(model_dir, utkface, tmp_path):
    out = tmp_path / "latents.parquet"
    result = _run("encode", "--model", model_dir, "--utkface", utkface, "--out", out)
    assert result.exit_code == 0, result.output
    assert "39_1_20170116174525125.jpg.chip.jpg: 3 underscore-separated fields" in result.output
    assert "skipped by reason:" in result.output
    listing = tmp_path / "latents.parquet.skipped.json"
    assert stat.S_IMODE(os.stat(listing).st_mode) == 0o600
    skipped = json.loads(listing.read_text())["skipped"]
    assert [Path(entry["item"]).name[:3] for entry in skipped] == ["39_", "50_"]  # the scan's, then the decoder's
    assert all(entry["reason"] for entry in skipped)
    assert [p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")] == []


def test_train_into_a_new_folder_lists_its_skips_beside_the_model(utkface, tmp_path):
    out = tmp_path / "new" / "deeper" / "model"  # neither folder exists yet
    result = _run("train", "--utkface", utkface, "--epochs", "1", "--latent-dim", "8", "--decoder-epochs", "0",
                  "--concealment", "none", "--out", out)
    assert result.exit_code == 0, result.output
    assert (out / "model.safetensors").is_file()
    skipped = json.loads((tmp_path / "new" / "deeper" / "model.skipped.json").read_text())["skipped"]
    assert sorted(Path(entry["item"]).name[:3] for entry in skipped) == ["39_", "50_"]


def test_repeated_or_empty_id_column_values_are_refused_naming_the_manifest_rows(model_dir, utkface, tmp_path):
    faces = sorted(p for p in utkface.iterdir() if not p.name.startswith(("39_", "50_")))
    manifest = tmp_path / "faces.csv"
    table = pd.DataFrame({"path": [str(p) for p in faces], "age": 30.0, "gender": "male", "ethnicity": "white",
                          "key": [f"k{i}" for i in range(len(faces))]})
    table.loc[[2, 5, 9], "key"] = "same"  # data rows 3, 6 and 10 of the manifest
    table.to_csv(manifest, index=False)
    line = _error_line(_run("encode", "--model", model_dir, "--manifest", manifest, "--id-column", "key",
                            "--out", tmp_path / "a.parquet"))
    assert "repeats values" in line and "manifest rows 3, 6, 10" in line
    table["key"] = "x"  # the case: every value the same
    table.to_csv(manifest, index=False)
    assert "12 rows share 1 ids" in _error_line(_run("encode", "--model", model_dir, "--manifest", manifest,
                                                     "--id-column", "key", "--out", tmp_path / "b.parquet"))
    table["key"] = [f"k{i}" for i in range(len(faces))]
    table.loc[4, "key"] = None
    table.to_csv(manifest, index=False)
    line = _error_line(_run("encode", "--model", model_dir, "--manifest", manifest, "--id-column", "key",
                            "--out", tmp_path / "c.parquet"))
    assert "empty at manifest rows 5" in line
    assert not any(tmp_path.glob("*.parquet"))


def test_encode_writes_pseudonymous_ids_and_a_key_table_only_on_request(model_dir, utkface, tmp_path):
    from bafo_pipeline.data import load_id_key, pseudonymous_ids, scan_source

    key_file = tmp_path / "owner.key"
    out, keys = tmp_path / "latents.parquet", tmp_path / "keys.parquet"
    result = _run("encode", "--model", model_dir, "--utkface", utkface, "--out", out, "--id-key-file", key_file,
                  "--key-table", keys)
    assert result.exit_code == 0, result.output
    written = read_latents(out)
    source, _ = scan_source(utkface=utkface)
    assert set(written.ids) <= set(pseudonymous_ids(source.content_hash, load_id_key(key_file)))
    assert (np.diff(written.ids) > 0).all()
    table = pd.read_parquet(keys)
    assert sorted(table["id"]) == sorted(written.ids) and stat.S_IMODE(os.stat(keys).st_mode) == 0o600
    plain = tmp_path / "plain.parquet"
    assert _run("encode", "--model", model_dir, "--utkface", utkface, "--out", plain).exit_code == 0
    assert sorted(p.name for p in tmp_path.iterdir() if "keys" in p.name) == ["keys.parquet"]  # only when asked
    assert "--manifest" in _error_line(_run("encode", "--model", model_dir, "--utkface", utkface, "--ids", "row",
                                            "--out", tmp_path / "rows.parquet"))
    face = sorted(utkface.iterdir())[0]
    assert "input" in _error_line(_run("encode", "--model", model_dir, "--utkface", utkface, "--out",
                                       tmp_path / "x.parquet", "--key-table", face))


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="FIFOs are POSIX")
def test_hostile_manifest_rows_and_symlink_loops_are_skipped_with_reasons_not_followed(model_dir, utkface, tmp_path):
    # Issue 14, items 2 and 3: /dev/zero grew memory, a FIFO hung the export, a symlink loop killed the scan,
    # and paths out of the dataset were followed without comment.
    folder = tmp_path / "data"
    folder.mkdir()
    faces = sorted(p for p in utkface.iterdir() if not p.name.startswith(("39_", "50_")))
    for face in faces[:4]:
        (folder / face.name).write_bytes(face.read_bytes())
    os.mkfifo(folder / "fifo.jpg")
    (folder / "loop.jpg").symlink_to(folder / "loop.jpg")
    rows = [face.name for face in faces[:4]] + ["fifo.jpg", "loop.jpg", "/dev/zero", "../../../../etc/passwd",
                                                str(faces[5])]
    manifest = folder / "faces.csv"
    pd.DataFrame({"path": rows, "age": 30.0, "gender": "male", "ethnicity": "white"}).to_csv(manifest, index=False)
    out = tmp_path / "latents.parquet"
    result = _run("encode", "--model", model_dir, "--manifest", manifest, "--out", out)
    assert result.exit_code == 0, result.output
    assert len(read_latents(out)) == 4
    reasons = {entry["item"]: entry["reason"] for entry in
               json.loads((tmp_path / "latents.parquet.skipped.json").read_text())["skipped"]}
    assert reasons["row 5"].startswith("not a regular file") and reasons["row 6"].startswith("symlink loop")
    for row in ("row 7", "row 8", "row 9"):  # /dev/zero, ../etc/passwd, a file of another folder
        assert "outside the manifest's folder" in reasons[row]
    allowed = _run("encode", "--model", model_dir, "--manifest", manifest, "--allow-outside-root",
                   "--out", tmp_path / "allowed.parquet")
    assert allowed.exit_code == 0, allowed.output
    assert len(read_latents(tmp_path / "allowed.parquet")) == 5  # + the face of the other folder; never /dev/zero
    (utkface / "loop.jpg.chip.jpg").symlink_to(utkface / "loop.jpg.chip.jpg")
    scanned = _run("encode", "--model", model_dir, "--utkface", utkface, "--out", tmp_path / "utk.parquet")
    assert scanned.exit_code == 0, scanned.output
    assert "loop.jpg.chip.jpg" in scanned.output


def test_malformed_attribute_values_are_usage_errors(model_dir, utkface, tmp_path):
    for option, value in (("--age", "abc"), ("--age", "nan"), ("--ethnicity", "asian:x"), ("--ethnicity", "a:1:2")):
        line = _error_line(_run("decode", "--model", model_dir, utkface, option, value, "--out", tmp_path / "d"))
        assert option in line, line
    assert "'NAME=VALUE'" in _error_line(_run("decode", "--model", model_dir, utkface, "--set", "smile",
                                                "--out", tmp_path / "d")).replace("expected NAME=VALUE", "'NAME=VALUE'")
    assert "--ages" in _error_line(_run("grid", "--model", model_dir, utkface, "--ages", "1,x", "--out",
                                        tmp_path / "g.png"))
    assert not (tmp_path / "d").exists() and not (tmp_path / "g.png").exists()


def test_a_model_folder_whose_config_is_not_an_object_is_one_error_line(model_dir, utkface, tmp_path):
    import shutil

    broken = tmp_path / "model"
    shutil.copytree(model_dir, broken)
    (broken / "config.json").write_text("[1, 2]")  # issue 14, item 8: a config.json that is a list
    for command in (["encode", "--model", broken, "--utkface", utkface, "--out", tmp_path / "x.parquet"],
                    ["decode", "--model", broken, utkface, "--age", "40", "--out", tmp_path / "d"]):
        assert "config.json" in _error_line(_run(*command))
