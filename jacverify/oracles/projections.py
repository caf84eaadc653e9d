"""Cheap verification: uᵀ J v for a few random u, v against directional finite differences.

Its cost is a few forward passes per probe, whatever the input size, where the full
finite-difference Jacobian costs 6 N of them.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from jacverify.case import Flat
from jacverify.compare import Reference
from jacverify.oracles.finite_differences import directional_differences

__all__ = ["Probes", "draw_probes", "projection_reference", "project"]

DEFAULT_PROBES = 4


@dataclass(frozen=True)
class Probes:
    """K random probes: cotangents ``u`` (K, B, M) and tangents ``v`` (K, B, N)."""

    u: torch.Tensor
    v: torch.Tensor


# NOTE [projection probes]
# Probe k draws standard normal u_k (B, M) and v_k (B, N) from the check's seed. For independent
# samples every sample gets its own u, v, and the directional difference of f along v_k gives
# every J_b v_kb at once (6 evaluations); the probe's value per sample is p_kb = u_kbᵀ J_b v_kb,
# so a candidate is compared on K x B numbers and a sample that is wrong alone is not diluted by
# the others. When samples interact, probe k keeps one sample s_k (drawn) and zeroes u, v
# elsewhere, so the cross-sample terms the per-sample Jacobian leaves out never enter: f moves only
# along sample s_k's input, only sample s_k's outputs are read, and the other samples' values are
# exactly 0. A wrong entry J_b[m, n] = c is seen with probability 1 over the draws (the projection
# is a non-zero polynomial in u, v); a random probe sees an error of relative size r at about r of
# the projection's size, so one probe flags any O(1) error -- a wrong formula, another sample's
# value -- and a 1% wrong backward or jvp (tests/test_routes.py), while a rounding-sized one passes.
# Tolerance: the FD error bound (sum |u| x the directional error) doubled, plus sqrt(eps) x
# (|p_kb| + ||u_kb|| ||J_b v_kb||): the last term (`Reference.magnitude`) bounds the products summed,
# by Cauchy-Schwarz, so a projection that cancels to ~0 is held to the rounding of what it was
# summed from. None of it is multiplied by the number of entries.
# Resolution: an error of relative size r confined to k of the N input columns (or M outputs)
# moves a projection by about r sqrt(k / N) of that magnitude, so below sqrt(eps) of the methods'
# dtype it is indistinguishable from rounding: 3.5e-4 in float32, 1.5e-8 in float64. A backward 1%
# wrong in one input column of 784 (a new user's twin: r sqrt(1/784) = 3.6e-4) passes a float32
# projection and fails in float64 and under verification="full", which judges entry by entry.
def draw_probes(flat: Flat, probes: int, seed: int, coupled: bool) -> Probes:
    """Per NOTE [projection probes]; drawn on the CPU from ``seed``, moved to ``flat.x``."""
    gen = torch.Generator().manual_seed(seed)
    b, m, n = flat.batch_size, flat.n_out, flat.n_in
    u = torch.randn(probes, b, m, generator=gen, dtype=torch.float64)
    v = torch.randn(probes, b, n, generator=gen, dtype=torch.float64)
    if coupled:
        keep = torch.zeros(probes, b, 1, dtype=torch.float64)
        keep[torch.arange(probes), torch.randint(b, (probes,), generator=gen)] = 1
        u, v = u * keep, v * keep
    return Probes(u.to(flat.x.device), v.to(flat.x.device))


def projection_reference(ref_flat: Flat, probes: Probes) -> tuple[Reference, float]:
    """Directional FD of each probe, reduced by its u per sample: the reference (K, B) with its
    error bound and its magnitude ||u_kb|| ||J_b v_kb|| (NOTE [projection probes]), and the
    derivative scale (0: the magnitude holds it)."""
    values, errors, sizes = [], [], []
    for u, v in zip(probes.u, probes.v):
        d = directional_differences(ref_flat, v, per_sample=True, independent=True)
        u = u.to(d.value)
        values.append((u * d.value).sum(1))
        errors.append((u.abs() * d.error).sum(1))
        sizes.append(u.norm(dim=1) * d.value.norm(dim=1))
    return Reference("projection_fd", torch.stack(values), torch.stack(errors),
                     magnitude=torch.stack(sizes)), 0.0


def project(jacobian: torch.Tensor, probes: Probes) -> torch.Tensor:
    """u_kbᵀ J_b v_kb for each probe and sample: (B, M, N) -> (K, B), in float64.

    >>> j = torch.eye(2).expand(3, 2, 2)
    >>> p = Probes(torch.ones(1, 3, 2, dtype=torch.float64), torch.ones(1, 3, 2, dtype=torch.float64))
    >>> project(j, p).tolist()
    [[2.0, 2.0, 2.0]]
    """
    j = jacobian.detach().to(device=probes.u.device, dtype=torch.float64)
    return torch.einsum("kbm,bmn,kbn->kb", probes.u, j, probes.v)
