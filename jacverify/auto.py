"""``batch_jacobian(f, x)``: the per-sample Jacobian, the fastest registered way that is right here."""

from __future__ import annotations

import collections
import contextlib
import functools
import inspect
import math
import operator
import sys
import types
import weakref
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import NamedTuple

import torch
import torch.nn.modules.module as nn_module

from jacverify.case import Flat, evaluate, flatten, make_case, sparse_kind
from jacverify.errors import (FunctionRaised, InvalidArgument, JacobianTooLarge, MismatchError,
                              NotApplicable, NotVerified)
from jacverify.judge import describe_worst, warm_up_transforms
from jacverify.validation import check_bool, check_bytes, check_int
from jacverify.measure import (ESTIMATE_CUT, ROUNDS, Race, race, racing, recorded_forward,
                               settle_allocator, synchronizer, timer)
from jacverify.methods import get_methods
from jacverify.oracles import check_coupling, check_determinism, graph_cut
from jacverify.oracles.prechecks import carries_graph, perturbed, resolution, separating_groups
from jacverify.oracles.projections import DEFAULT_PROBES
from jacverify.references import kept_buffers

__all__ = ["batch_jacobian", "plan", "Plan", "modules_of"]


@dataclass(frozen=True)
class Plan:
    """How ``batch_jacobian(method="auto")`` computes a case, and why.

    Attributes:
        method: the registered method it runs.
        chunk_size: cotangents (reverse) or tangents (forward) per pass; ``rows`` means one pass.
        rows: how many there are in all.
        reason: the shapes, coupling, timings and memory facts that chose it, and what planning cost.
        memory_budget: bytes the call may use: 2x the Jacobian plus the activations the forward
            saves (or the caller's ``max_memory``).
        planning_seconds: what making the plan cost (NOTE [which clock]: CPU time on CPU): the
            probes, every candidate call whose value was thrown away, and each of the caller's
            calls that ran the race beyond one steady call of the plan (NOTE [auto plan]);
            torch's once-per-process warm-up and ``compile``'s compilation excluded (``reason``
            states them).
        planning_calls: ``planning_seconds`` in steady calls of the plan: what NOTE [auto plan]'s
            budget aims to keep under PLANNING_BUDGET (20), not a guarantee (the README has the
            measured figures: over 20 in some processes).
        compiled: the ``torch.compile`` backend of the route it runs, verified against the eager
            route; None: eager.
    """

    method: str
    chunk_size: int
    rows: int
    reason: str
    memory_budget: int
    planning_seconds: float = 0.0
    planning_calls: float = 0.0
    compiled: str | None = None

    @property
    def chunks(self) -> int:
        return math.ceil(self.rows / self.chunk_size)


# NOTE [auto plan]
# A reverse pass costs about one backward per cotangent row, a forward pass one jvp per tangent:
# - samples interact (the coupling probe moved another sample's output, or the timed backward
#   of one group's outputs reached the others' inputs: _pass_times): the per-sample truth is
#   the diagonal block of the full Jacobian -> batched_grad_per_sample, B*M cotangent rows;
# - M <= N: reverse mode, M cotangent rows: batched_grad (one autograd.grad with
#   is_grads_batched), vmap_vjp (vmap over torch.func.vjp), functional_vectorized
#   (autograd.functional.jacobian, vectorized), loop_rows (M plain backward passes) or
#   repeat_trick (M copies of the batch, no vmap);
# - M > N: forward mode, N tangent rows: batched_double_backward (J v out of two reverse passes,
#   tangents batched; needs no forward-AD formula), forward_broadcast (vmap over jvp) or the plain
#   double_backward (N passes, no vmap);
# - M and N within CLOSE_SHAPES of each other: both families race (the shape rule is a guess there).
# The candidates race per NOTE [race] in a fixed order of preference: the vectorized ways of the
# shape's mode, those of the other mode, then the loops, cheapest predicted first (in a fixed
# order instead, loop_rows first, the loops ran more often: planning took 24-30 calls at batch 1
# instead of 21-24, and 6 cases split the processes instead of 3);
# functional_vectorized and forward_broadcast only stand in (FALLBACKS). Measured here (2 shared
# cores, one torch thread, CPU time, medians), winners differ by case: batched_grad on mlp
# 32-128-4 (vmap_vjp 1.08-1.26x), vmap_vjp on 64-64-64 at B=16 in a long-running process
# (batched_grad 1.11-1.21x; in a fresh process vmap_vjp's first ~50 calls ran slower, and the
# median of 300 put batched_grad 20% ahead in float64: glibc's thresholds, NOTE [settled allocator]) and on the CNN in float32 (batched_grad
# 1.32x), batched_double_backward on 4-256-64 (double_backward 1.04x), repeat_trick at batch 1
# (batched_grad 1.27x: the overhead of vmap dominates a 0.1 ms call), loop_rows on the transformer
# layer in float64 among the unchunked ways (1024 plain backward passes, 1.8x faster than any
# vectorized one: the attention kernel has no batching rule) -- but batched_grad in chunks of 102
# rows beats it by 1.2x there, and every other way by 1.5-2x in float32.
# So the race is needed; what keeps it cheap:
# - the loops are predicted before they run, from one backward of the forward's graph (t_b) and
#   one forward (t_f): loop_rows ~ 1.2 M t_b, double_backward ~ 1.2 N t_b (measured
#   0.95-1.6x and 0.84-2.4x of M t_b and N t_b); repeat_trick, one forward and backward on M
#   copies of the batch, ~ o + M s, where a forward and backward cost o + s on the batch and
#   o + 2 s on the batch twice over (the fastest of SLOPE_PASSES timings of it) -- a fixed cost and
#   one per B samples: at batch 1 the fixed cost is nearly all (and the former guess,
#   0.5 M (t_f + t_b), put repeat_trick at 3.8x its time and kept the fastest way out of the
#   race); one predicted over 1.5x the best first call is not run (loop_rows at M=64 would cost
#   3.7 calls of the winner); repeat_trick runs only where fn's output on the batch twice over
#   (the second copy changed) is its output on each copy alone, within the coupling probe's
#   rounding: a function of the batch's size or of a sample's position, or one that mixes
#   samples at batch 1 (where there is no coupling to probe), gets another function's Jacobian
#   from it;
# - torch's transforms are warmed up once per process on a 2x2 tensor (judge.warm_up_transforms),
#   and every raced method once per process and dtype on a 2-sample tanh MLP (warm_up_methods):
#   vmap's first use costs 0.2 s, torch.func's 0.6 s, whatever the shape (0.8-0.9 s in all here),
#   and a first call that paid it would lose the race; it is stated in the reason, apart from the
#   planning cost;
# - the coupling probe, once 17 forwards, changes groups of samples (NOTE [coupling probes]:
#   k forwards with C(k, k/2) >= B, 8 at B=64);
# - the race runs on the caller's own calls (exploring): batch_jacobian's first calls each run
#   the race's next candidate on that call's input and return its value, which is the Jacobian
#   whichever candidate computed it. A call then costs the plan only its time beyond the winner's
#   steady call, so the race can afford what deciding stably needs: up to EXPLORE_ROUNDS paired
#   rounds, each candidate called twice in a row and the second call timed (NOTE [race]; a call
#   right after another method's ran up to 1.3x slower, which once made batched_double_backward
#   look 10% faster than batched_grad where it is 10-25% slower). A first version also called the
#   champion up to ten times before the others while a fresh process settled: that cost batch 1
#   four calls of its plan and changed no choice once the rounds were primed. `plan()` before any
#   call, and `compile=`, run the race on the spot instead (ROUNDS rounds, every call counted);
# - the race's budget, RACE_BUDGET calls of its best median, counts the first call's checks of
#   its input, the probes before it and every call's time (exploring: beyond that median): it
#   runs fewer rounds rather than exceed it. Plan.planning_seconds states the cost: the checks,
#   the probes, the calls whose values were thrown away, and the caller's calls beyond one
#   steady call of the plan each. The checks (0.4 ms on 8-64-8 at B=64, where the probes took
#   1.6 ms) went unstated until the benchmark's count came out 2 calls over the plan's; counted
#   in the budget too, they left batch 1 too few rounds while a race needed three (repeat_trick,
#   1.2x faster, lost in 3 processes of 6), and left out, the plans at batch 1 stated 19-24
#   calls. Now that the first calls count as evidence where rounds are few (NOTE [race] 3) and
#   the batch twice over is timed once where that settles it (_pass_times), they are counted:
#   the plans stated 12-21 calls at batch 1, the benchmark counted 10-18 (24 processes), and
#   batched_grad was planned in 2 of 18 processes (1.14-1.17x) as before (README).
# Measured with `python benchmarks/auto_ratio.py` (3 fresh processes per case, each calling
# batch_jacobian until its race ended; the README has the table and what it did not reach).
# Memory: the budget is 2 |J| + the activations the forward saves for backward, but never under
# MEMORY_FLOOR: a vectorized pass over k rows holds k gradients of every hidden layer, so with
# hidden layers wider than the Jacobian's rows (8-64-8 at B=64: 0.37 MB against a 0.17 MB budget)
# only one row per pass would fit, tripling the time (0.32 -> 0.99 ms) to save 0.2 MB. The floor
# keeps that trade for cases where the memory matters; pass max_memory= for a strict budget.
# A pass over k rows is estimated at k x the bytes the forward saves, parameters left out (measured
# once, from the saved-tensor hooks of the timed forward (`measure.recorded_forward`); a row of a
# vectorized backward holds a gradient of each activation, not of each weight: counting the
# weights split mlp 784-256-256-10 at B=32 into 2 passes, 1.08x slower) + |J|, and gets the most
# rows that fit: no profiled run (the first version measured the peak with torch.profiler at 1, 2
# and k rows, which cost more than the whole race). The loops hold one row whatever the budget.
# Plans are cached per function, input shape, dtype, device, train/eval state and budget: the
# probes run on the first call only, the race on the first calls.
MEMORY_FLOOR = 2**24  # 16 MiB
REVERSE_FAMILY = ("batched_grad", "vmap_vjp", "functional_vectorized", "loop_rows", "repeat_trick")
FORWARD_FAMILY = ("batched_double_backward", "forward_broadcast", "double_backward")
LOOPS = ("loop_rows", "double_backward", "repeat_trick")  # raced after the vectorized ways
# forward_broadcast (forward AD) ran 1.34-3x batched_double_backward wherever both ran: it races
# only where that one cannot (no double backward); functional_vectorized is batched_grad's
# computation through autograd.functional (0.98-1.1x of it wherever both ran)
FALLBACKS = {"forward_broadcast": "batched_double_backward",
             "functional_vectorized": "batched_grad"}
