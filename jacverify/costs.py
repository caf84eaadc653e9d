"""What a method and the references will cost, before they run (NOTE [cost model]).

Each built-in method states its work as passes of the whole batch (:class:`Work`); the case's
unit costs (one forward, one reverse and one forward-mode pass, and the bytes a forward saves) are
measured once per check (:class:`UnitCosts`). The check then runs no method estimated to cost more
than its budget (:class:`Budget`) and picks full or projection verification from the same
estimates (:func:`choose_verification`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch

from jacverify.case import Flat
from jacverify.measure import saved_activation_bytes, synchronizer, timer

__all__ = ["Work", "UnitCosts", "Budget", "choose_verification", "reference_passes",
           "reference_bytes", "METHOD_BUDGET",
           "METHOD_BUDGET_FLOOR_PASSES", "FULL_WITHIN", "FULL_FLOOR_S"]

Kind = Literal["forward", "reverse", "jvp"]


# NOTE [cost model]
# A method's time is estimated as passes x the measured time of one pass of its kind over the whole
# batch: "reverse" (a forward and one backward with one cotangent), "jvp" (one forward-mode pass),
# "forward" (the function alone). A forward-mode pass is estimated as a reverse pass: both cost a
# forward and about as much again for the tangent or the cotangent, and timing one would pay
# forward AD's one-off set-up (30-90 ms here) in every check. A method that loops in Python over k rows makes k passes; one
# that vmaps over k rows makes one vectorized pass that costs about k passes of compute (less
# where per-call overhead dominates, so the estimate errs high for small layers: measured on the
# 784-256-256-10 MLP at B=32, forward_broadcast's 784 tangents were estimated at 1.3x their time
# and functional_vectorized_forward's B*N at 0.5-1x). A vectorized pass over k rows also holds k
# copies of what the forward saves for backward: `held` x the measured saved bytes, plus the
# (B, M, N) result, is its memory estimate. The unit times are CPU time on the CPU (NOTE [which
# clock]), the best of two calls after one warm-up, so the estimates are ratios of shapes more
# than of machine load.
@dataclass(frozen=True)
class Work:
    """A method's work on a case: ``passes`` passes of ``kind`` over the whole batch, ``held`` of
    them alive at once (a vectorized pass), per NOTE [cost model].

    >>> Work(784, "jvp", held=784).describe()
    '784 forward-mode passes of the batch, vectorized'
    """

    passes: float
    kind: Kind
    held: float = 1

    def describe(self) -> str:
        what = {"forward": "forward passes", "reverse": "backward passes",
                "jvp": "forward-mode passes"}[self.kind]
        count = f"{self.passes:,.0f}"
        return f"{count} {what} of the batch" + (", vectorized" if self.held > 1 else "")


@dataclass(frozen=True)
class UnitCosts:
    """Seconds of one pass of each kind over the case's batch, and bytes one forward saves."""

    forward: float
    reverse: float  # a forward-mode pass is estimated as this too (NOTE [cost model])
    saved_bytes: int

    @classmethod
    def measure(cls, flat: Flat) -> UnitCosts:
        """Time a forward and a reverse pass on ``flat`` (NOTE [cost model]); a backward that
        raises is estimated at three forwards (the methods then say what raised)."""
        x = flat.x.detach()
        clock = timer(x.device)
        sync = synchronizer(x.device)

        def best(run) -> float:
            times = []
            for _ in range(3):
                sync()
                start = clock()
                run()
                sync()
                times.append(clock() - start)
            return min(times[1:])

        def reverse():
            leaf = x.clone().requires_grad_()
            y = flat.fn(leaf)
            torch.autograd.grad(y, leaf, torch.ones_like(y))

        forward = best(lambda: flat.values(x))
        try:
            back = best(reverse)
        except Exception:  # noqa: BLE001 - a backward that raises: the methods will say so
            back = 3 * forward
        try:
            saved = saved_activation_bytes(flat.fn, x)
        except Exception:  # noqa: BLE001 - the function ran above; a hook it refuses costs nothing
            saved = 0
        return cls(forward, back, saved)

    def seconds(self, work: Work) -> float:
        """The estimated time of ``work``."""
        return work.passes * (self.forward if work.kind == "forward" else self.reverse)

    def bytes(self, work: Work, result_bytes: int) -> int:
        """The estimated memory of ``work``: what its vectorized pass holds, plus its result."""
        return int(work.held * self.saved_bytes) + result_bytes if work.held > 1 else result_bytes


