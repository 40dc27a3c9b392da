"""Where the fixed cost of a Ray export job goes: a timeline of one job on a running local cluster.

Runs ``encode_dataset`` on real UTKFace JPEGs (a seeded sample) on a local Ray cluster that
is started once and not counted, and records wall-clock marks on the driver (model load and
fingerprint, key, scan with its file hashing, plan, resume check, Ray Data start, first
and last partition back, job file) and inside every actor (constructor entered, model
received, each partition's start and end). The actor's marks come from a subclass of
:class:`~bafo_pipeline.pipeline.partitions.PartitionWriter` defined here (shipped by value)
that only adds timestamps to the records it returns. Separately, in fresh processes, it
measures what an actor's module chain costs to import and what a first batch costs more
than the next (warm-up). Each actor also reports which heavy libraries it had loaded once
constructed (scikit-learn, pandas, ...). Jobs run ``--repeats`` times; the median of each
mark is reported.

    python benchmarks/ray_fixed_cost.py --utkface /work/shared/data/utkface/UTKFace \\
        --images 3000 --out docs/results/ray_fixed_cost_cpu.json
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _machine import emit, machine  # noqa: E402
from ray_scaling import KEY, SAME_PRIORITY, fitted_model, sample_files, write_manifest  # noqa: E402

from bafo_pipeline.pipeline import distributed  # noqa: E402
from bafo_pipeline.pipeline.partitions import PartitionWriter  # noqa: E402
from bafo_pipeline.transformers import BAFOTransformer, load_model  # noqa: E402


HEAVY = ("torch", "sklearn", "scipy", "pandas", "pyarrow", "ray.data", "PIL", "bafo_pipeline.transformers")


class TimedWriter(PartitionWriter):
    """The engine's writer, plus wall-clock marks in the records it returns (not in the files)."""

    def __init__(self, *args, **kwargs) -> None:
        self.constructed_at = time.time()
        self.pid = os.getpid()
        self.package = str(Path(sys.modules[PartitionWriter.__module__].__file__).parents[2])
        self.loaded_before = [m for m in HEAVY if m in sys.modules]
        super().__init__(*args, **kwargs)
        self.model_ready_at = time.time()
        self.loaded_after = [m for m in HEAVY if m in sys.modules]

    def write_or_report(self, partition, rows, **options):
        started = time.time()
        record = super().write_or_report(partition, rows, **options)
        return {**record, "t_actor_constructed": self.constructed_at, "t_model_ready": self.model_ready_at,
                "t_started": started, "t_finished": time.time(), "pid": self.pid,
                "package": self.package, "loaded_when_called": self.loaded_before,
                "loaded_once_constructed": self.loaded_after}


class Timeline:
    """Wraps the driver's steps of ``encode_dataset`` to record when each starts and ends."""

    STEPS = ("_model", "load_id_key", "make_file_plan", "_resume_state", "_pool", "_run_planned", "_job_record")

    def __init__(self) -> None:
        self.marks: dict[str, float] = {}
        self.originals = {name: getattr(distributed, name) for name in self.STEPS}

    def __enter__(self) -> Timeline:
        for name, function in self.originals.items():
            setattr(distributed, name, self._timed(name, function))
        distributed.PartitionWriter = TimedWriter
        collect = distributed._collect

        def timed_collect(results, progress, files):
            self.marks["ray_data_execution_start"] = time.time()
            first = []

            def progress_first(n):
                if not first:
                    first.append(time.time())
                    self.marks["first_partition_back"] = first[0]
                if progress is not None:
                    progress(n)

            stats = collect(results, progress_first, files)
            self.marks["last_partition_back"] = time.time()
            self.stats = stats
            return stats

        self.collect = collect
        distributed._collect = timed_collect
        return self

    def __exit__(self, *exc) -> None:
        for name, function in self.originals.items():
            setattr(distributed, name, function)
        distributed.PartitionWriter = PartitionWriter
        distributed._collect = self.collect

    def _timed(self, name, function):
        def wrapper(*args, **kwargs):
            self.marks[f"{name}_start"] = time.time()
            try:
                return function(*args, **kwargs)
            finally:
                self.marks[f"{name}_end"] = time.time()

        return wrapper


