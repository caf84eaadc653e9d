"""Finding what to check in a file nobody wrote for jacverify, and an input for each target."""

from __future__ import annotations

import hashlib
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

from jacverify.validation import check_int
from jacverify.errors import InvalidArgument, JacverifyError

__all__ = ["target", "Target", "load", "discover", "LoadError", "forward_arity"]


class LoadError(JacverifyError):
    """A file or module could not be loaded; the message is one line for the user."""


def target(fn: Callable | None = None, *, example_input: Any, batch_axis: int = 0):
    """Mark a function for ``jacverify check``: it is checked on ``example_input``.

    Args:
        fn: the function (when used as ``@target(...)``, given by the decorator).
        example_input: a tensor, a tuple of tensors, or a callable returning one.
        batch_axis: the batch axis of the inputs and outputs.

    Returns:
        ``fn`` itself, marked (or the decorator that marks it).

    Raises:
        InvalidArgument: ``batch_axis`` is not an int, or what is decorated is not callable.

    >>> @target(example_input=lambda: torch.ones(4, 3))
    ... def double(x):
    ...     return 2 * x
    >>> double(torch.ones(1)).item(), double.__jacverify_target__["batch_axis"]
    (2.0, 0)
    """
    check_int("batch_axis", batch_axis)

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
    args: tuple[Any, ...] = ()  # the constructor's (from the configuration: jacverify.config)
    kwargs: Any = None
    input_shapes: tuple[tuple[int, ...], ...] | None = None  # configured example inputs

    def build(self) -> Callable:
        if self.kind == "module class":
            return self.obj(*self.args, **(self.kwargs or {}))
        return self.obj


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
        # named by the file's name and content, not its location or a per-process hash: a fuzz
        # campaign's example-database key holds the module name (NOTE [shared example database])
        digest = hashlib.sha256(path.read_bytes()).hexdigest()[:12]
        name = f"_jacverify_target_{path.stem}_{digest}"
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


def discover(module: ModuleType, label: str,
             configs: Any = None) -> tuple[list[Target], list[str]]:
    """The targets defined in ``module``, and a line for each candidate that was passed over.

    ``configs`` (name -> :class:`~jacverify.config.TargetConfig`) gives constructor arguments and
    example inputs (NOTE [target configuration]).
    """
    from jacverify.config import config_for

    targets: list[Target] = []
    skipped: list[str] = []
    for name, obj in vars(module).items():
        if name.startswith("_"):
            continue
        where = f"{label}::{name}"
        conf = config_for(configs or {}, label, name)
        extra: dict[str, Any] = {} if conf is None else dict(
            args=conf.args, kwargs=conf.kwargs, input_shapes=conf.inputs,
            batch_axis=conf.batch_axis)
        if inspect.isclass(obj) and issubclass(obj, nn.Module) and obj.__module__ == module.__name__:
            if _no_arg_constructible(obj) or (conf is not None and (conf.args or conf.kwargs)):
                targets.append(Target(where, "module class", obj, **extra))
            else:
                skipped.append(f"{where}: skipped, its constructor needs arguments "
                               f"(add defaults, create an instance at top level, or give them "
                               f"in pyproject.toml: [tool.jacverify.targets.{name}] args = [...])")
        elif isinstance(obj, nn.Module):
            targets.append(Target(where, "module instance", obj, **extra))
        elif callable(obj) and hasattr(obj, "__jacverify_target__"):
            marks = obj.__jacverify_target__
            extra.setdefault("batch_axis", marks["batch_axis"])
            targets.append(Target(where, "function", obj, marks["example_input"], **extra))
        elif callable(obj) and conf is not None and conf.inputs and \
                getattr(obj, "__module__", None) == module.__name__:
            targets.append(Target(where, "function", obj, **extra))
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
    if tgt.input_shapes is not None:  # configured (NOTE [target configuration])
        gen = torch.Generator().manual_seed(seed)
        return tuple(torch.randn(s, generator=gen, dtype=dtype or torch.float32)
                     for s in tgt.input_shapes), tgt.batch_axis
    given = tgt.example_input if tgt.example_input is not None else getattr(fn, "example_input", None)
    if given is not None:
        value = _example_tensors(tgt.name, given() if callable(given) else given)
        return tuple(v.to(dtype) if dtype else v for v in value), tgt.batch_axis
    shape, axis = _infer(fn, batch_size) if isinstance(fn, nn.Module) else (None, 0)
    if shape is None:
        raise NoInput(f"cannot infer an input for {tgt.name}: add an example_input attribute or "
                      "method returning a tensor (or tuple of tensors)")
    gen = torch.Generator().manual_seed(seed)
    arity = forward_arity(fn)
    if arity > 1:
        return _one_per_argument(tgt, fn, shape, arity, gen, dtype or torch.float32), axis
    return (torch.randn(shape, generator=gen, dtype=dtype or torch.float32),), axis


