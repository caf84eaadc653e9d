"""``torch.autograd.functional.jacobian`` in its variants: full Jacobian, and of the summed output."""

from __future__ import annotations

from functools import partial

import torch
from torch.autograd.functional import jacobian

from jacverify.costs import Work
from jacverify.case import Flat
from jacverify.methods import Method, register_method


def full_diagonal(flat: Flat) -> torch.Tensor:
    """The (B, M, B, N) Jacobian of the whole batch, then its batch diagonal.

    Quadratic in the batch, but right when samples interact.
    """
    full = jacobian(flat.fn, flat.x, vectorize=True)
    return full.diagonal(dim1=0, dim2=2).permute(2, 0, 1)


def summed(flat: Flat, vectorize: bool, strategy: str = "reverse-mode") -> torch.Tensor:
    """Jacobian of f(x).sum(0), shape (M, B, N): the sum trick through the functional API."""
    jac = jacobian(lambda x: flat.fn(x).sum(0), flat.x, vectorize=vectorize, strategy=strategy)
    return jac.permute(1, 0, 2)


register_method(Method(
    "full_diagonal", full_diagonal, "reverse", vectorized=True, assumes_independent=False, work=lambda b, m, n: Work(b * m, "reverse", held=b * m),
    extra_memory=lambda f: f.batch_size**2 * f.n_out * f.n_in,
    description="autograd.functional.jacobian of the batch, then the diagonal",
    cost="the full (B*M, B*N) Jacobian then its diagonal: quadratic in the batch"))
register_method(Method(
    "sum_trick_unvectorized", partial(summed, vectorize=False), "reverse", vectorized=False, work=lambda b, m, n: Work(m, "reverse"),
    assumes_independent=True, description="autograd.functional.jacobian of f(x).sum(0)",
    cost="M backward passes of f(x).sum(0), one per output entry"))
register_method(Method(
    "functional_vectorized", partial(summed, vectorize=True), "reverse", vectorized=True, work=lambda b, m, n: Work(m, "reverse", held=m),
    assumes_independent=True,
    description="autograd.functional.jacobian(vectorize=True) of f(x).sum(0)",
    cost="vmap over M cotangents of f(x).sum(0)"))
register_method(Method(
    "functional_vectorized_forward",
    partial(summed, vectorize=True, strategy="forward-mode"), "forward", vectorized=True, work=lambda b, m, n: Work(b * n, "jvp", held=b * n),
    assumes_independent=True,
    description="autograd.functional.jacobian(vectorize=True, strategy='forward-mode') of f(x).sum(0)",
    cost="forward-mode strategy over the whole batch: B*N tangents through f(x).sum(0), B times the work"))
