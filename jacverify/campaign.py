"""The one fuzz loop: Hypothesis draws examples, a variant's ``check`` judges each one, and the
first failure is shrunk within a budget and printed as code that replays it.

``jacverify.fuzz`` (networks) and ``jacverify.rules.fuzz_batching_rule`` (batching rules) are thin
variants over :class:`Campaign`; NOTE [one campaign] says what a variant supplies.
"""

from __future__ import annotations

import os
import random
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any, Generic, TypeVar

from hypothesis import HealthCheck, given, reject, settings
from hypothesis import seed as seed_with
from hypothesis.database import DirectoryBasedExampleDatabase, ExampleDatabase

from jacverify.databases import REDIS_SCHEMES, redis_database
from jacverify.errors import InvalidArgument
from jacverify.validation import check_int, check_number
from jacverify.judge import Verdict, campaign_verdict

if TYPE_CHECKING:
    from hypothesis.strategies import SearchStrategy

__all__ = ["Campaign", "CampaignResult", "Trial", "Verdict", "KeyedDatabase", "resolve_database",
           "DEFAULT_SHRINK_SECONDS", "CHUNK"]

E = TypeVar("E")  # an example: hashable and printable (a frozen dataclass spec, an int, ...)
O = TypeVar("O")  # what the variant's check recorded on one example (a Report, check outcomes)

CHUNK = 25  # examples per Hypothesis run when a campaign has a time budget (``seconds``)

# NOTE [shrink budget]
# Hypothesis shrinks until no smaller failing example exists, which for a batching-rule bug (it
# needs two distinct samples) took 190 s here. After `shrink_seconds` from the first failure, or
# `shrink_examples` new examples after it (a budget that does not depend on the machine's load;
# re-running an example already seen failing does not count), every new candidate counts as passing
# without running and only examples already seen failing are re-checked, so Hypothesis stops at its
# best failure so far and replays it (it is in that set) as its result.
DEFAULT_SHRINK_SECONDS = 30.0

# NOTE [one campaign]
# Hypothesis settings, the example database, the shrink budget, the counts and the replay snippet
# live here once; a variant supplies only what differs between fuzzers:
#   - a strategy of examples: plain, hashable, printable specs (the database stores Hypothesis's
#     choices, and the shrink budget remembers failing examples by value);
#   - `check(example) -> Trial`: runs one example and says PASSED, FAILED or REJECTED (an example
#     that is not valid, e.g. a network whose output is not finite); an exception raised by
#     `check` is a failure too, kept with its message in `Trial.error`;
#   - `key`: names the campaign's configuration in the example database, so that a saved failure
#     replays where it was found;
#   - `tally(outcome)`: the (name, status) pairs counted into `CampaignResult.counts`;
#   - `replay(trial)`: the code that replays the shrunk failure on its own.
# `jacverify.fuzz` draws CaseSpecs and judges them with `case.check`; `fuzz_batching_rule` draws
# RuleExamples, rejects those the function refuses unbatched, and judges them with `run_checks`.
# An operator fuzzer plugs in the same way, with nothing here changed: a strategy of operator
# specs (OpInfo name, sample index, shapes, a values seed: printable, hashable), a `check` that
# builds the sample and runs `jacverify.rules.ops`'s per-sample checks (FAILED on a "mismatch",
# REJECTED when the op refuses the drawn values), a `tally` of (check, status) per OpCheck and a
# `replay` that prints the spec and the call re-running the check. The seeded sweep `check_op`
# stays a plain loop over OpInfo's own samples.


@dataclass(frozen=True)
class Trial(Generic[E, O]):
    """One example, judged.

    Attributes:
        verdict: a :class:`~jacverify.judge.Verdict`: passed (verified), failed (Hypothesis
            shrinks it), unverified (nothing wrong, nothing verified: counted, not shrunk) or
            rejected (not a valid example; Hypothesis draws another).
        outcome: what the variant's check recorded (say, a ``Report``); None when it raised.
        example: the example as run. A check may return a normalised example (the rule fuzzer
            fits ``out_dims`` to the output); None means the example as drawn, which the campaign
            fills in.
        error: ``"Type: message"`` when the check raised (the verdict is then FAILED).
    """

    verdict: Verdict
    outcome: O | None = None
    example: E | None = None
    error: str | None = None

    @property
    def failed(self) -> bool:
        return self.verdict is Verdict.FAILED


