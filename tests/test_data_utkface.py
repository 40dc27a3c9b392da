"""UTKFace file-name parsing, folder scanning, de-duplication and loading."""

from __future__ import annotations

import io
import os

import numpy as np
import pytest
from PIL import Image

from bafo_pipeline.data.images import ImageDecodeError
from bafo_pipeline.data.utkface import load_utkface, parse_utkface_name, scan_utkface

STAMP = "20170116174525125"


def _jpeg_bytes(seed: int) -> bytes:
    rng = np.random.default_rng(seed)
    buffer = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (24, 24, 3), dtype=np.uint8)).save(buffer, "JPEG")
    return buffer.getvalue()


@pytest.mark.parametrize(
    "name, expected",
    [
        (f"26_1_2_{STAMP}.jpg.chip.jpg", (26.0, "female", "asian")),
        (f"0_0_0_{STAMP}.jpg.chip.jpg", (0.0, "male", "white")),
        (f"120_0_4_{STAMP}.jpg.chip.jpg", (120.0, "male", "others")),
        ("folder/45_1_3_2017011022340900.jpg.chip.jpg", (45.0, "female", "indian")),  # 16-digit stamp
        (f"7_0_1_{STAMP}.jpg", (7.0, "male", "black")),  # in-the-wild naming
    ],
)
def test_parse_valid_names(name, expected):
    labels = parse_utkface_name(name)
    assert (labels["age"], labels["gender"], labels["ethnicity"]) == expected
    assert isinstance(labels["age"], float)


MALFORMED = [
    ("39_1_20170116174525125.jpg.chip.jpg", "3 underscore-separated fields"),  # race missing
    ("24_0_1_20170116220224657 .jpg.chip.jpg", "whitespace"),
    ("55_0_0_20170116232725357jpg.chip.jpg", "unexpected suffix '.chip.jpg'"),  # dot missing
    (f"ab_0_0_{STAMP}.jpg.chip.jpg", "age field 'ab' is not a whole number"),
    (f"30_m_0_{STAMP}.jpg.chip.jpg", "gender field 'm'"),
    (f"30_0_x_{STAMP}.jpg.chip.jpg", "race field 'x'"),
    ("30_0_0_2017011617452x.jpg.chip.jpg", "datetime field"),
    (f"-5_0_0_{STAMP}.jpg.chip.jpg", "age field '-5'"),
    (f"_0_0_{STAMP}.jpg.chip.jpg", "age field ''"),
    (f"121_0_0_{STAMP}.jpg.chip.jpg", "age 121 is outside 0-120"),
    (f"30_2_0_{STAMP}.jpg.chip.jpg", "gender code 2"),
    (f"30_0_5_{STAMP}.jpg.chip.jpg", "race code 5"),
    (f"30_0_0_1_{STAMP}.jpg.chip.jpg", "5 underscore-separated fields"),
    (f"30_0_0_{STAMP}.jpg.chip.txt", "not an image file name"),
    (f"30_0_0_{STAMP}.txt", "not an image file name"),
    (".DS_Store", "not an image file name"),
    (f"30_0_0_{STAMP}.png.chip.jpg", "unexpected suffix"),
    # issue 14, item 9: what a generator or a careless rename makes of a name
    (f"1e9_0_0_{STAMP}.jpg.chip.jpg", "age field '1e9' is not a whole number"),
    ("0030_00_00_1.jpg.chip.jpg", "age field '0030' has leading zeros"),
    (f"30_00_0_{STAMP}.jpg.chip.jpg", "gender field '00' has leading zeros"),
    (f"30_0_01_{STAMP}.jpg.chip.jpg", "race field '01' has leading zeros"),
    ("30_0_0_1.jpg.chip.jpg", "datetime field '1' has fewer than 8 digits"),
    (f"{'9' * 200}_0_0_{STAMP}.jpg.chip.jpg", "is outside 0-120"),  # no overflow
]


@pytest.mark.parametrize("name, reason", MALFORMED)
def test_malformed_names_are_refused_with_a_reason(name, reason):
    with pytest.raises(ValueError, match=reason.replace(".", r"\.").replace("(", r"\(")):
        parse_utkface_name(name)


@pytest.fixture
def folder(tmp_path):
    """A small UTKFace-like folder with every quirk; returns (folder, expectations)."""
    root = tmp_path / "UTKFace"
    root.mkdir()
    good = {
        f"10_0_0_{STAMP}1.jpg.chip.jpg": _jpeg_bytes(1),
        f"20_1_1_{STAMP}2.jpg.chip.jpg": _jpeg_bytes(2),
        f"30_0_2_{STAMP}3.jpg.chip.jpg": _jpeg_bytes(3),
        f"40_1_3_{STAMP}4.jpg.chip.jpg": _jpeg_bytes(4),
        # Same bytes as image 1 and same labels: an agreeing duplicate.
        f"10_0_0_{STAMP}5.jpg.chip.jpg": _jpeg_bytes(1),
        # Image 6 twice with different genders: a conflicting group.
        f"50_0_4_{STAMP}6.jpg.chip.jpg": _jpeg_bytes(6),
        f"50_1_4_{STAMP}7.jpg.chip.jpg": _jpeg_bytes(6),
    }
    for name, data in good.items():
        (root / name).write_bytes(data)
    for name, _ in MALFORMED:
        if "/" not in name:
            (root / name).write_bytes(_jpeg_bytes(99))
    (root / f"60_0_0_{STAMP}8.jpg.chip.jpg").write_bytes(b"")  # empty file, valid name
    (root / "extra").mkdir()
    return root, good


