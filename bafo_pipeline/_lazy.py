"""A package's public names imported on first use (PEP 562 module ``__getattr__``).

``import bafo_pipeline.<module>`` then loads only what that module needs: a Ray actor that
encodes from an encoder bundle loads torch, not scikit-learn and the estimators.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable, Iterable
from typing import Any


def lazy_attributes(
    package: str, sources: dict[str, str], public: Iterable[str]
) -> tuple[Callable[[str], Any], Callable[[], list[str]]]:
    """``(__getattr__, __dir__)`` for ``package``, whose names come from the modules ``sources`` names.

    Parameters
    ----------
    package : str
        The package's ``__name__``; it must be importing (in ``sys.modules``).
    sources : dict of str to str
        Public name → the module (relative to ``package``) it is imported from on first use.
    public : iterable of str
        The package's ``__all__``, listed by ``dir()`` before any is imported.
    """
    namespace = sys.modules[package].__dict__
    names = frozenset(public)

    def __getattr__(name: str) -> Any:
        if name not in sources:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(sources[name], package), name)
        namespace[name] = value  # later lookups find it without calling __getattr__
        return value

    def __dir__() -> list[str]:
        return sorted({*namespace, *names})

    return __getattr__, __dir__
