"""The check: the reference stage, every applicable method through the judge, one Report."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from typing import Any
from functools import partial

import torch

from jacverify.case import Case, Flat, flatten, make_case
from jacverify.compare import Reference, Scales, tolerances
from jacverify.costs import METHOD_BUDGET, Budget, UnitCosts, choose_verification
from jacverify.errors import NotApplicable
from jacverify.judge import WRONG, describe_worst, judge
from jacverify.methods import Method, get_methods
from jacverify.oracles.projections import (
    DEFAULT_PROBES,
    Probes,
    draw_probes,
    project,
    projection_reference,
)
from jacverify.references import (
    DEFAULT_MAX_MEMORY,
    DEFAULT_TIME_BUDGET,
    Prechecked,
    pinned_nothing,
    isolated,
    prechecked,
    verify,
)
from jacverify.report import Report
from jacverify.routes import judge_routes
from jacverify import validation

__all__ = ["check", "check_method", "assert_jacobians_agree", "DEFAULT_MAX_MEMORY"]


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
    rtol: Mapping[torch.dtype, float] | float | None = None,
    atol: float = 0.0,
    eps: float | None = None,
    max_memory: int = DEFAULT_MAX_MEMORY,
    time_budget: float | None = DEFAULT_TIME_BUDGET,
    extra_methods: Sequence[Method] = (),
    warm_timing: bool = True,
    verification: str = "auto",
    probes: int | None = None,
    method_budget: float | None = METHOD_BUDGET,
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
        rtol: a number for every dtype, or per-dtype overrides merged into NOTE [tolerances]'s
            defaults.
        atol: an absolute error allowed on top of the rule, for every entry (``gradcheck``'s).
        eps: the finite-difference step for every input entry (``gradcheck``'s); None chooses it
            per NOTE [finite-difference error estimate].
        max_memory: bytes a method may materialise; larger methods are ``not_applicable``.
        time_budget: seconds the references may be estimated to take (NOTE [cost estimate]);
            over it the check is refused with ``JacobianTooLarge`` before it starts. None: no limit.
        extra_methods: methods to run besides the registered ones (e.g. a user's own).
        warm_timing: time a quick method twice and keep the faster (NOTE [check timings]);
            False runs each method once (the fuzz loop, which needs no timings).
        verification: "full" compares every entry with the finite-difference Jacobian and the
            loop; "projection" compares ``probes`` random projections uᵀ J v with directional
            finite differences (NOTE [projection probes]): a few forward passes per probe, for
            inputs too wide for 6 N of them, with every AD route checked the same way (NOTE
            [route probes]); "routes" checks the routes, and only the methods named in
            ``methods`` or ``extra_methods`` (none by default: the cost of
            gradcheck's fast mode); "auto" picks full or projection from their estimated costs
            (NOTE [verification choice]). ``report.verification`` says which ran and why.
        probes: the number of projections; None: 4 (``DEFAULT_PROBES``), or 1 with
            ``verification="routes"`` (as gradcheck's fast mode draws one).
        method_budget: a registered method estimated (NOTE [cost model]) to cost more than this
            many times the cheapest one is ``not_applicable`` with its estimate instead of run
            (NOTE [method budget]); methods named in ``methods`` always run; None runs all.

    Returns:
        A :class:`~jacverify.Report`. ``report.verdict`` is ``passed`` only when at least one
        method agreed with the trusted references and nothing disagreed (NOTE [earned verdict]),
        ``failed`` when a method or the function's own derivative formula is wrong, and
        ``unverified`` when no method could be verified (all raised or did not apply).

    Raises:
        InvalidArgument, FunctionRaised, NondeterministicFunction, NonFiniteOutput,
        JacobianTooLarge: the case itself cannot be checked; the message says why.

    >>> net = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Tanh(), torch.nn.Linear(4, 2))
    >>> report = check(net, torch.randn(5, 3), methods=["vmap_jacrev", "sum_trick"])
    >>> report.passed, [r.status for r in report.results]
    (True, ['agree', 'agree'])
    """
    return _run_check(fn, inputs, methods=methods, batch_axis=batch_axis,
                      out_batch_axis=out_batch_axis, dtype=dtype, device=device, seed=seed,
                      rtol=rtol, atol=atol, eps=eps, max_memory=max_memory,
                      time_budget=time_budget,
                      extra_methods=extra_methods,
                      warm_timing=warm_timing, verification=verification, probes=probes,
                      method_budget=method_budget)


