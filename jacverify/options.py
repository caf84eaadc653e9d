"""Options shared by the CLI and the pytest plugin, so ``--jacverify-x`` and ``jacverify --x`` never
drift. Importing this module does not import torch (the pytest plugin loads it at start-up)."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

__all__ = ["Option", "OPTIONS", "add_to_argparse", "add_to_pytest", "parse_dtype", "parse_methods"]

DTYPES = ("float32", "float64", "float16", "bfloat16")


def parse_dtype(text: str | None):
    """``"float64"`` -> ``torch.float64``; None stays None (use the inputs' dtype)."""
    if text is None or text == "":
        return None
    import torch

    name = str(text).removeprefix("torch.")
    if name not in DTYPES:
        raise argparse.ArgumentTypeError(f"dtype {text!r} is not one of {', '.join(DTYPES)}")
    return getattr(torch, name)


def parse_methods(text: str | list[str] | None) -> list[str] | None:
    """``"a,b"`` or ``["a", "b"]`` -> ``["a", "b"]``; empty means every registered method."""
    if text is None:
        return None
    items = text if isinstance(text, list) else [text]
    names = [n.strip() for item in items for n in str(item).replace(",", " ").split() if n.strip()]
    return names or None


@dataclass(frozen=True)
class Option:
    """One option: ``--NAME`` on the CLI, ``--jacverify-NAME`` and ini ``jacverify_NAME`` in pytest."""

    name: str
    help: str
    default: Any = None
    metavar: str | None = None
    parse: Callable[[str], Any] | None = None

    @property
    def dest(self) -> str:
        return self.name.replace("-", "_")


OPTIONS: tuple[Option, ...] = (
    Option("methods", "comma-separated method names to run (default: every registered method)",
           metavar="NAMES"),
    Option("device", "device the methods run on, e.g. cpu or cuda (default: cpu)", metavar="DEVICE"),
    Option("dtype", f"dtype the methods run in: {', '.join(DTYPES)} (default: the inputs')",
           metavar="DTYPE"),
    Option("seed", "seed for inputs and probes (printed in every report)", default="0",
           metavar="INT"),
)


def add_to_argparse(parser: argparse.ArgumentParser) -> None:
    for opt in OPTIONS:
        parser.add_argument(f"--{opt.name}", dest=opt.dest, default=opt.default,
                            metavar=opt.metavar, help=opt.help)


def add_to_pytest(group: Any, parser: Any) -> None:
    """Register every option in a pytest option group and as an ini key."""
    for opt in OPTIONS:
        group.addoption(f"--jacverify-{opt.name}", dest=f"jacverify_{opt.dest}", default=None,
                        metavar=opt.metavar, help=opt.help)
        parser.addini(f"jacverify_{opt.dest}", opt.help, default=opt.default)


def resolve(values: dict[str, Any]) -> dict[str, Any]:
    """Turn raw option strings into ``check`` keyword arguments, validating each.

    Raises:
        argparse.ArgumentTypeError: a value is malformed; the message names the option.
    """
    out: dict[str, Any] = {}
    if values.get("methods"):
        out["methods"] = parse_methods(values["methods"])
    if values.get("device"):
        out["device"] = values["device"]
    if values.get("dtype"):
        out["dtype"] = parse_dtype(values["dtype"])
    seed = values.get("seed")
    if seed not in (None, ""):
        try:
            out["seed"] = int(seed)
        except ValueError:
            raise argparse.ArgumentTypeError(f"seed {seed!r} is not an integer") from None
    return out
