"""Finding what to check in a file nobody wrote for jacverify, and an input for each target."""

from __future__ import annotations

import importlib
import importlib.util
import inspect
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import torch
from torch import nn

from jacverify.errors import InvalidArgument, JacverifyError

__all__ = ["target", "Target", "load", "discover", "LoadError"]


class LoadError(JacverifyError):
    """A file or module could not be loaded; the message is one line for the user."""


def target(fn: Callable | None = None, *, example_input: Any, batch_axis: int = 0):
    """Mark a function for ``jacverify check``: it is checked on ``example_input``.

    Args:
        example_input: a tensor, a tuple of tensors, or a callable returning one.
        batch_axis: the batch axis of the inputs and outputs.

    >>> @target(example_input=lambda: torch.ones(4, 3))
    ... def double(x):
    ...     return 2 * x
    >>> double(torch.ones(1)).item(), double.__jacverify_target__["batch_axis"]
    (2.0, 0)
    """
    def mark(f: Callable) -> Callable:
        if not callable(f):
            raise InvalidArgument(f"@jacverify.target decorates a function, not {f!r}")
        f.__jacverify_target__ = {"example_input": example_input, "batch_axis": batch_axis}
        return f

    return mark if fn is None else mark(fn)


@dataclass(frozen=True)
class Target:
    """One thing to check: how to build it and how to get its input (or why not)."""

    name: str
    kind: str  # "module class" | "module instance" | "function"
    obj: Any
    example_input: Any = None
    batch_axis: int = 0

    def build(self) -> Callable:
        return self.obj() if self.kind == "module class" else self.obj


def load(spec: str) -> ModuleType:
    """Import a ``.py`` file (run as ``python FILE`` would run it) or a dotted module name.

    Raises:
        LoadError: not found, not Python, or it raised while importing.
    """
    path = Path(spec)
    if path.suffix == ".py" or path.exists() or "/" in spec or "\\" in spec:
        if not path.exists():
            raise LoadError(f"{spec}: no such file")
        if path.is_dir() or path.suffix != ".py":
            raise LoadError(f"{spec}: not a Python file (expected FILE.py or a module name)")
        name = f"_jacverify_target_{abs(hash(str(path.resolve())))}"
        module_spec = importlib.util.spec_from_file_location(name, path)
        module = importlib.util.module_from_spec(module_spec)  # type: ignore[arg-type]
        sys.modules[name] = module
        sys.path.insert(0, str(path.resolve().parent))
        try:
            module_spec.loader.exec_module(module)  # type: ignore[union-attr]
        except SyntaxError as e:
            raise LoadError(f"{spec}: not valid Python ({e.msg}, line {e.lineno})") from e
        except BaseException as e:  # noqa: BLE001 - the file may raise anything, even SystemExit
            raise LoadError(f"{spec}: raised {type(e).__name__} on import: {e}") from e
        finally:
            sys.path.remove(str(path.resolve().parent))
        return module
    try:
        return importlib.import_module(spec)
    except ModuleNotFoundError:
        raise LoadError(f"{spec}: no such file or module") from None
    except BaseException as e:  # noqa: BLE001
        raise LoadError(f"{spec}: raised {type(e).__name__} on import: {e}") from e


def _no_arg_constructible(cls: type) -> bool:
    try:
        params = inspect.signature(cls).parameters.values()
    except (TypeError, ValueError):
        return False
    return all(p.default is not p.empty or p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD)
               for p in params)


def discover(module: ModuleType, label: str) -> tuple[list[Target], list[str]]:
    """The targets defined in ``module``, and a line for each candidate that was passed over."""
    targets: list[Target] = []
    skipped: list[str] = []
    for name, obj in vars(module).items():
        if name.startswith("_"):
            continue
        where = f"{label}::{name}"
        if inspect.isclass(obj) and issubclass(obj, nn.Module) and obj.__module__ == module.__name__:
            if _no_arg_constructible(obj):
                targets.append(Target(where, "module class", obj))
            else:
                skipped.append(f"{where}: skipped, its constructor needs arguments "
                               "(add defaults, or create an instance at top level)")
        elif isinstance(obj, nn.Module):
            targets.append(Target(where, "module instance", obj))
        elif callable(obj) and hasattr(obj, "__jacverify_target__"):
            marks = obj.__jacverify_target__
            targets.append(Target(where, "function", obj, marks["example_input"], marks["batch_axis"]))
    return targets, skipped


class NoInput(JacverifyError):
    """No input could be found or inferred for a target."""


_SPATIAL = 6  # the side of an inferred image/sequence: small, and larger than common kernels


def example_input(tgt: Target, fn: Callable, batch_size: int, seed: int,
                  dtype: torch.dtype | None) -> tuple[tuple[torch.Tensor, ...], int]:
    """The inputs and batch axis for ``fn``: its ``example_input``, else inferred from its first layer.

    Raises:
        NoInput: neither is available; the message says what to add.
    """
    given = tgt.example_input if tgt.example_input is not None else getattr(fn, "example_input", None)
    if given is not None:
        value = given() if callable(given) else given
        value = (value,) if isinstance(value, torch.Tensor) else tuple(value)
        if not value or not all(isinstance(v, torch.Tensor) for v in value):
            raise NoInput(f"example_input of {tgt.name} gave {type(value).__name__}, not tensors")
        return tuple(v.to(dtype) if dtype else v for v in value), tgt.batch_axis
    shape, axis = _infer(fn, batch_size) if isinstance(fn, nn.Module) else (None, 0)
    if shape is None:
        raise NoInput(f"cannot infer an input for {tgt.name}: add an example_input attribute or "
                      "method returning a tensor (or tuple of tensors)")
    gen = torch.Generator().manual_seed(seed)
    return (torch.randn(shape, generator=gen, dtype=dtype or torch.float32),), axis


def _infer(module: nn.Module, b: int) -> tuple[tuple[int, ...] | None, int]:
    for layer in module.modules():
        if isinstance(layer, nn.Linear):
            return (b, layer.in_features), 0
        if isinstance(layer, (nn.Conv1d, nn.Conv2d, nn.Conv3d)):
            dims = layer.weight.ndim - 2
            side = max(_SPATIAL, *(k * d for k, d in zip(layer.kernel_size, layer.dilation)))
            return (b, layer.in_channels, *([side] * dims)), 0
        if isinstance(layer, nn.LayerNorm):
            return (b, *layer.normalized_shape), 0
        if isinstance(layer, (nn.BatchNorm1d,)):
            return (b, layer.num_features), 0
        if isinstance(layer, (nn.BatchNorm2d,)):
            return (b, layer.num_features, _SPATIAL, _SPATIAL), 0
        if isinstance(layer, nn.Embedding):
            return None, 0
    return None, 0
