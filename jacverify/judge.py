"""The one judge: run a candidate, compare it with the trusted references, name the outcome.

Every entry point -- ``check``, the quantity checks, ``check_method``, ``batch_jacobian``'s verify,
the CLI, the plugin, the fuzzers and the operator sweep -- names results with :class:`Status` and
decides a verdict with :func:`verdict`. This is also the one place that refuses to pass what was not
verified (NOTE [earned verdict]).
"""

from __future__ import annotations

import enum
import functools
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

import torch

from jacverify.case import Flat
from jacverify.compare import Comparison, Reference, Scales, compare
from jacverify.errors import NotApplicable
from jacverify.measure import release_freed_memory, resident_bytes, synchronizer, timer

__all__ = ["Status", "Verdict", "MethodResult", "judge", "timed", "verdict", "campaign_verdict",
           "first_line",
           "raised", "describe_worst", "warm_up_transforms", "RETIME_BELOW_S"]


class _Named(str, enum.Enum):
    """A string-valued enumeration that prints, formats and reprs as its value
    (``f"{Status.AGREE}" == "agree"``), so lists of statuses read like the strings they equal."""

    def __str__(self) -> str:
        return str(self.value)

    def __repr__(self) -> str:
        return repr(self.value)

    __format__ = str.__format__


class Status(_Named):
    """What one candidate (a method, a check of a rule, a route of an operator) gave.

    Members compare equal to their value, so ``result.status == "agree"`` keeps working.
    """

    AGREE = "agree"  # compared with a trusted reference, within tolerance
    MISMATCH = "mismatch"  # a wrong value, shape or dtype
    KNOWN = "known"  # a mismatch PyTorch itself declares (skipped or expected to fail): still wrong
    NOT_APPLICABLE = "not_applicable"  # its assumption does not hold here; the reason says which
    UNSUPPORTED = "unsupported"  # it raised (no batching rule, no forward-AD formula, ...)
    SKIPPED = "skipped"  # nothing to compare (no reference can be built here); the reason says why


WRONG = (Status.MISMATCH, Status.KNOWN)


class Verdict(_Named):
    """How a whole check ends (NOTE [earned verdict])."""

    PASSED = "passed"  # at least one candidate verified against a trusted reference, none wrong
    FAILED = "failed"  # a candidate (or the function's own derivative formula) is wrong
    UNVERIFIED = "unverified"  # nothing wrong was seen, but nothing was verified either
    REJECTED = "rejected"  # a drawn example outside the function's domain: a fuzzer draws another


# NOTE [earned verdict]
# A check passes only when at least one candidate was compared with a trusted reference and agreed,
# and nothing disagreed. Every other ending has its own verdict: FAILED when a candidate is wrong,
# when a method the caller required (check_method's own implementation) is wrong, or when the
# references themselves found a wrong derivative formula (the float64 loop against finite
# differences); UNVERIFIED when no candidate agreed (every method raised, none applied, methods=[],
# the only method was the user's and it raised, a Hessian check of a ReLU network), when a
# required method could not be verified, or when the references pinned down nothing to agree with
# (`unresolved`: NOTE [unstable finite differences]). A route (NOTE [route probes]) computes projections, not
# the quantity: where the check ran methods of the quantity, one of them must be verified (routes
# that agree do not earn a pass for methods that could not run); a route that disagrees fails it
# like any candidate. `verdict` is the only function that says PASSED.
def verdict(results: Iterable[MethodResult], *, required: Sequence[str] = (),
            findings: Sequence[str] = (), unresolved: str | None = None) -> Verdict:
    """The verdict of a set of results under NOTE [earned verdict].

    Args:
        results: one per candidate.
        required: names of candidates that must themselves agree (a user's own method).
        findings: wrong derivatives the references found on their own (each makes it FAILED).
        unresolved: why the references pinned down no entry, or None: then agreeing verifies
            nothing.

    >>> ok = MethodResult("a", "batch_jacobian", "reverse", False, Status.AGREE,
    ...                   comparisons=(Comparison("loop", True, 0, 0, (0,), 0, 0, 1, ""),))
    >>> raised_ = MethodResult("b", "batch_jacobian", "reverse", False, Status.UNSUPPORTED)
    >>> verdict([ok, raised_]), verdict([raised_]), verdict([ok], findings=["bad backward"])
    ('passed', 'unverified', 'failed')
    >>> verdict([ok, raised_], required=["b"]) is Verdict.UNVERIFIED
    True
    >>> verdict([ok], unresolved="every entry sits on a kink")
    'unverified'
    """
    results = tuple(results)
    by_name = {r.method: r for r in results}
    if findings or any(r.status in WRONG for r in results):
        return Verdict.FAILED
    if unresolved or any(name not in by_name or not by_name[name].verified for name in required):
        return Verdict.UNVERIFIED
    earning = [r for r in results if r.quantity != "route"] or results
    return Verdict.PASSED if any(r.verified for r in earning) else Verdict.UNVERIFIED


