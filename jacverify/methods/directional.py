"""Ways to compute J v and vᵀ J: sets of vectors at one point, and one vector per sample.

For ``jvp_set`` and ``vjp_set`` the canonical case has one sample (the point) and
``flat.vectors`` holds K tangents (K, N) or cotangents (K, M); for ``per_sample_jvp`` it holds one
tangent per sample (B, N).
"""

from __future__ import annotations

import torch
import torch.autograd.forward_ad as fwAD
from torch.func import jacrev, jvp, vjp, vmap

from jacverify.case import Flat
from jacverify.errors import NotApplicable
from jacverify.methods import Method, gradient, register_method


def _point(flat: Flat):
    """The function of the single point (N,) -> (M,), and the point."""
    return (lambda xi: flat.fn(xi.unsqueeze(0)).squeeze(0)), flat.x[0]


def _tangent(out) -> torch.Tensor:
    t = fwAD.unpack_dual(out)
    return torch.zeros_like(t.primal) if t.tangent is None else t.tangent


# --- J v_i at one point: (K, M) ---

def jvp_vmap(flat: Flat) -> torch.Tensor:
    f, x = _point(flat)
    return vmap(lambda v: jvp(f, (x,), (v,))[1])(flat.vectors)


def jvp_loop(flat: Flat) -> torch.Tensor:
    f, x = _point(flat)
    return torch.stack([jvp(f, (x,), (v,))[1] for v in flat.vectors])


def jvp_functional(flat: Flat) -> torch.Tensor:
    f, x = _point(flat)
    return torch.stack([torch.autograd.functional.jvp(f, x, v)[1] for v in flat.vectors])


def jvp_dual_copies(flat: Flat) -> torch.Tensor:
    """The point copied once per vector as a batch, the vectors as one batch of tangents.

    Only for a function that treats a leading batch of copies as independent points: checked on
    the primal values first, else not applicable.
    """
    k = flat.vectors.shape[0]
    copies = flat.x.repeat(k, 1)
    with fwAD.dual_level():
        out = fwAD.unpack_dual(flat.fn(fwAD.make_dual(copies, flat.vectors)))
    with torch.no_grad():
        single = flat.fn(flat.x)
    eps = 64 * torch.finfo(single.dtype).eps * float(single.abs().max().clamp(min=1))  # rounding
    if out.primal.shape != (k, single.shape[1]) or \
            float((out.primal - single).abs().max()) > eps:
        raise NotApplicable("the function does not map a batch of copies of the point to copies "
                            "of its output (it is not batched along a new leading axis)")
    return torch.zeros_like(out.primal) if out.tangent is None else out.tangent


def jvp_double_backward(flat: Flat) -> torch.Tensor:
    f, x = _point(flat)
    x = x.detach().requires_grad_()
    y = f(x)
    u = torch.zeros_like(y, requires_grad=True)
    pulled = gradient(y, x, u, create_graph=True)
    return torch.stack([gradient(pulled, u, v, retain_graph=True) for v in flat.vectors])


def jvp_full_jacobian(flat: Flat) -> torch.Tensor:
    f, x = _point(flat)
    return flat.vectors @ jacrev(f)(x).T


# --- vᵀ_i J at one point: (K, N) ---

def vjp_vmap(flat: Flat) -> torch.Tensor:
    f, x = _point(flat)
    _, pullback = vjp(f, x)
    return vmap(lambda u: pullback(u)[0])(flat.vectors)


def vjp_batched_grad(flat: Flat) -> torch.Tensor:
    f, x = _point(flat)
    x = x.detach().requires_grad_()
    return gradient(f(x), x, flat.vectors, is_grads_batched=True)


def vjp_loop(flat: Flat) -> torch.Tensor:
    f, x = _point(flat)
    x = x.detach().requires_grad_()
    y = f(x)
    return torch.stack([gradient(y, x, u, retain_graph=True) for u in flat.vectors])


def vjp_functional(flat: Flat) -> torch.Tensor:
    f, x = _point(flat)
    return torch.stack([torch.autograd.functional.vjp(f, x, u)[1] for u in flat.vectors])


def vjp_full_jacobian(flat: Flat) -> torch.Tensor:
    f, x = _point(flat)
    return flat.vectors @ jacrev(f)(x)


# --- per-sample J_b v_b: (B, M) ---

def per_sample_forward(flat: Flat) -> torch.Tensor:
    """One dual pass with the batch of tangents: J_b v_b only when samples do not interact."""
    with fwAD.dual_level():
        return _tangent(flat.fn(fwAD.make_dual(flat.x, flat.vectors)))


def per_sample_vmap_jvp(flat: Flat) -> torch.Tensor:
    one = lambda xi: flat.fn(xi.unsqueeze(0)).squeeze(0)  # noqa: E731
    return vmap(lambda xi, vi: jvp(one, (xi,), (vi,))[1])(flat.x, flat.vectors)


def per_sample_loop(flat: Flat) -> torch.Tensor:
    """Per sample b, a dual pass through the whole batch with the tangent on sample b alone."""
    rows = []
    with fwAD.dual_level():
        for b in range(flat.batch_size):
            tangent = torch.zeros_like(flat.x)
            tangent[b] = flat.vectors[b]
            rows.append(_tangent(flat.fn(fwAD.make_dual(flat.x, tangent)))[b])
    return torch.stack(rows)


def per_sample_double_backward(flat: Flat) -> torch.Tensor:
    x = flat.x.detach().requires_grad_()
    y = flat.fn(x)
    u = torch.zeros_like(y, requires_grad=True)
    return gradient(gradient(y, x, u, create_graph=True), u, flat.vectors)


_TABLE = [
    ("jvp_set", "vmap_jvp", jvp_vmap, "forward", True, False),
    ("jvp_set", "jvp_loop", jvp_loop, "forward", False, False),
    ("jvp_set", "functional_jvp", jvp_functional, "reverse", False, False),
    ("jvp_set", "dual_copies", jvp_dual_copies, "forward", False, True),
    ("jvp_set", "double_backward", jvp_double_backward, "reverse", False, False),
    ("jvp_set", "full_jacobian", jvp_full_jacobian, "reverse", True, False),
    ("vjp_set", "vmap_vjp", vjp_vmap, "reverse", True, False),
    ("vjp_set", "batched_grad", vjp_batched_grad, "reverse", True, False),
    ("vjp_set", "vjp_loop", vjp_loop, "reverse", False, False),
    ("vjp_set", "functional_vjp", vjp_functional, "reverse", False, False),
    ("vjp_set", "full_jacobian", vjp_full_jacobian, "reverse", True, False),
    ("per_sample_jvp", "forward_batched", per_sample_forward, "forward", False, True),
    ("per_sample_jvp", "vmap_jvp", per_sample_vmap_jvp, "forward", True, True),
    ("per_sample_jvp", "jvp_loop", per_sample_loop, "forward", False, False),
    ("per_sample_jvp", "double_backward", per_sample_double_backward, "reverse", False, True),
]
# (torch.autograd.functional.jvp is itself the double-backward trick: reverse formulas.)

for _quantity, _name, _compute, _mode, _vectorized, _independent in _TABLE:
    register_method(Method(_name, _compute, _mode, vectorized=_vectorized,
                           assumes_independent=_independent, quantity=_quantity,
                           description=(_compute.__doc__ or "").strip().split("\n")[0]))
