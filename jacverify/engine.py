"""The check: pre-checks, references, every applicable method, comparisons, one Report."""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import time
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from functools import partial

import torch

from jacverify.case import Case, Flat, flatten, make_case
from jacverify.compare import Reference, compare, tolerances
from jacverify.errors import (
    FunctionRaised,
    InvalidArgument,
    JacobianTooLarge,
    MismatchError,
    NotApplicable,
)
from jacverify.methods import Method, get_methods
from jacverify.methods.loops import loop
from jacverify.oracles import Coupling, check_coupling, check_determinism, finite_differences
from jacverify.oracles.projections import (
    DEFAULT_PROBES,
    Probes,
    draw_probes,
    project,
    projection_reference,
)
from jacverify.report import MethodResult, Report

__all__ = ["check", "check_method", "assert_jacobians_agree", "DEFAULT_MAX_MEMORY"]

DEFAULT_MAX_MEMORY = 2**30  # bytes any one method or reference may materialise


def check(
    fn: Callable[..., torch.Tensor],
    inputs: torch.Tensor | Sequence[torch.Tensor],
    *,
    methods: Sequence[str] | None = None,
    batch_axis: int = 0,
    out_batch_axis: int | None = None,
    dtype: torch.dtype | None = None,
    device: str | torch.device | None = None,
    seed: int = 0,
    rtol: Mapping[torch.dtype, float] | None = None,
    max_memory: int = DEFAULT_MAX_MEMORY,
    extra_methods: Sequence[Method] = (),
    warm_timing: bool = True,
    verification: str = "full",
    probes: int = DEFAULT_PROBES,
    _case_sink: Callable[[Case], None] | None = None,
) -> Report:
    """Compute per-sample Jacobians every applicable way and cross-check them.

    Each method is compared with float64 finite differences and with the float64 ``loop``; see the
    README for the statuses and the tolerance rule.

    Args:
        fn: an ``nn.Module`` or function of the inputs.
        inputs: a floating tensor or a tuple of them, sharing a batch axis.
        methods: names of registered methods to run; all of them by default.
        batch_axis, out_batch_axis: the batch axis of the inputs and of the outputs.
        dtype, device: where the methods run (references run in float64 where possible).
        seed: seeds the coupling probes; printed in the report.
        rtol: per-dtype overrides merged into NOTE [tolerances]'s defaults.
        max_memory: bytes a method may materialise; larger methods are ``not_applicable``.
        extra_methods: methods to run besides the registered ones (e.g. a user's own).
        warm_timing: time a quick method twice and keep the faster (NOTE [check timings]);
            False runs each method once (the fuzz loop, which needs no timings).
        verification: "full" compares every entry with the finite-difference Jacobian and the
            loop; "projection" compares ``probes`` random projections uᵀ J v with directional
            finite differences (NOTE [projection probes]): a few forward passes per probe, for
            inputs too wide for 6 N of them. ``report.verification`` says which ran.

    Returns:
        A :class:`~jacverify.Report`; ``report.passed`` is False when any method disagrees.

    Raises:
        InvalidArgument, FunctionRaised, NondeterministicFunction, NonFiniteOutput,
        JacobianTooLarge: the case itself cannot be checked; the message says why.

    >>> net = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Tanh(), torch.nn.Linear(4, 2))
    >>> report = check(net, torch.randn(5, 3), methods=["vmap_jacrev", "sum_trick"])
    >>> report.passed, [r.status for r in report.results]
    (True, ['agree', 'agree'])
    """
    chosen = get_methods(methods) + tuple(extra_methods)
    rtols = tolerances(rtol)
    if not isinstance(max_memory, int) or max_memory <= 0:
        raise InvalidArgument(f"max_memory={max_memory!r} must be a positive number of bytes")
    case = make_case(fn, inputs, batch_axis=batch_axis, out_batch_axis=out_batch_axis,
                     dtype=dtype, device=device, seed=seed)
    if _case_sink is not None:
        _case_sink(case)
    if verification not in ("full", "projection"):
        raise InvalidArgument(f"verification={verification!r} must be 'full' or 'projection'")
    if not isinstance(probes, int) or isinstance(probes, bool) or probes < 1:
        raise InvalidArgument(f"probes={probes!r} must be a positive int")
    with _buffers_restored(case.fn), _warnings_isolated():
        if verification == "projection":
            return _check_projected(case, chosen, rtols, max_memory, 2 if warm_timing else 1,
                                    probes)
        return _check(case, chosen, rtols, max_memory, 2 if warm_timing else 1)


