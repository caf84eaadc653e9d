"""The reference stage: pre-checks, float64 references, and how far the loop is trusted.

Every check builds its references here, in one order (NOTE [reference stage]); the judge
(:mod:`jacverify.judge`) then compares each candidate with them.
"""

from __future__ import annotations

import contextlib
import dataclasses
import copy
import time
import warnings
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import torch

from jacverify.case import Case, Flat, flatten, unravel
from jacverify.compare import Reference, Scales, compare
from jacverify.costs import reference_bytes, reference_passes
from jacverify.errors import FunctionRaised, InvalidArgument, JacobianTooLarge
from jacverify.measure import synchronizer
from jacverify.judge import first_line
from jacverify.methods.loops import loop
from jacverify.oracles import (Coupling, check_coupling, check_determinism, effective_precision,
                              finite_differences, graph_cut, tangent_dropped)

__all__ = ["DEFAULT_MAX_MEMORY", "DEFAULT_TIME_BUDGET", "estimate_seconds", "within_time_budget",
           "Prechecked", "Verified", "prechecked", "verify", "isolated",
           "warnings_recorded", "LOOP_DISAGREES", "pinned_nothing"]

DEFAULT_MAX_MEMORY = 2**30  # bytes any one method or reference may materialise
DEFAULT_TIME_BUDGET = 600.0  # seconds the references of one check are estimated to take, at most

LOOP_DISAGREES = "a backward formula of the function is wrong"


# NOTE [reference stage]
# 1. determinism of the function as given; 2. a float64 copy (a module `.double()`-copied, a
#    function called on float64 inputs) and its own determinism, whose measured noise is the floor
#    of 3. the coupling probes; 4. finite differences (per sample when samples do not interact);
#    5. the loop, trusted only when it agrees with finite differences -- when it does not, a backward
#    formula is wrong: that is a finding that fails the check in every dtype (NOTE [earned verdict]).
@dataclass(frozen=True)
class Prechecked:
    """A case after steps 1-3 of NOTE [reference stage]."""

    flat: Flat  # the case in its own dtype
    ref_flat: Flat  # the case in float64 where the function runs so, else ``flat``
    coupling: Coupling
    notes: tuple[str, ...]
    cut: str | None = None  # NOTE [graph cut]: a finding that fails the check

    @property
    def findings(self) -> tuple[str, ...]:
        """What the pre-checks found wrong on their own (each fails the check)."""
        return (self.cut,) if self.cut else ()


@dataclass(frozen=True)
class Verified:
    """The per-sample Jacobian references of a case: what every quantity's references are built from.

    Attributes:
        loop: the float64 loop, or None when it raised.
        refs: the trusted references, most trusted first (loop and finite differences, or finite
            differences alone).
        findings: wrong derivatives the references found on their own (the loop against finite
            differences); each fails the check.
    """

    flat: Flat
    ref_flat: Flat
    coupling: Coupling
    loop: Reference | None
    refs: tuple[Reference, ...]
    scales: Scales
    notes: tuple[str, ...]
    findings: tuple[str, ...] = ()
    unresolved: str | None = None  # why the references pin down no entry (then nothing verifies)

    @property
    def loop_trusted(self) -> bool:
        return self.loop is not None and self.loop in self.refs


def prechecked(case: Case, flat: Flat | None = None) -> Prechecked:
    """Steps 1-3 of NOTE [reference stage] (``flat``: the case's canonical form, when the caller
    has it already).

    Raises:
        NondeterministicFunction, NonFiniteOutput, FunctionRaised: the case cannot be checked.
    """
    flat = flatten(case) if flat is None else flat
    notes: list[str] = []
    noise, center = check_determinism(flat)
    ref_flat = _reference_version(case, notes) or flat
    if ref_flat is not flat:
        noise, center = check_determinism(ref_flat, "the reference copy of the function")
    precision = effective_precision(ref_flat, case.seed, center)
    if precision is not None:
        flat, ref_flat = _computing_in(precision, flat, ref_flat, notes)
    coupling = check_coupling(ref_flat, case.seed, noise, torch.finfo(case.dtype).eps ** 0.5,
                              center)
    if coupling.below_resolution:
        notes.append(coupling.below_resolution)
    dropped = tangent_dropped(flat)
    if dropped:
        notes.append(dropped)
    return Prechecked(flat, ref_flat, coupling, tuple(notes), graph_cut(flat))