def campaign_verdict(failed: bool, verified: int) -> Verdict:
    """A fuzz campaign's verdict under NOTE [earned verdict]: failed when an example failed, passed
    only when at least one example was verified, unverified otherwise.

    >>> campaign_verdict(False, 3), campaign_verdict(False, 0), campaign_verdict(True, 3)
    ('passed', 'unverified', 'failed')
    """
    if failed:
        return Verdict.FAILED
    return Verdict.PASSED if verified else Verdict.UNVERIFIED


@dataclass(frozen=True)
class MethodResult:
    """One candidate on one case: its status, its comparisons with the references, its time.

    ``comparisons`` are against the trusted references and decide the status; ``untrusted`` are
    against a reference shown for information only (the loop, when it disagreed with finite
    differences). ``reason`` says why a method is ``not_applicable`` or ``unsupported`` (the error
    it raised), or what was wrong with a result of the wrong shape.
    """

    method: str
    quantity: str
    mode: str
    vectorized: bool
    status: Status
    comparisons: tuple[Comparison, ...] = ()
    reason: str | None = None
    time_s: float | None = None
    untrusted: tuple[Comparison, ...] = ()

    @property
    def verified(self) -> bool:
        """True when it agreed with at least one trusted reference it was compared with."""
        return self.status == Status.AGREE and bool(self.comparisons)

    @property
    def worst(self) -> Comparison | None:
        """The comparison that decided the status: the first failing one, else the closest call."""
        failing = [c for c in self.comparisons if not c.passed]
        if failing:
            return failing[0]
        return max(self.comparisons, key=lambda c: c.max_abs_error / max(c.allowed_at_worst, 1e-300),
                   default=None)

    @property
    def max_abs_error(self) -> float | None:
        return self.worst.max_abs_error if self.worst else None

    @property
    def max_rel_error(self) -> float | None:
        return self.worst.max_rel_error if self.worst else None

    @property
    def worst_index(self) -> tuple[int, ...] | None:
        return self.worst.worst_index if self.worst else None


def describe_worst(c: Comparison, where: str | None = None) -> str:
    """The one wording of a worst entry: index, the user's coordinates, both values, the allowance.

    >>> c = Comparison("loop", False, 0.5, 0.5, (0, 1, 0), 1.5, 1.0, 1e-8, "rule")
    >>> describe_worst(c, "sample 0, output 1, input 0")
    'worst entry (0, 1, 0) (sample 0, output 1, input 0): value 1.5, reference 1 (loop), allowed error 1e-08'
    """
    at = f" ({where})" if where else ""
    return (f"worst entry {c.worst_index}{at}: value {c.value_at_worst:.10g}, reference "
            f"{c.reference_at_worst:.10g} ({c.reference}), allowed error {c.allowed_at_worst:.3g}")


def first_line(e: BaseException) -> str:
    """The first line of an exception's message (its repr when the message is empty)."""
    text = str(e).strip().splitlines()
    return text[0] if text else repr(e)


def raised(e: BaseException, limit: int = 200) -> str:
    """``Type: first line of the message``, as an ``unsupported`` result's reason."""
    return f"{type(e).__name__}: {first_line(e)[:limit]}"


# NOTE [check timings]
# Every transform is warmed up once per process before anything is timed (`warm_up_transforms`):
# forward AD's first use cost 3-10 s here, and was charged to whichever forward method ran first
# (dual_loop at "0.0x vs loop"). A check then times each method on its own result run, and once
# more when that run took under a second, keeping the faster. `jacverify bench` measures properly.
RETIME_BELOW_S = 1.0


@functools.cache
def warm_up_transforms(mode: str = "reverse") -> None:
    """Run every transform a method of ``mode`` ("reverse" or "forward") uses once, on a 2x2
    tensor, so their one-off set-up (forward AD's first use took 3-10 s on a loaded machine here)
    is paid outside any timed region (NOTE [check timings]). Once per process and mode: a check
    whose methods are all reverse mode never pays forward AD's set-up."""
    from torch.autograd import forward_ad
    from torch.func import jacfwd, jacrev, jvp, vjp, vmap

    x = torch.ones(2, 2, dtype=torch.float64, requires_grad=True)
    if mode == "forward":
        with forward_ad.dual_level():
            forward_ad.unpack_dual(torch.sin(forward_ad.make_dual(x.detach(), torch.ones_like(x))))
        vmap(jacfwd(torch.sin))(x.detach())
        jvp(torch.sin, (x.detach(),), (torch.ones_like(x),))
        torch.autograd.functional.jacobian(torch.sin, x.detach(), vectorize=True,
                                           strategy="forward-mode")
        return
    vmap(jacrev(torch.sin))(x.detach())
    vjp(torch.sin, x.detach())[1](torch.ones_like(x))
    torch.autograd.grad(torch.sin(x).sum(), x, create_graph=True)


