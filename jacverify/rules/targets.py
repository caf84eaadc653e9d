"""What a batching rule is fuzzed through: a callable and the kinds of its arguments."""

from __future__ import annotations

import inspect
import typing
from collections.abc import Callable
from dataclasses import dataclass

import torch

from jacverify.errors import InvalidArgument

__all__ = ["Arg", "RuleTarget", "as_target", "discover_rules"]


@dataclass(frozen=True)
class Arg:
    """One argument: a tensor (optionally of a fixed per-sample shape) or a scalar."""

    name: str
    kind: str  # "tensor", "float", "int" or "bool"
    shape: tuple[int, ...] | None = None


@dataclass(frozen=True)
class RuleTarget:
    """A function whose batching rule is fuzzed: ``fn(*args)`` with ``args`` as described."""

    name: str
    fn: Callable
    args: tuple[Arg, ...]
    code: str  # how a reproducer gets hold of fn, e.g. "torch.ops.ns.op" or "Cls.apply"
    module: str | None = None  # the module to import first (it defines fn or registers the op)

    @property
    def tensors(self) -> tuple[int, ...]:
        return tuple(i for i, a in enumerate(self.args) if a.kind == "tensor")


_SCHEMA_KINDS = {"Tensor": "tensor", "float": "float", "int": "int", "bool": "bool",
                 "SymInt": "int", "Scalar": "float"}
_HINT_KINDS = {torch.Tensor: "tensor", float: "float", int: "int", bool: "bool"}


def _from_op(op, name: str, module: str | None = None) -> RuleTarget:
    overload = op.default if hasattr(op, "default") else op
    args = []
    for a in overload._schema.arguments:
        if a.kwarg_only and a.has_default_value():
            continue  # keyword-only with a default: left at it (it cannot be passed by position)
        kind = _SCHEMA_KINDS.get(str(a.type).rstrip("?"))
        if kind is None:
            raise InvalidArgument(f"{name}: argument {a.name} has type {a.type}, which the rule "
                                  "fuzzer cannot draw (tensors, float, int and bool only)")
        args.append(Arg(a.name, kind))
    ns, _, short = name.partition("::")
    return RuleTarget(name, overload, tuple(args), f"torch.ops.{ns}.{short}.default", module)


def _from_callable(fn: Callable, name: str, code: str) -> RuleTarget:
    example = getattr(fn, "example_input", None)
    target = fn.forward if isinstance(fn, type) else fn
    try:
        sig = inspect.signature(target)
        hints = typing.get_type_hints(target)
    except (TypeError, ValueError, NameError):
        sig, hints = None, {}
    params = [p for p in (sig.parameters.values() if sig else ()) if p.name != "ctx"]
    shapes: list[tuple[int, ...] | None] = []
    if example is not None:
        values = example() if callable(example) else example
        values = values if isinstance(values, (tuple, list)) else (values,)
        shapes = [tuple(v.shape) if isinstance(v, torch.Tensor) else None for v in values]
        if not params:
            params = [inspect.Parameter(f"x{i}", inspect.Parameter.POSITIONAL_ONLY)
                      for i in range(len(values))]
    if not params:
        raise InvalidArgument(f"{name}: cannot tell its arguments; give it type hints or an "
                              "example_input (a tuple of per-sample tensors)")
    args = []
    for i, p in enumerate(params):
        kind = _HINT_KINDS.get(hints.get(p.name), "tensor")
        shape = shapes[i] if i < len(shapes) else None
        args.append(Arg(p.name, kind, shape))
    call = fn.apply if isinstance(fn, type) else fn
    return RuleTarget(name, call, tuple(args), code, getattr(fn, "__module__", None))


def as_target(thing: object) -> RuleTarget:
    """A RuleTarget from an op name ("ns::name"), an op, an autograd.Function subclass, a custom
    op made with ``torch.library.custom_op``, or a Python function.

    Raises:
        InvalidArgument: ``thing`` is none of those, or its arguments cannot be drawn.
    """
    if isinstance(thing, RuleTarget):
        return thing
    if isinstance(thing, str):
        ns, sep, short = thing.partition("::")
        try:
            op = getattr(getattr(torch.ops, ns), short) if sep and ns and short else None
        except (AttributeError, RuntimeError):
            op = None
        if op is None:
            raise InvalidArgument(f"op={thing!r} is not a registered operator; give "
                                  "NAMESPACE::NAME (e.g. aten::sin), after importing the module "
                                  "that registers it")
        return _from_op(op, thing)
    custom = getattr(thing, "_opoverload", None)  # torch.library.custom_op's CustomOpDef
    if custom is not None:
        module = getattr(getattr(thing, "_init_fn", None), "__module__", None)
        return _from_op(custom, getattr(thing, "_qualname", str(custom)), module)
    if isinstance(thing, torch._ops.OpOverload | torch._ops.OpOverloadPacket):
        return _from_op(thing, thing._schema.name if hasattr(thing, "_schema")
                        else thing.default._schema.name)
    if isinstance(thing, type) and issubclass(thing, torch.autograd.Function):
        return _from_callable(thing, thing.__qualname__, f"{thing.__qualname__}.apply")
    if callable(thing):
        name = getattr(thing, "__qualname__", type(thing).__name__)
        return _from_callable(thing, name, name)
    raise InvalidArgument(f"{thing!r} is not an op, an autograd.Function or a function")


def _has_rule(cls: type) -> bool:
    return bool(getattr(cls, "generate_vmap_rule", False)) or (
        "vmap" in cls.__dict__ or any("vmap" in b.__dict__ for b in cls.__mro__[1:-1]
                                      if b is not torch.autograd.Function
                                      and issubclass(b, torch.autograd.Function)))


def discover_rules(module: object) -> list[RuleTarget]:
    """The custom ops and the autograd.Functions with a vmap rule defined in ``module``."""
    found: list[RuleTarget] = []
    modname = getattr(module, "__name__", None)
    for value in vars(module).values():
        if getattr(value, "_opoverload", None) is not None:  # custom_op, defined here
            found.append(as_target(value))
        elif (isinstance(value, type) and issubclass(value, torch.autograd.Function)
              and value.__module__ == modname and _has_rule(value)
              and not value.__name__.startswith("_")):
            found.append(as_target(value))
        elif isinstance(value, torch.library.Library):
            for qualname in sorted(getattr(value, "_op_defs", ())):
                found.append(as_target(qualname))
    return found
