"""CSV/Parquet manifests: paths, columns, bad rows and de-duplication."""

from __future__ import annotations

import io

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from bafo_pipeline.data.images import ImageDecodeError, decode_image
from bafo_pipeline.data.manifest import load_manifest, scan_manifest


def _jpeg_bytes(seed: int) -> bytes:
    rng = np.random.default_rng(seed)
    buffer = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (24, 24, 3), dtype=np.uint8)).save(buffer, "JPEG")
    return buffer.getvalue()


@pytest.fixture
def setup(tmp_path):
    """Manifest folder with images in a subfolder and one named by its absolute path."""
    base = tmp_path / "set"
    (base / "img").mkdir(parents=True)
    outside = base / "elsewhere.jpg"
    outside.write_bytes(_jpeg_bytes(3))
    for i in range(3):
        (base / "img" / f"{i}.jpg").write_bytes(_jpeg_bytes(i))
    rows = pd.DataFrame(
        {
            "file": ["img/0.jpg", "img/1.jpg", "img/2.jpg", str(outside)],
            "age": [21, 35, 50, 64],
            "gender": ["female", "male", "female", "male"],
            "ethnicity": ["asian", "white", "black", "indian"],
            "site": ["a", "b", "a", "c"],
        }
    )
    return base, rows


def _write(rows: pd.DataFrame, base, name: str):
    path = base / name
    if name.endswith(".csv"):
        rows.to_csv(path, index=False)
    else:
        rows.to_parquet(path, index=False)
    return path


@pytest.mark.parametrize("name", ["labels.csv", "labels.parquet"])
def test_relative_and_absolute_paths_in_csv_and_parquet(setup, name):
    base, rows = setup
    data = load_manifest(_write(rows, base, name), image_size=20, image_column="file", n_jobs=2)
    assert len(data) == 4 and data.images.shape == (4, 20, 20, 3)
    assert data.sources[0] == str(base / "img" / "0.jpg")
    assert data.sources[3] == rows["file"][3]
    np.testing.assert_array_equal(data.images[3], decode_image(rows["file"][3], size=20))
    assert list(data.attributes.columns) == ["age", "gender", "ethnicity", "site"]
    assert data.attributes["age"].dtype == float and data.attributes["age"].tolist() == [21.0, 35.0, 50.0, 64.0]
    assert data.attributes["site"].tolist() == ["a", "b", "a", "c"]
    assert data.sensitive == ("age", "gender", "ethnicity")
    assert data.report.n_loaded == 4 and not data.report.skipped


def test_column_choice(setup):
    base, rows = setup
    path = _write(rows, base, "m.csv")
    data = load_manifest(path, image_column="file", sensitive=["gender"], other_columns=[], image_size=8)
    assert list(data.attributes.columns) == ["gender"] and data.sensitive == ("gender",)
    table, _ = scan_manifest(path, image_column="file", sensitive=["gender"], other_columns=["site"])
    assert list(table.columns) == ["path", "gender", "site", "content_hash"]
    assert table.index.name == "row" and table.index.tolist() == [1, 2, 3, 4]


def test_missing_column_names_it_and_lists_available_ones(setup):
    base, rows = setup
    path = _write(rows, base, "m.csv")
    with pytest.raises(ValueError, match=r"\['race'\] not found; available columns: \['file', 'age', "):
        scan_manifest(path, image_column="file", sensitive=["age", "race"])
    with pytest.raises(ValueError, match=r"\['path'\] not found"):
        scan_manifest(path)  # default image column


def test_unsupported_or_missing_manifest(setup, tmp_path):
    base, rows = setup
    (base / "m.xlsx").write_bytes(b"PK")
    with pytest.raises(ValueError, match="unsupported manifest format '.xlsx'"):
        scan_manifest(base / "m.xlsx")
    with pytest.raises(FileNotFoundError, match="manifest not found"):
        scan_manifest(tmp_path / "none.csv")


def test_paths_leading_outside_the_manifest_folder_need_the_flag(setup, tmp_path):
    base, rows = setup
    (tmp_path / "secret.jpg").write_bytes(_jpeg_bytes(9))
    (base / "img" / "link.jpg").symlink_to(tmp_path / "secret.jpg")
    rows = pd.concat([rows, pd.DataFrame({
        "file": [str(tmp_path / "secret.jpg"), "../secret.jpg", "img/../img/0.jpg", "img/link.jpg", "s3://bucket/x.jpg"],
        "age": [30] * 5, "gender": ["male"] * 5, "ethnicity": ["white"] * 5, "site": ["x"] * 5,
    })], ignore_index=True)
    path = _write(rows, base, "m.csv")
    table, report = scan_manifest(path, image_column="file", dedupe="none")
    assert table.index.tolist() == [1, 2, 3, 4, 7]  # row 7 stays inside (img/0.jpg)
    reasons = dict(report.skipped)
    for row in ("row 5", "row 6", "row 8"):  # absolute, ../ and a symlink out of the folder
        assert reasons[row].startswith("path leads outside the manifest's folder"), row
    assert reasons["row 9"].startswith("names another filesystem")
    table, report = scan_manifest(path, image_column="file", dedupe="none", allow_outside_root=True)
    assert table.index.tolist() == [1, 2, 3, 4, 5, 6, 7, 8] and list(dict(report.skipped)) == ["row 9"]


