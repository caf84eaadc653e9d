"""Per-sample second derivatives: Hessians of each output, (B, M, N, N), and their diagonals
d²y_m/dx_k², (B, M, N), the quantity physics-informed training code computes with loops."""

from __future__ import annotations

import torch
from torch.func import hessian, jacfwd, jacrev, jvp, vjp, vmap

from jacverify.case import Flat
from jacverify.methods import Method, gradient, register_method


def _one(flat: Flat):
    return lambda xi: flat.fn(xi.unsqueeze(0)).squeeze(0)


def vmap_hessian(flat: Flat) -> torch.Tensor:
    return vmap(hessian(_one(flat)))(flat.x)


def vmap_jacfwd_jacrev(flat: Flat) -> torch.Tensor:
    return vmap(jacfwd(jacrev(_one(flat))))(flat.x)


def vmap_jacrev_jacrev(flat: Flat) -> torch.Tensor:
    return vmap(jacrev(jacrev(_one(flat))))(flat.x)


def vmap_jacfwd_jacfwd(flat: Flat) -> torch.Tensor:
    return vmap(jacfwd(jacfwd(_one(flat))))(flat.x)


def sum_trick_twice(flat: Flat) -> torch.Tensor:
    """jacrev of the summed per-sample Jacobian, itself jacrev of f(x).sum(0)."""
    def jac(z: torch.Tensor) -> torch.Tensor:  # (M, B, N)
        return jacrev(lambda w: flat.fn(w).sum(0))(z)

    return jacrev(lambda z: jac(z).sum(1))(flat.x).permute(2, 0, 1, 3)


def functional_hessian(flat: Flat) -> torch.Tensor:
    """autograd.functional.hessian(vectorize=True) of each summed output, then the batch diagonal."""
    blocks = []
    for m in range(flat.n_out):
        full = torch.autograd.functional.hessian(lambda z: flat.fn(z)[:, m].sum(), flat.x,
                                                 vectorize=True)  # (B, N, B, N)
        blocks.append(full.diagonal(dim1=0, dim2=2).permute(2, 0, 1))
    return torch.stack(blocks, dim=1)


def loop(flat: Flat) -> torch.Tensor:
    """The create_graph loop: grad of each summed output column, then grad of each entry of that."""
    x = flat.x.detach().requires_grad_()
    y = flat.fn(x)
    out = x.new_zeros(flat.batch_size, flat.n_out, flat.n_in, flat.n_in)
    for m in range(flat.n_out):
        g = gradient(y[:, m].sum(), x, create_graph=True)
        for j in range(flat.n_in):
            out[:, m, j] = gradient(g[:, j].sum(), x, retain_graph=True)
    return out


def hvp_forward_over_reverse(flat: Flat) -> torch.Tensor:
    """Per sample, jvp of the gradient along each e_j (vmapped): H e_j."""
    jac = jacrev(_one(flat))
    eye = torch.eye(flat.n_in, dtype=flat.x.dtype, device=flat.x.device)
    cols = vmap(lambda xi: vmap(lambda e: jvp(jac, (xi,), (e,))[1])(eye))(flat.x)  # (B, N, M, N)
    return cols.permute(0, 2, 3, 1)


def vhp_reverse_over_reverse(flat: Flat) -> torch.Tensor:
    """Per sample, vjp of the gradient for each (m, n) cotangent (vmapped): eᵀ H."""
    jac = jacrev(_one(flat))
    m, n = flat.n_out, flat.n_in
    basis = torch.eye(m * n, dtype=flat.x.dtype, device=flat.x.device).reshape(m * n, m, n)

    def rows(xi: torch.Tensor) -> torch.Tensor:
        _, pullback = vjp(jac, xi)
        return vmap(lambda e: pullback(e)[0])(basis).reshape(m, n, n)

    return vmap(rows)(flat.x)


# --- the diagonal d²y_m/dx_k², (B, M, N) ---

def diagonal_loop(flat: Flat) -> torch.Tensor:
    """As physics-informed code writes it: grad with grad_outputs=ones and create_graph, per
    output column, then per input entry."""
    x = flat.x.detach().requires_grad_()
    y = flat.fn(x)
    out = x.new_zeros(flat.batch_size, flat.n_out, flat.n_in)
    for m in range(flat.n_out):
        dy = gradient(y[:, m], x, torch.ones_like(y[:, m]), create_graph=True)
        for k in range(flat.n_in):
            d2 = gradient(dy[:, k], x, torch.ones_like(dy[:, k]), retain_graph=True)
            out[:, m, k] = d2[:, k]
    return out


def diagonal_vmap_hessian(flat: Flat) -> torch.Tensor:
    return vmap(hessian(_one(flat)))(flat.x).diagonal(dim1=-2, dim2=-1)


def diagonal_forward_over_reverse(flat: Flat) -> torch.Tensor:
    """The vectorized replacement: N jvps of the gradient per sample, keeping entry k of column k."""
    jac = jacrev(_one(flat))
    eye = torch.eye(flat.n_in, dtype=flat.x.dtype, device=flat.x.device)

    def diag(xi: torch.Tensor) -> torch.Tensor:
        cols = vmap(lambda e: jvp(jac, (xi,), (e,))[1] @ e)(eye)  # (N, M): (H e_k)_k
        return cols.T

    return vmap(diag)(flat.x)


_TABLE = [
    ("hessian", "loop", loop, "reverse", False),
    ("hessian", "vmap_hessian", vmap_hessian, "forward", True),
    ("hessian", "vmap_jacfwd_jacrev", vmap_jacfwd_jacrev, "forward", True),
    ("hessian", "vmap_jacrev_jacrev", vmap_jacrev_jacrev, "reverse", True),
    ("hessian", "vmap_jacfwd_jacfwd", vmap_jacfwd_jacfwd, "forward", True),
    ("hessian", "sum_trick_twice", sum_trick_twice, "reverse", True),
    ("hessian", "functional_hessian", functional_hessian, "reverse", True),
    ("hessian", "hvp_forward_over_reverse", hvp_forward_over_reverse, "forward", True),
    ("hessian", "vhp_reverse_over_reverse", vhp_reverse_over_reverse, "reverse", True),
    ("hessian_diagonal", "loop", diagonal_loop, "reverse", False),
    ("hessian_diagonal", "vmap_hessian", diagonal_vmap_hessian, "forward", True),
    ("hessian_diagonal", "forward_over_reverse", diagonal_forward_over_reverse, "forward", True),
]
# Every one of these sums over the batch or vmaps over samples: all assume independent samples.
# "forward" marks a forward-mode outer derivative (over a reverse inner one, except jacfwd twice).

for _quantity, _name, _compute, _mode, _vectorized in _TABLE:
    register_method(Method(_name, _compute, _mode, vectorized=_vectorized,
                           assumes_independent=True, quantity=_quantity,
                           description=(_compute.__doc__ or _name).strip().split("\n")[0]))