def _computing_in(precision: torch.dtype, flat: Flat, ref_flat: Flat,
                  notes: list[str]) -> tuple[Flat, Flat]:
    """Both forms of a function that computes in ``precision`` inside (NOTE [effective
    precision]), and the report's note."""
    name = str(precision).removeprefix("torch.")
    ref_dtype = str(ref_flat.x.dtype).removeprefix("torch.")
    notes.append(
        f"the function computes in {name} inside: its {ref_dtype} copy's outputs carry {name}'s "
        f"rounding (NOTE [effective precision]), so finite differences take {name}'s steps and "
        f"error bounds and every tolerance is at least sqrt(eps) of {name} "
        f"({torch.finfo(precision).eps ** 0.5:.2g}); derivatives are verified only to that. "
        f"Remove the cast inside (or check it in {name}) to verify them more closely")
    with_precision = dataclasses.replace(ref_flat, precision=precision)
    if torch.finfo(flat.x.dtype).eps >= torch.finfo(precision).eps:
        return flat, with_precision  # the methods' dtype is that coarse already
    return (with_precision if ref_flat is flat else dataclasses.replace(flat, precision=precision),
            with_precision)


# NOTE [cost estimate]
# Before the references run, their time is estimated from one timed forward pass t of the float64
# copy (the best of two): finite differences take 6 N passes (6 N B when samples interact and
# each sample is perturbed alone), the loop B M backward passes of about 3 t each, and a Hessian's
# finite differences of the first derivative 6 N times M backward passes (B M when samples
# interact). Over `time_budget` the check is refused with the estimate and what to do, before it
# starts -- never a check that runs for an hour with no word.
def estimate_seconds(flat: Flat, coupled: bool, second_order: bool = False) -> float:
    """The references' estimated time in seconds (NOTE [cost estimate])."""
    return _forward_seconds(flat) * reference_passes(flat, coupled, second_order)


def _forward_seconds(flat: Flat) -> float:
    sync = synchronizer(flat.x.device)
    best = float("inf")
    for _ in range(2):
        sync()
        start = time.perf_counter()
        flat.values(flat.x)
        sync()
        best = min(best, time.perf_counter() - start)
    return best


def within_time_budget(flat: Flat, coupled: bool, time_budget: float | None,
                       second_order: bool = False) -> None:
    """Refuse references estimated to take longer than ``time_budget`` seconds.

    Raises:
        JacobianTooLarge: with the estimate and what to do.
    """
    if time_budget is None:
        return
    estimate = estimate_seconds(flat, coupled, second_order)
    if estimate > time_budget:
        what = ("second derivatives" if second_order else "full per-sample Jacobians")
        raise JacobianTooLarge(
            f"the float64 references of {what} (B={flat.batch_size}, out={flat.n_out}, "
            f"in={flat.n_in}) are estimated at {estimate:.0f} s, over time_budget={time_budget:g} s "
            "(NOTE [cost estimate]); use verification='projection' (a few passes per probe), "
            "check fewer samples or a smaller input, or raise time_budget")


