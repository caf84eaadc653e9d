"""``batch_jacobian``'s siblings with ``method="auto"``: JVP sets and per-sample Hessians."""

from __future__ import annotations

from collections.abc import Callable

import torch

from jacverify.judge import describe_worst
from jacverify.auto import call_key, modules_of, plan_table
from jacverify.case import Flat, flatten, make_case
from jacverify.compare import Reference, compare, tolerances
from jacverify.errors import InvalidArgument, MismatchError
from jacverify.measure import time_calls
from jacverify.methods import get_methods
from jacverify.oracles import check_coupling, check_determinism, directional_differences
from jacverify.references import kept_buffers

__all__ = ["jvp_set", "batch_hessian", "JVP_FAMILY", "HESSIAN_FAMILY"]

# NOTE [auto for JVP sets and Hessians]
# The candidates are registered methods; the first call times them (PLAN_TIMING_S each) and the
# fastest is kept per function, shapes, dtype and device. The Hessian family leaves out every
# forward-over-forward composition: on torch 2.13 it is wrong through nn.LayerNorm and through an
# autograd.Function's jvp (jacverify's own findings, tests/test_fuzz.py KNOWN_TORCH), and
# `jacverify ops` finds it wrong for linalg.solve and friends too; reverse inner derivatives are
# right wherever the first derivative is.
JVP_FAMILY = ("vmap_jvp", "double_backward", "functional_jvp", "jvp_loop")
HESSIAN_FAMILY = ("vmap_jacfwd_jacrev", "vmap_hessian", "vmap_jacrev_jacrev", "sum_trick_twice")
PLAN_TIMING_S = 0.05

def _fastest(quantity: str, family: tuple[str, ...], flat: Flat, key: tuple, fn) -> str:
    cache = plan_table(fn)
    if key in cache:
        return cache[key]
    runnable = {}
    for m in get_methods(family, quantity):
        try:
            m.compute(flat)
            runnable[m.name] = (lambda c=m.compute: c(flat))
        except Exception:  # noqa: BLE001 - no formula / rule for this candidate here
            continue
    times = {n: t.median for n, t in
             time_calls(runnable, flat.x.device, min_seconds=PLAN_TIMING_S).items()}
    if not times:
        raise InvalidArgument(f"no {quantity} method could run on this function: "
                              f"{', '.join(family)} all raised; run jacverify.check_* to see why")
    cache[key] = min(times, key=times.get)
    return cache[key]


def _run(quantity: str, method: str, family, flat: Flat, key: tuple,
         fn) -> tuple[str, torch.Tensor]:
    if method == "auto":
        with kept_buffers(modules_of(fn)):  # the timing's calls are not the caller's
            name = _fastest(quantity, family, flat, key, fn)
    else:
        name = method
    (m,) = get_methods([name], quantity)
    return name, m.compute(flat)


def jvp_set(fn: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, vectors: torch.Tensor,
            *, method: str = "auto", verify: bool = False) -> torch.Tensor:
    """``J v_i`` at one point ``x`` for every row of ``vectors`` (K, *x.shape): (K, *out).

    ``method="auto"`` times the candidates of NOTE [auto for JVP sets and Hessians] on the first
    call; ``verify=True`` compares the answer with directional finite differences (6 evaluations
    per vector) and raises ``MismatchError`` when it is wrong.

    Args:
        fn: maps ``x`` to one output tensor.
        x: the point, any shape (no batch axis).
        vectors: (K, *x.shape), one tangent per row.
        method: "auto" or a registered ``jvp_set`` method.
        verify: check the answer against directional finite differences.

    Returns:
        (K, *out): ``J v_i`` per row, in ``x``'s dtype.

    Raises:
        InvalidArgument: bad ``x``, ``vectors`` or ``method``.
        MismatchError: ``verify=True`` and the answer is wrong.

    >>> f = lambda x: torch.stack([x.sin().sum(), (x * x).prod()])
    >>> x = torch.tensor([0.5, -1.0], dtype=torch.float64)
    >>> jvp_set(f, x, torch.eye(2, dtype=torch.float64), verify=True).shape
    torch.Size([2, 2])
    """
    from jacverify.quantities import AtPoint, vector_rows

    if not isinstance(x, torch.Tensor):
        raise InvalidArgument(f"x={type(x).__name__} must be a tensor: the point")
    vec = vector_rows("vectors", vectors, tuple(x.shape), "tangent")
    point, modules = AtPoint(fn), modules_of(fn)
    with kept_buffers(modules):  # make_case's validating call is not the caller's
        flat = flatten(make_case(point, x.unsqueeze(0)))
    flat = Flat(flat.fn, flat.x, flat.in_shapes, flat.out_shapes, vec.to(flat.x))
    key = call_key(fn, x, vec, extra="jvp_set")
    name, value = _run("jvp_set", method, JVP_FAMILY, flat, key, fn)
    if verify:
        with kept_buffers(modules):
            ref = directional_differences(flat, vec.to(flat.x), per_sample=False, independent=True)
        _judge(name, "jvp_set", value, ref, flat.x.dtype)
    return value.reshape(len(vec), *flat.out_shapes[0])


