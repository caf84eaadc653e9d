"""Naming the innermost culprit of a failed check: which custom ``autograd.Function`` in the graph,
which submodule, by checking the parts on their own (NOTE [culprit bisection]).
"""

from __future__ import annotations

import inspect
from typing import Any

import torch

__all__ = ["custom_functions", "innermost_culprit", "MAX_PARTS"]

MAX_PARTS = 32  # submodules checked on their own at most (each is a small check)


# NOTE [culprit bisection]
# A hint says which kind of formula is wrong (a backward, a jvp, a batching rule); a user wants to
# know where. Two pieces of evidence, both cheap next to the check itself:
# - the autograd graph of one forward pass names every custom autograd.Function it went through
#   (a node of a custom Function carries `_forward_cls`), with the file and line defining it;
# - for an nn.Module, each submodule is checked on its own, on the very inputs it received in that
#   forward pass (captured by forward hooks), with the first method that failed. The deepest
#   submodule that fails alone is where the wrong formula lives; its parents fail only because it
#   does. A submodule whose input is not one batched floating tensor is not checked.
# The culprit is named only when a submodule fails alone (the evidence separates it); the list of
# custom Functions in the graph is given as a lead, not a verdict, when there is more than one.
def custom_functions(fn: Any, inputs: tuple[torch.Tensor, ...]) -> list[type]:
    """The custom ``autograd.Function`` classes in the graph of ``fn(*inputs)``, in graph order."""
    xs = tuple(t.detach().requires_grad_() for t in inputs)
    with torch.enable_grad():
        out = fn(*xs)
    outs = tuple(out.values()) if isinstance(out, dict) else \
        out if isinstance(out, (tuple, list)) else (out,)
    seen, found, stack = set(), [], [o.grad_fn for o in outs if isinstance(o, torch.Tensor)]
    while stack:
        node = stack.pop()
        if node is None or id(node) in seen:
            continue
        seen.add(id(node))
        cls = getattr(node, "_forward_cls", None)
        if cls is not None and cls not in found:
            found.append(cls)
        stack.extend(n for n, _ in getattr(node, "next_functions", ()))
    return found


def _where(cls: type) -> str:
    try:
        return f"{inspect.getsourcefile(cls)}:{inspect.getsourcelines(cls)[1]}"
    except (OSError, TypeError):
        return cls.__module__


def _captured_inputs(module: torch.nn.Module, inputs: tuple[torch.Tensor, ...]):
    """{submodule name: its input tensor} from one forward pass (one batched floating tensor)."""
    captured: dict[str, torch.Tensor] = {}
    hooks = []
    for name, sub in list(module.named_modules())[1:]:
        def hook(mod, args, name=name):
            if len(args) == 1 and isinstance(args[0], torch.Tensor) and \
                    args[0].is_floating_point() and name not in captured:
                captured[name] = args[0].detach().clone()
        hooks.append(sub.register_forward_pre_hook(hook))
    try:
        with torch.no_grad():
            module(*inputs)
    except Exception:  # noqa: BLE001 - a forward that differentiates itself: no capture
        pass
    finally:
        for h in hooks:
            h.remove()
    return captured


def innermost_culprit(report: Any) -> str | None:
    """A sentence naming where the wrong formula lives, or None when the evidence does not say.

    Args:
        report: a failed batch_jacobian :class:`~jacverify.Report`.

    Returns:
        The culprit sentence, or None.

    Raises:
        Nothing: any failure to gather evidence gives None.
    """
    from jacverify.engine import check

    if report.quantity != "batch_jacobian" or not report.mismatches and not report.findings:
        return None
    fn, inputs = report.case.fn, report.case.inputs
    method = next((r.method for r in report.mismatches if r.mode != "user"), None)
    parts: list[str] = []
    try:
        functions = custom_functions(fn, inputs)
    except Exception:  # noqa: BLE001
        functions = []
    if isinstance(fn, torch.nn.Module) and method is not None:
        failing = []
        for name, x in list(_captured_inputs(fn, inputs).items())[:MAX_PARTS]:
            sub = fn.get_submodule(name)
            try:
                alone = check(sub, x, methods=[method], warm_timing=False)  # default budget
            except Exception:  # noqa: BLE001 - a part that cannot be checked alone says nothing
                continue
            if alone.mismatches or alone.findings:
                failing.append(name)
        innermost = [n for n in failing if not any(o.startswith(n + ".") for o in failing)]
        if innermost:
            names = ", ".join(f"{n} ({type(fn.get_submodule(n)).__name__})" for n in innermost)
            parts.append(f"checked on its own, submodule {names} fails the same way "
                         f"({method}): the wrong formula is inside it")
    if len(functions) == 1:
        cls = functions[0]
        parts.append(f"the graph goes through one custom autograd.Function, {cls.__qualname__} "
                     f"({_where(cls)})")
    elif functions:
        parts.append("custom autograd.Functions in the graph: " + ", ".join(
            f"{c.__qualname__} ({_where(c)})" for c in functions))
    return "; ".join(parts) or None
