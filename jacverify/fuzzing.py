"""The network fuzzer: draw cases with Hypothesis, require every applicable method to agree, shrink
the first failure to a minimal case and print it as code that replays it. A thin variant over the
one loop in :mod:`jacverify.campaign`."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from jacverify.campaign import DEFAULT_SHRINK_SECONDS, Campaign, Trial
from jacverify.judge import Verdict, campaign_verdict
from jacverify.errors import NonFiniteOutput
from jacverify.quantity_table import get_standalone
from jacverify.report import Report
from jacverify.specs import CaseSpec

__all__ = ["fuzz", "case_trial", "FuzzResult", "FuzzFailure", "DEFAULT_SHRINK_SECONDS"]


@dataclass(frozen=True)
class FuzzFailure:
    """The shrunk failing case, its report (or the error it raised), and a snippet replaying it."""

    case: CaseSpec
    snippet: str
    report: Report | None = None
    error: str | None = None


@dataclass(frozen=True)
class FuzzResult:
    """What a campaign ran and found (:class:`~jacverify.campaign.CampaignResult`): ``examples``
    counts every case checked, shrinking included, ``rejected`` those with non-finite outputs;
    ``failed_at`` is the case that first failed (1 when a saved failure was replayed first)."""

    examples: int
    rejected: int
    seconds: float
    seed: int
    counts: Mapping[str, Mapping[str, int]] = field(default_factory=dict)
    failure: FuzzFailure | None = None
    failed_at: int | None = None
    verified: int = 0  # cases whose check passed (NOTE [earned verdict])
    reasons: Mapping[str, str] = field(default_factory=dict)  # method -> why it did not apply

    @property
    def verdict(self) -> Verdict:
        """NOTE [earned verdict]: failed, passed (a case verified) or unverified."""
        return campaign_verdict(self.failure is not None, self.verified)

    @property
    def passed(self) -> bool:
        return self.verdict == Verdict.PASSED


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
            next time (:class:`~jacverify.campaign.Campaign`). Either way ``result.seed`` seeds
            the checks' coupling probes.
        database: ``"profile"`` (the active Hypothesis profile's), a directory path, a Hypothesis
            ``ExampleDatabase``, or None for none.
        shrink_seconds: how long to shrink a failure (NOTE [shrink budget] in
            :mod:`jacverify.campaign`).
        shrink_examples: how many new cases to shrink a failure with (None: no count limit).
        on_example: called with ``(case, report)`` after every case (``report`` is None when
            the case was rejected or raised), e.g. to advance a progress bar.

    Returns:
        A :class:`FuzzResult`; ``result.failure.snippet`` replays a failure. Failures are saved in
        the example database and replayed first next time.

    Raises:
        InvalidArgument: an argument is out of range, or a method or quantity is unknown.

    >>> from jacverify.strategies import cases, networks
    >>> result = fuzz(cases=cases(networks=networks(max_depth=1)), max_examples=3, seed=0)
    >>> result.passed, result.examples
    (True, 3)
    """
    import jacverify
    from jacverify.strategies import cases as default_cases

    campaign = Campaign(max_examples=max_examples, seconds=seconds, seed=seed, database=database,
                        shrink_seconds=shrink_seconds, shrink_examples=shrink_examples)
    get_standalone(quantity)
    if methods is not None:
        jacverify.get_methods(methods, quantity)  # validates names before any example runs
    strategy = cases if cases is not None else default_cases(quantity=quantity)

    reasons: dict[str, str] = {}  # method -> why it first did not agree, and on what network

    def check(case: CaseSpec) -> Trial[CaseSpec, Report]:
        trial = case_trial(case, methods=methods, seed=campaign.seed)
        for r in (trial.outcome.results if trial.outcome is not None else ()):
            if r.status not in ("agree", "mismatch") and r.reason and r.method not in reasons:
                layers = "-".join(type(layer).__name__ for layer in case.network.layers)
                reasons[r.method] = f"{r.status}: {r.reason} (first on {layers}, batch " \
                                    f"{case.batch_size}, {case.dtype})"
        return trial

    result = campaign.run(
        strategy, check,
        key=f"jacverify.fuzz {strategy!r} methods={methods!r}",
        replay=lambda t: t.example.snippet(methods, campaign.seed, campaign.seeded),
        tally=lambda report: ((r.method, r.status) for r in report.results),
        on_example=on_example and (lambda t: on_example(t.example, t.outcome)))
    f = result.failure
    failure = f and FuzzFailure(f.example, result.snippet or "", report=f.outcome, error=f.error)
    return FuzzResult(result.examples, result.rejected, result.seconds, result.seed, result.counts,
                      failure, result.failed_at, result.verified, reasons)


def case_trial(case: CaseSpec, *, methods: Sequence[str] | None = None,
               seed: int = 0) -> Trial[CaseSpec, Report]:
    """One drawn case, judged as :func:`fuzz` judges it (rejected when its output is not finite);
    ``jacverify.campaign_tests`` runs the same judgement as a pytest-collected Hypothesis test."""
    try:
        report = case.check(methods=methods, seed=seed, warm_timing=False)
    except NonFiniteOutput:
        return Trial(Verdict.REJECTED)
    return Trial(report.verdict, report)
