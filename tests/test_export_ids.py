"""The in-process export's ids and row order (issue 14, item 1): pseudonymous ids under the data owner's key,
rows in id order, nothing that follows file names or labels; the key table only on request."""

import hashlib
import os
import stat

import numpy as np
import pandas as pd
import pytest
from PIL import Image
from scipy.stats import spearmanr

from bafo_pipeline import BAFOTransformer, export_latents, make_synthetic_faces, read_latents
from bafo_pipeline.data import ImageFiles, key_fingerprint, pseudonymous_ids, scan_source
from bafo_pipeline.pipeline.export import source_fingerprint

SIZE = 32
KEY = bytes(range(32))


@pytest.fixture(scope="module")
def model():
    faces = make_synthetic_faces(60, image_size=SIZE, random_state=3)
    return BAFOTransformer(latent_dim=8, widths=(8, 16), epochs=1, refine_epochs=1, batch_size=16,
                           random_state=0).fit(faces.images, sensitive_features=faces.sensitive_features)


@pytest.fixture(scope="module")
def utkface(tmp_path_factory):
    """40 UTKFace-style files whose name order is age order (as in the real folder), one unreadable."""
    folder = tmp_path_factory.mktemp("ids") / "UTKFace"
    folder.mkdir()
    for i, image in enumerate(make_synthetic_faces(40, image_size=SIZE, random_state=5).images):
        Image.fromarray(image).save(folder / f"{10 + 2 * i}_{int(i >= 20)}_{i % 5}_201701161745{i:05d}.jpg.chip.jpg")
    (folder / "95_1_4_20170116174599999.jpg.chip.jpg").write_bytes(b"not an image")
    return folder


def _scan(folder):
    source, _ = scan_source(utkface=folder)
    return source


def test_ids_are_keyed_content_hashes_and_rows_are_written_in_id_order(model, utkface, tmp_path):
    source = _scan(utkface)
    out = tmp_path / "latents.parquet"
    report = export_latents(model, source, out, id_key=KEY)
    table = read_latents(out)
    expected = pseudonymous_ids(source.content_hash, KEY)
    bad = int(np.flatnonzero(source.table["path"].str.contains("95_1_4_"))[0])
    assert [row for row, _ in report.skipped] == [bad]  # positions in the source as given, not as reordered
    np.testing.assert_array_equal(table.ids, np.sort(np.delete(expected, bad)))
    # Each row holds its own image's latent.
    by_id = dict(zip(table.ids, table.latents))
    for position in (0, 7, 33):
        image = np.array(Image.open(source.table["path"][position]).convert("RGB"))
        np.testing.assert_allclose(by_id[expected[position]], model.transform(image[None])[0], atol=1e-5)
    assert table.metadata["id_scheme"] == "content"
    assert table.metadata["id_key_fingerprint"] == key_fingerprint(KEY)
    assert KEY.hex() not in out.read_bytes().hex()


def test_neither_ids_nor_row_order_follow_names_or_labels(model, utkface, tmp_path):
    source = _scan(utkface)
    out = tmp_path / "latents.parquet"
    export_latents(model, source, out, id_key=KEY, include_labels=True)
    table = read_latents(out)
    ages = table.labels["age"].to_numpy()
    # Names (and so 0.1's ids and row order) sort by age: Spearman 1.0. Keyed ids do not.
    assert spearmanr(np.arange(len(ages)), ages).statistic < 0.4
    assert abs(spearmanr(table.ids, ages).statistic) < 0.4
    names_order = spearmanr(np.arange(len(source)), source.attributes["age"]).statistic
    assert names_order > 0.99  # the test would be moot otherwise


def test_the_same_key_gives_the_same_file_whatever_the_source_order_and_another_key_other_ids(model, utkface, tmp_path):
    source = _scan(utkface)
    shuffled = source.subset(np.random.default_rng(0).permutation(len(source)))
    first, second, other = tmp_path / "a.parquet", tmp_path / "b.parquet", tmp_path / "c.parquet"
    export_latents(model, source, first, id_key=KEY)
    export_latents(model, shuffled, second, id_key=KEY)
    export_latents(model, source, other, id_key=b"another key of 32 bytes........!")
    a, b, c = read_latents(first), read_latents(second), read_latents(other)
    np.testing.assert_array_equal(a.ids, b.ids)
    np.testing.assert_array_equal(a.latents, b.latents)
    assert not set(a.ids) & set(c.ids)


