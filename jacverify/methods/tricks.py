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


def batched_grad(flat: Flat) -> torch.Tensor:
    """``autograd.grad(is_grads_batched=True)`` with cotangents e_m on every sample."""
    x = flat.x.detach().requires_grad_()
    y = flat.fn(x)
    eye = torch.eye(flat.n_out, dtype=y.dtype, device=y.device)
    cot = eye[:, None, :].expand(flat.n_out, flat.batch_size, flat.n_out)
    (g,) = torch.autograd.grad(y, x, cot, is_grads_batched=True,
                               allow_unused=True, materialize_grads=True)
    return g.permute(1, 0, 2)


register_method(Method("repeat_trick", repeat_trick, "reverse", vectorized=False,
                       assumes_independent=True,
                       extra_memory=lambda f: f.n_out * f.batch_size * f.n_in,
                       description="input copied per output entry, one backward"))
register_method(Method("dual_repeat", dual_repeat, "forward", vectorized=False,
                       assumes_independent=True,
                       extra_memory=lambda f: 2 * f.n_in * f.batch_size * f.n_in,
                       description="input copied per input entry, one dual pass"))
register_method(Method("batched_grad", batched_grad, "reverse", vectorized=True,
                       assumes_independent=True,
                       description="autograd.grad(is_grads_batched=True), batch summed"))
