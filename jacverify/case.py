"""A Case: what is differentiated, at which inputs, along which batch axis, in which dtype.

Every method works on one canonical form of a case (see NOTE [canonical form]), so the methods
stay small and the mapping back to the user's shapes lives here alone.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from jacverify.errors import FunctionRaised, InvalidArgument
from jacverify.validation import check_int, shown

__all__ = ["Case", "make_case", "Flat", "flatten", "call", "evaluate", "resolve_device",
           "sparse_kind", "unravel"]

# NOTE [canonical form]
# A case f(x_1, ..., x_k) with batch axis `a` on every input and `a_out` on every output is
# turned into g: (B, N) -> (B, M), where row b of the input is sample b of every x_i flattened and
# concatenated, and row b of the output is sample b of every output flattened and concatenated.
# g only splits, reshapes and moves axes around the user's own call, so every derivative of g is a
# derivative of f: the per-sample Jacobian J[b] = d g(x)[b] / d x[b] has shape (B, M, N), and its
# column blocks are the per-sample Jacobians with respect to each input.


def _shape(t: torch.Tensor | Sequence[int]) -> tuple[int, ...]:
    return tuple(t.shape) if isinstance(t, torch.Tensor) else tuple(t)


@dataclass(frozen=True)
class Case:
    """A function, its inputs and how to read them; ``repr`` shows what re-creates it.

    Built with :func:`make_case`, which validates every field.
    """

    fn: Callable[..., torch.Tensor]
    inputs: tuple[torch.Tensor, ...]
    batch_axis: int = 0
    out_batch_axis: int = 0
    dtype: torch.dtype = torch.float32
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    seed: int = 0

    @property
    def batch_size(self) -> int:
        return self.inputs[0].shape[self.batch_axis]

    @property
    def sample_shapes(self) -> tuple[tuple[int, ...], ...]:
        """Per-sample shape of each input (the batch axis removed)."""
        return tuple(_drop(t.shape, self.batch_axis) for t in self.inputs)

    def __repr__(self) -> str:
        name = getattr(self.fn, "__qualname__", None) or type(self.fn).__name__
        fn = repr(self.fn) if isinstance(self.fn, torch.nn.Module) else name
        fn = fn if "\n" not in fn else f"{type(self.fn).__name__}(...)"
        shapes = ", ".join(f"torch.randn{tuple(t.shape)}" for t in self.inputs)
        return (
            f"jacverify.make_case({fn}, ({shapes},), batch_axis={self.batch_axis}, "
            f"out_batch_axis={self.out_batch_axis}, dtype={self.dtype}, "
            f"device={str(self.device)!r}, seed={self.seed})"
        )


def _drop(shape: Sequence[int], axis: int) -> tuple[int, ...]:
    return tuple(s for i, s in enumerate(shape) if i != axis)


def _describe(value: object) -> str:
    return f"{shown(value)} (type={type(value).__name__})"


def make_case(
    fn: Callable[..., torch.Tensor],
    inputs: torch.Tensor | Sequence[torch.Tensor],
    *,
    batch_axis: int = 0,
    out_batch_axis: int | None = None,
    dtype: torch.dtype | None = None,
    device: str | torch.device | None = None,
    seed: int = 0,
) -> Case:
    """Validate a function and its inputs and return a :class:`Case`.

    Args:
        fn: a callable (an ``nn.Module`` or a function) taking the inputs, returning a tensor or a
            tuple of tensors that keep the batch axis.
        inputs: a floating tensor or a tuple of them, all with the same batch size.
        batch_axis: the batch axis of every input.
        out_batch_axis: the batch axis of every output; defaults to ``batch_axis``.
        dtype: the dtype the methods run in; defaults to the inputs' dtype.
        device: where the methods run; defaults to the inputs' device.
        seed: seeds every random choice of the check.

    Returns:
        The validated case, with inputs (and a module's parameters) cast to ``dtype`` and ``device``.

    Raises:
        InvalidArgument: naming the argument that is wrong and how to fix it.

    >>> case = make_case(torch.nn.Linear(3, 2), torch.zeros(4, 3))
    >>> case.batch_size, case.sample_shapes
    (4, ((3,),))
    """
    if not callable(fn):
        raise InvalidArgument(f"fn={_describe(fn)} is not callable; pass an nn.Module or a function")
    tensors = (inputs,) if isinstance(inputs, torch.Tensor) else inputs
    if not isinstance(tensors, (tuple, list)) or not tensors:
        raise InvalidArgument(
            f"inputs={_describe(inputs)} must be a tensor or a non-empty tuple of tensors"
        )
    for i, t in enumerate(tensors):
        if not isinstance(t, torch.Tensor):
            raise InvalidArgument(
                f"inputs[{i}]={_describe(t)} is not a tensor; jacverify differentiates with "
                "respect to every input, so close over non-tensor arguments with a lambda"
            )
        if not (t.is_floating_point() or t.is_complex()):
            raise InvalidArgument(
                f"inputs[{i}] has dtype {t.dtype}, which has no derivative; pass a floating "
                "tensor (e.g. x.float()), or close over integer arguments with a lambda"
            )
        if t.is_complex():
            raise InvalidArgument(
                f"inputs[{i}] is complex ({t.dtype}); jacverify checks real Jacobians only"
            )
        if t.is_meta:
            raise InvalidArgument(
                f"inputs[{i}] is a meta tensor (shape {tuple(t.shape)}, no values); derivatives "
                "are checked on values: pass a tensor on 'cpu' or 'cuda'"
            )
        if t.is_floating_point() and not bool(torch.isfinite(t).all()):
            bad = int((~torch.isfinite(t)).sum())
            raise InvalidArgument(
                f"inputs[{i}] (shape {tuple(t.shape)}) holds {bad} NaN or Inf entr"
                f"{'y' if bad == 1 else 'ies'}; derivatives are checked at finite points: "
                "pass finite inputs"
            )
    check_int("batch_axis", batch_axis)
    for i, t in enumerate(tensors):
        if not -t.ndim <= batch_axis < t.ndim:
            raise InvalidArgument(
                f"batch_axis={batch_axis} is out of range for inputs[{i}] of shape "
                f"{tuple(t.shape)}; use an axis in [0, {t.ndim - 1}]"
            )
    sizes = {t.shape[batch_axis] for t in tensors}
    if len(sizes) > 1:
        shapes = ", ".join(str(tuple(t.shape)) for t in tensors)
        raise InvalidArgument(
            f"inputs have different batch sizes along batch_axis={batch_axis}: {shapes}; "
            "every input needs one entry per sample"
        )
    if sizes == {0}:
        raise InvalidArgument("inputs have batch size 0; pass at least one sample")
    axis = batch_axis % tensors[0].ndim if len({t.ndim for t in tensors}) == 1 else batch_axis
    if axis < 0 and len({t.ndim for t in tensors}) > 1:
        raise InvalidArgument(
            f"batch_axis={batch_axis} is negative and the inputs have different ranks; "
            "give a non-negative batch axis"
        )
    if dtype is None:
        dtypes = {t.dtype for t in tensors}
        if len(dtypes) > 1:
            raise InvalidArgument(
                f"inputs have different dtypes {sorted(map(str, dtypes))}; pass dtype= to run "
                "every method in one dtype"
            )
        dtype = tensors[0].dtype
    elif not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
        raise InvalidArgument(f"dtype={_describe(dtype)} must be a floating torch.dtype")
    device = resolve_device(device, tensors[0].device)
    fn = _to(fn, dtype, device)
    # copied: the caller's tensors are never touched, whatever the function does to its inputs
    inputs = tuple(t.detach().to(device=device, dtype=dtype, copy=True) for t in tensors)
    out_axis = axis if out_batch_axis is None else out_batch_axis
    check_int("seed", seed)
    return Case(fn, inputs, axis, out_axis, dtype, device, seed)


def resolve_device(device: str | torch.device | None,
                   default: torch.device | None = None) -> torch.device:
    """``device`` as a ``torch.device`` where methods can run (``default`` when None).

    Raises:
        InvalidArgument: not a device, the meta device, or CUDA where there is none.
    """
    if device is None:
        return default if default is not None else torch.device("cpu")
    try:
        device = torch.device(device)
    except (RuntimeError, TypeError) as e:
        raise InvalidArgument(f"device={_describe(device)} is not a device: {e}") from None
    if device.type == "meta":
        raise InvalidArgument("device='meta' holds no values, so no derivative can be checked "
                              "there; use 'cpu' or 'cuda'")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise InvalidArgument(
            f"device={str(device)!r} was asked for but CUDA is not available here; use 'cpu'"
        )
    return device


def _to(fn: Callable, dtype: torch.dtype, device: torch.device) -> Callable:
    """A module is copied to the dtype and device; a plain function is taken as it is."""
    if isinstance(fn, torch.nn.Module):
        params = [*fn.parameters(), *fn.buffers()]
        if any(p.dtype != dtype or p.device != device for p in params if p.is_floating_point()):
            return copy.deepcopy(fn).to(device=device, dtype=dtype)
    return fn


@dataclass(frozen=True)
class Flat:
    """The canonical form of a case (see NOTE [canonical form]).

    ``fn`` maps ``x`` of shape (B, N) to (B, M); ``in_shapes``/``out_shapes`` are per-sample shapes
    of each input/output, used to turn a flat (sample, output, input) index back into the user's.
    """

    fn: Callable[[torch.Tensor], torch.Tensor]
    x: torch.Tensor
    in_shapes: tuple[tuple[int, ...], ...]
    out_shapes: tuple[tuple[int, ...], ...]
    vectors: torch.Tensor | None = None  # (K, N) or (K, M) for the JVP/VJP quantities
    differentiates: bool = False  # the forward itself takes derivatives (NOTE [values only])
    out_names: tuple[str, ...] | None = None  # the keys of a dict output, in its order
    # the coarser dtype fn computes in inside, whose rounding its values carry (NOTE [effective
    # precision]); None: x's own
    precision: torch.dtype | None = None

    def values(self, x: torch.Tensor) -> torch.Tensor:
        """``fn(x)`` as values, for the references: no graph is kept (NOTE [values only])."""
        if self.differentiates:
            with torch.enable_grad():
                return self.fn(x.detach().requires_grad_()).detach()
        with torch.no_grad():
            return self.fn(x)

    def at(self, fn: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor) -> Flat:
        """This form's shapes with the function ``fn`` at the point ``x``, (B, N): what a cached
        plan's fast path builds per call, without the frozen dataclass's ``__init__`` (one of the
        steps that made auto's call 5-8% slower than its method's at batch 1, NOTE [last plan]).

        >>> f = Flat(torch.tanh, torch.zeros(2, 3), ((3,),), ((3,),))
        >>> g = f.at(torch.sin, torch.ones(2, 3))
        >>> float(g.x.sum()), g.fn is torch.sin, g.out_shapes, float(f.x.sum())
        (6.0, True, ((3,),), 0.0)
        """
        new = object.__new__(Flat)
        new.__dict__.update(self.__dict__, fn=fn, x=x)
        return new

    @property
    def batch_size(self) -> int:
        return self.x.shape[0]

    @property
    def eps(self) -> float:
        """The machine epsilon of the rounding ``fn``'s values carry: ``precision``'s, else x's."""
        return torch.finfo(self.precision or self.x.dtype).eps

    @property
    def n_in(self) -> int:
        return self.x.shape[1]

    @property
    def n_out(self) -> int:
        return sum(math.prod(s) for s in self.out_shapes)

    def describe_index(self, index: tuple[int, ...],
                       labels: tuple[str, ...] = ("sample", "output", "input")) -> str:
        """Name an entry of a quantity in the user's shapes, e.g. ``sample 2, output[1], input[0]``."""
        parts = []
        for i, label in zip(index, labels):
            if label == "output":
                parts.append(self.describe_output(i))
            elif label == "input":
                parts.append(_unravel(i, self.in_shapes, "input"))
            else:
                parts.append(f"{label} {i}")
        return ", ".join(parts)

    def describe_output(self, m: int) -> str:
        """Name a flat output entry in the user's shapes, e.g. ``output[1, 2]``, or
        ``output['mu'][1]`` for a dict output."""
        return _unravel(m, self.out_shapes, "output", self.out_names)


def unravel(flat: int | torch.Tensor, shape: Sequence[int]) -> tuple[int, ...]:
    """The index into ``shape`` of the row-major position ``flat`` (an int or a one-element
    tensor, as ``argmax`` gives): ``torch.unravel_index`` in Python, which costs a fraction of
    its several tensor ops (a check compares every method and route, each naming its worst
    entry).

    >>> unravel(5, (2, 3)), unravel(torch.tensor(7), (2, 2, 2)), unravel(0, ())
    ((1, 2), (1, 1, 1), ())
    """
    rest, out = int(flat), []
    for size in reversed(shape):
        rest, i = divmod(rest, size)
        out.append(i)
    return tuple(reversed(out))


def _unravel(flat: int, shapes: Sequence[tuple[int, ...]], what: str,
             names: Sequence[str] | None = None) -> str:
    for k, shape in enumerate(shapes):
        size = math.prod(shape)
        if flat < size:
            idx = unravel(flat, shape)
            label = (f"{what}[{names[k]!r}]" if names else
                     f"{what}[{k}]" if len(shapes) > 1 else what)
            return f"{label}{list(idx)}"
        flat -= size
    raise IndexError(f"{what} index out of range")


def flatten(case: Case, fn: Callable | None = None, dtype: torch.dtype | None = None,
            device: torch.device | None = None) -> Flat:
    """The canonical form of ``case``, optionally of another version of its function, dtype or
    device (the references' float64 copy on the CPU).

    Raises:
        FunctionRaised: the function failed on the case's inputs.
        InvalidArgument: the output has no batch axis of the batch size.
    """
    fn = case.fn if fn is None else fn
    dtype = case.dtype if dtype is None else dtype
    device = case.device if device is None else device
    axis, out_axis = case.batch_axis, case.out_batch_axis
    in_shapes = case.sample_shapes
    sizes = [math.prod(s) for s in in_shapes]

    def g(x: torch.Tensor) -> torch.Tensor:
        b = x.shape[0]
        parts = x.split(sizes, dim=1) if len(sizes) > 1 else (x,)
        xs = [_moved(p.reshape(b, *s), 0, axis) for p, s in zip(parts, in_shapes)]
        out = fn(*xs)
        if isinstance(out, torch.Tensor):  # (the common case, kept free of a cat under vmap)
            return _moved(out, out_axis, 0).reshape(b, -1)
        if isinstance(out, Mapping):  # flattened by key, in the dict's order
            out = tuple(out.values())
        return torch.cat([_moved(o, out_axis, 0).reshape(b, -1) for o in out], dim=1)

    x = torch.cat(
        [t.to(device=device, dtype=dtype).movedim(axis, 0).reshape(case.batch_size, -1)
         for t in case.inputs], dim=1
    )
    out, differentiates = evaluate(fn, tuple(t.to(device=device, dtype=dtype, copy=True)
                                             for t in case.inputs))
    names = tuple(str(k) for k in out) if isinstance(out, Mapping) else None
    outs = tuple(out.values()) if isinstance(out, Mapping) else \
        out if isinstance(out, (tuple, list)) else (out,)
    out_shapes = []
    for i, o in enumerate(outs):
        where = f"output[{names[i]!r}]" if names else f"output[{i}]" if len(outs) > 1 \
            else "the output"
        if not isinstance(o, torch.Tensor):
            raise InvalidArgument(
                f"{where} is {_describe(o)}, not a tensor; return a tensor or a tuple of tensors"
            )
        kind = sparse_kind(o)
        if kind is not None:  # torch's own errors came from deep inside (a fresh user)
            raise InvalidArgument(f"{where} is a {kind} tensor; jacverify compares dense values: "
                                  "return a dense tensor with values (.to_dense(), a padded "
                                  "tensor, or one computed on a real device)")
        if not -o.ndim <= out_axis < o.ndim or o.shape[out_axis] != case.batch_size:
            raise InvalidArgument(
                f"{where} has shape {tuple(o.shape)}, with no batch axis {out_axis} of size "
                f"{case.batch_size}; per-sample Jacobians need one output row per sample "
                "(return per-sample values; jacverify.check takes out_batch_axis= for an "
                "output whose batch axis is another)"
            )
        if not o.is_floating_point():
            raise InvalidArgument(
                f"{where} has dtype {o.dtype}, which has no derivative; return floating values"
            )
        out_shapes.append(_drop(o.shape, out_axis))
    n_in, n_out = x.shape[1], sum(math.prod(s) for s in out_shapes)
    if n_in == 0 or n_out == 0:  # every way's answer is (B, 0, N) or (B, M, 0): nothing to check
        raise InvalidArgument(
            f"the Jacobian per sample is empty: {n_out} output entries by {n_in} input entries "
            f"(inputs {', '.join(str(tuple(t.shape)) for t in case.inputs)}, outputs "
            f"{', '.join(str(s) for s in out_shapes)} per sample); pass a function and inputs "
            "with at least one entry per sample each way")
    return Flat(g, x.detach(), in_shapes, tuple(out_shapes), differentiates=differentiates,
                out_names=names)


def _moved(t: torch.Tensor, source: int, destination: int) -> torch.Tensor:
    return t if source == destination else t.movedim(source, destination)


# NOTE [values only]
# The references evaluate f many times (pre-checks, finite differences) and need values, not
# graphs, so they run it under no_grad. A forward that itself differentiates -- a PINN residual
# taking autograd.grad(u, x, create_graph=True), an energy model returning -dE/dx, a module with a
# hook that calls backward -- raises there. `call` then tries once more with grad enabled and
# inputs that require grad; if that works, the Flat is marked `differentiates` and every value-only
# evaluation (`Flat.values`) runs that way, its output detached.
def call(fn: Callable, inputs: tuple[torch.Tensor, ...]):
    """``fn(*inputs)`` as values (NOTE [values only]).

    Raises:
        FunctionRaised: the function raised; the message gives the shapes and dtype.
    """
    return evaluate(fn, inputs)[0]


def sparse_kind(t: torch.Tensor) -> str | None:
    """What kind of tensor without dense values ``t`` is ("nested", "meta", "sparse_coo", ...),
    or None for a dense (strided) one.

    >>> sparse_kind(torch.zeros(2)), sparse_kind(torch.zeros(2).to_sparse())
    (None, 'sparse_coo')
    """
    if t.is_nested:
        return "nested"
    if t.is_meta:
        return "meta"
    return None if t.layout == torch.strided else str(t.layout).removeprefix("torch.")


def evaluate(fn: Callable, inputs: tuple[torch.Tensor, ...]) -> tuple[Any, bool]:
    """``fn(*inputs)`` as values, and whether it needed grad mode to run (NOTE [values only]).

    Raises:
        FunctionRaised: the function raised either way; the message gives the shapes and dtype.
    """
    try:
        with torch.no_grad():
            return fn(*inputs), False
    except Exception as first:  # noqa: BLE001 - the user's function may raise anything
        try:
            with torch.enable_grad():
                out = fn(*(t.detach().requires_grad_() for t in inputs))
            detached = tuple(o.detach() if isinstance(o, torch.Tensor) else o for o in out) \
                if isinstance(out, (tuple, list)) else out.detach() \
                if isinstance(out, torch.Tensor) else out
            return detached, True
        except Exception:  # noqa: BLE001 - report the first error: it is the plain call's
            pass
        shapes = ", ".join(str(tuple(t.shape)) for t in inputs)
        raise FunctionRaised(
            f"the function raised {type(first).__name__}: {first} -- on inputs of shape {shapes} "
            f"({inputs[0].dtype}); check that it accepts a batch in this layout and dtype"
        ) from first
