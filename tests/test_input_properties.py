"""Property-based tests of the readers of untrusted input: the UTKFace name parser, the JPEG header parser,
the manifest reader and the Parquet readers. Any input gives a result that keeps the reader's promises,
or the reader's documented error with a message; never another exception.

Example counts scale with the Hypothesis profile (tests/conftest.py: ``ci`` by default).
"""

import io
import os
import tempfile
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402
from PIL import Image  # noqa: E402

from bafo_pipeline.data.jpeg_tensors import JpegHeader, jpeg_header  # noqa: E402
from bafo_pipeline.data.manifest import scan_manifest  # noqa: E402
from bafo_pipeline.data.utkface import UTKFACE_ETHNICITIES, UTKFACE_GENDERS, parse_utkface_name  # noqa: E402
from bafo_pipeline.io import read_embedding, read_latents, write_latents  # noqa: E402
from bafo_pipeline.data import jpeg_tensors  # noqa: E402

EXAMPLES = settings().max_examples  # the loaded profile's


def _examples(factor: float) -> settings:
    return settings(max_examples=max(10, int(EXAMPLES * factor)))


# ------------------------------------------------------------------------ UTKFace names
_digits = st.text("0123456789", min_size=0, max_size=5)
_field = st.one_of(_digits, st.sampled_from(["1e9", "-5", "+3", " 7", "٣", "0x1", "3.0", "00", "0030"]), st.text(max_size=4))
_suffix = st.sampled_from([".jpg.chip.jpg", ".jpg", ".jpeg", ".png", ".JPG", ".jpg.chip.JPG", "jpg.chip.jpg",
                           ".png.chip.jpg", ".txt", "", ".jpg ", ".heic"])


@st.composite
def utkface_like_names(draw):
    fields = draw(st.lists(_field, min_size=1, max_size=6))
    folder = draw(st.sampled_from(["", "a/", "/data/UTKFace/", "../"]))
    return folder + "_".join(fields) + draw(_suffix)


@_examples(3)
@given(name=st.one_of(utkface_like_names(), st.text(max_size=40)))
def test_the_name_parser_returns_labels_in_range_or_a_reason(name):
    try:
        labels = parse_utkface_name(name)
    except ValueError as error:
        assert str(error)
        return
    assert set(labels) == {"age", "gender", "ethnicity"}
    assert isinstance(labels["age"], float) and 0 <= labels["age"] <= 120 and labels["age"] == int(labels["age"])
    assert labels["gender"] in UTKFACE_GENDERS and labels["ethnicity"] in UTKFACE_ETHNICITIES
    stem = Path(name).name.split(".")[0]
    age, gender, race, stamp = stem.split("_")
    # What was accepted is the canonical spelling of what was returned: no leading zeros, no signs.
    assert age == str(int(labels["age"])) and gender in "01" and len(race) == 1 and stamp.isdigit()


@_examples(1)
@given(age=st.integers(0, 120), gender=st.integers(0, 1), race=st.integers(0, 4),
       stamp=st.integers(10**7, 10**18 - 1), suffix=st.sampled_from([".jpg.chip.jpg", ".jpg", ".png"]))
def test_every_well_formed_name_parses_to_its_fields(age, gender, race, stamp, suffix):
    labels = parse_utkface_name(f"{age}_{gender}_{race}_{stamp}{suffix}")
    assert (labels["age"], labels["gender"], labels["ethnicity"]) == (
        float(age), UTKFACE_GENDERS[gender], UTKFACE_ETHNICITIES[race]
    )


# ---------------------------------------------------------------------------- JPEG headers
def _jpeg(width, height, mode, progressive, orientation) -> bytes:
    image = Image.new(mode, (width, height), color=0 if mode == "L" else (10, 200, 30)[: len(mode)])
    exif = Image.Exif()
    if orientation is not None:
        exif[0x0112] = orientation
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", progressive=progressive, exif=exif.tobytes() if orientation is not None else b"")
    return buffer.getvalue()


@st.composite
def jpeg_files(draw):
    return _jpeg(draw(st.integers(1, 64)), draw(st.integers(1, 64)), draw(st.sampled_from(["RGB", "L", "CMYK"])),
                 draw(st.booleans()), draw(st.one_of(st.none(), st.integers(1, 8))))


@_examples(1)
@given(width=st.integers(1, 300), height=st.integers(1, 300), mode=st.sampled_from(["RGB", "L", "CMYK"]),
       progressive=st.booleans(), orientation=st.one_of(st.none(), st.integers(1, 8)))