def verify(case: Case, rtols, max_memory: int, time_budget: float | None = None,
           pre: Prechecked | None = None) -> Verified:
    """Every step of NOTE [reference stage]: the trusted per-sample Jacobian references
    (``pre``: steps 1-3, when the caller ran them already).

    Raises:
        JacobianTooLarge: the three float64 copies of (B, M, N) would pass ``max_memory``, or the
            references are estimated to take longer than ``time_budget`` seconds.
        NondeterministicFunction, NonFiniteOutput, FunctionRaised: from :func:`prechecked`.
    """
    flat = flatten(case) if pre is None else pre.flat
    need = reference_bytes(flat)
    if need > max_memory:
        raise JacobianTooLarge(
            f"the references need {need / 2**20:.1f} MiB ({need} bytes; B={flat.batch_size}, "
            f"out={flat.n_out}, in={flat.n_in}, float64, three copies) but "
            f"max_memory={max_memory} bytes; check a "
            "smaller batch or smaller inputs, use verification='projection', or raise max_memory"
        )
    pre = prechecked(case, flat) if pre is None else pre
    within_time_budget(pre.ref_flat, pre.coupling.coupled, time_budget)
    notes, flat, ref_flat = list(pre.notes), pre.flat, pre.ref_flat
    rtols = rtols.floored(ref_flat.precision)  # NOTE [effective precision]
    step = getattr(rtols, "eps", None)
    fd_value, fd_error = finite_differences(ref_flat, independent=not pre.coupling.coupled,
                                            step=step)
    fd = Reference("finite_differences", fd_value, fd_error)
    derivative = _derivative_scale(ref_flat)
    loop_ref = _loop_reference(ref_flat, notes)
    if step is None:
        fd = _refined_at_kinks(ref_flat, not pre.coupling.coupled, loop_ref, fd, notes)
    unstable = unstable_entries(fd, derivative, ref_flat)
    if unstable:
        notes.append(unstable)
    unresolved = pinned_nothing(fd, derivative, ref_flat)
    rounding = _plausible_rounding(flat, ref_flat, loop_ref, _measured_rounding(flat, loop_ref),
                                   notes)
    scales = Scales(rounding, derivative)
    refs, findings = _trusted_references(loop_ref, fd, ref_flat.x.dtype, rtols, scales, notes)
    if loop_ref not in refs:
        scales = Scales(torch.zeros_like(scales.rounding), scales.derivative)  # loop untrusted
    elif float(scales.rounding.max()) > torch.finfo(flat.x.dtype).eps ** 0.5 * float(
            loop_ref.value.abs().max()):
        notes.append(
            f"this Jacobian is ill-conditioned in {str(flat.x.dtype).removeprefix('torch.')}: the "
            f"loop there differs from the float64 loop by {float(scales.rounding.max()):.3g}, more than "
            "sqrt(eps) of max|J|; that measured rounding (x8) is allowed to every method")
    return Verified(flat, ref_flat, pre.coupling, loop_ref, refs, scales, tuple(notes),
                    (*pre.findings, *findings), unresolved)


# NOTE [unstable finite differences]
# Finite differences at h, h/2 and h/4 agree to ~1e-10 relative where f is smooth. Where they do
# not -- a kink (ReLU or abs at exactly 0), a jump, or an evaluation that is not smooth in x (an
# implicit layer whose solver stops at a tolerance) -- the error bound grows to cover the spread, so
# no method is falsely flagged there; but "agree" then means only "within that uncertainty". An
# entry whose bound is over UNSTABLE_FRACTION of its scale (|J| + its row's max|J| + d, and sqrt(eps)
# max|J| so that an exactly-zero row's rounding floor does not count) is named in
# a note, with its value and bound, so the report says the derivative is not pinned down there.
# Where that is every entry not exactly 0 (ReLU at exactly 0 everywhere, a function that computes
# in float16 inside: NOTE [effective precision]), no agreement says more than the Jacobian's
# sparsity: the check ends UNVERIFIED, saying why (NOTE [earned verdict]; it said PASSED 18/18 on
# ReLU at zeros, and FAILED a correct function that computes in float16, blaming its backward).
UNSTABLE_FRACTION = 1e-2


def _unpinned(fd: Reference, derivative_scale: torch.Tensor | None) -> tuple[torch.Tensor,
                                                                           torch.Tensor]:
    """The entries whose error bound is over UNSTABLE_FRACTION of their scale (NOTE [unstable
    finite differences]), and each entry's bound over its scale. The scale of a projection
    (``fd.magnitude`` set) is its magnitude (NOTE [projection probes])."""
    from jacverify.compare import row_size

    assert fd.error is not None
    # plus sqrt(eps) of the largest entry: an exactly-zero row (its rounding floor ~1e-13) is
    # not "unstable"
    floor = torch.finfo(fd.value.dtype).eps ** 0.5 * float(fd.value.abs().max())
    around = fd.magnitude if derivative_scale is None else (
        row_size(fd.value) + derivative_scale[..., None].to(fd.value))
    scale = fd.value.abs() + around + floor
    ratio = fd.error / scale.clamp(min=torch.finfo(fd.value.dtype).tiny)
    return ratio > UNSTABLE_FRACTION, ratio


