"""Wall and CPU time of ``bafo train`` on UTKFace with the default settings (issue 12's "fit ≤ 30 min" goal).

Runs the command a user runs, ``bafo train --utkface DIR --out MODEL`` (20 epochs, batch 32,
concealment ``full`` with 6 decoder epochs: every default), as a child process, and records
its wall time, CPU time, peak memory and, from its progress output, when each stage
(data loading, encoder epochs, concealment, decoder fine-tuning, saving) printed its first and
last progress line. The model it
writes is kept (``--out``) so the same fit can be audited afterwards, e.g. by
``benchmarks/leakage_frontier.py --model MODEL``.

Give the run both cores (on a machine with Linux autogroup, raise its session's group first:
``echo -20 > /proc/self/autogroup``); the JSON names the machine and the scheduler state.

    python benchmarks/fit_time_utkface.py --utkface ../shared/data/utkface/UTKFace --out artifacts/utk_default \\
        --json docs/results/fit_time_utkface_cpu.json [--emulate avx2]
"""

from __future__ import annotations

import argparse
import os
import re
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _machine import emit, machine  # noqa: E402

# How an AVX2-only CPU is emulated on a newer one: caps on torch's and oneDNN's instruction set, read at start-up.
EMULATIONS = {"avx2": {"ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2"}}

# Progress lines that start a stage, as the estimator's verbose output and the CLI print them.
STAGE_PATTERNS = {
    "data_loaded": re.compile(r"training on \d+ images"),
    "encoder_training": re.compile(r"^training:"),
    "concealment": re.compile(r"refin|conceal", re.IGNORECASE),
    "decoder_fine_tuning": re.compile(r"^fitting decoder"),
    "saved": re.compile(r"^saved "),
}


def children_cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def run_fit(command: list[str], log_path: Path) -> dict:
    """Run ``command``, time-stamping every progress line (tqdm's carriage returns included)."""
    marks: dict[str, list[float]] = {}  # stage -> [first, last] time its lines were seen
    cpu_before = children_cpu_seconds()
    started = time.perf_counter()
    environment = {**os.environ, "PYTHONUNBUFFERED": "1"}  # progress lines as they happen, not in bursts
    with subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=environment) as process, \
            open(log_path, "w", encoding="utf-8") as log:
        buffer = b""
        while chunk := process.stdout.read1(4096):
            buffer += chunk
            *lines, buffer = re.split(rb"[\r\n]", buffer)
            now = time.perf_counter() - started
            for raw in lines:
                line = raw.decode("utf-8", "replace").strip()
                if not line:
                    continue
                log.write(f"{now:9.2f} {line}\n")
                for stage, pattern in STAGE_PATTERNS.items():
                    if pattern.search(line):
                        marks.setdefault(stage, [round(now, 1)] * 2)[1] = round(now, 1)
        returncode = process.wait()
    seconds = time.perf_counter() - started
    if returncode != 0:
        raise SystemExit(f"bafo train failed with exit status {returncode}; see {log_path}")
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return {
        "seconds": round(seconds, 1),
        "minutes": round(seconds / 60, 2),
        "cpu_seconds": round(children_cpu_seconds() - cpu_before, 1),
        "cores_busy": round((children_cpu_seconds() - cpu_before) / seconds, 2),
        "peak_rss_mb": round(usage.ru_maxrss / 1024, 1),
        "stage_first_last_line_seconds": marks,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--utkface", required=True, help="UTKFace folder")
    parser.add_argument("--out", required=True, help="model directory to write (kept)")
    parser.add_argument("--json", help="also write the JSON result here")
    parser.add_argument("--log", help="progress log (default: OUT.log)")
    parser.add_argument("--emulate", choices=sorted(EMULATIONS),
                        help="cap torch's and oneDNN's instruction set in the fit (float32 instead of bf16)")
    parser.add_argument("--extra", nargs=argparse.REMAINDER, default=[],
                        help="further `bafo train` options (the default run passes none)")
    args = parser.parse_args()

    if args.emulate:  # set before torch starts here (machine() imports it) and inherited by the fit
        os.environ.update(EMULATIONS[args.emulate])
    out = Path(args.out)
    if out.exists():
        shutil.rmtree(out)
    bafo = shutil.which("bafo") or str(Path(sys.executable).with_name("bafo"))
    command = [bafo, "train", "--utkface", args.utkface, "--out", str(out), *args.extra]
    log_path = Path(args.log) if args.log else out.with_suffix(".log")
    before = machine()
    fit = run_fit(command, log_path)
    result = {
        "benchmark": "fit_time_utkface",
        "command": " ".join(["bafo", "train", "--utkface", "UTKFace", "--out", "MODEL", *args.extra]),
        "settings": "the CLI's defaults" if not args.extra else "defaults except the extra options",
        "emulate": args.emulate,
        "fit": fit,
        "goal_minutes": 30,
        "goal_met": fit["minutes"] <= 30,
        "machine_at_start": before,
        "machine_at_end": machine(),
        "log": str(log_path),
    }
    emit(result, args.json)


if __name__ == "__main__":
    main()