def test_the_header_of_a_real_jpeg_is_what_pillow_reads(width, height, mode, progressive, orientation):
    data = _jpeg(width, height, mode, progressive, orientation)
    header = jpeg_header(data)
    with Image.open(io.BytesIO(data)) as image:
        assert (header.width, header.height) == image.size
        assert header.components == len(image.getbands())
        assert header.orientation == (orientation or 1)
    assert header.progressive == progressive


@st.composite
def damaged(draw, files):
    data = bytearray(draw(files))
    for _ in range(draw(st.integers(1, 4))):
        operation = draw(st.sampled_from(["truncate", "flip", "insert", "delete"]))
        at = draw(st.integers(0, max(0, len(data) - 1)))
        if operation == "truncate":
            del data[at:]
        elif operation == "flip" and data:
            data[at] ^= draw(st.integers(1, 255))
        elif operation == "insert":
            data[at:at] = draw(st.binary(min_size=1, max_size=8))
        elif data:
            del data[at : at + draw(st.integers(1, 16))]
    return bytes(data)


@_examples(2)
@given(data=st.one_of(damaged(jpeg_files()), st.binary(max_size=300),
                      st.binary(max_size=300).map(lambda b: b"\xff\xd8" + b)))
def test_the_header_parser_never_raises_and_reports_only_sane_sizes(data):
    # The parser itself (not only its never-raising wrapper) handles every byte string.
    header = jpeg_tensors._parse_jpeg_header(data)
    assert header is None or isinstance(header, JpegHeader)
    if header is not None:
        assert 1 <= header.height <= 65535 and 1 <= header.width <= 65535 and header.components >= 1
        assert 0 <= header.orientation <= 0xFFFFFFFF
    assert jpeg_header(memoryview(data)) == header


# -------------------------------------------------------------------------------- manifests
@pytest.fixture(scope="module")
def image_folder(tmp_path_factory):
    folder = tmp_path_factory.mktemp("manifest_images")
    for i in range(3):
        Image.new("RGB", (8, 8), (40 * i, 10, 10)).save(folder / f"face{i}.png")
    (folder / "empty.png").write_bytes(b"")
    (folder / "sub").mkdir()
    if hasattr(os, "mkfifo"):
        os.mkfifo(folder / "fifo.png")  # read the usual way, it would hang the scan
    (folder / "loop.png").symlink_to(folder / "loop.png")
    return folder


_cells = st.one_of(
    st.none(), st.integers(-3, 130), st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from(["female", "male", "", " ", "NaN", "1e9", "inf", "-1", "26", "x,y", 'quote"d', "new\nline"]),
    st.text(max_size=6),
)
_paths = st.one_of(
    st.sampled_from(["face0.png", "face1.png", "face2.png", "empty.png", "sub", "missing.png", "", " ",
                     "../face0.png", "./face1.png", "sub/../face2.png", "face0.png ", "FACE0.PNG", "fifo.png",
                     "loop.png", "/dev/zero", "/etc/passwd", "../../../../etc/hostname"]),
    st.none(), st.integers(0, 3), st.text(max_size=8),
)


@st.composite
def manifests(draw):
    n = draw(st.integers(0, 12))
    columns = {"path": draw(st.lists(_paths, min_size=n, max_size=n))}
    for name in draw(st.lists(st.sampled_from(["age", "gender", "ethnicity", "smile", "content_hash", "row"]),
                              max_size=6, unique=True)):
        columns[name] = draw(st.lists(_cells, min_size=n, max_size=n))
    return pd.DataFrame(columns, dtype=object), draw(st.sampled_from([".csv", ".parquet"]))


@_examples(0.25)
@given(manifest=manifests(), sensitive=st.sampled_from([(), ("age",), ("gender",), ("age", "gender", "ethnicity")]),
       strict=st.booleans(), allow_outside_root=st.booleans())
