"""A user's own derivative code: how it is called, and how its result is read.

People write ``impl(f, x)`` or ``impl(x)`` with ``f`` closed over, and return results batch first,
in the sum trick's ``(*out, B, *in)``, as a tuple per input, or (physics-informed code) a tuple per
coordinate. :func:`layouts` lists the layouts a quantity's result may come in, :func:`detect_layout`
picks the one the shapes say (NOTE [layout detection]), and :func:`user_method` turns the code into a
registered :class:`~jacverify.Method` of any quantity. :func:`check_user_method` is what
``check_method`` runs.
"""

from __future__ import annotations

import dataclasses
import inspect
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from jacverify import validation
from jacverify.case import Flat, make_case, unravel
from jacverify.errors import InvalidArgument
from jacverify.judge import MethodResult, Status
from jacverify.methods import Method
from jacverify.quantity_table import QUANTITY_NAMES

__all__ = ["USER_QUANTITIES", "CALLS", "Layout", "layouts", "detect_layout", "calling_convention",
           "user_method", "check_user_method", "accepted_options", "explain_diagonal"]

USER_QUANTITIES = QUANTITY_NAMES  # every quantity of the registry (jacverify/quantity_table.py)
CALLS = ("with_fn", "inputs_only")  # impl(f, *data) or impl(*data) with f closed over
# first-parameter names that say "the function comes first" when the signature alone cannot
_FN_NAMES = {"f", "fn", "func", "function", "model", "net", "module", "network", "u", "u_net",
             "apply", "forward", "mlp", "pinn"}


@dataclass(frozen=True)
class Layout:
    """One way a result may be laid out, and how to read it into the canonical form.

    Attributes:
        name: the key ``layout=`` accepts, e.g. ``"sum_trick"``.
        description: the layout in words with the case's shapes, e.g. ``"sum trick (*out, B, *in)
            = (2, 4, 3)"``.
        shapes: the shape of each part (one part for a single tensor).
        is_tuple: whether the result is a tuple (or list) of tensors.
        convert: the parts to the canonical tensor, e.g. (B, M, N) for a per-sample Jacobian.
    """

    name: str
    description: str
    shapes: tuple[tuple[int, ...], ...]
    is_tuple: bool
    convert: Callable[[Sequence[torch.Tensor]], torch.Tensor] = dataclasses.field(repr=False)

    def matches(self, value: Any) -> bool:
        """Whether ``value`` has this layout's type and shapes."""
        parts = _parts(value)
        if parts is None or isinstance(value, torch.Tensor) == self.is_tuple:
            return False
        return len(parts) == len(self.shapes) and all(
            tuple(p.shape) == s for p, s in zip(parts, self.shapes))

    def read(self, value: Any) -> torch.Tensor:
        """``value`` (which :meth:`matches`) in the canonical form."""
        return self.convert(_parts(value))  # type: ignore[arg-type]

    def positions(self) -> torch.Tensor:
        """The canonical form of the result's own positions: entry i of part p is ``offset_p + i``
        (float64, exact), so a canonical index can be traced back to the user's layout."""
        parts, offset = [], 0
        for s in self.shapes:
            n = math.prod(s)
            parts.append(torch.arange(offset, offset + n, dtype=torch.float64).reshape(s))
            offset += n
        return self.convert(parts)

    def locate(self, index: Sequence[int]) -> str:
        """The user's own index of the canonical entry ``index``, e.g. ``result[1][3, 0]``.

        >>> lay = next(l for l in layouts("batch_jacobian", 4, ((2,),), ((3,),)) if l.name == "sum_trick")
        >>> lay.locate((1, 0, 2))
        'result[0, 1, 2]'
        """
        pos = int(self.positions()[tuple(index)])
        for k, s in enumerate(self.shapes):
            n = math.prod(s)
            if pos < n:
                idx = unravel(pos, s)
                head = f"result[{k}]" if self.is_tuple else "result"
                return f"{head}[{', '.join(map(str, idx))}]"
            pos -= n
        raise IndexError(f"index {tuple(index)} is outside the result")


def _parts(value: Any) -> tuple[torch.Tensor, ...] | None:
    if isinstance(value, torch.Tensor):
        return (value,)
    if isinstance(value, (tuple, list)) and value and all(isinstance(p, torch.Tensor) for p in value):
        return tuple(value)
    return None


def _shape(s: Sequence[int]) -> str:
    return "(" + ", ".join(map(str, s)) + ("," if len(s) == 1 else "") + ")"


