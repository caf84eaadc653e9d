"""Checks before blaming a method: is the function deterministic, and do its samples interact?"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass

import torch

from jacverify.case import Flat
from jacverify.errors import (FunctionRaised, InvalidArgument, NondeterministicFunction,
                              NonFiniteOutput)
from jacverify.oracles.finite_differences import DOMAIN_RETRIES, DOMAIN_SHRINK

__all__ = ["Coupling", "carries_graph", "check_determinism", "check_coupling",
           "effective_precision", "graph_cut",
           "nudged", "perturbed", "resolution", "tangent_dropped", "GRAPH_CUT", "TANGENT_DROPPED"]

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
# Both floors are per output: the scale is each output's own largest size, and the probed
# sample's move is its move in that output (row_s_m of NOTE [tolerances] is per output too). With
# the largest over all outputs, a block at 1e3 beside a coupled block at 1e-3
# (`cat([1e3 z, 1e-3 (z + z.mean(0))])`) hid the coupling in float32: check blamed a backward
# formula and batch_jacobian returned entries 78% off (a fresh user).
COUPLING_ROUNDING = 64


def resolution(y: torch.Tensor, noise: float = 0.0, per_output: bool = False):
    """The least move of outputs ``y`` (B, M) told apart from rounding (NOTE [coupling
    threshold]): COUPLING_ROUNDING eps of their largest size (at least 1), or 4x the run-to-run
    ``noise``; ``per_output``: of each output's own largest size, (M,).

    >>> resolution(torch.ones(2, 3, dtype=torch.float64)) == 64 * torch.finfo(torch.float64).eps
    True
    >>> y = torch.tensor([[1e3, 1e-3]], dtype=torch.float64)
    >>> (resolution(y, per_output=True) / torch.finfo(torch.float64).eps).tolist()
    [64000.0, 64.0]
    """
    if per_output:
        size = y.abs().amax(0).clamp(min=1)
        return (COUPLING_ROUNDING * torch.finfo(y.dtype).eps * size).clamp(min=4 * noise)
    return max(COUPLING_ROUNDING * torch.finfo(y.dtype).eps * float(y.abs().max().clamp(min=1)),
               4 * noise)


def perturbed(x: torch.Tensor, seed: int) -> torch.Tensor:
    """``x`` with every entry moved by 10% of its size (at least 0.1) in a random direction drawn
    from ``seed``: the probes' other point (NOTE [coupling probes]).

    >>> x = torch.zeros(2, 3)
    >>> bool((perturbed(x, 0) != x).all()), torch.equal(perturbed(x, 0), perturbed(x, 0))
    (True, True)
    """
    delta = torch.randn(x.shape, generator=torch.Generator().manual_seed(seed),
                        dtype=torch.float64).to(x)
    return x + 0.1 * delta * x.abs().clamp(min=1)


def nudged(x: torch.Tensor, seed: int) -> torch.Tensor:
    """``x`` with every entry moved by 2-6 float32 ulps of its size (of 1 where it is 0), or 4-12
    of its own dtype's where that is coarser: a move no smooth function ignores, too small to
    cross a step's threshold (NOTE [effective precision], NOTE [graph cut]). Of its own size, not
    of at least 1: log at 1e-6 moved by 5e-7 read as float32 inside (a fresh user).

    >>> x = torch.ones(2, 3, dtype=torch.float64)
    >>> d = (nudged(x, 0) - x).abs()
    >>> bool((d > 2 * 2.0 ** -23).all() and (d < 6 * 2.0 ** -23).all())
    True
    """
    u = torch.rand(x.shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    size = max(2.0 ** -20, 8 * torch.finfo(x.dtype).eps)
    return x + torch.where(x != 0, x.abs(), 1.0) * (0.25 + 0.5 * u.to(x)) * size


def _moves(flat: Flat) -> bool:
    """The function's values move under a nudge (:func:`nudged`): it is no constant and no step."""
    return not torch.equal(flat.values(nudged(flat.x, 0)), flat.values(flat.x))


