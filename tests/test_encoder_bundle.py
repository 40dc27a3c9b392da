"""EncoderBundle: a fitted image encoder sent to workers as torch weights; the estimator's latents, without the estimator.

The Ray export's actors receive this bundle instead of the estimator, so that a fresh worker
process imports torch and not scikit-learn: checked here in fresh subprocesses.
"""

from __future__ import annotations

import copy
import json
import os
import pickle
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from PIL import Image

from bafo_pipeline import BAFOTransformer, LinearErasure, export_latents, make_synthetic_faces, read_latents
from bafo_pipeline._nn.bundle import EncoderBundle
from bafo_pipeline.data import ImageFiles, pseudonymous_ids, scan_source
from bafo_pipeline.data.splits import hash_files
from bafo_pipeline.pipeline.distributed import actor_model
from bafo_pipeline.pipeline.encode_plan import JobSpec, make_file_plan

SIZE = 32
KEY = bytes(range(32))
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def faces():
    return make_synthetic_faces(60, image_size=SIZE, random_state=3)


@pytest.fixture(scope="module")
def model(faces):
    return BAFOTransformer(
        latent_dim=16, widths=(8, 16), epochs=1, refine_epochs=1, batch_size=16, random_state=0, image_shape=(SIZE, SIZE)
    ).fit(faces.images, sensitive_features=faces.sensitive_features)


@pytest.fixture(scope="module")
def images(faces):
    return np.ascontiguousarray(faces.images.transpose(0, 3, 1, 2))


class _NoLayers(LinearErasure):
    """A concealment step that cannot be folded into the network."""

    as_layers = None


@pytest.mark.parametrize("precision", ["float32", "bfloat16"])
def test_the_bundle_encodes_bit_for_bit_as_the_estimator(model, images, precision):
    estimator = copy.deepcopy(model).set_params(precision=precision)
    bundle = pickle.loads(pickle.dumps(estimator.encoder_bundle()))
    encoder = bundle.encoder("cpu")
    assert encoder.inference_settings() == estimator.inference_settings()
    assert encoder.latent_dim == 16 and encoder.image_shape == (SIZE, SIZE, 3)
    expected = estimator.encode_images(images)
    np.testing.assert_array_equal(encoder.encode_images(images), expected)
    np.testing.assert_array_equal(encoder.encode_images(images[7:10]), expected[7:10])  # a short batch too
    assert bundle.metadata["concealment"]["steps"] == ["LinearErasure", "LatentRefiner", "LinearErasure"]
    with pytest.raises(ValueError, match=r"uint8 images of shape \(n, 3, 32, 32\)"):
        encoder.encode_images(images.astype(np.float32))


def test_the_bundle_holds_copies_and_auto_precision_follows_the_measured_error(model, images):
    bundle = model.encoder_bundle()
    weights = next(iter(bundle.weights.values()))
    weights.zero_()  # the bundle shares no tensor with the estimator
    assert model.encode_images(images[:4]).any()
    assert bundle.precision == "auto" and bundle.bfloat16_error == model.bfloat16_error_
    never_measured = EncoderBundle(**{**bundle.__dict__, "bfloat16_error": None})
    assert never_measured.encoder("cpu").inference_settings().precision == "float32"


def test_an_unfoldable_concealment_or_a_tabular_model_has_no_bundle(model, faces):
    unfoldable = copy.deepcopy(model).set_params(concealment=[LinearErasure(), _NoLayers()], refine_epochs=30)
    unfoldable.fit_concealment(faces.images, sensitive_features=faces.sensitive_features)
    with pytest.raises(ValueError, match=r"concealment step 1 \(_NoLayers\) has no as_layers"):
        unfoldable.encoder_bundle()
    assert actor_model(unfoldable) is unfoldable  # the Ray export then sends the estimator
    assert isinstance(actor_model(model), EncoderBundle)
    tabular = BAFOTransformer(latent_dim=4, epochs=1, refine_epochs=1, concealment="none", random_state=0).fit(
        np.random.default_rng(0).normal(size=(40, 6)), sensitive_features=faces.sensitive_features.iloc[:40])
    with pytest.raises(ValueError, match="tabular"):
        tabular.encoder_bundle()


def test_an_export_with_the_bundle_writes_the_estimators_file(model, faces, tmp_path):
    paths = []
    for i, image in enumerate(faces.images[:10]):
        path = tmp_path / f"{i}.jpg"
        Image.fromarray(image).save(path, quality=90)
        paths.append(str(path))
    files = ImageFiles(_frame(paths))
    ids = np.arange(10, dtype=np.int64) * 7
    export_latents(model, files, tmp_path / "estimator.parquet", ids=ids, decoder="pil")
    export_latents(model.encoder_bundle().encoder("cpu"), files, tmp_path / "bundle.parquet", ids=ids, decoder="pil")
    a, b = read_latents(tmp_path / "estimator.parquet"), read_latents(tmp_path / "bundle.parquet")
    np.testing.assert_array_equal(a.ids, b.ids)
    np.testing.assert_array_equal(a.latents, b.latents)
    meta = [json.loads(pq.read_schema(tmp_path / name).metadata[b"bafo"]) for name in ("estimator.parquet", "bundle.parquet")]
    for key in ("concealment", "attribute_schema", "precision", "decoder", "id_scheme", "source_rows"):
        assert meta[0][key] == meta[1][key], key