# vmap_vjp is batched_grad's work through torch.func (0.8-1.3x of it wherever both ran): called
# after the others, and only when batched_grad's first call was within FIRST_CUT of the best
# first call (NOTE [race])
SIBLINGS = {"vmap_vjp": "batched_grad"}
CLOSE_SHAPES = 2.0  # both families race when M and N are within this factor of each other
PLANNING_BUDGET = 20  # steady calls of the plan, all planning included
EXPLORE_ROUNDS = 20  # timed rounds of a race run on the caller's calls (NOTE [auto plan])
# what the race may take of it (the probes included), in its best median. At batch 1 the probes
# and the candidates' first calls take 10-12 of it before any round: at 15, repeat_trick, 1.4x
# faster than batched_grad there, got one or two rounds and lost in 4 processes of 6; at 18 it won
# in all 6, and planning took 15-21 calls in all (the benchmark's count, above the plan's own)
RACE_BUDGET = 18
# the batch twice over is timed up to this many times and the fastest kept (NOTE [auto plan]):
# timed once, one process in 2.5 at batch 1 (4 of 10 here) drew a slope that predicted
# repeat_trick at 1.1-2.6 ms, over the 1.5x cut, where it runs in 0.2 ms and wins (_pass_times
# stops at one when it predicts repeat_trick within the cut)
SLOPE_PASSES = 2

# NOTE [compiled route]
# `compile=True` (or a backend name) adds a candidate after the eager race: torch.compile of the
# eager winner's route and of one more (COMPILE_ROUTES in all: a route through torch.func alone
# where one ran, TRACEABLE, else the eager runner-up), as a function of the flat input. Each is judged (judge.judge, one judge for every candidate) against the eager winner's
# value under NOTE [tolerances]; one that raises or disagrees is rejected and never runs again.
# The verified ones race the eager winner (NOTE [race], the eager route preferred on a tie) and
# the fastest is kept. Measured on mlp 8-64-8 at B=64, float32 (inductor, this CPU, one thread):
# vmap_vjp compiled 0.20-0.27 ms against 0.33 ms eager and batched_grad's 0.28 ms;
# forward_broadcast 0.23 ms against 0.74 ms; compiling took 2-13 s each. batched_grad and
# batched_double_backward do not compile (vmap over the compiled backward raises; aot_autograd
# has no double backward): rejected, so a torch.func route is compiled second (TRACEABLE). A compiled plan holds its model (the
# compiled code refers to it): it is cached in a small LRU of COMPILED_PLANS, not the weak cache.
COMPILE_ROUTES = 2
TRACEABLE = ("vmap_vjp", "forward_broadcast")  # torch.func all through: compiled first
COMPILED_PLANS = 8
CONTAINER_ITEMS = 64  # modules_of looks into containers and objects up to this size
WALK_DEPTH = 6  # and this many steps from the function
DEFAULT_BACKEND = "inductor"


def plan(fn: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, *,
         max_memory: int | None = None, compile: bool | str = False) -> Plan:
    """The plan ``batch_jacobian(fn, x)`` would use (made and cached on first use).

    Args:
        fn: a function or module of one batched tensor (batch first).
        x: the inputs, (B, *in).
        max_memory: bytes a pass may use; the default is NOTE [auto plan]'s budget.
        compile: also race ``torch.compile`` of the winning route, used only once verified
            against the eager route (NOTE [compiled route]); True for "inductor", or a backend.

    Returns:
        A :class:`Plan`: the method, rows per pass, the number of rows, why, the budget, and
        what planning cost.

    Raises:
        InvalidArgument: ``fn`` or ``x`` is not usable, ``max_memory`` is not a positive number,
            or ``compile`` is not a bool or a backend name.

    >>> net = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.Tanh(), torch.nn.Linear(16, 2))
    >>> p = plan(net, torch.randn(32, 8))
    >>> p.rows, "outputs M=2 <= inputs N=8: reverse mode" in p.reason  # the method: raced
    (2, True)
    >>> p.planning_calls > 0 and "calls of the plan" in p.reason  # what planning cost
    True
    """
    if _needs_grad_mode(x):
        with torch.inference_mode(False), torch.enable_grad():
            return plan(fn, x.clone() if isinstance(x, torch.Tensor) else x,
                        max_memory=max_memory, compile=compile)
    route, flat, _ = _planned(fn, x, max_memory, compile, explore=False)
    with kept_buffers(modules_of(fn)):  # the race's calls are not the caller's
        return route.finish(flat)


def batch_jacobian(
    fn: Callable[[torch.Tensor], torch.Tensor],
    x: torch.Tensor,
    *,
    method: str = "auto",
    verify: bool = False,
    probes: int = DEFAULT_PROBES,
    max_memory: int | None = None,
    compile: bool | str = False,
    seed: int = 0,
) -> torch.Tensor:
    """The per-sample Jacobian ``J[b] = d fn(x)[b] / d x[b]``, shaped (B, *out, *in).

    Args:
        fn: a function or module of one batched tensor (batch first).
        x: the inputs, (B, *in), finite on the call that plans (its probes need values; the
            calls that reuse the plan do not look at them, NOTE [last plan]).
        method: "auto" (NOTE [auto plan]: its first calls on a new shape race the candidates,
            each returning the Jacobian its candidate computed) or the name of a registered
            batch_jacobian method. auto probes for samples that interact (BatchNorm in train
            mode) and for randomness first; a named method runs as it is, on its own
            assumptions (most take samples to be independent): pass ``verify=True`` to have
            its answer checked.
        verify: check this answer against finite differences with ``probes`` random projections
            uᵀ J v (cost: 6 forward passes per probe, whatever the size); raise if it is wrong.
        max_memory: bytes the computation may use (method="auto" only: a named method runs in
            one pass); the default is NOTE [auto plan]'s budget.
        compile: with "auto", also race ``torch.compile`` of the winning route, verified against
            the eager route first (NOTE [compiled route]; compiling can take a minute on CPU).
        seed: seeds the projections of ``verify=True`` (the plan's probes use a fixed seed, so
            a cached plan does not depend on it).

    Returns:
        The Jacobian, (B, *out, *in), in ``x``'s dtype and device.

    Raises:
        InvalidArgument: ``fn``, ``x``, ``method`` or ``compile`` is not usable; the message says
            why.
        MismatchError: ``verify=True`` and the answer disagrees with finite differences.
        NotVerified: ``verify=True`` and finite differences pin down none of the projections (a
            function that is not smooth there, or computes in a half precision).

    >>> net = torch.nn.Sequential(torch.nn.Linear(3, 8), torch.nn.Tanh(), torch.nn.Linear(8, 2))
    >>> x = torch.randn(5, 3)
    >>> jac = batch_jacobian(net, x, verify=True)
    >>> jac.shape
    torch.Size([5, 2, 3])
    >>> torch.allclose(jac[1], torch.func.jacrev(net)(x[1]))
    True
    """
    last = _LAST[0]  # a steady call of the last plan, in as few steps as it takes (NOTE [last plan])
    if last is not None and method == "auto" and verify is False and probes == DEFAULT_PROBES \
            and last.entry[0].explore is None and len(last.entry[1]) == 1 \
            and last.fits(fn, x, max_memory, compile) and x.ndim == 2:
        return _answer(_computed(last.entry[0].route, fn, x, last.form(fn, x)), x)
    if _needs_grad_mode(x):
        with torch.inference_mode(False), torch.enable_grad():
            return batch_jacobian(fn, x.clone() if isinstance(x, torch.Tensor) else x,
                                  method=method, verify=verify, probes=probes,
                                  max_memory=max_memory, compile=compile, seed=seed)
    if probes != DEFAULT_PROBES:  # checked without verify too (one int compare on the common path)
        check_int("probes", probes, min_value=1)
    if method == "auto":
        route, flat, out_shape = _planned(fn, x, max_memory, compile, explore=True)
        value = _computed(route, fn, x, flat)
        name = route.last
    else:
        (m,) = get_methods([method])
        if max_memory is not None:
            check_bytes("max_memory", max_memory)
            raise InvalidArgument(f"max_memory={max_memory!r} budgets method='auto''s passes; "
                                  f"method={method!r} runs as it is, in one pass: drop "
                                  "max_memory or use method='auto'")
        if compile is not False:
            raise InvalidArgument(f"compile={compile!r} races compiled routes in method='auto'; "
                                  f"method={method!r} runs as it is: drop compile= or use "
                                  "method='auto'")
        flat = _validated(fn, x)
        out_shape = flat.out_shapes[0]
        name = m.name
        try:
            value = m.compute(flat)
        except Exception as e:
            zeros = _zeros_after(e, fn, x, flat)
            if zeros is None:
                raise NotApplicable(
                    f"method={method!r} cannot run on this function: {type(e).__name__}: "
                    f"{str(e).strip().splitlines()[0][:300] if str(e).strip() else '(no message)'}"
                    "; method='auto' probes the function (samples that interact, randomness) "
                    "and races only the ways that run, and jacverify.check(fn, x) says which "
                    "methods apply and why") from e
            value = zeros
    value = _answer(value, x)
    if verify and check_bool("verify", verify):
        with kept_buffers(modules_of(fn)):  # its forwards are not the caller's
            _verify(fn, x, value, name, probes, seed)
    if x.ndim == 2 and len(out_shape) == 1:
        return value
    return value.reshape(x.shape[0], *out_shape, *x.shape[1:])


