"""Decode image files with Pillow in worker processes, one batch ahead of the caller.

Pillow holds the GIL for part of every image (opening, EXIF, conversions), so
decoding threads, however many, deliver about one core's worth of images (on 2
cores the thread pool decoded about as fast as one worker process, and two
processes 1.5-2.1 times as fast: docs/PERFORMANCE.md). The
CPU export decodes in worker processes where that pays: each has its own GIL,
and the encoder runs in the calling process meanwhile.

The workers are forked, as torch's ``DataLoader`` forks its workers on Linux.
``spawn`` and ``forkserver`` children import the module that holds the task
function, and with it this package (torch, scikit-learn: 8-10 s and 800 MB per
process on the development machine), and they rerun an unguarded ``__main__``
script; a fork costs 40-65 ms for the first batch of a 1 GB process. Forking a
process that runs other threads is hazardous only for a child that needs a
lock one of those threads held at the fork (Python 3.12+ warns about it); a
worker runs nothing but :func:`~bafo_pipeline.data.images.decode_images` on
local files (Pillow, NumPy) and multiprocessing's queues, never torch, its
OpenMP threads or the caller's locks, so the warning is silenced for these
forks alone. Where ``fork`` is missing or unsafe (Windows; macOS, whose system
libraries are not fork-safe), :func:`processes_available` is False and callers
decode in threads.

Workers ignore Ctrl-C (the caller handles it and shuts them down) and exit when
their parent is gone; the pool lives in a ``with`` block, so no worker
outlives it, whatever ends the block.
"""

from __future__ import annotations

import multiprocessing
import os
import signal
import sys
import threading
import time
import warnings
from collections.abc import Iterator, Sequence
from concurrent.futures import Future, ProcessPoolExecutor
from contextlib import contextmanager, nullcontext
from functools import partial

import numpy as np

from .images import (
    DEFAULT_MAX_PIXELS,
    ImageDecodeError,
    Size,
    batches_one_ahead,
    check_max_pixels,
    check_size,
    decode_images,
    is_positive_int,
)

__all__ = [
    "MAX_PROCESSES",
    "MIN_IMAGES_FOR_PROCESSES",
    "DecodeProcesses",
    "choose_decode_processes",
    "iter_decoded_batches_in_processes",
    "processes_available",
]

START_METHOD = "fork"

#: Files per task sent to a worker: small enough to keep every worker busy to the end of a
#: batch, large enough that the task's overhead (~0.1 ms) is a few microseconds a file.
CHUNK_FILES = 32

#: Fewer images than this are decoded in threads: forking costs 40-65 ms, about what processes save
#: on a thousand images where they save most (native bf16 on 2 cores).
MIN_IMAGES_FOR_PROCESSES = 1024

#: At most this many decoder processes (as the thread pool's default, ``min(4, cores)``).
MAX_PROCESSES = 4

_FORK_WARNING = r"This process .* is multi-threaded, use of fork\(\) may lead to deadlocks in the child"


def processes_available() -> bool:
    """True where worker processes can be forked (Linux and the BSDs; not Windows or macOS)."""
    return START_METHOD in multiprocessing.get_all_start_methods() and sys.platform != "darwin"


def choose_decode_processes(n_images: int, cpu_budget: int) -> int:
    """Worker processes for decoding ``n_images`` beside an encoder allowed ``cpu_budget`` threads; 0: threads.

    Processes where they pay: the platform can fork, there are at least 2
    cores to share and at least :data:`MIN_IMAGES_FOR_PROCESSES` images;
    then one process per core of the budget, at most :data:`MAX_PROCESSES`
    (the operating system shares the cores between them and the encoder,
    which keeps one intra-op thread per Python thread).
    """
    if not processes_available() or cpu_budget < 2 or n_images < MIN_IMAGES_FOR_PROCESSES:
        return 0
    return min(MAX_PROCESSES, int(cpu_budget))


