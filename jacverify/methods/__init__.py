"""The registry of ways to compute a derivative. A method is an entry, never an ``if`` in the engine.

Importing this package registers the built-in methods; :func:`register_method` adds a user's own,
which every later check then includes.
"""

from __future__ import annotations

import difflib
import functools
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Literal

import torch

from jacverify.case import Flat
from jacverify.costs import Budget, UnitCosts, Work
from jacverify.errors import InvalidArgument
from jacverify.quantity_table import get_quantity

__all__ = ["Method", "register_method", "unregister_method", "registered_methods", "get_methods",
           "is_builtin", "gradient"]

Mode = Literal["reverse", "forward", "numeric"]


@dataclass(frozen=True)
class Method:
    """One way to compute a quantity of a canonical case (see NOTE [canonical form]).

    Attributes:
        name: the registry key, shown in reports.
        compute: maps a :class:`~jacverify.case.Flat` to the quantity, e.g. (B, M, N).
        mode: "reverse" (built on backward formulas), "forward" (jvp formulas) or "numeric".
        vectorized: whether it relies on ``vmap`` (and so on batching rules).
        assumes_independent: valid only when samples do not interact.
        extra_memory: elements it materialises beyond the result, given the case; used to refuse
            a method that would not fit (``not_applicable``) before running it.
        quantity: what it computes; "batch_jacobian" is the per-sample Jacobian (B, M, N).
        cost: how its work grows with the case, in words; a benchmark shows it as the likely
            cause when the method is far slower than the best.
        chunked: ``compute(flat, chunk_size)`` takes a number of rows per pass (None: all), which
            ``batch_jacobian``'s planner uses to stay within a memory budget.
        work: ``work(B, M, N)``, its work in passes of the batch (NOTE [cost model] in
            :mod:`jacverify.costs`), from which a check estimates its time and memory before it
            runs; None: no estimate (it always runs).
    """

    name: str
    compute: Callable[[Flat], torch.Tensor]
    mode: Mode
    vectorized: bool
    assumes_independent: bool
    extra_memory: Callable[[Flat], int] | None = None
    quantity: str = "batch_jacobian"
    description: str = ""
    cost: str = ""
    chunked: bool = False
    work: Callable[[int, int, int], Work] | None = None

    def runner(self, chunk_size: int | None) -> Callable[[Flat], torch.Tensor]:
        """``compute`` with ``chunk_size`` rows per pass where the method takes one (None: one
        pass, and always for a method that is not ``chunked``), as ``f(flat)``: ``compute``
        itself for one pass (a cached plan's route: each Python frame between the call and the
        method's was 1-2% of a 0.2 ms Jacobian at batch 1, NOTE [last plan])."""
        if chunk_size is None or not self.chunked:
            return self.compute
        return functools.partial(self.compute, chunk_size=chunk_size)

    def estimate(self, flat: Flat) -> Work | None:
        """Its :class:`~jacverify.costs.Work` on ``flat``, or None without an estimate."""
        return self.work(flat.batch_size, flat.n_out, flat.n_in) if self.work else None

    def supports(self, flat: Flat, coupled: str | None, max_memory: int,
                 budget: Budget | None = None, units: UnitCosts | None = None) -> str | None:
        """The reason this method cannot run on ``flat``, or None when it can: samples that
        interact, memory over ``max_memory`` (its declared extra memory, or what its vectorized
        pass holds per ``units``), time over ``budget`` (NOTE [method budget])."""
        if coupled and self.assumes_independent:
            return f"assumes samples do not interact, but {coupled}"
        result = flat.batch_size * flat.n_out * flat.n_in  # the (B, M, N) it returns
        extra = self.extra_memory(flat) if self.extra_memory is not None else 0
        need = (result + extra) * flat.x.element_size()
        work = self.estimate(flat)
        if work is not None and units is not None:
            need = max(need, units.bytes(work, need))
        if need > max_memory:
            return (
                f"needs about {need} bytes ({need / 2**20:.1f} MiB: its (B, M, N) result and "
                f"what it builds beside it), over the max_memory={max_memory} bytes budget; "
                "raise max_memory or check fewer samples"
            )
        if work is not None and budget is not None:
            return budget.refuses(work)
        return None


_REGISTRY: dict[tuple[str, str], Method] = {}  # (quantity, name) -> method


def register_method(method: Method, *, replace: bool = False) -> Method:
    """Add ``method`` to the registry so every later check of its quantity runs it.

    Args:
        method: a :class:`Method` (its ``quantity`` must be a registered quantity).
        replace: replace a method of the same name and quantity.

    Returns:
        ``method``.

    Raises:
        InvalidArgument: not a Method, an unknown quantity, or the name is taken and ``replace``
            is False.

    >>> twice = Method("twice_loop", lambda flat: 2 * get_methods(["loop"])[0].compute(flat),
    ...                "reverse", vectorized=False, assumes_independent=False)
    >>> register_method(twice).name in [m.name for m in registered_methods()]
    True
    >>> unregister_method("twice_loop") is twice
    True
    """
    if not isinstance(method, Method):
        raise InvalidArgument(f"method={method!r} must be a jacverify.Method")
    get_quantity(method.quantity)  # InvalidArgument naming the registered quantities
    if (method.quantity, method.name) in _REGISTRY and not replace:
        raise InvalidArgument(
            f"a method named {method.name!r} is registered already; pick another name or pass "
            "replace=True"
        )
    _REGISTRY[(method.quantity, method.name)] = method
    return method