def test_the_manifest_reader_keeps_good_rows_by_their_number_or_says_what_is_wrong(
    image_folder, manifest, sensitive, strict, allow_outside_root
):
    frame, suffix = manifest
    with tempfile.NamedTemporaryFile(suffix=suffix, dir=image_folder, delete=False) as handle:
        path = Path(handle.name)
    try:
        if suffix == ".csv":
            frame.to_csv(path, index=False)
        else:
            frame.astype(str).where(frame.notna(), None).to_parquet(path, index=False)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            try:
                table, report = scan_manifest(path, sensitive=sensitive, strict=strict, n_jobs=1,
                                              allow_outside_root=allow_outside_root)
            except (ValueError, TypeError) as error:
                assert str(error)
                return
    finally:
        path.unlink()
    n_rows = len(frame)
    assert set(table.index) <= set(range(1, n_rows + 1))  # 1-based data-row numbers of the manifest
    skipped_rows = [int(item.split()[1]) for item, _ in report.skipped]
    assert not set(skipped_rows) & set(table.index) and all(1 <= r <= n_rows for r in skipped_rows)
    dropped = report.duplicates_dropped + report.conflicting_files_dropped
    assert len(table) + len(report.skipped) + dropped == n_rows
    assert report.n_loaded == len(table)
    for file in table["path"]:  # regular, non-empty files only; inside the manifest's folder unless allowed
        assert Path(file).is_file() and Path(file).stat().st_size > 0
        assert allow_outside_root or Path(os.path.realpath(file)).is_relative_to(os.path.realpath(image_folder))
    assert all(isinstance(h, str) and len(h) == 40 for h in table["content_hash"])
    if "age" in table.columns:  # a missing age is skipped only where age is sensitive
        ages = table["age"].dropna() if "age" not in sensitive else table["age"]
        assert np.isfinite(ages).all() and (ages >= 0).all()
    for column in sensitive:
        assert table[column].notna().all()


# ------------------------------------------------------------------------------ Parquet files
@st.composite
def latent_files(draw):
    n = draw(st.integers(0, 20))
    dim = draw(st.integers(1, 6))
    values = draw(st.lists(st.floats(-1e6, 1e6, width=32), min_size=n * dim, max_size=n * dim))
    latents = np.asarray(values, dtype=np.float32).reshape(n, dim)
    ids = np.asarray(draw(st.lists(st.integers(0, 2**62), min_size=n, max_size=n, unique=True)), dtype=np.int64)
    labels = pd.DataFrame({"age": np.asarray(draw(st.lists(st.floats(0, 100), min_size=n, max_size=n))).reshape(n),
                           "gender": draw(st.lists(st.sampled_from(["female", "male"]), min_size=n, max_size=n))})
    buffer = io.BytesIO()
    with tempfile.TemporaryDirectory() as folder:
        target = Path(folder) / "z.parquet"
        write_latents(target, [(ids, latents, labels)] if n else [], latent_dim=dim,
                      label_schema={"age": "float64", "gender": "string"})
        buffer.write(target.read_bytes())
    return buffer.getvalue()


@st.composite
def foreign_tables(draw):
    """Parquet files other tools write: any mix of id, list and per-dimension columns, nulls, NaN."""
    n = draw(st.integers(0, 12))
    columns = {}
    for name in draw(st.lists(st.sampled_from(["id", "latent", "embedding", "dim_0", "dim_1", "age", "x"]),
                              max_size=5, unique=True)):
        kind = draw(st.sampled_from(["int", "float", "string", "list", "ragged", "null"]))
        if kind == "int":
            columns[name] = pa.array(draw(st.lists(st.integers(-5, 5), min_size=n, max_size=n)), pa.int64())
        elif kind == "float":
            columns[name] = pa.array(draw(st.lists(st.one_of(st.none(), st.floats()), min_size=n, max_size=n)),
                                     pa.float64())
        elif kind == "string":
            columns[name] = pa.array(draw(st.lists(st.one_of(st.none(), st.text(max_size=4)), min_size=n, max_size=n)))
        elif kind == "null":
            columns[name] = pa.nulls(n)
        else:
            length = draw(st.integers(0, 3))
            rows = draw(st.lists(st.one_of(st.none(), st.lists(st.floats(width=32),
                                                                min_size=0 if kind == "ragged" else length,
                                                                max_size=3 if kind == "ragged" else length)),
                                 min_size=n, max_size=n))
            columns[name] = pa.array(rows, pa.list_(pa.float32()))
    buffer = io.BytesIO()
    pq.write_table(pa.table(columns) if columns else pa.table({"x": pa.nulls(n)}), buffer)
    return buffer.getvalue()


@_examples(0.6)
@given(data=st.one_of(latent_files(), foreign_tables(), damaged(latent_files()), st.binary(max_size=200)))
def test_the_parquet_readers_return_consistent_tables_or_name_the_file(data):
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "latents.parquet"
        path.write_bytes(data)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            try:
                table = read_latents(path)
            except (ValueError, OSError) as error:
                assert str(error)
            else:
                assert table.latents.ndim == 2 and len(table.ids) == len(table.latents) == len(table)
                assert np.isfinite(table.latents).all()
            try:
                ids, embedding = read_embedding(path)
            except (ValueError, OSError) as error:
                assert str(error)
            else:
                assert len(ids) == len(embedding) and embedding.ndim == 2
                assert np.isfinite(np.asarray(embedding, dtype=float)).all()
