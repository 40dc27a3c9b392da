"""The audit's speed before and after a change, side by side in one run.

Runs ``benchmarks/audit_speed.py`` (20,000 x 48 latents, the default ladder) with two
copies of the package, alternating round by round so both see the same machine load:
``--before`` (a folder holding an older ``bafo_pipeline``, e.g. extracted with
``git archive <commit> bafo_pipeline | tar -x -C DIR``) and this checkout. Both modes
are timed: ``arrays`` (``audit_leakage`` on arrays) and ``files`` (``run_audit_files``,
what ``bafo audit`` runs: reading, side channels where the version has them, report).
Prints one JSON object naming the machine, with the after/before ratio of each mode's
median wall time and median process CPU time (steadier than wall time on a loaded machine).

    python benchmarks/audit_speed_compare.py --before DIR [--rounds 2] [--out result.json]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from _machine import emit, machine  # noqa: E402


def _run(package_root: Path, mode: str, n: int) -> dict:
    env = {**os.environ, "PYTHONPATH": str(package_root)}
    out = subprocess.run(
        [sys.executable, str(HERE / "audit_speed.py"), "--mode", mode, "--n", str(n)],
        env=env, check=True, capture_output=True, text=True,
    ).stdout
    return json.loads(out)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--before", required=True, help="folder holding the older bafo_pipeline package")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--n", type=int, default=20_000)
    parser.add_argument("--modes", default="arrays,files")
    parser.add_argument("--out", default=None)
    args = parser.parse_args(argv)
    versions = {"before": Path(args.before).resolve(), "after": HERE.parent}
    runs: dict = {mode: {name: [] for name in versions} for mode in args.modes.split(",")}
    cpu: dict = {mode: {name: [] for name in versions} for mode in runs}
    details: dict = {mode: {} for mode in runs}
    for _ in range(args.rounds):
        for mode in runs:
            for name, root in versions.items():
                result = _run(root, mode, args.n)
                runs[mode][name].append(result["seconds"]["wall"])
                cpu[mode][name].append(result["seconds"]["process_cpu"])
                details[mode][name] = {"seconds": result["seconds"], "worst_case": result["worst_case"]}
    report = {
        "benchmark": "audit_speed_compare",
        "machine": machine(),
        "n": args.n,
        "rounds": args.rounds,
        "wall_seconds": runs,
        "process_cpu_seconds": cpu,
        "ratio_after_over_before": {
            mode: round(statistics.median(t["after"]) / statistics.median(t["before"]), 3) for mode, t in runs.items()
        },
        "cpu_ratio_after_over_before": {
            mode: round(statistics.median(t["after"]) / statistics.median(t["before"]), 3) for mode, t in cpu.items()
        },
        "last_round": details,
    }
    return emit(report, args.out)


if __name__ == "__main__":
    main()
