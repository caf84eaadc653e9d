"""The fuzz loop: draw cases with Hypothesis, require every applicable method to agree, shrink the
first failure to a minimal case and print it as code that replays it."""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from jacverify.errors import InvalidArgument, MismatchError, NonFiniteOutput
from jacverify.report import Report
from jacverify.quantities import QUANTITIES
from jacverify.specs import CaseSpec

__all__ = ["fuzz", "FuzzResult", "FuzzFailure"]

CHUNK = 25  # examples per Hypothesis run when fuzzing for a time budget

# NOTE [shrink budget]
# Hypothesis shrinks until no smaller failing case exists, which for a batching-rule bug (it needs
# two distinct samples) took 190 s here. After `shrink_seconds` from the first failure, or
# `shrink_examples` calls after it (a budget that does not depend on the machine's load), every new
# candidate counts as passing without running and only cases already seen failing are re-checked,
# so Hypothesis stops at its best failure so far and replays it (it is in that set) as its result.
DEFAULT_SHRINK_SECONDS = 30.0


@dataclass(frozen=True)
class FuzzFailure:
    """The shrunk failing case, its report (or the error it raised), and a snippet replaying it."""

    case: CaseSpec
    snippet: str
    report: Report | None = None
    error: str | None = None


@dataclass(frozen=True)
class FuzzResult:
    """What a campaign ran (``examples`` counts every call, shrinking included) and found;
    ``failed_at`` is the call that first failed (1 when a saved failure was replayed first)."""

    examples: int
    rejected: int
    seconds: float
    seed: int
    counts: Mapping[str, Mapping[str, int]] = field(default_factory=dict)
    failure: FuzzFailure | None = None
    failed_at: int | None = None

    @property
    def passed(self) -> bool:
        return self.failure is None


def fuzz(
    *,
    cases=None,
    methods: Sequence[str] | None = None,
    quantity: str = "batch_jacobian",
    max_examples: int = 100,
    seconds: float | None = None,
    seed: int | None = None,
    database: Any = "profile",
    shrink_seconds: float = DEFAULT_SHRINK_SECONDS,
    shrink_examples: int | None = None,
    on_example: Callable[[CaseSpec, Report | None], None] | None = None,
) -> FuzzResult:
    """Draw cases, check each, and shrink the first failure to a minimal reproducer.

    Args:
        cases: a strategy of :class:`~jacverify.specs.CaseSpec` (default
            ``strategies.cases(quantity=quantity)``); each case runs its own quantity's check.
        quantity: the quantity of the default cases, and of the ``methods`` names.
        methods: method names to run (default: all registered).
        max_examples: examples to generate (when ``seconds`` is None).
        seconds: fuzz for this long instead, in runs of 25 examples with consecutive seeds.
        seed: replays a campaign exactly; like Hypothesis's ``@seed`` such a run saves nothing
            to the example database. None explores anew, saves failures and replays them first
            next time. Either way ``result.seed`` seeds the checks' coupling probes.
        database: a Hypothesis ``ExampleDatabase`` (or None) instead of the active profile's.
        shrink_seconds: how long to shrink a failure (NOTE [shrink budget]).
        shrink_examples: how many calls to shrink a failure with (None: no count limit).
        on_example: called after every example, e.g. to advance a progress bar.

    Returns:
        A :class:`FuzzResult`; ``result.failure.snippet`` replays a failure. Failures are saved in
        the Hypothesis example database of the active profile and replayed first next time.

    >>> from jacverify.strategies import cases, networks
    >>> result = fuzz(cases=cases(networks=networks(max_depth=1)), max_examples=3, seed=0)
    >>> result.passed, result.examples >= 3
    (True, True)
    """
    from hypothesis import HealthCheck, given, reject, settings
    from hypothesis import seed as seed_with

    import jacverify
    from jacverify.strategies import cases as default_cases

    if not isinstance(max_examples, int) or max_examples < 1:
        raise InvalidArgument(f"max_examples={max_examples!r} must be a positive int")
    if not shrink_seconds > 0:
        raise InvalidArgument(f"shrink_seconds={shrink_seconds!r} must be positive")
    if shrink_examples is not None and (not isinstance(shrink_examples, int) or shrink_examples < 0):
        raise InvalidArgument(f"shrink_examples={shrink_examples!r} must be an int >= 0 or None")
    if seconds is not None and not seconds > 0:
        raise InvalidArgument(f"seconds={seconds!r} must be positive (or None for max_examples)")
    if quantity not in QUANTITIES:
        raise InvalidArgument(f"quantity={quantity!r} is not one of {', '.join(QUANTITIES)}")
    if methods is not None:
        jacverify.get_methods(methods, quantity)  # validates names before any example runs
    strategy = cases if cases is not None else default_cases(quantity=quantity)
    seeded = seed is not None
    seed = random.randrange(2**31) if seed is None else seed
    counts: dict[str, dict[str, int]] = {}
    state: dict[str, Any] = {"examples": 0, "rejected": 0, "last": None, "first_failure": None,
                             "since_failure": 0, "failed_at": None}
    failing: dict[CaseSpec, None] = {}  # every case seen failing (ordered, hashable specs)

    def spent() -> bool:
        first = state["first_failure"]
        return first is not None and (
            time.perf_counter() - first > shrink_seconds
            or (shrink_examples is not None and state["since_failure"] > shrink_examples))

    def body(case: CaseSpec) -> None:
        if spent() and case not in failing:
            return  # past the shrink budget: only failures already seen still fail
        if state["first_failure"] is not None:
            state["since_failure"] += 1
        state["examples"] += 1
        state["last"] = case
        try:
            report = case.check(methods=methods, seed=seed, warm_timing=False)
        except NonFiniteOutput:
            state["rejected"] += 1
            if on_example:
                on_example(case, None)
            reject()
        for r in report.results:
            counts.setdefault(r.method, {}).setdefault(r.status, 0)
            counts[r.method][r.status] += 1
        if on_example:
            on_example(case, report)
        if not report.passed:
            failing[case] = None
            if state["first_failure"] is None:
                state["first_failure"] = time.perf_counter()
                state["failed_at"] = state["examples"]
            raise MismatchError(report.failure_message(), report)

    # one database key per campaign configuration, so saved failures replay where they belong
    body._hypothesis_internal_add_digest = repr((strategy, methods)).encode()  # type: ignore[attr-defined]
    start = time.perf_counter()
    run = 0
    failure = None
    while True:
        budget = CHUNK if seconds is not None else max_examples
        db = {} if database == "profile" else {"database": database}
        test = settings(settings(), max_examples=budget, deadline=None, derandomize=False, **db,
                        report_multiple_bugs=False,
                        suppress_health_check=list(HealthCheck))(given(strategy)(body))
        if seeded:
            test = seed_with(seed + run)(test)
        try:
            test()
        except MismatchError as e:
            case = state["last"]  # Hypothesis ends by replaying its minimal failure
            failure = FuzzFailure(case, case.snippet(methods, seed, seeded), report=e.report)
        except Exception as e:  # noqa: BLE001 - a case that raised is a finding too
            case = state["last"]
            failure = FuzzFailure(case, case.snippet(methods, seed, seeded) if case else "",
                                  error=f"{type(e).__name__}: {e}")
        run += 1
        if failure or seconds is None or time.perf_counter() - start >= seconds:
            break
    return FuzzResult(state["examples"], state["rejected"], time.perf_counter() - start, seed,
                      counts, failure, state["failed_at"] if failure else None)
