"""JVP and VJP sets at one point, and per-sample JVPs: checked like per-sample Jacobians.

Their references come from the verified per-sample Jacobian (loop and finite differences, after
the same pre-checks), mapped linearly with its error bound, plus directional finite differences
where a direction can be perturbed directly.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Mapping, Sequence

import torch
from torch import nn

from jacverify.case import Flat, call, make_case
from jacverify.compare import Reference, Scales, tolerances
from jacverify.errors import InvalidArgument, JacobianTooLarge
from jacverify.judge import MethodResult, Status, judge, timed
from jacverify.methods import Method, get_methods
from jacverify.oracles import directional_differences, finite_differences
from jacverify.references import (
    DEFAULT_MAX_MEMORY,
    DEFAULT_TIME_BUDGET,
    isolated,
    verify,
    within_time_budget,
)
from jacverify.quantity_table import get_quantity, get_standalone
from jacverify.report import Report
from jacverify import validation

__all__ = ["check_jvps", "check_vjps", "check_per_sample_jvps", "check_hessians",
           "check_hessian_diagonals"]


SCALING = (1, 4, 16)  # numbers of vectors each agreeing JVP/VJP-set method is timed on


class AtPoint(nn.Module):
    """f of one point, as a batch of one: a module so ``.double()`` reaches ``fn``'s parameters."""

    def __init__(self, fn: Callable) -> None:
        super().__init__()
        self.fn = fn

    def forward(self, xb: torch.Tensor) -> torch.Tensor:
        out = self.fn(xb.squeeze(0))
        if not isinstance(out, torch.Tensor):
            raise InvalidArgument(f"the function returned {type(out).__name__}; JVP/VJP checks "
                                  "need one output tensor")
        return out.unsqueeze(0)

    @property
    def __name__(self) -> str:  # reports name the user's function
        return getattr(self.fn, "__name__", type(self.fn).__name__)


class _Unbatched(nn.Module):
    """A batched function as a function of one sample: the point is run as a batch of one."""

    def __init__(self, fn: Callable, axis: int) -> None:
        super().__init__()
        self.fn, self.axis = fn, axis

    def forward(self, point: torch.Tensor) -> torch.Tensor:
        return self.fn(point.unsqueeze(self.axis)).squeeze(self.axis)

    @property
    def __name__(self) -> str:
        return getattr(self.fn, "__name__", type(self.fn).__name__)


def vector_rows(name: str, vectors: object, shape: tuple[int, ...], per: str) -> torch.Tensor:
    if not isinstance(vectors, torch.Tensor) or not vectors.is_floating_point():
        raise InvalidArgument(f"{name}={type(vectors).__name__} must be a floating tensor of shape "
                              f"(K, {', '.join(map(str, shape))}), one {per} per row")
    if tuple(vectors.shape[1:]) != shape or vectors.ndim != len(shape) + 1 or not len(vectors):
        raise InvalidArgument(f"{name} has shape {tuple(vectors.shape)}; expected (K, "
                              f"{', '.join(map(str, shape))}) with K >= 1: one {per} per row")
    return vectors.reshape(len(vectors), -1)


def _scaling(chosen, results, flat: Flat, sizes: Sequence[int], seed: int):
    """Time each agreeing method on K random vectors for each K in ``sizes`` (best of two runs)."""
    gen = torch.Generator().manual_seed(seed)
    width = flat.vectors.shape[1]
    table = []
    for method, result in zip(chosen, results):
        if result.status != "agree":
            continue
        points = []
        for k in sizes:
            vecs = torch.randn(k, width, generator=gen, dtype=torch.float64).to(flat.x)
            try:
                points.append((k, timed(method.compute, dataclasses.replace(flat, vectors=vecs), 2)[1]))
            except Exception:  # noqa: BLE001 - e.g. dual_copies where f takes one copy only: stop there
                break
        table.append((method.name, tuple(points)))
    return tuple(table)


