"""Small shared helpers: the audit's warning class, progress reporting, JSON cleaning."""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable
from typing import Any

import numpy as np

__all__ = ["AuditWarning", "Progress", "warn", "to_jsonable"]


class AuditWarning(UserWarning):
    """Something in the audit input that the caller should know about (rows dropped, ...)."""


def warn(message: str, collected: list[str] | None = None) -> None:
    """Emit an :class:`AuditWarning` and keep its text for the report."""
    if collected is not None:
        collected.append(message)
    warnings.warn(message, AuditWarning, stacklevel=3)


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


def to_jsonable(value: Any) -> Any:
    """Recursively turn numpy scalars/arrays into Python types and NaN/inf into None."""
    if isinstance(value, dict):
        return {str(k): to_jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_jsonable(v) for v in value]
    if isinstance(value, np.ndarray):
        return [to_jsonable(v) for v in value.tolist()]
    if isinstance(value, (np.bool_, bool)):
        return bool(value)
    if isinstance(value, (np.integer,)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        value = float(value)
        return value if math.isfinite(value) else None
    return value
