"""``batch_jacobian(f, x)``: the per-sample Jacobian, the fastest registered way that is right here."""

from __future__ import annotations

import inspect
import math
import weakref
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

import torch

from jacverify.case import Flat, flatten, make_case
from jacverify.errors import InvalidArgument, MismatchError
from jacverify.judge import describe_worst
from jacverify.validation import check_int, check_number
from jacverify.measure import peak_memory, saved_activation_bytes, time_calls
from jacverify.methods import get_methods
from jacverify.oracles import check_coupling, check_determinism
from jacverify.oracles.projections import DEFAULT_PROBES

__all__ = ["batch_jacobian", "plan", "Plan"]


@dataclass(frozen=True)
class Plan:
    """How ``batch_jacobian(method="auto")`` computes a case, and why.

    Attributes:
        method: the registered method it runs.
        chunk_size: cotangents (reverse) or tangents (forward) per pass; ``rows`` means one pass.
        rows: how many there are in all.
        reason: the shapes, coupling and memory facts that chose it.
        memory_budget: bytes the call may use: 2x the Jacobian plus the forward's saved activations
            (or the caller's ``max_memory``).
    """

    method: str
    chunk_size: int
    rows: int
    reason: str
    memory_budget: int

    @property
    def chunks(self) -> int:
        return math.ceil(self.rows / self.chunk_size)


# NOTE [auto plan]
# Measured side by side on the bench suite (`jacverify bench`, numbers in the README): a reverse pass
# costs about one backward per cotangent row, a forward pass one jvp per tangent, so
# - samples interact (the coupling probe moved another sample's output): the per-sample truth is
#   the diagonal block of the full Jacobian -> batched_grad_per_sample, B*M cotangent rows;
# - M <= N: reverse mode, M cotangent rows: batched_grad (one autograd.grad with
#   is_grads_batched), vmap_vjp (vmap over torch.func.vjp), repeat_trick (M copies, no vmap),
#   functional_vectorized (autograd.functional.jacobian, vectorized) or loop_rows (M plain
#   backward passes: with M = 4 they beat every vectorized way here);
# - M > N: forward mode, N tangent rows: batched_double_backward (J v out of two reverse passes,
#   tangents batched; needs no forward-AD formula), forward_broadcast (vmap over jvp) or the plain
#   double_backward (N passes, no vmap: it won the 4 -> 64 bench case by 1.1-1.5x);
# - M and N within CLOSE_SHAPES of each other: both families are timed (the shape rule is a guess
#   there).
# Within the family the first call times each candidate for PLAN_TIMING_S and keeps the fastest:
# which one wins depends on the device and the shape (vmap_vjp beat batched_grad by 1.25x at
# B=16, 64-64-64 here; batched_grad won by 1.15x at B=64, 8-64-8). A candidate that raises (no
# double backward, no forward-AD formula, no batching rule) drops out; when all do, batched_grad.
# Memory: the budget is 2 |J| + the bytes the forward saves for backward, but never under
# MEMORY_FLOOR: a vectorized pass over k rows holds k gradients of every hidden layer, so with
# hidden layers wider than the Jacobian's rows (8-64-8 at B=64: 0.37 MB against a 0.17 MB budget)
# only one row per pass would fit, tripling the time (0.32 -> 0.99 ms) to save 0.2 MB. The floor
# keeps that trade for cases where the memory matters; pass max_memory= for a strict budget.
# A pass over k rows is estimated at k x saved activations + |J|; when that may not fit, the plan
# measures the peak (NOTE [peak memory]) at 1 and 2 rows per pass, extrapolates linearly (peak
# grows sublinearly in k, so this errs on the safe side), and confirms the chunk it picks, halving it while
# over. Plans are cached per function, input shape, dtype, device and train/eval state: the probes
# and measurements run on the first call only.
MEMORY_FLOOR = 2**24  # 16 MiB
REVERSE_FAMILY = ("batched_grad", "vmap_vjp", "repeat_trick", "functional_vectorized", "loop_rows")
FORWARD_FAMILY = ("batched_double_backward", "forward_broadcast", "double_backward")
CLOSE_SHAPES = 2.0  # both families are timed when M and N are within this factor of each other
PLAN_TIMING_S = 0.1  # per candidate, on the first call (after two warm-up calls)