def _answer(value: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """A method's Jacobian as batch_jacobian returns it: detached, a tensor of its own, in
    ``x``'s dtype."""
    if value.requires_grad:  # a detach costs an op (NOTE [few ops] in methods/batched.py)
        value = value.detach()
    if 0 in value.stride() and any(s == 0 and n > 1 for s, n in zip(value.stride(), value.shape)):
        value = value.contiguous()  # one memory location for several entries (z + 1's Jacobian,
        # an expanded identity): writing into it raised; the caller gets a Jacobian of their own
    if value.dtype != x.dtype:  # fn's output in another dtype: the ways differ (found racing)
        value = value.to(x.dtype)
    return value


def _computed(route: Callable[[Flat], torch.Tensor], fn, x, flat: Flat) -> torch.Tensor:
    """``route(flat)``, or after it raised, what :func:`_zeros_after` makes of the error: the
    function's own error, the zero Jacobian, or the route's error raised as it was."""
    try:
        return route(flat)
    except Exception as e:
        zeros = _zeros_after(e, fn, x, flat)
        if zeros is None:
            raise
        return zeros


def _zeros_after(error: Exception, fn, x, flat: Flat) -> torch.Tensor | None:
    """After a method raised ``error`` on ``flat``: the function's own error if it raises on this
    input (:func:`_raise_if_fn_raises`, as on a first call), the zero Jacobian if its output does
    not depend on ``x`` (:func:`_zero_if_constant`, for reverse mode's RuntimeError), else None:
    the method's error is the caller's to raise."""
    _raise_if_fn_raises(fn, x, flat)
    return _zero_if_constant(flat) if isinstance(error, RuntimeError) else None


def _zero_if_constant(flat: Flat) -> torch.Tensor | None:
    """Zeros (B, M, N) when ``flat``'s output does not depend on its input in autograd's graph
    (a constant, or a step such as ``(x > 0).float()``: its derivative is 0 wherever it has one,
    as ``vmap(jacrev)`` returns), where reverse mode's ways raise torch's "does not require grad";
    otherwise None (the method's error is the caller's to raise)."""
    if carries_graph(flat):
        return None
    return flat.x.new_zeros(flat.batch_size, flat.n_out, flat.n_in)


def _needs_grad_mode(x) -> bool:
    """Gradients are off, or inference mode is on or made ``x``: batch_jacobian then runs with
    gradients on and a normal copy of ``x`` (torch.func.jacrev works under torch.no_grad too; an
    inference tensor cannot be saved for backward). Two flag reads on the common path."""
    return not torch.is_grad_enabled() or torch.is_inference_mode_enabled() \
        or (isinstance(x, torch.Tensor) and x.is_inference())


def _flat_case(fn, x, modules: list[torch.nn.Module] | None = None) -> Flat:
    """``fn`` and ``x`` in the canonical form, one output, after :func:`_check_input`, a failing
    call of ``fn`` explained (:func:`_dtypes_explained`)."""
    _check_input(x, fn)
    with _dtypes_explained(fn, x, modules):
        return _one_output(flatten(make_case(fn, x)))


def _raise_if_fn_raises(fn, x, flat: Flat) -> None:
    """Call ``fn`` on this input (after a route raised): the function's own error is
    FunctionRaised (or :func:`_dtypes_explained`'s), as on a first call; nothing if it runs."""
    _check_input(x, fn)
    with _dtypes_explained(fn, x):
        evaluate(flat.fn, (flat.x.clone(),))  # a copy: fn may change its input in place


def _other_dtypes(modules: list[torch.nn.Module], x: torch.Tensor) -> str | None:
    """What to say when the floating parameters of ``modules`` are not all in ``x``'s dtype."""
    dtypes = {p.dtype for m in modules for p in m.parameters(recurse=False)
              if p.is_floating_point()}
    if not dtypes - {x.dtype}:
        return None
    return (f"fn's parameters are {', '.join(sorted(map(str, dtypes)))} but x is {x.dtype}: "
            f"convert the model, e.g. model.to({x.dtype}), or pass x in the model's dtype")


@contextlib.contextmanager
def _dtypes_explained(fn, x: torch.Tensor, modules: list[torch.nn.Module] | None = None):
    """A FunctionRaised inside, where the parameters ``fn`` reaches (``modules``:
    :func:`modules_of`, when the caller has them) are not in ``x``'s dtype, becomes an
    InvalidArgument naming both (torch says "mat1 and mat2 must have the same dtype"). Only a
    call that fails is explained: a function that converts (``net64(z.double()).float()``)
    runs."""
    try:
        yield
    except FunctionRaised as e:
        why = _other_dtypes(modules_of(fn) if modules is None else modules, x)
        if why:
            raise InvalidArgument(f"fn raised on x ({e}); {why}") from e
        raise


def _check_input(x, fn=None) -> None:
    """batch_jacobian's own checks of ``x`` and, where ``fn`` is a module (which make_case
    would run as a copy converted to x's dtype: another function than the caller's), of its
    parameters' dtypes; raises InvalidArgument."""
    if not isinstance(x, torch.Tensor) or x.ndim < 1:
        what = f"a tensor with {x.ndim} dimensions" if isinstance(x, torch.Tensor) \
            else type(x).__name__
        raise InvalidArgument(f"x={what} must be a tensor with the batch first, (B, *in); "
                              "batch_jacobian takes one input (use jacverify.check for several)")
    _check_dense(x)
    if not x.is_floating_point():
        raise InvalidArgument(f"x has dtype {x.dtype}; a Jacobian needs floating inputs: pass "
                              "x.float() or x.double()")
    if not bool(torch.isfinite(x).all()):  # named as the caller named it (make_case: inputs[0])
        bad = int((~torch.isfinite(x)).sum())
        raise InvalidArgument(f"x (shape {tuple(x.shape)}) holds {bad} NaN or Inf "
                              f"entr{'y' if bad == 1 else 'ies'}; batch_jacobian's first call on a "
                              "function and shape needs finite values (its checks compare "
                              "outputs): pass finite inputs")
    if isinstance(fn, torch.nn.Module):
        why = _other_dtypes(list(fn.modules()), x)
        if why:
            raise InvalidArgument(why)


def _check_dense(x) -> None:
    """A tensor of x's kind has a shape and values (a nested, sparse or meta tensor raised torch's
    own errors from deep inside: a fresh user); raises InvalidArgument."""
    if not isinstance(x, torch.Tensor):
        return  # _check_input says what it should be
    kind = sparse_kind(x)
    if kind is not None:
        what = {"meta": "x on a real device (a meta tensor has no values)",
                "nested": "a padded tensor (torch.nested.to_padded_tensor)"}.get(
                    kind, "x.to_dense()")
        raise InvalidArgument(f"x is a {kind} tensor; batch_jacobian needs a dense tensor with "
                              f"values, (B, *in): pass {what}")


def _validated(fn, x) -> Flat:
    """``x`` in the canonical form for a named method: checked and shaped by one call of ``fn``
    (its buffers put back: it is not the caller's call) on the first use of this function, shape,
    dtype, device and module state, cached as plans are, and without calling ``fn`` after that
    (the call made a 0.09 ms Jacobian at batch 1 take 0.18 ms, where auto's took 0.09)."""
    modules, reached = _reach(fn)
    _check_input(x, fn)
    key = call_key(fn, x, extra="validated", modules=modules, reached=reached)
    table = plan_table(fn)
    if key in table:
        return _flat(fn, x, table[key])
    with kept_buffers(modules):
        flat = _flat_case(fn, x, modules)
    table[key] = flat.out_shapes[0]
    return flat


def _one_output(flat: Flat) -> Flat:
    if flat.out_names is not None:  # a dict (torch.func raises on one inside a method)
        raise InvalidArgument(f"fn returned a dict (keys {', '.join(map(repr, flat.out_names))});"
                              " batch_jacobian takes one output tensor: return the tensor, or use "
                              "jacverify.check for several outputs")
    if len(flat.out_shapes) != 1:
        raise InvalidArgument("fn returned a tuple; batch_jacobian takes one output tensor "
                              "(use jacverify.check for several)")
    return flat


def _flat(fn, x: torch.Tensor, out_shape: tuple[int, ...]) -> Flat:
    """The canonical form without the validating call (the plan validated this shape already);
    (B, N) -> (B, M) functions as they are (two reshapes cost 5% of a 0.1 ms Jacobian)."""
    in_shape = tuple(x.shape[1:])
    if x.ndim == 2 and len(out_shape) == 1:
        return Flat(fn, x.detach(), (in_shape,), (out_shape,))

    def g(z: torch.Tensor) -> torch.Tensor:
        return fn(z.reshape(z.shape[0], *in_shape)).reshape(z.shape[0], -1)

    return Flat(g, x.detach().reshape(x.shape[0], -1), (in_shape,), (out_shape,))


# Plans keyed by the function (weakly, so a cached plan never keeps a model alive; a bound
# method by its object, since `model.forward` is a new object at every access), then by the shapes
# and modes of the call. Functions that cannot be weakly referenced (builtins such as torch.tanh)
# are held in a small LRU: holding them costs nothing, and a held object's id cannot be reused.
_PLANS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
_STRONG: OrderedDict = OrderedDict()
_STRONG_SIZE = 8
_COMPILED: OrderedDict = OrderedDict()  # (owner, func, key) -> entry; NOTE [compiled route]


def plan_table(fn) -> dict:
    """The cache of choices made for ``fn`` (shared by every ``method="auto"`` entry point)."""
    owner = fn.__self__ if inspect.ismethod(fn) else fn
    try:
        tables = _PLANS.setdefault(owner, {})
    except TypeError:  # not weakly referenceable
        try:
            tables = _STRONG.setdefault(owner, {})
        except TypeError:  # not hashable either: no cache, a plan per call
            return {}
        _STRONG.move_to_end(owner)
        while len(_STRONG) > _STRONG_SIZE:
            _STRONG.popitem(last=False)
    return tables.setdefault(getattr(fn, "__func__", None), {})


def clear_plans() -> None:
    """Forget every cached plan: the next ``method="auto"`` call of each function plans again.
    Needed after a change the plan's checks do not see (a flag the forward reads, a model
    looked up by name: NOTE [last plan], README).

    Args:
        none.

    Returns:
        None.

    Raises:
        nothing.

    >>> net = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Tanh(), torch.nn.Linear(4, 2))
    >>> first = plan(net, torch.randn(4, 3))
    >>> clear_plans()
    >>> plan(net, torch.randn(4, 3)) is first
    False
    """
    _PLANS.clear()
    _STRONG.clear()
    _COMPILED.clear()
    _LAST[0] = None


def call_key(fn, *tensors: torch.Tensor, extra: object = None,
             modules: list[torch.nn.Module] | None = None, reached: list | None = None
             ) -> tuple:
    """What a cached choice depends on: shapes, dtypes, devices, the state (:func:`_module_state`)
    of the modules ``fn`` reaches and the identities of the other objects it reaches (the
    caller's :func:`_reach`, when it has it), ``extra``."""
    if modules is None or reached is None:
        modules, reached = _reach(fn)
    modes = tuple((id(m), _module_state(m)) for m in modules)
    return (*((tuple(t.shape), t.dtype, t.device) for t in tensors), modes,
            tuple(map(id, reached)), _global_hooks(), extra)


def _reach(fn) -> tuple[list[torch.nn.Module], list]:
    """The modules ``fn`` reaches (:func:`modules_of`) and the other objects the walk passed
    (numbers and tensors left out, ``fn`` itself too: a new bound method at every access): a
    global helper rebound (``act = lambda z: z - z.mean(0)``) or a flag (``TRAIN = True`` read
    by ``F.batch_norm(..., training=TRAIN)``) kept the modules' key, and the cached
    independent-samples plan returned Jacobians 0.1 and 1.18 off (found by fresh users)."""
    modules, _, others = _walk([fn], WALK_DEPTH, expand=True)
    return modules, others


def modules_of(fn, depth: int = WALK_DEPTH) -> list[torch.nn.Module]:
    """The modules (with their submodules) ``fn`` reaches within ``depth`` steps: ``fn`` itself,
    a bound method's object, a ``functools.partial``'s function and arguments, what a Python
    function holds in its closure, its defaults and the globals its code names, the items of a
    list, tuple, set, deque or dict, the attributes and slots of a plain object (up to
    CONTAINER_ITEMS each), the attributes a function's code names on a Python module or class,
    and for a class of the caller's own (not torch's, not the standard library's) its methods and
    class attributes and, for such a module, what it holds beside its submodules. A
    model switched to train() behind a lambda changes the plan's key (its BatchNorm makes samples
    interact) as the model passed itself does; one reached some other way (a module's method
    looked up through a string, say) is not seen.

    >>> net = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.BatchNorm1d(2))
    >>> len(modules_of(lambda z: net(z)))  # the Sequential, its Linear and its BatchNorm
    3
    """
    return _walk([fn], depth, expand=True)[0]


def _walk(roots: list, depth: int, expand: bool
          ) -> tuple[list[torch.nn.Module], tuple[int, ...], list]:
    """The modules reached from ``roots`` (:func:`modules_of`), the ids of every object the
    walk visited, in order (numbers and tensors left out: _VALUES), and those objects other
    than modules and the roots. ``expand``: a module's submodules and its classes of the
    caller's own (their methods) are walked; without, the walk stops at a module (the last
    plan's check, NOTE [last plan], where the module tree is the snapshot's and those classes
    are roots)."""
    found: dict[int, torch.nn.Module] = {}
    seen: dict[int, object] = {}

    def visit(obj, level: int) -> None:
        if id(obj) in seen or level < 0 or type(obj) in _VALUES or isinstance(obj, torch.Tensor):
            return
        seen[id(obj)] = obj
        if isinstance(obj, torch.nn.Module):
            if expand:
                found.update((id(m), m) for m in obj.modules())
                for cls in _own_classes(obj.modules()):
                    visit(cls, level - 1)
            for m in (obj.modules() if expand else (obj,)):  # what a module of the caller's
                if _callers(type(m)):  # holds beside its submodules (`self.parts = [net]`)
                    for name, value in list(vars(m).items())[:CONTAINER_ITEMS]:
                        if name not in _MODULE_FIELDS:
                            visit(value, level - 1)
            return
        for o in _held(obj):
            visit(o, level - 1)

    for root in roots:
        visit(root, depth)
    others = [o for o in seen.values() if not isinstance(o, torch.nn.Module)
              and not any(o is r for r in roots)]
    return list(found.values()), tuple(seen), others


_MODULE_FIELDS = frozenset(vars(torch.nn.Module()))  # a module's own bookkeeping (_modules, ...)
# numbers and tensors the walk passes over: a step counter, a learning rate, a tensor kept per
# step change every call and would plan every call (and a trainer's history of 1,200 floats took
# the last plan's check 1.45 ms a call); a flag that changes coupling is a bool, a str or None
_VALUES = (int, float, complex)


def _own_classes(modules) -> list:
    """The classes of the modules that are the caller's own (:func:`_callers`): their methods
    may call a global model or helper (``forward``, and the methods it calls: ``self._post``),
    and :func:`_held` of a class is its members."""
    return list({id(type(m)): type(m) for m in modules if _callers(type(m))}.values())


def _callers(cls: type) -> bool:
    """``cls`` is defined by the caller's code: neither torch's nor the standard library's."""
    top = (cls.__module__ or "").split(".")[0]
    return not _torchs(cls.__module__) and top not in sys.stdlib_module_names


def _members(cls: type) -> list:
    """What a class of the caller's holds, its bases of the caller's too: functions (the
    functions of static and class methods and of properties), class attributes."""
    out = []
    for c in cls.__mro__:
        if not _callers(c):
            continue
        for name, v in list(vars(c).items())[:CONTAINER_ITEMS]:
            if name.startswith("__") and name not in ("__call__", "__init__"):
                continue
            out.append(v.__func__ if isinstance(v, (staticmethod, classmethod))
                       else v.fget if isinstance(v, property) else v)
    return out


def _held(obj) -> tuple:
    """What :func:`modules_of` looks into, one step from ``obj`` (not a module, a number or a
    tensor: :func:`_walk` takes those itself)."""
    if isinstance(obj, functools.partial):
        return (obj.func, *obj.args, *obj.keywords.values())
    if inspect.ismethod(obj):
        return (obj.__self__, obj.__func__)
    if isinstance(obj, types.FunctionType):
        if _torchs(obj.__module__):  # holds no model of the caller's (and F.relu's globals
            return ()  # took the last plan's walk from 4 objects to 33: 95 us a call)
        cells = []
        for cell in obj.__closure__ or ():
            try:
                cells.append(cell.cell_contents)
            except ValueError:  # a cell not yet filled
                pass
        g, names = obj.__globals__, obj.__code__.co_names
        named = [g[n] for n in names if n in g]
        own = list(obj.__dict__.values())[:CONTAINER_ITEMS]  # `f.center = True` (a fresh user)
        return (*cells, *(obj.__defaults__ or ()), *(obj.__kwdefaults__ or {}).values(),
                *own, *named, *_attributes_named(named, names))
    if isinstance(obj, (list, tuple, set, frozenset, collections.deque)) \
            and len(obj) <= CONTAINER_ITEMS:
        return tuple(obj)
    if isinstance(obj, dict) and len(obj) <= CONTAINER_ITEMS:
        return tuple(obj.values())
    if isinstance(obj, type):  # a class of the caller's: its methods and class attributes
        return tuple(_members(obj)) if _callers(obj) else ()
    if isinstance(obj, (types.ModuleType, str, bytes)):
        return ()
    slots = [n for c in type(obj).__mro__ for n in
             ((c.__dict__.get("__slots__", ()),) if isinstance(c.__dict__.get("__slots__"), str)
              else c.__dict__.get("__slots__", ()))]
    held = [getattr(obj, n) for n in slots[:CONTAINER_ITEMS] if hasattr(obj, n)]
    if _callers(type(obj)):  # its class's __call__, its methods, `self.act` a class attribute
        held.append(type(obj))
    if isinstance(getattr(obj, "__dict__", None), dict) \
            and len(obj.__dict__) <= CONTAINER_ITEMS:  # a plain object, or a callable one
        held.extend(obj.__dict__.values())
    return tuple(held)


def _torchs(module_name: str | None) -> bool:
    """``module_name`` is torch or one of its submodules."""
    return bool(module_name) and (module_name == "torch" or module_name.startswith("torch."))


def _attributes_named(values: list, names: tuple[str, ...], levels: int = 3) -> list:
    """The attributes named in ``names`` (a function's ``co_names``) of the Python modules and
    classes among ``values``, and theirs, ``levels`` deep: ``models.net(z)``,
    ``Config.model(z)``, ``pkg.models.net(z)``. A model reached so was not walked, and switched
    to train() it kept the independent-samples plan (0.44 off, found by a fresh user)."""
    out: list = []
    for _ in range(levels):
        values = [vars(v)[n] for v in values if isinstance(v, (types.ModuleType, type))
                  and not _torchs(v.__name__ if isinstance(v, types.ModuleType) else v.__module__)
                  for n in names if n in vars(v)]
        if not values:
            break
        out.extend(values)
    return out


def _global_hooks() -> tuple:
    """The keys of torch's global module hooks (``register_module_forward_hook``, ...), which run
    on every module's call: one that centres outputs over the batch makes samples interact."""
    return (tuple(getattr(nn_module, "_global_forward_hooks", ())),
            tuple(getattr(nn_module, "_global_forward_pre_hooks", ())))


# NOTE [last plan]
# The last plan used is checked first (a repeated call cost 7 us through the cache above, 2 us
# here: 15% of a 0.1 ms Jacobian at batch 1 went to finding its plan): _Last holds (a weak
# reference to fn, shape, dtype, device, max_memory, compile, :func:`_snapshot` of the modules,
# the cache entry,
# the canonical form's shapes (a Flat of no function and no x: holding either kept the model and
# the input alive), the ids of every object the walk from fn to its modules passes (_walk,
# stopping at modules; the caller's own module classes' members walked too), torch's
# global hooks). The ids: a global or closure variable rebound to another model (`for model in
# models: batch_jacobian(f, x)`, f calling the global `model`, or a helper that does, or a held
# bound method whose object's model changed), the old one still alive, passed the modules'
# check, and the old plan gave a BatchNorm model in train mode a Jacobian 0.53-0.77 off. The
# table behind it keeps weak references to the modules of each plan: its key holds their ids,
# and a model freed and another made at its address matched it (_planned_for).
# Timed round-robin among the other methods, as the benchmark and a training loop run it, a
# call's Python costs several times what it costs in a loop of itself (its objects and code out
# of the CPU's caches): on mlp 8-64-8 at batch 1, a
# 0.23 ms Jacobian, auto's call took 14% more than its method's on a canonical form made once
# (a new Flat per call 7-10 us of it, the checks 7-19 us, batch_jacobian's own steps 4-8 us).
# So the fast path builds the call's form from the cached one (Flat.at), checks the modules
# with early exits (_unchanged) and calls the method itself (Method.runner): auto's call took
# 5-7% less (measured with benchmarks/auto_ratio.py's timing plus these steps). The checks are a
# _Last record's (`fits`): a module of torch's own classes passed itself has no objects between
# it and its modules (no walk), no global hooks held means two dict reads, and _unchanged reads
# an empty hook dict's truth rather than copying it: each step timed in turn right after another
# method's call, finding the plan took 22 us instead of 28 (the module check 8 us instead of
# 10), auto's own cost over its method 5-8% at batch 1 (benchmarks/auto_ratio.py's "own",
# 12 processes). Nothing in it keeps a model or an input alive (a compiled entry's route does,
# as in _COMPILED). Nor does it look at x's values: an input with NaN is refused by the call
# that plans (its probes need finite values) and computed as it is by the calls after it
# (a check of every call's values would cost a reduction, and a device sync on CUDA).
# batch_jacobian takes this path first, before its general path's steps (the grad-mode check,
# the options' checks, _planned, the route's dispatch), and leaves a detach out where the answer
# carries no graph: at batch 1 (mlp 8-64-8, float32) auto / its method on the bare function went
# 1.140 -> 1.125 (`python benchmarks/call_overhead.py mlp8-64-8/B1/float32`, one run each, on a
# machine where the method took 0.49-0.51 ms); the last plan's check itself is 36-44 us of it.
_LAST: list = [None]


def _module_state(m: torch.nn.Module) -> tuple:
    """What of a module a plan depends on beyond its identity: its train/eval mode, its children's
    identities, its forward hooks' and its forward (one assigned on it, and its class's). A layer
    swapped in (``net[1] = torch.nn.BatchNorm1d(8)``, the old one still held elsewhere) changes
    its parent's children, and a hook that centres a layer's output over the batch makes samples
    interact; without them the last-plan fast path kept the old plan, and a vectorized route
    over samples they couple returned Jacobians 0.96 and 0.22 off (and 0.21 off after
    ``W.forward = ...`` on the class, found by a fresh user). And its settings (:func:`_settings`):
    ``mha.batch_first = False`` after planning ran attention across the batch on the old plan,
    0.18 off (a third fresh user). And which of its buffers are None: an eval BatchNorm whose
    running statistics are set to None normalizes over the batch, and its old plan was 0.29 off
    (a fresh user). What a forward reads elsewhere is not seen: ``clear_plans()``.

    >>> lin = torch.nn.Linear(2, 2)
    >>> before = _module_state(lin)
    >>> _ = lin.register_forward_hook(lambda m, i, o: o - o.mean(0))
    >>> _module_state(lin) == before
    False
    """
    d = m.__dict__
    return (m.training, tuple(map(id, m._modules.values())), tuple(m._forward_hooks),
            tuple(m._forward_pre_hooks), id(d.get("forward")),
            id(getattr(type(m), "forward", None)), len(d),
            tuple(b is None for b in m._buffers.values()), _settings(m))


def _settings(m: torch.nn.Module) -> tuple:
    """A module's settings, as (name, value): the bools, strs and Nones it holds beside
    nn.Module's own fields (``batch_first``, a flag of the caller's), and for torch's classes the
    numbers too (``Softmax.dim``); a number on a class of the caller's may be a counter, which
    would plan every call (as _VALUES)."""
    kinds = _FLAGS if _callers(type(m)) else (*_FLAGS, int, float)
    return tuple((k, v) for k, v in m.__dict__.items()
                 if k not in _MODULE_FIELDS and type(v) in kinds)


_FLAGS = (bool, str, type(None))


def _snapshot(modules) -> list[tuple]:
    """A weak reference to each module and its :func:`_module_state`, its settings as one
    ``itemgetter`` of their names and their values: what the fast path checks is unchanged
    (NOTE [last plan])."""
    out = []
    for m in modules:
        *state, settings = _module_state(m)
        names, values = tuple(k for k, _ in settings), tuple(v for _, v in settings)
        get = operator.itemgetter(*names) if names else None
        out.append((weakref.ref(m), *state, get, values[0] if len(names) == 1 else values))
    return out


def _unchanged(snapshot: list[tuple]) -> bool:
    """Every module of ``snapshot`` alive and in the state it had (:func:`_module_state`,
    compared field by field: an empty dict's truth is read, not copied into a tuple, and the
    settings are one C-level read and compare; the whole check is a third of auto's own cost per
    call at batch 1, NOTE [last plan]), stopping at the first that is not."""
    try:
        for ref, training, children, hooks, pre_hooks, forward, class_forward, size, buffers, \
                get, settings in snapshot:
            m = ref()
            if m is None or m.training != training:
                return False
            d = m.__dict__
            if len(d) != size or (get is not None and get(d) != settings):
                return False
            if (tuple(map(id, d["_modules"].values())) != children if children
                    else d["_modules"]) \
                    or (tuple(d["_forward_hooks"]) != hooks if hooks else d["_forward_hooks"]) \
                    or (tuple(d["_forward_pre_hooks"]) != pre_hooks if pre_hooks
                        else d["_forward_pre_hooks"]) or id(d.get("forward")) != forward \
                    or (tuple(b is None for b in d["_buffers"].values()) != buffers if buffers
                        else d["_buffers"]) \
                    or id(getattr(type(m), "forward", None)) != class_forward:
                return False
    except KeyError:  # a setting deleted and another attribute added: len(d) alone missed it
        return False
    return True


def _memo(fn) -> Callable[[], object]:
    try:
        return weakref.ref(fn)
    except TypeError:  # a builtin: holding it costs nothing
        return lambda: fn


def _planned(fn, x: torch.Tensor, max_memory: int | None, compile: bool | str = False,
             explore: bool = True) -> tuple[_Route, Flat, tuple[int, ...]]:
    """The cached route for this call (made on first use: ``explore``, the race runs on the
    caller's calls, NOTE [auto plan]), ``x`` in the canonical form, and the output's shape."""
    last = _LAST[0]
    if last is not None and last.fits(fn, x, max_memory, compile):
        route, out_shape = last.entry
        if x.ndim == 2 and len(out_shape) == 1:  # (B, N) -> (B, M): the cached form at fn and x
            return route, last.form(fn, x), out_shape
        return route, _flat(fn, x, out_shape), out_shape
    _check_dense(x)  # before its shape is read
    clock = timer(x.device if isinstance(x, torch.Tensor) else "cpu")  # _case refuses a non-tensor
    begin = clock()  # finding the cache entry counts as the checks do (0.05 ms at batch 1)
    if compile is not False and not (compile is True or isinstance(compile, str) and compile):
        raise InvalidArgument(f"compile={compile!r} (type={type(compile).__name__}) must be False, "
                              f"True (the {DEFAULT_BACKEND!r} backend) or a torch.compile backend "
                              "name such as 'aot_eager'")
    backend = DEFAULT_BACKEND if compile is True else (compile or None)
    if backend is not None:
        from torch._dynamo import list_backends

        known = list_backends(exclude_tags=())
        if backend not in known:
            raise InvalidArgument(f"compile={compile!r} (type={type(compile).__name__}) names no "
                                  f"torch.compile backend; known: {', '.join(sorted(known))}")
    table = plan_table(fn)
    modules, reached = _reach(fn)  # walked once: for the key and for the fast path's check
    key = call_key(fn, x, extra=("batch_jacobian", max_memory, backend), modules=modules,
                   reached=reached) if isinstance(x, torch.Tensor) else None
    owner = fn.__self__ if inspect.ismethod(fn) else fn
    strong = (owner, getattr(fn, "__func__", None), key) if backend and key is not None else None
    held = [*modules, *(c for c in reached if _weakly_held(c))]
    entry = _COMPILED.get(strong) if strong is not None else _planned_for(table, key, held)
    if entry is not None:
        route, out_shape = entry
        flat = _flat(fn, x, out_shape)
        _remember(fn, x, max_memory, compile, modules, entry, flat)
        return route, flat, out_shape
    if max_memory is not None:
        max_memory = check_bytes("max_memory", max_memory)
    with kept_buffers(modules):  # the checks' and probes' forwards, and a race run here, are
        flat = _flat_case(fn, x, modules)  # not the caller's call
        route = _make_plan(flat, max_memory, explore=explore and not backend,
                           checked=clock() - begin)
        if backend:
            route.finish(flat)
            route = _compiled_plan(route, flat, backend)
    if backend:
        _COMPILED[strong] = (route, flat.out_shapes[0])
        while len(_COMPILED) > COMPILED_PLANS:
            _COMPILED.popitem(last=False)
    elif key is not None:
        for stale in [k for k, v in table.items()
                      if isinstance(v, _Entry) and any(r() is None for r in v.refs)]:
            del table[stale]  # planned for a model since freed (one per model, unbounded)
        table[key] = _Entry(route, flat.out_shapes[0], [weakref.ref(o) for o in held])
    canonical = _flat(fn, x, flat.out_shapes[0])
    if key is not None:
        _remember(fn, x, max_memory, compile, modules, (route, flat.out_shapes[0]), canonical)
    return route, canonical, flat.out_shapes[0]


class _Entry(NamedTuple):
    """A plan in a function's table: its route, the output's shape, and weak references to the
    modules and objects it was planned for (:func:`_planned_for`)."""

    route: _Route
    out_shape: tuple[int, ...]
    refs: list


def _planned_for(table: dict, key, held: list) -> tuple | None:
    """(route, out_shape) of ``table[key]`` when it was planned for these very modules and
    objects (``held``: those a weak reference can hold). The key holds their ids: a model freed
    and another of the same state made at its address matched it, and a layer centring over the
    batch ran a freed Tanh's independent-samples plan (0.83 off, found by a fresh user in 10 of
    30 tries)."""
    found = table.get(key)
    if not isinstance(found, _Entry):
        return None
    if len(found.refs) != len(held) or any(r() is not o for r, o in zip(found.refs, held)):
        return None
    return found.route, found.out_shape


def _weakly_held(obj) -> bool:
    """A weak reference can hold ``obj`` (a function, a class; not a builtin or a partial)."""
    try:
        weakref.ref(obj)
    except TypeError:
        return False
    return True


def _remember(fn, x: torch.Tensor, max_memory, compile, modules, entry, flat: Flat) -> None:
    classes = _own_classes(modules)
    walked = None if isinstance(fn, torch.nn.Module) and not classes else \
        _walk([fn, *classes], WALK_DEPTH, expand=False)[1]
    hooks = _global_hooks()
    _LAST[0] = _Last(_memo(fn), x.shape, x.dtype, x.device, max_memory, compile,
                     _snapshot(modules), entry,
                     Flat(None, None, flat.in_shapes, flat.out_shapes),  # type: ignore[arg-type]
                     walked, hooks if any(hooks) else None, classes)


class _Last:
    """The last plan used and what its fast path checks (NOTE [last plan])."""

    __slots__ = ("fn", "shape", "dtype", "device", "max_memory", "compile", "snapshot", "entry",
                 "template", "walked", "hooks", "classes")

    def __init__(self, *fields) -> None:
        for name, value in zip(self.__slots__, fields):
            setattr(self, name, value)

    def form(self, fn, x: torch.Tensor) -> Flat:
        """The cached canonical form at ``fn`` and ``x`` ((B, N) -> (B, M) only), ``x`` detached
        where it requires grad (a detach costs an op: NOTE [few ops] in methods/batched.py)."""
        return self.template.at(fn, x.detach() if x.requires_grad else x)

    def fits(self, fn, x, max_memory, compile) -> bool:
        """This call is the last plan's: the same function, input shape, dtype, device and
        options, gradients on and no inference mode (batch_jacobian's general path handles
        those), its modules unchanged (:func:`_unchanged`), no global hook added (none held:
        two dict reads) and the same objects between fn and its modules (a module passed
        itself, of torch's classes only, has none: ``walked`` is None)."""
        return self.fn() is fn and isinstance(x, torch.Tensor) and not x.is_nested \
            and torch.is_grad_enabled() and not torch.is_inference_mode_enabled() \
            and not x.is_inference() \
            and x.layout == torch.strided and self.shape == x.shape \
            and self.dtype == x.dtype and self.device == x.device \
            and self.max_memory == max_memory and self.compile is compile \
            and _unchanged(self.snapshot) \
            and (_global_hooks() == self.hooks if self.hooks is not None else
                 not (nn_module._global_forward_hooks or nn_module._global_forward_pre_hooks)) \
            and (self.walked is None
                 or _walk([fn, *self.classes], WALK_DEPTH, expand=False)[1] == self.walked)


def _candidates(m: int, n: int) -> tuple[tuple[str, ...], str]:
    """The racing order (preference first, NOTE [auto plan]) and why, for independent samples."""
    if max(m, n) <= CLOSE_SHAPES * min(m, n):
        first, second = (REVERSE_FAMILY, FORWARD_FAMILY) if m <= n else (FORWARD_FAMILY,
                                                                          REVERSE_FAMILY)
        why = (f"independent samples, outputs M={m} and inputs N={n} within {CLOSE_SHAPES:g}x: "
               "both modes raced")
    elif m <= n:
        first, second = REVERSE_FAMILY, ()
        why = f"independent samples, outputs M={m} <= inputs N={n}: reverse mode, M rows"
    else:
        first, second = FORWARD_FAMILY, ()
        why = f"independent samples, outputs M={m} > inputs N={n}: forward mode, N rows"
    vectorized = [c for c in (*first, *second) if c not in LOOPS]
    loops = [c for c in (*first, *second) if c in LOOPS]
    return (*vectorized, *loops), why


@functools.cache
def warm_up_methods(dtype: torch.dtype, device: str) -> None:
    """Every method auto races, once, on a tiny tanh MLP in ``dtype`` on ``device``: their
    one-off costs per process and dtype (first calls on the first case ran 2-20x a steady call
    here) are paid outside the race (NOTE [auto plan])."""
    if torch.device(device).type == "cpu":
        settle_allocator()  # NOTE [settled allocator]: calls timed as a long-running process runs
    with torch.random.fork_rng(devices=[]):  # the caller's random stream stays theirs (a first
        torch.manual_seed(0)  # call of batch_jacobian reseeded it to 0)
        net = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Tanh(), torch.nn.Linear(4, 3))
    x = torch.randn(2, 3, generator=torch.Generator().manual_seed(0))
    flat = flatten(make_case(net.to(device, dtype), x.to(device, dtype)))
    for name in (*REVERSE_FAMILY, *FORWARD_FAMILY):
        try:
            runner(name, None)(flat)
        except Exception:  # noqa: BLE001 - a method that cannot run here races nowhere
            pass
    # and the plan's own probes: their first use in a process (saved-tensor hooks, the first
    # plain backward) took 0.4 ms more than later ones, 4 calls of a batch-1 Jacobian
    noise, center = check_determinism(flat)
    check_coupling(flat, seed=0, noise=noise, center=center)
    _pass_times(flat, timer(device), lambda: None)