@dataclass(frozen=True)
class CampaignResult(Generic[E, O]):
    """What a campaign ran and found.

    Attributes:
        examples: examples judged, shrinking included (rejected ones and the candidates passed
            without running past the shrink budget are not counted).
        verified: examples whose verdict was passed (NOTE [earned verdict]).
        rejected: examples rejected.
        seconds: wall time of the campaign.
        seed: the campaign's seed (random when none was given).
        seeded: whether Hypothesis ran from ``seed``, so that the same seed replays the campaign.
        counts: per name, per status, how often the variant's ``tally`` reported it.
        failure: the shrunk failing trial, if any.
        failed_at: the example (counted as in ``examples``) that first failed; 1 when a failure
            saved in the example database was replayed first.
        snippet: code that replays the failure (from the variant's ``replay``).
    """

    examples: int
    rejected: int
    verified: int
    seconds: float
    seed: int
    seeded: bool
    counts: Mapping[str, Mapping[str, int]] = field(default_factory=dict)
    failure: Trial[E, O] | None = None
    failed_at: int | None = None
    snippet: str | None = None

    @property
    def verdict(self) -> Verdict:
        """NOTE [earned verdict]: failed, passed (an example verified) or unverified."""
        return campaign_verdict(self.failure is not None, self.verified)

    @property
    def passed(self) -> bool:
        return self.verdict == Verdict.PASSED


def resolve_database(database: Any) -> ExampleDatabase | None:
    """The example database that ``database=`` names.

    Args:
        database: an ``ExampleDatabase`` or None (as Hypothesis's ``settings(database=...)``
            takes them), ``"profile"`` for the active Hypothesis profile's database
            (``settings.default.database``: see :mod:`jacverify.profiles`), a Redis URL
            (``redis://HOST:PORT/DB``, needs ``hypothesis[redis]``) for a ``RedisExampleDatabase``
            shared by workers on several machines, or a directory path (a ``str`` or
            ``os.PathLike``) for a ``DirectoryBasedExampleDatabase`` there.

    Returns:
        The database, or None for none.

    Raises:
        InvalidArgument: ``database`` is none of these.

    >>> resolve_database(None) is None
    True
    >>> type(resolve_database(".hypothesis/examples")).__name__
    'DirectoryBasedExampleDatabase'
    """
    if database is None or isinstance(database, ExampleDatabase):
        return database
    if isinstance(database, str) and database == "profile":
        return settings.default.database
    if isinstance(database, str) and database.startswith(REDIS_SCHEMES):
        return redis_database(database)  # NOTE [shared example database]
    if isinstance(database, (str, os.PathLike)):
        return DirectoryBasedExampleDatabase(os.fspath(database))
    raise InvalidArgument(f"database={database!r} (type={type(database).__name__}) must be a "
                          "hypothesis ExampleDatabase, None, 'profile' (the active profile's) or "
                          "a directory path")