def _ignore_interrupts_and_orphaning(parent: int) -> None:
    """Worker setup: Ctrl-C is the caller's to handle; exit once the parent is gone."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(0.5)
        os._exit(1)

    threading.Thread(target=watch, daemon=True, name="bafo-decode-watchdog").start()


@contextmanager
def _forking():
    """Forks made in this block, without the multi-threaded fork warning (see the module's docstring)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=_FORK_WARNING, category=DeprecationWarning)
        yield


class DecodeProcesses:
    """A pool of forked decoder processes, for use in a ``with`` block.

    Parameters
    ----------
    n_processes : int
        Worker processes (at least 1).

    Notes
    -----
    Leaving the block shuts the workers down and waits for them (queued
    work is cancelled), also on an exception or ``KeyboardInterrupt``.
    """

    def __init__(self, n_processes: int) -> None:
        if not is_positive_int(n_processes):
            raise ValueError(f"n_processes must be a positive int, got {n_processes!r}")
        if not processes_available():
            raise RuntimeError(f"worker processes need the {START_METHOD!r} start method, which this platform lacks")
        self.n_processes = int(n_processes)
        self._pool: ProcessPoolExecutor | None = None
        self._forked = False

    def __enter__(self) -> "DecodeProcesses":
        self._forked = False
        self._pool = ProcessPoolExecutor(
            self.n_processes, mp_context=multiprocessing.get_context(START_METHOD),
            initializer=_ignore_interrupts_and_orphaning, initargs=(os.getpid(),),
        )
        return self

    def __exit__(self, *exc_info) -> None:
        pool, self._pool = self._pool, None
        if pool is not None:
            pool.shutdown(wait=True, cancel_futures=True)

    def submit(self, sources: Sequence[str], args: tuple) -> list[Future]:
        """Start decoding ``sources`` in chunks: one future per chunk of :data:`CHUNK_FILES` files."""
        if self._pool is None:
            raise RuntimeError("DecodeProcesses is used outside its with block")
        target_h, target_w, max_pixels = args
        task = partial(decode_images, size=(target_h, target_w), n_jobs=1, max_pixels=max_pixels)
        with nullcontext() if self._forked else _forking():  # the workers are forked at the first submit
            self._forked = True
            return [self._pool.submit(task, sources[i:i + CHUNK_FILES]) for i in range(0, len(sources), CHUNK_FILES)]

    @staticmethod
    def collect(futures: list[Future], sources: Sequence[str], args: tuple, strict: bool):
        """The batch's ``(images, kept_positions, errors)``, as :func:`decode_images` returns them."""
        target_h, target_w = args[0], args[1]
        images = np.empty((len(sources), target_h, target_w, 3), dtype=np.uint8)
        kept: list[np.ndarray] = []
        errors: list[tuple[str, str]] = []
        n_kept = 0
        for k, future in enumerate(futures):
            chunk_images, chunk_kept, chunk_errors = future.result()
            futures[k] = None  # let the chunk's arrays go
            if strict and chunk_errors:
                raise ImageDecodeError(*chunk_errors[0])
            images[n_kept:n_kept + len(chunk_kept)] = chunk_images
            n_kept += len(chunk_kept)
            kept.append(chunk_kept + k * CHUNK_FILES)
            errors.extend(chunk_errors)
        if n_kept < len(sources):
            images = images[:n_kept].copy()
        return images, np.concatenate(kept) if kept else np.zeros(0, np.int64), errors


def iter_decoded_batches_in_processes(
    paths: Sequence[str],
    batch_size: int = 256,
    size: Size = (56, 56),
    *,
    n_processes: int = 2,
    strict: bool = False,
    max_pixels: int | None = DEFAULT_MAX_PIXELS,
) -> Iterator[tuple[np.ndarray, np.ndarray, list[tuple[str, str]]]]:
    """:func:`~bafo_pipeline.data.images.iter_decoded_batches`, decoded in ``n_processes`` worker processes.

    The same pixels and the same skip reasons as the thread pool (the workers
    run :func:`~bafo_pipeline.data.images.decode_images`); the next batch is
    decoded while the caller holds the current one. Close the generator (or
    exhaust it) to stop the workers: ``contextlib.closing`` does it on any exit.

    Parameters
    ----------
    paths : sequence of str
        Local image files.
    batch_size : int, default=256
    size : int or (int, int), default=(56, 56)
    n_processes : int, default=2
    strict : bool, default=False
        Raise the first :class:`~bafo_pipeline.data.images.ImageDecodeError` instead of skipping.
    max_pixels : int or None, default=DEFAULT_MAX_PIXELS

    Yields
    ------
    indices, images, errors
        As :func:`~bafo_pipeline.data.images.iter_decoded_batches`.
    """
    target_h, target_w = check_size(size)
    check_max_pixels(max_pixels)
    if not is_positive_int(batch_size):
        raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
    return _batches(iter(paths), int(batch_size), (target_h, target_w, max_pixels), strict, DecodeProcesses(n_processes))


def _batches(paths: Iterator[str], batch_size: int, args: tuple, strict: bool, processes: DecodeProcesses):
    def finish(futures, batch):
        images, kept, errors = processes.collect(futures, batch, args, strict)
        return kept, images, errors

    with processes:  # one batch decoded ahead, as in the thread pool: the same memory
        yield from batches_one_ahead(paths, batch_size, lambda batch: processes.submit(batch, args), finish)