def timed(compute: Callable[[Flat], torch.Tensor], flat: Flat,
          runs: int, mode: str = "forward") -> tuple[torch.Tensor, float]:
    """``compute(flat)`` and its best time over ``runs`` calls (NOTE [check timings]), in seconds,
    synchronised on CUDA; ``mode``: the method's ("reverse" warms up reverse mode only)."""
    warm_up_transforms("reverse")
    if mode != "reverse":
        warm_up_transforms("forward")
    sync = synchronizer(flat.x.device)
    clock = timer(flat.x.device)  # NOTE [which clock]
    best, value = float("inf"), None
    for _ in range(runs):
        sync()
        start = clock()
        result = compute(flat)
        sync()
        elapsed = clock() - start
        value = result if value is None else value
        best = min(best, elapsed)
        if elapsed >= RETIME_BELOW_S:
            break
    return value, best  # type: ignore[return-value]


def judge(method, flat: Flat, coupled: str | None, max_memory: int,
          refs: tuple[Reference, ...], loop_ref: Reference | None,
          dtype: torch.dtype, rtols, scales: Scales, runs: int,
          expected: tuple[int, ...] | None = None,
          finding: Callable[[torch.Tensor], str | None] | None = None,
          budget=None, units=None) -> MethodResult:
    """Run one registered method on ``flat`` and judge it against the trusted ``refs``.

    Args:
        method: a :class:`~jacverify.Method`.
        flat: the canonical case (NOTE [canonical form]).
        coupled: why samples interact, or None; methods that assume independence do not apply.
        max_memory: bytes the method may materialise (its own estimate decides).
        refs: the trusted references; the status is ``agree`` only when every one agrees.
        loop_ref: the loop, shown for information when it is not among ``refs``.
        dtype, rtols, scales: NOTE [tolerances].
        runs: timed runs (NOTE [check timings]).
        expected: the result's shape, (B, M, N) by default.
        finding: a check of the value itself (a Hessian's symmetry); its text becomes the reason.
        budget, units: the check's method budget and unit costs (:mod:`jacverify.costs`): a
            method estimated over either is ``not_applicable`` with its estimate.

    Returns:
        A :class:`MethodResult`. A method that raises is ``unsupported`` with the error, one that
        raises :class:`~jacverify.NotApplicable` is ``not_applicable``, a wrong shape or type is a
        ``mismatch``. Nothing is raised but ``KeyboardInterrupt`` and the like.
    """
    before = resident_bytes()
    try:
        return _judge(method, flat, coupled, max_memory, refs, loop_ref, dtype, rtols, scales,
                      runs, expected, finding, budget, units)
    finally:  # the method's tensors are gone with _judge's frame: NOTE [freed memory]
        release_freed_memory(since=before)


def _judge(method, flat: Flat, coupled: str | None, max_memory: int,
           refs: tuple[Reference, ...], loop_ref: Reference | None,
           dtype: torch.dtype, rtols, scales: Scales, runs: int,
           expected: tuple[int, ...] | None, finding, budget, units) -> MethodResult:
    meta = dict(method=method.name, quantity=method.quantity, mode=method.mode,
                vectorized=method.vectorized)
    reason = method.supports(flat, coupled, max_memory, budget, units)
    if reason:
        return MethodResult(**meta, status=Status.NOT_APPLICABLE, reason=reason)
    try:
        value, seconds = timed(method.compute, flat, runs, method.mode)
    except NotApplicable as e:
        return MethodResult(**meta, status=Status.NOT_APPLICABLE, reason=str(e))
    except Exception as e:  # noqa: BLE001 - a method that raises is reported, the check goes on
        return MethodResult(**meta, status=Status.UNSUPPORTED, reason=raised(e, 10_000))
    expected = expected or (flat.batch_size, flat.n_out, flat.n_in)
    if not isinstance(value, torch.Tensor) or tuple(value.shape) != expected:
        got = tuple(value.shape) if isinstance(value, torch.Tensor) else type(value).__name__
        swapped = len(expected) == 3 and got == (expected[0], expected[2], expected[1])
        return MethodResult(**meta, status=Status.MISMATCH, time_s=seconds,
                            reason=f"returned {got}, expected shape {expected}" + (
                                "; it looks transposed: (B, in, out) rather than (B, out, in)"
                                if swapped else ""))
    trusted = tuple(compare(value, r, dtype, rtols, scales.rounding, scales.derivative)
                    for r in refs)
    shown = () if loop_ref is None or loop_ref in refs else (
        compare(value, loop_ref, dtype, rtols, derivative_scale=scales.derivative),)
    status = Status.AGREE if trusted and all(c.passed for c in trusted) else (
        Status.MISMATCH if trusted else Status.SKIPPED)
    reason = finding(value) if finding else None
    if status == Status.MISMATCH and value.ndim == 3 and value.shape[1] == value.shape[2] > 1 \
            and all(compare(value.transpose(1, 2), r, dtype, rtols, scales.rounding,
                            scales.derivative).passed for r in refs):
        reason = ("it looks transposed: its transpose agrees with the reference, so it returned "
                  "(B, in, out) where (B, out, in) is expected")
    return MethodResult(**meta, status=status, comparisons=trusted, time_s=seconds, untrusted=shown,
                        reason=reason)