def carries_graph(flat: Flat) -> bool:
    """``flat.fn``'s output, from an input that requires grad, is in autograd's graph; True too
    when fn raises so (it runs only without autograd, an ``out=``: the methods say so).

    >>> from jacverify.case import Flat
    >>> x = torch.randn(3, 2)
    >>> carries_graph(Flat(torch.tanh, x, ((2,),), ((2,),)))
    True
    >>> carries_graph(Flat(lambda z: torch.tanh(z.detach()), x, ((2,),), ((2,),)))
    False
    """
    leaf = flat.x.detach().clone().requires_grad_()
    try:
        with torch.enable_grad():
            return flat.fn(leaf).requires_grad
    except Exception:  # noqa: BLE001 - not this check's to report
        return True


# NOTE [graph cut]
# A function whose output carries no autograd graph -- torch.no_grad() around its body,
# .detach(), a round trip through numpy -- is a constant to reverse mode: torch.func and
# autograd.functional answer zeros (or raise), while its values move with x, so finite
# differences see a derivative. Told apart from a step function (`(x > 0).float()`: derivative
# 0 wherever it has one, as vmap(jacrev) answers) by a move of a few ulps (`nudged`): a smooth
# function's values move, a step's do not. check() makes it a finding with its own hint (it was
# blamed on "a backward formula", a fresh user), batch_jacobian refuses it (its reverse-mode
# candidates answered zeros on some calls and the forward ones the derivative on others).
GRAPH_CUT = "the function's output carries no autograd graph"


def graph_cut(flat: Flat) -> str | None:
    """Why reverse mode sees a constant where the function's values move (NOTE [graph cut]), or
    None: 1-3 calls of the function.

    >>> from jacverify.case import Flat
    >>> x = torch.randn(3, 2)
    >>> cut = Flat(lambda z: torch.tanh(z.detach()), x, ((2,),), ((2,),))
    >>> graph_cut(cut).startswith(GRAPH_CUT), graph_cut(Flat(torch.tanh, x, ((2,),), ((2,),)))
    (True, None)
    >>> graph_cut(Flat(lambda z: (z > 0).float(), x, ((2,),), ((2,),))) is None  # a step
    True
    """
    if carries_graph(flat) or not _moves(flat):
        return None
    return (f"{GRAPH_CUT} (torch.no_grad() or .detach() around its computation, or a round trip "
            "outside torch), though its values move with x: autograd sees a constant, and "
            "reverse mode answers zeros where finite differences see a derivative. Compute it "
            "with autograd on, in torch, to check its derivative (NOTE [graph cut])")


# An op with a backward but no forward-AD formula that torch does not refuse (a torch.library
# custom op with register_autograd only) drops the tangent: forward mode answers zeros, and the
# check blamed "a jvp formula" (a fresh user). One dual forward tells it: the output's tangent is
# None while the input's is not.
TANGENT_DROPPED = "forward mode drops the tangent"


def tangent_dropped(flat: Flat) -> str | None:
    """Why forward mode answers zeros here (the output of a dual input has no tangent), or None:
    one call of the function.

    >>> from jacverify.case import Flat
    >>> tangent_dropped(Flat(torch.sin, torch.randn(2, 3), ((3,),), ((3,),))) is None
    True
    """
    import torch.autograd.forward_ad as fwAD

    try:
        with fwAD.dual_level():
            out = flat.fn(fwAD.make_dual(flat.x.detach(), torch.ones_like(flat.x)))
            if fwAD.unpack_dual(out).tangent is not None:
                return None
    except Exception:  # noqa: BLE001 - no forward AD at all: the forward methods say so
        return None
    if not _moves(flat):
        return None  # a constant or a step: no tangent is the right answer
    return (f"{TANGENT_DROPPED}: the output of a dual input has none, though its values move "
            "with x: an op on the way has no forward-AD formula and torch does not refuse it (a "
            "torch.library custom op with register_autograd only), so forward mode answers zeros "
            "there; register a jvp (setup_context and jvp, or torch.library's) to use it")


