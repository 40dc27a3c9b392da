"""One prepared run for a session that is lent a GPU: CUDA correctness checks, then the two throughput targets.

CI never has a GPU, so the CUDA paths are checked here instead: each check
compares the CUDA result with the CPU one and fails loudly. Then the training and
export benchmarks run on the GPU. Writes one JSON file per step to ``--out`` and
prints a summary; sized to finish in about five minutes on an H100/H200.

    python benchmarks/gpu_check.py --out $OUT

On the project's device machines (torch, torchvision, pandas, pyarrow, safetensors
preinstalled; fairlearn is not needed here), from the repository root:

    PYTHONPATH=. python3 benchmarks/gpu_check.py --out $OUT
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
import traceback
from pathlib import Path

import numpy as np
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _machine import machine  # noqa: E402


def check_transform_matches_cpu() -> dict:
    """A CPU-fitted model gives (nearly) the same latents and decodes on CUDA, in float32 and in bf16."""
    from bafo_pipeline import BAFOTransformer, make_synthetic_faces

    faces = make_synthetic_faces(512, random_state=0)
    model = BAFOTransformer(epochs=1, refine_epochs=2, device="cpu", precision="float32", random_state=0)
    model.fit(faces.images, sensitive_features=faces.sensitive_features)
    reference = model.transform(faces.images)
    result = {}
    for precision in ("float32", "auto"):
        model.set_params(device="cuda", precision=precision)
        latents = model.transform(faces.images)
        rms = float(np.sqrt(np.mean((latents - reference) ** 2)) / reference.std())
        result[f"relative_rms_difference_{precision}"] = rms
        assert rms < (1e-3 if precision == "float32" else 0.03), (precision, rms)
    decoded = model.inverse_transform(reference[:8], sensitive_features=faces.sensitive_features.iloc[:8])
    model.set_params(device="cpu", precision="float32")
    expected = model.inverse_transform(reference[:8], sensitive_features=faces.sensitive_features.iloc[:8])
    result["decode_max_grey_level_difference"] = int(np.abs(decoded.astype(int) - expected).max())
    assert result["decode_max_grey_level_difference"] <= 8, result
    return result


def check_gpu_fit_loads_on_cpu(tmp: Path) -> dict:
    """Fit on CUDA (bf16 training), save, load on the CPU: same latents as on the GPU, up to bf16 rounding."""
    from bafo_pipeline import BAFOTransformer, load_model, make_synthetic_faces, save_model

    faces = make_synthetic_faces(512, random_state=1)
    model = BAFOTransformer(epochs=2, refine_epochs=2, device="cuda", random_state=0)
    model.fit(faces.images, sensitive_features=faces.sensitive_features)
    on_gpu = model.transform(faces.images)
    save_model(model, tmp / "model")
    loaded = load_model(tmp / "model", device="cpu")
    on_cpu = loaded.set_params(precision="float32").transform(faces.images)
    rms = float(np.sqrt(np.mean((on_gpu - on_cpu) ** 2)) / on_cpu.std())
    assert np.isfinite(on_gpu).all() and rms < 0.03, rms
    return {"relative_rms_difference": rms, "final_loss": model.history_[-1].get("loss")}


def check_torch_decoder_matches_cpu(tmp: Path) -> dict:
    """nvJPEG decode + GPU resize agree with the same code on the CPU; bad files are reported alike."""
    from bafo_pipeline import make_synthetic_faces
    from bafo_pipeline.data.jpeg_tensors import available_jpeg_backends, iter_tensor_batches

    faces = make_synthetic_faces(64, image_size=200, random_state=2)
    paths = []
    for i, image in enumerate(faces.images):
        path = tmp / f"{i:03d}.jpg"
        Image.fromarray(image).save(path, quality=90)
        paths.append(str(path))
    (tmp / "bad.jpg").write_bytes(Path(paths[0]).read_bytes()[:300])
    paths.insert(5, str(tmp / "bad.jpg"))

    def decode(device):
        batches = list(iter_tensor_batches(paths, batch_size=16, size=(56, 56), device=device))
        images = torch.cat([b[1].cpu() for b in batches]).numpy().astype(int)
        return np.concatenate([b[0] for b in batches]), images, [e for b in batches for e in b[2]]

    cpu_rows, cpu_images, cpu_errors = decode(torch.device("cpu"))
    gpu_rows, gpu_images, gpu_errors = decode(torch.device("cuda"))
    np.testing.assert_array_equal(cpu_rows, gpu_rows)
    assert cpu_errors == gpu_errors and len(gpu_errors) == 1, (cpu_errors, gpu_errors)
    difference = np.abs(cpu_images - gpu_images)
    assert difference.mean() < 1.5, difference.mean()
    return {"backends": available_jpeg_backends(), "mean_grey_level_difference": float(difference.mean()),
            "max_grey_level_difference": int(difference.max())}


def run_benchmark(module: str, args: list[str]) -> dict:
    return __import__(module).main(args)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--export-images", type=int, default=20000)
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        print("no CUDA device: nothing to check here", file=sys.stderr)
        return 2
    args.out.mkdir(parents=True, exist_ok=True)
    steps = {
        "transform_matches_cpu": lambda tmp: check_transform_matches_cpu(),
        "gpu_fit_loads_on_cpu": check_gpu_fit_loads_on_cpu,
        "torch_decoder_matches_cpu": check_torch_decoder_matches_cpu,
        "train_throughput": lambda tmp: run_benchmark(
            "train_throughput", ["--device", "cuda", "--images", "65536", "--epochs", "4", "--batch-size", "1024"]),
        "encode_throughput": lambda tmp: run_benchmark(
            "encode_throughput", ["--decoder", "torch", "--device", "cuda", "--images", str(args.export_images),
                                  "--batch-size", "2048", "--skip-memory", "--rounds", "1"]),
    }
    failed = 0
    for name, step in steps.items():
        started = time.perf_counter()
        with tempfile.TemporaryDirectory() as tmp:
            try:
                result = {"ok": True, **step(Path(tmp))}
            except Exception:  # record and go on: one failure must not cost the other measurements
                result = {"ok": False, "error": traceback.format_exc()}
                failed += 1
        result["seconds"] = round(time.perf_counter() - started, 1)
        result.setdefault("machine", machine())
        (args.out / f"{name}.json").write_text(json.dumps(result, indent=2, default=str))
        print(f"{name}: {'ok' if result['ok'] else 'FAILED'} ({result['seconds']} s)", flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
