"""Many rows in one pass: the input copied once per output (reverse) or input (forward) entry,
and `autograd.grad(..., is_grads_batched=True)` with its per-sample and double-backward variants."""

from __future__ import annotations

import torch
import torch.autograd.forward_ad as fwAD

from jacverify.costs import Work
from jacverify.case import Flat
from jacverify.methods import Method, gradient, register_method


def _copies(flat: Flat, k: int) -> torch.Tensor:
    """The batch copied k times: (k * B, N), copy i first."""
    return flat.x.detach().repeat(k, 1)


def _identity_rows(flat: Flat, k: int) -> torch.Tensor:
    """(k * B, k): row (i, b) is e_i, the identity repeated for every sample (NOTE [few ops]).

    >>> from jacverify.case import flatten, make_case
    >>> rows = _identity_rows(flatten(make_case(torch.sin, torch.zeros(2, 3))), 3)
    >>> rows.shape, torch.equal(rows[1::2], torch.eye(3)), torch.equal(rows, rows.contiguous())
    (torch.Size([6, 3]), True, True)
    """
    eye = torch.eye(k, dtype=flat.x.dtype, device=flat.x.device)
    b = flat.batch_size
    return eye if b == 1 else eye.unsqueeze(1).expand(k, b, k).reshape(k * b, k)


# NOTE [few ops]
# At a small size a method's time is mostly torch's cost per op and Python's per step, several
# times what either costs in a loop of itself when the call follows another method's call (its
# code and objects out of the CPU's caches), as a training loop and NOTE [race] call them. So
# each method's fixed steps are as few as the shape allows: repeat_trick built its cotangents in
# five ops (eye, repeat_interleave, reshape, a slice, a reshape) where one serves at batch 1
# (the eye) and three at any batch (eye, unsqueeze, an expand copied by reshape), and slices a
# chunk only when there are several; the batched methods index their eye per chunk only when
# chunked; and every method's gradient comes from :func:`jacverify.methods.gradient`, which
# leaves out ``materialize_grads=True``'s two generator expressions in torch's Python. Measured
# against the methods before (commit 7a17b3b), side by side in one process,
#   OMP_NUM_THREADS=1 python benchmarks/methods_ab.py --against 7a17b3b --only B1/ \
#       --methods repeat_trick,batched_grad,batched_double_backward,vmap_vjp,loop_rows,double_backward
# repeat_trick on mlp 8-64-8 at batch 1 took 0.87x its time before in both dtypes (0.708 ->
# 0.613 ms in float64, through the canonical form's wrapper), double_backward 0.95-0.96x, the
# others 0.96-1.02x; at batch 64 and on the realistic models the changes are within the noise
# (0.94-1.02x on every MLP case for repeat_trick and batched_grad).
def repeat_trick(flat: Flat, chunk_size: int | None = None) -> torch.Tensor:
    """Copy i of the batch gets cotangent e_i; one backward gives every row of every sample
    (``chunk_size`` copies per pass; all M by default)."""
    b, m, n = flat.batch_size, flat.n_out, flat.n_in
    step = m if chunk_size is None else max(1, min(m, chunk_size))
    cotangents = _identity_rows(flat, m)  # row (i, b): copy i of sample b gets e_i
    if step == m:  # one pass (NOTE [few ops])
        x = _copies(flat, m).requires_grad_()
        return gradient(flat.fn(x), x, cotangents).reshape(m, b, n).transpose(0, 1)
    parts = []
    for start in range(0, m, step):
        k = min(step, m - start)
        x = _copies(flat, k).requires_grad_()
        g = gradient(flat.fn(x), x, cotangents[start * b:(start + k) * b])
        parts.append(g.reshape(k, b, n))
    return torch.cat(parts).permute(1, 0, 2)


def dual_repeat(flat: Flat) -> torch.Tensor:
    """Copy j of the batch gets tangent e_j; one dual forward pass gives every column."""
    b, n = flat.batch_size, flat.n_in
    with fwAD.dual_level():
        out = fwAD.unpack_dual(flat.fn(fwAD.make_dual(_copies(flat, n), _identity_rows(flat, n))))
        t = torch.zeros_like(out.primal) if out.tangent is None else out.tangent
    return t.reshape(n, b, flat.n_out).permute(1, 2, 0)


def batched_grad(flat: Flat, chunk_size: int | None = None) -> torch.Tensor:
    """``autograd.grad(is_grads_batched=True)`` with cotangents e_m on every sample, ``chunk_size``
    of them per backward (all M by default)."""
    b, m = flat.batch_size, flat.n_out
    eye = torch.eye(m, dtype=flat.x.dtype, device=flat.x.device)
    return _batched_rows(flat, eye.unsqueeze(1).expand(m, b, m), chunk_size).permute(1, 0, 2)


