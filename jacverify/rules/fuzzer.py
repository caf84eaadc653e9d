"""``fuzz_batching_rule``: draw examples with Hypothesis, run the checks, shrink the first failure."""

from __future__ import annotations

import dataclasses
import random
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from jacverify.errors import InvalidArgument
from jacverify.rules.checks import CHECKS, LAYOUTS, CheckOutcome, RuleExample, build_args, run_checks
from jacverify.rules.targets import RuleTarget, as_target

__all__ = ["fuzz_batching_rule", "rule_examples", "RuleReport", "RuleFailure"]

DEFAULT_SHRINK_SECONDS = 30.0  # as NOTE [shrink budget] in jacverify.fuzzing


@dataclass(frozen=True)
class RuleFailure:
    """The shrunk failing example, what each check found on it, and code that replays it."""

    example: RuleExample
    outcomes: tuple[CheckOutcome, ...]
    snippet: str

    @property
    def mismatches(self) -> tuple[CheckOutcome, ...]:
        return tuple(o for o in self.outcomes if o.status == "mismatch")


@dataclass(frozen=True)
class RuleReport:
    """A fuzzing campaign on one rule: counts per check and status, and the failure if any."""

    target: str
    examples: int
    rejected: int
    seconds: float
    seed: int
    counts: Mapping[str, Mapping[str, int]] = field(default_factory=dict)
    failure: RuleFailure | None = None

    @property
    def passed(self) -> bool:
        return self.failure is None

    def describe(self) -> str:
        lines = [f"{self.target}: {'PASSED' if self.passed else 'FAILED'} ({self.examples} "
                 f"examples, {self.rejected} rejected, {self.seconds:.1f} s, seed {self.seed})"]
        if self.failure:
            for o in self.failure.mismatches:
                lines.append(f"  {o.check}: {o.detail}")
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


def _unbatched(target: RuleTarget, ex: RuleExample):
    """Call f on sample 0 alone; None when it rejects these inputs (the example is discarded)."""
    args = build_args(target, dataclasses.replace(ex, batch_size=max(1, ex.batch_size)))
    sample = [a.select(d, 0) if d is not None and hasattr(a, "select") else a
              for a, d in zip(args, ex.in_dims)]
    try:
        return target.fn(*sample)
    except Exception:  # noqa: BLE001 - e.g. shapes that do not broadcast: not the rule's fault
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
) -> RuleReport:
    """Fuzz the batching rule of ``rule`` against loops, and shrink the first failure.

    Args:
        rule: an op name ("ns::name"), a custom op, an ``autograd.Function`` subclass, or a
            function (its arguments from type hints or an ``example_input``).
        max_examples: examples to draw.
        seed: replays a campaign exactly (None: random, printed in the report).
        checks: which of ``CHECKS`` to run on each example.
        shrink_seconds: how long to shrink a failure.

    >>> from jacverify.examples.rules import MixesSamples, RowScaled
    >>> fuzz_batching_rule(RowScaled, max_examples=5, seed=0).passed
    True
    >>> report = fuzz_batching_rule(MixesSamples, max_examples=20, seed=0, shrink_seconds=600)
    >>> report.passed, report.failure.example.batch_size
    (False, 2)
    """
    from hypothesis import HealthCheck, given, reject, settings
    from hypothesis import seed as seed_with

    target = as_target(rule)
    if not isinstance(max_examples, int) or max_examples < 1:
        raise InvalidArgument(f"max_examples={max_examples!r} must be a positive int")
    unknown = [c for c in checks if c not in CHECKS]
    if unknown:
        raise InvalidArgument(f"checks={list(checks)!r}: {unknown} unknown (known: {CHECKS})")
    seed = random.randrange(2**31) if seed is None else seed
    counts: dict[str, dict[str, int]] = {}
    state: dict[str, Any] = {"examples": 0, "rejected": 0, "first": None, "last": None}
    failing: set[RuleExample] = set()

    def body(ex: RuleExample) -> None:
        first = state["first"]
        if first is not None and time.perf_counter() - first > shrink_seconds and ex not in failing:
            return  # past the shrink budget: only failures already seen still fail
        out = _unbatched(target, ex)
        if out is None:
            state["rejected"] += 1
            reject()
        ex = _with_out_dims(ex, out)
        state["examples"] += 1
        outcomes = tuple(run_checks(target, ex, checks))
        for o in outcomes:
            counts.setdefault(o.check, {}).setdefault(o.status, 0)
            counts[o.check][o.status] += 1
        if on_example:
            on_example(ex, outcomes)
        if any(o.status == "mismatch" for o in outcomes):
            failing.add(ex)
            state["first"] = state["first"] or time.perf_counter()
            state["last"] = (ex, outcomes)
            raise AssertionError(f"{target.name}: batching rule disagrees with the loop")

    start = time.perf_counter()
    test = settings(max_examples=max_examples, deadline=None, database=None, derandomize=False,
                    report_multiple_bugs=False, suppress_health_check=list(HealthCheck))(
        given(rule_examples(target, max_batch_size=max_batch_size))(body))
    failure = None
    try:
        seed_with(seed)(test)()
    except AssertionError:
        ex, outcomes = state["last"]
        failure = RuleFailure(ex, outcomes, _snippet(target, ex, outcomes))
    return RuleReport(target.name, state["examples"], state["rejected"],
                      time.perf_counter() - start, seed, counts, failure)


def _snippet(target: RuleTarget, ex: RuleExample, outcomes) -> str:
    bad = next(o.check for o in outcomes if o.status == "mismatch")
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
                      f"print(run_checks(target, example, checks=[{bad!r}]))"])