@dataclass(frozen=True)
class _Verified:
    """The per-sample Jacobian references of a case, after the pre-checks: what every quantity's
    references are built from."""

    flat: Flat
    ref_flat: Flat
    coupling: Coupling
    loop: Reference | None
    refs: tuple[Reference, ...]
    scales: _Scales
    notes: tuple[str, ...]


def _verify(case: Case, rtols, max_memory: int) -> _Verified:
    flat = flatten(case)
    need = 3 * flat.batch_size * flat.n_out * flat.n_in * 8
    if need > max_memory:
        raise JacobianTooLarge(
            f"the references need {need / 2**20:.1f} MiB (B={flat.batch_size}, out={flat.n_out}, "
            f"in={flat.n_in}, float64, three copies) but max_memory={max_memory} bytes; check a "
            "smaller batch or smaller inputs, or raise max_memory"
        )
    notes: list[str] = []
    check_determinism(flat)
    ref_flat = _reference_version(case, notes) or flat
    noise = check_determinism(ref_flat, "the reference copy of the function")
    coupling = check_coupling(ref_flat, case.seed, noise)
    fd_value, fd_error = finite_differences(ref_flat, independent=not coupling.coupled)
    fd = Reference("finite_differences", fd_value, fd_error)
    loop_ref = _loop_reference(ref_flat, notes)
    scales = _Scales(_measured_rounding(flat, loop_ref), _derivative_scale(ref_flat))
    refs = _trusted_references(loop_ref, fd, ref_flat.x.dtype, rtols, scales, notes)
    if loop_ref not in refs:
        scales = _Scales(0.0, scales.derivative)  # measured against a loop that is not trusted
    elif scales.rounding > torch.finfo(flat.x.dtype).eps ** 0.5 * float(loop_ref.value.abs().max()):
        notes.append(
            f"this Jacobian is ill-conditioned in {str(flat.x.dtype).removeprefix('torch.')}: the "
            f"loop there differs from the float64 loop by {scales.rounding:.3g}, more than "
            "sqrt(eps) of max|J|; that measured rounding (x8) is allowed to every method")
    return _Verified(flat, ref_flat, coupling, loop_ref, refs, scales, tuple(notes))


def _check(case: Case, chosen: Sequence[Method], rtols, max_memory: int, runs: int) -> Report:
    v = _verify(case, rtols, max_memory)
    results = [_run(m, v.flat, v.coupling.reason, max_memory, v.refs, v.loop, case.dtype, rtols,
                    v.scales, runs) for m in chosen]
    return Report(case, tuple(results), tuple(r.name for r in v.refs), v.coupling, v.refs[0].value,
                  v.ref_flat.x.dtype, v.notes, v.flat)


def _check_projected(case: Case, chosen: Sequence[Method], rtols, max_memory: int, runs: int,
                     probes: int) -> Report:
    """Every method's Jacobian reduced to uᵀ J v per probe, against directional FD of them."""
    flat = flatten(case)
    notes: list[str] = []
    check_determinism(flat)
    ref_flat = _reference_version(case, notes) or flat
    noise = check_determinism(ref_flat, "the reference copy of the function")
    coupling = check_coupling(ref_flat, case.seed, noise)
    drawn = draw_probes(ref_flat, probes, case.seed, coupling.coupled)
    ref, scale = projection_reference(ref_flat, drawn)
    notes.append(f"verification by {probes} random projections uᵀJv against directional finite "
                 "differences (NOTE [projection probes]), not entry by entry: the report's "
                 "indices are probes")
    scales = _Scales(0.0, scale)
    results = [_run(dataclasses.replace(m, compute=partial(_projected, m.compute, drawn)), flat,
                    coupling.reason, max_memory, (ref,), None, case.dtype, rtols, scales, runs,
                    expected=(probes,)) for m in chosen]
    return Report(case, tuple(results), (ref.name,), coupling, ref.value, ref_flat.x.dtype,
                  tuple(notes), flat, index_labels=("probe",),
                  verification=f"projection ({probes} probes)")


def _projected(compute: Callable[[Flat], torch.Tensor], drawn: Probes, flat: Flat) -> torch.Tensor:
    value = compute(flat)
    expected = (flat.batch_size, flat.n_out, flat.n_in)
    if not isinstance(value, torch.Tensor) or tuple(value.shape) != expected:
        raise NotApplicable(f"returned {getattr(value, 'shape', type(value).__name__)}, "
                            f"expected shape {expected}")
    return project(value, drawn)


