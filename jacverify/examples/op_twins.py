"""Operators to fuzz with :func:`~jacverify.rules.op_fuzzer.fuzz_op`: for each kind of bug
torch's own tests cannot see, a correct op and a broken twin that differs only there.

=====================  =====================================================================
twin                   broken only ...
=====================  =====================================================================
``LOWER_MATVEC``       its registered backward reads the upper triangle the op never uses
``POWER``              its jvp, only for the non-default keyword ``cube=True``
``TAKE_ROWS``          its backward, only where an index repeats
``SCALE``              its batching rule, only for a batched 0-dim scale (it uses sample 0's)
``CHECKED_SQRT``       its batching rule accepts a batch whose samples the op rejects alone
=====================  =====================================================================

Each name is a pair ``(correct, broken)`` of :class:`~jacverify.rules.op_fuzzer.OpFamily`.
"""

from __future__ import annotations

import torch
from hypothesis import strategies as st

from jacverify.rules.op_fuzzer import Call, OpFamily, form

F64 = torch.float64
NS = "jacverify_twins"


def _randn(gen, *shape):
    return torch.randn(shape, generator=gen, dtype=F64)


def _family(name: str, fn, forms, build, attr: str, index: int, **kw) -> OpFamily:
    return OpFamily(name, fn, forms.map(lambda d: form(**d)), build, f"{attr}[{index}].fn",
                    f"{attr}[{index}]", f"from jacverify.examples.op_twins import {attr}", **kw)


# torch.func.jvp over torch.func.jvp through an autograd.Function drops the outer tangent: for
# x -> x² (a correct jvp, t * 2x) it gives 0 where the closed form is 2 (torch 2.13). Not the
# twin's fault, so the twins do not claim that route (reverse over forward is still checked).
FWD_OVER_FWD_FUNCTION = ("torch.func.jvp over jvp through an autograd.Function drops the outer "
                         "tangent (torch 2.13: 0 for d²(x²)/dx², not 2)")


# -- 1. a backward that reads a triangle the op never uses --------------------------------------