def test_bad_rows_are_skipped_with_row_numbers(setup):
    base, rows = setup
    rows = pd.concat(
        [
            rows,
            pd.DataFrame(
                {
                    "file": ["img/missing.jpg", "img/1.jpg", "img/2.jpg", None, "img/empty.jpg"],
                    "age": [30, 30, "old", 30, 30],
                    "gender": ["male", None, "male", "male", "male"],
                    "ethnicity": ["white"] * 5,
                    "site": ["d"] * 5,
                }
            ),
        ],
        ignore_index=True,
    )
    (base / "img" / "empty.jpg").write_bytes(b"")
    path = _write(rows, base, "m.csv")
    table, report = scan_manifest(path, image_column="file")
    assert table.index.tolist() == [1, 2, 3, 4]
    assert report.skipped == [
        ("row 5", "file not found"),  # the row names the entry: reasons carry no path, so they count by kind
        ("row 6", "missing value in column 'gender'"),
        ("row 7", "age 'old' is not a non-negative number"),
        ("row 8", "empty value in image column 'file'"),
        ("row 9", "empty file (0 bytes)"),
    ]
    with pytest.raises(ValueError, match="m.csv: row 5: file not found: img/missing.jpg"):
        scan_manifest(path, image_column="file", strict=True)


def test_duplicates_share_the_dedupe_rules(setup):
    base, rows = setup
    extra = rows.iloc[[0, 1]].assign(age=[21, 36])  # copy of row 1 agrees, copy of row 2 conflicts on age
    path = _write(pd.concat([rows, extra], ignore_index=True), base, "m.parquet")
    table, report = scan_manifest(path, image_column="file")
    assert table.index.tolist() == [1, 3, 4]
    assert (report.duplicates_dropped, report.conflicting_groups_dropped, report.conflicting_files_dropped) == (1, 1, 2)
    table, report = scan_manifest(path, image_column="file", dedupe="keep-first")
    assert table.index.tolist() == [1, 2, 3, 4] and report.duplicates_dropped == 2


def test_decode_errors_name_the_row(setup):
    base, rows = setup
    (base / "img" / "1.jpg").write_bytes(_jpeg_bytes(1)[:150])
    path = _write(rows, base, "m.csv")
    data = load_manifest(path, image_column="file", image_size=8)
    assert len(data) == 3 and data.attributes["age"].tolist() == [21.0, 50.0, 64.0]
    (item, reason), = data.report.skipped
    assert item == "row 2" and "1.jpg" not in reason and "truncated" in reason.lower()  # the row names the file
    with pytest.raises(ImageDecodeError, match="^row 2: .*1.jpg"):
        load_manifest(path, image_column="file", strict=True)


def test_limit_is_a_fixed_subset(setup):
    base, rows = setup
    path = _write(rows, base, "m.csv")
    full = load_manifest(path, image_column="file", image_size=8)
    two = load_manifest(path, image_column="file", image_size=8, limit=2)
    smallest = set(sorted(full.content_hash)[:2])
    assert list(two.content_hash) == [h for h in full.content_hash if h in smallest]


def test_skip_reasons_name_the_problem_not_the_path_so_they_count_by_kind(setup, tmp_path):
    base, rows = setup
    (base / "img" / "3.jpg").write_bytes(_jpeg_bytes(3)[:150])  # truncated: skipped when decoded
    rows = pd.concat([rows, pd.DataFrame({
        "file": ["img/30_1_0_missing.jpg", "img/45_0_2_missing.jpg", "../a.jpg", str(tmp_path / "b.jpg"), "img/3.jpg"],
        "age": [30] * 5, "gender": ["male"] * 5, "ethnicity": ["white"] * 5, "site": ["x"] * 5,
    })], ignore_index=True)
    path = _write(rows, base, "m.csv")
    data = load_manifest(path, image_column="file", image_size=8)
    reasons = dict(data.report.skipped)
    assert reasons["row 5"] == reasons["row 6"] == "file not found"  # labels in the names stay out of the reasons
    assert reasons["row 7"] == reasons["row 8"] == "path leads outside the manifest's folder (allow_outside_root accepts it)"
    assert "3.jpg" not in reasons["row 9"] and "truncated" in reasons["row 9"].lower()
    outside = _write(rows.drop(index=[4, 5]), base, "outside.csv")  # its first bad row: ../a.jpg, row 5
    with pytest.raises(ValueError, match=r"outside.csv: row 5: path leads outside the manifest's folder .*: \.\./a\.jpg$"):
        scan_manifest(outside, image_column="file", strict=True)  # the strict error, for the owner, names the file
