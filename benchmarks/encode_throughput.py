"""End-to-end export throughput: 200x200 JPEG files on disk -> concealed latents in Parquet.

Reports images/s for the whole export and, measured in the same run, for image
decoding + resizing alone: with Pillow (the ceiling on a CPU; target >= 70% of
it on the 2-core CPU) and, with ``--decoder torch``, with the batched decoder on
the model's device (the ceiling on a GPU; target >= 25,000 img/s end to end on
an H100/H200). Peak memory is measured in child processes for N and 2N images:
it must not grow with the number of images. Prints JSON.

    python benchmarks/encode_throughput.py [--images 4000] [--decoder auto|pil|torch] [--device auto]
        [--precision auto|float32|bfloat16] [--skip-memory]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _machine import machine  # noqa: E402


def write_jpegs(folder: Path, n: int) -> list[str]:
    """n distinct 200x200 synthetic faces as quality-90 JPEGs (like UTKFace's files)."""
    from bafo_pipeline import make_synthetic_faces

    paths = []
    for start in range(0, n, 500):
        faces = make_synthetic_faces(min(500, n - start), image_size=200, random_state=start)
        for i, image in enumerate(faces.images):
            path = folder / f"{start + i:06d}.jpg"
            Image.fromarray(image).save(path, quality=90)
            paths.append(str(path))
    return paths


def fitted_model(device: str = "auto", precision: str = "auto"):
    """The default architecture with its full concealment (weights untrained: speed does not depend on them)."""
    from bafo_pipeline import BAFOTransformer, make_synthetic_faces

    faces = make_synthetic_faces(256, random_state=0)
    return BAFOTransformer(epochs=0, refine_epochs=1, device=device, precision=precision, random_state=0).fit(
        faces.images, sensitive_features=faces.sensitive_features
    )


def export_once(
    paths: list[str], out: Path, batch_size: int, decoder: str = "auto", device: str = "auto", precision: str = "auto"
) -> dict:
    """Export ``paths`` once after a warm-up batch; images/s and the settings the export recorded."""
    from bafo_pipeline import export_latents
    from bafo_pipeline.io import read_metadata

    model = fitted_model(device, precision)
    export_latents(model, pd.DataFrame({"path": paths[:batch_size]}), out, batch_size=batch_size,
                   overwrite=True, decoder=decoder)  # warm-up: kernels, decoder handles, inference copy
    started = time.perf_counter()
    report = export_latents(model, pd.DataFrame({"path": paths}), out, batch_size=batch_size, overwrite=True,
                            decoder=decoder)
    seconds = time.perf_counter() - started
    assert report.n_written == len(paths), report.skipped[:3]
    recorded = read_metadata(out)
    return {"images_per_second": len(paths) / seconds, "precision": recorded["precision"], "decoder": recorded["decoder"]}


def pil_decode_ceiling(paths: list[str]) -> float:
    from bafo_pipeline.data import decode_images

    started = time.perf_counter()
    images, kept, _ = decode_images(paths, size=(56, 56))
    assert len(kept) == len(paths)
    return len(paths) / (time.perf_counter() - started)


def device_decode_ceiling(paths: list[str], batch_size: int, device) -> float:
    """Batched decode + resize on ``device`` alone (what the export's torch decoder can deliver)."""
    import torch

    from bafo_pipeline.data.jpeg_tensors import iter_tensor_batches

    for _ in iter_tensor_batches(paths[:batch_size], batch_size=batch_size, size=(56, 56), device=device):
        pass  # warm-up
    started = time.perf_counter()
    n = sum(len(indices) for indices, _, _ in iter_tensor_batches(paths, batch_size=batch_size, size=(56, 56), device=device))
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    assert n == len(paths)
    return len(paths) / (time.perf_counter() - started)


def peak_rss_mb(n: int, folder: Path, batch_size: int, decoder: str, device: str, precision: str) -> float:
    """Peak resident memory of a child process exporting the first n files."""
    code = (
        "import sys, resource; sys.path.insert(0, sys.argv[1]);"
        "from encode_throughput import export_once; from pathlib import Path;"
        "paths = sorted(str(p) for p in Path(sys.argv[2]).glob('*.jpg'))[: int(sys.argv[3])];"
        "export_once(paths, Path(sys.argv[2]) / 'child.parquet', int(sys.argv[4]), *sys.argv[5:8]);"
        "print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)"
    )
    output = subprocess.run(
        [sys.executable, "-c", code, str(Path(__file__).parent), str(folder), str(n), str(batch_size), decoder, device,
         precision],
        check=True, capture_output=True, text=True,
    ).stdout
    return int(output.strip().splitlines()[-1]) / 1024


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=4000)
    parser.add_argument("--batch-size", type=int, default=512)
    parser.add_argument("--decoder", choices=["auto", "pil", "torch"], default="auto")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--precision", choices=["auto", "float32", "bfloat16"], default="auto")
    parser.add_argument("--skip-memory", action="store_true", help="Skip the two child-process memory runs.")
    args = parser.parse_args(argv)
    from bafo_pipeline._utils import resolve_device

    device = resolve_device(args.device)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        paths = write_jpegs(folder, args.images if args.skip_memory else 2 * args.images)
        first = paths[: args.images]
        pil_ceiling = pil_decode_ceiling(first)
        device_ceiling = device_decode_ceiling(first, args.batch_size, device) if args.decoder != "pil" else None
        export = export_once(first, folder / "latents.parquet", args.batch_size, args.decoder, args.device, args.precision)
        memory = None if args.skip_memory else {
            f"{n}_images": round(peak_rss_mb(n, folder, args.batch_size, args.decoder, args.device, args.precision), 1)
            for n in (args.images, 2 * args.images)
        }
    rate = export["images_per_second"]
    result = {
        "benchmark": "encode_throughput",
        "export_images_per_second": round(rate, 1),
        "pil_decode_ceiling_images_per_second": round(pil_ceiling, 1),
        "fraction_of_pil_ceiling": round(rate / pil_ceiling, 3),
        "device_decode_ceiling_images_per_second": None if device_ceiling is None else round(device_ceiling, 1),
        "peak_rss_mb": memory,
        "settings": {"images": args.images, "source": "200x200 JPEG, quality 90", "image_size": 56,
                     "batch_size": args.batch_size, "concealment": "full", "device": str(device),
                     "decoder": export["decoder"], "precision": export["precision"]},
        "machine": machine(),
    }
    print(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
