"""Progress reporting: a tqdm bar over training epochs, and the adapter the audit reports through."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

__all__ = ["ContinuedProgress", "Progress", "ProgressCallback", "epoch_progress"]


class Progress:
    """Adapt a progress sink to one ``advance(description)`` call per unit of work.

    Parameters
    ----------
    sink : callable, tqdm-like object or None
        A callable is called as ``sink(done, total, description)``; an object with
        ``update`` (a tqdm bar) gets its ``total`` set and ``update(1)`` per step.
        ``None`` is silent unless ``verbose``.
    total : int
        Number of steps.
    verbose : bool
        With no sink, show a tqdm bar on stderr.
    """

    def __init__(self, sink: Any, total: int, *, verbose: bool = False) -> None:
        self.total = total
        self.done = 0
        self._owned = False
        if sink is None and verbose:
            from tqdm.auto import tqdm

            sink = tqdm(total=total, desc="audit", leave=False)
            self._owned = True
        elif sink is not None and hasattr(sink, "update"):
            sink.total = total
            if hasattr(sink, "refresh"):
                sink.refresh()
        self.sink = sink

    def advance(self, description: str) -> None:
        self.done += 1
        sink = self.sink
        if sink is None:
            return
        if hasattr(sink, "update"):
            if hasattr(sink, "set_description_str"):
                sink.set_description_str(description, refresh=False)
            sink.update(1)
        elif callable(sink):
            sink(self.done, self.total, description)

    def close(self) -> None:
        if self._owned:
            self.sink.close()


ProgressCallback = Callable[[int, int, str], None]


class ContinuedProgress:
    """A progress sink that keeps counting across several jobs, each reporting from 1 (an audit in parts).

    Call :meth:`next_part` between jobs. Wraps a ``(done, total, description)``
    callable or a tqdm bar.
    """

    def __init__(self, sink: Any) -> None:
        self.sink, self.offset, self.total = sink, 0, 0

    def __call__(self, done: int, total: int, description: str = "") -> None:
        self.total = total
        if hasattr(self.sink, "update"):  # a tqdm bar
            self.sink.total = self.offset + total
            self.sink.n = self.offset + done
            self.sink.refresh()
        else:
            self.sink(self.offset + done, self.offset + total, description)

    def next_part(self) -> None:
        self.offset += self.total
        self.total = 0


class epoch_progress:
    """A tqdm bar over epochs when verbose, else a no-op callback."""

    def __init__(self, verbose: int, epochs: int, description: str = "training"):
        self.bar = None
        if verbose:
            from tqdm.auto import tqdm

            self.bar = tqdm(total=epochs, desc=description, unit="epoch")

    def __enter__(self):
        if self.bar is None:
            return None

        def on_epoch_end(record: dict) -> None:
            self.bar.update(1)
            postfix = {"loss": f"{record.get('loss', float('nan')):.1f}"}
            if "validation_loss" in record:
                postfix["val"] = f"{record['validation_loss']:.1f}"
            postfix["img_s"] = f"{record['images_per_second']:.0f}"
            self.bar.set_postfix(postfix)

        return on_epoch_end

    def __exit__(self, *exc) -> None:
        if self.bar is not None:
            self.bar.close()
