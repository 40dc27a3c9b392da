"""Scan and decode throughput of the UTKFace loader; prints one JSON object.

Usage::

    python benchmarks/decode_speed.py [--folder ../shared/data/utkface/UTKFace] [--n 2000]

The scan (name parsing + SHA-1 of every file + de-duplication) covers the
whole folder; decoding covers the first ``--n`` kept files, once per thread
count. Reading is warmed first, so the numbers measure decoding, not the disk.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

from bafo_pipeline.data.images import decode_images
from bafo_pipeline.data.utkface import scan_utkface

DEFAULT_FOLDER = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "utkface" / "UTKFace"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--folder", type=Path, default=DEFAULT_FOLDER)
    parser.add_argument("--n", type=int, default=2000, help="images to decode")
    parser.add_argument("--size", type=int, default=56)
    parser.add_argument("--n-jobs", type=int, nargs="+", default=[1, 2, 4])
    args = parser.parse_args()

    start = time.perf_counter()
    table, report = scan_utkface(args.folder)
    scan_s = time.perf_counter() - start

    paths = table["path"].tolist()[: args.n]
    for path in paths:  # warm the page cache
        Path(path).read_bytes()
    decode = {}
    for n_jobs in args.n_jobs:
        start = time.perf_counter()
        images, _, errors = decode_images(paths, args.size, n_jobs=n_jobs)
        seconds = time.perf_counter() - start
        decode[str(n_jobs)] = {
            "images": len(images),
            "errors": len(errors),
            "images_per_s": round(len(paths) / seconds),
        }

    print(
        json.dumps(
            {
                "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs",
                "folder_files": len(os.listdir(args.folder)),
                "scan_seconds": round(scan_s, 2),
                "kept": len(table),
                "malformed_or_unreadable": len(report.skipped),
                "duplicates_dropped": report.duplicates_dropped,
                "conflicting_groups_dropped": report.conflicting_groups_dropped,
                "conflicting_files_dropped": report.conflicting_files_dropped,
                "decode_by_n_jobs": decode,
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