def _reference_version(case: Case, notes: list[str]) -> Flat | None:
    """The case in float64: a module copied with ``.double()``, a function called on float64."""
    if case.dtype == torch.float64:
        return None
    fn = case.fn
    if isinstance(fn, torch.nn.Module):
        fn = copy.deepcopy(fn).to(torch.float64)
    try:
        ref = flatten(case, fn, torch.float64)
        with torch.no_grad():
            ok = ref.fn(ref.x).dtype == torch.float64
    except (FunctionRaised, InvalidArgument, RuntimeError):
        ok = False
    if ok:
        return ref
    notes.append(
        f"references computed in {str(case.dtype).removeprefix('torch.')}: the function did not run "
        "in float64 (pass an nn.Module, or a function that follows its input's dtype, to get "
        "float64 references); finite-difference error bounds account for the lower precision"
    )
    return None


@dataclass(frozen=True)
class _Scales:
    """Absolute scales every comparison of one check shares (NOTE [tolerances])."""

    rounding: float  # max |loop in the case's dtype - loop in float64|
    derivative: float  # max|f(x)| / max(1, max|x|)


def _derivative_scale(flat: Flat) -> float:
    with torch.no_grad():
        return float(flat.fn(flat.x).abs().max()) / max(1.0, float(flat.x.abs().max()))


def _measured_rounding(flat: Flat, loop_ref: Reference | None) -> float:
    """max |loop in the case's dtype - loop in float64|, when they differ in precision."""
    if loop_ref is None or flat.x.dtype == loop_ref.value.dtype:
        return 0.0
    try:
        low = loop(flat)
    except Exception:  # noqa: BLE001 - the loop method reports its own failure
        return 0.0
    return float((low.to(loop_ref.value) - loop_ref.value).abs().max())


def _loop_reference(ref_flat: Flat, notes: list[str]) -> Reference | None:
    try:
        return Reference("loop", loop(ref_flat))
    except Exception as e:  # noqa: BLE001
        notes.append(f"the loop reference failed ({type(e).__name__}: {_first_line(e)}); "
                     "methods are judged against finite differences alone")
        return None


def _trusted_references(loop_ref: Reference | None, fd: Reference, dtype: torch.dtype, rtols,
                        scales: _Scales, notes: list[str]) -> tuple[Reference, ...]:
    """Loop and FD when they agree; FD alone when the loop is wrong (or failed)."""
    if loop_ref is None:
        return (fd,)
    agreement = compare(loop_ref.value, fd, dtype, rtols, derivative_scale=scales.derivative)
    if agreement.passed:
        return (loop_ref, fd)
    notes.append(
        "the loop reference disagrees with finite differences (max abs error "
        f"{agreement.max_abs_error:.3g} at {agreement.worst_index}), beyond their error bound: a "
        "backward formula of the function is wrong, so loop is not trusted and every method is "
        "judged against finite differences, which use no derivative formula"
    )
    return (fd,)


def _run(method: Method, flat: Flat, coupled: str | None, max_memory: int,
         refs: tuple[Reference, ...], loop_ref: Reference | None,
         dtype: torch.dtype, rtols, scales: _Scales, runs: int,
         expected: tuple[int, ...] | None = None,
         finding: Callable[[torch.Tensor], str | None] | None = None) -> MethodResult:
    meta = dict(method=method.name, quantity=method.quantity, mode=method.mode,
                vectorized=method.vectorized)
    reason = method.supports(flat, coupled, max_memory)
    if reason:
        return MethodResult(**meta, status="not_applicable", reason=reason)
    try:
        value, seconds = _timed(method.compute, flat, runs)
    except NotApplicable as e:
        return MethodResult(**meta, status="not_applicable", reason=str(e))
    except Exception as e:  # noqa: BLE001 - a method that raises is reported, the check goes on
        return MethodResult(**meta, status="unsupported",
                            reason=f"{type(e).__name__}: {_first_line(e)}")
    expected = expected or (flat.batch_size, flat.n_out, flat.n_in)
    if not isinstance(value, torch.Tensor) or tuple(value.shape) != expected:
        got = tuple(value.shape) if isinstance(value, torch.Tensor) else type(value).__name__
        return MethodResult(**meta, status="mismatch", time_s=seconds,
                            reason=f"returned {got}, expected shape {expected}")
    trusted = tuple(compare(value, r, dtype, rtols, scales.rounding, scales.derivative)
                    for r in refs)
    shown = () if loop_ref is None or loop_ref in refs else (
        compare(value, loop_ref, dtype, rtols, derivative_scale=scales.derivative),)
    status = "agree" if all(c.passed for c in trusted) else "mismatch"
    return MethodResult(**meta, status=status, comparisons=trusted, time_s=seconds, untrusted=shown,
                        reason=finding(value) if finding else None)


