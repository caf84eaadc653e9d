"""Checks before blaming a method: is the function deterministic, and do its samples interact?"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from jacverify.case import Flat
from jacverify.errors import InvalidArgument, NondeterministicFunction, NonFiniteOutput

__all__ = ["Coupling", "check_determinism", "check_coupling", "MAX_COUPLING_PROBES"]

# NOTE [coupling threshold]
# Independent samples give bitwise-equal outputs for the untouched samples on deterministic
# kernels; we still allow COUPLING_ROUNDING * eps * scale (and 4x any run-to-run noise measured
# by the determinism check) so a kernel that reorders a sum does not count as coupling. Batch
# statistics move the other samples by O(perturbation), many orders above that.
# A noise floor from what the check can resolve: a method that assumes independence errs by the
# cross-sample terms, summed over the B - 1 other samples; the judge allows rtol (sqrt(eps) of the
# methods' dtype) relative to the entry's row (NOTE [tolerances]). So other samples that move by
# less than rtol / (B - 1) of what the probed sample itself moved cannot change any verdict: a
# batched ODE solver whose shared adaptive step moves other samples by its own tolerance (2.8e-9)
# is treated as independent, and the report says what moved and why that is below resolution.
COUPLING_ROUNDING = 64
MAX_COUPLING_PROBES = 16


@dataclass(frozen=True)
class Coupling:
    """What the batch-coupling check found; ``reason`` is None for independent samples."""

    reason: str | None
    probes: int
    below_resolution: str | None = None  # samples moved each other, but below what is resolved

    @property
    def coupled(self) -> bool:
        return self.reason is not None


def check_determinism(flat: Flat, what: str = "the function") -> float:
    """Call twice on the same input; return the run-to-run noise (0.0 when bitwise equal).

    Raises:
        NonFiniteOutput: an output is NaN or Inf.
        NondeterministicFunction: the outputs differ by more than rounding.
        InvalidArgument: the function modifies its input in place.
    """
    before = flat.x.clone()
    y1 = flat.values(flat.x)
    if not torch.equal(flat.x, before):
        changed = int((flat.x != before).sum())
        flat.x.copy_(before)
        raise InvalidArgument(
            f"{what} modified its input in place ({changed} entr{'y' if changed == 1 else 'ies'} "
            "changed by one call): jacverify calls it many times on the same input, so no "
            "derivative can be checked; make the function work on a copy (x = x.clone()) or use "
            "the out-of-place op (x.add(1) rather than x.add_(1))")
    y2 = flat.values(flat.x)
    bad = ~torch.isfinite(y1)
    if bad.any():
        b, m = (int(i) for i in bad.nonzero()[0])
        raise NonFiniteOutput(
            f"{what} returned {y1[b, m].item()} at sample {b}, {flat.describe_output(m)} "
            f"({int(bad.sum())} non-finite entries in all); jacverify checks derivatives at points "
            "where f is finite: move the inputs, or fix the overflow / log(0) / 0/0 in f"
        )
    diff = (y1 - y2).abs()
    noise = float(diff.max())
    eps = torch.finfo(y1.dtype).eps
    if noise > COUPLING_ROUNDING * eps * float(y1.abs().max().clamp(min=1)):
        b, m = (int(i) for i in (diff == diff.max()).nonzero()[0])
        raise NondeterministicFunction(
            f"{what} returned different outputs for the same input (max difference {noise:.3g} "
            f"at sample {b}, {flat.describe_output(m)}): it has randomness or hidden state, so no derivative is "
            "well defined. Call model.eval() (dropout and friends), seed the RNG inside f, or "
            "remove the state it updates between calls"
        )
    return noise


def check_coupling(flat: Flat, seed: int, noise: float = 0.0, rtol: float = 0.0) -> Coupling:
    """Change one sample at a time and see whether any other sample's output moves.

    Probes up to MAX_COUPLING_PROBES samples: the first, the last, and others drawn from ``seed``.
    ``rtol`` is the methods' relative tolerance: moves below rtol / (B - 1) of the probed sample's
    own move are below resolution (NOTE [coupling threshold]).
    """
    x = flat.x.detach()
    b = flat.batch_size
    if b == 1:
        return Coupling(None, 0)
    gen = torch.Generator().manual_seed(seed)
    order = [0, b - 1] + [int(i) for i in torch.randperm(b, generator=gen) if 0 < i < b - 1]
    probes = order[:MAX_COUPLING_PROBES]
    with torch.no_grad():
        y = flat.values(x)
        eps = torch.finfo(y.dtype).eps
        threshold = max(COUPLING_ROUNDING * eps * float(y.abs().max().clamp(min=1)), 4 * noise)
        if _grouped_probes_unmoved(flat, y, probes, seed, threshold):
            return Coupling(None, len(probes))
        faint = None
        for s in probes:
            x2 = x.clone()
            delta = torch.randn(x.shape[1], generator=gen, dtype=torch.float64).to(x)
            x2[s] += 0.1 * delta * x[s].abs().clamp(min=1)
            moved = (flat.values(x2) - y).abs()
            own = float(moved[s].max())
            moved[s] = 0
            floor = max(threshold, rtol * own / (b - 1))
            if threshold < float(moved.max()) <= floor and faint is None:
                faint = (f"changing sample {s} moved other samples' outputs by up to "
                         f"{float(moved.max()):.3g}, under {floor:.3g} = rtol {rtol:.2g} x its own "
                         f"move {own:.3g} / (B - 1): below what the check resolves, so samples are "
                         "treated as independent (NOTE [coupling threshold])")
            if float(moved.max()) > floor:
                others = sorted({int(i) for i in (moved > threshold).any(1).nonzero().flatten()})
                listed = ", ".join(map(str, others[:5])) + (", ..." if len(others) > 5 else "")
                return Coupling(
                    f"changing sample {s} changed the outputs of sample(s) {listed} (max change "
                    f"{float(moved.max()):.3g}): samples interact (BatchNorm in training mode or "
                    "another batch statistic?)",
                    len(probes),
                )
    return Coupling(None, len(probes), faint)



# NOTE [grouped coupling probes]
# The probes above cost one forward each: 17 forwards of 0.08 ms on a tanh MLP 8-64-8 at B=64, 4-5x
# the Jacobian itself, which batch_jacobian's plan pays. (Stacking the perturbed copies into one
# batch of 16 B rows saved nothing: the forward's cost is its arithmetic, linear in the rows.) So
# first the probes in groups, 2 log2(P) forwards for P probes: for each bit of a probe's position
# in the list, perturb the probes whose bit is 0, then those whose bit is 1, and look at every
# unperturbed row. Any two probes differ in some bit, so coupling from a probe to any other sample
# moves an unperturbed row in one of them, as the one-at-a-time probe of that sample would (the
# perturbations' effects cancelling is a coincidence of measure zero). Only when no unperturbed
# row moved past the threshold are the samples independent; anything else runs the one-at-a-time
# probes, so a coupled or faintly coupled function is reported exactly as before. 8 forwards
# instead of 16 for 16 probes; fewer than 8 probes are probed one at a time.
def _grouped_probes_unmoved(flat: Flat, y: torch.Tensor, probes: list[int], seed: int,
                            threshold: float) -> bool:
    if len(probes) < 8:
        return False
    x = flat.x.detach()
    gen = torch.Generator().manual_seed(seed + 1)
    for bit in range((len(probes) - 1).bit_length()):
        for value in (0, 1):
            group = [s for k, s in enumerate(probes) if (k >> bit) & 1 == value]
            delta = torch.randn(len(group), x.shape[1], generator=gen, dtype=torch.float64).to(x)
            x2 = x.clone()
            x2[group] += 0.1 * delta * x[group].abs().clamp(min=1)
            moved = (flat.values(x2) - y).abs()
            moved[group] = 0
            if not (bool(torch.isfinite(moved).all()) and float(moved.max()) <= threshold):
                return False
    return True
