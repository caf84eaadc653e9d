"""Per-sample gradients with respect to parameters: every way to compute them, registered under the
quantity ``per_sample_grad``.

Each method maps a :class:`GradProblem` to (B, P): row b is the gradient of sample b's loss with
respect to every parameter, flattened and concatenated in ``model.named_parameters()`` order.
Opacus and BackPACK are optional (``jacverify[opacus]``, ``jacverify[backpack]``): without them
their methods are ``not_applicable`` with the install line.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn
from torch.func import functional_call, grad, vmap

from jacverify.errors import NotApplicable
from jacverify.methods import Method, register_method

__all__ = ["GradProblem", "loop", "vmap_grad", "batched_grad", "opacus", "backpack"]


@dataclass(frozen=True)
class GradProblem:
    """One per-sample-gradient case, batch first.

    Attributes:
        model: the module; its parameters that require grad are differentiated.
        inputs: the model's positional inputs, each (B, ...).
        targets: (B, ...), one per sample.
        loss: per-sample loss, ``loss(outputs, targets) -> (B,)``.
        names, shapes: the differentiated parameters, in ``named_parameters()`` order.
    """

    model: nn.Module
    inputs: tuple[torch.Tensor, ...]
    targets: torch.Tensor
    loss: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
    names: tuple[str, ...]
    shapes: tuple[tuple[int, ...], ...]

    @property
    def batch_size(self) -> int:
        return self.targets.shape[0]

    @property
    def n_params(self) -> int:
        return sum(math.prod(s) for s in self.shapes)

    def params(self, model: nn.Module | None = None) -> list[torch.Tensor]:
        named = dict((model or self.model).named_parameters())
        return [named[n] for n in self.names]


def _flat(grads, b: int) -> torch.Tensor:
    return torch.cat([g.reshape(b, -1) for g in grads], 1)


def loop(problem: GradProblem) -> torch.Tensor:
    """Each sample alone through the model, one backward each."""
    rows = []
    params = problem.params()
    for b in range(problem.batch_size):
        out = problem.model(*(x[b:b + 1] for x in problem.inputs))
        g = torch.autograd.grad(problem.loss(out, problem.targets[b:b + 1]).sum(), params,
                                allow_unused=True, materialize_grads=True)
        rows.append(_flat(g, 1))
    return torch.cat(rows)


def vmap_grad(problem: GradProblem) -> torch.Tensor:
    """``vmap(grad(functional_call))``: the torch.func recipe for per-sample gradients."""
    model = problem.model
    params = {n: p.detach() for n, p in zip(problem.names, problem.params())}
    buffers = dict(model.named_buffers())

    def one(p, *sample):
        *xs, y = sample
        out = functional_call(model, ({**p}, buffers), tuple(x.unsqueeze(0) for x in xs))
        return problem.loss(out, y.unsqueeze(0)).sum()

    g = vmap(grad(one), in_dims=(None, *([0] * (len(problem.inputs) + 1))))(
        params, *problem.inputs, problem.targets)
    return _flat([g[n] for n in problem.names], problem.batch_size)


def batched_grad(problem: GradProblem) -> torch.Tensor:
    """The whole batch forward once, then ``autograd.grad(is_grads_batched=True)`` with cotangent
    e_b on the per-sample losses: row b is d loss_b / d params through the batch."""
    params = problem.params()
    losses = problem.loss(problem.model(*problem.inputs), problem.targets)
    eye = torch.eye(problem.batch_size, dtype=losses.dtype, device=losses.device)
    g = torch.autograd.grad(losses, params, eye, is_grads_batched=True, allow_unused=True,
                            materialize_grads=True)
    return _flat(g, problem.batch_size)


def opacus(problem: GradProblem) -> torch.Tensor:
    """Opacus's ``GradSampleModule`` (hooks per layer type), loss summed over the batch."""
    try:
        from opacus import GradSampleModule
    except ImportError:
        raise NotApplicable("opacus is not installed: pip install 'jacverify[opacus]'") from None
    model = copy.deepcopy(problem.model)
    gsm = GradSampleModule(model, batch_first=True, loss_reduction="sum", strict=True)
    try:
        params = problem.params(gsm._module)
        problem.loss(gsm(*problem.inputs), problem.targets).sum().backward()
        missing = [n for n, p in zip(problem.names, params) if getattr(p, "grad_sample", None) is None]
        if missing:
            raise NotApplicable(f"Opacus computed no grad_sample for {', '.join(missing)}")
        return _flat([p.grad_sample for p in params], problem.batch_size)
    finally:
        gsm._close()


def backpack(problem: GradProblem) -> torch.Tensor:
    """BackPACK's ``BatchGrad`` extension on an extended copy of the model."""
    try:
        from backpack import backpack as backpack_context, extend
        from backpack.extensions import BatchGrad
    except ImportError:
        raise NotApplicable("backpack is not installed: pip install 'jacverify[backpack]'") from None
    model = extend(copy.deepcopy(problem.model))
    params = problem.params(model)
    losses = problem.loss(model(*problem.inputs), problem.targets)
    with backpack_context(BatchGrad()):
        losses.sum().backward()
    missing = [n for n, p in zip(problem.names, params) if getattr(p, "grad_batch", None) is None]
    if missing:
        raise NotApplicable(f"BackPACK computed no grad_batch for {', '.join(missing)}")
    return _flat([p.grad_batch for p in params], problem.batch_size)


_TABLE = [
    # name, compute, mode, vectorized, assumes independent samples
    ("loop", loop, "reverse", False, True),
    ("vmap_grad", vmap_grad, "reverse", True, True),
    ("batched_grad", batched_grad, "reverse", True, False),
    ("opacus", opacus, "reverse", False, True),
    ("backpack", backpack, "reverse", False, True),
]
for _name, _compute, _mode, _vectorized, _independent in _TABLE:
    register_method(Method(_name, _compute, _mode, vectorized=_vectorized,  # type: ignore[arg-type]
                           assumes_independent=_independent, quantity="per_sample_grad",
                           description=(_compute.__doc__ or _name).strip().split("\n")[0]))
