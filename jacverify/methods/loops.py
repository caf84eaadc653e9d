"""Naive loops: one autograd call per sample, output entry or input entry.

Slow and simple, so they are what people trust; ``loop`` is also the autodiff reference.
"""

from __future__ import annotations

import torch
import torch.autograd.forward_ad as fwAD

from jacverify.costs import Work
from jacverify.case import Flat
from jacverify.methods import Method, gradient, register_method


def loop(flat: Flat) -> torch.Tensor:
    """Per sample and per output entry, one ``torch.autograd.grad`` through the whole batch.

    It differentiates the batched call itself and keeps block b of the gradient, so it stays the
    per-sample truth (the diagonal blocks of the full Jacobian) when samples interact.
    """
    x = flat.x.detach().requires_grad_()
    y = flat.fn(x)
    jac = x.new_zeros(flat.batch_size, flat.n_out, flat.n_in)
    for b in range(flat.batch_size):
        for m in range(flat.n_out):
            jac[b, m] = gradient(y[b, m], x, retain_graph=True)[b]
    return jac


def loop_rows(flat: Flat) -> torch.Tensor:
    """One backward per output entry, with the batch summed: row m for every sample at once."""
    x = flat.x.detach().requires_grad_()
    y = flat.fn(x)
    rows = [gradient(y[:, m].sum(), x, retain_graph=True) for m in range(flat.n_out)]
    return torch.stack(rows, dim=1)


def dual_loop(flat: Flat) -> torch.Tensor:
    """Forward-mode dual tensors, one pass per input entry j, tangent e_j on every sample."""
    cols = []
    with fwAD.dual_level():
        for j in range(flat.n_in):
            tangent = torch.zeros_like(flat.x)
            tangent[:, j] = 1
            out = fwAD.unpack_dual(flat.fn(fwAD.make_dual(flat.x, tangent)))
            t = out.tangent
            cols.append(torch.zeros_like(out.primal) if t is None else t)
    return torch.stack(cols, dim=2)


def double_backward(flat: Flat) -> torch.Tensor:
    """Forward mode out of two reverse passes: g(u) = Jᵀu with create_graph, then J e_j = d(g·e_j)/du."""
    x = flat.x.detach().requires_grad_()
    y = flat.fn(x)
    u = torch.zeros_like(y, requires_grad=True)
    vjp = gradient(y, x, u, create_graph=True)
    cols = []
    for j in range(flat.n_in):
        v = torch.zeros_like(flat.x)
        v[:, j] = 1
        cols.append(gradient(vjp, u, v, retain_graph=True))
    return torch.stack(cols, dim=2)


register_method(Method("loop", loop, "reverse", vectorized=False, assumes_independent=False, work=lambda b, m, n: Work(b * m, "reverse"),
                       description="autograd.grad per sample and output entry",
    cost="a Python loop of B*M backward passes through the whole batch"))
register_method(Method("loop_rows", loop_rows, "reverse", vectorized=False, assumes_independent=True, work=lambda b, m, n: Work(m, "reverse"),
                       description="autograd.grad per output entry, batch summed",
    cost="M backward passes, one per output entry"))
register_method(Method("dual_loop", dual_loop, "forward", vectorized=False, assumes_independent=True, work=lambda b, m, n: Work(n, "jvp"),
                       description="forward_ad dual tensors, one pass per input entry",
    cost="N dual forward passes in Python, one per input entry"))
register_method(Method("double_backward", double_backward, "reverse", vectorized=False, work=lambda b, m, n: Work(n, "reverse"),
                       assumes_independent=True,
                       description="JVP from two reverse passes, one per input entry",
    cost="N double-backward passes, one per input entry (cheap only when N is small)"))