def test_the_source_fingerprint_is_keyed_so_a_public_image_does_not_find_its_file(model, utkface, tmp_path):
    source = _scan(utkface)
    one = source.subset([int(np.flatnonzero(~source.table["path"].str.contains("95_1_4_"))[0])])
    image_hash = one.content_hash[0]  # what anyone holding the (public) image computes
    unkeyed = {hashlib.sha256(image_hash.encode()).hexdigest(), hashlib.sha256(f"{image_hash}\n".encode()).hexdigest()}
    recorded = []
    for i, key in enumerate((KEY, b"another key of 32 bytes........!")):
        export_latents(model, one, tmp_path / f"{i}.parquet", id_key=key)
        recorded.append(read_latents(tmp_path / f"{i}.parquet").metadata["source_fingerprint"])
        assert recorded[-1] == source_fingerprint([image_hash], key)
    assert recorded[0] != recorded[1] and not unkeyed & set(recorded)
    # The same images under the same key, in any order, give the same fingerprint.
    shuffled = source.subset(np.random.default_rng(1).permutation(len(source)))
    assert source_fingerprint(shuffled.content_hash, KEY) == source_fingerprint(source.content_hash, KEY)
    # Ids given without a key (as a distributed partition's): nothing to key it with, none recorded.
    export_latents(model, one, tmp_path / "given.parquet", ids=[7])
    assert read_latents(tmp_path / "given.parquet").metadata.get("source_fingerprint") is None
    export_latents(model, one, tmp_path / "given_keyed.parquet", ids=[7], id_key=KEY)
    assert read_latents(tmp_path / "given_keyed.parquet").metadata["source_fingerprint"] == recorded[0]


def test_the_default_key_is_the_owners_key_file(model, utkface, tmp_path, monkeypatch):
    key_file = tmp_path / "owner" / "id.key"
    monkeypatch.setenv("BAFO_ID_KEY_FILE", str(key_file))
    source = _scan(utkface)
    export_latents(model, source, tmp_path / "a.parquet")
    assert stat.S_IMODE(os.stat(key_file).st_mode) == 0o600  # created on first use, owner only
    export_latents(model, source, tmp_path / "b.parquet")
    np.testing.assert_array_equal(read_latents(tmp_path / "a.parquet").ids, read_latents(tmp_path / "b.parquet").ids)


def test_the_key_table_is_written_only_on_request_private_and_apart(model, utkface, tmp_path):
    source = _scan(utkface)
    out, keys = tmp_path / "latents.parquet", tmp_path / "private" / "keys.csv"
    keys.parent.mkdir()
    export_latents(model, source, out, id_key=KEY, key_table=keys)
    assert stat.S_IMODE(os.stat(keys).st_mode) == 0o600
    table, written = pd.read_csv(keys), read_latents(out)
    assert sorted(table["id"]) == sorted(written.ids)  # the unreadable file is in neither
    expected = dict(zip(pseudonymous_ids(source.content_hash, KEY), source.table["path"]))
    assert all(expected[i] == s for i, s in zip(table["id"], table["source"]))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["latents.parquet", "private"]  # nothing else beside it
    with pytest.raises(FileExistsError, match="keys.csv"):
        export_latents(model, source, tmp_path / "again.parquet", id_key=KEY, key_table=keys)
    assert not (tmp_path / "again.parquet").exists()  # refused before any work
    with pytest.raises(ValueError, match="replace the export"):
        export_latents(model, source, tmp_path / "k.csv", id_key=KEY, key_table=tmp_path / "k.csv")


def test_manifest_rows_and_own_key_columns_as_ids_keep_the_pseudonymous_row_order(model, utkface, tmp_path):
    files = sorted(p for p in utkface.iterdir() if not p.name.startswith("95_"))
    manifest = tmp_path / "faces.csv"
    pd.DataFrame({"path": [str(p) for p in files], "age": [float(p.name.split("_")[0]) for p in files],
                  "gender": "female", "ethnicity": "asian", "subject": [f"s{i:03d}" for i in range(len(files))]}
                 ).to_csv(manifest, index=False)
    source, _ = scan_source(manifest=manifest)
    content_order = np.argsort(pseudonymous_ids(source.content_hash, KEY), kind="stable")
    keys = tmp_path / "keys.csv"
    export_latents(model, source, tmp_path / "rows.parquet", id_key=KEY, id_from="row", key_table=keys)
    rows = read_latents(tmp_path / "rows.parquet")
    np.testing.assert_array_equal(rows.ids, np.arange(1, len(files) + 1)[content_order])  # 1-based data rows
    assert rows.metadata["id_scheme"] == "manifest row"
    assert pd.read_csv(keys)["row"].tolist() == rows.ids.tolist()
    export_latents(model, source, tmp_path / "own.parquet", id_key=KEY, id_column="subject")
    own = read_latents(tmp_path / "own.parquet")
    assert own.ids.tolist() == [f"s{i:03d}" for i in content_order]
    with pytest.raises(ValueError, match="needs a manifest"):
        export_latents(model, _scan(utkface), tmp_path / "x.parquet", id_key=KEY, id_from="row")


def test_a_source_without_content_hashes_needs_explicit_ids(model, utkface, tmp_path):
    paths = [str(p) for p in sorted(utkface.iterdir())][:3]
    with pytest.raises(ValueError, match="content hashes"):
        export_latents(model, ImageFiles(pd.DataFrame({"path": paths})), tmp_path / "x.parquet", id_key=KEY)
    export_latents(model, ImageFiles(pd.DataFrame({"path": paths})), tmp_path / "y.parquet", ids=[7, 8, 9])
    with pytest.raises(ValueError, match="names no files"):
        export_latents(model, make_synthetic_faces(30, image_size=SIZE), tmp_path / "z.parquet", id_key=KEY,
                       key_table=tmp_path / "keys.csv")
    assert not (tmp_path / "z.parquet").exists()
    assert read_latents(tmp_path / "y.parquet").ids.tolist() == [7, 8, 9]  # given ids: as given, in source order