# The Args, Returns and Raises every quantity check shares, written once and put into each
# docstring at import (so help(), doctest and the API test read the full text).
_SHARED_DOC = {
    "{COMMON_ARGS}": """methods: registered method names for this quantity (all by default; ``[]`` is refused).
        dtype, device: where the methods run (references run in float64 where possible).
        seed: seeds the coupling probes; printed in the report.
        rtol: a number for every dtype, or per-dtype overrides of NOTE [tolerances].
        atol, eps: ``gradcheck``'s absolute tolerance and finite-difference step.
        max_memory: bytes a method or reference may materialise.
        warm_timing: time a quick method twice and keep the faster (NOTE [check timings]).
        time_budget: seconds the references may be estimated to take (NOTE [cost estimate]).""",
    "{RAISES}": """Raises:
        InvalidArgument: a bad argument (shapes of ``x`` and ``vectors``, ``methods=[]``, ...).
        FunctionRaised, NondeterministicFunction, NonFiniteOutput: the case cannot be checked.
        JacobianTooLarge: the references would not fit ``max_memory`` or ``time_budget``.""",
}


def _documented(fn: Callable) -> Callable:
    doc = fn.__doc__ or ""
    for marker, text in _SHARED_DOC.items():
        doc = doc.replace(marker, text)
    quantity = doc.split("{RETURNS:", 1)[1].split("}", 1)[0] if "{RETURNS:" in doc else None
    if quantity:
        doc = doc.replace("{RETURNS:" + quantity + "}", (
            "Returns:\n        A :class:`~jacverify.Report` of quantity ``" + quantity + "``; "
            "``report.verdict`` is passed only\n        when a method was verified and none was "
            "wrong (NOTE [earned verdict])."))
    fn.__doc__ = doc
    return fn


def _run_quantity(case, quantity: str, vectors: torch.Tensor, derive: Callable,
                  expected: Callable[[Flat], tuple[int, ...]], labels: tuple[str, ...], direction: str | None,
                  methods, rtol, max_memory: int, warm_timing: bool, time_budget: float | None,
                  scaling: Sequence[int] = (), extra_methods: Sequence = ()) -> Report:
    chosen = _chosen(methods, quantity, extra_methods)
    rtols = tolerances(rtol)
    max_memory = _memory(max_memory)
    with isolated(case.fn):
        v = verify(case, rtols, max_memory, _budget(time_budget))
        rtols = rtols.floored(v.ref_flat.precision)  # NOTE [effective precision]
        vec64 = vectors.to(device=v.ref_flat.x.device, dtype=v.ref_flat.x.dtype)
        refs = [Reference(r.name, *derive(r.value, r.error, vec64)) for r in v.refs]
        if direction is not None:
            fd = directional_differences(v.ref_flat, vec64, direction == "per_sample",
                                         not v.coupling.coupled)
            refs.append(dataclasses.replace(fd, magnitude=refs[0].magnitude))
        loop = next((r for r in refs if r.name == "loop"), None)
        if loop is None and v.loop is not None:  # shown, not trusted
            loop = Reference("loop", *derive(v.loop.value, None, vec64))
        norm = float(vec64.abs().sum(-1).max())  # |J v| <= sum_j |J_.j| |v_j|
        scales = Scales(v.scales.rounding * norm, v.scales.derivative * norm)
        flat = dataclasses.replace(v.flat, vectors=vectors.to(v.flat.x))
        results = [judge(m, flat, v.coupling.reason, max_memory, tuple(refs), loop, case.dtype,
                        rtols, scales, 2 if warm_timing else 1, expected(v.flat)) for m in chosen]
        growth = _scaling(chosen, results, flat, scaling, case.seed) if scaling else ()
    return Report(case, tuple(results), tuple(r.name for r in refs), v.coupling, refs[0].value,
                  v.ref_flat.x.dtype, v.notes, v.flat, quantity, labels, growth,
                  findings=v.findings, unresolved=v.unresolved)


def _chosen(methods, quantity: str, extra_methods: Sequence = ()):
    chosen = get_methods(methods, get_quantity(quantity).name) + tuple(extra_methods)
    validation.check_methods_selected(methods, chosen)
    return chosen