class Campaign:
    """The settings of one fuzz campaign: how many examples, its seed, its example database and
    its shrink budget. :meth:`run` drives Hypothesis with them (NOTE [one campaign]).

    Args:
        max_examples: examples to generate (when ``seconds`` is None).
        seconds: fuzz for this long instead, in Hypothesis runs of ``CHUNK`` examples with
            consecutive seeds, until a failure or the time is spent.
        seed: replays a campaign exactly; like Hypothesis's ``@seed`` such a run saves nothing to
            the example database. None draws a random seed (``campaign.seed``, printed in reports
            for the variant's own random choices) and, when there is a database, lets Hypothesis
            explore anew, save failures and replay them first next time; with no database,
            Hypothesis runs from that seed too, so that it replays the campaign.
        database: where failures are saved and replayed from: ``"profile"`` (the active
            Hypothesis profile's), a directory path, an ``ExampleDatabase``, or None
            (:func:`resolve_database`).
        shrink_seconds: how long to shrink a failure (NOTE [shrink budget]).
        shrink_examples: how many new examples to shrink a failure with (None: no count limit).

    Raises:
        InvalidArgument: an argument is out of range, or ``database`` names no database.

    Attributes:
        seed: the seed, drawn at random when none was given.
        seeded: whether Hypothesis runs from ``seed`` (a seed was given, or there is no database).
        database: the resolved database, or None.

    >>> Campaign(seed=3, database="profile").seeded
    True
    """

    def __init__(self, *, max_examples: int = 100, seconds: float | None = None,
                 seed: int | None = None, database: Any = "profile",
                 shrink_seconds: float = DEFAULT_SHRINK_SECONDS,
                 shrink_examples: int | None = None) -> None:
        check_int("max_examples", max_examples, min_value=1)
        if seconds is not None:
            check_number("seconds", seconds, fix="or None to run max_examples")
        if seed is not None:
            check_int("seed", seed, fix="or None for a random seed")
        check_number("shrink_seconds", shrink_seconds, allow_inf=True)
        if shrink_examples is not None:
            check_int("shrink_examples", shrink_examples, min_value=0, fix="or None for no count")
        self.max_examples = max_examples
        self.seconds = seconds
        self.shrink_seconds = shrink_seconds
        self.shrink_examples = shrink_examples
        self.database = resolve_database(database)
        self.seed: int = random.randrange(2**31) if seed is None else seed
        self.seeded = seed is not None or self.database is None

    def __repr__(self) -> str:
        return (f"Campaign(max_examples={self.max_examples}, seconds={self.seconds}, "
                f"seed={self.seed}, database={self.database!r}, "
                f"shrink_seconds={self.shrink_seconds}, shrink_examples={self.shrink_examples})")

    def run(
        self,
        examples: SearchStrategy[E],
        check: Callable[[E], Trial[E, O]],
        *,
        key: str,
        replay: Callable[[Trial[E, O]], str] | None = None,
        tally: Callable[[O], Iterable[tuple[str, str]]] | None = None,
        on_example: Callable[[Trial[E, O]], None] | None = None,
    ) -> CampaignResult[E, O]:
        """Draw examples, judge each with ``check``, and shrink the first failure.

        Args:
            examples: a Hypothesis strategy of hashable examples (the shrink budget remembers
                failing ones by value). Hypothesis shrinks a failure the way this strategy
                shrinks, within the shrink budget.
            check: judges one example (NOTE [one campaign]); an exception it raises is a failure.
            key: the campaign's configuration, keying its failures in the example database.
            replay: builds the code that replays the shrunk failure (``result.snippet``).
            tally: the (name, status) pairs of one outcome, counted into ``result.counts``.
            on_example: called with every trial, rejected ones included (say, to advance a
                progress bar).

        Returns:
            A :class:`CampaignResult`; ``result.failure`` is the shrunk failing trial, if any.

        Raises:
            hypothesis.errors.HypothesisException: Hypothesis gave up before any example failed
                (say, ``Unsatisfiable``: every example was rejected).

        >>> from hypothesis import strategies as st
        >>> def check(n):
        ...     return Trial(Verdict.FAILED if n > 10 else Verdict.PASSED)
        >>> result = Campaign(max_examples=20, seed=0, shrink_examples=200).run(
        ...     st.integers(0, 1000), check, key="doctest", replay=lambda t: f"check({t.example})")
        >>> result.failure.example, result.snippet, result.failed_at <= result.examples
        (11, 'check(11)', True)
        """
        state = _State()
        counts: dict[str, dict[str, int]] = {}
        failing: set = set()  # every example seen failing, as drawn

        def spent() -> bool:
            first = state.first_failure
            return first is not None and (
                time.perf_counter() - first > self.shrink_seconds
                or (self.shrink_examples is not None
                    and state.shrink_examples >= self.shrink_examples))

        def body(example) -> None:
            seen = example in failing
            if not seen and spent():
                return  # past the shrink budget: only failures already seen still fail
            if not seen and state.first_failure is not None:
                state.shrink_examples += 1
            raised = None
            try:
                trial = check(example)
            except Exception as e:  # noqa: BLE001 - an example that raised is a finding too
                raised = e
                trial = Trial(Verdict.FAILED, example=example, error=f"{type(e).__name__}: {e}")
            if trial.example is None:
                trial = replace(trial, example=example)
            if trial.verdict is Verdict.REJECTED:
                state.rejected += 1
                if on_example:
                    on_example(trial)
                reject()
            state.examples += 1
            state.verified += trial.verdict is Verdict.PASSED
            if tally is not None and trial.outcome is not None:
                for name, status in tally(trial.outcome):
                    per = counts.setdefault(name, {})
                    per[status] = per.get(status, 0) + 1
            if on_example:
                on_example(trial)
            if trial.failed:
                failing.add(example)
                state.last_failure = trial
                if state.first_failure is None:
                    state.first_failure = time.perf_counter()
                    state.failed_at = state.examples
                if raised is not None:
                    state.raised = raised
                    raise raised
                raise _Failed

        database = None if self.database is None else KeyedDatabase(self.database, key)
        start = time.perf_counter()
        run = 0
        failure = None
        while True:
            budget = CHUNK if self.seconds is not None else self.max_examples
            test = settings(max_examples=budget, deadline=None, derandomize=False,
                            database=database, report_multiple_bugs=False,
                            suppress_health_check=list(HealthCheck))(given(examples)(body))
            if self.seeded:
                test = seed_with(self.seed + run)(test)
            try:
                test()
            except Exception as e:
                if state.last_failure is None:
                    raise  # Hypothesis gave up before anything failed
                failure = state.last_failure  # Hypothesis ends by replaying its minimal failure
                if not isinstance(e, _Failed) and e is not state.raised:  # say, Flaky
                    failure = replace(failure, error=f"{type(e).__name__}: {e}")
            run += 1
            if failure or self.seconds is None or time.perf_counter() - start >= self.seconds:
                break
        return CampaignResult(
            state.examples, state.rejected, state.verified, time.perf_counter() - start, self.seed, self.seeded,
            counts, failure, state.failed_at if failure else None,
            replay(failure) if failure and replay else None)


