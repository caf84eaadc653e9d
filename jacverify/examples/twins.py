"""Custom ``autograd.Function``s computing x**3: one correct, and one broken twin per formula.

Each twin breaks exactly one rule, so exactly one family of methods must disagree:

- :class:`CubeWrongBackward` -- reverse-mode methods (and the ``loop`` reference itself);
- :class:`CubeWrongJvp` -- forward-mode methods;
- :class:`CubeWrongVmap` -- methods that vmap over the function's forward;
- :class:`CubeNoJvp` -- no forward formula at all: forward methods are ``unsupported``;
- :func:`cube_off` -- a backward, jvp or batching rule off by a factor (1.01: 1% wrong).
"""

from __future__ import annotations

import torch
from torch import nn


class Cube(torch.autograd.Function):
    """x**3 with correct backward, jvp and a generated vmap rule."""

    generate_vmap_rule = True

    @staticmethod
    def forward(x):
        return x**3

    @staticmethod
    def setup_context(ctx, inputs, output):
        (x,) = inputs
        ctx.save_for_backward(x)
        ctx.save_for_forward(x)

    @staticmethod
    def backward(ctx, grad):
        (x,) = ctx.saved_tensors
        return 3 * x**2 * grad

    @staticmethod
    def jvp(ctx, tangent):
        (x,) = ctx.saved_tensors
        return 3 * x**2 * tangent


class CubeWrongBackward(Cube):
    """backward returns 2x² g instead of 3x² g."""

    @staticmethod
    def backward(ctx, grad):
        (x,) = ctx.saved_tensors
        return 2 * x**2 * grad


class CubeWrongJvp(Cube):
    """jvp returns 2x² t instead of 3x² t."""

    @staticmethod
    def jvp(ctx, tangent):
        (x,) = ctx.saved_tensors
        return 2 * x**2 * tangent


class CubeWrongVmap(Cube):
    """A hand-written vmap rule that reverses the batch: it mixes samples."""

    generate_vmap_rule = False

    @staticmethod
    def vmap(info, in_dims, x):
        (d,) = in_dims
        if d is None:
            return x**3, None
        return CubeWrongVmap.apply(x.flip(d)), d


class CubeNoJvp(torch.autograd.Function):
    """x**3 with a correct backward and no jvp: forward mode cannot run through it."""

    generate_vmap_rule = True

    @staticmethod
    def forward(x):
        return x**3

    @staticmethod
    def setup_context(ctx, inputs, output):
        ctx.save_for_backward(inputs[0])

    @staticmethod
    def backward(ctx, grad):
        (x,) = ctx.saved_tensors
        return 3 * x**2 * grad


def cube_off(*, backward: float = 1.0, jvp: float = 1.0,
             rule: float = 1.0) -> type[torch.autograd.Function]:
    """A :class:`Cube` whose backward, jvp or batching rule is ``factor`` times the right one
    (``backward=1.01``: a backward 1% wrong); all three 1.0: a correct Cube with a hand-written
    batching rule.

    >>> off = cube_off(backward=1.01)
    >>> x = torch.tensor([2.0], requires_grad=True)
    >>> off.apply(x).backward(); round(float(x.grad), 4)  # 3 x² = 12, 1% over
    12.12
    """

    class CubeOff(Cube):
        generate_vmap_rule = False

        @staticmethod
        def backward(ctx, grad):
            (x,) = ctx.saved_tensors
            return backward * 3 * x**2 * grad

        @staticmethod
        def jvp(ctx, tangent):
            (x,) = ctx.saved_tensors
            return jvp * 3 * x**2 * tangent

        @staticmethod
        def vmap(info, in_dims, x):
            return CubeOff.apply(x) * rule, in_dims[0]

    CubeOff.__name__ = CubeOff.__qualname__ = (
        f"CubeOff(backward={backward:g}, jvp={jvp:g}, rule={rule:g})")
    return CubeOff


def tanh_off(backward: float) -> type[torch.autograd.Function]:
    """tanh whose backward is ``backward`` times the right one, with no jvp or batching rule of
    its own: saturated inputs (|x| ~ 50) leave finite differences little to pin down, and a
    float16 copy of it next to a float64 block hid its error (tests of NOTE [unstable finite
    differences]).

    >>> x = torch.tensor([0.0], requires_grad=True)
    >>> tanh_off(1.1).apply(x).backward(); float(x.grad)  # 1 - tanh(0)^2 = 1, 10% over
    1.100000023841858
    """

    class TanhOff(torch.autograd.Function):
        @staticmethod
        def forward(x):
            return torch.tanh(x)

        @staticmethod
        def setup_context(ctx, inputs, output):
            ctx.save_for_backward(output)

        @staticmethod
        def backward(ctx, grad):
            (y,) = ctx.saved_tensors
            return backward * (1 - y * y) * grad

    TanhOff.__name__ = TanhOff.__qualname__ = f"TanhOff(backward={backward:g})"
    return TanhOff


class Apply(nn.Module):
    """A module around an ``autograd.Function``'s ``apply``."""

    def __init__(self, function: type[torch.autograd.Function]) -> None:
        super().__init__()
        self.function = function

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.function.apply(x)

    def extra_repr(self) -> str:
        return self.function.__name__


def cube_net(function: type[torch.autograd.Function] = Cube, seed: int = 0) -> nn.Module:
    """Linear(5, 6) -> function -> Tanh -> Linear(6, 3), weights from ``seed``.

    The Tanh after the function makes the Jacobian depend on its forward values, so a batching
    rule that gets those wrong shows in derivatives too.
    """
    gen = torch.Generator().manual_seed(seed)
    net = nn.Sequential(nn.Linear(5, 6), Apply(function), nn.Tanh(), nn.Linear(6, 3))
    with torch.no_grad():
        for p in net.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * 0.5)
    return net


# --- second-order twins: first derivatives right, second derivatives wrong ---

class SinDetachedBackward(torch.autograd.Function):
    """sin(x) whose backward uses a detached saved input: the gradient is right, but its own
    derivative drops the -sin(x) term, so double backward is silently wrong."""

    generate_vmap_rule = True

    @staticmethod
    def forward(x):
        return torch.sin(x)

    @staticmethod
    def setup_context(ctx, inputs, output):
        ctx.save_for_backward(inputs[0].detach())
        ctx.save_for_forward(inputs[0])

    @staticmethod
    def backward(ctx, grad):
        (x,) = ctx.saved_tensors
        return torch.cos(x) * grad

    @staticmethod
    def jvp(ctx, tangent):
        (x,) = ctx.saved_tensors
        return torch.cos(x) * tangent


class HiddenSecondOrderDetach(nn.Module):
    """tanh(x) + (x - x.detach())**2: the extra term is 0 and so is its gradient, so values and
    first derivatives are exact; autodiff still sees its second derivative, 2 on the diagonal."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.tanh(x) + (x - x.detach()) ** 2


def second_order_net(layer: nn.Module, seed: int = 0) -> nn.Module:
    """Linear(3, 4) -> layer -> Tanh -> Linear(4, 2), weights from ``seed``."""
    gen = torch.Generator().manual_seed(seed)
    net = nn.Sequential(nn.Linear(3, 4), layer, nn.Tanh(), nn.Linear(4, 2))
    with torch.no_grad():
        for p in net.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * 0.7)
    return net