def _budget(time_budget: object) -> float | None:
    if time_budget is None:
        return None
    return validation.check_number("time_budget", time_budget, allow_inf=True,
                                   fix="seconds, or None for no estimate")


def _memory(max_memory: object) -> int:
    return validation.check_bytes("max_memory", max_memory)


def _linear(spec: str) -> Callable:
    """J mapped by ``spec``: the value, its error bound, and the size of what each entry sums."""
    def derive(jac: torch.Tensor, error: torch.Tensor | None, vec: torch.Tensor):
        value = torch.einsum(spec, jac, vec)
        bound = None if error is None else torch.einsum(spec, error, vec.abs())
        return value, bound, torch.einsum(spec, jac.abs(), vec.abs())

    return derive


@_documented
def check_jvps(fn: Callable, x: torch.Tensor, vectors: torch.Tensor, *,
               methods: Sequence[str] | None = None, dtype: torch.dtype | None = None,
               device: str | torch.device | None = None, seed: int = 0,
               rtol: Mapping[torch.dtype, float] | None = None,
               atol: float = 0.0, eps: float | None = None,
               max_memory: int = DEFAULT_MAX_MEMORY, warm_timing: bool = True,
               time_budget: float | None = DEFAULT_TIME_BUDGET,
               scaling: Sequence[int] = SCALING, extra_methods: Sequence[Method] = ()) -> Report:
    """Check every way to compute ``J v_i`` at one point ``x`` for K vectors, shape (K, out).

    ``fn`` maps ``x`` (any shape, no batch axis) to one output tensor; ``vectors`` is (K, *x.shape).
    References: the verified Jacobian times each vector, and directional finite differences.
    ``report.scaling`` times every agreeing method on K = 1, 4, 16 random vectors (``scaling=``).
    ``extra_methods`` (every check here takes it) adds methods beside the registered ones, e.g. a
    user's own from :func:`jacverify.user_method` (``check_method`` does this for you).

    Args:
        fn: maps ``x`` to one output tensor.
        x: the point, any shape (no batch axis).
        vectors: (K, *x.shape), one tangent per row.
        {COMMON_ARGS}
        scaling: the numbers of vectors each agreeing method is timed on.

    {RETURNS:jvp_set}

    {RAISES}

    >>> f = lambda x: torch.stack([x.sin().sum(), (x * x).prod()])
    >>> report = check_jvps(f, torch.tensor([0.5, -1.0]), torch.eye(2))
    >>> report.passed, report.reference.shape
    (True, torch.Size([2, 2]))
    """
    if not isinstance(x, torch.Tensor):
        raise InvalidArgument(f"x={type(x).__name__} must be a tensor: the point")
    vec = vector_rows("vectors", vectors, tuple(x.shape), "tangent")
    case = make_case(AtPoint(fn), x.unsqueeze(0), dtype=dtype, device=device, seed=seed)
    return _run_quantity(case, "jvp_set", vec, _linear("bmn,kn->km"),
                         lambda flat: (len(vec), flat.n_out),
                         ("vector", "output"), "set", methods, tolerances(rtol, atol=atol, eps=eps),
                         max_memory, warm_timing,
                         time_budget, scaling, extra_methods)


