"""The one campaign loop (jacverify.campaign): shrinking, counts, the shrink budget by count, the
example database; and the network fuzzer and the rule fuzzer driving it the same way."""

from __future__ import annotations

import pytest
from hypothesis import strategies as st

import jacverify
from jacverify.campaign import Campaign, Trial
from jacverify.judge import Verdict
from jacverify.examples import rules as R
from jacverify.fuzzing import fuzz
from jacverify.rules import fuzz_batching_rule
from jacverify.strategies import cases, networks

TWINS = "jacverify.examples.twins"


def over_ten(n: int) -> Trial:
    """Fails above 10; multiples of 5 are not valid examples (so 0, the first try, is rejected)."""
    if n % 5 == 0:
        return Trial(Verdict.REJECTED)
    return Trial(Verdict.FAILED if n > 10 else Verdict.PASSED, "big" if n > 10 else "small")


def new_after_first_failure(examples_and_failed) -> int:
    """Examples run after the first failure, re-runs of an example already seen failing apart:
    what ``shrink_examples`` bounds (NOTE [shrink budget])."""
    failing: list = []
    new = 0
    for example, failed in examples_and_failed:
        if failing and example not in failing:
            new += 1
        if failed:
            failing.append(example)
    return new


def test_campaign_shrinks_to_the_minimal_failure_and_counts():
    trials: list[Trial] = []
    result = Campaign(max_examples=30, seed=0, database=None, shrink_examples=1000).run(
        st.integers(0, 1000), over_ten, key="over_ten", on_example=trials.append,
        tally=lambda size: [("n", size)], replay=lambda t: f"over_ten({t.example})")
    assert not result.passed
    assert result.failure.example == 11 and result.failure.verdict is Verdict.FAILED
    assert result.snippet == "over_ten(11)" and result.failure.error is None
    assert result.seed == 0 and result.seeded
    judged = [t for t in trials if t.verdict is not Verdict.REJECTED]
    assert result.examples == len(judged) and result.rejected == len(trials) - len(judged) > 0
    assert result.failed_at == 1 + next(i for i, t in enumerate(judged) if t.failed)
    assert sum(result.counts["n"].values()) == result.examples
    assert result.counts["n"]["big"] == sum(t.failed for t in judged)
    assert trials[-1].example == 11  # Hypothesis ends by replaying its minimal failure


def test_campaign_without_failure_runs_max_examples():
    result = Campaign(max_examples=7, seed=1, database=None).run(
        st.integers(0, 10), lambda n: Trial(Verdict.PASSED), key="never")
    assert result.passed and result.failed_at is None and result.snippet is None
    assert result.examples == 7


def test_an_exception_in_check_is_a_failure_with_its_message():
    def check(n: int) -> Trial:
        if n > 3:
            raise ValueError(f"{n} is too big")
        return Trial(Verdict.PASSED)

    result = Campaign(max_examples=30, seed=0, database=None, shrink_examples=100).run(
        st.integers(0, 100), check, key="raises")
    assert result.failure.example == 4 and result.failure.error == "ValueError: 4 is too big"


@pytest.mark.parametrize("budget", [0, 3])
def test_shrink_examples_bounds_the_campaign_by_count(budget):
    trials: list[Trial] = []
    result = Campaign(max_examples=30, seed=0, database=None, shrink_examples=budget).run(
        st.integers(0, 1000), over_ten, key="over_ten", on_example=trials.append)
    assert new_after_first_failure((t.example, t.failed) for t in trials) == budget
    first_failure = next(t.example for t in trials if t.failed)
    assert result.failure.example > 11  # stopped before the minimal failure
    if budget == 0:
        assert result.failure.example == first_failure  # not shrunk at all


def test_a_directory_database_replays_the_saved_failure_first(tmp_path):
    path = tmp_path / "db"
    first = Campaign(max_examples=30, database=str(path), shrink_examples=1000).run(
        st.integers(0, 1000), over_ten, key="over_ten")  # unseeded: saves its failure
    assert not first.seeded and first.failure.example == 11
    trials: list[Trial] = []
    again = Campaign(max_examples=30, database=str(path), shrink_examples=1000).run(
        st.integers(0, 1000), over_ten, key="over_ten", on_example=trials.append)
    assert again.failed_at == 1 and trials[0].example == 11


def test_an_explicit_seed_saves_nothing(tmp_path):
    from hypothesis.database import DirectoryBasedExampleDatabase

    db = DirectoryBasedExampleDatabase(str(tmp_path / "db"))
    result = Campaign(max_examples=30, seed=0, database=db, shrink_examples=1000).run(
        st.integers(0, 1000), over_ten, key="over_ten")
    assert not result.passed and result.seeded
    assert not [f for f in tmp_path.rglob("*") if f.is_file()]


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"max_examples": 0}, r"max_examples=0 \(type=int\) must be an int >= 1"),
    ({"shrink_examples": -1}, r"shrink_examples=-1 \(type=int\) must be an int >= 0; or None"),
    ({"shrink_seconds": 0}, r"shrink_seconds=0 \(type=int\) must be a positive number"),
    ({"seconds": -1.0}, r"seconds=-1.0 \(type=float\) must be a positive number"),
    ({"seed": "1"}, "seed='1' \\(type=str\\) must be an int"),
    ({"database": 3}, "database=3 \\(type=int\\) must be a hypothesis ExampleDatabase"),
])
def test_campaign_settings_are_validated(kwargs, message):
    with pytest.raises(jacverify.InvalidArgument, match=message):
        Campaign(**kwargs)


def test_rule_fuzzer_replays_a_saved_failure_first(tmp_path):
    db = str(tmp_path / "db")
    budget = dict(max_examples=50, database=db, shrink_examples=60)
    first = fuzz_batching_rule(R.MixesSamples, **budget)  # unseeded: saves its failure
    seen: list = []
    again = fuzz_batching_rule(R.MixesSamples, **budget,
                               on_example=lambda ex, outcomes: seen.append(ex))
    assert not first.passed and not again.passed
    assert again.failed_at == 1 and seen[0] == first.failure.example
    assert first.failure.mismatches and "replay" in again.describe()


def test_shrink_examples_bounds_the_rule_fuzzer_by_count():
    def run(budget: int) -> int:
        seen: list = []
        report = fuzz_batching_rule(
            R.MixesSamples, max_examples=20, seed=0, shrink_seconds=600, shrink_examples=budget,
            on_example=lambda ex, outcomes: seen.append(
                (ex, any(o.status == "mismatch" for o in outcomes))))
        assert not report.passed
        assert report.examples == len(seen)
        return new_after_first_failure(seen)

    # (at most: the campaign counts drawn examples, the rule fuzzer reports them with out_dims
    # fitted to the output, so two drawn examples may be seen as one)
    assert run(2) <= 2 < run(100)


def test_shrink_examples_bounds_the_network_fuzzer_by_count():
    strategy = cases(networks=networks(functions=[f"{TWINS}:CubeWrongJvp"], max_depth=1))

    def run(budget: int) -> int:
        seen: list = []
        result = fuzz(cases=strategy, max_examples=10, seed=11, shrink_seconds=600,
                      shrink_examples=budget,
                      on_example=lambda case, report: seen.append(
                          (case, report is not None and not report.passed)))
        assert not result.passed
        assert result.examples + result.rejected == len(seen)
        return new_after_first_failure(seen)

    assert run(2) == 2 < run(40)