# NOTE [effective precision]
# The references run on a float64 copy of the function (NOTE [references on the CPU]), and finite
# differences assume its values carry float64's rounding (NOTE [finite-difference error estimate]).
# A function that computes in a coarser dtype inside -- `net(z.half()).to(z.dtype)`, a float32
# model behind a cast, an output rounded through bfloat16 -- carries that dtype's rounding
# instead: float64 steps (1e-3 |x|) over float16 values (eps 1e-3) make finite differences off by
# O(1), and the check blamed "a backward formula" of a correct function (a fresh user). Two tests
# tell such a function, each at a point moved off every coarser dtype's grid (a few float32 ulps,
# so x's own grid -- a float32 case's inputs cast up -- says nothing), coarsest dtype first:
# rounding the input to the dtype leaves every output bitwise the same (the function casts its
# input), or every non-integer output is exactly representable in the dtype (it rounds its
# output). A function that does not move at all between that point and one 10% away (a constant)
# says nothing either way. A third test finds float32 inside where neither cast is at the ends
# (`softmax(a.float()).to(a.dtype)`, the upcast of Hugging Face attention: a correct layer FAILED
# "a backward formula is wrong", a fresh user): along the nudge d, f(x + 8d) - 14 f(x + 4d) +
# 56 f(x + 2d) - 64 f(x + d) + 21 f(x) cancels f's terms up to d^3 (56 d^4 f'''' is left) and
# keeps its rounding (about 90x one evaluation's): float64 functions gave 1e-15 of max|f| (an
# encoder layer, a deep MLP, exp(10 z)), float32 inside 2e-7; over FLOAT32_INSIDE (eps32 / 1024)
# is float32. A first version cancelled terms up to d^2 only: 24 d^3 f''' of sin(1000 z), of a
# NeRF positional encoding (sin(2^9 pi z)) and of log at 1e-6 read as float32, which loosened
# their float64 checks 20,000 times and left some UNVERIFIED (a second fresh user). Half
# precision in the middle is not found this way (a nudge of float32 ulps moves nothing there,
# and nudges of its own ulps leave f's curvature above its rounding).
# The dtype found replaces x's in the steps and the rounding of finite differences and sets the
# tolerance's floor (sqrt of its eps); the report says so.
_COARSER = (torch.bfloat16, torch.float16, torch.float32)  # coarsest first
FLOAT32_INSIDE = torch.finfo(torch.float32).eps / 1024


def effective_precision(flat: Flat, seed: int,
                        center: torch.Tensor | None = None) -> torch.dtype | None:
    """The coarser dtype than ``flat.x``'s that ``flat.fn`` computes in inside, or None (NOTE
    [effective precision]): 3-8 calls of the function (``center``: its output at ``flat.x``,
    when the caller has it).

    >>> from jacverify.case import Flat
    >>> x = torch.randn(3, 2, dtype=torch.float64)
    >>> cast = lambda z: torch.tanh(z.half()).to(z.dtype)
    >>> effective_precision(Flat(cast, x, ((2,),), ((2,),)), 0)
    torch.float16
    >>> effective_precision(Flat(torch.tanh, x, ((2,),), ((2,),)), 0) is None
    True
    """
    x = flat.x
    eps = torch.finfo(x.dtype).eps
    coarser = [dt for dt in _COARSER if torch.finfo(dt).eps > eps]
    if not coarser:
        return None
    try:
        return _finer_than(flat, seed, center, coarser)
    except Exception:  # noqa: BLE001 - fn raises off x (a distribution's support, an assert):
        return None  # nothing tells, and x's dtype stands (NOTE [steps off the domain])


