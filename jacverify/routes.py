"""Every AD route a method family relies on, checked by random probes (NOTE [route probes]).

A full-Jacobian method is built from one route -- reverse mode (vjp), forward mode (jvp), vmap of
either, double backward, ``is_grads_batched``, dual tensors -- and is wrong when its route is. Each
route here computes the probes' projections uᵀ J v directly, with a few passes per probe whatever
the input size, and is judged against the same directional finite differences as the projected
methods (NOTE [projection probes]).
"""

from __future__ import annotations

from collections.abc import Callable

import torch

import dataclasses

from jacverify.case import Flat
from jacverify.judge import MethodResult, Status
from jacverify.methods import Method
from jacverify.oracles.projections import Probes

__all__ = ["ROUTE_QUANTITY", "routes", "judge_routes"]

ROUTE_QUANTITY = "route"  # MethodResult.quantity of a route: never "the fastest method"


# NOTE [route probes]
# Probe k's cotangent u_k (B, M) and tangent v_k (B, N) (NOTE [projection probes]) give one number
# per route and sample, p_kb = u_kbᵀ J_b v_kb, computed
#   route:vjp               u_kᵀ J by torch.autograd.grad, one backward per probe, dotted with v_k;
#   route:is_grads_batched  every u_k in one torch.autograd.grad(is_grads_batched=True);
#   route:vmap_vjp          vmap over the u_k of torch.func.vjp's pullback (its batching rules);
#   route:jvp               J v_k by torch.func.jvp, one per probe, dotted with u_k;
#   route:vmap_jvp          vmap over the v_k of torch.func.jvp (the forward batching rules);
#   route:dual              J v_k by forward_ad dual tensors;
#   route:double_backward   J v_k out of two reverse passes (the gradient of u -> Jᵀu along v_k);
#   route:per_sample_vjp    vmap over the samples of vjp of the one-sample function: the forward's
#                           batching rules, as vmap(jacrev) uses them (independent samples only);
#   route:per_sample_jvp    the same with jvp, as vmap(jacfwd) uses them.
# The reference is finite differences along each v_k (6 forward passes per probe), so the whole
# stage costs about 6 K forward passes plus about 4 K + 4 passes of the routes; verification=
# "routes" draws K = 1 by default, as gradcheck's fast mode draws one u and one v, and then costs
# 2.3-2.9x gradcheck(fast_mode=True, check_forward_ad=True, check_batched_grad=True) on the
# README's three realistic models on one machine and 3.0-3.4x on another, slower per op
# (benchmarks/check_cost.py; issue #16 asks for 3x). A
# route wrong by a relative r moves p_k by about r |p_k| (the probes are random: a wrong entry
# cancels with probability 0), so a 1% wrong backward, jvp or batching rule is far over
# sqrt(eps) in either dtype. A route that raises (no forward-mode formula, no batching rule) is
# `unsupported` with why; the full-Jacobian methods built on it then fail the same way. A missing
# forward-mode formula (torch raises NotImplementedError for it) is missing for every forward
# route: the later ones are `unsupported` with the first one's reason without being run (on the
# transformer layer's CPU attention kernel each failed run cost about a forward pass).
def _reverse(flat: Flat, probes: Probes, how: str) -> torch.Tensor:
    x = flat.x.detach().requires_grad_()
    y = flat.fn(x)
    u, v = probes.u.to(y), probes.v.to(x)
    if how == "vjp":
        grads = torch.stack([torch.autograd.grad(y, x, uk, retain_graph=True)[0] for uk in u])
    elif how == "is_grads_batched":
        (grads,) = torch.autograd.grad(y, x, u, is_grads_batched=True)
    else:  # vmap_vjp
        _, pullback = torch.func.vjp(flat.fn, x.detach())
        (grads,) = torch.func.vmap(pullback)(u)
    return (grads.double() * v.double()).sum(2)