def _blocks(kind: str, b: int, out: tuple[int, ...], m: int, inp: tuple[int, ...]):
    """Per-part layouts of a (B, M, n) block (``kind`` "first": a Jacobian or a Hessian diagonal)
    or a (B, M, n, n) block ("hessian"): name, words, shape, part -> canonical block."""
    n, o = math.prod(inp), len(out)
    if kind == "hessian":
        yield ("batch_first", "batch first (B, *out, *in, *in)", (b, *out, *inp, *inp),
               lambda t: t.reshape(b, m, n, n))
        yield ("flattened", "flattened (B, M, N, N)", (b, m, n, n), lambda t: t)
        yield ("sum_trick", "sum trick (*out, B, *in, *in)", (*out, b, *inp, *inp),
               lambda t: t.movedim(o, 0).reshape(b, m, n, n))
        if m == 1:
            yield ("squeezed", "one output, squeezed (B, *in, *in)", (b, *inp, *inp),
                   lambda t: t.reshape(b, 1, n, n))
        return
    yield ("batch_first", "batch first (B, *out, *in)", (b, *out, *inp), lambda t: t.reshape(b, m, n))
    yield ("flattened", "flattened (B, M, N)", (b, m, n), lambda t: t)
    yield ("sum_trick", "sum trick (*out, B, *in)", (*out, b, *inp),
           lambda t: t.movedim(o, 0).reshape(b, m, n))
    yield ("full_jacobian", "full Jacobian over the batch (B, *out, B, *in), its sample diagonal",
           (b, *out, b, *inp),
           lambda t: t.reshape(b, m, b, n).diagonal(dim1=0, dim2=2).permute(2, 0, 1))
    if m == 1:  # a per-sample gradient, or the diagonal of a scalar's Hessian
        yield ("squeezed", "one output, squeezed (B, *in)", (b, *inp), lambda t: t.reshape(b, 1, n))


def layouts(quantity: str, batch: int, out_shapes: Sequence[tuple[int, ...]],
            in_shapes: Sequence[tuple[int, ...]]) -> tuple[Layout, ...]:
    """Every layout a result of ``quantity`` may come in, with the case's shapes.

    Args:
        quantity: one of :data:`USER_QUANTITIES` but the combined and parameter ones.
        batch: B, or K (the number of vectors) for ``jvp_set`` and ``vjp_set``.
        out_shapes, in_shapes: per-sample shapes of each output and each input.

    Returns:
        The layouts, the canonical one first. Canonical forms: (B, M, N) for ``batch_jacobian``
        and ``hessian_diagonal``, (B, M, N, N) for ``hessian``, (B, M) for ``per_sample_jvp``,
        (K, M) for ``jvp_set`` and (K, N) for ``vjp_set``.

    Raises:
        InvalidArgument: an unknown quantity.

    >>> [l.name for l in layouts("hessian_diagonal", 8, ((1,),), ((2,),))]  # doctest: +NORMALIZE_WHITESPACE
    ['batch_first', 'flattened', 'sum_trick', 'full_jacobian', 'squeezed', 'per_input_batch_first',
     'per_input_flattened', 'per_input_sum_trick', 'per_input_full_jacobian', 'per_input_squeezed',
     'per_coordinate', 'per_coordinate_squeezed']
    """
    out_shapes, in_shapes = tuple(map(tuple, out_shapes)), tuple(map(tuple, in_shapes))
    m = sum(math.prod(s) for s in out_shapes)
    n = sum(math.prod(s) for s in in_shapes)
    out = out_shapes[0] if len(out_shapes) == 1 else (m,)
    b = batch
    found: list[Layout] = []

    def add(name: str, words: str, shapes, is_tuple: bool, convert) -> None:
        shapes = tuple(tuple(s) for s in shapes)
        shown = ", ".join(map(_shape, shapes))
        words = f"{words} = {'(' + shown + ')' if is_tuple else shown}"
        if name not in {l.name for l in found}:
            found.append(Layout(name, words, shapes, is_tuple, convert))

    if quantity in ("batch_jacobian", "hessian_diagonal", "hessian"):
        kind = "hessian" if quantity == "hessian" else "first"
        whole = in_shapes[0] if len(in_shapes) == 1 else (n,)
        for name, words, shape, conv in _blocks(kind, b, out, m, whole):
            add(name, words, (shape,), False, lambda parts, conv=conv: conv(parts[0]))
        if kind == "first":
            per_input = [list(_blocks(kind, b, out, m, s)) for s in in_shapes]
            for j, (name, words, _, _) in enumerate(per_input[0]):
                shapes = [blocks[j][2] for blocks in per_input]
                convs = [blocks[j][3] for blocks in per_input]
                add(f"per_input_{name}", f"a tuple per input, each {words}", shapes, True,
                    lambda parts, convs=convs: torch.cat([c(p) for c, p in zip(convs, parts)], 2))
            if quantity == "hessian_diagonal" and len(in_shapes) == 1:
                add("per_coordinate", "a tuple per input coordinate, each (B, *out)",
                    [(b, *out)] * n, True,
                    lambda parts: torch.stack([p.reshape(b, m) for p in parts], -1))
                if m == 1:
                    add("per_coordinate_squeezed", "a tuple per input coordinate, each (B,)",
                        [(b,)] * n, True, lambda parts: torch.stack(list(parts), -1).reshape(b, 1, n))
    elif quantity == "per_sample_jvp":
        add("batch_first", "batch first (B, *out)", [(b, *out)], False, lambda p: p[0].reshape(b, m))
        add("flattened", "flattened (B, M)", [(b, m)], False, lambda p: p[0])
        if len(out_shapes) > 1:
            add("per_output", "a tuple per output, each (B, *out_i)", [(b, *s) for s in out_shapes],
                True, lambda p: torch.cat([t.reshape(b, -1) for t in p], 1))
    elif quantity in ("jvp_set", "vjp_set"):
        shape, size = (out, m) if quantity == "jvp_set" else (
            (in_shapes[0] if len(in_shapes) == 1 else (n,)), n)
        what = "out" if quantity == "jvp_set" else "in"
        add("vectors_first", f"one row per vector (K, *{what})", [(b, *shape)], False,
            lambda p: p[0].reshape(b, size))
        add("flattened", f"flattened (K, {what.upper()[0] if what == 'in' else 'M'})",
            [(b, size)], False, lambda p: p[0])
        add("vectors_last", f"one column per vector (*{what}, K)", [(*shape, b)], False,
            lambda p: p[0].movedim(-1, 0).reshape(b, size))
    else:
        raise InvalidArgument(f"{validation.describe('quantity', quantity)} must be one of "
                              f"{', '.join(map(repr, USER_QUANTITIES))}")
    return tuple(found)