def _finer_than(flat: Flat, seed: int, center: torch.Tensor | None,
                coarser: list[torch.dtype]) -> torch.dtype | None:
    """:func:`effective_precision`'s three tests, given the dtypes coarser than x's."""
    x = flat.x
    off = nudged(x, seed)
    y = flat.values(off)
    if torch.equal(flat.values(perturbed(x, seed)), y):
        return None
    fractional = y[y != y.round()]
    for dt in coarser:
        if torch.equal(flat.values(off.to(dt).to(x.dtype)), y) or (
                fractional.numel() and torch.equal(fractional, fractional.to(dt).to(y.dtype))):
            return dt
    if torch.float32 not in coarser:
        return None
    step = off - x  # the third test: float32 rounding inside, measured along the nudge
    y0 = flat.values(x) if center is None else center
    y2, y4 = flat.values(x + 2 * step), flat.values(x + 4 * step)
    noise = (flat.values(x + 8 * step) - 14 * y4 + 56 * y2 - 64 * y + 21 * y0).abs()
    floor = FLOAT32_INSIDE * float(y0.abs().max())
    return torch.float32 if float(noise.max()) > floor > 0 else None


@dataclass(frozen=True)
class Coupling:
    """What the batch-coupling check found; ``reason`` is None for independent samples."""

    reason: str | None
    probes: int
    below_resolution: str | None = None  # samples moved each other, but below what is resolved

    @property
    def coupled(self) -> bool:
        return self.reason is not None


