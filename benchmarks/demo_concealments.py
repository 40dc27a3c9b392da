"""``bafo run``'s whole job on its demo data, once per concealment: what each leaks and keeps.

Runs :func:`bafo_pipeline.pipeline.run_workflow` (train, conceal, export, audit: what ``bafo run
--out DIR --concealment C`` does, with the command's defaults) on the demo's 3000 synthetic faces
for each concealment, and prints JSON: per concealment, the shared latents' worst case per
sensitive attribute (both attackers, interval, p-value, whether significant at 0.05), the share of
the unconcealed encoder's score each non-sensitive attribute keeps (best probe), the side
channels' decision, the overall verdict, and the wall time.

    python benchmarks/demo_concealments.py --concealments full,transport,transport-refined
    python benchmarks/demo_concealments.py --concealments transport-refined --refine-kl-weight 0.1
    python benchmarks/demo_concealments.py --concealments transport --transport-means shrunk-cells
    python benchmarks/demo_concealments.py --concealments transport --transport-shrinkage 5
    python benchmarks/demo_concealments.py --concealments transport --calibration-fraction 0
    python benchmarks/demo_concealments.py --concealments transport --utkface DIR --landmarks-cache FILE

``--utkface DIR`` runs the same on a UTKFace folder, as ``bafo run --utkface DIR`` does: no downstream
target, and the utility targets are the landmark measures of the held-out faces (head pose, mouth and
eyes, with the part the sensitive attributes explain also audited as residuals; needs the landmarks
extra, and ``--landmarks-cache`` keeps the landmarks between runs).

(a run with a non-default ``--refine-kl-weight`` is named e.g. ``transport-refined@kl0.1``, one with
other ``--transport-means`` than ``own`` e.g. ``transport@shrunk-cells``, one with another
``--transport-shrinkage`` than the step's default e.g. ``transport@shrink5``, one with calibration rows
other than ``bafo run``'s e.g. ``transport@calibration0``: the concealment fitted on that share of the
training split, which is not shared; see ``run_workflow``'s ``calibration_fraction``; one with
``--noise-scale`` e.g. ``transport@noise0.25``).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _machine import machine  # noqa: E402
from _transport_means import OWN_MEANS, SHRUNK_CELL_MEANS, SHRUNK_MEANS  # noqa: E402

from bafo_pipeline.audits.verdict import is_significant  # noqa: E402
from bafo_pipeline.data import load_source, make_synthetic_faces  # noqa: E402
from bafo_pipeline.data.landmarks import split_landmark_targets  # noqa: E402
from bafo_pipeline.pipeline import run_workflow  # noqa: E402
from bafo_pipeline.pipeline.workflow import CALIBRATION_FRACTION  # noqa: E402
from bafo_pipeline.transformers import BAFOTransformer, ConditionalTransport, KeyedNoise  # noqa: E402

SHARED, UNCONCEALED = "bafo (shared latents)", "bafo encoder (no concealment)"
# bafo run's defaults (bafo_pipeline/cli.py: run)
RUN_DEFAULTS = {"latent_dim": 48, "epochs": 30, "batch_size": 32, "decoder_epochs": 6}
DEFAULT_KL_WEIGHT = BAFOTransformer().refine_kl_weight
DEFAULT_SHRINKAGE = ConditionalTransport().shrinkage
#: How ConditionalTransport's cell means are estimated (benchmarks/_transport_means.py).
TRANSPORT_MEANS = {"own": OWN_MEANS, "shrunk-cells": SHRUNK_CELL_MEANS, "shrunk": SHRUNK_MEANS}


def make_estimator(concealment: str, seed: int, refine_kl_weight: float = DEFAULT_KL_WEIGHT,
                   transport_means: str = "own", transport_shrinkage: float = DEFAULT_SHRINKAGE,
                   noise_scale: float | None = None) -> BAFOTransformer:
    """``bafo run``'s estimator with this concealment; its transport step, if any, estimating means and shrinking
    covariances as told; with ``noise_scale``, a :class:`KeyedNoise` last (``bafo run --noise-scale``)."""
    estimator = BAFOTransformer(concealment=concealment, random_state=seed, refine_kl_weight=refine_kl_weight,
                                **RUN_DEFAULTS)
    if transport_means == "own" and transport_shrinkage == DEFAULT_SHRINKAGE and noise_scale is None:
        return estimator
    steps = estimator.spell_out_concealment().concealment
    for step in steps:
        if isinstance(step, ConditionalTransport):
            step.set_params(shrinkage=transport_shrinkage, **TRANSPORT_MEANS[transport_means])
    if noise_scale is not None:
        estimator.set_params(concealment=[*steps, KeyedNoise(scale=noise_scale)])
    return estimator


def one_run(concealment: str, seed: int, samples: int, refine_kl_weight: float = DEFAULT_KL_WEIGHT,
            transport_means: str = "own", transport_shrinkage: float = DEFAULT_SHRINKAGE,
            calibration_fraction: float = CALIBRATION_FRACTION, utkface: str | None = None,
            landmarks_cache: str | None = None, noise_scale: float | None = None) -> dict:
    if utkface is None:
        faces, options = make_synthetic_faces(samples, 56, random_state=seed), {"target": "smile"}
    else:
        faces = load_source(utkface=utkface, seed=seed)
        options = {"utility_targets": split_landmark_targets(landmarks_cache), "residual": True}
    estimator = make_estimator(concealment, seed, refine_kl_weight, transport_means, transport_shrinkage, noise_scale)
    with tempfile.TemporaryDirectory() as out:
        started = time.perf_counter()
        result = run_workflow(faces, out, estimator, seed=seed, calibration_fraction=calibration_fraction, **options)
        seconds = time.perf_counter() - started
    report = result.report
    worst = report.worst_case()
    shared = worst[worst["representation"] == SHARED]
    shares = result.utility.shares("best")
    kept = shares[shares["representation"] == SHARED]
    return {
        "seconds": round(seconds, 1),
        "calibration_images": result.n_calibration,
        "rows_per_cell": result.rows_per_cell_summary(),
        "shared_latents_worst_case": {
            r["attribute"]: {
                "leakage": round(float(r["leakage"]), 3), "ci": [round(float(r["ci_low"]), 3), round(float(r["ci_high"]), 3)],
                "p_value": float(r["p_value"]), "probe": r["probe"], "attacker": r["attacker"],
                "significant": is_significant(r),
            }
            for r in shared.to_dict("records")
        },
        "kept_share_of_unconcealed": {
            r["target"]: round(float(r[f"share_of[{UNCONCEALED}]"]), 3) for r in kept.to_dict("records")
        },
        "side_channels_leak": bool(report.leakage.side_channels_leak()),
        "overall": [v.text for v in report.verdicts],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--concealments", default="full,transport,transport-refined")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--samples", type=int, default=3000, help="bafo run's --synthetic-samples")
    parser.add_argument("--commit", help="the package version measured (recorded in the JSON)")
    parser.add_argument("--refine-kl-weight", type=float, default=DEFAULT_KL_WEIGHT,
                        help="BAFOTransformer's refine_kl_weight")
    parser.add_argument("--transport-means", choices=sorted(TRANSPORT_MEANS), default="own",
                        help="how the transport step estimates its cell means")
    parser.add_argument("--transport-shrinkage", type=float, default=DEFAULT_SHRINKAGE,
                        help="the transport step's covariance shrinkage (pseudo-rows)")
    parser.add_argument("--calibration-fraction", type=float, default=CALIBRATION_FRACTION,
                        help="share of the training split the concealment is fitted on and that is not shared")
    parser.add_argument("--utkface", help="a UTKFace folder instead of the demo's synthetic faces")
    parser.add_argument("--landmarks-cache", help="--utkface: Parquet cache of the held-out faces' landmarks")
    parser.add_argument("--noise-scale", type=float, help="bafo run's --noise-scale: a KeyedNoise step last")
    args = parser.parse_args()
    runs = {}
    for concealment in args.concealments.split(","):
        name = concealment
        if args.refine_kl_weight != DEFAULT_KL_WEIGHT:
            name += f"@kl{args.refine_kl_weight:g}"
        if args.transport_means != "own" and concealment.startswith("transport"):
            name += f"@{args.transport_means}"
        if args.transport_shrinkage != DEFAULT_SHRINKAGE and concealment.startswith("transport"):
            name += f"@shrink{args.transport_shrinkage:g}"
        if args.calibration_fraction != CALIBRATION_FRACTION:
            name += f"@calibration{args.calibration_fraction:g}"
        if args.noise_scale is not None:
            name += f"@noise{args.noise_scale:g}"
        runs[name] = one_run(concealment, args.seed, args.samples, args.refine_kl_weight, args.transport_means,
                             args.transport_shrinkage, args.calibration_fraction, args.utkface, args.landmarks_cache,
                             args.noise_scale)
        print(name, json.dumps(runs[name]), file=sys.stderr, flush=True)
    print(json.dumps({
        "benchmark": "demo_concealments",
        "command": " ".join(["python", *sys.argv]),
        "machine": machine(),
        "commit": args.commit,
        "settings": {**RUN_DEFAULTS, "data": "utkface" if args.utkface else "synthetic",
                     "samples": None if args.utkface else args.samples, "seed": args.seed,
                     "refine_kl_weight": args.refine_kl_weight, "transport_means": args.transport_means,
                     "transport_shrinkage": args.transport_shrinkage,
                     "calibration_fraction": args.calibration_fraction, "noise_scale": args.noise_scale},
        "runs": runs,
    }, indent=1))


if __name__ == "__main__":
    main()