def one_job(model_dir: Path, manifest: Path, out: Path, workers: int) -> dict:
    """Seconds of each phase of one job, from the driver's and the actors' marks."""
    with Timeline() as timeline:
        started = time.time()
        report = distributed.encode_dataset(model_dir, out, manifest=manifest, sensitive=(), id_key=KEY,
                                            workers=workers, decoder="pil", overwrite=True, allow_outside_root=True)
        ended = time.time()
    m, stats = timeline.marks, timeline.stats
    constructed = sorted({s["t_actor_constructed"] for s in stats})
    ready = sorted({s["t_model_ready"] for s in stats})
    first_work = min(s["t_started"] for s in stats)
    by_actor: dict[int, list[dict]] = {}
    for s in stats:
        by_actor.setdefault(s["pid"], []).append(s)
    firsts = [min(v, key=lambda s: s["t_started"]) for v in by_actor.values()]
    later = [s for v in by_actor.values() for s in sorted(v, key=lambda s: s["t_started"])[1:]]
    rate_first = sum(s["rows_written"] for s in firsts) / sum(s["t_finished"] - s["t_started"] for s in firsts)
    rate_later = (sum(s["rows_written"] for s in later) / sum(s["t_finished"] - s["t_started"] for s in later)
                  if later else None)
    busy = sum(s["t_finished"] - s["t_started"] for s in stats)
    last_finish = {pid: max(s["t_finished"] for s in v) for pid, v in by_actor.items()}
    return {
        "total": ended - started,
        "model_load_and_fingerprint": m["_model_end"] - m["_model_start"],
        "key": m["load_id_key_end"] - m["load_id_key_start"],
        "scan_and_plan": m["make_file_plan_end"] - m["make_file_plan_start"],
        "resume_check_and_plan_file": m["_pool_start"] - m["_resume_state_start"],
        "pool_resources": m["_pool_end"] - m["_pool_start"],
        "partition_items": m["ray_data_execution_start"] - m["_run_planned_start"],
        "until_first_actor_constructed": constructed[0] - m["ray_data_execution_start"],
        "until_last_actor_constructed": constructed[-1] - m["ray_data_execution_start"],
        "model_received_in_actor": statistics.median(r - c for r, c in zip(ready, constructed)),
        "actor_ready_until_first_partition_starts": first_work - ready[0],
        "until_first_partition_back": m["first_partition_back"] - m["ray_data_execution_start"],
        "ray_data_execution": m["last_partition_back"] - m["ray_data_execution_start"],
        "partition_work_busy_seconds": busy,
        "first_actor_idle_at_the_end": max(last_finish.values()) - min(last_finish.values()),
        "after_last_partition": ended - m["last_partition_back"],
        "partitions_per_actor": sorted(len(v) for v in by_actor.values()),
        "actors": len(by_actor),
        "rate_first_partition_per_actor": rate_first,
        "rate_later_partitions_per_actor": rate_later,
        "written": report.n_written,
        "actor_package": sorted({s["package"] for s in stats}),
        "actor_libraries_once_constructed": sorted({m for s in stats for m in s["loaded_once_constructed"]}),
        "actor_libraries_before_the_writer": sorted({m for s in stats for m in s["loaded_when_called"]}),
        "actor_model": sorted({s.get("actor_model", "estimator") for s in stats}),
    }


class EmptyActor:
    """An actor that imports nothing and does nothing: what any Ray Data actor pool costs to start."""

    def __call__(self, batch):
        return batch


def empty_pool_seconds(workers: int) -> float:
    """Wall time of a Ray Data job whose actor pool of ``workers`` does nothing (worker start, Ray Data)."""
    import ray

    started = time.time()
    ray.data.from_items([{"x": i} for i in range(2 * workers)], override_num_blocks=2 * workers).map_batches(
        EmptyActor, batch_size=1, compute=ray.data.ActorPoolStrategy(size=workers), num_cpus=1).materialize()
    return time.time() - started


_IMPORT = "import time; t = time.perf_counter(); import {module}; print(time.perf_counter() - t)"


def import_seconds(module: str, repeats: int) -> float:
    """Median wall time of importing ``module`` in a fresh interpreter (what a fresh actor pays)."""
    runs = []
    for _ in range(repeats):
        output = subprocess.run([sys.executable, "-c", _IMPORT.format(module=module)], check=True,
                                capture_output=True, text=True).stdout
        runs.append(float(output.strip().splitlines()[-1]))
    return statistics.median(runs)


_FIRST_ENCODE = (
    "import sys, time, numpy as np; from bafo_pipeline.transformers import load_model;"
    "model = load_model(sys.argv[1]); h, w, c = model.input_format_.shape;"
    "images = np.zeros((64, c, h, w), np.uint8); times = [];"
    "exec('for _ in range(3):\\n t = time.perf_counter(); model.encode_images(images); times.append(time.perf_counter() - t)');"
    "print(*times)"
)


_FIRST_BUNDLE_ENCODE = (
    "import pickle, sys, time, numpy as np;"
    "bundle = pickle.load(open(sys.argv[1], 'rb')); t = time.perf_counter(); encoder = bundle.encoder('cpu');"
    "built = time.perf_counter() - t; h, w, c = encoder.image_shape;"
    "images = np.zeros((64, c, h, w), np.uint8); times = [];"
    "exec('for _ in range(3):\\n t = time.perf_counter(); encoder.encode_images(images); times.append(time.perf_counter() - t)');"
    "print(*times, built)"
)


