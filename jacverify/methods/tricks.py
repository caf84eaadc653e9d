"""Copy tricks: the input copied once per output (reverse) or input (forward) entry, one pass."""

from __future__ import annotations

import torch
import torch.autograd.forward_ad as fwAD

from jacverify.case import Flat
from jacverify.methods import Method, register_method


def _copies(flat: Flat, k: int) -> torch.Tensor:
    """The batch copied k times: (k * B, N), copy i first."""
    return flat.x.detach().repeat(k, 1)


def _identity_rows(flat: Flat, k: int) -> torch.Tensor:
    """(k * B, k): row (i, b) is e_i, the identity repeated for every sample."""
    eye = torch.eye(k, dtype=flat.x.dtype, device=flat.x.device)
    return eye.repeat_interleave(flat.batch_size, dim=0)


def repeat_trick(flat: Flat) -> torch.Tensor:
    """Copy i of the batch gets cotangent e_i; one backward gives every row of every sample."""
    b, m, n = flat.batch_size, flat.n_out, flat.n_in
    x = _copies(flat, m).requires_grad_()
    (g,) = torch.autograd.grad(flat.fn(x), x, _identity_rows(flat, m),
                               allow_unused=True, materialize_grads=True)
    return g.reshape(m, b, n).permute(1, 0, 2)


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
    rows = _batched_rows(flat, lambda rows: eye[rows, None, :].expand(-1, b, m), m, chunk_size)
    return rows.permute(1, 0, 2)


def batched_grad_per_sample(flat: Flat, chunk_size: int | None = None) -> torch.Tensor:
    """Cotangent e_(b, m) for each sample b and output m: the rows of the full Jacobian, batched,
    keeping block b of row (b, m). Right when samples interact; B times the work otherwise."""
    b, m, n = flat.batch_size, flat.n_out, flat.n_in
    eye = torch.eye(b * m, dtype=flat.x.dtype, device=flat.x.device)
    rows = _batched_rows(flat, lambda rows: eye[rows].reshape(-1, b, m), b * m, chunk_size)
    return rows.reshape(b, m, b, n).diagonal(dim1=0, dim2=2).permute(2, 0, 1)


def _batched_rows(flat: Flat, cotangents, count: int, chunk_size: int | None) -> torch.Tensor:
    """Gradients (count, B, N) for cotangents(rows) (k, B, M), ``chunk_size`` rows per backward."""
    x = flat.x.detach().requires_grad_()
    y = flat.fn(x)
    step = count if chunk_size is None else max(1, min(count, chunk_size))
    out = x.new_empty(count, *x.shape)
    for start in range(0, count, step):
        rows = torch.arange(start, min(count, start + step), device=x.device)
        (g,) = torch.autograd.grad(y, x, cotangents(rows), is_grads_batched=True,
                                   retain_graph=start + step < count,
                                   allow_unused=True, materialize_grads=True)
        out[start:start + len(rows)] = g
    return out


register_method(Method("repeat_trick", repeat_trick, "reverse", vectorized=False,
                       assumes_independent=True,
                       extra_memory=lambda f: f.n_out * f.batch_size * f.n_in,
                       description="input copied per output entry, one backward",
    cost="forward and backward over M copies of the batch (grows with M)"))
register_method(Method("dual_repeat", dual_repeat, "forward", vectorized=False,
                       assumes_independent=True,
                       extra_memory=lambda f: 2 * f.n_in * f.batch_size * f.n_in,
                       description="input copied per input entry, one dual pass",
    cost="a dual pass over N copies of the batch (grows with N)"))
register_method(Method("batched_grad", batched_grad, "reverse", vectorized=True,
                       assumes_independent=True,
                       description="autograd.grad(is_grads_batched=True), batch summed",
    cost="one backward with M batched cotangents (reverse mode, grows with M)"))
register_method(Method("batched_grad_per_sample", batched_grad_per_sample, "reverse", vectorized=True,
                       assumes_independent=False,
                       extra_memory=lambda f: f.batch_size**2 * f.n_out * f.n_in,
                       description="autograd.grad(is_grads_batched=True), cotangent per sample and output",
                       cost="B*M batched cotangents, the full Jacobian's rows: B times the work"))