def plan(fn: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, *,
         max_memory: int | None = None) -> Plan:
    """The plan ``batch_jacobian(fn, x)`` would use (made and cached on first use).

    Args:
        fn: a function or module of one batched tensor (batch first).
        x: the inputs, (B, *in).
        max_memory: bytes a pass may use; the default is NOTE [auto plan]'s budget.

    Returns:
        A :class:`Plan`: the method, rows per pass, the number of rows, why, and the budget.

    Raises:
        InvalidArgument: ``fn`` or ``x`` is not usable, or ``max_memory`` is not a positive number.

    >>> net = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.Tanh(), torch.nn.Linear(16, 2))
    >>> p = plan(net, torch.randn(32, 8))
    >>> p.rows, "outputs M=2 <= inputs N=8: reverse mode" in p.reason  # the method: timed
    (2, True)
    """
    return _planned(fn, x, max_memory)[0]


def batch_jacobian(
    fn: Callable[[torch.Tensor], torch.Tensor],
    x: torch.Tensor,
    *,
    method: str = "auto",
    verify: bool = False,
    probes: int = DEFAULT_PROBES,
    max_memory: int | None = None,
    seed: int = 0,
) -> torch.Tensor:
    """The per-sample Jacobian ``J[b] = d fn(x)[b] / d x[b]``, shaped (B, *out, *in).

    Args:
        fn: a function or module of one batched tensor (batch first).
        x: the inputs, (B, *in).
        method: "auto" (NOTE [auto plan]) or the name of a registered batch_jacobian method.
        verify: check this answer against finite differences with ``probes`` random projections
            uᵀ J v (cost: 6 forward passes per probe, whatever the size); raise if it is wrong.
        max_memory: bytes the computation may use; the default is NOTE [auto plan]'s budget.
        seed: seeds the coupling probe and the projections.

    Returns:
        The Jacobian, (B, *out, *in), in ``x``'s dtype and device.

    Raises:
        InvalidArgument: ``fn``, ``x`` or ``method`` is not usable; the message says why.
        MismatchError: ``verify=True`` and the answer disagrees with finite differences.

    >>> net = torch.nn.Sequential(torch.nn.Linear(3, 8), torch.nn.Tanh(), torch.nn.Linear(8, 2))
    >>> x = torch.randn(5, 3)
    >>> jac = batch_jacobian(net, x, verify=True)
    >>> jac.shape
    torch.Size([5, 2, 3])
    >>> torch.allclose(jac[1], torch.func.jacrev(net)(x[1]))
    True
    """
    if method == "auto":
        chosen, flat, out_shape = _planned(fn, x, max_memory)
        compute = chunked_compute(chosen.method)
        value = compute(flat, _passes(chosen.chunk_size, chosen.rows))
        name = chosen.method
    else:
        (m,) = get_methods([method])
        flat = flatten(_case(fn, x))
        out_shape = flat.out_shapes[0]
        value, name = m.compute(flat), m.name
    if verify:
        _verify(fn, x, value, name, probes, seed)
    return value.reshape(x.shape[0], *out_shape, *x.shape[1:])


def _case(fn, x):
    if not isinstance(x, torch.Tensor) or x.ndim < 1:
        raise InvalidArgument(f"x={type(x).__name__} must be a tensor with the batch first, (B, *in); "
                              "batch_jacobian takes one input (use jacverify.check for several)")
    return make_case(fn, x)


def _flat(fn, x: torch.Tensor, out_shape: tuple[int, ...]) -> Flat:
    """The canonical form without the validating call (the plan validated this shape already)."""
    in_shape = tuple(x.shape[1:])

    def g(z: torch.Tensor) -> torch.Tensor:
        return fn(z.reshape(z.shape[0], *in_shape)).reshape(z.shape[0], -1)

    return Flat(g, x.detach().reshape(x.shape[0], -1), (in_shape,), (out_shape,))