class _Passes(NamedTuple):
    """What :func:`_pass_times` measured (seconds in its clock's)."""

    saved: int  # bytes one forward saves per row, parameters left out
    t_f: float  # that forward on the batch
    t_b: float  # one backward through it
    slope: float | None  # a forward and backward on the batch twice over, beyond t_f + t_b
    moved: torch.Tensor | None  # (M,): fn's output on the batch twice over, off its output on
    # each copy alone, per output (None when not timed)
    leak: str | None  # samples whose input gradient the others' outputs reached (a coupling)


def _pass_times(flat: Flat, clock, sync, rows: int | None = None) -> _Passes:
    """The bytes one forward saves per row (parameters left out), that forward's time (t_f) and
    one backward's through it (t_b) on the batch, and what a forward and backward on the batch
    twice over cost more than on the batch (the work per B samples, for repeat_trick over
    ``rows`` copies; None when not asked for, or when ``flat.fn`` takes no other batch size), in
    ``clock``'s seconds. The batch twice over (its second copy changed) is timed up to
    SLOPE_PASSES times, the fastest kept; once when that already predicts ``rows`` copies within
    ESTIMATE_CUT of one pass (a second timing could only lower it: at batch 1 it cost 0.5 calls
    of the plan). Then how far fn's output on it moved from fn's output on each copy alone, per
    output (None when not timed): a function of the batch's size, of a sample's position (``/ z.shape[0]``)
    or that mixes samples moves it, and repeat_trick, which calls fn on M copies, is then wrong
    (NOTE [auto plan]). Last, the timed backward's cotangent is the outputs of one group of
    samples (the coupling probe's first): an input gradient on the other samples is coupling
    that the values do not show (``leak`` says where; None where there is none, or at batch 1).
    A straight-through term over the batch (``z + (z.mean(0) - z.mean(0).detach())``) or a
    custom backward that mixes samples moves no other sample's value, and the independent-samples
    plan answered the sum of every sample's block, 4-5 off on every call (a fresh user). The
    cotangent is random (terms of opposite sign on two outputs cancelled under ones), and where
    nothing reached the other samples a second backward, untimed, starts from theirs (a running
    total over the batch, ``cumsum(0)``, couples one way only: a second fresh user)."""
    sync()
    start = clock()
    try:
        leaf, y, saved = recorded_forward(flat.fn, flat.x, parameters=False)
    except Exception as e:  # noqa: BLE001 - it ran without autograd (the checks' calls)
        raise FunctionRaised(
            f"fn raised when its input requires grad ({type(e).__name__}: "
            f"{str(e).strip()[:300]}), though it ran without: autograd cannot take its derivative "
            "(an out= argument, an in-place change of its input, a .numpy() round trip?); make "
            "it differentiable") from e
    sync()
    middle = clock()
    if not y.requires_grad:  # no dependence on x: batch_jacobian answers zeros (_zero_if_constant)
        cut = graph_cut(flat)  # unless its values move: NOTE [graph cut]
        if cut:
            raise InvalidArgument(f"fn: {cut}; batch_jacobian has no derivative to give")
        return _Passes(saved, middle - start, 0.0, None, None, None)
    group = torch.zeros(flat.batch_size, dtype=torch.bool, device=leaf.device)
    group[separating_groups(flat.batch_size)[0] if flat.batch_size > 1 else 0] = True
    cotangent = torch.randn(y.shape, generator=torch.Generator().manual_seed(0),
                            dtype=torch.float64).to(y)  # random: terms of either sign cannot cancel
    mask = group.view(-1, *(1,) * (y.ndim - 1)).to(y)
    (grad,) = torch.autograd.grad(y, leaf, cotangent * mask, allow_unused=True,
                                  retain_graph=flat.batch_size > 1)
    sync()
    t_f, t_b = middle - start, clock() - middle
    leak = None if grad is None else _leak(grad.detach().flatten(1), group)
    if grad is not None and leak is None and flat.batch_size > 1:  # and the other way round
        (grad,) = torch.autograd.grad(y, leaf, cotangent * (1 - mask), allow_unused=True)
        leak = _leak(grad.detach().flatten(1), ~group)
    if rows is None:
        return _Passes(saved, t_f, t_b, None, None, leak)
    once = y.detach()
    # the second copy changed as the coupling probe changes samples: with two equal copies a
    # function that mixes samples (z - z.mean(0)) gave equal outputs at batch 1, where there is
    # no coupling to probe, and repeat_trick won 5 plans of 6 there, 1.87 off (a fresh user)
    other = perturbed(flat.x, 0)
    leaf = torch.cat([flat.x, other]).requires_grad_()
    slope, moved = math.inf, None
    for _ in range(SLOPE_PASSES):  # the fastest: NOTE [auto plan]'s slope
        sync()
        start = clock()
        try:
            y = flat.fn(leaf)
        except Exception:  # noqa: BLE001 - a function of one batch size: no slope
            return _Passes(saved, t_f, t_b, None, None, leak)
        torch.autograd.grad(y, leaf, torch.ones_like(y), allow_unused=True)
        sync()
        slope = min(slope, max(0.0, clock() - start - t_f - t_b))
        if moved is None:  # the first pass's output: each pass computes the same
            moved = (y.detach() - torch.cat([once, flat.values(other)])).abs().flatten(1).amax(0)
        if (rows - 1) * slope <= (ESTIMATE_CUT - 1) * (t_f + t_b):
            break
    return _Passes(saved, t_f, t_b, slope, moved, leak)