def _frame(paths):
    import pandas as pd

    hashes, _ = hash_files(paths)
    return pd.DataFrame({"path": paths, "content_hash": hashes})


HEAVY = ("sklearn", "scipy", "pandas", "bafo_pipeline.transformers", "bafo_pipeline.audits", "bafo_pipeline.pipeline.workflow")

_ENCODE_IN_A_FRESH_PROCESS = textwrap.dedent("""
    import pickle, sys
    import numpy as np
    import torch
    torch.set_num_threads(int(sys.argv[4]))  # as the test process encodes: bfloat16 sums depend on the split
    bundle = pickle.load(open(sys.argv[1], "rb"))   # imports the bundle's own module, and what it needs
    images = np.load(sys.argv[2])
    np.save(sys.argv[3], bundle.encoder("cpu").encode_images(images))
    print(" ".join(m for m in {heavy} if m in sys.modules))
""")


def test_a_fresh_process_encodes_from_a_bundle_without_scikit_learn_or_pandas(model, images, tmp_path):
    (tmp_path / "bundle.pkl").write_bytes(pickle.dumps(model.encoder_bundle()))
    np.save(tmp_path / "images.npy", images)
    loaded = _run(_ENCODE_IN_A_FRESH_PROCESS.format(heavy=HEAVY), tmp_path / "bundle.pkl", tmp_path / "images.npy",
                  tmp_path / "latents.npy", torch.get_num_threads())
    assert loaded == []
    np.testing.assert_array_equal(np.load(tmp_path / "latents.npy"), model.encode_images(images))


_WRITE_A_PARTITION_IN_A_FRESH_PROCESS = textwrap.dedent("""
    import json, pickle, sys
    import numpy as np
    import pyarrow.fs as pafs
    from bafo_pipeline.pipeline.partitions import PartitionWriter
    bundle, spec, rows = pickle.load(open(sys.argv[1], "rb"))
    writer = PartitionWriter(bundle, pafs.LocalFileSystem(), spec, inputs=pafs.LocalFileSystem(), device="cpu")
    out = writer({{"partition": np.array([0]), "rows": np.array([rows], dtype=object)}})
    print(out["stats"][0])
    print(" ".join(m for m in {heavy} if m in sys.modules))
""")


def test_a_ray_actors_writer_built_from_a_bundle_loads_no_estimator(model, faces, tmp_path):
    """The actor's callable, in a fresh process, writes a partition with the bundle: no scikit-learn, no estimator
    module. pandas is loaded (the data layer's tables use it), and Ray Data loads it in every worker anyway
    (checked below), so the actor would gain nothing by avoiding it."""
    folder = tmp_path / "faces"
    folder.mkdir()
    for i, image in enumerate(faces.images[:12]):
        Image.fromarray(image).save(folder / f"{20 + i}_{i % 2}_{i % 5}_2017{i:06d}.jpg.chip.jpg", quality=90)
    plan = make_file_plan("utkface", str(folder), KEY, "model", hasher=hash_files, partition_rows=100)
    out = tmp_path / "out"
    out.mkdir()
    spec = JobSpec(out=str(out), plan_fingerprint=plan.fingerprint, n_partitions=1, sensitive=plan.sensitive,
                   decoder="pil", metadata={"model_fingerprint": "model"})
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, plan.partition_rows(0).schema) as stream:
        stream.write_table(plan.partition_rows(0))
    (tmp_path / "job.pkl").write_bytes(pickle.dumps((model.encoder_bundle(), spec, sink.getvalue().to_pybytes())))
    stats, loaded = _run(_WRITE_A_PARTITION_IN_A_FRESH_PROCESS.format(heavy=HEAVY), tmp_path / "job.pkl", lines=2)
    record = json.loads(stats)
    assert record["rows_written"] == 12 and record["actor_model"] == "encoder bundle", record
    assert loaded.split() == ["pandas"]
    # the same rows and latents as the estimator's own export of the folder
    source, _ = scan_source(utkface=folder, image_size=SIZE)
    export_latents(model, source, tmp_path / "local.parquet", ids=pseudonymous_ids(source.content_hash, KEY), decoder="pil")
    expected, got = read_latents(tmp_path / "local.parquet"), read_latents(out / record["file"])
    assert sorted(got.ids.tolist()) == sorted(expected.ids.tolist())
    by_id = dict(zip(expected.ids.tolist(), expected.latents))
    np.testing.assert_array_equal(got.latents, np.stack([by_id[i] for i in got.ids.tolist()]))


def test_ray_data_itself_loads_pandas_in_every_worker():
    """Why the actor's writer may use pandas: a Ray Data actor has imported it before the writer runs."""
    pytest.importorskip("ray")
    assert _run("import sys, ray.data; print('pandas' in sys.modules)") == ["True"]


def _run(code: str, *args, lines: int = 1):
    """Run ``code`` in a fresh interpreter (this checkout first on the path); its last ``lines`` lines of output."""
    env_path = [str(ROOT), *sys.path]
    done = subprocess.run([sys.executable, "-c", code, *map(str, args)], capture_output=True, text=True, timeout=300,
                          env={**os.environ, "PYTHONPATH": os.pathsep.join(p for p in env_path if p)})
    assert done.returncode == 0, done.stderr[-3000:]
    output = done.stdout.splitlines()[-lines:] if done.stdout.strip() else [""]
    return output[0].split() if lines == 1 else output