# NOTE [method budget]
# A check runs every registered method whose estimated time (NOTE [cost model]) is within
# METHOD_BUDGET times the cheapest estimate among the methods that apply, or whose work is at most
# METHOD_BUDGET_FLOOR_PASSES passes of the batch whatever the ratio (so small cases run everything).
# A method over it is `not_applicable` with its estimate and the budget, never run blindly: on the
# 784-256-256-10 MLP at B=32 functional_vectorized_forward (B*N tangents through the whole batch)
# took 17 s and 7 GB, 7,000 times one vmap(jacrev) call. Methods named in `methods=` always run;
# `method_budget=None` runs every method.
#
# Both rules read the machine's speed only through ratios: every built-in Work is reverse or jvp
# passes, priced alike, so the ratio is one of pass counts and the floor is a pass count. The same
# case therefore runs the same methods on a laptop, a loaded CI machine and a GPU. The floor was
# 10 ms of estimated time until a CI run on a loaded machine measured the 6 x 5 cube's pass at
# over 0.33 ms and dropped functional_vectorized_forward (30 passes) from a check whose tests
# expect every method. 64 passes is the loop over 8 samples of 8 outputs (B M backward passes),
# the size of the cases the full references take as a matter of course (NOTE [verification
# choice]): a method within it costs no more than the loop reference the check runs anyway.
METHOD_BUDGET = 5.0
METHOD_BUDGET_FLOOR_PASSES = 64


@dataclass(frozen=True)
class Budget:
    """The most seconds a method may be estimated to take in this check, and why; a method of at
    most METHOD_BUDGET_FLOOR_PASSES passes is within it whatever its time (NOTE [method budget]).

    >>> units = UnitCosts(forward=1e-3, reverse=2e-3, saved_bytes=0)
    >>> budget = Budget.of(units, [Work(3, "reverse"), Work(500, "jvp")], 5.0)
    >>> budget.refuses(Work(64, "jvp")) is None and budget.refuses(Work(500, "jvp")) is not None
    True
    """

    units: UnitCosts
    seconds: float
    why: str

    @classmethod
    def of(cls, units: UnitCosts, works: list[Work], factor: float | None) -> Budget | None:
        """The budget of NOTE [method budget] for methods whose works are ``works``; None when
        ``factor`` is None (no budget) or no method has an estimate."""
        if factor is None or not works:
            return None
        cheapest = min(units.seconds(w) for w in works)
        return cls(units, factor * cheapest,
                   f"{factor:g}x the cheapest method's estimate ({cheapest * 1e3:.2g} ms)")

    def refuses(self, work: Work) -> str | None:
        """Why ``work`` is over this budget, or None."""
        estimate = self.units.seconds(work)
        if estimate <= self.seconds or work.passes <= METHOD_BUDGET_FLOOR_PASSES:
            return None
        return (f"estimated {_seconds(estimate)} ({work.describe()}), over this check's method "
                f"budget of {_seconds(self.seconds)} ({self.why}) and over "
                f"{METHOD_BUDGET_FLOOR_PASSES} passes (NOTE [method budget]); name it "
                "in methods= to run it anyway, or pass method_budget=None")


# NOTE [verification choice]
# verification="auto" (the default) runs the full references -- finite differences of every input
# entry, 6 N forward passes (6 N B when samples interact), and the float64 loop, B M backward
# passes of about 3 forwards each (`reference_passes`, the estimate NOTE [cost estimate] refuses
# over time_budget) -- when their estimate is within FULL_WITHIN times the cheapest method's
# estimate or under
# FULL_FLOOR_S, and fit max_memory; otherwise the projections of NOTE [projection probes], a few
# passes per probe whatever N. The report says which ran and why.
FULL_WITHIN = 10.0
FULL_FLOOR_S = 0.5


def reference_passes(flat: Flat, coupled: bool, second_order: bool = False) -> int:
    """Forward passes the full references of ``flat`` take (NOTE [cost estimate] in
    :mod:`jacverify.references`): finite differences of every input entry and the loop."""
    b, m, n = flat.batch_size, flat.n_out, flat.n_in
    groups = b if coupled else 1
    return 6 * n * 3 * m * groups if second_order else 6 * n * groups + 3 * b * m


def reference_bytes(flat: Flat) -> int:
    """Bytes of the full references' three float64 copies of (B, M, N)."""
    return 3 * flat.batch_size * flat.n_out * flat.n_in * 8


def choose_verification(units: UnitCosts, flat: Flat, coupled: bool, cheapest: float | None,
                        max_memory: int) -> tuple[str, str]:
    """"full" or "projection", and why (NOTE [verification choice])."""
    refs = reference_passes(flat, coupled) * units.forward
    need = reference_bytes(flat)
    if need > max_memory:
        return "projection", (f"the full references need {need / 2**20:.0f} MiB, over max_memory")
    if refs <= FULL_FLOOR_S or (cheapest is not None and refs <= FULL_WITHIN * cheapest):
        rule = (f"under {FULL_FLOOR_S:g} s" if refs <= FULL_FLOOR_S else
                f"within {FULL_WITHIN:g}x the cheapest method's estimate ({_seconds(cheapest or 0)})")
        return "full", (f"full references estimated at {_seconds(refs)}, {rule} "
                        "(NOTE [verification choice])")
    return "projection", (f"full references estimated at {_seconds(refs)}, over "
                          f"{FULL_WITHIN:g}x the cheapest method's estimate ({_seconds(cheapest or 0)})"
                          f" and over {FULL_FLOOR_S:g} s (NOTE [verification choice])")


def _seconds(s: float) -> str:
    return f"{s:.2g} s" if s >= 0.1 else f"{s * 1e3:.2g} ms"