def _leak(grad: torch.Tensor, group: torch.Tensor) -> str | None:
    """Where the input gradient (B, N) of ``group``'s outputs reached other samples, or None. For
    independent samples those rows are exactly 0 (a vjp is linear in its cotangent, and theirs is
    0), so any other value is coupling; a floor at the rounding of the group's own gradient, as
    the value probe's, missed a coupled output at 1e-3 beside a block at 1e3 in float32 (a second
    fresh user). Non-finite gradients (0 x inf) say nothing: None."""
    if bool(group.all()) or not bool(torch.isfinite(grad).all()):
        return None
    other = grad[~group].abs().max(1).values
    reached = (other > 0).nonzero().flatten()
    if not len(reached):
        return None
    samples = torch.arange(len(group), device=group.device)
    named = ", ".join(map(str, samples[~group][reached][:5].tolist()))
    return (f"the outputs of samples {', '.join(map(str, samples[group][:5].tolist()))}"
            f"{', ...' if int(group.sum()) > 5 else ''} have a gradient with respect to sample(s) "
            f"{named}{', ...' if len(reached) > 5 else ''} (up to {float(other.max()):.3g}), "
            "though their values do not move with them: samples interact through autograd "
            "alone (a straight-through or detach term over the batch, a custom backward that "
            "mixes samples)")