def batched_grad_per_sample(flat: Flat, chunk_size: int | None = None) -> torch.Tensor:
    """Cotangent e_(b, m) for each sample b and output m: the rows of the full Jacobian, batched,
    keeping block b of row (b, m). Right when samples interact; B times the work otherwise."""
    b, m, n = flat.batch_size, flat.n_out, flat.n_in
    eye = torch.eye(b * m, dtype=flat.x.dtype, device=flat.x.device)
    rows = _batched_rows(flat, eye.view(b * m, b, m), chunk_size)
    return rows.reshape(b, m, b, n).diagonal(dim1=0, dim2=2).permute(2, 0, 1)


def batched_double_backward(flat: Flat, chunk_size: int | None = None) -> torch.Tensor:
    """Forward mode out of two reverse passes, batched: g(u) = Jᵀu with create_graph, then
    J e_j = d(g · e_j)/du for every j in one ``is_grads_batched`` backward (``chunk_size`` per pass)."""
    x = flat.x.detach().requires_grad_()
    y = flat.fn(x)
    u = torch.zeros_like(y, requires_grad=True)
    g = gradient(y, x, u, create_graph=True)
    b, n = flat.batch_size, flat.n_in
    eye = torch.eye(n, dtype=x.dtype, device=x.device)
    rows = _batched_rows(flat, eye.unsqueeze(1).expand(n, b, n), chunk_size, output=g, wrt=u)
    return rows.permute(1, 2, 0)


def _batched_rows(flat: Flat, cotangents: torch.Tensor, chunk_size: int | None,
                  output: torch.Tensor | None = None, wrt: torch.Tensor | None = None) -> torch.Tensor:
    """Gradients of ``output`` (default f(x)) with respect to ``wrt`` (default x), (count, *wrt),
    for the ``cotangents`` (count, *output), ``chunk_size`` rows per batched backward (sliced
    only when there are several passes: NOTE [few ops])."""
    if output is None:
        x = flat.x.detach().requires_grad_()
        y = flat.fn(x)
    else:
        x, y = wrt, output
    count = cotangents.shape[0]
    if chunk_size is None or chunk_size >= count:
        return gradient(y, x, cotangents, is_grads_batched=True)
    step = max(1, chunk_size)
    parts = [gradient(y, x, cotangents[start:start + step], is_grads_batched=True,
                      retain_graph=start + step < count) for start in range(0, count, step)]
    return torch.cat(parts)


register_method(Method("repeat_trick", repeat_trick, "reverse", vectorized=False, work=lambda b, m, n: Work(m, "reverse", held=m),
                       assumes_independent=True,
                       extra_memory=lambda f: f.n_out * f.batch_size * f.n_in,
                       description="input copied per output entry, one backward",
    cost="forward and backward over M copies of the batch (grows with M)", chunked=True))
register_method(Method("dual_repeat", dual_repeat, "forward", vectorized=False, work=lambda b, m, n: Work(n, "jvp", held=n),
                       assumes_independent=True,
                       extra_memory=lambda f: 2 * f.n_in * f.batch_size * f.n_in,
                       description="input copied per input entry, one dual pass",
    cost="a dual pass over N copies of the batch (grows with N)"))
register_method(Method("batched_grad", batched_grad, "reverse", vectorized=True, work=lambda b, m, n: Work(m, "reverse", held=m),
                       assumes_independent=True,
                       description="autograd.grad(is_grads_batched=True), batch summed",
    cost="one backward with M batched cotangents (reverse mode, grows with M)", chunked=True))
register_method(Method("batched_grad_per_sample", batched_grad_per_sample, "reverse", vectorized=True, work=lambda b, m, n: Work(b * m, "reverse", held=b * m),
                       assumes_independent=False,
                       extra_memory=lambda f: f.batch_size**2 * f.n_out * f.n_in,
                       description="autograd.grad(is_grads_batched=True), cotangent per sample and output",
                       cost="B*M batched cotangents, the full Jacobian's rows: B times the work", chunked=True))
register_method(Method("batched_double_backward", batched_double_backward, "reverse", vectorized=True, work=lambda b, m, n: Work(2 * n, "reverse", held=n),
                       assumes_independent=True,
                       description="JVPs from two reverse passes, tangents batched (is_grads_batched)",
                       cost="two backward passes with N batched tangents (grows with N)", chunked=True))