@_documented
def check_vjps(fn: Callable, x: torch.Tensor, vectors: torch.Tensor, *,
               methods: Sequence[str] | None = None, dtype: torch.dtype | None = None,
               device: str | torch.device | None = None, seed: int = 0,
               rtol: Mapping[torch.dtype, float] | None = None,
               atol: float = 0.0, eps: float | None = None,
               max_memory: int = DEFAULT_MAX_MEMORY, warm_timing: bool = True,
               time_budget: float | None = DEFAULT_TIME_BUDGET,
               scaling: Sequence[int] = SCALING, extra_methods: Sequence[Method] = ()) -> Report:
    """Check every way to compute ``vᵀ_i J`` at one point ``x`` for K cotangents, shape (K, in).

    ``vectors`` is (K, *out_shape). The reference is the adjoint identity through the verified
    Jacobian: ``<vᵀJ, t> = <v, J t>`` for every tangent t, i.e. ``vᵀ J`` with J checked against
    loops and finite differences.

    Args:
        fn: maps ``x`` to one output tensor.
        x: the point, any shape (no batch axis).
        vectors: (K, *out_shape), one cotangent per row.
        {COMMON_ARGS}
        scaling: the numbers of vectors each agreeing method is timed on.

    {RETURNS:vjp_set}

    {RAISES}

    >>> f = lambda x: torch.stack([x.sin().sum(), (x * x).prod()])
    >>> check_vjps(f, torch.tensor([0.5, -1.0]), torch.eye(2)).passed
    True
    """
    if not isinstance(x, torch.Tensor):
        raise InvalidArgument(f"x={type(x).__name__} must be a tensor: the point")
    case = make_case(AtPoint(fn), x.unsqueeze(0), dtype=dtype, device=device, seed=seed)
    with torch.no_grad():
        out_shape = tuple(case.fn(case.inputs[0]).shape[1:])
    vec = vector_rows("vectors", vectors, out_shape, "cotangent")
    return _run_quantity(case, "vjp_set", vec, _linear("bmn,km->kn"),
                         lambda flat: (len(vec), flat.n_in), ("vector", "input"), None, methods,
                         tolerances(rtol, atol=atol, eps=eps), max_memory, warm_timing, time_budget, scaling,
                         extra_methods)


@_documented
def check_per_sample_jvps(fn: Callable, x: torch.Tensor, vectors: torch.Tensor, *,
                          batch_axis: int = 0, methods: Sequence[str] | None = None,
                          dtype: torch.dtype | None = None,
                          device: str | torch.device | None = None, seed: int = 0,
                          rtol: Mapping[torch.dtype, float] | None = None,
                          atol: float = 0.0, eps: float | None = None,
                          max_memory: int = DEFAULT_MAX_MEMORY,
                          warm_timing: bool = True,
                          time_budget: float | None = DEFAULT_TIME_BUDGET,
                          extra_methods: Sequence[Method] = ()) -> Report:
    """Check every way to compute per-sample ``J_b v_b`` for a batch, shape (B, out).

    ``vectors`` has the shape of ``x``: one tangent per sample. References: the verified
    per-sample Jacobian applied to each sample's vector, and per-sample directional finite
    differences (one sample moved at a time when samples interact).

    Args:
        fn: maps a batch ``x`` to outputs with the same batch axis.
        x: the batch; ``batch_axis`` says where the samples are.
        vectors: one tangent per sample, the shape of ``x``.
        {COMMON_ARGS}

    {RETURNS:per_sample_jvp}

    {RAISES}

    >>> net = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Tanh())
    >>> check_per_sample_jvps(net, torch.randn(5, 3), torch.randn(5, 3)).passed
    True
    """
    if not isinstance(vectors, torch.Tensor) or not isinstance(x, torch.Tensor) \
            or vectors.shape != x.shape:
        got = tuple(vectors.shape) if isinstance(vectors, torch.Tensor) else type(vectors).__name__
        raise InvalidArgument(f"vectors has shape {got}; per-sample JVPs need one tangent per "
                              f"sample, the shape of x {tuple(x.shape) if isinstance(x, torch.Tensor) else ''}")
    case = make_case(fn, x, batch_axis=batch_axis, dtype=dtype, device=device, seed=seed)
    vec = vectors.movedim(case.batch_axis, 0).reshape(case.batch_size, -1)
    return _run_quantity(case, "per_sample_jvp", vec, _linear("bmn,bn->bm"),
                         lambda flat: (flat.batch_size, flat.n_out), ("sample", "output"), "per_sample", methods,
                         tolerances(rtol, atol=atol, eps=eps),
                         max_memory, warm_timing, time_budget, extra_methods=extra_methods)


# --- per-sample second derivatives ---

