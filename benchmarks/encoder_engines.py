"""Encoder runtimes compared: CPU time per image and how far each moves the concealed latents.

Each runtime encodes 512-image batches of 56x56 faces to concealed latents
(concealment ``"full"``) with one thread; the rate is images per second of
the thread's own CPU time, so other processes on a shared machine do not
distort it (they still share caches and memory bandwidth). Rounds alternate
between runtimes. Variants:

- ``unfolded_torch_512``: the encoder network on whole batches, then the
  concealment steps in NumPy / scikit-learn (the path before issue 15);
- ``folded_torch_512`` / ``folded_torch_slices``: the encoder with the
  concealment folded in, on whole batches / in slices of 64 (what
  ``transform`` and ``export_latents`` run);
- ``onnxruntime_float32``, ``onnxruntime_int8`` (needs ``onnx`` and
  ``onnxruntime``): the folded network in ONNX Runtime, in float32 and with
  int8 convolutions calibrated on 500 other images;
- ``torch_compile`` (``--compile``): inductor on the folded network, with its
  compile time.

Errors are relative to the unfolded float32 latents: RMS difference / their
standard deviation (the bound for lower precisions is 0.02). ``--model`` and
``--folder`` give a trained model and real images (an untrained model on
synthetic faces otherwise: fine for speed, not for int8 errors).

    python benchmarks/encoder_engines.py [--emulate avx2] [--model DIR] [--folder DIR] [--compile] [--out FILE]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _machine import emit, machine  # noqa: E402
from encode_throughput import EMULATIONS, fitted_model, sample_files  # noqa: E402

BATCH = 512


def images_for(folder: Path | None, n: int, seed: int) -> np.ndarray:
    """uint8 NHWC faces: decoded real files (a seeded sample) or synthetic ones."""
    from bafo_pipeline import make_synthetic_faces
    from bafo_pipeline.data import decode_images

    if folder is None:
        return make_synthetic_faces(n, random_state=seed).images
    files = sample_files(folder, 2 * n)[seed * n : (seed + 1) * n]
    return decode_images(files, size=(56, 56))[0]


def unfolded(model):
    """The encoder network, then the concealment steps one after the other (float32, whole batches)."""
    network = model.network_.to(memory_format=torch.channels_last).eval()

    def encode(images: np.ndarray) -> np.ndarray:
        pixels = torch.from_numpy(images).to(dtype=torch.float32, memory_format=torch.channels_last).div_(255.0)
        with torch.inference_mode():
            means = network.encode(pixels)[0].numpy()
        for step in model.concealment_steps_:
            means = step.transform(means)
        return np.asarray(means, dtype=np.float32)

    return encode


def runtimes(model, calibration: np.ndarray, compile_too: bool) -> tuple[dict, dict]:
    from bafo_pipeline._nn.engine import TorchEncoder
    from bafo_pipeline._nn.folding import fold_encoder

    folded = fold_encoder(model.network_, [layer for step in model.concealment_steps_ for layer in step.as_layers()])
    sliced = TorchEncoder(folded, torch.device("cpu"), bfloat16=False)
    whole = TorchEncoder(folded, torch.device("cpu"), bfloat16=False)
    found = {
        "unfolded_torch_512": unfolded(model),
        "folded_torch_512": lambda images: whole._encode(torch.from_numpy(images)),
        "folded_torch_slices": sliced,
    }
    notes = {}
    from _onnx_runtime import OnnxRuntimeEncoder, onnx_model, onnxruntime_available, quantized_int8

    if onnxruntime_available():
        graph = onnx_model(folded, (56, 56, 3))
        found["onnxruntime_float32"] = OnnxRuntimeEncoder(graph, threads=1)
        found["onnxruntime_int8"] = OnnxRuntimeEncoder(quantized_int8(graph, calibration), threads=1)
    else:
        notes["onnxruntime"] = "not installed"
    if compile_too:
        import torch._inductor.config as inductor_config

        inductor_config.freezing = True
        compiled = torch.compile(folded.to(memory_format=torch.channels_last), dynamic=False)
        started = time.perf_counter()
        with torch.inference_mode():
            compiled(torch.zeros(64, 3, 56, 56).to(memory_format=torch.channels_last))
        notes["torch_compile_seconds"] = round(time.perf_counter() - started, 1)

        def run_compiled(images: np.ndarray) -> np.ndarray:
            pixels = torch.from_numpy(images).to(dtype=torch.float32, memory_format=torch.channels_last).div_(255.0)
            with torch.inference_mode():  # fixed slices of 64 (a new shape would compile again)
                return np.concatenate([compiled(pixels[i : i + 64]).numpy() for i in range(0, len(pixels), 64)])

        found["torch_compile"] = run_compiled
    return found, notes


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, help="A saved model directory (default: an untrained one).")
    parser.add_argument("--folder", type=Path, help="Real JPEG files (default: synthetic faces).")
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--seconds", type=float, default=0.6, help="Per runtime and round.")
    parser.add_argument("--compile", action="store_true", help="Also torch.compile (tens of seconds on 2 cores).")
    parser.add_argument("--emulate", choices=sorted(EMULATIONS))
    parser.add_argument("--out", type=Path)
    args = parser.parse_args(argv)
    if args.emulate and any(os.environ.get(k) != v for k, v in EMULATIONS[args.emulate].items()):
        env = {**os.environ, **EMULATIONS[args.emulate]}
        command = [sys.executable, str(Path(__file__).resolve()), *(sys.argv[1:] if argv is None else argv)]
        completed = subprocess.run(command, env=env, check=True, stdout=subprocess.PIPE, text=True)
        print(completed.stdout, end="")
        return json.loads(completed.stdout)
    torch.set_num_threads(1)
    if args.model:
        from bafo_pipeline import load_model

        model = load_model(args.model, device="cpu").set_params(precision="float32")
    else:
        model = fitted_model("cpu", "float32")
    if model.refiner_ is None:
        raise SystemExit("the model needs concealment='full'")
    images = images_for(args.folder, BATCH, seed=0).transpose(0, 3, 1, 2)
    calibration = images_for(args.folder, 500, seed=1)
    found, notes = runtimes(model, calibration, args.compile)
    reference = found["unfolded_torch_512"](images)
    errors = {}
    for name, encode in found.items():
        difference = encode(images) - reference
        errors[name] = {
            "rms_over_std": float(np.sqrt(np.mean(difference**2)) / reference.std()),
            "max_over_std": float(np.abs(difference).max() / reference.std()),
        }
    rates: dict[str, list[float]] = {name: [] for name in found}
    for _ in range(args.rounds):
        for name, encode in found.items():
            encode(images)
            started, cpu, n = time.perf_counter(), time.thread_time(), 0
            while time.perf_counter() - started < args.seconds:
                encode(images)
                n += len(images)
            rates[name].append(n / (time.thread_time() - cpu))
    result = {
        "benchmark": "encoder_engines",
        "images_per_cpu_second": {name: round(float(np.median(values)), 1) for name, values in rates.items()},
        "relative_to_folded_torch_slices": {
            name: round(float(np.median(values) / np.median(rates["folded_torch_slices"])), 3)
            for name, values in rates.items()
        },
        "latent_error": errors,
        "notes": notes,
        "settings": {"batch": BATCH, "threads": 1, "rounds": args.rounds, "concealment": "full",
                     "model": str(args.model) if args.model else "untrained (fitted with epochs=0)",
                     "images": str(args.folder) if args.folder else "synthetic faces", "emulate": args.emulate},
        "machine": machine(),
    }
    return emit(result, args.out)


if __name__ == "__main__":
    main()