# Plans keyed by the function (weakly, so a cached plan never keeps a model alive; a bound
# method by its object, since `model.forward` is a new object at every access), then by the shapes
# and modes of the call. Functions that cannot be weakly referenced (builtins such as torch.tanh)
# are held in a small LRU: holding them costs nothing, and a held object's id cannot be reused.
_PLANS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
_STRONG: OrderedDict = OrderedDict()
_STRONG_SIZE = 8


def plan_table(fn) -> dict:
    """The cache of choices made for ``fn`` (shared by every ``method="auto"`` entry point)."""
    owner = fn.__self__ if inspect.ismethod(fn) else fn
    try:
        tables = _PLANS.setdefault(owner, {})
    except TypeError:  # not weakly referenceable
        try:
            tables = _STRONG.setdefault(owner, {})
        except TypeError:  # not hashable either: no cache, a plan per call
            return {}
        _STRONG.move_to_end(owner)
        while len(_STRONG) > _STRONG_SIZE:
            _STRONG.popitem(last=False)
    return tables.setdefault(getattr(fn, "__func__", None), {})


def call_key(fn, *tensors: torch.Tensor, extra: object = None) -> tuple:
    """What a cached choice depends on: shapes, dtypes, devices, train/eval modes, ``extra``."""
    owner = fn.__self__ if inspect.ismethod(fn) else fn
    modes = tuple(m.training for m in owner.modules()) if isinstance(owner, torch.nn.Module) else ()
    return (*((tuple(t.shape), t.dtype, t.device) for t in tensors), modes, extra)


def _planned(fn, x: torch.Tensor, max_memory: int | None) -> tuple[Plan, Flat, tuple[int, ...]]:
    table = plan_table(fn)
    key = call_key(fn, x, extra=("batch_jacobian", max_memory)) if isinstance(x, torch.Tensor) \
        else None
    if key in table:
        chosen, out_shape = table[key]
        return chosen, _flat(fn, x, out_shape), out_shape
    case = _case(fn, x)
    if max_memory is not None:
        max_memory = int(check_number("max_memory", max_memory, fix="a number of bytes, e.g. 2**30"))
    flat = flatten(case)
    if len(flat.out_shapes) != 1:
        raise InvalidArgument("fn returned a tuple; batch_jacobian takes one output tensor "
                              "(use jacverify.check for several)")
    chosen = _make_plan(flat, max_memory)
    table[key] = (chosen, flat.out_shapes[0])
    return chosen, _flat(fn, x, flat.out_shapes[0]), flat.out_shapes[0]


