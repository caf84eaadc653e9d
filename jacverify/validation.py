"""Argument checks at the public boundary, in one wording (after Hypothesis's
``internal/validation.py``): ``name=value (type=T) must be ...; what to do``.

Every failure raises :class:`~jacverify.InvalidArgument`. Importing this module does not import
torch (the CLI and the pytest plugin validate before torch is loaded).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from typing import Any

from jacverify.errors import InvalidArgument

__all__ = ["shown", "describe", "invalid", "check_int", "check_number", "check_choice", "check_bool",
           "check_methods_selected"]


def shown(value: Any) -> str:
    """``value`` as a message shows it: a tensor by its shape and dtype (inside tuples, lists and
    dicts too), anything else by a repr cut at 80 characters.

    >>> import torch
    >>> shown({"mu": torch.zeros(4, 2), "n": 3})
    "{'mu': <Tensor (4, 2) torch.float32>, 'n': 3}"
    """
    if hasattr(value, "shape") and hasattr(value, "dtype"):
        return f"<{type(value).__name__} {tuple(value.shape)} {value.dtype}>"
    if isinstance(value, dict):
        text = "{" + ", ".join(f"{k!r}: {shown(v)}" for k, v in value.items()) + "}"
    elif isinstance(value, (list, tuple)):
        inner = ", ".join(shown(v) for v in value) + ("," if isinstance(value, tuple) and len(value) == 1 else "")
        text = f"({inner})" if isinstance(value, tuple) else f"[{inner}]"
    else:
        text = repr(value)
    return text if len(text) <= 160 else text[:157] + "..."


def describe(name: str, value: Any) -> str:
    """``name=value (type=T)``, the value as :func:`shown` shows it.

    >>> describe("probes", -1)
    'probes=-1 (type=int)'
    """
    return f"{name}={shown(value)} (type={type(value).__name__})"


def invalid(name: str, value: Any, must: str, fix: str = "") -> InvalidArgument:
    """The error for ``name=value``: what it must be, and what to do.

    >>> str(invalid("max_memory", True, "a positive number of bytes", "e.g. 2**30"))
    'max_memory=True (type=bool) must be a positive number of bytes; e.g. 2**30'
    """
    return InvalidArgument(f"{describe(name, value)} must be {must}" + (f"; {fix}" if fix else ""))


def check_int(name: str, value: Any, *, min_value: int | None = None, fix: str = "") -> int:
    """``value`` as an int (bools refused) of at least ``min_value``.

    >>> check_int("examples", 3, min_value=1)
    3
    >>> check_int("examples", 0, min_value=1)
    Traceback (most recent call last):
    jacverify.errors.InvalidArgument: examples=0 (type=int) must be an int >= 1
    """
    must = "an int" + (f" >= {min_value}" if min_value is not None else "")
    if isinstance(value, bool) or not isinstance(value, int):
        raise invalid(name, value, must, fix)
    if min_value is not None and value < min_value:
        raise invalid(name, value, must, fix)
    return value


def check_number(name: str, value: Any, *, positive: bool = True, allow_inf: bool = False,
                 fix: str = "") -> float:
    """``value`` as a finite (or, with ``allow_inf``, infinite) real number, positive by default.

    >>> check_number("max_memory", 1e9)
    1000000000.0
    >>> check_number("timeout", -1.0)
    Traceback (most recent call last):
    jacverify.errors.InvalidArgument: timeout=-1.0 (type=float) must be a positive number
    """
    must = ("a positive" if positive else "a") + " number"
    if isinstance(value, bool) or not isinstance(value, (int, float)) or math.isnan(value):
        raise invalid(name, value, must, fix)
    if math.isinf(value) and not allow_inf:
        raise invalid(name, value, "a finite number", fix)
    if positive and not value > 0:
        raise invalid(name, value, must, fix)
    return float(value)


def check_bytes(name: str, value: Any) -> int:
    """``value`` as a whole, positive number of bytes: an int, or a float that is one (2e9).

    >>> check_bytes("max_memory", 2e9)
    2000000000
    >>> check_bytes("max_memory", 1.5)
    Traceback (most recent call last):
    jacverify.errors.InvalidArgument: max_memory=1.5 (type=float) must be a whole number of bytes; e.g. 2**30
    """
    number = check_number(name, value, fix="a number of bytes, e.g. 2**30")
    if number != int(number):  # int() of 1.5 stated a budget of 1 byte
        raise invalid(name, value, "a whole number of bytes", "e.g. 2**30")
    return int(number)


def check_choice(name: str, value: Any, choices: Sequence[Any]) -> Any:
    """``value`` if it is one of ``choices``, else an error listing them.

    >>> check_choice("verification", "projection", ("full", "projection"))
    'projection'
    """
    if value not in choices:
        raise invalid(name, value, "one of " + ", ".join(map(repr, choices)))
    return value


def check_bool(name: str, value: Any) -> bool:
    """``value`` if it is a bool."""
    if not isinstance(value, bool):
        raise invalid(name, value, "True or False")
    return value


def check_methods_selected(names: Iterable[str] | None, selected: Sequence[Any]) -> None:
    """Refuse a method selection that selects nothing (``methods=[]``): nothing would be verified."""
    if names is not None and not selected:
        raise invalid("methods", list(names), "a non-empty list of method names",
                      "pass None (the default) to run every registered method")