# Modules whose second derivative is zero almost everywhere and undefined at a kink (or, for ELU,
# jumps): a Hessian check there would only test the kinks.
_NOT_TWICE_DIFFERENTIABLE = ("ReLU", "ReLU6", "LeakyReLU", "PReLU", "RReLU", "Hardtanh",
                             "Hardswish", "Hardsigmoid", "Hardshrink", "Softshrink", "Threshold",
                             "ELU", "CELU", "_Abs")


def _kinks(fn: object) -> list[str]:
    if not isinstance(fn, nn.Module):
        return []
    return sorted({type(m).__name__ for m in fn.modules()
                   if type(m).__name__ in _NOT_TWICE_DIFFERENTIABLE})


def _hessian_reference(v) -> Reference:
    """Finite differences of the verified first derivative, with its bound: the float64 loop, or
    when samples do not interact its batch-summed form ``loop_rows`` (the same backward formulas,
    one pass per output entry instead of per sample and entry)."""
    from jacverify.methods.loops import loop, loop_rows

    ref = v.ref_flat
    b, m, n = ref.batch_size, ref.n_out, ref.n_in
    first = loop if v.coupling.coupled else loop_rows

    def jacobian(z: torch.Tensor) -> torch.Tensor:
        with torch.enable_grad():
            return first(dataclasses.replace(ref, x=z)).reshape(b, m * n)

    line = dataclasses.replace(ref, fn=jacobian, out_shapes=((m * n,),))
    value, error = finite_differences(line, independent=not v.coupling.coupled)
    return Reference("fd_of_jacobian", value.reshape(b, m, n, n), error.reshape(b, m, n, n))


def _asymmetry(tolerance: float) -> Callable[[torch.Tensor], str | None]:
    def finding(h: torch.Tensor) -> str | None:
        gap = float((h - h.transpose(-1, -2)).abs().max())
        return (f"asymmetric Hessian: max |H - Hᵀ| = {gap:.3g} (allowed {tolerance:.3g})"
                if gap > tolerance else None)

    return finding


def _second_order(fn, x, quantity: str, diagonal: bool, batch_axis: int, methods, dtype, device,
                  seed: int, rtol, max_memory: int, warm_timing: bool,
                  time_budget: float | None, extra_methods: Sequence = ()) -> Report:
    chosen = _chosen(methods, quantity, extra_methods)
    rtols = tolerances(rtol)
    max_memory = _memory(max_memory)
    case = make_case(fn, x, batch_axis=batch_axis, dtype=dtype, device=device, seed=seed)
    labels = ("sample", "output", "input") + (() if diagonal else ("input",))
    with isolated(case.fn):
        _second_order_fits(case, max_memory)
        v = verify(case, rtols, max_memory, _budget(time_budget))
        rtols = rtols.floored(v.ref_flat.precision)  # NOTE [effective precision]
        within_time_budget(v.ref_flat, v.coupling.coupled, _budget(time_budget), second_order=True)
        b, m, n = v.flat.batch_size, v.flat.n_out, v.flat.n_in
        expected = (b, m, n) if diagonal else (b, m, n, n)
        kinks = _kinks(case.fn)
        blocked = None
        if kinks:
            blocked = (f"{', '.join(kinks)} is not twice differentiable: second derivatives are "
                       "zero almost everywhere and undefined at its kinks")
        elif not v.loop_trusted:
            blocked = ("the first derivative disagrees with finite differences (see the "
                       "batch_jacobian check): second derivatives built on it are not checked")
        if blocked:
            results = tuple(MethodResult(mm.name, quantity, mm.mode, mm.vectorized,
                                         Status.NOT_APPLICABLE, reason=blocked) for mm in chosen)
            return Report(case, results, (), v.coupling, torch.zeros(expected), v.ref_flat.x.dtype,
                          v.notes + (blocked,), v.flat, quantity, labels, findings=v.findings)
        full = _hessian_reference(v)
        notes = list(v.notes)
        gap = float((full.value - full.value.transpose(-1, -2)).abs().max())
        bound = float((full.error + full.error.transpose(-1, -2)).max())
        if gap > 2 * bound:
            notes.append(f"the finite-difference Hessian is asymmetric beyond its error bound "
                         f"(max |H - Hᵀ| = {gap:.3g}): the function is not twice differentiable here")
        ref = full if not diagonal else Reference(
            full.name, full.value.diagonal(dim1=-2, dim2=-1), full.error.diagonal(dim1=-2, dim2=-1))
        # d_s of NOTE [tolerances] for a second derivative: the first derivative's own size
        first = v.refs[0].value.abs().amax(2) / v.ref_flat.x.abs().amax(1, keepdim=True).clamp(min=1.0)
        scales = Scales(0.0, torch.maximum(v.scales.derivative, first))
        eps = torch.finfo(case.dtype).eps ** 0.5
        finding = None if diagonal else _asymmetry(
            eps * (float(full.value.abs().max()) + float(scales.derivative.max())))
        results = tuple(judge(mm, v.flat, v.coupling.reason, max_memory, (ref,), None, case.dtype,
                             rtols, scales, 2 if warm_timing else 1, expected, finding)
                        for mm in chosen)
    return Report(case, results, (ref.name,), v.coupling, ref.value, v.ref_flat.x.dtype,
                  tuple(notes), v.flat, quantity, labels, findings=v.findings,
                  unresolved=v.unresolved)


