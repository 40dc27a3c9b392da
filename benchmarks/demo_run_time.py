"""Wall time of ``bafo run``'s whole job on its demo data, old and new training settings side by side.

Runs :func:`bafo_pipeline.workflow.run_workflow` (train, conceal, export, audit: what ``bafo
run --out DIR`` does) on the demo's 3000 synthetic faces with each setting, alternating
(ABAB...) so both see the same machine load, and prints JSON: wall and CPU seconds per run
(CPU time is the fairer measure on a shared machine), the median
ratio new/old, the "kept" table (linear probe, chance-adjusted; and the best probe's share of
pixels'), the worst-case leakage of the shared latents and the overall verdict, per setting.

    python benchmarks/demo_run_time.py [--rounds 2]
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _machine import machine  # noqa: E402

from bafo_pipeline.data import make_synthetic_faces  # noqa: E402
from bafo_pipeline.transformers import BAFOTransformer  # noqa: E402
from bafo_pipeline.pipeline import run_workflow  # noqa: E402

SETTINGS = {
    "before (batch 256, lr 1e-3, 10 epochs)": {"epochs": 10, "batch_size": 256, "learning_rate": 1e-3},
    "after (batch 32, lr 2e-3, 30 epochs)": {"epochs": 30, "batch_size": 32, "learning_rate": 2e-3},
}


def _cpu_seconds() -> float:
    """CPU time of this process (all threads) and of its finished children: less sensitive to load than wall time."""
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def one_run(params: dict, seed: int) -> dict:
    faces = make_synthetic_faces(3000, 56, random_state=seed)
    estimator = BAFOTransformer(latent_dim=48, concealment="full", decoder_epochs=6, random_state=seed, **params)
    with tempfile.TemporaryDirectory() as out:
        started, cpu_started = time.perf_counter(), _cpu_seconds()
        result = run_workflow(faces, out, estimator, seed=seed, target="smile")
        seconds, cpu_seconds = time.perf_counter() - started, _cpu_seconds() - cpu_started
    worst = result.report.worst_case()
    shared = worst[worst["representation"] == "bafo (shared latents)"]
    kept = {
        f"{r.representation}/{r.target}": round(float(r.score), 3)
        for r in result.utility.scores("linear").itertuples()
    }
    shares = result.utility.shares("best")
    return {
        "seconds": round(seconds, 1),
        "cpu_seconds": round(cpu_seconds, 1),
        "kept_linear": kept,
        "kept_best_share_of_pixels": {
            f"{r['representation']}/{r['target']}": round(float(r["share_of[pixels (PCA 64)]"]), 3)
            for r in shares.to_dict("records")
        },
        "shared_latents_worst_leakage": {r.attribute: round(float(r.leakage), 3) for r in shared.itertuples()},
        "overall": [v.text for v in result.report.verdicts],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--commit", help="the package version measured (recorded in the JSON)")
    args = parser.parse_args()
    runs: dict[str, list[dict]] = {name: [] for name in SETTINGS}
    for _ in range(args.rounds):
        for name, params in SETTINGS.items():
            runs[name].append(one_run(params, args.seed))
            print(name, json.dumps(runs[name][-1]), file=sys.stderr, flush=True)
    old, new = (np.array([r["seconds"] for r in runs[name]]) for name in SETTINGS)
    old_cpu, new_cpu = (np.array([r["cpu_seconds"] for r in runs[name]]) for name in SETTINGS)
    print(json.dumps({
        "benchmark": "demo_run_time",
        "command": " ".join(["python", *sys.argv]),
        "machine": machine(),
        "commit": args.commit,
        "settings": SETTINGS,
        "runs": runs,
        "median_ratio_new_over_old": float(np.median(new / old)),
        "median_cpu_ratio_new_over_old": float(np.median(new_cpu / old_cpu)),
    }, indent=1))


if __name__ == "__main__":
    main()
