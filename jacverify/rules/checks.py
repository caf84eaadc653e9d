"""One example of a batching rule, and the checks run on it: vmap against the loop, nested vmap
against the double loop, and vmap of jacrev / jacfwd / vjp / jvp against loops of them."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch.func import jacfwd, jacrev, jvp, vjp, vmap

from jacverify.compare import Reference, compare
from jacverify.judge import Status, describe_worst, raised
from jacverify.rules.targets import RuleTarget

__all__ = ["RuleExample", "CheckOutcome", "run_checks", "CHECKS", "build_args", "differ",
           "stack_outputs", "raised"]

LAYOUTS = ("contiguous", "non_contiguous", "expanded")
CHECKS = ("vmap", "vmap_nested", "vmap_jacrev", "vmap_jacfwd", "vmap_vjp", "vmap_jvp")


@dataclass(frozen=True)
class RuleExample:
    """Everything drawn for one example; ``repr`` is part of the printed reproducer.

    Attributes:
        batch_size: samples along the vmapped axis.
        shapes: the per-sample shape of each tensor argument (None for scalars).
        scalars: the value of each scalar argument (None for tensors).
        in_dims: where each tensor argument's batch axis is (None: unbatched, shared).
        out_dims: where the output's batch axis is asked for.
        layout: how batched inputs sit in memory: contiguous, non_contiguous (a permuted view)
            or expanded (stride 0 along the last per-sample axis).
        seed: the values (distinct per sample).
    """

    batch_size: int
    shapes: tuple[tuple[int, ...] | None, ...]
    scalars: tuple[float | int | bool | None, ...]
    in_dims: tuple[int | None, ...]
    out_dims: int
    layout: str
    seed: int


@dataclass(frozen=True)
class CheckOutcome:
    """One check on one example: "agree", "mismatch" (with what differs) or "unsupported"."""

    check: str
    status: str
    detail: str = ""


def build_args(target: RuleTarget, ex: RuleExample, outer: int | None = None) -> list:
    """The arguments: batched tensors with distinct values per sample, at their in_dims, laid out
    per ``ex.layout``; with ``outer``, an extra leading batch axis of that size."""
    gen = torch.Generator().manual_seed(ex.seed)
    args: list = []
    for i, arg in enumerate(target.args):
        if arg.kind != "tensor":
            args.append(ex.scalars[i])
            continue
        shape, d = ex.shapes[i], ex.in_dims[i]
        lead = ([outer] if outer else []) + ([ex.batch_size] if d is not None else [])

        expanded = ex.layout == "expanded" and bool(shape)
        drawn = (*shape[:-1], 1) if expanded else shape  # expanded: stride 0 on the last axis
        count = math.prod(lead)
        samples = [torch.randn(drawn, generator=gen, dtype=torch.float64) for _ in range(count)]
        if not count:  # a batch of 0
            t = torch.empty(*lead, *drawn, dtype=torch.float64)
        else:
            t = torch.stack(samples).reshape(*lead, *drawn) if lead else samples[0]
        t = t.expand(*lead, *shape) if expanded else t
        if d is not None:
            t = t.movedim(1 if outer else 0, (1 if outer else 0) + (d % (len(shape) + 1)))
        if ex.layout == "non_contiguous" and t.ndim >= 2:
            t = t.transpose(0, -1).contiguous().transpose(0, -1)  # same values, permuted strides
        args.append(t)
    return args


def _slice(args: list, in_dims: tuple, i: int) -> list:
    return [a.select(d, i) if isinstance(a, torch.Tensor) and d is not None else a
            for a, d in zip(args, in_dims)]


def stack_outputs(outs: list, dim: int = 0):
    """The loop's results stacked along ``dim``, output by output (non-tensors: the first)."""
    first = outs[0]
    if isinstance(first, (tuple, list)):
        return type(first)(stack_outputs([o[k] for o in outs], dim) for k in range(len(first)))
    return torch.stack(outs, dim=dim) if isinstance(first, torch.Tensor) else first


def _loop(fn: Callable, args: list, in_dims: tuple, size: int, out_dims: int):
    return stack_outputs([fn(*_slice(args, in_dims, i)) for i in range(size)], out_dims)


def _flatten(out) -> list[torch.Tensor]:
    if isinstance(out, torch.Tensor):
        return [out]
    if isinstance(out, (tuple, list)):
        return [t for o in out for t in _flatten(o)]
    return []  # a non-tensor output (an int, None) has nothing to batch


