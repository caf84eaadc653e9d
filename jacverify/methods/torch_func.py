"""``torch.func`` transforms: vmap over per-sample jacrev/jacfwd, and the vmapped sum tricks."""

from __future__ import annotations

import torch
from torch.func import jacfwd, jacrev, jvp, vjp, vmap

from jacverify.costs import Work
from jacverify.case import Flat
from jacverify.methods import Method, register_method


def _one_sample(flat: Flat):
    """The function of one sample (N,) -> (M,), run as a batch of one."""
    return lambda xi: flat.fn(xi.unsqueeze(0)).squeeze(0)


def vmap_jacrev(flat: Flat) -> torch.Tensor:
    return vmap(jacrev(_one_sample(flat)))(flat.x)


def vmap_jacfwd(flat: Flat) -> torch.Tensor:
    return vmap(jacfwd(_one_sample(flat)))(flat.x)


def sum_trick(flat: Flat) -> torch.Tensor:
    """``jacrev`` of f(x).sum(0): (M, B, N), valid only when samples do not interact."""
    return jacrev(lambda x: flat.fn(x).sum(0))(flat.x).permute(1, 0, 2)


def forward_broadcast(flat: Flat, chunk_size: int | None = None) -> torch.Tensor:
    """vmap over ``jvp`` with tangent e_j on every sample: the forward twin of the sum trick;
    ``chunk_size`` tangents per pass (all N by default)."""
    b = flat.batch_size

    def column(e: torch.Tensor) -> torch.Tensor:
        return jvp(flat.fn, (flat.x,), (e.expand(b, -1),))[1]

    eye = torch.eye(flat.n_in, dtype=flat.x.dtype, device=flat.x.device)
    return vmap(column, chunk_size=chunk_size)(eye).permute(1, 2, 0)


def vmap_vjp(flat: Flat, chunk_size: int | None = None) -> torch.Tensor:
    """vmap over ``vjp`` with cotangent e_m on every sample: the sum trick in torch.func;
    ``chunk_size`` cotangents per pass (all M by default)."""
    _, pullback = vjp(flat.fn, flat.x)
    b = flat.batch_size
    eye = torch.eye(flat.n_out, dtype=flat.x.dtype, device=flat.x.device)
    rows = vmap(lambda e: pullback(e.expand(b, -1))[0], chunk_size=chunk_size)(eye)
    return rows.permute(1, 0, 2)


register_method(Method("vmap_jacrev", vmap_jacrev, "reverse", vectorized=True, work=lambda b, m, n: Work(m, "reverse", held=m),
                       assumes_independent=True, description="vmap(jacrev(f_one_sample))",
    cost="vmap over B per-sample jacrev calls: M cotangents per sample"))
register_method(Method("vmap_jacfwd", vmap_jacfwd, "forward", vectorized=True, work=lambda b, m, n: Work(n, "jvp", held=n),
                       assumes_independent=True, description="vmap(jacfwd(f_one_sample))",
    cost="vmap over B per-sample jacfwd calls: N tangents per sample"))
register_method(Method("sum_trick", sum_trick, "reverse", vectorized=True, work=lambda b, m, n: Work(m, "reverse", held=m),
                       assumes_independent=True, description="jacrev of f(x).sum(0)",
    cost="jacrev of f(x).sum(0): M vmapped cotangents (reverse mode, grows with M)"))
register_method(Method("forward_broadcast", forward_broadcast, "forward", vectorized=True, work=lambda b, m, n: Work(n, "jvp", held=n),
                       assumes_independent=True,
                       description="vmap over jvp, tangent e_j on every sample",
    cost="vmap over N tangents through the batch (forward mode, grows with N)", chunked=True))
register_method(Method("vmap_vjp", vmap_vjp, "reverse", vectorized=True, work=lambda b, m, n: Work(m, "reverse", held=m),
                       assumes_independent=True,
                       description="vmap over vjp, cotangent e_m on every sample",
    cost="vmap over M cotangents through the batch (reverse mode, grows with M)", chunked=True))