class _Route:
    """What a cache entry holds: the plan and its route; while the race is still being run on the
    caller's own calls (NOTE [auto plan]), each call runs the race's next candidate instead."""

    def __init__(self) -> None:
        self.plan: Plan | None = None
        self.route: Callable[[Flat], torch.Tensor] | None = None
        self.explore: Callable[[Flat, bool], torch.Tensor] | None = None
        self.last = ""  # the method that computed the latest value
        self.finishers: list[tuple[str, int, int]] = []

    def __call__(self, flat: Flat, useful: bool = True) -> torch.Tensor:
        if self.explore is not None:
            return self.explore(flat, useful)
        self.last = self.plan.method  # type: ignore[union-attr]
        return self.route(flat)  # type: ignore[misc]

    def finish(self, flat: Flat) -> Plan:
        """Run what is left of the race here (its values thrown away); the plan."""
        while self.explore is not None:
            self.explore(flat, False)
        return self.plan  # type: ignore[return-value]


def _make_plan(flat: Flat, max_memory: int | None, explore: bool, checked: float = 0.0) -> _Route:
    """Probe ``flat``, pick the candidates and start the race (NOTE [auto plan]); ``explore``:
    the race runs on the caller's calls (their values used), else on the first that needs it;
    ``checked``: seconds the first call spent checking the input before (stated in the plan's
    cost, not counted in the race's budget: NOTE [auto plan])."""
    b, m, n = flat.batch_size, flat.n_out, flat.n_in
    device = flat.x.device
    clock, sync = timer(device), synchronizer(device)
    warm_start = clock()
    warm_up_transforms("reverse")
    warm_up_methods(flat.x.dtype, str(device))
    warmed = clock() - warm_start  # once per process and dtype: 0.0 after the first plan
    start = clock()
    noise, center = check_determinism(flat)  # a function with randomness has no Jacobian
    coupled = check_coupling(flat, seed=0, noise=noise, center=center).reason
    order, why = _candidates(m, n)
    if any(get_methods([c])[0].mode == "forward" for c in order) and not coupled:
        forward_start = clock()  # forward AD: warm it up too
        warm_up_transforms("forward")
        warmed += clock() - forward_start
        start += clock() - forward_start  # the coupling probe counts, the warm-up does not
    saved, t_f, t_b, slope, moved, leak = _pass_times(
        flat, clock, sync, m if "repeat_trick" in order and not coupled else None)
    coupled = coupled or leak
    if coupled:
        order, rows = ("batched_grad_per_sample",), {"batched_grad_per_sample": b * m}
        why = f"samples interact ({coupled}): rows of the full Jacobian, B*M = {b * m}"
    else:
        rows = {c: (n if c in FORWARD_FAMILY else m) for c in order}
    per_row = max(saved, 1)
    jac_bytes = b * m * n * flat.x.element_size()
    if max_memory is not None and max_memory < jac_bytes + per_row:
        raise JacobianTooLarge(
            f"max_memory={max_memory} bytes cannot hold the Jacobian (B, M, N) = ({b}, {m}, {n}), "
            f"{jac_bytes} bytes, and one row's pass ({per_row} bytes the forward saves): pass "
            f"max_memory={jac_bytes + per_row} or more, or fewer samples")
    budget = max_memory or max(2 * jac_bytes + per_row, MEMORY_FLOOR)
    estimates: dict[str, float] = {}
    if any(c in LOOPS for c in order):
        pair = t_f + t_b
        estimates = {"loop_rows": 1.2 * m * t_b, "double_backward": 1.2 * n * t_b,
                     "repeat_trick": 0.5 * m * pair if slope is None
                     else max(pair, pair - slope + m * slope)}
    vectorized = [c for c in order if c not in estimates]  # then the loops, cheapest predicted first
    order = (*vectorized, *sorted((c for c in order if c in estimates), key=estimates.get))
    chunks, refused = {}, {}
    fits = max(1, (budget - jac_bytes) // per_row)  # rows of a vectorized pass within the budget
    # the batch twice over moved a sample's output: fn depends on the batch's size or a sample's
    # position, and repeat_trick (M copies) answers another function's Jacobian (a fresh user:
    # `/ z.shape[0]`, 1/3 of the true value, planned in 2 processes of 3 and raced in all)
    # (per output, as the coupling probe's floor: NOTE [coupling threshold])
    if moved is not None and not bool((moved > resolution(center, noise, per_output=True)).any()):
        moved = None
    for name in order:
        if name == "repeat_trick" and moved is not None:
            refused[name] = (f"fn's output on the batch twice over moved by "
                             f"{float(moved.max()):.3g} from its "
                             "output on each copy alone: it depends on the batch's size, a "
                             "sample's position or the other samples, and repeat_trick calls it "
                             "on M copies")
        elif name in _ONE_PASS and fits < rows[name]:
            refused[name] = "does not fit in one pass"
        else:
            chunks[name] = 1 if name in _ONE_ROW else int(min(rows[name], fits))
    probes = clock() - start
    steps = racing([c for c in order if c in chunks], estimates=estimates, fallbacks=FALLBACKS,
                   siblings=SIBLINGS, budget=RACE_BUDGET, spent=checked + probes,
                   rounds=EXPLORE_ROUNDS if explore else ROUNDS, useful=explore, primed=True)
    route = _Route()
    calls: list[tuple[float, bool]] = []  # (seconds, value used) of every call the race made

    def conclude(result: Race) -> None:
        name = result.winner
        chosen_rows = rows
        if name is None:  # every candidate raised: reverse mode over the outputs, which every op has
            name, chosen_rows = "batched_grad", {"batched_grad": m}
            chunks[name] = int(min(m, fits))
        chunk = chunks[name]
        dropped = {**refused, **result.dropped}
        text = why
        if len(result.first) + len(result.dropped) > 1:
            times = ", ".join(f"{c} {t * 1e3:.3g} ms" for c, t in sorted(result.times.items(),
                                                                        key=lambda kv: kv[1]))
            text += f"; {name} won the race of {', '.join(order)} ({times})"
        else:
            text += f"; {name}"
        if dropped:
            text += f" (dropped: {'; '.join(f'{c} {r}' for c, r in dropped.items())})"
        if result.lost:
            text += f" (lost: {'; '.join(f'{c} {r}' for c, r in result.lost.items())})"
        if chunk < chosen_rows[name]:
            text += (f"; {math.ceil(chosen_rows[name] / chunk)} passes of {chunk} rows"
                     + (" (a loop: one row per pass)" if name in _ONE_ROW
                        else f" to stay within {budget} bytes"))
        steady = result.steady or max(probes, 1e-9)
        kept = sum(kept for _, kept in calls)
        # a call that answered the caller costs its time beyond one call of the plan, never less
        # (summed net, a median inflated by noisy rounds made the cost -0.9 calls)
        seconds = checked + probes + sum(t if not k else max(0.0, t - steady) for t, k in calls)
        text += (f"; planned in {seconds * 1e3:.3g} ms = {seconds / steady:.1f} calls of the plan "
                 f"(the input's checks {checked * 1e3:.2g} ms, the probes {probes * 1e3:.3g} ms, "
                 f"then {len(calls)} call{'s' * (len(calls) != 1)} of candidates"
                 + (f", {kept} of which answered the caller's calls and count only beyond one "
                    "call of the plan" if kept else "") + ")")
        if warmed > 0.01:
            text += (f"; after {warmed:.2g} s warming up torch's transforms (once per process "
                     "and dtype)")
        route.plan = Plan(name, chunk, chosen_rows[name], text, budget, seconds, seconds / steady)
        route.route = runner(name, _passes(chunk, chosen_rows[name]))
        route.finishers = [(c, chunks[c], rows[c]) for c in sorted(result.times,
                                                                   key=result.times.get)]
        route.explore = None

    pending: list[str | None] = [None]
    # looked up once: get_methods per call was a third of a racing call's 28 us beyond its
    # candidate (64-64-64 at B=16: 54-85 racing calls, 1.5-2.4 ms, 4 calls of the plan)
    runs = {c: runner(c, _passes(chunks[c], rows[c])) for c in chunks}

    def step(fl: Flat, useful: bool) -> torch.Tensor:
        """One call of the race on ``fl``; the value of the first candidate that does not raise."""
        while route.explore is not None:
            name = str(pending[0])
            compute = runs[name]
            sync()
            begin = clock()
            try:
                value = compute(fl)
                sync()
                outcome: float | BaseException = clock() - begin
            except Exception as e:  # noqa: BLE001 - the race drops it (NOTE [race])
                evaluate(fl.fn, (fl.x,))  # fn itself raises on this input (FunctionRaised, as
                # on a first call): the caller's error, not the candidate's; the race goes on
                value, outcome = None, e
            calls.append((clock() - begin, useful and value is not None))
            try:
                pending[0] = steps.send(outcome)
            except StopIteration as stop:
                conclude(stop.value)
            if value is not None:
                route.last = name
                return value
        return route(fl, useful)

    route.explore = step
    try:
        pending[0] = next(steps)
    except StopIteration as stop:  # nothing to race
        conclude(stop.value)
    return route


def compile_route(route: Callable[[torch.Tensor], torch.Tensor], backend: str
                  ) -> Callable[[torch.Tensor], torch.Tensor]:
    """``torch.compile(route, backend=backend)``: the one place a route is compiled."""
    return torch.compile(route, backend=backend)


def _compiled_plan(eager: _Route, flat: Flat, backend: str) -> _Route:
    """NOTE [compiled route]: compile, judge against the eager value, race; keep the fastest."""
    from jacverify.compare import Reference, Scales, tolerances
    from jacverify.judge import Status, judge
    from jacverify.methods import Method

    chosen, finishers = eager.plan, eager.finishers
    assert chosen is not None  # the eager race has finished
    device = flat.x.device
    clock = timer(device)
    start = clock()
    expected = eager(flat)
    routes = [(chosen.method, chosen.chunk_size, chosen.rows)]
    routes += sorted((r for r in finishers if r[0] != chosen.method),
                     key=lambda r: r[0] not in TRACEABLE)  # the others by their eager time
    verified: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {}
    chunk_of = {name: (chunk, rows) for name, chunk, rows in routes}
    notes = []
    for name, chunk, rows in routes[:COMPILE_ROUTES]:
        compute = runner(name, _passes(chunk, rows))
        compiled = compile_route(
            lambda z, compute=compute, f=flat: compute(Flat(f.fn, z, f.in_shapes, f.out_shapes)),
            backend)
        candidate = Method(f"compiled {name}", lambda fl, c=compiled: c(fl.x), "reverse",
                           vectorized=True, assumes_independent=True)
        verdict = judge(candidate, flat, None, 2**62, (Reference(f"eager {chosen.method}",
                                                                 expected),),
                        None, flat.x.dtype, tolerances(), Scales(), runs=1)
        if verdict.status == Status.AGREE:
            verified[name] = compiled
            notes.append(f"compiled {name} verified against eager {chosen.method}")
        else:
            detail = verdict.reason or (describe_worst(verdict.worst) if verdict.worst else "")
            notes.append(f"compiled {name} rejected ({verdict.status}: {detail[:200]})")
    compile_seconds = clock() - start
    calls = {"eager": lambda: eager(flat),
             **{name: (lambda c=c: c(flat.x)) for name, c in verified.items()}}
    result = race(calls, device, budget=PLANNING_BUDGET) if verified else None
    why = f"{chosen.reason}; compile={backend!r}: {'; '.join(notes)}"
    why += f" ({compile_seconds:.3g} s compiling and verifying)"
    route = _Route()
    if result is None or result.winner in (None, "eager"):
        route.plan = Plan(chosen.method, chosen.chunk_size, chosen.rows,
                          why + ("; the eager route stays (as fast or faster)" if verified else ""),
                          chosen.memory_budget, chosen.planning_seconds, chosen.planning_calls)
        route.route = eager.route
        return route
    name = result.winner
    compiled = verified[name]
    why += (f"; compiled {name} {result.times[name] * 1e3:.3g} ms against eager "
            f"{result.times['eager'] * 1e3:.3g} ms: used")
    route.plan = Plan(name, *chunk_of[name], why, chosen.memory_budget, chosen.planning_seconds,
                      chosen.planning_calls, backend)
    route.route = lambda fl: compiled(fl.x)
    return route


def _passes(chunk: int, rows: int) -> int | None:
    """The chunk size argument: None (one unchunked pass) when every row fits in one."""
    return None if chunk >= rows else chunk


def runner(name: str, chunk_size: int | None) -> Callable[[Flat], torch.Tensor]:
    """The registered method ``name`` with ``chunk_size`` rows per pass (None: one pass), as
    ``f(flat)`` (``Method.runner``): what the race times and the plan runs."""
    return get_methods([name])[0].runner(chunk_size)


# one pass whatever the chunk: only chosen when that pass fits
_ONE_PASS = {"functional_vectorized"}
# a Python loop over the rows, one per pass: fits any budget that holds one row
_ONE_ROW = {"loop_rows", "double_backward"}


def _verify(fn, x: torch.Tensor, value: torch.Tensor, name: str, probes: int, seed: int) -> None:
    from jacverify.compare import compare, tolerances
    from jacverify.references import pinned_nothing, prechecked
    from jacverify.oracles.projections import draw_probes, project, projection_reference

    check_int("probes", probes, min_value=1)
    case = make_case(fn, x, seed=seed)
    pre = prechecked(case)
    ref_flat = pre.ref_flat
    drawn = draw_probes(ref_flat, probes, seed, pre.coupling.coupled)
    ref, scale = projection_reference(ref_flat, drawn)
    c = compare(project(value, drawn), ref, case.dtype, tolerances().floored(ref_flat.precision),
                derivative_scale=scale)
    unresolved = pinned_nothing(ref)
    if c.passed and unresolved:  # agreeing within that says nothing (a fresh user: 10% passed)
        raise NotVerified(
            f"batch_jacobian via {name} could not be verified (uᵀJv over {probes} random "
            f"probes): {unresolved}; run jacverify.check(fn, x) for the full check, or pass "
            "inputs where fn is smooth and a function that runs in float64 (an nn.Module, or one "
            "that follows its input's dtype)", None)  # type: ignore[arg-type]
    if not c.passed:
        raise MismatchError(
            f"batch_jacobian via {name} failed its verification (uᵀJv over {probes} random "
            f"probes): {describe_worst(c, f'probe {c.worst_index[0]}')}; tolerance: {c.tolerance}; run "
            "jacverify.check(fn, x) to see which methods are wrong and where", None)  # type: ignore[arg-type]