# NOTE [layout detection]
# A user's result is matched against every layout of its quantity by type and shape alone (no
# values are looked at: a wrong value must still be read as what it claims to be). Layouts whose
# shapes coincide but read the entries the same way (B = 1, or a scalar output, where batch first
# and the sum trick are one permutation) are one reading; two matching layouts that read entries
# differently (out = (B,) makes (B, *out, *in) and (*out, B, *in) the same shape) are ambiguous, and
# the check refuses to guess: InvalidArgument names both readings and the `layout=` that picks one.
def detect_layout(value: Any, candidates: Sequence[Layout], layout: str | None = None) -> Layout | None:
    """The layout of ``value`` among ``candidates`` (NOTE [layout detection]), or None if none fits.

    Raises:
        InvalidArgument: two candidates fit and read the entries differently; or ``layout`` names
            no candidate.

    >>> lays = layouts("batch_jacobian", 4, ((2,),), ((3,),))
    >>> detect_layout(torch.zeros(2, 4, 3), lays).name
    'sum_trick'
    >>> detect_layout(torch.zeros(4, 4, 3), layouts("batch_jacobian", 4, ((4,),), ((3,),)))
    Traceback (most recent call last):
    jacverify.errors.InvalidArgument: the result's layout is ambiguous: shape (4, 4, 3) reads as batch first (B, *out, *in) = (4, 4, 3) or as sum trick (*out, B, *in) = (4, 4, 3); pass layout='batch_first' or layout='sum_trick'
    """
    if layout is not None:
        validation.check_choice("layout", layout, [c.name for c in candidates])
        candidates = [c for c in candidates if c.name == layout]
    fits = [c for c in candidates if c.matches(value)]
    readings: list[Layout] = []
    for c in fits:
        if not any(torch.equal(c.positions(), r.positions()) for r in readings):
            readings.append(c)
    if len(readings) > 1:
        a, b = readings[:2]
        parts = _parts(value) or ()
        shape = ", ".join(_shape(p.shape) for p in parts)
        raise InvalidArgument(
            f"the result's layout is ambiguous: shape {shape} reads as {a.description} or as "
            f"{b.description}; pass layout={a.name!r} or layout={b.name!r}")
    return fits[0] if fits else None


