"""An encoder trained against the neighbour attacker (docs/TRAINED_CONCEALMENT.md §21).

Trains the frontier's encoder (``bafo train --utkface UTKFace --epochs 4 --concealment none
--decoder-epochs 0``: the same split, network and optimiser) with one change: the encoder trains with
``TrainedErasure(matching="neighbours", matching_weight=W, erase_in_loop=False)``, a penalty on how
much more of each attribute group a batch row's 10 nearest neighbours (among up to 2,048 earlier
training rows of the epoch, in the erased, whitened coordinates) hold for the group's members than for
others. The decoder
still sees the encoder's own latents. The saved model is then measured like any unconcealed encoder:

    python benchmarks/neighbour_trained_encoder.py --utkface UTKFace --out artifacts/utk_nbr_w1 --weight 1
    python benchmarks/transport_utility_loss.py --model artifacts/utk_nbr_w1 --utkface UTKFace --landmarks L ...

(``transport_utility_loss``'s shares are of the model's own unconcealed latents; §21 compares the
scores with the frontier encoder's.) Prints JSON (the machine named): the training history and time.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _machine import machine  # noqa: E402

from bafo_pipeline import BAFOTransformer, TrainedErasure, save_model  # noqa: E402
from bafo_pipeline.data.sources import load_source  # noqa: E402

#: ``bafo train``'s defaults that the frontier's encoder used, but for 4 epochs and no decoder fine-tuning.
TEST_FRACTION, IMAGE_SIZE = 0.15, 56


def main() -> None:
    """Train, save and print the JSON."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--utkface", required=True)
    parser.add_argument("--out", required=True, help="the model directory to write (replaced if it exists)")
    parser.add_argument("--weight", type=float, required=True, help="the neighbour penalty's matching_weight")
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    import torch

    torch.set_num_threads(args.threads)
    dataset = load_source(utkface=args.utkface, manifest=None, synthetic_samples=3000, image_size=IMAGE_SIZE,
                          image_column="path", sensitive=("age", "gender", "ethnicity"), limit=None, strict=False,
                          seed=args.seed, allow_outside_root=False)
    train, _ = dataset.split(test_fraction=TEST_FRACTION, seed=args.seed)
    step = TrainedErasure(matching="neighbours", matching_weight=args.weight, erase_in_loop=False)
    estimator = BAFOTransformer(latent_dim=48, image_shape=(IMAGE_SIZE, IMAGE_SIZE), epochs=args.epochs,
                                batch_size=32, learning_rate=2e-3, concealment=[step], decoder_epochs=0,
                                device="cpu", random_state=args.seed)
    started = time.perf_counter()
    estimator.fit(train.images, sensitive_features=train.sensitive_features)
    seconds = time.perf_counter() - started
    save_model(estimator, args.out, overwrite=True,
               metadata={"split": {"test_fraction": TEST_FRACTION, "seed": args.seed},
                         "data": {"source": "utkface", "synthetic_samples": 3000}})
    print(json.dumps({
        "benchmark": "neighbour_trained_encoder",
        "command": " ".join(["python", *sys.argv]),
        "machine": machine(),
        "n_train": len(train),
        "weight": args.weight,
        "seconds": round(seconds, 1),
        "history": estimator.history_,
    }, indent=1))


if __name__ == "__main__":
    main()