def test_scan_reports_every_problem(folder):
    root, _ = folder
    table, report = scan_utkface(root, n_jobs=2)
    stamps = [os.path.basename(p).split("_")[3][len(STAMP)] for p in table["path"]]
    assert stamps == ["1", "2", "3", "4"]  # sorted by name; duplicate 5 and conflicting 6/7 dropped
    assert table["age"].tolist() == [10.0, 20.0, 30.0, 40.0]
    assert table["gender"].tolist() == ["male", "female", "male", "female"]
    assert table["ethnicity"].tolist() == ["white", "black", "asian", "indian"]
    assert table["content_hash"].str.fullmatch("[0-9a-f]{40}").all()
    assert (report.duplicates_dropped, report.conflicting_groups_dropped, report.conflicting_files_dropped) == (1, 1, 2)
    skipped = {os.path.basename(path): reason for path, reason in report.skipped}
    for name, reason in MALFORMED:
        assert reason.split("'")[0] in skipped[name], name
    assert "empty file" in skipped[f"60_0_0_{STAMP}8.jpg.chip.jpg"]
    assert "folder" in skipped["extra"]
    assert len(report.skipped) == len(MALFORMED) + 2
    assert report.n_loaded == 4


@pytest.mark.parametrize("mode, n_rows, dropped", [("keep-first", 5, 2), ("none", 7, 0)])
def test_other_dedupe_modes(folder, mode, n_rows, dropped):
    table, report = scan_utkface(folder[0], dedupe=mode)
    assert len(table) == n_rows and report.duplicates_dropped == dropped
    assert report.conflicting_groups_dropped == 0


def test_strict_raises_on_bad_files_but_still_skips_bad_names(folder):
    root, _ = folder
    with pytest.raises(ValueError, match=f"60_0_0_{STAMP}8.jpg.chip.jpg: empty file"):
        scan_utkface(root, strict=True)
    (root / f"60_0_0_{STAMP}8.jpg.chip.jpg").unlink()
    table, report = scan_utkface(root, strict=True)
    assert len(table) == 4 and len(report.skipped) == len(MALFORMED) + 1


def test_missing_folder(tmp_path):
    with pytest.raises(FileNotFoundError, match="UTKFace folder not found"):
        scan_utkface(tmp_path / "nope")


def test_load_decodes_kept_images_and_reports_bad_ones(folder):
    root, good = folder
    corrupt = root / f"70_1_0_{STAMP}9.jpg.chip.jpg"
    corrupt.write_bytes(_jpeg_bytes(9)[:200])
    data = load_utkface(root, image_size=(16, 12), n_jobs=2)
    assert data.images.shape == (4, 16, 12, 3) and data.images.dtype == np.uint8
    assert data.sensitive == ("age", "gender", "ethnicity")
    assert list(data.attributes.columns) == ["age", "gender", "ethnicity"]  # no path: names leak labels
    assert data.attributes["age"].tolist() == [10.0, 20.0, 30.0, 40.0]
    assert [os.path.basename(s) for s in data.sources] == list(good)[:4]
    assert dict(data.report.skipped)[str(corrupt)].startswith("truncated")
    assert data.report.n_loaded == 4
    # Each image is the decoded file it came from.
    reference = load_utkface(root, image_size=(16, 12), dedupe="none", n_jobs=1)
    by_source = dict(zip(reference.sources, reference.images))
    for source, image in zip(data.sources, data.images):
        np.testing.assert_array_equal(image, by_source[source])


def test_load_strict_raises_on_undecodable_file(tmp_path):
    (tmp_path / f"10_0_0_{STAMP}.jpg.chip.jpg").write_bytes(_jpeg_bytes(1))
    (tmp_path / f"20_0_0_{STAMP}.jpg.chip.jpg").write_bytes(b"GIF89a not really")
    with pytest.raises(ImageDecodeError, match=f"20_0_0_{STAMP}.*(not an image|corrupt)"):
        load_utkface(tmp_path, strict=True)
    assert len(load_utkface(tmp_path)) == 1


def test_limit_takes_the_smallest_hashes_in_name_order(folder):
    full = load_utkface(folder[0], image_size=8)
    small = load_utkface(folder[0], image_size=8, limit=2)
    assert list(small.content_hash) == [h for h in full.content_hash if h in sorted(full.content_hash)[:2]]
    with pytest.raises(ValueError, match="limit"):
        load_utkface(folder[0], limit=0)


def test_nothing_loadable_is_an_error(tmp_path):
    (tmp_path / "readme.txt").write_text("no images here")
    with pytest.raises(ValueError, match="no images could be loaded.*readme.txt"):
        load_utkface(tmp_path)