def _run_check(fn, inputs, *, methods, batch_axis, out_batch_axis, dtype, device, seed, rtol,
               atol, eps,
               max_memory, time_budget, extra_methods, warm_timing, verification, probes,
               method_budget=METHOD_BUDGET, required: tuple[str, ...] = (),
               on_case: Callable[[Case], None] | None = None) -> Report:
    chosen = get_methods(methods) + tuple(extra_methods)
    validation.check_methods_selected(methods, chosen)
    rtols = tolerances(rtol, atol=atol, eps=eps)
    max_memory = validation.check_bytes("max_memory", max_memory)
    validation.check_choice("verification", verification, ("auto", "full", "projection", "routes"))
    if probes is None:
        probes = 1 if verification == "routes" else DEFAULT_PROBES
    validation.check_int("probes", probes, min_value=1)
    if time_budget is not None:
        time_budget = validation.check_number("time_budget", time_budget, allow_inf=True,
                                              fix="seconds, or None for no estimate")
    if method_budget is not None:
        method_budget = validation.check_number("method_budget", method_budget, allow_inf=True,
                                                fix="a factor such as 5 (the default), or "
                                                "None to run every method")
    case = make_case(fn, inputs, batch_axis=batch_axis, out_batch_axis=out_batch_axis,
                     dtype=dtype, device=device, seed=seed)
    if on_case is not None:
        on_case(case)
    runs = 2 if warm_timing else 1
    with isolated(case.fn):
        pre = prechecked(case, flatten(case))
        rtols = rtols.floored(pre.ref_flat.precision)  # NOTE [effective precision]
        # "routes": the routes, plus only the methods the caller named (NOTE [route probes])
        if verification == "routes" and methods is None:
            chosen = tuple(extra_methods)
        costs = _Costs.of(pre, chosen, None if methods is not None else method_budget) \
            if chosen else None
        why = ""
        if verification == "auto":
            verification, why = choose_verification(costs.units, pre.flat, bool(pre.coupling.coupled),
                                                     costs.cheapest, max_memory)
        if verification in ("projection", "routes"):
            return _check_projected(case, pre, chosen, rtols, max_memory, runs, probes, required,
                                    costs, why, verification)
        return _check(case, pre, chosen, rtols, max_memory, runs, required, time_budget, costs,
                      why)


@dataclasses.dataclass(frozen=True)
class _Costs:
    """The case's unit costs, the cheapest method's estimate and the method budget (NOTE [cost
    model], NOTE [method budget])."""

    units: UnitCosts
    cheapest: float | None
    budget: Budget | None

    @classmethod
    def of(cls, pre: Prechecked, chosen: Sequence[Method], factor: float | None) -> _Costs:
        units = UnitCosts.measure(pre.flat)
        works = [w for m in chosen
                 if not (pre.coupling.coupled and m.assumes_independent)
                 and (w := m.estimate(pre.flat)) is not None]
        cheapest = min((units.seconds(w) for w in works), default=None)
        return cls(units, cheapest, Budget.of(units, works, factor))


def _verification_note(mode: str, why: str) -> str:
    return f"verification: {mode}" + (f", chosen by verification='auto': {why}" if why else "")


def _check(case: Case, pre: Prechecked, chosen: Sequence[Method], rtols, max_memory: int,
           runs: int, required: tuple[str, ...], time_budget: float | None, costs: _Costs,
           why: str) -> Report:
    v = verify(case, rtols, max_memory, time_budget, pre)
    results = [judge(m, v.flat, v.coupling.reason, max_memory, v.refs, v.loop, case.dtype, rtols,
                     v.scales, runs, budget=costs.budget, units=costs.units) for m in chosen]
    notes = v.notes + ((_verification_note("full", why),) if why else ())
    return Report(case, tuple(results), tuple(r.name for r in v.refs), v.coupling, v.refs[0].value,
                  v.ref_flat.x.dtype, notes, v.flat, findings=v.findings, required=required,
                  unresolved=v.unresolved)