def _lower_matvec_impl(a: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    return torch.tril(a) @ x


def _make_lower_matvec(name: str, leaks: bool):
    op = torch.library.custom_op(f"{NS}::{name}", mutates_args=())(_lower_matvec_impl)

    def setup(ctx, inputs, output):
        ctx.save_for_backward(*inputs)

    def backward(ctx, g):
        a, x = ctx.saved_tensors
        ga = g[:, None] * x[None, :]
        return (ga if leaks else torch.tril(ga)), torch.tril(a).mT @ g

    op.register_autograd(backward, setup_context=setup)
    return op


def _matvec_call(f, gen):
    n = f["n"]
    return Call((_randn(gen, n, n), _randn(gen, n)))  # a full matrix: its upper triangle is unread


_matvec_forms = st.fixed_dictionaries({"n": st.integers(1, 3)})
LOWER_MATVEC = tuple(_family(f"{NS}::lower_matvec{tag}", _make_lower_matvec(f"lower_matvec{tag}", leaks),
                             _matvec_forms, _matvec_call, "LOWER_MATVEC", k)
                     for k, (tag, leaks) in enumerate((("", False), ("_leaky", True))))


# -- 2. a jvp wrong only for a non-default keyword ----------------------------------------------

class _Power(torch.autograd.Function):
    """x² or x³ with both derivative formulas; ``wrong_cube_jvp`` breaks the jvp of x³."""

    generate_vmap_rule = True
    wrong_cube_jvp = False

    @staticmethod
    def forward(x, cube):
        return x * x * x if cube else x * x

    @staticmethod
    def setup_context(ctx, inputs, output):
        x, cube = inputs
        ctx.cube = cube
        ctx.save_for_backward(x)
        ctx.save_for_forward(x)

    @staticmethod
    def backward(ctx, g):
        (x,) = ctx.saved_tensors
        return g * (3 * x * x if ctx.cube else 2 * x), None

    @staticmethod
    def jvp(ctx, t, _):
        (x,) = ctx.saved_tensors
        return t * (3 * x * x if ctx.cube else 2 * x)


class _PowerWrongCube(_Power):
    @staticmethod
    def jvp(ctx, t, _):
        (x,) = ctx.saved_tensors
        return t * 2 * x  # the square's formula, also for the cube


def power(x: torch.Tensor, *, cube: bool = False) -> torch.Tensor:
    """x² (default) or x³; correct derivatives."""
    return _Power.apply(x, cube)


def power_wrong_cube(x: torch.Tensor, *, cube: bool = False) -> torch.Tensor:
    """x² or x³; its jvp is the square's for ``cube=True`` too."""
    return _PowerWrongCube.apply(x, cube)


def _power_call(f, gen):
    return Call((_randn(gen, f["n"]),), {"cube": f["cube"]})


_power_forms = st.fixed_dictionaries({"n": st.integers(1, 3), "cube": st.booleans()})
POWER = tuple(_family(name, fn, _power_forms, _power_call, "POWER", k,
                      unclaimed={"fwd_over_fwd": FWD_OVER_FWD_FUNCTION})
              for k, (name, fn) in enumerate((("power", power),
                                               ("power_wrong_cube", power_wrong_cube))))


# -- 3. a backward wrong only at duplicate indices ----------------------------------------------

def _make_take_rows(name: str, accumulates: bool):
    @torch.library.custom_op(f"{NS}::{name}", mutates_args=())
    def op(x: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        return x[index].clone()

    def setup(ctx, inputs, output):
        x, index = inputs
        ctx.save_for_backward(index)
        ctx.shape = x.shape

    def backward(ctx, g):
        (index,) = ctx.saved_tensors
        zero = g.new_zeros(ctx.shape)
        gx = zero.index_add(0, index, g) if accumulates else zero.index_put((index,), g)
        return gx, None

    op.register_autograd(backward, setup_context=setup)
    return op


def _take_call(f, gen):
    n, k = f["n"], f["k"]
    if f["duplicates"]:
        index = torch.randint(0, n, (k,), generator=gen)
        if k >= 2:
            index[-1] = index[0]
    else:
        index = torch.randperm(n, generator=gen)[:k]
    return Call((_randn(gen, n, 2), index))


_take_forms = st.fixed_dictionaries({"n": st.integers(1, 4), "k": st.integers(1, 4),
                                     "duplicates": st.booleans()}).map(
    lambda d: d if d["duplicates"] else {**d, "k": min(d["k"], d["n"])})
TAKE_ROWS = tuple(_family(f"{NS}::take_rows{tag}", _make_take_rows(f"take_rows{tag}", acc),
                          _take_forms, _take_call, "TAKE_ROWS", k)
                  for k, (tag, acc) in enumerate((("", True), ("_overwrites", False))))


# -- 4. a batching rule that ignores a batched 0-dim value --------------------------------------

def _make_scale(name: str, ignores_batched_scale: bool):
    @torch.library.custom_op(f"{NS}::{name}", mutates_args=())
    def op(x: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
        return x * s

    def setup(ctx, inputs, output):
        ctx.save_for_backward(*inputs)

    def backward(ctx, g):
        x, s = ctx.saved_tensors
        return g * s, (g * x).sum()

    op.register_autograd(backward, setup_context=setup)

    def rule(info, in_dims, x, s):
        xd, sd = in_dims
        xb = x.movedim(xd, 0) if xd is not None else x.expand(info.batch_size, *x.shape)
        if sd is None:
            return op(xb, s), 0
        if ignores_batched_scale:
            return op(xb, s[0]), 0  # sample 0's scale for every sample
        sb = s.movedim(sd, 0).reshape(-1, *([1] * x.dim() if xd is None else [1] * (x.dim() - 1)))
        return xb * sb, 0

    torch.library.register_vmap(op, rule)
    return op


def _scale_call(f, gen):
    return Call((_randn(gen, f["n"]), _randn(gen)))  # s: a 0-dim tensor


_scale_forms = st.fixed_dictionaries({"n": st.integers(1, 3)})
SCALE = tuple(_family(f"{NS}::scale{tag}", _make_scale(f"scale{tag}", ignores),
                      _scale_forms, _scale_call, "SCALE", k)
              for k, (tag, ignores) in enumerate((("", False), ("_first_scale", True))))


# -- 5. a batching rule that accepts samples the op rejects -------------------------------------

def _make_checked_sqrt(name: str, checks_in_rule: bool):
    @torch.library.custom_op(f"{NS}::{name}", mutates_args=())
    def op(x: torch.Tensor) -> torch.Tensor:
        if (x < 0).any():
            raise ValueError(f"{name}: negative input")
        return torch.sqrt(x)

    def setup(ctx, inputs, output):
        ctx.save_for_backward(output)

    def backward(ctx, g):
        (y,) = ctx.saved_tensors
        return g / (2 * y)

    op.register_autograd(backward, setup_context=setup)

    def rule(info, in_dims, x):
        xb = x.movedim(in_dims[0], 0)
        if checks_in_rule:
            return op(xb), 0  # the op's own check, on every sample
        return torch.sqrt(xb), 0  # no check: NaN where a sample is negative

    torch.library.register_vmap(op, rule)
    return op


def _sqrt_call(f, gen):
    return Call((_randn(gen, f["n"]) + f["shift"],))


_sqrt_forms = st.fixed_dictionaries({"n": st.integers(1, 3), "shift": st.sampled_from((0.5, 2.0))})
CHECKED_SQRT = tuple(_family(f"{NS}::checked_sqrt{tag}", _make_checked_sqrt(f"checked_sqrt{tag}", c),
                             _sqrt_forms, _sqrt_call, "CHECKED_SQRT", k)
                     for k, (tag, c) in enumerate((("", True), ("_unchecked_rule", False))))

TWINS = {"LOWER_MATVEC": LOWER_MATVEC, "POWER": POWER, "TAKE_ROWS": TAKE_ROWS, "SCALE": SCALE,
         "CHECKED_SQRT": CHECKED_SQRT}