def calling_convention(impl: Callable, n_data: int, calls: str | None = None) -> str:
    """How to call ``impl``: ``"with_fn"`` (``impl(f, *data)``) or ``"inputs_only"``
    (``impl(*data)``, ``f`` closed over), from its signature unless ``calls`` says.

    When both fit (defaults, ``*args``), a first parameter named like a function (``f``, ``fn``,
    ``model``, ``net``, ``u``, ...) or ``*args`` alone means ``"with_fn"``.

    Raises:
        InvalidArgument: no way of calling it fits; ``calls`` is not one of :data:`CALLS`.

    >>> calling_convention(lambda f, x: x, 1), calling_convention(lambda x: x, 1)
    ('with_fn', 'inputs_only')
    """
    if calls is not None:
        return validation.check_choice("calls", calls, CALLS)
    try:
        sig = inspect.signature(impl)
    except (TypeError, ValueError):
        return "with_fn"
    params = [p for p in sig.parameters.values()
              if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    varargs = any(p.kind == p.VAR_POSITIONAL for p in sig.parameters.values())
    required = sum(p.default is p.empty for p in params)

    def fits(k: int) -> bool:
        return required <= k and (varargs or k <= len(params))

    with_fn, only = fits(n_data + 1), fits(n_data)
    if with_fn and only:
        return "with_fn" if not params or params[0].name in _FN_NAMES else "inputs_only"
    if with_fn or only:
        return "with_fn" if with_fn else "inputs_only"
    raise validation.invalid(
        "method", impl, f"callable with the function and {n_data} data argument(s), or with the "
        f"data alone (its signature is {sig})", "or pass calls='with_fn' or calls='inputs_only'")


def _name(impl: Callable) -> str:
    return getattr(impl, "__name__", None) or type(impl).__name__


def _call(impl: Callable, convention: str, fn: Callable, data: Sequence[Any]) -> Any:
    return impl(fn, *data) if convention == "with_fn" else impl(*data)


def _user_inputs(flat: Flat, batch_axis: int) -> tuple[torch.Tensor, ...]:
    """The canonical (B, N) inputs back in the user's shapes, fresh tensors (a user's code may set
    ``requires_grad`` on them or change them in place)."""
    b = flat.batch_size
    sizes = [math.prod(s) for s in flat.in_shapes]
    parts = flat.x.detach().split(sizes, dim=1)
    return tuple(p.reshape(b, *s).movedim(0, batch_axis).clone()
                 for p, s in zip(parts, flat.in_shapes))


def _flat_function(flat: Flat, batch_axis: int) -> Callable:
    """The case's function in the user's shapes, rebuilt from the canonical one (for a method
    registered without the user's own function)."""
    def f(*xs: torch.Tensor):
        if xs[0].ndim == len(flat.in_shapes[0]):  # one sample (under vmap): a batch of one
            out = f(*(t.unsqueeze(batch_axis) for t in xs))
            return out.squeeze(batch_axis) if isinstance(out, torch.Tensor) else tuple(
                o.squeeze(batch_axis) for o in out)
        b = xs[0].shape[batch_axis]
        x = torch.cat([t.movedim(batch_axis, 0).reshape(b, -1) for t in xs], 1)
        y = flat.fn(x)
        outs, start = [], 0
        for s in flat.out_shapes:
            k = math.prod(s)
            outs.append(y[:, start:start + k].reshape(b, *s).movedim(0, batch_axis))
            start += k
        return outs[0] if len(outs) == 1 else tuple(outs)

    return f


@dataclass
class Seen:
    """What the user's method did, filled in as it runs: the convention and the layout read."""

    convention: str = ""
    layout: Layout | None = None
    accepted: tuple[Layout, ...] = ()
    shape: str = ""
    cross: tuple[float, tuple[int, ...]] | None = None  # a full Jacobian's largest cross-sample entry


def _cross_sample(parts: Sequence[torch.Tensor], batch: int,
                  m: int) -> tuple[float, tuple[int, ...]]:
    """The largest |entry| of a full Jacobian (B, *out, B, *in) off the sample diagonal, and where
    as (sample, output, other sample, input)."""
    worst, where = 0.0, ()
    for p in parts:
        off = p.detach().reshape(batch, m, batch, -1).abs().clone()
        idx = torch.arange(batch)
        off[idx, :, idx, :] = 0
        if off.numel() and float(off.max()) > worst:
            worst = float(off.max())
            where = unravel(off.argmax(), off.shape)
    return worst, where


def _reader(quantity: str, layout: str | None, seen: Seen):
    def read(value: Any, batch: int, out_shapes, in_shapes) -> Any:
        cands = layouts(quantity, batch, out_shapes, in_shapes)
        seen.accepted = cands
        parts = _parts(value)
        seen.shape = (", ".join(_shape(p.shape) for p in parts) if parts is not None
                      else type(value).__name__)
        found = detect_layout(value, cands, layout)
        seen.layout = found
        if found is not None and found.name.endswith("full_jacobian") and parts is not None:
            seen.cross = _cross_sample(parts, batch, sum(math.prod(s) for s in out_shapes))
        return value if found is None else found.read(value)

    return read


def _compute(impl: Callable, quantity: str, convention: str, fn_of: Callable[[Flat], Callable],
             batch_axis: int, layout: str | None, seen: Seen, point_shape=None,
             unpick: Callable[[tuple], tuple] = lambda xs: xs):
    """The Method.compute of a user's code for ``quantity``: data from the Flat, result read."""
    read = _reader(quantity, layout, seen)

    def compute(flat: Flat) -> Any:
        fn = fn_of(flat)
        if quantity in ("jvp_set", "vjp_set"):
            x_shape = point_shape if point_shape is not None else flat.in_shapes[0]
            out_shape = flat.out_shapes[0]
            x = flat.x[0].detach().reshape(x_shape).clone()
            k = flat.vectors.shape[0]
            vec = flat.vectors.reshape(k, *(x_shape if quantity == "jvp_set" else out_shape))
            value = _call(impl, convention, fn, (x, vec.clone()))
            return read(value, k, (out_shape,), (x_shape,))
        xs = unpick(_user_inputs(flat, batch_axis))
        data: tuple = xs
        if quantity == "per_sample_jvp":
            b = flat.batch_size
            vec = flat.vectors.reshape(b, *flat.in_shapes[0]).movedim(0, batch_axis).clone()
            data = (*xs, vec)
        value = _call(impl, convention, fn, data)
        return read(value, flat.batch_size, flat.out_shapes, flat.in_shapes)

    return compute


def user_method(impl: Callable, *, quantity: str = "batch_jacobian", name: str | None = None,
                layout: str | None = None, calls: str | None = None,
                assumes_independent: bool = False) -> Method:
    """Make a user's own derivative code a :class:`~jacverify.Method`, for ``register_method``.

    Registered this way the code is called with the case's function rebuilt from the canonical
    form, in the user's shapes with the batch axis first: ``impl(f, x)`` or ``impl(x)`` (for
    ``per_sample_jvp`` also the tangents, for the sets ``impl(f, x, vectors)``). To call it with
    your own function object (its attributes), use :func:`~jacverify.check_method`.

    Args:
        impl: the code; its result may come in any layout of :func:`layouts`.
        quantity: what it computes, one of :data:`USER_QUANTITIES` but ``per_sample_grad`` and
            ``jacobian_and_hessian_diagonal`` (check those with ``check_method``).
        name: the name in reports; ``impl.__name__`` by default.
        layout: a layout name, to skip detection.
        calls: ``"with_fn"`` or ``"inputs_only"``, to skip reading the signature.
        assumes_independent: the code is valid only when samples do not interact.

    Returns:
        A Method of mode ``"user"``.

    Raises:
        InvalidArgument: ``impl`` is not callable, or an argument is not one of its choices.

    >>> import jacverify
    >>> m = user_method(lambda f, x: torch.func.vmap(torch.func.jacrev(f))(x), name="mine")
    >>> jacverify.check(torch.nn.Linear(3, 2), torch.randn(4, 3), methods=[],
    ...                 extra_methods=[m])["mine"].status == "agree"
    True
    """
    if not callable(impl):
        raise validation.invalid("impl", impl, "callable", "pass your derivative function")
    validation.check_choice("quantity", quantity, [q for q in USER_QUANTITIES
                                                   if q not in ("per_sample_grad",
                                                                "jacobian_and_hessian_diagonal")])
    n_data = 2 if quantity in ("jvp_set", "vjp_set", "per_sample_jvp") else 1
    convention = calling_convention(impl, n_data, calls)
    seen = Seen(convention)
    compute = _compute(impl, quantity, convention, lambda flat: _flat_function(flat, 0), 0, layout,
                       seen)
    return Method(name or _name(impl), compute, "user", vectorized=False,  # type: ignore[arg-type]
                  assumes_independent=assumes_independent, quantity=quantity,
                  description=f"{name or _name(impl)} (your own code)")


class Coordinates(torch.nn.Module):
    """``fn`` as a function of some coordinates of its input, the others held where they are:
    the second derivatives of a code that computes ``u_xx`` only, for ``X = (x, t)``.

    Args:
        fn: the function of the whole input, (B, N) with the batch on ``batch_axis``.
        whole_input: the point; ``coordinates`` index its last axis.
        coordinates: which coordinates vary.

    >>> c = Coordinates(lambda X: X.prod(1, keepdim=True), torch.tensor([[2.0, 3.0]]), [1], 0)
    >>> c.picked.tolist(), c(torch.tensor([[5.0]])).tolist()
    ([[3.0]], [[10.0]])
    """

    def __init__(self, fn: Callable, whole_input: torch.Tensor, coordinates: Sequence[int],
                 batch_axis: int) -> None:
        super().__init__()
        if whole_input.ndim != 2:
            raise validation.invalid("coordinates", coordinates, "used with a (B, N) input",
                                     f"the input has shape {tuple(whole_input.shape)}")
        n = whole_input.shape[1 - batch_axis % 2]
        if (not isinstance(coordinates, (tuple, list)) or not coordinates
                or not all(isinstance(k, int) and 0 <= k < n for k in coordinates)
                or len(set(coordinates)) != len(coordinates)):
            raise validation.invalid("coordinates", coordinates,
                                     f"a non-empty tuple of distinct ints in [0, {n - 1}]",
                                     "e.g. coordinates=(0,) for u_xx of X = (x, t)")
        self.fn, self.coordinates, self.axis = fn, tuple(coordinates), batch_axis % 2
        self.register_buffer("point", whole_input.detach().clone())

    @property
    def picked(self) -> torch.Tensor:
        """The selected coordinates of the point, (B, K)."""
        return self.point.index_select(1 - self.axis, torch.tensor(self.coordinates, device=self.point.device))

    def whole(self, picked: torch.Tensor) -> torch.Tensor:
        """The whole input with the selected coordinates replaced by ``picked``."""
        cols = list(self.point.unbind(1 - self.axis))
        for j, k in enumerate(self.coordinates):
            cols[k] = picked.select(1 - self.axis, j).to(self.point.dtype)
        return torch.stack(cols, 1 - self.axis)

    def forward(self, picked: torch.Tensor) -> Any:
        return self.fn(self.whole(picked))

    @property
    def __name__(self) -> str:
        return getattr(self.fn, "__name__", type(self.fn).__name__)


# --- check_method for every quantity ---

def accepted_options(quantity: str) -> set[str]:
    """The keyword options ``check_method(..., quantity=quantity)`` accepts (the fixture drops the
    session's others)."""
    from jacverify.engine import check
    from jacverify import quantities as q

    target = {"batch_jacobian": check, "jvp_set": q.check_jvps, "vjp_set": q.check_vjps,
              "per_sample_jvp": q.check_per_sample_jvps, "hessian": q.check_hessians,
              "hessian_diagonal": q.check_hessian_diagonals,
              "jacobian_and_hessian_diagonal": q.check_hessian_diagonals}.get(quantity)
    if target is None:
        from jacverify.per_sample_grad import check_per_sample_grads as target
    own = {"quantity", "vectors", "layout", "calls", "methods", "loss", "targets"}
    return own | {p.name for p in inspect.signature(target).parameters.values()
                  if p.kind is inspect.Parameter.KEYWORD_ONLY}


def check_user_method(impl: Callable, fn: Callable, inputs: Any, *, quantity: str = "batch_jacobian",
                      vectors: torch.Tensor | None = None, layout: str | None = None,
                      calls: str | None = None, methods: Sequence[str] | None = (),
                      coordinates: Sequence[int] | None = None, **options):
    """``check_method``'s work: the user's code as a required method of ``quantity``.

    See :func:`jacverify.check_method` for the arguments. Returns a Report whose notes say how the
    code was called and which layout was read; a mismatch's reason gives the worst entry in the
    user's own layout (and, for a Hessian diagonal, the mixed partial it equals if it is one).
    """
    if not callable(impl):
        raise validation.invalid("method", impl, "callable",
                                 "pass a function called as method(fn, *inputs) or method(*inputs)")
    validation.check_choice("quantity", quantity, USER_QUANTITIES)
    if quantity == "per_sample_grad":
        from jacverify.per_sample_grad import check_user_per_sample_grads

        return check_user_per_sample_grads(impl, fn, inputs, layout=layout, calls=calls,
                                           methods=methods, **options)
    if vectors is not None and quantity not in ("jvp_set", "vjp_set", "per_sample_jvp"):
        raise validation.invalid("vectors", vectors, f"None for quantity={quantity!r}",
                                 "vectors are for jvp_set, vjp_set and per_sample_jvp")
    name = _name(impl)
    n_data = 2 if quantity in ("jvp_set", "vjp_set", "per_sample_jvp") else 1
    tensors = (inputs,) if isinstance(inputs, torch.Tensor) else tuple(inputs) \
        if isinstance(inputs, (tuple, list)) else inputs
    if quantity in ("batch_jacobian",) and isinstance(tensors, tuple):
        n_data = len(tensors)
    convention = calling_convention(impl, n_data, calls)
    batch_axis = options.get("batch_axis", 0)
    if quantity in ("jvp_set", "vjp_set"):
        return _check_set(impl, fn, inputs, quantity, vectors, layout, convention, methods,
                          name, options)
    case = make_case(fn, inputs, batch_axis=batch_axis, dtype=options.get("dtype"),
                     device=options.get("device"), seed=options.get("seed", 0))
    user_fn = case.fn
    full = None
    if coordinates is not None:
        if quantity not in ("hessian_diagonal", "jacobian_and_hessian_diagonal"):
            raise validation.invalid("coordinates", coordinates, f"None for quantity={quantity!r}",
                                     "coordinates select inputs of a Hessian diagonal")
        full = case
        selected = Coordinates(case.fn, case.inputs[0], coordinates, case.batch_axis)
        fn, inputs = selected, selected.picked
        case = make_case(selected, selected.picked, batch_axis=case.batch_axis, seed=case.seed)
    if quantity == "jacobian_and_hessian_diagonal":
        return _check_both(impl, case, layout, convention, methods, name, options, full)
    seen = Seen(convention)
    fn_for_user = user_fn
    unpick = (lambda xs: xs) if full is None else (lambda xs: (case.fn.whole(xs[0]),))
    compute = _compute(impl, quantity, convention, lambda flat: fn_for_user, case.batch_axis,
                       layout, seen, unpick=unpick)
    user = Method(name, compute, "user", vectorized=False, assumes_independent=False,  # type: ignore[arg-type]
                  quantity=quantity)
    if quantity == "batch_jacobian":
        from jacverify.engine import check

        report = check(fn, inputs, methods=methods, extra_methods=(user,), **options)
    else:
        from jacverify import quantities as q

        if len(case.inputs) != 1:
            raise InvalidArgument(f"quantity={quantity!r} takes one input tensor, got "
                                  f"{len(case.inputs)}; close over the others")
        x = case.inputs[0]
        run = {"hessian": q.check_hessians, "hessian_diagonal": q.check_hessian_diagonals,
               "per_sample_jvp": q.check_per_sample_jvps}[quantity]
        args: tuple = (fn, inputs if isinstance(inputs, torch.Tensor) else inputs[0])
        if quantity == "per_sample_jvp":
            if vectors is None:
                gen = torch.Generator().manual_seed(case.seed)
                vectors = torch.randn(x.shape, generator=gen, dtype=torch.float64).to(x)
            args += (vectors,)
        report = run(*args, methods=methods, extra_methods=(user,), **options)
    return _finish(report, {name: seen}, quantity, full)


def _check_set(impl, fn, x, quantity, vectors, layout, convention, methods, name, options):
    from jacverify import quantities as q

    if not isinstance(x, torch.Tensor):
        raise validation.invalid("inputs", x, "a tensor (the point) for quantity=" + repr(quantity))
    cast = make_case(fn, x.unsqueeze(0), dtype=options.get("dtype"), device=options.get("device"))
    user_fn = cast.fn
    if vectors is None:
        gen = torch.Generator().manual_seed(options.get("seed", 0))
        if quantity == "jvp_set":
            shape = tuple(x.shape)
        else:
            from jacverify.case import call

            shape = tuple(call(user_fn, (cast.inputs[0][0],)).shape)
        vectors = torch.randn((3, *shape), generator=gen, dtype=torch.float64).to(x)
    seen = Seen(convention)
    compute = _compute(impl, quantity, convention, lambda flat: user_fn, 0, layout, seen,
                       point_shape=tuple(x.shape))
    user = Method(name, compute, "user", vectorized=False, assumes_independent=False,  # type: ignore[arg-type]
                  quantity=quantity)
    run = q.check_jvps if quantity == "jvp_set" else q.check_vjps
    options = {k: v for k, v in options.items() if k != "batch_axis"}
    options.setdefault("scaling", ())
    report = run(fn, x, vectors, methods=methods, extra_methods=(user,), **options)
    return _finish(report, {name: seen}, quantity)


def _check_both(impl, case, layout, convention, methods, name, options, full=None):
    """(first, second) returned together: each part judged against its own references."""
    from jacverify.engine import check
    from jacverify import quantities as q

    if len(case.inputs) != 1:
        raise InvalidArgument("quantity='jacobian_and_hessian_diagonal' takes one input tensor, "
                              f"got {len(case.inputs)}; close over the others")
    first_seen, second_seen = Seen(convention), Seen(convention)
    user_fn = case.fn if full is None else full.fn
    unpick = (lambda xs: xs) if full is None else (lambda xs: (case.fn.whole(xs[0]),))

    def part(k: int, sub: str, seen: Seen):
        lay = None if layout is None else layout.split("+")[k] if "+" in layout else None
        read = _reader(sub, lay, seen)

        def compute(flat: Flat) -> Any:
            value = _call(impl, convention, user_fn, unpick(_user_inputs(flat, case.batch_axis)))
            if not isinstance(value, (tuple, list)) or len(value) != 2:
                got = type(value).__name__ + (f" of {len(value)}" if isinstance(value, (tuple, list)) else "")
                raise InvalidArgument(f"{name} returned {got}; quantity="
                                      "'jacobian_and_hessian_diagonal' expects a pair (first, second)")
            return read(value[k], flat.batch_size, flat.out_shapes, flat.in_shapes)

        return Method(f"{name}[{k}]", compute, "user", vectorized=False,  # type: ignore[arg-type]
                      assumes_independent=False, quantity=sub)

    keep = {k: v for k, v in options.items() if k in accepted_options("hessian_diagonal")
            and k not in ("dtype", "device")}
    first = check(case.fn, case.inputs, methods=[],
                  extra_methods=(part(0, "batch_jacobian", first_seen),),
                  **{k: v for k, v in options.items() if k in accepted_options("batch_jacobian")})
    second = q.check_hessian_diagonals(case.fn, case.inputs[0], methods=methods,
                                       extra_methods=(part(1, "hessian_diagonal", second_seen),),
                                       **keep)
    first = _finish(first, {f"{name}[0]": first_seen}, "batch_jacobian")
    second = _finish(second, {f"{name}[1]": second_seen}, "hessian_diagonal", full)
    notes = tuple(n for n in first.notes + second.notes if n not in second.notes) + second.notes
    return dataclasses.replace(
        second, results=(first[f"{name}[0]"],) + second.results,
        quantity="jacobian_and_hessian_diagonal", notes=notes,
        findings=first.findings + second.findings, required=(f"{name}[0]", f"{name}[1]"),
        trusted=tuple(dict.fromkeys(first.trusted + second.trusted)))


def _finish(report, seen: dict[str, Seen], quantity: str, full=None):
    """The report with the user's methods required, how each was called and read in its notes,
    and each mismatch's worst entry in the user's own layout."""
    notes, results = list(report.notes), []
    for r in report.results:
        s = seen.get(r.method)
        if s is None:
            results.append(r)
            continue
        if r.status == Status.UNSUPPORTED and "layout is ambiguous" in (r.reason or ""):
            raise InvalidArgument(f"{r.method}: {r.reason.removeprefix('InvalidArgument: ')}")
        call = f"{r.method}(f, ...)" if s.convention == "with_fn" else f"{r.method}(...) (f closed over)"
        if s.layout is not None:
            notes.append(f"{r.method}: called as {call}; its result {s.shape} read as "
                         f"{s.layout.description}")
        results.append(_explain(r, s, report, quantity, full))
    return dataclasses.replace(report, results=tuple(results), notes=tuple(notes),
                               required=tuple(seen))


def _cross_checked(r: MethodResult, s: Seen, report) -> MethodResult:
    """A full Jacobian's cross-sample blocks must be 0 when samples do not interact: the per-sample
    check reads only its diagonal, so an entry off it is judged here (sqrt(eps) of max|J|)."""
    if s.cross is None or report.coupling.coupled or r.status != Status.AGREE:
        return r
    value, where = s.cross
    allowed = torch.finfo(report.case.dtype).eps ** 0.5 * float(report.reference.abs().max())
    if value <= allowed:
        return r
    return dataclasses.replace(r, status=Status.MISMATCH, reason=(
        f"its full Jacobian has {value:.3g} at (sample, output, other sample, input) = {where}, "
        f"off the sample diagonal, where samples do not interact (allowed {allowed:.2g}): the "
        "cross-sample blocks must be 0"))


def _explain(r: MethodResult, s: Seen, report, quantity: str, full=None) -> MethodResult:
    crossed = _cross_checked(r, s, report)
    if crossed is not r or r.status != Status.MISMATCH:
        return crossed
    if s.layout is None and s.accepted:
        accepted = "; ".join(f"{l.name}: {l.description}" for l in s.accepted)
        return dataclasses.replace(r, reason=f"{r.reason}; the result ({s.shape}) has none of the "
                                   f"layouts {quantity} accepts: {accepted}")
    c = r.worst
    if c is None or s.layout is None:
        return r
    if report.index_labels[:1] == ("probe",):  # projections: no entry of the user's layout
        where = report.flat.describe_index(c.worst_index, report.index_labels)
        text = (f"worst projection uᵀJv ({where}): you returned {c.value_at_worst:.6g}, the "
                f"reference is {c.reference_at_worst:.6g} (layout read: {s.layout.name}; "
                "verification='full' names the entry)")
        return dataclasses.replace(r, reason=f"{r.reason}; {text}" if r.reason else text)
    flat, index = report.flat, tuple(c.worst_index)
    if full is not None and quantity == "hessian_diagonal":  # selected coordinates -> whole input
        from jacverify.case import flatten

        flat = flatten(full)
        index = (*index[:2], report.case.fn.coordinates[index[2]])
    where = flat.describe_index(index, report.index_labels) if flat is not None else str(index)
    text = (f"worst entry in your layout ({s.layout.name}): {s.layout.locate(c.worst_index)}, "
            f"that is {where}: you returned {c.value_at_worst:.6g}, the reference is "
            f"{c.reference_at_worst:.6g}")
    if quantity == "hessian_diagonal" and flat is not None:
        extra = explain_diagonal(flat, index, c.value_at_worst, c.reference_at_worst)
        text += f"; {extra}" if extra else ""
    return dataclasses.replace(r, reason=f"{r.reason}; {text}" if r.reason else text)


def explain_diagonal(flat: Flat, index: Sequence[int], value: float, reference: float) -> str | None:
    """What a wrong Hessian-diagonal entry equals, if it is a known slip: the mixed partial added
    (``u_xx + u_xt``: the gradient of ``u_x`` taken with respect to a tensor of several
    coordinates, then summed), the whole row summed, or a mixed partial alone.

    Args:
        flat: the canonical case; its Hessian is recomputed (float64 where the function runs so).
        index: (sample, output, input) of the wrong entry; ``value`` is the user's there,
            ``reference`` the true second derivative.

    Returns:
        A sentence, or None when the value is none of these.

    >>> f = Flat(lambda x: (x[:, :1] ** 2 * x[:, 1:]), torch.tensor([[1.0, 2.0]], dtype=torch.float64),
    ...          ((2,),), ((1,),))
    >>> explain_diagonal(f, (0, 0, 0), 4.0 + 2.0, 4.0)[:60]
    'it equals d²y/dx[0]² + d²y/dx[0]dx[1] = 4 + 2: the mixed par'
    """
    from jacverify.methods.second_order import loop

    b, m, k = (int(i) for i in index)
    if flat.n_in < 2:
        return None
    try:
        one = dataclasses.replace(flat, x=flat.x[b:b + 1].double())
        h = loop(one)[0, m, k]
    except Exception:  # noqa: BLE001 - the function does not run in float64: use its own dtype
        try:
            h = loop(dataclasses.replace(flat, x=flat.x[b:b + 1]))[0, m, k].double()
        except Exception:  # noqa: BLE001 - no explanation then
            return None
    scale = float(h.abs().max()) + abs(reference) + 1e-300
    tol = 1e-4 * scale

    def name(j: int) -> str:
        return flat.describe_index((j,), ("input",)).replace("input", "x")

    xk = name(k)
    candidates = []
    for j in range(flat.n_in):
        if j != k:
            candidates.append((float(h[k] + h[j]),
                               f"d²y/d{xk}² + d²y/d{xk}d{name(j)} = {float(h[k]):.4g} + {float(h[j]):.4g}: "
                               f"the mixed partial d²y/d{xk}d{name(j)} is added (the gradient of "
                               f"dy/d{xk} was taken with respect to a tensor holding several "
                               "coordinates and summed over them, or taken with grad_outputs=ones "
                               "of the wrong coordinate)"))
    candidates.append((float(h.sum()), f"the sum of row {xk} of the Hessian, sum_j d²y/d{xk}dx_j = "
                       f"{float(h.sum()):.4g}: every mixed partial is added"))
    for j in range(flat.n_in):
        if j != k:
            candidates.append((float(h[j]), f"the mixed partial d²y/d{xk}d{name(j)} = "
                               f"{float(h[j]):.4g}, not d²y/d{xk}² = {float(h[k]):.4g}"))
    for v, words in candidates:
        if abs(v - value) <= tol and abs(v - reference) > tol:
            return f"it equals {words}"
    return None