def _check_projected(case: Case, pre: Prechecked, chosen: Sequence[Method], rtols,
                     max_memory: int, runs: int, probes: int, required: tuple[str, ...],
                     costs: _Costs | None, why: str, mode: str = "projection") -> Report:
    """Every AD route (NOTE [route probes]) and every method's Jacobian reduced to uᵀ J v per
    probe, against directional FD of them."""
    flat, ref_flat, coupling, notes = pre.flat, pre.ref_flat, pre.coupling, list(pre.notes)
    drawn = draw_probes(ref_flat, probes, case.seed, coupling.coupled)
    ref, scale = projection_reference(ref_flat, drawn)
    notes.append(f"verification by {probes} random projection{'s' * (probes > 1)} uᵀJv against "
                 "directional finite differences (NOTE [projection probes]), not entry by entry: "
                 "the report's indices are (probe, sample)")
    if why:
        notes.append(_verification_note(mode, why))
    scales = Scales(0.0, scale)
    shape = (probes, flat.batch_size)
    # The routes run on the first probe when methods run on all of them (the methods cover every
    # probe; the routes' part is to say which formulas a wrong method's route uses); a route is
    # timed once: it verifies, it is never "the fastest method" (NOTE [route probes]).
    k = 1 if chosen else probes
    first = Reference(ref.name, ref.value[:k], ref.error[:k], magnitude=ref.magnitude[:k])
    results = judge_routes(
        Probes(drawn.u[:k], drawn.v[:k]),
        lambda r: judge(r, flat, coupling.reason, float("inf"), (first,), None, case.dtype, rtols,
                        scales, 1, expected=(k, flat.batch_size)))
    findings = [*pre.findings, *_reference_routes(ref_flat, flat, Probes(drawn.u[:k], drawn.v[:k]),
                                                  first, coupling, rtols, scales, notes)]
    results += [judge(dataclasses.replace(m, compute=partial(_projected, m.compute, drawn)), flat,
                      coupling.reason, max_memory, (ref,), None, case.dtype, rtols, scales, runs,
                      expected=shape, budget=costs.budget, units=costs.units) for m in chosen]
    return Report(case, tuple(results), (ref.name,), coupling, ref.value, ref_flat.x.dtype,
                  tuple(notes), flat, index_labels=("probe", "sample"),
                  verification=f"{mode} ({probes} probe{'s' * (probes > 1)})",
                  required=required, findings=tuple(findings), unresolved=pinned_nothing(ref))


HALF_EPS = 1e-4  # float16's eps is 9.8e-4, bfloat16's 7.8e-3, float32's 1.2e-7


def _reference_routes(ref_flat: Flat, flat: Flat, probes: Probes, ref: Reference, coupling,
                      rtols, scales: Scales, notes: list[str]) -> list[str]:
    """Where the methods run in a half precision and the references in float64: the routes once
    more on the references' copy of the function, judged in its dtype, as a full check judges
    its float64 loop against finite differences; a route that disagrees there is a finding (a
    wrong formula), whatever the methods' dtype. Without it, a backward 5% off on one entry of 25
    passed in float16 and bfloat16: its uᵀJv moved by less than those dtypes' tolerance (found by
    a fresh user). float32's own routes resolve a 1% error (README, "Checks at realistic
    sizes"), so they are not run twice."""
    if ref_flat.x.dtype == flat.x.dtype or torch.finfo(flat.x.dtype).eps < HALF_EPS:
        return []
    dtype = ref_flat.x.dtype
    results = judge_routes(probes, lambda r: judge(
        r, ref_flat, coupling.reason, float("inf"), (ref,), None, dtype, rtols, scales, 1,
        expected=tuple(ref.value.shape)))
    wrong = [r for r in results if r.status in WRONG]
    notes.append(f"the routes run once more in {str(dtype).removeprefix('torch.')} on the "
                 f"references' copy of the function: {len(results) - len(wrong)} of "
                 f"{len(results)} agree or do not apply")
    return [f"the {str(dtype).removeprefix('torch.')} {r.method} disagrees with finite "
            f"differences ({describe_worst(r.worst) if r.worst else r.reason}): a derivative "
            "formula it uses is wrong, and the check fails whatever the methods' dtype"
            for r in wrong]


def _projected(compute: Callable[[Flat], torch.Tensor], drawn: Probes, flat: Flat) -> torch.Tensor:
    value = compute(flat)
    expected = (flat.batch_size, flat.n_out, flat.n_in)
    if not isinstance(value, torch.Tensor) or tuple(value.shape) != expected:
        raise NotApplicable(f"returned {getattr(value, 'shape', type(value).__name__)}, "
                            f"expected shape {expected}")
    return project(value, drawn)