def pinned_nothing(fd: Reference, derivative_scale: torch.Tensor | None = None,
                   flat: Flat | None = None) -> str | None:
    """Why the check cannot pass where finite differences pin down none of the entries, or none
    of some output's (NOTE [unstable finite differences]), or None. ``derivative_scale``: d of
    NOTE [tolerances], (B, M); None for projections, whose scale is their magnitude. ``flat``
    names the outputs of a (B, M, N) reference."""
    bad, _ = _unpinned(fd, derivative_scale)
    pinned = ~bad & (fd.value != 0)  # a 0 pinned down is the Jacobian's sparsity, not a derivative
    if not bool(bad.any()):
        return None
    if not bool(pinned.any()):
        return (f"finite differences pin down no entry that is not exactly 0 ({int(bad.sum())} "
                f"of {bad.numel()} are not pinned down: their error bounds are over "
                f"{UNSTABLE_FRACTION:.0%} of their size): every method that agrees agrees only "
                "within that uncertainty, so no derivative was verified")
    off = ~torch.isfinite(fd.error)  # NOTE [steps off the domain]: no value at all there
    if bool(off.any()):  # (a backward 2x wrong at the one entry by an edge PASSED beside the
        where = tuple(int(i) for i in off.nonzero()[0])  # others: a fresh user)
        return (f"finite differences pin down none of {int(off.sum())} entr"
                f"{'y' if int(off.sum()) == 1 else 'ies'} (first at {where}) whose steps leave "
                "the function's domain (its values there are NaN, or it raises): their "
                "derivatives were not verified; check inputs further from the edge")
    if fd.value.ndim != 3 or flat is None:
        return None
    blind = (bad.any(2).any(0) & ~pinned.any(2).any(0)).nonzero().flatten().tolist()
    if not blind:
        return None
    named = ", ".join(flat.describe_output(m) for m in blind[:4]) + (", ..." if len(blind) > 4
                                                                     else "")
    return (f"finite differences pin down no entry that is not exactly 0 of {len(blind)} "
            f"output(s) ({named}; their error bounds are over {UNSTABLE_FRACTION:.0%} of their "
            "size): what every method answers there agrees only within that uncertainty, so "
            "those outputs' derivatives were not verified (a backward 10% off in a float16 block "
            "beside a float64 one PASSED on the other block, a fresh user)")


def unstable_entries(fd: Reference, derivative_scale: torch.Tensor, flat: Flat) -> str | None:
    """A note naming the entries finite differences could not pin down, or None."""
    bad, ratio = _unpinned(fd, derivative_scale)
    count = int(bad.sum())
    if not count:
        return None
    worst = unravel(ratio.argmax(), fd.value.shape)
    where = flat.describe_index(worst, ("sample", "output", "input"))
    return (f"finite differences are unstable at {count} entr{'y' if count == 1 else 'ies'} "
            f"(their step sizes disagree; worst {worst}, {where}: {float(fd.value[worst]):.6g} "
            f"± {float(fd.error[worst]):.3g}): the function is not differentiable there (a kink "
            "such as ReLU or abs at exactly 0, a jump) or not smooth in its input (an iterative "
            "solver stopping at a tolerance), so methods that 'agree' there agree only within "
            "that uncertainty (NOTE [unstable finite differences])")


# NOTE [references on the CPU]
# The references run in float64 on the CPU whatever device the methods run on: a module is copied
# there with `.to("cpu", torch.float64)`, a function is called on CPU float64 inputs. Every method
# computed on a GPU is then compared with them -- the cross-device check: a kernel that is wrong
# only on the device is a mismatch like any other. Where the function cannot run so (it closes over
# device tensors, or keeps its own dtype), the references fall back to the case's device and dtype
# and the report says so.
CPU = torch.device("cpu")