def check_determinism(flat: Flat, what: str = "the function") -> tuple[float, torch.Tensor]:
    """Call twice on the same input; return the run-to-run noise (0.0 when bitwise equal) and the
    output (B, M), which the coupling probes start from.

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
    if bool(torch.isfinite(y1).all()) and torch.equal(y1, y2):  # the common case, in two ops
        return 0.0, y1
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
    if noise > resolution(y1):
        b, m = (int(i) for i in (diff == diff.max()).nonzero()[0])
        raise NondeterministicFunction(
            f"{what} returned different outputs for the same input (max difference {noise:.3g} "
            f"at sample {b}, {flat.describe_output(m)}): it has randomness or hidden state, so no derivative is "
            "well defined. Call model.eval() (dropout and friends), seed the RNG inside f, or "
            "remove the state it updates between calls"
        )
    return noise, y1


# NOTE [coupling probes]
# Samples i and j interact when changing one moves the other's output. Changing a group of samples
# at once and watching the samples outside it finds every interaction from a member to a sample
# outside. So the groups must separate every ordered pair: for each i != j, some group holds i
# and not j. Give each sample a distinct set of k/2 of k labels, and make group t the samples
# whose set holds t: two distinct sets of the same size each hold a label the other lacks, so k
# groups separate every ordered pair, and k forward passes see any interaction between any two
# samples. The least k with C(k, k/2) >= B (Sperner's theorem: no family of fewer sets does it)
# is 8 at B=64, 7 at B=32, 5 at B=8; the groups "bit k of the index is 0" and "bit k is 1" took
# 2 ceil(log2 B) (12 at B=64), and probing samples one at a time saw only the samples probed (16
# of them, 17 forward passes, before that). Where a group moves another sample, its members are
# changed one at a time until one is found that does, so the report names one sample and the
# samples it moved.
def separating_groups(b: int) -> list[list[int]]:
    """k groups of range(b) such that every ordered pair (i, j), i != j, has a group holding i
    and not j (NOTE [coupling probes]).

    >>> separating_groups(6)
    [[0, 1, 2], [0, 3, 4], [1, 3, 5], [2, 4, 5]]
    """
    k = 1
    while math.comb(k, k // 2) < b:
        k += 1
    codes = list(itertools.islice(itertools.combinations(range(k), k // 2), b))
    return [[i for i, code in enumerate(codes) if t in code] for t in range(k)]


def check_coupling(flat: Flat, seed: int, noise: float = 0.0, rtol: float = 0.0,
                   center: torch.Tensor | None = None) -> Coupling:
    """Change groups of samples (NOTE [coupling probes]) and see whether any other sample's
    output moves; ``center`` is ``flat``'s output at its point, when the caller has it.

    ``rtol`` is the methods' relative tolerance: moves below rtol / (B - 1) of the changed
    samples' own move are below resolution (NOTE [coupling threshold]).
    """
    x = flat.x.detach()
    b = flat.batch_size
    if b == 1:
        return Coupling(None, 0)
    index = torch.arange(b, device=x.device)
    groups = []
    for members in separating_groups(b):
        group = torch.zeros(b, dtype=torch.bool, device=x.device)
        group[members] = True
        groups.append(group)
    calls = 0
    with torch.no_grad():
        y = flat.values(x) if center is None else center
        threshold = resolution(y, noise, per_output=True)
        changed_x = perturbed(x, seed)  # every sample changed; groups pick
        spread = (-1,) + (1,) * (x.ndim - 1)

        def moves(group: torch.Tensor) -> tuple[torch.Tensor, int, float, float, float]:
            """The others' moves (B, M; the group's rows zeroed) and, at the output where they
            are furthest over their floor, that output, the group's own move there, the floor
            under which a move is below resolution (per output: a block of outputs at 1e3 set
            the floor of a coupled block at 1e-3, and its coupling went unseen in float32, a
            fresh user), and the others' move there."""
            nonlocal calls, changed_x
            for attempt in range(DOMAIN_RETRIES + 1):  # NOTE [steps off the domain]: log at
                calls += 1  # 1e-6 moved by 0.1 is NaN, and NaN read as coupling (a fresh user)
                try:
                    moved = (flat.values(torch.where(group.view(spread), changed_x, x)) - y).abs()
                except Exception as e:  # noqa: BLE001 - raises off its domain (an assert)
                    if attempt == DOMAIN_RETRIES:
                        by = float((changed_x - x).abs().max())
                        raise FunctionRaised(
                            f"fn raised when samples moved by up to {by:.3g} "
                            f"({type(e).__name__}: {str(e).strip()[:200]}); the check moves "
                            "inputs to probe whether samples interact and to take finite "
                            "differences: pass inputs where fn is defined around them") from e
                    moved = torch.full_like(y, math.nan)
                if bool(torch.isfinite(moved).all()):
                    break
                changed_x = x + (changed_x - x) * DOMAIN_SHRINK
            own = torch.nan_to_num(moved[group].amax(0), nan=0.0, posinf=0.0)
            moved.masked_fill_(group[:, None], 0)
            moved = moved.nan_to_num(nan=math.inf)  # another sample's NaN: it moved
            other = moved.amax(0)
            floor = torch.maximum(threshold, rtol * own / (b - 1))
            m = int((other / floor).argmax())
            return moved, m, float(own[m]), float(floor[m]), float(other[m])

        faint = None
        for group in groups:
            moved, m, own, floor, other = moves(group)
            if other > float(threshold[m]) and other <= floor and faint is None:
                changed = ", ".join(map(str, index[group].tolist()[:5])) + (
                    ", ..." if int(group.sum()) > 5 else "")
                faint = (f"changing samples {changed} moved other samples' outputs by up to "
                         f"{other:.3g} ({flat.describe_output(m)}), under {floor:.3g} = rtol "
                         f"{rtol:.2g} x their own move {own:.3g} / (B - 1): below what the check "
                         "resolves, so samples are treated as independent (NOTE [coupling "
                         "threshold])")
            if other <= floor:
                continue
            for s in index[group].tolist():  # name one sample that moves the others
                one = index == s
                single, _, _, single_floor, single_other = moves(one)
                if single_other > single_floor:
                    moved = single
                    break
            else:
                s = int(index[group][0])
            others = sorted({int(i) for i in (moved > threshold).any(1).nonzero().flatten()})
            listed = ", ".join(map(str, others[:5])) + (", ..." if len(others) > 5 else "")
            return Coupling(
                f"changing sample {s} changed the outputs of sample(s) {listed} (max change "
                f"{float(moved.max()):.3g}): samples interact (BatchNorm in training mode or "
                "another batch statistic?)",
                calls,
            )
    return Coupling(None, calls, faint)