def check_method(
    method: Callable[..., Any],
    fn: Callable[..., Any],
    inputs: torch.Tensor | Sequence[torch.Tensor],
    *,
    quantity: str = "batch_jacobian",
    vectors: torch.Tensor | None = None,
    layout: str | None = None,
    calls: str | None = None,
    methods: Sequence[str] | None = (),
    **options,
) -> Report:
    """Check a user's own derivative code against the references, for any quantity.

    ``method`` is called the way people write it: ``method(fn, *inputs)``, or ``method(*inputs)``
    with ``fn`` closed over (read from its signature; ``calls=`` decides). For ``jvp_set`` and
    ``vjp_set`` it gets ``(x, vectors)`` at one point ``inputs``, for ``per_sample_jvp`` the batch
    and one tangent per sample, for ``per_sample_grad`` ``(model, x, y)`` (see
    :func:`~jacverify.check_per_sample_grads`). Its result may come in any layout
    :func:`jacverify.user_methods.layouts` lists (batch first, the sum trick's (*out, B, *in), a
    tuple per input or per coordinate, ...): the one its shapes fit is read and stated in the
    report's notes (NOTE [layout detection]).

    Args:
        method: the user's code.
        fn: the function (or ``nn.Module``) it differentiates.
        inputs: the batch (a tensor or a tuple of them); for the sets, the point; for
            ``per_sample_grad``, ``(x, y)``.
        quantity: one of ``batch_jacobian`` (B, *out, *in), ``jvp_set`` (K, *out), ``vjp_set``
            (K, *in), ``per_sample_jvp`` (B, *out), ``hessian`` (B, *out, *in, *in),
            ``hessian_diagonal`` (B, *out, *in), ``jacobian_and_hessian_diagonal`` (a pair
            ``(u_x, u_xx)``), ``per_sample_grad`` ({name: (B, *p.shape)}).
        vectors: tangents or cotangents for the JVP/VJP quantities; random (from ``seed``) if None.
        layout: a layout name, when the shapes leave it ambiguous.
        calls: ``"with_fn"`` or ``"inputs_only"``, when the signature leaves it ambiguous.
        methods: registered methods of the quantity to run beside it (none by default).
        **options: the options of the quantity's check (``dtype``, ``seed``, ``rtol``, ...).

    Returns:
        A :class:`~jacverify.Report` in which ``method`` is required: it passes only when the
        user's code itself agrees. A mismatch names the worst entry in the user's own layout (for a
        Hessian diagonal also the mixed partial it equals, when it is one), and the hint blames the
        user's code when the references agree with each other.

    Raises:
        InvalidArgument: a bad argument, or a result whose layout is ambiguous (pass ``layout=``).

    >>> net = torch.nn.Linear(3, 2)
    >>> mine = lambda f, x: f.weight.expand(x.shape[0], 2, 3)
    >>> check_method(mine, net, torch.randn(4, 3)).passed
    True
    >>> sum_trick = lambda x: torch.func.jacrev(lambda z: net(z).sum(0))(x)  # (out, B, in)
    >>> check_method(sum_trick, net, torch.randn(4, 3)).passed
    True
    """
    from jacverify.user_methods import check_user_method

    return check_user_method(method, fn, inputs, quantity=quantity, vectors=vectors, layout=layout,
                             calls=calls, methods=methods, **options)


def _bound(fn, inputs, *, required: tuple[str, ...] = (),
           on_case: Callable[[Case], None] | None = None, **options) -> Report:
    """``check(fn, inputs, **options)`` with the methods that must themselves agree."""
    import inspect

    bound = inspect.signature(check).bind(fn, inputs, **options)
    bound.apply_defaults()
    return _run_check(**bound.arguments, required=required, on_case=on_case)


def assert_jacobians_agree(
    fn: Callable[..., torch.Tensor],
    inputs: torch.Tensor | Sequence[torch.Tensor],
    **options,
) -> Report:
    """Like :func:`check`, but raise unless the check passed (NOTE [earned verdict]); a method
    named in ``methods`` must itself agree.

    Args:
        fn, inputs: as for :func:`check`.
        **options: :func:`check`'s keywords.

    Returns:
        The :class:`~jacverify.Report`, when it passed.

    Raises:
        MismatchError: a method disagrees (or the function's derivative formula is wrong).
        NotVerified: nothing was verified, or a method named in ``methods`` could not run.

    >>> assert_jacobians_agree(torch.nn.Linear(3, 2), torch.randn(4, 3), methods=["sum_trick"]).passed
    True
    """
    report = _bound(fn, inputs, required=tuple(options.get("methods") or ()), **options)
    report.raise_unless_passed()
    return report