def _reference_version(case: Case, notes: list[str]) -> Flat | None:
    """The case in float64 on the CPU (NOTE [references on the CPU]); None when the case is that
    already, or when the function cannot run so (a note says which)."""
    if case.dtype == torch.float64 and case.device.type == "cpu":
        return None
    fn = case.fn
    if isinstance(fn, torch.nn.Module):
        fn = copy.deepcopy(fn).to(device=CPU, dtype=torch.float64)
    try:
        ref = flatten(case, fn, torch.float64, CPU)
        ok = ref.values(ref.x).dtype == torch.float64
    except (FunctionRaised, InvalidArgument, RuntimeError):
        ok = False
    if ok:
        return ref
    where = "" if case.device.type == "cpu" else f" on {case.device}"
    notes.append(
        f"references computed in {str(case.dtype).removeprefix('torch.')}{where}: the function "
        "did not run in float64 on the CPU (pass an nn.Module, or a function that follows its "
        "input's dtype and device, to get CPU float64 references); finite-difference error bounds "
        "account for the lower precision"
    )
    return None


def _derivative_scale(flat: Flat) -> torch.Tensor:
    """d_s_m of NOTE [tolerances], per sample and output: (B, M); the smaller of each output and
    its distance from the batch's mean, unless that is 0 in every sample (a constant) or B = 1.

    >>> from jacverify.case import Flat
    >>> x = torch.tensor([[0.0], [1.0], [2.0]], dtype=torch.float64)
    >>> _derivative_scale(Flat(lambda z: torch.cat([z - 4e4, 0 * z + 3], 1), x, ((1,),), ((2,),)))
    tensor([[1.0000, 3.0000],
            [0.0000, 3.0000],
            [0.5000, 1.5000]], dtype=torch.float64)
    """
    y = flat.values(flat.x)
    size = y.abs()
    if flat.batch_size > 1:
        centred = (y - y.mean(0, keepdim=True)).abs()
        size = torch.where((centred != 0).any(0, keepdim=True), torch.minimum(size, centred), size)
    return size / flat.x.abs().amax(1, keepdim=True).clamp(min=1.0)


def _measured_rounding(flat: Flat, loop_ref: Reference | None) -> torch.Tensor:
    """r_s of NOTE [tolerances]: max |loop in the case's dtype - loop in float64| per sample, (B,)
    (zeros when they are the same dtype)."""
    none = torch.zeros(flat.batch_size, dtype=torch.float64, device=flat.x.device)
    if loop_ref is None or flat.x.dtype == loop_ref.value.dtype:
        return none
    try:
        low = loop(flat)
    except Exception:  # noqa: BLE001 - the loop method reports its own failure
        return none
    return (low.to(loop_ref.value) - loop_ref.value).abs().amax((1, 2))


# NOTE [plausible rounding]
# The measured rounding r_s (NOTE [tolerances]) is the float32 loop against the float64 loop: the
# same formulas, so the difference should be rounding alone -- unless a formula is wrong only in
# float32 (a kernel or an autograd.Function with a float32 path), when the "rounding" is the bug and
# allowing it would pass it (a backward returning zeros in float32 passed that way). So r_s is
# allowed only up to what float32 rounding can explain: ROUNDING_CEILING x (the change of the
# float64 loop when every input moves by a relative eps of the low dtype -- the conditioning that
# makes cancellation, a BatchNorm over two close samples, lose digits -- plus eps x the sample's
# largest |J|). Beyond that the excess is not allowed, the float32 methods are judged without it,
# and the report says so.
ROUNDING_CEILING = 64


