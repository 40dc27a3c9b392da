"""Training throughput of the default BAFO network (56x56 RGB, latent 48), in images per second.

Targets: >= 600 img/s on a 2-core CPU; >= 30,000 img/s on an H100/H200 (bf16,
dataset resident on the GPU). Prints JSON.

    python benchmarks/train_throughput.py [--images 4096] [--epochs 3] [--device auto]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _machine import machine  # noqa: E402

from bafo_pipeline._nn.network import BAFONetwork, NetworkConfig  # noqa: E402
from bafo_pipeline._utils import resolve_device  # noqa: E402
from bafo_pipeline._nn.training import Trainer, TrainingConfig  # noqa: E402


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=4096)
    parser.add_argument("--epochs", type=int, default=3, help="The first epoch is warm-up and not counted.")
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--device", default="auto")
    args = parser.parse_args(argv)

    device = resolve_device(args.device)
    rng = np.random.default_rng(0)
    images = torch.from_numpy(rng.integers(0, 256, (args.images, 3, 56, 56), dtype=np.uint8))
    conditions = torch.from_numpy(rng.random((args.images, 7), dtype=np.float32))
    torch.manual_seed(0)
    network = BAFONetwork(NetworkConfig("conv", (3, 56, 56), condition_dim=7, latent_dim=48))
    config = TrainingConfig(epochs=args.epochs, batch_size=args.batch_size, validation_fraction=0.0)
    history = Trainer(network, config, device, []).fit(images, conditions)
    timed = [record["images_per_second"] for record in history[1:]] or [history[0]["images_per_second"]]
    result = {
        "benchmark": "train_throughput",
        "images_per_second": float(np.median(timed)),
        "per_epoch_images_per_second": [round(r["images_per_second"], 1) for r in history],
        "settings": {
            "images": args.images, "epochs": args.epochs, "batch_size": args.batch_size, "image_size": 56,
            "latent_dim": 48, "widths": list(network.config.widths),
            "parameters": sum(p.numel() for p in network.parameters()),
            "device": str(device), "bf16": device.type == "cuda", "channels_last": True,
        },
        "machine": machine(),
    }
    print(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
