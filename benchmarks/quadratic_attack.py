"""What the audit's quadratic probe reads in a saved UTKFace model's shared latents, beside the other probes.

The audit's ladder gained a quadratic probe (QDA with Ledoit-Wolf class covariances; docs/AUDIT.md §4) after
docs/FRONTIER.md and README's table were measured with linear, MLP and boosted-tree probes. This script encodes
the model's content-hash split with the model's own concealment (``transform``, every row's labels passed when
the concealment needs them), and audits the held-out latents with every probe of the ladder and both attackers:
cross-validated on the held-out rows, and data-rich (fitted on every training-split latent, the issue's 16,722-row
attacker). It prints, per representation, attacker, attribute and probe, the score in the goal's units (balanced
accuracy, age MAE) with its 95% interval, and the worst case with and without the quadratic probe::

    python benchmarks/quadratic_attack.py --model artifacts/utk_default_e20 --utkface UTKFace

``--unconcealed`` also audits the same encoder's latents without its concealment (the reference).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import time
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _machine import machine  # noqa: E402

from bafo_pipeline.audits import PROBES, audit_leakage  # noqa: E402

SENSITIVE = ["age", "gender", "ethnicity"]
ATTACKERS = ("cross-validated", "data-rich")


def latents(model, part, *, conceal: bool):
    """``part``'s latents, with its labels when the concealment needs them."""
    labels = part.sensitive_features.reset_index(drop=True)
    if conceal and model.needs_sensitive_features_to_transform:
        return model.transform(part.images, sensitive_features=labels)
    return model.transform(part.images, conceal=conceal)


def in_goal_units(result, probes: list[str]) -> dict:
    """Per representation, attacker and attribute: each probe's balanced accuracy (categorical) or MAE (age),
    with its interval, and the worst case over ``probes`` with and without ``quadratic``."""
    table = result.table
    out: dict = {}
    for (representation, attacker, attribute), rows in table.groupby(["representation", "attacker", "attribute"]):
        if attacker not in ATTACKERS:
            continue
        metric = "mae" if rows["kind"].iloc[0] == "continuous" else "balanced_accuracy"
        scored = rows[(rows["metric"] == metric) & rows["probe"].isin(probes)].set_index("probe")
        by_probe = {probe: {"mean": round(float(r["mean"]), 4), "ci": [round(float(r["ci_low"]), 4),
                                                                      round(float(r["ci_high"]), 4)]}
                    for probe, r in scored.iterrows()}
        worst = min if metric == "mae" else max
        without = [p for p in by_probe if p != "quadratic"]
        out.setdefault(representation, {}).setdefault(attacker, {})[attribute] = {
            "metric": metric,
            "by_probe": by_probe,
            "worst": worst(by_probe[p]["mean"] for p in by_probe),
            "worst_probe": worst(by_probe, key=lambda p: by_probe[p]["mean"]),
            "worst_without_quadratic": worst(by_probe[p]["mean"] for p in without) if without else None,
        }
    return out


def main() -> None:
    """Audit one model's latents with every probe and print the JSON."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True)
    parser.add_argument("--utkface", required=True)
    parser.add_argument("--unconcealed", action="store_true", help="also audit the latents without concealment")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--bootstrap", type=int, default=200)
    args = parser.parse_args()
    import torch

    torch.set_num_threads(args.threads)
    import leakage_frontier as frontier

    started = time.perf_counter()
    with contextlib.redirect_stdout(sys.stderr):  # the frontier's progress lines; stdout is the JSON
        model, train, test, info = frontier.load_real(Path(args.model), Path(args.utkface), "cpu")
    settings = {"concealed": True, **({"unconcealed": False} if args.unconcealed else {})}
    held_out = {name: latents(model, test, conceal=conceal) for name, conceal in settings.items()}
    training = {name: latents(model, train, conceal=conceal) for name, conceal in settings.items()}
    probes = [p for p in PROBES if p != "prior"]
    warnings.filterwarnings("ignore", module="bafo_pipeline")  # the audit's small-class notes
    result = audit_leakage(held_out, test.sensitive_features.reset_index(drop=True)[SENSITIVE],
                           fit_representations=training,
                           fit_labels=train.sensitive_features.reset_index(drop=True)[SENSITIVE],
                           probes=("prior", *probes), n_bootstrap=args.bootstrap, n_permutations=0,
                           random_state=0, n_threads=args.threads)
    print(json.dumps({
        "benchmark": "quadratic_attack",
        "command": " ".join(["python", *sys.argv]),
        "machine": machine(),
        "data": {key: info[key] for key in ("model", "model_params", "split", "n_train", "n_test")},
        "concealment": str(model.concealment),
        "probes": probes,
        "scores": in_goal_units(result, probes),
        "seconds": round(time.perf_counter() - started, 1),
    }, indent=1))


if __name__ == "__main__":
    main()
