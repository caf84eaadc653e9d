"""``fuzz_batching_rule``: draw examples with Hypothesis, run the checks, shrink the first failure.
A thin variant over the one loop in :mod:`jacverify.campaign`."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from hypothesis.errors import Unsatisfiable

from jacverify.campaign import DEFAULT_SHRINK_SECONDS, Campaign, Trial
from jacverify.errors import InvalidArgument
from jacverify.judge import Verdict, campaign_verdict, raised
from jacverify.rules.checks import CHECKS, LAYOUTS, CheckOutcome, RuleExample, build_args, run_checks
from jacverify.rules.targets import RuleTarget, as_target

__all__ = ["fuzz_batching_rule", "rule_examples", "rule_trial", "RuleReport", "RuleFailure",
           "DEFAULT_SHRINK_SECONDS"]


@dataclass(frozen=True)
class RuleFailure:
    """The shrunk failing example, what each check found on it (or the error the checks raised),
    and code that replays it."""

    example: RuleExample
    outcomes: tuple[CheckOutcome, ...]
    snippet: str
    error: str | None = None

    @property
    def mismatches(self) -> tuple[CheckOutcome, ...]:
        return tuple(o for o in self.outcomes if o.status == "mismatch")


@dataclass(frozen=True)
class RuleReport:
    """A fuzzing campaign on one rule: counts per check and status, and the failure if any;
    ``failed_at`` is the example that first failed (1 when a saved failure was replayed first)."""

    target: str
    examples: int
    rejected: int
    seconds: float
    seed: int
    counts: Mapping[str, Mapping[str, int]] = field(default_factory=dict)
    failure: RuleFailure | None = None
    failed_at: int | None = None
    verified: int = 0  # examples on which at least one check agreed and none disagreed
    reason: str = ""  # why nothing could be fuzzed, when nothing could
    unsupported: Mapping[str, str] = field(default_factory=dict)  # check -> why it first raised

    @property
    def verdict(self) -> Verdict:
        """NOTE [earned verdict]: passed needs a verified example and no failure."""
        return campaign_verdict(self.failure is not None, self.verified)

    @property
    def passed(self) -> bool:
        return self.verdict == Verdict.PASSED

    def describe(self) -> str:
        lines = [f"{self.target}: {str(self.verdict).upper()} ({self.examples} examples, "
                 f"{self.verified} verified, {self.rejected} rejected, {self.seconds:.1f} s, "
                 f"seed {self.seed})"]
        if self.reason:
            lines.append(f"  {self.reason}")
        elif self.verdict == Verdict.UNVERIFIED:
            lines.append("  no example was verified: every check was unsupported (see the counts; "
                         "a transform that raised says why in each example's detail)")
        if self.failure:
            for o in self.failure.mismatches:
                lines.append(f"  {o.check}: {o.detail}")
            if self.failure.error:
                lines.append(f"  the checks raised {self.failure.error}")
            lines.append(f"  shrunk to {self.failure.example!r}; replay with:")
            lines += ["    " + line for line in self.failure.snippet.splitlines()]
        return "\n".join(lines)


def rule_examples(target: RuleTarget, *, max_batch_size: int = 4, max_ndim: int = 3,
                  max_side: int = 4):
    """Examples for ``target``: batch size (0 included: only the shape of vmap's result is checked
    there, and a rule that refuses it is "unsupported"), per-sample shapes (one shared base shape,
    square with a fair chance, or each its own), scalars, in_dims (any axis, negative ones, None for
    some but never all tensors), out_dims, memory layout and a seed. Shrinks towards batch 1, small
    shapes, in_dims 0, out_dims 0 and contiguous inputs."""
    from hypothesis import strategies as st

    tensors = target.tensors
    if not tensors:
        raise InvalidArgument(f"{target.name} takes no tensor argument; nothing to vmap over")

    side = st.integers(1, max_side)
    shapes = st.one_of(
        st.lists(side, min_size=1, max_size=max_ndim).map(tuple),
        st.tuples(st.integers(1, max_ndim), side).map(lambda nk: (nk[1],) * nk[0]))  # square
    scalar = {"float": st.integers(-8, 8).map(lambda k: k / 4), "int": st.integers(1, 3),
              "bool": st.booleans()}
    # 1..max_batch_size, shrinking towards 1; a batch of 0 one time in ten
    batch_sizes = st.integers(0, 9).map(lambda k: 0 if k == 9 else 1 + k % max_batch_size)

    @st.composite
    def build(draw) -> RuleExample:
        base = draw(shapes)
        per_shape, scalars, in_dims = [], [], []
        for arg in target.args:
            if arg.kind != "tensor":
                per_shape.append(None)
                scalars.append(draw(scalar[arg.kind]))
                in_dims.append(None)
                continue
            s = arg.shape if arg.shape is not None else (
                base if draw(st.integers(0, 3)) else draw(shapes))
            per_shape.append(tuple(s))
            scalars.append(None)
            d = draw(st.one_of(st.integers(-(len(s) + 1), len(s)), st.none())
                     if len(tensors) > 1 else st.integers(-(len(s) + 1), len(s)))
            in_dims.append(d)
        if all(in_dims[i] is None for i in tensors):
            in_dims[tensors[0]] = 0
        return RuleExample(draw(batch_sizes), tuple(per_shape), tuple(scalars),
                           tuple(in_dims), draw(st.integers(-2, 2)), draw(st.sampled_from(LAYOUTS)),
                           draw(st.integers(0, 2**16)))

    return build()


def _unbatched(target: RuleTarget, ex: RuleExample, refusals: list[str] | None = None):
    """Call f on sample 0 alone; None when it rejects these inputs (the example is discarded, and
    why is appended to ``refusals``)."""
    args = build_args(target, dataclasses.replace(ex, batch_size=max(1, ex.batch_size)))
    sample = [a.select(d, 0) if d is not None and hasattr(a, "select") else a
              for a, d in zip(args, ex.in_dims)]
    try:
        return target.fn(*sample)
    except Exception as e:  # noqa: BLE001 - e.g. shapes that do not broadcast: not the rule's fault
        if refusals is not None and len(refusals) < 3:
            shapes = ", ".join("scalar" if s is None else str(s) for s in ex.shapes)
            why = f"per-sample shapes ({shapes}): {raised(e)}"
            if why not in refusals:
                refusals.append(why)
        return None


def _with_out_dims(ex: RuleExample, out) -> RuleExample:
    ndim = min(t.ndim for t in (out if isinstance(out, (tuple, list)) else (out,)))
    return dataclasses.replace(ex, out_dims=ex.out_dims % (ndim + 1) if ex.out_dims >= 0
                               else -1 - (-1 - ex.out_dims) % (ndim + 1))


def fuzz_batching_rule(
    rule: object,
    *,
    max_examples: int = 100,
    seed: int | None = None,
    checks: Sequence[str] = CHECKS,
    max_batch_size: int = 4,
    shrink_seconds: float = DEFAULT_SHRINK_SECONDS,
    on_example: Callable[[RuleExample, tuple[CheckOutcome, ...]], None] | None = None,
    database: Any = "profile",
    shrink_examples: int | None = None,
    seconds: float | None = None,
) -> RuleReport:
    """Fuzz the batching rule of ``rule`` against loops, and shrink the first failure.

    Args:
        rule: an op name ("ns::name"), a custom op, an ``autograd.Function`` subclass, or a
            function (its arguments from type hints or an ``example_input``).
        max_examples: examples to draw (when ``seconds`` is None).
        seed: replays a campaign exactly; like Hypothesis's ``@seed`` such a run saves nothing
            to the example database. None explores anew, saves failures and replays them first
            next time (with no database, a random seed, printed in the report, replays it).
        checks: which of ``CHECKS`` to run on each example.
        max_batch_size: the largest batch drawn.
        shrink_seconds: how long to shrink a failure (NOTE [shrink budget] in
            :mod:`jacverify.campaign`).
        on_example: called with ``(example, outcomes)`` after every example that ran.
        database: ``"profile"`` (the active Hypothesis profile's), a directory path, a Hypothesis
            ``ExampleDatabase``, or None for none.
        shrink_examples: how many new examples to shrink a failure with (None: no count limit).
        seconds: fuzz for this long instead, in runs of ``CHUNK`` examples.

    Returns:
        A :class:`RuleReport`; ``report.failure.snippet`` replays a failure.

    Raises:
        InvalidArgument: ``rule`` cannot be fuzzed, a check is unknown, or a budget is out of
            range.

    >>> from jacverify.examples.rules import MixesSamples, RowScaled
    >>> fuzz_batching_rule(RowScaled, max_examples=5, seed=0).passed
    True
    >>> report = fuzz_batching_rule(MixesSamples, max_examples=20, seed=0, shrink_examples=100)
    >>> report.passed, report.failure.example.batch_size
    (False, 2)
    """
    target = as_target(rule)
    campaign = Campaign(max_examples=max_examples, seconds=seconds, seed=seed, database=database,
                        shrink_seconds=shrink_seconds, shrink_examples=shrink_examples)
    unknown = [c for c in checks if c not in CHECKS]
    if unknown:
        raise InvalidArgument(f"checks={list(checks)!r}: {unknown} unknown (known: {CHECKS})")
    checks = tuple(checks)
    unsupported: dict[str, str] = {}  # check -> the first reason it raised
    refusals: list[str] = []  # why the function refused drawn examples (the first three)

    def check(drawn: RuleExample) -> Trial[RuleExample, tuple[CheckOutcome, ...]]:
        return rule_trial(target, drawn, checks, refusals)

    def seen(trial: Trial) -> None:
        if trial.verdict is not Verdict.REJECTED:
            on_example(trial.example, trial.outcome or ())  # type: ignore[misc]

    try:
        result = campaign.run(
            rule_examples(target, max_batch_size=max_batch_size), check,
            key=(f"jacverify.fuzz_batching_rule {target.module}:{target.code} {target.args!r} "
                 f"checks={checks!r} max_batch_size={max_batch_size}"),
            replay=lambda t: _snippet(target, t.example, t.outcome or (), checks),
            tally=lambda outcomes: _tally(outcomes, unsupported),
            on_example=seen if on_example else None)
    except Unsatisfiable:
        why = "; ".join(refusals) or "no example could be drawn"
        return RuleReport(target.name, 0, 0, 0.0, campaign.seed, reason=(
            f"the function refused every drawn example when called on one sample, so no batching "
            f"rule was exercised: {why}. The fuzzer draws tensors of 0 to 3 axes of sizes 1 to 4 "
            "per sample, so an op that needs other shapes (a size-3 axis, a square matrix) is "
            "outside what it draws: wrap the op in a function that builds such inputs"))
    f = result.failure
    failure = f and RuleFailure(f.example, f.outcome or (), result.snippet or "", f.error)
    return RuleReport(target.name, result.examples, result.rejected, result.seconds, result.seed,
                      result.counts, failure, result.failed_at, result.verified,
                      unsupported=unsupported)


def _tally(outcomes, unsupported: dict[str, str]):
    """(check, status) per outcome, keeping the first reason each check was unsupported."""
    for o in outcomes:
        if o.status == "unsupported" and o.check not in unsupported:
            unsupported[o.check] = o.detail
        yield o.check, o.status


def rule_trial(target: RuleTarget, drawn: RuleExample, checks: Sequence[str] = CHECKS,
               refusals: list[str] | None = None) -> Trial[RuleExample, tuple[CheckOutcome, ...]]:
    """One drawn example, judged as :func:`fuzz_batching_rule` judges it: rejected when the
    function refuses it unbatched (why is appended to ``refusals``), failed on a mismatch;
    ``jacverify.campaign_tests`` runs the same judgement as a pytest-collected Hypothesis test."""
    out = _unbatched(target, drawn, refusals)
    if out is None:
        return Trial(Verdict.REJECTED)
    ex = _with_out_dims(drawn, out)
    outcomes = tuple(run_checks(target, ex, tuple(checks)))
    failed = any(o.status == "mismatch" for o in outcomes)
    agreed = any(o.status == "agree" for o in outcomes)
    return Trial(Verdict.FAILED if failed else Verdict.PASSED if agreed else Verdict.UNVERIFIED,
                 outcomes, example=ex)


def _snippet(target: RuleTarget, ex: RuleExample, outcomes, checks: Sequence[str]) -> str:
    bad = [o.check for o in outcomes if o.status == "mismatch"][:1] or list(checks)
    lines = ["from jacverify.rules import RuleExample, as_target, run_checks"]
    importable = target.module and target.module != "__main__" and not target.module.startswith("_")
    if target.code.startswith("torch.ops."):
        lines += [f"import {target.module}  # registers the op"] if importable else []
        ref = repr(target.name)
    else:
        ref = target.code.removesuffix(".apply")
        head = ref.split(".")[0]
        lines += [f"from {target.module} import {head}" if importable
                  else f"# define {head} here (from the file that defines it)"]
    return "\n".join([*lines,
                      f"target = as_target({ref})",
                      f"example = {ex!r}",
                      f"print(run_checks(target, example, checks={bad!r}))"])