def _plausible_rounding(flat: Flat, ref_flat: Flat, loop_ref: Reference | None,
                        measured: torch.Tensor, notes: list[str]) -> torch.Tensor:
    """r_s clipped to what rounding in the low dtype can explain (NOTE [plausible rounding])."""
    if loop_ref is None or not float(measured.max()) > 0:
        return measured
    eps = torch.finfo(flat.x.dtype).eps
    gen = torch.Generator().manual_seed(0)
    signs = (torch.randint(0, 2, tuple(ref_flat.x.shape), generator=gen) * 2 - 1).to(ref_flat.x)
    try:
        moved = loop(dataclasses.replace(ref_flat, x=ref_flat.x * (1 + eps * signs)))
    except Exception:  # noqa: BLE001 - no conditioning measured: only the eps floor below
        moved = loop_ref.value
    sensitivity = (moved - loop_ref.value).abs().amax((1, 2)).to(measured)
    floor = eps * loop_ref.value.abs().amax((1, 2)).to(measured)
    ceiling = ROUNDING_CEILING * (sensitivity + floor)
    over = measured > ceiling
    if bool(over.any()):
        s = int((measured / ceiling.clamp(min=torch.finfo(ceiling.dtype).tiny)).argmax())
        notes.append(
            f"the {str(flat.x.dtype).removeprefix('torch.')} loop differs from the float64 loop by "
            f"{float(measured[s]):.3g} at sample {s}, more than rounding in that dtype explains "
            f"there (at most {float(ceiling[s]):.3g}, NOTE [plausible rounding]): the excess is "
            "not allowed to any method, so a formula wrong only in that dtype is flagged")
    return torch.minimum(measured, ceiling)


# NOTE [kinks the steps cross]
# The steps of NOTE [finite-difference error estimate] are about 1e-3 |x| in float64, so a ReLU
# whose input sits closer than that to 0 is crossed by all three, and every difference quotient
# carries the kink's error alike. The kink test looks for second differences that do not scale
# with the step; under a larger smooth curvature (s f'' at s ~ 1e-3) it can miss a kink's. On a
# stock nn.TransformerEncoderLayer (feed-forward 2048 wide, ReLU: 131,072 units on 4 samples of 16
# tokens, some within 1e-5 of 0) finite differences read 0.04820 where the derivative is 0.048275,
# and the check called torch's correct backward wrong. So before the loop is judged wrong, the
# input entries where it is off finite differences by more than their bound are differenced again
# at steps KINK_SHRINK times smaller, and those entries take that value and bound. There the smooth
# curvature shrinks with the step while a crossed kink's second difference does not, so the kink
# test finds what it missed and widens the bound; a kink only the large steps crossed is gone; a
# wrong backward (1% off) stays as far off, under a bound that is still ~1e-8 relative (rounding
# at the smaller steps, float64). The cost is at most the first finite differences again, and only
# where the loop and finite differences disagree (on that layer, in 1016 of its 1024 input
# columns: 4 s more on a 24 s check). float64 references only: in float32 the smaller steps'
# rounding would swamp the question.
KINK_SHRINK = 256


def _refined_at_kinks(ref_flat: Flat, independent: bool, loop_ref: Reference | None,
                      fd: Reference, notes: list[str]) -> Reference:
    """``fd`` with the entries NOTE [kinks the steps cross] re-differences at smaller steps."""
    if loop_ref is None or ref_flat.x.dtype != torch.float64 or fd.error is None:
        return fd
    suspect = (loop_ref.value - fd.value).abs() > fd.error
    if not bool(suspect.any()):
        return fd
    columns = suspect.any(1).any(0).nonzero().flatten().tolist()
    value, error = finite_differences(ref_flat, independent, columns=columns,
                                      shrink=1 / KINK_SHRINK)
    # Flat at both step sizes where steps KINK_SHRINK x larger move: a staircase (an output
    # rounded through bfloat16 read 0 with a bound of 1e-8 at both, and the loop's 0.98 was
    # called a wrong backward, a second fresh user). The entry is not pinned down: its bound is
    # what the large steps read, widened by the same KINK_SHRINK, so no value near the derivative
    # they see is refuted. (Flat at those too, the output is constant there, and a loop that is
    # not 0 is wrong.)
    flat = suspect & (value == 0) & (fd.value == 0)
    if bool(flat.any()):
        wide, wide_error = finite_differences(ref_flat, independent, columns=columns,
                                              shrink=KINK_SHRINK)
        error = torch.where(flat & (wide != 0), (wide.abs() + wide_error) * KINK_SHRINK, error)
    # flat at the smaller steps only where the default ones moved (a ReLU's flat side, a
    # staircase): bounded by what the default steps read
    error = torch.where((value == 0) & (fd.value != 0),
                        torch.maximum(error, fd.value.abs() + fd.error), error)
    count = int(suspect.sum())
    notes.append(f"finite differences again at steps {KINK_SHRINK}x smaller at {count} "
                 f"entr{'y' if count == 1 else 'ies'} where the loop was off them by more than "
                 "their bound: a kink the default steps crossed reads as a wrong derivative "
                 "(NOTE [kinks the steps cross])")
    return Reference(fd.name, torch.where(suspect, value, fd.value),
                     torch.where(suspect, error, fd.error), magnitude=fd.magnitude)