class KeyedDatabase(ExampleDatabase):
    """``database`` with every key prefixed by ``key``: one campaign configuration's failures
    apart from another's (every campaign runs the same Hypothesis test function, whose digest is
    Hypothesis's own key).

    >>> from hypothesis.database import InMemoryExampleDatabase
    >>> db = KeyedDatabase(InMemoryExampleDatabase(), "a")
    >>> db.save(b"k", b"v"); list(db.fetch(b"k")), list(KeyedDatabase(db, "b").fetch(b"k"))
    ([b'v'], [])
    """

    def __init__(self, database: ExampleDatabase, key: str) -> None:
        super().__init__()
        self.database = database
        self.key = key
        self._prefix = key.encode() + b"\x00"

    def __repr__(self) -> str:
        return f"KeyedDatabase({self.database!r}, {self.key!r})"

    def __eq__(self, other: object) -> bool:
        return (isinstance(other, KeyedDatabase) and self.database == other.database
                and self.key == other.key)

    def __hash__(self) -> int:
        return hash((KeyedDatabase, self.key))

    def save(self, key: bytes, value: bytes) -> None:
        self.database.save(self._prefix + key, value)

    def fetch(self, key: bytes) -> Iterable[bytes]:
        return self.database.fetch(self._prefix + key)

    def delete(self, key: bytes, value: bytes) -> None:
        self.database.delete(self._prefix + key, value)

    def move(self, src: bytes, dest: bytes, value: bytes) -> None:
        self.database.move(self._prefix + src, self._prefix + dest, value)


class _Failed(Exception):
    """Raised in Hypothesis's test when an example failed (the trial itself is in the state)."""


@dataclass
class _State:
    examples: int = 0
    rejected: int = 0
    verified: int = 0
    shrink_examples: int = 0  # new examples run since the first failure
    first_failure: float | None = None  # perf_counter() at the first failure
    failed_at: int | None = None
    last_failure: Trial | None = None  # Hypothesis's last failing call is its minimal failure
    raised: BaseException | None = None