# NOTE [check timings]
# A check times each method on its own result run, and once more when that run took under a
# second, keeping the faster: the first call of a transform pays one-off set-up (forward AD took 600 ms on its
# first call here) that would otherwise decide "fastest". `jacverify bench` measures properly.
RETIME_BELOW_S = 1.0


def _timed(compute: Callable[[Flat], torch.Tensor], flat: Flat,
           runs: int) -> tuple[torch.Tensor, float]:
    sync = torch.cuda.synchronize if flat.x.is_cuda else (lambda: None)
    best, value = float("inf"), None
    for _ in range(runs):
        sync()
        start = time.perf_counter()
        result = compute(flat)
        sync()
        elapsed = time.perf_counter() - start
        value = result if value is None else value
        best = min(best, elapsed)
        if elapsed >= RETIME_BELOW_S:
            break
    return value, best


def _first_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return text[0] if text else repr(e)


# NOTE [warnings inside a check]
# torch warns from inside its transforms (forward AD's first use calls the deprecated
# torch.jit.script; vmap falls back to loops with a UserWarning). A downstream suite that runs with
# `-W error` would turn those into exceptions, and every forward-mode method would become
# "unsupported" -- silently hiding a wrong jvp. So a check records warnings instead of raising them.
@contextlib.contextmanager
def _warnings_isolated() -> Iterator[None]:
    with warnings.catch_warnings(record=True):
        warnings.simplefilter("always")
        yield


@contextlib.contextmanager
def _buffers_restored(fn: object) -> Iterator[None]:
    """Running stats and other buffers a module updates while checked are put back afterwards."""
    if not isinstance(fn, torch.nn.Module):
        yield
        return
    saved = {name: b.detach().clone() for name, b in fn.named_buffers()}
    try:
        yield
    finally:
        with torch.no_grad():
            for name, b in fn.named_buffers():
                b.copy_(saved[name])


def check_method(
    method: Callable[..., torch.Tensor | Sequence[torch.Tensor]],
    fn: Callable[..., torch.Tensor],
    inputs: torch.Tensor | Sequence[torch.Tensor],
    *,
    methods: Sequence[str] = (),
    **options,
) -> Report:
    """Check a user's own per-sample Jacobian implementation against the references.

    ``method(fn, *inputs)`` must return the per-sample Jacobian with the batch first, shaped
    (B, *out, *in) or (B, out, in), or a tuple of them, one per input. Takes the options of
    :func:`check`; ``methods`` (none by default) adds registered methods beside it.

    >>> net = torch.nn.Linear(3, 2)
    >>> mine = lambda f, x: f.weight.expand(x.shape[0], 2, 3)
    >>> check_method(mine, net, torch.randn(4, 3)).passed
    True
    """
    if not callable(method):
        raise InvalidArgument(f"method={method!r} is not callable; pass f(fn, *inputs) -> Jacobian")
    name = getattr(method, "__name__", None) or type(method).__name__
    holder: list[Case] = []

    def compute(flat: Flat) -> torch.Tensor:
        out = method(holder[0].fn, *holder[0].inputs)
        parts = out if isinstance(out, (tuple, list)) else (out,)
        return torch.cat([p.reshape(flat.batch_size, flat.n_out, -1) for p in parts], dim=2)

    user = Method(name, compute, "user", vectorized=False, assumes_independent=False)  # type: ignore[arg-type]
    extra = (*options.pop("extra_methods", ()), user)
    return check(fn, inputs, methods=methods, extra_methods=extra, _case_sink=holder.append,
                 **options)


def assert_jacobians_agree(
    fn: Callable[..., torch.Tensor],
    inputs: torch.Tensor | Sequence[torch.Tensor],
    **options,
) -> Report:
    """Like :func:`check`, but raise :class:`~jacverify.MismatchError` when a method disagrees,
    or when a method named in ``methods`` could not run.

    >>> assert_jacobians_agree(torch.nn.Linear(3, 2), torch.randn(4, 3), methods=["sum_trick"]).passed
    True
    """
    report = check(fn, inputs, **options)
    asked = set(options.get("methods") or ())
    missing = [r for r in report.results if r.method in asked and r.status != "agree"
               and r.status != "mismatch"]
    if not report.passed or missing:
        message = report.failure_message() if not report.passed else ""
        for r in missing:
            message += f"\nasked-for method {report.describe(r)}"
        raise MismatchError(message.strip(), report)
    return report
