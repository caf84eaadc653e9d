"""Options shared by the CLI and the pytest plugin, so ``--jacverify-x`` and ``jacverify --x`` never
drift. Importing this module does not import torch (the pytest plugin loads it at start-up)."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from jacverify import validation
from jacverify.databases import DATABASE_HELP
from jacverify.errors import InvalidArgument

__all__ = ["Option", "OPTIONS", "CAMPAIGN_OPTIONS", "add_to_argparse", "add_to_pytest",
           "parse_dtype", "parse_methods"]

DTYPES = ("float32", "float64", "float16", "bfloat16")


def parse_dtype(text: str | None):
    """``"float64"`` -> ``torch.float64``; None stays None (use the inputs' dtype). torch's own
    spellings ``float``, ``double``, ``half`` are accepted."""
    if text is None or text == "":
        return None
    import torch

    if isinstance(text, torch.dtype):
        return text
    name = str(text).removeprefix("torch.")
    name = {"float": "float32", "double": "float64", "half": "float16"}.get(name, name)
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


def _seed(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"seed {text!r} is not an integer") from None


def _bytes(text: str) -> int:
    """``"2**30"``, ``"1e9"``, ``"512MiB"``, ``"1GiB"`` -> a positive number of bytes."""
    raw = str(text).strip()
    units = {"kib": 2**10, "mib": 2**20, "gib": 2**30, "kb": 10**3, "mb": 10**6, "gb": 10**9}
    low, factor = raw.lower(), 1
    for unit, size in units.items():
        if low.endswith(unit):
            low, factor = low[: -len(unit)], size
            break
    try:
        base, _, power = low.partition("**")
        value = float(base) ** float(power) if power else float(base)
    except (ValueError, OverflowError):  # 2**3000 overflows a float
        value = float("nan")
    try:  # the API's own check (1.5 meant 1 byte; inf raised int()'s OverflowError)
        return validation.check_bytes("max_memory", value * factor)
    except InvalidArgument:
        raise argparse.ArgumentTypeError(
            f"max-memory {text!r} must be a positive, whole number of bytes, e.g. 2**30, 1e9, "
            "512MiB or 1.5GiB") from None


def _limit(name: str, unit: str) -> Callable[[str], float]:
    """``"600"`` -> 600.0; ``"none"`` -> inf (no limit: None would read as "not given")."""
    def parse(text: str) -> float:
        if str(text).strip().lower() in ("none", "inf"):
            return float("inf")
        try:
            value = float(text)
        except ValueError:
            value = float("nan")
        if not value > 0:
            raise argparse.ArgumentTypeError(f"{name} {text!r} must be a positive {unit}, or none")
        return value
    return parse


def _nonnegative(name: str) -> Callable[[str], float]:
    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            value = float("nan")
        if not value >= 0:
            raise argparse.ArgumentTypeError(f"{name} {text!r} must be a number >= 0")
        return value
    return parse


def _step(text: str) -> float:
    value = _nonnegative("eps")(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"eps {text!r} must be a positive step")
    return value


def _verification(text: str) -> str:
    if text not in VERIFICATIONS:
        raise argparse.ArgumentTypeError(
            f"verification {text!r} must be one of {', '.join(map(repr, VERIFICATIONS))}")
    return text


VERIFICATIONS = ("auto", "full", "projection", "routes")


def _probes(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"probes {text!r} must be a positive integer")
    return value


OPTIONS: tuple[Option, ...] = (
    Option("methods", "comma-separated method names to run (default: every registered method)",
           metavar="NAMES", parse=parse_methods),
    Option("device", "device the methods run on, e.g. cpu or cuda (default: cpu)", metavar="DEVICE",
           parse=str),
    Option("dtype", f"dtype the methods run in: {', '.join(DTYPES)} (default: the inputs')",
           metavar="DTYPE", parse=parse_dtype),
    Option("seed", "seed for inputs, weights and probes (printed in every report)", default="0",
           metavar="INT", parse=_seed),
    Option("max-memory", "bytes one method or reference may materialise, e.g. 2**30 or 512MiB "
           "(default: 2**30)", metavar="BYTES", parse=_bytes),
    Option("atol", "absolute error allowed on top of the tolerance rule, as gradcheck's atol "
           "(default: 0)", metavar="A", parse=_nonnegative("atol")),
    Option("eps", "finite-difference step for every input entry, as gradcheck's eps (default: "
           "chosen per entry)", metavar="H", parse=_step),
    Option("time-budget", "seconds the references of one check may be estimated to take; over it "
           "the check is refused before it starts (default: 600; none: no estimate)",
           metavar="S", parse=_limit("time-budget", "number of seconds")),
    Option("method-budget", "a method estimated to cost more than this many times the cheapest "
           "method is not run (not_applicable, with its estimate; NOTE [method budget]) "
           "(default: 5; none: run every method)", metavar="X",
           parse=_limit("method-budget", "factor")),
    Option("verification", "auto (full when its estimated cost is near the methods', else "
           "projection), full (every entry against finite differences and the loop) or "
           "projection (random uᵀJv probes against directional finite differences, every AD "
           "route too), routes (the AD routes alone) (default: auto)", metavar="MODE",
           parse=_verification),
    Option("probes", "random projections per check with --verification projection (default: 4) "
           "or routes (default: 1)",
           metavar="K", parse=_probes),
)

# Options of the fuzz campaigns (CLI fuzz and fuzz-rules, the pytest-collected campaigns of
# jacverify.campaign_tests), not keywords of check(): `resolve` leaves them out.
CAMPAIGN_OPTIONS: tuple[Option, ...] = (
    Option("database", DATABASE_HELP, metavar="DB"),
)


CAMPAIGN_SEED = "campaign seed: replays a campaign exactly and saves nothing (default: random, " \
    "printed; failures are saved in the example database and replayed first)"


def add_to_argparse(parser: argparse.ArgumentParser, names: tuple[str, ...] | None = None, *,
                    defaults: dict[str, Any] | None = None,
                    helps: dict[str, str] | None = None) -> None:
    """Add ``--NAME`` for every option of ``check`` (or those in ``names``, campaign options
    included) to ``parser``; a subcommand whose meaning differs (a fuzz campaign's seed is random
    by default) overrides the default or help, never the option's name or parser."""
    defaults, helps = defaults or {}, helps or {}
    for opt in OPTIONS + CAMPAIGN_OPTIONS:
        if (opt.name not in names) if names is not None else opt in CAMPAIGN_OPTIONS:
            continue
        parser.add_argument(f"--{opt.name}", dest=opt.dest,
                            default=defaults.get(opt.name, opt.default), metavar=opt.metavar,
                            type=_typed(opt), help=helps.get(opt.name, opt.help))


def _typed(opt: Option) -> Callable[[str], Any] | None:
    """Options parsed at once by argparse (a usage error naming the option); the rest (methods,
    dtype, device: their checks import torch) are parsed by :func:`resolve`."""
    return opt.parse if opt.name in ("seed", "max-memory", "time-budget", "method-budget",
                                     "verification", "probes", "atol", "eps") else None


def add_to_pytest(group: Any, parser: Any) -> None:
    """Register every option in a pytest option group and as an ini key."""
    for opt in OPTIONS + CAMPAIGN_OPTIONS:
        group.addoption(f"--jacverify-{opt.name}", dest=f"jacverify_{opt.dest}", default=None,
                        metavar=opt.metavar, help=opt.help)
        parser.addini(f"jacverify_{opt.dest}", opt.help, default=opt.default)


def resolve(values: dict[str, Any]) -> dict[str, Any]:
    """Turn raw option strings into ``check`` keyword arguments, validating each.

    Raises:
        argparse.ArgumentTypeError: a value is malformed; the message names the option.
    """
    out: dict[str, Any] = {}
    for opt in OPTIONS:
        raw = values.get(opt.dest)
        if raw is None or (raw == "" and opt.name != "methods"):
            continue
        if opt.name == "methods" and not parse_methods(raw):
            raise argparse.ArgumentTypeError(
                f"methods {raw!r} names no method (nothing would be verified); leave the option "
                "out to run every registered method")
        value = opt.parse(raw) if opt.parse and isinstance(raw, str) else raw
        if value is not None:
            out[opt.dest] = value
    return out