def _example_tensors(name: str, value: object) -> tuple[torch.Tensor, ...]:
    """An example_input's value as a tuple of tensors, or NoInput naming what it was."""
    if isinstance(value, torch.Tensor):
        return (value,)
    fix = "return a tensor with the batch first, or a tuple of them (one per forward argument)"
    if not isinstance(value, (tuple, list)) or not value:
        raise NoInput(f"example_input of {name} gave {type(value).__name__} {value!r:.40}, not a "
                      f"tensor: {fix}")
    for i, v in enumerate(value):
        if not isinstance(v, torch.Tensor):
            raise NoInput(f"example_input of {name} gave a {type(value).__name__} whose item {i} "
                          f"is {type(v).__name__} {v!r:.40}, not a tensor: {fix}")
    return tuple(value)


def forward_arity(fn: Callable) -> int:
    """How many tensors ``fn`` (a module's forward) takes: its required positional parameters.

    >>> class Pair(nn.Module):
    ...     def forward(self, x, y, scale=1.0):
    ...         return x * y * scale
    >>> forward_arity(Pair()), forward_arity(nn.Linear(2, 2))
    (2, 1)
    """
    try:
        params = inspect.signature(fn.forward if isinstance(fn, nn.Module) else fn).parameters.values()
    except (TypeError, ValueError):
        return 1
    required = [p for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)
                and p.default is p.empty]
    return max(1, len(required))


def _one_per_argument(tgt: Target, fn: Callable, shape: tuple[int, ...], arity: int,
                      gen: torch.Generator, dtype: torch.dtype) -> tuple[torch.Tensor, ...]:
    """An input per forward argument: the first layer's input shape for each (``forward(x, y)``
    adding or gating them), or that shape's features split evenly (``torch.cat([x, y], -1)``); the
    first the forward runs on is kept.

    Raises:
        NoInput: the forward runs on none; the message asks for ``inputs`` in the configuration.
    """
    b, *rest = shape
    candidates = [[tuple(shape)] * arity]
    if rest and rest[-1] % arity == 0:
        candidates.append([(b, *rest[:-1], rest[-1] // arity)] * arity)
    errors = []
    for shapes in candidates:
        xs = tuple(torch.randn(s, generator=gen, dtype=dtype) for s in shapes)
        try:
            with torch.no_grad():
                fn(*xs)
            return xs
        except Exception as e:  # noqa: BLE001 - the user's forward: try the next guess
            errors.append(f"{shapes}: {type(e).__name__}")
    raise NoInput(f"cannot infer inputs for {tgt.name}: its forward takes {arity} tensors and ran "
                  f"on none of the guesses ({'; '.join(errors)}); give their shapes in "
                  f"pyproject.toml: [tool.jacverify.targets.{tgt.name.rpartition('::')[2]}] "
                  "inputs = [[B, ...], ...]")


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
