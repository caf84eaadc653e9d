"""Configuring ``jacverify check`` targets without editing their files: a ``[tool.jacverify]`` table.

NOTE [target configuration]
Constructor arguments and example inputs live in ``pyproject.toml`` (found from the checked file's
folder upwards, as pytest finds its rootdir), or in another TOML file named by ``--config``:

    [tool.jacverify.targets.Encoder]          # a class, function or instance name,
    args = [16]                               # or "file.py::Encoder" for one file only
    kwargs = { heads = 2 }
    inputs = [[4, 16], [4, 7, 16]]            # one shape per forward argument (random normal)
    batch_axis = 0

Why a table and not flags: a target's set-up is data about the project, reviewed and versioned with
it, read the same by a developer and CI, and shared by every target of a file; flags would have to
be repeated per target on every run. ``--config`` is the command-line form for one-off runs (or a
project without a pyproject.toml). Importing this module does not import torch.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from jacverify import validation
from jacverify.errors import InvalidArgument

__all__ = ["TargetConfig", "find_pyproject", "load_config", "config_for", "config_keys"]

_KEYS = ("args", "kwargs", "inputs", "batch_axis")


@dataclass(frozen=True)
class TargetConfig:
    """How to set up one target.

    Attributes:
        args, kwargs: the constructor's arguments (a module class).
        inputs: one shape per forward argument; random normal inputs of these shapes are drawn
            from the run's seed. None: the target's own example_input, else inferred.
        batch_axis: the inputs' batch axis.
    """

    args: tuple[Any, ...] = ()
    kwargs: Mapping[str, Any] = field(default_factory=dict)
    inputs: tuple[tuple[int, ...], ...] | None = None
    batch_axis: int = 0


def find_pyproject(start: str | Path) -> Path | None:
    """The nearest ``pyproject.toml`` at or above ``start`` (a file or a folder), or None."""
    here = Path(start).resolve()
    for folder in [here if here.is_dir() else here.parent, *here.parents]:
        candidate = folder / "pyproject.toml"
        if candidate.is_file():
            return candidate
    return None


def _parse(name: str, raw: Any, where: str) -> TargetConfig:
    if not isinstance(raw, Mapping):
        raise validation.invalid(f"{where} targets.{name}", raw, "a table",
                                 "e.g. args = [16] and inputs = [[4, 16]]")
    unknown = sorted(set(raw) - set(_KEYS))
    if unknown:
        raise InvalidArgument(f"{where} targets.{name}: unknown key(s) {', '.join(unknown)}; "
                              f"known: {', '.join(_KEYS)}")
    args = raw.get("args", [])
    if not isinstance(args, list):
        raise validation.invalid(f"{where} targets.{name}.args", args, "a list")
    kwargs = raw.get("kwargs", {})
    if not isinstance(kwargs, Mapping):
        raise validation.invalid(f"{where} targets.{name}.kwargs", kwargs, "a table")
    inputs = raw.get("inputs")
    if inputs is not None:
        ok = isinstance(inputs, list) and inputs and all(
            isinstance(s, list) and s and all(isinstance(d, int) and d > 0 for d in s)
            for s in inputs)
        if not ok:
            raise validation.invalid(f"{where} targets.{name}.inputs", inputs,
                                     "a non-empty list of shapes, one per forward argument",
                                     "e.g. inputs = [[4, 16], [4, 7, 16]]")
        inputs = tuple(tuple(s) for s in inputs)
    axis = validation.check_int(f"{where} targets.{name}.batch_axis", raw.get("batch_axis", 0))
    return TargetConfig(tuple(args), dict(kwargs), inputs, axis)


def load_config(path: str | Path) -> dict[str, TargetConfig]:
    """The targets configured in ``path``: its ``[tool.jacverify.targets]`` (or, in a file that is
    not a pyproject.toml, also a top-level ``[targets]``) table.

    Raises:
        InvalidArgument: the file is not TOML, or a target's entry is malformed.

    >>> import tempfile, os
    >>> with tempfile.TemporaryDirectory() as d:
    ...     p = os.path.join(d, "pyproject.toml")
    ...     _ = open(p, "w").write('[tool.jacverify.targets.Net]\\nargs = [3]\\ninputs = [[4, 3]]\\n')
    ...     load_config(p)["Net"]
    TargetConfig(args=(3,), kwargs={}, inputs=((4, 3),), batch_axis=0)
    """
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10
        import tomli as tomllib  # type: ignore[no-redef]

    path = Path(path)
    try:
        data = tomllib.loads(path.read_text())
    except (OSError, tomllib.TOMLDecodeError) as e:
        raise InvalidArgument(f"{path}: cannot read it as TOML: {e}") from None
    table = data.get("tool", {}).get("jacverify", {})
    if path.name != "pyproject.toml" and not table:
        table = data
    targets = table.get("targets", {})
    if not isinstance(targets, Mapping):
        raise validation.invalid(f"{path}: targets", targets, "a table of targets")
    return {name: _parse(name, raw, str(path)) for name, raw in targets.items()}


def config_for(configs: Mapping[str, TargetConfig], label: str, name: str) -> TargetConfig | None:
    """The entry for target ``name`` of file ``label``: ``"file.py::name"`` wins over ``"name"``.

    >>> config_for({"Net": TargetConfig(args=(1,)), "b.py::Net": TargetConfig(args=(2,))},
    ...            "b.py", "Net").args
    (2,)
    """
    return next((configs[k] for k in config_keys(label, name) if k in configs), None)


def config_keys(label: str, name: str) -> tuple[str, str, str]:
    """The keys that configure target ``name`` of file ``label``, first wins: file name, path,
    bare name."""
    return (f"{Path(label).name}::{name}", f"{label}::{name}", name)