def _loop_reference(ref_flat: Flat, notes: list[str]) -> Reference | None:
    try:
        return Reference("loop", loop(ref_flat))
    except Exception as e:  # noqa: BLE001
        notes.append(f"the loop reference failed ({type(e).__name__}: {first_line(e)}); "
                     "methods are judged against finite differences alone")
        return None


def _trusted_references(loop_ref: Reference | None, fd: Reference, dtype: torch.dtype, rtols,
                        scales: Scales, notes: list[str]) -> tuple[tuple[Reference, ...], list[str]]:
    """Loop and FD when they agree; FD alone, and a finding, when the loop is wrong."""
    if loop_ref is None:
        return (fd,), []
    agreement = compare(loop_ref.value, fd, dtype, rtols, derivative_scale=scales.derivative)
    if agreement.passed:
        return (loop_ref, fd), []
    finding = (
        f"the {str(dtype).removeprefix('torch.')} loop reference disagrees with finite "
        f"differences (furthest over its bound at {agreement.worst_index}: loop "
        f"{agreement.value_at_worst:.6g}, finite differences {agreement.reference_at_worst:.6g}, "
        f"allowed {agreement.allowed_at_worst:.3g}; max abs error "
        f"{agreement.max_abs_error:.3g} over all entries), "
        f"beyond their error bound: {LOOP_DISAGREES}, so the loop is not trusted, every method "
        "is judged against finite differences, which use no derivative formula, and the check "
        "fails whatever the methods' dtype"
    )
    return (fd,), [finding]


# NOTE [warnings inside a check]
# torch warns from inside its transforms (forward AD's first use calls the deprecated
# torch.jit.script; vmap falls back to loops with a UserWarning). A downstream suite that runs with
# `-W error` would turn those into exceptions, and every forward-mode method would become
# "unsupported" -- silently hiding a wrong jvp. So a check records warnings instead of raising them.
@contextlib.contextmanager
def warnings_recorded() -> Iterator[None]:
    """Record (not raise) the warnings raised inside: NOTE [warnings inside a check]."""
    with warnings.catch_warnings(record=True):
        warnings.simplefilter("always")
        yield


@contextlib.contextmanager
def isolated(fn: object) -> Iterator[None]:
    """Around a check of ``fn``: warnings recorded, and a module's buffers (running statistics)
    put back afterwards (:func:`kept_buffers`)."""
    with warnings_recorded(), kept_buffers(fn.modules() if isinstance(fn, torch.nn.Module) else ()):
        yield


@contextlib.contextmanager
def kept_buffers(modules: Iterable[torch.nn.Module]) -> Iterator[None]:
    """The buffers of ``modules`` (a BatchNorm's running statistics and its count of batches) put
    back as they were on the way out, however many forwards ran inside: what jacverify runs of a
    model beyond the caller's own call leaves it as it found it.

    >>> bn = torch.nn.BatchNorm1d(2)
    >>> with kept_buffers([bn]):
    ...     _ = bn(torch.randn(4, 2)), bn(torch.randn(4, 2))
    >>> int(bn.num_batches_tracked), float(bn.running_mean.abs().sum())
    (0, 0.0)
    """
    saved = [(b, b.detach().clone()) for m in modules for b in m.buffers(recurse=False)]
    try:
        yield
    finally:
        with torch.no_grad():
            for b, copy in saved:
                b.copy_(copy)
