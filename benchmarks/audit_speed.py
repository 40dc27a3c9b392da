"""Time the full leakage-audit ladder on 20,000 x 48 latents, 3 attributes, 5 folds.

Synthetic latents with planted signals (age: continuous, also banded; gender: linear;
ethnicity: partly non-linear), the default audit settings (the prior, linear, MLP,
gradient-boosting and quadratic probes: ``bafo_pipeline.audits.PROBES``; bootstrap
intervals, permutation p-values). Prints one JSON
object naming the machine. The target is under 60 s on a 2-core CPU.

With ``--mode files`` the same data goes through ``run_audit_files`` (what ``bafo audit``
runs): a Parquet file of ids and latents and a CSV of labels, read, audited (with the
file's side channels where the package version audits them) and reported.

    python benchmarks/audit_speed.py [--n 20000] [--dim 48] [--folds 5] [--mode arrays|files] [--out result.json]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import sklearn

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _machine import machine  # noqa: E402

from bafo_pipeline._utils import resolve_device  # noqa: E402
from bafo_pipeline.audits import audit_leakage  # noqa: E402

BUDGET_SECONDS = 60.0


def synthetic(n: int, dim: int, seed: int = 0) -> tuple[np.ndarray, pd.DataFrame]:
    rng = np.random.default_rng(seed)
    Z = rng.normal(size=(n, dim)).astype(np.float32)
    gender = np.where(Z[:, 0] + 0.5 * Z[:, 1] * Z[:, 2] + rng.normal(size=n) > 0, "male", "female")
    score = Z[:, 3] + 0.6 * Z[:, 4] ** 2 + rng.normal(size=n)
    ethnicity = np.array(["white", "black", "asian", "indian", "others"])[
        np.digitize(score, [0.0, 0.8, 1.6, 2.4])
    ]
    age = np.clip(33 + 10 * Z[:, 5] + 6 * np.abs(Z[:, 6]) + 12 * rng.normal(size=n), 1, 110).round()
    return Z, pd.DataFrame({"age": age, "gender": gender, "ethnicity": ethnicity})


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=20_000)
    parser.add_argument("--dim", type=int, default=48)
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--mode", choices=["arrays", "files"], default="arrays")
    parser.add_argument("--out", default=None, help="also write the JSON here")
    args = parser.parse_args(argv)

    Z, labels = synthetic(args.n, args.dim)
    load_before = os.getloadavg() if hasattr(os, "getloadavg") else None
    if args.mode == "files":
        import tempfile

        import pyarrow as pa
        import pyarrow.parquet as pq

        from bafo_pipeline.audits import run_audit_files

        folder = tempfile.mkdtemp(prefix="audit_speed_")
        ids = np.arange(args.n)
        latent = pa.FixedSizeListArray.from_arrays(pa.array(Z.ravel()), args.dim)
        pq.write_table(pa.table({"id": ids, "latent": latent}), os.path.join(folder, "latents.parquet"))
        labels.assign(id=ids).to_csv(os.path.join(folder, "labels.csv"), index=False)
        wall, cpu = time.perf_counter(), time.process_time()
        result = run_audit_files(
            [os.path.join(folder, "latents.parquet")], os.path.join(folder, "labels.csv"), os.path.join(folder, "r"),
            n_folds=args.folds, device=args.device,
        ).leakage
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    else:
        wall, cpu = time.perf_counter(), time.process_time()
        result = audit_leakage(Z, labels, n_folds=args.folds, device=args.device)
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu

    per_probe: dict[str, float] = {}
    for t in result.timings:
        key = t["probe"]
        per_probe[key] = per_probe.get(key, 0.0) + t["fit_seconds"]
    scoring = sum(t["scoring_seconds"] for t in result.timings)
    channels = [name for name, info in result.representations.items() if info.get("role") == "side channel"]
    worst = result.worst_case(with_verdict=False)
    embeddings = [name for name, info in result.representations.items() if info.get("role") is None]
    worst = worst[worst["representation"].isin(embeddings)]  # side channels are reported by run_audit_files
    report = {
        "benchmark": "audit_speed",
        "machine": {
            **machine(),
            "sklearn": sklearn.__version__,
            "numpy": np.__version__,
            "device": str(resolve_device(args.device)),
            "load_average_before": load_before,
        },
        "mode": args.mode,
        "data": {
            "n": args.n,
            "dim": args.dim,
            "attributes": list(labels.columns),
            "audited": list(result.attributes),
            "side_channels": channels,
        },
        "settings": {
            k: result.config[k] for k in ("n_folds", "probes", "n_bootstrap", "n_permutations", "confidence")
        },
        "seconds": {
            "wall": round(wall, 2),
            "process_cpu": round(cpu, 2),
            "fit_by_probe": {k: round(v, 2) for k, v in per_probe.items()},
            "scoring_and_tests": round(scoring, 2),
        },
        "budget_seconds": BUDGET_SECONDS,
        "within_budget": wall < BUDGET_SECONDS,
        "worst_case": {
            r["attribute"]: {"probe": r["probe"], "leakage": round(r["leakage"], 4)}
            for r in worst.to_dict("records")
        },
    }
    text = json.dumps(report, indent=2)
    print(text)
    if args.out:
        with open(args.out, "w", encoding="utf-8") as handle:
            handle.write(text + "\n")
    return report


if __name__ == "__main__":
    main()