def _make_plan(flat: Flat, max_memory: int | None) -> Plan:
    b, m, n = flat.batch_size, flat.n_out, flat.n_in
    coupling = check_coupling(flat, seed=0, noise=check_determinism(flat))
    if coupling.coupled:
        family = {"batched_grad_per_sample": b * m}
        why = f"samples interact ({coupling.reason}): rows of the full Jacobian, B*M = {b * m}"
    elif max(m, n) <= CLOSE_SHAPES * min(m, n):
        family = {**dict.fromkeys(REVERSE_FAMILY, m), **dict.fromkeys(FORWARD_FAMILY, n)}
        why = (f"independent samples, outputs M={m} and inputs N={n} within {CLOSE_SHAPES:g}x: "
               "both modes timed")
    elif m <= n:
        family = dict.fromkeys(REVERSE_FAMILY, m)
        why = f"independent samples, outputs M={m} <= inputs N={n}: reverse mode, M rows"
    else:
        family = dict.fromkeys(FORWARD_FAMILY, n)
        why = f"independent samples, outputs M={m} > inputs N={n}: forward mode, N rows"
    saved = saved_activation_bytes(flat.fn, flat.x)
    jac_bytes = b * m * n * flat.x.element_size()
    budget = max_memory or max(2 * jac_bytes + saved, MEMORY_FLOOR)
    chunks, failed = {}, []
    for name, rows in family.items():
        chunk = rows if rows * saved + jac_bytes <= budget else None
        if name in _ONE_PASS and chunk is None:
            failed.append(f"{name} does not fit in one pass")
            continue
        try:
            k = chunk or _chunk_within(flat, name, rows, budget)
            chunked_compute(name)(flat, _passes(k, rows))  # raises here when it cannot run at all
            chunks[name] = k
        except Exception as e:  # noqa: BLE001 - no double backward, forward AD or batching rule
            failed.append(f"{name} raised {type(e).__name__}")
    if chunks:  # round-robin, so drift on a busy machine does not pick the winner
        calls = {n: (lambda n=n, k=k: chunked_compute(n)(flat, _passes(k, family[n])))
                 for n, k in chunks.items()}
        timed = {n: (t.median, chunks[n]) for n, t in
                 time_calls(calls, flat.x.device, warmup=2, min_seconds=PLAN_TIMING_S).items()}
    else:  # the whole family failed: reverse mode over the outputs, which every op has
        name, family = "batched_grad", {"batched_grad": m}
        timed = {name: (0.0, m if m * saved + jac_bytes <= budget
                        else _chunk_within(flat, name, m, budget))}
    name = min(timed, key=lambda k: timed[k][0])
    chunk, rows = timed[name][1], family[name]
    why += f"; {name} timed fastest of {', '.join(family)}" if len(timed) > 1 else f"; {name}"
    why += f" ({'; '.join(failed)})" if failed else ""
    if chunk < rows:
        why += f"; {math.ceil(rows / chunk)} passes of {chunk} rows to stay within {budget} bytes"
    return Plan(name, chunk, rows, why, budget)


def _passes(chunk: int, rows: int) -> int | None:
    """The chunk size argument: None (one unchunked pass) when every row fits in one."""
    return None if chunk >= rows else chunk


def _chunk_within(flat: Flat, name: str, rows: int, budget: int) -> int:
    """The most rows per pass whose measured peak memory fits ``budget`` (NOTE [auto plan])."""
    if rows == 1:
        return 1
    compute = chunked_compute(name)

    def peak(k: int) -> int:
        return peak_memory(lambda: compute(flat, k), flat.x.device)

    try:
        one, two = peak(1), peak(2)
        per_row = max(two - one, 1)
        chunk = int(max(1, min(rows, (budget - one) // per_row + 1)))
        while chunk > 1 and peak(chunk) > budget:
            chunk //= 2
    except RuntimeError:  # a profiler is running already (the caller's): one row per pass
        return 1
    return chunk


def chunked_compute(name: str) -> Callable[[Flat, int | None], torch.Tensor]:
    """The registered method ``name`` as ``f(flat, chunk_size)`` (``Method.compute_chunked``)."""
    return get_methods([name])[0].compute_chunked


# one pass whatever the chunk: only chosen when that pass fits (loop_rows holds one row)
_ONE_PASS = {"functional_vectorized"}


def _verify(fn, x: torch.Tensor, value: torch.Tensor, name: str, probes: int, seed: int) -> None:
    from jacverify.compare import compare, tolerances
    from jacverify.references import prechecked
    from jacverify.oracles.projections import draw_probes, project, projection_reference

    check_int("probes", probes, min_value=1)
    case = make_case(fn, x, seed=seed)
    pre = prechecked(case)
    ref_flat = pre.ref_flat
    drawn = draw_probes(ref_flat, probes, seed, pre.coupling.coupled)
    ref, scale = projection_reference(ref_flat, drawn)
    c = compare(project(value, drawn), ref, case.dtype, tolerances(), derivative_scale=scale)
    if not c.passed:
        raise MismatchError(
            f"batch_jacobian via {name} failed its verification (uᵀJv over {probes} random "
            f"probes): {describe_worst(c, f'probe {c.worst_index[0]}')}; tolerance: {c.tolerance}; run "
            "jacverify.check(fn, x) to see which methods are wrong and where", None)  # type: ignore[arg-type]