def unregister_method(name: str, quantity: str = "batch_jacobian") -> Method:
    """Remove a method from the registry and return it.

    Args:
        name: the method's name.
        quantity: the quantity it computes.

    Returns:
        The removed :class:`Method`.

    Raises:
        InvalidArgument: no method of that name is registered for ``quantity``.

    >>> m = unregister_method("loop_rows"); register_method(m) is m
    True
    """
    if (quantity, name) not in _REGISTRY:
        known = ", ".join(n for q, n in _REGISTRY if q == quantity)
        raise InvalidArgument(f"no {quantity} method named {name!r} is registered (known: {known})")
    return _REGISTRY.pop((quantity, name))


def registered_methods(quantity: str = "batch_jacobian") -> tuple[Method, ...]:
    """Every registered method for ``quantity``, in registration order.

    Args:
        quantity: a registered quantity name (``jacverify/quantity_table.py``).

    Returns:
        The methods, a tuple (empty for a quantity with none).

    Raises:
        InvalidArgument: never for a string; an unknown quantity simply has no methods.

    >>> registered_methods()[0].name
    'loop'
    """
    return tuple(m for m in _REGISTRY.values() if m.quantity == quantity)


def get_methods(names: Iterable[str] | None, quantity: str = "batch_jacobian") -> tuple[Method, ...]:
    """The methods named, or all of them for ``quantity``.

    Args:
        names: method names (a string is one name), or None for every registered method.
        quantity: the quantity they compute.

    Returns:
        The :class:`Method` objects, in the order named, each once.

    Raises:
        InvalidArgument: a name is unknown; the message gives the closest match.

    >>> [m.mode for m in get_methods(["vmap_jacrev", "vmap_jacfwd", "vmap_jacrev"])]
    ['reverse', 'forward']
    """
    if names is None:
        return registered_methods(quantity)
    if isinstance(names, str):
        names = [names]
    chosen = []
    for name in names:  # a dict lookup each: auto's planning asks a dozen times per plan
        found = _REGISTRY.get((quantity, name)) if isinstance(name, str) else None
        if found is None:
            known = [m.name for m in registered_methods(quantity)]
            close = difflib.get_close_matches(str(name), known, n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise InvalidArgument(
                f"methods contains {name!r}, which is not a registered {quantity} method{hint} "
                f"(known: {', '.join(known)})"
            )
        if not any(found is c for c in chosen):  # a name given twice runs once
            chosen.append(found)
    return tuple(chosen)


def gradient(output: torch.Tensor, wrt: torch.Tensor, grad_output: torch.Tensor | None = None,
             **kw) -> torch.Tensor:
    """``torch.autograd.grad(output, wrt, grad_output, **kw)``'s one gradient, zeros where
    ``wrt`` does not reach ``output`` (a function of the parameters alone): shaped as ``wrt``, or
    (K, *wrt) for K cotangents under ``is_grads_batched`` (where ``materialize_grads=True`` gave
    one (*wrt) for all, and batched_grad could not reshape it), requiring grad under
    ``create_graph``. The built-in methods' one call of autograd.

    ``materialize_grads=True`` itself runs two generator expressions in torch's Python on every
    call, which weigh at batch 1 (NOTE [few ops] in :mod:`jacverify.methods.batched`); here
    only an unused ``wrt`` pays for its zeros.

    >>> x, w = torch.ones(3, requires_grad=True), torch.ones(2, requires_grad=True)
    >>> gradient((x * x).sum(), x).tolist(), gradient(w.sum(), x).tolist()  # w does not reach x
    ([2.0, 2.0, 2.0], [0.0, 0.0, 0.0])
    >>> gradient(w * 2, x, torch.ones(4, 2), is_grads_batched=True).shape
    torch.Size([4, 3])
    """
    (g,) = torch.autograd.grad(output, wrt, grad_output, allow_unused=True, **kw)
    if g is None:  # batched cotangents give one gradient each (materialize_grads gave one in all)
        shape = (grad_output.shape[0], *wrt.shape) if kw.get("is_grads_batched") else wrt.shape
        return wrt.new_zeros(shape, requires_grad=bool(kw.get("create_graph")))
    return g


# Importing the families registers them, in the order reports list them.
from jacverify.methods import loops, autograd_functional, torch_func, batched, directional, second_order, param_grads  # noqa: E402,F401,I001

_BUILTIN = frozenset(id(m) for m in _REGISTRY.values())


def is_builtin(name: str, quantity: str = "batch_jacobian") -> bool:
    """``name`` is one of jacverify's own methods of ``quantity``, not one a user registered
    (:func:`register_method`; a hint names those as the user's code, NOTE [hints]).

    >>> is_builtin("vmap_jacrev"), is_builtin("no_such_method")
    (True, False)
    """
    return id(_REGISTRY.get((quantity, name))) in _BUILTIN