def _second_order_fits(case, max_memory: int) -> None:
    """Refuse a second-order check whose float64 reference cannot fit, before computing anything:
    the finite-difference Hessian, its error bound and a method's result are (B, M, N, N) each."""
    b = case.batch_size
    n = sum(math.prod(s) for s in case.sample_shapes)
    with torch.no_grad():
        out = call(case.fn, case.inputs)
    outs = tuple(out.values()) if isinstance(out, dict) else \
        out if isinstance(out, (tuple, list)) else (out,)
    m = sum(o.numel() for o in outs) // max(b, 1)
    need = 3 * b * m * n * n * 8
    if need > max_memory:
        raise JacobianTooLarge(
            f"the per-sample Hessians (B={b}, out={m}, in={n}) need {need / 2**20:.1f} MiB for the "
            f"float64 reference, its error bound and one result, over max_memory={max_memory} "
            "bytes; check fewer samples or inputs, use check_hessian_diagonals on a smaller case, "
            "or raise max_memory")


@_documented
def check_hessians(fn: Callable, x: torch.Tensor, *, batch_axis: int = 0,
                   methods: Sequence[str] | None = None, dtype: torch.dtype | None = None,
                   device: str | torch.device | None = None, seed: int = 0,
                   rtol: Mapping[torch.dtype, float] | None = None,
                   atol: float = 0.0, eps: float | None = None,
                   max_memory: int = DEFAULT_MAX_MEMORY, warm_timing: bool = True,
                   time_budget: float | None = DEFAULT_TIME_BUDGET,
                   extra_methods: Sequence[Method] = ()) -> Report:
    """Check every way to compute per-sample Hessians of each output, shape (B, out, in, in).

    Reference: finite differences of the first derivative, itself verified against finite
    differences first (a wrong backward makes every second-order method not applicable, with the
    reason). Each method's result is also checked for symmetry in the two input axes; an
    asymmetric one has it as its ``reason``. Networks with ReLU-like layers are not applicable.

    Args:
        fn: maps a batch ``x`` to outputs with the same batch axis.
        x: the batch; ``batch_axis`` says where the samples are.
        {COMMON_ARGS}

    {RETURNS:hessian}

    {RAISES}

    >>> net = torch.nn.Sequential(torch.nn.Linear(2, 3), torch.nn.Tanh(), torch.nn.Linear(3, 1))
    >>> report = check_hessians(net, torch.randn(4, 2), dtype=torch.float64)
    >>> report.passed, report.reference.shape
    (True, torch.Size([4, 1, 2, 2]))
    """
    return _second_order(fn, x, "hessian", False, batch_axis, methods, dtype, device, seed,
                         tolerances(rtol, atol=atol, eps=eps),
                         max_memory, warm_timing, time_budget, extra_methods=extra_methods)