def differ(got, want, summed: bool = False) -> str | None:
    """What differs between a vmapped and a looped result: shape, dtype or values (floating ones
    under NOTE [tolerances] for their dtype, complex ones as real pairs, NaN where both are NaN;
    others exactly); None if nothing. A result on another device (``jacverify ops --device``) is
    compared on the loop's (NOTE [references on the CPU]).

    ``summed``: each entry of a sample (the first axis) sums terms over the whole sample, as a
    jvp's or vjp's entries sum J's entries times a tangent's or cotangent's, so its size
    (``Reference.magnitude``) is its sample's largest |value|, not its own: the tangent of
    linalg.eig's eigenvectors had an entry of 4e-17 beside O(1) ones, which vmap over a batch of
    one computed as 1e-16 (rounding, on one CPU of two), and held to its own size it failed.

    >>> want = torch.tensor([[1.0, 4e-17]], dtype=torch.float64)
    >>> rounded = want + torch.tensor([0.0, 6e-17], dtype=torch.float64)
    >>> differ(rounded, want) is None, differ(rounded, want, summed=True) is None
    (False, True)
    >>> differ(want * 1.01, want, summed=True)[:29]  # 1% off is still caught
    "values differ from the loop's"
    """
    got, want = _flatten(got), _flatten(want)
    if len(got) != len(want):
        return f"returned {len(got)} outputs, the loop {len(want)}"
    for k, (g, w) in enumerate(zip(got, want)):
        where = f"output {k}: " if len(got) > 1 else ""
        g = g.to(w.device)
        if g.shape != w.shape:
            return f"{where}shape {tuple(g.shape)}, the loop gives {tuple(w.shape)}"
        if g.dtype != w.dtype:
            return f"{where}dtype {g.dtype}, the loop gives {w.dtype}"
        if not w.numel():
            continue
        if w.is_complex():  # as real pairs, under the tolerance of their real dtype
            g, w = torch.view_as_real(g.resolve_conj()), torch.view_as_real(w.resolve_conj())
        if not w.is_floating_point():
            if not torch.equal(g, w):
                return f"{where}values differ from the loop's ({w.dtype}, compared exactly)"
            continue
        both_nan = torch.isnan(g) & torch.isnan(w)
        g64 = torch.where(both_nan, 0.0, g.detach().double())
        w64 = torch.where(both_nan, 0.0, w.detach().double())
        size = w64.abs().amax(dim=tuple(range(1, w64.ndim)), keepdim=True).expand_as(w64) \
            if summed and w64.ndim > 1 else None
        c = compare(g64, Reference("loop", w64, magnitude=size), w.dtype)
        if not c.passed:
            return f"{where}values differ from the loop's: {describe_worst(c)} (value: vmap's)"
    return None


def _first_tensor_output(fn: Callable) -> Callable:
    def g(*a):
        out = fn(*a)
        return out if isinstance(out, torch.Tensor) else _flatten(out)[0]
    return g


def run_checks(target: RuleTarget, ex: RuleExample, checks=CHECKS) -> list[CheckOutcome]:
    """Run ``checks`` on one example. The unbatched call must work (the caller discards it
    otherwise); a transform that raises is "unsupported", a wrong shape/dtype/value "mismatch"."""
    fn, in_dims, b = target.fn, ex.in_dims, ex.batch_size
    args = build_args(target, ex)
    dims = tuple(d if a.kind == "tensor" else None for a, d in zip(target.args, in_dims))
    results = []
    grad_arg = next((i for i in target.tensors if dims[i] is not None), None)
    for check in checks:
        if b == 0 and check != "vmap":
            continue  # a batch of 0: only the shape of vmap's result is checked
        try:
            if check == "vmap" and b == 0:
                one = build_args(target, dataclasses.replace(ex, batch_size=1))
                want = _loop(fn, one, dims, 1, ex.out_dims)
                want = _empty_batch(want, ex.out_dims)
                got = vmap(fn, in_dims=dims, out_dims=ex.out_dims)(*args)
            elif check == "vmap":
                want = _loop(fn, args, dims, b, ex.out_dims)
                got = vmap(fn, in_dims=dims, out_dims=ex.out_dims)(*args)
            elif check == "vmap_nested":
                outer = build_args(target, ex, outer=2)
                odims = tuple(0 if a.kind == "tensor" else None for a in target.args)
                inner = vmap(fn, in_dims=dims, out_dims=ex.out_dims)
                got = vmap(inner, in_dims=odims)(*outer)
                want = _loop(lambda *a: _loop(fn, list(a), dims, b, ex.out_dims),
                             outer, odims, 2, 0)
            else:
                if grad_arg is None:
                    continue
                g = _first_tensor_output(fn)
                per = _derivative(check, g, grad_arg, ex, target)
                want = _loop(per, args, dims, b, 0)
                got = vmap(per, in_dims=dims, out_dims=0)(*args)
        except Exception as e:  # noqa: BLE001 - no rule for this transform, or the op refuses it
            results.append(CheckOutcome(check, Status.UNSUPPORTED, raised(e)))
            continue
        bad = differ(got, want)
        results.append(CheckOutcome(check, Status.MISMATCH if bad else Status.AGREE, bad or ""))
    return results


def _empty_batch(out, dim: int):
    """The loop's result for a batch of 0: a batch of 1 cut down to none (shape and dtype kept)."""
    if isinstance(out, (tuple, list)):
        return type(out)(_empty_batch(o, dim) for o in out)
    return out.narrow(dim, 0, 0)


def _derivative(check: str, g: Callable, i: int, ex: RuleExample, target: RuleTarget) -> Callable:
    """Per-sample derivative of g in argument i, as a function of the sample's arguments."""
    gen = torch.Generator().manual_seed(ex.seed + 1)
    shape = ex.shapes[i]
    tangent = torch.randn(shape, generator=gen, dtype=torch.float64)

    def at(*a):
        return lambda xi: g(*a[:i], xi, *a[i + 1:])

    if check == "vmap_jacrev":
        return lambda *a: jacrev(at(*a))(a[i])
    if check == "vmap_jacfwd":
        return lambda *a: jacfwd(at(*a))(a[i])
    if check == "vmap_jvp":
        return lambda *a: jvp(at(*a), (a[i],), (tangent,))[1]
    if check == "vmap_vjp":
        def pulled(*a):
            out, pullback = vjp(at(*a), a[i])
            cot = torch.linspace(-1, 1, out.numel(), dtype=out.dtype).reshape(out.shape)
            return pullback(cot)[0]
        return pulled
    raise ValueError(check)
