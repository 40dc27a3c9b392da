"""The side-channel audit on UTKFace's real label order: ids as 0.1 numbered them, against pseudonymous ids.

bafo-pipeline 0.1 numbered a UTKFace export's rows in name-sorted order, and the names
begin with ``age_gender_race`` (issue 14). This builds two latents files over the
UTKFace folder's parseable names, with random latents (so the embedding itself is blind):

* ``name order``: ids 0..n-1 in name-sorted order, rows in that order (what 0.1 wrote);
* ``pseudonymous``: random hexadecimal ids, rows in random order.

and audits each with ``run_audit_files`` (its side channels: the id and the row order),
reporting each channel's worst case per attribute and whether it leaks. Only file names
are read, no image. Prints one JSON object naming the machine.

    python benchmarks/side_channels_utkface.py [--utkface ../shared/data/utkface/UTKFace] [--out result.json]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _machine import emit, machine  # noqa: E402

from bafo_pipeline.audits import run_audit_files  # noqa: E402
from bafo_pipeline.data.utkface import parse_utkface_name  # noqa: E402


def _labels(folder: Path) -> pd.DataFrame:
    rows = []
    for name in sorted(os.listdir(folder)):
        try:
            rows.append(parse_utkface_name(name))
        except ValueError:
            continue
    return pd.DataFrame(rows)[["age", "gender", "ethnicity"]]


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--utkface", default="../shared/data/utkface/UTKFace", help="the UTKFace folder")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=None)
    args = parser.parse_args(argv)
    labels = _labels(Path(args.utkface))
    n = len(labels)
    rng = np.random.default_rng(args.seed)
    folder = Path(tempfile.mkdtemp(prefix="side_channels_"))
    latent = pa.FixedSizeListArray.from_arrays(pa.array(rng.normal(size=n * 16).astype(np.float32)), 16)
    variants = {}
    # 0.1: ids are positions in name order, rows written in that order.
    ids = np.arange(n)
    pq.write_table(pa.table({"id": ids, "latent": latent}), folder / "name_order.parquet")
    labels.assign(id=ids).to_csv(folder / "name_order.csv", index=False)
    # Pseudonymous ids, rows in random order.
    hexes = np.array([f"{v:016x}" for v in rng.integers(0, 1 << 62, n)])
    order = rng.permutation(n)
    pq.write_table(pa.table({"id": hexes[order], "latent": latent.take(pa.array(order))}),
                   folder / "pseudonymous.parquet")
    labels.assign(id=hexes).to_csv(folder / "pseudonymous.csv", index=False)
    for name in ("name_order", "pseudonymous"):
        started = time.perf_counter()
        report = run_audit_files([folder / f"{name}.parquet"], folder / f"{name}.csv", probes=("prior", "linear"),
                                 random_state=args.seed)
        sides = report.leakage.side_channels()
        variants[name] = {
            "seconds": round(time.perf_counter() - started, 1),
            "fails": bool(report.failed()),
            "embedding_worst_case": {
                r["attribute"]: round(r["leakage"], 4)
                for r in report.worst_case().to_dict("records") if r["representation"] == name
            },
            "side_channels": [
                {"channel": r["channel"], "attribute": r["attribute"], "probe": r["probe"],
                 "leakage": round(r["leakage"], 4), "ci": [round(r["ci_low"], 4), round(r["ci_high"], 4)],
                 "family_p_value": float(f"{r['family_p_value']:.3g}"), "leaks": bool(r["leaks"])}
                for r in sides.to_dict("records")
            ],
        }
    report = {
        "benchmark": "side_channels_utkface",
        "machine": machine(),
        "rows": n,
        "settings": {"probes": "embedding: prior, linear; side channels: prior, linear, knn, adjacency",
                     "n_folds": 5, "seed": args.seed},
        "variants": variants,
    }
    return emit(report, args.out)


if __name__ == "__main__":
    main()