def _forward(flat: Flat, probes: Probes, how: str) -> torch.Tensor:
    x = flat.x.detach()
    u, v = probes.u.to(x), probes.v.to(x)
    if how == "jvp":
        jv = torch.stack([torch.func.jvp(flat.fn, (x,), (vk,))[1] for vk in v])
    elif how == "vmap_jvp":
        jv = torch.func.vmap(lambda t: torch.func.jvp(flat.fn, (x,), (t,))[1])(v)
    elif how == "dual":
        import torch.autograd.forward_ad as fwad

        out = []
        for vk in v:
            with fwad.dual_level():
                out.append(fwad.unpack_dual(flat.fn(fwad.make_dual(x, vk))).tangent)
        jv = torch.stack(out)
    else:  # double_backward
        leaf = x.clone().requires_grad_()
        y = flat.fn(leaf)
        w = torch.zeros_like(y, requires_grad=True)
        (g,) = torch.autograd.grad(y, leaf, w, create_graph=True)
        jv = torch.stack([torch.autograd.grad(g, w, vk, retain_graph=True)[0] for vk in v])
    return (jv.double() * u.double()).sum(2)


def _per_sample(flat: Flat, probes: Probes, how: str) -> torch.Tensor:
    x = flat.x.detach()
    u, v = probes.u.to(x), probes.v.to(x)

    def one(xb):
        return flat.fn(xb[None])[0]

    if how == "per_sample_vjp":
        rule = torch.func.vmap(lambda xb, ub: torch.func.vjp(one, xb)[1](ub)[0])
        return torch.stack([(rule(x, uk).double() * vk.double()).sum(1) for uk, vk in zip(u, v)])
    rule = torch.func.vmap(lambda xb, vb: torch.func.jvp(one, (xb,), (vb,))[1])
    return torch.stack([(rule(x, vk).double() * uk.double()).sum(1) for uk, vk in zip(u, v)])


_ROUTES: tuple[tuple[str, str, bool, Callable[[Flat, Probes, str], torch.Tensor]], ...] = (
    ("vjp", "reverse", False, _reverse),
    ("is_grads_batched", "reverse", True, _reverse),
    ("vmap_vjp", "reverse", True, _reverse),
    ("jvp", "forward", False, _forward),
    ("vmap_jvp", "forward", True, _forward),
    ("dual", "forward", False, _forward),
    ("double_backward", "reverse", False, _forward),
    ("per_sample_vjp", "reverse", True, _per_sample),
    ("per_sample_jvp", "forward", True, _per_sample),
)


def routes(probes: Probes) -> tuple[Method, ...]:
    """Every route of NOTE [route probes] as a candidate for the judge: ``compute(flat)`` gives
    the (K, B) projections of ``probes``, named ``route:NAME``, of quantity ``"route"``.

    Args:
        probes: drawn by :func:`jacverify.oracles.projections.draw_probes`.

    Returns:
        The routes, reverse mode first.

    Raises:
        Nothing; a route that cannot run raises when computed, and the judge reports it.

    >>> from jacverify.case import flatten, make_case
    >>> from jacverify.oracles.projections import draw_probes, project
    >>> flat = flatten(make_case(torch.sin, torch.randn(3, 2, dtype=torch.float64)))
    >>> p = draw_probes(flat, 2, seed=0, coupled=False)
    >>> exact = project(torch.diag_embed(torch.cos(flat.x)), p)
    >>> all(torch.allclose(r.compute(flat), exact) for r in routes(p))
    True
    """
    return tuple(
        Method(f"route:{name}", lambda flat, how=name, run=run: run(flat, probes, how), mode,
               vectorized=vectorized, assumes_independent=run is _per_sample,
               quantity=ROUTE_QUANTITY,
               description=f"the {name} route on each probe (NOTE [route probes])")
        for name, mode, vectorized, run in _ROUTES)


def judge_routes(probes: Probes, judge_one: Callable[[Method], MethodResult]) -> list[MethodResult]:
    """Each of :func:`routes` through ``judge_one`` (the check's judge), in order; after a forward
    route finds no forward-mode formula, the other forward routes are ``unsupported`` with its
    reason, not run (NOTE [route probes])."""
    results: list[MethodResult] = []
    missing: MethodResult | None = None
    for route in routes(probes):
        if missing is not None and route.mode == "forward":
            results.append(dataclasses.replace(
                missing, method=route.name, vectorized=route.vectorized,
                reason=f"as {missing.method}: {missing.reason}"))
            continue
        result = judge_one(route)
        if (route.mode == "forward" and result.status == Status.UNSUPPORTED
                and (result.reason or "").startswith("NotImplementedError")):
            missing = result
        results.append(result)
    return results