@_documented
def check_hessian_diagonals(fn: Callable, x: torch.Tensor, *, batch_axis: int = 0,
                            methods: Sequence[str] | None = None,
                            dtype: torch.dtype | None = None,
                            device: str | torch.device | None = None, seed: int = 0,
                            rtol: Mapping[torch.dtype, float] | None = None,
                            atol: float = 0.0, eps: float | None = None,
                            max_memory: int = DEFAULT_MAX_MEMORY,
                            warm_timing: bool = True,
                            time_budget: float | None = DEFAULT_TIME_BUDGET,
                          extra_methods: Sequence[Method] = ()) -> Report:
    """Check ``d²y_m / dx_k²`` per sample, shape (B, out, in): the loop physics-informed training
    code writes (``loop``: ``autograd.grad(..., grad_outputs=ones, create_graph=True)`` per output
    column and input entry) side by side with its vectorized replacements.

    Args:
        fn: maps a batch ``x`` to outputs with the same batch axis.
        x: the batch; ``batch_axis`` says where the samples are.
        {COMMON_ARGS}

    {RETURNS:hessian_diagonal}

    {RAISES}

    >>> net = torch.nn.Sequential(torch.nn.Linear(2, 3), torch.nn.Tanh(), torch.nn.Linear(3, 1))
    >>> report = check_hessian_diagonals(net, torch.randn(4, 2))
    >>> report.passed, [r.method for r in report.results]
    (True, ['loop', 'vmap_hessian', 'forward_over_reverse'])
    """
    return _second_order(fn, x, "hessian_diagonal", True, batch_axis, methods, dtype, device, seed,
                         tolerances(rtol, atol=atol, eps=eps), max_memory, warm_timing, time_budget,
                         extra_methods)


RANDOM_VECTORS = 3  # vectors drawn for the set quantities when none are given


def check_quantity(quantity: str, fn: Callable, inputs: torch.Tensor | Sequence[torch.Tensor], *,
                   vectors: torch.Tensor | None = None, batch_axis: int = 0, seed: int = 0,
                   **options) -> Report:
    """Run the check for ``quantity`` on a batched case: the one dispatch the CLI and the fuzzer
    share. The set quantities use the first sample as their point; missing vectors are drawn
    from ``seed`` (3 for the sets, one per sample for ``per_sample_jvp``).

    >>> net = torch.nn.Sequential(torch.nn.Linear(3, 2), torch.nn.Tanh())
    >>> check_quantity("vjp_set", net, torch.randn(4, 3)).reference.shape
    torch.Size([3, 3])
    """
    import jacverify

    q = get_standalone(quantity)
    run = getattr(jacverify, q.check)  # the registry names each quantity's check function
    if q.name == "batch_jacobian":
        return run(fn, inputs, batch_axis=batch_axis, seed=seed, **options)
    x = inputs if isinstance(inputs, torch.Tensor) else tuple(inputs)
    if not isinstance(x, torch.Tensor):
        if len(x) != 1:
            raise InvalidArgument(f"quantity={quantity!r} takes one input tensor, got {len(x)}")
        x = x[0]
    if q.vectors is None:
        return run(fn, x, batch_axis=batch_axis, seed=seed, **options)
    gen = torch.Generator().manual_seed(seed)
    if q.vectors == "per_sample_tangent":
        v = vectors if vectors is not None else torch.randn(x.shape, generator=gen).to(x)
        return run(fn, x, v, batch_axis=batch_axis, seed=seed, **options)
    point, fn = x.select(batch_axis, 0), _Unbatched(fn, batch_axis)
    if q.vectors == "tangent":
        v = vectors if vectors is not None else \
            torch.randn((RANDOM_VECTORS, *point.shape), generator=gen).to(x)
        return run(fn, point, v, seed=seed, **options)
    if vectors is None:
        out = call(fn, (point.to(options.get("dtype") or point.dtype),))  # FunctionRaised if it fails
        vectors = torch.randn((RANDOM_VECTORS, *out.shape), generator=gen).to(x)
    return run(fn, point, vectors, seed=seed, **options)
