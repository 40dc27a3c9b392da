"""Constructor-parameter checks for the package's estimators, run when ``fit`` starts.

scikit-learn validates its own estimators' parameters through a private module
(``sklearn.utils._param_validation``) that may change without notice between releases;
this is the small public-API-only version the package needs. An estimator lists, per
parameter, the rules any one of which a value must meet::

    _parameter_rules = {"epochs": [Interval(Integral, 1, None)], "device": [str, None]}

and decorates ``fit`` with :func:`checks_parameters`. A rule is an :class:`Interval`,
:class:`Options`, a type, ``None`` (the value ``None``), or one of the names ``"boolean"``,
``"random_state"`` and ``"verbose"``.
"""

from __future__ import annotations

import functools
from numbers import Integral, Real

import numpy as np


class InvalidParameterError(ValueError, TypeError):
    """A constructor parameter breaks its rules (a ``ValueError`` and a ``TypeError``, as scikit-learn's)."""


class Interval:
    """Numbers of ``kind`` (``Integral`` or ``Real``) between ``left`` and ``right`` (None: unbounded).

    ``closed`` is ``"left"``, ``"right"``, ``"both"`` or ``"neither"``. Booleans are never numbers here.
    """

    def __init__(self, kind: type, left: float | None, right: float | None, *, closed: str = "left"):
        if closed not in {"left", "right", "both", "neither"}:
            raise ValueError(f"closed must be 'left', 'right', 'both' or 'neither', got {closed!r}")
        self.kind, self.left, self.right, self.closed = kind, left, right, closed

    def accepts(self, value) -> bool:
        if isinstance(value, (bool, np.bool_)) or not isinstance(value, self.kind):
            return False
        if self.left is not None:
            if value < self.left or (value == self.left and self.closed in {"right", "neither"}):
                return False
        if self.right is not None:
            if value > self.right or (value == self.right and self.closed in {"left", "neither"}):
                return False
        return not (isinstance(value, Real) and np.isnan(value))

    def __str__(self) -> str:
        kind = "an int" if self.kind is Integral else "a float"
        low = "-inf" if self.left is None else self.left
        high = "inf" if self.right is None else self.right
        opening = "[" if self.closed in {"left", "both"} and self.left is not None else "("
        closing = "]" if self.closed in {"right", "both"} and self.right is not None else ")"
        return f"{kind} in the range {opening}{low}, {high}{closing}"


class Options:
    """Values of ``kind`` that are one of ``values``."""

    def __init__(self, kind: type, values):
        self.kind, self.values = kind, frozenset(values)

    def accepts(self, value) -> bool:
        return isinstance(value, self.kind) and not isinstance(value, (bool, np.bool_)) and value in self.values

    def __str__(self) -> str:
        kind = "a str" if self.kind is str else ("an int" if self.kind is Integral else f"a {self.kind.__name__}")
        return f"{kind} among {sorted(self.values, key=repr)}"


def StrOptions(values) -> Options:  # noqa: N802 (reads as the rule it builds)
    """Strings that are one of ``values``."""
    return Options(str, values)


_NAMED_RULES = {
    "boolean": (lambda v: isinstance(v, (bool, np.bool_)), "a bool"),
    "random_state": (
        lambda v: v is None or isinstance(v, np.random.RandomState)
        or (isinstance(v, Integral) and not isinstance(v, (bool, np.bool_)) and 0 <= v < 2**32),
        "None, an int in [0, 2**32) or a numpy RandomState",
    ),
    "verbose": (lambda v: isinstance(v, (Integral, np.bool_)), "an int or a bool"),
}


def _accepts(rule, value) -> bool:
    if rule is None:
        return value is None
    if isinstance(rule, str):
        return _NAMED_RULES[rule][0](value)
    if isinstance(rule, type):
        return isinstance(value, rule)
    return rule.accepts(value)


def _describe(rule) -> str:
    if rule is None:
        return "None"
    if isinstance(rule, str):
        return _NAMED_RULES[rule][1]
    if isinstance(rule, type):
        return f"an instance of {rule.__name__!r}"
    return str(rule)


def check_parameters(estimator) -> None:
    """Check every parameter of ``estimator`` named in its ``_parameter_rules``.

    Raises
    ------
    InvalidParameterError
        Naming the parameter, the estimator, what it must be and what it got.
    """
    params = estimator.get_params(deep=False)
    for name, rules in type(estimator)._parameter_rules.items():
        value = params[name]
        if not any(_accepts(rule, value) for rule in rules):
            allowed = [_describe(rule) for rule in rules]
            must = allowed[0] if len(allowed) == 1 else ", ".join(allowed[:-1]) + " or " + allowed[-1]
            raise InvalidParameterError(
                f"The {name!r} parameter of {type(estimator).__name__} must be {must}. Got {value!r} instead."
            )


def checks_parameters(fit):
    """Decorate ``fit`` so that it starts with :func:`check_parameters`."""

    @functools.wraps(fit)
    def checked_fit(estimator, *args, **kwargs):
        check_parameters(estimator)
        return fit(estimator, *args, **kwargs)

    return checked_fit
