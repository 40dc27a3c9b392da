"""End-to-end export throughput: JPEG files on disk -> concealed latents in Parquet, against two references.

Measured side by side in one run, for ``--rounds`` rounds (each round runs
them one after the other, and the ratios are taken within a round):

- the **Pillow decode ceiling**: decoding + resizing alone with the project's
  Pillow decoder in its thread pool (``decode_images``), the ceiling issue 15
  set its target against (the export >= 70% of it on 2 cores), and how many
  cores it kept busy (its threads hold the GIL for part of each image);
- the **process decode ceiling**: the same decoding alone in the worker
  processes the export now uses on a CPU (``iter_decoded_batches_in_processes``
  with the export's process count), and the cores it kept busy; it exceeds
  the thread ceiling wherever the GIL bounded that;
- the **export** (``export_latents``, concealment ``"full"``, its automatic
  choice of threads or processes), with how its time was spent: waiting for
  decoded batches, encoding, writing, and the CPU time of the calling thread,
  of its other threads and of its decoder processes;
- the **export in threads** (``decode_processes=0``, the decoding before
  processes), when the export chose processes: the gain, side by side;
- the **DataLoader loop** a user would write: a torch ``DataLoader`` with 2
  worker processes decoding with Pillow, the estimator's public ``transform``,
  ``pandas.to_parquet`` (target: the export >= 2x it).

With ``--folder`` it reads real JPEG files (a seeded sample of ``--images`` of
them, e.g. UTKFace's 200x200 faces); without, it writes synthetic 200x200
quality-90 JPEGs. ``--emulate avx2`` reruns itself with PyTorch's and oneDNN's
kernels capped at AVX2 (``ATEN_CPU_CAPABILITY=avx2``,
``ONEDNN_MAX_CPU_ISA=AVX2``), as on a CPU without AVX512 and bf16; ONNX
Runtime has no such cap and keeps the real CPU's kernels (the JSON says so).
With ``--decoder torch`` it also measures the batched decoder on the model's
device (the GPU ceiling). Peak memory is measured in child processes for N and
2N images: the exporting process's peak RSS, its decoder processes' peak RSS
(which counts the pages they share with it after the fork), the memory only
the decoder processes hold (private pages: what forking them adds) and the
peak total PSS of all (shared pages counted by share), both sampled every
50 ms; none may grow with the number of images. Prints JSON.

    python benchmarks/encode_throughput.py [--folder DIR] [--images 3000] [--emulate avx2]
        [--precision auto|float32|bfloat16] [--rounds 3]
        [--decoder auto|pil|torch] [--device auto] [--skip-memory] [--skip-dataloader] [--out FILE]
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
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _machine import emit, machine  # noqa: E402

EMULATIONS = {"avx2": {"ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2"}}
IMAGE_SIZE = (56, 56)


def write_jpegs(folder: Path, n: int) -> list[str]:
    """n distinct 200x200 synthetic faces as quality-90 JPEGs (like UTKFace's files)."""
    from bafo_pipeline import make_synthetic_faces

    paths = []
    for start in range(0, n, 500):
        faces = make_synthetic_faces(min(500, n - start), image_size=200, random_state=start)
        for i, image in enumerate(faces.images):
            path = folder / f"{start + i:06d}.jpg"
            Image.fromarray(image).save(path, quality=90)
            paths.append(str(path))
    return paths


def sample_files(folder: Path, n: int) -> list[str]:
    """A seeded sample of n JPEG files of ``folder`` (sorted names would all start with one age)."""
    files = sorted(str(p) for p in folder.iterdir() if p.suffix.lower() in (".jpg", ".jpeg"))
    if len(files) < n:
        raise SystemExit(f"{folder} holds {len(files)} JPEG files, fewer than --images {n}")
    return [files[i] for i in sorted(np.random.default_rng(0).choice(len(files), n, replace=False))]


def fitted_model(device: str = "auto", precision: str = "auto"):
    """The default architecture with its full concealment (weights untrained: speed does not depend on them)."""
    from bafo_pipeline import BAFOTransformer, make_synthetic_faces

    faces = make_synthetic_faces(256, random_state=0)
    return BAFOTransformer(
        epochs=0, refine_epochs=1, device=device, precision=precision, random_state=0
    ).fit(faces.images, sensitive_features=faces.sensitive_features)


def children_cpu() -> float:
    """CPU seconds of this process's finished (waited-for) children: decoder processes once shut down."""
    times = os.times()
    return times.children_user + times.children_system


def export_once(model, paths: list[str], out: Path, batch_size: int, decoder: str = "auto",
                decode_processes: int | None = None) -> dict:
    """One timed export of ``paths``: images/s, how the time was spent, and the settings the file records."""
    from bafo_pipeline import export_latents
    from bafo_pipeline.data import ImageFiles
    from bafo_pipeline.io import read_metadata

    started, children = time.perf_counter(), children_cpu()
    # ids in file order: the timing is of decoding and encoding (pseudonymous ids need the scan's hashes).
    report = export_latents(model, ImageFiles(pd.DataFrame({"path": paths})), out, batch_size=batch_size, overwrite=True,
                            decoder=decoder, ids=np.arange(len(paths)), decode_processes=decode_processes)
    seconds = time.perf_counter() - started
    processes_cpu = children_cpu() - children
    assert report.n_written == len(paths), report.skipped[:3]
    recorded = read_metadata(out)
    timings = report.timings
    other_threads_cpu = timings["process_cpu"] - timings["caller_cpu"]
    return {
        "images_per_second": len(paths) / seconds,
        "settings": {key: recorded[key] for key in ("precision", "decoder", "decode_processes")},
        "cores_busy": round((timings["process_cpu"] + processes_cpu) / seconds, 2),
        "time_shares": {
            "waiting_for_decoder": round(timings["waiting_for_decoder"] / timings["wall"], 3),
            "encoding": round(timings["encoding"] / timings["wall"], 3),
            "writing": round(timings["writing"] / timings["wall"], 3),
            "caller_thread_cpu_per_wall": round(timings["caller_cpu"] / timings["wall"], 3),
            "other_threads_cpu_per_wall": round(other_threads_cpu / timings["wall"], 3),
            "decoder_processes_cpu_per_wall": round(processes_cpu / seconds, 3),
        },
        "cpu_microseconds_per_image": {
            "caller_thread": round(timings["caller_cpu"] / len(paths) * 1e6, 1),
            "other_threads": round(other_threads_cpu / len(paths) * 1e6, 1),
            "decoder_processes": round(processes_cpu / len(paths) * 1e6, 1),
        },
    }


def warm_up(model, paths: list[str], out: Path, batch_size: int, decoder: str) -> None:
    """Kernels, decoder handles and the inference runtime, built before anything is timed."""
    from bafo_pipeline import export_latents
    from bafo_pipeline.data import ImageFiles

    export_latents(model, ImageFiles(pd.DataFrame({"path": paths[:batch_size]})), out, batch_size=batch_size, overwrite=True,
                   decoder=decoder, ids=np.arange(len(paths[:batch_size])))
    model.transform(np.zeros((8, *IMAGE_SIZE, 3), dtype=np.uint8))


def pil_decode_ceiling(paths: list[str]) -> tuple[float, float]:
    """images/s of decoding alone in Pillow's thread pool, and the cores it kept busy (process CPU time / wall time)."""
    from bafo_pipeline.data import decode_images

    started, cpu = time.perf_counter(), time.process_time()
    images, kept, _ = decode_images(paths, size=IMAGE_SIZE)
    assert len(kept) == len(paths)
    seconds = time.perf_counter() - started
    return len(paths) / seconds, (time.process_time() - cpu) / seconds


def process_decode_ceiling(paths: list[str], batch_size: int, n_processes: int) -> tuple[float, float]:
    """images/s of decoding alone in ``n_processes`` worker processes (the export's decoder), and the cores busy."""
    from bafo_pipeline.data.decode_pool import iter_decoded_batches_in_processes

    started, cpu = time.perf_counter(), time.process_time() + children_cpu()
    n = sum(len(rows) for rows, _, _ in iter_decoded_batches_in_processes(paths, batch_size, IMAGE_SIZE,
                                                                          n_processes=n_processes))
    seconds = time.perf_counter() - started
    assert n == len(paths)
    return len(paths) / seconds, (time.process_time() + children_cpu() - cpu) / seconds


class PillowFiles:
    """The torch Dataset a user would write: open with Pillow, convert to RGB, resize, to an array."""

    def __init__(self, paths: list[str]):
        self.paths = paths

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> np.ndarray:
        with Image.open(self.paths[index]) as image:
            return np.asarray(image.convert("RGB").resize(IMAGE_SIZE[::-1]))


def dataloader_loop(model, paths: list[str], out: Path, batch_size: int) -> float:
    """images/s of DataLoader (2 workers, Pillow) -> ``model.transform`` -> ``pandas.to_parquet``."""
    from torch.utils.data import DataLoader

    started = time.perf_counter()
    loader = DataLoader(PillowFiles(paths), batch_size=batch_size, num_workers=2)
    latents = np.concatenate([model.transform(batch.numpy()) for batch in loader])
    pd.DataFrame(latents, columns=model.get_feature_names_out()).to_parquet(out)
    return len(paths) / (time.perf_counter() - started)


def device_decode_ceiling(paths: list[str], batch_size: int, device) -> float:
    """Batched decode + resize on ``device`` alone (what the export's torch decoder can deliver)."""
    import torch

    from bafo_pipeline.data.jpeg_tensors import iter_tensor_batches

    for _ in iter_tensor_batches(paths[:batch_size], batch_size=batch_size, size=IMAGE_SIZE, device=device):
        pass  # warm-up
    started = time.perf_counter()
    n = sum(len(indices) for indices, _, _ in iter_tensor_batches(paths, batch_size=batch_size, size=IMAGE_SIZE, device=device))
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    assert n == len(paths)
    return len(paths) / (time.perf_counter() - started)


def _pss_kb(pid: int) -> int:
    """Proportional set size of ``pid`` (pages shared with other processes counted by share), 0 if gone."""
    try:
        with open(f"/proc/{pid}/smaps_rollup") as handle:
            return next(int(line.split()[1]) for line in handle if line.startswith("Pss:"))
    except (OSError, StopIteration):
        return 0


def _private_kb(pid: int) -> int:
    """Memory only ``pid`` holds (private clean + dirty pages: what a forked worker adds), 0 if gone."""
    try:
        with open(f"/proc/{pid}/smaps_rollup") as handle:
            return sum(int(line.split()[1]) for line in handle if line.startswith(("Private_Clean:", "Private_Dirty:")))
    except OSError:
        return 0


def _children(pid: int) -> list[int]:
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as handle:
            return [int(child) for child in handle.read().split()]
    except OSError:
        return []


def memory_child(argv: list[str]) -> None:
    """In a child process: export the listed files and print its memory (and its decoder processes') as JSON."""
    import resource
    import threading

    listing, batch_size, decoder, device, precision = argv
    paths = Path(listing).read_text().splitlines()
    model = fitted_model(device, precision)
    peaks = {"pss_total_kb": 0, "pss_decoders_kb": 0, "private_decoders_kb": 0, "decoders_seen": 0}
    done = threading.Event()

    def sample() -> None:  # workers live only during the export: sample every 50 ms
        me = os.getpid()
        while not done.wait(0.05):
            children = _children(me)
            decoders = sum(_pss_kb(child) for child in children)
            peaks["pss_decoders_kb"] = max(peaks["pss_decoders_kb"], decoders)
            peaks["private_decoders_kb"] = max(peaks["private_decoders_kb"], sum(_private_kb(c) for c in children))
            peaks["pss_total_kb"] = max(peaks["pss_total_kb"], _pss_kb(me) + decoders)
            peaks["decoders_seen"] = max(peaks["decoders_seen"], len(children))

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    export = export_once(model, paths, Path(listing).parent / "child.parquet", int(batch_size), decoder)
    done.set()
    sampler.join()
    print(json.dumps({
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        # the largest decoder process's peak RSS: it counts the pages it shares with the exporting process (fork)
        "decoder_process_peak_rss_mb": round(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024, 1),
        "peak_pss_total_mb": round(peaks["pss_total_kb"] / 1024, 1),
        "peak_pss_decoders_mb": round(peaks["pss_decoders_kb"] / 1024, 1),
        "peak_private_decoders_mb": round(peaks["private_decoders_kb"] / 1024, 1),
        "decoder_processes": export["settings"]["decode_processes"],
        "decoder_processes_seen": peaks["decoders_seen"],
    }))


def peak_memory(paths: list[str], folder: Path, batch_size: int, decoder: str, device: str, precision: str) -> dict:
    """Peak memory of a child process exporting ``paths``, its decoder processes included."""
    listing = folder / "child_paths.txt"
    listing.write_text("\n".join(paths))
    code = "import sys; sys.path.insert(0, sys.argv[1]); from encode_throughput import memory_child; memory_child(sys.argv[2:])"
    output = subprocess.run(
        [sys.executable, "-c", code, str(Path(__file__).parent), str(listing), str(batch_size), decoder, device,
         precision],
        check=True, capture_output=True, text=True,
    ).stdout
    return json.loads(output.strip().splitlines()[-1])


def _median(values: list[float], digits: int = 1) -> float:
    return round(statistics.median(values), digits)


def _optional_median(values: list, digits: int = 1) -> float | None:
    values = [v for v in values if v is not None]
    return _median(values, digits) if values else None


def run(args) -> dict:
    from bafo_pipeline._utils import resolve_device

    device = resolve_device(args.device)
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        n_files = args.images if args.skip_memory else 2 * args.images
        all_paths = sample_files(args.folder, n_files) if args.folder else write_jpegs(folder, n_files)
        paths = all_paths[: args.images]
        for path in all_paths:  # into the page cache, so no variant pays the first read
            Path(path).read_bytes()
        model = fitted_model(args.device, args.precision)
        warm_up(model, paths, folder / "latents.parquet", args.batch_size, args.decoder)
        rounds = []
        for _ in range(args.rounds):
            ceiling, ceiling_cores = pil_decode_ceiling(paths)
            export = export_once(model, paths, folder / "latents.parquet", args.batch_size, args.decoder)
            processes = export["settings"]["decode_processes"]
            process_ceiling, process_cores = (
                process_decode_ceiling(paths, args.batch_size, processes) if processes else (None, None))
            in_threads = None if not processes else export_once(
                model, paths, folder / "threads.parquet", args.batch_size, args.decoder, decode_processes=0)
            loop = None if args.skip_dataloader else dataloader_loop(model, paths, folder / "loop.parquet", args.batch_size)
            rounds.append({"pil_decode_ceiling": round(ceiling, 1), "pil_decode_ceiling_cores_busy": round(ceiling_cores, 2),
                           "process_decode_ceiling": None if process_ceiling is None else round(process_ceiling, 1),
                           "process_decode_ceiling_cores_busy": None if process_cores is None else round(process_cores, 2),
                           "export": export,
                           "export_in_threads": in_threads,
                           "dataloader_loop": None if loop is None else round(loop, 1),
                           "load_average_1min": round(os.getloadavg()[0], 2)})
        device_ceiling = device_decode_ceiling(paths, args.batch_size, device) if args.decoder == "torch" else None
        memory = None if args.skip_memory else {
            f"{n}_images": peak_memory(all_paths[:n], folder, args.batch_size, args.decoder, args.device, args.precision)
            for n in (args.images, 2 * args.images)
        }
    exports = [r["export"]["images_per_second"] for r in rounds]
    result = {
        "benchmark": "encode_throughput",
        "export_images_per_second": _median(exports),
        "pil_decode_ceiling_images_per_second": _median([r["pil_decode_ceiling"] for r in rounds]),
        "fraction_of_pil_ceiling": _median([r["export"]["images_per_second"] / r["pil_decode_ceiling"] for r in rounds], 3),
        "process_decode_ceiling_images_per_second": _optional_median([r["process_decode_ceiling"] for r in rounds]),
        "fraction_of_process_ceiling": _optional_median(
            [r["export"]["images_per_second"] / r["process_decode_ceiling"] for r in rounds if r["process_decode_ceiling"]], 3),
        "export_cores_busy": _median([r["export"]["cores_busy"] for r in rounds], 2),
        "export_in_threads_images_per_second": _optional_median(
            [r["export_in_threads"]["images_per_second"] for r in rounds if r["export_in_threads"]]),
        "export_in_threads_fraction_of_pil_ceiling": _optional_median(
            [r["export_in_threads"]["images_per_second"] / r["pil_decode_ceiling"] for r in rounds if r["export_in_threads"]], 3),
        "speedup_over_export_in_threads": _optional_median(
            [r["export"]["images_per_second"] / r["export_in_threads"]["images_per_second"] for r in rounds
             if r["export_in_threads"]], 2),
        "dataloader_loop_images_per_second": None if args.skip_dataloader else _median([r["dataloader_loop"] for r in rounds]),
        "speedup_over_dataloader_loop": None if args.skip_dataloader else _median(
            [r["export"]["images_per_second"] / r["dataloader_loop"] for r in rounds], 2),
        "device_decode_ceiling_images_per_second": None if device_ceiling is None else round(device_ceiling, 1),
        "peak_memory": memory,
        "rounds": [{**r, **{key: {**r[key], "images_per_second": round(r[key]["images_per_second"], 1)}
                            for key in ("export", "export_in_threads") if r[key]}} for r in rounds],
        "settings": {
            "images": args.images, "rounds": args.rounds,
            "source": str(args.folder) if args.folder else "synthetic 200x200 JPEG, quality 90",
            "image_size": IMAGE_SIZE[0], "batch_size": args.batch_size, "concealment": "full", "device": str(device),
            **rounds[0]["export"]["settings"], "emulate": args.emulate,
            "dataloader_loop": "DataLoader(num_workers=2, Pillow open/convert/resize) -> transform -> pandas.to_parquet",
        },
        "load_average_1min_before": round(load_before[0], 2),
        "machine": machine(),
    }
    return result


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--folder", type=Path, help="Real JPEG files (default: synthetic ones).")
    parser.add_argument("--images", type=int, default=3000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=512)
    parser.add_argument("--decoder", choices=["auto", "pil", "torch"], default="auto")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--precision", choices=["auto", "float32", "bfloat16"], default="auto")
    parser.add_argument("--emulate", choices=sorted(EMULATIONS), help="Cap torch's and oneDNN's instruction set.")
    parser.add_argument("--skip-memory", action="store_true", help="Skip the two child-process memory runs.")
    parser.add_argument("--skip-dataloader", action="store_true", help="Skip the DataLoader loop.")
    parser.add_argument("--out", type=Path, help="Also write the JSON here.")
    args = parser.parse_args(argv)
    if args.emulate and any(os.environ.get(k) != v for k, v in EMULATIONS[args.emulate].items()):
        # The caps are read when torch and oneDNN start: rerun in a fresh process with them set.
        env = {**os.environ, **EMULATIONS[args.emulate]}
        command = [sys.executable, str(Path(__file__).resolve()), *(sys.argv[1:] if argv is None else argv)]
        completed = subprocess.run(command, env=env, check=True, stdout=subprocess.PIPE, text=True)
        result = json.loads(completed.stdout)
        print(completed.stdout, end="")
        return result
    result = run(args)
    return emit(result, args.out)


if __name__ == "__main__":
    main()
