"""Fuzz campaigns as Hypothesis tests that pytest collects, so that the ecosystem's own runners drive
long campaigns: pytest-xdist spreads the tests over processes, HypoFuzz (``hypothesis fuzz``)
fuzzes them adaptively over processes with a dashboard, and every runner shares failures through
the example database (NOTE [shared example database] in :mod:`jacverify.databases`)::

    pytest --pyargs jacverify.campaign_tests -n 2 --jacverify-profile fuzz
    hypothesis fuzz -n 2 --no-dashboard -- --pyargs jacverify.campaign_tests

Each test judges one drawn example exactly as its fuzzer does (:func:`jacverify.fuzzing.case_trial`,
:func:`jacverify.rules.fuzzer.rule_trial`, :func:`jacverify.rules.ops.check_op`): the network
fuzzer on each standalone quantity, the rule fuzzer on jacverify's example rules, and the operator
fuzzer (one drawn-values seed per example) on ``jacverify.rules.ops.DEFAULT_OPS``. The builders
:func:`network_test`, :func:`rule_test` and :func:`operator_test` make the same tests for your own
rules and operators in your own test module::

    from jacverify.campaign_tests import rule_test
    from mypackage import MyFunction

    test_my_rule = rule_test(MyFunction)

NOTE [campaign tests]
Hypothesis keys a test's saved failures by a digest of its function's source; every test built
here shares one body, so each adds its configuration to that digest (the attribute Hypothesis
itself sets for pytest parametrizations). Under pytest, Hypothesis's plugin and HypoFuzz replace
that addition with the test's node id, which is distinct per test too: workers that share a
database share failures when they name the tests alike (the same ``--pyargs`` command). The tests leave ``max_examples`` and the database to the
loaded profile (``--jacverify-profile``, ``--hypothesis-profile``) and to ``--jacverify-database``:
HypoFuzz requires a test's database to be the default one. They count the same names and statuses
as the fuzzers' tables as Hypothesis events (``--hypothesis-show-statistics``, HypoFuzz's
dashboard). The module's name does not match pytest's ``test_*.py``, so a plain ``pytest`` run of a
project does not collect it; naming it (``--pyargs jacverify.campaign_tests``) does.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from hypothesis import HealthCheck, event, given, reject, settings
from hypothesis import strategies as st

from jacverify.campaign import Trial
from jacverify.judge import Verdict

__all__ = ["campaign_test", "network_test", "rule_test", "operator_test"]

_SLOW = [HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much]


def campaign_test(examples: Any, judge: Callable[[Any], Trial], *, key: str,
                  tally: Callable[[Any], Iterable[tuple[str, str]]] | None = None,
                  describe: Callable[[Trial], str] | None = None,
                  name: str = "test_campaign") -> Callable[..., None]:
    """A Hypothesis test drawing from ``examples`` and judging each with ``judge``: a rejected
    example is discarded, a failed one fails the test (Hypothesis shrinks it the way ``examples``
    shrinks and saves it in the example database), passed and unverified ones pass.

    Args:
        examples: a strategy of printable examples.
        judge: judges one example (NOTE [one campaign] in :mod:`jacverify.campaign`).
        key: the campaign's configuration, added to the test's database key
            (NOTE [campaign tests]).
        tally: the (name, status) pairs of a trial's outcome, recorded as Hypothesis events.
        describe: the failure message of a failed trial (default: its error).
        name: the test function's name.

    Returns:
        The test function, for a test module to bind to a ``test_*`` name.

    >>> t = campaign_test(st.integers(0, 3), lambda n: Trial(Verdict.PASSED), key="doc")
    >>> t()  # runs the profile's number of examples; nothing fails
    """

    def body(example: Any) -> None:
        trial = judge(example)
        if trial.verdict is Verdict.REJECTED:
            reject()
        if tally is not None and trial.outcome is not None:
            for item, status in tally(trial.outcome):
                event(f"{item}: {status}")
        event(f"verdict: {trial.verdict}")
        if trial.failed:
            message = describe(trial) if describe is not None and trial.outcome is not None \
                else trial.error
            raise AssertionError(message or f"{trial.example!r} failed")

    body.__name__ = body.__qualname__ = re.sub(r"\W", "_", name)
    body._hypothesis_internal_add_digest = key.encode()  # type: ignore[attr-defined]
    return settings(deadline=None, suppress_health_check=_SLOW)(given(examples)(body))


def network_test(*, quantity: str = "batch_jacobian", methods: Sequence[str] | None = None,
                 cases: Any = None, seed: int = 0) -> Callable[..., None]:
    """The network fuzzer (:func:`jacverify.fuzz`) as a Hypothesis test: every applicable method
    of ``quantity`` against the references, on drawn cases (default
    ``jacverify.strategies.cases(quantity=quantity)``); ``seed`` seeds the coupling probes."""
    from jacverify.fuzzing import case_trial
    from jacverify.strategies import cases as default_cases

    strategy = cases if cases is not None else default_cases(quantity=quantity)
    return campaign_test(
        strategy, functools.partial(case_trial, methods=methods, seed=seed),
        key=f"jacverify.campaign_tests.network_test {strategy!r} methods={methods!r} seed={seed}",
        tally=lambda report: ((r.method, r.status) for r in report.results),
        describe=lambda t: t.outcome.failure_message(),
        name=f"test_networks_{quantity}")


def rule_test(rule: object, *, checks: Sequence[str] | None = None,
              max_batch_size: int = 4) -> Callable[..., None]:
    """The rule fuzzer (:func:`jacverify.rules.fuzz_batching_rule`) on ``rule`` (an op name, a
    custom op, an ``autograd.Function`` with a vmap rule) as a Hypothesis test."""
    from jacverify.rules import CHECKS, as_target, rule_examples
    from jacverify.rules.fuzzer import rule_trial

    target = as_target(rule)
    checks = tuple(checks or CHECKS)

    def describe(t: Trial) -> str:
        lines = [f"{o.check}: {o.detail}" for o in t.outcome if o.status == "mismatch"]
        return "\n".join([f"{target.name} on {t.example!r}:", *lines])

    return campaign_test(
        rule_examples(target, max_batch_size=max_batch_size),
        functools.partial(rule_trial, target, checks=checks),
        key=(f"jacverify.campaign_tests.rule_test {target.module}:{target.code} {target.args!r} "
             f"checks={checks!r} max_batch_size={max_batch_size}"),
        tally=lambda outcomes: ((o.check, o.status) for o in outcomes),
        describe=describe, name=f"test_rule_{target.name}")


def operator_test(name: str, *, samples: int = 1) -> Callable[..., None]:
    """The operator sweep's checks on torch's operator ``name`` (an OpInfo name) as a Hypothesis
    test drawing the seed of the drawn sample's values: vmap against the loop, forward and reverse
    AD against finite differences, second derivatives (:func:`jacverify.rules.ops.check_op`).
    A mismatch torch declares ("known") passes. Shrinks towards seed 0."""

    def judge(seed: int) -> Trial:
        from jacverify.rules.ops import check_op, select_ops

        (op, *_) = select_ops([name])
        result = check_op(op, samples=samples, seed=seed)
        verdict = {"mismatch": Verdict.FAILED, "agree": Verdict.PASSED,
                   "known": Verdict.PASSED}.get(str(result.status), Verdict.UNVERIFIED)
        return Trial(verdict, result)

    def describe(t: Trial) -> str:
        return "\n".join(f"{name} {c.check} on {c.sample}: {c.detail}" for c in t.outcome.mismatches)

    return campaign_test(
        st.integers(0, 2**31 - 1), judge,
        key=f"jacverify.campaign_tests.operator_test {name} samples={samples}",
        tally=lambda result: ((c.check, str(c.status)) for c in result.checks),
        describe=describe, name=f"test_operator_{name}")


def _module_tests() -> dict[str, Callable[..., None]]:
    from jacverify.examples.rules import CORRECT_FUNCTIONS
    from jacverify.quantity_table import STANDALONE
    from jacverify.rules.ops import DEFAULT_OPS

    tests = [network_test(quantity=q) for q in STANDALONE]
    tests += [rule_test(f) for f in CORRECT_FUNCTIONS]
    tests += [operator_test(op) for op in DEFAULT_OPS]
    return {t.__name__: t for t in tests}


globals().update(_module_tests())