def batch_hessian(fn: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, *,
                  method: str = "auto", verify: bool = False) -> torch.Tensor:
    """Per-sample Hessians of each output, (B, *out, *in, *in), batch first.

    ``method="auto"`` times NOTE [auto for JVP sets and Hessians]'s candidates on the first call;
    ``verify=True`` compares every sample's uᵀ H[b] (v, w) for random u, v, w with finite
    differences of the first derivative along w (6 backward passes) and raises ``MismatchError``
    when it is wrong.

    Args:
        fn: a function or module of one batched tensor (batch first).
        x: the inputs, (B, *in).
        method: "auto" or a registered ``hessian`` method.
        verify: check the answer against finite differences of the first derivative.

    Returns:
        (B, *out, *in, *in), in ``x``'s dtype.

    Raises:
        InvalidArgument: the samples interact (no per-sample Hessian method applies), or bad input.
        MismatchError: ``verify=True`` and the answer is wrong.

    >>> net = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Tanh(), torch.nn.Linear(4, 2))
    >>> batch_hessian(net.double(), torch.randn(5, 3, dtype=torch.float64), verify=True).shape
    torch.Size([5, 2, 3, 3])
    """
    if not isinstance(x, torch.Tensor) or x.ndim < 1:
        raise InvalidArgument(f"x={type(x).__name__} must be a tensor with the batch first")
    modules = modules_of(fn)
    key = call_key(fn, x, extra="hessian", modules=modules)
    with kept_buffers(modules):  # the validating call and the probes are not the caller's
        flat = flatten(make_case(fn, x))
        if key not in plan_table(fn):
            noise, center = check_determinism(flat)
            coupling = check_coupling(flat, 0, noise, center=center)
            if coupling.coupled:
                raise InvalidArgument(f"samples interact ({coupling.reason}): every per-sample "
                                      "Hessian method assumes they do not; call model.eval() or "
                                      "fix the batch")
    name, value = _run("hessian", method, HESSIAN_FAMILY, flat, key, fn)
    if verify:
        with kept_buffers(modules):
            _verify_hessian(flat, value, name)
    return value.reshape(x.shape[0], *flat.out_shapes[0], *x.shape[1:], *x.shape[1:])


def _verify_hessian(flat: Flat, value: torch.Tensor, name: str) -> None:
    gen = torch.Generator().manual_seed(0)
    b, m, n = flat.batch_size, flat.n_out, flat.n_in
    u, v, w = (torch.randn(b, k, generator=gen, dtype=torch.float64).to(flat.x)
               for k in (m, n, n))

    def projected(z: torch.Tensor) -> torch.Tensor:  # per sample: u_bᵀ J_b(z) v_b, reverse mode
        with torch.enable_grad():
            z = z.detach().requires_grad_()
            (g,) = torch.autograd.grad(flat.fn(z), z, u)
        return (g * v).sum(1, keepdim=True)

    line = Flat(projected, flat.x, flat.in_shapes, ((1,),))
    ref = directional_differences(line, w, per_sample=True, independent=True)
    got = torch.einsum("bm,bmij,bi,bj->b", u, value.to(u), v, w)
    _judge(name, "hessian", got[:, None], ref, flat.x.dtype)


def _judge(name: str, quantity: str, value: torch.Tensor, ref: Reference, dtype) -> None:
    c = compare(value, Reference("finite_differences", ref.value, ref.error), dtype, tolerances())
    if not c.passed:
        raise MismatchError(
            f"{quantity} via {name} failed its verification: {describe_worst(c)}; run "
            f"jacverify.check_{'jvps' if quantity == 'jvp_set' else 'hessians'} to see which "
            "methods are wrong", None)  # type: ignore[arg-type]
