"""Training throughput of the default BAFO network (56x56 RGB, latent 48), in images per second.

Targets: >= 600 img/s on a 2-core CPU; >= 30,000 img/s on an H100/H200 (bf16,
dataset resident on the GPU). ``--emulate avx2`` reruns it with PyTorch's and
oneDNN's kernels capped at AVX2 (a CPU without AVX512; CPU training is float32
either way). Prints JSON.

    python benchmarks/train_throughput.py [--images 4096] [--epochs 3] [--device auto] [--emulate avx2] [--out FILE]
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

EMULATIONS = {"avx2": {"ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2"}}

from bafo_pipeline._nn.network import BAFONetwork, NetworkConfig  # noqa: E402
from bafo_pipeline._utils import resolve_device  # noqa: E402
from bafo_pipeline._nn.training import Trainer, TrainingConfig  # noqa: E402


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=4096)
    parser.add_argument("--epochs", type=int, default=3, help="The first epoch is warm-up and not counted.")
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--emulate", choices=sorted(EMULATIONS), help="Cap torch's and oneDNN's instruction set.")
    parser.add_argument("--out", type=Path, help="Also write the JSON here.")
    args = parser.parse_args(argv)
    if args.emulate and any(os.environ.get(k) != v for k, v in EMULATIONS[args.emulate].items()):
        # The caps are read when torch and oneDNN start: rerun in a fresh process with them set.
        env = {**os.environ, **EMULATIONS[args.emulate]}
        command = [sys.executable, str(Path(__file__).resolve()), *(sys.argv[1:] if argv is None else argv)]
        completed = subprocess.run(command, env=env, check=True, stdout=subprocess.PIPE, text=True)
        print(completed.stdout, end="")
        return json.loads(completed.stdout)

    device = resolve_device(args.device)
    rng = np.random.default_rng(0)
    images = torch.from_numpy(rng.integers(0, 256, (args.images, 3, 56, 56), dtype=np.uint8))
    conditions = torch.from_numpy(rng.random((args.images, 7), dtype=np.float32))
    torch.manual_seed(0)
    network = BAFONetwork(NetworkConfig("conv", (3, 56, 56), condition_dim=7, latent_dim=48))
    config = TrainingConfig(epochs=args.epochs, batch_size=args.batch_size, validation_fraction=0.0)
    cpu_started = time.process_time()
    history = Trainer(network, config, device, []).fit(images, conditions)
    cpu_seconds = time.process_time() - cpu_started
    timed = [record["images_per_second"] for record in history[1:]] or [history[0]["images_per_second"]]
    result = {
        "benchmark": "train_throughput",
        "images_per_second": float(np.median(timed)),
        "per_epoch_images_per_second": [round(r["images_per_second"], 1) for r in history],
        # Less sensitive to other processes on a shared machine than wall time (all epochs, warm-up included).
        "images_per_cpu_second": round(args.images * args.epochs / cpu_seconds, 1),
        "settings": {
            "images": args.images, "epochs": args.epochs, "batch_size": args.batch_size, "image_size": 56,
            "latent_dim": 48, "widths": list(network.config.widths),
            "parameters": sum(p.numel() for p in network.parameters()),
            "device": str(device), "bf16": device.type == "cuda", "channels_last": True, "emulate": args.emulate,
        },
        "machine": machine(),
    }
    return emit(result, args.out)


if __name__ == "__main__":
    main()
