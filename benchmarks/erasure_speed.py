"""Time LinearErasure.fit against concept-erasure's LeaceEraser on 20,000 x 48, side by side in one run.

Synthetic data: X is standard normal with its first 12 columns shifted linearly by the
attributes (age: continuous, gender: binary strings, ethnicity: 5 strings), so every
concept direction carries signal. LinearErasure fits from the raw attribute DataFrame
(schema inference, encoding and age's quantile bins included in its time); LeaceEraser
gets the finished concept matrix (the same columns: the encoded attributes and age's
quantile bins), its encoding untimed. LeaceEraser runs with the settings under which
it computes the same map (no shrinkage, no trace constraint, svd_tol 1e-8); its
defaults are timed too, for information. The variants alternate round by round, and
each thread setting (1 thread, the libraries' default) is measured on its own, so
both sides see the same machine load. Prints one JSON object naming the machine.

concept-erasure (PyPI, not a dependency of this package) must be installed for the
comparison; without it only LinearErasure is timed, and the JSON says why.

    python benchmarks/erasure_speed.py [--n 20000] [--dim 48] [--rounds 21] [--out result.json]
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import sklearn
import torch
from threadpoolctl import threadpool_info, threadpool_limits

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _machine import emit, machine  # noqa: E402

from bafo_pipeline import LinearErasure  # noqa: E402

TARGET_RATIO = 1.5
ETHNICITIES = np.array(["white", "black", "asian", "indian", "others"])


def synthetic(n: int, dim: int, seed: int = 0) -> tuple[np.ndarray, pd.DataFrame]:
    rng = np.random.default_rng(seed)
    frame = pd.DataFrame(
        {
            "age": rng.integers(1, 100, n).astype(float),
            "gender": rng.choice(["female", "male"], n),
            "ethnicity": rng.choice(ETHNICITIES, n),
        }
    )
    signal = np.column_stack(
        [(frame["age"] - 50) / 30, frame["gender"] == "male", *(frame["ethnicity"] == e for e in ETHNICITIES)]
    ).astype(float)
    X = rng.normal(size=(n, dim))
    planted = min(12, dim)
    X[:, :planted] += signal @ rng.normal(size=(signal.shape[1], planted))
    return X, frame


def concept_matrix(eraser: LinearErasure, frame: pd.DataFrame) -> np.ndarray:
    """The columns LinearErasure decorrelates, built from its public schema: encoded attributes, then quantile bins."""
    blocks = [eraser.schema_.encode(frame).astype(np.float64)]
    for attribute in eraser.schema_.attributes:
        if attribute.kind == "continuous" and eraser.continuous_bins:
            values = frame[attribute.name].to_numpy(dtype=float)
            quantiles = np.linspace(0, 1, eraser.continuous_bins + 1)[1:-1]
            edges = np.unique(np.quantile(values, quantiles))
            blocks.append(np.eye(len(edges) + 1)[np.searchsorted(edges, values, side="right")])
    return np.concatenate(blocks, axis=1)


def time_side_by_side(variants: dict[str, Callable[[], object]], rounds: int) -> dict[str, dict]:
    """Median wall and CPU (this process) seconds per variant, the variants alternating each round."""
    for run in variants.values():  # warm-up: imports, caches, thread pools
        run()
    wall: dict[str, list[float]] = {name: [] for name in variants}
    cpu: dict[str, list[float]] = {name: [] for name in variants}
    for _ in range(rounds):
        for name, run in variants.items():
            start_wall, start_cpu = time.perf_counter(), time.process_time()
            run()
            wall[name].append(time.perf_counter() - start_wall)
            cpu[name].append(time.process_time() - start_cpu)
    return {
        name: {
            "wall_ms_median": round(1e3 * float(np.median(wall[name])), 3),
            "wall_ms_min": round(1e3 * float(np.min(wall[name])), 3),
            "cpu_ms_median": round(1e3 * float(np.median(cpu[name])), 3),
        }
        for name in variants
    }


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=20_000)
    parser.add_argument("--dim", type=int, default=48)
    parser.add_argument("--rounds", type=int, default=21)
    parser.add_argument("--out", default=None, help="also write the JSON here")
    args = parser.parse_args(argv)

    X, frame = synthetic(args.n, args.dim)
    X32 = X.astype(np.float32)
    eraser = LinearErasure().fit(X, sensitive_features=frame)
    concepts = concept_matrix(eraser, frame)
    skipped = None
    try:
        from concept_erasure import LeaceEraser
    except ImportError:
        LeaceEraser = None
        skipped = "concept-erasure is not installed (pip install concept-erasure); LinearErasure timed alone"

    variants: dict[str, Callable[[], object]] = {
        "linear_erasure_fit": lambda: LinearErasure().fit(X, sensitive_features=frame),
        "linear_erasure_fit_float32": lambda: LinearErasure().fit(X32, sensitive_features=frame),
        "linear_erasure_transform": lambda: eraser.transform(X),
        "linear_erasure_transform_float32": lambda: eraser.transform(X32),
    }
    agreement = None
    if LeaceEraser is not None:
        x, z = torch.from_numpy(X), torch.from_numpy(concepts)
        matched = {"shrinkage": False, "constrain_cov_trace": False, "svd_tol": 1e-8}
        leace = LeaceEraser.fit(x, z, **matched)
        difference = np.abs(leace(x).numpy() - eraser.transform(X)).max()
        agreement = {
            "max_abs_difference": float(difference),
            "relative_to_max_abs_x": float(difference / np.abs(X).max()),
            "leace_settings": matched,
        }
        variants["leace_fit"] = lambda: LeaceEraser.fit(x, z, **matched)
        variants["leace_fit_defaults"] = lambda: LeaceEraser.fit(x, z)
        variants["leace_transform"] = lambda: leace(x)

    default_threads = torch.get_num_threads()
    timings = {}
    for label, threads in (("1_thread", 1), ("default_threads", None)):
        torch.set_num_threads(threads or default_threads)
        with threadpool_limits(limits=threads):
            timings[label] = time_side_by_side(variants, args.rounds)
    torch.set_num_threads(default_threads)

    ratios = {}
    if LeaceEraser is not None:
        for label, times in timings.items():
            for clock in ("wall_ms_median", "cpu_ms_median"):
                ratio = times["linear_erasure_fit"][clock] / times["leace_fit"][clock]
                ratios[f"{label}/{clock}"] = round(ratio, 3)

    result = {
        "benchmark": "erasure_speed",
        "machine": {
            **machine(),
            "numpy": np.__version__,
            "sklearn": sklearn.__version__,
            "blas": [
                {key: pool.get(key) for key in ("internal_api", "version", "architecture", "num_threads")}
                for pool in threadpool_info()
            ],
        },
        "data": {"n": args.n, "dim": args.dim, "attributes": list(frame.columns), "concept_columns": concepts.shape[1]},
        "rounds": args.rounds,
        "timings": timings,
        "fit_ratio_linear_erasure_over_leace": ratios,
        "target_ratio": TARGET_RATIO,
        "meets_target": {key: ratio <= TARGET_RATIO for key, ratio in ratios.items()} if ratios else None,
        "agreement_with_leace": agreement,
        "skipped": skipped,
    }
    return emit(result, args.out)


if __name__ == "__main__":
    main()
