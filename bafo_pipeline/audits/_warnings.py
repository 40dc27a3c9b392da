"""The audit's warning class and how warnings are kept for the report."""

from __future__ import annotations

import warnings

__all__ = ["AuditWarning", "warn"]


class AuditWarning(UserWarning):
    """Something in the audit input that the caller should know about (rows dropped, ...)."""


def warn(message: str, collected: list[str] | None = None) -> None:
    """Emit an :class:`AuditWarning` and keep its text for the report."""
    if collected is not None:
        collected.append(message)
    warnings.warn(message, AuditWarning, stacklevel=3)