def first_encode_seconds(model_dir: Path, repeats: int, bundle: Path | None = None) -> dict:
    """A fresh process's first ``encode_images`` call (folding the encoder, lazy imports) against its later ones:
    the estimator's, or (``bundle``) that of the encoder built from its bundle (then also the build's seconds)."""
    runs = []
    for _ in range(repeats):
        args = [_FIRST_ENCODE, str(model_dir)] if bundle is None else [_FIRST_BUNDLE_ENCODE, str(bundle)]
        output = subprocess.run([sys.executable, "-c", *args], check=True, capture_output=True, text=True).stdout
        runs.append([float(x) for x in output.split()])
    if bundle is not None:
        return {"first_call": round(statistics.median(r[0] for r in runs), 3),
                "later_calls": round(statistics.median(statistics.mean(r[1:3]) for r in runs), 3),
                "building_the_encoder": round(statistics.median(r[3] for r in runs), 3)}
    return {"first_call": round(statistics.median(r[0] for r in runs), 3),
            "later_calls": round(statistics.median(statistics.mean(r[1:]) for r in runs), 3)}


def heavy_modules_imported(module: str) -> list[str]:
    """Which heavy third-party packages importing ``module`` pulls in."""
    code = (f"import sys; import {module}; "
            "print(' '.join(sorted(m for m in ('torch', 'sklearn', 'scipy', 'pandas', 'pyarrow', 'ray', 'ray.data', "
            "'tqdm', 'matplotlib', 'PIL', 'safetensors', 'fsspec') if m in sys.modules)))")
    return subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True).stdout.split()


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--utkface", type=Path, required=True)
    parser.add_argument("--images", type=int, default=3000)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args(argv)
    import ray

    load_before = os.getloadavg()[0]
    with tempfile.TemporaryDirectory(prefix="bafo-ray-cost-") as tmp:
        tmp = Path(tmp)
        model_dir = fitted_model(tmp)
        manifest = write_manifest(sample_files(args.utkface, args.images), tmp / "m.csv")
        ray.init(num_cpus=os.cpu_count(), include_dashboard=False, log_to_driver=False, logging_level="ERROR",
                 _system_config=SAME_PRIORITY)
        one_job(model_dir, write_manifest(sample_files(args.utkface, 64, seed=1), tmp / "w.csv"), tmp / "warm", 1)
        jobs, empty = [], []
        for _ in range(args.repeats):
            jobs.append(one_job(model_dir, manifest, tmp / "out", args.workers))
            empty.append(empty_pool_seconds(args.workers))
        ray.shutdown()
        first_encode = first_encode_seconds(model_dir, args.repeats)
        first_bundle_encode = None
        if hasattr(BAFOTransformer, "encoder_bundle"):  # this engine's actors encode with a bundle
            import pickle

            (tmp / "bundle.pkl").write_bytes(pickle.dumps(load_model(model_dir).encoder_bundle()))
            first_bundle_encode = first_encode_seconds(model_dir, args.repeats, bundle=tmp / "bundle.pkl")
    imports = {m: round(import_seconds(m, args.repeats), 3) for m in (
        "ray.data", "torch", "sklearn.base", "pandas", "ray.data, torch",
        "ray.data, torch, sklearn.base, pandas, PIL.Image",
        "ray.data, bafo_pipeline.pipeline.partitions",  # an actor's imports with a bundle
        "ray.data, bafo_pipeline.pipeline.partitions, bafo_pipeline.transformers")}  # ... with the estimator
    load_after = os.getloadavg()[0]
    phases = {k: round(statistics.median(j[k] for j in jobs), 3) for k in jobs[0]
              if isinstance(jobs[0][k], (int, float))}
    result = {
        "benchmark": "ray_fixed_cost",
        "images": args.images,
        "workers": args.workers,
        "phases_seconds_median": phases,
        "jobs": [{k: (round(v, 3) if isinstance(v, float) else v) for k, v in j.items()} for j in jobs],
        "empty_actor_pool_job_seconds": round(statistics.median(empty), 3),
        "import_seconds_fresh_process": imports,
        "encode_images_64_seconds_fresh_process": first_encode,
        "bundle_encoder_64_seconds_fresh_process": first_bundle_encode,
        "actor_module_chain_imports": heavy_modules_imported("bafo_pipeline.pipeline.partitions"),
        "load_average_1min": {"before": round(load_before, 2), "after": round(load_after, 2)},
        "package": str(Path(distributed.__file__).parents[2]),
        "actor_package": jobs[0]["actor_package"],
        "actor_model": jobs[0]["actor_model"],
        "actor_libraries_once_constructed": jobs[0]["actor_libraries_once_constructed"],
        "actor_libraries_before_the_writer": jobs[0]["actor_libraries_before_the_writer"],
        "settings": {"source": "real UTKFace JPEGs, a seeded random sample", "decoder": "pil", "repeats": args.repeats,
                     "statistic": "median", "ray_version": ray.__version__,
                     "cluster": "local, started once before the jobs and not counted; one warm-up job first"},
        "machine": machine(),
    }
    return emit(result, args.out)


if __name__ == "__main__":
    main()
