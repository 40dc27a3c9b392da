"""The Ray Data export against the in-process export, on real UTKFace JPEG files, in one run.

Measures, with one local Ray cluster started once (its start-up is reported apart: a real
cluster is already running when a job is submitted), for each size given (``--images 3000
12000 all``; one size N means N and 4N; ``all`` is every file of the folder):

- in-process ``bafo encode`` (scan + export, what the CLI does, in this warm process) and
  its export loop alone;
- ``encode_dataset`` with 1 and 2 actors on the same files, end to end (the scan, with the
  file hashing in Ray tasks; actor start-up, encoding, writing, job file), and the rate
  inside the actors;
- the fixed cost and steady-state rate of each engine (a least-squares line through the sizes),
  and from it the size where Ray with 2 actors reaches 0.8x the in-process export;
- both as commands in fresh processes (``bafo encode`` vs ``bafo encode --engine ray``), largest size;
- that both engines write the same rows (same pseudonymous ids) and the same latents;
- the driver's peak memory for each size (child processes connected to the cluster).

Variants run interleaved (``--repeats`` rounds) and the median is reported, with the load
average before and after, since the development machine is shared. Prints JSON.

    python benchmarks/ray_scaling.py --utkface /work/shared/data/utkface/UTKFace \\
        --images 3000 12000 all --out docs/results/ray_scaling_cpu.json
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _machine import emit, machine  # noqa: E402

KEY = bytes(range(32))
#: Ray starts its worker processes at nice 15 (its ``worker_niceness``), below this process and below
#: the nice-10 jobs of a shared machine; the actors then get a fraction of the CPU the in-process export
#: gets. Both engines run at the same priority here.
SAME_PRIORITY = {"worker_niceness": 0}


def fitted_model(folder: Path) -> Path:
    """The default architecture with full concealment (untrained weights: speed does not depend on them), saved."""
    from bafo_pipeline import BAFOTransformer, make_synthetic_faces, save_model

    faces = make_synthetic_faces(256, random_state=0)
    model = BAFOTransformer(epochs=0, refine_epochs=1, random_state=0).fit(
        faces.images, sensitive_features=faces.sensitive_features
    )
    return save_model(model, folder / "model")


def sample_files(utkface: Path, n: int | None, seed: int = 0) -> list[str]:
    """n UTKFace files drawn at random (a name-ordered prefix would be a label-ordered subset); None: all of them."""
    names = sorted(p.name for p in utkface.iterdir() if p.name.endswith(".jpg"))
    n = len(names) if n is None else n
    if n > len(names):
        raise SystemExit(f"asked for {n} images, {utkface} has {len(names)}")
    chosen = np.random.default_rng(seed).choice(len(names), n, replace=False)
    return [str(utkface / names[i]) for i in chosen]  # in drawn order: every prefix is a random sample too


def write_manifest(paths: list[str], where: Path) -> Path:
    where.parent.mkdir(parents=True, exist_ok=True)
    pd.DataFrame({"path": paths}).to_csv(where, index=False)
    return where


def in_process(model_dir: Path, manifest: Path, out: Path) -> dict:
    """What ``bafo encode --manifest M --out F`` does: scan (hash every file) and export, with pseudonymous ids."""
    from bafo_pipeline import export_latents
    from bafo_pipeline.data import pseudonymous_ids, scan_source
    from bafo_pipeline.transformers import load_model, model_fingerprint

    started = time.perf_counter()
    estimator = load_model(model_dir)
    # The manifests live in a temporary folder and name the UTKFace files by absolute path.
    source, _ = scan_source(manifest=manifest, sensitive=(), allow_outside_root=True)
    scanned = time.perf_counter()
    report = export_latents(estimator, source, out, ids=pseudonymous_ids(source.content_hash, KEY),
                            metadata={"model_fingerprint": model_fingerprint(model_dir)}, overwrite=True, decoder="pil")
    finished = time.perf_counter()
    _check_written(report.n_written, manifest)
    return {"seconds": finished - started, "export_seconds": finished - scanned, "written": report.n_written}


def _check_written(n_written: int, manifest: Path) -> None:
    """Refuse to time a job that skipped images (beyond UTKFace's ~1% byte-identical duplicates)."""
    expected = len(pd.read_csv(manifest))
    if n_written < 0.95 * expected:
        raise SystemExit(f"{manifest}: {n_written} of {expected} images written; the timings would be meaningless")


def on_ray(model_dir: Path, manifest: Path, out: Path, workers: int, partition_rows: int | None) -> dict:
    from bafo_pipeline.pipeline.distributed import encode_dataset

    started = time.perf_counter()
    report = encode_dataset(model_dir, out, manifest=manifest, sensitive=(), id_key=KEY, workers=workers,
                            partition_rows=partition_rows, decoder="pil", overwrite=True, allow_outside_root=True)
    seconds = time.perf_counter() - started
    _check_written(report.n_written, manifest)
    parts = [json.loads(p.read_text()) for p in sorted(out.glob("_bafo_part-*.json"))]
    busy = sum(p["seconds"] for p in parts)
    return {"seconds": seconds, "written": report.n_written, "partitions": report.n_partitions,
            "actor_busy_seconds": busy, "rate_inside_actors": report.n_written / busy * workers}


def same_latents(local: Path, ray_out: Path) -> dict:
    """The two engines' rows (both keyed by the same pseudonymous ids) and latents, compared row by row."""
    from bafo_pipeline.io import read_latents

    expected, got = read_latents(local), read_latents(ray_out)
    by_id = dict(zip(expected.ids.tolist(), expected.latents))
    diffs = [float(np.max(np.abs(z - by_id[i]))) for i, z in zip(got.ids.tolist(), got.latents) if i in by_id]
    return {"rows_in_process": len(expected), "rows_ray": len(got), "same_ids": set(by_id) == set(got.ids.tolist()),
            "bit_identical_rows": int(sum(d == 0.0 for d in diffs)), "max_abs_difference": max(diffs) if diffs else None}


_DRIVER = (
    "import sys, resource, ray; sys.path.insert(0, sys.argv[1]);"
    "from ray_scaling import on_ray; from pathlib import Path;"
    "ray.init(address=sys.argv[2], log_to_driver=False, logging_level='WARNING');"
    "on_ray(Path(sys.argv[3]), Path(sys.argv[4]), Path(sys.argv[5]), int(sys.argv[6]), None);"
    "print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)"
)


def driver_peak_rss_mb(address: str, model_dir: Path, manifest: Path, out: Path, workers: int) -> float:
    """Peak resident memory of a driver process that runs one job on the running cluster."""
    output = subprocess.run(
        [sys.executable, "-c", _DRIVER, str(Path(__file__).parent), address, str(model_dir), str(manifest), str(out),
         str(workers)],
        check=True, capture_output=True, text=True,
    ).stdout
    return int(output.strip().splitlines()[-1]) / 1024


def cli_seconds(args: list[str]) -> float:
    """Wall time of one ``bafo`` command in a fresh process (imports, model load and all)."""
    started = time.perf_counter()
    subprocess.run([sys.executable, "-m", "bafo_pipeline.cli", *args], check=True, capture_output=True, text=True)
    return time.perf_counter() - started


def read_and_hash_rate(paths: list[str]) -> float:
    """Images/s one thread reads safely and hashes (SHA-1, then the keyed id): the planning pass, per core."""
    import pyarrow.fs as pafs

    from bafo_pipeline.data import pseudonymous_ids, read_file_bytes
    from bafo_pipeline.data.splits import content_hash

    filesystem = pafs.LocalFileSystem()
    started = time.perf_counter()
    hashes = [content_hash(read_file_bytes(filesystem, path)) for path in paths]
    pseudonymous_ids(hashes, KEY)
    return len(paths) / (time.perf_counter() - started)


class LoadSampler:
    """The 1-minute load average every few seconds while the benchmark runs (the machine is shared)."""

    def __init__(self, every_seconds: float = 5.0) -> None:
        import threading

        self.every, self.samples, self.stop = every_seconds, [], threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self.stop.wait(self.every):
            self.samples.append(os.getloadavg()[0])

    def __enter__(self) -> LoadSampler:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop.set()
        self.thread.join()

    def summary(self) -> dict:
        return {"during_median": round(statistics.median(self.samples), 2) if self.samples else None,
                "during_max": round(max(self.samples), 2) if self.samples else None}


def fit_line(sizes: list[int], seconds: list[float]) -> dict:
    """``t = fixed + n / rate`` through the sizes (least squares): a job's fixed cost and its steady-state rate."""
    slope, fixed = np.polyfit(np.asarray(sizes, float), np.asarray(seconds, float), 1)
    return {"fixed_seconds": round(float(fixed), 2), "images_per_second": round(1 / float(slope), 1)}


def size_reaching(ratio: float, fast: dict, slow: dict) -> float | None:
    """Images from which ``slow`` (fixed cost F, rate R) reaches ``ratio`` x the throughput of ``fast``, by the lines.

    ``n / (F_s + n / R_s) >= ratio * n / (F_f + n / R_f)``  <=>  ``n (1/R_f - ratio/R_s) >= ratio F_s - F_f``.
    """
    gain = 1 / fast["images_per_second"] - ratio / slow["images_per_second"]
    need = ratio * slow["fixed_seconds"] - fast["fixed_seconds"]
    if need <= 0:
        return 0.0
    return round(need / gain) if gain > 0 else None


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--utkface", type=Path, required=True, help="The UTKFace folder (real JPEG files).")
    parser.add_argument("--images", nargs="+", default=["3000"],
                        help="Sizes (ints, or 'all' for every file); one size N runs N and factor * N.")
    parser.add_argument("--factor", type=int, default=4, help="With one size, the larger run has factor * N images.")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--partition-rows", type=int, default=None)
    parser.add_argument("--out", type=Path, help="Also write the JSON here.")
    args = parser.parse_args(argv)
    import ray

    load_before = os.getloadavg()[0]
    load = LoadSampler()
    with load, tempfile.TemporaryDirectory(prefix="bafo-ray-bench-") as tmp:
        tmp = Path(tmp)
        model_dir = fitted_model(tmp)
        paths = sample_files(args.utkface, None)
        sizes = [len(paths) if s == "all" else int(s) for s in args.images]
        if len(sizes) == 1:
            sizes.append(sizes[0] * args.factor)
        sizes = sorted(set(sizes))
        if sizes[-1] > len(paths):
            raise SystemExit(f"asked for {sizes[-1]} images, {args.utkface} has {len(paths)}")
        paths = sample_files(args.utkface, sizes[-1])
        manifests = {n: write_manifest(paths[:n], tmp / f"m{n}.csv") for n in sizes}

        started = time.perf_counter()
        ray.init(num_cpus=os.cpu_count(), include_dashboard=False, log_to_driver=False, logging_level="ERROR",
                 _system_config=SAME_PRIORITY)
        cluster_start = time.perf_counter() - started
        address = ray.get_runtime_context().gcs_address
        on_ray(model_dir, write_manifest(paths[:64], tmp / "warm.csv"), tmp / "warm", 1, None)  # first worker start-up
        in_process(model_dir, write_manifest(paths[:512], tmp / "warm_local.csv"), tmp / "warm.parquet")

        rounds = {(name, n): [] for n in sizes for name in ("in_process", "ray_1", "ray_2", "cli_in_process", "cli_ray_2")}
        for _ in range(args.repeats):
            for n in sizes:
                rounds["in_process", n].append(in_process(model_dir, manifests[n], tmp / f"local{n}.parquet"))
                rounds["ray_2", n].append(on_ray(model_dir, manifests[n], tmp / f"ray2_{n}", 2, args.partition_rows))
                rounds["ray_1", n].append(on_ray(model_dir, manifests[n], tmp / f"ray1_{n}", 1, args.partition_rows))
            n = sizes[-1]
            common = ["encode", "--model", str(model_dir), "--overwrite", "--decoder", "pil", "--allow-outside-root"]
            rounds["cli_in_process", n].append({"seconds": cli_seconds(
                [*common, "--manifest", str(manifests[n]), "--sensitive", "", "--out", str(tmp / "cli.parquet")])})
            rounds["cli_ray_2", n].append({"seconds": cli_seconds(
                [*common, "--engine", "ray", "--manifest", str(manifests[n]), "--sensitive", "", "--out", str(tmp / "cli_ray"),
                 "--workers", "2", "--ray-address", address, "--id-key-file", str(tmp / "id.key")])})
        read_hash = read_and_hash_rate(paths[: sizes[0]])
        equal = same_latents(tmp / f"local{sizes[-1]}.parquet", tmp / f"ray2_{sizes[-1]}")
        memory = {f"{n}_images": round(driver_peak_rss_mb(address, model_dir, manifests[n], tmp / f"mem{n}", 2), 1)
                  for n in sizes}
        ray.shutdown()
    load_after = os.getloadavg()[0]

    def median(name, n, key="seconds"):
        runs = rounds[name, n]
        return statistics.median(r[key] for r in runs) if runs else None

    rates, ratios = {}, {}
    for n in sizes:
        rates[n] = {name: round(n / median(name, n), 1) for name in ("in_process", "ray_1", "ray_2")}
        rates[n]["in_process_export_loop_only"] = round(n / median("in_process", n, "export_seconds"), 1)
        rates[n]["ray_2_inside_actors"] = round(median("ray_2", n, "rate_inside_actors"), 1)
        rates[n]["ray_1_inside_actor"] = round(median("ray_1", n, "rate_inside_actors"), 1)
        ratios[n] = {"ray_2_actors_vs_in_process": round(rates[n]["ray_2"] / rates[n]["in_process"], 3),
                     "ray_1_actor_vs_in_process": round(rates[n]["ray_1"] / rates[n]["in_process"], 3),
                     "ray_2_vs_1_actor": round(rates[n]["ray_2"] / rates[n]["ray_1"], 3)}
    large = sizes[-1]
    cli = {"in_process_seconds": round(median("cli_in_process", large), 2),
           "ray_2_actors_seconds": round(median("cli_ray_2", large), 2)}
    cli["ray_vs_in_process"] = round(cli["in_process_seconds"] / cli["ray_2_actors_seconds"], 3)
    lines = {name: fit_line(sizes, [median(name, n) for n in sizes]) for name in ("in_process", "ray_1", "ray_2")}
    result = {
        "benchmark": "ray_scaling",
        "images": list(sizes),
        "images_per_second": {f"{n}_images": rates[n] for n in sizes},
        "ratios": {f"{n}_images": ratios[n] for n in sizes},
        "commands_cold_start": {"images": large, **cli},
        "fixed_cost_and_steady_rate": lines,
        "ray_2_actors_reach_by_the_lines_from_images": {
            "0.8x_in_process": size_reaching(0.8, lines["in_process"], lines["ray_2"]),
            "1.0x_in_process": size_reaching(1.0, lines["in_process"], lines["ray_2"])},
        "seconds": {f"{name}_{n}": [round(r["seconds"], 2) for r in runs] for (name, n), runs in rounds.items() if runs},
        "ray_cluster_start_seconds": round(cluster_start, 2),
        "partitions": {f"{n}_images": rounds["ray_2", n][0]["partitions"] for n in sizes},
        "latents_equal": equal,
        "read_and_hash_images_per_second_one_thread": round(read_hash, 1),
        "driver_peak_rss_mb": memory,
        "load_average_1min": {"before": round(load_before, 2), "after": round(load_after, 2), **load.summary()},
        "settings": {"source": f"{args.utkface.name}: real UTKFace JPEGs (200x200), a seeded random sample",
                     "image_size": 56, "batch_size": 512, "concealment": "full", "decoder": "pil",
                     "precision": "auto", "repeats": args.repeats, "statistic": "median",
                     "ray_version": ray.__version__, "partition_rows": args.partition_rows or "auto",
                     "in_process": "scan_manifest + export_latents in this (warm) process, as bafo encode does",
                     "ray_engine": "encode_dataset on the running local cluster (workers at nice 0, as this process): scan, "
                                   "actor start-up, encoding, writing, job file",
                     "commands_cold_start": "bafo encode vs bafo encode --engine ray, each a fresh process"},
        "machine": machine(),
    }
    return emit(result, args.out)


if __name__ == "__main__":
    main()
